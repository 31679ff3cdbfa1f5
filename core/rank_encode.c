/* rank_encode.c - the ranker's encoder: heads -> features -> MLP -> one
 * query per user (encoder.h's definition), computed so that a user's
 * query never depends on the users it is refreshed with (rank.c, "Batch
 * independence"): every output is one fixed chain of fused multiply-adds,
 * in the AVX2 kernel (layer_avx2) and in its plain twin (layer_plain)
 * alike, so both agree to the bit. It does not score items. */
#include "rank_internal.h"

#include <math.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AVX2_LAYER 1
#include <immintrin.h>
#endif

/* One encoder layer for n_users (<= ENC_GROUP) users:
 * out[u][o] = b[o] + sum_i in[u][i] wt[i][o], i ascending, one fused
 * multiply-add (one rounding) per term, so the vector path and this one
 * agree to the bit; ReLU if asked. Each
 * user's outputs depend on its own input only, whoever else is in the
 * group: that is what makes a query independent of its batch. */
static void layer_plain(const float *const *in, int n_users, int n_in, int n_out,
                        const float *wt, const float *b, int relu, float *const *out)
{
    for (int u = 0; u < n_users; u++)
        for (int o = 0; o < n_out; o++) {
            float acc = b[o];
            for (int i = 0; i < n_in; i++)
                acc = fmaf(in[u][i], wt[(size_t)i * n_out + o], acc);
            out[u][o] = relu && !(acc > 0.0f) ? 0.0f : acc;
        }
}

#ifdef HAVE_AVX2_LAYER
__attribute__((target("avx2,fma")))
static inline __m256 relu8(__m256 a, int relu)
{
    return relu ? _mm256_and_ps(a, _mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_GT_OQ)) : a;
}

/* One user's outputs from o on, 32 then 8 at a time (four independent
 * sums in flight); returns the first output left for the scalar tail. */
__attribute__((target("avx2,fma")))
static int layer_one_avx2(const float *in, int n_in, int n_out, int o, const float *wt,
                          const float *b, int relu, float *out)
{
    for (; o + 32 <= n_out; o += 32) {
        __m256 a0 = _mm256_loadu_ps(b + o), a1 = _mm256_loadu_ps(b + o + 8);
        __m256 a2 = _mm256_loadu_ps(b + o + 16), a3 = _mm256_loadu_ps(b + o + 24);
        for (int i = 0; i < n_in; i++) {
            const float *w = wt + (size_t)i * n_out + o;
            __m256 x = _mm256_broadcast_ss(in + i);
            a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(w), a0);
            a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(w + 8), a1);
            a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(w + 16), a2);
            a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(w + 24), a3);
        }
        _mm256_storeu_ps(out + o, relu8(a0, relu));
        _mm256_storeu_ps(out + o + 8, relu8(a1, relu));
        _mm256_storeu_ps(out + o + 16, relu8(a2, relu));
        _mm256_storeu_ps(out + o + 24, relu8(a3, relu));
    }
    for (; o + 8 <= n_out; o += 8) {
        __m256 a = _mm256_loadu_ps(b + o);
        for (int i = 0; i < n_in; i++)
            a = _mm256_fmadd_ps(_mm256_broadcast_ss(in + i),
                                _mm256_loadu_ps(wt + (size_t)i * n_out + o), a);
        _mm256_storeu_ps(out + o, relu8(a, relu));
    }
    return o;
}

/* layer_plain with the same operations per output (so the same bits):
 * eight outputs of four users per step, each weight load serving all
 * four; a smaller group user by user; the last outputs plainly. */
__attribute__((target("avx2,fma")))
static void layer_avx2(const float *const *in, int n_users, int n_in, int n_out,
                       const float *wt, const float *b, int relu, float *const *out)
{
    int o = 0;
    if (n_users < ENC_GROUP) {
        for (int u = 0; u < n_users; u++)
            o = layer_one_avx2(in[u], n_in, n_out, 0, wt, b, relu, out[u]);
    } else {
        for (; o + 8 <= n_out; o += 8) {
            __m256 a0 = _mm256_loadu_ps(b + o), a1 = a0, a2 = a0, a3 = a0;
            for (int i = 0; i < n_in; i++) {
                __m256 w = _mm256_loadu_ps(wt + (size_t)i * n_out + o);
                a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(in[0] + i), w, a0);
                a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(in[1] + i), w, a1);
                a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(in[2] + i), w, a2);
                a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(in[3] + i), w, a3);
            }
            _mm256_storeu_ps(out[0] + o, relu8(a0, relu));
            _mm256_storeu_ps(out[1] + o, relu8(a1, relu));
            _mm256_storeu_ps(out[2] + o, relu8(a2, relu));
            _mm256_storeu_ps(out[3] + o, relu8(a3, relu));
        }
    }
    for (int u = 0; u < n_users; u++)       /* groups under ENC_GROUP, the last outputs */
        for (int oo = o; oo < n_out; oo++) {
            float acc = b[oo];
            for (int i = 0; i < n_in; i++)
                acc = fmaf(in[u][i], wt[(size_t)i * n_out + oo], acc);
            out[u][oo] = relu && !(acc > 0.0f) ? 0.0f : acc;
        }
}
#endif

layer_fn hl_rank_pick_layer(void)
{
#ifdef HAVE_AVX2_LAYER
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return layer_avx2;
#endif
    return layer_plain;
}

/* Q (n, dim): the encoder (encoder.h's definition: features, then each
 * layer W_l a + b_l, ReLU between layers) for groups of ENC_GROUP users,
 * each user's numbers computed the same way whatever its group, so a
 * query never depends on the users it is refreshed with. (SGEMM over the
 * batch, as hl_encoder_forward does, rounds a row differently with the
 * batch's shape; an SGEMM per user packs the weights each call and cost a
 * quarter of the refresh rate at 10k items.) */
const float *hl_rank_encode(hl_ranker *r, const hl_row_view *users, int n)
{
    int dim = r->dim, w = r->width_max;
    for (int u0 = 0; u0 < n; u0 += ENC_GROUP) {
        int g = n - u0 < ENC_GROUP ? n - u0 : ENC_GROUP;
        const float *in[ENC_GROUP];
        float *out[ENC_GROUP];
        for (int u = 0; u < g; u++) {
            float *x = r->x1 + (size_t)u * w;
            hl_encoder_features(r->n_heads, dim, users[u0 + u].s, users[u0 + u].m, x);
            in[u] = x;
        }
        float *bufs[2] = {r->act1, r->x1};
        for (int l = 0; l < r->net.n_layers; l++) {
            int last = l == r->net.n_layers - 1;
            for (int u = 0; u < g; u++)
                out[u] = last ? r->Q + (size_t)(u0 + u) * dim : bufs[l % 2] + (size_t)u * w;
            r->layer(in, g, hl_encoder_layer_in(&r->net, l), r->net.layer_out[l], r->wt[l],
                     r->net.layer_b[l], !last, out);
            for (int u = 0; u < g; u++)
                in[u] = out[u];
        }
        for (int u = 0; u < g; u++) {
            float *q = r->Q + (size_t)(u0 + u) * dim;
            double ss = 0.0;
            hl_encoder_query_bound(q, dim);
            for (int d = 0; d < dim; d++)
                ss += (double)q[d] * q[d];
            r->q_norm[u0 + u] = (float)sqrt(ss);
        }
    }
    return r->Q;
}
