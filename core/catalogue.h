/* catalogue.h - the live catalogue (DESIGN.md section 11): what the item
 * topic says about items on top of the model. Hidden items (available=false,
 * or expires_at reached), items added with an embedding (unknown to the
 * model), and embeddings that override a known item's e_out and bias.
 *
 * Two objects:
 *  - hl_catalogue, the mutable table one reader keeps while it follows the
 *    item topic (one thread);
 *  - hl_catview, an immutable copy of it that any number of threads read
 *    (hl_catalogue_view builds one; the worker swaps them at batch
 *    boundaries). A view numbers its rows as the ranker does: model rows
 *    0..n_model-1, then its side items n_model..n_model+n_side-1.
 *
 * Two keys. The topic is compacted, so what survives is the newest record
 * per key; the catalogue keeps exactly that per item: the newest record
 * under its item_id (an operator's) and the newest under its fold-in key
 * (a worker's fold-in, hl_item_update.foldin_key), each replaced by the
 * next record of its key and forgotten by that key's tombstone. The record
 * in effect is the operator's if there is one, else the fold-in key's,
 * else a fold-in record an older worker wrote under the item_id. So the
 * state after reading a topic depends only on each key's newest record,
 * never on how the two keys' records interleave: compaction (which keeps
 * one per key) and deleted tombstones leave it as it was in memory. (The
 * exception is the older workers' records under the item_id: as before,
 * such a record for an item an operator names is ignored, but compaction
 * keeps it if it came later.) A known item with an embedding is scored as
 * a side item with the new vectors and its model row is masked, so nothing
 * else in the ranker needs to know. */
#ifndef HL_CATALOGUE_H
#define HL_CATALOGUE_H

#include "model.h"

#define HL_CATALOGUE_NO_EXPIRY INT64_MAX

/* One decoded ItemUpdate (schemas/item_update.avsc). Arrays are borrowed
 * for the call. */
typedef struct hl_item_update {
    const char  *id;       uint32_t id_len;
    int          tombstone;      /* null value: forget the item */
    int          available;      /* 0: hidden from every list */
    int64_t      expires_at_ms;  /* hidden from this event time on;
                                    HL_CATALOGUE_NO_EXPIRY for none */
    const float *e_in, *e_out;   /* (dim) each, or both NULL: no embedding */
    float        bias;
    int64_t      foldin_events;  /* 0: an operator's record; n > 0: vectors a
                                    worker folded in from n interactions */
    int          foldin_key;     /* 1: read under the item's fold-in key
                                    (codec_item.h), 0: under its item_id */
    /* Where the record was read on the item topic (the reader sets it; 0
     * positioned: nowhere known, as in tools and tests). A tombstone may be
     * conditional: it deletes only its key's record read from its own
     * partition at evicts_offset or before ("A stale tombstone" below). */
    int          positioned;
    int32_t      partition;
    int64_t      offset;
    int          conditional;
    int64_t      evicts_offset;
} hl_item_update;

typedef struct hl_catalogue hl_catalogue;   /* opaque */
typedef struct hl_catview   hl_catview;     /* opaque, immutable */

/* m is borrowed and must outlive the catalogue. max_new bounds the items
 * the model does not know that the catalogue keeps (catalogue.max.new.items):
 * added ones and unknown ids that were only hidden; while loading, fold-in
 * ones may take the slack more (hl_catalogue_set_slack). */
hl_catalogue *hl_catalogue_create(const hl_model *m, int32_t max_new,
                                  char *errbuf, size_t errlen);
void          hl_catalogue_destroy(hl_catalogue *c);        /* NULL is a no-op */

/* Applies u. 0; HL_EINVAL for an id outside 1..HL_MAX_ID_LEN bytes or a
 * non-finite vector value or bias (the caller's decoder refuses these
 * first; this is the last guard); HL_EFULL when u names an item the model
 * does not know, max_new such items are already kept and an operator's
 * record names each of them (nothing changes; while loading, see
 * "Loading"). The reason goes to errbuf.
 *
 * A full catalogue: fold-in records are written by workers and deleted by
 * no one, so over a shop's churn they would hold every slot for good (every
 * new id refused, an operator's add included, and fold-in learning nothing
 * new). So when u names a new id (an operator's record or a fold-in one)
 * and max_new are kept, the fold-in item (unknown to the model, no
 * operator's record) whose newest record came longest ago gives its slot
 * up: both its keys' records are dropped as if tombstoned, and
 * stats.foldin_evicted counts it. An item still bought is published again
 * at its next doubling. The choice depends only on the order of each key's
 * newest record, so a topic read again, compacted or not, in the same
 * order gives it again. */
