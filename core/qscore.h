/* qscore.h - the first stage of two-stage scoring (recs.scoring=two-stage):
 * e_out quantized to int8 with one scale per row, and a scan that proposes
 * for each user every item whose exact score could still be among the
 * user's k best. rank.c scores the proposals exactly and decides.
 *
 * The promise. For a query q, an item j's exact score f_j is rank.c's
 * det_score(q, e_out[j], bias[j]). The scan computes an approximate score
 * a_j from the int8 copy and a bound U_j with |f_j - a_j| <= U_j that
 * holds for every input (quantization error by Cauchy-Schwarz, plus every
 * float rounding of both a_j and det_score). L is the k-th largest lower
 * bound a_j - U_j over the items not excluded; an item is proposed when
 * a_j + U_j >= L. Every item of the exact top k has f_j >= L, so it is
 * proposed: the exact list over the proposals is the exact list over all
 * items, ties included. See qscore.c for the bound.
 *
 * Kernels: AVX-512 VNNI where the CPU has it (chosen at run time), else
 * plain C; both compute the same integers and the same float operations,
 * so they propose the same items (tests/test_qscore.c compares them). */
#ifndef HL_QSCORE_H
#define HL_QSCORE_H

#include "hl.h"

#define HL_QSCORE_MAX_DIM 1024   /* int32 dot products stay exact in float */

enum { HL_QKERNEL_AUTO = 0, HL_QKERNEL_PLAIN = 1 };

typedef struct hl_qitems hl_qitems;   /* opaque: the int8 copy */
typedef struct hl_qscan  hl_qscan;    /* opaque: one ranker's scan scratch */

/* Quantizes e_out (n_items, dim) and keeps the bias; the arrays are copied,
 * so they need not outlive the result. kernel: HL_QKERNEL_AUTO picks the
 * fastest the CPU runs, HL_QKERNEL_PLAIN forces plain C. NULL and a reason
 * in errbuf on failure (bad shape, non-finite values, no memory). */
hl_qitems *hl_qitems_create(const float *e_out, const float *bias, int32_t n_items,
                            int dim, int kernel, char *errbuf, size_t errlen);
void       hl_qitems_destroy(hl_qitems *qi);                /* NULL is a no-op */
/* 1 when this CPU runs the AVX-512 VNNI kernel (HL_QKERNEL_AUTO picks it),
 * 0 when only the plain one, which is for portability, not speed: it
 * scores about 16x slower than SGEMM at batch 256 (recs.scoring=auto then
 * keeps the exact path). */
int        hl_qscore_has_vector_kernel(void);
/* "avx512-vnni" or "plain": the kernel in use. */
const char *hl_qitems_kernel(const hl_qitems *qi);
/* Bytes a scan reads per user when it cannot reuse them (batch 1). */
size_t     hl_qitems_scan_bytes(const hl_qitems *qi);

/* Scratch for up to max_users users and lists of k, sized once. */
hl_qscan *hl_qscan_create(const hl_qitems *qi, int max_users, int k,
                          char *errbuf, size_t errlen);
void      hl_qscan_destroy(hl_qscan *qs);                   /* NULL is a no-op */

typedef struct hl_qscan_user {
    const float   *q;        /* dim floats: the query */
    const int32_t *seen;     /* excluded items, ascending, in 0..n_items-1 */
    int            n_seen;
    const int32_t *extra;    /* more excluded items, any order (may be NULL) */
    int            n_extra;
    const int32_t *hidden;   /* more excluded items, ascending (the live catalogue's
                                hidden rows; rows >= n_items ignored; may be NULL) */
    int            n_hidden;
    const float   *seed;     /* exact scores of items outside the table (the
                                catalogue's side items): they count toward L as
                                lower bounds, so L may come from them (may be NULL) */
    int            n_seed;
} hl_qscan_user;

/* Scans every item for users[0..n), n <= max_users. Returns 0 or
 * HL_EINVAL. No allocation. */
int hl_qscan_run(hl_qscan *qs, const hl_qscan_user *users, int n);

/* User u's proposals after hl_qscan_run, ascending item rows, *n_cand of
 * them; NULL when the scan could not bound them (a non-finite query, or
 * more near-ties than the scratch holds): the caller must score every
 * item exactly for that user. Borrowed until the next run. */
const int32_t *hl_qscan_cands(const hl_qscan *qs, int u, int *n_cand);

/* Tests: the approximate score a_j of every item (n_items floats) for one
 * query with the table's kernel, and when U is not NULL the bound U_j the
 * scan uses (|q . e_j + b_j - a_j| <= U_j, rounding of det_score included).
 * Two tables of one e_out, one plain, must agree to the bit. Returns 0, or
 * HL_ERANGE for a query it cannot bound. */
int hl_qitems_approx(const hl_qitems *qi, const float *q, float *a, float *U);

#endif
