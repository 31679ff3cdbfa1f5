/* bench_swap.c - what a live model swap costs one shard-owning thread at
 * 1M users, dim 64, three heads, history 32 (DESIGN.md section 10).
 *
 * The worker's own code runs: a shard (worker/shard.c) holding model A's
 * state, the model set (worker/models.c) loading B renamed over its path
 * and fitting the map, then the thread's loop as thread.c runs it during
 * a migration: a batch of events for random users (stale rows they touch
 * are migrated first; as many events as hl_shard_swap_batch_cap allows,
 * as batch.c takes), then one migration slice (SWAP_TICK_US, 2 ms), until
 * every user is in B's space.
 *
 * Figures:
 *   swap_stall: the longest the batch loop is held up by the swap: the
 *     shard's switch at a batch's top, the longest slice (the last one,
 *     which releases the old model, apart as release_ms), and the longest
 *     batch during the migration beyond a batch of its size before the
 *     swap (a + b events, fitted on the medians of 512- and 64-event
 *     batches) (target: under 10 ms); max_touch_ms is the migration
 *     inside a batch alone (hl_shard_swap_touch_batch, the shard's own
 *     clock), so a batch whose apply was slowed by other processes is
 *     told from one the swap held up; the excess's p99 and p999 and the
 *     worst batch (index, events, rows it migrated) go with it;
 *   swap_migrate_all: seconds from the switch until the last user moved,
 *     counting the thread's migration work only (slices and the batches'
 *     excess), against the ceiling: one SGEMM of users x dim by dim x dim
 *     per head, timed here (the least any migration of every head costs);
 *     slices_s and batch_excess_s split it: the sweep's slices, and what
 *     batches took beyond their median (stale users they touched);
 *   swap_fit: fitting M (sgelsd over the shared items), on the main thread,
 *     off the batch loop.
 * Times are the thread's CPU time (see now_s). The stall line also gives
 * the same figure outside the machine's own holes (outside_holes_ms,
 * met_outside_holes): every batch or slice that overlapped a stop of its
 * vCPU by the host is left out of it, and machine_holes / longest_hole_ms
 * say how many such stops the run saw and the longest (the sentinels,
 * below): a stall no longer than the longest hole may be the machine's.
 * faults are the shard thread's page faults (the worst batch's, the
 * longest slice's, all): a first write to new memory is one.
 * `--shape same|reshape|both` (both by default): reshape swaps to a B of
 * another dim (DIM_R) and other half-lives, so each user moves into a
 * second table of B's shape (worker/swap.c) and the swap_reshape_* lines
 * give the same figures for it, against its own ceiling: one SGEMM of
 * users x dim by dim x DIM_R per head (A's state into B's dim; before
 * Dec 6 A's dim x dim, a third more work than a reshape to 48 needs, so
 * that ratio read high).
 * `--users N` changes the user count, `--batch N` the events per batch
 * (batch.max.messages): the stall grows with the distinct stale users one
 * batch touches, so while a shard migrates the thread takes only as many
 * records as the shard's measured cost per record lets migrate in
 * HL_SWAP_BATCH_BUDGET_US (hl_shard_swap_batch_cap), as this loop does.
 * `--jump 1` adds two more swaps during the move: models C and D go live
 * (the main thread loads and fits them) while A -> B is under way; the
 * thread keeps B until the move ends (thread.c model_sync), then jumps
 * B -> D, D of the other shape than B (a reshape jump). The
 * swap[_reshape]_jump_stall line gives that jump's longest stall, its
 * switch (begin_ms: where a shard that has to fit B -> D itself waits)
 * apart, and the seconds the main thread spent loading C and D. */
#include "bench_args.h"

#include "log.h"
#include "migrate.h"
#include "models.h"
#include "shard.h"
#include "bench_holes.h"

