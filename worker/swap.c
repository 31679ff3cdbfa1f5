/* swap.c - a shard's move into a new model (DESIGN.md section 10): its
 * rows are migrated (core/migrate.c) lazily, so a swap never stalls the
 * batch loop by more than one slice.
 *
 * When the owner thread starts serving a new model, each of its shards
 * flips its table's generation: every row is stale (still in the old
 * model's space) at no cost. A stale row is migrated before an event is
 * applied to it, before it is refreshed, and by a sweep between batches
 * that walks row ids in bounded slices; rows inserted since are fresh.
 * The shard keeps a reference to the old model until the sweep is done,
 * and no snapshot starts meanwhile (a file names one model): a revocation
 * or a stop finishes the migration first. Owner thread only. */
#include "shard.h"

#include "log.h"

#include <stdlib.h>

/* Migrates the queued rows, HL_MIG_CHUNK at most, in one SGEMM. */
static void flush(hl_shard *sh)
{
    if (sh->mig_n == 0)
        return;
    hl_migration_rows(sh->mig, sh->mig_edit, sh->mig_n, sh->mig_scratch);
    sh->mig_rows += (uint64_t)sh->mig_n;
    sh->mig_n = 0;
}

/* Queues a stale row; it counts as migrated from here on (a second event
 * of the same user in the batch does not queue it again). The queue is
 * flushed before anything else touches the table. */
static void migrate_row(hl_shard *sh, uint32_t row)
{
    hl_table_edit(sh->tbl, row, &sh->mig_edit[sh->mig_n++]);
    hl_table_row_done(sh->tbl, row);
    if (sh->mig_n == HL_MIG_CHUNK)
        flush(sh);
}

static void done(hl_shard *sh)
{
    double s = (double)(hl_now_mono_us() - sh->mig_t0_us) / 1e6;
    hl_log(HL_LOG_INFO, "migration_done", "partition=%d version=\"%s\" users=%llu "
           "seconds=%.3f", (int)sh->partition, sh->mref->mi->version,
           (unsigned long long)sh->mig_rows, s);
    hl_mref_release(sh->mig_from);
    hl_migration_destroy(sh->mig_own);
    free(sh->mig_scratch);
    free(sh->mig_edit);
    sh->mig_edit = NULL;
    sh->mig_from = NULL;
    sh->mig_own = NULL;
    sh->mig = NULL;
    sh->mig_scratch = NULL;
    hl_persist_shard_set_model(sh->ps, sh->mref->mi->fingerprint);
    hl_changelog_shard_set_model(sh->cl, sh->mref->mi->fingerprint);
}

/* The migration from sh->mref into to: to's own when it replaced sh's
 * model, else one fitted here (the shard missed a swap in between). */
static int plan(hl_shard *sh, hl_mref *to)
{
    char err[512];
    if (to->from_prev != NULL && to->gen == sh->mref->gen + 1) {
        sh->mig = to->from_prev;
        return 0;
    }
    sh->mig_own = hl_migration_create(sh->mref->m, to->m, sh->mref->tw, err, sizeof err);
    if (sh->mig_own == NULL) {
        hl_log(HL_LOG_ERROR, "migration_failed", "partition=%d from=\"%s\" to=\"%s\" "
               "err=\"%s\"", (int)sh->partition, sh->mref->mi->version, to->mi->version, err);
        return HL_ENOMEM;
    }
    sh->mig = sh->mig_own;
    return 0;
}

