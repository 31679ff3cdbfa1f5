/* changelog.h - state.store=kafka: each shard's state kept in a compacted
 * changelog topic co-partitioned with the input, so a partition's state
 * reaches whichever worker is assigned it next, with no shared volume
 * (DESIGN.md sections 6 and 12, issue 12).
 *
 * Records of changelog partition p (the input partition p's shard):
 *   - a row:        key user_id, value one row as schemas/snapshot.md lays
 *                   it out (hl_snapshot_row_encode);
 *   - a tombstone:  key user_id, no value (the user was evicted);
 *   - a checkpoint: key HL_CHANGELOG_CHECKPOINT_KEY (longer than any
 *                   user_id can be), value the input offset every earlier
 *                   record covers, the table meta and the model
 *                   fingerprint (changelog.c has the bytes);
 *   - a recreation claim: key "halflife.input-recreated" padded to the
 *                   checkpoints' key's length (changelog.c), value
 *                   a checkpoint: the claim of an owner that found the
 *                   input topic deleted and created again (its offsets
 *                   start again), at the new topic's offset. Every row
 *                   before it names an applied offset of the old topic: a
 *                   reader forgets them there and resumes at its offset,
 *                   so the rows need not be written again
 *                   (worker_rebalance.c, flush_recreated). A key of its
 *                   own: compaction keeps it however many checkpoints
 *                   follow, as long as any row before it is kept.
 * Every record carries the header halflife.epoch: the writer's ownership
 * epoch of that partition (fencing, below). A record naming a value
 * layout in halflife.format other than today's (absent: today's) is
 * refused, counted bad, never misread (changelog_internal.h).
 *
 * A flush, every state.flush.ms per shard: the rows whose last applied
 * offset is at or above the previous flush's input offset (changed since
 * it: no list of dirty rows is kept) and the tombstones of the users
 * evicted since, are encoded at once between batches; they are produced
 * only when every list of the events they hold is delivered (so a restore
 * that skips those events as already applied never loses a list), and
 * the checkpoint only once they are all delivered (none when one failed:
 * a restore would resume past that user's events). Input offsets are
 * stored only up to the newest flush whose records are all delivered
 * (hl_changelog_storable).
 *
 * Restore, on assignment: a consumer of its own (outside the group)
 * reads the partition from its low to its high watermark, applies rows
 * and tombstones in order (later wins) and resumes the input at the last
 * checkpoint. Rows after that checkpoint (an unfinished flush) are applied
 * too: each row carries the offset of its last event, so the replay from
 * the checkpoint skips what they hold and applies what they lack.
 *
 * Fencing: the restorer takes epoch = 1 + the highest epoch in the
 * partition and writes a checkpoint under it at once (the claim). Records
 * are read in order keeping the highest epoch seen (of the records that
 * pass validation: a bad one moves nothing): one of a lower epoch
 * after it was written by an owner that had already lost the partition (a
 * zombie back from a pause) and is ignored (counted). A writer whose
 * consumer reports its assignment lost, or whose member id changed since
 * its partitions were assigned, refuses to flush (counted). A
 * local snapshot's cover (the changelog offset a restart from it reads
 * from) is only ever a flush whose records follow the writer's claim with
 * nothing of another writer's between (the chain, changelog.c): a late
 * flush landing after a later owner's claim is never a cover, so a
 * restart from the cache always reads that claim and claims above it. A
 * snapshot an older writer left with such a cover is refused as a base
 * (HL_ENOENT) when the later owner's records after it show it
 * (changelog_restore.c). */
#ifndef HL_CHANGELOG_H
#define HL_CHANGELOG_H

#include "metrics.h"
#include "migrate.h"
#include "producer.h"
#include "table.h"

#include <signal.h>
#include <stdint.h>
#include <librdkafka/rdkafka.h>

#define HL_CHANGELOG_NO_OFFSET (-1)

typedef struct hl_changelog       hl_changelog;        /* opaque, one per worker */
typedef struct hl_changelog_shard hl_changelog_shard;  /* opaque, one per shard */

/* How the rows naming one model of another state shape than the table's
 * (a restart with a model of another dim, heads or half-lives) are read:
 * decoded in that model's shape and moved into the table's with mg as
 * they are read (hl_migration_row_into). */
typedef struct hl_changelog_reshape {
    hl_migration *mg;         /* the restore destroys it */
    hl_model     *from;       /* the model mg reads (NULL for a rebuild): the
                                 restore closes it after mg */
    int           rebuilt;    /* mg rebuilds from the ring alone: that model is
                                 not at hand, so neither is its shape (the row
                                 is decoded for its ring only) */
    int           n_heads, dim;   /* the rows' shape (not rebuilt) */
    double        half_life_ms[HL_MAX_HEADS];   /* their heads' (not rebuilt): a
                                 row before format 3 is rebased with them */
} hl_changelog_reshape;

/* Fills out for the rows naming model fp (not the current one): 0, 1 when
 * that model has the table's shape (its rows load as they are and are
 * migrated after the read), or a negative HL_E* (no memory: the rows are
 * then counted bad). */
