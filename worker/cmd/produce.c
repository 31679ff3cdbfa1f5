/* produce.c - `halflife produce`: replay a dataset file into Kafka as Avro
 * BehaviourEvents, for tests, benchmarks and the demo.
 *
 * Each event is keyed by its user_id, so Kafka's key partitioning keeps a
 * user on one partition and the producer keeps the file's order within it;
 * with enable.idempotence=true librdkafka's retries neither reorder nor
 * duplicate. The partitioner is murmur2_random, the Java client's, so
 * events of a user land where a Java producer would put them too.
 *
 * Configuration is the worker's (worker/config.c): -X kafka.* reaches
 * librdkafka, -X input.format=raw drops the Confluent framing, and
 * HALFLIFE_* variables apply. So is the producer (worker/producer.c), with
 * a few defaults of this command's own (make_producer). --rate paces the
 * events per second (worker/pace.c); 0 is as fast as the producer goes. At
 * the end every message is waited for and the delivered and failed counts
 * are reported: the exit status is 1 if any message failed, or if no line
 * of a non-empty file was an event (a wrong --format). SIGINT or SIGTERM
 * stops the reading there: what was sent is still waited for and reported,
 * with the line reached, and the exit status is 1 (a second signal gives
 * up the wait).
 *
 * With schema.registry.url the event schema is registered under
 * "<topic>-value" (or only looked up with schema.registry.auto.register=
 * false) and every event carries the registry's id instead of 1. */
#include "cmd.h"
#include "cmd_common.h"
#include "codec.h"
#include "config.h"
#include "dataset.h"
#include "log.h"
#include "pace.h"
#include "producer.h"

#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

typedef struct produce_args {
    const char *input, *format, *topic;
    double      rate;                   /* events/s, 0 = unlimited */
    int64_t     limit;                  /* most events, 0 = all */
    int         partitions;             /* create the topic with this many, 0 = no */
    hl_cmd_xs   xs;                     /* -X key=value */
} produce_args;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: halflife produce --input FILE --format F [--topic T] [--rate N]\n"
        "                        [--limit N] [--partitions N] [-X key=value]...\n\n"
        "Replays a dataset into Kafka as Avro BehaviourEvents keyed by user_id\n"
        "(Confluent framing with schema id 1, or the id the Schema Registry gives\n"
        "with -X schema.registry.url=URL, or -X input.format=raw).\n\n"
        "  --input FILE      the dataset file\n"
        "  --format F        movielens-csv, movielens-dat, seq, taobao or events-csv\n"
        "  --topic T         target topic (default: input.topic, behaviour-events)\n"
        "  --rate N          events per second, 0 = as fast as possible (default 0)\n"
        "  --limit N         stop after N events (default: all)\n"
        "  --partitions N    create the topic with N partitions if it does not exist\n"
        "                    (real Kafka only: the mock cluster of 'halflife broker'\n"
        "                    creates only the topics of its --topics)\n"
        "  -X key=value      configuration; kafka.bootstrap.servers is required\n\n"
        "Exit status: 0 every event delivered; 1 an event not delivered, the input\n"
        "unreadable or the brokers unreachable; 2 a usage or configuration error.\n");
}

/* 0, 1 (--help printed) or 2 (usage error, explained on stderr). */
static int parse_args(int argc, char **argv, produce_args *a)
{
    memset(a, 0, sizeof *a);
    const hl_arg opts[] = {
        {"--input", HL_ARG_STR, 0, 0, &a->input},
        {"--format", HL_ARG_STR, 0, 0, &a->format},
        {"--topic", HL_ARG_STR, 0, 0, &a->topic},
        {"--rate", HL_ARG_NUM, 0, 1e9, &a->rate},
        {"--limit", HL_ARG_I64, 0, 9e18, &a->limit},
        {"--partitions", HL_ARG_INT, 1, 100000, &a->partitions},
    };
    hl_cmd_args args = {.cmd = "produce", .opts = opts, .usage = usage, .xs = &a->xs,
                        .n_opts = (int)(sizeof opts / sizeof opts[0])};
    int rc = hl_cmd_parse_args(&args, argc, argv);
    if (rc == 0 && (a->input == NULL || a->format == NULL)) {
        fprintf(stderr, "halflife produce: --input and --format are required\n\n");
        usage(stderr);
        return 2;
    }
    hl_dataset_format fmt;
    char why[256];
    if (rc == 0 && hl_dataset_format_parse(a->format, &fmt, why, sizeof why) != 0) {
        fprintf(stderr, "halflife produce: %s\n", why);     /* a usage error: exit 2 */
        return 2;
    }
    return rc;
}

