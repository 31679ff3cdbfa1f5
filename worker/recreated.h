/* recreated.h - whether a partition's restored offset says the input
 * topic was deleted and created again under the same name (its offsets
 * start again at 0): the offset lies beyond the partition's end.
 *
 * Left alone, the fetch there is out of range, librdkafka resets it to the
 * log start and the shard drops every record below the restored offset as
 * re-delivered: nothing read, silently, until the new topic outgrew the
 * old one (test_topic_recreated.py). The worker's rebalance callback asks
 * this once per restored partition (worker_rebalance.c). */
#ifndef HL_RECREATED_H
#define HL_RECREATED_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>

typedef struct hl_recreated_check hl_recreated_check;

/* rd_kafka_query_watermark_offsets for partition p of the input topic
 * (hl_recreated_query_kafka); a test answers from a script instead, as a
 * broker whose answer lags cannot be made on demand. */
typedef rd_kafka_resp_err_t (*hl_watermarks_fn)(const hl_recreated_check *c, int32_t p,
                                                int64_t *low, int64_t *high);

struct hl_recreated_check {
    hl_watermarks_fn query;
    rd_kafka_t      *rk;            /* for hl_recreated_query_kafka */
    const char      *topic;         /* the input topic, borrowed */
    void            *arg;           /* for another query */
    int              timeout_ms;    /* one query's */
    int              latest;        /* auto.offset.reset=latest */
    int              skip;          /* an unanswered query gave up the assignment's checks */
};

/* How long an assignment waits for a partition's watermarks: a broker
 * that does not answer in time leaves the restored offset as it was (the
 * check is skipped and logged), it does not hold the rebalance. */
#define HL_WATERMARK_TIMEOUT_MS 5000

/* The broker's answer, waiting up to c->timeout_ms. */
rd_kafka_resp_err_t hl_recreated_query_kafka(const hl_recreated_check *c, int32_t p,
                                             int64_t *low, int64_t *high);

/* A new assignment's checks, asking the broker through rk (none given
 * up yet). A test then replaces c->query. */
void hl_recreated_init(hl_recreated_check *c, rd_kafka_t *rk, const char *topic, int latest);

/* 1 when partition p's restored offset lies beyond the partition's high
 * watermark (*high): the topic was recreated while the state came from
 * the old one. *start: where the new topic is read from, as
 * auto.offset.reset says. 0 for an offset that is not restored (<= 0) or
 * watermarks that cannot be read (logged; a timed-out query also gives up
 * the assignment's later checks, see c->skip). Rebalance callback only. */
int  hl_recreated_check_partition(hl_recreated_check *c, int32_t p, int64_t offset,
                                  int64_t *start, int64_t *high);

#endif
