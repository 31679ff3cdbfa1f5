/* worker.h - the stream worker behind `halflife run` and `halflife demo`:
 * a consumer group member that turns behaviour events into published
 * recommendation lists (DESIGN.md sections 1, 2, 6).
 *
 * One hl_worker per process. hl_worker_run() runs the consumer's main loop
 * (rebalances, errors, statistics) in the calling thread and starts
 * `threads` shard-owning threads that do the batches. */
#ifndef HL_WORKER_H
#define HL_WORKER_H

#include "codec.h"
#include "model.h"
#include "metrics.h"
#include "producer.h"
#include "registry.h"

#include <signal.h>

typedef struct hl_worker hl_worker;   /* opaque */

/* Everything the worker reads from configuration (worker/config_opts.c fills it
 * from the keys of DESIGN.md section 7). Strings are borrowed and must
 * outlive the worker. */
/* The longest kafka.bootstrap.servers the worker keeps (config refuses more). */
#define HL_BOOTSTRAP_MAX 511

typedef struct hl_worker_opts {
    const char *bootstrap;          /* kafka.bootstrap.servers; NULL or "": embedded broker */
    const char *group_id;
    const char *input_topic, *output_topic;
    const char *dlq_topic;          /* NULL: <input>.dlq; "": disabled */
    hl_codec_opts codec;
    int64_t     max_future_ms;      /* event.max.future.ms; 0: no bound */
    /* schema.registry.*: urls NULL for none (schemas.dir and
     * output.schema.id then apply). With one, hl_worker_create registers
     * (auto_register) or looks up the lists' schema under
     * "<output_topic>-value" and fetches writer schemas by id from it. */
    hl_registry_opts registry;
    int         registry_auto_register;
    const char *registry_fallback_dir;   /* NULL: none */
    int         recs_enabled;       /* 0: state only, no lists (benchmarks) */
    int         recs_k, recs_exclude_seen;
    int         recs_exclude_seen_events; /* 0: the whole history ring */
    int         recs_scoring;       /* HL_SCORING_EXACT or _TWO_STAGE (recs.scoring, auto resolved) */
    int         recs_index_ivf;     /* recs.index=ivf: approximate index over e_out */
    int         recs_index_nlist;   /* 0: 4 sqrt(items) */
    int         recs_index_nprobe;  /* <= the index's nlist; 0: each index's nlist / 16 */
    int         recs_index_shadow_every; /* 0: no shadow check */
    int64_t     recs_min_interval_ms; /* 0: refresh after every batch that touched a user */
    int         threads;            /* shard-owning threads, >= 1 */
    int         io_slice_us;        /* scheduler slice of the I/O threads; 0: kernel's */
    int         batch_max_messages, batch_max_ms;
    int         state_history;
    size_t      state_max_users;
    float       state_evict_mass;
    int         shutdown_timeout_ms;
    int         embedded_partitions; /* partitions of the embedded broker's topics */
    const char *items_topic;         /* the live catalogue's topic; NULL or "": none */
    int32_t     items_schema_id;     /* ItemUpdate schema id (Confluent framing) */
    int32_t     catalogue_max_new;   /* items unknown to the model kept at most */
    int         catalogue_foldin;    /* fold new items in from the stream (fold.h) */
    int         catalogue_foldin_min_events; /* interactions before an item is published */
    float       catalogue_foldin_e_in_scale; /* weight share of a folded item's e_in in states */
    float       catalogue_foldin_lift;       /* hl_foldin_opts.lift */
    float       catalogue_foldin_distinct;   /* hl_foldin_opts.distinct */
    const char *snapshot_dir;        /* NULL: no snapshots (tests of core only) */
    int64_t     deadletter_max_bytes;/* deadletter.max.bytes; 0: no cap */
    int64_t     snapshot_interval_ms;/* 0: only on revocation and shutdown */
    int         snapshot_retain;
    int         offset_reset_latest; /* auto.offset.reset=latest; librdkafka gets it too
                                      * unless kafka[] holds auto.offset.reset */
    const char *model_path;          /* model.path: reloaded when it changes; NULL: never */
    int64_t     model_check_ms;      /* model.check.ms; 0: only on SIGHUP */
    const char *model_dir;           /* model.dir; NULL: <snapshot_dir>/models */
    int         model_retain;        /* model.retain; < 1: 4 */
    volatile sig_atomic_t *reload_sig; /* set by SIGHUP: check model.path now; NULL: none */
    int         state_kafka;         /* state.store=kafka: the changelog (changelog.h) */
    const char *state_topic;         /* NULL or "": <group_id>-state */
    int64_t     state_flush_ms;      /* changelog flush interval, >= 1 */
    int         has_type_weight;     /* type_weight[] holds overrides */
    float       type_weight[HL_N_TYPES]; /* weight.*: NAN keeps the model's */
    const hl_kafka_prop *kafka;      /* kafka.* keys, prefix removed, as given */
    int         n_kafka;
    /* Called by a worker thread for every list produced (the demo watches
     * lists this way); NULL for none. Must be quick and thread-safe. */
    void      (*on_list)(void *arg, const hl_codec_list *l);
    void       *on_list_arg;
    /* Looked at while hl_worker_create waits for an unreachable Schema
     * Registry (the lists' schema id is needed before anything is
     * published): non-zero gives up. NULL: wait until it answers. /readyz
     * reads it from the HTTP thread: set it with __atomic_store_n. */
    volatile sig_atomic_t *start_abort;
} hl_worker_opts;

