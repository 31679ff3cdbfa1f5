/* test_decay.c - the decayed heads of core/decay.c against a from-scratch
 * double-precision sum (DESIGN.md section 4) and against the plain-loop twin:
 * any arrival order, long gaps, equal times, one event, huge weights. */
#define T_SUITE "test_decay"
#include "test.h"
#include "decay.h"

#include <stdint.h>
#include <time.h>

#define DIM   16
#define HEADS HL_DEFAULT_HEADS
#define HOUR  3600000LL
#define DAY   (24 * HOUR)
#define YEAR  (365 * DAY)

typedef struct ev { int64_t t; float w; float x[DIM]; } ev;

static uint64_t rng_state;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static double unit(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }

static void make_events(ev *e, int n, int64_t span_ms, float lo, float hi,
                        uint64_t seed)
{
    rng_state = seed;
    for (int i = 0; i < n; i++) {
        e[i].t = (int64_t)(unit() * (double)span_ms) + 1700000000000LL;
        e[i].w = (float)(0.5 + 1.5 * unit());
        for (int j = 0; j < DIM; j++) e[i].x[j] = (float)(lo + (hi - lo) * unit());
    }
}

static void sort_by_time(ev *e, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && e[j - 1].t > e[j].t; j--) {
            ev t = e[j]; e[j] = e[j - 1]; e[j - 1] = t;
        }
}

static void reverse(ev *e, int n)
{
    for (int i = 0; i < n / 2; i++) {
        ev t = e[i]; e[i] = e[n - 1 - i]; e[n - 1 - i] = t;
    }
}

static void shuffle(ev *e, int n, uint64_t seed)
{
    rng_state = seed;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rnd() % (uint64_t)(i + 1));
        ev t = e[i]; e[i] = e[j]; e[j] = t;
    }
}

typedef struct state { float s[HEADS * DIM], m[HEADS]; int64_t t_ref; } state;

static void run(const hl_decay *d, const ev *e, int n, state *st, int naive)
{
    memset(st, 0, sizeof *st);
    st->t_ref = INT64_MIN;
    for (int i = 0; i < n; i++) {
        if (naive)
            hl_decay_add_naive(d, st->s, st->m, &st->t_ref, e[i].t, e[i].w, e[i].x);
        else
            hl_decay_add(d, st->s, st->m, &st->t_ref, e[i].t, e[i].w, e[i].x);
    }
}

/* exp(-lambda_h (B_h - t)) in double, B_h the base of heads whose reference
 * time is t_ref (decay.h): what an event of weight 1 at t weighs in the
 * stored heads. */
static double stored_weight(const hl_decay *d, int h, int64_t t_ref, int64_t t)
{
    int64_t base = hl_decay_base_ms(d, h, t_ref), gap;   /* exact near INT64_MAX too */
    if (__builtin_sub_overflow(base, t, &gap))
        return exp(-d->lambda_per_ms[h] * ((double)base - (double)t));
    return exp(-d->lambda_per_ms[h] * (double)gap);
}

/* The definition, in double: s and m at the newest time, as stored (at
 * each head's base, decay.h), plus per element
 * the sum of |terms| (the scale a float sum's error is relative to). */
static void reference(const hl_decay *d, const ev *e, int n, double *s,
                      double *m, double *abs_s, int64_t *t_ref)
{
    int64_t tmax = INT64_MIN;
    for (int i = 0; i < n; i++) if (e[i].t > tmax) tmax = e[i].t;
    memset(s, 0, sizeof(double) * HEADS * DIM);
    memset(abs_s, 0, sizeof(double) * HEADS * DIM);
    memset(m, 0, sizeof(double) * HEADS);
    for (int i = 0; i < n; i++)
        for (int h = 0; h < HEADS; h++) {
            double g = (double)e[i].w * stored_weight(d, h, tmax, e[i].t);
            m[h] += g;
            for (int j = 0; j < DIM; j++) {
                s[h * DIM + j] += g * e[i].x[j];
                abs_s[h * DIM + j] += fabs(g * e[i].x[j]);
            }
        }
    *t_ref = tmax;
}

