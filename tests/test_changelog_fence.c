/* test_changelog_fence.c - a shard whose group member has lost its
 * assignment writes nothing more to the changelog: not the checkpoint of
 * a flush whose rows went out before the loss, and not a flush encoded
 * before it that hl_changelog_flush_now (a revocation's, a stop's) would
 * produce.
 *
 * Over TCP to librdkafka's mock cluster (in this process, as
 * test_changelog.c runs it). The group member is a real consumer of the
 * mock's group; its assignment is lost the way a session that ran out
 * loses it: the coordinator answers a heartbeat with ILLEGAL_GENERATION,
 * and librdkafka marks the assignment lost before it queues the
 * revocation. The member is not polled after that, so the mark stays, as
 * it does in the worker until its rebalance callback has let go. All
 * checkpoints share one key, so on a compacted topic a zombie's late
 * checkpoint outlives the new owner's claim. */
#define T_SUITE "test_changelog_fence"
#include "test.h"

#include "changelog.h"
#include "changelog_internal.h"
#include "changelog_mock_util.h"
#include "changelog_test_util.h"
#include "hl.h"
#include "log.h"
#include "thread.h"

#include <unistd.h>

#include <librdkafka/rdkafka_mock.h>

#define HEARTBEAT_KEY 12        /* the Heartbeat request's API key */
#define SETTLE_MS     1000

static int64_t high_watermark(env *e)
{
    int64_t lo = -1, hi = -1;
    rd_kafka_query_watermark_offsets(e->cons, "st", 0, &lo, &hi, 5000);
    return hi;
}

/* What a revocation callback runs before it lets go (a release's work),
 * once; NULL fn: nothing. */
typedef struct in_revocation {
    void (*fn)(void *arg);
    void *arg;
    int   ran;
} in_revocation;

/* The worker's way (a callback, served by polls): without one, librdkafka
 * lets go of a lost assignment at once, on its own thread. */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    in_revocation *rev = opaque;
    if (err != RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS && rev != NULL && rev->fn != NULL &&
        !rev->ran) {
        rev->ran = 1;
        rev->fn(rev->arg);
    }
    rd_kafka_assign(rk, err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS ? parts : NULL);
}

/* A member of group "fence" (its revocations run rev, when not NULL) once it holds partition 0 of "in" (the mock
 * makes a first join wait 3 s) and has settled in it (polled for
 * SETTLE_MS more: until then librdkafka is still in the join, and skips
 * a heartbeat's error), or NULL. */
static rd_kafka_t *join_member(env *e, in_revocation *rev)
{
    char err[256];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set_opaque(c, rev);
    rd_kafka_conf_set(c, "bootstrap.servers", rd_kafka_mock_cluster_bootstraps(e->mock),
                      err, sizeof err);
    rd_kafka_conf_set(c, "group.id", "fence", err, sizeof err);
    rd_kafka_conf_set(c, "heartbeat.interval.ms", "100", err, sizeof err);
    rd_kafka_conf_set(c, "log_level", "3", err, sizeof err);
    rd_kafka_conf_set_rebalance_cb(c, on_rebalance);
    rd_kafka_t *m = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof err);
    if (m == NULL)
        return NULL;
    rd_kafka_poll_set_consumer(m);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, "in", RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(m, l);
    rd_kafka_topic_partition_list_destroy(l);
    int64_t settled = 0;
    for (int64_t end = hl_now_mono_ms() + 15000; hl_now_mono_ms() < end;) {
        rd_kafka_message_t *rkm = rd_kafka_consumer_poll(m, 100);
        if (rkm)
            rd_kafka_message_destroy(rkm);
        rd_kafka_topic_partition_list_t *a = NULL;
        int n = rd_kafka_assignment(m, &a) == 0 ? a->cnt : 0;
        if (a)
            rd_kafka_topic_partition_list_destroy(a);
        if (n > 0 && settled == 0)
            settled = hl_now_mono_ms() + SETTLE_MS;
        if (settled > 0 && hl_now_mono_ms() >= settled)
            return m;
    }
    rd_kafka_destroy(m);
    return NULL;
}

/* The coordinator refuses m's next heartbeat: m's assignment is lost. 1
 * once librdkafka says so. m is not polled here (that would serve the
 * revocation, and letting go clears the mark). */
static int lose(env *e, rd_kafka_t *m)
{
    rd_kafka_mock_push_request_errors(e->mock, HEARTBEAT_KEY, 1,
                                      RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION);
    for (int64_t end = hl_now_mono_ms() + 5000; hl_now_mono_ms() < end; usleep(10000))
        if (rd_kafka_assignment_lost(m))
            return 1;
    return 0;
}

/* The env, its changelog fenced by a real group member (*m) instead of
 * the env's consumer, which never joins a group; partition 0 restored and
 * claimed into *tbl, three events of ua applied; rev as join_member takes
 * it. NULL when the mock or
 * the group could not be had. */
