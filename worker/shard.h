/* shard.h - one assigned input partition inside the worker: its hl_table,
 * the events of the batch in hand, and its counters (DESIGN.md section 6).
 *
 * A shard is owned by exactly one worker thread at a time; ownership moves
 * only through the rebalance hand-over in worker.c, between batches. The
 * struct is visible to the worker's files (not opaque) because the batch
 * loop fills its event array directly; nothing outside worker/ uses it. */
#ifndef HL_SHARD_H
#define HL_SHARD_H

#include "table.h"
#include "model.h"
#include "metrics.h"
#include "persist.h"

#include <stdatomic.h>

typedef struct hl_shard_series {
    hl_counter *consumed;       /* halflife_events_consumed_total{partition} */
    hl_gauge   *users;          /* halflife_users{partition} */
    hl_gauge   *state_bytes;    /* halflife_state_bytes{partition} */
} hl_shard_series;


typedef struct hl_shard {
    int32_t     partition;
    hl_table   *tbl;

    /* The batch in hand: decoded events in partition offset order. User ids
     * point into the owning thread's arena, valid for this batch only. */
    hl_event   *ev;
    int8_t     *status;
    int         n_ev, cap_ev;
    int         n_seen;              /* messages of this batch, valid or not */
    int64_t     batch_next_offset;   /* offset after the newest message of
                                        this batch, -1 if none */
    int64_t     batch_newest_off;    /* offset of that message */

    /* Totals since the shard was created (atomics: /metrics and the final
     * accounting read them from other threads). */
    atomic_ullong consumed, applied, duplicates, invalid, unknown_items, failed;

    /* Offsets: next_offset follows the batches (after the newest message
     * applied, -1 before any); delivered_offset is the one below which
     * every list is delivered and the offset stored (persist.h). */
    int64_t     next_offset, delivered_offset;
    hl_persist_shard *ps;            /* its snapshots; NULL without snapshot.dir */
    int64_t     noted_offset;        /* the last offset handed to a flight */
    int64_t     batch_first_off;     /* offset of this batch's oldest message */
    uint64_t    evicted_mass_seen, evicted_capacity_seen;
    hl_shard_series series;

    /* recs.min.interval.ms (0: off, the fields below stay empty). Kept
     * beside the table, keyed by row id, so the core row does not grow:
     * per row the event time of its last refresh, whether it is pending,
     * and a hash of its user id to tell a reused row id from its old user. */
    int64_t     min_interval_ms;
    struct hl_shard_mark *mark;      uint32_t cap_mark;
    struct hl_shard_due  *heap;      size_t n_heap, cap_heap;   /* by due time */
    struct hl_shard_due  *fifo;      size_t fifo_head, fifo_n, cap_fifo; /* by offset */
} hl_shard;

/* Creates a shard for partition with room for cap_ev events per batch
 * around tbl (ownership moves; on failure tbl is destroyed), restored at
 * restored_offset (-1: an empty table). ps (may be NULL) is the shard's
 * snapshot state, owned from now on. reg may be NULL (no per-partition
 * series). */
hl_shard *hl_shard_create(int32_t partition, hl_table *tbl, int64_t restored_offset,
                          hl_persist_shard *ps, int cap_ev, hl_metrics *reg,
                          char *errbuf, size_t errlen);
void      hl_shard_destroy(hl_shard *sh);            /* NULL is a no-op */

/* Starts a new batch: forgets the previous batch's events. */
void hl_shard_batch_begin(hl_shard *sh);

/* Appends one decoded event; the caller guarantees n_ev < cap_ev (one
 * batch never holds more messages than cap_ev). */
static inline void hl_shard_push(hl_shard *sh, const hl_event *ev)
{
    sh->ev[sh->n_ev++] = *ev;
}

/* Notes that the message at offset was consumed (valid or not), so its
 * offset may be stored once the batch is published. */
static inline void hl_shard_saw(hl_shard *sh, int64_t offset)
{
    if (sh->n_seen++ == 0 || offset < sh->batch_first_off)
        sh->batch_first_off = offset;
    if (offset + 1 > sh->batch_next_offset) {
        sh->batch_next_offset = offset + 1;
        sh->batch_newest_off = offset;
    }
}

/* Applies the batch's events to the table (hl_table_apply, in order),
 * counts applied/duplicate/failed (also into *n_dup and *n_failed) and
 * returns the number applied. */
int hl_shard_apply(hl_shard *sh, const hl_model *m, int *n_dup, int *n_failed);

/* ---- recs.min.interval.ms (owner thread) ------------------------------
 * A user refreshed at event time r (its t_ref_ms then) is refreshed again
 * only once the shard's newest event time reaches r + interval; until then
 * it is pending. A row never refreshed by this shard (new user, restored
 * row, reused row id) is refreshed at once. Lists of pending users are not
 * out yet, so hl_shard_publishable_offset() stays at or below the first
 * offset of the batch that made the oldest of them pending: a snapshot or a
 * stored offset never passes an event whose list was held back. */

/* Sets the interval (0: off) before the shard's first batch. */
void hl_shard_set_min_interval(hl_shard *sh, int64_t interval_ms);

/* For a dirty row taken from the table (v is its view): 1 to refresh it
 * now, 0 when it is (or stays) pending. Grows the side arrays; on no
 * memory it answers 1 (refresh: never hold a list back for lack of room). */
int hl_shard_gate(hl_shard *sh, uint32_t row, const hl_row_view *v, int64_t newest_ms);

/* Moves up to max pending rows whose time has come (due <= newest_ms; every
 * pending row when newest_ms is INT64_MAX: revocation, shutdown) into rows,
 * live rows of their own users only. Call again while it returns max. */
int hl_shard_take_due(hl_shard *sh, uint32_t *rows, int max, int64_t newest_ms);

/* Records that the row's list was produced from a view with t_ref_ms. */
void hl_shard_refreshed(hl_shard *sh, uint32_t row, const hl_row_view *v);

/* min(next_offset, first offset of the oldest pending user's batch): the
 * offset below which every applied event has its list produced. */
int64_t hl_shard_publishable_offset(hl_shard *sh);

/* Refreshes the users/state_bytes gauges and the eviction counters from the
 * table's stats. evictions is {mass, capacity} or NULL. */
void hl_shard_publish_stats(hl_shard *sh, hl_counter *const evictions[2]);

#endif
