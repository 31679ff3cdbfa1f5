/* foldin.c - decayed query sums of unknown items and the e_out -> e_in map
 * (the definitions are in foldin.h).
 *
 * Items live in parallel arrays packed at 0..n-1, found by id through an
 * open-addressing hash of their index (linear probing, at most half full).
 * Eviction drops the least recently touched sixteenth of max_items in one
 * pass, packs the arrays and rebuilds the hash: O(max_items) once per
 * max_items/16 new items. The map fit solves the ridge normal equations
 * (dim x dim, in double) by Cholesky. */
#include "foldin.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct hl_foldin {
    hl_foldin_opts o;
    double    lambda_per_ms;
    float    *W;                 /* (dim, dim) */
    double    r_mean, b_mean;    /* mean e_out norm and bias of the model */
    double    r_max, b_max;      /* largest e_out norm and |bias|: the scan's bound */
    const float *m_in, *m_out, *m_bias;   /* borrowed, for neighbours */
    int32_t   m_n, T;                     /* T 0: the mean-query rule */
    int32_t   n, cap;
    char    **id;   uint32_t *len;
    float    *S;                 /* (cap, dim) decayed query sums */
    double   *M;                 /* decayed weight */
    int32_t  *count;
    int32_t  *published;         /* count when last published (hl_foldin_take_due) */
    int64_t  *t_ref;
    uint64_t *touched, clock;
    int32_t  *slot;  uint32_t n_slot;  /* index + 1, 0 empty */
    uint64_t  evicted;
    int32_t   ready;
};

