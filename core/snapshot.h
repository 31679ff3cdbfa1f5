/* snapshot.h - one shard's table in a file, written without stalling its
 * owner and loaded back exactly (DESIGN.md sections 2 and 6; the bytes are
 * in schemas/snapshot.md).
 *
 * Writing is incremental, because core/ has no threads and a 1M-user shard
 * is over a gigabyte: hl_snapshot_begin() opens the temporary file,
 * hl_snapshot_step() serialises a bounded number of rows (the owner calls
 * it between batches; the table may change in between), and
 * hl_snapshot_commit() makes the file durable and visible without touching
 * the table, so the worker may run it on another thread. The result is a
 * fuzzy snapshot that still restores exactly: every row carries the offset
 * of the last event applied to it, and the header's next_offset is the one
 * given to begin, so replaying from it re-applies whatever a row missed and
 * skips what it already holds. A step writes each full 1 MiB buffer
 * itself unless hl_snapshot_async() hands the writes to another thread;
 * whoever writes a buffer also starts its writeback (hl_io.write_behind),
 * so the commit's fsync waits for little more than the last buffers.
 * Reading (hl_snapshot_read, _load, _load_newest) is in snapshot_load.c.
 *
 * Files are named <topic>.<partition>.<next_offset, 20 digits>.hls so many
 * shards share one directory; the newest `retain` per shard are kept. */
#ifndef HL_SNAPSHOT_H
#define HL_SNAPSHOT_H

#include "io.h"
#include "table.h"

#define HL_SNAPSHOT_VERSION    3        /* 2 added the changelog fields to the
                                           header and each history entry's item
                                           key and weight; 3 holds each head at
                                           its base (decay.h), not at t_ref, in
                                           the same bytes. 1 and 2 are still
                                           read: their heads are rebased */
#define HL_SNAPSHOT_TOPIC_MAX  249      /* Kafka's limit on a topic name */
#define HL_SNAPSHOT_MAX_DIM    65536    /* what a reader accepts */
#define HL_SNAPSHOT_STEP_ROWS  1024     /* default budget of one step: about
                                           1 ms at dim 64, 3 heads, history 32 */
#define HL_SNAPSHOT_RETAIN     2        /* snapshot.retain default */
#define HL_SNAPSHOT_PATH_MAX   4096

/* What identifies a snapshot besides its rows. */
typedef struct hl_snapshot_meta {
    char     topic[HL_SNAPSHOT_TOPIC_MAX + 1];  /* NUL-terminated, [A-Za-z0-9._-] */
    int32_t  partition;                         /* >= 0 */
    int64_t  next_offset;      /* first input offset NOT applied at begin, >= 0 */
    uint64_t model_fingerprint;                 /* hl_model_info.fingerprint */
    /* state.store=kafka (worker/changelog.h): the changelog offset from
     * which a restore must read on top of this file, and the owner epoch
     * in force there. 0 and 0 (what a zeroed meta and a version 1 file
     * give) mean the whole changelog: always correct, never a saving. */
    int64_t  changelog_offset;                  /* >= 0 */
    int64_t  changelog_epoch;                   /* >= 0 */
} hl_snapshot_meta;

/* ---- writing ---------------------------------------------------------- */

typedef struct hl_snapshot_writer hl_snapshot_writer;   /* opaque */

/* Opens dir/<name>.hls.tmp and writes the header. Every event with an
 * offset below meta->next_offset must already be applied to tbl. io NULL
 * means hl_io_posix(). On success *wp owns the open file; finish with
 * hl_snapshot_commit() or hl_snapshot_abort(). Owner thread. */
int hl_snapshot_begin(const hl_io *io, const char *dir,
                      const hl_snapshot_meta *meta, const hl_table *tbl,
                      hl_snapshot_writer **wp, char *errbuf, size_t errlen);

/* Serialises the rows with the next budget_rows ids (0 means
 * HL_SNAPSHOT_STEP_ROWS) of the same tbl. Returns 1 when every row is out
 * (the table meta is captured then), 0 when more remain (or, async, when
 * the buffers are all waiting for the drainer), or a negative HL_E*; after
 * an error only hl_snapshot_abort() is valid. Owner thread, between
 * batches: the table may change between steps. */
int hl_snapshot_step(hl_snapshot_writer *w, const hl_table *tbl,
                     size_t budget_rows, char *errbuf, size_t errlen);

typedef struct hl_snapshot_result {
    char     path[HL_SNAPSHOT_PATH_MAX];  /* the published file */
    uint64_t n_rows;
    uint64_t bytes;                       /* file size */
    int      n_deleted;                   /* older files removed by retention */
    int      n_delete_failed;             /* ... that could not be removed */
} hl_snapshot_result;

