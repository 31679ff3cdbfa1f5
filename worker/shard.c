/* shard.c - a partition's table plus the batch of events waiting for it,
 * its offsets and its snapshots (the recs.min.interval.ms schedule is
 * gate.c).
 *
 * The batch arrays are sized once at create time (the thread's
 * batch.max.messages), so filling and applying a batch never allocates
 * (STYLE.md section 9). The table itself may grow as users arrive, and so
 * may its gate (amortised doubling, like the table's). */
#include "shard.h"
#include "log.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The users and bytes gauges from the table (and a reshape's old one);
 * *out: the table's own stats. */
static void publish_size(hl_shard *sh, hl_table_stats *out)
{
    hl_table_stats st;
    hl_table_stats_get(sh->tbl, &st);
    *out = st;
    if (sh->old_tbl != NULL) {          /* a reshape: users not moved yet count */
        hl_table_stats old;
        hl_table_stats_get(sh->old_tbl, &old);
        st.users += old.users;
        st.bytes += old.bytes;
    }
    hl_gauge_set(sh->series.users, (double)st.users);
    hl_gauge_set(sh->series.state_bytes, (double)st.bytes);
}

static void register_series(hl_shard *sh, hl_metrics *reg)
{
    char labels[48];
    snprintf(labels, sizeof labels, "partition=\"%d\"", (int)sh->partition);
    sh->series.consumed = hl_metrics_counter(reg, "halflife_events_consumed_total",
        "Input records consumed (valid or not), by partition.", labels);
    sh->series.users = hl_metrics_gauge(reg, "halflife_users",
        "Users held in the shard's state.", labels);
    sh->series.state_bytes = hl_metrics_gauge(reg, "halflife_state_bytes",
        "Memory held by the shard's state.", labels);
}

hl_shard *hl_shard_create(int32_t partition, hl_table *tbl, int64_t restored_offset,
                          hl_persist_shard *ps, int cap_ev, int64_t min_interval_ms,
                          hl_metrics *reg, char *errbuf, size_t errlen)
{
    hl_shard *sh = calloc(1, sizeof *sh);
    if (sh == NULL) {
        hl_table_destroy(tbl);
        hl_persist_shard_destroy(ps);
        goto nomem;
    }
    sh->partition = partition;
    sh->tbl = tbl;
    sh->wait_limit.interval_ms = sh->wait_over_limit.interval_ms = 5000;
    sh->ps = ps;
    sh->next_offset = sh->delivered_offset = sh->noted_offset = restored_offset;
    sh->cap_ev = cap_ev;
    sh->ev = malloc(sizeof *sh->ev * (size_t)cap_ev);
    sh->status = malloc((size_t)cap_ev);
    sh->row = malloc(sizeof *sh->row * (size_t)cap_ev);
    if (sh->ev == NULL || sh->status == NULL || sh->row == NULL)
        goto nomem;
    if (tbl == NULL)
        goto nomem;
    if (min_interval_ms > 0 && (sh->gate = hl_gate_create(min_interval_ms)) == NULL)
        goto nomem;
    register_series(sh, reg);
    /* Set now, not at the partition's first batch: a restored shard
     * showed 0 users, or back with a worker that owned it before, that
     * ownership's figure, until an event came (never, if none does). */
    hl_table_stats st;
    publish_size(sh, &st);
    hl_shard_batch_begin(sh);
    return sh;
nomem:
    hl_err(errbuf, errlen, HL_ENOMEM, "shard %d: out of memory", (int)partition);
    hl_shard_destroy(sh);
    return NULL;
}

void hl_shard_destroy(hl_shard *sh)
{
    if (sh == NULL)
        return;
    hl_persist_shard_destroy(sh->ps);
    hl_changelog_shard_destroy(sh->cl);
    hl_shard_swap_drop(sh);             /* a reshape cut short (swap.c) */
    hl_table_destroy(sh->tbl);
    hl_mref_release(sh->mref);
    if (sh->mig_from != NULL)
        hl_mref_moving_out(sh->mig_from, -1);
    hl_mref_release(sh->mig_from);
    hl_migration_destroy(sh->mig_own);
    free(sh->mig_scratch);
    free(sh->mig_edit);
    free(sh->ev);
    free(sh->status);
    free(sh->row);
    hl_gate_destroy(sh->gate);
    free(sh);
}

void hl_shard_batch_begin(hl_shard *sh)
{
    sh->n_ev = 0;
    sh->n_seen = 0;
    sh->batch_next_offset = -1;
    sh->batch_newest_off = -1;
    sh->skipped = 0;
    sh->redelivered = 0;
}

