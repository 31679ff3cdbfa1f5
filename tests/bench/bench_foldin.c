/* bench_foldin.c - what fold-in (catalogue.foldin, worker/fold.c) adds to
 * the state update of one shard-owning thread: dim 64, three heads,
 * history 32, 100k users, batches of 1024 events of which a share names
 * items the model does not know (5000 newcomers).
 *
 * The worker's own code runs, in batch.c's order: a shard (worker/shard.c)
 * applies each batch; with fold-in on, the batch's unknown-item events are
 * noted at decode, tied to their users after the apply
 * (hl_foldin_local_resolve), given the queries the batch's refresh computed
 * (hl_foldin_local_take, called as publish.c calls it after each
 * hl_ranker_refresh of up to 256 users), the users no refresh encoded get
 * an encoder pass (hl_foldin_local_fill), and all are added under the lock
 * (hl_foldin_local_flush). Publication is left out (min.events is out of
 * reach): it is O(log n) records per item, not a per-event cost.
 *
 * Figure: ns per event of the state update plus fold-in's own steps (note,
 * resolve, take, fill, flush), fold-in on; ceiling: the state update alone
 * (the same batches with fold-in off); ratio on/off (target < 1.10). Both
 * modes do what decode does whatever fold-in says: an unknown-item event
 * carries the hl_item_key of its id (so the id is read in both, as decode
 * reads it; before Dec 5 only the on path read it, from an array the
 * refresh evicts: ~11 ns per event at 10% charged to fold-in), and both
 * read the same clocks (a read costs ~1.6 us, below). The
 * refresh runs in both (lists are what a worker with recs.enabled does
 * every batch) but is timed apart and left out of both figures: fold-in
 * does not change it, and at 10k items it is ~30x the state update, which
 * would hide any fold-in cost. `--refresh 0` is a worker with
 * recs.enabled=false: no refresh, so fill encodes every noted user (the
 * cost before fold-in took the refresh's queries). The median batch of
 * REPS alternating passes, the thread's CPU time; except the takes, which
 * sit between refresh calls (four a batch): a read of the thread's CPU
 * clock costs ~1.6 us on these VMs (a system call), as much as a take, so
 * they are timed by the TSC (calibrated against the monotonic clock; a
 * microsecond span is rarely preempted). `--unknown P` sets the
 * share of unknown-item events (default 0.01). `steps_ns`: fold-in's
 * steps one by one (medians, by the TSC: the resolve, the four takes, the
 * fill, the flush), to show which one a change moves. tests/bench/RESULTS.md,
 * "Fold-in's cost".
 *
 * `--scan N`: the publication's scan instead (hl_foldin_vectors_from: the
 * mean query of a new item's users scored against N model items with one
 * sgemv, then the near ones rescored in double): ms per publication,
 * medians of REPS alternating runs, against the ceiling: reading the N
 * rows and biases the sgemv must read (N x (dim + 1) floats) at this
 * thread's memory read bandwidth, measured in the same run
 * (bench_ceiling.h), the least time any scan of them takes. Beside it
 * (plain_loop_ms) its plain-loop twin, a double dot product per item,
 * what it replaced; before Dec 6 that loop was printed as the ceiling,
 * though it is slower than the figure it bounded (ratio 0.47-0.50). */
#include "bench_args.h"

#include "fold.h"
#include "foldin.h"
#include "log.h"
#include "rank.h"

#include <cblas.h>
#include <x86intrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DIM      64
#define HEADS    3
#define HISTORY  32
#define N_ITEMS  10000
#define N_NEW    5000
#define N_USERS  100000
#define BATCH    1024
#define BATCHES  200     /* per pass without refresh; BATCHES / 5 with */
#define REPS     5

static uint64_t rng = 88172645463325252ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static float frand(void) { return (float)((double)(rnd() >> 11) / 9007199254740992.0) * 2 - 1; }

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

#include "bench_ceiling.h"       /* after now_s: bandwidth() times with it */

