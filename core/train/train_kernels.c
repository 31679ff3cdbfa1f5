/* train_kernels.c - the hot numeric kernels of a training step: softmax
 * cross-entropy with its gradient, and the AdamW update.
 *
 * These loops run over every logit and every parameter of every batch, so
 * they are written to vectorise (fast_exp, eight partial sums, SSE for
 * Adam) and each keeps a plain twin that test_train.c holds them to
 * (softmax_xent_naive, adam_scalar). Every sum runs in a fixed order, so a
 * run is deterministic for a given seed. */
#include "train_kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef __SSE__
#include <xmmintrin.h>
#endif

#define ADAM_B1     0.9f
#define ADAM_B2     0.999f
#define ADAM_EPS    1e-8f

/* GCC vectorises the loops below only at -O3 and without errno on sqrtf;
 * -O2 is the project's level, so these few hot functions ask for more. */
#if defined(__GNUC__) && !defined(__clang__)
#define HOT __attribute__((optimize("O3", "-fno-math-errno")))
#else
#define HOT
#endif

/* exp(x) for x <= 0 within 1e-5 relative (y - n loses a few bits): 2^(x log2 e) split into an
 * integer n, put into the exponent bits, and 2^f (|f| <= 0.5) by its
 * degree-6 Taylor polynomial. Written branch-free so loops vectorise. */
HOT static inline float fast_exp(float x)
{
    /* x = max(x, -87) as a bit select: a float ?: is control flow that GCC
     * does not vectorise without -ffinite-math-only. */
    const float lo = -87.0f;
    int32_t xi, li, below = -(x < lo);
    memcpy(&xi, &x, 4);
    memcpy(&li, &lo, 4);
    xi = (xi & ~below) | (li & below);
    memcpy(&x, &xi, 4);
    float y = x * 1.44269504f;
    float t = y + 12582912.0f;                 /* 1.5 x 2^23: rounds y */
    float n = t - 12582912.0f, f = y - n;
    int32_t ti, pi;
    memcpy(&ti, &t, 4);
    float p = 1.0f + f * (0.693147181f + f * (0.240226507f + f * (0.0555041087f +
              f * (0.00961812911f + f * (0.00133335581f + f * 0.000154035304f)))));
    memcpy(&pi, &p, 4);
    pi += (ti - 0x4b400000) * (1 << 23);
    memcpy(&p, &pi, 4);
    return p;
}

/* Sum of n floats in eight interleaved partial sums: vectorisable and the
 * same order every time. */
HOT static float sum_floats(const float *v, int n)
{
    float acc[8] = {0}, s = 0;
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) acc[k] += v[j + k];
    for (; j < n; j++) s += v[j];
    for (int k = 0; k < 8; k++) s += acc[k];
    return s;
}

/* Softmax cross-entropy of one row of C logits (plus bias[j] if bias is not
 * NULL) against column tc. The row becomes dLoss/dlogit times scale.
 * Returns the row's loss. */
HOT static double softmax_row(float *row, const float *bias, int C, int tc, float scale)
{
    float mx = -INFINITY;
    if (bias)
        for (int j = 0; j < C; j++) row[j] += bias[j];
    for (int j = 0; j < C; j++) mx = row[j] > mx ? row[j] : mx;
    float lt = row[tc] - mx;
    for (int j = 0; j < C; j++) row[j] = fast_exp(row[j] - mx);
    float sum = sum_floats(row, C);
    float k = scale / sum;
    for (int j = 0; j < C; j++) row[j] *= k;
    row[tc] -= scale;
    return log((double)sum) - lt;
}

double hl_train_softmax_xent(float *L, const float *bias, int B, int C, const int32_t *tcol)
{
    double loss = 0;
    for (int r = 0; r < B; r++)
        loss += softmax_row(L + (size_t)r * C, bias, C, tcol[r], 1.0f / (float)B);
    return loss;
}

