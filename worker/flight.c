/* flight.c - the batches whose lists are on their way to the broker.
 *
 * Each batch opens a flight: its lists are produced with the flight's
 * delivery ticket, and the flight remembers each shard's publishable offset
 * after the batch (hl_flight_note_offsets). A flight retires when its
 * ticket reads zero, and flights retire in order (a ring of N_FLIGHTS), so
 * a stored offset never runs ahead of a list that has not reached the
 * broker: that is what makes output at-least-once across a crash. Retiring
 * also observes each event's Kafka-timestamp-to-delivery latency.
 *
 * A flight also holds its batch's bad records until their copies reach the
 * DLQ topic. A copy that fails (refused at once, or its delivery report
 * says so) is written with its headers to the local dead-letter file
 * (deadletter.h, under snapshot.dir) before the flight retires; while that
 * write fails, or the directory has reached deadletter.max.bytes (dl_room), the
 * flight stays, and so does every later one: the input offset never moves
 * past a bad record that is neither in the DLQ topic nor on disk (a stop
 * then abandons the flights, so a restart reads the record again).
 *
 * A list the broker refuses for good (librdkafka gives up on it: topic
 * authorisation, a policy, a record too large; transient errors it retries
 * itself, message.timeout.ms=0) comes back as a failed delivery report with
 * its key, kept on the flight's ticket (producer.c). The flight then does
 * not retire: after a backoff (REFUSED_BACKOFF_MIN_MS doubling to _MAX_MS)
 * publish.c refreshes those users again from their newest state onto the
 * same flight's ticket, and so on until every list of the flight has
 * landed. A flight held so holds every later one (they retire in order),
 * the ring fills and the thread stops consuming: backpressure, seen as
 * lag (it still serves its mailbox: a revocation is answered within
 * shutdown.timeout.ms, hl_flight_slot_free). Errors retrying can never fix (never_fixed) are given up on, user
 * by user, after REFUSED_GIVE_UP attempts, so they cannot wedge the
 * worker; every other error is retried for as long as it lasts, except
 * a producer that failed fatally (every send fails then, for good): the
 * worker stops on it (worker.c), and the drain does not wait for it.
 *
 * Owner thread only. */
#include "thread_internal.h"
#include "deadletter.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REFUSED_BACKOFF_MIN_MS 100
#define REFUSED_BACKOFF_MAX_MS 10000
#define REFUSED_GIVE_UP        5     /* attempts before a never_fixed error is final */

/* The wait after ms (0: none yet): MIN, then doubling up to MAX. */
static int next_backoff_ms(int ms)
{
    return ms == 0 ? REFUSED_BACKOFF_MIN_MS
         : ms * 2 < REFUSED_BACKOFF_MAX_MS ? ms * 2 : REFUSED_BACKOFF_MAX_MS;
}

int hl_flight_alloc(hl_wthread *t, char *errbuf, size_t errlen)
{
    size_t bm = (size_t)t->ctx->o->batch_max_messages;
    const char *sd = t->ctx->o->snapshot_dir;
    size_t dl_len = (sd && sd[0] ? strlen(sd) + 1 : 0) + sizeof HL_DEADLETTER_SUBDIR;
    t->dl_limit.interval_ms = 5000;
    t->dl_kept_limit.interval_ms = 5000;
    t->dlq_failed_limit.interval_ms = 5000;
    t->refused_limit.interval_ms = 5000;
    t->given_up_limit.interval_ms = 5000;
    for (int i = 0; i < N_FLIGHTS; i++)
        pthread_mutex_init(&t->fl[i].keys.mu, NULL);
    if ((t->dl_dir = malloc(dl_len)) == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "thread %d: out of memory", t->id);
    snprintf(t->dl_dir, dl_len, "%s%s%s", sd && sd[0] ? sd : "", sd && sd[0] ? "/" : "",
             HL_DEADLETTER_SUBDIR);
    for (int i = 0; i < N_FLIGHTS; i++)
        if ((t->fl[i].ts_ms = malloc(bm * sizeof(int64_t))) == NULL ||
            (t->fl[i].fetch_us = malloc(bm * sizeof(int64_t))) == NULL)
            return hl_err(errbuf, errlen, HL_ENOMEM, "thread %d: out of memory", t->id);
    return 0;
}

