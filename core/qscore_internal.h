/* qscore_internal.h - what qscore.c (the int8 table, the query and its
 * bound) and qscore_scan.c (the proposals and the kernels) share: the two
 * structures, the chunk layout and the few operations both must do alike.
 * Private to those two files. */
#ifndef HL_QSCORE_INTERNAL_H
#define HL_QSCORE_INTERNAL_H

#include "qscore.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_VNNI 1
#include <immintrin.h>
#endif

#define CHUNK        16
#define BLOCK_CHUNKS 128
#define CAND_SLACK   512      /* proposals kept beyond 2k per user */

struct hl_qitems {
    int32_t  n_items, n_chunks;
    int      dim, dp, ng;     /* dp = dim rounded up to 4; ng = dp / 4 */
    size_t   chunk_bytes;     /* 16 dp + 128 */
    uint8_t *chunks;          /* (n_chunks, chunk_bytes), 64-byte aligned */
    float   *r, *nrm;         /* (n_items) ||e - e^||, ||e||, rounded up */
    double   r_max, n_max, bias_max;
    int      vnni;
};

struct hl_qscan {
    const hl_qitems *qi;
    int       max_users, k, cap;
    int8_t   *qq;             /* (max_users, dp) quantized queries */
    float    *s_q, *c1, *c2, *G, *L;
    float    *Ug;             /* (max_users) the bound of the table's largest rows */
    int32_t  *corr;
    float    *lb;             /* (max_users, k) min-heaps of lower bounds */
    int      *n_lb;
    int32_t  *cand;           /* (max_users, cap) proposals */
    float    *cand_ub;        /* (max_users, cap) their upper bounds */
    int      *n_cand;
    uint8_t  *failed;         /* user given up to the exact scan */
    int      *seen_pos;
    int      *hid_pos;        /* (max_users) cursor in each user's hidden rows */
    const hl_qscan_user *users;
};

static inline uint8_t *chunk_rows(const hl_qitems *qi, int32_t c)
{
    return qi->chunks + (size_t)c * qi->chunk_bytes;
}

static inline const float *chunk_scale(const hl_qitems *qi, int32_t c)
{
    return (const float *)(chunk_rows(qi, c) + (size_t)16 * qi->dp);
}

static inline const float *chunk_bias(const hl_qitems *qi, int32_t c)
{
    return chunk_scale(qi, c) + CHUNK;
}

static inline int chunk_len(const hl_qitems *qi, int32_t c)
{
    int32_t rem = qi->n_items - c * CHUNK;
    return rem < CHUNK ? (int)rem : CHUNK;
}

/* U = c1 r + c2 n + G: float operations, each monotone, so the table's
 * largest norms give a bound (Ug) no smaller than any item's. */
static inline float item_bound(const hl_qscan *qs, int u, float r, float n)
{
    return (qs->c1[u] * r + qs->c2[u] * n) + qs->G[u];
}

/* a_j from the exact integer dot product: the same two float operations
 * in every kernel. */
static inline float approx_score(const hl_qscan *qs, int u, int32_t d_raw, float s, float b)
{
    return fmaf((float)(d_raw - qs->corr[u]), qs->s_q[u] * s, b);
}

/* The first test, a_j >= L - Ug: with the largest rows' bound, so every
 * item that can pass its own (propose) passes it (G covers the rounding
 * of the subtraction). */
static inline float first_test(const hl_qscan *qs, int u)
{
    return qs->L[u] - qs->Ug[u];
}

/* Quantizes user u's query and resets its scan state; marks the user
 * failed if the bound cannot cover it (qscore.c). */
void hl_qscan_prep(hl_qscan *qs, int u, const float *q);

/* Offers a lower bound to user u's heap of the k largest (qscore_scan.c). */
void hl_qscan_offer_lower(hl_qscan *qs, int u, float lb);

#endif
