/* producer.c - one idempotent librdkafka producer shared by every worker
 * thread, with per-batch delivery tickets.
 *
 * The invariant: a ticket's pending count is raised before a record is
 * handed to librdkafka and lowered only in the delivery report of that
 * record, so pending == 0 means every record of the batch has been
 * acknowledged by the broker (or has definitely failed and been counted).
 * Delivery reports run in whichever thread polls; a delivered record
 * touches only atomics, a failed one also copies its key onto the
 * ticket's keys, if it has them (under their mutex: failures are rare).
 * Every report is also counted on the producer itself (delivered, failed,
 * the first cause), for callers that send without tickets: `halflife
 * produce` and the demo. What to do with a failed record is the caller's
 * decision, and so is what to do once librdkafka declares the producer
 * fatally failed (hl_producer_fatal): this file only reports it. */
#include "producer.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct hl_producer {
    rd_kafka_t   *rk;
    hl_counter   *delivery_errors;
    hl_counter   *purged;       /* purged reports: not delivery errors */
    hl_log_limit  err_limit;
    hl_log_limit  kafka_limit;  /* error events (on_error) */
    atomic_ullong n_delivered, n_failed, n_purged;
    atomic_int    first_err;    /* rd_kafka_resp_err_t; set once, by the first failure */
};

/* A failed record's key onto keys: the rare path, so it may lock and
 * allocate. hv[i] (hv_len[i] bytes, NULL: none) is the value of its
 * header keys->header[i], kept in the same block. */
static void keep_failed_key(hl_ticket_keys *keys, const void *key, size_t len,
                            int32_t partition, const void *const *hv, const size_t *hv_len,
                            rd_kafka_resp_err_t err)
{
    size_t extra = 0;
    for (int i = 0; i < HL_KEY_HEADERS; i++)
        extra += hv[i] != NULL ? hv_len[i] : 0;
    hl_failed_key *k = malloc(sizeof *k + len + extra);
    pthread_mutex_lock(&keys->mu);
    if (k == NULL) {
        keys->lost++;
    } else {
        k->err = err;
        k->partition = partition;
        k->len = len;
        if (len > 0)
            memcpy(k->key, key, len);
        char *at = k->key + len;
        for (int i = 0; i < HL_KEY_HEADERS; i++) {
            k->header[i] = hv[i] != NULL ? at : NULL;
            k->header_len[i] = hv[i] != NULL ? hv_len[i] : 0;
            if (k->header_len[i] > 0)
                memcpy(at, hv[i], hv_len[i]);
            at += k->header_len[i];
        }
        k->next = keys->head;
        keys->head = k;
    }
    pthread_mutex_unlock(&keys->mu);
}

/* The value of header `name` a reported record carries; NULL when none. */
static const void *report_header(const rd_kafka_message_t *rkm, const char *name,
                                 size_t *len)
{
    rd_kafka_headers_t *h;
    const void *v = NULL;
    if (name == NULL || rd_kafka_message_headers(rkm, &h) != 0 ||
        rd_kafka_header_get_last(h, name, &v, len) != 0)
        return NULL;
    return v;
}

/* The value of header `name` among headers (may be NULL); NULL when none. */
static const void *send_header(const hl_header *headers, const char *name, size_t *len)
{
    for (int i = 0; name != NULL && headers != NULL && headers[i].name != NULL; i++)
        if (strcmp(headers[i].name, name) == 0) {
            *len = headers[i].len;
            return headers[i].value;
        }
    return NULL;
}

/* One of t's records reported. done_us is written before the decrement:
 * once pending reads 0 its owner may free or reuse t (the changelog's
 * claim frees it at once), so nothing may touch t after. Each report
 * raises done_us to its own time, so the last one's stands, whichever
 * thread's compare-and-swap comes first. */
