/* shard.h - one assigned input partition inside the worker: its hl_table,
 * the events of the batch in hand, its offsets, its snapshots and its
 * recs.min.interval.ms gate (DESIGN.md section 6).
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
#include "gate.h"
#include "models.h"
#include "changelog.h"
#include "log.h"

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
    uint32_t   *row;                 /* the row each event was applied to, or
                                        HL_TABLE_NO_ROW (hl_table_apply_rows) */
    int         n_ev, cap_ev;
    int         n_seen;              /* messages of this batch, valid or not */
    int64_t     batch_next_offset;   /* offset after the newest message of
                                        this batch, -1 if none */
    int64_t     batch_newest_off;    /* offset of that message */
    int64_t     skipped;             /* offsets this batch jumped over (never
                                        received: retention deleted them
                                        before they were read, or transaction
                                        markers); the first gap's start */
    int64_t     skip_first;
    int64_t     redelivered;         /* records of this batch below the
                                        position: delivered again by the
                                        consumer, dropped; the first one's
                                        offset */
    int64_t     redeliver_first;

    /* Offsets: next_offset follows the batches (after the newest message
     * applied, -1 before any); delivered_offset is the one below which
     * every list is delivered and the offset stored (persist.h). */
    int64_t     next_offset, delivered_offset;
    hl_persist_shard *ps;            /* its snapshots; NULL without snapshot.dir */
    hl_changelog_shard *cl;          /* state.store=kafka: its changelog flushes
                                        (set after create, owned); else NULL */
    int64_t     noted_offset;        /* the last offset handed to a flight */
    int64_t     batch_first_off;     /* offset of this batch's oldest message */
    uint64_t    evicted_mass_seen, evicted_capacity_seen;
    hl_shard_series series;
    hl_log_limit wait_limit, wait_over_limit;  /* park.c: its schema_wait lines */

    hl_gate    *gate;                /* recs.min.interval.ms; NULL when 0 */

    /* The model its rows are in (a reference), and while they move into
     * it (swap.c) the one they come from: a row the table calls stale is
     * still in mig_from's space. */
    hl_mref    *mref;
    hl_mref    *mig_from;            /* NULL: no migration running */
    const hl_migration *mig;         /* mref's from_prev or a skip map
                                        (hl_mref_migration), or mig_own */
    hl_migration *mig_own;           /* fitted on this thread: no map from
                                        mig_from was fitted when mref went
                                        live (counted in c_fits) */
    float      *mig_scratch;         /* 2 HL_MIG_CHUNK n_heads dim floats */
    hl_row_edit *mig_edit;           /* rows queued for one hl_migration_rows */
    int         mig_n;
    uint32_t    mig_cursor;          /* the sweep's next row id */
    uint64_t    mig_rows;            /* rows this migration moved */
    int64_t     mig_t0_us;
    int         mig_finished;        /* the sweep passed every row; the old
                                        model is released at the next tick */
    /* What migration costs this shard's thread, in CPU microseconds,
     * measured as it runs (swap.c): they size the sweep's chunks and the
     * records a batch may take, so both fit a time budget, not a row
     * count (a row's cost varies with the load and the ring). */
    double      mig_row_us;          /* a stale row a batch touches */
    double      mig_look_us;         /* a batch event's extra lookup */
    double      mig_sweep_us;        /* a stale row the sweep migrates */
    double      mig_pass_us;         /* a row the sweep passes (not migrating) */
    double      mig_touch_max_us;    /* the longest a batch's migrations took */
    hl_counter *c_migrated;          /* halflife_users_migrated_total */
    hl_counter *c_fits;              /* halflife_model_migration_fits_on_thread_total */
    /* A reshaping migration (the new model has another dim, number of
     * heads or half-lives): tbl is a new table of the new shape and the
     * users not moved yet are in old_tbl, each moved (removed there,
     * restored in tbl) when touched or swept. NULL otherwise. */
    hl_table   *old_tbl;
    hl_gate    *old_gate;            /* recs.min.interval.ms: old_tbl's rows' gate
                                        (their row ids); gate is the new table's,
                                        and a user's schedule moves with it
                                        (hl_gate_carry). NULL otherwise */
    float      *mv_s, *mv_m;         /* one moved row's heads and masses */
    int32_t    *mv_hist;             /* and its ring's items */
    struct hl_swap_prefault *mv_pf;  /* faults the new table's rows in (swap.c) */
} hl_shard;

