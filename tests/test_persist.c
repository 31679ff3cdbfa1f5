/* test_persist.c - shard snapshots inside the worker (worker/persist.c)
 * against real tables and the real core snapshot code in a scratch
 * directory: restore with and without files, periodic fuzzy snapshots
 * while the table keeps changing, replay equal to an uninterrupted run,
 * the background committer, injected I/O failures, flush deadlines, and
 * the longest single tick (printed as a NOTE line). */
#define T_SUITE "persist"
#include "test.h"

#include "io.h"
#include "log.h"
#include "persist.h"
#include "snapshot.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#define DIM      8
#define N_HEADS  3
#define HISTORY  5
#define N_ITEMS  40
#define N_USERS  3000
#define N_EVENTS 40000
#define BATCH    100
#define FP       0x5eed5eedULL
#define TOPIC    "ev"
#define SCRATCH_NAME "persisttest"

#include "table_util.h"

static hl_table_opts topts_dim(int dim)
{
    hl_table_opts o;
    char err[256];
    memset(&o, 0, sizeof o);
    hl_decay_init(&o.decay, N_HEADS, dim, hl_default_half_life_ms, err, sizeof err);
    o.history = HISTORY;
    o.expected_users = 64;
    return o;
}

static hl_table *new_table(void)
{
    char err[256];
    hl_table_opts o = topts_dim(DIM);
    return hl_table_create(&o, err, sizeof err);
}

/* ---- an hl_io that fails or slows down on request ----------------------- */

typedef struct faulty {
    hl_io       io;
    atomic_int  n_write, n_fsync;
    atomic_int  fail_write, fail_fsync;     /* Nth call from now, 1-based; 0 never */
    atomic_int  fsync_sleep_ms;
    atomic_int  fsync_on_caller;            /* an fsync ran on the test's thread */
    pthread_t   caller;
} faulty;

static ssize_t f_write(void *ctx, int fd, const void *buf, size_t len)
{
    faulty *f = ctx;
    if (atomic_fetch_add(&f->n_write, 1) + 1 == atomic_load(&f->fail_write)) {
        errno = ENOSPC;
        return -1;
    }
    return hl_io_posix()->write(NULL, fd, buf, len);
}

static int f_fsync(void *ctx, int fd)
{
    faulty *f = ctx;
    if (pthread_equal(pthread_self(), f->caller))
        atomic_store(&f->fsync_on_caller, 1);
    if (atomic_load(&f->fsync_sleep_ms) > 0)
        usleep((useconds_t)atomic_load(&f->fsync_sleep_ms) * 1000);
    if (atomic_fetch_add(&f->n_fsync, 1) + 1 == atomic_load(&f->fail_fsync)) {
        errno = EIO;
        return -1;
    }
    return hl_io_posix()->fsync(NULL, fd);
}

static void faulty_init(faulty *f)
{
    memset(f, 0, sizeof *f);
    f->io = *hl_io_posix();
    f->io.ctx = f;
    f->io.write = f_write;
    f->io.fsync = f_fsync;
    f->caller = pthread_self();
}

/* Arms a failure at the Nth write/fsync from now. */
static void fail_next(atomic_int *count, atomic_int *at, int n)
{
    atomic_store(at, atomic_load(count) + n);
}

static hl_persist *new_persist(int64_t interval_ms, size_t step_rows, int64_t budget_us,
                               const hl_io *io, hl_metrics *reg)
{
    char err[512];
    hl_persist_opts o = {.dir = dir, .topic = TOPIC, .retain = 2, .interval_ms = interval_ms,
                         .model_fingerprint = FP, .step_rows = step_rows,
                         .tick_budget_us = budget_us, .io = io, .reg = reg};
    hl_persist *p = hl_persist_create(&o, err, sizeof err);
    if (p == NULL)
        printf("    hl_persist_create: %s\n", err);
    return p;
}

/* Waits up to 10 s for the committer to go idle. */
static void wait_committer(hl_persist *p)
{
    hl_persist_stats st;
    for (int i = 0; i < 10000; i++) {
        hl_persist_stats_get(p, &st);
        if (st.queued == 0)
            return;
        usleep(1000);
    }
}

/* ---- cases -------------------------------------------------------------- */

static void test_restore_none(void)
{
    char err[512];
    hl_persist_restored r;
    fresh_dir();
    hl_persist *p = new_persist(1000, 0, 0, NULL, NULL);
    hl_table *tbl = new_table(), *before = tbl;
    CHECK(p != NULL && tbl != NULL);
    int rc = hl_persist_restore(p, 3, &tbl, &r, err, sizeof err);
    CHECKF(rc == 0, "%d %s", rc, err);
    CHECK(r.next_offset == HL_PERSIST_NO_OFFSET && r.path[0] == '\0' && r.n_rejected == 0);
    CHECK(tbl == before);
    hl_table_destroy(tbl);
    hl_persist_destroy(p);
}

/* The directories whose fsync_dir was asked for, ';'-separated. */
static char synced[4096];

static int note_dirsync(void *ctx, const char *d)
{
    size_t n = strlen(synced);
    snprintf(synced + n, sizeof synced - n, "%s;", d);
    return hl_io_posix()->fsync_dir(NULL, d);
}

/* A snapshot dir that does not exist yet is created, durably: each new
 * directory's entry is fsynced in its parent, or a power loss soon after
 * the first snapshots could take the whole directory (and every file the
 * snapshot fsyncs made durable inside it) while the offsets committed to
 * Kafka stay ahead: the restart would find no snapshot. */