typedef int (*hl_changelog_reshape_fn)(void *arg, uint64_t fp, hl_changelog_reshape *out);

typedef struct hl_changelog_opts {
    const char    *topic;             /* the changelog topic (copied) */
    const char    *input_topic;       /* copied */
    const char    *group_id;          /* the worker's group.id (copied), named on
                                         every checkpoint; NULL: "" */
    const char    *bootstrap;
    const hl_kafka_prop *kafka;       /* kafka.* keys (security etc.) for the restorer */
    int            n_kafka;
    int64_t        flush_ms;          /* state.flush.ms */
    uint64_t       model_fingerprint;
    const hl_table_opts *topts;       /* the shards' table options (borrowed) */
    hl_producer   *prod;              /* the worker's idempotent producer (borrowed) */
    rd_kafka_t    *consumer;          /* the group consumer (borrowed): offsets, fencing */
    /* 1 when this member's id changed since its partitions were assigned
     * (hl_member_gone): fenced as a lost assignment is. librdkafka 2.0.2
     * does not mark the assignment lost when the session runs out inside a
     * revocation callback, where a release's flushes run. NULL: never */
    int          (*member_gone)(void *arg);
    void          *member_arg;
    hl_metrics    *reg;
    int            create;            /* 1: create a missing topic with the admin API */
    int            timeout_ms;        /* metadata, admin and restore stall bound */
    /* set by a stop during start-up: the metadata and admin waits give
     * up at their next look (hl_kafka_metadata_wait; HL_KAFKA_STOP_SLICE_MS
     * while the broker refuses connections). NULL: they wait timeout_ms */
    volatile sig_atomic_t *start_abort;
    hl_changelog_reshape_fn reshape;  /* NULL: rows of another shape are counted bad */
    void          *reshape_arg;
} hl_changelog_opts;

/* Checks the changelog topic: present with the input topic's partition
 * count, else created (cleanup.policy=compact) when o->create, else
 * refused with a message saying how to create it. Also refuses a table
 * shape whose largest row would not fit a 1,000,000-byte record (Kafka's
 * default max.message.bytes). Starts the restorer's consumer. NULL and a
 * reason on failure. */
hl_changelog *hl_changelog_create(const hl_changelog_opts *o, char *errbuf, size_t errlen);
void          hl_changelog_destroy(hl_changelog *cl);     /* NULL is a no-op */

/* The changelog topic's name. */
const char   *hl_changelog_topic(const hl_changelog *cl);

/* A local snapshot already loaded into the table (the cache): the input
 * offset it holds and the changelog offset and epoch it covers
 * (hl_snapshot_meta). */
typedef struct hl_changelog_base {
    int64_t next_offset;
    int64_t changelog_offset, changelog_epoch;
} hl_changelog_base;

typedef struct hl_changelog_restored {
    uint64_t model_fingerprint; /* the model of every row held that the changelog
                                   wrote (halflife.model); 0: none */
    int      mixed;             /* rows held of more than one model, or naming none */
    int      base_rows;         /* rows held that came from base, not the changelog */
    int64_t  next_offset;       /* the last checkpoint's input offset, or
                                   HL_CHANGELOG_NO_OFFSET: none */
    int64_t  epoch;             /* the epoch claimed for this owner */
    int64_t  claim_end;         /* changelog offset after the claim */
    int      used_base;         /* the base was read on top of, not discarded */
    int      recreated;         /* the changelog was empty below base's changelog
                                   offset (recreated): base is the whole state, and
                                   every row must be written again */
    int      input_recreated;   /* a recreation claim was read: the rows before it
                                   hold no applied offset any more */
    int64_t  base_cover, base_epoch;    /* recreated: base's changelog offset and
                                           epoch, which the claim names */
    uint64_t n_records, n_rows, n_tombstones, n_checkpoints, n_stale, n_bad;
    uint64_t n_foreign;         /* checkpoints another group.id wrote (logged) */
    uint64_t n_migrated;        /* rows of another shape moved into the table's as
                                   read (opts.reshape), from their model */
    uint64_t n_rebuilt;         /* the same, rebuilt from their rings alone */
    uint64_t bytes;
    int64_t  low, high;         /* watermarks read between */
    double   duration_s;        /* the whole read: watermarks, records (not the claim) */
    double   read_s;            /* of it, assign to the last record applied */
} hl_changelog_restored;

/* Reads partition p of the changelog into tbl, as the overview says, and
 * claims it (hl_changelog_read, then hl_changelog_claim naming no
 * recreation). tbl is empty (base NULL), or holds
 * a local snapshot described by base: then only the changelog from
 * base->changelog_offset on is read, and the input resumes at the last
 * checkpoint read, else at base->next_offset. HL_ENOENT when base's
 * changelog offset is not within the partition's watermarks (retention
 * dropped the tail, or the topic was recreated and written since): the
 * caller restores again into an empty table without base. A base beyond
 * the end of an empty partition (the topic recreated) is the whole state:
 * kept, out->recreated set, the caller rewrites every row; so is one
 * beyond the end of a partition from 0 whose first record is the claim of
 * such a restore from the same base (it died before that rewrite ended:
 * the claim names base's cover in halflife.base); when that claim is a
 * recreation claim (both topics recreated) out->input_recreated is set
 * too and the caller saves the input topic's recreation again. Main thread (the rebalance
 * callback). 0, or a negative HL_E* when the changelog cannot be read
 * (the caller must not serve the partition from an empty table: state
 * would be lost). */
