/* persist.h - each shard's snapshots inside the worker: restore on
 * assignment, a periodic incremental snapshot that never stalls the owner
 * thread, and a synchronous one on revocation and shutdown (DESIGN.md
 * sections 2 and 6, issue 5). No Kafka here: the caller turns the offsets
 * into seeks and stored offsets.
 *
 * One hl_persist per worker owns a committer thread. A shard's owner thread
 * serialises rows with hl_snapshot_step() a few milliseconds at a time
 * (hl_persist_tick between batches); when every row is out, the writer goes
 * to the committer, which runs hl_snapshot_commit() (fsync, rename,
 * directory fsync, retention: it never touches the table), so the owner
 * never waits on the disk. Completions update the snapshot metrics when a
 * registry is given and can be read with hl_persist_poll().
 *
 * Offsets: a snapshot's next_offset is a delivered offset: every record
 * below it is applied to the table AND its lists are delivered (the offset
 * the worker stores). Applied is what the snapshot header promises;
 * delivered is what makes a restart re-publish every list a crash lost. */
#ifndef HL_PERSIST_H
#define HL_PERSIST_H

#include "io.h"
#include "metrics.h"
#include "snapshot.h"
#include "table.h"

#include <stdint.h>

#define HL_PERSIST_NO_OFFSET   (-1)    /* no snapshot: use auto.offset.reset */
#define HL_PERSIST_TICK_US     2000    /* default time budget of one tick */

typedef struct hl_persist       hl_persist;        /* opaque, one per worker */
typedef struct hl_persist_shard hl_persist_shard;  /* opaque, one per shard */

typedef struct hl_persist_opts {
    const char  *dir;               /* snapshot.dir (copied); created if missing */
    const char  *topic;             /* the input topic (copied) */
    int          retain;            /* snapshot.retain; < 1: HL_SNAPSHOT_RETAIN */
    int64_t      interval_ms;       /* snapshot.interval.ms; 0: only flushes */
    uint64_t     model_fingerprint; /* hl_model_info.fingerprint */
    size_t       step_rows;         /* rows per hl_snapshot_step; 0: about 256 KB
                                       of rows, at most HL_SNAPSHOT_STEP_ROWS */
    int64_t      tick_budget_us;    /* a tick steps until this is spent; 0: HL_PERSIST_TICK_US */
    const hl_io *io;                /* NULL: hl_io_posix(); tests inject faults */
    int          sync_writes;       /* 1: steps write their buffers themselves
                                       (default: the committer writes them) */
    hl_metrics  *reg;               /* may be NULL: no metrics, poll only */
} hl_persist_opts;

/* Creates the directory if missing and starts the committer thread.
 * NULL and a reason on failure, among them a dir that is not a directory
 * (a regular file) or is not writable: refused here rather than failing
 * every snapshot later. */
hl_persist *hl_persist_create(const hl_persist_opts *o, char *errbuf, size_t errlen);

/* Commits what is queued, then stops the committer and frees p. Every
 * hl_persist_shard must be destroyed first. NULL is a no-op. */
void hl_persist_destroy(hl_persist *p);

/* ---- restore on assignment -------------------------------------------- */

typedef struct hl_persist_restored {
    int64_t  next_offset;       /* where to seek; HL_PERSIST_NO_OFFSET: no usable
                                   snapshot, start from auto.offset.reset */
    double   duration_s;        /* also observed into halflife_restore_duration_seconds */
    uint64_t n_rows, bytes;
    int      n_rejected;        /* newer files that failed their checks (logged) */
    uint64_t model_fingerprint; /* the model the rows are in: another than the
                                   current one's means the caller migrates */
    char     path[HL_SNAPSHOT_PATH_MAX];   /* the file loaded, "" if none */
    int64_t  changelog_offset, changelog_epoch;   /* what it covers (snapshot.h) */
} hl_persist_restored;

