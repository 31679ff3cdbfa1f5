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
#include "worker_internal.h"
#include "version.h"

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
            "Bad records whose copy the dead-letter topic acknowledged, by reason (a copy "
            "that did not get there is in halflife_dlq_errors_total instead).", labels);
    }
    w->ctx.mx.dlq_errors = hl_metrics_counter(reg, "halflife_dlq_errors_total",
        "Dead-letter copies that did not reach the DLQ topic: a bad input record's "
        "refused by the producer or the broker (the record is then kept in "
        "snapshot.dir/dead-letters: halflife_dead_letters_kept_total), a bad ItemUpdate's "
        "refused by the producer or the broker or purged undelivered (not kept: the item "
        "topic still holds it).", NULL);
    w->ctx.mx.multipart = hl_metrics_counter(reg, "halflife_users_multi_partition_total",
        "Users inserted in one partition while noted in another (input not keyed by user_id).",
        NULL);
    w->ctx.mx.skipped = hl_metrics_counter(reg, "halflife_input_offsets_skipped_total",
        "Input offsets the consumer jumped over: records deleted by retention before "
        "they were read (lost to the state), or transaction markers.", NULL);
    w->ctx.mx.redelivered = hl_metrics_counter(reg, "halflife_input_redelivered_total",
        "Input records the consumer delivered a second time (below the partition's "
        "position; librdkafka 2.0.2 after a rebalance), dropped before they count.", NULL);
    w->ctx.mx.dl_kept = hl_metrics_counter(reg, "halflife_dead_letters_kept_total",
        "Bad records whose DLQ copy failed, kept in snapshot.dir/dead-letters instead.", NULL);
    w->ctx.mx.dl_not_kept = hl_metrics_counter(reg, "halflife_dead_letter_write_failures_total",
        "Writes of a dead letter to snapshot.dir/dead-letters that failed or that "
        "deadletter.max.bytes refused; each is tried again after a backoff (0.1 s doubling to "
        "10 s), its partition's offsets held meanwhile.", NULL);
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
        "Recommendation lists produced (a list the broker refused and is sent again is "
        "counted once here, again in halflife_delivery_retries_total).", NULL);
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
    hl_metrics_counter(reg, "halflife_delivery_errors_total", HL_DELIVERY_ERRORS_HELP, NULL);
    hl_metrics_counter(reg, "halflife_delivery_purged_total", HL_DELIVERY_PURGED_HELP, NULL);
    w->ctx.mx.retries = hl_metrics_counter(reg, "halflife_delivery_retries_total",
        "Lists refreshed and sent again because the broker refused (or the producer "
        "could not take) their user's previous one.", NULL);
    w->ctx.mx.given_up = hl_metrics_counter(reg, "halflife_delivery_given_up_total",
        "Lists given up on: refused with an error retrying cannot fix (too large, "
        "invalid) at the last attempt, or their key lost to out of memory.", NULL);
    w->prod_fatal_c = hl_metrics_counter(reg, "halflife_producer_fatal_total",
        "Fatal errors of the producer (lists, dead letters, changelog): the worker then "
        "stops and exits 1, and /healthz fails until it does.", NULL);
    w->rebalances = hl_metrics_counter(reg, "halflife_rebalances_total",
        "Rebalance callbacks served (assign and revoke).", NULL);
    w->recreated = hl_metrics_counter(reg, "halflife_input_topic_recreated_total",
        "Partitions whose restored input offset lay beyond the topic's end at assignment "
        "(the input topic deleted and created again): the users were kept and the new "
        "topic read from auto.offset.reset.", NULL);
    w->assigned_g = hl_metrics_gauge(reg, "halflife_assigned_partitions",
        "Input partitions this worker owns.", NULL);
    w->queued_g = hl_metrics_gauge(reg, "halflife_consumer_queued_records",
        "Records fetched and waiting in the shard threads' queues (librdkafka's prefetch); "
        "at most about kafka.queued.min.messages per shard thread plus one fetch per "
        "partition, each costing its bytes and about 170 B more of memory.", NULL);
    w->ctx.mx.migrated = hl_metrics_counter(reg, "halflife_users_migrated_total",
        "Users whose state moved into a new model's space (live swap or snapshot).", NULL);
    w->ctx.mx.rebuilt = hl_metrics_counter(reg, "halflife_users_rebuilt_total",
        "Users whose heads were rebuilt from their history ring alone (the old model was "
        "not at hand).", NULL);
    w->ctx.mx.fits_on_thread = hl_metrics_counter(reg,
        "halflife_model_migration_fits_on_thread_total",
        "Migrations a shard thread fitted itself, stalling its batch loop (none was fitted "
        "when the model went live).", NULL);
    /* The build, so a dashboard can tell which pods run which binary. */
    char ver[128], rdk[64], labels[256];
    hl_metrics_escape(ver, sizeof ver, hl_version());
    hl_metrics_escape(rdk, sizeof rdk, rd_kafka_version_str());
    snprintf(labels, sizeof labels, "version=\"%s\",librdkafka=\"%s\"", ver, rdk);
    hl_gauge_set(hl_metrics_gauge(reg, "halflife_build_info",
        "The running build (always 1): halflife's git version and librdkafka's.", labels), 1);
}