static double tsc_s;             /* seconds per TSC tick */

static void tsc_calibrate(void)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    uint64_t t0 = __rdtsc();
    do clock_gettime(CLOCK_MONOTONIC, &b);
    while ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec) < 50e6);
    tsc_s = ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9) / (double)(__rdtsc() - t0);
}

static int write_model(const char *path)
{
    hl_model_parts p;
    memset(&p, 0, sizeof p);
    hl_model_info *mi = &p.info;
    *mi = (hl_model_info){.dim = DIM, .n_heads = HEADS, .n_items = N_ITEMS, .n_layers = 1,
                          .layer_out = {DIM}};
    double hl[HEADS] = {3600e3, 86400e3, 30 * 86400e3};
    memcpy(mi->half_life_ms, hl, sizeof hl);
    for (int t = 0; t < HL_N_TYPES; t++) mi->type_weight[t] = 1;
    snprintf(mi->version, sizeof mi->version, "bench-foldin");
    size_t ne = (size_t)N_ITEMS * DIM;
    float *e_in = malloc(ne * 4), *e_out = malloc(ne * 4), *bias = calloc(N_ITEMS, 4);
    float *w = malloc(sizeof(float) * DIM * HEADS * (DIM + 1)), *b = calloc(DIM, 4);
    char **ids = malloc(sizeof *ids * N_ITEMS);
    uint32_t *lens = malloc(sizeof *lens * N_ITEMS);
    for (size_t i = 0; i < ne; i++) { e_in[i] = frand(); e_out[i] = frand(); }
    for (int i = 0; i < DIM * HEADS * (DIM + 1); i++) w[i] = 0.1f * frand();
    for (int i = 0; i < N_ITEMS; i++) {
        ids[i] = malloc(16);
        lens[i] = (uint32_t)snprintf(ids[i], 16, "i%07d", i);
    }
    p.item_id = (const char *const *)ids; p.item_id_len = lens;
    p.e_in = e_in; p.e_out = e_out; p.bias = bias; p.layer_w[0] = w; p.layer_b[0] = b;
    char err[256];
    int rc = hl_model_write(path, &p, err, sizeof err);
    if (rc != 0) fprintf(stderr, "bench_foldin: %s\n", err);
    for (int i = 0; i < N_ITEMS; i++) free(ids[i]);
    free(ids); free(lens); free(e_in); free(e_out); free(bias); free(w); free(b);
    return rc;
}

typedef struct run {
    hl_shard        *sh;
    hl_model        *m;
    hl_wfoldin      *wf;
    hl_foldin_local  loc;
    hl_ranker       *rk;         /* NULL: --refresh 0 */
    hl_row_view      views[256];
    hl_rec          *recs;
    int              n_out[256];
    char            *names;      /* N_USERS ids of 12 bytes */
    char             new_id[N_NEW][16];
    int64_t          offset, ts;
    double           unknown;
} run;

/* step: fold-in's own steps apart (resolve, take, fill, flush), by the TSC */
typedef struct cost { double state, fold, refresh, step[4]; } cost;

static double tsc_since(uint64_t a) { return (double)(__rdtsc() - a) * tsc_s; }

/* The dirty users' lists, as publish.c refreshes them (256 per call),
 * fold-in's take after each call when on; the take's time into *fold. */
static double refresh(run *r, int on, double *fold, double *take)
{
    uint32_t rows[256];
    int n;
    double t0 = now_s(), in_fold = 0;
    do {
        n = hl_table_take_dirty(r->sh->tbl, rows, 256);
        for (int i = 0; i < n; i++)
            hl_table_view(r->sh->tbl, rows[i], &r->views[i]);
        if (n > 0 && r->rk != NULL &&
            hl_ranker_refresh(r->rk, r->views, n, r->recs, r->n_out) == 0 && on) {
            uint64_t a = __rdtsc();
            hl_foldin_local_take(&r->loc, r->sh, rows, n, r->rk);
            in_fold += tsc_since(a);
        }
    } while (n == 256);
    *fold += in_fold;
    *take = in_fold;
    return now_s() - t0 - in_fold;
}

