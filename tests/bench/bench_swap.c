/* bench_swap.c - what a live model swap costs one shard-owning thread at
 * 1M users, dim 64, three heads, history 32 (DESIGN.md section 10).
 *
 * The worker's own code runs: a shard (worker/shard.c) holding model A's
 * state, the model set (worker/models.c) loading B renamed over its path
 * and fitting the map, then the thread's loop as thread.c runs it during
 * a migration: a batch of 1024 events for random users (stale rows they
 * touch are migrated first), then one migration slice (SWAP_TICK_US,
 * 2 ms), until every user is in B's space.
 *
 * Figures:
 *   swap_stall: the longest the batch loop is held up by the swap: the
 *     shard's switch at a batch's top, the longest slice, and the longest
 *     batch during the migration beyond the median batch before it
 *     (target: under 10 ms);
 *   swap_migrate_all: seconds from the switch until the last user moved,
 *     counting the thread's migration work only (slices and the batches'
 *     excess), against the ceiling: one SGEMM of users x dim by dim x dim
 *     per head, timed here (the least any migration of every head costs);
 *     slices_s and batch_excess_s split it: the sweep's slices, and what
 *     batches took beyond their median (stale users they touched);
 *   swap_fit: fitting M (sgelsd over the shared items), on the main thread,
 *     off the batch loop.
 * Times are the thread's CPU time (see now_s).
 * `--users N` changes the user count, `--batch N` the events per batch
 * (batch.max.messages): the stall grows with the distinct stale users one
 * batch touches, so while a shard migrates the thread takes at most
 * HL_SWAP_BATCH_MAX records per batch, as this loop does; the median batch
 * it is compared with is a full one. */
#include "log.h"
#include "migrate.h"
#include "models.h"
#include "shard.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DIM      64
#define HEADS    3
#define HISTORY  32
#define N_ITEMS  100000
#define BATCH_DEFAULT 1024  /* events per batch; --batch N (batch.max.messages) */
#define FILL_EV  8          /* events per user before the swap */
#define TICK_US  2000       /* thread.c's SWAP_TICK_US */

static int BATCH = BATCH_DEFAULT;
static uint64_t rng = 88172645463325252ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static float frand(void) { return (float)((double)(rnd() >> 11) / 9007199254740992.0) * 2 - 1; }

/* This thread's CPU time: on a shared 2-core machine other processes'
 * time slices would otherwise count as stalls of ours (their cache
 * pollution still does). The slices' budget is wall time (thread.c). */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A model of N_ITEMS items; B's ids from first_id on, its e_in A's times
 * a near-identity map plus noise (a retrain from A's start, roughly). */
static int write_model(const char *path, int first_id, const float *base_e_in,
                       const char *version)
{
    hl_model_parts p;
    memset(&p, 0, sizeof p);
    hl_model_info *mi = &p.info;
    *mi = (hl_model_info){.dim = DIM, .n_heads = HEADS, .n_items = N_ITEMS, .n_layers = 1,
                          .layer_out = {DIM}};
    double hl[HEADS] = {3600e3, 86400e3, 30 * 86400e3};
    memcpy(mi->half_life_ms, hl, sizeof hl);
    for (int t = 0; t < HL_N_TYPES; t++) mi->type_weight[t] = 1;
    snprintf(mi->version, sizeof mi->version, "%s", version);
    size_t ne = (size_t)N_ITEMS * DIM;
    float *e_in = malloc(ne * 4), *e_out = malloc(ne * 4), *bias = calloc(N_ITEMS, 4);
    float *w = malloc(sizeof(float) * DIM * HEADS * (DIM + 1)), *b = calloc(DIM, 4);
    float *rot = malloc(sizeof(float) * DIM * DIM);
    char **ids = malloc(sizeof *ids * N_ITEMS);
    uint32_t *lens = malloc(sizeof *lens * N_ITEMS);
    for (int i = 0; i < DIM * DIM; i++) rot[i] = (i % (DIM + 1) == 0) + 0.1f * frand();
    for (size_t i = 0; i < ne; i++) { e_in[i] = frand(); e_out[i] = frand(); }
    if (base_e_in)          /* B: rows of the items A knows come from A's */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N_ITEMS - first_id, DIM, DIM,
                    1.0f, base_e_in + (size_t)first_id * DIM, DIM, rot, DIM, 0.05f, e_in, DIM);
    for (int i = 0; i < DIM * HEADS * (DIM + 1); i++) w[i] = 0.1f * frand();
    for (int i = 0; i < N_ITEMS; i++) {
        ids[i] = malloc(16);
        lens[i] = (uint32_t)snprintf(ids[i], 16, "i%07d", first_id + i);
    }
    p.item_id = (const char *const *)ids; p.item_id_len = lens;
    p.e_in = e_in; p.e_out = e_out; p.bias = bias; p.layer_w[0] = w; p.layer_b[0] = b;
    char err[256];
    int rc = hl_model_write(path, &p, err, sizeof err);
    if (rc != 0) fprintf(stderr, "bench_swap: %s\n", err);
    for (int i = 0; i < N_ITEMS; i++) free(ids[i]);
    free(ids); free(lens); free(e_in); free(e_out); free(bias); free(w); free(b); free(rot);
    return rc;
}