/* |got - want| <= tol * scale element-wise; returns the worst ratio. */
static double worst(const float *got, const double *want, const double *scale,
                    int n)
{
    double w = 0;
    for (int i = 0; i < n; i++) {
        double sc = scale[i] > 0 ? scale[i] : 1e-300;
        double r = fabs((double)got[i] - want[i]) / sc;
        if (!(r <= w)) w = r;
    }
    return w;
}

static void check_against_ref(const hl_decay *d, const ev *e, int n,
                              const state *st, double tol, const char *what)
{
    double s[HEADS * DIM], m[HEADS], abs_s[HEADS * DIM];
    int64_t t_ref;
    reference(d, e, n, s, m, abs_s, &t_ref);
    double ws = worst(st->s, s, abs_s, HEADS * DIM);
    double wm = worst(st->m, m, m, HEADS);
    CHECKF(ws <= tol && wm <= tol, "%s: worst relative error s %.3g m %.3g > %g",
           what, ws, wm, tol);
    CHECKF(st->t_ref == t_ref, "%s: t_ref %lld want %lld", what,
           (long long)st->t_ref, (long long)t_ref);
}

static hl_decay default_decay(void)
{
    hl_decay d;
    int rc = hl_decay_init(&d, HEADS, DIM, hl_default_half_life_ms, NULL, 0);
    CHECK(rc == 0);
    return d;
}

/* Positive vectors: no cancellation, so relative error is the plain one. */
static void test_order_independence(void)
{
    enum { N = 400 };
    static ev e[N];
    hl_decay d = default_decay();
    state st;
    make_events(e, N, 20 * DAY, 0.1f, 1.0f, 7);
    sort_by_time(e, N);
    run(&d, e, N, &st, 0); check_against_ref(&d, e, N, &st, 1e-5, "in order");
    run(&d, e, N, &st, 1); check_against_ref(&d, e, N, &st, 1e-5, "naive in order");
    reverse(e, N);
    run(&d, e, N, &st, 0); check_against_ref(&d, e, N, &st, 1e-5, "reversed");
    run(&d, e, N, &st, 1); check_against_ref(&d, e, N, &st, 1e-5, "naive reversed");
    for (uint64_t seed = 1; seed <= 5; seed++) {
        shuffle(e, N, seed);
        run(&d, e, N, &st, 0); check_against_ref(&d, e, N, &st, 1e-5, "shuffled");
        run(&d, e, N, &st, 1); check_against_ref(&d, e, N, &st, 1e-5, "naive shuffled");
    }
}

/* Mixed signs: error relative to the sum of |terms|, what float sums bound. */
static void test_mixed_signs_match_naive(void)
{
    enum { N = 1000 };
    static ev e[N];
    hl_decay d = default_decay();
    state a, b;
    make_events(e, N, 3 * DAY, -1.0f, 1.0f, 11);
    for (uint64_t seed = 1; seed <= 3; seed++) {
        shuffle(e, N, seed);
        run(&d, e, N, &a, 0);
        run(&d, e, N, &b, 1);
        check_against_ref(&d, e, N, &a, 1e-5, "fast");
        check_against_ref(&d, e, N, &b, 1e-5, "naive");
        CHECK_CLOSE(a.s, b.s, HEADS * DIM, 1e-5);
        CHECK_CLOSE(a.m, b.m, HEADS, 1e-5);
    }
}

/* Gaps of years, and timestamps near the int64 range ends: no overflow, no
 * NaN; the short heads decay to exactly 0, the 30-day head nearly so. */
