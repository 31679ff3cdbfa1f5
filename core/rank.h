/* rank.h - refresh a batch of users: heads -> encoder -> query -> blocked
 * scoring against e_out with a running top-K per user, seen items excluded,
 * and a `because` item for each result (DESIGN.md section 5).
 *
 * A ranker holds scratch space sized at create time for max_batch users, so
 * a refresh never allocates. One thread uses a ranker at a time.
 *
 * Order: best score first; equal scores put the lower item row first. The
 * full (users x items) score matrix is never stored: items are scored in
 * blocks of block_items with one SGEMM per block and each user's top-K is
 * kept as the blocks go by (k + 4 candidates per user); the candidates
 * are then rescored in a fixed order, so a user's list (items, order,
 * scores, because) is the same to the bit whether it is refreshed alone or
 * with any other users, on the same build, CPU and OpenBLAS (see rank.c,
 * "Batch independence").
 *
 * Exclusions: with exclude_seen, every item in the user's history ring
 * (hl_row_view.hist_item, the last state.history events) is left out, or
 * with seen_window N > 0 the items of its last N entries only
 * (hl_row_seen_from; an item also in an older entry is then left out only
 * if it recurs among the last N); the
 * _ex variant adds an explicit list per user (halflife eval uses it to
 * exclude all of a user's earlier items, which can outnumber the ring).
 *
 * `because` of a returned item j: among the ring's entries e with a known
 * item i_e (0 <= i_e < n_items), the one maximising
 *
 *     c_e(j) = a_e x (e_in[i_e] . e_out[j]),
 *     a_e    = w_e x sum_h exp(-lambda_h (t_ref - t_e)) / max(m_h, eps)
 *
 * i.e. the event's share of each head's weighted mean (the encoder's input),
 * summed over heads, times how well its item predicts j. w_e is the weight
 * the event was applied with (hl_row_view.hist_w: its type weight times its
 * weight field, so a rating of 5 counts five times a rating of 1), or the
 * weight its type is applied with (hl_rank_opts.type_weight: the worker's
 * weight.* override, else the model's type_weight[type_e]) where the ring
 * does not know it (NAN, or no hist_w: a ring restored from a format-1
 * snapshot). The MLP is not linear, so this is an explanation, not an
 * exact attribution.
 * because = i_e of the best entry (the newest on equal c), or -1 when no
 * entry has c > 0 (no known history, or nothing in it points towards j).
 * It ranges over the whole ring whatever seen_window is: every entry feeds
 * the heads, so every entry may explain a list, and with a window an
 * item can be both listed and its own because (a repeat the ring holds
 * only before the window). */
#ifndef HL_RANK_H
#define HL_RANK_H

#include "model.h"
#include "table.h"
#include "qscore.h"
#include "ivf.h"

typedef struct hl_ranker hl_ranker;   /* opaque */

typedef struct hl_rank_opts {
    int k;               /* list length (recs.k), 1..1000 */
    int exclude_seen;    /* drop items in the user's history (recs.exclude.seen) */
    int seen_window;     /* with exclude_seen: only the items of the ring's last
                            seen_window entries (recs.exclude.seen.events),
                            0..255; 0 = the whole ring */
    int max_batch;       /* most users per hl_ranker_refresh call, 1..65536 */
    int block_items;     /* items per scoring block; 0 = default (512) */
    int scoring;         /* HL_SCORING_EXACT or HL_SCORING_TWO_STAGE (recs.scoring) */
    int qkernel;         /* two-stage: HL_QKERNEL_AUTO, or HL_QKERNEL_PLAIN (tests) */
    const hl_qitems *qitems; /* two-stage: the model's int8 copy, shared by the
                                rankers of every thread (borrowed, must outlive
                                them); NULL: the ranker builds its own */
    const hl_ivf *ivf;   /* recs.index=ivf: the approximate index (borrowed, must
                            outlive the ranker); NULL: every item is scored */
    int nprobe;          /* with ivf: lists probed per user (above the index's
                            nlist: every list); 0: hl_ivf_default_nprobe */
    int shadow_every;    /* with ivf: every shadow_every-th user refreshed is
                            also scored over every item and the two lists
                            compared (hl_ranker_index_recall); 0: never */
    const float *type_weight; /* HL_N_TYPES: the weight each event type is
                            applied with (the worker's weight.* overrides),
                            for `because` where the ring does not know an
                            entry's own; copied at create. NULL: the model's */
} hl_rank_opts;

/* How candidates are found; the list is the same either way (rank.c,
 * "Two-stage scoring"). EXACT: blocked SGEMM over fp32 e_out. TWO_STAGE:
 * an int8 copy of e_out built at create (qscore.h) proposes them. */
enum { HL_SCORING_EXACT = 0, HL_SCORING_TWO_STAGE = 1 };

typedef struct hl_rec {
    int32_t item;        /* model row, or n_items + s for side item s of the
                            catalogue (hl_ranker_set_catalogue) */
    float   score;       /* q . e_out[item] + bias[item] */
    int32_t because;     /* model row of the history item that contributed
                            most, or -1 */
} hl_rec;