static void register_metrics(hl_worker *w)
{
    register_event_counters(w);
    register_timings(w);
    register_process(w);
}

hl_worker *hl_worker_create(const hl_worker_opts *o, const hl_model *m,
                            hl_metrics *reg, char *errbuf, size_t errlen)
{
    if (hl_worker_check_opts(o, errbuf, errlen) != 0)
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
    hl_deadletter_count_init(&w->ctx.dl_count);
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
    if (hl_worker_start_parts(w, errbuf, errlen) != 0)
        goto fail;
    return w;
fail:
    hl_worker_destroy(w);
    return NULL;
}

/* How long hl_worker_destroy waits for the producer's last records: what
 * is left of a stop's deadline (the final flush of hl_worker_run already
 * waited until it), else a whole shutdown.timeout.ms (no stop ran: a
 * worker that failed to start). Before, it was always the whole bound: a
 * clean stop with records the broker did not take (a fold-in item, which
 * no offset waits for) took twice shutdown.timeout.ms, with run.c's
 * last-resort alarm already off. */
static int settle_ms(hl_worker *w)
{
    int64_t deadline = atomic_load(&w->ctx.stop_deadline_ms);
    if (deadline == 0)
        return w->o.shutdown_timeout_ms;
    int64_t left = deadline - hl_now_mono_ms();
    return left > 0 ? (int)left : 0;
}