int hl_changelog_restore(hl_changelog *cl, int32_t p, hl_table *tbl,
                         const hl_changelog_base *base, hl_changelog_restored *out,
                         char *errbuf, size_t errlen);

/* hl_changelog_restore without the claim: out->next_offset and
 * out->epoch say what a claim names unless the caller moves the offset.
 * The worker checks the input topic in between: a claim written first
 * named the old topic's offset, so a crash before the rewrite of a
 * recreated topic's rows left that offset the changelog's word, and a
 * restore after the new topic grew past it skipped the new topic's events
 * below it (test_changelog_recreated.py, killed_in_rewrite). */
int hl_changelog_read(hl_changelog *cl, int32_t p, hl_table *tbl,
                      const hl_changelog_base *base, hl_changelog_restored *out,
                      char *errbuf, size_t errlen);

/* The claim: a checkpoint under out->epoch at input offset
 * out->next_offset with tbl's meta, delivered before this returns (the
 * shard's flushes follow it in order); out->claim_end is set.
 * input_recreated: a recreation claim (the overview), for an input topic
 * found recreated since the rows were written, out->next_offset then
 * naming the new topic's start. Main thread. 0, or HL_EIO / HL_ENOMEM. */
int hl_changelog_claim(hl_changelog *cl, int32_t p, const hl_table *tbl,
                       hl_changelog_restored *out, int input_recreated, char *errbuf,
                       size_t errlen);

/* The shard's flush state: epoch and restored offset from the restore.
 * Installs the eviction hook on tbl (tombstones). NULL on no memory. */
hl_changelog_shard *hl_changelog_shard_create(hl_changelog *cl, int32_t p, hl_table *tbl,
                                              const hl_changelog_restored *r);
/* Abandons a flush not yet delivered (its offsets were never stored).
 * NULL is a no-op. */
void hl_changelog_shard_destroy(hl_changelog_shard *cs);

/* Between batches, owner thread: starts a flush when one is due, produces
 * an encoded one once delivered_offset reaches its input offset, and
 * settles a delivered one (stores its input offset). applied_offset is the
 * offset after the newest record applied. Returns 1 when it encoded or
 * produced rows (the caller may end its round), else 0. */
int hl_changelog_tick(hl_changelog_shard *cs, hl_table *tbl, int64_t applied_offset,
                      int64_t delivered_offset, int64_t now_ms);

/* Revocation and shutdown, owner thread, every list delivered: flushes
 * everything up to next_offset and waits for its delivery until
 * deadline_ms (monotonic), or until the consumer says the assignment is
 * lost or the member id changed (fenced: then the records still queued
 * are the caller's to purge).
 * 0 once durable, else a negative HL_E* (logged). */
int hl_changelog_flush_now(hl_changelog_shard *cs, hl_table *tbl, int64_t next_offset,
                           int64_t deadline_ms);

/* The largest input offset that may be stored for this shard given off,
 * the offset whose lists are delivered: min(off, the newest durable
 * flush's input offset). Owner thread. */
int64_t hl_changelog_storable(const hl_changelog_shard *cs, int64_t off);

/* The input offset of the newest durable flush (restored or written). */
int64_t hl_changelog_durable(const hl_changelog_shard *cs);


/* The model restores and claims expect from now on (a live swap made it
 * current). Main thread. */
void hl_changelog_set_model(hl_changelog *cl, uint64_t fingerprint);

/* The model the shard's rows are in from now on: its flushes name it, and
 * the next one writes every row (resave). A shard never flushes while it
 * migrates (shard.c), so a flush's rows are all in one model. Owner
 * thread; NULL is a no-op. */
void hl_changelog_shard_set_model(hl_changelog_shard *cs, uint64_t fingerprint);

/* The next flush writes every row, not only the changed ones (a change
 * of model: set_model asks for it; a restore that migrated the rows).
 * Owner thread (or before the shard is given to one); NULL is a no-op. */
void hl_changelog_shard_resave(hl_changelog_shard *cs);

/* hl_persist_cover_fn (arg: the hl_changelog_shard): the changelog offset
 * after the newest durable flush whose input offset is at most
 * next_offset and whose records the chain reaches from the claim (no
 * other writer's records since it), and its epoch, for a local snapshot
 * at next_offset; 0 and 0 (the whole changelog) when none is remembered.
 * Owner thread. */
void hl_changelog_cover(void *arg, int64_t next_offset, int64_t *changelog_offset,
                        int64_t *changelog_epoch);

/* 0 when a row of n_heads x dim (and the configured state.history) fits
 * one Kafka record; else HL_EINVAL with a sentence saying what to do. A
 * model of another shape must pass it before it serves (a live swap). */
int hl_changelog_check_shape(const hl_changelog *cl, int n_heads, int dim, char *errbuf,
                             size_t errlen);

#endif
