/* changelog_topic.c - the changelog's setup: its topic (present with the
 * input's partition count, or created compacted with the admin API), the
 * restorer's own consumer, the size bound of a record, and the store's
 * metrics. Runs once at start, before the worker joins its group.
 *
 * librdkafka's mock cluster (halflife broker, the embedded broker) answers
 * no CreateTopics: there the topic is made by the broker (its --topics, or
 * the embedded broker's own list) and a missing one is refused like on a
 * cluster that forbids creation. Nor DescribeConfigs: there rows are held
 * to the producer's limit alone (check_topic_max). */
#include "changelog_internal.h"
#include "snapshot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- metrics ------------------------------------------------------------ */

static void register_metrics(hl_changelog *cl, hl_metrics *reg)
{
    static const char *const kinds[N_KINDS] = {"row", "tombstone", "checkpoint"};
    char labels[32];
    for (int k = 0; k < N_KINDS; k++) {
        snprintf(labels, sizeof labels, "kind=\"%s\"", kinds[k]);
        cl->mx.records[k] = hl_metrics_counter(reg, "halflife_changelog_records_total",
            "Records written to the state changelog, by kind.", labels);
    }
    cl->mx.bytes = hl_metrics_counter(reg, "halflife_changelog_bytes_total",
        "Key and value bytes written to the state changelog.", NULL);
    cl->mx.fenced = hl_metrics_counter(reg, "halflife_changelog_fenced_writes_total",
        "Changelog flushes refused because this worker lost the partition.", NULL);
    cl->mx.flush_failed = hl_metrics_counter(reg, "halflife_changelog_flush_failures_total",
        "Changelog flushes that could not be delivered (retried).", NULL);
    cl->mx.stale = hl_metrics_counter(reg, "halflife_changelog_stale_records_total",
        "Changelog records of an owner that had lost the partition, ignored on restore.", NULL);
    cl->mx.bad = hl_metrics_counter(reg, "halflife_changelog_bad_records_total",
        "Changelog records a restore could not use (no or a bad epoch header, a key "
        "that is no user id, a row or checkpoint that does not parse, a halflife.format "
        "this version does not read), skipped.", NULL);
    cl->mx.chain_gaps = hl_metrics_counter(reg, "halflife_changelog_chain_gaps_total",
        "Flushes whose records had another writer's among them (a claim or a fenced "
        "owner's late flush); later local snapshots name the cover before the gap.", NULL);
    cl->mx.recreated = hl_metrics_counter(reg, "halflife_changelog_recreated_total",
        "Restores that found the state topic empty below the local snapshot's changelog "
        "offset (the topic deleted and created again): the snapshot's users were kept and "
        "written to the new topic whole.", NULL);
    cl->mx.foreign = hl_metrics_counter(reg, "halflife_changelog_foreign_checkpoints_total",
        "Changelog checkpoints a restore read that another group.id wrote: two deployments "
        "share the state topic (each reads the other's users); give each its own "
        "state.topic.", NULL);
    cl->mx.oversized = hl_metrics_counter(reg, "halflife_changelog_oversized_rows_total",
        "Rows left out of a changelog flush because their record would exceed the "
        "producer's message.max.bytes (kafka.message.max.bytes) or the state topic's "
        "max.message.bytes; the user's newest changes are not in the changelog.", NULL);
    cl->mx.flush_s = hl_metrics_histogram(reg, "halflife_changelog_flush_duration_seconds",
        "From a flush's cut to the delivery of its checkpoint.", NULL,
        hl_latency_bounds_s, hl_latency_bounds_n);
}

/* ---- the restorer's consumer --------------------------------------------- */

/* Keys of the group consumer or the producer that the restorer must not
 * take: it never joins the group and never commits. */
static int restorer_key(const char *key)
{
    static const char *const skip[] = {
        "group.id", "group.instance.id", "enable.auto.commit", "enable.auto.offset.store",
        "auto.commit.interval.ms", "partition.assignment.strategy", "session.timeout.ms",
        "heartbeat.interval.ms", "max.poll.interval.ms", "bootstrap.servers",
        "enable.idempotence", "linger.ms", "queue.buffering.max.ms", "message.timeout.ms",
        "queue.buffering.max.messages", "queue.buffering.max.kbytes", "delivery.timeout.ms",
        "acks", "request.required.acks", "batch.num.messages", "batch.size",
        "compression.type", "compression.codec", "transactional.id", "retries",
        "message.send.max.retries", "max.in.flight.requests.per.connection", "max.in.flight",
    };
    for (size_t i = 0; i < sizeof skip / sizeof skip[0]; i++)
        if (strcmp(key, skip[i]) == 0)
            return 0;
    return 1;
}

