/* swap.c - a shard's move into a new model (DESIGN.md section 10): its
 * rows are migrated (core/migrate.c) lazily, so a swap never stalls the
 * batch loop by more than one slice.
 *
 * When the owner thread starts serving a new model, each of its shards
 * flips its table's generation: every row is stale (still in the old
 * model's space) at no cost. A stale row is migrated before an event is
 * applied to it, before it is refreshed, and by a sweep between batches
 * that walks row ids in slices bounded by time; rows inserted since are
 * fresh. What a row costs is measured as the migration runs (the thread's
 * CPU time per chunk), and both the sweep's chunks and the records a
 * batch may take are sized from it: a count of rows alone let one slice
 * reach 10 ms when rows cost more than usual (bench_swap, 2026-12-03).
 * The shard keeps a reference to the old model until the sweep is done,
 * and no snapshot starts meanwhile (a file names one model): a revocation
 * or a stop finishes the migration first. Owner thread only.
 *
 * A new model of another state shape (dim, number of heads, half-lives)
 * cannot be migrated in place: a row's size changes. The shard then gets
 * a second table (below, "reshaping migrations"): sh->tbl becomes a new
 * empty table of the new shape and the old one waits in sh->old_tbl; a
 * user moves across (hl_migration_row_into, restored, removed) when a
 * batch touches it, before its event, and by the same time-bounded
 * sweep, so every reader of sh->tbl (apply, refresh, fold-in, snapshots,
 * eviction) only ever sees rows of the model it serves, and a user is in
 * exactly one of the two tables at every moment. Why a second table, not
 * a bigger row or a restart: a restart stops the stream and re-reads the
 * snapshot; rows of both sizes in one table would need every reader to
 * tell them apart. What it costs: the new table's memory while both
 * exist (faulted in off the batch loop: below), and a move is dearer than
 * an in-place migration (no 64-row SGEMM). The changelog writes each
 * table's rows in its own shape, and no flush runs during the move (as
 * for any migration). recs.min.interval.ms's gate keys users by row id,
 * which a move changes: the new table gets a gate of its own and each
 * user's schedule moves with it (hl_gate_carry); one waiting for its list
 * is due at once after its move, and the old gate bounds the offset of
 * those not moved yet. */
#include "shard.h"

#include "log.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

/* Cost estimates before the first measurement: on the high side (a loaded
 * machine), so the first batch after a swap is small rather than long. */
#define ROW_US_START   40.0
#define LOOK_US_START  0.5
#define SWEEP_US_START 10.0
#define PASS_US_START  0.5
/* A reshape's first moves write a new table's first pages: 300-400 us
 * each at 1M users (bench_swap's first batch, 49 moves in 12-24 ms at
 * ROW_US_START), so its batches and slices start at the smallest. */
#define MOVE_US_START  200.0

#define TOUCH_AHEAD 8       /* events whose index slots are being fetched */

/* The thread's CPU time: a slice's cost is what this thread spent, not
 * the time other processes held the core meanwhile. */
static double cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* An estimate follows a dearer sample at once and a cheaper one slowly:
 * it sizes a bound, so it must not be caught low by a costly stretch. */
static void note_cost(double *est, double sample)
{
    *est = sample > *est ? sample : 0.75 * *est + 0.25 * sample;
}

/* Migrates the queued rows, HL_MIG_CHUNK at most, in one SGEMM. Returns
 * the CPU microseconds it took (what the cost estimates are made of). */
static double flush(hl_shard *sh)
{
    if (sh->mig_n == 0)
        return 0;
    double t0 = cpu_us();
    hl_migration_rows(sh->mig, sh->mig_edit, sh->mig_n, sh->mig_scratch);
    sh->mig_rows += (uint64_t)sh->mig_n;
    sh->mig_n = 0;
    return cpu_us() - t0;
}

/* Queues a stale row; it counts as migrated from here on (a second event
 * of the same user in the batch does not queue it again). The queue is
 * flushed before anything else touches the table. Returns what a flush
 * it made took (0: none). */