void hl_worker_destroy(hl_worker *w)
{
    if (w == NULL || w->abandoned)
        return;                 /* abandoned: librdkafka would block; the process ends */
    /* Delivery reports write into tickets that the threads' flights and
     * dead letters and the item reader own: every report is served (or the
     * record purged) before those are freed, and the item reader sends
     * nothing more (its thread would run on until hl_items_destroy). */
    hl_items_stop(w->items);
    int purged = w->prod != NULL ? hl_producer_settle(w->prod, settle_ms(w)) : 0;
    if (purged > 0)
        hl_log(HL_LOG_WARN, "producer_purged", "records=%d action=\"undelivered within "
               "shutdown.timeout.ms: given up (no offset was stored past them)\"", purged);
    for (int i = 0; i < w->n_th; i++)
        hl_wthread_destroy(w->th[i]);
    hl_persist_destroy(w->persist);     /* after every shard is gone */
    hl_models_destroy(w->models);       /* after every thread and shard */
    hl_qitems_destroy(w->qitems);       /* NULL unless the model set was never made */
    hl_ivf_destroy(w->ivf);             /* NULL unless the model set was never made */
    hl_changelog_destroy(w->changelog);
    hl_multipart_destroy(w->ctx.multipart);
    hl_wfoldin_destroy(w->foldin);      /* after the threads that feed it */
    hl_items_destroy(w->items);         /* after the threads let go of its views */
    hl_schema_store_destroy(w->schemas);  /* after every codec and the item reader */
    hl_consumer_destroy(w->cons);
    hl_producer_destroy(w->prod, 0);     /* settled above */
    hl_worker_embedded_stop(w);
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

/* Ready once an assignment is in hand and every partition of it is
 * restored, until a revocation takes them all or the worker stops. A
 * member the group gave no partition (more members than partitions) is
 * ready: it is doing what the group asked, and a StatefulSet rollout or a
 * PodDisruptionBudget waiting on it would otherwise wait for ever. Reads
 * atomics only: the HTTP thread calls it. */
int hl_worker_ready(void *arg, char *why, size_t whylen)
{
    hl_worker *w = arg;
    int n = atomic_load(&w->restoring);
    /* start_abort: SIGTERM came and the main loop has not seen it yet. Its
     * handler stores it with an atomic (a volatile sig_atomic_t alone is no
     * synchronisation between threads); relaxed: nothing rides on it. */
    if (atomic_load(&w->stop) ||
        (w->o.start_abort != NULL && __atomic_load_n(w->o.start_abort, __ATOMIC_RELAXED)))
        snprintf(why, whylen, "stopping");
    else if (n > 0)
        snprintf(why, whylen, "restoring assigned partitions: %d of %d restored",
                 atomic_load(&w->restored), n);
    else if (atomic_load(&w->awaiting))
        snprintf(why, whylen, "partitions revoked by a rebalance, waiting for the new "
                 "assignment");
    else if (!atomic_load(&w->have_assignment))
        snprintf(why, whylen, hl_items_loaded(w->items) ? "no assignment yet"
                 : "no assignment yet: reading the item topic before joining the group");
    else
        return 1;
    return 0;
}

int hl_worker_live(void *arg, char *why, size_t whylen)
{
    hl_worker *w = arg;
    char cause[400];
    if (w->prod == NULL || hl_producer_fatal(w->prod, cause, sizeof cause) == 0)
        return 1;
    snprintf(why, whylen, "the producer failed fatally (%s); only a restart recovers", cause);
    return 0;
}

/* The producer failed fatally: every list, dead letter and changelog row
 * from now on fails at once, and the refused-list path (flight.c) would
 * retry them for ever while the ring fills and the lag grows, with the
 * process up. So the worker stops as a failed partition does: gracefully
 * (the group is left and what was stored is committed; flights are not
 * retired, since their lists never landed, and the drain does not wait
 * for them: flight.c's stop_overdue), then hl_worker_run fails and
 * `halflife run` exits 1. The restart replays from the committed offsets
 * with a new producer: nothing is lost.
 *
 * Exiting, not a new handle in this process: the handle is shared by
 * every shard thread, the item reader and the changelog, each sending
 * and polling it without a lock, and its delivery reports write into
 * their tickets; swapping it under them would put a lock or a grace
 * period on the hot path, and each owner of undelivered records (flights,
 * dead letters, changelog flushes and claims) would need its own path to
 * send again. A restart already does all of that, is what the
 * at-least-once design is tested for, and shows in the pod's restart
 * count: a fatal error is worth a look (librdkafka raises it when the
 * broker's view of the producer's sequence or id went out of step with
 * its own). */
void hl_worker_watch_producer(hl_worker *w)
{
    char why[512], q[600];
    rd_kafka_resp_err_t err;
    if (w->prod_fatal || w->prod == NULL ||
        (err = hl_producer_fatal(w->prod, why, sizeof why)) == 0)
        return;
    w->prod_fatal = 1;
    hl_counter_add(w->prod_fatal_c, 1);
    /* producer=lists: the one producer, which also carries the dead
     * letters, the changelog and fold-in's item records */
    hl_log(HL_LOG_ERROR, "producer_fatal", "producer=lists cause=%s reason=\"%s\" "
           "action=\"stopping; the restart replays from the committed offsets\"",
           rd_kafka_err2name(err), hl_log_quote(q, sizeof q, why, strlen(why)));
    atomic_store(&w->failed, 1);
    if (atomic_load(&w->stop) == 0)     /* a stop under way keeps its deadline */
        hl_worker_stop(w);
}

/* Taken once every thread has stopped, before leaving the group: the
 * revocation that leaving brings hides the partitions' user gauges. */
static void log_totals(const hl_worker_stats *totals)
{
    hl_worker_stats st = *totals;
    hl_log(HL_LOG_INFO, "worker_totals",
           "consumed=%llu applied=%llu duplicates=%llu invalid=%llu failed=%llu "
           "unknown_items=%llu lists=%llu batches=%llu dlq=%llu users=%llu redelivered=%llu",
           (unsigned long long)st.consumed, (unsigned long long)st.applied,
           (unsigned long long)st.duplicates, (unsigned long long)st.invalid,
           (unsigned long long)st.failed, (unsigned long long)st.unknown_items,
           (unsigned long long)st.lists, (unsigned long long)st.batches,
           (unsigned long long)st.dlq_records, (unsigned long long)st.users,
           (unsigned long long)st.redelivered);
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
        hl_worker_watch_producer(w);    /* fold-in and bad items' DLQ copies use it */
    }
    hl_log(HL_LOG_INFO, "items_read", "topic=%s ms=%lld", w->o.items_topic,
           (long long)(hl_now_mono_ms() - t0));
    return 0;
}