static int prop_given(const hl_changelog_opts *o, const char *key)
{
    for (int i = 0; i < o->n_kafka; i++)
        if (strcmp(o->kafka[i].key, key) == 0)
            return 1;
    return 0;
}

static rd_kafka_t *restorer_create(const hl_changelog_opts *o, const char *group,
                                   char *errbuf, size_t errlen)
{
    /* Short fetch waits (the mock broker holds an empty fetch for all of
     * it), big fetches, and a deep queue (DESIGN.md section 9). */
    static const hl_kafka_prop defaults[] = {
        {"fetch.wait.max.ms", "10"}, {"fetch.message.max.bytes", "16777216"},
        {"queued.min.messages", "1000000"}, {"enable.partition.eof", "false"},
    };
    char why[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (hl_kafka_conf_set(conf, "bootstrap.servers", o->bootstrap, errbuf, errlen) != 0 ||
        hl_kafka_conf_set(conf, "group.id", group, errbuf, errlen) != 0 ||
        hl_kafka_conf_set(conf, "enable.auto.commit", "false", errbuf, errlen) != 0)
        goto fail;
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++)
        if (!prop_given(o, defaults[i].key) &&
            hl_kafka_conf_set(conf, defaults[i].key, defaults[i].value, errbuf, errlen) != 0)
            goto fail;
    for (int i = 0; i < o->n_kafka; i++)
        if (restorer_key(o->kafka[i].key) &&
            hl_kafka_conf_set(conf, o->kafka[i].key, o->kafka[i].value, errbuf, errlen) != 0)
            goto fail;
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof why);
    if (rk == NULL) {
        hl_err(errbuf, errlen, HL_EINVAL, "changelog restorer: %s", why);
        goto fail;
    }
    return rk;                   /* conf is owned by the handle now */
fail:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

/* ---- the topic ----------------------------------------------------------- */

/* Kafka's default for a topic's max.message.bytes: 1 MiB and the 12 bytes
 * of a batch's log overhead. */
#define KAFKA_TOPIC_MAX_DEFAULT ((size_t)1048588)

/* Partitions of topic in md, 0 when absent, a negative HL_E* when the
 * broker reported an error for it other than "unknown". */
