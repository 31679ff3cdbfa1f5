/* persist.c - shard snapshots inside the worker: restore, periodic
 * incremental snapshots, synchronous ones on revocation and shutdown.
 *
 * Two threads touch a snapshot. The shard's owner begins it and steps it a
 * bounded time per tick between batches (the table may change between
 * steps: core/snapshot.c makes such a fuzzy file restore exactly, because
 * each row carries its last offset). When every row is out, the writer is
 * queued to this module's committer thread, which does the slow, table-free
 * part: fsync, rename, directory fsync, retention. The same thread also
 * drains the writer's buffers while the owner steps (hl_snapshot_async:
 * a step only fills buffers, write() runs here), so the owner never waits
 * on the disk unless it asks to (hl_persist_flush). A file is committed
 * only once the lists of every event in its rows are delivered (see
 * commit_when_delivered), so a crash right after it loses no list. The
 * committer thread and the hand-offs to it are in persist_commit.c.
 *
 * Invariants: a shard has at most one writer being stepped (ps->w, owner
 * only) and, for ticks, at most one commit queued; a commit's result is
 * folded into its shard under p->mu. One committer thread both drains and
 * commits, so a writer is never drained and committed at once; the owner
 * detaches a writer from draining before it aborts or queues it. A shard struct is reference counted
 * (its owner plus each queued commit), so a revoked shard can be destroyed
 * while its last commit is still running. A failed snapshot is logged,
 * counted and reported, never fatal: core/ leaves the previous file intact.
 *
 * What it does not do: Kafka (seeking, storing offsets) and choosing the
 * offsets; the caller passes the shard's next input offset. */
#include "persist_internal.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- creation ---------------------------------------------------------- */

/* Makes the entry of path, just created, durable in its parent: path up
 * to prev (the slash before its last component), or "/" or "." if none. */
static int sync_parent(const hl_io *io, const char *path, const char *prev)
{
    char parent[HL_SNAPSHOT_PATH_MAX];
    if (prev == NULL)
        snprintf(parent, sizeof parent, "%s", path[0] == '/' ? "/" : ".");
    else
        snprintf(parent, sizeof parent, "%.*s", (int)(prev - path), path);
    return io->fsync_dir(io->ctx, parent);
}

/* mkdir -p: a fresh volume has no snapshot directory yet. Each directory
 * it creates is fsynced in its parent: a snapshot's own directory fsync
 * makes its name durable inside snapshot.dir, not snapshot.dir's name in
 * its parent, so a power loss soon after the first snapshots could lose
 * the directory with every file in it, while the offsets committed to
 * Kafka have moved on (deadletter.c does the same for its directory). */
static int make_dir(const hl_io *io, const char *dir, char *errbuf, size_t errlen)
{
    char path[HL_SNAPSHOT_PATH_MAX], *prev = NULL;
    snprintf(path, sizeof path, "%s", dir);
    for (char *s = path + 1; ; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char c = *s;
        *s = '\0';
        if (mkdir(path, 0755) == 0) {
            if (sync_parent(io, path, prev) != 0)
                return hl_err(errbuf, errlen, HL_EIO, "snapshot.dir %s: fsync the parent "
                              "of %s: %s", dir, path, strerror(errno));
        } else if (errno != EEXIST) {
            return hl_err(errbuf, errlen, HL_EIO, "snapshot.dir %s: mkdir %s: %s",
                          dir, path, strerror(errno));
        }
        prev = s;
        if ((*s = c) == '\0')
            return 0;
    }
}

/* After make_dir: snapshot.dir must be a directory this process can write
 * now. A regular file there (or a read-only directory) would otherwise be
 * accepted at start and then fail every snapshot, interval after interval,
 * and the final one at shutdown; refused at start, the operator sees it at
 * once. access() also answers EROFS for a read-only mount, even as root. */