static void test_creates_dir(void)
{
    char err[512], sub[600], want[1300];
    hl_io io = *hl_io_posix();
    io.fsync_dir = note_dirsync;
    fresh_dir();
    snprintf(sub, sizeof sub, "%s/a/b", dir);
    hl_persist_opts o = {.dir = sub, .topic = TOPIC, .retain = 2, .model_fingerprint = FP,
                         .io = &io};
    synced[0] = '\0';
    hl_persist *p = hl_persist_create(&o, err, sizeof err);
    CHECKF(p != NULL, "%s", err);
    CHECK(access(sub, W_OK) == 0);
    snprintf(want, sizeof want, "%s;%s/a;", dir, dir);
    CHECKF(strcmp(synced, want) == 0, "directories fsynced '%s', want '%s'", synced, want);
    hl_persist_destroy(p);
    synced[0] = '\0';
    p = hl_persist_create(&o, err, sizeof err);     /* there already: nothing to sync */
    CHECKF(p != NULL && synced[0] == '\0', "%s / '%s'", p ? "" : err, synced);
    hl_persist_destroy(p);
    o.io = NULL;
    o.dir = dir;
    o.topic = "bad topic";
    CHECK(hl_persist_create(&o, err, sizeof err) == NULL);
}

/* A regular file at snapshot.dir is refused at create (issue 16, item 12):
 * it used to be accepted (mkdir said EEXIST) and then fail every snapshot,
 * interval after interval, and the final one at shutdown. */
static void test_refuses_file_as_dir(void)
{
    char err[512], file[600];
    fresh_dir();
    snprintf(file, sizeof file, "%s/snapshots", dir);
    FILE *f = fopen(file, "w");
    if (f) fclose(f);
    hl_persist_opts o = {.dir = file, .topic = TOPIC, .retain = 2, .model_fingerprint = FP};
    hl_persist *p = hl_persist_create(&o, err, sizeof err);
    CHECKF(p == NULL && strstr(err, "not a directory (a regular file)") && strstr(err, file),
           "created: %s", p ? "yes" : err);
    hl_persist_destroy(p);
}

/* Feeds events in batches, ticking between batches with a simulated clock
 * (1 ms per batch) and next_offset one batch behind (lists in flight), as
 * a thread loop would. Returns the number of ticks that found a snapshot
 * in progress, i.e. the table changed between its steps. */
static void wait_committer(hl_persist *p);

static int run_ticks(hl_persist *p, hl_persist_shard *ps, hl_table *tbl, int from, int to,
                     int64_t *now_ms)
{
    int busy_ticks = 0;
    int64_t delivered = from;
    for (int i = from; i < to; i += BATCH) {
        int end = i + BATCH < to ? i + BATCH : to;
        apply_range(tbl, i, end);
        busy_ticks += hl_persist_shard_busy(ps);
        int rc = hl_persist_tick(ps, tbl, end, delivered, *now_ms);
        CHECKF(rc >= 0, "tick at %d: %d", i, rc);
        delivered = end;
        *now_ms += 1;
        wait_committer(p);      /* a commit takes real time; the clock is simulated */
    }
    return busy_ticks;
}

/* Periodic fuzzy snapshots while the table changes between ticks; "crash"
 * (no flush), restore the newest, replay from its offset: equal to an
 * uninterrupted run. Then flush, restore into a fresh table as the next
 * owner, replay the rest: equal again. */
static void test_periodic_restore_replay(void)
{
    char err[512];
    hl_persist_restored r;
    hl_persist_done done[64];
    const int cut = 30000;
    int64_t now_ms = 1000;
    fresh_dir();
    hl_persist *p = new_persist(40, 64, 1, NULL, NULL);   /* one 64-row step per tick */
    hl_table *tbl = new_table(), *full = new_table();
    hl_persist_shard *ps = p ? hl_persist_shard_create(p, 0, HL_PERSIST_NO_OFFSET) : NULL;
    CHECK(p && tbl && full && ps);
    if (!ps) return;
    apply_range(full, 0, N_EVENTS);

    int busy = run_ticks(p, ps, tbl, 0, cut, &now_ms);
    wait_committer(p);
    int n = hl_persist_poll(p, done, 64), ok = 0;
    for (int i = 0; i < n; i++) {
        CHECKF(done[i].rc == 0, "snapshot %d: %s", i, done[i].err);
        ok += done[i].rc == 0 && done[i].bytes > 0;
    }
    CHECKF(ok >= 3 && busy > 20, "snapshots %d, busy ticks %d", ok, busy);
    int64_t durable = hl_persist_shard_durable(ps);
    CHECK(n > 0 && durable == done[n - 1].next_offset && durable > 0 && durable < cut);
    CHECK(count_files(".hls") == 2 && count_files(".tmp") <= 1);

    /* Crash: a second worker restores the newest periodic snapshot. */
    hl_persist *p2 = new_persist(40, 0, 0, NULL, NULL);
    hl_table *t2 = new_table();
    int rc = hl_persist_restore(p2, 0, &t2, &r, err, sizeof err);
    CHECKF(rc == 0 && r.next_offset == durable && r.n_rows > 0, "%d %lld %s", rc,
           (long long)r.next_offset, err);
    apply_range(t2, (int)r.next_offset, N_EVENTS);
    CHECKF(tables_equal(full, t2, 0), "fuzzy snapshot at %lld + replay",
           (long long)r.next_offset);
    hl_table_destroy(t2);

    /* Revocation: flush at the delivered offset, the next owner restores. */
    rc = hl_persist_flush(ps, tbl, cut, hl_now_mono_ms() + 5000, err, sizeof err);
    CHECKF(rc == 0, "flush: %s", err);
    CHECK(hl_persist_shard_durable(ps) == cut && !hl_persist_shard_busy(ps));
    hl_persist_shard_destroy(ps);
    t2 = new_table();
    rc = hl_persist_restore(p2, 0, &t2, &r, err, sizeof err);
    CHECKF(rc == 0 && r.next_offset == cut, "%d %lld %s", rc, (long long)r.next_offset, err);
    CHECK(r.duration_s >= 0 && r.bytes > 0);
    hl_persist_shard *ps2 = hl_persist_shard_create(p2, 0, r.next_offset);
    run_ticks(p2, ps2, t2, cut, N_EVENTS, &now_ms);
    CHECK(tables_equal(full, t2, 0));
    CHECK(hl_persist_flush(ps2, t2, N_EVENTS, hl_now_mono_ms() + 5000, err, sizeof err) == 0);
    hl_persist_shard_destroy(ps2);
    hl_table_destroy(t2);
    hl_persist_destroy(p2);
    hl_table_destroy(tbl);
    hl_table_destroy(full);
    hl_persist_destroy(p);
}

