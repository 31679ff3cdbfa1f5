/* worker_rebalance.c - partitions handed to the worker and taken back
 * (DESIGN.md sections 2 and 6): a partition's state restored
 * (worker_restore.c), its shard given to the least loaded thread with its
 * queue forwarded there, and on revocation taken back only once the
 * owning thread has let go (see worker.c's overview). Main thread only,
 * inside the consumer's rebalance callback. */
#include "worker_internal.h"

/* ---- rebalance --------------------------------------------------------- */

static int least_loaded(hl_worker *w)
{
    int best = 0;
    for (int i = 1; i < w->n_th; i++)
        if (w->th_load[i] < w->th_load[best])
            best = i;
    return best;
}

static int owner_slot(hl_worker *w, int32_t p)
{
    if (p >= w->cap_owner) {
        int cap = p + 64;
        hl_wthread **o = realloc(w->owner, sizeof *o * (size_t)cap);
        if (o == NULL)
            return -1;
        memset(o + w->cap_owner, 0, sizeof *o * (size_t)(cap - w->cap_owner));
        w->owner = o;
        w->cap_owner = cap;
    }
    return 0;
}

/* The least loaded thread takes the shard (sh is its from now on, or
 * destroyed on failure) and the partition's queue is forwarded to it. */
static int give_to_thread(hl_worker *w, rd_kafka_t *rk, int32_t p, hl_shard *sh)
{
    int i = least_loaded(w);
    if (hl_wthread_give(w->th[i], sh) != 0) {
        hl_log(HL_LOG_ERROR, "shard_create_failed", "partition=%d err=\"out of memory\"",
               (int)p);
        hl_shard_destroy(sh);
        return HL_ENOMEM;
    }
    rd_kafka_queue_t *pq = rd_kafka_queue_get_partition(rk, w->o.input_topic, p);
    rd_kafka_queue_forward(pq, hl_wthread_queue(w->th[i]));
    rd_kafka_queue_destroy(pq);
    w->owner[p] = w->th[i];
    w->th_load[i]++;
    hl_log(HL_LOG_INFO, "partition_assigned", "partition=%d thread=%d", (int)p, i);
    return 0;
}

/* A restored stream time further ahead of the wall clock than
 * event.max.future.ms came from an event read before that bound (or with
 * it off): kept, it would decay every user to it at the next sweep and
 * hide every expiring item, at every restart, since snapshots and the
 * changelog keep the rows' times. The shard's stream time becomes the
 * newest row time within the bound; rows beyond it keep their own time
 * (only the stream time is shared) and are counted in the log line. */
static void bound_stream_time(const hl_worker *w, int32_t p, hl_table *tbl)
{
    hl_table_meta meta;
    hl_table_meta_get(tbl, &meta);
    int64_t fut = w->o.max_future_ms, wall = hl_now_wall_ms();
    if (fut <= 0 || wall > INT64_MAX - fut || meta.newest_ts_ms <= wall + fut)
        return;
    int64_t bound = wall + fut, newest = INT64_MIN;
    uint64_t ahead = 0;
    for (uint32_t r = hl_table_next_live(tbl, 0); r != UINT32_MAX;
         r = hl_table_next_live(tbl, r + 1)) {
        hl_row_view v;
        hl_table_view(tbl, r, &v);
        if (v.t_ref_ms > bound)
            ahead++;
        else if (v.t_ref_ms > newest)
            newest = v.t_ref_ms;
    }
    hl_log(HL_LOG_WARN, "stream_time_ahead", "partition=%d restored_ms=%lld wall_ms=%lld "
           "now_ms=%lld users_ahead=%llu reason=\"the restored stream time is more than "
           "event.max.future.ms ahead of this worker's clock (an event read before that "
           "bound); the shard's stream time is its newest user time within the bound\"",
           (int)p, (long long)meta.newest_ts_ms, (long long)wall, (long long)newest,
           (unsigned long long)ahead);
    meta.newest_ts_ms = newest;
    hl_table_meta_set(tbl, &meta);
}

/* A snapshot or changelog written under a larger state.max.users was cut
 * to this one on load (hl_table_trim): said once, as the operator lowered
 * the limit or moved the partition to a smaller pod, and counted in
 * halflife_evictions_total{reason="capacity"}. */
