/* worker.c - the worker process: the embedded broker when none is
 * configured, the consumer group membership, the shard-owning threads and
 * the hand-over of partitions between them (DESIGN.md sections 1, 2, 6).
 *
 * The calling thread of hl_worker_run() serves the consumer's own queue:
 * rebalances, errors and statistics. Records never reach it: before a
 * partition is assigned, its queue is forwarded to the queue of the thread
 * chosen to own it (the one with the fewest shards), and librdkafka keeps an
 * application forward across fetch restarts. On revocation the callback asks
 * each owning thread to let go and waits: the thread finishes its batch,
 * waits for that batch's lists to be delivered and stores its offsets, and
 * only then does the callback unassign. So every stored offset is backed by
 * applied state and delivered lists, and no two threads ever hold a shard. */
#include "worker.h"
#include "config.h"
#include "consumer.h"
#include "log.h"
#include "persist.h"
#include "schema_store.h"
#include "changelog.h"
#include "thread.h"
#include "fold.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WIN_BUCKETS 64      /* >= hl_live_bounds_n + 1 */
#define N_WIN (2 + 6)      /* e2p, fetch to delivery, the six live stages */
#define MULTIPART_BITS 20   /* 2^20 slots, 8 MB: see multipart.h for the odds */

struct hl_worker {
    hl_worker_opts    o;
    char              dlq[320];
    char              bootstrap[512];
    char              model_dir[4096]; /* <snapshot.dir>/models when model.dir is unset */
    const hl_model   *m;              /* the model given at start (its shape is every model's) */
    hl_models        *models;         /* the one served now, and its reloads */
    hl_metrics       *reg;
    rd_kafka_t       *mock_rk;        /* hosts the embedded broker */
    rd_kafka_mock_cluster_t *mock;
    hl_consumer      *cons;
    hl_producer      *prod;
    hl_items         *items;          /* NULL: items.topic empty */
    hl_wfoldin       *foldin;         /* NULL: catalogue.foldin off or no items.topic */
    hl_wshared        ctx;
    hl_wthread      **th;
    int               n_th;
    hl_qitems        *qitems;         /* two-stage scoring: the first model's table;
                                         models borrow it (the first mref's) */
    hl_ivf           *ivf;            /* recs.index=ivf: the first model's index;
                                         models borrow it (the first mref's) */
    int              *th_load;        /* shards per thread, main thread's view */
    hl_wthread      **owner;          /* by partition; main thread only */
    int               cap_owner;
    atomic_int        stop;
    atomic_int        assigned;
    atomic_int        have_assignment;
    hl_gauge         *assigned_g;
    hl_persist       *persist;        /* NULL without snapshot.dir */
    hl_schema_store  *schemas;        /* NULL without schema.registry.url */
    hl_changelog     *changelog;      /* state.store=kafka; else NULL */
    char              state_topic[256];
    hl_counter       *rebalances;
    pthread_mutex_t   lat_mu;         /* also guards closed */
    pthread_cond_t    closed_cv;
    int               closed;         /* the consumer has left the group */
    int               abandoned;      /* close timed out: handles leaked on purpose */
    uint64_t          win_prev[N_WIN][WIN_BUCKETS]; /* live counts at the last stats read */
    hl_metrics       *own_reg;        /* the registry when the caller gave none */
};

/* ---- the embedded broker ----------------------------------------------- */

static int embedded_start(hl_worker *w, char *errbuf, size_t errlen)
{
    char why[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "3", why, sizeof why);
    if ((w->mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof why)) == NULL) {
        rd_kafka_conf_destroy(conf);
        return hl_err(errbuf, errlen, HL_EIO, "embedded broker: %s", why);
    }
    if ((w->mock = rd_kafka_mock_cluster_new(w->mock_rk, 1)) == NULL)
        return hl_err(errbuf, errlen, HL_EIO, "embedded broker: cannot start mock cluster");
    const char *topics[] = {w->o.input_topic, w->o.output_topic, w->ctx.dlq_topic,
                            w->o.items_topic, w->o.state_kafka ? w->state_topic : NULL};
    for (int i = 0; i < 5; i++) {
        if (topics[i] == NULL || topics[i][0] == '\0')
            continue;
        rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(w->mock, topics[i],
                                                             w->o.embedded_partitions, 1);
        if (err)
            return hl_err(errbuf, errlen, HL_EIO, "embedded broker: topic %s: %s",
                          topics[i], rd_kafka_err2str(err));
    }
    snprintf(w->bootstrap, sizeof w->bootstrap, "%s", rd_kafka_mock_cluster_bootstraps(w->mock));
    hl_log(HL_LOG_INFO, "embedded_broker", "bootstrap=%s partitions=%d", w->bootstrap,
           w->o.embedded_partitions);
    return 0;
}

static void embedded_stop(hl_worker *w)
{
    if (w->mock)
        rd_kafka_mock_cluster_destroy(w->mock);
    if (w->mock_rk)
        rd_kafka_destroy(w->mock_rk);
    w->mock = NULL;
    w->mock_rk = NULL;
}

/* ---- metrics ----------------------------------------------------------- */


/* What happened to the input: one counter per fact (hl_worker_stats reads
 * them back). */
static void register_event_counters(hl_worker *w)
{
    hl_metrics *reg = w->reg;
    char labels[64];
    for (int r = 1; r < HL_CODEC_N_REASONS; r++) {
        snprintf(labels, sizeof labels, "reason=\"%s\"", hl_codec_reason_name(r));
        w->ctx.mx.invalid[r] = hl_metrics_counter(reg, "halflife_events_invalid_total",
            "Input records that could not be decoded, by reason.", labels);
        w->ctx.mx.dlq[r] = hl_metrics_counter(reg, "halflife_dlq_records_total",
            "Records copied to the dead-letter topic, by reason.", labels);
    }
    w->ctx.mx.dlq_errors = hl_metrics_counter(reg, "halflife_dlq_errors_total",
        "Dead letters that could not be written.", NULL);
    w->ctx.mx.multipart = hl_metrics_counter(reg, "halflife_users_multi_partition_total",
        "Users inserted in one partition while noted in another (input not keyed by user_id).",
        NULL);
    w->ctx.mx.skipped = hl_metrics_counter(reg, "halflife_input_offsets_skipped_total",
        "Input offsets the consumer jumped over: records deleted by retention before "
        "they were read (lost to the state), or transaction markers.", NULL);
    w->ctx.mx.dl_kept = hl_metrics_counter(reg, "halflife_dead_letters_kept_total",
        "Bad records whose DLQ copy failed, kept in snapshot.dir/dead-letters instead.", NULL);
    w->ctx.mx.applied = hl_metrics_counter(reg, "halflife_events_applied_total",
        "Events applied to a user's state.", NULL);
    w->ctx.mx.duplicates = hl_metrics_counter(reg, "halflife_events_duplicate_total",
        "Events skipped as already applied (a replay after a restart or rebalance).", NULL);
    w->ctx.mx.failed = hl_metrics_counter(reg, "halflife_events_failed_total",
        "Events that could not be applied (no room for a new user).", NULL);
    w->ctx.mx.non_finite = hl_metrics_counter(reg, "halflife_events_non_finite_total",
        "Events refused because they could make a user's state non-finite "
        "(a decayed mass past 1e30); also counted as failed.", NULL);
    w->ctx.mx.unknown = hl_metrics_counter(reg, "halflife_unknown_items_total",
        "Events whose item neither the model nor the live catalogue knows (kept in history "
        "only).", NULL);
    w->ctx.mx.batches = hl_metrics_counter(reg, "halflife_batches_total",
        "Batches processed.", NULL);
    w->ctx.mx.lists = hl_metrics_counter(reg, "halflife_lists_published_total",
        "Recommendation lists produced.", NULL);
    w->ctx.mx.evictions[0] = hl_metrics_counter(reg, "halflife_evictions_total",
        "Users dropped from state, by reason.", "reason=\"mass\"");
    w->ctx.mx.evictions[1] = hl_metrics_counter(reg, "halflife_evictions_total",
        "Users dropped from state, by reason.", "reason=\"capacity\"");
}

/* The live path of each event by stage (thread_internal.h, LIVE_*), and
 * the worker's own share of it. */