/* After step returned 1: writes the trailer, fsyncs, closes, renames over
 * the final name, fsyncs the directory, then keeps the newest `retain`
 * (< 1 means HL_SNAPSHOT_RETAIN) files of this topic and partition and
 * deletes older ones (a failed delete is counted in res, not an error).
 * Never touches the table, so any thread may call it. Always consumes w;
 * on failure the temporary file is removed and older snapshots are intact.
 * res may be NULL. */
int hl_snapshot_commit(hl_snapshot_writer *w, int retain,
                       hl_snapshot_result *res, char *errbuf, size_t errlen);

/* Moves the file writes off the owner thread. Without it a step writes
 * each full 1 MiB buffer itself, and write() into the page cache can take
 * tens of milliseconds on a busy machine. After hl_snapshot_async(w)
 * (called once, before the first step) steps only fill a ring of buffers
 * and another thread calls hl_snapshot_drain() to write them; a step that
 * finds the ring full returns 0 early, so the owner never waits for the
 * disk. */
void hl_snapshot_async(hl_snapshot_writer *w);

/* Writes the buffers steps have filled, in order, starting writeback of
 * each; blocks in write() and when the device's queue is full. Any
 * one thread at a time, concurrently with hl_snapshot_step on the owner.
 * Returns the number of buffers written (0: nothing was ready) or a
 * negative HL_E*; a failure is also returned by the next step. Commit and
 * abort must not run while a drain does (the drainer may be the thread
 * that commits: it drains, then commits, after the last step). */
int hl_snapshot_drain(hl_snapshot_writer *w, char *errbuf, size_t errlen);

/* Closes and removes the temporary file and frees w. NULL is a no-op. */
void hl_snapshot_abort(hl_snapshot_writer *w);

/* begin + step until done + commit, for tests and tools. */
int hl_snapshot_write(const hl_io *io, const char *dir,
                      const hl_snapshot_meta *meta, const hl_table *tbl,
                      int retain, hl_snapshot_result *res,
                      char *errbuf, size_t errlen);

/* Renames dir's snapshots of topic/partition, all but the one named
 * keep (< 0: all of them), to <name><suffix>, which no listing matches
 * any more, so they are neither loaded nor retained (kept for the
 * operator; the input topic they followed was created again: a worker
 * restoring one named above the new topic's end would seek past it, one
 * named within it would resume that topic with another's state).
 * Temporary files are left to retention. io NULL: hl_io_posix().
 * *n_aside: files renamed. 0, or HL_EIO naming the file that could not be
 * renamed (the rest are still tried). An earlier copy of the same name
 * is kept: hl_snapshot_aside_name. */
int hl_snapshot_set_aside(const hl_io *io, const char *dir, const char *topic,
                          int32_t partition, int64_t keep, const char *suffix,
                          int *n_aside, char *errbuf, size_t errlen);

/* The name a file at path from goes aside under: <from><suffix>, or,
 * when an earlier copy holds that name (the topic was recreated again
 * after the new topic's file reached the same offset), <from><suffix>.2
 * and on, so no copy is renamed over another; past
 * HL_SNAPSHOT_ASIDE_MAX copies of one name the last is reused (the file
 * must still leave the listing). io NULL: hl_io_posix(). 0, or HL_EINVAL
 * when the name does not fit len. */
#define HL_SNAPSHOT_ASIDE_MAX 64
int hl_snapshot_aside_name(const hl_io *io, const char *from, const char *suffix,
                           char *to, size_t len);

/* The file name (no directory) of a snapshot: fails with HL_EINVAL on a
 * topic outside [A-Za-z0-9._-]{1,249}, a negative partition or offset. */
int hl_snapshot_name(const hl_snapshot_meta *meta, char *name, size_t len,
                     char *errbuf, size_t errlen);

/* ---- one row ----------------------------------------------------------- */

/* One row in the layout of schemas/snapshot.md: what a snapshot file holds
 * per user and what the Kafka changelog (worker/changelog.c) holds as a
 * record's value, so the two never drift apart. */

/* Largest encoding of a row of this shape. */
size_t hl_snapshot_row_max(int n_heads, int dim, int history);

/* Writes v (row id row) at buf, which has room for hl_snapshot_row_max();
 * returns the bytes written. History is written oldest first. */
size_t hl_snapshot_row_encode(unsigned char *buf, int n_heads, int dim,
                              uint32_t row, const hl_row_view *v);

/* Where a decoded row's numbers go: m holds n_heads * (dim + 1) floats,
 * the three history arrays history entries each. */
typedef struct hl_snapshot_row_scratch {
    float   *m;
    int32_t *hist_item;
    int64_t *hist_ts;
    uint8_t *hist_type;
    uint64_t *hist_key;     /* history entries each; unused for version 1 */
    float   *hist_w;
} hl_snapshot_row_scratch;

