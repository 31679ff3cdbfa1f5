/* worker_start.c - each part of the worker started in turn, in
 * hl_worker_create's order: table options, snapshots, the Schema Registry,
 * Kafka (or the embedded broker), the changelog, the scorer (int8 table,
 * index), the models and the threads. A part that cannot start says why
 * in errbuf, and hl_worker_destroy undoes whatever started. */
#include "worker_internal.h"
#include "slice.h"

#include <errno.h>
#include <string.h>

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

void hl_worker_embedded_stop(hl_worker *w)
{
    if (w->mock)
        rd_kafka_mock_cluster_destroy(w->mock);
    if (w->mock_rk)
        rd_kafka_destroy(w->mock_rk);
    w->mock = NULL;
    w->mock_rk = NULL;
}

/* ---- lifecycle --------------------------------------------------------- */

/* A new model is about to go live: the live catalogue moves onto it
 * first (items.h), so a thread that serves it finds its view there, and
 * fold-in starts accumulating in its space (fold.h). */
static int rebind_items(void *arg, const hl_mref *r, char *errbuf, size_t errlen)
{
    hl_worker *w = arg;
    /* state.store=kafka follows a model of another shape (rows are
     * written in their table's), as long as its rows fit a record */
    if (w->changelog != NULL &&
        hl_changelog_check_shape(w->changelog, r->mi->n_heads, r->mi->dim, errbuf, errlen) != 0)
        return HL_EINVAL;
    if (w->items != NULL && hl_items_rebind(w->items, r->m, r->gen) != 0)
        return hl_err(errbuf, errlen, HL_ENOMEM, "the live catalogue could not be rebound "
                      "to the new model (out of memory); tried again when the file "
                      "changes or on SIGHUP");
    /* fold-in follows (fold.h); a model it cannot fit a map for still
     * goes live, without fold-in, as at start */
    char why[256];
    if (w->foldin != NULL && hl_wfoldin_rebind(w->foldin, r->m, why, sizeof why) != 0)
        hl_log(HL_LOG_ERROR, "foldin_paused", "reason=\"%s\" action=\"new items wait "
               "for an embedding on the item topic or the next model\"", why);
    return 0;
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
                         .ivf_nprobe = w->o.recs_index_nprobe, .ivf_k = w->o.recs_k,
                         .stop = w->o.start_abort,
                         .before_live = rebind_items, .before_live_arg = w,
                         /* every setup follows a reshape (worker/swap.c) */
                         .reshape_refused = NULL};
    if (mo.store_dir == NULL && w->o.snapshot_dir != NULL && w->o.snapshot_dir[0] != '\0') {
        snprintf(w->model_dir, sizeof w->model_dir, "%s/models", w->o.snapshot_dir);
        mo.store_dir = w->model_dir;
    }
    if ((w->models = hl_models_create(&mo, (hl_model *)w->m, errbuf, errlen)) == NULL)
        return HL_ENOMEM;
    w->ivf = NULL;                      /* the set's now (models.h, first_ivf) */
    w->qitems = NULL;                   /* and so is this (first_qitems) */
    w->ctx.models = w->models;
    return 0;
}

/* The shape of the tables made for newly assigned partitions: the first
 * model's here, and the serving model's after a live swap to another
 * shape (hl_worker_follow_model: tables are made and restored on the main
 * thread, where swaps go live, so they always have the current model's). */
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

int hl_worker_check_opts(const hl_worker_opts *o, char *errbuf, size_t errlen)
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
        .lift = w->o.catalogue_foldin_lift, .distinct = w->o.catalogue_foldin_distinct,
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

/* The thread that starts the worker serves delivery reports and the
 * consumer's callbacks (hl_worker_run), and librdkafka's threads, created
 * below, inherit its slice: worker.io.slice.us (slice.h). Shard threads go
 * back to the default (thread.c), so refreshes keep long slices. */
