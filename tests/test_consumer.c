/* test_consumer.c - what the worker's consumer (worker/consumer.c) reads
 * from librdkafka's own statistics, with a real handle: no broker listens
 * at the bootstrap address, so the group stays looking for its coordinator
 * and the statistics say so. The worker's event=group_join_waiting line
 * prints these states; a parse that missed librdkafka's layout (its "cgrp"
 * object has a space after each colon, the brokers' objects do not) would
 * print "unknown" forever. */
#define T_SUITE "test_consumer"
#include "test.h"

#include "consumer.h"
#include "hl.h"
#include "log.h"

#include <string.h>

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

int main(void)
{
    RUN(test_group_state_from_statistics);
    TEST_EXIT();
}