/* The commit (fsync) runs on the committer thread: the tick that finishes
 * the rows returns at once although fsync takes 500 ms. */
static void test_commit_in_background(void)
{
    faulty f;
    hl_persist_done d;
    hl_metrics *reg = hl_metrics_create();
    fresh_dir();
    faulty_init(&f);
    atomic_store(&f.fsync_sleep_ms, 500);
    hl_persist *p = new_persist(10, 0, 1000000, &f.io, reg)   /* rows out in one tick */;
    hl_table *tbl = new_table();
    hl_persist_shard *ps = hl_persist_shard_create(p, 1, HL_PERSIST_NO_OFFSET);
    apply_range(tbl, 0, 5000);
    CHECK(hl_persist_tick(ps, tbl, 5000, 5000, 0) == 0);       /* arms the interval */
    int64_t t0 = hl_now_mono_ms();
    CHECK(hl_persist_tick(ps, tbl, 5000, 5000, 20) == 1);      /* begins, rows out, queued */
    int64_t took = hl_now_mono_ms() - t0;
    CHECKF(took < 300, "tick took %lld ms", (long long)took);
    CHECK(hl_persist_shard_busy(ps) && hl_persist_shard_durable(ps) == HL_PERSIST_NO_OFFSET);
    CHECK(hl_persist_poll(p, &d, 1) == 0);
    wait_committer(p);
    CHECK(hl_persist_poll(p, &d, 1) == 1 && d.rc == 0 && d.partition == 1 &&
          d.next_offset == 5000 && d.commit_s >= 0.45 && d.bytes > 0);
    CHECK(!atomic_load(&f.fsync_on_caller));
    CHECK(hl_persist_shard_durable(ps) == 5000);
    /* Nothing applied since: the next due tick skips. */
    hl_persist_stats st;
    CHECK(hl_persist_tick(ps, tbl, 5000, 5000, 40) == 0);
    hl_persist_stats_get(p, &st);
    CHECK(st.ok == 1 && st.skipped == 1 && !hl_persist_shard_busy(ps));
    char *txt = NULL;
    size_t len = 0;
    CHECK(hl_metrics_render(reg, &txt, &len) == 0);
    CHECKF(txt && strstr(txt, "halflife_snapshot_bytes{partition=\"1\"}") &&
           strstr(txt, "halflife_snapshot_last_success_timestamp_seconds{partition=\"1\"}") &&
           strstr(txt, "halflife_snapshots_total{result=\"ok\"} 1") &&
           strstr(txt, "halflife_snapshot_duration_seconds_count 1"), "%s", txt ? txt : "");
    free(txt);
    hl_persist_shard_destroy(ps);
    hl_table_destroy(tbl);
    hl_persist_destroy(p);
    hl_metrics_destroy(reg);
}

/* A snapshot whose rows are out is committed only once the lists of the
 * events applied by then are delivered: its rows may hold them. */
static void test_commit_waits_for_delivery(void)
{
    hl_persist_stats st;
    fresh_dir();
    hl_persist *p = new_persist(10, 0, 1000000, NULL, NULL);
    hl_table *tbl = new_table();
    hl_persist_shard *ps = hl_persist_shard_create(p, 2, HL_PERSIST_NO_OFFSET);
    apply_range(tbl, 0, 3000);
    CHECK(hl_persist_tick(ps, tbl, 3000, 2000, 0) == 0);
    CHECK(hl_persist_tick(ps, tbl, 3000, 2000, 20) == 1);      /* begins at 2000, rows out */
    apply_range(tbl, 3000, 4000);
    CHECK(hl_persist_tick(ps, tbl, 4000, 2900, 21) == 0);      /* 3000 not delivered yet */
    hl_persist_stats_get(p, &st);
    CHECK(st.queued == 0 && st.ok == 0 && hl_persist_shard_busy(ps));
    CHECK(hl_persist_tick(ps, tbl, 4000, 3000, 22) == 0);      /* now it may go */
    wait_committer(p);
    CHECK(hl_persist_shard_durable(ps) == 2000 && !hl_persist_shard_busy(ps));
    hl_persist_shard_destroy(ps);
    hl_table_destroy(tbl);
    hl_persist_destroy(p);
}

/* A failing fsync (committer) or write (owner) leaves the previous snapshot
 * loadable and no temporary file, and is reported, not fatal. */