static int partitions_of(const rd_kafka_metadata_t *md, const char *topic)
{
    for (int i = 0; i < md->topic_cnt; i++) {
        if (strcmp(md->topics[i].topic, topic) != 0)
            continue;
        if (md->topics[i].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
            return 0;
        return md->topics[i].err ? HL_EIO : md->topics[i].partition_cnt;
    }
    return 0;
}

static size_t topic_max_wanted(const hl_changelog *cl);

static int how_to_create(const hl_changelog *cl, const char *why, char *errbuf, size_t errlen)
{
    return hl_err(errbuf, errlen, HL_EINVAL,
                  "state.store=kafka: changelog topic %s %s; create it with %d partitions "
                  "(the input topic's) and cleanup.policy=compact, e.g. kafka-topics.sh "
                  "--create --topic %s --partitions %d --config cleanup.policy=compact "
                  "--config max.message.bytes=%zu (halflife broker: --topics ...,%s), or set "
                  "state.topic to one that exists", cl->topic, why, cl->partitions, cl->topic,
                  cl->partitions, topic_max_wanted(cl), cl->topic);
}

/* ---- the topic ---------------------------------------------------------- */

static int stopping(const void *arg)
{
    const hl_changelog *cl = arg;
    return cl->o.start_abort != NULL && *cl->o.start_abort;
}

/* The admin answer on q, polled in slices up to ms or a stop. */
static rd_kafka_event_t *admin_answer(const hl_changelog *cl, rd_kafka_queue_t *q, int ms)
{
    int64_t deadline = hl_now_mono_ms() + ms;
    rd_kafka_event_t *ev = NULL;
    while (ev == NULL && !stopping(cl) && hl_now_mono_ms() < deadline)
        ev = rd_kafka_queue_poll(q, HL_KAFKA_STOP_SLICE_MS);
    return ev;
}

/* The max.message.bytes a created topic gets: the producer's limit, so
 * every row the flushes let through fits (the broker's default, 1 MiB,
 * refused each flush that held a bigger one, for good, when
 * kafka.message.max.bytes was raised as changelog_rows_may_not_fit
 * advises); never below Kafka's own default. */
static size_t topic_max_wanted(const hl_changelog *cl)
{
    return cl->record_max > KAFKA_TOPIC_MAX_DEFAULT ? cl->record_max : KAFKA_TOPIC_MAX_DEFAULT;
}

/* CreateTopics through the admin API, waiting up to the timeout. */
static int create_topic(hl_changelog *cl, char *errbuf, size_t errlen)
{
    char why[512], reason[600];
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(cl->topic, cl->partitions, -1, why, sizeof why);
    if (nt == NULL)
        return how_to_create(cl, why, errbuf, errlen);
    char limit[32];
    snprintf(limit, sizeof limit, "%zu", topic_max_wanted(cl));
    rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact");
    rd_kafka_NewTopic_set_config(nt, "max.message.bytes", limit);
    rd_kafka_queue_t *q = rd_kafka_queue_new(cl->rk);
    rd_kafka_AdminOptions_t *ao = rd_kafka_AdminOptions_new(cl->rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(ao, cl->o.timeout_ms, why, sizeof why);
    rd_kafka_CreateTopics(cl->rk, &nt, 1, ao, q);
    rd_kafka_event_t *ev = admin_answer(cl, q, cl->o.timeout_ms + 1000);
    int rc = HL_EIO;
    snprintf(reason, sizeof reason, "is missing and could not be created (%s)",
             stopping(cl) ? "stopped while waiting for the answer" : "no answer");
    if (ev != NULL) {
        const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
        size_t n = 0;
        const rd_kafka_topic_result_t **tr = res ? rd_kafka_CreateTopics_result_topics(res, &n) : NULL;
        rd_kafka_resp_err_t err = rd_kafka_event_error(ev);
        if (!err && n == 1)
            err = rd_kafka_topic_result_error(tr[0]);
        if (!err || err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
            rc = 0;
        else
            snprintf(reason, sizeof reason, "is missing and could not be created (%s)",
                     rd_kafka_err2str(err));
        rd_kafka_event_destroy(ev);
    }
    rd_kafka_AdminOptions_destroy(ao);
    rd_kafka_NewTopic_destroy(nt);
    rd_kafka_queue_destroy(q);
    if (rc != 0)
        return how_to_create(cl, reason, errbuf, errlen);
    hl_log(HL_LOG_INFO, "changelog_topic_created", "topic=%s partitions=%d "
           "cleanup.policy=compact max.message.bytes=%s", cl->topic, cl->partitions, limit);
    return 0;
}

/* max.message.bytes of the one topic a DescribeConfigs answer ev
 * describes, as text; NULL with why when it does not tell. */
static const char *described_max(rd_kafka_event_t *ev, char *why, size_t whylen)
{
    const rd_kafka_DescribeConfigs_result_t *res = rd_kafka_event_DescribeConfigs_result(ev);
    size_t n = 0, n_ce = 0;
    const rd_kafka_ConfigResource_t **rs =
        res ? rd_kafka_DescribeConfigs_result_resources(res, &n) : NULL;
    const char *es = rd_kafka_event_error(ev) ? rd_kafka_event_error_string(ev)
                   : n != 1 ? "no answer for the topic"
                   : rd_kafka_ConfigResource_error(rs[0])
                   ? rd_kafka_ConfigResource_error_string(rs[0]) : NULL;
    if (es != NULL || n != 1) {
        snprintf(why, whylen, "%s", es ? es : "refused");
        return NULL;
    }
    const rd_kafka_ConfigEntry_t **ce = rd_kafka_ConfigResource_configs(rs[0], &n_ce);
    for (size_t i = 0; i < n_ce; i++)
        if (strcmp(rd_kafka_ConfigEntry_name(ce[i]), "max.message.bytes") == 0 &&
            rd_kafka_ConfigEntry_value(ce[i]) != NULL)
            return rd_kafka_ConfigEntry_value(ce[i]);
    snprintf(why, whylen, "max.message.bytes is not among the topic's configs");
    return NULL;
}

/* Whether the cluster names a controller among its brokers: the admin
 * API sends DescribeConfigs there and, without one, waits out its whole
 * timeout (librdkafka's mock cluster names broker 0, which it never has;
 * a start waited 11 s for nothing). */
static int controller_known(rd_kafka_t *rk, const rd_kafka_metadata_t *md)
{
    int32_t id = rd_kafka_controllerid(rk, 0);
    for (int i = 0; id >= 0 && i < md->broker_cnt; i++)
        if (md->brokers[i].id == id)
            return 1;
    return 0;
}

static void limit_unknown(const hl_changelog *cl, const char *why)
{
    char q[600];
    hl_log(HL_LOG_INFO, "changelog_topic_limit_unknown", "topic=%s err=\"%s\" "
           "consequence=\"rows are held to the producer's message.max.bytes (%zu); the "
           "topic's max.message.bytes must be as high\"", cl->topic,
           hl_log_quote(q, sizeof q, why, strlen(why)), cl->record_max);
}

/* The existing topic's max.message.bytes (DescribeConfigs) applied to
 * record_max. A broker that does not tell (librdkafka's mock cluster has
 * no DescribeConfigs and no controller; an ACL may forbid it) leaves the
 * producer's limit, said once. */
static void check_topic_max(hl_changelog *cl, int has_controller)
{
    char why[512] = "no answer";
    if (!has_controller) {
        limit_unknown(cl, "the cluster names no controller to ask");
        return;
    }
    rd_kafka_ConfigResource_t *cr = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC,
                                                                cl->topic);
    rd_kafka_queue_t *q = rd_kafka_queue_new(cl->rk);
    rd_kafka_AdminOptions_t *ao = rd_kafka_AdminOptions_new(cl->rk,
                                                            RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
    rd_kafka_AdminOptions_set_request_timeout(ao, cl->o.timeout_ms, why, sizeof why);
    rd_kafka_DescribeConfigs(cl->rk, &cr, 1, ao, q);
    rd_kafka_event_t *ev = admin_answer(cl, q, cl->o.timeout_ms + 1000);
    snprintf(why, sizeof why, "%s", stopping(cl) ? "stopped while waiting" : "no answer");
    const char *v = ev != NULL ? described_max(ev, why, sizeof why) : NULL;
    if (v != NULL)
        hl_changelog_topic_limit(cl, v);
    else
        limit_unknown(cl, why);
    if (ev != NULL)
        rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(ao);
    rd_kafka_ConfigResource_destroy(cr);
    rd_kafka_queue_destroy(q);
}

size_t hl_changelog_topic_limit(hl_changelog *cl, const char *value)
{
    char *end;
    long long m = strtoll(value, &end, 10);
    if (end == value || *end != '\0' || m <= 0 || (unsigned long long)m >= cl->record_max)
        return cl->record_max;
    hl_log(HL_LOG_WARN, "changelog_topic_limit_low", "topic=%s max.message.bytes=%lld "
           "producer_limit=%zu reason=\"the broker refuses a record above the topic's "
           "max.message.bytes: a flush holding one failed at every interval\" action=\"rows "
           "above %lld are left out of the changelog (halflife_changelog_oversized_rows_total); "
           "raise the topic's max.message.bytes to %zu, e.g. kafka-configs.sh --alter "
           "--entity-type topics --entity-name %s --add-config max.message.bytes=%zu\"",
           cl->topic, m, cl->record_max, m, cl->record_max, cl->topic, cl->record_max);
    cl->record_max = (size_t)m;
    return cl->record_max;
}

int hl_changelog_topic_ready(hl_changelog *cl, char *errbuf, size_t errlen)
{
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t err = hl_kafka_metadata_wait(cl->rk, NULL, &md, cl->o.timeout_ms,
                                                     stopping, cl);
    if (err == RD_KAFKA_RESP_ERR__INTR)
        return hl_err(errbuf, errlen, HL_EAGAIN, "stopped while waiting for the broker "
                      "(state.store=kafka: the topics of %s)", cl->o.bootstrap);
    if (err)
        return hl_err(errbuf, errlen, HL_EIO, "state.store=kafka: cannot read the topics "
                      "of %s: %s", cl->o.bootstrap, rd_kafka_err2str(err));
    int in = partitions_of(md, cl->input_topic), st = partitions_of(md, cl->topic);
    int has_controller = controller_known(cl->rk, md);
    rd_kafka_metadata_destroy(md);
    if (in <= 0)
        return hl_err(errbuf, errlen, HL_EINVAL, "state.store=kafka: input topic %s not "
                      "found; the changelog is made with its partition count, so create "
                      "it first", cl->input_topic);
    cl->partitions = in;
    if (st < 0)
        return how_to_create(cl, "reports an error", errbuf, errlen);
    if (st == 0)
        return cl->o.create ? create_topic(cl, errbuf, errlen)
                            : how_to_create(cl, "is missing", errbuf, errlen);
    if (st != in) {
        char why[96];
        snprintf(why, sizeof why, "has %d partitions, the input %d", st, in);
        return how_to_create(cl, why, errbuf, errlen);
    }
    check_topic_max(cl, has_controller);
    return 0;
}

/* ---- lifecycle ----------------------------------------------------------- */

/* A row must fit one record: Kafka refuses records above the topic's
 * max.message.bytes (1,000,000 by default). The history is at most 255
 * events (13 bytes each), so it is dim that can overflow it. */
int hl_changelog_check_shape(const hl_changelog *cl, int n_heads, int dim, char *errbuf,
                             size_t errlen)
{
    size_t rec = hl_snapshot_row_max(n_heads, dim, cl->history) + HL_MAX_ID_LEN + 128;
    if (rec <= HL_CHANGELOG_RECORD_MAX)
        return 0;
    return hl_err(errbuf, errlen, HL_EINVAL, "state.store=kafka: a user's row takes up to "
                  "%zu bytes (dim %d, %d heads, state.history %d), more than a Kafka "
                  "record may hold by default (1000000, max.message.bytes): use state.store="
                  "file or a smaller model", rec, dim, n_heads, cl->history);
}

/* The producer's message.max.bytes (librdkafka refuses a bigger record at
 * once), HL_CHANGELOG_RECORD_MAX without a producer. A user's row above it
 * used to fail its flush at every interval: the checkpoint never moved,
 * input offsets were held and every restart replayed more. */
static size_t record_max(const hl_changelog_opts *o)
{
    char v[32];
    size_t n = sizeof v;
    if (o->prod == NULL || rd_kafka_conf_get(rd_kafka_conf(hl_producer_handle(o->prod)),
                                             "message.max.bytes", v, &n) != RD_KAFKA_CONF_OK)
        return HL_CHANGELOG_RECORD_MAX;
    long long m = strtoll(v, NULL, 10);
    return m > 0 ? (size_t)m : HL_CHANGELOG_RECORD_MAX;
}

/* Told at start when a full row (state.history events) of the longest
 * user id would not fit a record: such users' rows are left out of the
 * changelog once they grow that big (changelog.c, add_row). */
static void warn_if_rows_may_not_fit(const hl_changelog *cl)
{
    size_t rec = cl->row_max + HL_MAX_ID_LEN + HL_CHANGELOG_RECORD_ROOM;
    if (rec > cl->record_max)
        hl_log(HL_LOG_WARN, "changelog_rows_may_not_fit", "row_max=%zu limit=%zu dim=%d "
               "heads=%d history=%d reason=\"a user's row can outgrow one changelog record\" "
               "action=\"raise kafka.message.max.bytes (and the state topic's "
               "max.message.bytes) to %zu, or lower state.history; rows above the limit are "
               "left out of the changelog (halflife_changelog_oversized_rows_total)\"",
               cl->row_max, cl->record_max, cl->dim, cl->n_heads, cl->history, rec);
}

hl_changelog *hl_changelog_create_offline(const hl_changelog_opts *o, char *errbuf,
                                          size_t errlen)
{
    hl_changelog *cl = calloc(1, sizeof *cl);
    if (cl == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "changelog: out of memory");
        return NULL;
    }
    cl->o = *o;
    atomic_store(&cl->fp, o->model_fingerprint);
    snprintf(cl->topic, sizeof cl->topic, "%s", o->topic);
    snprintf(cl->input_topic, sizeof cl->input_topic, "%s", o->input_topic);
    snprintf(cl->group, sizeof cl->group, "%s", o->group_id ? o->group_id : "");
    cl->o.group_id = cl->group;
    cl->o.topic = cl->topic;
    cl->o.input_topic = cl->input_topic;
    cl->n_heads = o->topts->decay.n_heads;
    cl->dim = o->topts->decay.dim;
    cl->history = o->topts->history;
    cl->row_max = hl_snapshot_row_max(cl->n_heads, cl->dim, cl->history);
    cl->record_max = record_max(o);
    hl_changelog_ck_key_init(cl);
    register_metrics(cl, o->reg);
    if (hl_changelog_check_shape(cl, cl->n_heads, cl->dim, errbuf, errlen) != 0) {
        hl_changelog_destroy(cl);
        return NULL;
    }
    warn_if_rows_may_not_fit(cl);
    return cl;
}

hl_changelog *hl_changelog_create(const hl_changelog_opts *o, char *errbuf, size_t errlen)
{
    char group[300];
    hl_changelog *cl = hl_changelog_create_offline(o, errbuf, errlen);
    if (cl == NULL)
        return NULL;
    snprintf(group, sizeof group, "%s.restore", cl->topic);
    if ((cl->rk = restorer_create(o, group, errbuf, errlen)) == NULL ||
        hl_changelog_topic_ready(cl, errbuf, errlen) != 0) {
        hl_changelog_destroy(cl);
        return NULL;
    }
    return cl;
}

void hl_changelog_destroy(hl_changelog *cl)
{
    if (cl == NULL)
        return;
    if (cl->rk)
        rd_kafka_destroy(cl->rk);
    free(cl);
}

const char *hl_changelog_topic(const hl_changelog *cl) { return cl->topic; }
