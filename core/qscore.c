/* qscore.c - int8 copy of e_out and the candidate scan of two-stage
 * scoring (the promise is in qscore.h).
 *
 * Layout. Items go in chunks of 16. A chunk holds its int8 rows stored as
 * unsigned bytes (eu = eq + 128), four dimensions of sixteen items per 64
 * bytes, which is the operand of one AVX-512 VNNI vpdpbusd: sixteen 4-term
 * dot products per instruction, no horizontal sums. The chunk's sixteen
 * row scales and biases follow, so a scan reads one stream: at dim 64 a
 * chunk is 1,152 bytes, 72 per item against 260 for the fp32 row and bias.
 * The query is signed int8 with its own scale, so
 *     D_j = sum_d qq_d eq_jd = sum_d qq_d eu_jd - 128 sum_d qq_d,
 * the correction being one number per user.
 *
 * The bound. With q^ = s_q qq, e^_j = s_j eq_j (real numbers),
 *     q . e_j - q^ . e^_j = q^ . (e_j - e^_j) + (q - q^) . e_j,
 * so |q . e_j - s_q s_j D_j| <= ||q^|| ||e_j - e^_j|| + ||q - q^|| ||e_j||
 * (Cauchy-Schwarz). Both row norms are computed once, in double, rounded
 * up. A first test, a_j >= L - U_max with the table's largest norms, costs
 * five vector operations per sixteen items; the per-item norms are read
 * only for items that pass it (propose). G, one number per
 * user, covers every float rounding: det_score's (Higham's gamma_{dim+2}
 * bound, as rank.c's det_margin), that of a_j = fl(fl(D s_q s_j) + b_j)
 * (D is exact in float: |D| < 2^24 for dim <= 1024), and that of a_j +- U,
 * each a few units in the last place of (||q|| + ||q - q^||) (max ||e|| +
 * max ||e - e^||) + max |b|; G takes 4 (dim + 16) of them, and 1e-30 for
 * underflow. A query the bound cannot cover (non-finite, or scores near
 * the float range) is not scanned: its user is scored exactly by rank.c.
 *
 * The scan itself (proposals and the two kernels) is qscore_scan.c; both
 * files share qscore_internal.h. */
#include "qscore_internal.h"

static float up(double x)      /* a float >= x */
{
    return nextafterf((float)x, INFINITY);
}

/* ---- the int8 table ---- */

static int check_items(const float *e_out, const float *bias, int32_t n_items,
                       int dim, char *errbuf, size_t errlen)
{
    if (n_items < 1 || dim < 1 || dim > HL_QSCORE_MAX_DIM || !e_out || !bias)
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "quantized items: %d items of dim %d (need >= 1 item, dim 1..%d)",
                      n_items, dim, HL_QSCORE_MAX_DIM);
    for (size_t i = 0; i < (size_t)n_items * dim; i++)
        if (!isfinite(e_out[i]))
            return hl_err(errbuf, errlen, HL_EFORMAT,
                          "quantized items: e_out[%zu] is not finite", i);
    for (int32_t j = 0; j < n_items; j++)
        if (!isfinite(bias[j]))
            return hl_err(errbuf, errlen, HL_EFORMAT,
                          "quantized items: bias[%d] is not finite", j);
    return 0;
}

/* Row j into its chunk: scale, int8 values, bias; its two norms. */
static void quantize_row(hl_qitems *qi, const float *e, float b, int32_t j)
{
    int32_t c = j / CHUNK;
    int i = j % CHUNK;
    uint8_t *rows = chunk_rows(qi, c);
    double amax = 0.0, r2 = 0.0, n2 = 0.0;

    for (int d = 0; d < qi->dim; d++)
        amax = fabs(e[d]) > amax ? fabs(e[d]) : amax;   /* e is finite (check_items) */
    float s = (float)(amax / 127.0);
    for (int d = 0; d < qi->dim; d++) {
        long v = s > 0.0f ? lrint((double)e[d] / s) : 0;
        v = v > 127 ? 127 : v < -127 ? -127 : v;
        rows[(size_t)(d / 4) * 64 + i * 4 + d % 4] = (uint8_t)(v + 128);
        double err = (double)e[d] - (double)s * (double)v;
        r2 += err * err;
        n2 += (double)e[d] * e[d];
    }
    ((float *)chunk_scale(qi, c))[i] = s;
    ((float *)chunk_bias(qi, c))[i] = b;
    qi->r[j] = up(sqrt(r2) * (1.0 + 1e-12));
    qi->nrm[j] = up(sqrt(n2) * (1.0 + 1e-12));
    qi->r_max = fmax(qi->r_max, qi->r[j]);
    qi->n_max = fmax(qi->n_max, qi->nrm[j]);
    qi->bias_max = fmax(qi->bias_max, fabs(b));
}

