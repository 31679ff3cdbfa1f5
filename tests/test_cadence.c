/* test_cadence.c - the batch-closing rule of worker/cadence.c, driven with
 * numbers (no clock): low rates refresh at once, rising rates wait for the
 * keep-up cycle a / (1 - b r), batch.max.ms and batch.max.messages bound
 * it, and the online fit recovers a and b from measured refreshes. */
#define T_SUITE "test_cadence"
#include "test.h"

#include "cadence.h"

#include <math.h>

static hl_cadence_in live(int n, double age_ms, double rate_per_ms, double a_ms, double b_ms)
{
    hl_cadence_in in = {.n_taken = n, .max_messages = 10000, .age_ms = age_ms, .max_ms = 5,
                        .rate_per_ms = rate_per_ms, .a_ms = a_ms, .b_ms = b_ms};
    return in;
}

/* 100 events/s at a 1.2 ms refresh (100k items, batch 1): no wait at all. */
static void test_low_rate_refreshes_at_once(void)
{
    hl_cadence_in in = live(1, 0.05, 0.1, 1.2, 0.1);
    CHECKF(hl_cadence_wait_ms(&in) == 0, "waited %.3f ms", hl_cadence_wait_ms(&in));
    /* Nothing known yet (a fresh thread): refresh at once too. */
    in = live(1, 0, 5, 0, 0);
    CHECK(hl_cadence_wait_ms(&in) == 0);
}

/* 5 records/ms, a = 1.2, b = 0.1: the cycle is 1.2 / (1 - 0.5) = 2.4 ms;
 * a batch whose oldest record is 0.4 ms old waits the 2 ms left. */
static void test_high_rate_waits_for_the_cycle(void)
{
    CHECK(fabs(hl_cadence_cycle_ms(1.2, 0.1, 5, 5) - 2.4) < 1e-9);
    hl_cadence_in in = live(3, 0.4, 5, 1.2, 0.1);
    double w = hl_cadence_wait_ms(&in);
    CHECKF(fabs(w - 2.0) < 1e-9, "waited %.3f ms, want 2.0", w);
    in.age_ms = 2.4;
    CHECK(hl_cadence_wait_ms(&in) == 0);
}

/* The wait grows with the rate (batches grow only as the rate demands). */
static void test_wait_grows_with_rate(void)
{
    double prev = -1;
    for (double r = 1; r <= 8; r += 1) {
        hl_cadence_in in = live(1, 0, r, 1.0, 0.1);
        double w = hl_cadence_wait_ms(&in);
        CHECKF(w >= prev, "rate %.0f/ms waited %.3f < %.3f", r, w, prev);
        prev = w;
    }
    CHECK(prev > 0);
}

/* batch.max.ms is the upper bound, also beyond the keep-up point (b r >= 1). */
static void test_max_ms_bounds(void)
{
    CHECK(hl_cadence_cycle_ms(1, 0.5, 4, 5) == 5);
    hl_cadence_in in = live(10, 1, 4, 1, 0.5);
    CHECKF(hl_cadence_wait_ms(&in) == 4, "waited %.3f, want 4", hl_cadence_wait_ms(&in));
    in.age_ms = 5;
    CHECK(hl_cadence_wait_ms(&in) == 0);
    in.age_ms = 7;                      /* late already: never negative */
    CHECK(hl_cadence_wait_ms(&in) == 0);
    in = live(10, 0, 4, 1, 0.5);
    in.max_ms = 0;
    CHECK(hl_cadence_wait_ms(&in) == 0);
}

static void test_full_batch_goes(void)
{
    hl_cadence_in in = live(10000, 0, 5, 1.2, 0.1);
    CHECK(hl_cadence_wait_ms(&in) == 0);
}

/* A wait that would see less than one record is pure delay. */
static void test_no_wait_for_nothing(void)
{
    hl_cadence_in in = live(1, 0, 0.3, 2.0, 0.01);   /* cycle ~2 ms, 0.6 records in it */
    CHECK(hl_cadence_wait_ms(&in) == 0);
}

/* Before the first record the loop waits out batch.max.ms as before. */
static void test_empty_batch_waits_max(void)
{
    hl_cadence_in in = live(0, 0, 0, 0, 0);
    CHECK(hl_cadence_wait_ms(&in) == 5);
}

static void test_fit_recovers_a_and_b(void)
{
    hl_cadence_fit f = {0};
    double a, b;
    hl_cadence_fit_get(&f, &a, &b);
    CHECK(a == 0 && b == 0);
    for (int i = 0; i < 200; i++) {
        double n = 1 + (i * 37) % 256;
        double noise = ((i * 7919) % 13 - 6) * 0.001;
        hl_cadence_fit_add(&f, n, 1.2 + 0.08 * n + noise, 0.99);
    }
    hl_cadence_fit_get(&f, &a, &b);
    CHECKF(fabs(a - 1.2) < 0.02 && fabs(b - 0.08) < 0.001, "a %.4f b %.5f", a, b);
}

/* One batch size only: b is the cost per record, a 0; junk is skipped. */
static void test_fit_degenerate(void)
{
    hl_cadence_fit f = {0};
    double a, b;
    for (int i = 0; i < 10; i++)
        hl_cadence_fit_add(&f, 4, 2.0, 0.9);
    hl_cadence_fit_add(&f, NAN, 1.0, 0.9);
    hl_cadence_fit_add(&f, 3, -1.0, 0.9);
    hl_cadence_fit_get(&f, &a, &b);
    CHECKF(a == 0 && fabs(b - 0.5) < 1e-9, "a %.4f b %.4f", a, b);
}

/* The fit follows a machine that slows down (decay forgets the old). */
static void test_fit_follows_change(void)
{
    hl_cadence_fit f = {0};
    double a, b;
    for (int i = 0; i < 100; i++)
        hl_cadence_fit_add(&f, 1 + i % 50, 0.5 + 0.01 * (1 + i % 50), 0.9);
    for (int i = 0; i < 100; i++)
        hl_cadence_fit_add(&f, 1 + i % 50, 1.0 + 0.05 * (1 + i % 50), 0.9);
    hl_cadence_fit_get(&f, &a, &b);
    CHECKF(fabs(a - 1.0) < 0.01 && fabs(b - 0.05) < 0.001, "a %.4f b %.5f", a, b);
}

static void test_rate(void)
{
    hl_cadence_rate r = {0};
    CHECK(hl_cadence_rate_get(&r) == 0);
    for (int i = 0; i < 50; i++)
        hl_cadence_rate_add(&r, 10, 2, 0.9);
    CHECK(fabs(hl_cadence_rate_get(&r) - 5) < 1e-9);
    hl_cadence_rate_add(&r, NAN, 2, 0.9);
    CHECK(fabs(hl_cadence_rate_get(&r) - 5) < 1e-9);
}

int main(void)
{
    RUN(test_low_rate_refreshes_at_once);
    RUN(test_high_rate_waits_for_the_cycle);
    RUN(test_wait_grows_with_rate);
    RUN(test_max_ms_bounds);
    RUN(test_full_batch_goes);
    RUN(test_no_wait_for_nothing);
    RUN(test_empty_batch_waits_max);
    RUN(test_fit_recovers_a_and_b);
    RUN(test_fit_degenerate);
    RUN(test_fit_follows_change);
    RUN(test_rate);
    TEST_EXIT();
}
