/* bench_state.c - updates per second of one shard's table on one core, and
 * memory per user, at 50k and 5M distinct users (dim 64, three heads,
 * history 32), Zipf(0.99)-distributed activity over users.
 *
 * Events are generated before the clock starts. The table is first filled
 * with every user once (timing each 1000-user batch: the longest is the
 * worst stall growth causes), then the Zipf stream is applied in batches
 * of 1024, the median of REPS runs reported.
 *
 * Ceiling: the same event stream touching the same bytes of the same rows
 * with the same prefetch depth, without hashing, lookup or bookkeeping: the
 * rate this machine reads and writes ~1 KB at random rows of that table.
 * Memory: the table's own count (stats.bytes) and the process RSS growth
 * while it was filled, against the payload (see hl_table_stats).
 *
 * bench_state --memory HEADS HISTORY [USERS]: memory per user alone, for
 * another shape (dim 64): USERS users (default 100000) each given HISTORY
 * events, so every ring is full. What state.history costs (README,
 * "Daily retrain": a longer ring makes a model swap more exact). */
#include "bench_args.h"
#include "table.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DIM      64
#define HEADS    3
#define HISTORY  32
#define N_ITEMS  10000
#define BATCH    1024
#define REPS     3
#define NAME_W   16
#define ZIPF_S   0.99
#define PIPE     16

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
static double now_s(void) { return clock_s(CLOCK_MONOTONIC); }

/* This thread's CPU time: the rates are per second of CPU, so other
 * processes on a shared 2-core box do not count against us (their cache
 * pollution still does). Wall-clock rates are printed too. */
static double cpu_s(void) { return clock_s(CLOCK_THREAD_CPUTIME_ID); }

static uint64_t rng = 88172645463325252ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static double unit(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }

static size_t rss_bytes(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL) return 0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
    fclose(f);
    return (size_t)rss * 4096;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Zipf ranks by inverse CDF; rank r is user perm[r], so hot users are
 * scattered over the table rather than packed in the first rows. */
static uint32_t *zipf_users(uint32_t n_users, size_t n_events)
{
    double *cdf = malloc(sizeof(double) * n_users);
    uint32_t *perm = malloc(sizeof(uint32_t) * n_users);
    uint32_t *out = malloc(sizeof(uint32_t) * n_events);
    double sum = 0;
    for (uint32_t r = 0; r < n_users; r++) {
        sum += pow((double)r + 1, -ZIPF_S);
        cdf[r] = sum;
        perm[r] = r;
    }
    for (uint32_t r = n_users - 1; r > 0; r--) {
        uint32_t j = (uint32_t)(rnd() % (r + 1));
        uint32_t t = perm[r]; perm[r] = perm[j]; perm[j] = t;
    }
    for (size_t i = 0; i < n_events; i++) {
        double u = unit() * sum;
        uint32_t lo = 0, hi = n_users - 1;
        while (lo < hi) {
            uint32_t mid = (lo + hi) / 2;
            if (cdf[mid] < u) lo = mid + 1; else hi = mid;
        }
        out[i] = perm[lo];
    }
    free(cdf);
    free(perm);
    return out;
}

typedef struct run {
    uint32_t  n_users;
    size_t    n_events;
    char     *names;        /* n_users * NAME_W */
    hl_event *fill;         /* one event per user, in user order */
    hl_event *ev;           /* the Zipf stream */
    char     *ev_names;     /* its user ids, in stream order as a decoded
                               batch would hold them */
    float    *e_in;
    hl_table *tbl;
} run;

static void make_events(run *R)
{
    R->names = malloc((size_t)R->n_users * NAME_W);
    R->fill = malloc(sizeof(hl_event) * R->n_users);
    R->ev = malloc(sizeof(hl_event) * R->n_events);
    R->ev_names = malloc(R->n_events * NAME_W);
    R->e_in = malloc(sizeof(float) * N_ITEMS * DIM);
    for (size_t i = 0; i < (size_t)N_ITEMS * DIM; i++) R->e_in[i] = (float)(unit() - 0.5);
    int64_t t0 = 1700000000000LL, off = 0;
    for (uint32_t u = 0; u < R->n_users; u++) {
        char *nm = R->names + (size_t)u * NAME_W;
        int len = snprintf(nm, NAME_W, "user%08u", u);
        R->fill[u] = (hl_event){ .user = nm, .user_len = (uint32_t)len,
                                 .item = (int32_t)(rnd() % N_ITEMS), .w = 1.0f,
                                 .ts_ms = t0, .offset = off++ };
    }
    uint32_t *who = zipf_users(R->n_users, R->n_events);
    for (size_t i = 0; i < R->n_events; i++) {
        hl_event e = R->fill[who[i]];
        e.item = (int32_t)(rnd() % N_ITEMS);
        e.type = (uint8_t)(rnd() % HL_N_TYPES);
        e.w = 1.0f + (float)(rnd() % 4);
        e.ts_ms = t0 + (int64_t)i * 10 - (int64_t)(rnd() % 1000);  /* some late */
        e.offset = off++;
        e.user = memcpy(R->ev_names + i * NAME_W, e.user, NAME_W);
        R->ev[i] = e;
    }
    free(who);
}