static void register_live_stages(hl_worker *w)
{
    static const char *const live[6] = {"broker", "wait", "apply", "refresh", "produce",
                                        "deliver"};
    char labels[64];
    for (int s = 0; s < 6; s++) {
        snprintf(labels, sizeof labels, "stage=\"%s\"", live[s]);
        w->ctx.mx.live[s] = hl_metrics_histogram(w->reg, "halflife_event_stage_seconds",
            "The live path of each event by stage: broker (Kafka timestamp to fetched: "
            "producer linger, broker, fetch), wait (fetched to batch start), apply, "
            "refresh, produce, deliver (produced to delivered).", labels,
            hl_live_bounds_s, hl_live_bounds_n);
    }
    w->ctx.mx.worker_share = hl_metrics_histogram(w->reg, "halflife_fetch_to_delivery_seconds",
        "The worker's own share of event to publish: from the event's fetch to the "
        "delivery of the list it changed.", NULL, hl_live_bounds_s, hl_live_bounds_n);
}

/* How long things take: per batch stage, and event to published list. */
static void register_timings(hl_worker *w)
{
    static const double size_bounds[] = {1, 10, 100, 1000, 10000, 100000};
    static const char *const stages[4] = {"decode", "apply", "refresh", "produce"};
    hl_metrics *reg = w->reg;
    char labels[64];
    w->ctx.mx.schema_waiting = hl_metrics_gauge(reg, "halflife_partitions_waiting_schema",
        "Input partitions paused because a record waits for its writer schema from the "
        "Schema Registry.", NULL);
    w->ctx.mx.batch_size = hl_metrics_histogram(reg, "halflife_batch_size",
        "Records per batch.", NULL, size_bounds, 6);
    for (int s = 0; s < 4; s++) {
        snprintf(labels, sizeof labels, "stage=\"%s\"", stages[s]);
        w->ctx.mx.stage[s] = hl_metrics_histogram(reg, "halflife_stage_duration_seconds",
            "Time per batch in each stage.", labels, hl_latency_bounds_s, hl_latency_bounds_n);
    }
    w->ctx.mx.e2p = hl_metrics_histogram(reg, "halflife_event_to_publish_seconds",
        "From an event's Kafka timestamp to the delivery of the list it changed.",
        NULL, hl_live_bounds_s, hl_live_bounds_n);
    register_live_stages(w);
}

/* The process: deliveries, group membership, the model in use. */
static void register_process(hl_worker *w)
{
    hl_metrics *reg = w->reg;
    hl_metrics_counter(reg, "halflife_delivery_errors_total",
        "Records the producer failed to deliver.", NULL);
    w->rebalances = hl_metrics_counter(reg, "halflife_rebalances_total",
        "Rebalance callbacks served (assign and revoke).", NULL);
    w->assigned_g = hl_metrics_gauge(reg, "halflife_assigned_partitions",
        "Input partitions this worker owns.", NULL);
    w->ctx.mx.migrated = hl_metrics_counter(reg, "halflife_users_migrated_total",
        "Users whose state moved into a new model's space (live swap or snapshot).", NULL);
    w->ctx.mx.rebuilt = hl_metrics_counter(reg, "halflife_users_rebuilt_total",
        "Users whose heads were rebuilt from their history ring alone (the old model was "
        "not at hand).", NULL);
}

static void register_metrics(hl_worker *w)
{
    register_event_counters(w);
    register_timings(w);
    register_process(w);
}

/* ---- rebalance --------------------------------------------------------- */

static int least_loaded(hl_worker *w)
{
    int best = 0;
    for (int i = 1; i < w->n_th; i++)
        if (w->th_load[i] < w->th_load[best])
            best = i;
    return best;
}

static int owner_slot(hl_worker *w, int32_t p)
{
    if (p >= w->cap_owner) {
        int cap = p + 64;
        hl_wthread **o = realloc(w->owner, sizeof *o * (size_t)cap);
        if (o == NULL)
            return -1;
        memset(o + w->cap_owner, 0, sizeof *o * (size_t)(cap - w->cap_owner));
        w->owner = o;
        w->cap_owner = cap;
    }
    return 0;
}

/* The model served now (the main thread is the one that changes it). */
static const hl_model *cur_model(hl_worker *w)
{
    hl_mref *r = hl_models_acquire(w->models);
    const hl_model *m = r->m;
    hl_mref_release(r);         /* the set still holds it */
    return m;
}

/* A snapshot written under another model (a restart with a new one):
 * its rows move into the current model as a live swap moves them, when
 * that model is kept in model.dir; else they are rebuilt from their rings
 * alone (counted in halflife_users_rebuilt_total). Never refused. */
static int migrate_restored(hl_worker *w, int32_t p, hl_table *tbl, uint64_t fp)
{
    char err[512], why[512] = "";
    hl_mref *cur = hl_models_acquire(w->models);
    hl_model *old = hl_models_open_kept(w->models, fp, why, sizeof why);
    hl_migration *mg = NULL;
    float tw[HL_N_TYPES];
    for (int i = 0; i < HL_N_TYPES && old; i++) {
        float ov = w->o.has_type_weight ? w->o.type_weight[i] : NAN;
        tw[i] = ov == ov ? ov : hl_model_info_get(old)->type_weight[i];
    }
    if (old != NULL && (mg = hl_migration_create(old, cur->m, tw, why, sizeof why)) == NULL)
        hl_model_close(old), old = NULL;
    int rebuilt = mg == NULL;
    if (rebuilt)
        mg = hl_migration_rebuild(cur->m, cur->tw, err, sizeof err);
    int64_t t0 = hl_now_mono_us(), n = mg ? hl_migration_table(mg, tbl) : HL_ENOMEM;
    if (n >= 0) {
        hl_counter_add(rebuilt ? w->ctx.mx.rebuilt : w->ctx.mx.migrated, (uint64_t)n);
        hl_log(rebuilt ? HL_LOG_WARN : HL_LOG_INFO, rebuilt ? "snapshot_rebuilt"
               : "snapshot_migrated", "partition=%d from=%016llx to=%016llx users=%lld "
               "seconds=%.3f%s%s%s", (int)p, (unsigned long long)fp,
               (unsigned long long)cur->mi->fingerprint, (long long)n,
               (double)(hl_now_mono_us() - t0) / 1e6, rebuilt ? " reason=\"" : "",
               rebuilt ? why : "", rebuilt ? "; heads and masses rebuilt from the "
               "history rings alone\"" : "");
    } else {
        hl_log(HL_LOG_ERROR, "restore_failed", "partition=%d err=\"out of memory migrating "
               "the snapshot into the current model\"", (int)p);
    }
    hl_migration_destroy(mg);
    hl_model_close(old);
    hl_mref_release(cur);
    return n >= 0 ? 0 : HL_ENOMEM;
}

/* Marks where the partition's state came from: halflife_restore_source
 * {partition, source} is 1 for the source of the last restore. */
static void restore_source(hl_worker *w, int32_t p, const char *source)
{
    static const char *const all[] = {"snapshot", "changelog", "both", "none"};
    char labels[80];
    for (int i = 0; i < 4; i++) {
        snprintf(labels, sizeof labels, "partition=\"%d\",source=\"%s\"", (int)p, all[i]);
        hl_gauge_set(hl_metrics_gauge(w->reg, "halflife_restore_source",
            "Where the last restore of the partition read its state (1 for that source).",
            labels), strcmp(all[i], source) == 0);
    }
}

/* The local snapshot as a cache (state.store=kafka): loaded into *tblp
 * when there is one, described in base. 0, or a negative HL_E* (logged). */
static int restore_cache(hl_worker *w, int32_t p, hl_table **tblp, hl_changelog_base *base,
                         uint64_t *fp)
{
    char err[512];
    hl_persist_restored pr;
    base->next_offset = HL_PERSIST_NO_OFFSET;
    if (w->persist == NULL)
        return 0;
    if (hl_persist_restore(w->persist, p, tblp, &pr, err, sizeof err) != 0) {
        hl_log(HL_LOG_ERROR, "restore_failed", "partition=%d source=snapshot err=\"%s\"",
               (int)p, err);
        return HL_ENOMEM;
    }
    *base = (hl_changelog_base){pr.next_offset, pr.changelog_offset, pr.changelog_epoch};
    *fp = pr.model_fingerprint;
    return 0;
}

/* The rows held after a changelog restore (the changelog's, each naming its
 * model, and the cache file's not replaced since, in base_fp) in another
 * model's space than the current one: moved into it
 * as a file restore moves them (migrate_restored) when they are all in one
 * model, else (rows of two models, or rows that name none) rebuilt from
 * their rings alone, counted in halflife_users_rebuilt_total. */