/* model.path, when its check is due or SIGHUP asked: a new model becomes
 * current here, and restores from now on expect its fingerprint; tables
 * made for partitions assigned from now on have its shape (a swap to
 * another shape moves the running shards' users: worker/swap.c). */
static void check_model(hl_worker *w)
{
    int force = w->o.reload_sig != NULL && *w->o.reload_sig;
    if (force)
        *w->o.reload_sig = 0;
    if (hl_models_check(w->models, hl_now_mono_ms(), force) == 1) {
        char err[256];
        hl_mref *r = hl_models_acquire(w->models);
        /* cannot fail: the model's own shape, checked when it was opened */
        hl_decay_init(&w->ctx.topts.decay, r->mi->n_heads, r->mi->dim, r->mi->half_life_ms,
                      err, sizeof err);
        if (w->persist)
            hl_persist_set_model(w->persist, r->mi->fingerprint);
        if (w->changelog)
            hl_changelog_set_model(w->changelog, r->mi->fingerprint);
        hl_mref_release(r);
    }
}

/* The prefetch waiting in the shard threads' queues, as each thread last
 * saw it behind a batch (batch.c), summed once a second. Every partition's
 * queue is forwarded to its thread's (worker_rebalance.c), and librdkafka
 * 2.0.2 measures a forwarded queue at its destination, so
 * queued.min.messages and queued.max.messages.kbytes bound each thread's
 * queue, not each partition's: what a pod must hold for catch-up grows
 * with worker.threads, not with the partitions it owns (deploy/README.md,
 * Resources). */
static void watch_queued(hl_worker *w)
{
    int64_t now = hl_now_mono_ms();
    if (now < w->queued_next_ms)
        return;
    w->queued_next_ms = now + 1000;
    size_t n = 0;
    for (int i = 0; i < w->n_th; i++)
        n += (size_t)hl_wthread_queued(w->th[i]);
    hl_gauge_set(w->queued_g, (double)n);
}

/* A worker with no partition yet this long after it subscribed says so,
 * and again each time this much longer: an operator sees why a pod that
 * started is not consuming (a coordinator that does not answer, a group
 * waiting for members that died) instead of a silent log. */
#define JOIN_WAIT_WARN_MS 30000

static void watch_join(hl_worker *w, int64_t subscribed_ms, int64_t *next_ms)
{
    int64_t now = hl_now_mono_ms();
    if (atomic_load(&w->have_assignment) || now < *next_ms)
        return;
    *next_ms = now + JOIN_WAIT_WARN_MS;
    hl_log(HL_LOG_WARN, "group_join_waiting", "group=%s topic=%s waited_s=%lld "
           "broker_up=%d group_state=%s join_state=%s why=\"no partition assigned yet\"",
           w->o.group_id, w->o.input_topic, (long long)((now - subscribed_ms) / 1000),
           hl_consumer_broker_up(w->cons), hl_consumer_group_state(w->cons, 0),
           hl_consumer_group_state(w->cons, 1));
}

