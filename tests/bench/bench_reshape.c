/* bench_reshape.c - what a restart with a model of another state shape
 * costs (schemas/model.md, "Another dim, number of heads or half-lives"):
 * USERS users (dim 64, 3 heads, 48 events each, a ring of 32) moved with
 * hl_migration_table_into into dim 32 and 4 heads (one half-life in
 * common), against the same-shape migration in place (hl_migration_table)
 * and into a new table, timed in the same run on this thread's CPU clock.
 * Prints JSON lines: reshape_restart (median of REPS, seconds) with the
 * same-shape figures beside it.
 *
 * Run: build/bench/bench_reshape [users] */
#include "bench_args.h"

#include "migrate.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define N_ITEMS 20000
#define EVENTS  48
#define REPS    5

static uint64_t g_rng = 88172645463325252ull;

static float frand(void)
{
    g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17;
    return (float)((double)(g_rng >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

static double cpu_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A random model of N_ITEMS items "it<i>" written to path and opened;
 * exits on failure. */
static hl_model *model_of(const char *path, int dim, int nh, const double *hl)
{
    hl_model_parts p;
    memset(&p, 0, sizeof p);
    hl_model_info *mi = &p.info;
    mi->dim = dim; mi->n_heads = nh; mi->n_items = N_ITEMS; mi->n_layers = 1;
    mi->layer_out[0] = dim;
    for (int h = 0; h < nh; h++) mi->half_life_ms[h] = hl[h];
    for (int t = 0; t < HL_N_TYPES; t++) mi->type_weight[t] = 1.0f;
    snprintf(mi->version, sizeof mi->version, "bench-reshape-%d-%d", dim, nh);
    size_t ne = (size_t)N_ITEMS * dim;
    float *e_in = malloc(ne * 4), *e_out = malloc(ne * 4), *bias = calloc(N_ITEMS, 4);
    float *w = calloc((size_t)dim * hl_model_input_dim(mi), 4), *b = calloc((size_t)dim, 4);
    char **ids = malloc(sizeof *ids * N_ITEMS);
    uint32_t *lens = malloc(sizeof *lens * N_ITEMS);
    if (!e_in || !e_out || !bias || !w || !b || !ids || !lens) {
        fprintf(stderr, "bench_reshape: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < ne; i++) { e_in[i] = frand(); e_out[i] = frand(); }
    for (int i = 0; i < N_ITEMS; i++) {
        ids[i] = malloc(16);
        lens[i] = (uint32_t)snprintf(ids[i], 16, "it%d", i);
    }
    p.item_id = (const char *const *)ids; p.item_id_len = lens;
    p.e_in = e_in; p.e_out = e_out; p.bias = bias; p.layer_w[0] = w; p.layer_b[0] = b;
    char err[256];
    hl_model *m = hl_model_write(path, &p, err, sizeof err) == 0
                  ? hl_model_open(path, err, sizeof err) : NULL;
    for (int i = 0; i < N_ITEMS; i++) free(ids[i]);
    free(ids); free(lens); free(e_in); free(e_out); free(bias); free(w); free(b);
    if (m == NULL) {
        fprintf(stderr, "bench_reshape: %s\n", err);
        exit(1);
    }
    return m;
}

static hl_table *table_of(const hl_model *m, size_t users)
{
    const hl_model_info *mi = hl_model_info_get(m);
    hl_table_opts o = {.history = 32, .expected_users = users};
    char err[256];
    hl_table *t = hl_decay_init(&o.decay, mi->n_heads, mi->dim, mi->half_life_ms,
                                err, sizeof err) == 0 ? hl_table_create(&o, err, sizeof err) : NULL;
    if (t == NULL) {
        fprintf(stderr, "bench_reshape: %s\n", err);
        exit(1);
    }
    return t;
}

/* users users of EVENTS events each on random items, a minute apart. */
static void fill(hl_table *t, const hl_model *m, int users)
{
    for (int u = 0; u < users; u++) {
        char id[16], it[16];
        int len = snprintf(id, sizeof id, "u%d", u);
        for (int i = 0; i < EVENTS; i++) {
            int32_t item = (int32_t)(((uint32_t)u * 7919u + (uint32_t)i * 104729u) % N_ITEMS);
            int il = snprintf(it, sizeof it, "it%d", (int)item);
            hl_event ev = {.user = id, .user_len = (uint32_t)len, .item = item,
                           .item_key = hl_item_key(it, (size_t)il), .type = 0, .w = 1.0f,
                           .ts_ms = 1000000 + (int64_t)i * 60000, .offset = i};
            hl_table_apply(t, &ev, 1, hl_model_e_in(m), N_ITEMS, NULL);
        }
    }
}

static const char usage[] =
    "usage: bench_reshape [USERS]\n"
    "  USERS  users moved into another state shape (default 100000)\n"
    "Prints JSON lines.\n";

int main(int argc, char **argv)
{
    bench_args("bench_reshape", argc, argv, usage, bench_bad_counts(argc, argv, 1, 1));
    int users = argc > 1 ? atoi(argv[1]) : 100000;
    openblas_set_num_threads(1);       /* one core: the worker's setting */
    static const double h3[3] = {3600e3, 86400e3, 30 * 86400e3};
    static const double h4[4] = {7200e3, 86400e3, 10 * 86400e3, 90 * 86400e3};
    char pa[64], pb[64], pc[64], err[256];
    snprintf(pa, sizeof pa, "/tmp/bench_reshape_a_%d.hlm", (int)getpid());
    snprintf(pb, sizeof pb, "/tmp/bench_reshape_b_%d.hlm", (int)getpid());
    snprintf(pc, sizeof pc, "/tmp/bench_reshape_c_%d.hlm", (int)getpid());
    hl_model *a = model_of(pa, 64, 3, h3), *b = model_of(pb, 64, 3, h3);
    hl_model *c = model_of(pc, 32, 4, h4);
    const float tw[HL_N_TYPES] = {1, 1, 1, 1, 1, 1};
    hl_table *src = table_of(a, (size_t)users);
    fill(src, a, users);
    double into[REPS], reshape[REPS], in_place[REPS];
    for (int r = 0; r < REPS; r++) {
        hl_migration *same = hl_migration_create(a, b, tw, err, sizeof err);
        hl_migration *other = same ? hl_migration_create_any(a, c, tw, err, sizeof err) : NULL;
        if (other == NULL) {
            fprintf(stderr, "bench_reshape: %s\n", err);
            return 1;
        }
        hl_table *t2 = table_of(a, (size_t)users), *t3 = table_of(c, (size_t)users);
        /* interleaved: the same load for all three */
        double t0 = cpu_s();
        int64_t n1 = hl_migration_table_into(same, src, t2);
        double t1 = cpu_s();
        int64_t n2 = hl_migration_table_into(other, src, t3);
        double t2s = cpu_s();
        int64_t n3 = hl_migration_table(same, t2);
        double t3s = cpu_s();
        if (n1 != users || n2 != users || n3 != users) {
            fprintf(stderr, "bench_reshape: moved %lld %lld %lld of %d\n", (long long)n1,
                    (long long)n2, (long long)n3, users);
            return 1;
        }
        into[r] = t1 - t0;
        reshape[r] = t2s - t1;
        in_place[r] = t3s - t2s;
        hl_table_destroy(t2); hl_table_destroy(t3);
        hl_migration_destroy(same); hl_migration_destroy(other);
    }
    qsort(into, REPS, sizeof *into, cmp_double);
    qsort(reshape, REPS, sizeof *reshape, cmp_double);
    qsort(in_place, REPS, sizeof *in_place, cmp_double);
    printf("{\"bench\":\"reshape_restart\",\"users\":%d,\"from\":\"dim 64 heads 3\","
           "\"to\":\"dim 32 heads 4\",\"value\":%.3f,\"unit\":\"s\",\"same_shape_into_s\":%.3f,"
           "\"same_shape_in_place_s\":%.3f,\"reps\":%d}\n", users, reshape[REPS / 2],
           into[REPS / 2], in_place[REPS / 2], REPS);
    hl_table_destroy(src);
    hl_model_close(a); hl_model_close(b); hl_model_close(c);
    unlink(pa); unlink(pb); unlink(pc);
    return 0;
}