static int changelog_migrate(hl_worker *w, int32_t p, hl_table *tbl, uint64_t base_fp,
                             const hl_changelog_restored *r, int *moved)
{
    uint64_t cur = hl_model_info_get(cur_model(w))->fingerprint;
    uint64_t fp = r->base_rows ? base_fp : r->model_fingerprint;
    int mixed = r->mixed || (r->base_rows && r->model_fingerprint != 0 &&
                             r->model_fingerprint != base_fp);
    if (!mixed && (fp == 0 || fp == cur))
        return 0;
    *moved = 1;
    /* No model has fingerprint 0: migrate_restored then rebuilds. */
    return migrate_restored(w, p, tbl, mixed ? 0 : fp);
}

/* state.store=kafka: the partition's table read from its local snapshot
 * (if any) and the changelog after it, or from the changelog alone, and
 * claimed (changelog.h). NULL when neither can be read: the partition
 * must not be served from an empty table. *on_disk: the local file's
 * offset, when one was used. */
static hl_table *restore_changelog(hl_worker *w, int32_t p, hl_table *tbl, int64_t *restored,
                                   int64_t *offset, int64_t *on_disk, hl_changelog_restored *r,
                                   int *moved)
{
    char err[512];
    hl_changelog_base base;
    uint64_t base_fp = 0;
    int64_t t0 = hl_now_mono_us();
    if (restore_cache(w, p, &tbl, &base, &base_fp) != 0)
        goto fail;
    const hl_changelog_base *bp = base.next_offset >= 0 ? &base : NULL;
    int rc = hl_changelog_restore(w->changelog, p, tbl, bp, r, err, sizeof err);
    if (rc == HL_ENOENT && bp != NULL) {
        hl_log(HL_LOG_WARN, "snapshot_not_usable", "partition=%d err=\"%s\" "
               "action=\"read the whole changelog\"", (int)p, err);
        hl_table_destroy(tbl);
        if ((tbl = hl_table_create(&w->ctx.topts, err, sizeof err)) == NULL)
            goto fail;
        bp = NULL;
        rc = hl_changelog_restore(w->changelog, p, tbl, NULL, r, err, sizeof err);
    }
    if (rc != 0) {
        hl_log(HL_LOG_ERROR, "restore_failed", "partition=%d source=changelog err=\"%s\"",
               (int)p, err);
        goto fail;
    }
    if (changelog_migrate(w, p, tbl, bp ? base_fp : 0, r, moved) != 0)
        goto fail;
    *on_disk = bp ? bp->next_offset : HL_PERSIST_NO_OFFSET;
    if (r->next_offset != HL_CHANGELOG_NO_OFFSET)
        *restored = *offset = r->next_offset;
    else if (r->n_rows > 0)
        *offset = RD_KAFKA_OFFSET_BEGINNING;   /* rows of an unfinished first flush */
    const char *src = bp ? (r->n_records > 0 ? "both" : "snapshot")
                         : (r->n_records > 0 ? "changelog" : "none");
    restore_source(w, p, src);
    /* The worker-wide figure the dashboard shows: the whole restore. */
    hl_gauge_set(hl_metrics_gauge(w->reg, "halflife_restore_duration_seconds",
                                  "Time the newest shard restore from a snapshot took.", NULL),
                 (double)(hl_now_mono_us() - t0) / 1e6);
    hl_log(HL_LOG_INFO, "restored", "partition=%d source=%s records=%llu rows=%llu "
           "tombstones=%llu checkpoints=%llu stale=%llu bad=%llu bytes=%llu low=%lld high=%lld "
           "from=%lld next_offset=%lld epoch=%lld seconds=%.3f", (int)p, src,
           (unsigned long long)r->n_records, (unsigned long long)r->n_rows,
           (unsigned long long)r->n_tombstones, (unsigned long long)r->n_checkpoints,
           (unsigned long long)r->n_stale, (unsigned long long)r->n_bad,
           (unsigned long long)r->bytes, (long long)r->low, (long long)r->high,
           (long long)(bp ? bp->changelog_offset : r->low), (long long)r->next_offset,
           (long long)r->epoch, r->duration_s);
    return tbl;
fail:
    hl_table_destroy(tbl);
    return NULL;
}

/* The partition's table: its newest valid snapshot's (or, with
 * state.store=kafka, its changelog's), and the offset to start from (the
 * snapshot's, else auto.offset.reset: DESIGN.md section 6 rebuilds state
 * from the topic rather than trust a committed offset without the state
 * that goes with it). NULL when out of memory. */
static hl_table *restore(hl_worker *w, int32_t p, int64_t *restored, int64_t *offset,
                         int64_t *on_disk, hl_changelog_restored *cr, int *moved)
{
    char err[512];
    hl_persist_restored r;
    hl_table *tbl = hl_table_create(&w->ctx.topts, err, sizeof err);
    *restored = -1;
    *offset = w->o.offset_reset_latest ? RD_KAFKA_OFFSET_END : RD_KAFKA_OFFSET_BEGINNING;
    if (tbl != NULL && w->changelog != NULL)
        return restore_changelog(w, p, tbl, restored, offset, on_disk, cr, moved);
    if (tbl == NULL || w->persist == NULL)
        return tbl;
    if (hl_persist_restore(w->persist, p, &tbl, &r, err, sizeof err) != 0) {
        hl_log(HL_LOG_ERROR, "restore_failed", "partition=%d err=\"%s\"", (int)p, err);
        hl_table_destroy(tbl);
        return NULL;
    }
    *moved = r.next_offset != HL_PERSIST_NO_OFFSET &&
             r.model_fingerprint != hl_model_info_get(cur_model(w))->fingerprint;
    if (*moved && migrate_restored(w, p, tbl, r.model_fingerprint) != 0) {
        hl_table_destroy(tbl);
        return NULL;
    }
    if (r.next_offset != HL_PERSIST_NO_OFFSET) {
        *restored = *offset = r.next_offset;
        hl_log(HL_LOG_INFO, "restored", "partition=%d path=%s users=%llu next_offset=%lld "
               "seconds=%.3f", (int)p, r.path, (unsigned long long)r.n_rows,
               (long long)r.next_offset, r.duration_s);
    }
    return tbl;
}

static int assign_one(hl_worker *w, rd_kafka_t *rk, int32_t p, int64_t *offset)
{
    char err[256];
    if (owner_slot(w, p) != 0)
        return HL_ENOMEM;
    if (w->owner[p] != NULL)
        return 1;
    int64_t restored;
    int moved = 0;
    hl_changelog_restored cr;
    int64_t on_disk = -1;
    hl_table *tbl = restore(w, p, &restored, offset, &on_disk, &cr, &moved);
    if (tbl == NULL && w->changelog != NULL)
        return HL_EIO;
    if (w->changelog == NULL)
        on_disk = restored;     /* with the changelog: the cache file's, if one was used */
    hl_persist_shard *ps = w->persist && tbl ? hl_persist_shard_create(w->persist, p, on_disk)
                                             : NULL;
    if (moved)
        hl_persist_shard_resave(ps);    /* the newest file names the old model */
    hl_shard *sh = hl_shard_create(p, tbl, restored, ps, w->o.batch_max_messages,
                                   w->o.recs_min_interval_ms, w->reg, err, sizeof err);
    if (sh == NULL) {
        hl_log(HL_LOG_ERROR, "shard_create_failed", "partition=%d err=\"%s\"", (int)p, err);
        return HL_ENOMEM;
    }
    /* Restored (or empty) under the current model: swaps happen on this
     * thread too, so it cannot change in between. */
    sh->mref = hl_models_acquire(w->models);
    sh->c_migrated = w->ctx.mx.migrated;
    if (w->changelog != NULL &&
        (sh->cl = hl_changelog_shard_create(w->changelog, p, sh->tbl, &cr)) == NULL) {
        hl_log(HL_LOG_ERROR, "shard_create_failed", "partition=%d err=\"out of memory\"",
               (int)p);
        hl_shard_destroy(sh);
        return HL_ENOMEM;
    }
    if (sh->cl != NULL && sh->ps != NULL)
        hl_persist_shard_set_cover(sh->ps, hl_changelog_cover, sh->cl);
    if (moved)
        hl_changelog_shard_resave(sh->cl);  /* the changelog's rows are the old model's */
    int i = least_loaded(w);
    if (hl_wthread_give(w->th[i], sh) != 0) {
        hl_log(HL_LOG_ERROR, "shard_create_failed", "partition=%d err=\"out of memory\"",
               (int)p);
        hl_shard_destroy(sh);
        return HL_ENOMEM;
    }
    rd_kafka_queue_t *pq = rd_kafka_queue_get_partition(rk, w->o.input_topic, p);
    rd_kafka_queue_forward(pq, hl_wthread_queue(w->th[i]));
    rd_kafka_queue_destroy(pq);
    w->owner[p] = w->th[i];
    w->th_load[i]++;
    hl_log(HL_LOG_INFO, "partition_assigned", "partition=%d thread=%d", (int)p, i);
    return 0;
}