static double migrate_row(hl_shard *sh, uint32_t row)
{
    hl_table_edit(sh->tbl, row, &sh->mig_edit[sh->mig_n++]);
    hl_table_row_done(sh->tbl, row);
    return sh->mig_n == HL_MIG_CHUNK ? flush(sh) : 0;
}

/* ---- reshaping migrations: a second table -------------------------------
 * Rows of another shape cannot be migrated in place: the new model's rows
 * live in a new table (sh->tbl) and the users not moved yet in the old
 * one (sh->old_tbl). A user moves when a batch touches it or the sweep
 * passes it: hl_migration_row_into of its old row, restored into the new
 * table (hl_table_restore: a move is no event, so the row is not dirty and
 * no list is made for it), then removed from the old table (not an
 * eviction: no tombstone). Only moves empty the old table, so one pass of
 * the sweep over it ends the migration. */

/* The user at row of the old table into the new one. A restore fails only
 * without memory: the user is then dropped (logged), never left behind,
 * so the sweep always ends. */
/* recs.min.interval.ms: the user's schedule into the new table's gate,
 * while its old row (v) still stands. */
static void carry(hl_shard *sh, uint32_t row, const hl_row_view *v)
{
    int64_t nr = hl_table_find(sh->tbl, v->user, v->user_len);
    char q[2 * HL_MAX_ID_LEN + 1];
    if (nr >= 0 && hl_gate_carry(sh->old_gate, row, sh->gate, (uint32_t)nr, v) != 0)
        hl_log(HL_LOG_WARN, "gate_carry_failed", "partition=%d user=\"%s\" err=\"out of "
               "memory\" action=\"a list held back by recs.min.interval.ms goes out at the "
               "user's next event\"", (int)sh->partition,
               hl_log_quote(q, sizeof q, v->user, v->user_len));
}

static void move_row(hl_shard *sh, uint32_t row)
{
    hl_row_view v, nv;
    hl_table_view(sh->old_tbl, row, &v);
    hl_migration_row_into(sh->mig, &v, sh->mv_s, sh->mv_m, sh->mv_hist, sh->mig_scratch);
    nv = v;
    nv.s = sh->mv_s;
    nv.m = sh->mv_m;
    nv.hist_item = sh->mv_hist;
    int rc = hl_table_restore(sh->tbl, &nv);
    if (rc != 0) {
        char q[2 * HL_MAX_ID_LEN + 1];
        hl_log(HL_LOG_ERROR, "migration_user_lost", "partition=%d user=\"%s\" err=%s",
               (int)sh->partition, hl_log_quote(q, sizeof q, v.user, v.user_len),
               hl_strerror(rc));
    } else if (sh->old_gate != NULL) {
        carry(sh, row, &v);
    }
    hl_table_remove(sh->old_tbl, v.user, v.user_len);
    sh->mig_rows += rc == 0;
}

/* The new table's rows are new memory: a table maps its blocks in huge
 * pages, and the first write to each 2 MB page stops the writer while the
 * kernel clears it (and may compact memory first: bench_swap saw a slice
 * of 100 ms at 1M users without this). A thread of the reshape's own
 * faults the rows every user will need in ahead of the moves, as a
 * changelog restore does (changelog_restore.c); the shard thread's moves
 * then write to pages already there. Only a hint: without the advice, or
 * on a failure, the faults fall to the moves. */
#define PREFAULT_SPANS 512                /* table blocks */
#define PREFAULT_CHUNK ((size_t)4 << 20)  /* per call: stop is checked between */

struct hl_swap_prefault {
    hl_table_span spans[PREFAULT_SPANS];
    int           n;
    atomic_int    stop;
    pthread_t     th;
};