int hl_catalogue_apply(hl_catalogue *c, const hl_item_update *u,
                       char *errbuf, size_t errlen);
/* A fold-in record (u->foldin_events > 0) never overrides an operator:
 * apply returns HL_CATALOGUE_IGNORED when the model knows the item or an
 * operator's record names it. Lists see no change either way; one under
 * the fold-in key is still kept behind the operator's (it takes effect if
 * that record is deleted), an older worker's under the item_id is not. */
#define HL_CATALOGUE_IGNORED 1

/* A stale tombstone: a worker that gives an item's slot up tombstones its
 * fold-in key, and a worker lagging behind the topic may do so after
 * another one published a newer record of the item; Kafka has no
 * conditional delete, so such a tombstone would delete the newer record
 * in every reader (and, once compacted, on the topic). So the tombstone
 * names the record it evicts (hl_catalogue_evicted_at), and apply
 * returns HL_CATALOGUE_STALE, changing nothing, for a positioned
 * conditional tombstone when the key's record was read from another
 * partition or at a later offset than evicts_offset. A tombstone that
 * names nothing (an operator's, an older worker's) deletes as before. */
#define HL_CATALOGUE_STALE 2

/* Loading: a reader that reads the topic from the start may read an item's
 * record before the tombstone (in another partition) of the item whose
 * slot it took, so a full catalogue would give up an item the running
 * workers kept. While loading, new ids may take extra slots more than
 * max_new, but only while operators' records name fewer than max_new new
 * ids: a running worker refused an id then (it kept no fold-in item; the
 * ones kept here are those whose tombstones are still to come), so this
 * refuses it too (HL_EFULL), and so an operator's record for a kept
 * fold-in item, which named a new id to the running worker. Then
 * hl_catalogue_trim, called until it returns 0, gives up the stalest
 * fold-in items beyond max_new (and the slack), one a call (1, the id in
 * hl_catalogue_evicted), once slack is back to 0: read in the order a
 * running worker read it, the topic leaves the items it lists, never
 * more than max_new. */
void hl_catalogue_set_slack(hl_catalogue *c, int32_t extra);
int  hl_catalogue_trim(hl_catalogue *c);

/* The id of the fold-in item the latest hl_catalogue_apply evicted (see
 * "A full catalogue"), valid until the next apply; NULL when it evicted
 * none. The reader tombstones its fold-in key with it, so the topic says
 * what the catalogue did. */
const char *hl_catalogue_evicted(const hl_catalogue *c, uint32_t *len);

/* Where the evicted item's record under its fold-in key was read: 1 and
 * *partition, *offset (its tombstone names it and goes to that partition:
 * compaction deletes within one); 0 when that key held no positioned
 * record. Valid as long as hl_catalogue_evicted. */
int hl_catalogue_evicted_at(const hl_catalogue *c, int32_t *partition, int64_t *offset);

/* The record kept under id's fold-in key, as an update (vectors copied
 * into vec, 2 * dim floats; u->id is id), for a worker that sends it again
 * after a stale tombstone so that the key's last message is a record and
 * compaction keeps it. 0, or HL_ENOENT when that key holds no record with
 * vectors. */
int hl_catalogue_foldin_record(const hl_catalogue *c, const char *id, uint32_t len,
                               hl_item_update *u, float *vec);

/* What the catalogue says about id, for a fold-in publisher: -1 when the
 * model knows it or an operator's record names it (fold-in must not write
 * over it), 0 when nothing (or a fold-in record whose embedding a model
 * swap dropped: it serves no vectors), n > 0 when its vectors are a
 * fold-in record built from n interactions. */
int64_t hl_catalogue_foldin_state(const hl_catalogue *c, const char *id, uint32_t len);

/* Model swap (DESIGN.md section 10): re-resolves every kept item by its id
 * against m (borrowed from now on; the old model may be closed after this
 * returns), keeping its availability and expiry. Embeddings: one of an
 * item m knows is dropped (m's own vectors win: an override lasts until
 * the next swap, and an added item the retrain learned is now a model
 * item); one of an item m does not know is kept as it is when its dim is
 * m's (it is taken to be in m's space: the writer of the item topic
 * re-publishes it otherwise), else dropped. Dropped embeddings are counted
 * in *st. Items m knows stop counting against max_new; items m does not
 * know count again, so more than max_new may be kept after this returns:
 * the caller calls hl_catalogue_trim until it returns 0 (fold-in items
 * give their slots up; operators' records stay, and new ids are refused
 * until they are under the bound). Views built before
 * name items through the old model: keep it open until they are
 * destroyed. Returns 0. */