static void io_slice(const hl_worker *w)
{
    if (w->o.io_slice_us > 0 && hl_slice_set_us(w->o.io_slice_us) != 0)
        hl_log(HL_LOG_INFO, "io_slice_not_set", "worker.io.slice.us=%d err=\"%s\"",
               w->o.io_slice_us, strerror(errno));
}

/* A bad record goes to the DLQ with its original bytes, so the producer
 * must carry anything the consumer can fetch: a record up to
 * receive.message.max.bytes (librdkafka's default 100000000; a record
 * larger than fetch.max.bytes still comes, alone). The producer's own
 * default (1000000) refused a 3 MB record. Producer only: on the consumer
 * message.max.bytes would raise fetch.max.bytes with it. The consumer's
 * key goes up to 2^31 - 1, the producer's only to 10^9: beyond, the
 * producer takes its highest rather than refusing a key the user never
 * set. */
static const char *dlq_max_bytes(const hl_worker *w)
{
    const char *rmax = "100000000";
    for (int i = 0; i < w->o.n_kafka; i++)
        if (strcmp(w->o.kafka[i].key, "receive.message.max.bytes") == 0)
            rmax = w->o.kafka[i].value;
    return strtod(rmax, NULL) > 1e9 ? "1000000000" : rmax;
}