/* Lets go of f's held records (their copies are settled, or the flight is
 * dropped without storing its offsets). */
static void release_dead_letters(flight *f)
{
    while (f->dl != NULL) {
        dead_letter *dl = f->dl;
        f->dl = dl->next;
        rd_kafka_message_destroy(dl->rkm);
        free(dl);
    }
    f->hold = 0;
}

static void free_keys(hl_failed_key *k)
{
    while (k != NULL) {
        hl_failed_key *next = k->next;
        free(k);
        k = next;
    }
}

/* f's failed keys, taken off it (reports may be served by other threads,
 * hence the lock, though none is due once f's ticket reads zero). */
static hl_failed_key *take_keys(flight *f, int *lost)
{
    pthread_mutex_lock(&f->keys.mu);
    hl_failed_key *k = f->keys.head;
    *lost = f->keys.lost;
    f->keys.head = NULL;
    f->keys.lost = 0;
    pthread_mutex_unlock(&f->keys.mu);
    return k;
}

void hl_flight_free(hl_wthread *t)
{
    for (int i = 0; i < N_FLIGHTS; i++) {
        int lost;
        free_keys(take_keys(&t->fl[i], &lost));
        pthread_mutex_destroy(&t->fl[i].keys.mu);
        free(t->fl[i].ts_ms);
        free(t->fl[i].fetch_us);
        if (t->fl[i].offs)
            rd_kafka_topic_partition_list_destroy(t->fl[i].offs);
        release_dead_letters(&t->fl[i]);
    }
    free(t->dl_dir);
}

void hl_flight_dlq_headers(const rd_kafka_message_t *rkm, hl_codec_reason r,
                           dlq_hdr_buf *buf, hl_header h[6])
{
    const char *rn = hl_codec_reason_name(r);
    const char *topic = rd_kafka_topic_name(rkm->rkt);
    snprintf(buf->part, sizeof buf->part, "%d", (int)rkm->partition);
    snprintf(buf->off, sizeof buf->off, "%lld", (long long)rkm->offset);
    h[0] = (hl_header){"halflife.reason", rn, strlen(rn)};
    h[1] = (hl_header){"halflife.source.topic", topic, strlen(topic)};
    h[2] = (hl_header){"halflife.source.partition", buf->part, strlen(buf->part)};
    h[3] = (hl_header){"halflife.source.offset", buf->off, strlen(buf->off)};
    h[4] = (hl_header){NULL, NULL, 0};
    h[5] = (hl_header){NULL, NULL, 0};
}

/* One allocation per bad record: they are the exception, not the batch. */
dead_letter *hl_flight_dead_letter(hl_wthread *t, flight *f)
{
    dead_letter *dl = calloc(1, sizeof *dl);
    if (dl == NULL) {
        int zero = 0;
        f->hold = 1;
        atomic_compare_exchange_strong(t->ctx->stop, &zero, 1);
        hl_log(HL_LOG_ERROR, "dead_letter_out_of_memory", "thread=%d action=\"offsets held; "
               "stopping\"", t->id);
        return NULL;
    }
    hl_ticket_reset(&dl->t);
    dl->t.fail_counter = t->ctx->mx.dlq_errors;
    dl->t.dead_letter = 1;      /* a refusal is counted there and said by keep_one */
    dl->next = f->dl;
    f->dl = dl;
    return dl;
}

/* Why the broker refused dl's copy, in dl->err: the producer does not say
 * a dead-letter copy's refusal (a delivery_failed line was the lists'
 * alert's), so this is where its cause is read. */
static const char *refused_why(dead_letter *dl)
{
    snprintf(dl->err, sizeof dl->err, "delivery failed: %s",
             rd_kafka_err2str((rd_kafka_resp_err_t)atomic_load(&dl->t.err)));
    return dl->err;
}

/* Writes one undelivered copy to the local dead-letter file. 0 once it is
 * durable.
 *
 * The cap: without one (deadletter.max.bytes), bad records written to the
 * input while the DLQ topic refuses copies filled the disk (one file
 * each), and with it the snapshots'. The last record let in may pass the
 * cap: a rule of "only if it fits" held a partition for good on one bad
 * record larger than the cap (or than the room one small record before it
 * left), which anyone able to write to the input could send during an
 * outage. The overshoot is one record, and the consumer takes none above
 * receive.message.max.bytes. The threads share one count (they write one
 * directory): hl_deadletter_reserve. */
