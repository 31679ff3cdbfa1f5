/* test_snapshot_write.c - writing snapshots when things go wrong or move:
 * the Nth write, fsync, rename or directory fsync fails (the old snapshot
 * stays the newest valid one), fuzzy snapshots taken while the table
 * changes and replay from earlier offsets (equal to a run that never
 * stopped), and the asynchronous ring with its drain thread
 * (core/io.c, core/snapshot.c). */
#define T_SUITE "snapshot"
#include "test.h"

#include "io.h"
#include "snapshot_util.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/stat.h>

/* ---- fault injection -------------------------------------------------- */

typedef struct faulty {
    hl_io io;
    int   n_write, n_fsync, n_rename, n_dirsync;
    int   fail_write, fail_fsync, fail_rename, fail_dirsync;  /* Nth call, 1-based; 0 never */
} faulty;

static ssize_t f_write(void *ctx, int fd, const void *buf, size_t len)
{
    faulty *f = ctx;
    if (++f->n_write == f->fail_write) { errno = ENOSPC; return -1; }
    return hl_io_posix()->write(NULL, fd, buf, len);
}
static int f_fsync(void *ctx, int fd)
{
    faulty *f = ctx;
    if (++f->n_fsync == f->fail_fsync) { errno = EIO; return -1; }
    return hl_io_posix()->fsync(NULL, fd);
}
static int f_rename(void *ctx, const char *a, const char *b)
{
    faulty *f = ctx;
    if (++f->n_rename == f->fail_rename) { errno = EXDEV; return -1; }
    return hl_io_posix()->rename(NULL, a, b);
}
static int f_dirsync(void *ctx, const char *d)
{
    faulty *f = ctx;
    if (++f->n_dirsync == f->fail_dirsync) { errno = EIO; return -1; }
    return hl_io_posix()->fsync_dir(NULL, d);
}

static faulty faulty_io(void)
{
    faulty f;
    memset(&f, 0, sizeof f);
    f.io = *hl_io_posix();
    f.io.write = f_write;
    f.io.fsync = f_fsync;
    f.io.rename = f_rename;
    f.io.fsync_dir = f_dirsync;
    return f;
}

/* One snapshot at 100 exists; a failed one at 200 must leave it the newest
 * valid, with no temporary file behind. */
static void check_after_failure(const hl_table *ta, const char *what)
{
    hl_table_opts o = opts();
    hl_table *t = NULL;
    char err[1024] = "", loaded[4200];
    int rc = hl_snapshot_load_newest(NULL, dir, "ev", 0, &o, FP, &t, NULL, loaded,
                                     sizeof loaded, NULL, 0, err, sizeof err);
    CHECKF(rc == 0 && t && tables_equal(ta, t, 1), "%s: %s", what, err);
    CHECKF(count_files(".tmp") == 0, "%s: temporary file left", what);
    hl_table_destroy(t);
}

/* Fails the first, second, .. writes-th write of tb's snapshot (meta m) in
 * turn: each attempt must fail with HL_EIO, its message saying "No space"
 * and must_say, and leave ta's snapshot the newest valid one. */
static void fail_each_write(const hl_table *ta, const hl_table *tb,
                            const hl_snapshot_meta *m, int writes, const char *must_say)
{
    char err[1024], what[64];
    for (int n = 1; n <= writes && !t_case_failed; n++) {
        faulty f = faulty_io();
        f.io.ctx = &f;
        f.fail_write = n;
        int rc = hl_snapshot_write(&f.io, dir, m, tb, 5, NULL, err, sizeof err);
        snprintf(what, sizeof what, "write %d of %d", n, writes);
        CHECKF(rc == HL_EIO && strstr(err, must_say) && strstr(err, "No space"),
               "%s: %d %s", what, rc, err);
        check_after_failure(ta, what);
    }
}

