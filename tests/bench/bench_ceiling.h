/* bench_ceiling.h - the machine's ceilings, measured on this thread in the
 * same run as the figures they bound (bench_rank.c, bench_index.c): fp32
 * FMA peak, int8 VNNI peak (0 where the CPU has neither), and memory read
 * bandwidth. Include after bench_util.h (now_s). */
#ifndef HL_BENCH_CEILING_H
#define HL_BENCH_CEILING_H

#include <stdlib.h>

#define PEAK_ITERS 20000000L

#if defined(__x86_64__)
#include <immintrin.h>
/* The one body of both arithmetic ceilings, fp32 FMA (exact scoring) and
 * int8 VNNI (two-stage), so the two are measured alike: twelve independent
 * chains a[i] = STEP(a[i]) from INIT(i), enough to cover the instruction's
 * latency, PEAK_ITERS rounds timed into t; the chains' sum, through
 * REDUCE, goes to a volatile sink so the compiler keeps the loop. */
#define PEAK_CHAINS(VEC, INIT, STEP, ADD, SINK, REDUCE, t) do {             \
    VEC a_[12];                                                             \
    for (int i_ = 0; i_ < 12; i_++)                                         \
        a_[i_] = INIT(i_);                                                  \
    double t0_ = now_s();                                                   \
    for (long it_ = 0; it_ < PEAK_ITERS; it_++)                             \
        _Pragma("GCC unroll 12")                                            \
        for (int i_ = 0; i_ < 12; i_++)                                     \
            a_[i_] = STEP(a_[i_]);                                          \
    (t) = now_s() - t0_;                                                    \
    VEC s_ = a_[0];                                                         \
    for (int i_ = 1; i_ < 12; i_++)                                         \
        s_ = ADD(s_, a_[i_]);                                               \
    volatile SINK sink_ = REDUCE(s_);                                       \
    (void)sink_;                                                            \
} while (0)

#define FMA_INIT(i)  _mm512_set1_ps((float)(i))
#define FMA_STEP(v)  _mm512_fmadd_ps(v, x, y)
#define VNNI_INIT(i) _mm512_set1_epi32(i)
#define VNNI_STEP(v) _mm512_dpbusd_epi32(v, x, y)

/* fp32 multiply-adds per second: 16 lanes per FMA. */
__attribute__((target("avx512f")))
static inline double fma_peak_avx512(void)
{
    __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-3f);
    double t;
    PEAK_CHAINS(__m512, FMA_INIT, FMA_STEP, _mm512_add_ps, float, _mm512_reduce_add_ps, t);
    return PEAK_ITERS * 12.0 * 16.0 / t;
}

/* int8 multiply-adds per second: 64 per dot-product instruction. */
__attribute__((target("avx512f,avx512vnni")))
static inline double vnni_peak(void)
{
    __m512i x = _mm512_set1_epi32(0x01020304), y = _mm512_set1_epi32(0x01ff01ff);
    double t;
    PEAK_CHAINS(__m512i, VNNI_INIT, VNNI_STEP, _mm512_add_epi32, int, _mm512_reduce_add_epi32, t);
    return PEAK_ITERS * 12.0 * 64.0 / t;
}

__attribute__((target("avx2")))
static inline double read_pass(const float *a, size_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    double t0 = now_s();
    for (size_t i = 0; i < n; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_load_ps(a + i));
        s1 = _mm256_add_ps(s1, _mm256_load_ps(a + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_load_ps(a + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_load_ps(a + i + 24));
    }
    double t = now_s() - t0;
    float v[8];
    _mm256_storeu_ps(v, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    volatile float sink = v[0];
    (void)sink;
    return (double)n * sizeof(float) / t;
}
#endif

static inline double bandwidth(void)
{
    size_t n = (size_t)64 << 20;                       /* 256 MiB of floats */
    float *a = aligned_alloc(64, n * sizeof(float));
    double best = 0.0;
    if (a == NULL)
        return 0.0;
    for (size_t i = 0; i < n; i++)
        a[i] = 1.0f;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2"))
        for (int rep = 0; rep < 3; rep++) {
            double bw = read_pass(a, n);
            best = bw > best ? bw : best;
        }
#endif
    free(a);
    return best;
}

/* fp32 multiply-adds per second, 0 without AVX-512. */
static inline double fma_peak(void)
{
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f"))
        return fma_peak_avx512();
#endif
    return 0.0;
}

#endif
