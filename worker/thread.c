/* thread.c - a shard-owning worker thread: its life, its mailbox, and the
 * loop that runs a batch (batch.c) between two looks at the mailbox.
 *
 * Shards move between the main thread (rebalances) and this thread only
 * through the mailbox, under mu: the main thread posts gives and takes; the
 * thread accepts gives between batches and answers takes once the shards'
 * lists are delivered, their offsets stored and their snapshots written.
 * So only this thread touches its shards between a give and a take, and
 * nothing on the batch path locks.
 *
 * Every array here grows on demand (a thread may be given any number of
 * partitions); growth happens at assignment time, never inside a batch. */
#include "thread_internal.h"
#include "fnv.h"

#include "slice.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* ---- creation ---------------------------------------------------------- */

/* A duration of the consumer's configuration (session.timeout.ms: a
 * release that did not run for longer was cut off from the coordinator
 * as long, stalled). Unknown: never reached. */
static int64_t conf_ms(rd_kafka_t *consumer, const char *key)
{
    char buf[32];
    size_t n = sizeof buf;
    if (consumer == NULL ||
        rd_kafka_conf_get(rd_kafka_conf(consumer), key, buf, &n) != RD_KAFKA_CONF_OK)
        return INT64_MAX / 4;
    long long ms = atoll(buf);
    return ms > 0 ? ms : INT64_MAX / 4;
}

hl_wthread *hl_wthread_create(int id, hl_wshared *ctx, char *errbuf, size_t errlen)
{
    hl_wthread *t = calloc(1, sizeof *t);
    if (t == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "thread %d: out of memory", id);
        return NULL;
    }
    t->id = id;
    t->ctx = ctx;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    t->mref = hl_models_acquire(ctx->models);
    t->stall_ms = conf_ms(ctx->consumer, "session.timeout.ms");
    t->verdict_ms = conf_ms(ctx->consumer, "heartbeat.interval.ms");
    if (t->verdict_ms > t->stall_ms)
        t->verdict_ms = t->stall_ms;
    if (hl_batch_alloc(t, errbuf, errlen) != 0 || hl_publish_alloc(t, errbuf, errlen) != 0 ||
        hl_flight_alloc(t, errbuf, errlen) != 0)
        goto fail;
    t->q = rd_kafka_queue_new(ctx->consumer);
    return t;
fail:
    hl_wthread_destroy(t);
    return NULL;
}

void hl_wthread_destroy(hl_wthread *t)
{
    if (t == NULL)
        return;
    hl_wthread_join(t);
    for (int i = 0; i < t->n_own; i++)
        hl_shard_destroy(t->own[i]);
    for (int i = 0; i < t->n_give; i++)
        hl_shard_destroy(t->give[i]);
    for (int i = 0; i < t->n_taken; i++)
        hl_shard_destroy(t->taken[i]);
    hl_flight_free(t);
    hl_publish_free(t);
    hl_batch_free(t);
    hl_mref_release(t->mref);
    if (t->q)
        rd_kafka_queue_destroy(t->q);
    free(t->give); free(t->take); free(t->take_copy); free(t->taken);
    free(t->own); free(t->by_part);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    free(t);
}

rd_kafka_queue_t *hl_wthread_queue(hl_wthread *t) { return t->q; }
int hl_wthread_queued(hl_wthread *t)
{
    return atomic_load_explicit(&t->queued, memory_order_relaxed);
}
int hl_wthread_n_shards(hl_wthread *t) { return atomic_load(&t->n_shards); }

/* Makes *arr (elements of size elem, capacity *cap) hold at least need;
 * doubles. HL_ENOMEM leaves it as it was. */
static int reserve(void *arr, int *cap, int need, size_t elem)
{
    if (need <= *cap)
        return 0;
    int n = *cap > 0 ? *cap : 16;
    while (n < need)
        n = n > (1 << 29) ? need : n * 2;
    void *p = realloc(*(void **)arr, elem * (size_t)n);
    if (p == NULL)
        return HL_ENOMEM;
    memset((char *)p + elem * (size_t)*cap, 0, elem * (size_t)(n - *cap));
    *(void **)arr = p;
    *cap = n;
    return 0;
}

/* ---- ownership (the thread's view) ------------------------------------- */

