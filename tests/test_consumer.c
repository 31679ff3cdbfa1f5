/* test_consumer.c - what the worker's consumer (worker/consumer.c) reads
 * from librdkafka's own statistics, with a real handle: no broker listens
 * at the bootstrap address, so the group stays looking for its coordinator
 * and the statistics say so. The worker's event=group_join_waiting line
 * prints these states; a parse that missed librdkafka's layout (its "cgrp"
 * object has a space after each colon, the brokers' objects do not) would
 * print "unknown" forever. Also: records of a partition whose queue goes
 * to no shard thread are counted each and logged a few times, not once
 * each (a mock cluster in process, the partition assigned, never
 * forwarded). And a statistics report made while an assignment callback
 * ran is not the lag of the partitions it assigned, and the lag of a
 * paused partition (not fetched) follows its end. */
#define T_SUITE "test_consumer"
#include "test.h"

#include "consumer.h"
#include "hl.h"
#include "log.h"

#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N_UNROUTED 200

static void no_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    (void)rk; (void)err; (void)parts; (void)opaque;
}

static int one_of(const char *s, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0)
            return 1;
    return 0;
}

static void test_group_state_from_statistics(void)
{
    /* librdkafka 2.0.2's names (rdkafka_cgrp.c, rd_kafka_cgrp_state_names
     * and rd_kafka_cgrp_join_state_names) */
    static const char *const states[] = {"init", "term", "query-coord", "wait-coord",
                                         "wait-broker", "wait-broker-transport", "up"};
    static const char *const joins[] = {"init", "wait-join", "wait-metadata", "wait-sync",
                                        "wait-assign-call", "wait-unassign-call",
                                        "wait-unassign-to-complete",
                                        "wait-incr-unassign-to-complete", "steady"};
    char err[256] = "";
    hl_kafka_prop props[] = {{"statistics.interval.ms", "100"}, {"log_level", "0"}};
    hl_consumer_opts o = {.bootstrap = "127.0.0.1:1", .group_id = "test-consumer",
                          .kafka = props, .n_kafka = 2, .rebalance = no_rebalance,
                          .topic = "behaviour-events"};
    hl_consumer *c = hl_consumer_create(&o, err, sizeof err);
    CHECKF(c != NULL, "create: %s", err);
    if (c == NULL)
        return;
    CHECK(strcmp(hl_consumer_group_state(c, 0), "unknown") == 0);
    CHECK(strcmp(hl_consumer_group_state(c, 1), "unknown") == 0);
    CHECKF(hl_consumer_subscribe(c, "behaviour-events", err, sizeof err) == 0, "%s", err);
    int64_t deadline = hl_now_mono_ms() + 5000;
    while (strcmp(hl_consumer_group_state(c, 1), "unknown") == 0 &&
           hl_now_mono_ms() < deadline)
        hl_consumer_serve(c, 50);
    const char *gs = hl_consumer_group_state(c, 0), *js = hl_consumer_group_state(c, 1);
    CHECKF(one_of(gs, states, (int)(sizeof states / sizeof states[0])), "group state \"%s\"", gs);
    CHECKF(one_of(js, joins, (int)(sizeof joins / sizeof joins[0])), "join state \"%s\"", js);
    CHECKF(strcmp(gs, "up") != 0 && strcmp(js, "steady") != 0,
           "no broker, yet group state \"%s\" join state \"%s\"", gs, js);
    hl_consumer_close(c);
    hl_consumer_destroy(c);
}

/* Takes every partition and forwards none: each record comes back from
 * hl_consumer_serve as unrouted. */
static void assign_all(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                       rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    (void)opaque;
    rd_kafka_error_t *e = err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS
        ? rd_kafka_incremental_assign(rk, parts) : rd_kafka_incremental_unassign(rk, parts);
    if (e)
        rd_kafka_error_destroy(e);
}