static void test_injected_failures(void)
{
    hl_table_opts o = opts();
    hl_table *ta = table_upto(&o, 1500), *tb = table_upto(&o, 6000);
    hl_snapshot_meta m = meta_at("ev", 0, 100);
    char err[1024];
    int writes;

    /* Count the calls a clean write of B makes (in its own directory),
     * then fail each write in turn, then the fsync, rename, dir fsync. */
    fresh_dir();
    faulty f = faulty_io();
    f.io.ctx = &f;
    m.next_offset = 200;
    CHECK(hl_snapshot_write(&f.io, dir, &m, tb, 5, NULL, err, sizeof err) == 0);
    writes = f.n_write;
    CHECK(writes >= 2 && f.n_fsync == 1 && f.n_rename == 1 && f.n_dirsync == 1);
    fresh_dir();
    m.next_offset = 100;
    CHECK(hl_snapshot_write(NULL, dir, &m, ta, 5, NULL, err, sizeof err) == 0);
    m.next_offset = 200;
    fail_each_write(ta, tb, &m, writes, "write");
    f = faulty_io(); f.io.ctx = &f; f.fail_fsync = 1;
    CHECK(hl_snapshot_write(&f.io, dir, &m, tb, 5, NULL, err, sizeof err) == HL_EIO);
    CHECKF(strstr(err, "fsync"), "%s", err);
    check_after_failure(ta, "fsync");
    f = faulty_io(); f.io.ctx = &f; f.fail_rename = 1;
    CHECK(hl_snapshot_write(&f.io, dir, &m, tb, 5, NULL, err, sizeof err) == HL_EIO);
    CHECKF(strstr(err, "rename"), "%s", err);
    check_after_failure(ta, "rename");
    /* The directory fsync fails after the rename: the new file is in place
     * and valid, the caller is told it may not be durable. */
    f = faulty_io(); f.io.ctx = &f; f.fail_dirsync = 1;
    CHECK(hl_snapshot_write(&f.io, dir, &m, tb, 5, NULL, err, sizeof err) == HL_EIO);
    CHECKF(strstr(err, "fsync directory"), "%s", err);
    CHECK(count_files(".tmp") == 0);
    hl_table_destroy(ta);
    hl_table_destroy(tb);
}

/* ---- fuzzy snapshots and replay --------------------------------------- */

/* Snapshot begun at offset k with the table changing between small steps,
 * then restored and replayed from k: equal to the run that never stopped. */
static void test_fuzzy_snapshot_exact_after_replay(void)
{
    hl_table_opts o = opts();
    const int k = 2500;
    hl_table *live = table_upto(&o, k), *back = NULL;
    hl_snapshot_meta m = meta_at("ev", 0, k);
    hl_snapshot_writer *w;
    hl_snapshot_result r;
    char err[512];
    int rc, next = k, steps = 0;

    fresh_dir();
    CHECK(hl_snapshot_begin(NULL, dir, &m, live, &w, err, sizeof err) == 0);
    while ((rc = hl_snapshot_step(w, live, 7, err, sizeof err)) == 0) {
        int n = 40 < N_EVENTS - next ? 40 : N_EVENTS - next;
        apply_range(live, next, next + n);   /* new users among them */
        next += n;
        steps++;
    }
    CHECKF(rc == 1, "%s", err);
    CHECK(steps > 10);
    CHECKF(hl_snapshot_commit(w, 2, &r, err, sizeof err) == 0, "%s", err);
    apply_range(live, next, N_EVENTS);
    CHECKF(hl_snapshot_load(NULL, r.path, &o, FP, &back, NULL, err, sizeof err) == 0, "%s", err);
    if (back) {
        apply_range(back, k, N_EVENTS);
        CHECK(tables_equal(live, back, 0));
    }
    hl_table_destroy(live);
    hl_table_destroy(back);
}

/* A user evicted after its row was copied and inserted again at a higher
 * row id is in the file twice; the load keeps the first and counts it. */
