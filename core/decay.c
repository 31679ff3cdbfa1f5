/* decay.c - the exact decayed-sum update of DESIGN.md section 4.
 *
 * Every head h keeps s_h and m_h at its base B_h, the user's reference time
 * t_ref rounded down to the head's grid (decay.h says why). An event at
 * t >= t_ref moves the head to t's base B' (a factor f = exp(-lambda_h
 * (B' - B)), exactly 1 inside one cell) and adds w exp(lambda_h (t - B')) x;
 * a late event (t < t_ref) adds w exp(-lambda_h (B - t)) x. Both cases are
 * one fused kernel, s = a s + b x, with (a, b) = (f, w g) on time and
 * (1, w g) late, so the hot loop is a single pass the compiler vectorises.
 * The on-time g is exp of at most 2^-12, whose Taylor series to degree 2
 * is within 2^-38: a few multiplies, and the one full factor an event
 * paid before is now paid only when t enters a later cell.
 *
 * Exponents are computed in double from int64 millisecond differences taken
 * in double, so a gap of years (or the INT64_MIN of a fresh state) neither
 * overflows nor gives NaN: exp() just underflows to 0. A factor below
 * HL_DECAY_TINY is treated as exactly 0; what is dropped is below 1e-30 of
 * the newest event's own weight. Such a head is cleared rather than
 * multiplied by 0, so an infinity or NaN it held (a migration's map can
 * scale a head past FLT_MAX) leaves with it instead of becoming a NaN
 * that every later event would keep. That cut alone does not keep subnormal
 * floats out of the state: factors above it still compound (a head
 * scaled by events of items outside the model every 30 hours), and a
 * weight or an e_in value can itself be tiny. A subnormal left in a row
 * makes every later update of it take the slow path (1.2-2.5x per event
 * on this AMD EPYC, tests/test_decay.c; more on Intel), so hl_decay_add
 * runs with the SSE flush-to-zero and denormals-are-zero bits set and puts
 * the caller's back on return: results that would be subnormal become 0,
 * normal ones are bit for bit what they were, and no other code (OpenBLAS,
 * scoring) sees a changed mode.
 *
 * This file does no allocation and no I/O; time only arrives as arguments. */
#include "decay.h"

#include <math.h>
#include <string.h>
#if defined(__x86_64__) || defined(__SSE2__)
#include <xmmintrin.h>
#define HAVE_MXCSR 1
#endif

/* gcc's "no loop-carried dependence" hint; clang vectorises these loops from
 * restrict alone and warns on the unknown pragma. */
#if defined(__GNUC__) && !defined(__clang__)
#define IVDEP _Pragma("GCC ivdep")
#else
#define IVDEP
#endif

const double hl_default_half_life_ms[HL_DEFAULT_HEADS] = {
    3600.0 * 1000.0,               /* 1 hour */
    86400.0 * 1000.0,              /* 1 day */
    30.0 * 86400.0 * 1000.0,       /* 30 days */
};

int hl_decay_shape_diff(int dim_a, int n_heads_a, const double *half_life_ms_a,
                        int dim_b, int n_heads_b, const double *half_life_ms_b)
{
    if (dim_a != dim_b || n_heads_a != n_heads_b)
        return HL_SHAPE_SIZE;
    for (int h = 0; h < n_heads_a; h++)
        if (half_life_ms_a[h] != half_life_ms_b[h])
            return h;
    return HL_SHAPE_SAME;
}

int hl_decay_init(hl_decay *d, int n_heads, int dim, const double *half_life_ms,
                  char *errbuf, size_t errlen)
{
    if (n_heads < 1 || n_heads > HL_MAX_HEADS)
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "decay: %d heads, want 1..%d", n_heads, HL_MAX_HEADS);
    if (dim < 1)
        return hl_err(errbuf, errlen, HL_EINVAL, "decay: dim %d, want >= 1", dim);
    for (int h = 0; h < n_heads; h++) {
        double t = half_life_ms[h];
        if (!isfinite(t) || !(t > 0))
            return hl_err(errbuf, errlen, HL_EINVAL,
                          "decay: head %d half-life %g ms, want finite and > 0",
                          h, t);
    }
    *d = (hl_decay){ .n_heads = n_heads, .dim = dim };
    for (int h = 0; h < n_heads; h++) {
        d->half_life_ms[h] = half_life_ms[h];
        d->lambda_per_ms[h] = M_LN2 / half_life_ms[h];
        d->grid_ms[h] = hl_decay_grid_ms(d->lambda_per_ms[h]);
    }
    return 0;
}

