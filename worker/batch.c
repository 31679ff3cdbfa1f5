/* batch.c - one batch of one shard-owning thread (DESIGN.md section 1):
 * consume up to batch.max.messages or batch.max.ms from the thread's queue,
 * decode each record (a bad one is counted, logged rate-limited and copied
 * with its bytes and reason to the DLQ; the batch's flight holds it until
 * the copy is delivered or kept on disk), group the events by shard in
 * offset order, apply them, then publish (publish.c), sweep each shard for
 * users whose mass has decayed below state.evict.mass (bounded work,
 * shard.c), and note the offsets in the batch's flight (flight.c). What
 * the batch counted goes to the registry once, at its end.
 *
 * Nothing here allocates per batch: the record array, the arena for user
 * ids and the shards' event arrays are sized at create time (STYLE.md
 * section 9); librdkafka's own records and one partition list per flight
 * are the only allocations. */
#include "thread_internal.h"

#include <stdlib.h>
#include <string.h>

int hl_batch_alloc(hl_wthread *t, char *errbuf, size_t errlen)
{
    const hl_worker_opts *o = t->ctx->o;
    size_t bm = (size_t)o->batch_max_messages;
    t->bad_limit.interval_ms = 1000;
    t->err_limit.interval_ms = 5000;
    t->multi_limit.interval_ms = 10000;
    t->arena_cap = bm * HL_MAX_ID_LEN;
    t->msgs = calloc(bm, sizeof *t->msgs);
    t->fetch_us = calloc(bm, sizeof *t->fetch_us);
    t->arena = malloc(t->arena_cap);
    if (t->msgs == NULL || t->fetch_us == NULL || t->arena == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "thread %d: out of memory", t->id);
    if ((t->codec = hl_codec_create(&o->codec, errbuf, errlen)) == NULL)
        return HL_EINVAL;
    if (t->ctx->foldin != NULL)
        return hl_foldin_local_init(t->ctx->foldin, &t->fold, errbuf, errlen);
    return 0;
}

void hl_batch_free(hl_wthread *t)
{
    hl_park_free(t);
    hl_codec_destroy(t->codec);
    hl_foldin_local_reset(&t->fold);
    free(t->msgs);
    free(t->fetch_us);
    free(t->arena);
}

/* Up to batch.max.messages records within batch.max.ms, one
 * rd_kafka_consume_queue() at a time. Not rd_kafka_consume_batch_queue():
 * librdkafka 2.0.x lists it as a known issue (CHANGELOG, v2.0.0) that with
 * more than one message per call and a seek, pause, resume or rebalance in
 * parallel, messages may be lost. The rebalance callback on the main thread
 * pauses the assignment while a shard thread is inside that call; the call
 * moves a partition's application position past records it then purges,
 * and the resume fetches from there. tests/integration/test_rebalance.py
 * lost such records on the partitions a worker kept while it was given
 * another. A single consume moves the position only for the record it
 * returns. rd_kafka_consume_callback_queue() (one lock and clock read per
 * call, each record version-checked as here) was tried and measured: no
 * gain in events/s or worker CPU against this loop (bench_worker, A/B pairs
 * in one run), on a deprecated API, so this loop stays. */
#define CADENCE_DECAY 0.9    /* each older batch weighs 0.9 of the next in the fits */

/* With records in hand and none queued: how long to wait for more
 * (cadence.h decides from the fitted refresh cost and the arrival rate);
 * 0 to refresh now. */
static int cadence_wait_ms(hl_wthread *t, int n, int64_t now_us)
{
    const hl_worker_opts *o = t->ctx->o;
    hl_cadence_in in = {
        .n_taken = n, .max_messages = o->batch_max_messages,
        .age_ms = (double)(now_us - t->fetch_us[0]) / 1000.0, .max_ms = o->batch_max_ms,
        .rate_per_ms = hl_cadence_rate_get(&t->cad_rate),
    };
    hl_cadence_fit_get(&t->cad_fit, &in.a_ms, &in.b_ms);
    double w = hl_cadence_wait_ms(&in);
    return w >= 0.5 ? (int)(w + 0.5) : 0;   /* the queue waits whole ms */
}