/* The model is borrowed and must outlive the ranker. */
hl_ranker *hl_ranker_create(const hl_model *m, const hl_rank_opts *o,
                            char *errbuf, size_t errlen);
/* The same from arrays in memory (tests, the trainer): p->info gives the
 * shapes, half-lives and type weights; item ids are not used. p's arrays
 * are borrowed and must outlive the ranker. */
hl_ranker *hl_ranker_create_parts(const hl_model_parts *p,
                                  const hl_rank_opts *o,
                                  char *errbuf, size_t errlen);
void       hl_ranker_destroy(hl_ranker *r);               /* NULL is a no-op */

/* "exact", or "two-stage/avx512-vnni" or "two-stage/plain": for the log. */
const char *hl_ranker_scoring(const hl_ranker *r);
/* Users whose two-stage candidates could not be bounded (near-ties beyond
 * the scratch, or a query near the float range) and were scored over
 * every item instead; 0 with exact scoring. */
uint64_t    hl_ranker_fallbacks(const hl_ranker *r);

/* With an index: the shadow check's counts so far: *hits items of the
 * exact lists that the index's lists also held, out of *total. 0/0
 * without an index or before the first check. */
void        hl_ranker_index_recall(const hl_ranker *r, uint64_t *hits, uint64_t *total);

/* With an index: the item scores its searches have computed so far, per
 * user (hl_ivf_scan_scored; the shadow check's exact scans are not
 * counted). 0 without an index. */
uint64_t    hl_ranker_index_scored(const hl_ranker *r);

/* Refreshes users[0..n), n <= max_batch. out is (n, k): user u's list is
 * out[u*k .. u*k + n_out[u]), best first; n_out[u] < k only when fewer items
 * remain after exclusions. Returns 0 or a negative HL_E*. */
int hl_ranker_refresh(hl_ranker *r, const hl_row_view *users, int n,
                      hl_rec *out, int *n_out);

/* The query (dim floats) of users[u] in the last hl_ranker_refresh[_ex]
 * or hl_ranker_encode call, u < that call's n: the encoder's output for
 * that user alone, so the same bits whatever it was refreshed with (rank.c,
 * "Batch independence"). Borrowed until the next call on r. Fold-in
 * (worker/fold.c) takes its users' queries from here, not from an encoder
 * pass of its own. */
const float *hl_ranker_query(const hl_ranker *r, int u);

/* Encodes users[0..n) as a refresh does, scoring nothing (their queries
 * then through hl_ranker_query). 0, or HL_EINVAL when n > max_batch. */
int hl_ranker_encode(hl_ranker *r, const hl_row_view *users, int n);

/* Extra items to leave out for one user: rows in any order, duplicates
 * allowed, rows outside 0..n_items+n_side-1 ignored. */
typedef struct hl_rank_exclude {
    const int32_t *item;
    int            n;
} hl_rank_exclude;

/* hl_ranker_refresh, also leaving out extra[u]'s items for user u (extra
 * may be NULL). The ring is still excluded when exclude_seen is set. */
int hl_ranker_refresh_ex(hl_ranker *r, const hl_row_view *users, int n,
                         const hl_rank_exclude *extra, hl_rec *out, int *n_out);

/* The live catalogue's part in a refresh (core/catalogue.h builds it):
 * rows no list may hold, masked inside the blocked top-K exactly as seen
 * items are (so a list stays k long when enough items remain), and side
 * items, rows n_items..n_items+n_side-1, scored in blocks after the
 * model's (the same SGEMM, top-K and exact rescoring, with the rounding
 * bound taken over both). Side rows never count as seen (the history ring
 * names model rows only). Setting a catalogue costs one pass over its side
 * e_out (the bound). Two-stage scoring applies it the same way, so lists
 * are still the exact path's: hidden rows are excluded inside the int8
 * scan, and side items (overriding embeddings included: their model rows
 * are hidden) are scored with det_score and join the candidates and the
 * scan's k-th lower bound. */
typedef struct hl_rank_catalogue {
    const int32_t *hidden;   /* ascending rows (model or side), n_hidden of them */
    int32_t        n_hidden;
    const float   *e_in, *e_out, *bias;  /* (n_side, dim), (n_side, dim), (n_side) */
    int32_t        n_side;
} hl_rank_catalogue;

/* c and its arrays are borrowed until the next call (NULL: the model
 * alone). Owner thread of the ranker, between refreshes. */
void hl_ranker_set_catalogue(hl_ranker *r, const hl_rank_catalogue *c);

/* Plain-loop twin for tests: scores every item with plain loops (double
 * accumulation), sorts them all, same exclusions, same `because`. It
 * allocates, so keep it out of the hot path. */
int hl_ranker_refresh_naive(hl_ranker *r, const hl_row_view *users, int n,
                            const hl_rank_exclude *extra, hl_rec *out,
                            int *n_out);

#endif
