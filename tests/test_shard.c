/* test_shard.c - what a shard notes of the offsets it consumes (shard.h):
 * the batch's bounds, the gaps, records the consumer jumped over
 * (deleted by retention before they were read, so lost to the state: the
 * embedded broker did that silently to a worker that fell behind), and the
 * re-deliveries, records it handed over twice (dropped). */
#define T_SUITE "test_shard"
#include "test.h"

#include "shard.h"

#include <string.h>

static void fresh(hl_shard *sh, int64_t restored)
{
    memset(sh, 0, sizeof *sh);
    sh->next_offset = restored;
    hl_shard_batch_begin(sh);
}

static void test_contiguous_offsets_skip_nothing(void)
{
    hl_shard sh;
    fresh(&sh, 100);
    for (int64_t o = 100; o < 110; o++)
        hl_shard_saw(&sh, o);
    CHECK(sh.skipped == 0);
    CHECK(sh.batch_first_off == 100 && sh.batch_next_offset == 110 && sh.n_seen == 10);
}

/* Restored at 100, the broker's log now starts at 150: 50 lost. */
static void test_gap_after_restore_counted(void)
{
    hl_shard sh;
    fresh(&sh, 100);
    hl_shard_saw(&sh, 150);
    hl_shard_saw(&sh, 151);
    CHECKF(sh.skipped == 50 && sh.skip_first == 100, "skipped %lld from %lld",
           (long long)sh.skipped, (long long)sh.skip_first);
}

/* Gaps inside a batch add up; the first one's start is kept. */
static void test_gaps_in_a_batch_add_up(void)
{
    hl_shard sh;
    fresh(&sh, 0);
    hl_shard_saw(&sh, 0);
    hl_shard_saw(&sh, 5);       /* 1..4 */
    hl_shard_saw(&sh, 6);
    hl_shard_saw(&sh, 10);      /* 7..9 */
    CHECKF(sh.skipped == 7 && sh.skip_first == 1, "skipped %lld from %lld",
           (long long)sh.skipped, (long long)sh.skip_first);
    /* The next batch continues from the last one applied. */
    sh.next_offset = sh.batch_next_offset;
    hl_shard_batch_begin(&sh);
    CHECK(sh.skipped == 0);
    hl_shard_saw(&sh, 11);
    CHECK(sh.skipped == 0);
}

/* A fresh shard (no snapshot, -1) cannot know where the log started; a
 * replay below the expected offset (a seek back) is no gap either. */
static void test_no_gap_without_expectation_or_backwards(void)
{
    hl_shard sh;
    fresh(&sh, -1);
    hl_shard_saw(&sh, 5000);
    CHECK(sh.skipped == 0);
    fresh(&sh, 100);
    hl_shard_saw(&sh, 40);
    CHECK(sh.skipped == 0);
}

/* What the batch loop does with each record: drop a re-delivery, else
 * note it as seen. Returns 1 when it was seen. */
static int take(hl_shard *sh, int64_t offset)
{
    if (hl_shard_redelivered(sh, offset))
        return 0;
    hl_shard_saw(sh, offset);
    return 1;
}

/* librdkafka 2.0.2 hands a record over again after a rebalance's pause
 * and resume (README.md, "Rebalance and librdkafka 2.0.2"): a record below
 * the position is dropped and counted, in the batch that took the first
 * copy and in a later one, and nothing after it is. */
static void test_redelivery_below_position_dropped(void)
{
    hl_shard sh;
    fresh(&sh, 100);
    for (int64_t o = 100; o < 105; o++)
        CHECK(take(&sh, o) == 1);
    CHECK(take(&sh, 104) == 0);                     /* the same batch */
    CHECK(take(&sh, 105) == 1);
    CHECKF(sh.redelivered == 1 && sh.redeliver_first == 104 && sh.n_seen == 6 &&
           sh.skipped == 0, "redelivered %lld from %lld, seen %d, skipped %lld",
           (long long)sh.redelivered, (long long)sh.redeliver_first, sh.n_seen,
           (long long)sh.skipped);
    sh.next_offset = sh.batch_next_offset;          /* the batch ends */
    hl_shard_batch_begin(&sh);
    CHECK(sh.redelivered == 0);
    CHECK(take(&sh, 103) == 0 && take(&sh, 104) == 0 && take(&sh, 105) == 0);
    CHECK(take(&sh, 106) == 1 && take(&sh, 107) == 1);
    CHECKF(sh.redelivered == 3 && sh.redeliver_first == 103 && sh.n_seen == 2,
           "redelivered %lld from %lld, seen %d", (long long)sh.redelivered,
           (long long)sh.redeliver_first, sh.n_seen);
}

/* Restored at 100 (the snapshot holds every event below): a fetch that
 * starts below it is a re-delivery too. A fresh shard has no position
 * until its first record. */
static void test_redelivery_below_restore_and_fresh_shard(void)
{
    hl_shard sh;
    fresh(&sh, 100);
    CHECK(take(&sh, 99) == 0 && take(&sh, 100) == 1);
    fresh(&sh, -1);
    CHECK(take(&sh, 40) == 1 && take(&sh, 41) == 1 && take(&sh, 40) == 0);
}

/* A record that waits for its schema is not seen (batch.c parks it): its
 * second copy waits too, and when both come back the first is taken and
 * the second dropped. */
static void test_waiting_record_taken_once(void)
{
    hl_shard sh;
    fresh(&sh, 10);
    CHECK(take(&sh, 10) == 1);
    CHECK(!hl_shard_redelivered(&sh, 11));          /* parked, not seen */
    CHECK(!hl_shard_redelivered(&sh, 11));          /* its second copy: parked behind */
    CHECK(take(&sh, 11) == 1 && take(&sh, 11) == 0);
    CHECK(sh.redelivered == 1 && sh.n_seen == 2);
}

int main(void)
{
    RUN(test_contiguous_offsets_skip_nothing);
    RUN(test_gap_after_restore_counted);
    RUN(test_gaps_in_a_batch_add_up);
    RUN(test_no_gap_without_expectation_or_backwards);
    RUN(test_redelivery_below_position_dropped);
    RUN(test_redelivery_below_restore_and_fresh_shard);
    RUN(test_waiting_record_taken_once);
    TEST_EXIT();
}