static hl_changelog_shard *fenced_shard(env *e, rd_kafka_t **m, hl_table **tbl,
                                        in_revocation *rev)
{
    char err[512] = "";
    hl_changelog_restored r;
    *m = NULL;
    *tbl = NULL;
    if (env_start(e) != 0)
        return NULL;
    *m = join_member(e, rev);
    CHECKF(*m != NULL, "the member got no assignment");
    if (*m == NULL)
        return NULL;
    e->cl->o.consumer = *m;
    *tbl = table(e);
    CHECKF(hl_changelog_restore(e->cl, 0, *tbl, NULL, &r, err, sizeof err) == 0, "%s", err);
    hl_changelog_shard *cs = hl_changelog_shard_create(e->cl, 0, *tbl, &r);
    events(*tbl, NULL, "ua", 0, 3);
    return cs;
}

static void fenced_done(env *e, rd_kafka_t *m, hl_changelog_shard *cs, hl_table *tbl)
{
    if (tbl != NULL)
        hl_table_on_evict(tbl, NULL, NULL);
    hl_changelog_shard_destroy(cs);
    hl_table_destroy(tbl);
    if (e->cl != NULL)
        e->cl->o.consumer = e->cons;
    if (m != NULL)
        rd_kafka_destroy(m);
    env_stop(e);
}

/* The flush's rows are delivered before the loss; its checkpoint, which
 * would follow at the next tick, must not go: the group gave the
 * partition to another member, whose claim may already be in. Before,
 * produce_checkpoint sent it unchecked. */
static void test_no_checkpoint_after_loss(void)
{
    env e;
    rd_kafka_t *m;
    hl_table *a;
    hl_changelog_shard *cs = fenced_shard(&e, &m, &a, NULL);
    if (cs == NULL) {
        fenced_done(&e, m, cs, a);
        return;
    }
    int64_t now = hl_now_mono_ms();
    hl_changelog_tick(cs, a, 3, 3, now);                /* the interval starts */
    CHECK(hl_changelog_tick(cs, a, 3, 3, now + 1000) == 1);     /* encoded */
    CHECK(hl_changelog_tick(cs, a, 3, 3, now + 1000) == 1);     /* rows produced */
    hl_producer_flush(e.prod, 5000);                    /* and delivered */
    int64_t before = high_watermark(&e);
    CHECK(lose(&e, m));
    hl_changelog_tick(cs, a, 3, 3, now + 1000);         /* would send the checkpoint */
    hl_changelog_tick(cs, a, 3, 3, now + 1000);
    hl_producer_flush(e.prod, 5000);
    int64_t after = high_watermark(&e);
    uint64_t fenced = hl_metrics_counter_sum(e.reg, "halflife_changelog_fenced_writes_total");
    CHECKF(after == before && hl_changelog_durable(cs) < 3 && fenced > 0,
           "after the loss: %lld records written (a checkpoint), durable %lld, "
           "fenced writes %llu", (long long)(after - before),
           (long long)hl_changelog_durable(cs), (unsigned long long)fenced);
    /* The same flush met again: the stop's flush_now, then ticks past the
     * next interval. One flush refused, one count. Before, each look at
     * the lost assignment counted: the checkpoint's refusal and flush_now
     * starting the flush anew made 2, and every later interval one more. */
    CHECK(hl_changelog_flush_now(cs, a, 3, hl_now_mono_ms() + 1000) != 0);
    hl_changelog_tick(cs, a, 3, 3, now + 2000);
    hl_changelog_tick(cs, a, 3, 3, now + 3000);
    fenced = hl_metrics_counter_sum(e.reg, "halflife_changelog_fenced_writes_total");
    CHECKF(fenced == 1, "one fenced flush counted %llu times", (unsigned long long)fenced);
    fenced_done(&e, m, cs, a);
}

/* A flush encoded before the loss (its lists not yet delivered), then the
 * release's (or the stop's) flush_now: it must refuse, not produce the
 * encoded rows and their checkpoint. Before, flush_now produced them
 * unchecked and returned 0, durable. */
static void test_no_encoded_flush_after_loss(void)
{
    env e;
    rd_kafka_t *m;
    hl_table *a;
    hl_changelog_shard *cs = fenced_shard(&e, &m, &a, NULL);
    if (cs == NULL) {
        fenced_done(&e, m, cs, a);
        return;
    }
    int64_t now = hl_now_mono_ms();
    hl_changelog_tick(cs, a, 3, 0, now);
    CHECK(hl_changelog_tick(cs, a, 3, 0, now + 1000) == 1);     /* encoded, held */
    int64_t before = high_watermark(&e);
    CHECK(lose(&e, m));
    int rc = hl_changelog_flush_now(cs, a, 3, hl_now_mono_ms() + 5000);
    hl_producer_flush(e.prod, 5000);
    int64_t after = high_watermark(&e);
    CHECKF(rc != 0 && after == before && hl_changelog_durable(cs) < 3,
           "flush_now after the loss: rc %d, %lld records written, durable %lld", rc,
           (long long)(after - before), (long long)hl_changelog_durable(cs));
    fenced_done(&e, m, cs, a);
}