static void log_trimmed(const hl_worker *w, int32_t p, const hl_table *tbl)
{
    hl_table_stats st;
    hl_table_stats_get(tbl, &st);
    if (st.evicted_capacity > 0)
        hl_log(HL_LOG_WARN, "restore_over_max_users", "partition=%d evicted=%llu users=%zu "
               "max_users=%zu action=\"kept the most recently active; raise "
               "state.max.users to keep more\"", (int)p,
               (unsigned long long)st.evicted_capacity, st.users, w->o.state_max_users);
}

/* A recreated input topic: the users are kept (what they did is still
 * true; dropping them would lose every idle user) with their applied
 * offsets forgotten, else each user's events would be dropped as
 * duplicates until the new topic's offsets passed the old ones; the
 * partition resumes at *offset = start. The caller writes a snapshot at
 * start (keep_recreated). Counted and logged loudly: a topic deleted by
 * mistake and refilled with the same events would count them twice. */
static void restart_input(hl_worker *w, int32_t p, hl_table *tbl, int64_t *restored,
                          int64_t *offset, int64_t start, int64_t high)
{
    hl_table_stats st;
    hl_table_stats_get(tbl, &st);
    hl_table_forget_offsets(tbl);
    hl_counter_add(w->recreated, 1);
    hl_log(HL_LOG_ERROR, "input_topic_recreated", "partition=%d restored_offset=%lld "
           "high_watermark=%lld start=%lld users=%zu reason=\"the state's offset is beyond "
           "the end of %s: the topic was deleted and created again\" action=\"kept the "
           "users and read the new topic from auto.offset.reset; if it holds the old "
           "events again, stop the worker and empty the state (snapshot.dir, state.topic) "
           "or they count twice\"", (int)p, (long long)*offset, (long long)high,
           (long long)start, st.users, w->o.input_topic);
    *restored = *offset = start;
}

/* With state.store=kafka, a recreation is made durable in the changelog
 * before the partition is served: every row and a checkpoint at offset.
 * Until the shard's first flush did it, a member without this worker's
 * local files that restored the partition after a crash found, for an
 * input topic recreated, the old topic's rows (each naming its old
 * offset as applied) and the claim checkpoint at the old topic's offset,
 * resumed there and skipped the new topic's events below it once it had
 * grown past (test_topic_recreated_changelog.py, other_member); for a
 * state topic recreated, the claim alone, and restored no user
 * (test_changelog_recreated.py, killed_before_flush). For an input topic
 * recreated under the old state topic this is not called: the recreation
 * claim written before it (claim) says as much by itself (a reader forgets
 * the applied offsets of every row before it and resumes at its offset,
 * killed_in_rewrite), and the state topic still holds every row. Writing
 * them all again cost the rebalance about 1.5 s per 70,000 rows of dim 64
 * for nothing (test_input_recreated_state.py, kafka_no_rewrite). For a
 * recreated state topic it costs the rebalance one write of every row
 * (logged with its duration), so a partition of millions of users can
 * take longer than the deadline. A flush that fails or runs out of time is
 * logged and the partition served all the same, its flush left to the
 * shard's thread to finish or retry (its rows are still all wanted):
 * failing the partition instead would repeat the same flush at every
 * restart, and the window is then as it was before this flush existed. */
static void flush_recreated(int32_t p, hl_shard *sh, int64_t offset, int64_t deadline)
{
    if (sh->cl == NULL)
        return;
    int64_t t0 = hl_now_mono_ms();
    hl_table_stats st;
    hl_table_stats_get(sh->tbl, &st);
    hl_changelog_shard_resave(sh->cl);
    if (hl_changelog_flush_now(sh->cl, sh->tbl, offset, deadline) != 0)
        hl_log(HL_LOG_ERROR, "changelog_rewrite_failed", "partition=%d next_offset=%lld "
               "rows=%zu reason=\"a recreated topic: the users and a checkpoint at the offset "
               "could not be written to the changelog before serving\" action=\"served; the "
               "shard's next flush writes them: a member without this worker's files that "
               "restores the partition before it may miss users or events\"", (int)p,
               (long long)offset, st.users);
    else
        hl_log(HL_LOG_INFO, "changelog_rewritten", "partition=%d next_offset=%lld "
               "rows=%zu seconds=%.3f", (int)p, (long long)offset, st.users,
               (double)(hl_now_mono_ms() - t0) / 1000.0);
}