int64_t hl_decay_grid_ms(double lambda_per_ms)
{
    int64_t g = 1;
    while (g < ((int64_t)1 << 52) && lambda_per_ms * (double)(2 * g) <= 0x1p-12)
        g *= 2;
    return g;
}

/* exp(-lambda dt_ms) in double, 0 below HL_DECAY_TINY; dt_ms >= 0. */
static double factor(double lambda_per_ms, double dt_ms)
{
    double f = exp(-lambda_per_ms * dt_ms);
    return f < HL_DECAY_TINY ? 0.0 : f;
}

/* 2^(j/16), j = 0..15, for fast_factor. */
static const double exp2_sixteenths[16] = {
    1, 1.0442737824274138, 1.0905077326652577, 1.1387886347566916,
    1.189207115002721, 1.241857812073484, 1.2968395546510096,
    1.3542555469368927, 1.4142135623730951, 1.4768261459394993,
    1.5422108254079407, 1.6104903319492543, 1.681792830507429,
    1.7562521603732995, 1.8340080864093424, 1.9152065613971474,
};

/* exp(-lambda dt) for the hot path, as 2^y with y = -lambda dt / ln 2 <= 0:
 * 16 y = k + r16 with k an integer and |r16| <= 1/2, so 2^y is
 * 2^(k div 16) (exponent bits) x 2^((k mod 16)/16) (table) x e^r with
 * |r| = |r16 ln 2 / 16| <= 0.022, whose Taylor series to degree 4 is
 * within 4e-11 relative: far below the float the result is rounded to.
 * Several times cheaper than glibc's exp(), which cost 25 ns of the ~100
 * an event takes in cache. The naive twin keeps libm's exp(), and the tests
 * compare the two. A late event just after a head's base asks for a small
 * y > 0 (at most 2^-12 / ln 2): k is then 0 and the series covers it. */
static double fast_factor(double lambda_per_ms, double dt_ms)
{
    double y16 = -lambda_per_ms * dt_ms * (16.0 / M_LN2);
    if (!(y16 > -16.0 * 100)) return 0.0;  /* 2^-100 < HL_DECAY_TINY; NaN */
    int64_t k = (int64_t)(y16 - 0.5);      /* truncates toward 0 */
    double r = (y16 - (double)k) * (M_LN2 / 16.0);
    double p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6 + r * (1.0 / 24))));
    int64_t j = k & 15;
    uint64_t bits = (uint64_t)(1023 + (k - j) / 16) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    double f = exp2_sixteenths[j] * p * scale;
    return f < HL_DECAY_TINY ? 0.0 : f;
}

/* t - t_ref in double milliseconds; +inf for a fresh state, so its (zero)
 * contents are scaled by exactly 0. */
static double gap_ms(int64_t t_ms, int64_t t_ref_ms)
{
    if (t_ref_ms == INT64_MIN) return INFINITY;
    return (double)t_ms - (double)t_ref_ms;
}

void hl_decay_factors(const hl_decay *d, int64_t dt_ms, float *f)
{
    for (int h = 0; h < d->n_heads; h++)
        f[h] = dt_ms <= 0 ? 1.0f
                          : (float)factor(d->lambda_per_ms[h], (double)dt_ms);
}

void hl_decay_weights(const hl_decay *d, int64_t t_ref_ms, int64_t t_ms, float *f)
{
    if (t_ms > t_ref_ms) t_ms = t_ref_ms;
    for (int h = 0; h < d->n_heads; h++) {
        double gap = (double)hl_decay_base_ms(d, h, t_ref_ms) - (double)t_ms;
        f[h] = gap == 0 ? 1.0f : (float)factor(d->lambda_per_ms[h], gap);  /* inf x 0 */
    }
}

