/* changelog_mock_util.h - test_changelog.c's environment: librdkafka's
 * mock cluster in this process, a producer, a consumer standing for the
 * group's, and a changelog over them. Header-only, static inline; include
 * it after test.h (CHECKF). */
#ifndef HL_CHANGELOG_MOCK_UTIL_H
#define HL_CHANGELOG_MOCK_UTIL_H

#include "changelog.h"
#include "changelog_test_util.h"
#include "hl.h"

#include <signal.h>
#include <string.h>

#include <librdkafka/rdkafka_mock.h>

static volatile sig_atomic_t stop_flag;   /* the changelog's start_abort */

typedef struct env {
    rd_kafka_t              *mrk;
    rd_kafka_mock_cluster_t *mock;
    hl_producer             *prod;
    rd_kafka_t              *cons;      /* stands for the group consumer: never lost */
    hl_metrics              *reg;
    hl_changelog            *cl;
    hl_table_opts            o;
} env;

/* The env with extra (a producer property, {NULL}: none). */
static inline int env_start_with(env *e, hl_kafka_prop extra)
{
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "log_level", "3", err, sizeof err);
    memset(e, 0, sizeof *e);
    e->mrk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
    e->mock = e->mrk ? rd_kafka_mock_cluster_new(e->mrk, 1) : NULL;
    if (e->mock == NULL)
        return -1;
    rd_kafka_mock_topic_create(e->mock, "in", 1, 1);
    rd_kafka_mock_topic_create(e->mock, "st", 1, 1);
    const char *bootstrap = rd_kafka_mock_cluster_bootstraps(e->mock);
    hl_kafka_prop props[] = {{"bootstrap.servers", bootstrap}, extra};
    e->prod = hl_producer_create(props, extra.key ? 2 : 1, NULL, err, sizeof err);
    rd_kafka_conf_t *cc = rd_kafka_conf_new();
    rd_kafka_conf_set(cc, "bootstrap.servers", bootstrap, err, sizeof err);
    rd_kafka_conf_set(cc, "group.id", "test", err, sizeof err);
    e->cons = rd_kafka_new(RD_KAFKA_CONSUMER, cc, err, sizeof err);
    e->reg = hl_metrics_create();
    hl_decay_init(&e->o.decay, 3, DIM, hl_default_half_life_ms, err, sizeof err);
    e->o.history = 4;
    e->o.expected_users = 16;
    hl_changelog_opts co = {
        .topic = "st", .input_topic = "in", .bootstrap = bootstrap, .flush_ms = 1000,
        .model_fingerprint = FP, .topts = &e->o, .prod = e->prod, .consumer = e->cons,
        .reg = e->reg, .timeout_ms = 10000, .start_abort = &stop_flag,
    };
    e->cl = e->prod && e->cons ? hl_changelog_create(&co, err, sizeof err) : NULL;
    CHECKF(e->cl != NULL, "changelog: %s", err);
    return e->cl ? 0 : -1;
}

static inline int env_start(env *e)
{
    return env_start_with(e, (hl_kafka_prop){NULL, NULL});
}

static inline void env_stop(env *e)
{
    hl_changelog_destroy(e->cl);
    hl_producer_destroy(e->prod, 5000);
    if (e->cons) rd_kafka_destroy(e->cons);
    if (e->mock) rd_kafka_mock_cluster_destroy(e->mock);
    if (e->mrk) rd_kafka_destroy(e->mrk);
    hl_metrics_destroy(e->reg);
}

static inline hl_table *table(env *e)
{
    char err[256];
    hl_table *tbl = hl_table_create(&e->o, err, sizeof err);
    CHECKF(tbl != NULL, "table: %s", err);
    return tbl;
}

#endif