static void ticket_report_done(hl_ticket *t)
{
    int64_t now = hl_now_mono_us();
    int64_t cur = atomic_load_explicit(&t->done_us, memory_order_relaxed);
    while (now > cur &&
           !atomic_compare_exchange_weak_explicit(&t->done_us, &cur, now,
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
    atomic_fetch_sub_explicit(&t->pending, 1, memory_order_release);
}

/* A record hl_producer_purge (or settle) took back: nothing refused it. */
static int purged_err(rd_kafka_resp_err_t err)
{
    return err == RD_KAFKA_RESP_ERR__PURGE_QUEUE || err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT;
}

/* A failed report onto its ticket: counted failed (and purged), the
 * first refusal's cause kept, the key kept if the ticket keeps keys. */
static void ticket_failed(hl_ticket *t, const rd_kafka_message_t *rkm, int purged)
{
    atomic_fetch_add(&t->failed, 1);
    if (purged) {
        atomic_fetch_add(&t->purged, 1);
    } else {
        int none = 0;
        atomic_compare_exchange_strong(&t->err, &none, (int)rkm->err);
        if (t->fail_counter)
            hl_counter_add(t->fail_counter, 1);
    }
    if (t->keys) {
        size_t hv_len[HL_KEY_HEADERS] = {0};
        const void *hv[HL_KEY_HEADERS];
        for (int i = 0; i < HL_KEY_HEADERS; i++)
            hv[i] = report_header(rkm, t->keys->header[i], &hv_len[i]);
        keep_failed_key(t->keys, rkm->key, rkm->key_len, rkm->partition, hv, hv_len,
                        rkm->err);
    }
}

/* A failed report. A purge fails every record the producer holds, for
 * every thread, at once: counting and logging those as delivery errors
 * (one delivery_failed line, the errors metric, a DLQ error) told an
 * operator the broker refused what the worker itself took back; the purge's
 * caller logs one line for all of them instead. The ticket still counts
 * them failed and keeps their keys: their owner sends those lists again.
 * A dead-letter copy's refusal is not output the worker failed to
 * publish: counted in delivery_errors it fired the alert on failing lists
 * (HalflifeDeliveryErrors) for bad input, and was said twice (here and by
 * its owner). Its owner counts it (halflife_dlq_errors_total) and says it. */
static void report_failed(hl_producer *p, hl_ticket *t, const rd_kafka_message_t *rkm)
{
    int none = 0, purged = purged_err(rkm->err);
    int dead_letter = t != NULL && t->dead_letter;
    atomic_compare_exchange_strong(&p->first_err, &none, (int)rkm->err);
    atomic_fetch_add(&p->n_failed, 1);
    if (purged) {
        atomic_fetch_add(&p->n_purged, 1);
        if (p->purged)
            hl_counter_add(p->purged, 1);
    } else if (p->delivery_errors && !dead_letter) {
        hl_counter_add(p->delivery_errors, 1);
    }
    if (t)
        ticket_failed(t, rkm, purged);
    uint64_t sup = 0;               /* the limiter is shared by the polling threads */
    if ((purged && t != NULL) || dead_letter)
        return;
    /* A purged record without a ticket has no owner to send it again or
     * say it: said here. That is a stale tombstone's resend (items_stale.c)
     * or a record of `halflife produce` or the demo. A ticket's owner says
     * its own: fold-in items and eviction tombstones are sent again
     * (fold.c, items.c), a bad record's or item update's dead-letter copy
     * is logged as dead_letter_kept (flight.c) or item_dlq_failed
     * (items_dlq.c). */
    if (hl_log_limit_pass(&p->err_limit, &sup))
        hl_log(HL_LOG_WARN, purged ? "record_purged" : "delivery_failed", "topic=%s "
               "err=\"%s\"%s suppressed=%llu", rd_kafka_topic_name(rkm->rkt),
               rd_kafka_err2str(rkm->err), purged ? " action=\"not sent again\"" : "",
               (unsigned long long)sup);
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
    hl_producer *p = opaque;
    hl_ticket *t = rkm->_private;
    if (rkm->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        atomic_fetch_add_explicit(&p->n_delivered, 1, memory_order_relaxed);
        /* Every thread that polls the producer serves reports (shard
         * threads, the main loop, the changelog), and one ticket's message
         * sets can be reported in two of them at once: a compare-and-swap
         * max, so neither lowers what the other raised. */
        if (t && t->ok_counter)
            hl_counter_add(t->ok_counter, 1);   /* before the report is done: see
                                                   ticket_report_done */
        if (t) {
            int64_t cur = atomic_load_explicit(&t->last_offset, memory_order_relaxed);
            while (rkm->offset > cur &&
                   !atomic_compare_exchange_weak_explicit(&t->last_offset, &cur, rkm->offset,
                                                          memory_order_relaxed,
                                                          memory_order_relaxed))
                ;
        }
    } else {
        report_failed(p, t, rkm);
    }
    if (t)
        ticket_report_done(t);
}

/* librdkafka's error events, from whichever thread polls. A fatal one is
 * left to hl_producer_fatal(), which the owner watches (librdkafka logs
 * its own FATAL line too); the others (a broker away, a connection reset)
 * it retries by itself, so a rate-limited warning. Without this callback
 * librdkafka printed them in its own format, and a fatal error reached no
 * one: the owner saw only failed deliveries, retried for ever. */
static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    hl_producer *p = opaque;
    uint64_t sup = 0;
    char q[512];
    (void)rk;
    if (err == RD_KAFKA_RESP_ERR__FATAL)
        return;
    /* The reason can carry a broker's text: quoted. */
    if (hl_log_limit_pass(&p->kafka_limit, &sup))
        hl_log(HL_LOG_WARN, "kafka_error", "client=producer err=%s reason=\"%s\" "
               "suppressed=%llu", rd_kafka_err2name(err),
               hl_log_quote(q, sizeof q, reason, strlen(reason)), (unsigned long long)sup);
}

static int prop_given(const hl_kafka_prop *props, int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (strcmp(props[i].key, key) == 0)
            return 1;
    return 0;
}

/* Consumer-only keys in props are skipped: librdkafka would warn about each. */
static int producer_key(const char *key)
{
    static const char *const consumer_only[] = {
        "group.id", "group.instance.id", "auto.offset.reset", "enable.auto.commit",
        "auto.commit.interval.ms", "enable.auto.offset.store", "session.timeout.ms",
        "heartbeat.interval.ms", "max.poll.interval.ms", "partition.assignment.strategy",
        "queued.min.messages", "queued.max.messages.kbytes", "fetch.wait.max.ms",
        "fetch.min.bytes", "fetch.max.bytes", "fetch.message.max.bytes",
        "isolation.level", "enable.partition.eof", "check.crcs",
    };
    for (size_t i = 0; i < sizeof consumer_only / sizeof consumer_only[0]; i++)
        if (strcmp(key, consumer_only[i]) == 0)
            return 0;
    return 1;
}

hl_producer *hl_producer_create(const hl_kafka_prop *props, int n_props,
                                hl_counter *delivery_errors,
                                char *errbuf, size_t errlen)
{
    static const hl_kafka_prop defaults[] = {
        {"enable.idempotence", "true"},
        /* Not 1: librdkafka 2.0.2's broker thread sleeps out the linger in
         * a poll() whose timeout is rounded up to whole ms, so 1 ms cost a
         * list 1-2 ms before it was even sent; the worker's "deliver"
         * stage p50 was 4.0 ms at 1 and 2.0 at 0 (bench_worker, 1,333
         * events/s, three A/B pairs). Batching still happens where it
         * pays: at high rates, once max.in.flight requests are out, what
         * is produced meanwhile waits and leaves as one set. */
        {"linger.ms", "0"},
        {"message.timeout.ms", "0"}, {"queue.buffering.max.messages", "1000000"},
        /* librdkafka 2.0.2 leaves Nagle on: a small request written while
         * an earlier one is unacknowledged waits for the peer's delayed ACK
         * (up to 40 ms on Linux). The live path is small requests; batching
         * is linger.ms's job. Upstream made this the default in 2.10.0. */
        {"socket.nagle.disable", "true"},
    };
    char why[512];
    hl_producer *p = calloc(1, sizeof *p);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (p == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "producer: out of memory");
        goto fail;
    }
    p->delivery_errors = delivery_errors;
    p->err_limit.interval_ms = 5000;
    p->kafka_limit.interval_ms = 5000;
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++)
        if (!prop_given(props, n_props, defaults[i].key) &&
            hl_kafka_conf_set(conf, defaults[i].key, defaults[i].value, errbuf, errlen) != 0)
            goto fail;
    for (int i = 0; i < n_props; i++)
        if (producer_key(props[i].key) &&
            hl_kafka_conf_set(conf, props[i].key, props[i].value, errbuf, errlen) != 0)
            goto fail;
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_opaque(conf, p);
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof why);
    if (p->rk == NULL) {
        hl_err(errbuf, errlen, HL_EINVAL, "producer: %s", why);
        goto fail;
    }
    return p;                  /* conf is owned and freed by the handle now */
