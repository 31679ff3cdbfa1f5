/* items_internal.h - what items.c (the item topic's reader thread),
 * items_local.c (the shard threads' side of its views), items_stale.c
 * (its answer to stale fold-in tombstones) and items_dlq.c (its bad
 * updates and their dead-letter copies) share. Not part of the contract:
 * that is items.h. */
#ifndef HL_ITEMS_INTERNAL_H
#define HL_ITEMS_INTERNAL_H

#include "items.h"
#include "log.h"

#include <pthread.h>
#include <stdatomic.h>

#define KNOWN_IDS          64   /* registry ids whose schema was checked, kept */
#define HL_ITEM_DETAIL_LEN 256   /* a bad update's reason, as a sentence */
/* the dead-letter copy's headers that a failed copy's key keeps, in its
 * header[0], [1] and [2]: what item_dlq_failed says (items_dlq.c) */
#define HL_ITEM_DLQ_OFFSET_HEADER    "halflife.source.offset"
#define HL_ITEM_DLQ_PARTITION_HEADER "halflife.source.partition"
#define HL_ITEM_DLQ_REASON_HEADER    "halflife.reason"

typedef struct known_id {
    int32_t id;
    int     ours;               /* the id's schema is schemas/item_update.avsc */
} known_id;

#define GEN_SLOTS           4   /* model generations whose last view is kept */

/* A stale tombstone the catalogue ignored, its record to be sent again
 * (items_stale.c). */
typedef struct stale_note {
    int32_t  partition;
    int64_t  offset;            /* the tombstone's */
    int64_t  due_ms;            /* monotonic: sent no sooner (items_stale.c) */
    uint32_t len;
    char     id[HL_MAX_ID_LEN];
} stale_note;

typedef struct catref {
    hl_catview *v;
    uint64_t    gen;            /* the model generation its rows are of */
    atomic_int  refs;
    struct hl_items *owner;     /* takes v back as its spare */
} catref;

struct hl_items {
    hl_items_opts   o;
    char           *topic;
    rd_kafka_t     *rk;
    hl_catalogue   *cat;
    pthread_t       tid;
    int             started;
    atomic_int      stop, loaded;
    atomic_llong    stream_ts_ms;
    atomic_llong    applied;        /* updates applied since start (hl_items_applied) */
    pthread_mutex_t mu;
    catref         *slot[GEN_SLOTS];    /* under mu: the newest view of each
                                           generation, at gen % GEN_SLOTS */
    hl_catview     *spare;              /* under mu: a view no one reads */
    pthread_mutex_t cat_mu;             /* the catalogue: reader vs. rebind */
    const hl_model *m;                  /* under cat_mu: what the catalogue is bound to */
    uint64_t        gen;                /* under cat_mu: m's generation */
    /* the reader thread's own */
    int             n_parts;
    int64_t        *end;                /* offset to reach per partition */
    uint8_t        *done;
    int64_t         retry_at_ms;
    uint64_t        viewed_version;
    int             published;          /* a view was made current */
    int64_t         next_view_us;       /* no view before (monotonic): pacing */
    uint64_t        pending;            /* updates applied, not yet counted */
    int             absent;             /* the cluster says the topic does not exist */
    int             fewer;              /* a count below n_parts, said once */
    float          *vec;                /* 2 * vec_dim floats: e_in, e_out */
    int             vec_dim;            /* >= o.codec.dim (decode_dim) */
    rd_kafka_message_t **kept;          /* per partition: the update waiting for its
                                           schema id (the partition is paused) */
    int             n_kept;
    int64_t         id_wait_end_ms;     /* this burst's waits for new ids end then;
                                           0: none waited yet (resolve_id_waiting) */
    known_id        known[KNOWN_IDS];   /* registry ids whose schema was checked */
    int             n_known;
    hl_log_limit    bad_limit;
    hl_log_limit    wait_limit;     /* item_update_waits: one per update naming a new id */
    hl_log_limit    dlq_limit;      /* item_dlq_failed: one per copy that failed */
    hl_ticket       dlq_ticket;     /* the dead-letter copies', never waited for:
                                       a failed one comes back here (items_dlq.c) */
    hl_ticket_keys  dlq_keys;
    hl_log_limit    evict_limit;    /* foldin_evict_tombstone_failed */
    hl_ticket       evict_ticket;   /* the eviction tombstones', never waited for:
                                       a purged one comes back here (items.c) */
    hl_ticket_keys  evict_keys;
    stale_note     *stale;          /* read, not yet answered (items_stale.c) */
    int             n_stale, cap_stale;
    uint32_t       *stale_slot;     /* index of the notes by item id: note + 1, 0 empty */
    uint32_t        n_stale_slot;   /* 2 * cap_stale, a power of two */
    int64_t         stale_due_ms;   /* the earliest note's due_ms */
    uint64_t        stale_rng;      /* the notes' delays: this worker's own draw */
    hl_log_limit    stale_limit;    /* foldin_stale_tombstone */
    hl_gauge       *g_hidden, *g_added, *g_added_foldin, *g_loaded, *g_parts;
    hl_counter     *c_updates, *c_ignored, *c_invalid[HL_ITEM_N_REASONS], *c_dlq,
                   *c_dlq_errors;
    hl_counter     *c_drop_known, *c_drop_dim, *c_parts_added, *c_foldin_evicted, *c_stale;
};

/* A reference to a view is dropped; the last one hands the view back to
 * its reader as the spare. Any thread. */
void    hl_items_ref_release(catref *r);
/* The newest view of generation gen, one reference for the caller; NULL
 * when none is kept. Any thread. */
catref *hl_items_ref_acquire(hl_items *it, uint64_t gen);

/* items_dlq.c. A bad update (reason r, detail a sentence) is counted,
 * logged and copied to the dead-letter topic. */
void    hl_items_bad_update(hl_items *it, const rd_kafka_message_t *rkm, hl_item_reason r,
                            const char *detail);
/* The copies that failed since the last call are said and counted
 * (halflife_dlq_errors_total). */
void    hl_items_dlq_failed(hl_items *it);

/* items_stale.c. Where rkm was read, and its halflife.evicts.offset
 * header, into u (decoded from it). */
void    hl_items_place(const rd_kafka_message_t *rkm, hl_item_update *u);
/* Sends the eviction tombstone under key on evict_ticket, naming the
 * record it evicts (at, at_len bytes: its offset in decimal, in
 * HL_ITEM_EVICTS_HEADER) and to that record's partition; partition -1 or
 * at NULL: unnamed, to the partitioner's choice. hl_producer_send's
 * result. */
int     hl_items_send_tombstone(hl_items *it, const char *key, uint32_t key_len,
                                int32_t partition, const char *at, size_t at_len,
                                char *err, size_t errlen);
/* u, a tombstone the catalogue found stale, is counted and noted. */
void    hl_items_stale_note(hl_items *it, const hl_item_update *u);
/* Once the topic was read to its end: the records of the noted items whose
 * delay is over sent again where the tombstone is still the last message
 * read of its key; the notes not due yet are kept. */
void    hl_items_stale_resend(hl_items *it);
/* The reader stops: every note is due now (hl_items_stale_resend). */
void    hl_items_stale_resend_all(hl_items *it);
/* The notes' delays drawn from a seed of this process's own. */
void    hl_items_stale_seed(hl_items *it);

#endif
