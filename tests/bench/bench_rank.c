/* bench_rank.c - refreshes per second on one core: encoder, scoring,
 * top-K and exclusions together, exact (fp32) and two-stage scoring,
 * against this machine's physical limits measured in the same run.
 *
 * dim 64, three heads, one hidden layer of 256 (the trainer's default
 * shape), k 20, seen items excluded, random users with a full history ring
 * of 32. For each catalogue size (10k, 100k, 1M items), batch (1, 16, 256
 * users) and scoring it prints one JSON line. The ceiling:
 *  - batch 1: memory bandwidth (a read of a 256 MiB buffer, best of three)
 *    over the bytes a refresh must read: e_out and the biases for exact,
 *    the int8 table (rows, scales, biases) for two-stage;
 *  - batches 16 and 256: arithmetic peak (a loop of independent AVX-512
 *    FMAs, or VNNI dot products for two-stage, on this thread) over the
 *    multiply-adds of scoring every item: items x dim per user.
 * At 10k and 100k items the int8 table (0.7 and 7 MB) stays in this
 * machine's 32 MB L3 between refreshes, so batch 1 can beat the DRAM
 * ceiling there; at 1M items (72 MB) it cannot.
 * "speedup" on a two-stage line is its rate over the exact line's. Then,
 * per size, one "rank_two_stage_mismatch" line: the lists of 10,000 users
 * (40 batches of 256 random users) from both paths, compared item, order
 * and score bit for bit; "mismatches" counts users whose lists differ
 * (must be 0), "fallbacks" users the two-stage scan gave to the exact one.
 * Figures are medians of 5 repetitions of this thread's CPU time, the two
 * paths timed in alternation so that other load on the machine hits both
 * alike.
 * Usage: bench_rank [max_items] (default 1000000) */
#define BENCH_NAME "bench_rank"
#define BENCH_SEED 0x2545F4914F6CDD1Dull
#include "bench_util.h"
#include "bench_args.h"
#include "bench_ceiling.h"

#include <cblas.h>

#define K       20
#define REPS    5

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

/* ---- the machine's limits, measured here ---- */

typedef struct ceilings {
    double fma_per_s;    /* fp32 multiply-adds per second (0: not measured) */
    double vnni_per_s;   /* int8 multiply-adds per second by VNNI (0: none) */
    double bytes_per_s;  /* memory read bandwidth */
} ceilings;

static ceilings measure_ceilings(void)
{
    ceilings c = {0, 0, 0};
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f"))
        c.fma_per_s = fma_peak_avx512();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni"))
        c.vnni_per_s = vnni_peak();
#endif
    c.bytes_per_s = bandwidth();
    return c;
}

/* Refreshes/s the machine allows one path at batch n. */
static double ceiling_of(const ceilings *c, const hl_ranker *r, int two_stage, int n,
                         int32_t n_items, size_t q_bytes, const char **kind)
{
    if (n == 1) {
        *kind = "memory_bandwidth";
        double bytes = two_stage ? (double)q_bytes : (double)n_items * (DIM + 1) * 4.0;
        return c->bytes_per_s / bytes;
    }
    *kind = two_stage ? "vnni_peak" : "fma_peak";
    double per_s = two_stage ? c->vnni_per_s : c->fma_per_s;
    return per_s / ((double)n_items * DIM);
}

/* ---- one line per (items, batch, scoring) ---- */

typedef struct path {
    hl_ranker  *r;
    int         two_stage;
    double      rate;
} path;

static void print_line(const path *p, const ceilings *c, int n, int32_t n_items,
                       size_t q_bytes, double exact_rate)
{
    const char *kind;
    double ceiling = ceiling_of(c, p->r, p->two_stage, n, n_items, q_bytes, &kind);
    printf("{\"bench\":\"rank_refresh\",\"items\":%d,\"dim\":%d,\"batch\":%d,"
           "\"k\":%d,\"history\":%d,\"scoring\":\"%s\",\"value\":%.4g,"
           "\"unit\":\"refreshes/s\",\"ceiling\":%.4g,\"ceiling_kind\":\"%s\","
           "\"ratio\":%.3f", n_items, DIM, n, K, RING, hl_ranker_scoring(p->r), p->rate,
           ceiling, kind, ceiling > 0 ? p->rate / ceiling : 0.0);
    if (p->two_stage)
        printf(",\"speedup\":%.2f", p->rate / exact_rate);
    printf(",\"bandwidth_gbs\":%.1f,\"fma_gflops\":%.1f,\"vnni_gmacs\":%.1f,"
           "\"clock\":\"thread_cpu\"}\n",
           c->bytes_per_s / 1e9, 2.0 * c->fma_per_s / 1e9, c->vnni_per_s / 1e9);
    fflush(stdout);
}