#include <cblas.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define DIM      64
#define HEADS    3
#define HISTORY  32
#define N_ITEMS  100000
#define BATCH_DEFAULT 1024  /* events per batch; --batch N (batch.max.messages) */
#define FILL_EV  8          /* events per user before the swap */
#define TICK_US  2000       /* thread.c's SWAP_TICK_US */

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

/* Page faults of this thread so far (minor and major): a first write to a
 * page of new memory stops the writer while the kernel clears the page
 * (and may compact memory for a huge page first). */
static long thread_faults(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru) != 0) return 0;
    return ru.ru_minflt + ru.ru_majflt;
}

/* A model of N_ITEMS items; B's ids from first_id on, its e_in A's times
 * a near-identity map plus noise (a retrain from A's start, roughly). */
static const double HL_A[HEADS] = {3600e3, 86400e3, 30 * 86400e3};
/* --shape reshape: B has another dim and other half-lives (one kept) */
#define DIM_R 48
static const double HL_R[HEADS] = {3600e3, 7 * 86400e3, 90 * 86400e3};

static int write_model(const char *path, int first_id, const float *base_e_in,
                       const char *version, int dim, const double *half_life_ms)
{
    hl_model_parts p;
    memset(&p, 0, sizeof p);
    hl_model_info *mi = &p.info;
    *mi = (hl_model_info){.dim = dim, .n_heads = HEADS, .n_items = N_ITEMS, .n_layers = 1,
                          .layer_out = {dim}};
    memcpy(mi->half_life_ms, half_life_ms, sizeof(double) * HEADS);
    for (int t = 0; t < HL_N_TYPES; t++) mi->type_weight[t] = 1;
    snprintf(mi->version, sizeof mi->version, "%s", version);
    size_t ne = (size_t)N_ITEMS * dim;
    float *e_in = malloc(ne * 4), *e_out = malloc(ne * 4), *bias = calloc(N_ITEMS, 4);
    float *w = malloc(sizeof(float) * dim * HEADS * (dim + 1)), *b = calloc((size_t)dim, 4);
    float *rot = malloc(sizeof(float) * DIM * dim);
    char **ids = malloc(sizeof *ids * N_ITEMS);
    uint32_t *lens = malloc(sizeof *lens * N_ITEMS);
    for (int i = 0; i < DIM * dim; i++) rot[i] = (i / dim == i % dim) + 0.1f * frand();
    for (size_t i = 0; i < ne; i++) { e_in[i] = frand(); e_out[i] = frand(); }
    if (base_e_in)          /* B: rows of the items A knows come from A's */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N_ITEMS - first_id, dim, DIM,
                    1.0f, base_e_in + (size_t)first_id * DIM, DIM, rot, dim, 0.05f, e_in, dim);
    for (int i = 0; i < dim * HEADS * (dim + 1); i++) w[i] = 0.1f * frand();
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
    hl_models  *ms;
    hl_metrics *reg;
    uint32_t    n_users;
    int         batch;      /* events per batch: full, or the swap's cap */
    int         full;       /* --batch (batch.max.messages) */
    int         reshape;    /* B of another dim and half-lives (a second table) */
    int64_t     offset, ts;
    int         jump;       /* --jump: C and D go live during the move */
    char       *names;      /* n_users ids of 12 bytes */
    char        path_a[64], path_b[64], live[64];
} run;