static void assign_parts(hl_worker *w, rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts)
{
    for (int i = 0; i < parts->cnt; i++) {
        if (strcmp(parts->elems[i].topic, w->o.input_topic) != 0)
            continue;
        int rc = assign_one(w, rk, parts->elems[i].partition, &parts->elems[i].offset);
        if (rc < 0)
            hl_worker_stop(w);          /* cannot serve it: leave cleanly */
        else if (rc == 0)
            atomic_fetch_add(&w->assigned, 1);
    }
}

static int thread_index(hl_worker *w, hl_wthread *t)
{
    for (int i = 0; i < w->n_th; i++)
        if (w->th[i] == t)
            return i;
    return -1;
}

/* A revoked partition's series leave /metrics with it, so no stale value
 * outlives the assignment. Its consumed counter goes too (another worker
 * now counts that partition); a later assignment registers it again with
 * the value it had, so it never goes down. */
static void hide_series(hl_worker *w, int32_t p)
{
    static const char *const gauges[] = {"halflife_users", "halflife_state_bytes",
                                         "halflife_consumer_lag",
                                         "halflife_events_consumed_total"};
    char labels[48];
    snprintf(labels, sizeof labels, "partition=\"%d\"", (int)p);
    for (size_t i = 0; i < sizeof gauges / sizeof gauges[0]; i++)
        hl_metrics_hide(w->reg, gauges[i], labels);
}

static void revoke_parts(hl_worker *w, rd_kafka_topic_partition_list_t *parts)
{
    hl_shard *back[64];
    for (int i = 0; i < parts->cnt; i++) {
        int32_t p = parts->elems[i].partition;
        if (strcmp(parts->elems[i].topic, w->o.input_topic) != 0 ||
            p >= w->cap_owner || w->owner[p] == NULL)
            continue;
        if (hl_wthread_post_take(w->owner[p], p) != 0) {
            /* Its shard stays with the thread until the exit. */
            hl_log(HL_LOG_ERROR, "revoke_failed", "partition=%d err=\"out of memory\" "
                   "action=stop", (int)p);
            hl_worker_stop(w);
        }
    }
    for (int t = 0; t < w->n_th; t++) {
        int n;
        while ((n = hl_wthread_wait_taken(w->th[t], back, 64)) > 0) {
            for (int j = 0; j < n; j++) {
                int32_t p = back[j]->partition;
                hl_log(HL_LOG_INFO, "partition_revoked", "partition=%d thread=%d", (int)p, t);
                w->th_load[thread_index(w, w->owner[p])]--;
                w->owner[p] = NULL;
                atomic_fetch_sub(&w->assigned, 1);
                hide_series(w, p);
                hl_shard_destroy(back[j]);
            }
        }
    }
}