/* n records to topic on the mock cluster at bootstrap; 0 once delivered. */
static int produce_n(const char *bootstrap, const char *topic, int n)
{
    char err[256];
    rd_kafka_conf_t *pc = rd_kafka_conf_new();
    rd_kafka_conf_set(pc, "bootstrap.servers", bootstrap, err, sizeof err);
    rd_kafka_conf_set(pc, "log_level", "0", err, sizeof err);
    rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, pc, err, sizeof err);
    if (p == NULL)
        return -1;
    for (int i = 0; i < n; i++)
        rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_VALUE("x", 1), RD_KAFKA_V_END);
    int left = rd_kafka_flush(p, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR ? 0 : -1;
    rd_kafka_destroy(p);
    return left;
}

/* A mock cluster in this process holding topic (one partition) with n
 * records. */
typedef struct mock_topic {
    rd_kafka_t              *mrk;       /* the handle the cluster lives in */
    rd_kafka_mock_cluster_t *mock;
    const char              *bs;        /* its bootstrap address */
} mock_topic;

/* 0, or -1 (checked) with nothing left to stop. */
static int mock_start(mock_topic *mt, const char *topic, int n)
{
    char err[512] = "";
    rd_kafka_conf_t *mc = rd_kafka_conf_new();
    rd_kafka_conf_set(mc, "log_level", "0", err, sizeof err);
    *mt = (mock_topic){.mrk = rd_kafka_new(RD_KAFKA_PRODUCER, mc, err, sizeof err)};
    mt->mock = mt->mrk ? rd_kafka_mock_cluster_new(mt->mrk, 1) : NULL;
    CHECKF(mt->mock != NULL, "mock cluster: %s", err);
    if (mt->mock == NULL) {
        if (mt->mrk != NULL)
            rd_kafka_destroy(mt->mrk);
        return -1;
    }
    rd_kafka_mock_topic_create(mt->mock, topic, 1, 1);
    mt->bs = rd_kafka_mock_cluster_bootstraps(mt->mock);
    CHECK(produce_n(mt->bs, topic, n) == 0);
    return 0;
}

static void mock_stop(mock_topic *mt)
{
    rd_kafka_mock_cluster_destroy(mt->mock);
    rd_kafka_destroy(mt->mrk);
}

/* Serves c until N_UNROUTED records were counted (or 20 s), stderr into
 * got. The count of the counter. */
static uint64_t serve_unrouted(hl_consumer *c, hl_counter *n, char *got, size_t cap)
{
    FILE *tmp = tmpfile();
    int saved = dup(STDERR_FILENO);
    if (tmp == NULL || saved < 0)
        return 0;
    dup2(fileno(tmp), STDERR_FILENO);
    int64_t deadline = hl_now_mono_ms() + 20000;
    while (hl_counter_get(n) < N_UNROUTED && hl_now_mono_ms() < deadline)
        hl_consumer_serve(c, 50);
    dup2(saved, STDERR_FILENO);
    close(saved);
    rewind(tmp);
    size_t len = fread(got, 1, cap - 1, tmp);
    got[len] = '\0';
    fclose(tmp);
    return hl_counter_get(n);
}

static int count_lines(const char *s, const char *needle)
{
    int k = 0;
    for (; (s = strstr(s, needle)) != NULL; s += strlen(needle))
        k++;
    return k;
}

static void test_unrouted_records_rate_limited(void)
{
    char err[512], got[65536];
    mock_topic mt;
    if (mock_start(&mt, "behaviour-events", N_UNROUTED) != 0)
        return;
    hl_metrics *reg = hl_metrics_create();
    hl_kafka_prop props[] = {{"log_level", "0"}, {"session.timeout.ms", "6000"},
                             {"heartbeat.interval.ms", "1000"}};
    hl_consumer_opts o = {.bootstrap = mt.bs, .group_id = "test-unrouted", .kafka = props,
                          .n_kafka = 3, .rebalance = assign_all, .reg = reg,
                          .topic = "behaviour-events"};
    hl_consumer *c = hl_consumer_create(&o, err, sizeof err);
    CHECKF(c != NULL, "create: %s", err);
    if (c != NULL && hl_consumer_subscribe(c, "behaviour-events", err, sizeof err) == 0) {
        hl_counter *n = hl_metrics_counter(reg, "halflife_unrouted_records_total", NULL, NULL);
        uint64_t counted = serve_unrouted(c, n, got, sizeof got);
        int lines = count_lines(got, "event=unrouted_record");
        CHECKF(counted == N_UNROUTED, "halflife_unrouted_records_total %llu of %d",
               (unsigned long long)counted, N_UNROUTED);
        CHECKF(lines >= 1 && lines <= 3, "%d unrouted_record lines for %d records",
               lines, N_UNROUTED);
        hl_consumer_close(c);
    }
    hl_consumer_destroy(c);
    hl_metrics_destroy(reg);
    mock_stop(&mt);
}