/* Creates a shard for partition with room for cap_ev events per batch
 * around tbl (ownership moves; on failure tbl is destroyed), restored at
 * restored_offset (-1: an empty table). ps (may be NULL) is the shard's
 * snapshot state, owned from now on. min_interval_ms is
 * recs.min.interval.ms (0: off). Registers the per-partition series in reg. */
hl_shard *hl_shard_create(int32_t partition, hl_table *tbl, int64_t restored_offset,
                          hl_persist_shard *ps, int cap_ev, int64_t min_interval_ms,
                          hl_metrics *reg, char *errbuf, size_t errlen);
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
 * offset may be stored once the batch is published. An offset beyond the
 * one expected (the last seen + 1, or the restored one) is a gap: records
 * this worker never received, counted in skipped. */
static inline void hl_shard_saw(hl_shard *sh, int64_t offset)
{
    int64_t want = sh->batch_next_offset >= 0 ? sh->batch_next_offset : sh->next_offset;
    if (want >= 0 && offset > want) {
        if (sh->skipped == 0)
            sh->skip_first = want;
        sh->skipped += offset - want;
    }
    if (sh->n_seen++ == 0 || offset < sh->batch_first_off)
        sh->batch_first_off = offset;
    if (offset + 1 > sh->batch_next_offset) {
        sh->batch_next_offset = offset + 1;
        sh->batch_newest_off = offset;
    }
}

/* 1 when the record at offset lies below the shard's position (the last
 * offset seen + 1, or the restored one): the consumer handed it over a
 * second time. librdkafka 2.0.2 does that when a rebalance pauses the
 * partitions the worker keeps just as a shard thread takes a record: the
 * pause saves the position from before that record and the resume fetches
 * it again (README.md, "Rebalance and librdkafka 2.0.2"). Such a record is
 * counted in redelivered, not seen, and must be dropped: its event is in
 * the state already (or was counted as bad). A record that waits for its
 * schema is not seen yet, so it passes here when it comes back. */
static inline int hl_shard_redelivered(hl_shard *sh, int64_t offset)
{
    int64_t want = sh->batch_next_offset >= 0 ? sh->batch_next_offset : sh->next_offset;
    if (want < 0 || offset >= want)
        return 0;
    if (sh->redelivered++ == 0)
        sh->redeliver_first = offset;
    return 1;
}

/* Applies the batch's events to the table (hl_table_apply, in order),
 * counts applied/duplicate/failed (also into *n_dup and *n_failed) and
 * returns the number applied. */
int hl_shard_apply(hl_shard *sh, const hl_model *m, int *n_dup, int *n_failed);

/* Mass eviction (state.evict.mass, DESIGN.md section 2) after a batch:
 * examines a bounded number of rows (proportional to the batch's events,
 * so a pass over U users takes about 2U events) and drops those whose mass,
 * decayed to the newest event time the shard has seen, is below the bar in
 * every head. Call it once the batch's lists are produced, so a user the
 * batch touched has its list out before it can go. Owner thread; counted
 * through the table's stats (hl_shard_publish_stats). Returns the users
 * evicted. */
size_t hl_shard_sweep(hl_shard *sh);

/* min(next_offset, the gates' bounds): the offset below which every
 * applied event has its list produced (gate.h). While a reshape moves
 * users the old table's gate bounds those not moved yet. */
static inline int64_t hl_shard_publishable_offset(hl_shard *sh)
{
    return hl_gate_publishable_offset(sh->old_gate,
                                      hl_gate_publishable_offset(sh->gate, sh->next_offset));
}

#define HL_MIG_CHUNK 64               /* rows migrated per SGEMM */
/* Records per batch while a shard of the thread migrates: each stale user
 * a batch touches is migrated before its event (~5-15 us at dim 64, 3
 * heads, history 32, more when the machine is loaded), so a batch takes
 * only as many records as its shards' measured cost per record lets
 * migrate in HL_SWAP_BATCH_BUDGET_US (hl_shard_swap_batch_cap), at most
 * HL_SWAP_BATCH_MAX and at least HL_SWAP_BATCH_MIN: this bounds the stall
 * a swap adds to one batch (bench_swap) at the price of smaller batches
 * for the migration's few seconds. The most is 128: a batch at the most
 * is one the estimate did not bound, and random users' rows can cost 5x
 * the estimate when the other core is busy (336 stale rows in a 512-event
 * batch took 8.6 ms, 2026-12-04; 512 -> 256 then cut stalls of 6.0-10.8
 * ms to 5.9-8.3). 256 -> 128, 2026-12-06, two sets of 8 interleaved
 * bench_swap pairs (1M users, both shapes; the second set's rule, written
 * before it: fewer runs over 10 ms, the time to migrate everyone within
 * 10%): runs over 10 ms 4 and 10 of 16 at 256 against 0 and 5 of 16 at
 * 128; stall medians, same shape 8.25 / 7.58 -> 7.93 / 6.82 ms, reshape
 * 9.61 / 11.21 -> 7.34 / 9.89 ms; everyone moved in 1.37 / 1.77 -> 1.43
 * / 1.45 s (same shape), 5.39 / 5.52 -> 4.64 / 4.49 s (reshape). */