typedef struct run {
    hl_shard   *sh;
    hl_model   *a;
    uint32_t    n_users;
    int64_t     offset, ts;
    char       *names;      /* n_users ids of 12 bytes */
} run;

/* One batch of n events: users in order from first (fill) or random. */
static double batch(run *r, const hl_model *m, uint32_t first, int random)
{
    hl_shard *sh = r->sh;
    int dup, failed;
    hl_shard_batch_begin(sh);
    for (int i = 0; i < BATCH; i++) {
        uint32_t u = random ? (uint32_t)(rnd() % r->n_users) : (first + (uint32_t)i) % r->n_users;
        hl_event ev = {.user = r->names + (size_t)u * 12, .user_len = 11,
                       .item = (int32_t)(rnd() % N_ITEMS), .type = HL_VIEW, .w = 1,
                       .ts_ms = r->ts += 10, .offset = r->offset++};
        hl_shard_push(sh, &ev);
    }
    double t0 = now_s();
    hl_shard_apply(sh, m, &dup, &failed);
    return now_s() - t0;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One SGEMM of users x dim by dim x dim per head: the least a migration
 * of every head of every user can cost. */
static double sgemm_ceiling(uint32_t users)
{
    size_t n = (size_t)users;
    float *x = malloc(n * DIM * 4), *y = malloc(n * DIM * 4), *m = malloc(DIM * DIM * 4);
    for (size_t i = 0; i < n * DIM; i++) x[i] = frand();
    for (int i = 0; i < DIM * DIM; i++) m[i] = frand();
    double best = 1e30;
    for (int rep = 0; rep < 2; rep++) {
        double t0 = now_s();
        for (int h = 0; h < HEADS; h++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, DIM, DIM, 1.0f,
                        x, DIM, m, DIM, 0.0f, y, DIM);
        double t = now_s() - t0;
        if (t < best) best = t;
    }
    free(x); free(y); free(m);
    return best;
}

/* What the migration cost the shard thread, batch by batch (see main). */
typedef struct mig_times {
    double begin_s, work_s, max_tick, max_excess, slices_s, excess_s, wall_s, max_batch;
    int batches;
} mig_times;

/* Batches under B, with a sweep tick after each, until every row is in
 * B's space: the work counted is each tick plus what each batch took
 * beyond cap_med, a batch of its own size before the swap. */
static void migrate_all(run *r, hl_mref *b, double cap_med, mig_times *mt)
{
    int full = BATCH;
    double wall0 = now_s();
    mt->work_s = mt->begin_s;
    if (BATCH > HL_SWAP_BATCH_MAX)
        BATCH = HL_SWAP_BATCH_MAX;
    while (r->sh->mig_from != NULL) {
        double bt = batch(r, b->m, 0, 1);
        double excess = bt > cap_med ? bt - cap_med : 0;
        if (bt > mt->max_batch) mt->max_batch = bt;
        if (bt - cap_med > mt->max_excess) mt->max_excess = bt - cap_med;
        mt->work_s += excess;
        mt->excess_s += excess;
        double t0 = now_s();
        hl_shard_swap_tick(r->sh, TICK_US);
        double tk = now_s() - t0;
        mt->work_s += tk;
        mt->slices_s += tk;
        if (tk > mt->max_tick) mt->max_tick = tk;
        mt->batches++;
    }
    mt->wall_s = now_s() - wall0;
    BATCH = full;
}

int main(int argc, char **argv)
{
    uint32_t n_users = 1000000;
    char err[512], path_a[64], path_b[64], live[64];
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--users") == 0) n_users = (uint32_t)atol(argv[i + 1]);
        if (strcmp(argv[i], "--batch") == 0) BATCH = atoi(argv[i + 1]) > 0 ? atoi(argv[i + 1]) : 1;
    }
    openblas_set_num_threads(1);
    hl_log_set_level(HL_LOG_WARN);
    snprintf(path_a, sizeof path_a, "/tmp/bench_swap_a_%d.hlm", (int)getpid());
    snprintf(path_b, sizeof path_b, "/tmp/bench_swap_b_%d.hlm", (int)getpid());
    snprintf(live, sizeof live, "/tmp/bench_swap_live_%d.hlm", (int)getpid());
    if (write_model(path_a, 0, NULL, "bench-A") != 0) return 1;
    hl_model *a = hl_model_open(path_a, err, sizeof err);
    if (a == NULL || write_model(path_b, N_ITEMS / 10, hl_model_e_in(a), "bench-B") != 0 ||
        link(path_a, live) != 0) {
        fprintf(stderr, "bench_swap: %s\n", a ? "cannot write models" : err);
        return 1;
    }
    hl_metrics *reg = hl_metrics_create();
    hl_models_opts mo = {.path = live, .check_ms = 0, .reg = reg};
    hl_models *ms = hl_models_create(&mo, a, err, sizeof err);
    hl_table_opts to = {.history = HISTORY, .max_users = 0, .evict_mass = 0,
                        .expected_users = n_users};
    double hls[HEADS] = {3600e3, 86400e3, 30 * 86400e3};
    hl_decay_init(&to.decay, HEADS, DIM, hls, err, sizeof err);
    hl_table *tbl = hl_table_create(&to, err, sizeof err);
    run r = {.n_users = n_users, .a = a, .ts = 1700000000000};
    r.sh = hl_shard_create(0, tbl, -1, NULL, BATCH, 0, reg, err, sizeof err);
    if (ms == NULL || r.sh == NULL) {
        fprintf(stderr, "bench_swap: %s\n", err);
        return 1;
    }
    r.sh->mref = hl_models_acquire(ms);
    r.sh->c_migrated = hl_metrics_counter(reg, "halflife_users_migrated_total", "", NULL);
    r.names = malloc((size_t)n_users * 12);
    for (uint32_t u = 0; u < n_users; u++) snprintf(r.names + (size_t)u * 12, 12, "u%010u", u);

    /* A's state: every user FILL_EV events, then the steady batch time. */
    for (uint64_t i = 0; i < (uint64_t)n_users * FILL_EV; i += BATCH)
        batch(&r, a, (uint32_t)(i % n_users), 0);
    enum { BASE = 200 };
    double base[BASE];
    for (int i = 0; i < BASE; i++) base[i] = batch(&r, a, 0, 1);
    qsort(base, BASE, sizeof *base, cmp_d);
    double base_med = base[BASE / 2];
    /* The same at the size batches have while migrating: the swap's stall
     * is what a batch takes beyond a batch of its own size. */
    int full = BATCH;
    if (BATCH > HL_SWAP_BATCH_MAX)
        BATCH = HL_SWAP_BATCH_MAX;      /* what batch.c takes while migrating */
    for (int i = 0; i < BASE; i++) base[i] = batch(&r, a, 0, 1);
    qsort(base, BASE, sizeof *base, cmp_d);
    double cap_med = base[BASE / 2];
    BATCH = full;

    /* B renamed over the path; the main thread loads it and fits M. */
    if (rename(path_b, live) != 0) return 1;
    double t0 = now_s();
    int rc = hl_models_check(ms, 0, 1);
    double fit_s = now_s() - t0;
    if (rc != 1) {
        fprintf(stderr, "bench_swap: the swap did not happen (%d)\n", rc);
        return 1;
    }
    hl_mref *b = hl_models_acquire(ms);
    t0 = now_s();
    hl_shard_swap_begin(r.sh, b);
    mig_times mt = {.begin_s = now_s() - t0};
    migrate_all(&r, b, cap_med, &mt);
    double begin_s = mt.begin_s, work_s = mt.work_s, max_tick = mt.max_tick;
    double max_excess = mt.max_excess, slices_s = mt.slices_s, excess_s = mt.excess_s;
    double wall_s = mt.wall_s, max_batch = mt.max_batch;
    int batches = mt.batches;
    double ceil_s = sgemm_ceiling(n_users);
    double stall = begin_s;
    if (max_tick > stall) stall = max_tick;
    if (max_excess > stall) stall = max_excess;
    printf("{\"bench\":\"swap_stall\",\"users\":%u,\"dim\":%d,\"heads\":%d,\"value\":%.3f,"
           "\"unit\":\"ms\",\"target\":10,\"met\":%s,\"begin_ms\":%.3f,\"max_slice_ms\":%.3f,"
           "\"max_batch_excess_ms\":%.3f,\"max_batch_ms\":%.3f,\"batch_median_ms\":%.3f,"
           "\"capped_batch_median_ms\":%.3f,\"clock\":\"thread_cpu\",\"batch_events\":%d,"
           "\"batch_events_migrating\":%d}\n", n_users, DIM, HEADS,
           stall * 1e3, stall < 0.010 ? "true" : "false", begin_s * 1e3, max_tick * 1e3,
           max_excess * 1e3, max_batch * 1e3, base_med * 1e3, cap_med * 1e3, BATCH,
           BATCH < HL_SWAP_BATCH_MAX ? BATCH : HL_SWAP_BATCH_MAX);
    printf("{\"bench\":\"swap_migrate_all\",\"users\":%u,\"value\":%.3f,\"unit\":\"s\","
           "\"ceiling\":%.3f,\"ceiling_what\":\"%d SGEMMs of users x dim by dim x dim\","
           "\"ratio\":%.3f,\"slices_s\":%.3f,\"batch_excess_s\":%.3f,\"wall_s\":%.3f,"
           "\"batches_meanwhile\":%d,\"users_per_s\":%.0f}\n",
           n_users, work_s, ceil_s, HEADS, ceil_s / work_s, slices_s, excess_s, wall_s, batches,
           (double)n_users / work_s);
    printf("{\"bench\":\"swap_fit\",\"items\":%d,\"shared\":%d,\"dim\":%d,\"value\":%.3f,"
           "\"unit\":\"s\",\"where\":\"main thread, off the batch loop\"}\n", N_ITEMS,
           hl_migration_shared(b->from_prev), DIM, fit_s);
    hl_mref_release(b);
    hl_shard_destroy(r.sh);
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_metrics_destroy(reg);
    free(r.names);
    unlink(path_a);
    unlink(live);
    return 0;
}
