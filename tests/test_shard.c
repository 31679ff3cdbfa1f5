/* test_shard.c - what a shard notes of the offsets it consumes (shard.h):
 * the batch's bounds, and the gaps, records the consumer jumped over
 * (deleted by retention before they were read, so lost to the state: the
 * embedded broker did that silently to a worker that fell behind). */
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

int main(void)
{
    RUN(test_contiguous_offsets_skip_nothing);
    RUN(test_gap_after_restore_counted);
    RUN(test_gaps_in_a_batch_add_up);
    RUN(test_no_gap_without_expectation_or_backwards);
    TEST_EXIT();
}