/* The lag series of partition 0 in reg's /metrics: its value, or -1
 * while none shows. */
static double lag0(hl_metrics *reg)
{
    char *text = NULL;
    size_t len = 0;
    double v = -1;
    if (hl_metrics_render(reg, &text, &len) != 0)
        return -1;
    const char *at = strstr(text, "halflife_consumer_lag{partition=\"0\"} ");
    if (at != NULL)
        v = strtod(strchr(at, '}') + 2, NULL);
    free(text);
    return v;
}

typedef struct slow_assign {
    int64_t at;         /* the offset each assignment starts at */
    int     sleep_ms;   /* how long the assignment callback takes */
    int     owned;      /* partition 0 assigned (the worker's owner[]) */
} slow_assign;

static int owns_assigned(void *opaque, int32_t partition)
{
    const slow_assign *sa = opaque;
    return partition == 0 && sa->owned;
}

/* Eager (range): assigns at sa->at after sa->sleep_ms, as a restore that
 * takes that long would; revokes all. */
static void assign_slowly(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                          rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    slow_assign *sa = opaque;
    if (err != RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        rd_kafka_assign(rk, NULL);
        sa->owned = 0;
        return;
    }
    usleep((useconds_t)sa->sleep_ms * 1000);
    for (int i = 0; i < parts->cnt; i++)
        parts->elems[i].offset = sa->at;
    rd_kafka_assign(rk, parts);
    sa->owned = parts->cnt > 0;
}

/* Serves c until partition 0's lag shows (or ms): the first value seen,
 * else -1. */
static double first_lag(hl_consumer *c, hl_metrics *reg, int ms)
{
    double v = -1;
    for (int64_t end = hl_now_mono_ms() + ms; v < 0 && hl_now_mono_ms() < end;) {
        hl_consumer_serve(c, 10);
        v = lag0(reg);
    }
    return v;
}

/* A consumer of topic (on the mock cluster at bs) in group, subscribed,
 * assigned by assign_slowly(sa), statistics every 100 ms into reg. NULL
 * (checked) when it cannot be made or subscribed. */
static hl_consumer *lag_consumer(const char *bs, const char *topic, const char *group,
                                 slow_assign *sa, hl_metrics *reg)
{
    char err[512];
    hl_kafka_prop props[] = {{"log_level", "0"}, {"statistics.interval.ms", "100"},
                             {"partition.assignment.strategy", "range"},
                             {"session.timeout.ms", "6000"}, {"heartbeat.interval.ms", "500"}};
    hl_consumer_opts o = {.bootstrap = bs, .group_id = group, .kafka = props,
                          .n_kafka = 5, .rebalance = assign_slowly, .opaque = sa,
                          .reg = reg, .topic = topic, .owns = owns_assigned};
    hl_consumer *c = hl_consumer_create(&o, err, sizeof err);
    CHECKF(c != NULL, "create: %s", err);
    if (c != NULL && hl_consumer_subscribe(c, topic, err, sizeof err) != 0) {
        CHECKF(0, "subscribe: %s", err);
        hl_consumer_destroy(c);
        return NULL;
    }
    return c;
}

/* Partition 0 holds 10 records and is assigned at 0 (lag 10, read once
 * fetched: librdkafka then knows the end), revoked, 10 more produced,
 * and assigned again at 10 by a callback that takes 450 ms while reports
 * come every 100 ms. Its first lag after that must be 10. Before, the
 * reports made during the callback came next: no start yet and the
 * first assignment's end, lag 0 for a statistics interval (one of 5 s
 * in the worker) with 10 records waiting. */