static uint32_t hash_id(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static uint32_t probe(const hl_foldin *f, const char *id, uint32_t len)
{
    uint32_t mask = f->n_slot - 1, i = hash_id(id, len) & mask;
    while (f->slot[i] != 0) {
        int32_t k = f->slot[i] - 1;
        if (f->len[k] == len && memcmp(f->id[k], id, len) == 0)
            break;
        i = (i + 1) & mask;
    }
    return i;
}

static void rehash(hl_foldin *f)
{
    memset(f->slot, 0, (size_t)f->n_slot * sizeof *f->slot);
    for (int32_t k = 0; k < f->n; k++)
        f->slot[probe(f, f->id[k], f->len[k])] = k + 1;
}

/* ---- the map ---- */

/* A (d, d) symmetric positive definite, in place: its Cholesky factor L
 * (lower). 0 or HL_ERANGE when A is not positive definite. */
static int cholesky(double *A, int d)
{
    for (int j = 0; j < d; j++) {
        double s = A[j * d + j];
        for (int k = 0; k < j; k++)
            s -= A[j * d + k] * A[j * d + k];
        if (!(s > 0.0))
            return HL_ERANGE;
        A[j * d + j] = sqrt(s);
        for (int i = j + 1; i < d; i++) {
            double t = A[i * d + j];
            for (int k = 0; k < j; k++)
                t -= A[i * d + k] * A[j * d + k];
            A[i * d + j] = t / A[j * d + j];
        }
    }
    return 0;
}

/* Solves L L^T x = b in place, b (d). */
static void chol_solve(const double *L, int d, double *b)
{
    for (int i = 0; i < d; i++) {
        for (int k = 0; k < i; k++)
            b[i] -= L[i * d + k] * b[k];
        b[i] /= L[i * d + i];
    }
    for (int i = d - 1; i >= 0; i--) {
        for (int k = i + 1; k < d; k++)
            b[i] -= L[k * d + i] * b[k];
        b[i] /= L[i * d + i];
    }
}

/* W = (E_out^T E_out + ridge I)^-1 E_out^T E_in, column by column. */
static int fit_map(hl_foldin *f, const float *e_in, const float *e_out, int32_t n)
{
    int d = f->o.dim;
    double *A = calloc((size_t)d * d, sizeof *A), *B = calloc((size_t)d * d, sizeof *B);
    double *col = malloc((size_t)d * sizeof *col);
    if (!A || !B || !col) {
        free(A); free(B); free(col);
        return HL_ENOMEM;
    }
    for (int32_t j = 0; j < n; j++) {
        const float *x = e_out + (size_t)j * d, *y = e_in + (size_t)j * d;
        for (int a = 0; a < d; a++)
            for (int b = 0; b < d; b++) {
                A[a * d + b] += (double)x[a] * x[b];
                B[a * d + b] += (double)x[a] * y[b];
            }
    }
    double tr = 0.0;
    for (int a = 0; a < d; a++)
        tr += A[a * d + a];
    double ridge = f->o.ridge > 0 ? f->o.ridge : 1e-3 * tr / d + 1e-12;
    for (int a = 0; a < d; a++)
        A[a * d + a] += ridge;
    int rc = cholesky(A, d);
    for (int c = 0; rc == 0 && c < d; c++) {
        for (int a = 0; a < d; a++)
            col[a] = B[a * d + c];
        chol_solve(A, d, col);
        for (int a = 0; a < d; a++)
            f->W[a * d + c] = (float)col[a];
    }
    free(A); free(B); free(col);
    return rc;
}

static void model_means(hl_foldin *f, const float *e_out, const float *bias, int32_t n)
{
    double r = 0.0, b = 0.0;
    for (int32_t j = 0; j < n; j++) {
        double s = 0.0;
        for (int d = 0; d < f->o.dim; d++)
            s += (double)e_out[(size_t)j * f->o.dim + d] * e_out[(size_t)j * f->o.dim + d];
        r += sqrt(s);
        b += bias[j];
        f->r_max = sqrt(s) > f->r_max ? sqrt(s) : f->r_max;
        f->b_max = fabs(bias[j]) > f->b_max ? fabs(bias[j]) : f->b_max;
    }
    f->r_mean = r / n;
    f->b_mean = b / n;
}

/* ---- create / destroy ---- */

static int alloc_items(hl_foldin *f)
{
    size_t cap = (size_t)f->cap, d = (size_t)f->o.dim;
    f->n_slot = 16;
    while (f->n_slot < 2 * cap)
        f->n_slot *= 2;
    f->id = calloc(cap, sizeof *f->id);
    f->len = calloc(cap, sizeof *f->len);
    f->S = calloc(cap * d, sizeof *f->S);
    f->M = calloc(cap, sizeof *f->M);
    f->count = calloc(cap, sizeof *f->count);
    f->published = calloc(cap, sizeof *f->published);
    f->t_ref = calloc(cap, sizeof *f->t_ref);
    f->touched = calloc(cap, sizeof *f->touched);
    f->slot = calloc(f->n_slot, sizeof *f->slot);
    f->W = calloc(d * d, sizeof *f->W);
    return f->id && f->len && f->S && f->M && f->count && f->published && f->t_ref && f->touched &&
           f->slot && f->W ? 0 : HL_ENOMEM;
}

hl_foldin *hl_foldin_create(const hl_foldin_opts *o, const float *e_in, const float *e_out,
                            const float *bias, int32_t n, char *errbuf, size_t errlen)
{
    if (o->dim < 1 || o->max_items < 1 || o->min_events < 1 || n < 1 ||
        !(o->half_life_ms > 0) || !isfinite(o->half_life_ms) || !(o->ridge >= 0)) {
        hl_err(errbuf, errlen, HL_EINVAL, "foldin: dim %d, max_items %d, min_events %d, "
               "half-life %g ms, %d model items: each must be positive", o->dim,
               (int)o->max_items, o->min_events, o->half_life_ms, (int)n);
        return NULL;
    }
    hl_foldin *f = calloc(1, sizeof *f);
    if (f == NULL)
        goto nomem;
    f->o = *o;
    f->cap = o->max_items;
    f->lambda_per_ms = log(2.0) / o->half_life_ms;
    if (alloc_items(f) != 0)
        goto nomem;
    int rc = fit_map(f, e_in, e_out, n);
    if (rc == HL_ENOMEM)
        goto nomem;
    if (rc != 0) {
        hl_err(errbuf, errlen, rc, "foldin: the model's e_out does not span its space "
               "(the map e_out -> e_in cannot be fitted)");
        hl_foldin_destroy(f);
        return NULL;
    }
    model_means(f, e_out, bias, n);
    f->T = o->neighbours == 0 ? HL_FOLDIN_NEIGHBOURS : o->neighbours > 0 ? o->neighbours : 0;
    f->T = f->T < HL_FOLDIN_NEIGHBOURS_MAX ? f->T : HL_FOLDIN_NEIGHBOURS_MAX;
    f->m_in = e_in; f->m_out = e_out; f->m_bias = bias; f->m_n = n;
    return f;
nomem:
    hl_foldin_destroy(f);
    hl_err(errbuf, errlen, HL_ENOMEM, "foldin: out of memory (max_items %d)", (int)o->max_items);
    return NULL;
}

void hl_foldin_destroy(hl_foldin *f)
{
    if (f == NULL)
        return;
    for (int32_t k = 0; f->id && k < f->n; k++)
        free(f->id[k]);
    free(f->id); free(f->len); free(f->S); free(f->M); free(f->count); free(f->published);
    free(f->t_ref); free(f->touched); free(f->slot); free(f->W);
    free(f);
}

const float *hl_foldin_map(const hl_foldin *f) { return f->W; }

void hl_foldin_stats_get(const hl_foldin *f, hl_foldin_stats *st)
{
    st->items = f->n;
    st->ready = f->ready;
    st->evicted = f->evicted;
}

/* ---- items ---- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Drops the least recently touched sixteenth (at least one item). */
static int evict(hl_foldin *f)
{
    uint64_t *t = malloc((size_t)f->n * sizeof *t);
    if (t == NULL)
        return HL_ENOMEM;
    memcpy(t, f->touched, (size_t)f->n * sizeof *t);
    qsort(t, (size_t)f->n, sizeof *t, cmp_u64);
    uint64_t cut = t[f->n / 16];
    free(t);
    int32_t w = 0, d = f->o.dim;
    for (int32_t k = 0; k < f->n; k++) {
        if (f->touched[k] <= cut) {
            f->ready -= f->count[k] >= f->o.min_events;
            free(f->id[k]);
            f->evicted++;
            continue;
        }
        f->id[w] = f->id[k]; f->len[w] = f->len[k]; f->M[w] = f->M[k];
        f->count[w] = f->count[k]; f->published[w] = f->published[k]; f->t_ref[w] = f->t_ref[k]; f->touched[w] = f->touched[k];
        memmove(f->S + (size_t)w * d, f->S + (size_t)k * d, (size_t)d * sizeof(float));
        w++;
    }
    f->n = w;
    rehash(f);
    return 0;
}

static int32_t insert(hl_foldin *f, const char *id, uint32_t len, uint32_t *slot)
{
    if (f->n == f->cap) {
        if (evict(f) != 0)
            return HL_ENOMEM;
        *slot = probe(f, id, len);
    }
    char *own = malloc(len);
    if (own == NULL)
        return HL_ENOMEM;
    memcpy(own, id, len);
    int32_t k = f->n++;
    f->id[k] = own;
    f->len[k] = len;
    f->M[k] = 0.0;
    f->count[k] = 0;
    f->published[k] = 0;
    f->t_ref[k] = INT64_MIN;
    memset(f->S + (size_t)k * f->o.dim, 0, (size_t)f->o.dim * sizeof(float));
    f->slot[*slot] = k + 1;
    return k;
}

int hl_foldin_add(hl_foldin *f, const char *id, uint32_t len, const float *q, float w,
                  int64_t ts_ms)
{
    int d = f->o.dim, bad = !(w >= 0) || !isfinite(w) || len < 1 || len > HL_MAX_ID_LEN;
    for (int i = 0; i < d && !bad; i++)
        bad = !isfinite(q[i]);
    if (bad)
        return HL_EINVAL;
    uint32_t slot = probe(f, id, len);
    int32_t k = f->slot[slot] ? f->slot[slot] - 1 : insert(f, id, len, &slot);
    if (k < 0)
        return k;
    float *S = f->S + (size_t)k * d;
    float a = 1.0f, b = w;
    if (f->t_ref[k] != INT64_MIN && ts_ms >= f->t_ref[k])   /* decay the sums to ts */
        a = (float)exp(-f->lambda_per_ms * (double)(ts_ms - f->t_ref[k]));
    else if (f->t_ref[k] != INT64_MIN)                        /* late: decay the event */
        b = w * (float)exp(-f->lambda_per_ms * (double)(f->t_ref[k] - ts_ms));
    for (int i = 0; i < d; i++)
        S[i] = a * S[i] + b * q[i];
    f->M[k] = a * f->M[k] + b;
    if (f->t_ref[k] == INT64_MIN || ts_ms > f->t_ref[k])
        f->t_ref[k] = ts_ms;
    f->touched[k] = ++f->clock;
    int now_ready = ++f->count[k] == f->o.min_events;
    f->ready += now_ready;
    return now_ready;
}

/* Three rounds over the group, each issuing every item's next load before
 * any is waited for: the hash slots, then the entries the slots name, then
 * their id strings. */
static void prefetch_group(const hl_foldin *f, const char *const *id, const uint32_t *len,
                           int n)
{
    uint32_t at[64];
    int32_t k[64];
    size_t row = (size_t)f->o.dim * sizeof(float);
    for (int i = 0; i < n; i++) {
        at[i] = hash_id(id[i], len[i]) & (f->n_slot - 1);
        __builtin_prefetch(&f->slot[at[i]]);
    }
    for (int i = 0; i < n; i++) {
        if ((k[i] = f->slot[at[i]] - 1) < 0)
            continue;
        const char *S = (const char *)(f->S + (size_t)k[i] * f->o.dim);
        for (size_t b = 0; b < row; b += 64)
            __builtin_prefetch(S + b, 1);
        __builtin_prefetch(&f->id[k[i]]);
        __builtin_prefetch(&f->len[k[i]]);
        __builtin_prefetch(&f->M[k[i]], 1);
        __builtin_prefetch(&f->t_ref[k[i]], 1);
        __builtin_prefetch(&f->touched[k[i]], 1);
        __builtin_prefetch(&f->count[k[i]], 1);
        __builtin_prefetch(&f->published[k[i]]);
    }
    for (int i = 0; i < n; i++)
        if (k[i] >= 0)
            __builtin_prefetch(f->id[k[i]]);
}

void hl_foldin_prefetch(const hl_foldin *f, const char *const *id, const uint32_t *len, int n)
{
    for (int i0 = 0; i0 < n; i0 += 64)
        prefetch_group(f, id + i0, len + i0, n - i0 < 64 ? n - i0 : 64);
}

/* The T model items the mean query S/M scores highest (S . e_out + M b,
 * the same order), best first, into top; their number. */
static void offer(const hl_foldin *f, double s, int32_t j, double *sc, int32_t *top,
                  int *n_top);
static double exact_score(const hl_foldin *f, const float *S, double M, int32_t j);

static int top_items(const hl_foldin *f, const float *S, double M, int32_t *top)
{
    double sc[HL_FOLDIN_NEIGHBOURS_MAX];
    int n_top = 0;
    for (int32_t j = 0; j < f->m_n; j++)
        offer(f, exact_score(f, S, M, j), j, sc, top, &n_top);
    return n_top;
}

/* s = S . e_out[j] + M b[j], in double, the terms in a fixed order: the
 * score every path ranks by. */
static double exact_score(const hl_foldin *f, const float *S, double M, int32_t j)
{
    double s = (double)f->m_bias[j] * M;
    for (int i = 0; i < f->o.dim; i++)
        s += (double)S[i] * f->m_out[(size_t)j * f->o.dim + i];
    return s;
}

/* Offers item j with score s to top (n_top of at most T, best first;
 * equal scores keep the lower row first, as rows come in ascending). */
static void offer(const hl_foldin *f, double s, int32_t j, double *sc, int32_t *top,
                  int *n_top)
{
    if (*n_top == f->T && s <= sc[*n_top - 1])
        return;
    int p = *n_top < f->T ? (*n_top)++ : f->T - 1;
    for (; p > 0 && sc[p - 1] < s; p--) {
        sc[p] = sc[p - 1];
        top[p] = top[p - 1];
    }
    sc[p] = s;
    top[p] = j;
}

/* The T-th largest of x[0..n), -FLT_MAX when n < T. */
static float kth_largest(const hl_foldin *f, const float *x, int32_t n)
{
    float best[HL_FOLDIN_NEIGHBOURS_MAX];
    int m = 0;
    for (int32_t j = 0; j < n; j++) {
        if (m == f->T && x[j] <= best[m - 1])
            continue;
        int p = m < f->T ? m++ : f->T - 1;
        for (; p > 0 && best[p - 1] < x[j]; p--)
            best[p] = best[p - 1];
        best[p] = x[j];
    }
    return m == f->T ? best[m - 1] : -FLT_MAX;
}

/* top_items' answer, to the bit, from one sgemv: every item's score in
 * float (sc, m_n floats), then only the items whose float score is within
 * twice the rounding bound of the T-th best are scored exactly and
 * ranked. The bound: a float dot product of dim terms plus the bias is
 * within gamma_{dim+2} (|M b_j| + sum |S_i e_ji|) of the exact one in any
 * summation order, and sum |S_i e_ji| <= |S| |e_j| (Cauchy-Schwarz), so
 * eps = gamma (M b_max + |S| r_max) covers every item. An item of the true
 * top T has float score >= its exact score - eps >= the T-th exact score
 * - eps >= the T-th float score - 2 eps: it is a candidate. */
static int top_items_scan(const hl_foldin *f, const float *S, double M, int32_t *top,
                          float *x)
{
    double sc[HL_FOLDIN_NEIGHBOURS_MAX], nrm = 0.0;
    int n_top = 0, d = f->o.dim;
    for (int32_t j = 0; j < f->m_n; j++)
        x[j] = (float)((double)f->m_bias[j] * M);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, f->m_n, d, 1.0f, f->m_out, d, S, 1, 1.0f, x, 1);
    for (int i = 0; i < d; i++)
        nrm += (double)S[i] * S[i];
    double u = ldexp(1.0, -24), gamma = (d + 2) * u / (1.0 - (d + 2) * u);
    double eps = 2.0 * gamma * (fabs(M) * f->b_max + sqrt(nrm) * f->r_max) + DBL_MIN;
    double cut = (double)kth_largest(f, x, f->m_n) - 2.0 * eps;
    for (int32_t j = 0; j < f->m_n; j++)
        if ((double)x[j] >= cut)
            offer(f, exact_score(f, S, M, j), j, sc, top, &n_top);
    return n_top;
}