static void test_io_failure_keeps_previous(void)
{
    faulty f;
    char err[512];
    hl_persist_done d;
    hl_persist_restored r;
    hl_persist_stats st;
    fresh_dir();
    faulty_init(&f);
    hl_persist *p = new_persist(10, 256, 1, &f.io, NULL);
    hl_table *tbl = new_table();
    hl_persist_shard *ps = hl_persist_shard_create(p, 0, HL_PERSIST_NO_OFFSET);
    apply_range(tbl, 0, 10000);
    CHECK(hl_persist_flush(ps, tbl, 10000, hl_now_mono_ms() + 5000, err, sizeof err) == 0);
    CHECK(hl_persist_poll(p, &d, 1) == 1 && d.rc == 0);

    apply_range(tbl, 10000, 20000);
    fail_next(&f.n_fsync, &f.fail_fsync, 1);
    int rc = hl_persist_flush(ps, tbl, 20000, hl_now_mono_ms() + 5000, err, sizeof err);
    CHECKF(rc == HL_EIO && strstr(err, "fsync"), "%d %s", rc, err);
    CHECK(hl_persist_poll(p, &d, 1) == 1 && d.rc == HL_EIO && d.next_offset == 20000);
    CHECK(hl_persist_shard_durable(ps) == 10000);

    /* A write failing in the commit (the table fits the writer's buffer,
     * so the committer writes it). */
    fail_next(&f.n_write, &f.fail_write, 1);
    rc = hl_persist_flush(ps, tbl, 20000, hl_now_mono_ms() + 5000, err, sizeof err);
    CHECKF(rc == HL_EIO && strstr(err, "write"), "%d %s", rc, err);
    CHECK(hl_persist_poll(p, &d, 1) == 1 && d.rc == HL_EIO && strstr(d.err, "write"));
    CHECK(!hl_persist_shard_busy(ps) && hl_persist_shard_durable(ps) == 10000);
    hl_persist_stats_get(p, &st);
    CHECK(st.ok == 1 && st.failed == 2);
    CHECK(count_files(".tmp") == 0 && count_files(".hls") == 1);

    hl_table *t2 = new_table();
    rc = hl_persist_restore(p, 0, &t2, &r, err, sizeof err);
    CHECK(rc == 0 && r.next_offset == 10000);
    apply_range(t2, 10000, 20000);
    CHECK(tables_equal(tbl, t2, 0));
    hl_table_destroy(t2);
    /* The disk is back: the next flush succeeds. */
    CHECK(hl_persist_flush(ps, tbl, 20000, hl_now_mono_ms() + 5000, err, sizeof err) == 0);
    CHECK(hl_persist_shard_durable(ps) == 20000);
    hl_persist_shard_destroy(ps);
    hl_table_destroy(tbl);
    hl_persist_destroy(p);
}

/* Flips a byte inside dir's snapshot of partition 0 named at offset (its
 * path into path): the file's CRC no longer holds. */
static void damage(char *path, size_t len, int offset)
{
    snprintf(path, len, "%s/" TOPIC ".0.%020d.hls", dir, offset);
    FILE *fp = fopen(path, "r+b");
    CHECKF(fp != NULL, "%s", path);
    if (fp) {
        fseek(fp, 200, SEEK_SET);
        fputc(0x5a ^ fgetc(fp), fp);
        fclose(fp);
    }
}

/* A corrupt newest file is rejected (and counted), the older one loads. */
static void test_restore_skips_corrupt(void)
{
    char err[512], path[HL_SNAPSHOT_PATH_MAX];
    hl_persist_restored r;
    hl_metrics *reg = hl_metrics_create();
    fresh_dir();
    hl_persist *p = new_persist(0, 0, 0, NULL, reg);
    hl_table *tbl = new_table();
    hl_persist_shard *ps = hl_persist_shard_create(p, 0, HL_PERSIST_NO_OFFSET);
    apply_range(tbl, 0, 3000);
    CHECK(hl_persist_flush(ps, tbl, 3000, hl_now_mono_ms() + 5000, err, sizeof err) == 0);
    apply_range(tbl, 3000, 6000);
    CHECK(hl_persist_flush(ps, tbl, 6000, hl_now_mono_ms() + 5000, err, sizeof err) == 0);
    damage(path, sizeof path, 6000);
    hl_table *t2 = new_table();
    CHECK(hl_persist_restore(p, 0, &t2, &r, err, sizeof err) == 0);
    CHECKF(r.next_offset == 3000 && r.n_rejected == 1, "%lld %d", (long long)r.next_offset,
           r.n_rejected);
    /* Counted where an alert can see it, not only in the log line. */
    char *txt = NULL;
    size_t len = 0;
    CHECK(hl_metrics_render(reg, &txt, &len) == 0);
    CHECKF(txt && strstr(txt, "\nhalflife_snapshots_rejected_total 1\n"), "metrics: %s",
           txt ? txt : "");
    free(txt);
    /* Another model: the newest valid file still loads and says which
     * model it was written under (the worker migrates it, DESIGN.md 10). */
    hl_persist_opts o = {.dir = dir, .topic = TOPIC, .retain = 2, .model_fingerprint = FP + 1};
    hl_persist *p3 = hl_persist_create(&o, err, sizeof err);
    hl_table *t3 = new_table();
    CHECK(hl_persist_restore(p3, 0, &t3, &r, err, sizeof err) == 0);
    CHECKF(r.next_offset == 3000 && r.n_rejected == 1 && r.model_fingerprint == FP,
           "%lld %d %llx", (long long)r.next_offset, r.n_rejected,
           (unsigned long long)r.model_fingerprint);
    hl_table_destroy(t3);
    hl_persist_destroy(p3);
    hl_table_destroy(t2);
    hl_persist_shard_destroy(ps);
    hl_table_destroy(tbl);
    hl_persist_destroy(p);
    hl_metrics_destroy(reg);
}

/* Issue 16, item 7: partition 1's snapshot renamed to partition 0's name
 * with a higher offset used to be restored into partition 0, its rows
 * replacing partition 0's and its offset becoming partition 0's seek. Now
 * it is rejected and counted like a corrupt file, and partition 0 restores
 * its own newest snapshot. */
