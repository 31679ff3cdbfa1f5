/* config_opts.c - hl_config_worker_opts(): the one place a configuration
 * key becomes a field of hl_worker_opts, and the log level.
 *
 * Everything here reads the configuration through config.h's getters
 * only, after hl_config_load() has parsed and checked every value, so
 * nothing here fails; keys whose meaning depends on other keys (state.topic,
 * state.flush.ms, auto.offset.reset, recs.scoring=auto) are resolved here.
 * The key table, its layers and its listings stay in config.c. */
#include "config.h"
#include "log.h"
#include "rank.h"

#include <string.h>

/* input.format and output.format: "confluent|raw". */
static hl_framing framing(const hl_config *cfg, const char *key)
{
    return hl_config_int(cfg, key) == 1 ? HL_FRAMING_RAW : HL_FRAMING_CONFLUENT;
}

static void codec_opts(const hl_config *cfg, hl_codec_opts *c)
{
    c->input_framing = framing(cfg, "input.format");
    c->output_framing = framing(cfg, "output.format");
    c->schemas_dir = hl_config_str(cfg, "schemas.dir");
    c->output_schema_id = (int32_t)hl_config_int(cfg, "output.schema.id");
    c->event_schema_id = 0;
    c->min_ts_ms = hl_config_int(cfg, "event.min.ts.ms");
    c->max_ts_ms = hl_config_int(cfg, "event.max.ts.ms");
    c->max_weight = hl_config_num(cfg, "event.max.weight");
}

/* weight.<type> by HL_VIEW..; NAN (unset) keeps the model's weight. */
static void type_weights(const hl_config *cfg, hl_worker_opts *o)
{
    static const char *const wkeys[HL_N_TYPES] = {"weight.view", "weight.click",
        "weight.favorite", "weight.add_to_cart", "weight.purchase", "weight.rate"};
    for (int t = 0; t < HL_N_TYPES; t++)
        o->type_weight[t] = (float)hl_config_num(cfg, wkeys[t]);
    o->has_type_weight = 1;
}

/* auto.offset.reset is the worker's key and a librdkafka property. Given as
 * kafka.auto.offset.reset it wins for both ("latest", "largest" and "end"
 * are librdkafka's names of the newest offset); otherwise the worker hands its
 * own value to librdkafka (start_kafka in worker.c). */
static int offset_reset_latest(const hl_config *cfg)
{
    const char *reset = hl_config_kafka_get(cfg, "auto.offset.reset");
    if (reset == NULL)
        reset = hl_config_str(cfg, "auto.offset.reset");
    return strcmp(reset, "latest") == 0 || strcmp(reset, "largest") == 0 ||
           strcmp(reset, "end") == 0;
}

/* recs.scoring: auto takes two-stage only where its vector kernel runs
 * (the plain kernel is slower than SGEMM; bench_rank measures both). */
static int recs_scoring(const hl_config *cfg)
{
    const char *s = hl_config_str(cfg, "recs.scoring");
    if (strcmp(s, "exact") == 0)
        return HL_SCORING_EXACT;
    if (strcmp(s, "two-stage") == 0)
        return HL_SCORING_TWO_STAGE;
    return hl_qscore_has_vector_kernel() ? HL_SCORING_TWO_STAGE : HL_SCORING_EXACT;
}

/* schema.registry.*: registry.urls NULL when no registry is configured. */
static void registry_opts(const hl_config *cfg, hl_worker_opts *o)
{
    o->registry = (hl_registry_opts){
        .urls = hl_config_str(cfg, "schema.registry.url"),
        .timeout_ms = (int)hl_config_int(cfg, "schema.registry.timeout.ms"),
        .user_info = hl_config_str(cfg, "schema.registry.basic.auth.user.info"),
        .ssl_ca = hl_config_str(cfg, "schema.registry.ssl.ca.location"),
        .ssl_cert = hl_config_str(cfg, "schema.registry.ssl.certificate.location"),
        .ssl_key = hl_config_str(cfg, "schema.registry.ssl.key.location"),
    };
    o->registry_auto_register = hl_config_bool(cfg, "schema.registry.auto.register");
    o->registry_fallback_dir = hl_config_str(cfg, "schema.registry.fallback.dir");
}

/* state.store and its two keys; state.topic and state.flush.ms have
 * defaults that depend on other keys, so they are resolved here. */