static void test_fuzzy_duplicate_user_loads(void)
{
    hl_table_opts o = opts();
    o.evict_mass = 0.5f;
    char err[512];
    hl_table *tbl = hl_table_create(&o, err, sizeof err), *back = NULL;
    hl_snapshot_meta m = meta_at("ev", 0, 3);
    hl_snapshot_writer *w;
    hl_snapshot_result r;
    hl_snapshot_info in;
    const int64_t late = 100000000000LL;    /* three years on: A's mass is gone */
    hl_event ev[5] = {
        {.user = "A", .user_len = 1, .item = 1, .w = 1, .ts_ms = 0, .offset = 0},
        {.user = "B", .user_len = 1, .item = 2, .w = 1, .ts_ms = late, .offset = 1},
        {.user = "C", .user_len = 1, .item = 3, .w = 1, .ts_ms = late, .offset = 2},
        {.user = "D", .user_len = 1, .item = 4, .w = 1, .ts_ms = late, .offset = 3},
        {.user = "A", .user_len = 1, .item = 5, .w = 1, .ts_ms = late + 1, .offset = 4},
    };
    fresh_dir();
    hl_table_apply(tbl, ev, 3, e_in, N_ITEMS, NULL);
    CHECK(hl_snapshot_begin(NULL, dir, &m, tbl, &w, err, sizeof err) == 0);
    CHECK(hl_snapshot_step(w, tbl, 1, err, sizeof err) == 0);     /* A, row 0 */
    CHECK(hl_table_sweep(tbl, 10) == 1);                          /* A evicted */
    hl_table_apply(tbl, ev + 3, 2, e_in, N_ITEMS, NULL);          /* D row 0, A row 3 */
    CHECK(hl_table_find(tbl, "A", 1) == 3);
    while (hl_snapshot_step(w, tbl, 1, err, sizeof err) == 0)
        ;
    CHECKF(hl_snapshot_commit(w, 2, &r, err, sizeof err) == 0, "%s", err);
    CHECK(r.n_rows == 4);
    CHECKF(hl_snapshot_load(NULL, r.path, &o, FP, &back, &in, err, sizeof err) == 0, "%s", err);
    CHECK(in.n_dup_rows == 1);
    if (back) {
        hl_row_view v;
        int64_t row = hl_table_find(back, "A", 1);
        CHECK(row == 0 && hl_table_find(back, "D", 1) < 0);
        if (row >= 0) {
            hl_table_view(back, (uint32_t)row, &v);
            CHECK(v.last_offset == 0);          /* the first copy */
        }
    }
    hl_table_destroy(tbl);
    hl_table_destroy(back);
}

/* Snapshot at k; replaying from any j <= k gives the uninterrupted state. */
static void test_replay_from_earlier_offsets(void)
{
    hl_table_opts o = opts();
    const int k = 3000;
    hl_table *full = table_upto(&o, N_EVENTS), *at_k = table_upto(&o, k);
    hl_snapshot_meta m = meta_at("ev", 0, k);
    hl_snapshot_result r;
    char err[512];
    int js[] = {0, 1, k / 2, k - 1, k};

    fresh_dir();
    CHECK(hl_snapshot_write(NULL, dir, &m, at_k, 2, &r, err, sizeof err) == 0);
    for (size_t i = 0; i < sizeof js / sizeof js[0]; i++) {
        hl_table *t = NULL;
        hl_snapshot_info info;
        CHECKF(hl_snapshot_load(NULL, r.path, &o, FP, &t, &info, err, sizeof err) == 0, "%s", err);
        if (!t) break;
        CHECK(info.meta.next_offset == k);
        apply_range(t, js[i], N_EVENTS);
        CHECKF(tables_equal(full, t, 0), "replay from %d", js[i]);
        hl_table_destroy(t);
    }
    hl_table_destroy(full);
    hl_table_destroy(at_k);
}

/* ---- asynchronous writes ------------------------------------------------ */

