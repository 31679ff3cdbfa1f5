/* test_pace.c - the send schedule of worker/pace.c: it holds a rate, never
 * waits at rate 0, and catches up after a stall instead of shifting the
 * schedule. Timings are lower bounds where sleep decides them; the upper
 * bounds are loose, for a loaded machine. */
#define T_SUITE "test_pace"
#include "test.h"

#include "log.h"
#include "pace.h"

#include <time.h>

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static void test_holds_rate(void)
{
    hl_pace pc;
    hl_pace_init(&pc, 2000);
    int64_t t0 = hl_now_mono_us();
    for (int i = 0; i < 100; i++)
        hl_pace_sent(&pc);
    int64_t took_us = hl_now_mono_us() - t0;
    /* The 100th event is due 50 ms after the start; waits under 0.5 ms are skipped. */
    CHECKF(took_us >= 49000, "100 events at 2000/s took %lld us", (long long)took_us);
    CHECKF(took_us < 2000000, "100 events at 2000/s took %lld us", (long long)took_us);
    CHECK(pc.n_sent == 100);
    CHECK(hl_pace_next_us(&pc) == pc.start_us + 50000);
}

static void test_zero_rate_never_waits(void)
{
    hl_pace pc;
    hl_pace_init(&pc, 0);
    int64_t t0 = hl_now_mono_us();
    for (int i = 0; i < 100000; i++)
        hl_pace_sent(&pc);
    int64_t took_us = hl_now_mono_us() - t0;
    CHECKF(took_us < 200000, "100000 unpaced events took %lld us", (long long)took_us);
    CHECK(pc.n_sent == 100000);
}

static void test_catches_up_after_stall(void)
{
    hl_pace pc;
    hl_pace_init(&pc, 1000);
    sleep_ms(30);
    /* 20 events were due in the 30 ms just slept: none of them waits (a
     * schedule restarted at each event would wait 1 ms for every one). */
    int64_t t0 = hl_now_mono_us();
    for (int i = 0; i < 20; i++)
        hl_pace_sent(&pc);
    int64_t took_us = hl_now_mono_us() - t0;
    CHECKF(took_us < 15000, "20 overdue events took %lld us", (long long)took_us);
}

int main(void)
{
    RUN(test_holds_rate);
    RUN(test_zero_rate_never_waits);
    RUN(test_catches_up_after_stall);
    TEST_EXIT();
}