static void neighbour_vectors(const hl_foldin *f, const float *S, double M, float *e_in,
                              float *e_out, float *bias, int scan)
{
    int32_t top[HL_FOLDIN_NEIGHBOURS_MAX];
    float *x = scan ? malloc((size_t)f->m_n * sizeof *x) : NULL;
    int n_top = x ? top_items_scan(f, S, M, top, x) : top_items(f, S, M, top), d = f->o.dim;
    free(x);                        /* out of memory: the plain loop, the same answer */
    double b = 0.0;
    memset(e_in, 0, (size_t)d * sizeof *e_in);
    memset(e_out, 0, (size_t)d * sizeof *e_out);
    for (int t = 0; t < n_top; t++) {
        for (int i = 0; i < d; i++) {
            e_in[i] += f->m_in[(size_t)top[t] * d + i] / n_top;
            e_out[i] += f->m_out[(size_t)top[t] * d + i] / n_top;
        }
        b += f->m_bias[top[t]];
    }
    *bias = (float)(b / n_top);
}

int hl_foldin_sums(const hl_foldin *f, const char *id, uint32_t len, float *S, double *M)
{
    uint32_t slot = probe(f, id, len);
    if (f->slot[slot] == 0 || f->count[f->slot[slot] - 1] < f->o.min_events)
        return HL_ENOENT;
    int32_t k = f->slot[slot] - 1;
    memcpy(S, f->S + (size_t)k * f->o.dim, (size_t)f->o.dim * sizeof *S);
    *M = f->M[k];
    return 0;
}