/* The table for R, or the reason it could not be made and exit 1: a bench
 * that cannot build its table has nothing to print. */
static void create_table(run *R, const hl_table_opts *o)
{
    char err[256];
    if ((R->tbl = hl_table_create(o, err, sizeof err)) == NULL) {
        fprintf(stderr, "bench_state: %s\n", err);
        exit(1);
    }
}

static void free_run(run *R)
{
    hl_table_destroy(R->tbl);
    free(R->names);
    free(R->fill);
    free(R->ev);
    free(R->ev_names);
    free(R->e_in);
}

/* Fills the table with every user once; returns inserts/s, and the longest
 * and median single-batch times in ms (thread CPU time, which includes page
 * faults but not time other processes held the core). */
static double fill_table(run *R, double *max_ms, double *med_ms)
{
    enum { FILL_BATCH = 1000 };
    size_t n_b = (R->n_users + FILL_BATCH - 1) / FILL_BATCH;
    double *t = malloc(sizeof(double) * n_b), t_all = cpu_s();
    *max_ms = 0;
    for (size_t b = 0; b < n_b; b++) {
        size_t lo = b * FILL_BATCH;
        int n = (int)(R->n_users - lo < FILL_BATCH ? R->n_users - lo : FILL_BATCH);
        double t0 = cpu_s();
        hl_table_apply(R->tbl, R->fill + lo, n, R->e_in, N_ITEMS, NULL);
        t[b] = (cpu_s() - t0) * 1e3;
        if (t[b] > *max_ms) *max_ms = t[b];
    }
    t_all = cpu_s() - t_all;
    *med_ms = median(t, (int)n_b);
    free(t);
    return R->n_users / t_all;
}

/* Applies the stream once (offsets shifted so every rep is applied, not
 * skipped as duplicates); returns updates/s. */
static double apply_stream(run *R, int64_t shift, int64_t ts_shift, double *wall)
{
    for (size_t i = 0; i < R->n_events; i++) {
        R->ev[i].offset += shift;
        R->ev[i].ts_ms += ts_shift;
    }
    double t0 = cpu_s(), w0 = now_s();
    size_t applied = 0;
    for (size_t i = 0; i < R->n_events; i += BATCH) {
        int n = (int)(R->n_events - i < BATCH ? R->n_events - i : BATCH);
        applied += (size_t)hl_table_apply(R->tbl, R->ev + i, n, R->e_in, N_ITEMS, NULL);
    }
    double dt = cpu_s() - t0;
    *wall = R->n_events / (now_s() - w0);
    if (applied != R->n_events)
        fprintf(stderr, "bench_state: applied %zu of %zu\n", applied, R->n_events);
    uint32_t rows[4096];
    while (hl_table_take_dirty(R->tbl, rows, 4096) == 4096) {}
    return R->n_events / dt;
}

/* The bytes an update touches in row r: masses and heads (the lines from
 * the user id to the end of s), and one entry of each history array. */
typedef struct touch { uint32_t *lo; size_t n_words; int64_t *ts; int32_t *item; uint8_t *type; } touch;

static touch touch_of(const hl_table *tbl, uint32_t r, int slot)
{
    hl_row_view v;
    hl_table_view(tbl, r, &v);
    uint32_t *s = (uint32_t *)v.s;
    uint32_t *lo = (uint32_t *)((uintptr_t)v.user & ~(uintptr_t)63);
    if (lo > (uint32_t *)v.m) lo = (uint32_t *)v.m;     /* long id off-row */
    return (touch){ lo, (size_t)(s + HEADS * DIM - lo), (int64_t *)v.hist_ts_ms + slot,
                    (int32_t *)v.hist_item + slot, (uint8_t *)v.hist_type + slot };
}

/* Same rows, same bytes, same prefetch distance, nothing else: every touched
 * 32-bit word gets b added, b = 0 read at run time so nothing is optimised
 * away and the table is left as it was. */
