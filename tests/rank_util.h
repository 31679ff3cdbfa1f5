/* rank_util.h - what the ranker's tests share (test_rank.c, test_qscore.c):
 * a seeded random stream and a random model in memory (embeddings, biases
 * and an encoder of n_hidden layers), built in the same draw order for
 * both so each file's cases see the models they always saw.
 *
 * The including file defines RNG_SEED (its stream's seed) and includes
 * test.h first. */
#ifndef HL_RANK_UTIL_H
#define HL_RANK_UTIL_H

#include "rank.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = RNG_SEED;

static inline uint32_t urand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}

static inline float frand(void)   /* uniform in [-1, 1) */
{
    return (float)(urand() >> 8) / (float)(1 << 23) - 1.0f;
}

static inline float *rand_array(size_t n, float scale)
{
    float *a = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        a[i] = scale * frand();
    return a;
}

/* A random model in memory; every array is owned here. */
typedef struct tmodel {
    hl_model_parts p;
    float *e_in, *e_out, *bias, *w[HL_MAX_LAYERS], *b[HL_MAX_LAYERS];
} tmodel;

/* n_heads heads of dim, n_hidden hidden layers of hidden units, then
 * e_in, e_out and bias: the draws in that order. */
static inline void tmodel_init(tmodel *t, int32_t n_items, int dim, int n_heads,
                               int n_hidden, int hidden)
{
    hl_model_info *mi = &t->p.info;
    memset(t, 0, sizeof *t);
    mi->dim = dim;
    mi->n_heads = n_heads;
    mi->n_items = n_items;
    for (int h = 0; h < n_heads; h++)
        mi->half_life_ms[h] = 3600e3 * (1 << (3 * h));
    for (int ty = 0; ty < HL_N_TYPES; ty++)
        mi->type_weight[ty] = 1.0f + ty;
    mi->n_layers = n_hidden + 1;
    for (int l = 0; l < mi->n_layers; l++) {
        int n_in = l == 0 ? n_heads * (dim + 1) : mi->layer_out[l - 1];
        mi->layer_out[l] = l == n_hidden ? dim : hidden;
        t->w[l] = rand_array((size_t)mi->layer_out[l] * n_in, 0.3f);
        t->b[l] = rand_array((size_t)mi->layer_out[l], 0.1f);
        t->p.layer_w[l] = t->w[l];
        t->p.layer_b[l] = t->b[l];
    }
    t->p.e_in = t->e_in = rand_array((size_t)n_items * dim, 1.0f);
    t->p.e_out = t->e_out = rand_array((size_t)n_items * dim, 1.0f);
    t->p.bias = t->bias = rand_array((size_t)n_items, 0.5f);
}

static inline void tmodel_free(tmodel *t)
{
    for (int l = 0; l < t->p.info.n_layers; l++) {
        free(t->w[l]);
        free(t->b[l]);
    }
    free(t->e_in);
    free(t->e_out);
    free(t->bias);
}

#endif
