/* fold.h - fold-in of new items from the stream (catalogue.foldin,
 * DESIGN.md section 11), wired into the worker: one accumulator per worker
 * (core/foldin.h) fed by every shard thread, and the publication of ready
 * items' vectors to the item topic.
 *
 * Consistency: a worker never ranks with its own sums. When an item is
 * ready (catalogue.foldin.min.events interactions seen by this worker) and
 * again each time its count doubles, the worker sends an ItemUpdate with
 * the embedding and foldin.events = the count to the item topic; every
 * worker, the sender included, applies it from there like any embedding
 * (items.h). So all workers and shards serve the same vectors, and
 * restarts and rebalances keep them (the topic is compacted and re-read at
 * start). A crash loses only what was not published: interactions below
 * min.events or since the last publication. A fresh accumulator (after a
 * restart) publishes again only at twice the count on the topic. A
 * publication a purge takes back (hl_producer_purge: a release's, which
 * takes every record the producer holds) is sent again by the next flush
 * of any thread, from the sums as they are then, unless the topic's record
 * for the item is by then built from at least half as many interactions. 
 *
 * An operator's record wins: the worker does not publish for an item the
 * model knows or an operator's record names (hl_items_foldin_state), and
 * the catalogue ignores fold-in records for such items (a race between the
 * two is settled in memory; see README "Fold-in" for compaction).
 *
 * Threads: a shard thread notes its batch's unknown-item events in its own
 * hl_foldin_local (no lock), takes its users' queries from the batch's
 * refresh, and at the batch's end hands them to the accumulator under one
 * lock per FOLD_CHUNK notes.
 *
 * A model swap starts a new accumulator for the new model
 * (hl_wfoldin_rebind, before it goes live): the sums are of one model's
 * queries and the map is fitted over its items, so neither carries over.
 * A thread's notes go to the accumulator of the model it served the batch
 * with, and only while that is the newest (a thread still on the old model
 * counts them as skipped, even those it resolved before the rebind: the
 * old accumulator takes nothing once replaced). An item the old accumulator was counting starts
 * again; one it published is sent again at twice its count on the topic. */
#ifndef HL_FOLD_H
#define HL_FOLD_H

#include "codec_item.h"
#include "items.h"
#include "metrics.h"
#include "producer.h"
#include "rank.h"
#include "shard.h"

typedef struct hl_wfoldin hl_wfoldin;   /* opaque */

#define FOLD_CHUNK 64       /* users per encoder pass, notes per lock */
#define FOLD_FILTER_WORDS 128   /* 8192 bits: the noted users' rows, for the take */

typedef struct hl_wfoldin_opts {
    hl_items           *items;       /* borrowed: the catalogue's reader */
    const hl_model     *m;           /* the start model (hl_items_model); each swap's
                                        comes through hl_wfoldin_rebind */
    int                 min_events;  /* catalogue.foldin.min.events */
    float               lift;        /* catalogue.foldin.lift */
    float               distinct;    /* catalogue.foldin.distinct */
    int32_t             max_items;   /* catalogue.max.new.items */
    hl_producer        *prod;        /* borrowed; NULL: publishes nothing */
    const char         *topic;       /* items.topic */
    hl_item_codec_opts  codec;
    hl_metrics         *reg;
} hl_wfoldin_opts;

/* Fits the map over the model's items. NULL and a reason on failure. */
hl_wfoldin *hl_wfoldin_create(const hl_wfoldin_opts *o, char *errbuf, size_t errlen);
void        hl_wfoldin_destroy(hl_wfoldin *wf);          /* NULL is a no-op */

/* Model swap, main thread, before m goes live (after hl_items_rebind): a
 * new accumulator for m, its map fitted over m's items (a pass over them,
 * as at start); the old one is freed when the last thread that used it has
 * flushed. A no-op if m is the current one. HL_EINVAL and a reason if m's
 * map cannot be fitted: the old accumulator then stays, and the threads
 * that serve m skip their notes (counted) until a later model rebinds. */
int         hl_wfoldin_rebind(hl_wfoldin *wf, const hl_model *m, char *errbuf, size_t errlen);

/* A ready item's decayed sums (hl_foldin_sums) in the current
 * accumulator, under its lock: for tests and tools. With o.prod NULL nothing is ever published (bench, tests). */
int hl_wfoldin_sums(hl_wfoldin *wf, const char *id, uint32_t len, float *S, double *M);