static int check_dir(const char *dir, char *errbuf, size_t errlen)
{
    struct stat st;
    if (stat(dir, &st) != 0)
        return hl_err(errbuf, errlen, HL_EIO, "snapshot.dir %s: stat: %s", dir,
                      strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return hl_err(errbuf, errlen, HL_EINVAL, "snapshot.dir %s: not a directory (%s)",
                      dir, S_ISREG(st.st_mode) ? "a regular file" : "a special file");
    if (access(dir, W_OK | X_OK) != 0)
        return hl_err(errbuf, errlen, HL_EIO, "snapshot.dir %s: not writable: %s", dir,
                      strerror(errno));
    return 0;
}

static int check_opts(const hl_persist_opts *o, char *errbuf, size_t errlen)
{
    hl_snapshot_meta meta = {.partition = 0, .next_offset = 0};
    char name[HL_SNAPSHOT_TOPIC_MAX + 48];
    if (o->dir == NULL || o->dir[0] == '\0' || strlen(o->dir) >= HL_SNAPSHOT_PATH_MAX - 320)
        return hl_err(errbuf, errlen, HL_EINVAL, "snapshot.dir: empty or too long");
    if (o->interval_ms < 0)
        return hl_err(errbuf, errlen, HL_EINVAL, "snapshot.interval.ms=%lld: want >= 0",
                      (long long)o->interval_ms);
    snprintf(meta.topic, sizeof meta.topic, "%s", o->topic ? o->topic : "");
    return hl_snapshot_name(&meta, name, sizeof name, errbuf, errlen);
}

static void register_metrics(hl_persist *p)
{
    /* Seconds to minutes: a 1M-user shard is over a gigabyte. */
    static const double dur_bounds[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
    hl_metrics *reg = p->o.reg;
    p->m_duration = hl_metrics_histogram(reg, "halflife_snapshot_duration_seconds",
        "From the start of a shard snapshot to its commit.", NULL,
        dur_bounds, (int)(sizeof dur_bounds / sizeof dur_bounds[0]));
    p->m_restore = hl_metrics_gauge(reg, "halflife_restore_duration_seconds",
        "Seconds the newest partition restore took: with state.store=kafka all of it "
        "(snapshot base, changelog replay, migration), else loading the newest snapshot.", NULL);
    p->m_ok = hl_metrics_counter(reg, "halflife_snapshots_total",
        "Shard snapshots attempted, by result.", "result=\"ok\"");
    p->m_failed = hl_metrics_counter(reg, "halflife_snapshots_total",
        "Shard snapshots attempted, by result.", "result=\"failed\"");
    /* A refused file is otherwise only a log line at a restore: damage,
     * a renamed file or something planted in snapshot.dir, each of which
     * silently costs a longer replay from an older file. */
    p->m_rejected = hl_metrics_counter(reg, "halflife_snapshots_rejected_total",
        "Snapshot files refused at restore (damaged, renamed, another shard's, not a "
        "regular file); an older one or a replay was used instead.", NULL);
}


hl_persist *hl_persist_create(const hl_persist_opts *o, char *errbuf, size_t errlen)
{
    hl_persist *p;
    pthread_condattr_t ca;
    if (check_opts(o, errbuf, errlen) != 0 ||
        make_dir(o->io ? o->io : hl_io_posix(), o->dir, errbuf, errlen) != 0 ||
        check_dir(o->dir, errbuf, errlen) != 0)
        return NULL;
    if ((p = calloc(1, sizeof *p)) == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "persist: out of memory");
        return NULL;
    }
    p->o = *o;
    snprintf(p->dir, sizeof p->dir, "%s", o->dir);
    snprintf(p->topic, sizeof p->topic, "%s", o->topic);
    p->o.dir = p->dir;
    p->o.topic = p->topic;
    atomic_store(&p->fp, o->model_fingerprint);
    p->io = o->io ? o->io : hl_io_posix();
    p->async = !o->sync_writes;
    if (p->o.tick_budget_us <= 0)
        p->o.tick_budget_us = HL_PERSIST_TICK_US;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work_cv, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->done_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (o->reg)
        register_metrics(p);
    if (pthread_create(&p->tid, NULL, hl_persist_committer_main, p) != 0) {
        hl_err(errbuf, errlen, HL_EIO, "persist: cannot start the committer thread");
        hl_persist_destroy(p);
        return NULL;
    }
    p->started = 1;
    return p;
}

void hl_persist_destroy(hl_persist *p)
{
    if (p == NULL)
        return;
    if (p->started) {
        pthread_mutex_lock(&p->mu);
        p->quit = 1;
        pthread_cond_signal(&p->work_cv);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->tid, NULL);     /* it commits what is queued first */
    }
    pthread_cond_destroy(&p->done_cv);
    pthread_cond_destroy(&p->work_cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* ---- completions --------------------------------------------------------- */

/* Under mu. */
void hl_persist_push_done(hl_persist *p, const hl_persist_done *d)
{
    if (p->done_n == DONE_MAX) {                 /* drop the oldest */
        p->done_head = (p->done_head + 1) % DONE_MAX;
        p->done_n--;
    }
    p->done[(p->done_head + p->done_n) % DONE_MAX] = *d;
    p->done_n++;
    if (d->rc == 0) {
        p->n_ok++;
        p->n_bytes += d->bytes;
    } else {
        p->n_failed++;
    }
}

int hl_persist_poll(hl_persist *p, hl_persist_done *out, int max)
{
    int n = 0;
    pthread_mutex_lock(&p->mu);
    while (p->done_n > 0 && n < max) {
        out[n++] = p->done[p->done_head];
        p->done_head = (p->done_head + 1) % DONE_MAX;
        p->done_n--;
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}

void hl_persist_stats_get(hl_persist *p, hl_persist_stats *st)
{
    pthread_mutex_lock(&p->mu);
    st->ok = p->n_ok;
    st->failed = p->n_failed;
    st->bytes = p->n_bytes;
    st->skipped = p->n_skipped;
    st->queued = p->queued;
    pthread_mutex_unlock(&p->mu);
    st->max_tick_us = atomic_load_explicit(&p->max_tick_us, memory_order_relaxed);
}

/* A snapshot that failed on the owner thread (begin or step): the writer
 * is gone, older files are intact. Logged, counted, reported. */
int hl_persist_owner_failed(hl_persist_shard *ps, int64_t offset, int rc,
                            const char *stage, const char *why)
{
    hl_persist *p = ps->p;
    hl_persist_done d = {.partition = ps->partition, .rc = rc, .next_offset = offset,
                         .wall_ms = hl_now_wall_ms()};
    snprintf(d.err, sizeof d.err, "%s", why);
    pthread_mutex_lock(&p->mu);
    hl_persist_push_done(p, &d);
    ps->last_rc = rc;
    snprintf(ps->last_err, sizeof ps->last_err, "%s", why);
    pthread_mutex_unlock(&p->mu);
    if (p->m_failed)
        hl_counter_add(p->m_failed, 1);
    hl_log(HL_LOG_WARN, "snapshot_failed", "partition=%d next_offset=%lld stage=%s err=\"%s\"",
           (int)ps->partition, (long long)offset, stage, why);
    return rc;
}

/* ---- the model ---------------------------------------------------------- */

void hl_persist_set_model(hl_persist *p, uint64_t fingerprint)
{
    atomic_store(&p->fp, fingerprint);
}

void hl_persist_shard_resave(hl_persist_shard *ps)
{
    if (ps != NULL)
        ps->fp_changed = 1;
}

void hl_persist_shard_set_model(hl_persist_shard *ps, uint64_t fingerprint)
{
    if (ps == NULL || ps->fp == fingerprint)
        return;
    hl_persist_drop_writer(ps);        /* its rows so far are in the old model's space */
    ps->fp = fingerprint;
    ps->fp_changed = 1;
}


/* ---- restore ----------------------------------------------------------- */

static int count_rejected(const char *report)
{
    int n = 0;
    for (const char *s = report; (s = strstr(s, "rejected ")) != NULL; s += 9)
        n++;
    return n;
}

static void restore_log(hl_persist *p, int32_t partition, int rc, const hl_persist_restored *out,
                        const char *why)
{
    if (rc == 0)
        hl_log(HL_LOG_INFO, "snapshot_restored", "partition=%d path=%s next_offset=%lld "
               "rows=%llu bytes=%llu duration_s=%.3f rejected=%d", (int)partition, out->path,
               (long long)out->next_offset, (unsigned long long)out->n_rows,
               (unsigned long long)out->bytes, out->duration_s, out->n_rejected);
    else if (rc == HL_ENOENT)
        hl_log(HL_LOG_INFO, "snapshot_none", "partition=%d dir=%s start=auto.offset.reset",
               (int)partition, p->dir);
    else
        hl_log(HL_LOG_ERROR, "snapshot_unusable", "partition=%d dir=%s state=rebuilt "
               "err=\"%s\"", (int)partition, p->dir, why);
}

static int restore_as(hl_persist *p, int32_t partition, hl_table **tblp, int any_shape,
                      hl_persist_restored *out, char *errbuf, size_t errlen)
{
    hl_table_opts o = *hl_table_opts_get(*tblp);   /* copied: *tblp may go */
    hl_snapshot_info info;
    hl_table *tbl = NULL;
    char report[2048], why[1024];
    int64_t t0 = hl_now_mono_us();

    memset(out, 0, sizeof *out);
    out->next_offset = HL_PERSIST_NO_OFFSET;
    hl_persist_finish_restart(p, partition);
    int rc = any_shape
        ? hl_snapshot_load_newest_any(p->io, p->dir, p->topic, partition, &o, &tbl, &info,
                                      out->path, sizeof out->path, report, sizeof report,
                                      why, sizeof why)
        : hl_snapshot_load_newest(p->io, p->dir, p->topic, partition, &o,
                                  HL_SNAPSHOT_ANY_MODEL, &tbl, &info, out->path,
                                  sizeof out->path, report, sizeof report,
                                  why, sizeof why);
    out->duration_s = (double)(hl_now_mono_us() - t0) / 1e6;
    out->n_rejected = count_rejected(report);
    if (report[0])
        hl_log(HL_LOG_WARN, "snapshot_rejected", "partition=%d n=%d detail=\"%s\"",
               (int)partition, out->n_rejected, report);
    if (p->m_rejected && out->n_rejected > 0)
        hl_counter_add(p->m_rejected, (uint64_t)out->n_rejected);
    if (rc == 0) {
        hl_table_destroy(*tblp);
        *tblp = tbl;
        out->next_offset = info.meta.next_offset;
        out->model_fingerprint = info.meta.model_fingerprint;
        out->changelog_offset = info.meta.changelog_offset;
        out->changelog_epoch = info.meta.changelog_epoch;
        out->n_rows = info.n_rows;
        out->bytes = info.bytes;
    } else {
        out->path[0] = '\0';
    }
    if (p->m_restore && rc == 0)
        hl_gauge_set(p->m_restore, out->duration_s);
    restore_log(p, partition, rc, out, why);
    if (rc == HL_ENOMEM)
        return hl_err(errbuf, errlen, rc, "%s", why);
    return 0;
}

int hl_persist_restore(hl_persist *p, int32_t partition, hl_table **tblp,
                       hl_persist_restored *out, char *errbuf, size_t errlen)
{
    return restore_as(p, partition, tblp, 0, out, errbuf, errlen);
}

int hl_persist_restore_any(hl_persist *p, int32_t partition, hl_table **tblp,
                           hl_persist_restored *out, char *errbuf, size_t errlen)
{
    return restore_as(p, partition, tblp, 1, out, errbuf, errlen);
}

/* ---- per shard ----------------------------------------------------------- */

/* Size of the partition's file at offset (the one a restore loaded), 0
 * when there is none. */
static double file_bytes(const hl_persist *p, int32_t partition, int64_t offset)
{
    hl_snapshot_meta meta = {.partition = partition, .next_offset = offset};
    char name[HL_SNAPSHOT_TOPIC_MAX + 48], path[HL_SNAPSHOT_PATH_MAX + sizeof name], err[160];
    struct stat st;
    snprintf(meta.topic, sizeof meta.topic, "%s", p->topic);
    if (offset < 0 || hl_snapshot_name(&meta, name, sizeof name, err, sizeof err) != 0)
        return 0;
    snprintf(path, sizeof path, "%s/%s", p->dir, name);
    if (stat(path, &st) != 0)
        return 0;
    return (double)st.st_size;
}

hl_persist_shard *hl_persist_shard_create(hl_persist *p, int32_t partition,
                                          int64_t restored_offset)
{
    hl_persist_shard *ps = calloc(1, sizeof *ps);
    if (ps == NULL)
        return NULL;
    ps->p = p;
    ps->partition = partition;
    ps->refs = 1;
    ps->fp = atomic_load(&p->fp);
    atomic_store(&ps->durable, restored_offset >= 0 ? restored_offset : HL_PERSIST_NO_OFFSET);
    snprintf(ps->labels, sizeof ps->labels, "partition=\"%d\"", (int)partition);
    if (p->o.reg) {
        ps->g_bytes = hl_metrics_gauge(p->o.reg, "halflife_snapshot_bytes",
            "Size of the shard's newest snapshot file.", ps->labels);
        ps->g_success = hl_metrics_gauge(p->o.reg,
            "halflife_snapshot_last_success_timestamp_seconds",
            "Wall time at which the shard's durable state last held all of it: its "
            "restore by this worker, a snapshot written since, or a due snapshot "
            "that found nothing new.", ps->labels);
        /* Set now, not at the next write: a restored partition showed 0, or
         * back with a worker that owned it before, that ownership's size,
         * until its next snapshot (never, if nothing new comes). The shard
         * starts from what was restored, durable state (a snapshot, the
         * changelog, or the input topic itself when there was nothing),
         * so it holds nothing unsaved now: the success time is now. Before,
         * a partition back with this worker showed its earlier ownership's
         * time until its first due snapshot, and looked stale. */
        hl_gauge_set(ps->g_bytes, file_bytes(p, partition, restored_offset));
        hl_gauge_set(ps->g_success, (double)hl_now_wall_ms() / 1000.0);
    }
    return ps;
}

void hl_persist_shard_destroy(hl_persist_shard *ps)
{
    int free_it;
    if (ps == NULL)
        return;
    hl_persist_drop_writer(ps);
    /* Hidden now, not when the last commit ends: by then the partition may
     * be back with a new shard struct showing the same series. */
    if (ps->g_bytes) {
        hl_metrics_hide(ps->p->o.reg, "halflife_snapshot_bytes", ps->labels);
        hl_metrics_hide(ps->p->o.reg, "halflife_snapshot_last_success_timestamp_seconds",
                        ps->labels);
    }
    pthread_mutex_lock(&ps->p->mu);
    hl_persist_shard_unref_locked(ps, &free_it);
    pthread_mutex_unlock(&ps->p->mu);
    if (free_it)
        hl_persist_shard_free(ps);
}

int64_t hl_persist_shard_durable(const hl_persist_shard *ps)
{
    return atomic_load(&((hl_persist_shard *)ps)->durable);
}

static int in_flight(hl_persist_shard *ps)
{
    pthread_mutex_lock(&ps->p->mu);
    int n = ps->in_flight;
    pthread_mutex_unlock(&ps->p->mu);
    return n;
}

int hl_persist_shard_busy(const hl_persist_shard *ps)
{
    return ps->w != NULL || in_flight((hl_persist_shard *)ps) > 0;
}

/* Rows per step: the configured count, else about STEP_BYTES of rows. */
static size_t step_rows(const hl_persist *p, const hl_table *tbl)
{
    const hl_table_opts *o = hl_table_opts_get(tbl);
    if (p->o.step_rows > 0)
        return p->o.step_rows;
    size_t row = (size_t)o->decay.n_heads * ((size_t)o->decay.dim + 1) * sizeof(float) +
                 (size_t)o->history * 13 + 64;    /* heads, masses, history, key */
    size_t n = STEP_BYTES / row;
    return n < 16 ? 16 : n > HL_SNAPSHOT_STEP_ROWS ? HL_SNAPSHOT_STEP_ROWS : n;
}

void hl_persist_shard_set_cover(hl_persist_shard *ps, hl_persist_cover_fn fn, void *arg)
{
    ps->cover = fn;
    ps->cover_arg = arg;
}

/* Opens a snapshot of tbl at next_offset, its writes drained by the
 * committer if async. 0, or a failure (reported). */
static int begin(hl_persist_shard *ps, const hl_table *tbl, int64_t next_offset, int async,
                 char *errbuf, size_t errlen)
{
    hl_persist *p = ps->p;
    hl_snapshot_meta meta;
    memset(&meta, 0, sizeof meta);
    snprintf(meta.topic, sizeof meta.topic, "%s", p->topic);
    meta.partition = ps->partition;
    meta.next_offset = next_offset;
    meta.model_fingerprint = ps->fp;
    if (ps->cover != NULL)
        ps->cover(ps->cover_arg, next_offset, &meta.changelog_offset, &meta.changelog_epoch);
    ps->w_t0_us = hl_now_mono_us();
    ps->w_offset = next_offset;
    ps->w_out = 0;
    ps->w_need = -1;
    ps->w_rows = step_rows(p, tbl);
    int rc = hl_snapshot_begin(p->io, p->dir, &meta, tbl, &ps->w, errbuf, errlen);
    if (rc != 0)
        return hl_persist_owner_failed(ps, next_offset, rc, "begin", errbuf);
    ps->fp_changed = 0;
    if (async) {
        hl_snapshot_async(ps->w);
        pthread_mutex_lock(&p->mu);
        ps->drain_w = ps->w;
        pthread_mutex_unlock(&p->mu);
    }
    return 0;
}

/* Steps the running snapshot, rows at a time, until it is out or until_us
 * passes (at least one step). 0 more remain, 1 every row is out (ps->w_out),
 * or a failure (reported; the writer is gone). */
static int step_until(hl_persist_shard *ps, const hl_table *tbl, size_t rows,
                      int64_t until_us, char *errbuf, size_t errlen)
{
    int64_t t, t_prev = hl_now_mono_us();
    int rc;
    if (ps->w_out)
        return 1;
    for (;;) {
        rc = hl_snapshot_step(ps->w, tbl, rows, errbuf, errlen);
        t = hl_now_mono_us();
        /* A step that wrote rows takes tens of microseconds at least; one
         * that returns 0 at once found the drain ring full: stop, the
         * committer is writing. */
        if (rc != 0 || t >= until_us || t - t_prev < RING_FULL_US)
            break;
        t_prev = t;
    }
    if (rc == 1)
        ps->w_out = 1;
    if (rc < 0) {
        int64_t off = ps->w_offset;
        hl_persist_drop_writer(ps);
        return hl_persist_owner_failed(ps, off, rc, "step", errbuf);
    }
    return rc;
}

/* A due snapshot skipped because the newest one already holds every
 * applied event: the shard has nothing unsaved as of now. The gauge says
 * so, because what HalflifeSnapshotStale and the dashboard read from it is
 * how old the shard's unsaved state is; left at the newest file's time (or
 * 0 for a shard that never took an event) a quiet shard looked stale. */
static void note_current(hl_persist_shard *ps)
{
    if (ps->g_success)
        hl_gauge_set(ps->g_success, (double)hl_now_wall_ms() / 1000.0);
}

/* 1 if a periodic snapshot should begin now; moves the due time.
 * applied_offset >= next_offset, as hl_persist_tick's. */
static int due(hl_persist_shard *ps, int64_t applied_offset, int64_t next_offset,
               int64_t now_ms)
{
    hl_persist *p = ps->p;
    if (p->o.interval_ms <= 0)
        return 0;
    if (!ps->due_set) {
        ps->due_set = 1;
        ps->due_ms = now_ms + p->o.interval_ms;
        return 0;
    }
    if (now_ms < ps->due_ms || in_flight(ps) > 0)
        return 0;       /* a commit still queued: try again at the next tick */
    ps->due_ms = now_ms + p->o.interval_ms;
    if (next_offset < 0 || (next_offset <= hl_persist_shard_durable(ps) && !ps->fp_changed)) {
        pthread_mutex_lock(&p->mu);
        p->n_skipped++;                         /* nothing new since the newest */
        pthread_mutex_unlock(&p->mu);
        if (applied_offset <= hl_persist_shard_durable(ps) && !ps->fp_changed)
            note_current(ps);   /* not while lists of applied events are out */
        return 0;
    }
    return 1;
}

static void note_tick(hl_persist *p, int64_t us)
{
    long long cur = atomic_load_explicit(&p->max_tick_us, memory_order_relaxed);
    while (us > cur && !atomic_compare_exchange_weak(&p->max_tick_us, &cur, us))
        ;
}

/* The rows of a fuzzy snapshot may hold events at or above its next_offset
 * (applied while it was stepped); a restore replays them as duplicates and
 * publishes no list for them. So the file becomes visible only once every
 * event applied when its last row went out has its lists delivered: a crash
 * then never loses a list. */
static int commit_when_delivered(hl_persist_shard *ps, int64_t applied_offset,
                                 int64_t delivered_offset)
{
    if (ps->w_need < 0)
        ps->w_need = applied_offset > ps->w_offset ? applied_offset : ps->w_offset;
    return delivered_offset >= ps->w_need ? hl_persist_enqueue(ps) : 0;
}

int hl_persist_tick(hl_persist_shard *ps, const hl_table *tbl, int64_t applied_offset,
                    int64_t delivered_offset, int64_t now_ms)
{
    char err[512];
    int64_t t0 = hl_now_mono_us();
    int rc = 0, stepped = 0;
    if (ps->w == NULL) {
        if (!due(ps, applied_offset, delivered_offset, now_ms))
            return 0;
        if ((rc = begin(ps, tbl, delivered_offset, ps->p->async, err, sizeof err)) != 0)
            goto out;
    }
    stepped = !ps->w_out;
    rc = step_until(ps, tbl, ps->w_rows, t0 + ps->p->o.tick_budget_us,
                    err, sizeof err);
    if (stepped && rc >= 0 && ps->w != NULL)
        hl_persist_request_drain(ps);
    if (rc == 1)
        rc = commit_when_delivered(ps, applied_offset, delivered_offset);
out:
    note_tick(ps->p, hl_now_mono_us() - t0);
    return rc < 0 ? rc : stepped;
}

/* Waits until no commit of ps is queued or running, up to deadline_ms. */
static int wait_idle(hl_persist_shard *ps, int64_t deadline_ms, char *errbuf, size_t errlen)
{
    hl_persist *p = ps->p;
    struct timespec ts = {.tv_sec = deadline_ms / 1000,
                          .tv_nsec = (long)(deadline_ms % 1000) * 1000000};
    int rc = 0;
    pthread_mutex_lock(&p->mu);
    while (ps->in_flight > 0 && rc == 0)
        rc = pthread_cond_timedwait(&p->done_cv, &p->mu, &ts);
    int left = ps->in_flight;
    pthread_mutex_unlock(&p->mu);
    if (left > 0)
        return hl_err(errbuf, errlen, HL_EIO, "snapshot of partition %d: deadline passed "
                      "waiting for its commit", (int)ps->partition);
    return 0;
}

/* A flush whose commit did not finish by its deadline: logged here, like
 * every other failure of a flush (hl_persist_owner_failed, the committer), so the
 * caller never logs it a second time. The commit may still land. */
static int flush_wait_failed(hl_persist_shard *ps, int64_t offset, int rc, const char *why)
{
    hl_log(HL_LOG_WARN, "snapshot_failed", "partition=%d next_offset=%lld stage=flush_wait "
           "err=\"%s\"", (int)ps->partition, (long long)offset, why);
    return rc;
}

/* Steps the running snapshot to the end, in large steps, checking the
 * deadline between them. */
static int step_all(hl_persist_shard *ps, const hl_table *tbl, int64_t deadline_ms,
                    char *errbuf, size_t errlen)
{
    size_t rows = ps->w_rows * FLUSH_STEP_X;
    int rc;
    while ((rc = step_until(ps, tbl, rows, 0, errbuf, errlen)) == 0) {
        if (hl_now_mono_ms() >= deadline_ms) {
            char why[160];
            int64_t off = ps->w_offset;
            snprintf(why, sizeof why, "deadline passed while writing rows");
            hl_persist_drop_writer(ps);
            hl_persist_owner_failed(ps, off, HL_EIO, "flush", why);
            return hl_err(errbuf, errlen, HL_EIO, "snapshot of partition %d: %s",
                          (int)ps->partition, why);
        }
    }
    if (rc < 0)
        return rc;
    if ((rc = hl_persist_enqueue(ps)) < 0)
        return hl_err(errbuf, errlen, rc, "snapshot of partition %d: out of memory",
                      (int)ps->partition);
    return 0;
}

int hl_persist_flush(hl_persist_shard *ps, const hl_table *tbl, int64_t next_offset,
                     int64_t deadline_ms, char *errbuf, size_t errlen)
{
    hl_persist *p = ps->p;
    int rc;
    /* One begun earlier is dropped: a fresh one replays less. One drained by
     * the committer is too: here the owner waits anyway, and writing
     * itself spares a round trip per buffer. */
    if (ps->w != NULL && (ps->w_offset != next_offset || p->async))
        hl_persist_drop_writer(ps);
    if (ps->w == NULL) {
        /* A queued commit may already hold next_offset. */
        if ((rc = wait_idle(ps, deadline_ms, errbuf, errlen)) != 0)
            return flush_wait_failed(ps, next_offset, rc, errbuf);
        if (next_offset < 0 || (next_offset <= hl_persist_shard_durable(ps) && !ps->fp_changed))
            return 0;
        if ((rc = begin(ps, tbl, next_offset, 0, errbuf, errlen)) != 0)
            return rc;
    }
    if ((rc = step_all(ps, tbl, deadline_ms, errbuf, errlen)) != 0)
        return rc;              /* logged by hl_persist_owner_failed */
    if ((rc = wait_idle(ps, deadline_ms, errbuf, errlen)) != 0)
        return flush_wait_failed(ps, next_offset, rc, errbuf);
    pthread_mutex_lock(&p->mu);
    rc = ps->last_rc;
    if (rc != 0)            /* the committer logged it */
        hl_err(errbuf, errlen, rc, "%s", ps->last_err);
    pthread_mutex_unlock(&p->mu);
    return rc;
}