int hl_shard_swap_begin(hl_shard *sh, hl_mref *to)
{
    if (sh->mref == to)
        return 0;
    if (sh->mref == NULL) {         /* a shard made outside the worker (tests) */
        sh->mref = hl_mref_get(to);
        return 0;
    }
    hl_shard_swap_finish(sh);
    size_t n = 2 * (size_t)HL_MIG_CHUNK * (size_t)to->mi->n_heads * (size_t)to->mi->dim;
    sh->mig_scratch = malloc(sizeof(float) * n);
    sh->mig_edit = malloc(sizeof *sh->mig_edit * HL_MIG_CHUNK);
    sh->mig_n = 0;
    if (sh->mig_scratch == NULL || sh->mig_edit == NULL || plan(sh, to) != 0) {
        free(sh->mig_scratch);
        free(sh->mig_edit);
        sh->mig_scratch = NULL;
        sh->mig_edit = NULL;
        return HL_ENOMEM;
    }
    hl_table_flip_generation(sh->tbl);
    sh->mig_from = sh->mref;
    sh->mref = hl_mref_get(to);
    sh->mig_cursor = 0;
    sh->mig_rows = 0;
    sh->mig_t0_us = hl_now_mono_us();
    hl_log(HL_LOG_INFO, "migration_started", "partition=%d from=\"%s\" to=\"%s\" "
           "next_offset=%lld", (int)sh->partition, sh->mig_from->mi->version,
           to->mi->version, (long long)sh->next_offset);
    return 0;
}

void hl_shard_swap_touch(hl_shard *sh, uint32_t row)
{
    if (sh->mig_from != NULL && hl_table_row_stale(sh->tbl, row)) {
        migrate_row(sh, row);
        flush(sh);
        hl_counter_add(sh->c_migrated, 1);
    }
}

#define TOUCH_AHEAD 8       /* events whose index slots are being fetched */

static void prefetch_user(hl_shard *sh, int i)
{
    if (i < sh->n_ev)
        hl_table_prefetch(sh->tbl, sh->ev[i].user, sh->ev[i].user_len);
}

/* The batch's users are looked up once more here, before the table's own
 * pipelined apply: one at a time, each lookup's index miss was waited for
 * and most of what a batch cost beyond its usual time while migrating
 * (bench_swap), so the slots of TOUCH_AHEAD events later are asked for. */
void hl_shard_swap_touch_batch(hl_shard *sh)
{
    uint64_t before = sh->mig_rows;
    if (sh->mig_from == NULL)
        return;
    for (int i = 0; i < TOUCH_AHEAD; i++)
        prefetch_user(sh, i);
    for (int i = 0; i < sh->n_ev; i++) {
        prefetch_user(sh, i + TOUCH_AHEAD);
        int64_t row = hl_table_find(sh->tbl, sh->ev[i].user, sh->ev[i].user_len);
        if (row >= 0 && hl_table_row_stale(sh->tbl, (uint32_t)row))
            migrate_row(sh, (uint32_t)row);
    }
    flush(sh);
    hl_counter_add(sh->c_migrated, sh->mig_rows - before);
}

/* Up to max_rows from the cursor; 1 when the sweep has passed every row. */
static int sweep(hl_shard *sh, size_t max_rows)
{
    int end = 0;
    for (size_t i = 0; i < max_rows && !end; i++) {
        uint32_t row = hl_table_next_live(sh->tbl, sh->mig_cursor);
        if (row == UINT32_MAX) {
            end = 1;
            break;
        }
        if (hl_table_row_stale(sh->tbl, row))
            migrate_row(sh, row);
        sh->mig_cursor = row + 1;
    }
    flush(sh);
    return end;
}

#define SLICE_ROWS 64       /* rows between two looks at the clock */

size_t hl_shard_swap_tick(hl_shard *sh, int64_t budget_us)
{
    if (sh->mig_from == NULL)
        return 0;
    uint64_t before = sh->mig_rows;
    int64_t end = hl_now_mono_us() + budget_us;
    int finished = 0;
    while (!finished && hl_now_mono_us() < end)
        finished = sweep(sh, SLICE_ROWS);
    hl_counter_add(sh->c_migrated, sh->mig_rows - before);
    if (finished)
        done(sh);
    return (size_t)(sh->mig_rows - before);
}

void hl_shard_swap_finish(hl_shard *sh)
{
    if (sh->mig_from == NULL)
        return;
    uint64_t before = sh->mig_rows;
    while (!sweep(sh, SIZE_MAX)) {}
    hl_counter_add(sh->c_migrated, sh->mig_rows - before);
    done(sh);
}