/* The recreation saved before the shard is served: in the changelog
 * first when the state topic was recreated too (state: flush_recreated;
 * else the recreation claim holds it), then the kept users written at the
 * new topic's start, and the old topic's snapshots renamed aside
 * (hl_persist_shard_restart_at), also when the write fails: restored, one
 * would pass for the new topic's state once that topic grew past its
 * offset. A failure to write the file is logged: a failed write leaves
 * the users in memory until the shard's next snapshot; a file that could
 * not be renamed must be moved by hand. With state.store=kafka the file
 * covers the changelog's flush at start (the claim when there is none, or
 * it did not land),
 * so a restart from it reads nothing older; before the changelog was written first, it covered the
 * claim, and earlier still changelog offset 0, from which a restart read
 * the claim checkpoint, which names the old topic's offset, and resumed
 * the new topic there (test_topic_recreated_changelog.py). Under
 * state.store=kafka the claim (a recreation claim at start, written
 * before this) also closes the window between the file's write and the
 * renames: a restore from an old file not yet renamed reads the changelog
 * from that file's cover on, so that claim too, forgets the rows' old
 * offsets there and resumes at start (when the state topic is the old
 * one: one recreated too makes the old file's changelog offset
 * meaningless, and the window stays). A crash before the claim lands
 * leaves the old offset the changelog's word, but nothing was done yet:
 * a restore detects the recreation again, unless the new topic grew past
 * the old offset meanwhile, as it would with a crash before this restore.
 * Until the claim followed the check, that was also so of a crash during
 * the changelog's flush (test_changelog_recreated.py, killed_in_rewrite).
 * Under state.store=file an intent file closes the write-then-rename
 * window (hl_persist_shard_restart_at): a crash in it restored the old
 * file's offset. */
static void keep_recreated(hl_worker *w, int32_t p, hl_shard *sh, int64_t start, int state)
{
    char err[512];
    int n_aside = 0;
    if (state)
        flush_recreated(p, sh, start, hl_now_mono_ms() + w->o.shutdown_timeout_ms);
    if (sh->ps == NULL)
        return;
    int64_t deadline = hl_now_mono_ms() + w->o.shutdown_timeout_ms;
    if (hl_persist_shard_restart_at(sh->ps, sh->tbl, start, deadline, &n_aside, err,
                                    sizeof err) != 0)
        hl_log(HL_LOG_ERROR, "input_topic_recreated_unsaved", "partition=%d files_aside=%d "
               "err=\"%s\" action=\"the kept users are saved by the shard's next snapshot, "
               "lost if the worker dies before it (the files renamed *.topic-recreated hold "
               "them); a file err names as not renamed must be moved out of snapshot.dir, or "
               "a restart takes it for the new topic's state\"", (int)p, n_aside, err);
    else
        hl_log(HL_LOG_INFO, "snapshots_set_aside", "partition=%d next_offset=%lld files=%d "
               "suffix=.topic-recreated", (int)p, (long long)start, n_aside);
}

/* A partition with nothing restored under auto.offset.reset=latest starts
 * at the end it has now, asked of the broker within the assignment's
 * watermark budget (recreated.h) and assigned as an explicit offset.
 * Assigned END, librdkafka resolves it after the assignment and where it
 * did shows nowhere: the lag (consumer.c) had only librdkafka's position,
 * ahead by the prefetch and the batch in hand, until the first store.
 * Left END when the broker does not answer. */
static void resolve_latest(hl_worker *w, int32_t p, int64_t *offset)
{
    hl_recreated_check *c = &w->wm;
    int64_t low = -1, high = -1;
    if (*offset != RD_KAFKA_OFFSET_END || c->skip)
        return;
    rd_kafka_resp_err_t err = c->query(c, p, &low, &high);
    if (!err && high >= 0) {
        *offset = high;
        return;
    }
    c->skip = err == RD_KAFKA_RESP_ERR__TIMED_OUT;   /* as recreated.c's ask() */
    hl_log(HL_LOG_WARN, "input_watermarks_unknown", "partition=%d err=\"%s\" "
           "action=\"started at auto.offset.reset=latest unresolved: its lag reads "
           "librdkafka's position until its first offset is stored\"", (int)p,
           rd_kafka_err2str(err));
}