/* The last records (the final revocation's) out, within what is left of
 * shutdown.timeout.ms; a producer that failed fatally will deliver
 * nothing more, so it is not waited for. */
static void flush_within(hl_worker *w)
{
    int64_t left = atomic_load(&w->ctx.stop_deadline_ms) - hl_now_mono_ms();
    if (w->prod_fatal)
        left = 0;
    rd_kafka_flush(hl_producer_handle(w->prod), left > 0 ? (int)left : 0);
}

/* The shard threads; HL_EIO (logged) when one cannot start: the worker
 * then stops at once. */
static int run_threads(hl_worker *w)
{
    char err[512];
    int rc = 0;
    for (int i = 0; i < w->n_th; i++)
        if (hl_wthread_start(w->th[i], err, sizeof err) != 0) {
            hl_log(HL_LOG_ERROR, "thread_start_failed", "err=\"%s\"", err);
            atomic_store(&w->stop, 2);
            rc = HL_EIO;
        }
    return rc;
}

int hl_worker_run(hl_worker *w, volatile sig_atomic_t *sig)
{
    char err[512];
    int rc = 0;
    w->sig = sig;
    if (load_items(w, sig) != 0) {
        if (!atomic_load(&w->stop) || atomic_load(&w->failed))
            return HL_EIO;      /* failed: producer_fatal (logged) */
        hl_log(HL_LOG_INFO, "worker_stopped_before_start", "step=items_topic "
               "owned_partitions=0 why=\"stopped while reading the item topic %s\"",
               w->o.items_topic);
        return 0;
    }
    if (hl_consumer_subscribe(w->cons, w->o.input_topic, err, sizeof err) != 0) {
        hl_log(HL_LOG_ERROR, "subscribe_failed", "err=\"%s\"", err);
        return HL_EIO;
    }
    rc = run_threads(w);
    hl_log(HL_LOG_INFO, "worker_started", "bootstrap=%s group=%s topic=%s threads=%d",
           w->bootstrap, w->o.group_id, w->o.input_topic, w->o.threads);
    int64_t subscribed_ms = hl_now_mono_ms(), join_warn_ms = subscribed_ms + JOIN_WAIT_WARN_MS;
    while (atomic_load(&w->stop) == 0) {
        if (hl_consumer_serve(w->cons, 0)) {
            atomic_store(&w->stop, 2);
            rc = HL_EIO;
        }
        if (sig && *sig)
            hl_worker_stop(w);
        check_model(w);
        watch_join(w, subscribed_ms, &join_warn_ms);
        watch_queued(w);
        hl_worker_watch_producer(w);
        /* This thread waits on the producer, not the consumer: a delivery
         * report is then served the moment it comes (a batch's delivered
         * time, flight.c), not when a shard thread next looks up from a
         * refresh; the consumer's callbacks wait at most these 5 ms. */
        hl_producer_poll(w->prod, 5);
    }
    if (!atomic_load(&w->have_assignment) && atomic_load(&w->stop) == 1)
        hl_log(HL_LOG_INFO, "worker_stopped_before_start", "step=group_join "
               "owned_partitions=0 why=\"no assignment yet (broker or group coordinator "
               "not answered)\"");
    hl_log(HL_LOG_INFO, "worker_stopping", "drain=%d", atomic_load(&w->stop) == 1);
    for (int i = 0; i < w->n_th; i++)
        hl_wthread_join(w->th[i]);
    if (report_unsaved(w) != 0 || atomic_load(&w->failed))
        rc = HL_EIO;            /* failed: a partition it could not serve, or
                                   producer_fatal (logged) */
    hl_worker_stats totals;
    hl_worker_stats_get(w, &totals);
    if (close_within(w) != 0) {
        log_totals(&totals);
        return HL_EIO;
    }
    flush_within(w);
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
    st->redelivered = hl_counter_get(ctx->mx.redelivered);
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