static double ceiling(run *R, touch *tc, volatile uint32_t *zero, double *wall)
{
    uint32_t b = *zero;
    double t0 = cpu_s(), w0 = now_s();
    for (size_t i = 0; i < R->n_events; i++) {
        if (i + PIPE < R->n_events) {
            const touch *p = &tc[i + PIPE];
            for (size_t off = 0; off < p->n_words; off += 16)
                __builtin_prefetch(p->lo + off, 1, 3);
            __builtin_prefetch(p->ts, 1, 3);
            __builtin_prefetch(p->item, 1, 3);
            __builtin_prefetch(p->type, 1, 3);
        }
        touch *t = &tc[i];
        size_t j = 0;
        for (; j + 8 <= t->n_words; j += 8)       /* 8-wide: SIMD at -O2 */
            for (int k = 0; k < 8; k++) t->lo[j + k] += b;
        for (; j < t->n_words; j++) t->lo[j] += b;
        *t->ts += (int64_t)b;
        *t->item += (int32_t)b;
        *t->type = (uint8_t)(*t->type + (uint8_t)b);
    }
    double dt = cpu_s() - t0;
    *wall = R->n_events / (now_s() - w0);
    return R->n_events / dt;
}

static void bench(uint32_t n_users, size_t n_events)
{
    run R = { .n_users = n_users, .n_events = n_events };
    make_events(&R);
    hl_table_opts o = { .history = HISTORY, .max_users = 0, .evict_mass = 0,
                        .expected_users = 0 };
    hl_decay_init(&o.decay, HEADS, DIM, hl_default_half_life_ms, NULL, 0);
    size_t rss0 = rss_bytes();
    create_table(&R, &o);
    double max_ms, med_ms;
    double ins = fill_table(&R, &max_ms, &med_ms);
    size_t rss1 = rss_bytes();

    double v[REPS], c[REPS], vw[REPS], cw[REPS];
    volatile uint32_t zero = 0;
    touch *tc = malloc(sizeof(touch) * n_events);
    for (size_t i = 0; i < n_events; i++) {
        int64_t r = hl_table_find(R.tbl, R.ev[i].user, R.ev[i].user_len);
        tc[i] = touch_of(R.tbl, (uint32_t)r, (int)(i % HISTORY));
    }
    for (int r = 0; r < REPS; r++) {
        v[r] = apply_stream(&R, r == 0 ? 0 : (int64_t)n_events + n_users,
                            r == 0 ? 0 : (int64_t)n_events * 10, &vw[r]);
        c[r] = ceiling(&R, tc, &zero, &cw[r]);
    }
    double mv = median(v, REPS), mc = median(c, REPS);
    double mvw = median(vw, REPS), mcw = median(cw, REPS);
    hl_table_stats st;
    hl_table_stats_get(R.tbl, &st);
    printf("{\"bench\":\"state_update\",\"users\":%u,\"events\":%zu,\"zipf_s\":%.2f,"
           "\"dim\":%d,\"heads\":%d,\"value\":%.4g,\"unit\":\"updates/s\","
           "\"ceiling\":%.4g,\"ratio\":%.2f,\"clock\":\"thread_cpu\","
           "\"wall_value\":%.4g,\"wall_ceiling\":%.4g}\n",
           n_users, n_events, ZIPF_S, DIM, HEADS, mv, mc, mv / mc, mvw, mcw);
    printf("{\"bench\":\"state_insert\",\"users\":%u,\"value\":%.4g,\"unit\":\"inserts/s\","
           "\"batch\":1000,\"max_batch_ms\":%.3f,\"median_batch_ms\":%.3f,"
           "\"clock\":\"thread_cpu\"}\n",
           n_users, ins, max_ms, med_ms);
    double payload = (double)st.payload_bytes / st.users;
    printf("{\"bench\":\"state_memory\",\"users\":%u,\"value\":%.1f,\"unit\":\"bytes/user\","
           "\"payload\":%.1f,\"ratio\":%.3f,\"rss_per_user\":%.1f,\"rss_ratio\":%.3f}\n",
           n_users, (double)st.bytes / st.users, payload,
           (double)st.bytes / st.payload_bytes, (double)(rss1 - rss0) / st.users,
           (double)(rss1 - rss0) / st.payload_bytes);
    fflush(stdout);
    free(tc);
    free_run(&R);
}

/* A full table (max_users = n_users) taking n_new new users in batches of
 * 1000, each new user evicting the least recently active (in groups of
 * clamp(max_users/64, 1, 64)). Prints the longest batch: the eviction
 * stall, which an O(n) scan per group would make grow with the table. */