#define BIG_DIM   256
#define BIG_USERS 3000     /* about 9 MB of rows: more than the 4 x 1 MiB ring */

static hl_table *big_table(const hl_table_opts *o)
{
    static float s[N_HEADS * BIG_DIM];
    float m[N_HEADS] = {1, 2, 3};
    int32_t item[HISTORY] = {1, 2, 3, 4, 5};
    int64_t ts[HISTORY] = {10, 20, 30, 40, 50};
    uint8_t type[HISTORY] = {0, 1, 2, 3, 4};
    char err[256], id[32];
    hl_table *tbl = hl_table_create(o, err, sizeof err);
    for (int u = 0; tbl && u < BIG_USERS; u++) {
        for (int i = 0; i < N_HEADS * BIG_DIM; i++) s[i] = (float)(u * 31 + i);
        snprintf(id, sizeof id, "big-%d", u);
        hl_row_view v = {.user = id, .user_len = (uint32_t)strlen(id), .s = s, .m = m,
                         .t_ref_ms = 60 + u, .last_offset = u, .active_seq = (uint64_t)u + 1,
                         .history = HISTORY, .n_hist = u % (HISTORY + 1), .hist_head = u % HISTORY,
                         .hist_item = item, .hist_type = type, .hist_ts_ms = ts};
        if (hl_table_restore(tbl, &v) != 0) { hl_table_destroy(tbl); return NULL; }
    }
    return tbl;
}

/* A file of many buffers: failing any one of its writes, in the middle
 * too, leaves the previous snapshot the newest valid one. */
static void test_injected_failures_mid_file(void)
{
    hl_table_opts o = opts(), ob = opts_with(BIG_DIM, HISTORY, 0);
    hl_table *ta = table_upto(&o, 1500), *tb = big_table(&ob);
    hl_snapshot_meta m = meta_at("ev", 0, 100);
    char err[1024];
    int writes;

    fresh_dir();
    if (!tb) { CHECK(tb != NULL); hl_table_destroy(ta); return; }
    faulty f = faulty_io();
    f.io.ctx = &f;
    CHECK(hl_snapshot_write(&f.io, dir, &m, tb, 5, NULL, err, sizeof err) == 0);
    writes = f.n_write;
    CHECKF(writes >= 8, "%d writes", writes);
    fresh_dir();
    CHECK(hl_snapshot_write(NULL, dir, &m, ta, 5, NULL, err, sizeof err) == 0);
    m.next_offset = 200;
    fail_each_write(ta, tb, &m, writes, "No space");
    hl_table_destroy(ta);
    hl_table_destroy(tb);
}

/* One thread: steps stop early while the ring is full and resume after a
 * drain; the file equals the synchronous one byte for byte. */
static void test_async_ring_backpressure(void)
{
    hl_table_opts o = opts_with(BIG_DIM, HISTORY, 0);
    hl_table *a = big_table(&o);
    hl_snapshot_meta m = meta_at("big", 0, 9);
    hl_snapshot_writer *w;
    hl_snapshot_result r1, r2;
    char err[512], dir2[600];
    int rc, stuck = 0, drained = 0;
    size_t n1 = 0, n2 = 0;

    fresh_dir();
    CHECK(a != NULL);
    if (!a) return;
    CHECKF(hl_snapshot_write(NULL, dir, &m, a, 2, &r1, err, sizeof err) == 0, "%s", err);
    snprintf(dir2, sizeof dir2, "%s/async", dir);
    mkdir(dir2, 0755);
    CHECK(hl_snapshot_begin(NULL, dir2, &m, a, &w, err, sizeof err) == 0);
    hl_snapshot_async(w);
    while ((rc = hl_snapshot_step(w, a, 100, err, sizeof err)) == 0) {
        if (++stuck % 10 == 0) {      /* a slow disk: drain now and then */
            int n = hl_snapshot_drain(w, err, sizeof err);
            CHECK(n >= 0);
            drained += n;
        }
    }
    CHECKF(rc == 1, "%s", err);
    CHECK(drained >= 4);
    CHECKF(hl_snapshot_commit(w, 2, &r2, err, sizeof err) == 0, "%s", err);
    unsigned char *x = slurp(r1.path, &n1), *y = slurp(r2.path, &n2);
    CHECK(x && y && n1 == n2 && n1 > 4 * (1u << 20) && memcmp(x, y, n1) == 0);
    free(x);
    free(y);
    hl_table_destroy(a);
}

