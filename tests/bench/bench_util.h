/* bench_util.h - what the ranker's benchmarks share (bench_rank.c,
 * bench_catalogue.c, bench_index.c): their shape (dim 64, three heads, one
 * hidden layer of 256: the trainer's default; up to MAX_N users, 256 unless
 * the includer sets it, each with a full ring of 32 seen items), a seeded
 * random stream, a random model and random users of that shape, and the
 * clock they time with.
 *
 * The including file defines BENCH_NAME (its name, for messages) and
 * BENCH_SEED (its stream's seed) first. Each draws the same numbers in the
 * same order as before this header, so figures stay comparable. */
#ifndef HL_BENCH_UTIL_H
#define HL_BENCH_UTIL_H

#include "rank.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DIM     64
#define HEADS   3
#define HIDDEN  256
#define RING    32
#ifndef MAX_N
#define MAX_N   256      /* users per batch (or sample), at most */
#endif

static uint64_t rng = BENCH_SEED;

static inline float frand(void)   /* uniform in [-1, 1) */
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 40) / (double)(1 << 24)) * 2.0f - 1.0f;
}

/* malloc that exits, saying how much, when memory runs out. */
static inline void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (p == NULL) {
        fprintf(stderr, "%s: out of memory (%zu bytes)\n", BENCH_NAME, n);
        exit(1);
    }
    return p;
}

/* n uniform floats in [-scale, scale); exits when out of memory. */
static inline float *rand_array(size_t n, float scale)
{
    float *a = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        a[i] = scale * frand();
    return a;
}

/* This thread's CPU time: OpenBLAS runs on this one thread, so on an idle
 * machine it equals the wall clock, and on a shared one (2 cores, several
 * builds and tests running) time spent descheduled does not count. */
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

/* Sorts v and returns its middle element. */
static inline double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

/* A random model of the shape above; every array is owned here. */
typedef struct bench_model {
    hl_model_parts p;
    float *w[2], *b[2];
} bench_model;

/* The shape and the random MLP; the item arrays are the caller's. */
static inline void model_init_mlp(bench_model *bm, int32_t n_items)
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
}

static inline void model_init(bench_model *bm, int32_t n_items)
{
    model_init_mlp(bm, n_items);
    bm->p.e_in = rand_array((size_t)n_items * DIM, 1.0f);
    bm->p.e_out = rand_array((size_t)n_items * DIM, 1.0f);
    bm->p.bias = rand_array((size_t)n_items, 0.1f);
}

static inline void model_free_mlp(bench_model *bm)
{
    for (int l = 0; l < 2; l++) {
        free(bm->w[l]);
        free(bm->b[l]);
    }
}

static inline void model_free(bench_model *bm)
{
    model_free_mlp(bm);
    free((void *)bm->p.e_in);
    free((void *)bm->p.e_out);
    free((void *)bm->p.bias);
}

/* MAX_N users with random heads and a full ring of known items. */
typedef struct bench_users {
    float   s[MAX_N][HEADS * DIM], m[MAX_N][HEADS];
    int32_t item[MAX_N][RING];
    uint8_t type[MAX_N][RING];
    int64_t ts[MAX_N][RING];
    hl_row_view v[MAX_N];
} bench_users;

static inline void users_init(bench_users *bu, int32_t n_items)
{
    memset(bu, 0, sizeof *bu);
    for (int u = 0; u < MAX_N; u++) {
        for (int h = 0; h < HEADS; h++) {
            bu->m[u][h] = 2.0f + frand();
            for (int d = 0; d < DIM; d++)
                bu->s[u][h * DIM + d] = bu->m[u][h] * frand();
        }
        for (int i = 0; i < RING; i++) {
            bu->item[u][i] = (int32_t)((frand() + 1.0f) * 0.5f * (float)(n_items - 1));
            bu->ts[u][i] = 1700000000000 - (int64_t)(RING - i) * 60000;
        }
        bu->v[u] = (hl_row_view){.user = "bench", .user_len = 5, .s = bu->s[u], .m = bu->m[u],
                                 .t_ref_ms = 1700000000000, .history = RING, .n_hist = RING,
                                 .hist_item = bu->item[u], .hist_type = bu->type[u],
                                 .hist_ts_ms = bu->ts[u]};
    }
}

#endif
