/* test_producer.c - the worker's producer (worker/producer.c) and the one
 * kafka.* setter (worker/kafka_conf.c) without a broker: configuration
 * errors name the key, and records that cannot be delivered are counted by
 * the producer's own statistics and by their ticket, with the first cause.
 * A ticket is stamped with the time of the report that completed it
 * (against librdkafka's in-process mock broker). Delivery to a broker is
 * otherwise covered by tests/integration/test_broker_produce.py
 * (`halflife produce`) and the worker's integration tests. */
#define T_SUITE "test_producer"
#include "test.h"

#include "hl.h"
#include "kafka_conf.h"
#include "log.h"
#include "producer.h"

#include <stdio.h>
#include <unistd.h>

static void test_conf_set_names_key(void)
{
    char err[256] = "";
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    CHECK(hl_kafka_conf_set(conf, "linger.ms", "5", err, sizeof err) == 0);
    CHECK(hl_kafka_conf_set(conf, "no.such.key", "1", err, sizeof err) == HL_EINVAL);
    CHECKF(strncmp(err, "kafka.no.such.key=1: ", 21) == 0, "err \"%s\"", err);
    rd_kafka_conf_destroy(conf);
}

static void test_create_refuses_bad_value(void)
{
    char err[256] = "";
    hl_kafka_prop props[] = {{"bootstrap.servers", "127.0.0.1:1"}, {"linger.ms", "abc"}};
    hl_producer *p = hl_producer_create(props, 2, NULL, err, sizeof err);
    CHECK(p == NULL);
    CHECKF(strstr(err, "kafka.linger.ms=abc") != NULL, "err \"%s\"", err);
    hl_producer_destroy(p, 0);
}

/* Nothing listens on port 1: with a short message.timeout.ms every record
 * fails, and flush returns once each has its report. */
static void test_undeliverable_counted(void)
{
    char err[256] = "";
    hl_kafka_prop props[] = {
        {"bootstrap.servers", "127.0.0.1:1"}, {"message.timeout.ms", "200"},
        {"log_level", "0"}, {"group.id", "skipped-for-a-producer"},
    };
    hl_producer *p = hl_producer_create(props, 4, NULL, err, sizeof err);
    CHECKF(p != NULL, "create: %s", err);
    if (p == NULL)
        return;
    hl_ticket t;
    hl_ticket_reset(&t);
    t.fail_counter = NULL;
    CHECK(hl_producer_send(p, "t", -1, "u1", 2, "v", 1, NULL, NULL, err, sizeof err) == 0);
    CHECK(hl_producer_send(p, "t", -1, "u2", 2, "v", 1, NULL, NULL, err, sizeof err) == 0);
    CHECK(hl_producer_send(p, "t", -1, "u3", 2, "v", 1, NULL, &t, err, sizeof err) == 0);
    int in_flight = -1;
    for (int i = 0; i < 20 && in_flight != 0; i++)
        in_flight = hl_producer_flush(p, 500);
    CHECKF(in_flight == 0, "%d still in flight after 10 s", in_flight);
    hl_producer_stats st;
    hl_producer_stats_get(p, &st);
    CHECKF(st.delivered == 0 && st.failed == 3, "delivered %llu failed %llu",
           (unsigned long long)st.delivered, (unsigned long long)st.failed);
    CHECKF(st.first_err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, "first_err %s",
           rd_kafka_err2str(st.first_err));
    CHECK(hl_ticket_done(&t));
    CHECK(atomic_load(&t.failed) == 1);
    hl_producer_destroy(p, 0);
}

/* A ticket that keeps keys gets each failed record's key with its error,
 * whether the report fails it (nothing listens) or the producer refuses it
 * at once (over message.max.bytes): the worker refreshes those
 * users again (flight.c). A delivered record leaves none (the mock). */
static void test_failed_keys_kept(void)
{
    char err[256] = "";
    hl_kafka_prop props[] = {
        {"bootstrap.servers", "127.0.0.1:1"}, {"message.timeout.ms", "200"}, {"log_level", "0"},
        {"message.max.bytes", "1000"},
    };
    static const char big[4096];
    hl_producer *p = hl_producer_create(props, 4, NULL, err, sizeof err);
    CHECKF(p != NULL, "create: %s", err);
    if (p == NULL)
        return;
    hl_ticket t;
    hl_ticket_keys keys = {.mu = PTHREAD_MUTEX_INITIALIZER, .head = NULL, .lost = 0};
    hl_ticket_reset(&t);
    t.fail_counter = NULL;
    t.keys = &keys;
    CHECK(hl_producer_send(p, "t", -1, "user-1", 6, "v", 1, NULL, &t, err, sizeof err) == 0);
    CHECK(hl_producer_send(p, "t", -1, NULL, 0, "v", 1, NULL, &t, err, sizeof err) == 0);
    CHECK(hl_producer_send(p, "t", -1, "user-2", 6, big, sizeof big, NULL, &t, err,
                           sizeof err) == HL_EIO);
    for (int i = 0; i < 20 && hl_producer_flush(p, 500) != 0; i++)
        ;
    CHECK(hl_ticket_done(&t));
    CHECKF(atomic_load(&t.failed) == 3, "failed %d", atomic_load(&t.failed));
    int n = 0, u1 = 0, u2 = 0, empty = 0;
    for (hl_failed_key *k = keys.head; k != NULL; n++) {
        hl_failed_key *next = k->next;
        u1 += k->len == 6 && memcmp(k->key, "user-1", 6) == 0 &&
              k->err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT;
        u2 += k->len == 6 && memcmp(k->key, "user-2", 6) == 0 &&
              k->err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE;
        empty += k->len == 0;
        free(k);
        k = next;
    }
    CHECKF(n == 3 && u1 == 1 && u2 == 1 && empty == 1 && keys.lost == 0,
           "%d keys: user-1 (timed out) %d, user-2 (refused at once) %d, keyless %d, lost %d",
           n, u1, u2, empty, keys.lost);
    hl_producer_destroy(p, 0);
}