static int pick_vnni(int kernel)
{
#ifdef HAVE_VNNI
    return kernel == HL_QKERNEL_AUTO && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512vnni");
#else
    (void)kernel;
    return 0;
#endif
}

int hl_qscore_has_vector_kernel(void)
{
    return pick_vnni(HL_QKERNEL_AUTO);
}

hl_qitems *hl_qitems_create(const float *e_out, const float *bias, int32_t n_items,
                            int dim, int kernel, char *errbuf, size_t errlen)
{
    hl_qitems *qi;

    if (check_items(e_out, bias, n_items, dim, errbuf, errlen) != 0)
        return NULL;
    if ((qi = calloc(1, sizeof *qi)) == NULL)
        goto nomem;
    qi->n_items = n_items;
    qi->n_chunks = (n_items + CHUNK - 1) / CHUNK;
    qi->dim = dim;
    qi->dp = (dim + 3) & ~3;
    qi->ng = qi->dp / 4;
    qi->chunk_bytes = (size_t)16 * qi->dp + 2 * CHUNK * sizeof(float);
    qi->chunks = aligned_alloc(64, (size_t)qi->n_chunks * qi->chunk_bytes);
    qi->r = malloc((size_t)n_items * sizeof(float));
    qi->nrm = malloc((size_t)n_items * sizeof(float));
    if (!qi->chunks || !qi->r || !qi->nrm)
        goto nomem;
    /* Padding (rows past n_items, dimensions past dim) is eq = 0, scale 0. */
    memset(qi->chunks, 0, (size_t)qi->n_chunks * qi->chunk_bytes);
    for (int32_t c = 0; c < qi->n_chunks; c++)
        memset(chunk_rows(qi, c), 128, (size_t)16 * qi->dp);
    for (int32_t j = 0; j < n_items; j++)
        quantize_row(qi, e_out + (size_t)j * dim, bias[j], j);
    qi->vnni = pick_vnni(kernel);
    return qi;
nomem:
    hl_qitems_destroy(qi);
    hl_err(errbuf, errlen, HL_ENOMEM, "quantized items: out of memory (%d items, dim %d)",
           n_items, dim);
    return NULL;
}

void hl_qitems_destroy(hl_qitems *qi)
{
    if (qi == NULL)
        return;
    free(qi->chunks);
    free(qi->r);
    free(qi->nrm);
    free(qi);
}

const char *hl_qitems_kernel(const hl_qitems *qi)
{
    return qi->vnni ? "avx512-vnni" : "plain";
}

size_t hl_qitems_scan_bytes(const hl_qitems *qi)
{
    return (size_t)qi->n_chunks * qi->chunk_bytes;
}

/* ---- scan scratch ---- */

hl_qscan *hl_qscan_create(const hl_qitems *qi, int max_users, int k,
                          char *errbuf, size_t errlen)
{
    hl_qscan *qs;
    size_t nu = (size_t)max_users;

    if (max_users < 1 || k < 1) {
        hl_err(errbuf, errlen, HL_EINVAL, "quantized scan: %d users, k %d", max_users, k);
        return NULL;
    }
    if ((qs = calloc(1, sizeof *qs)) == NULL)
        goto nomem;
    qs->qi = qi;
    qs->max_users = max_users;
    qs->k = k;
    qs->cap = 2 * k + CAND_SLACK;
    qs->qq = aligned_alloc(64, ((nu * qi->dp + 63) & ~(size_t)63));
    qs->s_q = malloc(nu * sizeof(float));
    qs->c1 = malloc(nu * sizeof(float));
    qs->c2 = malloc(nu * sizeof(float));
    qs->G = malloc(nu * sizeof(float));
    qs->L = malloc(nu * sizeof(float));
    qs->Ug = malloc(nu * sizeof(float));
    qs->corr = malloc(nu * sizeof(int32_t));
    qs->lb = malloc(nu * (size_t)k * sizeof(float));
    qs->n_lb = malloc(nu * sizeof(int));
    qs->cand = malloc(nu * (size_t)qs->cap * sizeof(int32_t));
    qs->cand_ub = malloc(nu * (size_t)qs->cap * sizeof(float));
    qs->n_cand = malloc(nu * sizeof(int));
    qs->failed = malloc(nu);
    qs->seen_pos = malloc(nu * sizeof(int));
    qs->hid_pos = malloc(nu * sizeof(int));
    if (!qs->qq || !qs->s_q || !qs->c1 || !qs->c2 || !qs->G || !qs->L || !qs->Ug || !qs->corr ||
        !qs->lb || !qs->n_lb || !qs->cand || !qs->cand_ub || !qs->n_cand ||
        !qs->failed || !qs->seen_pos || !qs->hid_pos)
        goto nomem;
    return qs;
nomem:
    hl_qscan_destroy(qs);
    hl_err(errbuf, errlen, HL_ENOMEM, "quantized scan: out of memory (%d users, k %d)",
           max_users, k);
    return NULL;
}