void hl_decay_to(const hl_decay *d, int64_t t_ref_ms, int64_t t_ms, float *f)
{
    for (int h = 0; h < d->n_heads; h++) {
        int64_t base = hl_decay_base_ms(d, h, t_ref_ms);
        f[h] = t_ms <= base ? 1.0f
                            : (float)factor(d->lambda_per_ms[h], (double)t_ms - (double)base);
    }
}

void hl_decay_rebase(const hl_decay *d, int64_t t_ref_ms, float *s, float *m)
{
    for (int h = 0; h < d->n_heads; h++) {
        int64_t base = hl_decay_base_ms(d, h, t_ref_ms);
        if (base == t_ref_ms) continue;        /* a grid of 1 (lambda may be inf) */
        float g = (float)exp(d->lambda_per_ms[h] * (double)(t_ref_ms - base));
        for (int j = 0; j < d->dim; j++) s[(size_t)h * d->dim + j] *= g;
        m[h] *= g;
    }
}

/* s[0..dim) = a s + b x: the hot loop. gcc 12's -O2 vectorises only loops
 * whose trip count it knows, so the body is a fixed 8-wide block (which it
 * and clang turn into SIMD) and a scalar tail; restrict + ivdep rule out
 * runtime alias checks. KERNELS() stamps out the SSE2 baseline and, where
 * the compiler can target it, an AVX2 copy picked at run time: one 8-wide
 * block is then one instruction instead of two, which matters when rows
 * are in cache. */
#define KERNELS(ATTR, SUFFIX)                                                 \
ATTR static void axpby##SUFFIX(float *restrict s, const float *restrict x,    \
                               float a, float b, int dim)                    \
{                                                                             \
    int j = 0;                                                                \
    for (; j + 8 <= dim; j += 8) {                                            \
        IVDEP                                                                 \
        for (int k = 0; k < 8; k++)                                           \
            s[j + k] = a * s[j + k] + b * x[j + k];                           \
    }                                                                         \
    for (; j < dim; j++)                                                      \
        s[j] = a * s[j] + b * x[j];                                           \
}                                                                             \
ATTR static void scale##SUFFIX(float *restrict s, float a, int dim)           \
{                                                                             \
    int j = 0;                                                                \
    for (; j + 8 <= dim; j += 8) {                                            \
        IVDEP                                                                 \
        for (int k = 0; k < 8; k++)                                           \
            s[j + k] *= a;                                                    \
    }                                                                         \
    for (; j < dim; j++)                                                      \
        s[j] *= a;                                                            \
}

KERNELS(, _base)
#if defined(__x86_64__) && defined(__GNUC__)
KERNELS(__attribute__((target("avx2"))), _avx2)
#define HAVE_AVX2 1
#endif

/* The CPU model __builtin_cpu_supports reads is set up before main by the
 * compiler's runtime; reading it is one load. */