int hl_shard_apply(hl_shard *sh, const hl_model *m, int *n_dup, int *n_failed)
{
    *n_dup = *n_failed = 0;
    if (sh->n_ev == 0)
        return 0;
    const hl_model_info *mi = hl_model_info_get(m);
    hl_shard_swap_touch_batch(sh);      /* no event meets a row of the old model */
    int n = hl_table_apply_rows(sh->tbl, sh->ev, sh->n_ev, hl_model_e_in(m),
                                mi->n_items, sh->status, sh->row);
    uint64_t dup = 0, failed = 0;
    for (int i = 0; i < sh->n_ev; i++) {
        dup += sh->status[i] == 0;
        failed += sh->status[i] < 0;
    }
    *n_dup = (int)dup;
    *n_failed = (int)failed;
    return n;
}

/* Rows examined per batch: a floor so that small batches still make
 * progress, plus one row per two events, so a pass over the table keeps
 * pace with the inserts that fill it (each new user is examined within
 * about 2U events of a table of U) while the apply path stays the cost of
 * a batch. The capacity eviction bounds its work per insert in the same
 * spirit (table.c's LRU_SCAN_PER_INSERT). */
#define SWEEP_MIN_ROWS      256
#define SWEEP_EVENTS_PER_ROW  2

/* Rows already evicted leave the gate and the snapshot in progress as a
 * capacity eviction does: the gate drops a waiting row whose user is gone
 * (gate.c), a snapshot step skips dead rows and the fuzzy-snapshot rules
 * (core/snapshot.c) cover a row evicted after it was copied. */
size_t hl_shard_sweep(hl_shard *sh)
{
    if (sh->n_ev == 0)
        return 0;           /* the decay reference (newest event time) did not move */
    size_t rows = SWEEP_MIN_ROWS + (size_t)sh->n_ev / SWEEP_EVENTS_PER_ROW;
    size_t limit = hl_table_row_limit(sh->tbl);
    return hl_table_sweep(sh->tbl, rows < limit ? rows : limit);
}

/* What a table counted since *seen, which becomes now. A model swap to
 * another state shape puts a new table in sh->tbl whose counts start at 0:
 * then all of its count is new. Subtracting instead would wrap and take the
 * worker-wide counter down by everything this shard ever counted, which
 * Prometheus reads as a reset. */
static uint64_t eviction_delta(uint64_t now, uint64_t *seen)
{
    uint64_t d = now >= *seen ? now - *seen : now;
    *seen = now;
    return d;
}

void hl_shard_publish_stats(hl_shard *sh, hl_counter *const evictions[2])
{
    hl_table_stats st;
    publish_size(sh, &st);
    hl_counter_add(evictions[0], eviction_delta(st.evicted_mass, &sh->evicted_mass_seen));
    hl_counter_add(evictions[1],
                   eviction_delta(st.evicted_capacity, &sh->evicted_capacity_seen));
}

/* ---- snapshots --------------------------------------------------------- */

int hl_shard_snapshot_tick(hl_shard *sh, int64_t now_ms)
{
    int wrote = 0;
    if (sh->mig_from != NULL)
        return 0;   /* a file and a changelog flush name one model: after the migration */
    if (sh->cl != NULL)
        wrote = hl_changelog_tick(sh->cl, sh->tbl, sh->next_offset, sh->delivered_offset,
                                  now_ms) == 1;
    if (sh->ps != NULL && !wrote)
        wrote = hl_persist_tick(sh->ps, sh->tbl, sh->next_offset, sh->delivered_offset,
                                now_ms) == 1;
    return wrote;
}

/* A snapshot's rows may hold events up to next_offset, and an event the
 * restart would read as already applied would never see its list published
 * again: so only with every list delivered. The changelog goes first: with
 * state.store=kafka it is what the next owner reads, the file a cache. */
int hl_shard_snapshot_now(hl_shard *sh, int64_t deadline_ms)
{
    char err[512];
    if (sh->ps == NULL && sh->cl == NULL)
        return 0;
    hl_shard_swap_finish(sh);
    if (sh->delivered_offset != sh->next_offset) {
        hl_log(HL_LOG_WARN, "snapshot_flush_skipped", "partition=%d next_offset=%lld "
               "delivered_offset=%lld reason=\"lists not delivered; the previous snapshot "
               "stays\"", (int)sh->partition, (long long)sh->next_offset,
               (long long)sh->delivered_offset);
        return HL_EIO;
    }
    if (sh->cl != NULL) {
        int rc = hl_changelog_flush_now(sh->cl, sh->tbl, sh->next_offset, deadline_ms);
        if (rc != 0)
            return rc;
    }
    if (sh->ps == NULL)
        return 0;
    return hl_persist_flush(sh->ps, sh->tbl, sh->delivered_offset, deadline_ms, err,
                            sizeof err);
}

int hl_shard_unsaved(const hl_shard *sh)
{
    if (sh->cl != NULL)
        return sh->next_offset > hl_changelog_durable(sh->cl);
    return sh->ps != NULL && sh->next_offset > hl_persist_shard_durable(sh->ps);
}