/* Before the first record: the rest of batch.max.ms, but at most 1 ms
 * while lists are in flight, so the loop polls the producer and a
 * delivery is seen (and the offsets stored) within about a millisecond
 * rather than after the whole wait (the demo's "deliver" stage: p50
 * 5.4 ms at batch.max.ms=5). */
static int64_t first_wait_ms(const hl_wthread *t, int64_t left)
{
    return t->fl_n > 0 && left > 1 ? 1 : left;
}

/* The rate seen by this batch (records since the previous batch's start). */
static void cadence_note_batch(hl_wthread *t, int n, int64_t start_us)
{
    if (t->cad_last_us > 0)
        hl_cadence_rate_add(&t->cad_rate, n, (double)(start_us - t->cad_last_us) / 1000.0,
                            CADENCE_DECAY);
    t->cad_last_us = start_us;
}

int hl_batch_consume(hl_wthread *t)
{
    int bm = t->ctx->o->batch_max_messages;
    if (t->migrating && bm > t->swap_cap)
        bm = t->swap_cap;               /* bounds what one batch migrates */
    int64_t now_us = hl_now_mono_us(), end = now_us / 1000 + t->ctx->o->batch_max_ms;
    int n = t->n_waits > 0 ? hl_park_take_ready(t, t->msgs, bm) : 0;  /* they come first */
    for (int i = 0; i < n; i++)
        t->fetch_us[i] = now_us;        /* a parked record's wait is the registry's */
    /* batch.max.ms bounds the wait, not the take: while records are queued
     * they are taken without a timeout, so no clock is read per record
     * (a clock read per record showed as 9% of a state-only profile). A
     * record taken at once was fetched by the last clock read, so that is
     * its fetch time; one that was waited for gets a clock of its own. */
    while (n < bm) {
        rd_kafka_message_t *m = rd_kafka_consume_queue(t->q, 0);
        if (m == NULL) {
            /* No record waits: before the first, wait out batch.max.ms (the
             * loop then serves mail and flights); with some in hand, only
             * as long as the cadence rule says more are worth waiting for. */
            now_us = hl_now_mono_us();
            int64_t left = n == 0 ? first_wait_ms(t, end - now_us / 1000)
                                  : cadence_wait_ms(t, n, now_us);
            if (left <= 0 || (m = rd_kafka_consume_queue(t->q, (int)left)) == NULL)
                break;
            now_us = hl_now_mono_us();
        }
        t->fetch_us[n] = now_us;
        t->msgs[n++] = m;
    }
    /* What waits behind this batch: the prefetch this thread holds in
     * memory (halflife_consumer_queued_records). A batch cut short found
     * the queue empty; only a full one pays the queue's lock to ask. */
    atomic_store_explicit(&t->queued, n < bm ? 0 : rd_kafka_queue_length(t->q),
                          memory_order_relaxed);
    return n;
}

/* ---- decode ------------------------------------------------------------ */

/* Copies a bad record to the DLQ with batch f's flight: the record is held
 * (taken from *rkmp) until the copy is delivered or kept on disk
 * (flight.c), so no stored offset passes it before. */
static void send_dlq(hl_wthread *t, rd_kafka_message_t **rkmp, hl_codec_reason r, flight *f)
{
    hl_wshared *ctx = t->ctx;
    rd_kafka_message_t *rkm = *rkmp;
    dlq_hdr_buf hb;
    hl_header h[6];
    dead_letter *dl = hl_flight_dead_letter(t, f);
    if (dl == NULL)
        return;                 /* f is held: its offsets are never stored */
    dl->rkm = rkm;
    dl->reason = r;
    *rkmp = NULL;
    hl_flight_dlq_headers(rkm, r, &hb, h);
    /* counted in halflife_dlq_records_total once delivered: counted here,
     * a copy the broker refused counted as copied and as failed */
    dl->t.ok_counter = ctx->mx.dlq[r];
    if (hl_producer_send(ctx->prod, ctx->dlq_topic, RD_KAFKA_PARTITION_UA,
                         rkm->key, rkm->key_len, rkm->payload, rkm->len, h,
                         &dl->t, dl->err, sizeof dl->err) != 0) {
        uint64_t sup = 0;
        dl->send_failed = 1;
        hl_counter_add(ctx->mx.dlq_errors, 1);
        /* one per bad record while the producer refuses them (a full
         * queue): limited as dead_letter_kept, which follows for each */
        if (hl_log_limit_pass(&t->dlq_failed_limit, &sup))
            hl_log(HL_LOG_WARN, "dlq_failed", "partition=%d offset=%lld reason=%s bytes=%zu "
                   "err=\"%s\" action=\"kept under %s before the offset moves\" "
                   "suppressed=%llu", (int)rkm->partition, (long long)rkm->offset,
                   hl_codec_reason_name(r), rkm->len, dl->err, t->dl_dir,
                   (unsigned long long)sup);
    }
}