/* Decodes exactly len bytes at p as one row of this shape, in the row
 * layout of file format version (1..HL_SNAPSHOT_VERSION; the changelog
 * always writes HL_SNAPSHOT_VERSION), into v (user points into p, the
 * numbers into sc; hist_head 0, history = history). The heads are as
 * stored: before version 3 at t_ref, which the caller rebases
 * (hl_decay_rebase). A version 1 row has no
 * item keys or weights: v->hist_key and v->hist_w are then NULL.
 * HL_EFORMAT when the lengths do not add up to len (or a user_len outside
 * 1..HL_MAX_ID_LEN, more history entries than history), HL_ERANGE for an
 * unknown event type. Never reads outside p[0, len). */
int hl_snapshot_row_decode(const unsigned char *p, size_t len, int n_heads, int dim,
                           int history, uint32_t version, hl_snapshot_row_scratch *sc,
                           uint32_t *row, hl_row_view *v);

/* ---- reading ---------------------------------------------------------- */

typedef struct hl_snapshot_info {
    uint32_t         version;
    hl_snapshot_meta meta;
    int              dim, n_heads, history;
    double           half_life_ms[HL_MAX_HEADS];
    hl_table_meta    table_meta;       /* from the trailer */
    uint64_t         n_rows;           /* rows in the file */
    uint64_t         n_dup_rows;       /* loading: rows of a user already
                                          restored, skipped (see snapshot.c) */
    uint64_t         bytes;            /* bytes read: the file size */
    int              crc_ok;
    uint32_t         crc_stored, crc_computed;
    uint64_t         hist_entries;     /* sum of the rows' n_hist */
    int64_t          min_t_ref_ms, max_t_ref_ms, max_last_offset;
} hl_snapshot_info;

/* Called for each row in file order with the row id it had in the written
 * table; v is valid during the call only, its history ring has hist_head 0
 * and history = the file's history length. A non-zero return stops the
 * read and is returned by hl_snapshot_read(). */
typedef int (*hl_snapshot_row_fn)(void *arg, const hl_snapshot_info *info,
                                  uint32_t row, const hl_row_view *v);

/* Reads and checks path without building a table (inspect, dump). Rows are
 * handed to fn (may be NULL) as they are parsed, before the CRC at the end
 * is known. Returns 0, HL_ECRC with info complete and crc_ok 0, or another
 * HL_E* with a reason naming the file, what is wrong and where. */
int hl_snapshot_read(const hl_io *io, const char *path, hl_snapshot_info *info,
                     hl_snapshot_row_fn fn, void *arg,
                     char *errbuf, size_t errlen);

/* Any model: a model_fingerprint of 0 loads a file written under any model
 * (the caller reads info->meta.model_fingerprint and migrates the rows). */
#define HL_SNAPSHOT_ANY_MODEL 0

/* Creates a table with options o and loads path into it. The file's dim,
 * heads and half-lives must equal o's and its model fingerprint must equal
 * model_fingerprint (unless that is HL_SNAPSHOT_ANY_MODEL), else
 * HL_EMISMATCH. A file whose history length differs
 * from o->history loads keeping each user's newest entries. On success
 * *tblp owns the table (hl_table_destroy); on failure it is NULL and
 * nothing leaks. info may be NULL. */
int hl_snapshot_load(const hl_io *io, const char *path, const hl_table_opts *o,
                     uint64_t model_fingerprint, hl_table **tblp,
                     hl_snapshot_info *info, char *errbuf, size_t errlen);

/* Tries dir's snapshots of topic/partition newest first and loads the first
 * valid one. Valid includes a header naming the same topic, partition and
 * next offset as the file name (else HL_EMISMATCH: a renamed or copied
 * file, e.g. another partition's). Each newer file that was rejected is
 * described in report
 * ("rejected PATH: reason; ...", may be NULL) for the caller to log; path
 * (may be NULL) receives the file loaded. Returns 0; HL_ENOENT when there
 * is no snapshot of this shard at all (start from auto.offset.reset); or,
 * when every file was rejected, the newest file's error. */
int hl_snapshot_load_newest(const hl_io *io, const char *dir,
                            const char *topic, int32_t partition,
                            const hl_table_opts *o, uint64_t model_fingerprint,
                            hl_table **tblp, hl_snapshot_info *info,
                            char *path, size_t path_len,
                            char *report, size_t report_len,
                            char *errbuf, size_t errlen);

/* The same for a file written under any model and of any state shape (a
 * restart with a model of another dim, heads or half-lives): a file whose
 * shape is not o's loads into a table with o's options but the file's
 * dim, heads and half-lives (hl_table_opts_get says which), for the
 * caller to migrate (hl_migration_table_into). */
int hl_snapshot_load_newest_any(const hl_io *io, const char *dir,
                                const char *topic, int32_t partition,
                                const hl_table_opts *o, hl_table **tblp,
                                hl_snapshot_info *info, char *path, size_t path_len,
                                char *report, size_t report_len,
                                char *errbuf, size_t errlen);

#endif