/* The worker's idempotent producer (enable.idempotence=true, a queue of a
 * million records) with this command's defaults before the kafka.* keys,
 * which override them: linger.ms=5 for fuller batches, the Java client's
 * partitioner, and librdkafka's own message.timeout.ms of 5 minutes, so a
 * replay whose broker never comes back ends and says so instead of
 * waiting for ever as the worker does. */
static hl_producer *make_producer(const hl_config *cfg, char *errbuf, size_t errlen)
{
    static const hl_kafka_prop defaults[] = {
        {"linger.ms", "5"}, {"partitioner", "murmur2_random"},
        {"message.timeout.ms", "300000"},
    };
    enum { N_DEFAULTS = sizeof defaults / sizeof defaults[0] };
    int n_user;
    const hl_kafka_prop *user = hl_config_kafka(cfg, &n_user);
    hl_kafka_prop *props = malloc((size_t)(N_DEFAULTS + n_user) * sizeof *props);
    if (props == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "producer: out of memory");
        return NULL;
    }
    memcpy(props, defaults, sizeof defaults);
    if (n_user > 0)
        memcpy(props + N_DEFAULTS, user, (size_t)n_user * sizeof *props);
    hl_producer *prod = hl_producer_create(props, N_DEFAULTS + n_user, NULL, errbuf, errlen);
    free(props);
    return prod;
}

/* Creates topic with n partitions; one that exists already is fine. For a
 * real Kafka cluster: the mock cluster of librdkafka 2.0.2 names no
 * controller, so there the request times out after 5 s and the caller only
 * warns (`halflife broker --topics T --partitions N` creates topics there). */