static void test_restore_refuses_renamed(void)
{
    char err[512], from[HL_SNAPSHOT_PATH_MAX], to[HL_SNAPSHOT_PATH_MAX];
    hl_persist_restored r;
    fresh_dir();
    hl_persist *p = new_persist(0, 0, 0, NULL, NULL);
    hl_table *t0 = new_table(), *t1 = new_table();
    hl_persist_shard *s0 = hl_persist_shard_create(p, 0, HL_PERSIST_NO_OFFSET);
    hl_persist_shard *s1 = hl_persist_shard_create(p, 1, HL_PERSIST_NO_OFFSET);
    apply_range(t0, 0, 2000);
    apply_range(t1, 2000, 9000);
    CHECK(hl_persist_flush(s0, t0, 2000, hl_now_mono_ms() + 5000, err, sizeof err) == 0);
    CHECK(hl_persist_flush(s1, t1, 9000, hl_now_mono_ms() + 5000, err, sizeof err) == 0);
    snprintf(from, sizeof from, "%s/" TOPIC ".1.%020d.hls", dir, 9000);
    snprintf(to, sizeof to, "%s/" TOPIC ".0.%020d.hls", dir, 9000);
    CHECKF(rename(from, to) == 0, "rename %s: %s", from, strerror(errno));
    hl_table *t2 = new_table();
    CHECK(hl_persist_restore(p, 0, &t2, &r, err, sizeof err) == 0);
    CHECKF(r.next_offset == 2000 && r.n_rejected == 1, "restored at %lld from %s, %d rejected",
           (long long)r.next_offset, r.path, r.n_rejected);
    CHECK(tables_equal(t0, t2, 1));
    hl_table_destroy(t2);
    hl_persist_shard_destroy(s0);
    hl_persist_shard_destroy(s1);
    hl_table_destroy(t0);
    hl_table_destroy(t1);
    hl_persist_destroy(p);
}

/* A flush returns by its deadline: waiting for a slow commit, or while
 * writing rows; the previous snapshot stays valid. */
static void test_flush_deadline(void)
{
    faulty f;
    char err[512];
    hl_persist_restored r;
    fresh_dir();
    faulty_init(&f);
    hl_persist *p = new_persist(0, 16, 0, &f.io, NULL);
    hl_table *tbl = new_table();
    hl_persist_shard *ps = hl_persist_shard_create(p, 0, HL_PERSIST_NO_OFFSET);
    apply_range(tbl, 0, 8000);
    CHECK(hl_persist_flush(ps, tbl, 8000, hl_now_mono_ms() + 5000, err, sizeof err) == 0);

    apply_range(tbl, 8000, 16000);
    atomic_store(&f.fsync_sleep_ms, 1500);
    int64_t t0 = hl_now_mono_ms();
    int rc = hl_persist_flush(ps, tbl, 16000, t0 + 100, err, sizeof err);
    int64_t took = hl_now_mono_ms() - t0;
    CHECKF(rc == HL_EIO && strstr(err, "deadline"), "%d %s", rc, err);
    CHECKF(took >= 90 && took < 1000, "flush took %lld ms for a 100 ms deadline", (long long)took);
    hl_table *t2 = new_table();
    CHECK(hl_persist_restore(p, 0, &t2, &r, err, sizeof err) == 0 && r.next_offset == 8000);
    hl_table_destroy(t2);
    wait_committer(p);                  /* the late commit lands */
    CHECK(hl_persist_shard_durable(ps) == 16000);
    atomic_store(&f.fsync_sleep_ms, 0);

    /* A deadline already passed while rows remain: abandoned, reported. */
    apply_range(tbl, 16000, 20000);
    rc = hl_persist_flush(ps, tbl, 20000, hl_now_mono_ms() - 1, err, sizeof err);
    CHECKF(rc == HL_EIO && strstr(err, "deadline"), "%d %s", rc, err);
    CHECK(!hl_persist_shard_busy(ps) && hl_persist_shard_durable(ps) == 16000);
    CHECK(count_files(".tmp") == 0);
    hl_persist_shard_destroy(ps);
    hl_table_destroy(tbl);
    hl_persist_destroy(p);
}

/* A shard destroyed while its commit is queued: the commit completes. */
static void test_destroy_with_commit_queued(void)
{
    faulty f;
    hl_persist_done d;
    fresh_dir();
    faulty_init(&f);
    atomic_store(&f.fsync_sleep_ms, 100);
    hl_persist *p = new_persist(5, 0, 1000000, &f.io, NULL);
    hl_table *tbl = new_table();
    hl_persist_shard *ps = hl_persist_shard_create(p, 7, HL_PERSIST_NO_OFFSET);
    apply_range(tbl, 0, 2000);
    hl_persist_tick(ps, tbl, 2000, 2000, 0);
    hl_persist_tick(ps, tbl, 2000, 2000, 10);
    CHECK(hl_persist_shard_busy(ps));
    hl_persist_shard_destroy(ps);
    hl_persist_destroy(p);               /* waits for the queued commit */
    CHECK(count_files(".hls") == 1);
    (void)d;
    hl_table_destroy(tbl);
}

/* A table of n_users users at dim 64 (about 830 bytes a row), offsets
 * 0..n_users-1; *next_offset gets n_users. */
static hl_table *big_table(int n_users, int64_t *next_offset)
{
    static float emb[N_ITEMS * 64];
    char err[512], names[256][24];
    hl_table_opts o = topts_dim(64);
    hl_table *tbl = hl_table_create(&o, err, sizeof err);
    hl_event ev[256];
    int64_t off = 0;
    for (int i = 0; i < N_ITEMS * 64; i++)
        emb[i] = (float)(i % 17) * 0.1f;
    for (int u = 0; tbl && u < n_users; u += 256) {
        int n = n_users - u < 256 ? n_users - u : 256;
        for (int k = 0; k < n; k++, off++) {
            snprintf(names[k], sizeof names[k], "u%d", u + k);
            ev[k] = (hl_event){.user = names[k], .user_len = (uint32_t)strlen(names[k]),
                               .item = k % N_ITEMS, .type = HL_VIEW, .w = 1,
                               .ts_ms = 1700000000000LL + off, .offset = off};
        }
        hl_table_apply(tbl, ev, n, emb, N_ITEMS, NULL);
    }
    *next_offset = off;
    return tbl;
}

