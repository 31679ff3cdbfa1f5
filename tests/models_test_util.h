/* models_test_util.h - what test_models.c (the model set's checks of
 * model.path, its swaps' frees) and test_models_keep.c (model.dir: the
 * kept copies, their leases and temporaries) share: small models written
 * on demand, and a working directory of the run's own. Header-only,
 * static inline. */
#ifndef HL_MODELS_TEST_UTIL_H
#define HL_MODELS_TEST_UTIL_H

#include "test.h"

#include "models.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#define DIM     8
#define N_ITEMS 50
/* Relative: main() first moves into a directory of this process's own
 * (mkdtemp), so clones running the test at once never share files. */
#define TOP     "test_models_dir"

/* N_ITEMS items "it<i>" whose vectors depend on seed; version names it. */
static inline int write_model(const char *path, const char *version, int seed)
{
    hl_model_parts p;
    memset(&p, 0, sizeof p);
    hl_model_info *mi = &p.info;
    *mi = (hl_model_info){.dim = DIM, .n_heads = 1, .half_life_ms = {3600e3},
                          .n_items = N_ITEMS, .n_layers = 1, .layer_out = {DIM}};
    for (int t = 0; t < HL_N_TYPES; t++)
        mi->type_weight[t] = 1;
    snprintf(mi->version, sizeof mi->version, "%s", version);
    float *e = malloc(sizeof(float) * N_ITEMS * DIM), *bias = calloc(N_ITEMS, sizeof(float));
    float *w = calloc((size_t)DIM * (size_t)hl_model_input_dim(mi), sizeof(float));
    float *b = calloc(DIM, sizeof(float));
    char ids[N_ITEMS][16];
    const char *idp[N_ITEMS];
    uint32_t lens[N_ITEMS];
    for (int i = 0; i < N_ITEMS * DIM; i++)
        e[i] = (float)((i * 7 + seed * 13) % 17) / 17.0f - 0.5f;
    for (int i = 0; i < N_ITEMS; i++) {
        lens[i] = (uint32_t)snprintf(ids[i], sizeof ids[i], "it%d", i);
        idp[i] = ids[i];
    }
    p.item_id = idp;
    p.item_id_len = lens;
    p.e_in = p.e_out = e;
    p.bias = bias;
    p.layer_w[0] = w;
    p.layer_b[0] = b;
    char err[256];
    int rc = hl_model_write(path, &p, err, sizeof err);
    if (rc != 0)
        printf("    model %s: %s\n", path, err);
    free(e); free(bias); free(w); free(b);
    return rc;
}

/* TOP removed and made again, empty: each case starts from its own. */
static inline int fresh_top(void)
{
    return system("rm -rf " TOP) == 0 && mkdir(TOP, 0755) == 0;
}

/* A fresh TOP holding the two models most cases swap between: A (seed 1)
 * at model.path, TOP/model.hlm, and B (seed 2) at TOP/b.hlm. */
static inline int top_with_a_and_b(void)
{
    return fresh_top() && write_model(TOP "/model.hlm", "A", 1) == 0 &&
           write_model(TOP "/b.hlm", "B", 2) == 0;
}

/* Into a new directory of this run's own, under $TMPDIR or /tmp; its path
 * into dir. A fixed /tmp/test_models_dir was shared by every clone
 * running the test at once: one's rm -rf emptied another's. */
static inline int private_cwd(char *dir, size_t len)
{
    const char *base = getenv("TMPDIR");
    snprintf(dir, len, "%s/test_" T_SUITE ".XXXXXX", base != NULL && *base ? base : "/tmp");
    /* 0711: test_unreadable_retried_after_chmod's child, as nobody, must
     * reach TOP inside it */
    if (mkdtemp(dir) == NULL || chmod(dir, 0711) != 0 || chdir(dir) != 0) {
        printf("FAIL " T_SUITE ": no directory of its own under %s: %s\n", dir, strerror(errno));
        return -1;
    }
    return 0;
}

#endif