static void test_long_idle_gaps(void)
{
    hl_decay d = default_decay();
    static const int64_t ts[] = { 0, 5 * YEAR, 50 * YEAR, 1 * YEAR,
                                  -200 * YEAR, 51 * YEAR };
    enum { N = sizeof ts / sizeof ts[0] };
    ev e[N];
    make_events(e, N, 1, 0.5f, 1.0f, 3);
    for (int i = 0; i < N; i++) e[i].t = ts[i];
    state st;
    run(&d, e, N, &st, 0);
    check_against_ref(&d, e, N, &st, 1e-6, "years");
    for (int i = 0; i < HEADS * DIM; i++) CHECK(isfinite(st.s[i]));
    CHECK(st.t_ref == 51 * YEAR);
    /* One year after 50 years: 1h and 1d heads hold the newest event only. */
    float newest = (float)(e[5].w * stored_weight(&d, 0, st.t_ref, e[5].t));
    CHECK_CLOSE(&st.m[0], &newest, 1, 1e-7);

    /* Extremes: the first gap is ~9.2e18 ms; exp underflows to 0. */
    state x = { .t_ref = INT64_MIN };
    float one[DIM];
    for (int j = 0; j < DIM; j++) one[j] = 1;
    hl_decay_add(&d, x.s, x.m, &x.t_ref, INT64_MIN + 1, 1.0f, one);
    hl_decay_add(&d, x.s, x.m, &x.t_ref, INT64_MAX, 2.0f, one);
    hl_decay_add(&d, x.s, x.m, &x.t_ref, INT64_MIN + 1, 4.0f, one);
    hl_decay_add(&d, x.s, x.m, &x.t_ref, 0, 8.0f, NULL);
    for (int h = 0; h < HEADS; h++) {
        double want = 2 * stored_weight(&d, h, INT64_MAX, INT64_MAX);
        CHECKF(fabs(x.m[h] - want) <= 1e-7 * want, "head %d mass %g want %g", h,
               (double)x.m[h], want);
        CHECK(x.s[h * DIM] == x.m[h]);
    }
    CHECK(x.t_ref == INT64_MAX);
}

static void test_equal_timestamps(void)
{
    enum { N = 50 };
    ev e[N];
    hl_decay d = default_decay();
    make_events(e, N, 1, 0.1f, 1.0f, 5);
    for (int i = 0; i < N; i++) e[i].t = 1700000000000LL;
    state st;
    run(&d, e, N, &st, 0);
    check_against_ref(&d, e, N, &st, 1e-6, "equal times");
    double sum = 0;
    for (int i = 0; i < N; i++) sum += e[i].w;
    for (int h = 0; h < HEADS; h++) {
        double want = sum * stored_weight(&d, h, e[0].t, e[0].t);
        CHECKF(fabs(st.m[h] - want) <= 1e-6 * want, "m %g want %g",
               (double)st.m[h], want);
    }
}

static void test_single_event(void)
{
    ev e[1];
    hl_decay d = default_decay();
    make_events(e, 1, 1, -1.0f, 1.0f, 9);
    state st, nv;
    run(&d, e, 1, &st, 0);
    run(&d, e, 1, &nv, 1);
    for (int h = 0; h < HEADS; h++) {       /* w exp(lambda (t - B)), rounded once */
        float wg = (float)(e[0].w * stored_weight(&d, h, e[0].t, e[0].t));
        CHECK(st.m[h] == wg);
        for (int j = 0; j < DIM; j++) CHECK(st.s[h * DIM + j] == wg * e[0].x[j]);
    }
    CHECK(st.t_ref == e[0].t);
    CHECK(memcmp(&st, &nv, sizeof st) == 0);
}

/* w = 1e30 with |x| <= 1 and 100 events keeps every sum below 1e33, far
 * from FLT_MAX (3.4e38): the largest weights a caller can use safely are
 * about FLT_MAX / (events in a half-life of the slowest head). */
static void test_huge_weights(void)
{
    enum { N = 100 };
    ev e[N];
    hl_decay d = default_decay();
    make_events(e, N, 2 * DAY, 0.1f, 1.0f, 13);
    for (int i = 0; i < N; i++) e[i].w *= 1e30f;
    state st;
    for (uint64_t seed = 1; seed <= 3; seed++) {
        shuffle(e, N, seed);
        run(&d, e, N, &st, 0);
        check_against_ref(&d, e, N, &st, 1e-5, "1e30 weights");
        for (int i = 0; i < HEADS * DIM; i++) CHECK(isfinite(st.s[i]));
    }
}