/* Loads the newest valid snapshot of partition into a table, written
 * under any model (out->model_fingerprint says which). *tblp must be
 * an empty table created with the shard's options; on a load it is
 * destroyed and replaced by the loaded table (same options), otherwise it
 * is left as it is. Files that fail their checks (CRC, format, another
 * model, a header whose topic, partition or next offset is not the file
 * name's: a renamed file) are logged, counted in n_rejected and skipped; when none is usable the result is
 * next_offset = HL_PERSIST_NO_OFFSET and 0 is returned, so the shard is
 * rebuilt from the topic (n_rejected > 0 tells the caller files existed:
 * it may then prefer the earliest offset over auto.offset.reset=latest). Negative HL_E* only when the shard cannot be
 * served at all (no memory). Any thread; the table is not yet shared. */
int hl_persist_restore(hl_persist *p, int32_t partition, hl_table **tblp,
                       hl_persist_restored *out, char *errbuf, size_t errlen);
/* The same, also taking a file of another state shape (dim, heads,
 * half-lives: a restart with such a model): *tblp is then a table of the
 * file's shape (hl_snapshot_load_newest_any), for the caller to migrate
 * into the shard's options. */
int hl_persist_restore_any(hl_persist *p, int32_t partition, hl_table **tblp,
                           hl_persist_restored *out, char *errbuf, size_t errlen);

/* ---- per shard -------------------------------------------------------- */

/* A shard's snapshot state. restored_offset is the next_offset the shard
 * was restored at (hl_persist_restored.next_offset), so an untouched shard
 * is not snapshotted again. The first periodic snapshot is due
 * interval_ms after the first tick. NULL on no memory. */
hl_persist_shard *hl_persist_shard_create(hl_persist *p, int32_t partition,
                                          int64_t restored_offset);

/* state.store=kafka: fills the changelog offset and epoch a snapshot at
 * next_offset covers (hl_snapshot_meta), asked on the owner thread as each
 * snapshot begins. Without it both are 0: the whole changelog. */
typedef void (*hl_persist_cover_fn)(void *arg, int64_t next_offset,
                                    int64_t *changelog_offset, int64_t *changelog_epoch);
void hl_persist_shard_set_cover(hl_persist_shard *ps, hl_persist_cover_fn fn, void *arg);

/* Abandons a snapshot in progress (its temporary file is removed); a commit
 * already queued still completes. Owner thread or after the hand-back.
 * NULL is a no-op. */
void hl_persist_shard_destroy(hl_persist_shard *ps);

/* Between batches, on the owner thread. applied_offset is the offset after
 * the newest record applied to tbl; delivered_offset (<= applied_offset)
 * the one below which every record is applied and its lists delivered,
 * i.e. the offset the worker stores. Begins a snapshot at delivered_offset
 * when one is due (interval elapsed, delivered_offset >= 0 and above the
 * newest snapshot's, no commit of this shard still queued) and steps a
 * running one for at most the tick budget. When every row is out it waits
 * (ticks return at once) until delivered_offset reaches the applied_offset
 * of that moment, then queues the commit: rows stepped while batches ran
 * may hold newer events, and their lists must be out before the file is
 * visible. now_ms is monotonic. Returns 1 when it spent its budget writing
 * rows (a thread owning several shards may stop ticking the others for this
 * round), 0 when it had nothing to write, or a negative HL_E* when the
 * snapshot failed (already logged and counted; the previous file stays,
 * the next try is an interval later): never a reason to stop. */
int hl_persist_tick(hl_persist_shard *ps, const hl_table *tbl, int64_t applied_offset,
                    int64_t delivered_offset, int64_t now_ms);

/* On revocation and shutdown, owner thread, after the last batch's lists
 * are delivered: makes a snapshot holding next_offset durable before
 * deadline_ms (monotonic, hl_now_mono_ms). A running snapshot begun at
 * another offset is abandoned for a fresh one; nothing is written when the
 * newest snapshot already holds next_offset or no offset is known (< 0).
 * Waits for the commit. Every failure is logged here (event=snapshot_failed
 * with its stage): the caller does not log it again. 0 once durable, else a
 * negative HL_E* with the
 * reason (HL_EIO "deadline ..." when time ran out: the commit may still
 * land later; the previous snapshot stays valid either way). */
