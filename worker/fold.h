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
 * restart) publishes again only at twice the count on the topic.
 *
 * An operator's record wins: the worker does not publish for an item the
 * model knows or an operator's record names (hl_items_foldin_state), and
 * the catalogue ignores fold-in records for such items (a race between the
 * two is settled in memory; see README "Fold-in" for compaction).
 *
 * Threads: a shard thread notes its batch's unknown-item events in its own
 * hl_foldin_local (no lock), and after the batch is applied hands them to
 * the accumulator under one lock per batch. Only while its thread serves
 * the start model (the one the catalogue and the map are fitted for). */
#ifndef HL_FOLD_H
#define HL_FOLD_H

#include "codec_item.h"
#include "items.h"
#include "metrics.h"
#include "producer.h"
#include "shard.h"

typedef struct hl_wfoldin hl_wfoldin;   /* opaque */

typedef struct hl_wfoldin_opts {
    hl_items           *items;       /* borrowed: the catalogue's reader */
    const hl_model     *m;           /* the start model (hl_items_model) */
    int                 min_events;  /* catalogue.foldin.min.events */
    int32_t             max_items;   /* catalogue.max.new.items */
    hl_producer        *prod;        /* borrowed */
    const char         *topic;       /* items.topic */
    hl_item_codec_opts  codec;
    hl_metrics         *reg;
} hl_wfoldin_opts;

/* Fits the map over the model's items. NULL and a reason on failure. */
hl_wfoldin *hl_wfoldin_create(const hl_wfoldin_opts *o, char *errbuf, size_t errlen);
void        hl_wfoldin_destroy(hl_wfoldin *wf);          /* NULL is a no-op */

/* One shard thread's notes of its batch: the unknown-item events. */
typedef struct fold_note {
    hl_shard *sh;
    int       ev;                  /* index into sh->ev */
    uint32_t  off, len;            /* item id in ids */
} fold_note;

typedef struct hl_foldin_local {
    fold_note *note;  int n, cap;
    char      *ids;   size_t ids_used, ids_cap;
    float     *X, *act, *q;        /* encoder scratch for FOLD_CHUNK users */
    uint8_t   *enc;   size_t enc_cap;
    float     *vecs;               /* FOLD_CHUNK x (3 dim + 1): due items' vectors
                                      and sums */
    uint64_t   dropped;            /* notes lost to out of memory */
} hl_foldin_local;

int  hl_foldin_local_init(hl_wfoldin *wf, hl_foldin_local *loc, char *errbuf, size_t errlen);
void hl_foldin_local_reset(hl_foldin_local *loc);

/* At decode: the event sh->ev[ev] names item id (len bytes), unknown to
 * the model. Grows the notes on demand (amortised; counted when it cannot). */
void hl_foldin_local_note(hl_foldin_local *loc, hl_shard *sh, int ev, const char *id,
                          uint32_t len);

/* After the batch is applied: each noted event that was applied (not a
 * duplicate or refused) adds its user's query vector, from the user's
 * state now, to the accumulator; items that became due are published.
 * m is the thread's model: nothing is folded while it is not the start
 * model. Forgets the notes. */
void hl_foldin_local_flush(hl_wfoldin *wf, hl_foldin_local *loc, const hl_model *m);

#endif