static void vectors_from(const hl_foldin *f, const float *S, double M, float *e_in,
                         float *e_out, float *bias, int scan)
{
    int d = f->o.dim;
    if (f->T > 0) {
        neighbour_vectors(f, S, M, e_in, e_out, bias, scan);
        return;
    }
    double nrm = 0.0;
    for (int i = 0; i < d; i++)
        nrm += (double)S[i] * S[i];
    nrm = sqrt(nrm);
    for (int i = 0; i < d; i++)
        e_out[i] = nrm > 0.0 ? (float)(S[i] / nrm * f->r_mean) : 0.0f;
    for (int c = 0; c < d; c++) {
        double s = 0.0;
        for (int a = 0; a < d; a++)
            s += (double)e_out[a] * f->W[a * d + c];
        e_in[c] = (float)s;
    }
    *bias = (float)(f->b_mean + log1p(M) - log1p((double)f->o.min_events));
}

void hl_foldin_vectors_from(const hl_foldin *f, const float *S, double M, float *e_in,
                            float *e_out, float *bias)
{
    vectors_from(f, S, M, e_in, e_out, bias, 1);
}

void hl_foldin_vectors_from_naive(const hl_foldin *f, const float *S, double M, float *e_in,
                                  float *e_out, float *bias)
{
    vectors_from(f, S, M, e_in, e_out, bias, 0);
}

