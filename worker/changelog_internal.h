/* changelog_internal.h - what the files of the Kafka state store share:
 * changelog.c (flushes), changelog_restore.c (reading a partition back,
 * its pages faulted in by changelog_prefault.c) and changelog_topic.c (the
 * topic and the restorer's consumer). Private
 * to them; the contract is changelog.h. */
#ifndef HL_CHANGELOG_INTERNAL_H
#define HL_CHANGELOG_INTERNAL_H

#include "changelog.h"
#include "log.h"
#include "snapshot.h"

#include <pthread.h>
#include <stdatomic.h>

#define HL_CHANGELOG_EPOCH_HDR "halflife.epoch"
/* On each row: the fingerprint (16 hex digits) of the model whose space
 * the row's heads are in, so a restore knows what it reads even for the
 * rows of a flush whose checkpoint never landed. */
#define HL_CHANGELOG_MODEL_HDR "halflife.model"
/* The layout of a row record's value, decimal. Absent (or "2"): a row as
 * snapshot format 2 holds it, the heads at t_ref; "3", what this version
 * writes on every row: the same bytes with the heads at their bases
 * (decay.h, snapshot format 3). A reader refuses (counts bad, skips) a
 * record naming one it does not know rather than misread it, so a
 * downgrade over a newer writer's changelog loses those rows visibly. */
#define HL_CHANGELOG_FORMAT_HDR "halflife.format"
/* On each checkpoint (the claim too): the group.id of the deployment that
 * wrote it. Two deployments (two consumer groups) pointed at one
 * state.topic each read the other's users as their own and fence each
 * other's owners by epoch; nothing else tells them apart, so a restore
 * that reads another group's checkpoint says so (changelog_shared).
 * Absent: a writer from before the header, taken as this group's. */
#define HL_CHANGELOG_GROUP_HDR  "halflife.group"
/* On the claim of an owner that kept its local snapshot over a state
 * topic found recreated (empty): "<changelog offset>:<epoch>" of that
 * snapshot's cover, so a restart from the same snapshot after a crash
 * before the rewrite of every row ended knows the topic's records as its
 * own continuation (changelog_restore.c, adopt). */
#define HL_CHANGELOG_BASE_HDR   "halflife.base"
#define HL_CHANGELOG_FORMAT     3
/* The highest epoch a record may name: the next owner claims one more,
 * and every epoch is written and read back as a non-negative int64. A
 * header of INT64_MAX (anyone may write the topic) made the claim
 * INT64_MAX + 1, which wrapped negative: every later record of every
 * owner was then refused as bad, for good. Ownerships never come near;
 * a record naming MAX itself makes the next claim MAX too, not MAX + 1
 * (claim_epoch, changelog_restore.c). */
#define HL_CHANGELOG_EPOCH_MAX ((int64_t)1 << 62)
#define CK_BYTES 52                 /* a checkpoint's value (changelog.c) */
#define HL_CHANGELOG_RECORD_MAX 1000000   /* Kafka's default max.message.bytes */
/* What a row record takes beside its key and value in librdkafka's size
 * check against message.max.bytes: the record's framing (36 bytes at
 * most) and its headers (about 90), rounded up so a row this lets through
 * is never refused at once. */
#define HL_CHANGELOG_RECORD_ROOM 256

enum { KIND_ROW, KIND_TOMBSTONE, KIND_CHECKPOINT, N_KINDS };

typedef struct hl_changelog_ck {
    int64_t       offset;           /* input offset every earlier record covers */
    uint64_t      fingerprint;
    hl_table_meta meta;
    int64_t       epoch;
} hl_changelog_ck;

typedef struct changelog_metrics {
    hl_counter   *records[N_KINDS];  /* halflife_changelog_records_total{kind} */
    hl_counter   *bytes;             /* halflife_changelog_bytes_total */
    hl_counter   *fenced;            /* halflife_changelog_fenced_writes_total */
    hl_counter   *flush_failed;      /* halflife_changelog_flush_failures_total */
    hl_counter   *stale;             /* halflife_changelog_stale_records_total */
    hl_counter   *bad;               /* halflife_changelog_bad_records_total */
    hl_counter   *chain_gaps;        /* halflife_changelog_chain_gaps_total */
    hl_counter   *oversized;         /* halflife_changelog_oversized_rows_total */
    hl_counter   *recreated;         /* halflife_changelog_recreated_total */
    hl_counter   *foreign;           /* halflife_changelog_foreign_checkpoints_total */
    hl_histogram *flush_s;           /* halflife_changelog_flush_duration_seconds */
} changelog_metrics;

