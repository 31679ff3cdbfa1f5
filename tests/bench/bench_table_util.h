/* bench_table_util.h - what the benchmarks of table state share (bench_snapshot.c,
 * bench_changelog.c): a seeded generator, clocks, medians, and a shard of
 * made-up users with full history rings.
 *
 * A shard is made with hl_table_restore from random values rather than by
 * applying events: 32 events per user for a million users would take
 * longer than the figure itself, and the rows have the same bytes. User i
 * is named by bench_user_id(i), so events can address the same users. */
#ifndef HL_BENCH_TABLE_UTIL_H
#define HL_BENCH_TABLE_UTIL_H

#include "table.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BENCH_HEADS 3
#define BENCH_FP    42      /* the model fingerprint the shards are written under */

static uint64_t bench_rng = 0x9E3779B97F4A7C15ull;

static inline uint64_t rnd(void)
{
    bench_rng ^= bench_rng << 13;
    bench_rng ^= bench_rng >> 7;
    bench_rng ^= bench_rng << 17;
    return bench_rng;
}

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* CPU time of this thread: a step's own cost, without the time the
 * scheduler gave to other processes on a shared machine. */
static inline double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Sorts v in place. */
static inline double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

static inline void bench_die(const char *what, const char *err)
{
    fprintf(stderr, "bench: %s: %s\n", what, err);
    exit(1);
}

/* user i's id, 13 bytes: ids spread over the hash like real ones. */
static inline int bench_user_id(char *buf, size_t len, size_t i)
{
    return snprintf(buf, len, "user-%08zu", i * 7919 % 100000000);
}

/* Three heads of dim floats, a ring of history events; no eviction. */
static inline hl_table_opts bench_table_opts(size_t users, int dim, int history)
{
    hl_table_opts o;
    char err[256];
    memset(&o, 0, sizeof o);
    if (hl_decay_init(&o.decay, BENCH_HEADS, dim, hl_default_half_life_ms, err, sizeof err) != 0)
        bench_die("decay", err);
    o.history = history;
    o.max_users = 0;
    o.expected_users = users;
    return o;
}

/* users rows with random heads and full rings; user i's last offset is i,
 * its event times before 1,701,000,000,000 ms. */
static inline hl_table *bench_make_shard(const hl_table_opts *o, size_t users)
{
    int dim = o->decay.dim, history = o->history;
    char err[256], id[32];
    float *s = malloc(sizeof(float) * BENCH_HEADS * (size_t)dim), m[BENCH_HEADS];
    int32_t *item = malloc(sizeof(int32_t) * (size_t)history);
    int64_t *ts = malloc(sizeof(int64_t) * (size_t)history);
    uint8_t *type = malloc((size_t)history);
    hl_table *tbl = hl_table_create(o, err, sizeof err);
    if (tbl == NULL) bench_die("table", err);
    if (!s || !item || !ts || !type) bench_die("shard", "out of memory");
    for (size_t u = 0; u < users; u++) {
        int64_t t = 1700000000000LL + (int64_t)(rnd() % 1000000000);
        for (int i = 0; i < BENCH_HEADS * dim; i++) s[i] = (float)(rnd() % 20000) * 1e-4f - 1.0f;
        for (int h = 0; h < BENCH_HEADS; h++) m[h] = (float)(rnd() % 1000) * 0.01f;
        for (int i = 0; i < history; i++) {
            item[i] = (int32_t)(rnd() % 100000);
            ts[i] = t - (history - i) * 1000;
            type[i] = (uint8_t)(rnd() % HL_N_TYPES);
        }
        bench_user_id(id, sizeof id, u);
        hl_row_view v = {.user = id, .user_len = (uint32_t)strlen(id), .s = s, .m = m,
                         .t_ref_ms = t, .last_offset = (int64_t)u, .active_seq = u + 1,
                         .history = history, .n_hist = history, .hist_head = 0,
                         .hist_item = item, .hist_type = type, .hist_ts_ms = ts};
        if (hl_table_restore(tbl, &v) != 0) bench_die("restore", id);
    }
    free(s);
    free(item);
    free(ts);
    free(type);
    return tbl;
}

#endif