/* hl_changelog_opts.member_gone, the worker's (worker_start.c). */
static int member_gone(void *arg)
{
    return hl_member_gone(arg);
}

/* The member's id reset by the coordinator, as a session that ran out
 * resets it: 1 once librdkafka says "". */
static int reset_id(env *e, rd_kafka_t *m)
{
    rd_kafka_mock_push_request_errors(e->mock, HEARTBEAT_KEY, 1,
                                      RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID);
    for (int64_t end = hl_now_mono_ms() + 5000; hl_now_mono_ms() < end; usleep(10000)) {
        char *id = rd_kafka_memberid(m);
        int reset = id != NULL && id[0] == '\0';
        rd_kafka_mem_free(m, id);
        if (reset)
            return 1;
    }
    return 0;
}

typedef struct reset_case {
    env *e;
    rd_kafka_t *m;
    hl_changelog_shard *cs;
    hl_table *tbl;
} reset_case;

/* Inside the revocation callback, where a release's flushes run: the
 * flush's rows delivered, then the member id reset. librdkafka leaves the
 * assignment unmarked there; the checkpoint must not go all the same. */
static void flush_across_reset(void *arg)
{
    reset_case *rc = arg;
    env *e = rc->e;
    int64_t now = hl_now_mono_ms();
    hl_changelog_tick(rc->cs, rc->tbl, 3, 3, now);
    CHECK(hl_changelog_tick(rc->cs, rc->tbl, 3, 3, now + 1000) == 1);     /* encoded */
    CHECK(hl_changelog_tick(rc->cs, rc->tbl, 3, 3, now + 1000) == 1);     /* rows out */
    hl_producer_flush(e->prod, 5000);
    int64_t before = high_watermark(e);
    CHECK(reset_id(e, rc->m));
    CHECKF(!rd_kafka_assignment_lost(rc->m), "librdkafka marked the assignment lost: "
           "the case no longer shows what it is for");
    hl_changelog_tick(rc->cs, rc->tbl, 3, 3, now + 1000);   /* would send the checkpoint */
    int rc_now = hl_changelog_flush_now(rc->cs, rc->tbl, 3, hl_now_mono_ms() + 1000);
    hl_producer_flush(e->prod, 5000);
    int64_t after = high_watermark(e);
    uint64_t fenced = hl_metrics_counter_sum(e->reg, "halflife_changelog_fenced_writes_total");
    CHECKF(after == before && rc_now != 0 && hl_changelog_durable(rc->cs) < 3 && fenced == 1,
           "after the member id reset: %lld records written (a checkpoint), flush_now %d, "
           "durable %lld, fenced writes %llu", (long long)(after - before), rc_now,
           (long long)hl_changelog_durable(rc->cs), (unsigned long long)fenced);
}

/* A session that runs out inside a revocation callback resets the member
 * id, and librdkafka 2.0.2 does not mark the assignment lost there
 * (rd_kafka_cgrp_revoke_all_rejoin_maybe does nothing while rebalancing):
 * a release's flush in progress then must still refuse its checkpoint,
 * which would land after the next owner's claim. Before, fenced() looked
 * at rd_kafka_assignment_lost() alone, and the checkpoint went. The
 * revocation comes from the coordinator's "rebalance in progress" answer
 * to a heartbeat; the eager protocol revokes everything then. */
static void test_no_checkpoint_after_member_reset(void)
{
    env e;
    hl_wshared ctx = {0};
    reset_case rc = {.e = &e};
    in_revocation rev = {.fn = flush_across_reset, .arg = &rc};
    rc.cs = fenced_shard(&e, &rc.m, &rc.tbl, &rev);
    if (rc.cs == NULL) {
        fenced_done(&e, rc.m, rc.cs, rc.tbl);
        return;
    }
    ctx.consumer = rc.m;
    char *id = rd_kafka_memberid(rc.m);
    atomic_store(&ctx.member_mark, hl_member_mark(id));   /* as at the assignment */
    rd_kafka_mem_free(rc.m, id);
    e.cl->o.member_gone = member_gone;
    e.cl->o.member_arg = &ctx;
    rd_kafka_mock_push_request_errors(e.mock, HEARTBEAT_KEY, 1,
                                      RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS);
    for (int64_t end = hl_now_mono_ms() + 10000; !rev.ran && hl_now_mono_ms() < end;) {
        rd_kafka_message_t *rkm = rd_kafka_consumer_poll(rc.m, 100);
        if (rkm)
            rd_kafka_message_destroy(rkm);
    }
    CHECKF(rev.ran, "no revocation came");
    e.cl->o.member_gone = NULL;
    fenced_done(&e, rc.m, rc.cs, rc.tbl);
}

int main(void)
{
    hl_log_set_level(HL_LOG_ERROR);
    ct_init_e_in();
    RUN(test_no_checkpoint_after_loss);
    RUN(test_no_encoded_flush_after_loss);
    RUN(test_no_checkpoint_after_member_reset);
    TEST_EXIT();
}
