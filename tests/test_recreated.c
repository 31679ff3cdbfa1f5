/* test_recreated.c - the check at assignment that the input topic was
 * deleted and created again (worker/recreated.c). Its verdict throws the
 * partition's offsets away and sets its snapshots aside, so it must not
 * follow one answer that is wrong for a moment: a broker whose metadata
 * lags (a leader that just moved, a broker before KIP-207) can answer a
 * high watermark below the true one. librdkafka's mock cluster always
 * answers from the partition's one log, so the broker's answers here are
 * a script in place of rd_kafka_query_watermark_offsets. */
#define T_SUITE "test_recreated"
#include "test.h"

#include "log.h"
#include "recreated.h"

typedef struct answer {
    rd_kafka_resp_err_t err;
    int64_t             low, high;
} answer;

typedef struct script {
    const answer *a;
    int           n, next;
} script;

/* The next scripted answer; past the script's end, the last one again. */
static rd_kafka_resp_err_t scripted(const hl_recreated_check *c, int32_t p, int64_t *low,
                                    int64_t *high)
{
    script *s = c->arg;
    const answer *a = &s->a[s->next < s->n ? s->next : s->n - 1];
    s->next++;
    *low = a->low;
    *high = a->high;
    return a->err;
}

static void check_init(hl_recreated_check *c, script *s, const answer *a, int n)
{
    *s = (script){.a = a, .n = n};
    hl_recreated_init(c, NULL, "behaviour-events", 0);
    c->query = scripted;
    c->arg = s;
    c->confirm_ms = 20;         /* the cases need a wait, not half a second of it */
}

/* The restored offset 1000 against a partition holding 0..1499, answered
 * once as if it ended at 400: the offsets are the topic's, not a new one's. */
static void test_one_low_answer_is_not_a_recreation(void)
{
    const answer a[] = {{0, 0, 400}, {0, 0, 1500}};
    hl_recreated_check c;
    script s;
    int64_t start = -7, high = -7;
    check_init(&c, &s, a, 2);
    CHECKF(hl_recreated_check_partition(&c, 3, 1000, &start, &high) == 0,
           "a single high watermark of 400 below offset 1000 was taken as a recreated topic "
           "(queries=%d)", s.next);
    CHECK(c.skip == 0);
}

/* Two answers a wait apart both end below the offset: recreated, read
 * from the second answer's start (or end, with auto.offset.reset=latest). */
static void test_two_answers_beyond_are_a_recreation(void)
{
    const answer a[] = {{0, 0, 40}, {0, 2, 45}};
    hl_recreated_check c;
    script s;
    int64_t start = -7, high = -7;
    check_init(&c, &s, a, 2);
    CHECK(hl_recreated_check_partition(&c, 0, 1000, &start, &high) == 1);
    CHECKF(s.next == 2, "queries=%d, want 2", s.next);
    CHECKF(start == 2 && high == 45, "start=%lld high=%lld", (long long)start,
           (long long)high);
    check_init(&c, &s, a, 2);
    c.latest = 1;
    CHECK(hl_recreated_check_partition(&c, 0, 1000, &start, &high) == 1);
    CHECKF(start == 45, "start=%lld with latest, want 45", (long long)start);
}

/* An offset within the partition asks once; an offset not restored not at all. */
static void test_offset_within_asks_once(void)
{
    const answer a[] = {{0, 0, 1500}};
    hl_recreated_check c;
    script s;
    int64_t start, high;
    check_init(&c, &s, a, 1);
    CHECK(hl_recreated_check_partition(&c, 0, 1500, &start, &high) == 0);
    CHECKF(s.next == 1, "queries=%d, want 1", s.next);
    CHECK(hl_recreated_check_partition(&c, 0, 0, &start, &high) == 0);
    CHECK(hl_recreated_check_partition(&c, 0, -1001, &start, &high) == 0);
    CHECKF(s.next == 1, "queries=%d, want 1", s.next);
}

/* A confirming query that times out: no verdict (the offsets stay), and
 * the assignment's other checks are given up as after any unanswered one. */
static void test_unanswered_confirmation_gives_up(void)
{
    const answer a[] = {{0, 0, 40}, {RD_KAFKA_RESP_ERR__TIMED_OUT, -1, -1}, {0, 0, 40}};
    hl_recreated_check c;
    script s;
    int64_t start, high;
    check_init(&c, &s, a, 3);
    CHECK(hl_recreated_check_partition(&c, 0, 1000, &start, &high) == 0);
    CHECK(c.skip == 1);
    int asked = s.next;
    CHECK(hl_recreated_check_partition(&c, 1, 1000, &start, &high) == 0);
    CHECKF(s.next == asked, "queried again after a timeout (%d, %d)", asked, s.next);
}

/* Every partition of an assignment answered low once (a broker lagging
 * for all of them): the waits before the confirmations stop at the
 * assignment's budget, so the rebalance is not held for 64 waits. */
static void test_waits_are_bounded(void)
{
    const answer a[] = {{0, 0, 400}, {0, 0, 1500}};
    hl_recreated_check c;
    script s;
    int64_t start, high;
    hl_recreated_init(&c, NULL, "behaviour-events", 0);
    CHECK(c.confirm_ms > 0 && c.wait_left_ms >= c.confirm_ms);
    check_init(&c, &s, a, 2);
    c.wait_left_ms = 50;
    for (int p = 0; p < 8; p++) {
        s.next = 0;
        CHECK(hl_recreated_check_partition(&c, p, 1000, &start, &high) == 0);
        CHECKF(s.next == 2, "partition %d: queries=%d, want 2", p, s.next);
    }
    CHECKF(c.wait_left_ms == 0, "wait_left_ms=%d after 8 confirmations", c.wait_left_ms);
}

/* Once a partition is confirmed recreated, the topic is known to be new:
 * the assignment's other partitions are still asked twice, with no wait. */
static void test_no_wait_after_a_confirmed_recreation(void)
{
    const answer a[] = {{0, 0, 40}};
    hl_recreated_check c;
    script s;
    int64_t start, high;
    check_init(&c, &s, a, 1);
    CHECK(hl_recreated_check_partition(&c, 0, 1000, &start, &high) == 1);
    int left = c.wait_left_ms;
    CHECK(left == HL_WATERMARK_TIMEOUT_MS - 20);
    CHECK(hl_recreated_check_partition(&c, 1, 1000, &start, &high) == 1);
    CHECKF(s.next == 4 && c.wait_left_ms == left, "queries=%d wait_left_ms=%d (was %d)",
           s.next, c.wait_left_ms, left);
}

int main(void)
{
    hl_log_set_level(HL_LOG_ERROR);   /* the checks' warnings are expected here */
    RUN(test_one_low_answer_is_not_a_recreation);
    RUN(test_two_answers_beyond_are_a_recreation);
    RUN(test_offset_within_asks_once);
    RUN(test_unanswered_confirmation_gives_up);
    RUN(test_waits_are_bounded);
    RUN(test_no_wait_after_a_confirmed_recreation);
    TEST_EXIT();
}