static void *prefault_run(void *arg)
{
#ifdef MADV_POPULATE_WRITE
    struct hl_swap_prefault *pf = arg;
    for (int i = 0; i < pf->n; i++)
        for (size_t off = 0; off < pf->spans[i].bytes; off += PREFAULT_CHUNK) {
            size_t n = pf->spans[i].bytes - off;
            if (atomic_load(&pf->stop) ||
                madvise((char *)pf->spans[i].addr + off, n < PREFAULT_CHUNK ? n : PREFAULT_CHUNK,
                        MADV_POPULATE_WRITE) != 0)
                return NULL;
        }
#else
    (void)arg;
#endif
    return NULL;
}

/* Starts faulting in the rows of users ids of tbl; NULL when not started. */
static struct hl_swap_prefault *prefault_start(hl_table *tbl, size_t users)
{
    struct hl_swap_prefault *pf = malloc(sizeof *pf);
    if (pf == NULL)
        return NULL;
    atomic_store(&pf->stop, 0);
    pf->n = hl_table_map_rows(tbl, users, pf->spans, PREFAULT_SPANS);
    /* Not the first rows at once, on this thread: that put 35-45 ms into
     * the switch itself when the kernel had to compact memory for the
     * huge pages (bench_swap after a same-shape case, four runs), more
     * than the first batch loses racing the helper. */
    if (pf->n <= 0 || pthread_create(&pf->th, NULL, prefault_run, pf) != 0) {
        free(pf);
        return NULL;
    }
    return pf;
}

static void prefault_stop(struct hl_swap_prefault *pf)
{
    if (pf == NULL)
        return;
    atomic_store(&pf->stop, 1);
    pthread_join(pf->th, NULL);
    free(pf);
}

static void *destroy_run(void *arg)
{
    hl_table_destroy(arg);
    return NULL;
}

/* A reshape's end: the old table, empty now, is unmapped on a thread of
 * its own. Its blocks were mapped for every user, and giving them back
 * took 7 ms of the shard thread at 1M users (bench_swap); a thread that
 * cannot start leaves it to this one. */
static void release_old(hl_shard *sh)
{
    pthread_t th;
    pthread_attr_t at;
    if (sh->old_tbl != NULL && pthread_attr_init(&at) == 0) {
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&th, &at, destroy_run, sh->old_tbl) == 0)
            sh->old_tbl = NULL;
        pthread_attr_destroy(&at);
    }
    hl_shard_swap_drop(sh);
}

void hl_shard_swap_drop(hl_shard *sh)
{
    prefault_stop(sh->mv_pf);
    sh->mv_pf = NULL;
    hl_table_destroy(sh->old_tbl);
    hl_gate_destroy(sh->old_gate);      /* every user moved: the new gate bounds */
    free(sh->mv_s);
    free(sh->mv_m);
    free(sh->mv_hist);
    sh->old_tbl = NULL;
    sh->old_gate = NULL;
    sh->mv_s = sh->mv_m = NULL;
    sh->mv_hist = NULL;
}

/* The new table of to's shape (the old one's history, max.users and
 * eviction options; its stream time and LRU clock) and room for one
 * moved row. Its index starts small and grows as the users move in, by
 * the incremental doubling every table's index does (core/index.c):
 * sized for every user at once, its pages were all first written by the
 * first moves, at random, and the first batch took 16-21 ms where it
 * now takes under 10 (bench_swap at 1M users, three runs each). */