static int create_topic(rd_kafka_t *rk, const char *topic, int n, char *errbuf, size_t errlen)
{
    char why[256];
    int rc = 0;
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(topic, n, -1, why, sizeof why);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_event_t *ev;

    if (nt == NULL) {
        rd_kafka_queue_destroy(q);
        return hl_err(errbuf, errlen, HL_EINVAL, "topic %s: %s", topic, why);
    }
    rd_kafka_AdminOptions_t *ao = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(ao, 5000, why, sizeof why);
    rd_kafka_CreateTopics(rk, &nt, 1, ao, q);
    rd_kafka_AdminOptions_destroy(ao);
    if ((ev = rd_kafka_queue_poll(q, 6000)) == NULL) {
        rc = hl_err(errbuf, errlen, HL_EIO, "create topic %s: no answer within 6 s", topic);
    } else {
        const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
        size_t cnt = 0;
        const rd_kafka_topic_result_t **tr = res ? rd_kafka_CreateTopics_result_topics(res, &cnt) : NULL;
        rd_kafka_resp_err_t err = rd_kafka_event_error(ev);
        if (err == 0 && cnt == 1)
            err = rd_kafka_topic_result_error(tr[0]);
        if (err != 0 && err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
            rc = hl_err(errbuf, errlen, HL_EIO, "create topic %s: %s", topic, rd_kafka_err2str(err));
        rd_kafka_event_destroy(ev);
    }
    rd_kafka_NewTopic_destroy(nt);
    rd_kafka_queue_destroy(q);
    return rc;
}

typedef struct replay {
    hl_producer       *prod;
    hl_codec          *codec;
    hl_dataset_reader *rd;
    const char        *topic;
    int64_t            sent;
    int64_t            skipped;      /* ids outside 1..HL_MAX_ID_LEN bytes */
} replay;

/* Once a second: counts, and for a regular file or a --limit how far the
 * replay is (done_pct) and the time left at the rate so far (left_s), so
 * that an hour-long replay says when it ends; -1 when unknown (stdin). */
static void progress(const replay *r, int64_t limit, int64_t start_ms, const char *event)
{
    hl_producer_stats st;
    int64_t done, total;
    double frac = -1, s = (double)(hl_now_mono_ms() - start_ms) / 1000.0;
    hl_producer_stats_get(r->prod, &st);
    hl_dataset_progress(r->rd, &done, &total);
    if (total > 0 && done >= 0)
        frac = (double)done / (double)total;
    if (limit > 0 && (double)r->sent / (double)limit > frac)
        frac = (double)r->sent / (double)limit;        /* whichever ends first */
    hl_log(HL_LOG_INFO, event, "topic=%s events=%lld delivered=%llu failed=%llu rate_eps=%.0f "
           "done_pct=%.1f left_s=%.0f", r->topic, (long long)r->sent,
           (unsigned long long)st.delivered, (unsigned long long)st.failed,
           s > 0 ? (double)r->sent / s : 0.0, frac >= 0 ? 100 * frac : -1.0,
           frac > 0 ? s * (1 - frac) / frac : -1.0);
}

/* Reads, encodes and sends every event (up to a->limit). */
static int replay_all(replay *r, const produce_args *a, char *errbuf, size_t errlen)
{
    uint8_t buf[2048];
    hl_dataset_event ev;
    int64_t start_ms = hl_now_mono_ms(), last_ms = start_ms;
    hl_pace pc;
    int rc;

    hl_pace_init(&pc, a->rate);
    while ((a->limit == 0 || r->sent < a->limit) && hl_cmd_stops() == 0) {
        if ((rc = hl_dataset_next(r->rd, &ev, errbuf, errlen)) <= 0)
            return rc;
        /* The worker would refuse these (string_too_long): not worth sending. */
        if (ev.user_len < 1 || ev.user_len > HL_MAX_ID_LEN ||
            ev.item_len < 1 || ev.item_len > HL_MAX_ID_LEN) {
            if (r->skipped++ < 5)
                hl_log(HL_LOG_WARN, "event_skipped", "file=%s line=%lld why=\"id length outside 1..%d\"",
                       a->input, (long long)ev.line, HL_MAX_ID_LEN);
            continue;
        }
        hl_codec_event ce = { ev.user, ev.user_len, ev.item, ev.item_len, ev.type,
                              ev.ts_ms, ev.weight, ev.has_weight };
        int n = hl_codec_encode_event(r->codec, &ce, buf, sizeof buf);
        if (n < 0)
            return hl_err(errbuf, errlen, n, "%s line %lld: cannot encode the event (%s)",
                          a->input, (long long)ev.line, hl_strerror(n));
        /* Keyed by user, no ticket: the delivery counts are the producer's. */
        if ((rc = hl_producer_send(r->prod, r->topic, -1, ev.user, ev.user_len,
                                   buf, (size_t)n, NULL, NULL, errbuf, errlen)) != 0)
            return rc;
        r->sent++;
        if ((r->sent & 1023) == 0 || a->rate > 0) {
            hl_producer_poll(r->prod, 0);
            if (hl_now_mono_ms() - last_ms >= 1000) {
                last_ms = hl_now_mono_ms();
                progress(r, a->limit, start_ms, "produce_progress");
            }
        }
        hl_pace_sent(&pc);
    }
    return 0;
}

/* Waits until librdkafka has a delivery report for every message; a
 * second SIGINT or SIGTERM fails those still queued instead. */
static void wait_delivered(replay *r)
{
    int64_t last_ms = hl_now_mono_ms();
    int in_flight;
    while ((in_flight = hl_producer_flush(r->prod, 1000)) > 0) {
        if (hl_cmd_stops() > 1) {
            hl_log(HL_LOG_WARN, "produce_wait_abandoned", "in_flight=%d", in_flight);
            hl_producer_settle(r->prod, 0);
            return;
        }
        if (hl_now_mono_ms() - last_ms >= 5000) {
            last_ms = hl_now_mono_ms();
            hl_log(HL_LOG_INFO, "produce_waiting", "in_flight=%d", in_flight);
        }
    }
}

static int open_input(replay *r, const produce_args *a, const hl_config *cfg,
                      char *errbuf, size_t errlen)
{
    hl_dataset_opts dopts = { 0 };
    hl_worker_opts wo;
    int rc;
    if ((rc = hl_dataset_format_parse(a->format, &dopts.format, errbuf, errlen)) != 0)
        return rc;
    if ((r->rd = hl_dataset_open(a->input, &dopts, errbuf, errlen)) == NULL)
        return HL_EIO;
    hl_config_worker_opts(cfg, &wo);
    if ((rc = hl_cmd_schema_id(&wo, r->topic, hl_codec_event_schema(), "event_schema",
                               &wo.codec.event_schema_id, errbuf, errlen)) != 0)
        return rc;
    wo.codec.min_ts_ms = INT64_MIN;              /* the encoder does not check */
    wo.codec.max_ts_ms = INT64_MAX;
    if ((r->codec = hl_codec_create(&wo.codec, errbuf, errlen)) == NULL)
        return HL_EINVAL;
    return 0;
}

/* librdkafka's text for the first delivery failure, "" if none. */
static const char *first_error(const hl_producer_stats *ps)
{
    return ps->first_err ? rd_kafka_err2str(ps->first_err) : "";
}

static void report(const replay *r, const produce_args *a, const hl_producer_stats *ps)
{
    hl_dataset_stats st;
    hl_dataset_stats_get(r->rd, &st);
    hl_log(HL_LOG_INFO, "produce_done",
           "topic=%s events=%lld delivered=%llu failed=%llu bad_lines=%lld skipped=%lld "
           "first_error=\"%s\"",
           r->topic, (long long)r->sent, (unsigned long long)ps->delivered,
           (unsigned long long)ps->failed, (long long)st.bad_lines, (long long)r->skipped,
           first_error(ps));
    for (int i = 0; i < 8 && i < st.bad_lines; i++)
        hl_log(HL_LOG_WARN, "bad_line", "file=%s line=%lld why=\"%s\"", a->input,
               (long long)st.first_bad_line[i], st.first_bad_why[i]);
}

/* The sentence for a replay a signal stopped: how far into the file it
 * got, so that the rest can be replayed from there. */
static void stopped(const replay *r, const produce_args *a, const hl_producer_stats *ps,
                    char *errbuf, size_t errlen)
{
    hl_dataset_stats st;
    hl_dataset_stats_get(r->rd, &st);
    snprintf(errbuf, errlen, "stopped by %s after line %lld of %s: %lld events sent, "
             "%llu delivered, %llu failed; the lines after it were not sent",
             hl_cmd_stop_signal() == SIGINT ? "SIGINT" : "SIGTERM", (long long)st.lines,
             a->input, (long long)r->sent, (unsigned long long)ps->delivered,
             (unsigned long long)ps->failed);
}

/* Whether a file of lines gave no event at all, said in errbuf: most
 * often a wrong --format, which used to end as a success that sent
 * nothing. An empty file is not this: it has nothing to send. */
static int nothing_sent(const replay *r, const produce_args *a, char *errbuf, size_t errlen)
{
    hl_dataset_stats st;
    hl_dataset_stats_get(r->rd, &st);
    if (r->sent > 0 || st.bad_lines + r->skipped == 0)
        return 0;
    snprintf(errbuf, errlen, "%s: no line of it is a %s event (%lld bad lines, %lld with "
             "ids too long; see the bad_line warnings): is --format right?", a->input,
             a->format, (long long)st.bad_lines, (long long)r->skipped);
    return 1;
}

/* The topic to produce to, once a broker is named; NULL and why if not. */
static const char *target(const hl_config *cfg, const produce_args *a, char *errbuf,
                          size_t errlen)
{
    const char *servers = hl_config_kafka_get(cfg, "bootstrap.servers");
    const char *topic = a->topic != NULL ? a->topic : hl_config_str(cfg, "input.topic");
    if (servers == NULL || servers[0] == '\0') {     /* "" would wait 15 s for nothing */
        snprintf(errbuf, errlen, "-X kafka.bootstrap.servers=HOST:PORT is required "
                 "(a 'halflife broker' prints one)");
        return NULL;
    }
    if (topic == NULL || topic[0] == '\0') {        /* the mock would take "" as a topic */
        snprintf(errbuf, errlen, "no topic: --topic is empty, or input.topic is and no "
                 "--topic was given");
        return NULL;
    }
    return topic;
}

int hl_cmd_produce(int argc, char **argv)
{
    produce_args a;
    replay r;
    hl_producer_stats ps;
    char err[512] = "";
    hl_config *cfg = NULL;
    int replay_rc, rc = parse_args(argc, argv, &a);

    if (rc != 0)
        return rc == 1 ? 0 : 2;
    memset(&r, 0, sizeof r);
    rc = 1;
    if ((cfg = hl_config_create()) == NULL)
        goto out;
    rc = 2;                     /* a wrong configuration is a usage error, as for run */
    if (hl_config_load(cfg, NULL, environ, a.xs.v, a.xs.n, err, sizeof err) != 0)
        goto out;
    if ((r.topic = target(cfg, &a, err, sizeof err)) == NULL)
        goto out;               /* a configuration error: 2 */
    rc = 1;
    if (open_input(&r, &a, cfg, err, sizeof err) != 0 ||
        (r.prod = make_producer(cfg, err, sizeof err)) == NULL ||
        hl_cmd_reach(hl_producer_handle(r.prod), cfg, HL_CMD_REACH_MS, err, sizeof err) != 0)
        goto out;
    if (a.partitions > 0 &&
        create_topic(hl_producer_handle(r.prod), r.topic, a.partitions, err, sizeof err) != 0)
        hl_log(HL_LOG_WARN, "create_topic_failed", "topic=%s err=\"%s\"", r.topic, err);
    hl_cmd_catch_stops();        /* now: a stop before this has nothing to flush */
    replay_rc = replay_all(&r, &a, err, sizeof err);
    hl_cmd_log_stopping("produce_stopping");
    wait_delivered(&r);
    hl_producer_stats_get(r.prod, &ps);
    report(&r, &a, &ps);
    /* A stop signal interrupts a read of standard input that waits for
     * its next line (EINTR): that is the stop, not a read error. */
    if (replay_rc != 0 && hl_cmd_stops() == 0)
        goto out;
    if (hl_cmd_stops() > 0) {
        stopped(&r, &a, &ps, err, sizeof err);
        goto out;
    }
    if (nothing_sent(&r, &a, err, sizeof err))
        goto out;
    rc = (ps.failed == 0 && ps.delivered == (uint64_t)r.sent) ? 0 : 1;
    if (rc != 0)
        snprintf(err, sizeof err, "%lld of %lld events not delivered: %s",
                 (long long)(r.sent - (int64_t)ps.delivered), (long long)r.sent,
                 first_error(&ps));
out:
    if (rc != 0)
        fprintf(stderr, "halflife produce: %s\n", err[0] ? err : "out of memory");
    hl_producer_destroy(r.prod, 0);      /* every record is reported by now */
    hl_codec_destroy(r.codec);
    hl_dataset_close(r.rd);
    hl_config_destroy(cfg);
    return rc;
}
