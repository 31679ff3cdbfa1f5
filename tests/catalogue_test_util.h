/* catalogue_test_util.h - what test_catalogue.c (the catalogue's own
 * state: updates, tombstones, expiry, rebinding, fold-in, compaction) and
 * test_catalogue_rank.c (its hook in the ranker) share: a seeded random
 * source and small models with ids "i<row>", written and opened for real. */
#ifndef HL_CATALOGUE_TEST_UTIL_H
#define HL_CATALOGUE_TEST_UTIL_H

#include "test.h"
#include "catalogue.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DIM 16
#define N   300

static uint64_t rng = 0x243F6A8885A308D3ull;

static inline float frand(void)   /* uniform in [-1, 1) */
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)(rng >> 40) / (float)(1 << 23) - 1.0f;
}

/* A model of n items with ids "i<row>"; arrays owned here. */
typedef struct test_model {
    hl_model_parts p;
    char  *ids[N + 64];
    uint32_t lens[N + 64];
    float *e_in, *e_out, *bias, *w, *b;
} tm;

static inline void tm_init(tm *t, int n)
{
    memset(t, 0, sizeof *t);
    hl_model_info *mi = &t->p.info;
    mi->dim = DIM;
    mi->n_heads = 1;
    mi->half_life_ms[0] = 3600e3;
    for (int i = 0; i < HL_N_TYPES; i++)
        mi->type_weight[i] = 1.0f;
    mi->n_items = n;
    mi->n_layers = 1;
    mi->layer_out[0] = DIM;
    snprintf(mi->version, sizeof mi->version, "cat-test");
    for (int r = 0; r < n; r++) {
        t->ids[r] = malloc(16);
        t->lens[r] = (uint32_t)snprintf(t->ids[r], 16, "i%d", r);
    }
    t->e_in = malloc((size_t)n * DIM * sizeof(float));
    t->e_out = malloc((size_t)n * DIM * sizeof(float));
    t->bias = malloc((size_t)n * sizeof(float));
    for (int i = 0; i < n * DIM; i++) {
        t->e_in[i] = frand();
        t->e_out[i] = frand();
    }
    for (int i = 0; i < n; i++)
        t->bias[i] = 0.3f * frand();
    t->w = malloc((size_t)DIM * (DIM + 1) * sizeof(float));
    t->b = calloc(DIM, sizeof(float));
    for (int i = 0; i < DIM * (DIM + 1); i++)
        t->w[i] = 0.5f * frand();
    t->p.layer_w[0] = t->w;
    t->p.layer_b[0] = t->b;
    t->p.item_id = (const char *const *)t->ids;
    t->p.item_id_len = t->lens;
    t->p.e_in = t->e_in;
    t->p.e_out = t->e_out;
    t->p.bias = t->bias;
}

/* The same items at another dim (<= DIM, the arrays keep DIM's stride): a
 * model a swap to another width goes to. */
static inline void tm_init_dim(tm *t, int n, int dim)
{
    tm_init(t, n);
    t->p.info.dim = dim;
    t->p.info.layer_out[0] = dim;
}

static inline void tm_free(tm *t)
{
    for (int r = 0; r < t->p.info.n_items; r++)
        free(t->ids[r]);
    free(t->e_in); free(t->e_out); free(t->bias); free(t->w); free(t->b);
}

static inline hl_model *tm_open(const tm *t, const char *name)
{
    char path[128], err[256];
    snprintf(path, sizeof path, "/tmp/hl_test_catalogue_%d_%s.hlm", (int)getpid(), name);
    if (hl_model_write(path, &t->p, err, sizeof err) != 0) {
        printf("    write: %s\n", err);
        return NULL;
    }
    hl_model *m = hl_model_open(path, err, sizeof err);
    unlink(path);
    return m;
}

static inline hl_item_update upd(const char *id)
{
    return (hl_item_update){.id = id, .id_len = (uint32_t)strlen(id), .available = 1,
                            .expires_at_ms = HL_CATALOGUE_NO_EXPIRY};
}

#endif
