/* consumer.h - the worker's librdkafka high-level consumer: its
 * configuration (DESIGN.md sections 7 and 9) and what it reports through
 * librdkafka's statistics and error callbacks.
 *
 * The rebalance decisions themselves (which thread owns a partition) belong
 * to worker.c; this file only builds the handle and reads its reports. */
#ifndef HL_CONSUMER_H
#define HL_CONSUMER_H

#include "producer.h"
#include "metrics.h"

#include <librdkafka/rdkafka.h>

typedef void (*hl_rebalance_fn)(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                                rd_kafka_topic_partition_list_t *parts,
                                void *opaque);

typedef struct hl_consumer_opts {
    const char          *bootstrap;
    const char          *group_id;
    const hl_kafka_prop *kafka;         /* user overrides, applied last */
    int                  n_kafka;
    hl_rebalance_fn      rebalance;
    void                *opaque;        /* passed to rebalance */
    hl_metrics          *reg;           /* may be NULL: no lag/broker metrics */
    const char          *topic;         /* the input topic (for lag) */
    /* 1 if the worker owns partition now (lag is exported for those only:
     * librdkafka's statistics still list a revoked partition). NULL: all.
     * Called with opaque on the thread of hl_consumer_serve. */
    int                (*owns)(void *opaque, int32_t partition);
} hl_consumer_opts;

typedef struct hl_consumer hl_consumer;   /* opaque */

/* Creates the consumer with the worker's defaults (cooperative-sticky,
 * enable.auto.offset.store=false, queued.min.messages=1000000,
 * socket.nagle.disable=true, auto.offset.reset=earliest, statistics every 5 s when reg is set), then
 * the kafka.* overrides. Does not subscribe. */
hl_consumer *hl_consumer_create(const hl_consumer_opts *o, char *errbuf, size_t errlen);
/* Destroys the handle (call hl_consumer_close first). NULL is a no-op.
 * A subscribed cooperative-sticky consumer that never got an assignment is
 * not destroyed but left, closed, to the process exit: librdkafka 2.0.2
 * may abort destroying it (consumer.c, destroy_would_abort). */
void         hl_consumer_destroy(hl_consumer *c);

rd_kafka_t  *hl_consumer_handle(hl_consumer *c);

int  hl_consumer_subscribe(hl_consumer *c, const char *topic, char *errbuf, size_t errlen);

/* Serves rebalances, errors and statistics for up to timeout_ms. A record
 * that reaches the consumer queue (none should: every partition is
 * forwarded to a worker thread) is logged and dropped. Returns 1 once a
 * fatal error was raised, else 0. */
int  hl_consumer_serve(hl_consumer *c, int timeout_ms);

/* Commits the stored offsets synchronously and leaves the group (the
 * final revocation runs the rebalance callback). */
void hl_consumer_close(hl_consumer *c);

/* 1 while some broker is reachable (from the error and stats callbacks). */
int  hl_consumer_broker_up(const hl_consumer *c);

/* The group's state (join 0: "up", "wait-coord", ...) or join state (join
 * 1: "init", "wait-join", "wait-sync", "steady", ...) from librdkafka's last
 * statistics; "unknown" before the first. Call on the thread of
 * hl_consumer_serve. */
const char *hl_consumer_group_state(const hl_consumer *c, int join);

#endif
