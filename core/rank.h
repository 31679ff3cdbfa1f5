/* rank.h - refresh a batch of users: heads -> encoder -> query -> blocked
 * scoring against e_out with a running top-K per user, seen items excluded,
 * and a `because` item for each result (DESIGN.md section 5).
 *
 * A ranker holds scratch space sized at create time for max_batch users, so
 * a refresh never allocates. One thread uses a ranker at a time. */
#ifndef HL_RANK_H
#define HL_RANK_H

#include "model.h"
#include "table.h"

typedef struct hl_ranker hl_ranker;   /* opaque */

typedef struct hl_rank_opts {
    int k;               /* list length (recs.k), 1..1000 */
    int exclude_seen;    /* drop items in the user's history (recs.exclude.seen) */
    int max_batch;       /* most users per hl_ranker_refresh call */
} hl_rank_opts;

typedef struct hl_rec {
    int32_t item;        /* model row */
    float   score;       /* q . e_out[item] + bias[item] */
    int32_t because;     /* model row of the history item that contributed
                            most, or -1 */
} hl_rec;

/* The model is borrowed and must outlive the ranker. */
hl_ranker *hl_ranker_create(const hl_model *m, const hl_rank_opts *o,
                            char *errbuf, size_t errlen);
void       hl_ranker_destroy(hl_ranker *r);               /* NULL is a no-op */

/* Refreshes users[0..n), n <= max_batch. out is (n, k): user u's list is
 * out[u*k .. u*k + n_out[u]), best first; n_out[u] < k only when fewer items
 * remain after exclusions. Returns 0 or a negative HL_E*. */
int hl_ranker_refresh(hl_ranker *r, const hl_row_view *users, int n,
                      hl_rec *out, int *n_out);

#endif