/* One batch of r->batch events: users in order from first (fill) or random. */
static double batch(run *r, const hl_model *m, uint32_t first, int random)
{
    hl_shard *sh = r->sh;
    int dup, failed;
    hl_shard_batch_begin(sh);
    for (int i = 0; i < r->batch; i++) {
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

/* The median of 200 random batches of n events under A. */
static double batch_median(run *r, int n)
{
    enum { BASE = 200 };
    double t[BASE];
    int keep = r->batch;
    r->batch = n;
    for (int i = 0; i < BASE; i++) t[i] = batch(r, r->a, 0, 1);
    r->batch = keep;
    qsort(t, BASE, sizeof *t, cmp_d);
    return t[BASE / 2];
}

/* One SGEMM of users x dim by dim x dim_b per head: the least a migration
 * of every head of every user into B's dim_b can cost. */
static double sgemm_ceiling(uint32_t users, int dim_b)
{
    size_t n = (size_t)users;
    float *x = malloc(n * DIM * 4), *y = malloc(n * (size_t)dim_b * 4);
    float *m = malloc((size_t)DIM * dim_b * 4);
    for (size_t i = 0; i < n * DIM; i++) x[i] = frand();
    for (int i = 0; i < DIM * dim_b; i++) m[i] = frand();
    double best = 1e30;
    for (int rep = 0; rep < 2; rep++) {
        double t0 = now_s();
        for (int h = 0; h < HEADS; h++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, dim_b, DIM, 1.0f,
                        x, DIM, m, dim_b, 0.0f, y, dim_b);
        double t = now_s() - t0;
        if (t < best) best = t;
    }
    free(x); free(y); free(m);
    return best;
}

/* What the migration cost the shard thread, batch by batch (see main). */
typedef struct mig_times {
    double base_a, base_b;  /* a batch of n events before the swap: a + b n */
    double base_med;        /* the median full batch before the swap */
    double begin_s, fit_s, work_s, max_tick, release_s, max_excess, slices_s, excess_s;
    double wall_s, max_batch, ceil_s;
    int batches, min_events, max_events;
    double *excess;         /* per batch, for the percentiles */
    int     cap_excess;
    int worst_batch, worst_events, worst_rows;  /* the batch of max_excess: its index,
                                                   events, rows it migrated */
    long worst_faults, max_tick_faults;  /* page faults of that batch, of the longest slice */
    long faults;                /* of the shard thread during the migration */
    struct span { double a, b, cost; int cpu; } *spans;  /* each batch's and slice's wall
                                                   time and stall (excess, slice) */
    int n_spans, cap_spans;
    int64_t events;
} mig_times;

/* cpu: where the span ran, -1 when it started and ended on two. */
static void note_span(mig_times *mt, double a, double b, double cost, int cpu)
{
    if (mt->n_spans == mt->cap_spans) {
        mt->cap_spans = mt->cap_spans ? 2 * mt->cap_spans : 8192;
        mt->spans = realloc(mt->spans, sizeof *mt->spans * (size_t)mt->cap_spans);
    }
    mt->spans[mt->n_spans++] = (struct span){a, b, cost, cpu};
}

/* The longest stall (batch excess or slice) that overlaps no hole. */
static double stall_outside_holes(const mig_times *mt, const sentinels *ss, int *n_in)
{
    double m = 0;
    *n_in = 0;
    for (int i = 0; i < mt->n_spans; i++) {
        if (in_hole(ss, mt->spans[i].cpu, mt->spans[i].a, mt->spans[i].b)) {
            ++*n_in;
            continue;
        }
        if (mt->spans[i].cost > m) m = mt->spans[i].cost;
    }
    return m;
}

/* One batch of the migration and the slice after it, counted in mt. */
static void migrate_step(run *r, hl_mref *b, mig_times *mt)
{
    int cap = hl_shard_swap_batch_cap(r->sh, HL_SWAP_BATCH_BUDGET_US);
    r->batch = cap < r->full ? cap : r->full;
    if (r->batch > mt->max_events) mt->max_events = r->batch;
    if (r->batch < mt->min_events) mt->min_events = r->batch;
    mt->events += r->batch;
    uint64_t rows0 = r->sh->mig_rows;
    long f0 = thread_faults();
    int c0 = sched_getcpu();
    double w0 = wall_s();
    double bt = batch(r, b->m, 0, 1);
    double w1 = wall_s();
    int c1 = sched_getcpu();
    long fb = thread_faults() - f0;
    mt->faults += fb;
    double excess = bt - (mt->base_a + mt->base_b * r->batch);
    if (bt > mt->max_batch) mt->max_batch = bt;
    if (mt->batches == mt->cap_excess) {
        mt->cap_excess = mt->cap_excess ? 2 * mt->cap_excess : 4096;
        mt->excess = realloc(mt->excess, sizeof *mt->excess * (size_t)mt->cap_excess);
    }
    mt->excess[mt->batches] = excess;
    if (excess > mt->max_excess) {
        mt->max_excess = excess;
        mt->worst_batch = mt->batches;
        mt->worst_events = r->batch;
        mt->worst_rows = (int)(r->sh->mig_rows - rows0);
        mt->worst_faults = fb;
    }
    if (excess > 0) {
        mt->work_s += excess;
        mt->excess_s += excess;
    }
    int releasing = r->sh->mig_finished;
    double t0 = now_s();
    f0 = thread_faults();
    hl_shard_swap_tick(r->sh, TICK_US);
    double tk = now_s() - t0;
    int c2 = sched_getcpu();
    note_span(mt, w0, w1, excess, c0 == c1 ? c0 : -1);
    note_span(mt, w1, wall_s(), tk, c1 == c2 ? c1 : -1);
    long ft = thread_faults() - f0;
    mt->faults += ft;
    mt->work_s += tk;
    mt->slices_s += tk;
    if (releasing)
        mt->release_s = tk;
    if (tk > mt->max_tick) {
        mt->max_tick = tk;
        mt->max_tick_faults = ft;
    }
    mt->batches++;
}

/* Batches under B, with a sweep tick after each, until every row is in
 * B's space: the work counted is each tick plus what each batch took
 * beyond a batch of its own size before the swap. */
static void migrate_all(run *r, hl_mref *b, mig_times *mt)
{
    double wall0 = now_s();
    mt->work_s = mt->begin_s;
    mt->min_events = 1 << 30;
    while (r->sh->mig_from != NULL)
        migrate_step(r, b, mt);
    mt->wall_s = now_s() - wall0;
    r->batch = r->full;
}

/* Models A and B written, A served by a model set and a shard of n users
 * filled with FILL_EV events each. 0, or 1 with the reason printed. */
static int setup(run *r)
{
    char err[512];
    int pid = (int)getpid();
    snprintf(r->path_a, sizeof r->path_a, "/tmp/bench_swap_a_%d.hlm", pid);
    snprintf(r->path_b, sizeof r->path_b, "/tmp/bench_swap_b_%d.hlm", pid);
    snprintf(r->live, sizeof r->live, "/tmp/bench_swap_live_%d.hlm", pid);
    if (write_model(r->path_a, 0, NULL, "bench-A", DIM, HL_A) != 0) return 1;
    r->a = hl_model_open(r->path_a, err, sizeof err);
    if (r->a == NULL || write_model(r->path_b, N_ITEMS / 10, hl_model_e_in(r->a), "bench-B",
                                    r->reshape ? DIM_R : DIM, r->reshape ? HL_R : HL_A) != 0 ||
        link(r->path_a, r->live) != 0) {
        fprintf(stderr, "bench_swap: %s\n", r->a ? "cannot write models" : err);
        return 1;
    }
    r->reg = hl_metrics_create();
    hl_models_opts mo = {.path = r->live, .check_ms = 0, .reg = r->reg};
    r->ms = hl_models_create(&mo, r->a, err, sizeof err);
    hl_table_opts to = {.history = HISTORY, .max_users = 0, .evict_mass = 0,
                        .expected_users = r->n_users};
    hl_decay_init(&to.decay, HEADS, DIM, HL_A, err, sizeof err);
    hl_table *tbl = hl_table_create(&to, err, sizeof err);
    r->sh = hl_shard_create(0, tbl, -1, NULL, r->batch, 0, r->reg, err, sizeof err);
    if (r->ms == NULL || r->sh == NULL) {
        fprintf(stderr, "bench_swap: %s\n", err);
        return 1;
    }
    r->sh->mref = hl_models_acquire(r->ms);
    r->sh->c_migrated = hl_metrics_counter(r->reg, "halflife_users_migrated_total", "", NULL);
    r->names = malloc((size_t)r->n_users * 12);
    for (uint32_t u = 0; u < r->n_users; u++) snprintf(r->names + (size_t)u * 12, 12, "u%010u", u);
    for (uint64_t i = 0; i < (uint64_t)r->n_users * FILL_EV; i += (uint64_t)r->batch)
        batch(r, r->a, (uint32_t)(i % r->n_users), 0);
    return 0;
}

/* The q quantile of the batches' excess (sorts them). */
static double excess_q(mig_times *mt, double q)
{
    qsort(mt->excess, (size_t)mt->batches, sizeof *mt->excess, cmp_d);
    return mt->excess[(int)(q * (mt->batches - 1))];
}

static void print(const run *r, mig_times *mt, int shared, const sentinels *st)
{
    const char *kind = r->reshape ? "swap_reshape" : "swap";
    int dim_b = r->reshape ? DIM_R : DIM;
    double stall = mt->begin_s;
    if (mt->max_tick > stall) stall = mt->max_tick;
    if (mt->max_excess > stall) stall = mt->max_excess;
    int n_in, n_holes;
    double outside = stall_outside_holes(mt, st, &n_in), hole = longest_hole(st, &n_holes);
    if (mt->begin_s > outside) outside = mt->begin_s;
    printf("{\"bench\":\"%s_stall\",\"users\":%u,\"dim\":%d,\"dim_b\":%d,\"heads\":%d,"
           "\"value\":%.3f,"
           "\"unit\":\"ms\",\"target\":10,\"met\":%s,\"begin_ms\":%.3f,\"max_slice_ms\":%.3f,"
           "\"release_ms\":%.3f,\"max_touch_ms\":%.3f,\"max_batch_excess_ms\":%.3f,"
           "\"batch_excess_p99_ms\":%.3f,\"batch_excess_p999_ms\":%.3f,\"max_batch_ms\":%.3f,"
           "\"batch_median_ms\":%.3f,\"base_a_ms\":%.4f,\"base_us_per_event\":%.3f,"
           "\"clock\":\"thread_cpu\",\"batch_events\":%d,\"batch_events_migrating\":"
           "[%d,%d],\"events_per_batch_migrating\":%.0f,\"worst_batch\":[%d,%d,%d],"
           "\"worst_batch_faults\":%ld,\"max_slice_faults\":%ld,\"faults\":%ld,"
           "\"outside_holes_ms\":%.3f,\"met_outside_holes\":%s,\"machine_holes\":%d,"
           "\"longest_hole_ms\":%.1f,\"stalls_in_holes\":%d,\"sentinel\":\"%s\"}\n",
           kind, r->n_users, DIM, dim_b, HEADS,
           stall * 1e3, stall < 0.010 ? "true" : "false", mt->begin_s * 1e3,
           mt->max_tick * 1e3, mt->release_s * 1e3, r->sh->mig_touch_max_us / 1e3,
           mt->max_excess * 1e3, excess_q(mt, 0.99) * 1e3, excess_q(mt, 0.999) * 1e3,
           mt->max_batch * 1e3, mt->base_med * 1e3, mt->base_a * 1e3, mt->base_b * 1e6,
           r->batch, mt->min_events, mt->max_events, (double)mt->events / mt->batches,
           mt->worst_batch, mt->worst_events, mt->worst_rows, mt->worst_faults,
           mt->max_tick_faults, mt->faults, outside * 1e3, outside < 0.010 ? "true" : "false",
           n_holes, hole * 1e3, n_in, st->fifo ? "fifo" : "normal");
    printf("{\"bench\":\"%s_migrate_all\",\"users\":%u,\"value\":%.3f,\"unit\":\"s\","
           "\"ceiling\":%.3f,\"ceiling_what\":\"%d SGEMMs of users x dim by dim x dim_b\","
           "\"ratio\":%.3f,\"slices_s\":%.3f,\"batch_excess_s\":%.3f,\"wall_s\":%.3f,"
           "\"batches_meanwhile\":%d,\"users_per_s\":%.0f}\n", kind, r->n_users, mt->work_s,
           mt->ceil_s, HEADS, mt->ceil_s / mt->work_s, mt->slices_s, mt->excess_s, mt->wall_s,
           mt->batches, (double)r->n_users / mt->work_s);
    printf("{\"bench\":\"%s_fit\",\"items\":%d,\"shared\":%d,\"dim\":%d,\"value\":%.3f,"
           "\"unit\":\"s\",\"where\":\"main thread, off the batch loop\"}\n", kind, N_ITEMS,
           shared, DIM, mt->fit_s);
}

/* Model <v> (C or D) of dim and half-lives, a retrain from A, renamed
 * over the live path and loaded by the main thread; 0 when it went live. */
static int go_live(run *r, const char *v, int dim, const double *half_life_ms)
{
    char path[80];
    snprintf(path, sizeof path, "%s.%s", r->path_a, v);
    if (write_model(path, N_ITEMS / 5, hl_model_e_in(r->a), v, dim, half_life_ms) != 0 ||
        rename(path, r->live) != 0 || hl_models_check(r->ms, 0, 1) != 1) {
        fprintf(stderr, "bench_swap: model %s did not go live\n", v);
        return 1;
    }
    return 0;
}

/* --jump: the thread's jump B -> D after the move into B (which C and D
 * arrived during), migrated to the end like B; its stall printed. */
static int jump(run *r, const mig_times *base, double load_s)
{
    hl_mref *d = hl_models_acquire(r->ms);
    mig_times mt = {.base_a = base->base_a, .base_b = base->base_b,
                    .base_med = base->base_med};
    double t0 = now_s();
    int rc = hl_shard_swap_begin(r->sh, d);
    mt.begin_s = now_s() - t0;
    if (rc == 0)
        migrate_all(r, d, &mt);
    double stall = mt.begin_s;
    if (mt.max_tick > stall) stall = mt.max_tick;
    if (mt.max_excess > stall) stall = mt.max_excess;
    printf("{\"bench\":\"%s_jump_stall\",\"users\":%u,\"from\":\"B\",\"to\":\"D\","
           "\"dim_d\":%d,\"value\":%.3f,\"unit\":\"ms\",\"target\":10,\"met\":%s,"
           "\"begin_ms\":%.3f,\"max_slice_ms\":%.3f,\"max_batch_excess_ms\":%.3f,"
           "\"migrate_s\":%.3f,\"main_thread_load_c_d_s\":%.3f,\"clock\":\"thread_cpu\"}\n",
           r->reshape ? "swap_reshape" : "swap", r->n_users, d->mi->dim, stall * 1e3,
           stall < 0.010 ? "true" : "false", mt.begin_s * 1e3, mt.max_tick * 1e3,
           mt.max_excess * 1e3, mt.work_s, load_s);
    free(mt.excess);
    free(mt.spans);
    hl_mref_release(d);
    return rc != 0;
}

/* One swap, A to B, of the shape r->reshape says: its figures printed. */
static int one_case(run r)
{
    if (setup(&r) != 0)
        return 1;
    /* The steady batch before the swap, full and at two sizes batches take
     * while migrating: a swap's stall is what a batch takes beyond a batch
     * of its own size, a + b events. */
    mig_times mt = {.base_med = batch_median(&r, r.batch)};
    double m512 = batch_median(&r, 512), m64 = batch_median(&r, 64);
    mt.base_b = (m512 - m64) / (512 - 64);
    mt.base_a = m64 - 64 * mt.base_b;

    sentinels *st = sentinels_start();
    if (st == NULL)
        return 1;
    /* B renamed over the path; the main thread loads it and fits M. */
    if (rename(r.path_b, r.live) != 0) return 1;
    double t0 = now_s();
    int rc = hl_models_check(r.ms, 0, 1);
    mt.fit_s = now_s() - t0;
    if (rc != 1) {
        fprintf(stderr, "bench_swap: the swap did not happen (%d)\n", rc);
        return 1;
    }
    hl_mref *b = hl_models_acquire(r.ms);
    int shared = hl_migration_shared(b->from_prev);  /* dropped once A is out of use */
    t0 = now_s();
    hl_shard_swap_begin(r.sh, b);
    mt.begin_s = now_s() - t0;
    double load_s = 0;
    if (r.jump) {               /* C, then D (the other shape than B's) */
        for (int i = 0; i < 8 && r.sh->mig_from != NULL; i++)
            migrate_step(&r, b, &mt);
        t0 = now_s();
        if (r.sh->mig_from == NULL || go_live(&r, "C", r.reshape ? DIM_R : DIM,
                                              r.reshape ? HL_R : HL_A) != 0 ||
            go_live(&r, "D", r.reshape ? DIM : DIM_R, r.reshape ? HL_A : HL_R) != 0)
            return 1;
        load_s = now_s() - t0;
    }
    migrate_all(&r, b, &mt);
    sentinels_stop(st);
    mt.ceil_s = sgemm_ceiling(r.n_users, r.reshape ? DIM_R : DIM);
    print(&r, &mt, shared, st);
    int rc_jump = r.jump ? jump(&r, &mt, load_s) : 0;
    free(mt.excess);
    free(mt.spans);
    free(st);
    hl_mref_release(b);
    hl_shard_destroy(r.sh);
    hl_models_destroy(r.ms);
    hl_model_close(r.a);
    hl_metrics_destroy(r.reg);
    free(r.names);
    unlink(r.path_a);
    unlink(r.live);
    return rc_jump;
}

/* The first argument bench_swap cannot take (NULL: none): each is a
 * known option followed by its value. */
static const char *bad_arg(int argc, char **argv)
{
    for (int i = 1; i < argc; i += 2) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--users") == 0 || strcmp(argv[i], "--batch") == 0 ||
            strcmp(argv[i], "--jump") == 0) {
            if (v == NULL || !bench_arg_count(v))
                return v ? v : argv[i];
        } else if (strcmp(argv[i], "--shape") == 0) {
            if (v == NULL || (strcmp(v, "same") != 0 && strcmp(v, "reshape") != 0 &&
                              strcmp(v, "both") != 0))
                return v ? v : argv[i];
        } else {
            return argv[i];
        }
    }
    return NULL;
}