/* hl_consumer_opts.owns: main thread, like every use of owner[]. */
static int owns_partition(void *opaque, int32_t p)
{
    hl_worker *w = opaque;
    return p >= 0 && p < w->cap_owner && w->owner[p] != NULL;
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    hl_worker *w = opaque;
    int coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    rd_kafka_error_t *error = NULL;
    hl_counter_add(w->rebalances, 1);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        /* Leaving the group can bring an assignment (another member left
         * meanwhile); once stopping, the threads take no new shard, so the
         * partitions are only acknowledged, left unserved and uncommitted:
         * their next owner resumes where they were. */
        if (atomic_load(&w->stop) == 0)
            assign_parts(w, rk, parts);
        else
            hl_log(HL_LOG_INFO, "assignment_ignored", "reason=\"stopping\" partitions=%d",
                   parts->cnt);
        if (coop)
            error = rd_kafka_incremental_assign(rk, parts);
        else
            rd_kafka_assign(rk, parts);
        atomic_store(&w->have_assignment, 1);
    } else {
        if (err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
            hl_log(HL_LOG_WARN, "rebalance_error", "err=\"%s\"", rd_kafka_err2str(err));
        revoke_parts(w, parts);
        if (coop)
            error = rd_kafka_incremental_unassign(rk, parts);
        else
            rd_kafka_assign(rk, NULL);
    }
    if (error) {
        hl_log(HL_LOG_ERROR, "rebalance_failed", "err=\"%s\"", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    }
    hl_gauge_set(w->assigned_g, atomic_load(&w->assigned));
}

/* ---- lifecycle --------------------------------------------------------- */

/* A new model is about to go live: the live catalogue moves onto it
 * first (items.h), so a thread that serves it finds its view there. */
static int rebind_items(void *arg, const hl_mref *r, char *errbuf, size_t errlen)
{
    hl_worker *w = arg;
    if (w->items == NULL || hl_items_rebind(w->items, r->m, r->gen) == 0)
        return 0;
    return hl_err(errbuf, errlen, HL_ENOMEM, "the live catalogue could not be rebound "
                  "to the new model (out of memory); tried again when the file changes "
                  "or on SIGHUP");
}

/* The served models: model.path reloads, weight.* overrides for each. */
static int start_models(hl_worker *w, char *errbuf, size_t errlen)
{
    hl_models_opts mo = {.path = w->o.model_path, .check_ms = w->o.model_check_ms,
                         .tw_override = w->o.has_type_weight ? w->o.type_weight : NULL,
                         .reg = w->reg, .store_dir = w->o.model_dir,
                         .store_retain = w->o.model_retain > 0 ? w->o.model_retain : 4,
                         .first_qitems = w->qitems, .first_ivf = w->ivf,
                         .ivf_nlist = w->o.recs_index_nlist,
                         .before_live = rebind_items, .before_live_arg = w};
    if (mo.store_dir == NULL && w->o.snapshot_dir != NULL && w->o.snapshot_dir[0] != '\0') {
        snprintf(w->model_dir, sizeof w->model_dir, "%s/models", w->o.snapshot_dir);
        mo.store_dir = w->model_dir;
    }
    if ((w->models = hl_models_create(&mo, (hl_model *)w->m, errbuf, errlen)) == NULL)
        return HL_ENOMEM;
    w->ctx.models = w->models;
    return 0;
}

/* Every model served has this shape: a swap to another is refused. */
static int table_opts(hl_worker *w, char *errbuf, size_t errlen)
{
    const hl_model_info *mi = hl_model_info_get(w->m);
    hl_table_opts *t = &w->ctx.topts;
    t->history = w->o.state_history;
    t->max_users = w->o.state_max_users;
    t->evict_mass = w->o.state_evict_mass;
    t->expected_users = 1024;
    return hl_decay_init(&t->decay, mi->n_heads, mi->dim, mi->half_life_ms, errbuf, errlen);
}

static int start_persist(hl_worker *w, char *errbuf, size_t errlen)
{
    if (w->o.snapshot_dir == NULL || w->o.snapshot_dir[0] == '\0')
        return 0;
    hl_persist_opts po = {
        .dir = w->o.snapshot_dir, .topic = w->o.input_topic, .retain = w->o.snapshot_retain,
        .interval_ms = w->o.snapshot_interval_ms,
        .model_fingerprint = hl_model_info_get(w->m)->fingerprint, .reg = w->reg,
    };
    if ((w->persist = hl_persist_create(&po, errbuf, errlen)) == NULL)
        return HL_EIO;
    w->ctx.persist = w->persist;
    return 0;
}

static int check_opts(const hl_worker_opts *o, char *errbuf, size_t errlen)
{
    if (o->threads < 1 || o->threads > 256)
        return hl_err(errbuf, errlen, HL_EINVAL, "worker.threads=%d: want 1..256", o->threads);
    if (o->batch_max_messages < 1 || o->batch_max_ms < 0)
        return hl_err(errbuf, errlen, HL_EINVAL, "batch.max.messages >= 1 and batch.max.ms >= 0");
    if (o->recs_k < 1 || o->recs_k > 1000)
        return hl_err(errbuf, errlen, HL_EINVAL, "recs.k=%d: want 1..1000", o->recs_k);
    /* hl_config_load refuses these too; callers that fill the options
     * themselves (tests, demo) get the same guard against a topic that
     * feeds the worker its own output, which would loop for ever. */
    if (o->output_topic && o->input_topic && strcmp(o->output_topic, o->input_topic) == 0)
        return hl_err(errbuf, errlen, HL_EINVAL, "output.topic=\"%s\" is the input.topic", o->output_topic);
    if (o->dlq_topic && o->input_topic && strcmp(o->dlq_topic, o->input_topic) == 0)
        return hl_err(errbuf, errlen, HL_EINVAL, "dlq.topic=\"%s\" is the input.topic: bad records would loop",
                      o->dlq_topic);
    return 0;
}

static int kafka_given(const hl_worker_opts *o, const char *key)
{
    for (int i = 0; i < o->n_kafka; i++)
        if (strcmp(o->kafka[i].key, key) == 0)
            return 1;
    return 0;
}

/* The live catalogue's reader (items.h), when items.topic is set. Its
 * thread starts in hl_worker_run, which waits for the whole topic before
 * joining the group. */
static int start_items(hl_worker *w, const hl_kafka_prop *props, int n_props,
                       char *errbuf, size_t errlen)
{
    if (w->o.items_topic == NULL || w->o.items_topic[0] == '\0')
        return 0;
    const hl_model_info *mi = hl_model_info_get(w->m);
    hl_items_opts io = {
        .bootstrap = w->bootstrap, .kafka = props, .n_kafka = n_props,
        .topic = w->o.items_topic, .m = w->m, .max_new = w->o.catalogue_max_new,
        .codec = {.framing = w->o.codec.input_framing, .schema_id = w->o.items_schema_id,
                  .dim = mi->dim, .min_ts_ms = w->o.codec.min_ts_ms,
                  .max_ts_ms = w->o.codec.max_ts_ms},
        .prod = w->prod, .dlq_topic = w->ctx.dlq_topic, .reg = w->reg,
        .schema_fn = w->o.codec.schema_fn, .schema_arg = w->o.codec.schema_arg,
    };
    if ((w->items = hl_items_create(&io, errbuf, errlen)) == NULL)
        return HL_EINVAL;
    w->ctx.items = w->items;
    if (!w->o.catalogue_foldin)
        return 0;
    hl_wfoldin_opts fo = {
        .items = w->items, .m = w->m, .min_events = w->o.catalogue_foldin_min_events,
        .max_items = w->o.catalogue_max_new, .prod = w->prod, .topic = w->o.items_topic,
        .codec = io.codec, .reg = w->reg,
    };
    char why[256];
    /* Fold-in is on by default: a model it cannot fit a map for (an e_out
     * of zeros) serves without it rather than not at all. */
    if ((w->foldin = hl_wfoldin_create(&fo, why, sizeof why)) == NULL)
        hl_log(HL_LOG_ERROR, "foldin_off", "reason=\"%s\" action=\"new items wait for an "
               "embedding on the item topic or the next model; set catalogue.foldin=false "
               "to silence this\"", why);
    w->ctx.foldin = w->foldin;
    return 0;
}

static int start_kafka(hl_worker *w, char *errbuf, size_t errlen)
{
    if (w->o.bootstrap == NULL || w->o.bootstrap[0] == '\0') {
        if (embedded_start(w, errbuf, errlen) != 0)
            return HL_EIO;
    } else {
        snprintf(w->bootstrap, sizeof w->bootstrap, "%s", w->o.bootstrap);
    }
    hl_kafka_prop props[260];
    int n = 0;
    props[n++] = (hl_kafka_prop){"bootstrap.servers", w->bootstrap};
    /* librdkafka's mock broker holds an empty fetch for the whole
     * fetch.wait.max.ms (500 ms) even when records arrive meanwhile, which
     * a real broker does not: keep it short on the embedded broker. */
    if (w->mock && !kafka_given(&w->o, "fetch.wait.max.ms"))
        props[n++] = (hl_kafka_prop){"fetch.wait.max.ms", "10"};
    /* auto.offset.reset is the worker's key (restore() starts there) and
     * librdkafka's (offsets out of range): one value for both. A given
     * kafka.auto.offset.reset already sets both (hl_config_worker_opts). */
    if (!kafka_given(&w->o, "auto.offset.reset"))
        props[n++] = (hl_kafka_prop){"auto.offset.reset",
                                     w->o.offset_reset_latest ? "latest" : "earliest"};
    for (int i = 0; i < w->o.n_kafka && n < 260; i++)
        if (strcmp(w->o.kafka[i].key, "bootstrap.servers") != 0)
            props[n++] = w->o.kafka[i];
    hl_counter *derr = hl_metrics_counter(w->reg, "halflife_delivery_errors_total",
                                          "Records the producer failed to deliver.", NULL);
    /* A bad record goes to the DLQ with its original bytes, so the producer
     * must carry anything the consumer can fetch: a record up to
     * receive.message.max.bytes (librdkafka's default 100000000; a record
     * larger than fetch.max.bytes still comes, alone). The producer's own
     * default (1000000) refused a 3 MB record. Producer only: on the
     * consumer message.max.bytes would raise fetch.max.bytes with it. */
    int n_prod = n;
    hl_kafka_prop prod_props[261];
    memcpy(prod_props, props, sizeof *props * (size_t)n);
    if (!kafka_given(&w->o, "message.max.bytes")) {
        const char *rmax = "100000000";
        for (int i = 0; i < w->o.n_kafka; i++)
            if (strcmp(w->o.kafka[i].key, "receive.message.max.bytes") == 0)
                rmax = w->o.kafka[i].value;
        prod_props[n_prod++] = (hl_kafka_prop){"message.max.bytes", rmax};
    }
    if ((w->prod = hl_producer_create(prod_props, n_prod, derr, errbuf, errlen)) == NULL)
        return HL_EINVAL;
    hl_consumer_opts co = {
        .bootstrap = w->bootstrap, .group_id = w->o.group_id,
        .kafka = props + 1, .n_kafka = n - 1, .rebalance = on_rebalance, .opaque = w,
        .reg = w->reg, .topic = w->o.input_topic, .owns = owns_partition,
    };
    if ((w->cons = hl_consumer_create(&co, errbuf, errlen)) == NULL)
        return HL_EINVAL;
    return start_items(w, props + 1, n - 1, errbuf, errlen);
}

/* Sleeps ms in steps of 100, 1 if told to give up meanwhile. */
static int nap_or_abort(const hl_worker *w, int64_t ms)
{
    for (int64_t t = 0; t < ms; t += 100) {
        if (w->o.start_abort != NULL && *w->o.start_abort)
            return 1;
        usleep(100000);
    }
    return w->o.start_abort != NULL && *w->o.start_abort;
}

/* The id of schema under "<topic>-value" (TopicNameStrategy): registered,
 * or only looked up. An unreachable registry (or 5xx) is waited for, 1, 2,
 * 4 then 5 s apart, one line each, until it answers or start_abort is set;
 * anything else (credentials refused, not registered) ends the call. file
 * names the schema in messages, event the log line of the id. */
static int topic_schema_id(hl_worker *w, hl_registry *r, const char *topic, const char *schema,
                           const char *file, const char *event, int32_t *id, char *errbuf,
                           size_t errlen)
{
    char subject[300];
    int rc;
    snprintf(subject, sizeof subject, "%s-value", topic);
    for (int64_t backoff_ms = 1000; ; backoff_ms = backoff_ms < 4000 ? backoff_ms * 2 : 5000) {
        rc = w->o.registry_auto_register
                 ? hl_registry_register(r, subject, schema, id, errbuf, errlen)
                 : hl_registry_lookup(r, subject, schema, id, errbuf, errlen);
        if (rc != HL_EAGAIN)
            break;
        hl_log(HL_LOG_WARN, "schema_registry_wait_start", "subject=%s err=\"%s\" retry_ms=%lld "
               "action=\"the schema id is needed before the worker joins its group\"",
               subject, errbuf, (long long)backoff_ms);
        if (nap_or_abort(w, backoff_ms))
            return hl_err(errbuf, errlen, HL_EAGAIN, "stopped while waiting for the registry");
    }
    if (rc == HL_ENOENT && !w->o.registry_auto_register)
        return hl_err(errbuf, errlen, rc, "%s is not registered under subject %s "
                      "(schema.registry.auto.register=false): register it there, or allow "
                      "auto.register", file, subject);
    if (rc == 0)
        hl_log(HL_LOG_INFO, event, "subject=%s id=%d how=%s", subject, (int)*id,
               w->o.registry_auto_register ? "registered" : "looked_up");
    return rc;
}

/* The id fold-in's publications carry: ItemUpdate's under
 * "<items.topic>-value". Without it fold-in is off (logged), the worker
 * still serves. */
static void items_schema_id(hl_worker *w, hl_registry *r)
{
    char why[512];
    int32_t id = 0;
    if (!w->o.catalogue_foldin || w->o.items_topic == NULL || w->o.items_topic[0] == '\0')
        return;
    if (topic_schema_id(w, r, w->o.items_topic, hl_item_schema(), "schemas/item_update.avsc",
                        "items_schema", &id, why, sizeof why) == 0) {
        w->o.items_schema_id = id;
        return;
    }
    w->o.catalogue_foldin = 0;
    hl_log(HL_LOG_ERROR, "foldin_off", "reason=\"%s\" action=\"new items wait for an "
           "embedding on the item topic or the next model\"", why);
}

/* With schema.registry.url: the lists carry the registry's id, and the
 * codecs read writer schemas through the store (schema_store.h). */
static int start_registry(hl_worker *w, char *errbuf, size_t errlen)
{
    char why[512], shown[1024];
    int32_t id = 0;
    if (w->o.registry.urls == NULL || w->o.registry.urls[0] == '\0')
        return 0;
    hl_registry *r = hl_registry_create(&w->o.registry, errbuf, errlen);
    if (r == NULL)
        return HL_EINVAL;
    hl_registry_urls_redacted(r, shown, sizeof shown);
    if (w->o.codec.output_framing == HL_FRAMING_CONFLUENT &&
        topic_schema_id(w, r, w->o.output_topic, hl_codec_list_schema(),
                        "schemas/recommendation_list.avsc", "list_schema", &id, why,
                        sizeof why) != 0) {
        hl_registry_destroy(r);
        return hl_err(errbuf, errlen, HL_EINVAL, "schema registry at start: %s", why);
    }
    w->o.codec.output_schema_id = id;
    if (w->o.codec.input_framing != HL_FRAMING_CONFLUENT) {
        hl_registry_destroy(r);             /* raw input names no schema id */
        return 0;
    }
    items_schema_id(w, r);
    if ((w->schemas = hl_schema_store_create(r, w->o.registry_fallback_dir, w->reg, errbuf,
                                             errlen)) == NULL)
        return HL_ENOMEM;
    if (w->o.codec.output_framing == HL_FRAMING_CONFLUENT)
        hl_schema_store_set_probe(w->schemas, id);
    w->o.codec.schema_fn = hl_schema_store_get;
    w->o.codec.schema_arg = w->schemas;
    hl_log(HL_LOG_INFO, "schema_registry", "url=%s fallback_dir=%s", shown,
           w->o.registry_fallback_dir ? w->o.registry_fallback_dir : "none");
    return 0;
}

/* state.store=kafka: the changelog topic checked (or created) before the
 * worker joins its group. The embedded broker made it already. */
static int start_changelog(hl_worker *w, char *errbuf, size_t errlen)
{
    if (!w->o.state_kafka)
        return 0;
    hl_changelog_opts co = {
        .topic = w->state_topic, .input_topic = w->o.input_topic, .bootstrap = w->bootstrap,
        .kafka = w->o.kafka, .n_kafka = w->o.n_kafka, .flush_ms = w->o.state_flush_ms,
        .model_fingerprint = hl_model_info_get(w->m)->fingerprint, .topts = &w->ctx.topts,
        .prod = w->prod, .consumer = hl_consumer_handle(w->cons), .reg = w->reg,
        .create = w->mock == NULL, .timeout_ms = 10000,
    };
    if ((w->changelog = hl_changelog_create(&co, errbuf, errlen)) == NULL)
        return HL_EINVAL;
    hl_log(HL_LOG_INFO, "state_store", "store=kafka topic=%s flush_ms=%lld", w->state_topic,
           (long long)w->o.state_flush_ms);
    return 0;
}

static int start_threads(hl_worker *w, char *errbuf, size_t errlen)
{
    w->th = calloc((size_t)w->o.threads, sizeof *w->th);
    w->th_load = calloc((size_t)w->o.threads, sizeof *w->th_load);
    if (w->th == NULL || w->th_load == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "worker: out of memory");
    for (int i = 0; i < w->o.threads; i++) {
        if ((w->th[i] = hl_wthread_create(i, &w->ctx, errbuf, errlen)) == NULL)
            return HL_ENOMEM;
        w->n_th++;
    }
    return 0;
}

#define INDEX_SAMPLE 200     /* queries of the recall check at load */

/* Recall@k of the index at load, on INDEX_SAMPLE queries: the e_out rows of
 * items spread over the catalogue (users' real queries are not known yet;
 * the shadow check measures those). Costs INDEX_SAMPLE exact scans. */
static double index_recall_at_load(hl_worker *w)
{
    const hl_model_info *mi = hl_model_info_get(w->m);
    int n_q = mi->n_items < INDEX_SAMPLE ? (int)mi->n_items : INDEX_SAMPLE;
    float *Q = malloc((size_t)n_q * mi->dim * sizeof(float));
    if (Q == NULL)
        return -1.0;
    for (int i = 0; i < n_q; i++) {
        int64_t j = (int64_t)i * mi->n_items / n_q;       /* evenly spaced rows */
        memcpy(Q + (size_t)i * mi->dim, hl_model_e_out(w->m) + (size_t)j * mi->dim,
               (size_t)mi->dim * sizeof(float));
    }
    double r = hl_ivf_recall(w->ivf, Q, n_q, w->o.recs_k, w->o.recs_index_nprobe);
    free(Q);
    return r;
}

/* recs.index=ivf: the index over e_out, built once at load and read by
 * every thread's ranker; its recall at load is logged and exported, the
 * shadow check's as the refreshes go. */
static int start_index(hl_worker *w, char *errbuf, size_t errlen)
{
    const hl_model_info *mi = hl_model_info_get(w->m);
    hl_ivf_opts io = {.nlist = w->o.recs_index_nlist};
    hl_gauge *at_load = hl_metrics_gauge(w->reg, "halflife_index_recall",
        "Recall@k of the approximate index (recs.index=ivf) against exact scoring: "
        "check=\"load\" on a sample at model load, check=\"shadow\" (once a refresh "
        "was checked) over the refreshes scored both ways.", "check=\"load\"");
    w->ctx.shadow_hits = hl_metrics_counter(w->reg, "halflife_index_shadow_hits_total",
        "Items of the shadow check's exact lists that the index's lists also held.", NULL);
    w->ctx.shadow_items = hl_metrics_counter(w->reg, "halflife_index_shadow_items_total",
        "Items of the shadow check's exact lists (recs.index.shadow.every).", NULL);
    double t0 = hl_now_mono_s();
    char why[256];
    if ((w->ivf = hl_ivf_create(hl_model_e_out(w->m), hl_model_bias(w->m), mi->n_items,
                                mi->dim, &io, why, sizeof why)) == NULL)
        return hl_err(errbuf, errlen, HL_EINVAL, "recs.index=ivf: recs.index.nlist=%d: %s",
                      w->o.recs_index_nlist, why);
    if (w->o.recs_index_nprobe == 0)
        w->o.recs_index_nprobe = hl_ivf_nlist(w->ivf) / 16 > 0 ? hl_ivf_nlist(w->ivf) / 16 : 1;
    if (w->o.recs_index_nprobe > hl_ivf_nlist(w->ivf))
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "recs.index.nprobe=%d: more than the index's %d lists (recs.index.nlist)",
                      w->o.recs_index_nprobe, hl_ivf_nlist(w->ivf));
    double t1 = hl_now_mono_s(), recall = index_recall_at_load(w);
    hl_gauge_set(at_load, recall);
    hl_log(HL_LOG_INFO, "index", "mode=ivf items=%d nlist=%d nprobe=%d build_s=%.2f bytes=%zu "
           "recall_at_%d=%.4f sample=%d recall_s=%.2f", (int)mi->n_items, hl_ivf_nlist(w->ivf),
           w->o.recs_index_nprobe, t1 - t0, hl_ivf_bytes(w->ivf), w->o.recs_k, recall,
           mi->n_items < INDEX_SAMPLE ? (int)mi->n_items : INDEX_SAMPLE, hl_now_mono_s() - t1);
    return 0;
}