void hl_qscan_destroy(hl_qscan *qs)
{
    if (qs == NULL)
        return;
    free(qs->qq);
    free(qs->s_q);
    free(qs->c1);
    free(qs->c2);
    free(qs->G);
    free(qs->L);
    free(qs->Ug);
    free(qs->corr);
    free(qs->lb);
    free(qs->n_lb);
    free(qs->cand);
    free(qs->cand_ub);
    free(qs->n_cand);
    free(qs->failed);
    free(qs->seen_pos);
    free(qs->hid_pos);
    free(qs);
}

/* ---- one user's query ---- */

/* The float rounding slack G of user u (see the top of the file), or a
 * negative value when the bound cannot be trusted (non-finite or near the
 * float range): the user is then scored exactly. */
static double rounding_slack(const hl_qitems *qi, double q_norm, double c2)
{
    double u = ldexp(1.0, -24);
    double m = (q_norm + c2) * (qi->n_max + qi->r_max) + qi->bias_max;
    if (!isfinite(m) || m > 1e30)
        return -1.0;
    return 4.0 * (qi->dim + 16) * u * m + 1e-30;
}

/* Quantizes user u's query; marks the user failed if it cannot be bounded. */
void hl_qscan_prep(hl_qscan *qs, int u, const float *q)
{
    const hl_qitems *qi = qs->qi;
    int8_t *qq = qs->qq + (size_t)u * qi->dp;
    double amax = 0.0, qh2 = 0.0, dq2 = 0.0, q2 = 0.0;
    int32_t sum = 0;

    for (int d = 0; d < qi->dim; d++)
        amax = fmax(amax, fabs(q[d]));         /* fmax drops a NaN: checked below */
    float s = (float)(amax / 127.0);
    for (int d = 0; d < qi->dim; d++) {
        long v = s > 0.0f ? lrint((double)q[d] / s) : 0;
        v = v > 127 ? 127 : v < -127 ? -127 : v;
        qq[d] = (int8_t)v;
        sum += (int32_t)v;
        double qh = (double)s * (double)v, dq = (double)q[d] - qh;
        qh2 += qh * qh;
        dq2 += dq * dq;
        q2 += (double)q[d] * q[d];
    }
    memset(qq + qi->dim, 0, (size_t)(qi->dp - qi->dim));
    double c1 = sqrt(qh2) * (1.0 + 1e-12), c2 = sqrt(dq2) * (1.0 + 1e-12);
    double G = isfinite(q2) ? rounding_slack(qi, sqrt(q2), c2) : -1.0;
    qs->s_q[u] = s;
    qs->corr[u] = 128 * sum;
    qs->c1[u] = up(c1);
    qs->c2[u] = up(c2);
    qs->G[u] = G >= 0.0 ? up(G) : 0.0f;
    qs->Ug[u] = item_bound(qs, u, (float)qi->r_max, (float)qi->n_max);
    qs->failed[u] = !(G >= 0.0);
    qs->L[u] = qs->failed[u] ? INFINITY : -INFINITY;   /* failed: nothing passes */
    qs->n_lb[u] = 0;
    qs->n_cand[u] = 0;
    qs->seen_pos[u] = 0;
    qs->hid_pos[u] = 0;
}