static void test_lag_not_from_report_before_assignment(void)
{
    char err[512];
    mock_topic mt;
    if (mock_start(&mt, "lagged", 10) != 0)
        return;
    hl_metrics *reg = hl_metrics_create();
    slow_assign sa = {.at = 0, .sleep_ms = 0, .owned = 0};
    hl_consumer *c = lag_consumer(mt.bs, "lagged", "test-lag", &sa, reg);
    if (c != NULL) {
        double first = first_lag(c, reg, 15000);
        for (int64_t end = hl_now_mono_ms() + 5000; first != 10 && hl_now_mono_ms() < end;)
            first = first_lag(c, reg, 100);     /* until fetched: the end known */
        CHECKF(first == 10, "first assignment: lag %g, want 10", first);
        rd_kafka_unsubscribe(hl_consumer_handle(c));
        for (int64_t end = hl_now_mono_ms() + 3000; sa.owned && hl_now_mono_ms() < end;)
            hl_consumer_serve(c, 100);          /* the revocation */
        hl_metrics_hide(reg, "halflife_consumer_lag", "partition=\"0\"");  /* as worker */
        CHECK(produce_n(mt.bs, "lagged", 10) == 0);
        sa.at = 10;
        sa.sleep_ms = 450;
        CHECKF(hl_consumer_subscribe(c, "lagged", err, sizeof err) == 0, "%s", err);
        double again = first_lag(c, reg, 15000);
        CHECKF(again == 10, "assigned again at 10 with 20 records: first lag %g, want 10",
               again);
        hl_consumer_close(c);
    }
    hl_consumer_destroy(c);
    hl_metrics_destroy(reg);
    mock_stop(&mt);
}

/* Serves c for up to ms until partition 0's lag reads want: the last value. */
static double lag_reaches(hl_consumer *c, hl_metrics *reg, double want, int ms)
{
    double v = lag0(reg);
    for (int64_t end = hl_now_mono_ms() + ms; v != want && hl_now_mono_ms() < end;) {
        hl_consumer_serve(c, 10);
        v = lag0(reg);
    }
    return v;
}

/* A paused partition is not fetched, so librdkafka's statistics keep the
 * end it had when it was paused (a registry outage pauses a partition
 * whose records wait for their schema, park.c). Partition 0 holds 10
 * records, assigned at 0 and fetched (lag 10), then paused, and 10 more
 * produced: the lag must reach 20. Before, it read 10 for as long as the
 * pause lasted: an alert on lag never saw the backlog grow. */
static void test_lag_of_paused_partition_grows(void)
{
    mock_topic mt;
    if (mock_start(&mt, "paused", 10) != 0)
        return;
    hl_metrics *reg = hl_metrics_create();
    slow_assign sa = {.at = 0, .sleep_ms = 0, .owned = 0};
    hl_consumer *c = lag_consumer(mt.bs, "paused", "test-paused", &sa, reg);
    if (c != NULL) {
        double before = lag_reaches(c, reg, 10, 15000);   /* assigned and fetched */
        CHECKF(before == 10, "before the pause: lag %g, want 10", before);
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, "paused", 0);
        CHECK(rd_kafka_pause_partitions(hl_consumer_handle(c), l) == 0);
        CHECK(produce_n(mt.bs, "paused", 10) == 0);
        double during = lag_reaches(c, reg, 20, 3000);
        CHECKF(during == 20, "paused, 20 records in, none applied: lag %g, want 20", during);
        rd_kafka_resume_partitions(hl_consumer_handle(c), l);
        rd_kafka_topic_partition_list_destroy(l);
        hl_consumer_close(c);
    }
    hl_consumer_destroy(c);
    hl_metrics_destroy(reg);
    mock_stop(&mt);
}

int main(void)
{
    RUN(test_group_state_from_statistics);
    RUN(test_unrouted_records_rate_limited);
    RUN(test_lag_not_from_report_before_assignment);
    RUN(test_lag_of_paused_partition_grows);
    TEST_EXIT();
}