static void state_store_opts(const hl_config *cfg, hl_worker_opts *o)
{
    o->state_kafka = strcmp(hl_config_str(cfg, "state.store"), "kafka") == 0;
    o->state_topic = hl_config_str(cfg, "state.topic");      /* NULL: <group.id>-state */
    if (hl_config_is_set(cfg, "state.flush.ms"))
        o->state_flush_ms = hl_config_int(cfg, "state.flush.ms");
    else
        o->state_flush_ms = o->snapshot_interval_ms > 0 ? o->snapshot_interval_ms : 1000;
}

void hl_config_worker_opts(const hl_config *cfg, hl_worker_opts *o)
{
    memset(o, 0, sizeof *o);
    o->bootstrap = hl_config_kafka_get(cfg, "bootstrap.servers");
    o->kafka = hl_config_kafka(cfg, &o->n_kafka);
    o->group_id = hl_config_str(cfg, "group.id");
    o->input_topic = hl_config_str(cfg, "input.topic");
    o->output_topic = hl_config_str(cfg, "output.topic");
    o->dlq_topic = hl_config_str(cfg, "dlq.topic");
    codec_opts(cfg, &o->codec);
    o->max_future_ms = hl_config_int(cfg, "event.max.future.ms");
    o->recs_enabled = hl_config_bool(cfg, "recs.enabled");
    o->recs_k = (int)hl_config_int(cfg, "recs.k");
    o->recs_exclude_seen = hl_config_bool(cfg, "recs.exclude.seen");
    o->recs_exclude_seen_events = (int)hl_config_int(cfg, "recs.exclude.seen.events");
    o->recs_min_interval_ms = hl_config_int(cfg, "recs.min.interval.ms");
    o->recs_scoring = recs_scoring(cfg);
    o->recs_index_ivf = strcmp(hl_config_str(cfg, "recs.index"), "ivf") == 0;
    o->recs_index_nlist = (int)hl_config_int(cfg, "recs.index.nlist");
    o->recs_index_nprobe = (int)hl_config_int(cfg, "recs.index.nprobe");
    o->recs_index_shadow_every = (int)hl_config_int(cfg, "recs.index.shadow.every");
    o->threads = (int)hl_config_int(cfg, "worker.threads");
    o->io_slice_us = (int)hl_config_int(cfg, "worker.io.slice.us");
    o->batch_max_messages = (int)hl_config_int(cfg, "batch.max.messages");
    o->batch_max_ms = (int)hl_config_int(cfg, "batch.max.ms");
    o->state_history = (int)hl_config_int(cfg, "state.history");
    o->state_max_users = (size_t)hl_config_int(cfg, "state.max.users");
    o->state_evict_mass = (float)hl_config_num(cfg, "state.evict.mass");
    type_weights(cfg, o);
    o->model_path = hl_config_str(cfg, "model.path");
    o->model_check_ms = hl_config_int(cfg, "model.check.ms");
    o->model_dir = hl_config_str(cfg, "model.dir");
    o->model_retain = (int)hl_config_int(cfg, "model.retain");
    o->snapshot_dir = hl_config_str(cfg, "snapshot.dir");
    o->deadletter_max_bytes = hl_config_int(cfg, "deadletter.max.bytes");
    o->snapshot_interval_ms = hl_config_int(cfg, "snapshot.interval.ms");
    o->snapshot_retain = (int)hl_config_int(cfg, "snapshot.retain");
    o->shutdown_timeout_ms = (int)hl_config_int(cfg, "shutdown.timeout.ms");
    state_store_opts(cfg, o);
    o->offset_reset_latest = offset_reset_latest(cfg);
    o->embedded_partitions = (int)hl_config_int(cfg, "embedded.partitions");
    o->items_topic = hl_config_str(cfg, "items.topic");
    o->items_schema_id = (int32_t)hl_config_int(cfg, "items.schema.id");
    o->catalogue_max_new = (int32_t)hl_config_int(cfg, "catalogue.max.new.items");
    o->catalogue_foldin = hl_config_bool(cfg, "catalogue.foldin");
    o->catalogue_foldin_min_events = (int)hl_config_int(cfg, "catalogue.foldin.min.events");
    o->catalogue_foldin_e_in_scale = (float)hl_config_num(cfg, "catalogue.foldin.e_in.scale");
    o->catalogue_foldin_lift = (float)hl_config_num(cfg, "catalogue.foldin.lift");
    o->catalogue_foldin_distinct = (float)hl_config_num(cfg, "catalogue.foldin.distinct");
    registry_opts(cfg, o);
}

int hl_config_log_level(const hl_config *cfg)
{
    /* The table allows only the names hl_log_level_parse() knows. */
    return hl_log_level_parse(hl_config_str(cfg, "log.level"));
}
