/* test_changelog_size.c - what the changelog's sizes cost: the memory a
 * restore keeps for its table's index, and the record limit a flush
 * holds its rows to (the state topic's max.message.bytes too).
 *
 * Over TCP to librdkafka's mock cluster (in this process, as
 * test_changelog.c runs it). A restore sizes an empty table's index once
 * for every record of the range it reads, so that it never doubles
 * mid-read; on a topic not yet compacted that is many times the users it
 * finds, and the index kept that size for good. */
#define T_SUITE "test_changelog_size"
#include "test.h"

#include "changelog.h"
#include "changelog_internal.h"
#include "changelog_mock_util.h"
#include "changelog_test_util.h"
#include "hl.h"
#include "log.h"
#include "producer.h"

#include <librdkafka/rdkafka_mock.h>

#define N_OLD 30000             /* records of an uncompacted past */

/* n records of no halflife writer (no epoch header: a restore counts them
 * bad and skips them) on the state topic, standing for its old records. */
static void old_records(env *e, int n)
{
    rd_kafka_t *rk = hl_producer_handle(e->prod);
    for (int i = 0; i < n; i++) {
        rd_kafka_resp_err_t err;
        while ((err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("st"),
                                        RD_KAFKA_V_PARTITION(0), RD_KAFKA_V_KEY("k", 1),
                                        RD_KAFKA_V_VALUE("v", 1), RD_KAFKA_V_END)) ==
               RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(rk, 10);
        CHECKF(err == 0, "produce: %s", rd_kafka_err2str(err));
    }
    CHECK(rd_kafka_flush(rk, 10000) == 0);
}

/* The table's bytes beyond those of a table that holds the same users
 * without a restore. */
static size_t bytes_over(env *e, const hl_table *tbl, const char *user)
{
    hl_table_stats st, ref;
    hl_table *plain = table(e);
    events(plain, NULL, user, 0, 3);
    hl_table_stats_get(tbl, &st);
    hl_table_stats_get(plain, &ref);
    hl_table_destroy(plain);
    return st.bytes > ref.bytes ? st.bytes - ref.bytes : 0;
}

/* 30,000 old records and one user: the index a restore leaves holds a
 * user, not 30,000 (512 KiB; a partition's 10 million records at the
 * default state.max.users kept 128 MiB). */
static void test_restore_index_fits_users(void)
{
    env e;
    char err[512] = "";
    if (env_start(&e) != 0) {
        env_stop(&e);
        return;
    }
    old_records(&e, N_OLD);
    hl_table *a = table(&e), *b = table(&e);
    hl_changelog_restored ra, rb;
    CHECKF(hl_changelog_restore(e.cl, 0, a, NULL, &ra, err, sizeof err) == 0, "%s", err);
    hl_changelog_shard *cs = hl_changelog_shard_create(e.cl, 0, a, &ra);
    events(a, NULL, "u", 0, 3);
    CHECK(hl_changelog_flush_now(cs, a, 3, hl_now_mono_ms() + 10000) == 0);
    CHECKF(hl_changelog_restore(e.cl, 0, b, NULL, &rb, err, sizeof err) == 0, "%s", err);
    size_t over = bytes_over(&e, b, "u");
    CHECKF(has(b, "u") && rb.next_offset == 3 && over < 64 * 1024,
           "the restore over %d old records: user read %d, next offset %lld, %zu bytes "
           "more than a table of its one user (want < 65536)", N_OLD, has(b, "u"),
           (long long)rb.next_offset, over);
    hl_table_on_evict(a, NULL, NULL);
    hl_changelog_shard_destroy(cs);
    hl_table_destroy(a);
    hl_table_destroy(b);
    env_stop(&e);
}

/* A state topic whose max.message.bytes is below the producer's
 * message.max.bytes (kafka.message.max.bytes raised, as
 * changelog_rows_may_not_fit advises, over a topic made before, or
 * created with the broker's default). The broker refuses a record above
 * the topic's limit, so a flush holding one failed at every interval, for
 * good: the checkpoint never moved and each restart replayed more. The
 * limit a broker describes lowers the record limit, and the row is left
 * out as one above the producer's is (test_changelog.c,
 * test_oversized_row_left_out). librdkafka's mock cluster neither
 * answers DescribeConfigs nor enforces max.message.bytes, so the limit
 * is handed in as a broker would describe it. */
static void test_topic_limit_lowers_record_max(void)
{
    env e;
    char err[512] = "";
    if (env_start(&e) != 0) {
        env_stop(&e);
        return;
    }
    /* the mock does not tell: the producer's limit stays */
    CHECKF(e.cl->record_max == HL_CHANGELOG_RECORD_MAX, "record_max %zu", e.cl->record_max);
    CHECK(hl_changelog_topic_limit(e.cl, "5000000") == HL_CHANGELOG_RECORD_MAX);
    CHECK(hl_changelog_topic_limit(e.cl, "12x") == HL_CHANGELOG_RECORD_MAX);
    CHECK(hl_changelog_topic_limit(e.cl, "-1") == HL_CHANGELOG_RECORD_MAX);
    CHECK(hl_changelog_topic_limit(e.cl, "1000") == 1000);
    e.o.history = 64;           /* u2's 40 events make a row of 1 KB+ */
    e.cl->history = 64;
    e.cl->row_max = hl_snapshot_row_max(3, DIM, 64);
    hl_table *a = table(&e), *b = table(&e);
    hl_changelog_restored ra, rb;
    CHECKF(hl_changelog_restore(e.cl, 0, a, NULL, &ra, err, sizeof err) == 0, "%s", err);
    hl_changelog_shard *cs = hl_changelog_shard_create(e.cl, 0, a, &ra);
    events(a, NULL, "u1", 0, 3);
    events(a, NULL, "u2", 3, 43);
    int rc = hl_changelog_flush_now(cs, a, 43, hl_now_mono_ms() + 10000);
    hl_counter *big = hl_metrics_counter(e.reg, "halflife_changelog_oversized_rows_total",
                                         "x", NULL);
    CHECKF(rc == 0 && hl_changelog_durable(cs) == 43 && hl_counter_get(big) == 1,
           "a row above the topic's limit: rc %d, durable %lld (want 43), oversized %llu "
           "(want 1)", rc, (long long)hl_changelog_durable(cs),
           (unsigned long long)hl_counter_get(big));
    CHECKF(hl_changelog_restore(e.cl, 0, b, NULL, &rb, err, sizeof err) == 0, "%s", err);
    CHECKF(rb.next_offset == 43 && has(b, "u1") && !has(b, "u2"),
           "restored at %lld: u1 %d u2 %d (want 43 1 0)", (long long)rb.next_offset,
           has(b, "u1"), has(b, "u2"));
    hl_table_on_evict(a, NULL, NULL);
    hl_changelog_shard_destroy(cs);
    hl_table_destroy(a);
    hl_table_destroy(b);
    env_stop(&e);
}

int main(void)
{
    hl_log_set_level(HL_LOG_ERROR);
    ct_init_e_in();
    RUN(test_restore_index_fits_users);
    RUN(test_topic_limit_lowers_record_max);
    TEST_EXIT();
}