struct hl_changelog {
    hl_changelog_opts o;
    char         topic[256], input_topic[256];
    char         group[256];         /* o->group_id: HL_CHANGELOG_GROUP_HDR */
    int          n_heads, dim, history;   /* the first model's shape: a table's own
                                             (shape_of) is what rows are written and
                                             read in, since a live swap may change it */
    size_t       row_max;
    size_t       record_max;         /* the producer's message.max.bytes, or the
                                        topic's max.message.bytes when lower: a
                                        row record above it is left out of flushes */
    int          partitions;         /* of the input topic */
    rd_kafka_t  *rk;                 /* the restorer's consumer */
    changelog_metrics mx;
    char         ck_key[HL_MAX_ID_LEN + 1];   /* the checkpoints' key */
    char         recreation_key[HL_MAX_ID_LEN + 1];   /* the recreation claims' */
    _Atomic uint64_t fp;             /* the current model (hl_changelog_set_model) */
};

/* The shape a table's rows are written to and read from the changelog
 * in: the model's it was made for (a live swap to another shape gives a
 * shard a table of the new one, worker/swap.c). */
typedef struct row_shape {
    int    n_heads, dim;
    size_t row_max;             /* hl_snapshot_row_max */
} row_shape;

static inline row_shape shape_of(const hl_table *tbl)
{
    const hl_table_opts *o = hl_table_opts_get(tbl);
    return (row_shape){o->decay.n_heads, o->decay.dim,
                       hl_snapshot_row_max(o->decay.n_heads, o->decay.dim, o->history)};
}

/* One changelog record as a restore reads it: librdkafka's message and the
 * last value of each of its headers (NULL: absent). */
typedef struct hl_changelog_rec {
    const void *key, *value;        /* value NULL: a tombstone */
    size_t      key_len, len;
    const void *epoch, *model;      /* HL_CHANGELOG_EPOCH_HDR, HL_CHANGELOG_MODEL_HDR */
    size_t      epoch_len, model_len;
    const void *format;             /* HL_CHANGELOG_FORMAT_HDR */
    size_t      format_len;
    const void *group;              /* HL_CHANGELOG_GROUP_HDR */
    size_t      group_len;
    const void *base;               /* HL_CHANGELOG_BASE_HDR */
    size_t      base_len;
    int32_t     partition;
    int64_t     offset;
} hl_changelog_rec;

/* changelog_restore.c: records applied to tbl as a restore applies the
 * ones it reads (base as hl_changelog_restore takes it), then the meta and
 * the models held set as after a read; nothing is claimed or produced.
 * What a restore does with the bytes a broker hands it, without a broker
 * (fuzz_changelog). 0, HL_ENOENT (base refused) or HL_ENOMEM. */
int hl_changelog_replay(hl_changelog *cl, hl_table *tbl, const hl_changelog_base *base,
                        const hl_changelog_rec *recs, size_t n, hl_changelog_restored *out,
                        char *errbuf, size_t errlen);

/* changelog_topic.c: a changelog with no consumer and no topic check, for
 * hl_changelog_replay alone. NULL and a reason on failure. */
hl_changelog *hl_changelog_create_offline(const hl_changelog_opts *o, char *errbuf,
                                          size_t errlen);

size_t      hl_changelog_ck_encode(unsigned char *buf, const hl_changelog_ck *ck);
int         hl_changelog_ck_decode(const unsigned char *p, size_t len, hl_changelog_ck *ck);
void        hl_changelog_ck_key_init(hl_changelog *cl);

/* changelog_topic.c: the checks and the creation of the topic (created
 * with a max.message.bytes that holds record_max; an existing one's is
 * read and applied with hl_changelog_topic_limit). */
int  hl_changelog_topic_ready(hl_changelog *cl, char *errbuf, size_t errlen);
/* The state topic's max.message.bytes, as a broker describes it (text),
 * applied: below the producer's limit, record_max drops to it, so a row
 * above it is left out of flushes (counted, told) instead of failing each
 * one at the broker; told once with what to do. Anything else (larger,
 * not a number) changes nothing. Returns record_max. Before the shards
 * exist only (record_max is read unlocked). */
size_t hl_changelog_topic_limit(hl_changelog *cl, const char *value);

/* changelog_prefault.c: a helper thread that faults the row blocks of an
 * empty table in ahead of a restore's writes, staying within a bound of
 * the rows applied (the read stores their count in applied). Only a hint:
 * started 0 when nothing runs, and the read goes on without. */
#define PREFAULT_SPANS 512                /* table blocks (16384 rows each) */

typedef struct hl_changelog_prefault {
    hl_table_span    spans[PREFAULT_SPANS];
    int              n, started;
    atomic_int       stop;
    _Atomic uint64_t applied;             /* rows applied so far (the read's) */
    pthread_t        th;
} hl_changelog_prefault;

/* Maps the row blocks of n_rows ids and starts faulting them in. */
void hl_changelog_prefault_start(hl_changelog_prefault *pf, hl_table *tbl, size_t n_rows);
/* Stops the thread and waits for it; nothing when none was started. */
void hl_changelog_prefault_stop(hl_changelog_prefault *pf);

#endif