static int64_t t_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* A write failing while rows are stepped (on the owner thread): the tick
 * reports it, the previous snapshot stays. The table is larger than the
 * writer's 1 MB buffer so writes happen during steps. */
static void test_owner_write_failure(void)
{
    faulty f;
    char err[512];
    hl_persist_done d;
    int64_t off;
    fresh_dir();
    faulty_init(&f);
    hl_table *tbl = big_table(6000, &off);
    hl_persist *p = new_persist(10, 256, 1, &f.io, NULL);
    hl_persist_shard *ps = hl_persist_shard_create(p, 0, HL_PERSIST_NO_OFFSET);
    CHECK(hl_persist_flush(ps, tbl, 1000, hl_now_mono_ms() + 5000, err, sizeof err) == 0);
    CHECK(hl_persist_poll(p, &d, 1) == 1 && d.rc == 0);
    CHECK(hl_persist_tick(ps, tbl, off, off, 0) == 0);
    fail_next(&f.n_write, &f.fail_write, 2);
    int rc = 0, ticks = 0;
    while ((rc = hl_persist_tick(ps, tbl, off, off, 20)) >= 0 && ticks++ < 5000 &&
           hl_persist_shard_busy(ps))
        usleep(200);                    /* a batch; the committer drains meanwhile */
    CHECKF(rc == HL_EIO && ticks > 1, "tick rc %d after %d ticks", rc, ticks);
    CHECK(hl_persist_poll(p, &d, 1) == 1 && d.rc == HL_EIO && strstr(d.err, "write"));
    CHECK(!hl_persist_shard_busy(ps) && hl_persist_shard_durable(ps) == 1000);
    CHECK(count_files(".tmp") == 0 && count_files(".hls") == 1);
    /* The next try is an interval later, and succeeds. */
    CHECK(hl_persist_tick(ps, tbl, off, off, 25) == 0 && !hl_persist_shard_busy(ps));
    while (hl_persist_tick(ps, tbl, off, off, 31) >= 0 && hl_persist_shard_busy(ps))
        wait_committer(p);
    CHECK(hl_persist_shard_durable(ps) == off);
    hl_persist_shard_destroy(ps);
    hl_persist_destroy(p);
    hl_table_destroy(tbl);
}

/* How long one tick holds the owner thread with the default budget, on a
 * table of 50k users at dim 64 (41 MB of rows), a batch's worth of sleep
 * between ticks; writes on the owner (sync_writes) or on the committer.
 * Printed as a NOTE: p50, p99, max, and the first tick (which opens the
 * file) apart. */
static void tick_stall(hl_table *tbl, int64_t off, int sync_writes, int32_t partition)
{
    static int64_t us[100000];
    char err[512];
    hl_persist_stats st;
    int64_t now = 0, first;
    int n = 0;
    hl_persist_opts o = {.dir = dir, .topic = TOPIC, .retain = 2, .interval_ms = 10,
                         .model_fingerprint = FP, .sync_writes = sync_writes};
    hl_persist *p = hl_persist_create(&o, err, sizeof err);
    hl_persist_shard *ps = hl_persist_shard_create(p, partition, HL_PERSIST_NO_OFFSET);
    hl_persist_tick(ps, tbl, off, off, now);
    now = 100;
    int64_t t0 = hl_now_mono_ms();
    do {
        int64_t a = t_now_us();
        CHECK(hl_persist_tick(ps, tbl, off, off, now) >= 0);
        us[n++] = t_now_us() - a;
        usleep(200);                    /* a batch runs in between */
        hl_persist_stats_get(p, &st);
    } while (st.queued == 0 && hl_persist_shard_durable(ps) != off && n < 100000);
    wait_committer(p);
    int64_t total = hl_now_mono_ms() - t0;
    hl_persist_stats_get(p, &st);
    first = us[0];
    qsort(us, (size_t)n, sizeof us[0], cmp_i64);
    CHECK(st.ok == 1 && st.failed == 0);
    /* Loose: sanitizers and a loaded machine. */
    CHECKF(us[n / 2] < 50000, "median tick %lld us", (long long)us[n / 2]);
    printf("NOTE persist.tick_stall writes=%s: p50 %lld us, p99 %lld us, max %lld us, "
           "first (open) %lld us; %d ticks of budget %d us, 256 KB steps, %lld ms begin to "
           "durable (50000 users dim 64, %llu bytes)\n",
           sync_writes ? "owner" : "committer", (long long)us[n / 2],
           (long long)us[(n * 99) / 100], (long long)us[n - 1], (long long)first, n,
           HL_PERSIST_TICK_US, (long long)total, (unsigned long long)st.bytes);
    hl_persist_shard_destroy(ps);
    hl_persist_destroy(p);
}

static void test_max_tick_stall(void)
{
    int64_t off;
    hl_table *tbl = big_table(50000, &off);
    fresh_dir();
    tick_stall(tbl, off, 1, 0);
    tick_stall(tbl, off, 0, 1);
    hl_table_destroy(tbl);
}

/* ---- a recreated input topic (hl_persist_shard_restart_at) ------------- */

/* The old topic's files: at 1000 and 3000 (retain 2 keeps both), written
 * by a shard that is then gone; tbl keeps its users, offsets forgotten,
 * as worker_rebalance.c's restart_input leaves them. */
static void old_topic_files(hl_persist *p, hl_table *tbl)
{
    char err[512];
    hl_persist_shard *ps = hl_persist_shard_create(p, 0, HL_PERSIST_NO_OFFSET);
    apply_range(tbl, 0, 1000);
    CHECK(hl_persist_flush(ps, tbl, 1000, hl_now_mono_ms() + 5000, err, sizeof err) == 0);
    apply_range(tbl, 1000, 3000);
    CHECK(hl_persist_flush(ps, tbl, 3000, hl_now_mono_ms() + 5000, err, sizeof err) == 0);
    hl_persist_shard_destroy(ps);
    hl_table_forget_offsets(tbl);
}