/* Two-stage scoring: the model's int8 copy, built once at load and read by
 * every thread's ranker (at 1M items, dim 64, 72 MB). */
static int start_scoring(hl_worker *w, char *errbuf, size_t errlen)
{
    const hl_model_info *mi = hl_model_info_get(w->m);
    w->ctx.rank_fallbacks = hl_metrics_counter(w->reg, "halflife_rank_fallbacks_total",
        "Users whose two-stage candidates could not be bounded (a crowd of near-ties), "
        "scored over every item instead; the list is the same, only slower.", NULL);
    if (w->o.recs_enabled && w->o.recs_index_ivf)
        return start_index(w, errbuf, errlen);    /* the index replaces both scans */
    if (!w->o.recs_enabled || w->o.recs_scoring != HL_SCORING_TWO_STAGE) {
        hl_log(HL_LOG_INFO, "scoring", "mode=exact");
        return 0;
    }
    w->qitems = hl_qitems_create(hl_model_e_out(w->m), hl_model_bias(w->m), mi->n_items,
                                 mi->dim, HL_QKERNEL_AUTO, errbuf, errlen);
    if (w->qitems == NULL)
        return HL_EINVAL;
    hl_log(HL_LOG_INFO, "scoring", "mode=two-stage kernel=%s table_bytes=%zu",
           hl_qitems_kernel(w->qitems), hl_qitems_scan_bytes(w->qitems));
    return 0;
}

