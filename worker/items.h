/* items.h - the live catalogue's reader (DESIGN.md section 11): a thread
 * that reads the whole item topic (every partition, from the beginning,
 * with assign(), outside the consumer group, as a Kafka Streams global
 * table does; partitions added to the topic later are found by asking its
 * partition count again every partitions_check_ms, and read from their
 * beginning), keeps the catalogue (core/catalogue.h), and publishes an
 * immutable view of it after each burst of updates (paced: no sooner than
 * the last view's cost after it, items.c). Shard threads take the current
 * view at a batch boundary (hl_items_local_update), so an update in a view
 * published during a batch takes effect for every list published after
 * that batch. Nothing is committed: every start re-reads the (compacted) topic,
 * which is how the catalogue survives restarts. */
#ifndef HL_ITEMS_H
#define HL_ITEMS_H

#include "codec_item.h"
#include "kafka_conf.h"
#include "metrics.h"
#include "producer.h"
#include "rank.h"

#include <stdatomic.h>

typedef struct hl_items hl_items;   /* opaque */

typedef struct hl_items_opts {
    const char          *bootstrap;
    const hl_kafka_prop *kafka;     /* kafka.* keys (consumer ones are used) */
    int                  n_kafka;
    const char          *topic;
    hl_item_codec_opts   codec;
    const hl_model      *m;         /* borrowed */
    int32_t              max_new;   /* catalogue.max.new.items */
    hl_producer         *prod;      /* for dead letters; borrowed */
    const char          *dlq_topic; /* NULL: none */
    hl_metrics          *reg;
    /* Set (schema.registry.url): the writer schema id of each update is
     * resolved through it, as the events' are (hl_codec_schema_fn; the
     * schema must be ours, hl_item_schema_is_ours); an id it does not know
     * yet is waited for briefly (polling it), then pauses that partition
     * until it does, and codec.schema_id is unused. NULL: codec.schema_id
     * alone. */
    hl_codec_schema_fn   schema_fn;
    void                *schema_arg;
    /* How often the topic's partition count is asked again, so partitions
     * an operator adds are read (from their beginning) by a running worker;
     * 0: every 30 s. */
    int                  partitions_check_ms;
    /* Tests only: the count the reader takes of the n the cluster reports
     * (librdkafka's mock cluster cannot add partitions to a topic, so a
     * test shows the reader fewer first). NULL: n. */
    int                (*partitions_seen)(void *arg, int n);
    void                *partitions_seen_arg;
} hl_items_opts;

/* Creates the reader's consumer and catalogue; the thread starts with
 * hl_items_start. NULL and a reason on failure. */
hl_items *hl_items_create(const hl_items_opts *o, char *errbuf, size_t errlen);
int       hl_items_start(hl_items *it, char *errbuf, size_t errlen);
/* Stops and joins the thread; nothing is read or sent after it returns.
 * Before the producer is settled: the eviction tombstones the thread sends
 * carry a ticket that destroy frees. NULL, or a second call, is a no-op. */
void      hl_items_stop(hl_items *it);
/* Stops (hl_items_stop) and frees everything. NULL is a no-op. Every
 * hl_items_local must have been reset first. */
void      hl_items_destroy(hl_items *it);

/* 1 once every partition was read up to its end as of the start. */
int       hl_items_loaded(const hl_items *it);
/* Updates applied to the catalogue since start; any thread. */
long long hl_items_applied(const hl_items *it);

/* hl_catalogue_foldin_state of the catalogue as read so far; any thread
 * (takes the reader's lock for a lookup). */
int64_t   hl_items_foldin_state(hl_items *it, const char *id, uint32_t len);
/* The model the catalogue names rows of (the start model). */
const hl_model *hl_items_model(const hl_items *it);
/* Model swap (DESIGN.md section 10), main thread, before the model of
 * generation gen goes live: rebinds the catalogue to m by item id
 * (hl_catalogue_rebind: hides and expiries kept, embeddings of items m
 * knows dropped, counted) and publishes a view of it for gen, while
 * threads still serving the previous model keep ranking with that
 * model's last view. So no list is ranked against another model's view,
 * and updates read from here on apply to m. Updates are held back for
 * the call (a burst of records at most). 0, or HL_ENOMEM with the
 * catalogue bound as before (the caller refuses the swap). m is borrowed
 * until the next rebind and every view of it is gone. */
int       hl_items_rebind(hl_items *it, const hl_model *m, uint64_t gen);

/* Raises the stream time (the newest event time read), against which
 * expires_at is compared. Any thread. */
void      hl_items_saw_ts(hl_items *it, int64_t ts_ms);

/* One shard thread's hold on a view and the hidden rows it computed. */
typedef struct hl_items_local {
    struct catref     *ref;          /* the view held: of model generation gen */
    uint64_t           gen;
    int32_t           *hidden;       /* rows hidden at at_ms */
    int32_t            cap_hidden;
    int64_t            next_ms;      /* hidden holds until this stream time */
    hl_rank_catalogue  rc;           /* what the ranker is given */
    int                missing;      /* no view of gen was found (logged) */
} hl_items_local;

/* At a batch boundary, and when the thread starts serving another model
 * (generation gen; r is then that model's new ranker): takes the newest
 * view of the catalogue bound to gen, recomputes the hidden rows when the
 * view or the stream time asks for it, and gives the ranker (may be NULL)
 * its catalogue. it NULL: nothing (no item topic). Allocates only when
 * the view changed and holds more hidden rows than before. */
void hl_items_local_update(hl_items *it, hl_items_local *loc, hl_ranker *r, uint64_t gen);
/* The id of ranker row `row` (model or side), through the held view or
 * else the model (m: the thread's, which the held view is bound to). */
const char *hl_items_local_id(const hl_items_local *loc, const hl_model *m, int32_t row,
                              uint32_t *len);
/* The ranker row of an item the model does not know that the held view
 * added with an embedding, by hl_item_key, and its e_in (dim floats,
 * valid until the next hl_items_local_update) into *e_in; -1 (and NULL)
 * when there is none. */
int32_t hl_items_local_added(const hl_items_local *loc, uint64_t key, const float **e_in);
/* 1 when row (one hl_items_local_added returned) holds a fold-in record's
 * vectors, 0 when an operator's embedding (catalogue.foldin.e_in.scale
 * applies to the first only). */
int     hl_items_local_folded(const hl_items_local *loc, int32_t row);
/* The side row that replaces model row `row` (an overridden known item),
 * -1 when none or without a view. */
int32_t hl_items_local_override(const hl_items_local *loc, int32_t row);
/* Lets go of the view and frees the buffers. */
void hl_items_local_reset(hl_items *it, hl_items_local *loc);

#endif