static int keep_one(hl_wthread *t, dead_letter *dl)
{
    const rd_kafka_message_t *rkm = dl->rkm;
    char path[PATH_MAX], err[512];
    const char *why = dl->send_failed ? dl->err
                    : atomic_load(&dl->t.purged) > 0
                    ? "purged undelivered when a revocation or a stop let go of undelivered records "
                      "(see event=release_undelivered, release_lost_purged or stop_lost)"
                    : refused_why(dl);
    dlq_hdr_buf hb;
    hl_header h[8];
    hl_flight_dlq_headers(rkm, dl->reason, &hb, h);
    h[4] = (hl_header){"halflife.dlq.topic", t->ctx->dlq_topic, strlen(t->ctx->dlq_topic)};
    h[5] = (hl_header){"halflife.dlq.error", why, strlen(why)};
    h[6] = (hl_header){NULL, NULL, 0};
    int64_t bytes = 0, n = (int64_t)(rkm->key_len + rkm->len);
    int rc = hl_deadletter_reserve(&t->ctx->dl_count, t->dl_dir,
                                   t->ctx->o->deadletter_max_bytes, n, err, sizeof err);
    if (rc == 0) {
        rc = hl_deadletter_write(t->dl_dir, rd_kafka_topic_name(rkm->rkt), rkm->partition,
                                 rkm->offset, h, rkm->key, rkm->key_len, rkm->payload,
                                 rkm->len, path, sizeof path, &bytes, err, sizeof err);
        hl_deadletter_settle(&t->ctx->dl_count, n, rc == 0 ? bytes : -1);
    }
    if (rc != 0) {
        uint64_t sup = 0;
        hl_counter_add(t->ctx->mx.dl_not_kept, 1);
        if (hl_log_limit_pass(&t->dl_limit, &sup))
            hl_log(HL_LOG_ERROR, "dead_letter_not_kept", "partition=%d offset=%lld err=\"%s\" "
                   "action=\"offsets held; retrying\" suppressed=%llu", (int)rkm->partition,
                   (long long)rkm->offset, err, (unsigned long long)sup);
        return rc;
    }
    hl_counter_add(t->ctx->mx.dl_kept, 1);
    /* One per bad record while the DLQ is down: anyone who can write to the
     * input topic could fill the disk with these lines. The files and
     * halflife_dead_letters_kept_total count each one. */
    uint64_t sup = 0;
    if (hl_log_limit_pass(&t->dl_kept_limit, &sup))
        hl_log(HL_LOG_WARN, "dead_letter_kept", "partition=%d offset=%lld reason=%s path=%s "
               "dlq_err=\"%s\" suppressed=%llu", (int)rkm->partition, (long long)rkm->offset,
               hl_codec_reason_name(dl->reason), path, why, (unsigned long long)sup);
    return 0;
}

/* 1 when every bad record of f is in the DLQ topic or on disk: waits for
 * none, writes the failed ones (each once: a kept one is marked). A write
 * that failed (a full or read-only disk) is tried again after a backoff,
 * not at each 1 ms poll of a thread waiting for the flight. */
static int dead_letters_settled(hl_wthread *t, flight *f)
{
    if (f->hold)
        return 0;
    for (dead_letter *dl = f->dl; dl != NULL; dl = dl->next)
        if (!hl_ticket_done(&dl->t))
            return 0;
    int64_t now = hl_now_mono_ms();
    if (now < f->dl_retry_at_ms)
        return 0;
    for (dead_letter *dl = f->dl; dl != NULL; dl = dl->next) {
        if (!dl->send_failed && atomic_load(&dl->t.failed) == 0)
            continue;
        if (keep_one(t, dl) != 0) {
            f->dl_backoff_ms = next_backoff_ms(f->dl_backoff_ms);
            f->dl_retry_at_ms = now + f->dl_backoff_ms;
            return 0;
        }
        dl->send_failed = 0;            /* kept: never written twice */
        atomic_store(&dl->t.failed, 0);
        atomic_store(&dl->t.purged, 0);
    }
    return 1;
}