/* Under mu: room for every given shard in own and by_part. */
static int own_reserve(hl_wthread *t)
{
    int need_part = 0;
    for (int i = 0; i < t->n_give; i++)
        if (t->give[i]->partition + 1 > need_part)
            need_part = t->give[i]->partition + 1;
    if (reserve(&t->own, &t->cap_own, t->n_own + t->n_give, sizeof *t->own) != 0 ||
        reserve(&t->by_part, &t->cap_part, need_part, sizeof *t->by_part) != 0)
        return HL_ENOMEM;
    return 0;
}

static void own_add(hl_wthread *t, hl_shard *sh)
{
    t->by_part[sh->partition] = sh;
    t->own[t->n_own++] = sh;
    atomic_store(&t->n_shards, t->n_own);
}

static hl_shard *own_remove(hl_wthread *t, int32_t p)
{
    for (int i = 0; i < t->n_own; i++) {
        if (t->own[i]->partition != p)
            continue;
        hl_shard *sh = t->own[i];
        t->own[i] = t->own[--t->n_own];
        t->by_part[p] = NULL;
        atomic_store(&t->n_shards, t->n_own);
        return sh;
    }
    return NULL;
}

/* ---- the mailbox ------------------------------------------------------- */

int hl_wthread_give(hl_wthread *t, hl_shard *sh)
{
    int rc;
    pthread_mutex_lock(&t->mu);
    if ((rc = reserve(&t->give, &t->cap_give, t->n_give + 1, sizeof *t->give)) == 0) {
        t->give[t->n_give++] = sh;
        atomic_store(&t->mail, 1);
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

int hl_wthread_post_take(hl_wthread *t, int32_t partition)
{
    int rc;
    pthread_mutex_lock(&t->mu);
    /* Room for the answer too: answer_takes must never fail to hand back. */
    if ((rc = reserve(&t->take, &t->cap_take, t->n_take + 1, sizeof *t->take)) == 0 &&
        (rc = reserve(&t->taken, &t->cap_taken, t->n_taken + t->n_take + 1,
                      sizeof *t->taken)) == 0) {
        t->take[t->n_take++] = partition;
        atomic_store(&t->mail, 1);
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

/* Under mu: moves given shards into the thread's own set. Without memory
 * for them they stay in give (destroyed with the thread) and the worker
 * stops: a partition it cannot serve must go to another member. */
static void accept_gives(hl_wthread *t)
{
    if (t->n_give == 0)
        return;
    if (own_reserve(t) != 0) {
        hl_log(HL_LOG_ERROR, "thread_out_of_memory", "thread=%d partitions=%d action=stop",
               t->id, t->n_own + t->n_give);
        int zero = 0;
        atomic_compare_exchange_strong(t->ctx->stop, &zero, 1);
        return;
    }
    for (int i = 0; i < t->n_give; i++)
        own_add(t, t->give[i]);
    t->n_give = 0;
}

/* Under mu: answers the first n posted takes (room in taken was reserved
 * when each was posted). The caller has released those n shards (their
 * lists out, their snapshots written); a take posted after the caller
 * copied the list stays posted, for the next look: answering it here would
 * hand its shard back unsaved, and its next owner would replay it. */
static void answer_takes(hl_wthread *t, int n)
{
    accept_gives(t);
    for (int i = 0; i < n; i++) {
        hl_shard *sh = own_remove(t, t->take[i]);
        for (int j = 0; sh == NULL && j < t->n_give; j++)
            if (t->give[j]->partition == t->take[i]) {   /* never accepted */
                sh = t->give[j];
                t->give[j] = t->give[--t->n_give];
            }
        if (sh)
            t->taken[t->n_taken++] = sh;
    }
    memmove(t->take, t->take + n, sizeof *t->take * (size_t)(t->n_take - n));
    t->n_take -= n;
    pthread_cond_broadcast(&t->cv);
}

/* The wait wakes every WAIT_TICK_MS to call waiting: a release can wait
 * for deliveries as long as the broker refuses lists, and only the caller
 * can turn a signal that came meanwhile into the stop that bounds it. */
#define WAIT_TICK_MS 100

int hl_wthread_wait_taken(hl_wthread *t, hl_shard **out, int max,
                          void (*waiting)(void *), void *arg)
{
    pthread_mutex_lock(&t->mu);
    while (t->n_take > 0 && !t->exited) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);     /* the cv's clock */
        ts.tv_nsec += WAIT_TICK_MS * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        if (pthread_cond_timedwait(&t->cv, &t->mu, &ts) != 0 && waiting != NULL)
            waiting(arg);
    }
    if (t->n_take > 0)
        answer_takes(t, t->n_take);    /* the thread is gone: nobody else owns them */
    int n = 0;
    while (t->n_taken > 0 && n < max)
        out[n++] = t->taken[--t->n_taken];
    pthread_mutex_unlock(&t->mu);
    return n;
}

/* Copies the posted takes (under mu) so they are served without the lock;
 * 0 takes when the copy cannot grow (they are served at the next look). */
static int copy_takes(hl_wthread *t)
{
    int n = t->n_take;
    if (n == 0)
        return 0;           /* mail was a give: take_copy may still be NULL */
    if (reserve(&t->take_copy, &t->cap_take_copy, n, sizeof *t->take_copy) != 0)
        return 0;
    memcpy(t->take_copy, t->take, sizeof *t->take * (size_t)n);
    return n;
}

/* A shard a graceful stop leaves unsaved: hl_worker_run reports it and
 * fails the run, so an orchestrator sees it (a restart replays the shard
 * from its previous snapshot: nothing is lost, but it should not look
 * like a clean stop). */
static void note_unsaved(hl_wthread *t, const hl_shard *sh)
{
    int i = atomic_fetch_add(&t->ctx->n_unsaved, 1);
    if (i < HL_UNSAVED_MAX)
        atomic_store(&t->ctx->unsaved[i], sh->partition);
}

/* A release that gave up on undelivered lists (the broker away, or
 * refusing, or the partitions lost): librdkafka would keep them queued for ever (message.timeout.ms
 * =0) and send them whenever the broker answers again, possibly after
 * the partitions' next owner published newer lists for the same users; a
 * compacted output topic then kept the older list for good. So every
 * record the producer holds is purged before the partitions go: the
 * moved users' lists come back failed and are dropped (their next owner
 * reads those events again and publishes them), the lists of partitions
 * still owned here or by other threads come back failed too and are
 * refreshed again from their users' newest state (flight.c), and a dead
 * letter's copy is kept on disk instead. Not while stopping, unless the
 * partitions are lost: the producer is settled on the way out, and that
 * flush would send what it holds. The purged records are logged here,
 * in one line, and counted as purged, not as delivery errors: nothing
 * refused them (producer.h). A lost release has its own event: it did not
 * wait, and may have had nothing undelivered of its own (the purge is
 * for a queued changelog flush, or other threads' lists); under
 * release_undelivered its line read "batches_in_flight=0", and only
 * records_purged told what had happened. */
static void let_go_undelivered(hl_wthread *t, int n_take, int lost)
{
    uint64_t purged = hl_producer_purge(t->ctx->prod);
    if (lost)
        hl_log(HL_LOG_WARN, "release_lost_purged", "thread=%d partitions=%d "
               "batches_in_flight=%d records_purged=%llu action=\"let go at once at their "
               "last delivered offsets, nothing more published or waited for: another "
               "member owns them already; unsent records purged, lists still owned "
               "refreshed again\"", t->id, n_take, t->fl_n, (unsigned long long)purged);
    else
        hl_log(HL_LOG_WARN, "release_undelivered", "thread=%d partitions=%d "
               "batches_in_flight=%d waited_ms=%d records_purged=%llu action=\"let go at "
               "their last delivered offsets; the next owner reads those events again; "
               "unsent records purged, lists still owned refreshed again\"", t->id, n_take,
               t->fl_n, t->ctx->o->shutdown_timeout_ms, (unsigned long long)purged);
}

/* This thread's CPU time, ms: work between two looks is not a stall. */
static int64_t cpu_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The release's own work (publishing, a snapshot: disk waits too) ended:
 * not a stall. */
static void member_busy_end(hl_wthread *t)
{
    t->rel_seen_ms = hl_now_mono_ms();
    t->rel_seen_cpu_ms = cpu_ms();
}

/* The membership went while the snapshots of a release were written
 * (hl_wthread_moved; they take long for big shards, and a session can
 * run out meanwhile as it can during the wait for the lists): the shards
 * from the n_done-th on get none, as a lost release's get none, and the
 * producer is purged (a changelog flush of ours may be queued). Those
 * written before the change were written while this member knew itself
 * their owner; the one being written when it came is finished whole or
 * dropped whole (persist.c writes a temporary file and renames it), so
 * stopping between two leaves no half-written file. Before, the release
 * stopped watching the membership once its lists were delivered, and
 * wrote on. */
static void snapshots_moved(hl_wthread *t, int n_take, int n_done)
{
    let_go_undelivered(t, n_take, 1);
    hl_log(HL_LOG_WARN, "release_lost_not_saved", "thread=%d partitions=%d saved_before=%d "
           "action=\"no more snapshots written: the membership changed while they were "
           "written, another member may own them already\"", t->id, n_take - n_done, n_done);
}

/* Writes the snapshots of the n_take shards let go: where their next
 * owner starts. Not of lost ones: the group gave them to another member
 * before this revocation began, and that member has restored them from
 * the newest state there was and may have written newer since; a
 * snapshot of ours would land after its restore. On a shared snapshot.dir
 * a file at our offset, above the new owner's, became the next restore's
 * choice: when the new owner had replayed only part of the way to our
 * offset, the lists it published meanwhile (older state than ours, landed
 * after ours) stayed those users' last for good, as the restore from our
 * file skipped the rest of the replay that would have refreshed them; and
 * our retention deleted the new owner's temporary files at or below our
 * offset, failing its snapshot in progress. (Under state.store=kafka the
 * flush would be refused as fenced anyway.) The next owner reads those
 * events again, as it would after a crash. */
static void snapshot_taken(hl_wthread *t, int n_take, int lost)
{
    if (lost) {
        hl_log(HL_LOG_WARN, "release_lost_not_saved", "thread=%d partitions=%d "
               "action=\"no snapshot written: another member owns them already\"",
               t->id, n_take);
        return;
    }
    /* The snapshots' own budget, unless a stop came meanwhile: then its
     * deadline, or the release would outlast the stop's bound. */
    int64_t deadline = atomic_load(t->ctx->stop)
                           ? atomic_load(&t->ctx->stop_deadline_ms)
                           : hl_now_mono_ms() + t->ctx->o->shutdown_timeout_ms;
    for (int i = 0; i < n_take; i++) {
        hl_shard *sh = hl_wthread_shard_of(t, t->take_copy[i]);
        if (sh == NULL)
            continue;
        if (hl_wthread_moved(t)) {
            snapshots_moved(t, n_take, i);
            return;
        }
        /* The next owner starts here. */
        if (hl_shard_snapshot_now(sh, deadline) != 0 && atomic_load(t->ctx->stop))
            note_unsaved(t, sh);
        member_busy_end(t);
    }
}

/* ---- the membership a release began under ----------------------------- */

#define MEMBER_CHECK_MS 100     /* a look costs a round trip to librdkafka's thread */

/* The group membership now (group, generation, member id), serialized; NULL
 * when unknown. Free with rd_kafka_mem_free. */
static void *membership(hl_wthread *t, size_t *len)
{
    void *buf = NULL;
    rd_kafka_consumer_group_metadata_t *m = rd_kafka_consumer_group_metadata(t->ctx->consumer);
    if (m == NULL)
        return NULL;
    rd_kafka_error_t *e = rd_kafka_consumer_group_metadata_write(m, &buf, len);
    if (e != NULL) {
        rd_kafka_error_destroy(e);
        buf = NULL;
    }
    rd_kafka_consumer_group_metadata_destroy(m);
    return buf;
}

/* A release that did not run for longer than session.timeout.ms (gap_ms:
 * between two of its looks, less its CPU time and its disk waits between
 * them, member_busy_end): the whole process was stopped (SIGSTOP, a
 * frozen VM or container), and the coordinator has evicted this member
 * meanwhile, but the member id is reset only when a heartbeat's answer
 * comes back, a few ms after the process runs again. The lists a release
 * waited for are often in its socket by then: it went on and wrote the
 * snapshots of partitions another member owned before that answer
 * (test_lost_mid_release, resumed_delivered). So the stall is taken as
 * the answer: let go as lost. If the session survived after all, the
 * cost is the next owner's replay, never state. */
static int stalled(hl_wthread *t, int64_t gap_ms)
{
    if (gap_ms <= t->stall_ms)
        return 0;
    hl_log(HL_LOG_WARN, "release_stalled", "thread=%d stalled_ms=%lld "
           "session_timeout_ms=%lld action=\"let go as lost: the group evicted this "
           "member meanwhile\"", t->id, (long long)gap_ms, (long long)t->stall_ms);
    return 1;
}

/* After a stall: waits (up to heartbeat.interval.ms; the heartbeat is
 * overdue, so it goes at once) for the coordinator's answer to change the
 * membership, inside the revocation. The partitions this member keeps are
 * released later as lost only when their revocation finds the id changed
 * (worker_rebalance.c, note_revocation); a release that ended before the
 * answer let librdkafka rejoin under the old id (the mock takes an
 * evicted member back under it), and the kept ones were then revoked as
 * ordinary ones, snapshots written (test_lost_mid_release, kept_lost). */
static void await_verdict(hl_wthread *t)
{
    for (int64_t end = hl_now_mono_ms() + t->verdict_ms; hl_now_mono_ms() < end;) {
        size_t len = 0;
        void *m = membership(t, &len);
        int changed = m != NULL && (len != t->rel_member_len ||
                                    memcmp(m, t->rel_member, len) != 0);
        if (m != NULL)
            rd_kafka_mem_free(NULL, m);
        if (changed)
            return;
        hl_producer_poll(t->ctx->prod, 10);
    }
}

/* librdkafka 2.0.2 never marks an assignment lost while a revocation
 * callback runs, and a release runs inside one: every path that would
 * (a session timeout, an unknown member id, a fenced generation,
 * max.poll.interval.ms) goes through rd_kafka_cgrp_revoke_all_rejoin_maybe(),
 * which does nothing while the group is rebalancing, and waiting for the
 * application's unassign is such a state. So rd_kafka_assignment_lost()
 * read again during the wait stays 0, and a release that waited to its
 * deadline (shutdown.timeout.ms above session.timeout.ms) then let the
 * partitions go as an ordinary one, snapshots written, though the
 * coordinator evicts a member whose session ran out and gives its
 * partitions to another (test_lost_mid_release.py). Each of those resets
 * the member id or the generation: that is what is compared. Unknown
 * (NULL) is not a change. */
int hl_wthread_moved(hl_wthread *t)
{
    if (t->rel_member == NULL || t->rel_moved)
        return t->rel_moved;
    int64_t now = hl_now_mono_ms(), cpu = cpu_ms();
    if (stalled(t, now - t->rel_seen_ms - (cpu - t->rel_seen_cpu_ms))) {
        await_verdict(t);
        return t->rel_moved = 1;
    }
    t->rel_seen_ms = now;
    t->rel_seen_cpu_ms = cpu;
    if (now - t->rel_checked_ms < MEMBER_CHECK_MS)
        return 0;
    t->rel_checked_ms = now;
    size_t len = 0;
    void *m = membership(t, &len);
    t->rel_moved = m != NULL && (len != t->rel_member_len ||
                                 memcmp(m, t->rel_member, len) != 0);
    if (m != NULL)
        rd_kafka_mem_free(NULL, m);
    return t->rel_moved;
}

uint64_t hl_member_mark(const char *member_id)
{
    if (member_id == NULL)
        return 0;
    uint64_t h = hl_fnv1a64(HL_FNV64_BASIS, member_id, strlen(member_id));
    return member_id[0] == '\0' ? 1 : h > 1 ? h : h + 2;
}

int hl_member_gone(hl_wshared *ctx)
{
    uint64_t then = atomic_load(&ctx->member_mark);
    char *id = then != 0 ? rd_kafka_memberid(ctx->consumer) : NULL;
    uint64_t now = hl_member_mark(id);
    rd_kafka_mem_free(ctx->consumer, id);
    return now != 0 && (now == 1 || now != then);
}

/* Notes the membership a release begins under (none when lost already). */
static void member_note(hl_wthread *t, int lost)
{
    t->rel_checked_ms = hl_now_mono_ms();
    member_busy_end(t);
    t->rel_member = lost ? NULL : membership(t, &t->rel_member_len);
    t->rel_moved = 0;
}

/* 1 when the release lost its partitions after all: looks once more, now. */
static int member_lost(hl_wthread *t)
{
    t->rel_checked_ms = INT64_MIN / 2;
    return hl_wthread_moved(t);
}

/* The release is over: its membership is no longer watched. */
static void member_forget(hl_wthread *t)
{
    if (t->rel_member != NULL)
        rd_kafka_mem_free(NULL, t->rel_member);
    t->rel_member = NULL;
    t->rel_moved = 0;
}

/* Lets go of the n_take shards in take_copy: their held-back lists
 * published and delivered, offsets stored, snapshots written, one deadline
 * for all (a stop's; else shutdown.timeout.ms for the deliveries, and as
 * much again for the snapshots). A revocation while
 * stopping is part of the stop: a shard it could not save is noted. Lists
 * still undelivered at the deadline (refused, or the broker away) no
 * longer hold the group's rebalance: the partitions go with their offsets
 * and snapshots where they were (snapshot_now refuses to pass undelivered
 * lists), so the next owner reads those events again and publishes them.
 * Lost partitions go at once, without their held-back lists and without
 * snapshots (snapshot_taken), stopping or not; so do partitions whose
 * membership is gone while the release waits (hl_wthread_moved): the
 * wait ends on it; or while their snapshots are written: the rest are
 * not written (snapshots_moved). */
static void release(hl_wthread *t, int n_take)
{
    hl_shard *shs[64];
    int stopping = atomic_load(t->ctx->stop) != 0;
    int64_t deadline = stopping ? atomic_load(&t->ctx->stop_deadline_ms)
                                : hl_now_mono_ms() + t->ctx->o->shutdown_timeout_ms;
    /* Lost (a session timeout; librdkafka says so for the whole
     * revocation): the group has already given the partitions to another
     * member, which may be publishing newer lists now, so none of ours
     * may go out any more: no waiting users published, no wait for the
     * lists in the air (they would land whenever the broker came back
     * within it), the producer purged at once, even with no list in the
     * air: a changelog flush of ours may still be queued, and would land
     * after the new owner's claim. So too when this member's id changed
     * since the partitions were assigned (revoke_gone, which librdkafka
     * does not mark lost). */
    int lost = rd_kafka_assignment_lost(t->ctx->consumer) ||
               atomic_load(&t->ctx->revoke_gone);
    member_note(t, lost);
    for (int i = 0; i < n_take; i++)
        hl_park_drop(t, t->take_copy[i]);   /* the next owner reads them again */
    for (int i = 0; i < n_take && !lost && !hl_wthread_moved(t); i += 64) {
        int n_sh = 0;
        for (int j = i; j < n_take && n_sh < 64; j++)
            shs[n_sh++] = hl_wthread_shard_of(t, t->take_copy[j]);
        hl_publish_pending(t, shs, n_sh, stopping ? 0 : deadline);
        member_busy_end(t);
    }
    int drained = !lost && hl_flight_drain(t, stopping ? 0 : deadline);
    lost |= member_lost(t);
    if (lost || !drained) {
        for (int i = 0; i < n_take; i++)
            hl_flight_forget(t, t->take_copy[i]);
        if (lost || !stopping)
            let_go_undelivered(t, n_take, lost);
    }
    snapshot_taken(t, n_take, lost);
    member_forget(t);
}

/* Between batches: accepts gives and, with_takes, answers takes. */
static void serve_mail(hl_wthread *t, int with_takes)
{
    if (!atomic_load(&t->mail))
        return;
    pthread_mutex_lock(&t->mu);
    accept_gives(t);
    int n_take = with_takes ? copy_takes(t) : 0;
    pthread_mutex_unlock(&t->mu);
    if (n_take == 0)
        return;
    release(t, n_take);
    pthread_mutex_lock(&t->mu);
    answer_takes(t, n_take);
    atomic_store(&t->mail, t->n_give > 0 || t->n_take > 0);
    pthread_mutex_unlock(&t->mu);
}

/* ---- the loop ---------------------------------------------------------- */

/* Between batches: lets each shard's snapshot advance within its time
 * budget; one shard that wrote rows ends the round, so the batch loop is
 * held up by at most one tick. */
static void snapshot_tick(hl_wthread *t)
{
    int64_t now = hl_now_mono_ms();
    for (int i = 0; i < t->n_own; i++)
        if (hl_shard_snapshot_tick(t->own[i], now) == 1)
            return;
}

/* ---- model swaps ------------------------------------------------------- */

#define SWAP_TICK_US 2000   /* migration work between two batches */

/* A shard given with a newer model than the thread's (restored by the main
 * thread after a swap the thread has not seen yet). */
static int newer_shard(const hl_wthread *t)
{
    for (int i = 0; i < t->n_own; i++)
        if (t->own[i]->mref != NULL && t->own[i]->mref->gen > t->mref->gen)
            return 1;
    return 0;
}

/* Whether a shard migrates, and then the records the next batch may take:
 * the least any migrating shard allows (hl_shard_swap_batch_cap). */
static void note_migrating(hl_wthread *t)
{
    t->migrating = 0;
    t->swap_cap = INT_MAX;
    for (int i = 0; i < t->n_own; i++) {
        int cap = hl_shard_swap_batch_cap(t->own[i], HL_SWAP_BATCH_BUDGET_US);
        t->migrating |= t->own[i]->mig_from != NULL;
        if (cap < t->swap_cap)
            t->swap_cap = cap;
    }
}

/* Before a batch is consumed (top) and again before it runs. A new current
 * model becomes this thread's before the consume, so the first batch after
 * a swap is already capped (note_migrating; after the consume only
 * when a shard given meanwhile is in it already); a ranker for it comes
 * first: without one the old model keeps serving and the next batch tries
 * again. Then every shard whose rows are in another model starts migrating
 * into the thread's. A shard that cannot (no memory for a
 * migration) must not see events decoded for the new model: the worker
 * stops gracefully, and -1 tells the caller to drop the batch unapplied
 * (its offsets are never stored, so the next owner replays it).
 *
 * A thread whose shards still move into its model keeps that model until
 * they are done (their slices go on between batches): adopting a newer
 * one would make each finish its move at once, in hl_shard_swap_begin,
 * a stall of about 1 s per 180k users of a reshape (test_swap's chain
 * cases, timed). Lists keep the current model's version meanwhile. A
 * shard already in a newer model (given by a rebalance) cannot wait.
 * When more than one model went live meanwhile, the thread then jumps to
 * the newest: the set fitted that model's map from this thread's model on
 * the main thread when it went live (models.h, skip[]), so the jump fits
 * nothing here. */
static int model_sync(hl_wthread *t, int top)
{
    char err[512];
    int newer = newer_shard(t);
    if (hl_models_gen(t->ctx->models) != t->mref->gen && (newer || (top && !t->migrating))) {
        hl_mref *nm = hl_models_acquire(t->ctx->models);
        if (hl_publish_model(t, nm, err, sizeof err) != 0) {
            hl_log(HL_LOG_ERROR, "thread_model_failed", "thread=%d version=\"%s\" "
                   "err=\"%s\" action=\"retry at the next batch\"", t->id,
                   nm->mi->version, err);
            hl_mref_release(nm);
        } else {
            hl_mref_release(t->mref);
            t->mref = nm;
            /* the new ranker ranks with the new model's catalogue view, and
             * this batch's ids and added items are looked up in it */
            hl_items_local_update(t->ctx->items, &t->cat, t->ranker, nm->gen);
        }
    }
    for (int i = 0; i < t->n_own; i++) {
        if (hl_shard_swap_begin(t->own[i], t->mref) != 0) {
            int zero = 0;
            atomic_compare_exchange_strong(t->ctx->stop, &zero, 1);
            return -1;
        }
    }
    note_migrating(t);
    return 0;
}

/* Between batches: migration slices, one shard per round while it lasts,
 * within SWAP_TICK_US for all of them (a shard whose slice only passed
 * rows already moved hands the rest of the budget on, not a new one). */
static void swap_tick(hl_wthread *t)
{
    int64_t end = hl_now_mono_us() + SWAP_TICK_US;
    for (int i = 0; i < t->n_own; i++) {
        int64_t left = end - hl_now_mono_us();
        if (left <= 0 || hl_shard_swap_tick(t->own[i], left) > 0)
            break;
    }
    note_migrating(t);
}

/* 1 when the thread's shards are no longer this member's: the group
 * gave them to another while the session was out (librdkafka marks the
 * whole assignment lost until the revocation has let go, and a stop
 * holds that revocation back: the main thread serves it only once the
 * threads are done), or may have: this member's id changed since they
 * were assigned (a session that ran out inside a revocation callback,
 * which librdkafka does not mark lost; worker_rebalance.c,
 * note_revocation). A stop then wrote snapshots of partitions another
 * member had been serving since (test_lost_mid_release.py). */
static int own_lost(hl_wthread *t)
{
    return t->n_own > 0 && (rd_kafka_assignment_lost(t->ctx->consumer) ||
                            hl_member_gone(t->ctx));
}

/* A stop that finds the assignment lost, before or while it waits for
 * the lists or the final changelog flushes: the shards go as a lost
 * release lets them go (release), nothing more published, nothing in the
 * air waited for, no more snapshots, and the producer purged: the flush
 * on the way out would send what it holds, lists and changelog rows,
 * after the new owner's. Not noted unsaved: nothing of ours was left to
 * save. */
static void stop_lost(hl_wthread *t)
{
    uint64_t purged = hl_producer_purge(t->ctx->prod);
    hl_log(HL_LOG_WARN, "stop_lost", "thread=%d partitions=%d batches_in_flight=%d "
           "records_purged=%llu action=\"nothing more published or waited for, no more "
           "snapshots: another member owns them already; unsent records purged\"", t->id,
           t->n_own, t->fl_n, (unsigned long long)purged);
}

/* A graceful stop: every held-back list out, every list delivered, then a
 * snapshot of each shard, all within one deadline (N shards never take N
 * times shutdown.timeout.ms). A shard left unsaved (its snapshot failed,
 * or lists never got delivered, so none was attempted) is noted. Lost
 * shards are let go instead (stop_lost); the drain stops waiting once
 * they are (flight.c, stop_overdue). */
static void stop_gracefully(hl_wthread *t)
{
    if (!own_lost(t))
        hl_publish_pending(t, t->own, t->n_own, 0);
    int drained = hl_flight_drain(t, 0);
    if (own_lost(t)) {
        stop_lost(t);
        return;
    }
    if (!drained) {
        for (int i = 0; i < t->n_own; i++)
            if (hl_shard_unsaved(t->own[i]))
                note_unsaved(t, t->own[i]);
        return;
    }
    int64_t deadline = atomic_load(&t->ctx->stop_deadline_ms);
    for (int i = 0; i < t->n_own; i++) {
        int rc = hl_shard_snapshot_now(t->own[i], deadline);
        if (own_lost(t)) {      /* a changelog flush stops waiting then */
            stop_lost(t);
            return;
        }
        if (rc != 0)
            note_unsaved(t, t->own[i]);
    }
}

#define FLIGHT_WAIT_MS 100

static void *thread_main(void *arg)
{
    hl_wthread *t = arg;
    hl_wshared *ctx = t->ctx;
    /* Inherited from the starting thread's worker.io.slice.us: a refresh
     * is what the short slices are meant to preempt (worker_start.c). */
    if (ctx->o->io_slice_us > 0)
        hl_slice_set_us(0);
    while (atomic_load(ctx->stop) == 0) {
        serve_mail(t, 1);
        if (model_sync(t, 1) != 0)
            break;
        /* No batch while every flight is in the air (backpressure), but
         * the mailbox is looked at again within FLIGHT_WAIT_MS. */
        int n = hl_flight_slot_free(t, FLIGHT_WAIT_MS) ? hl_batch_consume(t) : 0;
        serve_mail(t, 0);       /* shards given during the wait own these records */
        if (model_sync(t, 0) != 0) {
            for (int i = 0; i < n; i++)
                rd_kafka_message_destroy(t->msgs[i]);
            break;
        }
        if (n > 0)
            hl_batch_run(t, n);
        else
            hl_publish_overdue(t);
        hl_producer_poll(ctx->prod, 0);
        hl_flight_retire(t);
        swap_tick(t);
        snapshot_tick(t);
    }
    if (atomic_load(ctx->stop) == 1)
        stop_gracefully(t);
    pthread_mutex_lock(&t->mu);
    t->exited = 1;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

int hl_wthread_start(hl_wthread *t, char *errbuf, size_t errlen)
{
    if (pthread_create(&t->tid, NULL, thread_main, t) != 0)
        return hl_err(errbuf, errlen, HL_EIO, "thread %d: pthread_create failed", t->id);
    t->started = 1;
    return 0;
}

void hl_wthread_join(hl_wthread *t)
{
    if (t->started) {
        pthread_join(t->tid, NULL);
        t->started = 0;
    }
}
