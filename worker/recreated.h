/* recreated.h - whether a partition's restored offset says the input
 * topic was deleted and created again under the same name (its offsets
 * start again at 0): the offset lies beyond the partition's end.
 *
 * Left alone, the fetch there is out of range, librdkafka resets it to the
 * log start and the shard drops every record below the restored offset as
 * re-delivered: nothing read, silently, until the new topic outgrew the
 * old one (test_topic_recreated.py). The worker's rebalance callback asks
 * this once per restored partition (worker_rebalance.c).
 *
 * The verdict throws the partition's offsets away (the users are kept, the
 * new topic is read from its start), so one answer is not enough: a broker
 * whose answer lags (a leader that just moved, stale metadata, a broker
 * before KIP-207) can report a high watermark below the true one for a
 * moment. An offset beyond the first answer is asked about again after a
 * short wait, and only two answers beyond it are a recreation. */
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
    int              confirm_ms;    /* wait before a confirming query */
    int              wait_left_ms;  /* what the assignment may still wait in all */
    int              latest;        /* auto.offset.reset=latest */
    int              skip;          /* an unanswered query gave up the assignment's checks */
    int              confirmed;     /* a partition of the assignment was found recreated */
};

/* How long an assignment waits for a partition's watermarks: a broker
 * that does not answer in time leaves the restored offset as it was (the
 * check is skipped and logged), it does not hold the rebalance. */
#define HL_WATERMARK_TIMEOUT_MS 5000

/* The wait before the confirming query: long enough for a leader change
 * to be seen (librdkafka refreshes the metadata of a partition whose
 * leader moved at once), short against a rebalance. An assignment waits
 * HL_WATERMARK_TIMEOUT_MS in all at most, as much as one unanswered query
 * costs: after that, and once one of its partitions is confirmed
 * recreated (the topic is then known to be new), the second query is
 * asked at once. */
#define HL_WATERMARK_CONFIRM_MS 500

/* The broker's answer, waiting up to c->timeout_ms. */
rd_kafka_resp_err_t hl_recreated_query_kafka(const hl_recreated_check *c, int32_t p,
                                             int64_t *low, int64_t *high);

/* A new assignment's checks, asking the broker through rk (none given
 * up yet). A test then replaces c->query. */
void hl_recreated_init(hl_recreated_check *c, rd_kafka_t *rk, const char *topic, int latest);

/* 1 when partition p's restored offset lies beyond the partition's high
 * watermark in two answers a wait apart (*high: the second's): the topic
 * was recreated while the state came from the old one. *start: where the
 * new topic is read from, as auto.offset.reset says (the second answer's).
 * 0 when either answer holds the offset (logged when the second does),
 * for an offset that is not restored (<= 0), or when watermarks cannot be
 * read (logged; a timed-out query also gives up the assignment's later
 * checks, see c->skip). Rebalance callback only. */
int  hl_recreated_check_partition(hl_recreated_check *c, int32_t p, int64_t offset,
                                  int64_t *start, int64_t *high);

#endif