/* 1 for a refusal retrying can never fix: the same list (a fresh refresh
 * is the same size and shape) meets the same limit or validation until an
 * operator changes the topic. Everything else (authorisation, an unknown
 * or deleted topic, a policy, a local timeout or purge) may pass later. */
static int never_fixed(rd_kafka_resp_err_t err)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT:
    case RD_KAFKA_RESP_ERR__BAD_MSG:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return 1;
    default:
        return 0;
    }
}

/* Logs one list given up on. A line per user, unlimited, let a topic that
 * refuses every list (a max.message.bytes below the lists' size) write one
 * line per user of the partition: the metric counts each, the line names
 * one user and how many lines were left out since the last. */
static void log_given_up(hl_wthread *t, const flight *f, const hl_failed_key *k)
{
    uint64_t sup = 0;
    char q[2 * 256 + 1];        /* quoted: a user id is the input's, any bytes */
    if (hl_log_limit_pass(&t->given_up_limit, &sup))
        hl_log(HL_LOG_ERROR, "list_given_up", "thread=%d user=\"%s\" attempts=%d err=\"%s\" "
               "action=\"not sent again; check the output topic's max.message.bytes and "
               "the broker's log\" suppressed=%llu", t->id,
               hl_log_quote(q, sizeof q, k->key, k->len > 256 ? 256 : k->len),
               f->attempts + 1, rd_kafka_err2str(k->err), (unsigned long long)sup);
}

/* keys without those given up on (after REFUSED_GIVE_UP attempts at a
 * never_fixed error), each counted and logged (rate-limited); lost keys
 * (not copied: out of memory) are given up on at once. */
static hl_failed_key *drop_given_up(hl_wthread *t, flight *f, hl_failed_key *keys, int lost)
{
    hl_failed_key **pp = &keys;
    if (lost > 0) {
        hl_counter_add(t->ctx->mx.given_up, (uint64_t)lost);
        hl_log(HL_LOG_ERROR, "list_given_up", "thread=%d users=%d err=\"out of memory "
               "keeping a refused list's key\" action=\"their next event refreshes them\"",
               t->id, lost);
    }
    while (*pp != NULL) {
        hl_failed_key *k = *pp;
        if (!never_fixed(k->err) || f->attempts < REFUSED_GIVE_UP) {
            pp = &k->next;
            continue;
        }
        *pp = k->next;
        hl_counter_add(t->ctx->mx.given_up, 1);
        log_given_up(t, f, k);
        free(k);
    }
    return keys;
}

/* The first refusal's cause in keys, or 0 when every key was purged. */
static rd_kafka_resp_err_t first_refusal(const hl_failed_key *keys)
{
    for (const hl_failed_key *k = keys; k != NULL; k = k->next)
        if (k->err != RD_KAFKA_RESP_ERR__PURGE_QUEUE &&
            k->err != RD_KAFKA_RESP_ERR__PURGE_INFLIGHT)
            return k->err;
    return RD_KAFKA_RESP_ERR_NO_ERROR;
}

/* One round of f's failed lists sent again, logged; err is the round's
 * first refusal. Lists a purge took back (a release let go of undelivered
 * lists: thread.c logged that once, event=release_undelivered or
 * release_lost_purged) are no
 * refusal: a debug line. */
static void log_refreshed(hl_wthread *t, const flight *f, rd_kafka_resp_err_t err,
                          int failed, int purged, int sent)
{
    uint64_t sup = 0;
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
        hl_log(HL_LOG_DEBUG, "lists_purged_refreshed", "thread=%d purged=%d "
               "refreshed_again=%d", t->id, purged, sent);
    else if (hl_log_limit_pass(&t->refused_limit, &sup))
        hl_log(HL_LOG_WARN, "lists_refused", "thread=%d refused=%d refreshed_again=%d "
               "attempt=%d err=\"%s\" next_backoff_ms=%d action=\"offsets held until "
               "they land; users not owned any more skipped\" suppressed=%llu", t->id,
               failed - purged, sent, f->attempts + 1, rd_kafka_err2str(err),
               next_backoff_ms(f->backoff_ms), (unsigned long long)sup);
}

