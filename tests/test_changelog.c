/* test_changelog.c - the changelog's restore from a local snapshot (the
 * cache, worker/changelog_restore.c) when the snapshot came from an owner
 * that had already lost the partition.
 *
 * Over TCP to librdkafka's mock cluster (in this process, as the benches
 * run it): owner A flushes, owner B restores and claims (epoch 2) and
 * flushes, then A, not yet aware it lost the partition, flushes again: its
 * records land after B's. A local snapshot A writes now covers the
 * changelog up to after its late flush, past B's claim, so a restore from
 * it would skip B's records before that point. B flushes on: the restore
 * sees B's epoch begin with a row, not with B's claim, and must refuse
 * that snapshot (HL_ENOENT: the worker then reads the whole changelog).
 * Not caught: B writing nothing after A's late flush (changelog_restore.c
 * says why). The restore must still accept
 * the caches that are right: the rebalance-away-and-back snapshot taken
 * before B's claim, and B's own. The whole-changelog restore has B's user
 * and ignores A's late records (stale). The worker-level cases (SIGSTOP,
 * kill -9, rebalances) are tests/integration/test_changelog.py. */
#define T_SUITE "test_changelog"
#include "test.h"

#include "changelog.h"
#include "hl.h"
#include "log.h"

#include <librdkafka/rdkafka_mock.h>

#define DIM     4
#define N_ITEMS 8
#define FP      7

static float e_in[N_ITEMS * DIM];

typedef struct env {
    rd_kafka_t              *mrk;
    rd_kafka_mock_cluster_t *mock;
    hl_producer             *prod;
    rd_kafka_t              *cons;      /* stands for the group consumer: never lost */
    hl_metrics              *reg;
    hl_changelog            *cl;
    hl_table_opts            o;
} env;

static int env_start(env *e)
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
    hl_kafka_prop props[] = {{"bootstrap.servers", bootstrap}};
    e->prod = hl_producer_create(props, 1, NULL, err, sizeof err);
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
        .reg = e->reg, .timeout_ms = 10000,
    };
    e->cl = e->prod && e->cons ? hl_changelog_create(&co, err, sizeof err) : NULL;
    CHECKF(e->cl != NULL, "changelog: %s", err);
    return e->cl ? 0 : -1;
}

static void env_stop(env *e)
{
    hl_changelog_destroy(e->cl);
    hl_producer_destroy(e->prod, 5000);
    if (e->cons) rd_kafka_destroy(e->cons);
    if (e->mock) rd_kafka_mock_cluster_destroy(e->mock);
    if (e->mrk) rd_kafka_destroy(e->mrk);
    hl_metrics_destroy(e->reg);
}

/* Events at offsets [from, to) of user to tbl (and to copy, if given). */
static void events(hl_table *tbl, hl_table *copy, const char *user, int64_t from, int64_t to)
{
    for (int64_t off = from; off < to; off++) {
        hl_event ev = {.user = user, .user_len = (uint32_t)strlen(user),
                       .item = (int32_t)(off % N_ITEMS), .w = 1.0f,
                       .ts_ms = 1700000000000LL + off * 1000, .offset = off};
        hl_table_apply(tbl, &ev, 1, e_in, N_ITEMS, NULL);
        if (copy) hl_table_apply(copy, &ev, 1, e_in, N_ITEMS, NULL);
    }
}

static hl_table *table(env *e)
{
    char err[256];
    hl_table *tbl = hl_table_create(&e->o, err, sizeof err);
    CHECKF(tbl != NULL, "table: %s", err);
    return tbl;
}

static int has(const hl_table *tbl, const char *user)
{
    return hl_table_find(tbl, user, strlen(user)) >= 0;
}

/* A's and B's shards, as the overview tells; *a10 holds A's state at its
 * first flush, base10 that flush's cover. Returns A's late cover. */
