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
 * Owner thread only. */
#include "thread_internal.h"

#include <stdlib.h>

int hl_flight_alloc(hl_wthread *t, char *errbuf, size_t errlen)
{
    size_t bm = (size_t)t->ctx->o->batch_max_messages;
    for (int i = 0; i < N_FLIGHTS; i++)
        if ((t->fl[i].ts_ms = malloc(bm * sizeof(int64_t))) == NULL)
            return hl_err(errbuf, errlen, HL_ENOMEM, "thread %d: out of memory", t->id);
    return 0;
}

void hl_flight_free(hl_wthread *t)
{
    for (int i = 0; i < N_FLIGHTS; i++) {
        free(t->fl[i].ts_ms);
        if (t->fl[i].offs)
            rd_kafka_topic_partition_list_destroy(t->fl[i].offs);
    }
}

/* Event-to-publish: from each event's Kafka timestamp to now, when the list
 * it changed is known delivered. */
static void observe_latency(hl_wthread *t, const flight *f)
{
    int64_t now = hl_now_wall_ms();
    for (int i = 0; i < f->n_ts; i++) {
        double d = (double)(now - f->ts_ms[i]);
        hl_histogram_observe(t->ctx->mx.e2p, d > 0 ? d / 1000.0 : 0.0);
    }
}

static void retire_one(hl_wthread *t, flight *f)
{
    hl_wshared *ctx = t->ctx;
    for (int i = 0; i < f->offs->cnt; i++) {
        hl_shard *sh = hl_wthread_shard_of(t, f->offs->elems[i].partition);
        if (sh != NULL)
            sh->delivered_offset = f->offs->elems[i].offset;
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
}

void hl_flight_retire(hl_wthread *t)
{
    while (t->fl_n > 0 && hl_ticket_done(&t->fl[t->fl_head].t)) {
        retire_one(t, &t->fl[t->fl_head]);
        t->fl_head = (t->fl_head + 1) % N_FLIGHTS;
        t->fl_n--;
    }
}

/* Waits for every flight (polling the producer). 0 if told to stop now, or
 * when stopping and shutdown.timeout.ms has run out (the broker is away):
 * the undelivered batches' offsets are then not stored, so they are read
 * and published again after a restart. */
int hl_flight_drain(hl_wthread *t)
{
    while (t->fl_n > 0) {
        int stop = atomic_load(t->ctx->stop);
        if (stop >= 2 ||
            (stop == 1 && hl_now_mono_ms() > atomic_load(&t->ctx->stop_deadline_ms))) {
            hl_log(HL_LOG_WARN, "drain_abandoned", "thread=%d batches_in_flight=%d",
                   t->id, t->fl_n);
            return 0;
        }
        hl_producer_poll(t->ctx->prod, 1);
        hl_flight_retire(t);
    }
    return 1;
}

/* A new flight at the tail; with all N_FLIGHTS in the air, waits for the
 * oldest to land. */
flight *hl_flight_begin(hl_wthread *t)
{
    while (t->fl_n == N_FLIGHTS && atomic_load(t->ctx->stop) < 2) {
        hl_producer_poll(t->ctx->prod, 1);
        hl_flight_retire(t);
    }
    if (t->fl_n == N_FLIGHTS) {
        /* Stopping at once: the oldest never lands for us. Its offsets are
         * not stored, so a restart reads those events again. */
        rd_kafka_topic_partition_list_destroy(t->fl[t->fl_head].offs);
        t->fl[t->fl_head].offs = NULL;
        t->fl_head = (t->fl_head + 1) % N_FLIGHTS;
        t->fl_n--;
    }
    flight *f = &t->fl[(t->fl_head + t->fl_n) % N_FLIGHTS];
    hl_ticket_reset(&f->t);
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
