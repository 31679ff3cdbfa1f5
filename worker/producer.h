/* producer.h - the worker's idempotent Kafka producer (also the one
 * `halflife produce` and the demo send with) and the delivery tickets that
 * tell a batch when all of its records are in the broker.
 *
 * A ticket counts a batch's records still in flight: hl_producer_send()
 * adds one before handing a record to librdkafka, the delivery report takes
 * it away. A batch stores its input offsets only once its ticket reads zero
 * (DESIGN.md section 2: output is at-least-once). Any thread may send and
 * poll; tickets are atomics. */
#ifndef HL_PRODUCER_H
#define HL_PRODUCER_H

#include "hl.h"
#include "kafka_conf.h"
#include "metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <librdkafka/rdkafka.h>

#define HL_KEY_HEADERS 3    /* headers a failed key keeps the values of */

/* A record whose delivery failed, its key copied (the owner of the ticket
 * refreshes that user again: flight.c). One block: free() frees it all. */
typedef struct hl_failed_key {
    struct hl_failed_key *next;
    rd_kafka_resp_err_t   err;
    int32_t               partition;  /* the record's, -1 when none was chosen */
    const char           *header[HL_KEY_HEADERS]; /* the values of the ticket's
                                         keys->header, in this block; NULL when
                                         the record had none */
    size_t                header_len[HL_KEY_HEADERS];
    size_t                len;
    char                  key[];
} hl_failed_key;

/* The failed keys of a ticket. Reports run in whichever thread polls, so
 * a mutex; only a failure takes it (and allocates), the success path never
 * does. lost counts failures whose key could not be copied (out of memory).
 * header (NULL entries: none) names headers whose values each failed key
 * keeps with it, for an owner that sends the record again as it was
 * (items.c: an eviction tombstone names the record it evicts in one) or
 * says which record failed (items_dlq.c: a dead-letter copy's source). */
typedef struct hl_ticket_keys {
    pthread_mutex_t mu;
    hl_failed_key  *head;
    int             lost;
    const char     *header[HL_KEY_HEADERS];
} hl_ticket_keys;

typedef struct hl_ticket {
    atomic_int      pending;      /* records sent and not yet reported */
    atomic_int      failed;       /* records whose delivery failed */
    atomic_int      purged;       /* of those, purged (hl_producer_purge): not
                                     refused, taken back by this process */
    hl_counter     *fail_counter; /* also counts failures, if not NULL */
    hl_counter     *ok_counter;   /* counts delivered records, if not NULL */
    int             dead_letter;  /* 1: dead-letter copies. A refusal is not a
                                     failed delivery of output: counted in
                                     fail_counter (or by the owner), never in
                                     delivery_errors, and said by the owner,
                                     not in a delivery_failed line */
    atomic_int      err;          /* the first refusal a delivery report
                                     brought (a purge is not one); 0 before any */
    hl_ticket_keys *keys;         /* failed records' keys go here, if not NULL */
    _Atomic int64_t last_offset;  /* highest offset delivered, -1 before any
                                     (the changelog's place in its topic) */
    _Atomic int64_t done_us;      /* monotonic time of the latest report, 0
                                     before any: once pending is zero, when the
                                     records were in the broker, not when a
                                     batch loop saw it */
} hl_ticket;

static inline void hl_ticket_reset(hl_ticket *t)
{
    atomic_store(&t->pending, 0);
    atomic_store(&t->failed, 0);
    atomic_store(&t->purged, 0);
    atomic_store(&t->last_offset, -1);
    atomic_store(&t->done_us, 0);
    atomic_store(&t->err, 0);
    t->keys = NULL;
    t->ok_counter = NULL;
    t->dead_letter = 0;
}

static inline int hl_ticket_done(hl_ticket *t)
{
    return atomic_load_explicit(&t->pending, memory_order_acquire) == 0;
}

typedef struct hl_producer hl_producer;   /* opaque */

/* Creates the producer: enable.idempotence=true, linger.ms=1,
 * socket.nagle.disable=true and message.timeout.ms=0 (a list is never given up on: with the broker away
 * the worker waits instead of losing output) unless props say otherwise.
 * props are set in order, so a later key overrides an earlier one;
 * consumer-only keys are skipped. delivery_errors (may be NULL) counts the
 * records refused, but for those of a dead-letter ticket (its dead_letter). */
hl_producer *hl_producer_create(const hl_kafka_prop *props, int n_props,
                                hl_counter *delivery_errors,
                                char *errbuf, size_t errlen);
/* Flushes for at most flush_ms (logging what is still in flight then),
 * then frees. NULL is a no-op. */
void         hl_producer_destroy(hl_producer *p, int flush_ms);

rd_kafka_t  *hl_producer_handle(hl_producer *p);