hl_worker *hl_worker_create(const hl_worker_opts *o, const hl_model *m,
                            hl_metrics *reg, char *errbuf, size_t errlen)
{
    if (check_opts(o, errbuf, errlen) != 0)
        return NULL;
    hl_worker *w = calloc(1, sizeof *w);
    if (w == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "worker: out of memory");
        return NULL;
    }
    w->o = *o;
    w->m = m;
    /* The counters live in the registry whether or not anyone scrapes it
     * (hl_worker_stats_get reads them back), so there is always one. */
    if (reg == NULL && (reg = w->own_reg = hl_metrics_create()) == NULL) {
        free(w);
        hl_err(errbuf, errlen, HL_ENOMEM, "worker: out of memory");
        return NULL;
    }
    w->reg = reg;
    pthread_mutex_init(&w->lat_mu, NULL);
    pthread_cond_init(&w->closed_cv, NULL);
    if (o->dlq_topic == NULL)
        snprintf(w->dlq, sizeof w->dlq, "%s.dlq", o->input_topic);
    else
        snprintf(w->dlq, sizeof w->dlq, "%s", o->dlq_topic);
    w->ctx = (hl_wshared){.o = &w->o, .stop = &w->stop, .reg = reg,
                          .dlq_topic = w->dlq[0] ? w->dlq : NULL};
    openblas_set_num_threads(1);     /* each shard thread runs its own SGEMMs */
    register_metrics(w);
    if ((w->ctx.multipart = hl_multipart_create(MULTIPART_BITS)) == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "worker: out of memory");
        goto fail;
    }
    if (o->state_topic && o->state_topic[0])
        snprintf(w->state_topic, sizeof w->state_topic, "%s", o->state_topic);
    else
        snprintf(w->state_topic, sizeof w->state_topic, "%s-state", o->group_id);
    /* The registry before Kafka: the item topic's reader reads through its
     * schema store. */
    if (table_opts(w, errbuf, errlen) != 0 || start_persist(w, errbuf, errlen) != 0 ||
        start_registry(w, errbuf, errlen) != 0 || start_kafka(w, errbuf, errlen) != 0 ||
        start_changelog(w, errbuf, errlen) != 0)
        goto fail;
    w->ctx.consumer = hl_consumer_handle(w->cons);
    w->ctx.prod = w->prod;
    /* The models after scoring: the first model's int8 table is theirs. */
    if (start_scoring(w, errbuf, errlen) != 0 ||
        start_models(w, errbuf, errlen) != 0 || start_threads(w, errbuf, errlen) != 0)
        goto fail;
    return w;
fail:
    hl_worker_destroy(w);
    return NULL;
}

void hl_worker_destroy(hl_worker *w)
{
    if (w == NULL || w->abandoned)
        return;                 /* abandoned: librdkafka would block; the process ends */
    for (int i = 0; i < w->n_th; i++)
        hl_wthread_destroy(w->th[i]);
    hl_persist_destroy(w->persist);     /* after every shard is gone */
    hl_models_destroy(w->models);       /* after every thread and shard */
    hl_qitems_destroy(w->qitems);       /* after every ranker and the first model's ref */
    hl_ivf_destroy(w->ivf);             /* the same */
    hl_changelog_destroy(w->changelog);
    hl_multipart_destroy(w->ctx.multipart);
    hl_wfoldin_destroy(w->foldin);      /* after the threads that feed it */
    hl_items_destroy(w->items);         /* after the threads let go of its views */
    hl_schema_store_destroy(w->schemas);  /* after every codec and the item reader */
    hl_consumer_destroy(w->cons);
    hl_producer_destroy(w->prod, w->o.shutdown_timeout_ms);
    embedded_stop(w);
    pthread_mutex_destroy(&w->lat_mu);
    pthread_cond_destroy(&w->closed_cv);
    free(w->th);
    free(w->th_load);
    free(w->owner);
    hl_metrics_destroy(w->own_reg);
    free(w);
}

const char *hl_worker_bootstrap(const hl_worker *w) { return w->bootstrap; }

void hl_worker_stop(hl_worker *w)
{
    int zero = 0;
    atomic_store(&w->ctx.stop_deadline_ms, hl_now_mono_ms() + w->o.shutdown_timeout_ms);
    atomic_compare_exchange_strong(&w->stop, &zero, 1);
}

int hl_worker_ready(const hl_worker *w)
{
    return atomic_load(&((hl_worker *)w)->have_assignment) && !atomic_load(&((hl_worker *)w)->stop);
}

/* Taken once every thread has stopped, before leaving the group: the
 * revocation that leaving brings hides the partitions' user gauges. */
static void log_totals(const hl_worker_stats *totals)
{
    hl_worker_stats st = *totals;
    hl_log(HL_LOG_INFO, "worker_totals",
           "consumed=%llu applied=%llu duplicates=%llu invalid=%llu failed=%llu "
           "unknown_items=%llu lists=%llu batches=%llu dlq=%llu users=%llu",
           (unsigned long long)st.consumed, (unsigned long long)st.applied,
           (unsigned long long)st.duplicates, (unsigned long long)st.invalid,
           (unsigned long long)st.failed, (unsigned long long)st.unknown_items,
           (unsigned long long)st.lists, (unsigned long long)st.batches,
           (unsigned long long)st.dlq_records, (unsigned long long)st.users);
}

static void *closer_main(void *arg)
{
    hl_worker *w = arg;
    hl_consumer_close(w->cons);
    pthread_mutex_lock(&w->lat_mu);
    w->closed = 1;
    pthread_cond_broadcast(&w->closed_cv);
    pthread_mutex_unlock(&w->lat_mu);
    return NULL;
}

/* Commits and leaves the group, within what is left of shutdown.timeout.ms.
 * librdkafka 2.0.2's close has no timeout and blocks while no broker
 * answers, so it runs on its own thread; when time runs out the handles are
 * abandoned (never destroyed: that would block too) and HL_EIO is returned.
 * The snapshots already hold the offsets, so a restart loses nothing. */
