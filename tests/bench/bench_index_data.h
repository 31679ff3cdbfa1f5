/* bench_index_data.h - the models and users of the index benchmarks
 * (bench_index.c, bench_faiss.c), so both measure the same data: the
 * shared bench_util.h stream, encoder and users (SAMPLE of them, each with
 * a full ring of seen items), and e_out either uniform (random) or drawn
 * around CENTRES centres (clustered). Drawing order matters: a benchmark
 * that makes the random model, its users, then the clustered model and
 * its users gets the same numbers as bench_index at the same item count.
 *
 * The including file defines BENCH_NAME (its name, for messages) first. */
#ifndef HL_BENCH_INDEX_DATA_H
#define HL_BENCH_INDEX_DATA_H

#include <cblas.h>   /* before K is defined: its prototypes name a parameter K */

#define BENCH_SEED 0x2545F4914F6CDD1Dull
#define SAMPLE     1024        /* users whose lists are compared */
#define MAX_N      SAMPLE
#include "bench_util.h"

#define K          20
#define CENTRES    4096
#define REPS       3           /* timed passes; rates are their median */

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

/* The encoder of bench_util.h with these items; e_in is e_out (only
 * `because` reads it: one copy saves 2.5 GB at 10M items). */
static inline void index_model_init(bench_model *bm, int32_t n_items, int clustered)
{
    model_init_mlp(bm, n_items);
    bm->p.e_out = make_e_out(n_items, clustered);
    bm->p.e_in = bm->p.e_out;
    bm->p.bias = rand_array((size_t)n_items, 0.1f);
}

/* Lists/s of r over the users [0, n_users) in batches of batch (median of
 * REPS passes); out (SAMPLE, K) and n_out get the lists of the last pass. */
static inline double index_rate(hl_ranker *r, const bench_users *bu, int n_users, int batch,
                                hl_rec *out, int *n_out)
{
    double t[REPS];
    for (int rep = 0; rep < REPS; rep++) {
        double t0 = now_s();
        for (int u = 0; u < n_users; u += batch) {
            int n = n_users - u < batch ? n_users - u : batch;
            hl_ranker_refresh(r, bu->v + u, n, out + (size_t)u * K, n_out + u);
        }
        t[rep] = now_s() - t0;
    }
    qsort(t, REPS, sizeof t[0], cmp_double);
    return n_users / t[REPS / 2];
}

static inline void index_model_free(bench_model *bm)
{
    model_free_mlp(bm);
    free((void *)bm->p.e_out);
    free((void *)bm->p.bias);
}

#endif