/* One shard thread's notes of its batch: the unknown-item events. */
typedef struct fold_note {
    hl_shard *sh;
    int       ev;                  /* index into sh->ev */
    uint32_t  off, len;            /* item id in ids */
    uint32_t  hash;                /* hl_foldin_hash of the id, from the event's
                                      item_key (decode's hash of it) */
    int32_t   user;                /* its user (hl_foldin_local_resolve); -1: the
                                      event was not applied or the user is gone */
    float     w;                   /* the event's weight (at the note: unscaled) */
    int64_t   ts_ms;               /* and time (at the resolve): the flush reads
                                      no event again */
} fold_note;

/* A user of the batch's notes: its row and, once the refresh or the fill
 * has encoded it, its query (row `user` of uq). */
typedef struct fold_user {
    const hl_shard *sh;
    uint32_t        row;
    uint32_t        slot;          /* in uslot, so the hash is cleared user by user */
    int             has_q;
} fold_user;

typedef struct hl_foldin_local {
    fold_note   *note;  int n, cap;
    char        *ids;   size_t ids_used, ids_cap;
    fold_user   *user;  int n_user, cap_user;
    float       *uq;               /* (cap_user, dim): the users' queries */
    int32_t     *uslot; uint32_t n_uslot;  /* users by (shard, row): user + 1, 0 empty */
    uint64_t     ufilter[FOLD_FILTER_WORDS];  /* bit row % 8192 set: a user of the notes
                                      may have that row (in some shard) */
    int          dim;              /* of the model below (local_shape) */
    size_t       x_floats, act_floats;  /* X's and act's room */
    struct fold_gen *gen;          /* the accumulator of the batch's model: a
                                      reference from resolve to flush */
    hl_row_view *views;            /* FOLD_CHUNK users for one encoder pass */
    float       *X, *act;          /* encoder scratch (a thread without a ranker) */
    uint8_t     *enc;   size_t enc_cap;
    float       *vecs;             /* FOLD_CHUNK x (3 dim + 1): due items' vectors
                                      and sums */
    uint64_t     dropped;          /* notes lost to out of memory */
} hl_foldin_local;

int  hl_foldin_local_init(hl_wfoldin *wf, hl_foldin_local *loc, char *errbuf, size_t errlen);
void hl_foldin_local_reset(hl_foldin_local *loc);

/* At decode: the event sh->ev[ev] names item id (len bytes), unknown to
 * the model, and carries its hl_item_key (0: the id is hashed here);
 * w is its weight before catalogue.foldin.e_in.scale (which
 * scales what a folded item's event adds to the user's state, not what
 * fold-in learns from it). Grows the notes on demand (amortised; counted
 * when it cannot). */
void hl_foldin_local_note(hl_foldin_local *loc, hl_shard *sh, int ev, const char *id,
                          uint32_t len, float w);

/* The batch's steps after the apply, in this order (batch.c):
 *
 * resolve: each noted event that was applied (not a duplicate or refused)
 * is tied to its user's row as the batch left it. m is the thread's model:
 * the notes go to m's accumulator, and are counted as skipped and
 * forgotten while m is not the newest model (hl_wfoldin_rebind).
 *
 * take: from a refresh of sh's rows[0..n) on ranker rk (publish.c, after
 * hl_ranker_refresh succeeded), the queries of the noted users among them
 * (hl_ranker_query): the query a user's list was just ranked with is the
 * one fold-in adds, so fold-in pays no encoder pass of its own for it.
 *
 * fill: after sh's lists are published and before its sweep, the noted
 * users of sh that no refresh encoded (held back by recs.min.interval.ms,
 * a failed refresh, or a worker without recs) get their query: through rk
 * when there is one (the same bits a refresh gives), else through the
 * model's encoder (SGEMM, hl_encoder_forward).
 *
 * flush: each resolved note adds its user's query, with the event's
 * weight and time, to the accumulator under one lock per FOLD_CHUNK notes;
 * items that became due are published. Forgets the notes.
 *
 * Each note is counted once: folded in (halflife_foldin_events_total) or
 * skipped, by reason (halflife_foldin_skipped_total{reason}; a note of an
 * event not applied, at the resolve).
 *
 * So the query of an event is its user's after the batch that carried it,
 * whichever path encoded it (DESIGN.md 11; README "Fold-in"). */
void hl_foldin_local_resolve(hl_wfoldin *wf, hl_foldin_local *loc, const hl_model *m);
void hl_foldin_local_take(hl_foldin_local *loc, const hl_shard *sh, const uint32_t *rows,
                          int n, const hl_ranker *rk);
void hl_foldin_local_fill(hl_wfoldin *wf, hl_foldin_local *loc, const hl_shard *sh,
                          hl_ranker *rk);
void hl_foldin_local_flush(hl_wfoldin *wf, hl_foldin_local *loc);

#endif