/* Times both paths in alternation, REPS times; prints two lines. */
static void bench_batch(path *paths, const ceilings *c, const bench_users *bu, int n,
                        int32_t n_items, size_t q_bytes)
{
    static refresh_ctx rc[2];
    int calls[2];
    double rate[2][REPS];

    for (int i = 0; i < 2; i++) {
        rc[i].r = paths[i].r;
        rc[i].v = bu->v;
        rc[i].n = n;
        calls[i] = calibrate(do_refresh, &rc[i]);
    }
    for (int rep = 0; rep < REPS; rep++)
        for (int i = 0; i < 2; i++)
            rate[i][rep] = (double)n * calls[i] / time_calls(do_refresh, &rc[i], calls[i]);
    for (int i = 0; i < 2; i++)
        paths[i].rate = median(rate[i], REPS);
    for (int i = 0; i < 2; i++)
        print_line(&paths[i], c, n, n_items, q_bytes, paths[0].rate);
}

/* Users of a 10k sample whose two-stage list differs from the exact one
 * in any item, position or score bit. */
static void count_mismatches(path *paths, bench_users *bu, int32_t n_items)
{
    static hl_rec out[2][MAX_N * K];
    static int n_out[2][MAX_N];
    long mism = 0, users = 0;
    uint64_t fb0 = hl_ranker_fallbacks(paths[1].r);

    for (int b = 0; b < 10000 / MAX_N + 1 && users < 10000; b++) {
        int n = 10000 - users < MAX_N ? (int)(10000 - users) : MAX_N;
        users_init(bu, n_items);
        for (int i = 0; i < 2; i++)
            hl_ranker_refresh(paths[i].r, bu->v, n, out[i], n_out[i]);
        for (int u = 0; u < n; u++)
            mism += n_out[0][u] != n_out[1][u] ||
                    memcmp(out[0] + (size_t)u * K, out[1] + (size_t)u * K,
                           (size_t)n_out[0][u] * sizeof(hl_rec)) != 0;
        users += n;
    }
    printf("{\"bench\":\"rank_two_stage_mismatch\",\"items\":%d,\"dim\":%d,\"k\":%d,"
           "\"users\":%ld,\"value\":%ld,\"unit\":\"mismatched lists\",\"target\":0,"
           "\"fallbacks\":%llu}\n", n_items, DIM, K, users, mism,
           (unsigned long long)(hl_ranker_fallbacks(paths[1].r) - fb0));
    fflush(stdout);
}

static int bench_items(int32_t n_items, bench_users *bu)
{
    static const int batches[] = {1, 16, 256};
    char err[256];
    bench_model bm;
    path paths[2] = {{NULL, 0, 0}, {NULL, 1, 0}};

    model_init(&bm, n_items);
    users_init(bu, n_items);
    for (int i = 0; i < 2; i++) {
        hl_rank_opts o = {.k = K, .exclude_seen = 1, .max_batch = MAX_N,
                          .scoring = i ? HL_SCORING_TWO_STAGE : HL_SCORING_EXACT};
        if ((paths[i].r = hl_ranker_create_parts(&bm.p, &o, err, sizeof err)) == NULL) {
            fprintf(stderr, "bench_rank: %s\n", err);
            hl_ranker_destroy(paths[0].r);
            model_free(&bm);
            return 1;
        }
    }
    /* the int8 table's bytes: (16 dim + 128) per chunk of 16 items */
    size_t q_bytes = (size_t)((n_items + 15) / 16) * (16 * DIM + 128);
    ceilings c = measure_ceilings();
    for (size_t i = 0; i < sizeof batches / sizeof batches[0]; i++)
        bench_batch(paths, &c, bu, batches[i], n_items, q_bytes);
    count_mismatches(paths, bu, n_items);
    for (int i = 0; i < 2; i++)
        hl_ranker_destroy(paths[i].r);
    model_free(&bm);
    return 0;
}

static const char usage[] =
    "usage: bench_rank [MAX_ITEMS]\n"
    "  MAX_ITEMS  the largest catalogue of 10k, 100k, 1M measured (default 1000000)\n"
    "Prints JSON lines: refreshes/s against this machine's limits.\n";

int main(int argc, char **argv)
{
    bench_args("bench_rank", argc, argv, usage, bench_bad_counts(argc, argv, 1, 1));
    static const int32_t sizes[] = {10000, 100000, 1000000};
    long max_items = argc > 1 ? atol(argv[1]) : 1000000;
    bench_users *bu = malloc(sizeof *bu);

    openblas_set_num_threads(1);   /* one core: the worker's setting */
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i] <= max_items && bench_items(sizes[i], bu) != 0)
            return 1;
    free(bu);
    return 0;
}