/* One batch, as batch.c runs it: events pushed (and noted), applied, then
 * (fold-in on) resolved, the refresh (taking the queries), the fill and
 * the flush. Its CPU seconds by part. */
static cost batch(run *r, int on)
{
    hl_shard *sh = r->sh;
    int dup, failed;
    cost c = {0};
    double t0 = now_s();
    hl_shard_batch_begin(sh);
    for (int i = 0; i < BATCH; i++) {
        uint32_t u = (uint32_t)(rnd() % N_USERS);
        int unk = (double)(rnd() >> 11) / 9007199254740992.0 < r->unknown;
        int k = (int)(rnd() % N_NEW);
        hl_event ev = {.user = r->names + (size_t)u * 12, .user_len = 11,
                       .item = unk ? -1 : (int32_t)(rnd() % N_ITEMS), .type = HL_VIEW,
                       .w = 1, .ts_ms = r->ts += 10, .offset = r->offset++};
        if (unk)            /* decode's key of the id, fold-in on or off */
            ev.item_key = hl_item_key(r->new_id[k], 10);
        hl_shard_push(sh, &ev);
        if (unk && on)
            hl_foldin_local_note(&r->loc, sh, sh->n_ev - 1, r->new_id[k], 10, ev.w);
    }
    hl_shard_apply(sh, r->m, &dup, &failed);
    double t1 = now_s();
    c.state = t1 - t0;
    uint64_t a = __rdtsc();
    if (on)
        hl_foldin_local_resolve(r->wf, &r->loc, r->m);
    c.step[0] = tsc_since(a);
    c.fold = now_s() - t1;
    c.refresh = refresh(r, on, &c.fold, &c.step[1]);
    double t2 = now_s();            /* off too: both figures hold the same clock reads */
    if (on) {
        a = __rdtsc();
        hl_foldin_local_fill(r->wf, &r->loc, sh, r->rk);
        c.step[2] = tsc_since(a);
        a = __rdtsc();
        hl_foldin_local_flush(r->wf, &r->loc);
        c.step[3] = tsc_since(a);
    }
    c.fold += now_s() - t2;
    return c;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int setup(run *r, const char *path, hl_metrics *reg)
{
    char err[512];
    if (write_model(path) != 0 || (r->m = hl_model_open(path, err, sizeof err)) == NULL)
        return 1;
    hl_table_opts to = {.history = HISTORY, .expected_users = N_USERS};
    double hls[HEADS] = {3600e3, 86400e3, 30 * 86400e3};
    hl_decay_init(&to.decay, HEADS, DIM, hls, err, sizeof err);
    hl_table *tbl = hl_table_create(&to, err, sizeof err);
    r->sh = tbl ? hl_shard_create(0, tbl, -1, NULL, BATCH, 0, reg, err, sizeof err) : NULL;
    hl_wfoldin_opts fo = {.m = r->m, .min_events = 1000000, .max_items = 100000,
                          .lift = strtof(HL_FOLDIN_LIFT, NULL),   /* the worker's default */
                          .topic = "items", .codec = {.dim = DIM}, .reg = reg};
    r->wf = r->sh ? hl_wfoldin_create(&fo, err, sizeof err) : NULL;
    if (r->wf == NULL || hl_foldin_local_init(r->wf, &r->loc, err, sizeof err) != 0) {
        fprintf(stderr, "bench_foldin: %s\n", err);
        return 1;
    }
    if (r->rk == (hl_ranker *)1) {       /* asked for: the worker's exact scoring */
        hl_rank_opts ro = {.k = 10, .exclude_seen = 1, .max_batch = 256};
        r->rk = hl_ranker_create(r->m, &ro, err, sizeof err);
        r->recs = malloc(256 * 10 * sizeof *r->recs);
        if (r->rk == NULL || r->recs == NULL) {
            fprintf(stderr, "bench_foldin: %s\n", err);
            return 1;
        }
    }
    r->names = malloc((size_t)N_USERS * 12);
    for (uint32_t u = 0; u < N_USERS; u++) snprintf(r->names + (size_t)u * 12, 12, "u%010u", u);
    for (int k = 0; k < N_NEW; k++) snprintf(r->new_id[k], sizeof r->new_id[k], "new-%06d", k);
    return 0;
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof(double), cmp_d);
    return t[n / 2];
}