/* 1 when every list of f has landed. Else, once the backoff has passed,
 * refreshes the users whose list was refused (or purged) again onto f's
 * ticket (so f retires only once those land too) and returns 0. */
static int lists_settled(hl_wthread *t, flight *f)
{
    if (atomic_load(&f->t.failed) == 0)
        return 1;
    int64_t now = hl_now_mono_ms();
    if (f->backoff_ms == 0) {
        f->backoff_ms = next_backoff_ms(0);
        f->retry_at_ms = now + f->backoff_ms;
    }
    if (now < f->retry_at_ms)
        return 0;
    int lost, sent = 0;
    int failed = atomic_exchange(&f->t.failed, 0), purged = atomic_exchange(&f->t.purged, 0);
    hl_failed_key *keys = take_keys(f, &lost);
    keys = drop_given_up(t, f, keys, lost);
    if (keys != NULL)
        sent = hl_publish_again(t, f, keys);
    hl_counter_add(t->ctx->mx.retries, (uint64_t)sent);
    rd_kafka_resp_err_t err = first_refusal(keys);
    if (keys != NULL)
        log_refreshed(t, f, err, failed, purged, sent);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
        f->attempts++;          /* a round of purged lists only is no attempt */
    free_keys(keys);
    f->backoff_ms = next_backoff_ms(f->backoff_ms);
    f->retry_at_ms = now + f->backoff_ms;
    return 0;
}

static double span_s(int64_t from_us, int64_t to_us)
{
    return to_us > from_us ? (double)(to_us - from_us) * 1e-6 : 0.0;
}

/* The live path by stage. Per event: Kafka timestamp -> fetched (the
 * producer's linger, the broker, the fetch), fetched -> batch start, and
 * the worker's own share, fetched -> delivered; the batch's stages after
 * that are shared by its n_ts events, so each is one weighted observation. */
static void observe_stages(hl_wthread *t, const flight *f, int64_t now_us)
{
    hl_histogram **live = t->ctx->mx.live;
    uint64_t n = (uint64_t)f->n_ts;
    for (int i = 0; i < f->n_ts; i++) {
        double q = (double)(f->fetch_us[i] / 1000 + f->wall_off_ms - f->ts_ms[i]);
        hl_histogram_observe(live[LIVE_BROKER], q > 0 ? q / 1000.0 : 0.0);
        hl_histogram_observe(live[LIVE_WAIT], span_s(f->fetch_us[i], f->start_us));
        hl_histogram_observe(t->ctx->mx.worker_share, span_s(f->fetch_us[i], now_us));
    }
    hl_histogram_observe_n(live[LIVE_APPLY], span_s(f->start_us, f->applied_us), n);
    hl_histogram_observe_n(live[LIVE_REFRESH], span_s(f->applied_us, f->refreshed_us), n);
    hl_histogram_observe_n(live[LIVE_PRODUCE], span_s(f->refreshed_us, f->produced_us), n);
    hl_histogram_observe_n(live[LIVE_DELIVER], span_s(f->produced_us, now_us), n);
}

/* When f's lists were in the broker: the time of the delivery report that
 * took its ticket to zero, which may come well before this thread's loop
 * retires f (it may be refreshing the next batch meanwhile). A report
 * before the batch's last send took the ticket to zero only for a while,
 * so then (or before any) it is now. */
static int64_t delivered_us(flight *f, int64_t now_us)
{
    int64_t d = atomic_load_explicit(&f->t.done_us, memory_order_relaxed);
    return d >= f->produced_us && d <= now_us ? d : now_us;
}

/* Event-to-publish: from each event's Kafka timestamp to when the list it
 * changed was delivered; and the same path by stage. */
static void observe_latency(hl_wthread *t, flight *f)
{
    int64_t now_us = hl_now_mono_us(), at_us = delivered_us(f, now_us);
    int64_t at = hl_now_wall_ms() - (now_us - at_us) / 1000;
    for (int i = 0; i < f->n_ts; i++) {
        double d = (double)(at - f->ts_ms[i]);
        hl_histogram_observe(t->ctx->mx.e2p, d > 0 ? d / 1000.0 : 0.0);
    }
    if (f->n_ts > 0)
        observe_stages(t, f, at_us);
}