static int use_avx2(void)
{
#ifdef HAVE_AVX2
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

static void axpby(float *restrict s, const float *restrict x, float a, float b,
                  int dim, int avx2)
{
#ifdef HAVE_AVX2
    if (avx2) {
        axpby_avx2(s, x, a, b, dim);
        return;
    }
#endif
    axpby_base(s, x, a, b, dim);
}

static void scale(float *restrict s, float a, int dim, int avx2)
{
#ifdef HAVE_AVX2
    if (avx2) {
        scale_avx2(s, a, dim);
        return;
    }
#endif
    scale_base(s, a, dim);
}

/* MXCSR bits: flush-to-zero (15) and denormals-are-zero (6). Setting them
 * costs a few cycles per event; elsewhere (non-x86) this is a no-op and
 * subnormals stay possible. */
#define FLUSH_BITS 0x8040u

unsigned hl_decay_flush_on(void)
{
#ifdef HAVE_MXCSR
    unsigned csr = _mm_getcsr();
    if ((csr & FLUSH_BITS) != FLUSH_BITS) _mm_setcsr(csr | FLUSH_BITS);
    return csr;
#else
    return 0;
#endif
}

void hl_decay_flush_off(unsigned csr)
{
#ifdef HAVE_MXCSR
    if ((csr & FLUSH_BITS) != FLUSH_BITS) _mm_setcsr(csr);
#else
    (void)csr;
#endif
}

/* One head's (a, b) for an event of weight w at t to a state at t_ref
 * (decay.c's header). Fresh state (t_ref INT64_MIN): a = 0 from the
 * infinite gap. */
static inline void coeffs(const hl_decay *d, int h, int64_t t_ref, int64_t t, int late,
                          float w, float *a, float *b)
{
    double lambda = d->lambda_per_ms[h];
    int64_t mask = -d->grid_ms[h], base = t_ref & mask;
    if (late) {         /* t may be after the base, by less than a cell */
        *a = 1.0f;
        *b = (float)((double)w * fast_factor(lambda, (double)base - (double)t));
        return;
    }
    int64_t to = t & mask;
    *a = to == base ? 1.0f : (float)fast_factor(lambda, gap_ms(to, base));
    *b = hl_decay_cell_weight(lambda, d->grid_ms[h], t, w);
}

void hl_decay_add(const hl_decay *d, float *s, float *m, int64_t *t_ref_ms,
                  int64_t t_ms, float w, const float *x)
{
    unsigned csr = hl_decay_flush_on();
    int late = *t_ref_ms != INT64_MIN && t_ms < *t_ref_ms;
    int avx2 = use_avx2();
    float as[HL_MAX_HEADS], bs[HL_MAX_HEADS];
    for (int h = 0; h < d->n_heads; h++)   /* independent: they overlap */
        coeffs(d, h, *t_ref_ms, t_ms, late, w, &as[h], &bs[h]);
    for (int h = 0; h < d->n_heads; h++) {
        float a = as[h], b = bs[h];
        float *sh = s + (size_t)h * d->dim;
        if (a == 0.0f) {    /* dropped, not scaled: 0 x inf would be NaN */
            memset(sh, 0, sizeof *sh * (size_t)d->dim);
            m[h] = 0.0f;
        }
        if (x != NULL) {
            axpby(sh, x, a, b, d->dim, avx2);
            m[h] = (float)((double)a * m[h] + b);
        } else if (a != 1.0f) {
            scale(sh, a, d->dim, avx2);
            m[h] *= a;
        }
    }
    if (!late) *t_ref_ms = t_ms;
    hl_decay_flush_off(csr);
}

/* The same update written as the formula reads, one element at a time, with
 * the factor recomputed per element: the reference the tests hold
 * hl_decay_add to. */
void hl_decay_add_naive(const hl_decay *d, float *s, float *m,
                        int64_t *t_ref_ms, int64_t t_ms, float w,
                        const float *x)
{
    int fresh = *t_ref_ms == INT64_MIN;
    for (int h = 0; h < d->n_heads; h++) {
        double lambda = d->lambda_per_ms[h];
        int64_t base = hl_decay_base_ms(d, h, *t_ref_ms);
        if (fresh || t_ms >= *t_ref_ms) {
            int64_t to = hl_decay_base_ms(d, h, t_ms);
            double f = fresh ? 0.0 : factor(lambda, (double)to - (double)base);
            float wg = to == t_ms ? w : (float)((double)w * exp(lambda * (double)(t_ms - to)));
            for (int j = 0; j < d->dim; j++) {
                float add = x != NULL ? wg * x[j] : 0.0f;
                float old = f == 0.0 ? 0.0f : (float)f * s[h * d->dim + j];
                s[h * d->dim + j] = old + add;
            }
            m[h] = (f == 0.0 ? 0.0f : (float)f * m[h]) + (x != NULL ? wg : 0.0f);
        } else if (x != NULL) {
            double g = factor(lambda, (double)base - (double)t_ms);
            for (int j = 0; j < d->dim; j++)
                s[h * d->dim + j] += (float)((double)w * g) * x[j];
            m[h] += (float)((double)w * g);
        }
    }
    if (fresh || t_ms >= *t_ref_ms) *t_ref_ms = t_ms;
}