/* --scan n: one publication's vectors at n model items, sgemv vs loop. */
static int bench_scan(int32_t n)
{
    size_t ne = (size_t)n * DIM;
    float *e_in = malloc(ne * 4), *e_out = malloc(ne * 4), *bias = malloc((size_t)n * 4);
    if (e_in == NULL || e_out == NULL || bias == NULL)
        return 1;
    for (size_t i = 0; i < ne; i++) { e_in[i] = frand(); e_out[i] = frand(); }
    for (int32_t j = 0; j < n; j++) bias[j] = 0.1f * frand();
    hl_foldin_opts o = {.dim = DIM, .max_items = 16, .min_events = 1, .half_life_ms = 86400e3};
    char err[256];
    hl_foldin *f = hl_foldin_create(&o, e_in, e_out, bias, n, err, sizeof err);
    if (f == NULL) {
        fprintf(stderr, "bench_foldin: %s\n", err);
        return 1;
    }
    double t[2][REPS];
    float S[DIM], v[2][2 * DIM + 1];
    int same = 1;
    for (int rep = 0; rep < REPS; rep++) {
        for (int d = 0; d < DIM; d++) S[d] = 3.0f * frand();
        for (int k = 0; k < 2; k++) {
            double t0 = now_s();
            (k ? hl_foldin_vectors_from : hl_foldin_vectors_from_naive)(f, S, 5.0, v[k],
                                                                        v[k] + DIM,
                                                                        v[k] + 2 * DIM);
            t[k][rep] = now_s() - t0;
        }
        same &= memcmp(v[0], v[1], sizeof v[0]) == 0;
    }
    double loop_ms = median(t[0], REPS) * 1e3, blas_ms = median(t[1], REPS) * 1e3;
    double bw = bandwidth(), ceil_ms = bw > 0 ? (double)n * (DIM + 1) * 4 / bw * 1e3 : 0;
    printf("{\"bench\":\"foldin_publication_scan\",\"items\":%d,\"value\":%.2f,"
           "\"unit\":\"ms\",\"ceiling\":%.2f,\"ceiling_is\":\"the model rows and biases "
           "read at this thread's memory bandwidth\",\"ratio\":%.3f,\"bandwidth_gbs\":%.1f,"
           "\"plain_loop_ms\":%.2f,\"speedup_vs_loop\":%.2f,\"same_vectors\":%s}\n",
           (int)n, blas_ms, ceil_ms, ceil_ms > 0 ? blas_ms / ceil_ms : 0.0, bw / 1e9, loop_ms,
           loop_ms / blas_ms, same ? "true" : "false");
    hl_foldin_destroy(f);
    free(e_in); free(e_out); free(bias);
    return same ? 0 : 1;
}

/* The first argument bench_foldin cannot take (NULL: none): each is a
 * known option followed by a number. */
static const char *bad_arg(int argc, char **argv)
{
    for (int i = 1; i < argc; i += 2) {
        if (strcmp(argv[i], "--scan") != 0 && strcmp(argv[i], "--unknown") != 0 &&
            strcmp(argv[i], "--refresh") != 0)
            return argv[i];
        if (i + 1 >= argc)
            return argv[i];
        if (!bench_arg_number(argv[i + 1]))
            return argv[i + 1];
    }
    return NULL;
}

static const char usage[] =
    "usage: bench_foldin [--unknown SHARE] [--refresh 0|1]\n"
    "       bench_foldin --scan ITEMS\n"
    "  --unknown  share of events naming unknown items (default 0.01)\n"
    "  --refresh  0: no list refresh (recs.enabled=false; default 1)\n"
    "  --scan     the publication's scan at ITEMS model items instead\n"
    "Prints JSON lines.\n";