/* The restore's offset checked against the topic (a recreated topic:
 * 1, the users kept, *restored and *offset moved to *start), or a start
 * at the latest offset made explicit. A changelog restore that took up
 * this worker's own unfinished recreation (both topics recreated: the
 * cache adopted, changelog.h) is one too, already at the new start, its
 * offsets forgotten: it is saved again whole, its old files set aside. */
static int check_start(hl_worker *w, int32_t p, hl_table *tbl,
                       const hl_changelog_restored *cr, int64_t *restored, int64_t *offset,
                       int64_t *start)
{
    int64_t high;
    if (w->changelog != NULL && cr->recreated && cr->input_recreated) {
        *start = *restored;
        return 1;
    }
    if (hl_recreated_check_partition(&w->wm, p, *restored, start, &high)) {
        restart_input(w, p, tbl, restored, offset, *start, high);
        return 1;
    }
    resolve_latest(w, p, offset);
    return 0;
}

/* A recreated topic, before the shard is served: the input topic
 * (keep_recreated), or the state topic alone (its users written again at
 * once, flush_recreated). After ps's changelog cover is set: keep_recreated
 * says why. */
static void save_recreation(hl_worker *w, int32_t p, hl_shard *sh, int input, int state,
                            int64_t offset)
{
    if (input)
        keep_recreated(w, p, sh, offset, state);
    else if (state)
        flush_recreated(p, sh, offset, hl_now_mono_ms() + w->o.shutdown_timeout_ms);
}

/* With state.store=kafka, the claim, once the input topic is checked: a
 * recreation claim at the new topic's start when it was recreated (its
 * rows' old offsets are then forgotten by every later reader too,
 * changelog.h), else a checkpoint at the restored offset. 0, or HL_EIO
 * (logged): the partition is not served unclaimed. */
static int claim(hl_worker *w, int32_t p, const hl_table *tbl, hl_changelog_restored *cr,
                 int recreated)
{
    char err[512];
    if (w->changelog == NULL ||
        hl_changelog_claim(w->changelog, p, tbl, cr, recreated, err, sizeof err) == 0)
        return 0;
    hl_log(HL_LOG_ERROR, "restore_failed", "partition=%d source=changelog err=\"%s\"",
           (int)p, err);
    return HL_EIO;
}

static int assign_one(hl_worker *w, rd_kafka_t *rk, int32_t p, int64_t *offset)
{
    char err[256];
    if (owner_slot(w, p) != 0)
        return HL_ENOMEM;
    if (w->owner[p] != NULL)
        return 1;
    int64_t restored, on_disk = -1;
    int moved = 0;
    hl_changelog_restored cr;
    hl_table *tbl = hl_worker_restore(w, p, &restored, offset, &on_disk, &cr, &moved);
    if (tbl == NULL)
        return HL_EIO;          /* logged as restore_failed */
    int64_t start;
    int recreated = check_start(w, p, tbl, &cr, &restored, offset, &start);
    if (recreated) {
        on_disk = HL_PERSIST_NO_OFFSET;
        cr.next_offset = start;     /* durable there once claimed */
    }
    if (claim(w, p, tbl, &cr, recreated) != 0) {
        hl_table_destroy(tbl);
        return HL_EIO;
    }
    log_trimmed(w, p, tbl);
    bound_stream_time(w, p, tbl);
    if (w->changelog == NULL)
        on_disk = restored;     /* with the changelog: the cache file's, if one was used */
    hl_persist_shard *ps = w->persist && tbl ? hl_persist_shard_create(w->persist, p, on_disk)
                                             : NULL;
    if (moved)
        hl_persist_shard_resave(ps);    /* the newest file names the old model */
    hl_shard *sh = hl_shard_create(p, tbl, restored, ps, w->o.batch_max_messages,
                                   w->o.recs_min_interval_ms, w->reg, err, sizeof err);
    if (sh == NULL) {
        hl_log(HL_LOG_ERROR, "shard_create_failed", "partition=%d err=\"%s\"", (int)p, err);
        return HL_ENOMEM;
    }
    /* Restored (or empty) under the current model: swaps happen on this
     * thread too, so it cannot change in between. */
    sh->mref = hl_models_acquire(w->models);
    sh->c_migrated = w->ctx.mx.migrated;
    sh->c_fits = w->ctx.mx.fits_on_thread;
    if (tbl != NULL && !hl_worker_state_fits(tbl, sh->mref->mi, p)) {
        hl_shard_destroy(sh);
        return HL_EINVAL;
    }
    if (w->changelog != NULL &&
        (sh->cl = hl_changelog_shard_create(w->changelog, p, sh->tbl, &cr)) == NULL) {
        hl_log(HL_LOG_ERROR, "shard_create_failed", "partition=%d err=\"out of memory\"",
               (int)p);
        hl_shard_destroy(sh);
        return HL_ENOMEM;
    }
    if (sh->cl != NULL && sh->ps != NULL)
        hl_persist_shard_set_cover(sh->ps, hl_changelog_cover, sh->cl);
    if (moved)      /* the changelog's rows are the old model's */
        hl_changelog_shard_resave(sh->cl);
    save_recreation(w, p, sh, recreated, cr.recreated, restored);
    return give_to_thread(w, rk, p, sh);
}