static const char usage[] =
    "usage: bench_swap [--users N] [--batch N] [--shape same|reshape|both] [--jump 1]\n"
    "  --users  users in the shard (default 1000000)\n"
    "  --batch  events per batch, batch.max.messages (default 1024)\n"
    "  --shape  same: B of A's shape; reshape: another dim and half-lives;\n"
    "           both (default)\n"
    "  --jump   1: C and D go live during the move; then the jump B -> D\n"
    "Prints JSON lines: the swap's longest stall and time to migrate everyone.\n";

int main(int argc, char **argv)
{
    bench_args("bench_swap", argc, argv, usage, bad_arg(argc, argv));
    run r = {.n_users = 1000000, .batch = BATCH_DEFAULT, .ts = 1700000000000};
    const char *shape = "both";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--users") == 0) r.n_users = (uint32_t)atol(argv[i + 1]);
        if (strcmp(argv[i], "--batch") == 0) r.batch = atoi(argv[i + 1]) > 0 ? atoi(argv[i + 1]) : 1;
        if (strcmp(argv[i], "--shape") == 0) shape = argv[i + 1];
        if (strcmp(argv[i], "--jump") == 0) r.jump = atoi(argv[i + 1]) > 0;
    }
    r.full = r.batch;
    openblas_set_num_threads(1);
    hl_log_set_level(HL_LOG_WARN);
    int rc = 0;
    if (strcmp(shape, "reshape") != 0)
        rc |= one_case(r);
    if (strcmp(shape, "same") != 0) {
        r.reshape = 1;
        rc |= one_case(r);
    }
    return rc;
}