/* The warm-up (every user a few events, nothing refreshed), then REPS
 * passes alternating fold-in off and on over the same kind of batches,
 * and the foldin_state_update line. */
static void measure(run *r, int with_refresh)
{
    static double t[7][REPS * BATCHES];
    hl_ranker *rk = r->rk;
    r->rk = NULL;                       /* the warm-up refreshes nothing */
    for (int i = 0; i < N_USERS / BATCH * 4; i++)     /* every user a few events */
        batch(r, 1);
    r->rk = rk;
    int per = with_refresh ? BATCHES / 5 : BATCHES, n = REPS * per;
    double refresh_s = 0;
    for (int rep = 0; rep < REPS; rep++)               /* alternate: noise hits both */
        for (int on = 0; on < 2; on++)
            for (int i = 0; i < per; i++) {
                cost c = batch(r, on);
                t[on][rep * per + i] = c.state + c.fold;
                for (int k = 0; on && k < 5; k++)
                    t[2 + k][rep * per + i] = k ? c.step[k - 1] : c.fold;
                refresh_s += c.refresh;
            }
    double off_ns = median(t[0], n) / BATCH * 1e9, on_ns = median(t[1], n) / BATCH * 1e9;
    double fold_ns = median(t[2], n) / BATCH * 1e9, step_ns[4];
    for (int k = 0; k < 4; k++)
        step_ns[k] = median(t[3 + k], n) / BATCH * 1e9;
    printf("{\"bench\":\"foldin_state_update\",\"unknown_share\":%.3f,\"refresh\":%d,"
           "\"value\":%.1f,\"unit\":\"ns/event\",\"ceiling\":%.1f,\"ceiling_is\":\"the "
           "same batches with fold-in off\",\"ratio\":%.3f,\"foldin_steps_ns\":%.1f,"
           "\"steps_ns\":{\"resolve\":%.1f,\"take\":%.1f,\"fill\":%.1f,\"flush\":%.1f},"
           "\"refresh_ns\":%.1f,\"target\":\"ratio < 1.10\"}\n",
           r->unknown, with_refresh, on_ns, off_ns, on_ns / off_ns, fold_ns, step_ns[0],
           step_ns[1], step_ns[2], step_ns[3], refresh_s / (2.0 * n * BATCH) * 1e9);
}

int main(int argc, char **argv)
{
    bench_args("bench_foldin", argc, argv, usage, bad_arg(argc, argv));
    static run r;
    char path[64];
    int with_refresh = 1;
    openblas_set_num_threads(1);
    for (int i = 1; i + 1 < argc; i += 2)
        if (strcmp(argv[i], "--scan") == 0)
            return bench_scan(atoi(argv[i + 1]));
    r.unknown = 0.01;
    r.ts = 1700000000000;
    for (int i = 1; i + 1 < argc; i += 2)
        if (strcmp(argv[i], "--unknown") == 0) r.unknown = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--refresh") == 0) with_refresh = atoi(argv[i + 1]);
    r.rk = with_refresh ? (hl_ranker *)1 : NULL;
    tsc_calibrate();
    openblas_set_num_threads(1);
    hl_log_set_level(HL_LOG_WARN);
    snprintf(path, sizeof path, "/tmp/bench_foldin_%d.hlm", (int)getpid());
    hl_metrics *reg = hl_metrics_create();
    int rc = setup(&r, path, reg);
    unlink(path);
    if (rc != 0)
        return 1;
    measure(&r, with_refresh);
    hl_foldin_local_reset(&r.loc);
    hl_ranker_destroy(r.rk);
    free(r.recs);
    hl_wfoldin_destroy(r.wf);
    hl_shard_destroy(r.sh);
    hl_model_close(r.m);
    hl_metrics_destroy(reg);
    return 0;
}