/* The offset a restore of partition 0 resumes at, HL_PERSIST_NO_OFFSET
 * when nothing is usable; its file in path. */
static int64_t restored_at(hl_persist *p, char *path, size_t len)
{
    char err[512];
    hl_persist_restored r;
    hl_table *t = new_table();
    CHECK(hl_persist_restore(p, 0, &t, &r, err, sizeof err) == 0);
    hl_table_destroy(t);
    snprintf(path, len, "%s", r.path);
    return r.next_offset;
}

/* The kept users' file cannot be written (a full disk): the old topic's
 * files must go aside all the same. Left under their old offsets, they
 * were restored as soon as the new topic grew past them (its offsets then
 * look valid, no second report): every event of the new topic below
 * 3000 was missing from the state, dropped as already applied. The users
 * are still in memory; the shard's next snapshot writes them. */
static void test_restart_at_write_fails(void)
{
    faulty f;
    char err[512], path[HL_SNAPSHOT_PATH_MAX];
    int n_aside = -1;
    fresh_dir();
    faulty_init(&f);
    hl_persist *p = new_persist(0, 0, 0, &f.io, NULL);
    hl_table *tbl = new_table();
    old_topic_files(p, tbl);
    hl_persist_shard *ps = hl_persist_shard_create(p, 0, HL_PERSIST_NO_OFFSET);
    fail_next(&f.n_fsync, &f.fail_fsync, 2);    /* the first is the intent file's */
    int rc = hl_persist_shard_restart_at(ps, tbl, 0, hl_now_mono_ms() + 5000, &n_aside,
                                         err, sizeof err);
    CHECKF(rc == HL_EIO && strstr(err, "fsync"), "%d %s", rc, err);
    int64_t at = restored_at(p, path, sizeof path);
    CHECKF(at == HL_PERSIST_NO_OFFSET && n_aside == 2 && count_files(".topic-recreated") == 2,
           "after a failed write of the kept users a restore loads %s (offset %lld), "
           "the old topic's; %d files set aside", path, (long long)at, n_aside);
    /* The disk is back: the shard's next snapshot is the one restored. */
    CHECK(hl_persist_flush(ps, tbl, 40, hl_now_mono_ms() + 5000, err, sizeof err) == 0);
    CHECK(restored_at(p, path, sizeof path) == 40);
    hl_persist_shard_destroy(ps);
    hl_table_destroy(tbl);
    hl_persist_destroy(p);
}

/* auto.offset.reset=latest: the new topic starts at 2000, between the old
 * files. The one below it (1000) is the old topic's too: left to
 * retention, a restore fell back to it when the kept users' file was
 * damaged, and resumed the new topic at 1000 with the old topic's state
 * of that time (its rows' offsets the old topic's). */
static void test_restart_at_older_files(void)
{
    char err[512], path[HL_SNAPSHOT_PATH_MAX];
    int n_aside = -1;
    fresh_dir();
    hl_persist *p = new_persist(0, 0, 0, NULL, NULL);
    hl_table *tbl = new_table();
    old_topic_files(p, tbl);
    hl_persist_shard *ps = hl_persist_shard_create(p, 0, HL_PERSIST_NO_OFFSET);
    int rc = hl_persist_shard_restart_at(ps, tbl, 2000, hl_now_mono_ms() + 5000, &n_aside,
                                         err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    CHECK(restored_at(p, path, sizeof path) == 2000);
    damage(path, sizeof path, 2000);
    int64_t at = restored_at(p, path, sizeof path);
    CHECKF(at == HL_PERSIST_NO_OFFSET && n_aside == 2,
           "with the kept users' file damaged a restore loads %s (offset %lld), the old "
           "topic's; %d files set aside", path, (long long)at, n_aside);
    hl_persist_shard_destroy(ps);
    hl_table_destroy(tbl);
    hl_persist_destroy(p);
}

/* Renames aside fail (as if the worker died before them): the rest of
 * hl_io_posix. */
static int no_aside_rename(void *ctx, const char *from, const char *to)
{
    size_t n = strlen(to), k = strlen(".topic-recreated");
    if (n >= k && strcmp(to + n - k, ".topic-recreated") == 0) {
        errno = EIO;
        return -1;
    }
    return hl_io_posix()->rename(ctx, from, to);
}

/* The old topic's files (old_topic_files) and a restart at 0 cut short
 * after the kept users' file was written, before the renames (they fail).
 * Returns the table the files were written from; the caller frees it. */
static hl_table *restart_cut_before_renames(void)
{
    char err[512];
    int n_aside = -1;
    fresh_dir();
    hl_io io = *hl_io_posix();
    io.rename = no_aside_rename;
    hl_persist *p = new_persist(0, 0, 0, &io, NULL);
    hl_table *tbl = new_table();
    old_topic_files(p, tbl);
    hl_persist_shard *ps = hl_persist_shard_create(p, 0, HL_PERSIST_NO_OFFSET);
    int rc = hl_persist_shard_restart_at(ps, tbl, 0, hl_now_mono_ms() + 5000, &n_aside,
                                         err, sizeof err);
    CHECKF(rc == HL_EIO && n_aside == 0, "%d %s", rc, err);
    hl_persist_shard_destroy(ps);
    hl_persist_destroy(p);
    return tbl;
}

/* A restart's intent file for offset 0 with the given text; its path in path. */
static void write_intent(char *path, size_t cap, const char *text)
{
    snprintf(path, cap, "%s/%s.0.recreating", dir, TOPIC);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL && fputs(text, f) >= 0 && fclose(f) == 0);
}