static void retire_one(hl_wthread *t, flight *f)
{
    hl_wshared *ctx = t->ctx;
    for (int i = 0; i < f->offs->cnt; i++) {
        hl_shard *sh = hl_wthread_shard_of(t, f->offs->elems[i].partition);
        if (sh != NULL)
            sh->delivered_offset = f->offs->elems[i].offset;
        /* state.store=kafka: never past the newest flush the broker holds
         * (changelog.c stores the rest when a flush lands). */
        if (sh != NULL && sh->cl != NULL)
            f->offs->elems[i].offset = hl_changelog_storable(sh->cl, sh->delivered_offset);
        if (f->offs->elems[i].offset < 0)
            rd_kafka_topic_partition_list_del_by_idx(f->offs, i--);
    }
    if (f->offs->cnt > 0) {
        rd_kafka_resp_err_t err = rd_kafka_offsets_store(ctx->consumer, f->offs);
        uint64_t sup;
        /* A partition revoked meanwhile cannot store: its next owner
         * re-reads from the last stored offset, which is safe. */
        if (err && hl_log_limit_pass(&t->err_limit, &sup))
            hl_log(HL_LOG_DEBUG, "offsets_store", "err=\"%s\"", rd_kafka_err2str(err));
    }
    if (ctx->o->recs_enabled)
        observe_latency(t, f);
    rd_kafka_topic_partition_list_destroy(f->offs);
    f->offs = NULL;
    release_dead_letters(f);
}

void hl_flight_retire(hl_wthread *t)
{
    while (t->fl_n > 0 && hl_ticket_done(&t->fl[t->fl_head].t) &&
           dead_letters_settled(t, &t->fl[t->fl_head]) &&
           lists_settled(t, &t->fl[t->fl_head])) {
        retire_one(t, &t->fl[t->fl_head]);
        t->fl_head = (t->fl_head + 1) % N_FLIGHTS;
        t->fl_n--;
    }
    /* The later flights' refused lists go again meanwhile too: a run of
     * refusals then costs one backoff sequence, not one per flight. */
    for (int i = 1; i < t->fl_n; i++) {
        flight *f = &t->fl[(t->fl_head + i) % N_FLIGHTS];
        if (hl_ticket_done(&f->t))
            (void)lists_settled(t, f);
    }
}

/* 1 once this thread should stop waiting for deliveries: told to stop
 * now, or stopping and shutdown.timeout.ms has run out (the broker or an
 * output partition is away) or the producer failed fatally (nothing in
 * the air will land: worker.c stops the worker then) or the assignment
 * is lost (what is in the air must not land: thread.c, stop_lost; the
 * revocation waits for the stop, so the mark stays), or a release's
 * membership is gone (thread.c, hl_wthread_moved). The one deadline
 * for the drain and for a batch waiting for a free flight, so neither
 * outlasts the other. A fatal producer alone, before the stop, is not
 * enough: a batch dropped while the thread goes on consuming could let a
 * later flight without lists store offsets past it. */
static int stop_overdue(hl_wthread *t)
{
    int stop = atomic_load(t->ctx->stop);
    return stop >= 2 || hl_wthread_moved(t) ||
           (stop == 1 && (hl_now_mono_ms() > atomic_load(&t->ctx->stop_deadline_ms) ||
                          hl_producer_fatal(t->ctx->prod, NULL, 0) != 0 ||
                          rd_kafka_assignment_lost(t->ctx->consumer)));
}

/* Waits for every flight (polling the producer). 0 if told to stop now,
 * when stopping and shutdown.timeout.ms has run out (the broker is away),
 * or at until_ms (monotonic; 0: none): the undelivered batches' offsets
 * are then not stored, so they are read and published again after a
 * restart, or by a revoked partition's next owner. */
int hl_flight_drain(hl_wthread *t, int64_t until_ms)
{
    while (t->fl_n > 0) {
        if (stop_overdue(t) || (until_ms > 0 && hl_now_mono_ms() > until_ms)) {
            hl_log(HL_LOG_WARN, "drain_abandoned", "thread=%d batches_in_flight=%d",
                   t->id, t->fl_n);
            return 0;
        }
        hl_producer_poll(t->ctx->prod, 1);
        hl_flight_retire(t);
    }
    return 1;
}