/* An item outside the model: decays forward, adds nothing; late, changes
 * nothing. */
static void test_unknown_item(void)
{
    hl_decay d = default_decay();
    state st = { .t_ref = INT64_MIN }, before;
    float x[DIM];
    for (int j = 0; j < DIM; j++) x[j] = 1;
    hl_decay_add(&d, st.s, st.m, &st.t_ref, 10 * HOUR, 1.0f, x);
    before = st;
    hl_decay_add(&d, st.s, st.m, &st.t_ref, 5 * HOUR, 1.0f, NULL);
    CHECK(memcmp(&st, &before, sizeof st) == 0);
    hl_decay_add(&d, st.s, st.m, &st.t_ref, 11 * HOUR, 1.0f, NULL);
    CHECK(st.t_ref == 11 * HOUR);
    double want = stored_weight(&d, 0, 11 * HOUR, 10 * HOUR);     /* about 0.5 */
    CHECK(fabs(st.m[0] - want) < 1e-6);
    CHECK(fabs(st.s[0] - want) < 1e-6);
    state nv = { .t_ref = INT64_MIN };
    hl_decay_add_naive(&d, nv.s, nv.m, &nv.t_ref, 10 * HOUR, 1.0f, x);
    hl_decay_add_naive(&d, nv.s, nv.m, &nv.t_ref, 5 * HOUR, 1.0f, NULL);
    hl_decay_add_naive(&d, nv.s, nv.m, &nv.t_ref, 11 * HOUR, 1.0f, NULL);
    CHECK_CLOSE(nv.s, st.s, HEADS * DIM, 1e-6);
    CHECK(nv.t_ref == st.t_ref);
}

static void test_factors(void)
{
    hl_decay d = default_decay();
    float f[HEADS];
    hl_decay_factors(&d, 0, f);
    for (int h = 0; h < HEADS; h++) CHECK(f[h] == 1.0f);
    hl_decay_factors(&d, -5, f);
    CHECK(f[0] == 1.0f);
    hl_decay_factors(&d, HOUR, f);
    CHECK(fabs(f[0] - 0.5) < 1e-7);
    hl_decay_factors(&d, 30 * DAY, f);
    CHECK(fabs(f[2] - 0.5) < 1e-7);
    CHECK(f[0] == 0.0f);
    hl_decay_factors(&d, INT64_MAX, f);
    for (int h = 0; h < HEADS; h++) CHECK(f[h] == 0.0f);
}

/* The hot path's own exp (decay.c's fast_factor) against libm's over
 * gaps from 1 ms to past underflow: each decayed mass within float rounding
 * (2 ulp) of the exact factor, and exactly 1 at a zero gap. */
static void test_factor_accuracy(void)
{
    hl_decay d = default_decay();
    double worst_rel = 0;
    for (double dt = 1; dt < 1e13; dt *= 1.0137) {
        float s[HEADS * DIM] = {0}, m[HEADS] = {0};
        int64_t t_ref = INT64_MIN;
        hl_decay_add(&d, s, m, &t_ref, 0, 1.0f, NULL);
        for (int h = 0; h < HEADS; h++) m[h] = 1.0f;
        hl_decay_add(&d, s, m, &t_ref, (int64_t)dt, 0.0f, NULL);
        for (int h = 0; h < HEADS; h++) {
            double want = stored_weight(&d, h, (int64_t)dt, hl_decay_base_ms(&d, h, 0));
            if (want < 0.99e-30) { CHECK(m[h] == 0.0f); continue; }
            if (want < 1.01e-30) continue;   /* either side of the cut */
            double rel = fabs(m[h] - want) / want;
            if (rel > worst_rel) worst_rel = rel;
        }
    }
    CHECKF(worst_rel <= 1.2e-7, "worst relative error %.3g", worst_rel);
    float s[HEADS * DIM] = {0}, m[HEADS] = { 1, 1, 1 };
    int64_t t_ref = 5;
    hl_decay_add(&d, s, m, &t_ref, 5, 0.0f, NULL);
    for (int h = 0; h < HEADS; h++) CHECK(m[h] == 1.0f);
}