/* hl_producer_settle, what teardown runs before it frees the threads
 * whose flights hold tickets: with nothing listening and no message
 * timeout (the worker's default: a list is never given up on by itself),
 * the flush cannot end, so the records are purged, and on return every
 * report has been served: the ticket reads done, with each record failed
 * and counted. Had a report been left for later, it would write into a
 * freed flight. */
static void test_settle_serves_every_report(void)
{
    char err[256] = "";
    hl_kafka_prop props[] = {{"bootstrap.servers", "127.0.0.1:1"}, {"log_level", "0"}};
    hl_producer *p = hl_producer_create(props, 2, NULL, err, sizeof err);
    CHECKF(p != NULL, "create: %s", err);
    if (p == NULL)
        return;
    hl_ticket t;
    hl_ticket_reset(&t);
    t.fail_counter = NULL;
    for (int i = 0; i < 5; i++)
        CHECK(hl_producer_send(p, "t", -1, "u", 1, "v", 1, NULL, &t, err, sizeof err) == 0);
    CHECK(hl_producer_flush(p, 100) > 0);       /* still waiting: no timeout */
    CHECK(!hl_ticket_done(&t));
    int purged = hl_producer_settle(p, 100);
    CHECKF(purged == 5, "settle purged %d", purged);
    CHECKF(hl_ticket_done(&t) && atomic_load(&t.failed) == 5, "pending %d failed %d",
           atomic_load(&t.pending), atomic_load(&t.failed));
    hl_producer_stats st;
    hl_producer_stats_get(p, &st);
    CHECKF(st.failed == 5 && (st.first_err == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
                              st.first_err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT),
           "failed %llu first_err %s", (unsigned long long)st.failed,
           rd_kafka_err2str(st.first_err));
    CHECK(hl_producer_settle(p, 0) == 0);        /* nothing left */
    hl_producer_destroy(p, 0);
}

/* hl_producer_purge(p), what it logged into out (a temporary stderr). */
static uint64_t purge_logged(hl_producer *p, char *out, size_t cap)
{
    FILE *tmp = tmpfile();
    int saved = dup(STDERR_FILENO);
    out[0] = '\0';
    if (tmp == NULL || saved < 0)
        return hl_producer_purge(p);
    fflush(stderr);
    dup2(fileno(tmp), STDERR_FILENO);
    uint64_t n = hl_producer_purge(p);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    rewind(tmp);
    size_t got = fread(out, 1, cap - 1, tmp);
    out[got] = '\0';
    fclose(tmp);
    return n;
}

/* hl_producer_purge, what a release that lets go of undelivered lists
 * runs: every record comes back failed with its key (its owner refreshes
 * it again), and its report is served before the return; but nothing
 * refused those records, so they are counted as purged, on the ticket and
 * in the purged counter, and never in delivery_errors nor the ticket's
 * fail_counter (a DLQ copy's: halflife_dlq_errors_total), nor logged as
 * delivery_failed; only a record without a ticket, which nobody sends
 * again, is logged (record_purged). Before, a purge read as a burst of
 * delivery errors, each logged (event=delivery_failed). */