/* A crash after the kept users' file at the new topic's offset (0) was
 * written and before the old topic's files (1000, 3000) were renamed
 * aside: the renames fail here, which leaves the same files. A restart's
 * restore must take the kept users' file and set the old ones aside.
 * Before the fix it took the highest, the old topic's 3000: once the new
 * topic had grown past it nothing looked recreated, and its events below
 * 3000 were never applied. */
static void test_restart_at_cut_before_renames(void)
{
    char path[HL_SNAPSHOT_PATH_MAX];
    hl_table *tbl = restart_cut_before_renames();
    hl_persist *p = new_persist(0, 0, 0, NULL, NULL);      /* the restart */
    int64_t at = restored_at(p, path, sizeof path);
    CHECKF(at == 0 && count_files(".topic-recreated") == 2 && count_files(".recreating") == 0,
           "after a crash before the renames a restore loads %s (offset %lld); %ld files "
           "set aside", path, (long long)at, count_files(".topic-recreated"));
    CHECK(restored_at(p, path, sizeof path) == 0);
    hl_table_destroy(tbl);
    hl_persist_destroy(p);
}

/* An intent with no kept users' file (the crash came before it was
 * written): nothing was done, the old files are the state and stay. */
static void test_restart_intent_alone(void)
{
    char path[HL_SNAPSHOT_PATH_MAX];
    fresh_dir();
    hl_persist *p = new_persist(0, 0, 0, NULL, NULL);
    hl_table *tbl = new_table();
    old_topic_files(p, tbl);
    write_intent(path, sizeof path, "0\n");
    int64_t at = restored_at(p, path, sizeof path);
    CHECKF(at == 3000 && count_files(".topic-recreated") == 0 &&
           count_files(".recreating") == 0, "restored at %lld from %s", (long long)at, path);
    hl_table_destroy(tbl);
    hl_persist_destroy(p);
}

/* Removing the intent fails (as if the file could not be unlinked):
 * the rest of hl_io_posix. */
static int keep_intent_unlink(void *ctx, const char *path)
{
    size_t n = strlen(path), k = strlen(".recreating");
    if (n >= k && strcmp(path + n - k, ".recreating") == 0) {
        errno = EIO;
        return -1;
    }
    return hl_io_posix()->unlink(ctx, path);
}

/* The restart at 0 succeeded but its intent could not be removed; the
 * new topic then grew and the shard wrote its snapshot at 1000 (the old
 * topic had one of that name too, set aside). A restore must take 1000
 * and drop the intent as done. Before the fix it took the intent for a
 * restart cut short: it set the new 1000 aside and replayed the new
 * topic from 0. */
static void test_restart_intent_outlived(void)
{
    char err[512], path[HL_SNAPSHOT_PATH_MAX];
    int n_aside = -1;
    fresh_dir();
    hl_io io = *hl_io_posix();
    io.unlink = keep_intent_unlink;
    hl_persist *p = new_persist(0, 0, 0, &io, NULL);
    hl_table *tbl = new_table();
    old_topic_files(p, tbl);
    hl_persist_shard *ps = hl_persist_shard_create(p, 0, HL_PERSIST_NO_OFFSET);
    int rc = hl_persist_shard_restart_at(ps, tbl, 0, hl_now_mono_ms() + 5000, &n_aside,
                                         err, sizeof err);
    CHECKF(rc == 0 && n_aside == 2 && count_files(".recreating") == 1, "%d %s", rc, err);
    apply_range(tbl, 0, 1000);
    CHECK(hl_persist_flush(ps, tbl, 1000, hl_now_mono_ms() + 5000, err, sizeof err) == 0);
    hl_persist_shard_destroy(ps);
    hl_persist_destroy(p);
    p = new_persist(0, 0, 0, NULL, NULL);      /* the restart */
    int64_t at = restored_at(p, path, sizeof path);
    CHECKF(at == 1000 && count_files(".topic-recreated") == 2 &&
           count_files(".recreating") == 0, "an intent that outlived its restart: restored "
           "at %lld from %s; %ld files set aside, %ld intents", (long long)at, path,
           count_files(".topic-recreated"), count_files(".recreating"));
    hl_table_destroy(tbl);
    hl_persist_destroy(p);
}

/* An intent of a version before the list (the offset alone) of a restart
 * cut short before the renames: every file but the kept users' still
 * goes aside. */
static void test_restart_intent_unlisted(void)
{
    char path[HL_SNAPSHOT_PATH_MAX];
    hl_table *tbl = restart_cut_before_renames();
    write_intent(path, sizeof path, "0\n");
    hl_persist *p = new_persist(0, 0, 0, NULL, NULL);
    int64_t at = restored_at(p, path, sizeof path);
    CHECKF(at == 0 && count_files(".topic-recreated") == 2 && count_files(".recreating") == 0,
           "an unlisted intent: restored at %lld from %s", (long long)at, path);
    hl_table_destroy(tbl);
    hl_persist_destroy(p);
}

int main(void)
{
    hl_log_set_level(HL_LOG_ERROR + 1);     /* the cases provoke warnings on purpose */
    make_events(0x9e3779b97f4a7c15ULL, 50);
    RUN(test_restore_none);
    RUN(test_creates_dir);
    RUN(test_refuses_file_as_dir);
    RUN(test_periodic_restore_replay);
    RUN(test_commit_in_background);
    RUN(test_commit_waits_for_delivery);
    RUN(test_io_failure_keeps_previous);
    RUN(test_owner_write_failure);
    RUN(test_restore_skips_corrupt);
    RUN(test_restore_refuses_renamed);
    RUN(test_flush_deadline);
    RUN(test_destroy_with_commit_queued);
    RUN(test_max_tick_stall);
    RUN(test_restart_at_write_fails);
    RUN(test_restart_at_older_files);
    RUN(test_restart_at_cut_before_renames);
    RUN(test_restart_intent_alone);
    RUN(test_restart_intent_outlived);
    RUN(test_restart_intent_unlisted);
    remove_dir();
    TEST_EXIT();
}