/* A stop that came while partitions are restored (start_abort: SIGTERM
 * in `halflife run`) ends the assignment after the restore in hand: the
 * partitions restored so far are owned and are handed over as on any stop
 * (snapshot, commit); the rest are left as an ignored assignment leaves
 * them, unserved and uncommitted, so a restart or their next owner
 * restores them whole. Logged once, with the step when nothing was owned
 * before. */
static int stop_while_restoring(hl_worker *w, int done, int n)
{
    if (w->o.start_abort == NULL || !*w->o.start_abort)
        return 0;
    hl_worker_stop(w);
    hl_log(HL_LOG_INFO, atomic_load(&w->have_assignment) ? "restore_stopped"
                                                         : "worker_stopped_before_start",
           "step=restore owned_partitions=%d restored=%d of=%d why=\"stopped while "
           "restoring partitions; the rest are left unserved and uncommitted\"",
           atomic_load(&w->assigned), done, n);
    return 1;
}

/* A partition assigned to this worker that it cannot serve: the worker
 * stops as on SIGTERM (the partitions it owns are handed over cleanly)
 * but hl_worker_run then fails, so `halflife run` exits 1 and an
 * orchestrator restarts it (the partition then goes to a member that can
 * serve it, or this one retries). Before, the stop looked like a clean
 * SIGTERM: exit 0, and the pod was left stopped. */
static void fail_partition(hl_worker *w, int32_t p, int rc)
{
    const char *why = rc == HL_EIO ? "its state could not be restored (see restore_failed)"
                    : rc == HL_EINVAL ? "the restored state does not fit the model"
                    : "out of memory setting up its shard";
    hl_log(HL_LOG_ERROR, "partition_failed", "partition=%d err=\"%s\" action=\"stop and "
           "exit 1: the partition is left unserved and uncommitted for a restart or another "
           "member\"", (int)p, why);
    atomic_store(&w->failed, 1);
    hl_worker_stop(w);
}

/* Each partition is assigned at the offset its restore names, which is
 * also its shard's position: the fetch starts exactly there, and a record
 * librdkafka hands over below it later (2.0.2 does after a rebalance's
 * pause, README.md "Rebalance and librdkafka 2.0.2") is dropped by the
 * batch loop (hl_shard_redelivered). */
static void assign_parts(hl_worker *w, rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts)
{
    int n = 0;
    for (int i = 0; i < parts->cnt; i++)
        n += strcmp(parts->elems[i].topic, w->o.input_topic) == 0;
    /* /readyz answers 503 while these are restored: a member is not ready
     * while partitions it was given are not served yet. */
    atomic_store(&w->restored, 0);
    atomic_store(&w->restoring, n);
    hl_recreated_init(&w->wm, rk, w->o.input_topic, w->o.offset_reset_latest);
    for (int i = 0; i < parts->cnt; i++) {
        if (strcmp(parts->elems[i].topic, w->o.input_topic) != 0)
            continue;
        if (stop_while_restoring(w, i, parts->cnt))
            break;
        int rc = assign_one(w, rk, parts->elems[i].partition, &parts->elems[i].offset);
        if (rc < 0) {
            /* A restore a stop cut short (changelog_restore.c) is the stop,
             * not a partition that cannot be served. */
            if (!stop_while_restoring(w, i, parts->cnt))
                fail_partition(w, parts->elems[i].partition, rc);
            break;              /* stopping: the rest would be ignored anyway */
        } else if (rc == 0)
            atomic_fetch_add(&w->assigned, 1);
        atomic_fetch_add(&w->restored, 1);
    }
    atomic_store(&w->restoring, 0);
}