/* Dense events: 10^6 of weight 1, every 100 ms (then every 5 s), on a
 * 30-day head, fast path and naive twin. A head decayed straight to each
 * event multiplied by exp(-lambda 100 ms) rounded to float, exactly 1: the
 * mass never decayed (1.3% high after the 10^6, and every 5 s 1.0%). Read
 * at t_ref, the mass must be within 1e-3 of the double recomputation and
 * the mean s/m stay the items' (here all the same vector). */
static void test_dense_events_keep_decaying(void)
{
    static const double thirty_days = 30.0 * 86400e3;
    static const int64_t steps_ms[] = { 100, 5000 };
    hl_decay d;
    CHECK(hl_decay_init(&d, 1, 4, &thirty_days, NULL, 0) == 0);
    const float x[4] = { 1.0f, 0.5f, -1.0f, 2.0f };
    for (int k = 0; k < 2; k++)
        for (int naive = 0; naive <= 1; naive++) {
            float s[4] = {0}, m[1] = {0};
            int64_t t_ref = INT64_MIN, t0 = 1700000000000LL;
            double want = 0, f = exp(-d.lambda_per_ms[0] * (double)steps_ms[k]);
            for (int i = 0; i < 1000000; i++) {
                int64_t t = t0 + (int64_t)i * steps_ms[k];
                want = want * f + 1.0;
                if (naive)
                    hl_decay_add_naive(&d, s, m, &t_ref, t, 1.0f, x);
                else
                    hl_decay_add(&d, s, m, &t_ref, t, 1.0f, x);
            }
            double got = m[0] / stored_weight(&d, 0, t_ref, t_ref);
            CHECKF(fabs(got / want - 1) <= 1e-3, "%s, every %lld ms: mass at t_ref %.7g, "
                   "want %.7g (%+.3g)", naive ? "naive" : "fast", (long long)steps_ms[k],
                   got, want, got / want - 1);
            for (int j = 0; j < 4; j++)
                CHECK(fabsf(s[j] / m[0] - x[j]) <= 1e-5f);
        }
}

static void test_init_rejects(void)
{
    hl_decay d;
    char err[128] = "";
    double bad[2] = { 1000, 0 };
    CHECK(hl_decay_init(&d, 0, 4, hl_default_half_life_ms, err, sizeof err) == HL_EINVAL);
    CHECK(hl_decay_init(&d, HL_MAX_HEADS + 1, 4, hl_default_half_life_ms, err, sizeof err) == HL_EINVAL);
    CHECK(hl_decay_init(&d, 1, 0, hl_default_half_life_ms, err, sizeof err) == HL_EINVAL);
    CHECK(hl_decay_init(&d, 2, 4, bad, err, sizeof err) == HL_EINVAL);
    CHECK(strstr(err, "half-life") != NULL);
    bad[1] = NAN;
    CHECK(hl_decay_init(&d, 2, 4, bad, err, sizeof err) == HL_EINVAL);
    bad[1] = INFINITY;
    CHECK(hl_decay_init(&d, 2, 4, bad, err, sizeof err) == HL_EINVAL);
    CHECK(hl_decay_init(&d, 1, 1, bad, err, sizeof err) == 0);
    CHECK(fabs(d.lambda_per_ms[0] * 1000 - M_LN2) < 1e-15);
}

/* Where two state shapes differ: dim or heads first, then the first head
 * whose half-life differs; only heads in use count. */
static void test_shape_diff(void)
{
    double a[3] = {3600e3, 86400e3, 30 * 86400e3}, b[3] = {3600e3, 86400e3, 7 * 86400e3};
    CHECK(hl_decay_shape_diff(16, 3, a, 16, 3, a) == HL_SHAPE_SAME);
    CHECK(hl_decay_shape_diff(16, 3, a, 12, 3, a) == HL_SHAPE_SIZE);
    CHECK(hl_decay_shape_diff(16, 3, a, 16, 2, a) == HL_SHAPE_SIZE);
    CHECK(hl_decay_shape_diff(16, 3, a, 12, 3, b) == HL_SHAPE_SIZE);
    CHECK(hl_decay_shape_diff(16, 3, a, 16, 3, b) == 2);
    CHECK(hl_decay_shape_diff(16, 2, a, 16, 2, b) == HL_SHAPE_SAME);
    b[0] = 1800e3;
    CHECK(hl_decay_shape_diff(16, 3, a, 16, 3, b) == 0);
}