void hl_flight_forget(hl_wthread *t, int32_t partition)
{
    for (int i = 0; i < t->fl_n; i++) {
        flight *f = &t->fl[(t->fl_head + i) % N_FLIGHTS];
        while (f->offs != NULL &&
               rd_kafka_topic_partition_list_del(f->offs, t->ctx->o->input_topic, partition))
            ;
    }
}

/* Backpressure without deafness: with all N_FLIGHTS in the air, the loop
 * reads no batch until one lands, but it must get back to its mailbox
 * meanwhile. A thread that waited for a free flight inside
 * hl_flight_begin, as it once did, never served a posted revocation for as
 * long as the output topic refused its lists, so the group's rebalance
 * hung until max.poll.interval.ms (test_delivery_refused.py, small
 * batches). So this waits at most max_ms, and not at all once mail is
 * posted or the thread must stop; 1 when a batch may be read. */
int hl_flight_slot_free(hl_wthread *t, int max_ms)
{
    if (t->fl_n < N_FLIGHTS)
        return 1;               /* the common case reads no clock */
    int64_t end = hl_now_mono_ms() + max_ms;
    while (t->fl_n == N_FLIGHTS && !atomic_load(&t->mail) && atomic_load(t->ctx->stop) == 0 &&
           hl_now_mono_ms() < end) {
        hl_producer_poll(t->ctx->prod, 1);
        hl_flight_retire(t);
    }
    return t->fl_n < N_FLIGHTS;
}

/* A new flight at the tail; with all N_FLIGHTS in the air, waits for the
 * oldest to land. NULL when that wait ends with no free slot, because the
 * thread must stop (stop_overdue) or at until_ms (monotonic; 0: none; a
 * release's deadline): the caller then publishes nothing and notes no
 * offsets, so those events are read again after a restart, or by the
 * partition's next owner. The flights in the air stay in order and may
 * still retire: a flight given up on here would let a later one store
 * offsets past events whose lists were never delivered (offsets are
 * cumulative). */
flight *hl_flight_begin(hl_wthread *t, int64_t until_ms)
{
    while (t->fl_n == N_FLIGHTS && !stop_overdue(t) &&
           (until_ms == 0 || hl_now_mono_ms() <= until_ms)) {
        hl_producer_poll(t->ctx->prod, 1);
        hl_flight_retire(t);
    }
    if (t->fl_n == N_FLIGHTS) {
        hl_log(HL_LOG_WARN, "delivery_wait_abandoned", "thread=%d batches_in_flight=%d "
               "stop=%d action=\"gave up waiting for deliveries; nothing published in a new "
               "flight, no offset stored past it\"", t->id, t->fl_n, atomic_load(t->ctx->stop));
        return NULL;
    }
    flight *f = &t->fl[(t->fl_head + t->fl_n) % N_FLIGHTS];
    hl_ticket_reset(&f->t);
    /* No report reaches a slot not in the air, so no lock: a retired
     * flight's keys were taken (lists_settled), an abandoned one's may be
     * left. The batch path stays free of locks. */
    free_keys(f->keys.head);
    f->keys.head = NULL;
    f->keys.lost = 0;
    f->t.keys = &f->keys;
    f->attempts = f->backoff_ms = f->dl_backoff_ms = 0;
    f->retry_at_ms = f->dl_retry_at_ms = 0;
    f->offs = rd_kafka_topic_partition_list_new(t->n_own > 0 ? t->n_own : 1);
    f->n_ts = 0;
    t->fl_n++;
    return f;
}

/* Puts each shard's publishable offset (every event below it applied and
 * its list produced, in this flight or an earlier one) into flight f when
 * it moved; it becomes the delivered and stored offset once f and the
 * flights before it are delivered. */
void hl_flight_note_offsets(hl_wthread *t, flight *f)
{
    for (int i = 0; i < t->n_own; i++) {
        hl_shard *sh = t->own[i];
        if (sh->batch_next_offset >= 0)
            sh->next_offset = sh->batch_next_offset;
        int64_t off = hl_shard_publishable_offset(sh);
        if (off <= sh->noted_offset)
            continue;
        rd_kafka_topic_partition_list_add(f->offs, t->ctx->o->input_topic,
                                          sh->partition)->offset = off;
        sh->noted_offset = off;
    }
}