/* m and reg are borrowed and must outlive the worker; reg may be NULL (the
 * worker then keeps its counters in a registry of its own).
 * Starts the embedded broker when o->bootstrap is empty. */
hl_worker *hl_worker_create(const hl_worker_opts *o, const hl_model *m,
                            hl_metrics *reg, char *errbuf, size_t errlen);
void       hl_worker_destroy(hl_worker *w);          /* NULL is a no-op */

/* The bootstrap address in use (the embedded broker's when it runs). */
const char *hl_worker_bootstrap(const hl_worker *w);

/* Runs until hl_worker_stop() or *sig becomes non-zero (sig may be NULL;
 * any non-zero value asks for the graceful stop), then drains:
 * finishes each thread's batch, waits for deliveries, snapshots every
 * owned shard, stores and commits offsets and leaves the group. 0, or a
 * negative HL_E* on a fatal error, when an assigned partition could not be
 * served (event=partition_failed), when the producer failed fatally
 * (event=producer_fatal: the same stop, without waiting for lists it can
 * no longer deliver), or when the stop could not save every shard it
 * owned (logged as event=shutdown_unsaved naming the partitions; the
 * offsets are still committed and the group left). */
int  hl_worker_run(hl_worker *w, volatile sig_atomic_t *sig);
void hl_worker_stop(hl_worker *w);                   /* any thread */

/* 1 once the worker holds an assignment and every partition of it is
 * restored, until a revocation takes them all or it stops; an assignment
 * of no partition counts. Else 0 and why the worker is not ready in why
 * (e.g. "restoring assigned partitions: 1 of 4 restored"). Any thread.
 * arg is the hl_worker: this and hl_worker_live have hl_http_start's
 * probe shape (hl_ready_fn), so they are passed to it as they are. */
int  hl_worker_ready(void *arg, char *why, size_t whylen);

/* 1 while the worker can still do its work; 0 once its producer failed
 * fatally (why says so, with librdkafka's cause): nothing it publishes
 * can be delivered any more and only a new process recovers. The worker
 * stops by itself then; this is for a liveness probe (/healthz), so that
 * one that somehow does not is restarted. Any thread. */
int  hl_worker_live(void *arg, char *why, size_t whylen);

/* Totals since start, read back from the worker's metrics registry, where
 * each is kept once (any thread may read). The latency quantiles cover the
 * lists delivered since the previous call. */
typedef struct hl_worker_stats {
    uint64_t consumed, applied, duplicates, invalid, unknown_items, failed;
    uint64_t invalid_by_reason[HL_CODEC_N_REASONS];
    uint64_t lists, batches, dlq_records;
    uint64_t skipped;                /* input offsets never received */
    uint64_t redelivered;            /* input records received twice, dropped */
    uint64_t users;
    int      assigned;
    double   lat_p50_s, lat_p99_s;   /* event-to-publish, recent window */
    double   worker_p50_s, worker_p99_s;   /* fetched to delivered, same window */
    /* The same window by stage: broker, wait, apply, refresh, produce,
     * deliver (halflife_event_stage_seconds). */
    double   stage_p50_s[6], stage_p99_s[6];
} hl_worker_stats;
void hl_worker_stats_get(hl_worker *w, hl_worker_stats *st);

#endif