static void bad_record(hl_wthread *t, rd_kafka_message_t **rkmp, hl_codec_reason r,
                       const char *detail, flight *f)
{
    const rd_kafka_message_t *rkm = *rkmp;
    uint64_t sup = 0;
    t->b.invalid[r]++;
    if (hl_log_limit_pass(&t->bad_limit, &sup))
        hl_log(HL_LOG_WARN, "bad_record",
               "partition=%d offset=%lld reason=%s detail=\"%s\" dlq=%s suppressed=%llu",
               (int)rkm->partition, (long long)rkm->offset, hl_codec_reason_name(r),
               detail, t->ctx->dlq_topic ? t->ctx->dlq_topic : "off",
               (unsigned long long)sup);
    if (t->ctx->dlq_topic)
        send_dlq(t, rkmp, r, f);
}

/* A record that carries an error instead of data. A fatal one (idempotence
 * or fencing broken beyond repair) stops the worker at once; the record's
 * own text is generic, rd_kafka_fatal_error() holds the cause. */
static void record_error(hl_wthread *t, const rd_kafka_message_t *rkm)
{
    uint64_t sup = 0;
    if (rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
        return;
    if (rkm->err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(t->ctx->consumer, why, sizeof why);
        atomic_store(t->ctx->stop, 2);
        hl_log(HL_LOG_ERROR, "kafka_fatal", "err=\"%s\" cause=%s reason=\"%s\"",
               rd_kafka_message_errstr(rkm), rd_kafka_err2name(orig),
               orig ? why : "unknown");
        return;
    }
    if (hl_log_limit_pass(&t->err_limit, &sup))
        hl_log(HL_LOG_WARN, "consume_error", "err=\"%s\" suppressed=%llu",
               rd_kafka_message_errstr(rkm), (unsigned long long)sup);
}

/* An event of an item the catalogue added (ev->x its e_in; folded: its
 * record in effect is a fold-in record): an
 * operator's embedding enters the state whole (an encoder's, trusted); a
 * folded item's with catalogue.foldin.e_in.scale of the event's weight,
 * and at 0 not at all, exactly as an item unknown to the model. Both the
 * scale (config) and which record is in effect (the item topic) are the
 * same on every worker and on a replay after a crash. */
static void weigh_added(hl_wthread *t, hl_event *ev, int folded)
{
    float s = folded ? t->ctx->o->catalogue_foldin_e_in_scale : 1.0f;
    if (s <= 0.0f) {
        ev->x = NULL;
        return;
    }
    ev->item = HL_ITEM_ADDED;
    ev->w *= s;
}

static void decode_one(hl_wthread *t, rd_kafka_message_t **rkmp, int64_t fetch_us,
                       flight *f)
{
    rd_kafka_message_t *rkm = *rkmp;
    char detail[160];
    hl_codec_event cev;
    if (rkm->err) {
        record_error(t, rkm);
        return;
    }
    hl_shard *sh = hl_wthread_shard_of(t, rkm->partition);
    if (sh == NULL)
        return;                 /* a partition this thread let go of */
    if (hl_shard_redelivered(sh, rkm->offset))
        return;                 /* counted: its event is in the state already */
    if (t->n_waits > 0 && hl_park_waiting(t, rkm->partition)) {
        hl_park_add(t, rkmp, "behind a record that waits", f);   /* keeps the order */
        return;
    }
    hl_codec_reason r = hl_codec_decode_event(t->codec, rkm->payload ? rkm->payload : "",
                                              rkm->len, &cev, detail, sizeof detail);
    if (r == HL_CODEC_WAIT) {   /* not seen: no stored offset passes it */
        hl_park_add(t, rkmp, detail, f);
        return;
    }
    hl_shard_saw(sh, rkm->offset);
    if (r != HL_CODEC_OK) {
        bad_record(t, rkmp, r, detail, f);
        return;
    }
    hl_event ev = {
        .user = t->arena + t->arena_used, .user_len = cev.user_len,
        .item = hl_model_item_find(t->mref->m, cev.item, cev.item_len),
        .item_key = hl_item_key(cev.item, cev.item_len),
        .type = (uint8_t)cev.type, .w = t->mref->tw[cev.type] * cev.weight,
        .ts_ms = cev.ts_ms, .offset = rkm->offset,
    };
    float w = ev.w;         /* what fold-in learns from: the whole event */
    int32_t added = -1;
    int folded = 0;         /* its record in effect is a fold-in record */
    if (ev.item < 0 &&      /* an item the live catalogue added: its e_in */
        (added = hl_items_local_added(&t->cat, ev.item_key, &ev.x)) >= 0) {
        folded = hl_items_local_folded(&t->cat, added);
        weigh_added(t, &ev, folded);
    }
    memcpy(t->arena + t->arena_used, cev.user, cev.user_len);
    t->arena_used += cev.user_len;
    t->b.unknown += ev.item < 0 && ev.x == NULL;
    hl_shard_push(sh, &ev);
    /* Fold-in learns the items the model does not know, and goes on
     * learning the folded ones (a record at each doubling), but not an
     * operator's: its embedding is in effect, no fold-in record would go
     * out for it, and its users are not the lift's baseline. An event of
     * weight 0 adds nothing and is no interaction (catalogue.foldin.min.events). */
    if (ev.item < 0 && t->ctx->foldin != NULL && (added < 0 || folded) && w > 0)
        hl_foldin_local_note(&t->fold, sh, sh->n_ev - 1, cev.item, cev.item_len, w);
    f->fetch_us[f->n_ts] = fetch_us;
    f->ts_ms[f->n_ts++] = rd_kafka_message_timestamp(rkm, NULL);
}

/* ---- counters ---------------------------------------------------------- */

/* Records the consumer jumped over: on a non-transactional topic they
 * were deleted by retention before this worker read them (the embedded
 * broker keeps 5 MiB per partition), so they are lost to the state. */
static void report_skipped(hl_wthread *t, const hl_shard *sh)
{
    uint64_t sup = 0;
    hl_counter_add(t->ctx->mx.skipped, (uint64_t)sh->skipped);
    if (hl_log_limit_pass(&t->err_limit, &sup))
        hl_log(HL_LOG_WARN, "input_offsets_skipped", "partition=%d from=%lld records=%lld "
               "reason=\"never received: deleted by retention before they were read (the "
               "worker lags too far), or transaction markers\" suppressed=%llu",
               (int)sh->partition, (long long)sh->skip_first, (long long)sh->skipped,
               (unsigned long long)sup);
}

/* Records the consumer handed over twice (shard.h, hl_shard_redelivered):
 * dropped, so nothing is consumed or applied twice; counted, and logged.
 * The one known source is librdkafka 2.0.2 (README, "Rebalance and
 * librdkafka 2.0.2"); any other is a bug of ours that reorders a
 * partition's records (park.c once did), and the log says so. */
static void report_redelivered(hl_wthread *t, const hl_shard *sh)
{
    uint64_t sup = 0;
    hl_counter_add(t->ctx->mx.redelivered, (uint64_t)sh->redelivered);
    if (hl_log_limit_pass(&t->err_limit, &sup))
        hl_log(HL_LOG_WARN, "input_redelivered", "partition=%d from=%lld records=%lld "
               "reason=\"below the partition's position: fetched again (librdkafka 2.0.2 "
               "does after a rebalance pauses a partition; with no rebalance, report it as "
               "a bug); dropped\" suppressed=%llu",
               (int)sh->partition, (long long)sh->redeliver_first, (long long)sh->redelivered,
               (unsigned long long)sup);
}

/* The batch's counts into the registry: one add per series per batch. */
static void count_batch(hl_wthread *t, int n_msgs)
{
    hl_wshared *ctx = t->ctx;
    for (int i = 0; i < t->n_own; i++) {
        hl_shard *sh = t->own[i];
        if (sh->n_seen)
            hl_counter_add(sh->series.consumed, (uint64_t)sh->n_seen);
        if (sh->skipped > 0)
            report_skipped(t, sh);
        if (sh->redelivered > 0)
            report_redelivered(t, sh);
        hl_shard_publish_stats(sh, ctx->mx.evictions);
    }
    for (int r = 1; r < HL_CODEC_N_REASONS; r++)
        if (t->b.invalid[r])
            hl_counter_add(ctx->mx.invalid[r], t->b.invalid[r]);
    hl_counter_add(ctx->mx.applied, t->b.applied);
    hl_counter_add(ctx->mx.duplicates, t->b.duplicates);
    hl_counter_add(ctx->mx.failed, t->b.failed);
    if (t->b.multipart)
        hl_counter_add(ctx->mx.multipart, t->b.multipart);
    hl_counter_add(ctx->mx.unknown, t->b.unknown);
    hl_counter_add(ctx->mx.lists, t->b.lists);
    hl_counter_add(ctx->mx.batches, 1);
    hl_histogram_observe(ctx->mx.batch_size, n_msgs);
    for (int s = 0; s < N_STAGES; s++)
        hl_histogram_observe(ctx->mx.stage[s], t->b.stage_s[s]);
}

/* ---- one batch --------------------------------------------------------- */

static void batch_begin(hl_wthread *t)
{
    for (int i = 0; i < t->n_own; i++)
        hl_shard_batch_begin(t->own[i]);
    t->arena_used = 0;
    memset(&t->b, 0, sizeof t->b);
    /* The thread's first batch holds no view yet (it takes one at each
     * boundary): without this its events of added items would enter states
     * as unknown ones, though the worker read the item topic before it
     * reported ready, and a replay after a crash would differ from the run. */
    if (t->ctx->items != NULL && t->cat.ref == NULL)
        hl_items_local_update(t->ctx->items, &t->cat, t->ranker, t->mref->gen);
}

/* Events the table's mass guard refused (status HL_ERANGE: they would
 * have made a user's state non-finite) get their own series as well as
 * failed. The line shares err_limit with consume
 * errors, not bad_limit: a burst of bad records (the likely neighbours of
 * a huge weight) would otherwise hide it. */
static void count_non_finite(hl_wthread *t, const hl_shard *sh)
{
    uint64_t n = 0, sup = 0;
    for (int i = 0; i < sh->n_ev; i++)
        n += sh->status[i] == HL_ERANGE;
    if (n == 0)
        return;
    hl_counter_add(t->ctx->mx.non_finite, n);
    if (hl_log_limit_pass(&t->err_limit, &sup))
        hl_log(HL_LOG_WARN, "non_finite_refused", "partition=%d events=%llu suppressed=%llu",
               (int)sh->partition, (unsigned long long)n, (unsigned long long)sup);
}

/* DESIGN.md section 2: a user seen in two partitions is counted and
 * reported. Only the users the batch inserted are checked (status 2), so
 * the cost is one map probe per new user, not per event (multipart.h
 * states the odds of a false or missed report). */
static void check_new_users(hl_wthread *t, hl_shard *sh)
{
    for (int i = 0; i < sh->n_ev; i++) {
        if (sh->status[i] != 2)
            continue;
        const hl_event *e = &sh->ev[i];
        int32_t other = hl_multipart_note(t->ctx->multipart, e->user, e->user_len,
                                          sh->partition);
        if (other < 0)
            continue;
        uint64_t sup = 0;
        char q[160];
        t->b.multipart++;
        if (hl_log_limit_pass(&t->multi_limit, &sup))
            hl_log(HL_LOG_WARN, "user_multi_partition", "user=\"%s\" partition=%d "
                   "other_partition=%d offset=%lld reason=\"events must be keyed by "
                   "user_id; the two states are kept apart\" suppressed=%llu",
                   hl_log_quote(q, sizeof q, e->user, e->user_len < 64 ? e->user_len : 64),
                   (int)sh->partition, (int)other, (long long)e->offset,
                   (unsigned long long)sup);
    }
}

static void apply_all(hl_wthread *t)
{
    for (int i = 0; i < t->n_own; i++) {
        int d = 0, fl = 0;
        t->b.applied += (uint64_t)hl_shard_apply(t->own[i], t->mref->m, &d, &fl);
        t->b.duplicates += (uint64_t)d;
        t->b.failed += (uint64_t)fl;
        if (fl > 0)
            count_non_finite(t, t->own[i]);
        check_new_users(t, t->own[i]);
    }
}

/* The live catalogue at the batch boundary: the stream time moves to the
 * newest event applied, and the lists of this batch are ranked with the
 * newest catalogue view (items.h). */
static void catalogue_boundary(hl_wthread *t)
{
    hl_items *it = t->ctx->items;
    if (it == NULL)
        return;
    for (int i = 0; i < t->n_own; i++) {
        hl_table_meta meta;
        hl_table_meta_get(t->own[i]->tbl, &meta);
        hl_items_saw_ts(it, meta.newest_ts_ms);
    }
    hl_items_local_update(it, &t->cat, t->ranker, t->mref->gen);
}

/* A batch that got no flight (stopping, the deliveries too late): not
 * applied, so no list and no offset of it exists; the records were never
 * stored as consumed, so a restart reads them again. */
static void batch_drop(hl_wthread *t, int n)
{
    for (int i = 0; i < n; i++)
        if (t->msgs[i] != NULL)
            rd_kafka_message_destroy(t->msgs[i]);
}

void hl_batch_run(hl_wthread *t, int n)
{
    flight *f = hl_flight_begin(t, 0);    /* free: the loop read the batch only then */
    if (f == NULL) {
        batch_drop(t, n);
        return;
    }
    batch_begin(t);
    double a = hl_now_mono_s();
    f->start_us = (int64_t)(a * 1e6);
    int64_t wall_ms = hl_now_wall_ms();
    f->wall_off_ms = wall_ms - f->start_us / 1000;
    hl_codec_set_clock(t->codec, wall_ms, t->ctx->o->max_future_ms);
    for (int i = 0; i < n; i++)
        decode_one(t, &t->msgs[i], t->fetch_us[i], f);
    for (int i = 0; i < n; i++)
        if (t->msgs[i] != NULL)         /* NULL: held by f's dead letters */
            rd_kafka_message_destroy(t->msgs[i]);
    double b = hl_now_mono_s();
    apply_all(t);
    if (t->ctx->foldin != NULL)
        hl_foldin_local_resolve(t->ctx->foldin, &t->fold, t->mref->m);
    catalogue_boundary(t);
    t->b.stage_s[STAGE_DECODE] = b - a;
    double c = hl_now_mono_s();
    t->b.stage_s[STAGE_APPLY] = c - b;
    f->applied_us = (int64_t)(c * 1e6);
    for (int i = 0; i < t->n_own; i++) {
        hl_publish_shard(t, t->own[i], f);   /* gives fold-in its users' queries */
        if (t->ctx->foldin != NULL)         /* the rest, while their rows stand */
            hl_foldin_local_fill(t->ctx->foldin, &t->fold, t->own[i], t->ranker);
        hl_shard_sweep(t->own[i]);  /* after publishing: every touched user has its list */
    }
    /* Refreshes and sends interleave by chunk: "refreshed" is the batch's
     * scoring time after it was applied, "produced" the end of it all. */
    f->refreshed_us = f->applied_us + (int64_t)(t->b.stage_s[STAGE_REFRESH] * 1e6);
    f->produced_us = hl_now_mono_us();
    if (t->ctx->foldin != NULL)     /* after the lists: they never wait for its lock */
        hl_foldin_local_flush(t->ctx->foldin, &t->fold);
    cadence_note_batch(t, n, f->start_us);
    hl_cadence_fit_add(&t->cad_fit, n, (double)(f->produced_us - f->start_us) / 1000.0,
                       CADENCE_DECAY);
    hl_flight_note_offsets(t, f);
    count_batch(t, n);
}