static void bench_capacity(uint32_t n_users, uint32_t n_new)
{
    run R = { .n_users = n_users + n_new, .n_events = 1 };
    make_events(&R);
    hl_table_opts o = { .history = HISTORY, .max_users = n_users };
    hl_decay_init(&o.decay, HEADS, DIM, hl_default_half_life_ms, NULL, 0);
    create_table(&R, &o);
    double max_ms, med_ms, worst = 0, t_new = 0;
    R.n_users = n_users;
    fill_table(&R, &max_ms, &med_ms);
    for (uint32_t lo = n_users; lo < n_users + n_new; lo += 1000) {
        double t0 = cpu_s();
        hl_table_apply(R.tbl, R.fill + lo, 1000, R.e_in, N_ITEMS, NULL);
        double dt = cpu_s() - t0;
        t_new += dt;
        if (dt > worst) worst = dt;
    }
    hl_table_stats st;
    hl_table_stats_get(R.tbl, &st);
    printf("{\"bench\":\"state_capacity_evict\",\"users\":%u,\"value\":%.3f,"
           "\"unit\":\"max_batch_ms\",\"batch\":1000,\"evict_batch\":%u,"
           "\"evicted\":%llu,\"inserts_per_s\":%.4g,\"clock\":\"thread_cpu\"}\n",
           n_users, worst * 1e3, n_users / 64 < 64 ? n_users / 64 : 64,
           (unsigned long long)st.evicted_capacity,
           n_new / t_new);
    fflush(stdout);
    free_run(&R);
}

/* --memory: bytes per user of a table of n_users full rings. */
static void bench_memory(int heads, int history, uint32_t n_users)
{
    run R = { .n_users = n_users, .n_events = 1 };
    make_events(&R);
    hl_table_opts o = { .history = history, .max_users = 0, .evict_mass = 0,
                        .expected_users = 0 };
    double hl_ms[HL_MAX_HEADS];
    for (int h = 0; h < heads; h++)          /* 1 h, 8 h, 64 h, ..: any will do */
        hl_ms[h] = 3600e3 * (double)(1 << (3 * h));
    hl_decay_init(&o.decay, heads, DIM, hl_ms, NULL, 0);
    size_t rss0 = rss_bytes();
    create_table(&R, &o);
    for (int round = 0; round < history; round++) {
        for (uint32_t u = 0; u < n_users; u++) {
            R.fill[u].offset += n_users;
            R.fill[u].ts_ms += 1000;
            R.fill[u].item = (int32_t)(rnd() % N_ITEMS);
        }
        for (uint32_t lo = 0; lo < n_users; lo += 1000)
            hl_table_apply(R.tbl, R.fill + lo, (int)(n_users - lo < 1000 ? n_users - lo : 1000),
                           R.e_in, N_ITEMS, NULL);
    }
    size_t rss1 = rss_bytes();
    hl_table_stats st;
    hl_table_stats_get(R.tbl, &st);
    printf("{\"bench\":\"state_memory_shape\",\"users\":%zu,\"dim\":%d,\"heads\":%d,"
           "\"history\":%d,\"value\":%.1f,\"unit\":\"bytes/user\",\"payload\":%.1f,"
           "\"rss_per_user\":%.1f}\n",
           st.users, DIM, heads, history, (double)st.bytes / st.users,
           (double)st.payload_bytes / st.users, (double)(rss1 - rss0) / st.users);
    free_run(&R);
}

static const char usage[] =
    "usage: bench_state [--small | --big]\n"
    "       bench_state --memory HEADS(1..%d) HISTORY(1..255) [USERS]\n"
    "  (no option)  50k users, capacity eviction at 1M, then 5M users\n"
    "  --small      50k users and eviction at 50k only (seconds)\n"
    "  --big        the 5M-user figure only\n"
    "  --memory     bytes per user of full rings of that shape (dim 64)\n"
    "Prints JSON lines; see the comment at the top of bench_state.c.\n";

int main(int argc, char **argv)
{
    int known = argc == 1 || (argc == 2 && (strcmp(argv[1], "--small") == 0 ||
                                           strcmp(argv[1], "--big") == 0)) ||
                (argc >= 4 && argc <= 5 && strcmp(argv[1], "--memory") == 0);
    char text[sizeof usage + 16];
    snprintf(text, sizeof text, usage, HL_MAX_HEADS);
    bench_args("bench_state", argc, argv, text, known ? NULL : argv[argc > 1 ? 1 : 0]);
    if (argc >= 4 && strcmp(argv[1], "--memory") == 0) {
        int heads = atoi(argv[2]), history = atoi(argv[3]);
        uint32_t n = argc > 4 ? (uint32_t)atol(argv[4]) : 100000;
        if (heads < 1 || heads > HL_MAX_HEADS || history < 1 || history > 255 || n < 1) {
            fprintf(stderr, usage, HL_MAX_HEADS);
            return 2;
        }
        bench_memory(heads, history, n);
        return 0;
    }
    int small_only = argc > 1 && strcmp(argv[1], "--small") == 0;
    int big_only = argc > 1 && strcmp(argv[1], "--big") == 0;
    if (!big_only) {
        bench(50000, 3000000);
        bench_capacity(small_only ? 50000 : 1000000, small_only ? 20000 : 200000);
    }
    if (!small_only) bench(5000000, 8000000);
    return 0;
}