/* Odd dims and 8 heads: the vector loop's tails. */
static void test_shapes_match_naive(void)
{
    static const int dims[] = { 1, 3, 7, 64, 65, 129 };
    double hl[HL_MAX_HEADS];
    for (int h = 0; h < HL_MAX_HEADS; h++) hl[h] = 60000.0 * (h + 1) * (h + 1);
    rng_state = 99;
    for (size_t k = 0; k < sizeof dims / sizeof dims[0]; k++) {
        int dim = dims[k];
        hl_decay d;
        CHECK(hl_decay_init(&d, HL_MAX_HEADS, dim, hl, NULL, 0) == 0);
        size_t n = (size_t)HL_MAX_HEADS * dim;
        float *a = calloc(n, 4), *b = calloc(n, 4), *x = malloc(dim * 4);
        float ma[HL_MAX_HEADS] = {0}, mb[HL_MAX_HEADS] = {0};
        int64_t ta = INT64_MIN, tb = INT64_MIN;
        for (int i = 0; i < 200; i++) {
            for (int j = 0; j < dim; j++) x[j] = (float)(unit() * 2 - 1);
            int64_t t = (int64_t)(unit() * 3600000.0 * 10);
            float w = (float)unit();
            const float *xp = i % 17 == 0 ? NULL : x;
            hl_decay_add(&d, a, ma, &ta, t, w, xp);
            hl_decay_add_naive(&d, b, mb, &tb, t, w, xp);
        }
        CHECK_CLOSE(a, b, n, 1e-5);
        CHECK_CLOSE(ma, mb, HL_MAX_HEADS, 1e-5);
        CHECK(ta == tb);
        free(a); free(b); free(x);
    }
}

/* A head whose old contents decay by a factor cut to 0 holds the newest
 * event alone, whatever it held: an infinity (a migration's map can scale
 * a head past FLT_MAX: encoder.h) or a NaN must not become 0 x inf = NaN
 * and stay in the row for every later event. Fast path and naive twin. */
static void test_nonfinite_head_decays_out(void)
{
    hl_decay d = default_decay();
    float x[DIM];
    for (int j = 0; j < DIM; j++) x[j] = 0.25f;
    for (int naive = 0; naive <= 1; naive++) {
        state st = { .t_ref = 0 };
        for (int h = 0; h < HEADS; h++) {
            st.m[h] = 1.0f;
            st.s[h * DIM] = INFINITY;
            st.s[h * DIM + 1] = NAN;
        }
        st.m[1] = NAN;
        if (naive)
            hl_decay_add_naive(&d, st.s, st.m, &st.t_ref, 10 * YEAR, 2.0f, x);
        else
            hl_decay_add(&d, st.s, st.m, &st.t_ref, 10 * YEAR, 2.0f, x);
        int bad = 0;
        for (int h = 0; h < HEADS; h++) {
            double m2 = 2 * stored_weight(&d, h, 10 * YEAR, 10 * YEAR);
            for (int j = 0; j < DIM; j++)
                bad += !(fabs(st.s[h * DIM + j] - m2 / 4) <= 1e-7 * m2);
            bad += !(fabs(st.m[h] - m2) <= 1e-7 * m2);
        }
        CHECKF(bad == 0, "%s: %d values not the newest event's alone (s[0] %g, m[1] %g)",
               naive ? "naive" : "fast", bad, (double)st.s[0], (double)st.m[1]);
        state un = st;
        for (int h = 0; h < HEADS; h++) un.s[h * DIM] = INFINITY;
        if (naive)
            hl_decay_add_naive(&d, un.s, un.m, &un.t_ref, 20 * YEAR, 1.0f, NULL);
        else
            hl_decay_add(&d, un.s, un.m, &un.t_ref, 20 * YEAR, 1.0f, NULL);
        CHECKF(un.s[0] == 0.0f && un.m[0] == 0.0f, "%s: unknown item left s[0] %g m %g",
               naive ? "naive" : "fast", (double)un.s[0], (double)un.m[0]);
    }
}

