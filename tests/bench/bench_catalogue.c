/* bench_catalogue.c - what the live catalogue costs a refresh: refreshes per
 * second on one core with 1% of the items hidden, and with 1% of the
 * catalogue added as side items, against the same ranker with no catalogue
 * (the ceiling: hiding can only cost). Target (issue 11): hidden items
 * within noise of none.
 *
 * 100k items, dim 64, three heads, one hidden layer of 256, k 20, batches
 * of 256 users with a full ring of 32 seen items (bench_rank's shape).
 * The variants are timed in alternation, REPS times, each repetition at
 * least 0.2 s of this thread's CPU time; medians are printed, one JSON line
 * per variant. Usage: bench_catalogue [items] */
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
#define REPS    7
#define N       256

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static float frand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 40) / (double)(1 << 24)) * 2.0f - 1.0f;
}

static float *rand_array(size_t n, float scale)
{
    float *a = malloc(n * sizeof(float));
    if (a == NULL) {
        fprintf(stderr, "bench_catalogue: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        a[i] = scale * frand();
    return a;
}

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

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

typedef struct users {
    float   s[N][HEADS * DIM], m[N][HEADS];
    int32_t item[N][RING];
    uint8_t type[N][RING];
    int64_t ts[N][RING];
    hl_row_view v[N];
} users;

static void users_init(users *bu, int32_t n_items)
{
    memset(bu, 0, sizeof *bu);
    for (int u = 0; u < N; u++) {
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

static hl_rec out[N * K];
static int n_out[N];

/* Refreshes per second of one timed repetition (>= 0.2 s). */
static double rate(hl_ranker *r, const users *bu, const hl_rank_catalogue *c)
{
    int calls = 0;
    hl_ranker_set_catalogue(r, c);
    double t0 = now_s(), t;
    do {
        hl_ranker_refresh(r, bu->v, N, out, n_out);
        calls++;
    } while ((t = now_s() - t0) < 0.2);
    return (double)calls * N / t;
}

int main(int argc, char **argv)
{
    int32_t n_items = argc > 1 ? atoi(argv[1]) : 100000;
    int32_t n_hid = n_items / 100, n_side = n_items / 100;
    char err[256];
    hl_model_parts p;
    memset(&p, 0, sizeof p);
    openblas_set_num_threads(1);
    p.info = (hl_model_info){.dim = DIM, .n_heads = HEADS, .n_items = n_items, .n_layers = 2,
                             .layer_out = {HIDDEN, DIM},
                             .half_life_ms = {3600e3, 86400e3, 30 * 86400e3}};
    for (int t = 0; t < HL_N_TYPES; t++)
        p.info.type_weight[t] = 1.0f;
    p.layer_w[0] = rand_array((size_t)HIDDEN * HEADS * (DIM + 1), 0.1f);
    p.layer_b[0] = rand_array(HIDDEN, 0.1f);
    p.layer_w[1] = rand_array((size_t)DIM * HIDDEN, 0.1f);
    p.layer_b[1] = rand_array(DIM, 0.1f);
    p.e_in = rand_array((size_t)n_items * DIM, 1.0f);
    p.e_out = rand_array((size_t)n_items * DIM, 1.0f);
    p.bias = rand_array((size_t)n_items, 0.1f);
    hl_rank_opts o = {.k = K, .exclude_seen = 1, .max_batch = N};
    hl_ranker *r = hl_ranker_create_parts(&p, &o, err, sizeof err);
    users *bu = malloc(sizeof *bu);
    int32_t *hidden = malloc((size_t)n_hid * sizeof *hidden);
    if (r == NULL || bu == NULL || hidden == NULL) {
        fprintf(stderr, "bench_catalogue: %s\n", r ? "out of memory" : err);
        return 1;
    }
    users_init(bu, n_items);
    for (int32_t i = 0; i < n_hid; i++)     /* 1% of the rows, spread over the catalogue */
        hidden[i] = (int32_t)((frand() + 1.0f) * 0.5f * (float)(n_items - 1));
    qsort(hidden, (size_t)n_hid, sizeof *hidden, cmp_i32);
    hl_rank_catalogue none = {0}, hid = {.hidden = hidden, .n_hidden = n_hid};
    hl_rank_catalogue side = {.e_in = rand_array((size_t)n_side * DIM, 1.0f),
                              .e_out = rand_array((size_t)n_side * DIM, 1.0f),
                              .bias = rand_array((size_t)n_side, 0.1f), .n_side = n_side};
    const hl_rank_catalogue *var[3] = {&none, &hid, &side};
    const char *name[3] = {"none", "hidden_1pct", "added_1pct"};
    double rt[3][REPS];
    for (int v = 0; v < 3; v++)
        rate(r, bu, var[v]);                  /* warm */
    for (int rep = 0; rep < REPS; rep++)
        for (int v = 0; v < 3; v++)
            rt[v][rep] = rate(r, bu, var[v]);
    for (int v = 0; v < 3; v++)
        qsort(rt[v], REPS, sizeof(double), cmp_double);
    double spread = (rt[0][REPS - 1] - rt[0][0]) / rt[0][REPS / 2];
    for (int v = 1; v < 3; v++)
        printf("{\"bench\":\"catalogue_refresh\",\"variant\":\"%s\",\"items\":%d,\"dim\":%d,"
               "\"batch\":%d,\"k\":%d,\"value\":%.4g,\"unit\":\"refreshes/s\",\"ceiling\":%.4g,"
               "\"ratio\":%.3f,\"ceiling_spread\":%.3f,\"clock\":\"thread_cpu\"}\n",
               name[v], n_items, DIM, N, K, rt[v][REPS / 2], rt[0][REPS / 2],
               rt[v][REPS / 2] / rt[0][REPS / 2], spread);
    hl_ranker_destroy(r);
    return 0;
}