static int start_kafka(hl_worker *w, char *errbuf, size_t errlen)
{
    io_slice(w);
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
     * a real broker does not: keep it short on the embedded broker. A
     * record landing during an empty fetch waits up to that long (half on
     * average), while each empty fetch costs the idle worker CPU: measured
     * 2026-12-03, idle `halflife run` on the embedded broker used 4% of a
     * core at 10 ms, 7% at 5 ms, 10% at 2 ms, 18% at 1 ms (a loaded
     * machine, two runs each). 5 ms is the middle. */
    if (w->mock && !kafka_given(&w->o, "fetch.wait.max.ms"))
        props[n++] = (hl_kafka_prop){"fetch.wait.max.ms", "5"};
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
                                          HL_DELIVERY_ERRORS_HELP, NULL);
    int n_prod = n;
    hl_kafka_prop prod_props[261];
    memcpy(prod_props, props, sizeof *props * (size_t)n);
    if (!kafka_given(&w->o, "message.max.bytes"))
        prod_props[n_prod++] = (hl_kafka_prop){"message.max.bytes", dlq_max_bytes(w)};
    if ((w->prod = hl_producer_create(prod_props, n_prod, derr, errbuf, errlen)) == NULL)
        return HL_EINVAL;
    hl_producer_count_purged(w->prod, hl_metrics_counter(w->reg,
        "halflife_delivery_purged_total", HL_DELIVERY_PURGED_HELP, NULL));
    hl_consumer_opts co = {
        .bootstrap = w->bootstrap, .group_id = w->o.group_id,
        .kafka = props + 1, .n_kafka = n - 1, .rebalance = hl_worker_on_rebalance, .opaque = w,
        .reg = w->reg, .topic = w->o.input_topic, .owns = hl_worker_owns_partition,
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

/* The registry gave subject an id that is another schema's: said and
 * counted. Nothing is published under it: the lists' id ends the start as
 * any refusal of the registry's does, the item updates' turns fold-in off. */
static void id_mismatch(hl_worker *w, const char *subject, int32_t id, const char *err)
{
    hl_counter_add(hl_metrics_counter(w->reg, "halflife_schema_registry_requests_total",
                                      HL_SCHEMA_REGISTRY_REQUESTS_HELP,
                                      "result=\"mismatch\""), 1);
    hl_log(HL_LOG_ERROR, "schema_registry_id_mismatch", "subject=%s id=%d err=\"%s\" "
           "action=\"nothing is published under that id\"", subject, (int)id, err);
}

/* hl_registry_subject_id, but an id the registry gave and cannot show
 * now (5xx, unreachable: not a 404, which a replica behind the one that
 * gave it answers) is used unchecked, said once: a registry whose reads
 * fail while its writes work would otherwise keep the worker out of its
 * group, and a worker that joins then parks the partitions whose writer
 * schemas it cannot read (test_schema_registry_rebalance.py: B joins
 * during a read outage). */
static int subject_id(hl_worker *w, hl_registry *r, const char *subject, const char *schema,
                      int32_t *id, char *errbuf, size_t errlen)
{
    int rc = w->o.registry_auto_register
                 ? hl_registry_register(r, subject, schema, id, errbuf, errlen)
                 : hl_registry_lookup(r, subject, schema, id, errbuf, errlen);
    if (rc != 0)
        return rc;
    rc = hl_registry_check_id(r, *id, schema, errbuf, errlen);
    if (rc == HL_EAGAIN && hl_registry_last_status(r) != 404) {
        hl_log(HL_LOG_WARN, "schema_registry_id_unchecked", "subject=%s id=%d err=\"%s\" "
               "action=\"used unchecked: the registry gave it but cannot show its schema "
               "now\"", subject, (int)*id, errbuf);
        rc = 0;
    }
    return rc;
}

/* The id of schema under "<topic>-value" (TopicNameStrategy): registered,
 * or only looked up, then checked to be that schema's (registry.h). An unreachable registry (or 5xx) is waited for, 1, 2,
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
        rc = subject_id(w, r, subject, schema, id, errbuf, errlen);
        if (rc != HL_EAGAIN)
            break;
        if (w->o.start_abort != NULL && *w->o.start_abort)   /* the request was cut short */
            return hl_err(errbuf, errlen, HL_EAGAIN, "stopped while waiting for the registry");
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
    if (rc == HL_EMISMATCH)
        id_mismatch(w, subject, *id, errbuf);
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
    if (w->o.start_abort != NULL && *w->o.start_abort)
        return;                 /* stopping: no fold-in to turn off, nothing to say */
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
    /* A registry that accepts the connection and never answers must not
     * hold a SIGTERM for schema.registry.timeout.ms (past run.c's alarm). */
    hl_registry_set_signal_abort(r, w->o.start_abort);
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
    /* From here the schema store owns r and stops it with its own flag:
     * a drain after SIGTERM may still fetch a writer schema. */
    hl_registry_set_signal_abort(r, NULL);
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

/* hl_changelog_opts.member_gone (arg: the threads' shared context). */
static int changelog_member_gone(void *arg)
{
    return hl_member_gone(arg);
}

/* state.store=kafka: the changelog topic checked (or created) before the
 * worker joins its group. The embedded broker made it already. */
static int start_changelog(hl_worker *w, char *errbuf, size_t errlen)
{
    if (!w->o.state_kafka)
        return 0;
    hl_changelog_opts co = {
        .topic = w->state_topic, .input_topic = w->o.input_topic, .bootstrap = w->bootstrap,
        .group_id = w->o.group_id,
        .kafka = w->o.kafka, .n_kafka = w->o.n_kafka, .flush_ms = w->o.state_flush_ms,
        .model_fingerprint = hl_model_info_get(w->m)->fingerprint, .topts = &w->ctx.topts,
        .prod = w->prod, .consumer = hl_consumer_handle(w->cons), .reg = w->reg,
        .member_gone = changelog_member_gone, .member_arg = &w->ctx,
        .create = w->mock == NULL, .timeout_ms = 10000,
        .reshape = hl_worker_changelog_reshape, .reshape_arg = w,
        .start_abort = w->o.start_abort,
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

/* Why the index is not there. A SIGTERM cut the build short (the reason
 * becomes run.c's event=worker_stopped_before_start why=...), or the
 * model and recs.index.nlist do not fit. */
static int index_failed(const hl_worker *w, const char *why, double secs, char *errbuf,
                        size_t errlen)
{
    if (w->o.start_abort != NULL && *w->o.start_abort)
        return hl_err(errbuf, errlen, HL_EAGAIN, "recs.index=ivf: index build given up after "
                      "%.1f s: %s", secs, why);
    return hl_err(errbuf, errlen, HL_EINVAL, "recs.index=ivf: recs.index.nlist=%d: %s",
                  w->o.recs_index_nlist, why);
}

/* recs.index=ivf: the index over e_out, built once at load and read by
 * every thread's ranker; its recall at load is logged and exported, the
 * shadow check's as the refreshes go. */
static int start_index(hl_worker *w, char *errbuf, size_t errlen)
{
    const hl_model_info *mi = hl_model_info_get(w->m);
    hl_ivf_opts io = {.nlist = w->o.recs_index_nlist, .stop = w->o.start_abort};
    hl_gauge *at_load = hl_metrics_gauge(w->reg, "halflife_index_recall",
        "Recall@k of the approximate index (recs.index=ivf) against exact scoring: "
        "check=\"load\" on a sample at model load, check=\"shadow\" (once a refresh "
        "was checked) over the refreshes scored both ways since the served model went live.", "check=\"load\"");
    w->ctx.shadow_hits = hl_metrics_counter(w->reg, "halflife_index_shadow_hits_total",
        "Items of the shadow check's exact lists that the index's lists also held.", NULL);
    w->ctx.shadow_items = hl_metrics_counter(w->reg, "halflife_index_shadow_items_total",
        "Items of the shadow check's exact lists (recs.index.shadow.every).", NULL);
    double t0 = hl_now_mono_s();
    char why[256];
    /* The build takes seconds to tens of seconds (about 23 s at 1M items):
     * said before it, so the silence that follows has a reason. */
    hl_log(HL_LOG_INFO, "index_building", "mode=ivf items=%d dim=%d", (int)mi->n_items,
           mi->dim);
    if ((w->ivf = hl_ivf_create(hl_model_e_out(w->m), hl_model_bias(w->m), mi->n_items,
                                mi->dim, &io, why, sizeof why)) == NULL)
        return index_failed(w, why, hl_now_mono_s() - t0, errbuf, errlen);
    /* 0 stays 0 in w->o: each ranker takes its own index's default, so a
     * model swapped in with another catalogue size gets its own nlist / 16 */
    int nprobe = w->o.recs_index_nprobe > 0 ? w->o.recs_index_nprobe
                                            : hl_ivf_default_nprobe(w->ivf);
    if (nprobe > hl_ivf_nlist(w->ivf))
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "recs.index.nprobe=%d: more than the index's %d lists (recs.index.nlist)",
                      nprobe, hl_ivf_nlist(w->ivf));
    double t1 = hl_now_mono_s();
    double recall = hl_models_index_recall(w->m, w->ivf, w->o.recs_k, nprobe, w->o.start_abort);
    if (w->o.start_abort != NULL && *w->o.start_abort)
        return index_failed(w, "recall check stopped", hl_now_mono_s() - t0, errbuf, errlen);
    hl_gauge_set(at_load, recall);
    hl_log(HL_LOG_INFO, "index", "mode=ivf items=%d nlist=%d nprobe=%d build_s=%.2f bytes=%zu "
           "recall_at_%d=%.4f sample=%d recall_s=%.2f", (int)mi->n_items, hl_ivf_nlist(w->ivf),
           nprobe, t1 - t0, hl_ivf_bytes(w->ivf), w->o.recs_k, recall,
           mi->n_items < HL_INDEX_SAMPLE ? (int)mi->n_items : HL_INDEX_SAMPLE, hl_now_mono_s() - t1);
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

int hl_worker_start_parts(hl_worker *w, char *errbuf, size_t errlen)
{
    if (table_opts(w, errbuf, errlen) != 0 || start_persist(w, errbuf, errlen) != 0 ||
        start_registry(w, errbuf, errlen) != 0 || start_kafka(w, errbuf, errlen) != 0 ||
        start_changelog(w, errbuf, errlen) != 0)
        return HL_EINVAL;
    w->ctx.consumer = hl_consumer_handle(w->cons);
    w->ctx.prod = w->prod;
    if (start_scoring(w, errbuf, errlen) != 0 || start_models(w, errbuf, errlen) != 0 ||
        start_threads(w, errbuf, errlen) != 0)
        return HL_EINVAL;
    return 0;
}