static int begin_reshape(hl_shard *sh, const hl_mref *to)
{
    char err[256];
    hl_table_opts o = *hl_table_opts_get(sh->tbl);
    o.expected_users = 0;
    const hl_model_info *mi = to->mi;
    hl_table_stats st;
    hl_table_meta meta;
    hl_table *nt = NULL;
    if (hl_decay_init(&o.decay, mi->n_heads, mi->dim, mi->half_life_ms, err, sizeof err) != 0 ||
        (nt = hl_table_create(&o, err, sizeof err)) == NULL)
        goto fail;
    hl_table_stats_get(sh->tbl, &st);
    hl_table_meta_get(sh->tbl, &meta);
    meta.sweep_cursor = 0;
    hl_table_meta_set(nt, &meta);
    void *ev_arg;                       /* state.store=kafka: evictions are tombstones */
    hl_table_evict_fn ev_fn = hl_table_evict_hook(sh->tbl, &ev_arg);
    hl_table_on_evict(nt, ev_fn, ev_arg);
    free(sh->mig_scratch);
    sh->mig_scratch = malloc(sizeof(float) * hl_migration_scratch_floats(sh->mig));
    sh->mv_s = malloc(sizeof(float) * (size_t)mi->n_heads * (size_t)mi->dim);
    sh->mv_m = malloc(sizeof(float) * (size_t)mi->n_heads);
    sh->mv_hist = malloc(sizeof(int32_t) * (size_t)o.history);
    /* recs.min.interval.ms: row ids change, so a gate for the new ones */
    hl_gate *ng = sh->gate != NULL ? hl_gate_create(hl_gate_interval(sh->gate)) : NULL;
    if (sh->mig_scratch == NULL || sh->mv_s == NULL || sh->mv_m == NULL ||
        sh->mv_hist == NULL || (sh->gate != NULL && ng == NULL)) {
        hl_table_destroy(nt);
        hl_gate_destroy(ng);
        hl_shard_swap_drop(sh);
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    sh->old_tbl = sh->tbl;
    sh->tbl = nt;
    sh->evicted_mass_seen = sh->evicted_capacity_seen = 0;   /* nt counts from 0 */
    sh->mv_pf = prefault_start(nt, st.users);
    if (ng != NULL) {
        sh->old_gate = sh->gate;
        sh->gate = ng;
    }
    return 0;
fail:
    hl_log(HL_LOG_ERROR, "migration_failed", "partition=%d to=\"%s\" err=\"%s\"",
           (int)sh->partition, mi->version, err);
    return HL_ENOMEM;
}

/* A batch's migrations (since before rows and t0, mig_us of it in the
 * migrations themselves) into the cost estimates that size the next
 * batches, and counted. */
static void touch_noted(hl_shard *sh, uint64_t before, double t0, double mig_us)
{
    uint64_t rows = sh->mig_rows - before;
    if (rows >= HL_MIG_CHUNK / 4)       /* a few rows time a chunk's overhead */
        note_cost(&sh->mig_row_us, mig_us / (double)rows);
    double all_us = cpu_us() - t0;
    note_cost(&sh->mig_look_us, (all_us - mig_us) / (double)sh->n_ev);
    if (all_us > sh->mig_touch_max_us)
        sh->mig_touch_max_us = all_us;
    hl_counter_add(sh->c_migrated, rows);
}

/* A batch's users still in the old table move before their events. */
static void touch_batch_reshape(hl_shard *sh)
{
    uint64_t before = sh->mig_rows;
    double t0 = cpu_us(), mig_us = 0;
    for (int i = 0; i < sh->n_ev; i++) {
        const hl_event *e = &sh->ev[i];
        if (i + TOUCH_AHEAD < sh->n_ev)
            hl_table_prefetch(sh->old_tbl, sh->ev[i + TOUCH_AHEAD].user,
                              sh->ev[i + TOUCH_AHEAD].user_len);
        /* a user is in one table only: found in the old one, it is not in
         * the new one (nor ever inserted there before this move) */
        int64_t row = hl_table_find(sh->old_tbl, e->user, e->user_len);
        if (row >= 0) {
            double a = cpu_us();
            move_row(sh, (uint32_t)row);
            mig_us += cpu_us() - a;
        }
    }
    touch_noted(sh, before, t0, mig_us);
}

static void done(hl_shard *sh)
{
    double s = (double)(hl_now_mono_us() - sh->mig_t0_us) / 1e6;
    hl_log(HL_LOG_INFO, "migration_done", "partition=%d version=\"%s\" users=%llu "
           "seconds=%.3f", (int)sh->partition, sh->mref->mi->version,
           (unsigned long long)sh->mig_rows, s);
    hl_mref_moving_out(sh->mig_from, -1);
    hl_mref_release(sh->mig_from);
    hl_migration_destroy(sh->mig_own);
    free(sh->mig_scratch);
    free(sh->mig_edit);
    sh->mig_edit = NULL;
    release_old(sh);
    sh->mig_finished = 0;
    sh->mig_from = NULL;
    sh->mig_own = NULL;
    sh->mig = NULL;
    sh->mig_scratch = NULL;
    hl_persist_shard_set_model(sh->ps, sh->mref->mi->fingerprint);
    hl_changelog_shard_set_model(sh->cl, sh->mref->mi->fingerprint);
}

/* The migration from sh->mref into to: the one fitted on the main thread
 * when to went live (its from_prev when to replaced sh's model, else the
 * map from sh's model among its skips: the thread skipped models while
 * its shards moved, models.h). Only a model nobody served then (or a fit
 * that failed there) leaves one to fit here, on the batch thread: a stall
 * of about 0.7 s at 100k items, so it is logged and counted. */
static int plan(hl_shard *sh, hl_mref *to)
{
    char err[512];
    if ((sh->mig = hl_mref_migration(to, sh->mref)) != NULL)
        return 0;
    double t0 = hl_now_mono_s();
    sh->mig_own = hl_migration_create_any(sh->mref->m, to->m, sh->mref->tw, err, sizeof err);
    if (sh->mig_own == NULL) {
        hl_log(HL_LOG_ERROR, "migration_failed", "partition=%d from=\"%s\" to=\"%s\" "
               "err=\"%s\"", (int)sh->partition, sh->mref->mi->version, to->mi->version, err);
        return HL_ENOMEM;
    }
    hl_counter_add(sh->c_fits, 1);
    hl_log(HL_LOG_WARN, "migration_fitted_on_thread", "partition=%d from=\"%s\" to=\"%s\" "
           "seconds=%.3f reason=\"no map from this model was fitted when the new one went "
           "live; the batch loop waited for this one\"", (int)sh->partition,
           sh->mref->mi->version, to->mi->version, hl_now_mono_s() - t0);
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
    if (sh->mig_scratch == NULL || sh->mig_edit == NULL || plan(sh, to) != 0 ||
        (hl_migration_reshapes(sh->mig) && begin_reshape(sh, to) != 0)) {
        free(sh->mig_scratch);
        free(sh->mig_edit);
        hl_migration_destroy(sh->mig_own);
        sh->mig_own = NULL;
        sh->mig = NULL;
        sh->mig_scratch = NULL;
        sh->mig_edit = NULL;
        return HL_ENOMEM;
    }
    if (sh->old_tbl == NULL)
        hl_table_flip_generation(sh->tbl);
    sh->mig_from = sh->mref;
    sh->mref = hl_mref_get(to);
    hl_mref_moving_out(sh->mig_from, 1);    /* after: never counted twice (models.c) */
    sh->mig_cursor = 0;
    sh->mig_rows = 0;
    sh->mig_finished = 0;
    sh->mig_row_us = sh->old_tbl != NULL ? MOVE_US_START : ROW_US_START;
    sh->mig_look_us = LOOK_US_START;
    sh->mig_sweep_us = sh->old_tbl != NULL ? MOVE_US_START : SWEEP_US_START;
    sh->mig_pass_us = PASS_US_START;
    sh->mig_touch_max_us = 0;
    sh->mig_t0_us = hl_now_mono_us();
    hl_log(HL_LOG_INFO, "migration_started", "partition=%d from=\"%s\" to=\"%s\" "
           "next_offset=%lld reshaped=%d", (int)sh->partition, sh->mig_from->mi->version,
           to->mi->version, (long long)sh->next_offset, sh->old_tbl != NULL);
    return 0;
}

/* A reshape leaves the users not moved yet in sh->old_tbl, where a lookup
 * in sh->tbl alone misses them: a list refused during the move would be
 * taken for a user no longer owned and dropped, its batch's offsets
 * stored all the same. Such a user moves first, as a batch's event moves
 * it. */
int64_t hl_shard_swap_find(hl_shard *sh, const void *user, size_t len)
{
    int64_t row = hl_table_find(sh->tbl, user, len);
    if (row >= 0 || sh->old_tbl == NULL)
        return row;
    int64_t old = hl_table_find(sh->old_tbl, user, len);
    if (old < 0)
        return -1;
    uint64_t before = sh->mig_rows;
    move_row(sh, (uint32_t)old);
    hl_counter_add(sh->c_migrated, sh->mig_rows - before);
    return hl_table_find(sh->tbl, user, len);
}

void hl_shard_swap_touch(hl_shard *sh, uint32_t row)
{
    /* a reshape: every row of sh->tbl is in the new model already */
    if (sh->mig_from != NULL && sh->old_tbl == NULL && hl_table_row_stale(sh->tbl, row)) {
        migrate_row(sh, row);
        flush(sh);
        hl_counter_add(sh->c_migrated, 1);
    }
}


static void prefetch_user(hl_shard *sh, int i)
{
    if (i < sh->n_ev)
        hl_table_prefetch(sh->tbl, sh->ev[i].user, sh->ev[i].user_len);
}

/* The batch's users are looked up once more here, before the table's own
 * pipelined apply: one at a time, each lookup's index miss was waited for
 * and most of what a batch cost beyond its usual time while migrating
 * (bench_swap), so the slots of TOUCH_AHEAD events later are asked for.
 * The lookups and the migrations are timed apart: the batch cap bounds
 * both (hl_shard_swap_batch_cap). */
void hl_shard_swap_touch_batch(hl_shard *sh)
{
    uint64_t before = sh->mig_rows;
    if (sh->mig_from == NULL || sh->mig_finished)
        return;
    if (sh->old_tbl != NULL) {
        touch_batch_reshape(sh);
        return;
    }
    double t0 = cpu_us(), mig_us = 0;
    for (int i = 0; i < TOUCH_AHEAD; i++)
        prefetch_user(sh, i);
    for (int i = 0; i < sh->n_ev; i++) {
        prefetch_user(sh, i + TOUCH_AHEAD);
        int64_t row = hl_table_find(sh->tbl, sh->ev[i].user, sh->ev[i].user_len);
        if (row >= 0 && hl_table_row_stale(sh->tbl, (uint32_t)row))
            mig_us += migrate_row(sh, (uint32_t)row);
    }
    mig_us += flush(sh);
    touch_noted(sh, before, t0, mig_us);
}

int hl_shard_swap_batch_cap(const hl_shard *sh, int64_t budget_us)
{
    if (sh->mig_from == NULL || sh->mig_finished)
        return INT_MAX;
    double cap = (double)budget_us / (sh->mig_row_us + sh->mig_look_us);
    if (cap > HL_SWAP_BATCH_MAX)
        return HL_SWAP_BATCH_MAX;
    return cap < HL_SWAP_BATCH_MIN ? HL_SWAP_BATCH_MIN : (int)cap;
}

/* What one chunk of the sweep may do: pass max_pass live rows, migrate
 * max_mig of them; and what it did. */
typedef struct chunk {
    size_t max_pass, max_mig, passed, migrated;
    double mig_us;              /* CPU in the migrations (flushes) */
} chunk;

/* A reshape's chunk: moves the old table's next users. Its passes are
 * its moves (every row left there is to move). */
static int sweep_old(hl_shard *sh, chunk *c)
{
    uint64_t before = sh->mig_rows;
    int end = 0;
    double t0 = cpu_us();
    for (; c->passed < c->max_pass && c->passed < c->max_mig; c->passed++) {
        uint32_t row = hl_table_next_live(sh->old_tbl, sh->mig_cursor);
        if (row == UINT32_MAX) {
            end = 1;
            break;
        }
        move_row(sh, row);
        sh->mig_cursor = row + 1;
    }
    c->mig_us = cpu_us() - t0;
    c->migrated = (size_t)(sh->mig_rows - before);
    return end;
}

/* One chunk from the cursor; 1 when the sweep has passed every row. */
static int sweep(hl_shard *sh, chunk *c)
{
    if (sh->old_tbl != NULL)
        return sweep_old(sh, c);
    uint64_t before = sh->mig_rows + (uint64_t)sh->mig_n;
    int end = 0;
    for (; c->passed < c->max_pass; c->passed++) {
        if (sh->mig_rows + (uint64_t)sh->mig_n - before >= c->max_mig)
            break;
        uint32_t row = hl_table_next_live(sh->tbl, sh->mig_cursor);
        if (row == UINT32_MAX) {
            end = 1;
            break;
        }
        if (hl_table_row_stale(sh->tbl, row))
            c->mig_us += migrate_row(sh, row);
        sh->mig_cursor = row + 1;
    }
    c->mig_us += flush(sh);
    c->migrated = (size_t)(sh->mig_rows - before);
    return end;
}

#define CHUNK_US      500   /* CPU per chunk: the clock is read between two */
#define CHUNK_ROWS_MIN 8    /* a tick's first chunk, whatever the estimates */

/* A chunk that fits left_us at the measured costs, half of it for passing
 * rows and half for migrating the stale ones among them: the two differ
 * some fifty-fold, and a chunk sized by its rows' mean cost while they
 * were mostly migrated already was long once it met a stale stretch. */
static chunk chunk_plan(const hl_shard *sh, double left_us, int first)
{
    double us = (left_us < CHUNK_US ? left_us : CHUNK_US) / 2;
    chunk c = {0};
    if (us > 0) {
        c.max_pass = (size_t)(us / sh->mig_pass_us);
        c.max_mig = (size_t)(us / sh->mig_sweep_us);
    }
    if (first && c.max_mig < CHUNK_ROWS_MIN) c.max_mig = CHUNK_ROWS_MIN;
    if (first && c.max_pass < CHUNK_ROWS_MIN) c.max_pass = CHUNK_ROWS_MIN;
    return c;
}

/* The chunk's costs into the estimates (when it did enough to time). */
static void chunk_note(hl_shard *sh, const chunk *c, double us)
{
    if (c->migrated >= CHUNK_ROWS_MIN)
        note_cost(&sh->mig_sweep_us, c->mig_us / (double)c->migrated);
    if (c->passed >= CHUNK_ROWS_MIN && sh->old_tbl == NULL)  /* a reshape passes none */
        note_cost(&sh->mig_pass_us, (us - c->mig_us) / (double)c->passed);
}

size_t hl_shard_swap_tick(hl_shard *sh, int64_t budget_us)
{
    if (sh->mig_from == NULL)
        return 0;
    if (sh->mig_finished) {
        done(sh);
        return 0;
    }
    uint64_t before = sh->mig_rows;
    int64_t end = hl_now_mono_us() + budget_us;
    for (int first = 1; !sh->mig_finished; first = 0) {
        chunk c = chunk_plan(sh, (double)(end - hl_now_mono_us()), first);
        if (c.max_pass == 0 || c.max_mig == 0)
            break;
        double t0 = cpu_us();
        sh->mig_finished = sweep(sh, &c);
        chunk_note(sh, &c, cpu_us() - t0);
    }
    hl_counter_add(sh->c_migrated, sh->mig_rows - before);
    return (size_t)(sh->mig_rows - before);
}

void hl_shard_swap_finish(hl_shard *sh)
{
    if (sh->mig_from == NULL)
        return;
    uint64_t before = sh->mig_rows;
    while (!sh->mig_finished) {
        chunk c = {.max_pass = SIZE_MAX, .max_mig = SIZE_MAX};
        sh->mig_finished = sweep(sh, &c);
    }
    hl_counter_add(sh->c_migrated, sh->mig_rows - before);
    done(sh);
}