int hl_foldin_vectors(const hl_foldin *f, const char *id, uint32_t len,
                      float *e_in, float *e_out, float *bias)
{
    double M;
    float *S = malloc((size_t)f->o.dim * sizeof *S);
    if (S == NULL)
        return HL_ENOMEM;
    int rc = hl_foldin_sums(f, id, len, S, &M);
    if (rc == 0)
        hl_foldin_vectors_from(f, S, M, e_in, e_out, bias);
    free(S);
    return rc;
}

/* Publications double: each one is worth twice the interactions of the
 * one before (this worker's or, through hl_foldin_mark, the topic's), so
 * an item seen n times costs O(log n) records and a fresh accumulator
 * (after a restart) never replaces a better estimate with a poorer one. */
int32_t hl_foldin_due(const hl_foldin *f, const char *id, uint32_t len)
{
    uint32_t slot = probe(f, id, len);
    if (f->slot[slot] == 0)
        return 0;
    int32_t k = f->slot[slot] - 1, n = f->count[k];
    if (n < f->o.min_events || (f->published[k] > 0 && n < 2 * (int64_t)f->published[k]))
        return 0;
    return n;
}

void hl_foldin_mark(hl_foldin *f, const char *id, uint32_t len, int64_t count)
{
    uint32_t slot = probe(f, id, len);
    if (f->slot[slot] != 0)
        f->published[f->slot[slot] - 1] = count > INT32_MAX ? INT32_MAX : (int32_t)count;
}
