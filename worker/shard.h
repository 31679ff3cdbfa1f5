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
#include "snapshot.h"

#include <stdatomic.h>

typedef struct hl_shard_series {
    hl_counter *consumed;       /* halflife_events_consumed_total{partition} */
    hl_gauge   *users;          /* halflife_users{partition} */
    hl_gauge   *state_bytes;    /* halflife_state_bytes{partition} */
    hl_gauge   *snap_bytes;     /* halflife_snapshot_bytes{partition} */
    hl_gauge   *snap_success;   /* halflife_snapshot_last_success_timestamp_seconds{partition} */
} hl_shard_series;

/* Where and how shards write snapshots; shared, read-only. */
typedef struct hl_snap_cfg {
    const char   *dir;           /* snapshot.dir */
    const char   *topic;         /* the input topic: part of the file name */
    uint64_t      fingerprint;   /* the model's */
    int           retain;        /* snapshot.retain */
    int64_t       interval_ms;   /* snapshot.interval.ms; 0: only on revoke/stop */
    hl_histogram *duration;      /* halflife_snapshot_duration_seconds, may be NULL */
} hl_snap_cfg;

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
     * processed, -1 before any); snap_offset is the next_offset of the
     * newest snapshot written or restored (-1 none). */
    int64_t     next_offset, snap_offset;
    hl_snapshot_writer *snap;        /* an incremental snapshot in progress */
    int64_t     snap_begin_offset;
    double      snap_t0;             /* monotonic seconds at begin */
    int64_t     snap_due_ms;         /* monotonic ms of the next periodic one */
    uint64_t    evicted_mass_seen, evicted_capacity_seen;
    hl_shard_series series;
} hl_shard;

/* Creates a shard for partition with room for cap_ev events per batch:
 * around tbl if not NULL (ownership moves, restored from a snapshot whose
 * next offset is snap_offset), else with an empty table. reg may be NULL
 * (no per-partition series). On failure tbl is destroyed. */
hl_shard *hl_shard_create(int32_t partition, const hl_table_opts *o, hl_table *tbl,
                          int64_t snap_offset, int cap_ev, hl_metrics *reg,
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
    sh->n_seen++;
    if (offset + 1 > sh->batch_next_offset) {
        sh->batch_next_offset = offset + 1;
        sh->batch_newest_off = offset;
    }
}

/* Applies the batch's events to the table (hl_table_apply, in order),
 * counts applied/duplicate/failed (also into *n_dup and *n_failed) and
 * returns the number applied. */
int hl_shard_apply(hl_shard *sh, const hl_model *m, int *n_dup, int *n_failed);

/* Refreshes the users/state_bytes gauges and the eviction counters from the
 * table's stats. evictions is {mass, capacity} or NULL. */
void hl_shard_publish_stats(hl_shard *sh, hl_counter *const evictions[2]);

/* Starts an incremental snapshot at the shard's next_offset. Owner thread,
 * between batches, with the batch's lists delivered. HL_EINVAL if one runs
 * already or nothing was consumed since the last. */
int hl_shard_snap_begin(hl_shard *sh, const hl_snap_cfg *c, char *errbuf, size_t errlen);

/* Writes up to budget_rows more rows of the running snapshot; commits it
 * when all are out. 1 when committed (or none runs), 0 if more remain, or
 * a negative HL_E* (the snapshot is abandoned; older files are intact). */
int hl_shard_snap_step(hl_shard *sh, const hl_snap_cfg *c, size_t budget_rows,
                       char *errbuf, size_t errlen);

/* Abandons a running snapshot, then writes a complete one now unless the
 * newest already holds next_offset. 0 or a negative HL_E*. */
int hl_shard_snap_now(hl_shard *sh, const hl_snap_cfg *c, char *errbuf, size_t errlen);

/* 1 if the state changed since the newest snapshot. */
static inline int hl_shard_snap_stale(const hl_shard *sh)
{
    return sh->next_offset >= 0 && sh->next_offset != sh->snap_offset;
}

#endif