static int thread_index(hl_worker *w, hl_wthread *t)
{
    for (int i = 0; i < w->n_th; i++)
        if (w->th[i] == t)
            return i;
    return -1;
}

/* A revoked partition's series leave /metrics with it, so no stale value
 * outlives the assignment. Its consumed counter goes too (another worker
 * now counts that partition); a later assignment registers it again with
 * the value it had, so it never goes down. The restore's series went on
 * showing after the partition left until 2026-12-07: a sum over a pod's
 * series counted partitions it no longer owned. They are hidden, not
 * dropped: the next restore of the partition here sets each again. */
static void hide_series(hl_worker *w, int32_t p)
{
    static const char *const gauges[] = {"halflife_users", "halflife_state_bytes",
                                         "halflife_consumer_lag",
                                         "halflife_events_consumed_total",
                                         "halflife_restore_records", "halflife_restore_seconds",
                                         "halflife_restore_records_per_second"};
    char labels[80];
    snprintf(labels, sizeof labels, "partition=\"%d\"", (int)p);
    for (size_t i = 0; i < sizeof gauges / sizeof gauges[0]; i++)
        hl_metrics_hide(w->reg, gauges[i], labels);
    hl_worker_restore_hide(w, p);
}

/* While a revocation waits: a SIGTERM that came meanwhile becomes the stop
 * (the main loop, which would make it one, is waiting here). Without it a
 * release held by refused lists (flight.c) never ended, and the process
 * was killed by run's last-resort alarm instead of stopping. A producer
 * that failed fatally holds a release for ever the same way (its lists
 * never land), so it is watched here too. */
static void revoke_waiting(void *arg)
{
    hl_worker *w = arg;
    if (w->sig != NULL && *w->sig && atomic_load(&w->stop) == 0)
        hl_worker_stop(w);
    hl_worker_watch_producer(w);
}

static void revoke_parts(hl_worker *w, rd_kafka_topic_partition_list_t *parts)
{
    hl_shard *back[64];
    for (int i = 0; i < parts->cnt; i++) {
        int32_t p = parts->elems[i].partition;
        if (strcmp(parts->elems[i].topic, w->o.input_topic) != 0 ||
            p >= w->cap_owner || w->owner[p] == NULL)
            continue;
        if (hl_wthread_post_take(w->owner[p], p) != 0) {
            /* Its shard stays with the thread until the exit. */
            hl_log(HL_LOG_ERROR, "revoke_failed", "partition=%d err=\"out of memory\" "
                   "action=\"stop and exit 1\"", (int)p);
            atomic_store(&w->failed, 1);
            hl_worker_stop(w);
        }
    }
    for (int t = 0; t < w->n_th; t++) {
        int n;
        while ((n = hl_wthread_wait_taken(w->th[t], back, 64, revoke_waiting, w)) > 0) {
            for (int j = 0; j < n; j++) {
                int32_t p = back[j]->partition;
                hl_log(HL_LOG_INFO, "partition_revoked", "partition=%d thread=%d", (int)p, t);
                w->th_load[thread_index(w, w->owner[p])]--;
                w->owner[p] = NULL;
                atomic_fetch_sub(&w->assigned, 1);
                hide_series(w, p);
                hl_shard_destroy(back[j]);
            }
        }
    }
}

/* The restored offsets stored as soon as the partitions are assigned (a
 * snapshot's offset is never past a delivered list), so auto-commit sends
 * them. librdkafka's consumer_lag, which halflife_consumer_lag exports, is
 * the high watermark minus this member's last known committed offset, and
 * an assignment at an explicit offset does not fetch it: a partition back
 * with a member that owned it before showed the records the other member
 * applied meanwhile as lag, until a record came (never, if none did). */