#ifdef HL_TEST
/* Plain-loop twin of hl_train_softmax_xent (expf, one running sum), for tests. */
static double softmax_xent_naive(float *L, const float *bias, int B, int C,
                                 const int32_t *tcol)
{
    double loss = 0;
    for (int r = 0; r < B; r++) {
        float *row = L + (size_t)r * C;
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < C; j++) {
            row[j] += bias ? bias[j] : 0.0f;
            mx = row[j] > mx ? row[j] : mx;
        }
        for (int j = 0; j < C; j++) sum += exp(row[j] - mx);
        loss += log(sum) - (row[tcol[r]] - mx);
        for (int j = 0; j < C; j++) row[j] = (float)(exp(row[j] - mx) / sum / B);
        row[tcol[r]] -= 1.0f / (float)B;
    }
    return loss;
}
#endif

/* g[j] += sum_r G[r][j] for G (B, C): column sums in row order. */
HOT void hl_train_add_colsums(float *g, const float *G, int B, int C)
{
    for (int r = 0; r < B; r++) {
        const float *row = G + (size_t)r * C;
        for (int j = 0; j < C; j++) g[j] += row[j];
    }
}

/* ---- AdamW --------------------------------------------------------------------------- */

/* AdamW over n parameters from i0; clears their gradient. The scalar
 * loop is the reference; GCC will not vectorise sqrtf while it may set
 * errno, so SSE does four at a time where the build has it. */
typedef struct adam_k { float a, wd, bc2; } adam_k;

static void adam_scalar(float *p, float *g, float *m, float *v, size_t i0, size_t n,
                        adam_k k)
{
    for (size_t i = i0; i < n; i++) {
        m[i] = ADAM_B1 * m[i] + (1.0f - ADAM_B1) * g[i];
        v[i] = ADAM_B2 * v[i] + (1.0f - ADAM_B2) * g[i] * g[i];
        p[i] -= k.a * m[i] / (sqrtf(v[i] / k.bc2) + ADAM_EPS) + k.wd * p[i];
        g[i] = 0.0f;
    }
}

static void adam_update(float *p, float *g, float *m, float *v, size_t n, adam_k k)
{
    size_t i = 0;
#ifdef __SSE__
    const __m128 b1 = _mm_set1_ps(ADAM_B1), c1 = _mm_set1_ps(1.0f - ADAM_B1);
    const __m128 b2 = _mm_set1_ps(ADAM_B2), c2 = _mm_set1_ps(1.0f - ADAM_B2);
    const __m128 a = _mm_set1_ps(k.a), wd = _mm_set1_ps(k.wd);
    const __m128 ibc2 = _mm_set1_ps(1.0f / k.bc2), eps = _mm_set1_ps(ADAM_EPS);
    for (; i + 4 <= n; i += 4) {
        __m128 gi = _mm_loadu_ps(g + i), pi = _mm_loadu_ps(p + i);
        __m128 mi = _mm_add_ps(_mm_mul_ps(b1, _mm_loadu_ps(m + i)), _mm_mul_ps(c1, gi));
        __m128 vi = _mm_add_ps(_mm_mul_ps(b2, _mm_loadu_ps(v + i)),
                               _mm_mul_ps(c2, _mm_mul_ps(gi, gi)));
        __m128 den = _mm_add_ps(_mm_sqrt_ps(_mm_mul_ps(vi, ibc2)), eps);
        __m128 step = _mm_add_ps(_mm_div_ps(_mm_mul_ps(a, mi), den), _mm_mul_ps(wd, pi));
        _mm_storeu_ps(m + i, mi);
        _mm_storeu_ps(v + i, vi);
        _mm_storeu_ps(p + i, _mm_sub_ps(pi, step));
        _mm_storeu_ps(g + i, _mm_setzero_ps());
    }
#endif
    adam_scalar(p, g, m, v, i, n, k);
}

void hl_train_adam_step(float *p, float *g, float *m, float *v, size_t n,
                        int64_t step, float lr, float l2)
{
    adam_k k;
    k.bc2 = 1.0f - powf(ADAM_B2, (float)step);
    k.a = lr / (1.0f - powf(ADAM_B1, (float)step));
    k.wd = lr * l2;
    adam_update(p, g, m, v, n, k);
}

void hl_train_average(float *avg, const float *p, size_t n, float e)
{
    float f = 1.0f - e;
    for (size_t i = 0; i < n; i++)
        avg[i] = e * avg[i] + f * p[i];
}