static void test_purge_not_a_delivery_error(void)
{
    char err[256] = "";
    hl_metrics *reg = hl_metrics_create();
    hl_counter *errors = hl_metrics_counter(reg, "errors", "e", NULL);
    hl_counter *purged = hl_metrics_counter(reg, "purged", "p", NULL);
    hl_counter *fails = hl_metrics_counter(reg, "fails", "f", NULL);
    hl_kafka_prop props[] = {{"bootstrap.servers", "127.0.0.1:1"}, {"log_level", "0"}};
    hl_producer *p = hl_producer_create(props, 2, errors, err, sizeof err);
    CHECKF(p != NULL, "create: %s", err);
    if (p == NULL) {
        hl_metrics_destroy(reg);
        return;
    }
    hl_producer_count_purged(p, purged);
    hl_ticket t;
    hl_ticket_keys keys = {.mu = PTHREAD_MUTEX_INITIALIZER, .head = NULL, .lost = 0};
    hl_ticket_reset(&t);
    t.fail_counter = fails;
    t.keys = &keys;
    for (int i = 0; i < 4; i++)
        CHECK(hl_producer_send(p, "t", -1, "u", 1, "v", 1, NULL, &t, err, sizeof err) == 0);
    CHECK(hl_producer_send(p, "t", -1, "x", 1, "v", 1, NULL, NULL, err, sizeof err) == 0);
    CHECK(hl_producer_flush(p, 100) > 0);       /* still waiting: no timeout */
    char logged[8192];
    uint64_t n = purge_logged(p, logged, sizeof logged);
    CHECKF(n == 5 && hl_ticket_done(&t), "purge reported %llu, ticket pending %d",
           (unsigned long long)n, atomic_load(&t.pending));
    /* One line, for the record nobody sends again (no ticket); none for
     * the lists, whose owner refreshes them and whose caller logs the purge. */
    CHECKF(strstr(logged, "event=delivery_failed") == NULL &&
           strstr(logged, "event=record_purged") != NULL &&
           strstr(strstr(logged, "event=record_purged") + 1, "event=record_purged") == NULL,
           "logged during the purge: %s", logged);
    CHECKF(atomic_load(&t.failed) == 4 && atomic_load(&t.purged) == 4,
           "ticket failed %d purged %d", atomic_load(&t.failed), atomic_load(&t.purged));
    CHECKF(hl_counter_get(errors) == 0 && hl_counter_get(fails) == 0 &&
           hl_counter_get(purged) == 5, "delivery_errors %llu fail_counter %llu purged %llu",
           (unsigned long long)hl_counter_get(errors), (unsigned long long)hl_counter_get(fails),
           (unsigned long long)hl_counter_get(purged));
    int n_keys = 0, purge_err = 0;
    for (hl_failed_key *k = keys.head; k != NULL; n_keys++) {
        hl_failed_key *next = k->next;
        purge_err += k->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
                     k->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT;
        free(k);
        k = next;
    }
    CHECKF(n_keys == 4 && purge_err == 4, "%d keys kept, %d with a purge error", n_keys,
           purge_err);
    hl_producer_stats st;
    hl_producer_stats_get(p, &st);
    CHECKF(st.failed == 5 && st.purged == 5, "stats failed %llu purged %llu",
           (unsigned long long)st.failed, (unsigned long long)st.purged);
    hl_producer_destroy(p, 0);
    hl_metrics_destroy(reg);
}

static int nagle_disabled(hl_producer *p)
{
    char v[16] = "";
    size_t n = sizeof v;
    return rd_kafka_conf_get(rd_kafka_conf(hl_producer_handle(p)), "socket.nagle.disable", v,
                             &n) == RD_KAFKA_CONF_OK && strcmp(v, "true") == 0;
}

/* The report that takes a ticket to zero stamps done_us (a batch's
 * "deliver" stage ends there, not when its thread next looks): between the
 * first send and the poll that served it, 0 before. Nagle is off unless
 * given. test.mock.num.brokers runs a mock broker inside the producer. */
static void test_ticket_done_time(void)
{
    char err[256] = "";
    hl_kafka_prop props[] = {{"test.mock.num.brokers", "1"}, {"log_level", "0"}};
    hl_producer *p = hl_producer_create(props, 2, NULL, err, sizeof err);
    CHECKF(p != NULL, "create: %s", err);
    if (p == NULL)
        return;
    CHECK(nagle_disabled(p));
    hl_ticket t;
    hl_ticket_reset(&t);
    t.fail_counter = NULL;
    CHECK(atomic_load(&t.done_us) == 0);
    int64_t before = hl_now_mono_us();
    for (int i = 0; i < 3; i++)
        CHECK(hl_producer_send(p, "t", -1, "u", 1, "v", 1, NULL, &t, err, sizeof err) == 0);
    CHECK(atomic_load(&t.done_us) == 0);
    for (int i = 0; i < 100 && !hl_ticket_done(&t); i++)
        hl_producer_poll(p, 100);
    int64_t after = hl_now_mono_us(), done = atomic_load(&t.done_us);
    CHECKF(hl_ticket_done(&t) && atomic_load(&t.failed) == 0, "pending %d failed %d",
           atomic_load(&t.pending), atomic_load(&t.failed));
    CHECKF(done >= before && done <= after, "done_us %lld not in [%lld, %lld]",
           (long long)done, (long long)before, (long long)after);
    hl_producer_destroy(p, 1000);
    hl_kafka_prop given[] = {{"test.mock.num.brokers", "1"}, {"socket.nagle.disable", "false"}};
    p = hl_producer_create(given, 2, NULL, err, sizeof err);
    CHECK(p != NULL && !nagle_disabled(p));
    hl_producer_destroy(p, 0);
}

int main(void)
{
    RUN(test_conf_set_names_key);
    RUN(test_create_refuses_bad_value);
    RUN(test_undeliverable_counted);
    RUN(test_failed_keys_kept);
    RUN(test_ticket_done_time);
    RUN(test_settle_serves_every_report);
    RUN(test_purge_not_a_delivery_error);
    TEST_EXIT();
}