fail:
    rd_kafka_conf_destroy(conf);
    free(p);
    return NULL;
}

void hl_producer_destroy(hl_producer *p, int flush_ms)
{
    if (p == NULL)
        return;
    int in_flight = hl_producer_flush(p, flush_ms);
    if (in_flight > 0)
        hl_log(HL_LOG_WARN, "producer_flush_incomplete", "in_flight=%d", in_flight);
    rd_kafka_destroy(p->rk);
    free(p);
}

rd_kafka_t *hl_producer_handle(hl_producer *p) { return p->rk; }

rd_kafka_resp_err_t hl_producer_fatal(hl_producer *p, char *why, size_t whylen)
{
    /* librdkafka reads an atomic first and locks only once there is one */
    return rd_kafka_fatal_error(p->rk, why, why != NULL ? whylen : 0);
}

static rd_kafka_resp_err_t produce_once(hl_producer *p, const char *topic,
                                        int32_t partition,
                                        const void *key, size_t key_len,
                                        const void *value, size_t value_len,
                                        const hl_header *headers, hl_ticket *ticket)
{
    rd_kafka_headers_t *hdrs = NULL;
    if (headers != NULL) {
        int n = 0;
        while (headers[n].name)
            n++;
        hdrs = rd_kafka_headers_new((size_t)n);
        for (int i = 0; i < n; i++)
            rd_kafka_header_add(hdrs, headers[i].name, -1, headers[i].value,
                                (ssize_t)headers[i].len);
    }
    rd_kafka_resp_err_t err = rd_kafka_producev(
        p->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
        RD_KAFKA_V_KEY(key, key_len), RD_KAFKA_V_VALUE((void *)value, value_len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(ticket),
        RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_END);
    if (err && hdrs)
        rd_kafka_headers_destroy(hdrs);   /* owned by the message only on success */
    return err;
}

int hl_producer_send(hl_producer *p, const char *topic, int32_t partition,
                     const void *key, size_t key_len,
                     const void *value, size_t value_len,
                     const hl_header *headers, hl_ticket *ticket,
                     char *errbuf, size_t errlen)
{
    if (ticket)
        atomic_fetch_add(&ticket->pending, 1);
    for (;;) {
        rd_kafka_resp_err_t err = produce_once(p, topic, partition, key, key_len,
                                               value, value_len, headers, ticket);
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
            return 0;
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            /* Refused at once (a topic librdkafka marked unauthorised, a
             * record over message.max.bytes): for a ticket that keeps
             * keys, a failure like one a report brings. */
            if (ticket && ticket->keys) {
                size_t hv_len[HL_KEY_HEADERS] = {0};
                const void *hv[HL_KEY_HEADERS];
                for (int i = 0; i < HL_KEY_HEADERS; i++)
                    hv[i] = send_header(headers, ticket->keys->header[i], &hv_len[i]);
                keep_failed_key(ticket->keys, key, key_len, partition, hv, hv_len, err);
                atomic_fetch_add(&ticket->failed, 1);
            }
            if (ticket)
                atomic_fetch_sub(&ticket->pending, 1);
            return hl_err(errbuf, errlen, HL_EIO, "produce to %s: %s", topic,
                          rd_kafka_err2str(err));
        }
        rd_kafka_poll(p->rk, 10);   /* make room: serve delivery reports */
    }
}