int hl_persist_flush(hl_persist_shard *ps, const hl_table *tbl, int64_t next_offset,
                     int64_t deadline_ms, char *errbuf, size_t errlen);

/* The input topic was deleted and created again (the restored offset lay
 * beyond its end): makes a snapshot of tbl at offset, the new topic's
 * position, durable before deadline_ms, then renames every other file of
 * the partition (the old topic's) to <name>.topic-recreated, so a restore
 * never takes one for the new topic's state: one named above offset
 * sorts as newer, one below is a fallback from damaged newer files. They
 * are renamed when the write fails too (the users are then in memory
 * only, until the shard's next snapshot): left, a restart after the new
 * topic passed their offsets restored one as valid. An intent file
 * (<topic>.<partition>.recreating) is durable before the write and gone
 * once every rename is done: a restore that finds it with the file at
 * offset written finishes the renames first, so a crash between the two
 * never restores the old topic's file. It names the old files (name and
 * inode): one left behind once its restart finished (its unlink failed)
 * moves none of the new topic's later files and is dropped with
 * event=snapshot_intent_stale. *n_aside: files renamed. Before
 * the shard is handed to its thread. 0, or a negative HL_E* with the
 * reason (a rename that failed names the file; the intent then stays,
 * and the next restore tries the renames again). */
int hl_persist_shard_restart_at(hl_persist_shard *ps, const hl_table *tbl, int64_t offset,
                                int64_t deadline_ms, int *n_aside, char *errbuf,
                                size_t errlen);

/* The next_offset of the newest durable snapshot of this shard (written or
 * restored), HL_PERSIST_NO_OFFSET if none. Any thread. */
int64_t hl_persist_shard_durable(const hl_persist_shard *ps);

/* 1 while a snapshot of this shard is being stepped or committed. */
int hl_persist_shard_busy(const hl_persist_shard *ps);

/* ---- model swaps (DESIGN.md section 10) -------------------------------- */

/* The model fingerprint restores accept from now on. Any thread. */
void hl_persist_set_model(hl_persist *p, uint64_t fingerprint);

/* The newest snapshot was written under another model than the rows are
 * in now (a restore migrated them): the next one is due even at an offset
 * already saved. Owner thread or before the hand-over. */
void hl_persist_shard_resave(hl_persist_shard *ps);

/* The shard's rows are now in the model of fingerprint (all of them: call
 * it once a migration is complete). A snapshot in progress is abandoned,
 * and the next one is due even at an offset already saved, so the newest
 * file soon names the new model. Owner thread; NULL is a no-op. */
void hl_persist_shard_set_model(hl_persist_shard *ps, uint64_t fingerprint);

/* ---- completions and totals ------------------------------------------- */

typedef struct hl_persist_done {
    int32_t  partition;
    int      rc;                /* 0 or the HL_E* of the failure */
    int64_t  next_offset;
    double   duration_s;        /* begin to durable */
    double   commit_s;          /* the committer's part (fsync, rename, ...) */
    uint64_t bytes, n_rows;
    int64_t  wall_ms;           /* when it completed */
    char     err[256];          /* the reason when rc != 0 */
} hl_persist_done;

/* Moves up to max completions (oldest first) into out; returns the count.
 * At most 64 are kept: older ones are dropped first. Any thread. */
int hl_persist_poll(hl_persist *p, hl_persist_done *out, int max);

typedef struct hl_persist_stats {
    uint64_t ok, failed;        /* snapshots made durable / failed anywhere */
    uint64_t bytes;             /* written by successful snapshots */
    uint64_t skipped;           /* due but unchanged since the newest one */
    int64_t  max_tick_us;       /* longest single hl_persist_tick */
    int      queued;            /* commits waiting or running */
} hl_persist_stats;
void hl_persist_stats_get(hl_persist *p, hl_persist_stats *st);

#endif
