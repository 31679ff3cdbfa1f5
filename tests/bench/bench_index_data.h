/* bench_index_data.h - the models and users of the index benchmarks
 * (bench_index.c, bench_faiss.c), so both measure the same data: a seeded
 * stream, the random and the clustered e_out (see bench_index.c), a
 * random encoder of the trainer's shape, and SAMPLE users with a full ring
 * of seen items. Drawing order matters: a benchmark that makes the random
 * model, its users, then the clustered model and its users gets the same
 * numbers as bench_index at the same item count.
 *
 * The including file defines BENCH_NAME (its name, for messages) first. */
#ifndef HL_BENCH_INDEX_DATA_H
#define HL_BENCH_INDEX_DATA_H

#include "rank.h"

#include <cblas.h>   /* before K is defined: its prototypes name a parameter K */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DIM      64
#define HEADS    3
#define HIDDEN   256
#define K        20
#define RING     32
#define SAMPLE   1024          /* users whose lists are compared */
#define CENTRES  4096

static uint64_t rng = 0x2545F4914F6CDD1Dull;

static inline float frand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 40) / (double)(1 << 24)) * 2.0f - 1.0f;
}

static inline void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (p == NULL) {
        fprintf(stderr, "%s: out of memory (%zu bytes)\n", BENCH_NAME, n);
        exit(1);
    }
    return p;
}

static inline float *rand_array(size_t n, float scale)
{
    float *a = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        a[i] = scale * frand();
    return a;
}

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ---- models and users ---- */

typedef struct bench_model {
    hl_model_parts p;
    float *w[2], *b[2], *e_out;
} bench_model;

/* e_out (n, DIM): uniform, or CENTRES centres plus noise. */
static inline float *make_e_out(int32_t n, int clustered)
{
    if (!clustered)
        return rand_array((size_t)n * DIM, 1.0f);
    float *c = rand_array((size_t)CENTRES * DIM, 1.0f), *e = xmalloc((size_t)n * DIM * 4);
    for (int32_t j = 0; j < n; j++) {
        const float *cj = c + (size_t)(((uint32_t)(frand() * 1e6f + 1e6f)) % CENTRES) * DIM;
        for (int d = 0; d < DIM; d++)
            e[(size_t)j * DIM + d] = cj[d] + 0.3f * frand();
    }
    free(c);
    return e;
}

static inline void model_init(bench_model *bm, int32_t n_items, int clustered)
{
    hl_model_info *mi = &bm->p.info;
    memset(bm, 0, sizeof *bm);
    mi->dim = DIM;
    mi->n_heads = HEADS;
    mi->n_items = n_items;
    for (int h = 0; h < HEADS; h++)
        mi->half_life_ms[h] = h == 0 ? 3600e3 : h == 1 ? 86400e3 : 30 * 86400e3;
    for (int t = 0; t < HL_N_TYPES; t++)
        mi->type_weight[t] = 1.0f;
    mi->n_layers = 2;
    mi->layer_out[0] = HIDDEN;
    mi->layer_out[1] = DIM;
    bm->w[0] = rand_array((size_t)HIDDEN * HEADS * (DIM + 1), 0.1f);
    bm->b[0] = rand_array(HIDDEN, 0.1f);
    bm->w[1] = rand_array((size_t)DIM * HIDDEN, 0.1f);
    bm->b[1] = rand_array(DIM, 0.1f);
    for (int l = 0; l < 2; l++) {
        bm->p.layer_w[l] = bm->w[l];
        bm->p.layer_b[l] = bm->b[l];
    }
    bm->e_out = make_e_out(n_items, clustered);
    bm->p.e_out = bm->e_out;
    bm->p.e_in = bm->e_out;            /* only `because` reads it: one copy saves 2.5 GB at 10M */
    bm->p.bias = rand_array((size_t)n_items, 0.1f);
}

static inline void model_free(bench_model *bm)
{
    for (int l = 0; l < 2; l++) {
        free(bm->w[l]);
        free(bm->b[l]);
    }
    free(bm->e_out);
    free((void *)bm->p.bias);
}

typedef struct bench_users {
    float   s[SAMPLE][HEADS * DIM], m[SAMPLE][HEADS];
    int32_t item[SAMPLE][RING];
    uint8_t type[SAMPLE][RING];
    int64_t ts[SAMPLE][RING];
    hl_row_view v[SAMPLE];
} bench_users;

static inline void users_init(bench_users *bu, int32_t n_items)
{
    memset(bu, 0, sizeof *bu);
    for (int u = 0; u < SAMPLE; u++) {
        hl_row_view *v = &bu->v[u];
        for (int h = 0; h < HEADS; h++) {
            bu->m[u][h] = 2.0f + frand();
            for (int d = 0; d < DIM; d++)
                bu->s[u][h * DIM + d] = bu->m[u][h] * frand();
        }
        for (int i = 0; i < RING; i++) {
            bu->item[u][i] = (int32_t)((frand() + 1.0f) * 0.5f * (float)(n_items - 1));
            bu->ts[u][i] = 1700000000000 - (int64_t)(RING - i) * 60000;
        }
        *v = (hl_row_view){.user = "bench", .user_len = 5, .s = bu->s[u], .m = bu->m[u],
                           .t_ref_ms = 1700000000000, .history = RING, .n_hist = RING,
                           .hist_item = bu->item[u], .hist_type = bu->type[u],
                           .hist_ts_ms = bu->ts[u]};
    }
}

#endif
