/* bench_rank.c - refreshes per second on one core: encoder, blocked
 * scoring, top-K and exclusions together, against the SGEMM ceiling.
 *
 * dim 64, three heads, one hidden layer of 256 (the trainer's default
 * shape), k 20, seen items excluded, random users with a full history ring
 * of 32. For each catalogue size (10k, 100k, 1M items) and batch (1, 16,
 * 256 users) it prints one JSON line. The ceiling is what scoring alone
 * would allow at the SGEMM rate this machine reaches for that shape,
 * measured in the same run: a plain cblas_sgemm of (batch x 64) x (64 x
 * items), streamed in column blocks into a reused output (the full output
 * for 1M items would not fit in memory); the best of a few block sizes is
 * kept, so the ceiling is the best SGEMM rate we found, not the ranker's.
 * ceiling refreshes/s = sgemm FLOP/s / (2 x items x dim). Figures are
 * medians of 5 repetitions of this thread's CPU time, the ranker and the
 * SGEMM timed in alternation so that other load on the machine (caches,
 * memory bandwidth) hits both alike.
 * Usage: bench_rank [block_items] */
#include "rank.h"

#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DIM     64
#define HEADS   3
#define HIDDEN  256
#define K       20
#define RING    32
#define REPS    5
#define MAX_N   256

static uint64_t rng = 0x2545F4914F6CDD1Dull;

static float frand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 40) / (double)(1 << 24)) * 2.0f - 1.0f;
}

