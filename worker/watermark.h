/* watermark.h - the end offsets of the input partitions, asked of the
 * broker on a thread of their own.
 *
 * librdkafka learns a partition's end only from its fetch answers, so the
 * end in its statistics stops where the fetching stopped: a partition
 * paused while its records wait for their schema (park.c), or one whose
 * queue is full, read the same end for as long as that lasted, and its
 * lag stood still while the backlog grew. The query that asks the broker
 * (ListOffsets) blocks, and librdkafka 2.0.2 has no asynchronous form of
 * it, so it runs here, never on the thread that serves rebalances. */
#ifndef HL_WATERMARK_H
#define HL_WATERMARK_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>

typedef struct hl_watermarks hl_watermarks;   /* opaque */

/* Starts a thread that every interval_ms asks for the ends of topic's
 * partitions last named by hl_watermarks_want, in one call bounded by
 * HL_WATERMARK_QUERY_MS (or interval_ms if shorter). rk is borrowed: call
 * hl_watermarks_stop before it is closed. NULL when out of memory or no
 * thread could start: the lag then comes from the statistics alone. */
hl_watermarks *hl_watermarks_start(rd_kafka_t *rk, const char *topic, int interval_ms);

#define HL_WATERMARK_QUERY_MS 1000

/* Stops and joins the thread (a query under way ends within its bound)
 * and frees everything. NULL is a no-op. */
void hl_watermarks_stop(hl_watermarks *wm);

/* The partitions to ask about from now on (copied); the ends known of any
 * other are forgotten, so an end never outlives the partition's
 * ownership. One thread calls this (the consumer's). Out of memory
 * keeps the previous set. */
void hl_watermarks_want(hl_watermarks *wm, const int32_t *parts, int n);

/* Partition p's end from the last query the broker answered for it since
 * it was wanted, or -1. Under isolation.level=read_committed the broker
 * answers the last stable offset, as the statistics' ls_offset. */
int64_t hl_watermarks_end(hl_watermarks *wm, int32_t p);

#endif