static void store_restored(hl_worker *w, rd_kafka_t *rk,
                           const rd_kafka_topic_partition_list_t *parts)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(parts->cnt);
    for (int i = 0; l != NULL && i < parts->cnt; i++) {
        const rd_kafka_topic_partition_t *e = &parts->elems[i];
        if (e->offset >= 0 && strcmp(e->topic, w->o.input_topic) == 0 &&
            hl_worker_owns_partition(w, e->partition))
            rd_kafka_topic_partition_list_add(l, e->topic, e->partition)->offset = e->offset;
    }
    rd_kafka_resp_err_t err = l && l->cnt > 0 ? rd_kafka_offsets_store(rk, l) : 0;
    if (err)
        hl_log(HL_LOG_DEBUG, "offsets_store", "err=\"%s\"", rd_kafka_err2str(err));
    if (l != NULL)
        rd_kafka_topic_partition_list_destroy(l);
}

/* ---- the membership the partitions were assigned under ----------------- */

/* At every assignment callback: the partitions owned from here on are this
 * member id's. The cooperative protocol's callback ends every rebalance,
 * with nothing new too, so a partition kept through a rebalance is
 * confirmed along with the new ones; the eager protocol revokes and
 * assigns everything each time. */
static void note_member(hl_worker *w, rd_kafka_t *rk)
{
    char *id = rd_kafka_memberid(rk);
    atomic_store(&w->ctx.member_mark, hl_member_mark(id));
    rd_kafka_mem_free(rk, id);
}

/* Before a revocation is served: whether its partitions go as lost ones.
 * A session that ran out inside a revocation callback resets the member
 * id, and librdkafka 2.0.2 does not mark the rest of the assignment lost
 * (rd_kafka_cgrp_revoke_all_rejoin_maybe skips it while rebalancing): it
 * rejoins as a new member, and a later revocation of the partitions kept
 * outside that callback came as an ordinary one, lists published and
 * snapshots written though another member had served them since
 * (test_lost_mid_release.py; a broker that asks for a member id,
 * MEMBER_ID_REQUIRED, has librdkafka revoke them as lost instead). */
static void note_revocation(hl_worker *w, rd_kafka_t *rk, int n)
{
    int gone = !rd_kafka_assignment_lost(rk) && hl_member_gone(&w->ctx);
    if (gone)
        hl_log(HL_LOG_WARN, "revocation_member_changed", "partitions=%d action=\"let go "
               "as lost: this member's id changed since they were assigned, so the group "
               "may have given them to another member\"", n);
    atomic_store(&w->ctx.revoke_gone, gone);
}

/* hl_consumer_opts.owns: main thread, like every use of owner[]. */
int hl_worker_owns_partition(void *opaque, int32_t p)
{
    hl_worker *w = opaque;
    return p >= 0 && p < w->cap_owner && w->owner[p] != NULL;
}

void hl_worker_on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                            rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    hl_worker *w = opaque;
    int coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    rd_kafka_error_t *error = NULL;
    hl_counter_add(w->rebalances, 1);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        /* Leaving the group can bring an assignment (another member left
         * meanwhile); once stopping, the threads take no new shard, so the
         * partitions are only acknowledged, left unserved and uncommitted:
         * their next owner resumes where they were. */
        /* Noted first: the restores' flushes (flush_recreated) are
         * fenced by a member id other than the noted one (member_gone). */
        note_member(w, rk);
        if (atomic_load(&w->stop) == 0)
            assign_parts(w, rk, parts);
        else
            hl_log(HL_LOG_INFO, "assignment_ignored", "reason=\"stopping\" partitions=%d",
                   parts->cnt);
        if (coop)
            error = rd_kafka_incremental_assign(rk, parts);
        else
            rd_kafka_assign(rk, parts);
        if (error == NULL)
            store_restored(w, rk, parts);
        atomic_store(&w->awaiting, 0);
        atomic_store(&w->have_assignment, 1);
    } else {
        if (err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
            hl_log(HL_LOG_WARN, "rebalance_error", "err=\"%s\"", rd_kafka_err2str(err));
        note_revocation(w, rk, parts->cnt);
        revoke_parts(w, parts);
        /* Left with nothing (always so with the eager protocol): not
         * ready until the next assignment is in hand and restored. A
         * cooperative revocation of some partitions keeps serving the rest. */
        if (atomic_load(&w->assigned) == 0)
            atomic_store(&w->awaiting, 1);
        if (coop)
            error = rd_kafka_incremental_unassign(rk, parts);
        else
            rd_kafka_assign(rk, NULL);
    }
    if (error) {
        hl_log(HL_LOG_ERROR, "rebalance_failed", "err=\"%s\"", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    }
    hl_gauge_set(w->assigned_g, atomic_load(&w->assigned));
}