static int close_within(hl_worker *w)
{
    pthread_t tid;
    int64_t deadline = atomic_load(&w->ctx.stop_deadline_ms);
    if (deadline == 0)
        deadline = hl_now_mono_ms() + w->o.shutdown_timeout_ms;
    if (pthread_create(&tid, NULL, closer_main, w) != 0) {
        hl_consumer_close(w->cons);
        return 0;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t left = deadline - hl_now_mono_ms();
    if (left < 1000)
        left = 1000;                /* leaving the group takes a round trip */
    ts.tv_sec += left / 1000;
    ts.tv_nsec += (left % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
    pthread_mutex_lock(&w->lat_mu);
    while (!w->closed && pthread_cond_timedwait(&w->closed_cv, &w->lat_mu, &ts) == 0)
        ;
    int closed = w->closed;
    pthread_mutex_unlock(&w->lat_mu);
    if (closed) {
        pthread_join(tid, NULL);
        return 0;
    }
    pthread_detach(tid);
    w->abandoned = 1;
    hl_log(HL_LOG_WARN, "consumer_close_timeout", "broker_up=%d action=exit_without_leaving",
           hl_consumer_broker_up(w->cons));
    return HL_EIO;
}

/* After every thread has joined: a graceful stop that left shards unsaved
 * (thread.c notes each final snapshot that failed or was skipped) fails the
 * run, with one line naming them, so an orchestrator's logs show it. The
 * offsets are still committed and the group left: a restart restores their
 * previous snapshots and replays from there, so nothing is lost. */
static int report_unsaved(hl_worker *w)
{
    int n = atomic_load(&w->ctx.n_unsaved);
    char parts[HL_UNSAVED_MAX * 12 + 8];
    size_t len = 0;
    if (n == 0)
        return 0;
    parts[0] = '\0';
    for (int i = 0; i < n && i < HL_UNSAVED_MAX; i++)
        len += (size_t)snprintf(parts + len, sizeof parts - len, "%s%d", i ? "," : "",
                                atomic_load(&w->ctx.unsaved[i]));
    if (n > HL_UNSAVED_MAX)
        snprintf(parts + len, sizeof parts - len, ",...");
    hl_log(HL_LOG_ERROR, "shutdown_unsaved", "n=%d partitions=%s reason=\"final snapshot "
           "failed or skipped; a restart replays them from their previous snapshot\"",
           n, parts);
    return HL_EIO;
}

/* Reads the whole item topic before joining the group, so no list goes out
 * without the catalogue (and /readyz waits for it). 0, or HL_EIO when the
 * thread cannot start or a stop came first. */
static int load_items(hl_worker *w, volatile sig_atomic_t *sig)
{
    char err[256];
    if (w->items == NULL)
        return 0;
    int64_t t0 = hl_now_mono_ms();
    if (hl_items_start(w->items, err, sizeof err) != 0) {
        hl_log(HL_LOG_ERROR, "items_start_failed", "err=\"%s\"", err);
        return HL_EIO;
    }
    while (!hl_items_loaded(w->items)) {
        if (sig && *sig)
            hl_worker_stop(w);
        if (atomic_load(&w->stop))
            return HL_EIO;
        hl_producer_poll(w->prod, 20);
    }
    hl_log(HL_LOG_INFO, "items_read", "topic=%s ms=%lld", w->o.items_topic,
           (long long)(hl_now_mono_ms() - t0));
    return 0;
}

/* model.path, when its check is due or SIGHUP asked: a new model becomes
 * current here, and restores from now on expect its fingerprint. */
static void check_model(hl_worker *w)
{
    int force = w->o.reload_sig != NULL && *w->o.reload_sig;
    if (force)
        *w->o.reload_sig = 0;
    if (hl_models_check(w->models, hl_now_mono_ms(), force) == 1) {
        hl_mref *r = hl_models_acquire(w->models);
        if (w->persist)
            hl_persist_set_model(w->persist, r->mi->fingerprint);
        if (w->changelog)
            hl_changelog_set_model(w->changelog, r->mi->fingerprint);
        hl_mref_release(r);
    }
}

int hl_worker_run(hl_worker *w, volatile sig_atomic_t *sig)
{
    char err[512];
    int rc = 0;
    if (load_items(w, sig) != 0)
        return atomic_load(&w->stop) ? 0 : HL_EIO;
    if (hl_consumer_subscribe(w->cons, w->o.input_topic, err, sizeof err) != 0) {
        hl_log(HL_LOG_ERROR, "subscribe_failed", "err=\"%s\"", err);
        return HL_EIO;
    }
    for (int i = 0; i < w->n_th; i++)
        if (hl_wthread_start(w->th[i], err, sizeof err) != 0) {
            hl_log(HL_LOG_ERROR, "thread_start_failed", "err=\"%s\"", err);
            atomic_store(&w->stop, 2);
            rc = HL_EIO;
        }
    hl_log(HL_LOG_INFO, "worker_started", "bootstrap=%s group=%s topic=%s threads=%d",
           w->bootstrap, w->o.group_id, w->o.input_topic, w->o.threads);
    while (atomic_load(&w->stop) == 0) {
        if (hl_consumer_serve(w->cons, 100)) {
            atomic_store(&w->stop, 2);
            rc = HL_EIO;
        }
        if (sig && *sig)
            hl_worker_stop(w);
        check_model(w);
        hl_producer_poll(w->prod, 0);
    }
    hl_log(HL_LOG_INFO, "worker_stopping", "drain=%d", atomic_load(&w->stop) == 1);
    for (int i = 0; i < w->n_th; i++)
        hl_wthread_join(w->th[i]);
    if (report_unsaved(w) != 0)
        rc = HL_EIO;
    hl_worker_stats totals;
    hl_worker_stats_get(w, &totals);
    if (close_within(w) != 0) {
        log_totals(&totals);
        return HL_EIO;
    }
    int64_t left = atomic_load(&w->ctx.stop_deadline_ms) - hl_now_mono_ms();
    rd_kafka_flush(hl_producer_handle(w->prod), left > 0 ? (int)left : 0);
    log_totals(&totals);
    return rc;
}

/* The q-quantile of a window of bucket counts (n finite bounds, counts
 * n+1), interpolated linearly inside its bucket as Prometheus's
 * histogram_quantile does; the last finite bound when it lies in +Inf. */
static double quantile(const double *bounds, int n, const uint64_t *c, uint64_t total,
                       double q)
{
    if (total == 0)
        return 0;
    double want = q * (double)total, seen = 0;
    for (int i = 0; i < n; i++) {
        if (seen + (double)c[i] >= want && c[i] > 0) {
            double lo = i == 0 ? 0 : bounds[i - 1];
            return lo + (bounds[i] - lo) * (want - seen) / (double)c[i];
        }
        seen += (double)c[i];
    }
    return bounds[n - 1];
}

/* Under lat_mu: p50 and p99 of what h counted since prev (then updated). */
static void window(hl_worker *w, hl_histogram *h, uint64_t *prev, double *p50, double *p99)
{
    uint64_t c[WIN_BUCKETS], d[WIN_BUCKETS], total = 0;
    int n_bounds;
    const double *bounds = hl_histogram_bounds(h, &n_bounds);
    int n_b = hl_histogram_counts(h, c, WIN_BUCKETS);
    for (int i = 0; i < n_b; i++) {
        d[i] = c[i] - prev[i];
        prev[i] = c[i];
        total += d[i];
    }
    *p50 = quantile(bounds, n_bounds, d, total, 0.50);
    *p99 = quantile(bounds, n_bounds, d, total, 0.99);
}

void hl_worker_stats_get(hl_worker *w, hl_worker_stats *st)
{
    hl_wshared *ctx = &w->ctx;
    memset(st, 0, sizeof *st);
    st->consumed = hl_metrics_counter_sum(w->reg, "halflife_events_consumed_total");
    st->applied = hl_counter_get(ctx->mx.applied);
    st->duplicates = hl_counter_get(ctx->mx.duplicates);
    st->failed = hl_counter_get(ctx->mx.failed);
    st->unknown_items = hl_counter_get(ctx->mx.unknown);
    st->lists = hl_counter_get(ctx->mx.lists);
    st->batches = hl_counter_get(ctx->mx.batches);
    st->skipped = hl_counter_get(ctx->mx.skipped);
    st->users = (uint64_t)hl_metrics_gauge_sum(w->reg, "halflife_users");
    for (int r = 1; r < HL_CODEC_N_REASONS; r++) {
        st->invalid_by_reason[r] = hl_counter_get(ctx->mx.invalid[r]);
        st->invalid += st->invalid_by_reason[r];
        st->dlq_records += hl_counter_get(ctx->mx.dlq[r]);
    }
    st->assigned = atomic_load(&w->assigned);
    hl_histogram *hs[N_WIN] = {ctx->mx.e2p, ctx->mx.worker_share};
    for (int s = 0; s < 6; s++)
        hs[2 + s] = ctx->mx.live[s];
    pthread_mutex_lock(&w->lat_mu);
    window(w, hs[0], w->win_prev[0], &st->lat_p50_s, &st->lat_p99_s);
    window(w, hs[1], w->win_prev[1], &st->worker_p50_s, &st->worker_p99_s);
    for (int s = 0; s < 6; s++)
        window(w, hs[2 + s], w->win_prev[2 + s], &st->stage_p50_s[s], &st->stage_p99_s[s]);
    pthread_mutex_unlock(&w->lat_mu);
}
