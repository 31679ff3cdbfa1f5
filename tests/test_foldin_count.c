/* test_foldin_count.c - a folded item's bias from its decayed count
 * (core/foldin_count.c): the counts decay with the half-life whatever the
 * arrival order, the fit recovers a line the model's biases lie on, and a
 * fixed set of counts gives the expected bias, capped and uncapped. */
#define T_SUITE "foldin_count"
#include "test.h"
#include "foldin_count.h"
#include "hl.h"

#define H 1000.0        /* half-life, ms */

static void test_counts_decay_in_any_order(void)
{
    hl_item_counts a, b;
    CHECK(hl_item_counts_init(&a, 4, 1, H) == 0);
    CHECK(hl_item_counts_init(&b, 4, 1, H) == 0);
    hl_item_counts_add(&a, 1, 2.0f, 0);
    hl_item_counts_add(&a, 1, 1.0f, 1000);      /* 2 x 1/2 + 1 = 2 at t 1000 */
    hl_item_counts_add(&b, 1, 1.0f, 1000);
    hl_item_counts_add(&b, 1, 2.0f, 0);         /* late: decayed to t 1000 */
    CHECKF(fabs(a.c[1] - 2.0) < 1e-12 && fabs(b.c[1] - 2.0) < 1e-12, "%g %g", a.c[1], b.c[1]);
    CHECK(a.t[1] == 1000 && b.t[1] == 1000);
    hl_item_counts_add(&a, 7, 1.0f, 0);         /* out of range: ignored */
    hl_item_counts_free(&a);
    hl_item_counts_free(&b);
    CHECK(hl_item_counts_init(&b, 0, 1, H) == HL_EINVAL);
    CHECK(b.c == NULL && b.t == NULL);          /* a refused init holds nothing */
}

/* Biases on b = 1 + 2 ln(1 + c) for counts 1, 3, 7 (item 0 never seen: not
 * in the fit, whatever its bias); the fit at a later time decays them. */
static void test_fixed_counts_give_expected_bias(void)
{
    hl_item_counts ic;
    CHECK(hl_item_counts_init(&ic, 4, 1, H) == 0);
    float bias[4] = {50.0f, (float)(1 + 2 * log(2.0)), (float)(1 + 2 * log(4.0)),
                     (float)(1 + 2 * log(8.0))};
    hl_item_counts_add(&ic, 1, 1.0f, 0);
    hl_item_counts_add(&ic, 2, 3.0f, 0);
    hl_item_counts_add(&ic, 3, 7.0f, 0);
    hl_count_fit fit = hl_item_counts_fit(&ic, bias, 0);
    CHECK(fabs(fit.median - 3.0) < 1e-12);
    CHECKF(fit.used == 3 && fabs(fit.a - 1.0) < 1e-6 && fabs(fit.s - 2.0) < 1e-6,
           "used %d a %g s %g", fit.used, fit.a, fit.s);
    CHECKF(fabs(hl_count_bias(&fit, 15.0, 0.0, -1) - (1 + 2 * log(16.0))) < 1e-5, "uncapped");
    CHECK(hl_count_bias(&fit, 15.0, 0.5, 1.0) == 1.5f);          /* capped at mean + 1 */
    CHECK(fabs(hl_count_bias(&fit, 0.0, 0.5, 1.0) - 1.0) < 1e-6); /* below the cap */
    /* Three half-lives later the counts are an eighth: the same biases lie
     * on another line, which the fit finds from the decayed counts. */
    fit = hl_item_counts_fit(&ic, bias, 3000);
    CHECK(fit.used == 3 && fit.s > 2.0);
    /* The sample: every second item only (0 and 2): one count, no line. */
    hl_item_counts sp;
    CHECK(hl_item_counts_init(&sp, 4, 2, H) == 0);
    for (int j = 1; j < 4; j++)
        hl_item_counts_add(&sp, j, 1.0f, 0);
    fit = hl_item_counts_fit(&sp, bias, 0);
    CHECK(fit.used == 1 && hl_count_bias(&fit, 9.0, 0.25, -1) == 0.25f);
    hl_item_counts_free(&sp);
    hl_item_counts_free(&ic);
}

int main(void)
{
    RUN(test_counts_decay_in_any_order);
    RUN(test_fixed_counts_give_expected_bias);
    TEST_EXIT();
}