typedef struct drainer {
    hl_snapshot_writer *w;
    atomic_int          stop;
    int                 rc;
    char                err[512];
} drainer;

static void *drain_loop(void *arg)
{
    drainer *d = arg;
    while (!atomic_load(&d->stop)) {
        int n = hl_snapshot_drain(d->w, d->err, sizeof d->err);
        if (n < 0) { d->rc = n; break; }
        if (n == 0) usleep(200);
    }
    return NULL;
}

/* A drain thread beside the owner, which keeps applying events; a write
 * failure in the drainer reaches the owner's next step. */
static void test_async_thread_and_failure(void)
{
    hl_table_opts o = opts_with(BIG_DIM, HISTORY, 0);
    hl_table *a = big_table(&o), *b = NULL;
    hl_snapshot_meta m = meta_at("big", 0, 9);
    hl_snapshot_writer *w;
    hl_snapshot_result r;
    char err[512];
    int rc;

    fresh_dir();
    if (!a) { CHECK(a != NULL); return; }
    for (int pass = 0; pass < 2; pass++) {
        faulty f = faulty_io();
        f.io.ctx = &f;
        f.fail_write = pass == 0 ? 0 : 3;
        m.next_offset = 9 + pass;
        drainer d = {.rc = 0};
        CHECK(hl_snapshot_begin(&f.io, dir, &m, a, &w, err, sizeof err) == 0);
        hl_snapshot_async(w);
        d.w = w;
        pthread_t th;
        pthread_create(&th, NULL, drain_loop, &d);
        while ((rc = hl_snapshot_step(w, a, 64, err, sizeof err)) == 0)
            ;
        atomic_store(&d.stop, 1);
        pthread_join(th, NULL);
        if (pass == 0) {
            CHECKF(rc == 1 && d.rc == 0, "%s %s", err, d.err);
            CHECKF(hl_snapshot_commit(w, 2, &r, err, sizeof err) == 0, "%s", err);
        } else {
            /* The failure shows in a step or, if the steps were done, in commit. */
            if (rc == 1) rc = hl_snapshot_commit(w, 2, NULL, err, sizeof err);
            else hl_snapshot_abort(w);
            CHECKF(rc == HL_EIO && strstr(err, "No space"), "rc %d: %s", rc, err);
        }
    }
    CHECK(count_files(".tmp") == 0);
    CHECKF(hl_snapshot_load(NULL, r.path, &o, FP, &b, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(b && tables_equal(a, b, 1));
    hl_table_destroy(a);
    hl_table_destroy(b);
}

/* ---- the temporary file --------------------------------------------------- */

static void hung(int sig)
{
    static const char msg[] = "FAIL: a snapshot write hung opening its temporary file\n";
    (void)sig;
    if (write(2, msg, sizeof msg - 1) < 0) _exit(1);
    _exit(1);
}

/* Steps w over tbl to the end and commits it. */
static int finish(hl_snapshot_writer *w, const hl_table *tbl, hl_snapshot_result *r,
                  char *err, size_t errlen)
{
    int rc;
    while ((rc = hl_snapshot_step(w, tbl, 0, err, errlen)) == 0)
        ;
    if (rc < 0) {
        hl_snapshot_abort(w);
        return rc;
    }
    return hl_snapshot_commit(w, 5, r, err, errlen);
}

/* The temporary file is the writer's own. A FIFO or a symlink left under
 * a shard's temporary name must neither stall the writer nor redirect
 * its bytes, and two writers of one shard and offset (two workers sharing
 * snapshot.dir, a zombie after a rebalance) must each publish a whole
 * file, never one torn by the other's writes. */
static void test_tmp_is_private(void)
{
    hl_table_opts o = opts();
    hl_table *big = table_upto(&o, 6000), *small = table_upto(&o, 1500), *t = NULL;
    hl_snapshot_meta m = meta_at("ev", 0, 300);
    hl_snapshot_writer *wa = NULL, *wb = NULL;
    hl_snapshot_result r;
    char err[1024] = "", tmp[700], victim[700];
    size_t n = 0;
    fresh_dir();
    signal(SIGALRM, hung);
    alarm(60);          /* only a hang reaches it: the writes take milliseconds */
    snprintf(tmp, sizeof tmp, "%s/ev.0.%020d.hls.tmp", dir, 300);
    CHECK(mkfifo(tmp, 0644) == 0);
    CHECKF(hl_snapshot_write(NULL, dir, &m, small, 5, &r, err, sizeof err) == 0, "%s", err);
    CHECKF(hl_snapshot_load(NULL, r.path, &o, FP, &t, NULL, err, sizeof err) == 0 &&
           tables_equal(small, t, 1), "fifo: %s", err);
    hl_table_destroy(t);
    t = NULL;

    snprintf(victim, sizeof victim, "%s/victim", dir);
    spit(victim, (const unsigned char *)"keep", 4);
    snprintf(tmp, sizeof tmp, "%s/ev.0.%020d.hls.tmp", dir, 400);
    CHECK(symlink(victim, tmp) == 0);
    m.next_offset = 400;
    CHECKF(hl_snapshot_write(NULL, dir, &m, small, 5, &r, err, sizeof err) == 0, "%s", err);
    unsigned char *b = slurp(victim, &n);
    CHECKF(b && n == 4 && memcmp(b, "keep", 4) == 0, "the symlink's target was written: "
           "%zu bytes", n);
    free(b);

    /* A crash's leftover at the very offset written next goes with that
     * commit, or a crash loop at one offset would pile them up. */
    snprintf(tmp, sizeof tmp, "%s/ev.0.%020d.hls.0123456789abcdef.tmp", dir, 500);
    spit(tmp, (const unsigned char *)"partial", 7);
    m.next_offset = 500;
    CHECK(hl_snapshot_begin(NULL, dir, &m, big, &wa, err, sizeof err) == 0);
    CHECK(hl_snapshot_begin(NULL, dir, &m, small, &wb, err, sizeof err) == 0);
    CHECKF(wa && finish(wa, big, &r, err, sizeof err) == 0, "first writer: %s", err);
    /* The first commit retires the second writer's file too: that one
     * fails cleanly, and the file published stays the first's, whole. */
    int rc = wb ? finish(wb, small, NULL, err, sizeof err) : HL_EIO;
    CHECKF(rc == HL_EIO && strstr(err, "rename"), "second writer: %d %s", rc, err);
    CHECKF(hl_snapshot_load(NULL, r.path, &o, FP, &t, NULL, err, sizeof err) == 0 &&
           tables_equal(big, t, 1), "two writers: %s", err);
    alarm(0);
    CHECK(count_files(".tmp") == 0);    /* the FIFO, the link, the leftover retired */
    hl_table_destroy(t);
    hl_table_destroy(big);
    hl_table_destroy(small);
}

int main(void)
{
    make_events(SNAP_SEED, 20);
    RUN(test_injected_failures);
    RUN(test_injected_failures_mid_file);
    RUN(test_async_ring_backpressure);
    RUN(test_async_thread_and_failure);
    RUN(test_fuzzy_snapshot_exact_after_replay);
    RUN(test_replay_from_earlier_offsets);
    RUN(test_fuzzy_duplicate_user_loads);
    RUN(test_tmp_is_private);
    remove_dir();
    TEST_EXIT();
}