static void two_owners(env *e, hl_table *a, hl_table *a10, hl_changelog_base *base10,
                       hl_changelog_base *late, hl_changelog_base *b20)
{
    char err[512];
    int64_t far = hl_now_mono_ms() + 10000;
    hl_changelog_restored ra, rb;
    CHECKF(hl_changelog_restore(e->cl, 0, a, NULL, &ra, err, sizeof err) == 0, "A: %s", err);
    hl_changelog_shard *csa = hl_changelog_shard_create(e->cl, 0, a, &ra);
    events(a, a10, "ua", 0, 10);
    CHECK(hl_changelog_flush_now(csa, a, 10, far) == 0);
    *base10 = (hl_changelog_base){.next_offset = 10};
    hl_changelog_cover(csa, 10, &base10->changelog_offset, &base10->changelog_epoch);

    hl_table *b = table(e);
    CHECKF(hl_changelog_restore(e->cl, 0, b, NULL, &rb, err, sizeof err) == 0, "B: %s", err);
    CHECKF(rb.epoch == 2, "B claimed epoch %lld", (long long)rb.epoch);
    hl_changelog_shard *csb = hl_changelog_shard_create(e->cl, 0, b, &rb);
    events(b, NULL, "ub", 10, 20);
    CHECK(hl_changelog_flush_now(csb, b, 20, far) == 0);
    *b20 = (hl_changelog_base){.next_offset = 20};
    hl_changelog_cover(csb, 20, &b20->changelog_offset, &b20->changelog_epoch);

    events(a, NULL, "ua-late", 10, 15);          /* the zombie goes on */
    CHECK(hl_changelog_flush_now(csa, a, 15, far) == 0);
    *late = (hl_changelog_base){.next_offset = 15};
    hl_changelog_cover(csa, 15, &late->changelog_offset, &late->changelog_epoch);
    CHECKF(late->changelog_offset > b20->changelog_offset && late->changelog_epoch == 1,
           "A's late cover %lld epoch %lld, B's %lld", (long long)late->changelog_offset,
           (long long)late->changelog_epoch, (long long)b20->changelog_offset);
    events(b, NULL, "ub2", 20, 25);              /* B, the owner, flushes on */
    CHECK(hl_changelog_flush_now(csb, b, 25, far) == 0);
    hl_table_on_evict(a, NULL, NULL);
    hl_table_on_evict(b, NULL, NULL);
    hl_changelog_shard_destroy(csa);
    hl_changelog_shard_destroy(csb);
    hl_table_destroy(b);
}

static void test_zombie_snapshot_refused(void)
{
    env e;
    char err[512] = "";
    hl_changelog_restored r;
    hl_changelog_base base10, late, b20;
    if (env_start(&e) != 0) {
        env_stop(&e);
        return;
    }
    hl_table *a = table(&e), *a10 = table(&e);
    two_owners(&e, a, a10, &base10, &late, &b20);

    /* A's late snapshot: its cover skips B's claim and B's row of ub. */
    int rc = hl_changelog_restore(e.cl, 0, a, &late, &r, err, sizeof err);
    CHECKF(rc == HL_ENOENT, "restore from the zombie's snapshot: rc %d (%s), has ub %d",
           rc, err, has(a, "ub"));
    CHECKF(strstr(err, "lost the partition") != NULL, "err \"%s\"", err);

    /* The cache taken before B's claim (away and back) is fine. */
    rc = hl_changelog_restore(e.cl, 0, a10, &base10, &r, err, sizeof err);
    CHECKF(rc == 0 && has(a10, "ub") && !has(a10, "ua-late") && r.next_offset == 25,
           "away and back: rc %d (%s), ub %d, ua-late %d, next %lld", rc, err,
           has(a10, "ub"), has(a10, "ua-late"), (long long)r.next_offset);
    CHECK(has(a10, "ub2"));

    /* The whole changelog: B's user, A's late records ignored. */
    hl_table *whole = table(&e);
    rc = hl_changelog_restore(e.cl, 0, whole, NULL, &r, err, sizeof err);
    CHECKF(rc == 0 && has(whole, "ua") && has(whole, "ub") && !has(whole, "ua-late") &&
           r.n_stale > 0, "whole: rc %d (%s), ua %d ub %d ua-late %d stale %llu", rc, err,
           has(whole, "ua"), has(whole, "ub"), has(whole, "ua-late"),
           (unsigned long long)r.n_stale);
    hl_table_destroy(whole);
    hl_table_destroy(a10);
    hl_table_destroy(a);
    env_stop(&e);
}

int main(void)
{
    hl_log_set_level(HL_LOG_ERROR);
    for (int i = 0; i < N_ITEMS * DIM; i++)
        e_in[i] = (float)((i * 37) % 17) / 17.0f - 0.5f;
    RUN(test_zombie_snapshot_refused);
    TEST_EXIT();
}