/* The producer's fatal error, 0 while it has none. librdkafka raises one
 * on an idempotent producer that can no longer keep its guarantees (a
 * sequence out of step with the broker's, a producer id it cannot
 * recover, cluster authorisation refused): from then on nothing it holds
 * is delivered and every send fails at once, for good; only a new handle
 * produces again. Deciding what that means is the owner's (the worker
 * stops, worker.c). why (may be NULL) gets librdkafka's account of the
 * cause. Any thread; an atomic load while there is none. */
rd_kafka_resp_err_t hl_producer_fatal(hl_producer *p, char *why, size_t whylen);

/* Header for DLQ records; NULL name ends a list. */
typedef struct hl_header {
    const char *name;
    const void *value;
    size_t      len;
} hl_header;

/* Sends one record (copied) to topic, counting it on ticket (may be NULL).
 * partition -1 lets the partitioner pick by key. Blocks, polling, while
 * librdkafka's queue is full. headers may be NULL. 0 or HL_EIO with a
 * reason; then, if the ticket keeps keys, the key is on them and the
 * ticket's failed count is raised, as a failed delivery report does. */
int hl_producer_send(hl_producer *p, const char *topic, int32_t partition,
                     const void *key, size_t key_len,
                     const void *value, size_t value_len,
                     const hl_header *headers, hl_ticket *ticket,
                     char *errbuf, size_t errlen);

/* Serves delivery reports for up to timeout_ms. */
void hl_producer_poll(hl_producer *p, int timeout_ms);

/* Waits up to timeout_ms for every record sent to get its delivery report,
 * serving reports meanwhile. Returns how many records and requests are
 * still in flight: 0 means all are reported. */
int  hl_producer_flush(hl_producer *p, int timeout_ms);

/* hl_producer_flush for at most timeout_ms, then every record still
 * unreported is purged and its report (failed) served at once: on return
 * no report is left that could write into a ticket, so the tickets' owners
 * may be freed. Returns how many were purged (counted as purged, as
 * hl_producer_purge says; the caller logs them). For a shutdown: the
 * records are given up on. */
int  hl_producer_settle(hl_producer *p, int timeout_ms);

/* Drops every record librdkafka holds for p, queued or in flight, from
 * every thread: each comes back as a failed delivery report
 * (RD_KAFKA_RESP_ERR__PURGE_QUEUE or _INFLIGHT), served here before the
 * return (any thread may serve some meanwhile), so its ticket's owner
 * decides again what to send (a list is refreshed from its user's newest
 * state, if still owned). Purged reports are told apart from refusals:
 * counted on the ticket's purged too and in the purged counter, never in
 * delivery_errors nor a ticket's fail_counter, and not logged one by one:
 * the caller logs the returned count (the purged reports served during the
 * call, about how many records were taken back); only records sent
 * without a ticket, which nobody sends again, get a rate-limited
 * event=record_purged line. With message.timeout.ms=0
 * nothing else ever takes a record out: without this, a list a release
 * left behind waited for the broker and could land after the partition's
 * next owner's newer ones. A record already on a stalled connection may
 * still reach the broker; librdkafka can no longer tell. Blocks until
 * librdkafka's broker threads have purged. */
uint64_t hl_producer_purge(hl_producer *p);

/* Where purged reports are counted (the worker's
 * halflife_delivery_purged_total); NULL: nowhere. Before the first send. */
void hl_producer_count_purged(hl_producer *p, hl_counter *purged);

/* Delivery reports so far, whether or not the records carried a ticket:
 * what a caller without a metrics registry reports. Any thread. */
typedef struct hl_producer_stats {
    uint64_t            delivered;   /* acknowledged by the broker */
    uint64_t            failed;      /* given up on, purged ones included (those
                                        not purged are counted in delivery_errors) */
    uint64_t            purged;      /* of failed, purged (hl_producer_purge, settle) */
    rd_kafka_resp_err_t first_err;   /* the first failure's cause; 0 if none */
} hl_producer_stats;

void hl_producer_stats_get(hl_producer *p, hl_producer_stats *st);

/* For a ticket that is never waited for (records sent one by one, over a
 * process's life): the keys of its records that failed so far, taken off
 * t->keys (whose owner frees them with hl_failed_keys_free), and its failed
 * count lowered by as many, those lost to out of memory included. NULL,
 * without a lock, while nothing failed. Any thread; reports go on adding
 * meanwhile. */
hl_failed_key *hl_ticket_take_failed(hl_ticket *t);
void           hl_failed_keys_free(hl_failed_key *k);      /* NULL is a no-op */
/* 1 when k's record came back purged (hl_producer_purge, settle). */
int            hl_failed_key_purged(const hl_failed_key *k);

/* Polls until ticket is done or timeout_ms passes (-1: no limit, but stop,
 * if not NULL, is checked each poll). 1 if done. */
int hl_producer_wait(hl_producer *p, hl_ticket *ticket, int timeout_ms,
                     const atomic_int *stop);

#endif