#define HL_SWAP_BATCH_MAX 128
#define HL_SWAP_BATCH_MIN 16
#define HL_SWAP_BATCH_BUDGET_US 2000

/* ---- model swaps (swap.c, DESIGN.md section 10), owner thread ---------- */

/* Starts moving the shard's rows from sh->mref into to (a reference is
 * taken): every row becomes stale and is migrated when next touched, by
 * hl_shard_swap_tick, or all at once before a snapshot. A migration still
 * running is finished first. 0, or HL_ENOMEM / HL_EMISMATCH (logged) when
 * no migration could be built: the shard stays in its model. */
int  hl_shard_swap_begin(hl_shard *sh, hl_mref *to);

/* Migrates the stale rows among the batch's events' users (before they
 * are applied) and row (before it is refreshed), when one runs. */
void hl_shard_swap_touch_batch(hl_shard *sh);
void hl_shard_swap_touch(hl_shard *sh, uint32_t row);
/* The row of user in sh->tbl, -1 if sh holds none; a user a reshape has
 * not moved yet is moved first (hl_publish_again looks users up by key). */
int64_t hl_shard_swap_find(hl_shard *sh, const void *user, size_t len);

/* The records a batch may take while sh migrates so that migrating its
 * stale users costs at most budget_us of the thread's CPU (every record a
 * stale user, at the costs measured so far); INT_MAX when sh does not
 * migrate. */
int  hl_shard_swap_batch_cap(const hl_shard *sh, int64_t budget_us);

/* Between batches: migrates rows until budget_us (wall time) is spent,
 * in chunks sized by the measured cost per row so the last one ends
 * within the budget. Returns the rows moved. The tick after the sweep
 * passed the last row releases the old model (and does nothing else, so
 * that release, an unmap, never adds to a full slice). */
size_t hl_shard_swap_tick(hl_shard *sh, int64_t budget_us);

/* Migrates every row left (a snapshot or hand-over needs one model). */
void hl_shard_swap_finish(hl_shard *sh);

/* A reshape's second table and its helpers dropped, the users still in
 * it lost: for hl_shard_destroy only (before the new table goes: the
 * helper thread that faults it in is stopped here). */
void hl_shard_swap_drop(hl_shard *sh);

/* ---- snapshots (persist.h), owner thread ------------------------------ */

/* Between batches: lets the shard's periodic snapshot and its changelog
 * flush advance within their time budget. 1 if either wrote rows (the
 * caller ends its round), else 0. */
int  hl_shard_snapshot_tick(hl_shard *sh, int64_t now_ms);

/* Revocation and shutdown: a durable snapshot now, before deadline_ms
 * (monotonic), only when every list of the shard's applied events is
 * delivered; otherwise the previous snapshot stays (logged). 0 when every
 * applied event is in a durable snapshot afterwards (or the shard has no
 * snapshots), else a negative HL_E*: the flush failed (logged by
 * persist.c) or was skipped for undelivered lists (HL_EIO, logged here).
 * The caller decides whether that fails the process (a graceful stop
 * does: thread.c, worker.c). */
int  hl_shard_snapshot_now(hl_shard *sh, int64_t deadline_ms);

/* 1 if the shard has snapshots (or a changelog) and applied events newer
 * than its newest durable one: what a stop that ends now would leave to be
 * replayed. */
int  hl_shard_unsaved(const hl_shard *sh);

/* Refreshes the users/state_bytes gauges and the eviction counters from the
 * table's stats; evictions is {mass, capacity}. */
void hl_shard_publish_stats(hl_shard *sh, hl_counter *const evictions[2]);

#endif