/* A head decayed step by step (events of items outside the model, every
 * 30 hours, so no single factor is below the 1e-30 cut) or fed a weight
 * that is itself subnormal: no element of the state may be left subnormal,
 * since every later operation on it would take the slow path. */
static int count_subnormal(const state *st)
{
    int n = 0;
    for (int i = 0; i < HEADS * DIM; i++) n += fpclassify(st->s[i]) == FP_SUBNORMAL;
    for (int h = 0; h < HEADS; h++) n += fpclassify(st->m[h]) == FP_SUBNORMAL;
    return n;
}

static void test_no_subnormal_state(void)
{
    hl_decay d = default_decay();
    float x[DIM];
    for (int j = 0; j < DIM; j++) x[j] = 1e-3f * (float)(j + 1);
    state st = { .t_ref = INT64_MIN };
    hl_decay_add(&d, st.s, st.m, &st.t_ref, 0, 1.0f, x);
    int worst = 0;
    for (int i = 1; i <= 12; i++) {
        hl_decay_add(&d, st.s, st.m, &st.t_ref, i * 30 * HOUR, 1.0f, NULL);
        int n = count_subnormal(&st);
        if (n > worst) worst = n;
    }
    CHECKF(worst == 0, "%d subnormal floats in the state after unknown items", worst);
    state tw = { .t_ref = INT64_MIN };
    hl_decay_add(&d, tw.s, tw.m, &tw.t_ref, 0, 1e-40f, x);
    CHECKF(count_subnormal(&tw) == 0, "%d subnormal floats after a 1e-40 weight",
           count_subnormal(&tw));
}

/* Not an assertion (the machine is shared): ns per event on a state full
 * of subnormal floats against one of normal floats, printed for the report. */
static double ns_per_event(const hl_decay *d, float fill)
{
    static float s[HEADS * 256], m[HEADS], zero[256];
    for (int i = 0; i < HEADS * 256; i++) s[i] = fill;
    for (int h = 0; h < HEADS; h++) m[h] = fill;
    int64_t t_ref = 0;
    struct timespec a, z;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 1; i <= 200000; i++)
        hl_decay_add(d, s, m, &t_ref, i, 0.0f, zero);
    clock_gettime(CLOCK_MONOTONIC, &z);
    return ((z.tv_sec - a.tv_sec) * 1e9 + (z.tv_nsec - a.tv_nsec)) / 200000.0;
}

static void test_subnormal_timing(void)
{
    hl_decay d;
    CHECK(hl_decay_init(&d, HEADS, 256, hl_default_half_life_ms, NULL, 0) == 0);
    double normal = ns_per_event(&d, 1.0f), sub = ns_per_event(&d, 1e-39f);
    printf("     timing: dim 256 x 3 heads, %.0f ns/event normal state, "
           "%.0f ns/event subnormal state (%.1fx)\n", normal, sub, sub / normal);
}

int main(void)
{
    RUN(test_order_independence);
    RUN(test_mixed_signs_match_naive);
    RUN(test_long_idle_gaps);
    RUN(test_equal_timestamps);
    RUN(test_single_event);
    RUN(test_huge_weights);
    RUN(test_unknown_item);
    RUN(test_factors);
    RUN(test_factor_accuracy);
    RUN(test_dense_events_keep_decaying);
    RUN(test_init_rejects);
    RUN(test_shapes_match_naive);
    RUN(test_shape_diff);
    RUN(test_no_subnormal_state);
    RUN(test_nonfinite_head_decays_out);
    RUN(test_subnormal_timing);
    TEST_EXIT();
}