void hl_producer_poll(hl_producer *p, int timeout_ms)
{
    rd_kafka_poll(p->rk, timeout_ms);
}

int hl_producer_flush(hl_producer *p, int timeout_ms)
{
    rd_kafka_flush(p->rk, timeout_ms);
    return rd_kafka_outq_len(p->rk);
}

int hl_producer_settle(hl_producer *p, int timeout_ms)
{
    int left = hl_producer_flush(p, timeout_ms);
    if (left == 0)
        return 0;
    rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(p->rk, 0);            /* the purged records' reports, now */
    return left;
}

uint64_t hl_producer_purge(hl_producer *p)
{
    uint64_t before = atomic_load(&p->n_purged);
    rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(p->rk, 0);            /* the purged records' reports, now */
    return atomic_load(&p->n_purged) - before;
}

void hl_producer_count_purged(hl_producer *p, hl_counter *purged)
{
    p->purged = purged;
}

void hl_producer_stats_get(hl_producer *p, hl_producer_stats *st)
{
    st->delivered = atomic_load_explicit(&p->n_delivered, memory_order_relaxed);
    st->failed = atomic_load(&p->n_failed);
    st->purged = atomic_load(&p->n_purged);
    st->first_err = (rd_kafka_resp_err_t)atomic_load(&p->first_err);
}

int hl_producer_wait(hl_producer *p, hl_ticket *ticket, int timeout_ms,
                     const atomic_int *stop)
{
    int64_t deadline = hl_now_mono_ms() + timeout_ms;
    while (!hl_ticket_done(ticket)) {
        if (timeout_ms >= 0 && hl_now_mono_ms() >= deadline)
            return 0;
        if (stop && atomic_load(stop) > 1)
            return 0;
        rd_kafka_poll(p->rk, 1);
    }
    return 1;
}

hl_failed_key *hl_ticket_take_failed(hl_ticket *t)
{
    if (atomic_load_explicit(&t->failed, memory_order_relaxed) == 0)
        return NULL;                /* the common case: no lock */
    pthread_mutex_lock(&t->keys->mu);
    hl_failed_key *head = t->keys->head;
    int n = t->keys->lost;
    t->keys->head = NULL;
    t->keys->lost = 0;
    pthread_mutex_unlock(&t->keys->mu);
    for (const hl_failed_key *k = head; k != NULL; k = k->next)
        n++;
    atomic_fetch_sub(&t->failed, n);
    return head;
}

void hl_failed_keys_free(hl_failed_key *k)
{
    while (k != NULL) {
        hl_failed_key *next = k->next;
        free(k);
        k = next;
    }
}

int hl_failed_key_purged(const hl_failed_key *k)
{
    return purged_err(k->err);
}