static float *rand_array(size_t n, float scale)
{
    float *a = malloc(n * sizeof(float));
    if (a == NULL) {
        fprintf(stderr, "bench_rank: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        a[i] = scale * frand();
    return a;
}

/* This thread's CPU time: OpenBLAS runs on this one thread, so on an idle
 * machine it equals the wall clock, and on a shared one (2 cores, several
 * builds and tests running) time spent descheduled does not count. */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

typedef struct bench_model {
    hl_model_parts p;
    float *w[2], *b[2];
} bench_model;

static void model_init(bench_model *bm, int32_t n_items)
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
    bm->p.e_in = rand_array((size_t)n_items * DIM, 1.0f);
    bm->p.e_out = rand_array((size_t)n_items * DIM, 1.0f);
    bm->p.bias = rand_array((size_t)n_items, 0.1f);
}

static void model_free(bench_model *bm)
{
    for (int l = 0; l < 2; l++) {
        free(bm->w[l]);
        free(bm->b[l]);
    }
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

static void users_init(bench_users *bu, int32_t n_items)
{
    memset(bu, 0, sizeof *bu);
    for (int u = 0; u < MAX_N; u++) {
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
        v->user = "bench";
        v->user_len = 5;
        v->s = bu->s[u];
        v->m = bu->m[u];
        v->t_ref_ms = 1700000000000;
        v->history = RING;
        v->n_hist = RING;
        v->hist_item = bu->item[u];
        v->hist_type = bu->type[u];
        v->hist_ts_ms = bu->ts[u];
    }
}

/* Calls of fn(ctx) per timed repetition so that one takes >= 0.1 s. */
static int calibrate(void (*fn)(void *), void *ctx)
{
    double t0 = now_s();
    fn(ctx);                                  /* also warms caches up */
    double once = now_s() - t0;
    return once >= 0.1 ? 1 : (int)(0.1 / (once > 1e-7 ? once : 1e-7)) + 1;
}

static double time_calls(void (*fn)(void *), void *ctx, int calls)
{
    double t0 = now_s();
    for (int c = 0; c < calls; c++)
        fn(ctx);
    return now_s() - t0;
}

typedef struct refresh_ctx {
    hl_ranker         *r;
    const hl_row_view *v;
    int                n;
    hl_rec             out[MAX_N * K];
    int                n_out[MAX_N];
} refresh_ctx;

static void do_refresh(void *p)
{
    refresh_ctx *c = p;
    hl_ranker_refresh(c->r, c->v, c->n, c->out, c->n_out);
}

/* Plain SGEMM (n x DIM) x (DIM x n_items), the output streamed in column
 * blocks of `block` items into one reused buffer C. */
typedef struct sgemm_ctx {
    const float *Q, *E;
    float       *C;
    int          n, block;
    int32_t      n_items;
} sgemm_ctx;

static void do_sgemm(void *p)
{
    sgemm_ctx *c = p;
    for (int32_t j0 = 0; j0 < c->n_items; j0 += c->block) {
        int nb = c->n_items - j0 < c->block ? c->n_items - j0 : c->block;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c->n, nb, DIM,
                    1.0f, c->Q, DIM, c->E + (size_t)j0 * DIM, DIM, 0.0f, c->C, nb);
    }
}

#define N_SG_BLOCKS 4
static const int sg_blocks[N_SG_BLOCKS] = {256, 512, 1024, 4096};

/* Times the ranker and the plain SGEMM at each block size in alternation,
 * REPS times, so load from other processes hits both alike. Prints one line. */
static void bench_batch(hl_ranker *r, const bench_users *bu, const float *Q,
                        const float *E, int n, int32_t n_items, float *C)
{
    static refresh_ctx rc;
    sgemm_ctx sc[N_SG_BLOCKS];
    int r_calls, s_calls[N_SG_BLOCKS], best = 0;
    double r_rate[REPS], s_rate[N_SG_BLOCKS][REPS], s_med[N_SG_BLOCKS];
    double flop = 2.0 * n * (double)n_items * DIM;

    rc.r = r;
    rc.v = bu->v;
    rc.n = n;
    r_calls = calibrate(do_refresh, &rc);
    for (int b = 0; b < N_SG_BLOCKS; b++) {
        sc[b] = (sgemm_ctx){Q, E, C, n, sg_blocks[b], n_items};
        s_calls[b] = calibrate(do_sgemm, &sc[b]);
    }
    for (int rep = 0; rep < REPS; rep++) {
        r_rate[rep] = (double)n * r_calls / time_calls(do_refresh, &rc, r_calls);
        for (int b = 0; b < N_SG_BLOCKS; b++)
            s_rate[b][rep] = flop * s_calls[b] / time_calls(do_sgemm, &sc[b], s_calls[b]);
    }
    for (int b = 0; b < N_SG_BLOCKS; b++) {
        s_med[b] = median(s_rate[b], REPS);
        if (s_med[b] > s_med[best])
            best = b;
    }
    double value = median(r_rate, REPS), ceiling = s_med[best] / (2.0 * n_items * DIM);
    printf("{\"bench\":\"rank_refresh\",\"items\":%d,\"dim\":%d,\"batch\":%d,"
           "\"k\":%d,\"history\":%d,\"value\":%.4g,\"unit\":\"refreshes/s\","
           "\"ceiling\":%.4g,\"ratio\":%.3f,\"sgemm_gflops\":%.2f,"
           "\"sgemm_block\":%d,\"clock\":\"thread_cpu\"}\n", n_items, DIM, n, K, RING, value, ceiling,
           value / ceiling, s_med[best] / 1e9, sg_blocks[best]);
    fflush(stdout);
}

static int bench_items(int32_t n_items, int block, bench_users *bu)
{
    static const int batches[] = {1, 16, 256};
    char err[256];
    bench_model bm;

    model_init(&bm, n_items);
    users_init(bu, n_items);
    hl_rank_opts o = {.k = K, .exclude_seen = 1, .max_batch = MAX_N,
                      .block_items = block};
    hl_ranker *r = hl_ranker_create_parts(&bm.p, &o, err, sizeof err);
    if (r == NULL) {
        fprintf(stderr, "bench_rank: %s\n", err);
        model_free(&bm);
        return 1;
    }
    float *Q = rand_array((size_t)MAX_N * DIM, 1.0f);
    float *C = malloc((size_t)MAX_N * sg_blocks[N_SG_BLOCKS - 1] * sizeof(float));
    for (size_t i = 0; i < sizeof batches / sizeof batches[0]; i++)
        bench_batch(r, bu, Q, bm.p.e_out, batches[i], n_items, C);
    free(C);
    free(Q);
    hl_ranker_destroy(r);
    model_free(&bm);
    return 0;
}

int main(int argc, char **argv)
{
    static const int32_t sizes[] = {10000, 100000, 1000000};
    int block = argc > 1 ? atoi(argv[1]) : 0;
    bench_users *bu = malloc(sizeof *bu);

    openblas_set_num_threads(1);   /* one core: the worker's setting */
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (bench_items(sizes[i], block, bu) != 0)
            return 1;
    free(bu);
    return 0;
}