typedef struct hl_catalogue_rebind_stats {
    int32_t dropped_known;   /* embeddings of items the new model knows */
    int32_t dropped_dim;     /* embeddings of unknown items of another dim */
} hl_catalogue_rebind_stats;
int hl_catalogue_rebind(hl_catalogue *c, const hl_model *m, hl_catalogue_rebind_stats *st);

/* Changes applied since create: each apply that returned 0, but for a
 * tombstone that found no record under its key (it changes nothing). */
uint64_t hl_catalogue_version(const hl_catalogue *c);

typedef struct hl_catalogue_stats {
    int32_t hidden;        /* items with available=false */
    int32_t expiring;      /* items with an expires_at (past or future) */
    int32_t added;         /* items unknown to the model, with an operator's embedding */
    int32_t foldin;        /* items unknown to the model, with a fold-in embedding */
    int32_t overridden;    /* known items whose vectors an embedding replaces */
    int64_t foldin_evicted;/* fold-in items that gave their slot up (full) */
} hl_catalogue_stats;
void hl_catalogue_stats_get(const hl_catalogue *c, hl_catalogue_stats *st);

/* An immutable copy of c's state, or NULL (out of memory). Costs one pass
 * over the kept items and a copy of the side vectors. */
hl_catview *hl_catalogue_view(const hl_catalogue *c);
/* The same, built in old's memory when old is not NULL: old must be a view
 * no one reads any more, and is consumed (reused, or destroyed on failure).
 * Its arrays are kept when big enough, so a rebuild writes memory already
 * mapped: at 100k side items this is several times cheaper than a fresh
 * view (bench_catalogue "catalogue_view"). */
hl_catview *hl_catalogue_view_reuse(const hl_catalogue *c, hl_catview *old);
void        hl_catview_destroy(hl_catview *v);              /* NULL is a no-op */

uint64_t hl_catview_version(const hl_catview *v);
int32_t  hl_catview_n_model(const hl_catview *v);  /* the model's items: side rows follow */
int      hl_catview_dim(const hl_catview *v);
int32_t  hl_catview_n_side(const hl_catview *v);
/* Side item vectors: (n_side, dim) row-major, and (n_side) biases. */
const float *hl_catview_side_e_in(const hl_catview *v);
const float *hl_catview_side_e_out(const hl_catview *v);
const float *hl_catview_side_bias(const hl_catview *v);
/* 1 when side row s (0..n_side-1) holds a fold-in record's vectors (a
 * worker's, from the stream), 0 for an operator's (an encoder's). */
int          hl_catview_side_folded(const hl_catview *v, int32_t s);
/* The id of ranker row `row` (a model row or a side row); NULL out of range. */
const char *hl_catview_item_id(const hl_catview *v, int32_t row, uint32_t *len);
/* The ranker row an item id is listed under: its side row when it has one,
 * else its model row; -1 when neither knows it. */
int32_t hl_catview_row_find(const hl_catview *v, const char *id, size_t len);

/* The ranker row of an item the model does not know and the view lists
 * with an embedding (an added item), by its hl_item_key; -1 when there is
 * none (0 is never a key). O(1): the batch loop asks it per event of an
 * item outside the model. The row's e_in is
 * hl_catview_side_e_in(v) + (row - n_model) * dim. */
int32_t hl_catview_added_row(const hl_catview *v, uint64_t key);

/* The side row that replaces model row `row` (a known item whose e_out and
 * bias an embedding overrides), -1 when none: a user's history names such
 * an item by its model row, and the list must leave out the side row too
 * (recs.exclude.seen). O(log n_overridden). */
int32_t hl_catview_override_row(const hl_catview *v, int32_t row);

/* Most rows hl_catview_hidden_at can return. */
int32_t hl_catview_hidden_max(const hl_catview *v);
/* The rows no list may hold at event time now_ms, ascending, into out
 * (room for hl_catview_hidden_max; may be NULL when that is 0): items with
 * available=false, items whose expires_at <= now_ms, and model rows an
 * embedding replaces. *next_ms gets
 * the earliest expires_at above now_ms (HL_CATALOGUE_NO_EXPIRY if none):
 * the answer holds for every time in [now_ms, *next_ms). Returns the count. */
int32_t hl_catview_hidden_at(const hl_catview *v, int64_t now_ms, int32_t *out,
                             int64_t *next_ms);

#endif
