/* foldin.c - decayed query sums of unknown items and the e_out -> e_in map
 * (the definitions are in foldin.h).
 *
 * Items are records packed at 0..n-1 in one block: a 64-byte head (the
 * counters, the id's hash and the id itself when it is short) and the
 * sums right after it, so an add touches its hash slot and the lines of
 * one record (with dim 64, five consecutive lines), not six arrays and a
 * string elsewhere: after a refresh has streamed e_out through the cache,
 * each of those was a miss (bench_foldin). Records are found through an
 * open-addressing hash of their index and hash (linear probing, at most
 * half full, grown with the items so that it stays dense): a probe reads
 * no record but its own. Eviction drops the least
 * recently touched sixteenth of max_items in one pass, packs the records
 * and rebuilds the hash: O(max_items) once per max_items/16 new items.
 * The map fit solves the ridge normal equations (dim x dim, in double) by
 * Cholesky. */
#include "foldin.h"
#include "decay.h"      /* HL_DECAY_TINY, hl_decay_flush_on, hl_decay_cell_weight */
#include "encoder.h"    /* HL_QUERY_MAX_ABS */
#include "index.h"      /* hl_map_huge */

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define ID_INLINE 24     /* ids up to this many bytes live in the head */

/* An item's head: one cache line. Its sums (dim floats) follow it. */
typedef struct item {
    uint64_t touched;
    int64_t  t_ref;
    double   M;                  /* decayed weight */
    int32_t  count;
    int32_t  published;          /* count when last published (hl_foldin_mark) */
    uint32_t len, hash;          /* hash_id(id): compared before the id */
    union { char in[ID_INLINE]; char *out; } id;   /* out: malloc'd, len > ID_INLINE */
} item;

_Static_assert(sizeof(item) == 64, "an item's head is one cache line");

/* A hash slot holds its record's hash next to its index, so a probe
 * passes the slots of other ids without loading their records: each such
 * record was a cache miss (the records outgrow the cache between batches,
 * and the prefetch fetches only the record an id's own slot names). */
typedef struct fslot {
    uint32_t hash;
    int32_t  k1;                 /* record index + 1, 0 empty */
} fslot;

struct hl_foldin {
    hl_foldin_opts o;
    double    lambda_per_ms;
    int64_t   grid_ms;           /* the sums' base grid: hl_decay_grid_ms */
    float    *W;                 /* (dim, dim) */
    double    r_mean, b_mean;    /* mean e_out norm and bias of the model */
    double    r_max, b_max;      /* largest e_out norm and |bias|: the scan's bound */
    float    *mean_in, *mean_out;  /* the model's mean e_in, e_out (dim): shrinkage */
    int       bias_model;        /* HL_FOLDIN_BIAS_MODEL */
    double    shrink;            /* c; 0 none */
    const float *m_in, *m_out, *m_bias;   /* borrowed, for neighbours */
    int32_t   m_n, T;                     /* T 0: the mean-query rule */
    int32_t   n, cap;
    char     *rec;               /* cap records of stride bytes (hl_map_huge) */
    size_t    rec_bytes;         /* its mapping */
    size_t    stride;            /* 64 + dim floats, rounded up to 64 */
    uint64_t  clock;
    fslot    *slot;  uint32_t n_slot;
    uint64_t  evicted;
    uint64_t  refused;           /* adds past HL_FOLDIN_MAX_SUM (HL_ERANGE) */
    uint64_t  baseline_refused;  /* adds the baseline left out, their item's taken */
    int32_t   ready;
    float    *G;                 /* decayed sum of every noted query (lift) */
    double    G_M;               /* its decayed weight */
    int64_t   G_t;               /* its reference time; INT64_MIN none yet */
};

static inline item *at(const hl_foldin *f, int32_t k)
{
    return (item *)(f->rec + (size_t)k * f->stride);
}

static inline float *sums(item *it) { return (float *)(it + 1); }

static inline const char *id_of(const item *it)
{
    return it->len <= ID_INLINE ? it->id.in : it->id.out;
}

/* The id's hl_item_key folded to 32 bits: the worker's decode has that
 * key in every event already (hl_event.item_key), so a note carries it
 * instead of hashing the id a third time (hl_foldin_hash_key). */
static uint32_t hash_key(uint64_t key) { return (uint32_t)(key ^ (key >> 32)); }

static uint32_t hash_id(const char *s, size_t len) { return hash_key(hl_item_key(s, len)); }

static uint32_t probe_h(const hl_foldin *f, const char *id, uint32_t len, uint32_t h)
{
    uint32_t mask = f->n_slot - 1, i = h & mask;
    while (f->slot[i].k1 != 0) {
        if (f->slot[i].hash == h) {
            const item *it = at(f, f->slot[i].k1 - 1);
            if (it->len == len && memcmp(id_of(it), id, len) == 0)
                break;
        }
        i = (i + 1) & mask;
    }
    return i;
}

static uint32_t probe(const hl_foldin *f, const char *id, uint32_t len)
{
    return probe_h(f, id, len, hash_id(id, len));
}

/* The record of id, -1 if none. */
static int32_t find(const hl_foldin *f, const char *id, uint32_t len)
{
    return f->slot[probe(f, id, len)].k1 - 1;
}

/* Every record into an empty table of n_slot slots (a power of two). */
static void rehash(hl_foldin *f)
{
    memset(f->slot, 0, (size_t)f->n_slot * sizeof *f->slot);
    for (int32_t k = 0; k < f->n; k++) {
        uint32_t h = at(f, k)->hash, i = h & (f->n_slot - 1);
        while (f->slot[i].k1 != 0)
            i = (i + 1) & (f->n_slot - 1);
        f->slot[i] = (fslot){h, k + 1};
    }
}

/* Room in the hash for one more record: doubles it past half full. */
static int slots_room(hl_foldin *f)
{
    if (2 * ((uint64_t)f->n + 1) <= f->n_slot)
        return 0;
    fslot *sl = malloc((size_t)f->n_slot * 2 * sizeof *sl);
    if (sl == NULL)
        return HL_ENOMEM;
    free(f->slot);
    f->slot = sl;
    f->n_slot *= 2;
    rehash(f);
    return 0;
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

static void model_means(hl_foldin *f, const float *e_in, const float *e_out,
                        const float *bias, int32_t n)
{
    double r = 0.0, b = 0.0;
    for (int d = 0; d < f->o.dim; d++) {
        double si = 0.0, so = 0.0;
        for (int32_t j = 0; j < n; j++) {
            si += e_in[(size_t)j * f->o.dim + d];
            so += e_out[(size_t)j * f->o.dim + d];
        }
        f->mean_in[d] = (float)(si / n);
        f->mean_out[d] = (float)(so / n);
    }
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

/* The records go in huge pages where the kernel gives them (the state
 * update and the refresh between two flushes evict the TLB as well as the
 * cache: with 4 KiB pages nearly every record cost a page walk), touched
 * only as items arrive. */
static int alloc_items(hl_foldin *f)
{
    size_t d = (size_t)f->o.dim;
    f->stride = sizeof(item) + (d * sizeof(float) + 63) / 64 * 64;
    f->n_slot = 16;
    f->rec = hl_map_huge((size_t)f->cap * f->stride, &f->rec_bytes);
    f->slot = calloc(f->n_slot, sizeof *f->slot);
    f->W = calloc(d * d, sizeof *f->W);
    f->mean_in = calloc(d, sizeof *f->mean_in);
    f->mean_out = calloc(d, sizeof *f->mean_out);
    return f->rec && f->slot && f->W && f->mean_in && f->mean_out ? 0 : HL_ENOMEM;
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
    if (!(o->distinct >= 0 && o->distinct <= 1) || !(o->lift >= 0 && o->lift <= 1)) {
        hl_err(errbuf, errlen, HL_EINVAL, "foldin: lift %g and distinct %g must be in 0..1",
               (double)o->lift, (double)o->distinct);
        return NULL;
    }
    hl_foldin *f = calloc(1, sizeof *f);
    if (f == NULL)
        goto nomem;
    f->o = *o;
    f->cap = o->max_items;
    f->lambda_per_ms = log(2.0) / o->half_life_ms;
    f->grid_ms = hl_decay_grid_ms(f->lambda_per_ms);
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
    model_means(f, e_in, e_out, bias, n);
    f->bias_model = (o->bias ? o->bias : HL_FOLDIN_BIAS) == HL_FOLDIN_BIAS_MODEL;
    f->shrink = o->shrink > 0 ? o->shrink : o->shrink < 0 ? 0.0 : HL_FOLDIN_SHRINK;
    f->T = o->neighbours == 0 ? HL_FOLDIN_NEIGHBOURS : o->neighbours > 0 ? o->neighbours : 0;
    f->T = f->T < HL_FOLDIN_NEIGHBOURS_MAX ? f->T : HL_FOLDIN_NEIGHBOURS_MAX;
    f->m_in = e_in; f->m_out = e_out; f->m_bias = bias; f->m_n = n;
    f->G_t = INT64_MIN;
    if (o->lift > 0 && (f->G = calloc((size_t)o->dim, sizeof *f->G)) == NULL)
        goto nomem;
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
    for (int32_t k = 0; f->rec && k < f->n; k++)
        if (at(f, k)->len > ID_INLINE)
            free(at(f, k)->id.out);
    if (f->rec)
        munmap(f->rec, f->rec_bytes);
    free(f->slot); free(f->W);
    free(f->mean_in); free(f->mean_out); free(f->G);
    free(f);
}

const float *hl_foldin_map(const hl_foldin *f) { return f->W; }

void hl_foldin_stats_get(const hl_foldin *f, hl_foldin_stats *st)
{
    st->items = f->n;
    st->ready = f->ready;
    st->evicted = f->evicted;
    st->refused = f->refused;
    st->baseline_refused = f->baseline_refused;
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
    for (int32_t k = 0; k < f->n; k++)
        t[k] = at(f, k)->touched;
    qsort(t, (size_t)f->n, sizeof *t, cmp_u64);
    uint64_t cut = t[f->n / 16];
    free(t);
    int32_t w = 0;
    for (int32_t k = 0; k < f->n; k++) {
        item *it = at(f, k);
        if (it->touched <= cut) {
            f->ready -= it->count >= f->o.min_events;
            if (it->len > ID_INLINE)
                free(it->id.out);
            f->evicted++;
            continue;
        }
        if (w != k)
            memcpy(at(f, w), it, f->stride);
        w++;
    }
    f->n = w;
    rehash(f);
    return 0;
}

/* A new record for id (hash h), its index; *slot is where the probe
 * stopped, refreshed when the hash changes. */
static int32_t insert(hl_foldin *f, const char *id, uint32_t len, uint32_t h, uint32_t *slot)
{
    if (f->n == f->cap && evict(f) != 0)
        return HL_ENOMEM;
    if (slots_room(f) != 0)
        return HL_ENOMEM;
    *slot = probe_h(f, id, len, h);
    item *it = at(f, f->n);
    *it = (item){.t_ref = INT64_MIN, .len = len, .hash = h};
    if (len <= ID_INLINE)
        memcpy(it->id.in, id, len);
    else if ((it->id.out = malloc(len)) != NULL)
        memcpy(it->id.out, id, len);
    else
        return HL_ENOMEM;
    memset(sums(it), 0, (size_t)f->o.dim * sizeof(float));
    f->slot[*slot] = (fslot){h, ++f->n};
    return f->n - 1;
}

#if defined(__GNUC__) && !defined(__clang__)
#define IVDEP _Pragma("GCC ivdep")
#else
#define IVDEP
#endif

/* S = a S + b q. gcc 12's -O2 vectorises only loops of a known trip count,
 * so the body is 8-wide blocks and a scalar tail, as in core/decay.c; each
 * element is still a S + b q, rounded the same (no fused multiply-add at
 * the baseline target), so the sums do not change. */
static void axpby(float *restrict S, const float *restrict q, float a, float b, int d)
{
    int i = 0;
    for (; i + 8 <= d; i += 8) {
        IVDEP
        for (int k = 0; k < 8; k++)
            S[i + k] = a * S[i + k] + b * q[i + k];
    }
    for (; i < d; i++)
        S[i] = a * S[i] + b * q[i];
}

/* Whether q[0..d) is a query fold-in takes: finite, and every |q_i| within
 * HL_QUERY_MAX_ABS, the encoder's clamp (add_fits's quick bound rests on
 * it). For floats >= 0 the order of their bits is theirs, and an infinity
 * or a NaN has the highest, so one running maximum of the bits without
 * their signs decides; 8-wide blocks, as in axpby, so that it vectorises. */
static int query_ok(const float *q, int d)
{
    uint32_t lim, m[8] = {0}, u;
    int i = 0;
    memcpy(&lim, &(float){HL_QUERY_MAX_ABS}, sizeof lim);
    for (; i + 8 <= d; i += 8) {
        IVDEP
        for (int k = 0; k < 8; k++) {
            memcpy(&u, &q[i + k], sizeof u);
            u &= 0x7fffffffu;
            m[k] = u > m[k] ? u : m[k];
        }
    }
    for (; i < d; i++) {
        memcpy(&u, &q[i], sizeof u);
        u &= 0x7fffffffu;
        m[0] = u > m[0] ? u : m[0];
    }
    for (int k = 1; k < 8; k++)
        m[0] = m[k] > m[0] ? m[k] : m[0];
    return m[0] <= lim;
}

uint32_t hl_foldin_hash(const char *id, uint32_t len) { return hash_id(id, len); }

uint32_t hl_foldin_hash_key(uint64_t item_key) { return hash_key(item_key); }

int hl_foldin_add(hl_foldin *f, const char *id, uint32_t len, const float *q, float w,
                  int64_t ts_ms)
{
    int32_t due;
    return hl_foldin_add_due(f, id, len, hash_id(id, len), q, w, ts_ms, &due);
}

/* exp(-lambda dt_ms), 0 below HL_DECAY_TINY, as core/decay.c cuts. */
static double factor(const hl_foldin *f, int64_t dt_ms)
{
    double g = exp(-f->lambda_per_ms * (double)dt_ms);
    return g < HL_DECAY_TINY ? 0.0 : g;
}

/* The coefficients of one add of w q at ts_ms to sums at *t_ref
 * (INT64_MIN: empty): S' = a S + b q, M' = a M + b. The sums are kept at
 * a base, t_ref rounded down to grid_ms, as users' heads are (decay.h):
 * decayed straight to each add, a factor rounded to float is exactly 1
 * once lambda dt < 2^-25, and an item or the lift's baseline fed events
 * closer than 112 ms (a 30-day half-life; the baseline takes every new
 * item's) never decayed at all. The sums move only when an add enters a
 * later cell; an add in the cell weighs w exp(lambda (ts - base)), at
 * most w (1 + 2^-12): hl_decay_cell_weight, as a head's add does. */
static void add_coeffs(const hl_foldin *f, int64_t t_ref, int64_t ts_ms, float w, float *a,
                       float *b)
{
    int64_t mask = -f->grid_ms, to = ts_ms & mask, base = t_ref & mask;
    *a = 1.0f;
    *b = w;
    if (t_ref == INT64_MIN || ts_ms >= t_ref) {
        if (t_ref != INT64_MIN && to != base)
            *a = (float)factor(f, to - base);
        *b = hl_decay_cell_weight(f->lambda_per_ms, f->grid_ms, ts_ms, w);
    } else {            /* late: ts may be after the base, by less than a cell */
        *b = (float)((double)w * factor(f, base - ts_ms));
    }
}

/* One weighted query into decayed sums S (dim floats) and mass *M at
 * reference time *t_ref (INT64_MIN: empty): the sums decay to a newer ts,
 * a late event is decayed to *t_ref instead. An item's sums and the
 * lift's baseline both go through here. The rule is users' heads'
 * (core/decay.c): an item idle for long (a factor of 2^-130 is a
 * subnormal float, two of 2^-70 make one) or a tiny weight would
 * otherwise leave subnormal sums, and every later add of the item would
 * take the slow path; under flush-to-zero they are exactly 0. */
static void decayed_add(const hl_foldin *f, float *S, double *M, int64_t *t_ref,
                        const float *q, float w, int64_t ts_ms)
{
    unsigned csr = hl_decay_flush_on();
    float a, b;
    add_coeffs(f, *t_ref, ts_ms, w, &a, &b);
    axpby(S, q, a, b, f->o.dim);
    *M = a * *M + b;
    if (*t_ref == INT64_MIN || ts_ms > *t_ref)
        *t_ref = ts_ms;
    hl_decay_flush_off(csr);
}

/* Whether decayed_add would keep every |S_i| and M within
 * HL_FOLDIN_MAX_SUM (foldin.h says why). S NULL: an empty record, its
 * sums 0. Every query added had |q_i| <= 2^64 (query_ok), and S and M
 * take the same a and b, so |S_i| <= M 2^64 but for float rounding: a
 * new mass within 2^36 keeps the sums within 2^100, a 16-fold margin
 * for that rounding, and is decided without reading them. Only a mass
 * beyond (weights near event.max.weight's 1e30) reads every sum: that
 * pass, twice an add (item and baseline), cost fold-in 1.7% of the
 * state update at 10% unknown items (bench_foldin, 2026-12-07). */
static int add_fits(const hl_foldin *f, const float *S, double M, int64_t t_ref,
                    const float *q, float w, int64_t ts_ms)
{
    float a, b;
    uint32_t bad = 0;
    add_coeffs(f, t_ref, ts_ms, w, &a, &b);
    if (S == NULL ? b <= 0x1p36 : a * M + b <= 0x1p36)
        return 1;
    const float *s = S != NULL ? S : q;
    a = S != NULL ? a : 0.0f;
    for (int i = 0; i < f->o.dim; i++)
        bad |= !(fabsf(a * s[i] + b * q[i]) <= HL_FOLDIN_MAX_SUM);
    return !bad && a * M + b <= HL_FOLDIN_MAX_SUM;
}

/* The baseline's add, or a refusal (counted apart from the items': the
 * event was taken, its item's add returns 0 or 1) that leaves it as it was. */
static void baseline_add(hl_foldin *f, const float *q, float w, int64_t ts_ms)
{
    if (add_fits(f, f->G, f->G_M, f->G_t, q, w, ts_ms))
        decayed_add(f, f->G, &f->G_M, &f->G_t, q, w, ts_ms);
    else
        f->baseline_refused++;
}

void hl_foldin_baseline_add(hl_foldin *f, const float *q, float w, int64_t ts_ms)
{
    if (f->G != NULL && w >= 0 && isfinite(w) && query_ok(q, f->o.dim))
        baseline_add(f, q, w, ts_ms);
}

/* hl_foldin_due of a record at hand. */
static int32_t due_of(const hl_foldin *f, const item *it)
{
    int32_t n = it->count;
    /* a count at its cap (hl_foldin_add_due) stands for 2^31, so the
     * doubling from 2^30 still comes, once */
    int64_t seen = (int64_t)n + (n == INT32_MAX);
    if (n < f->o.min_events || (it->published > 0 && seen < 2 * (int64_t)it->published))
        return 0;
    return n;
}

int hl_foldin_add_due(hl_foldin *f, const char *id, uint32_t len, uint32_t h, const float *q,
                      float w, int64_t ts_ms, int32_t *due)
{
    int d = f->o.dim;
    *due = 0;
    if (!(w >= 0) || !isfinite(w) || len < 1 || len > HL_MAX_ID_LEN || !query_ok(q, d))
        return HL_EINVAL;
    /* An event of weight 0 (a type weighted 0, a weight field of 0) adds
     * nothing to S or M: counted, it made an item seen only in such events
     * ready with S = M = 0, every model item tied at score 0, and it went
     * out with the vectors of the model's first rows. min.events counts
     * interactions that carry weight. */
    if (w == 0.0f)
        return 0;
    uint32_t slot = probe_h(f, id, len, h);
    int32_t k = f->slot[slot].k1 - 1;
    item *it = k >= 0 ? at(f, k) : NULL;
    if (!(it ? add_fits(f, sums(it), it->M, it->t_ref, q, w, ts_ms)
             : add_fits(f, NULL, 0.0, INT64_MIN, q, w, ts_ms))) {
        f->refused++;
        return HL_ERANGE;
    }
    if (k < 0 && (k = insert(f, id, len, h, &slot)) < 0)
        return k;
    it = at(f, k);
    decayed_add(f, sums(it), &it->M, &it->t_ref, q, w, ts_ms);
    if (f->G != NULL && !f->o.lift_all)     /* w and q were checked above */
        baseline_add(f, q, w, ts_ms);
    it->touched = ++f->clock;
    /* an int32 in the one-line head: 2^31 events on one item would
     * overflow it (undefined); it stops at the cap instead */
    int now_ready = it->count < INT32_MAX && ++it->count == f->o.min_events;
    f->ready += now_ready;
    *due = due_of(f, it);
    return now_ready;
}

/* Two rounds over the group, each issuing every item's next load before
 * any is waited for: the hash slots, then the records the slots name
 * (head and sums, consecutive lines): the first slot of the probe whose
 * hash is the item's, the record the add will find unless two ids share
 * a hash. Inlined by force: gcc 12 found the
 * out-of-line version "looping pure" (prefetches are no side effect to
 * it) and dropped the call, so before this the hint issued nothing. */
HL_PREFETCH_FN void
prefetch_group(const hl_foldin *f, const uint32_t *h, int n)
{
    uint32_t at_slot[64], mask = f->n_slot - 1;
    for (int i = 0; i < n; i++) {
        at_slot[i] = h[i] & mask;
        __builtin_prefetch(&f->slot[at_slot[i]]);
    }
    for (int i = 0; i < n; i++) {
        uint32_t j = at_slot[i];
        while (f->slot[j].k1 != 0 && f->slot[j].hash != h[i])
            j = (j + 1) & mask;
        int32_t k = f->slot[j].k1 - 1;
        if (k < 0)
            continue;
        const char *r = (const char *)at(f, k);
        for (size_t b = 0; b < f->stride; b += 64)
            __builtin_prefetch(r + b, 1);
    }
}

void hl_foldin_prefetch(const hl_foldin *f, const uint32_t *h, int n)
{
    for (int i0 = 0; i0 < n; i0 += 64)
        prefetch_group(f, h + i0, n - i0 < 64 ? n - i0 : 64);
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

/* v = a v + (1 - a) mean, a = M / (M + c): towards the model's mean item. */
static void shrink_to_mean(const hl_foldin *f, double M, float *e_in, float *e_out,
                           float *bias)
{
    double a = M / (M + f->shrink);
    for (int i = 0; i < f->o.dim; i++) {
        e_in[i] = (float)(a * e_in[i] + (1.0 - a) * f->mean_in[i]);
        e_out[i] = (float)(a * e_out[i] + (1.0 - a) * f->mean_out[i]);
    }
    *bias = (float)(a * *bias + (1.0 - a) * f->b_mean);
}

static void neighbour_vectors(const hl_foldin *f, const float *S, double M, float *e_in,
                              float *e_out, float *bias, int scan)
{
    int32_t top[HL_FOLDIN_NEIGHBOURS_MAX];
    float *x = scan ? malloc((size_t)f->m_n * sizeof *x) : NULL;
    double Ml = (1.0 - f->o.lift) * M;          /* lift: the bias counts less */
    int n_top = x ? top_items_scan(f, S, Ml, top, x) : top_items(f, S, Ml, top), d = f->o.dim;
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
    *bias = (float)(f->bias_model ? f->b_mean : b / n_top);
    if (f->shrink > 0)
        shrink_to_mean(f, M, e_in, e_out, bias);
}

int hl_foldin_sums(const hl_foldin *f, const char *id, uint32_t len, float *S, double *M)
{
    int32_t k = find(f, id, len);
    if (k < 0 || at(f, k)->count < f->o.min_events)
        return HL_ENOENT;
    const item *it = at(f, k);
    const float *si = (const float *)(it + 1);
    memcpy(S, si, (size_t)f->o.dim * sizeof *S);
    *M = it->M;
    if (f->G == NULL)
        return 0;
    /* The lift: less beta M times the mean query of the other items'
     * users (the baseline without this item's own events, its sums
     * decayed to the baseline's time); none while no other user is in it. */
    int64_t mask = -f->grid_ms, g_base = f->G_t & mask, i_base = it->t_ref & mask;
    double a = g_base > i_base ? exp(-f->lambda_per_ms * (double)(g_base - i_base)) : 1.0;
    double m_other = f->G_M - a * it->M;
    if (!(m_other > 1e-6 * f->G_M))
        return 0;
    /* A baseline of a few other items is no population: two items launched
     * together and bought by the same users would cancel each other out
     * (r = 0, neighbours by row order). beta' = beta M' / (M' + M) keeps at
     * least half of the item's own direction then, and is near beta once
     * the others weigh well above the item. */
    double beta = f->o.lift * m_other / (m_other + HL_FOLDIN_LIFT_OTHERS * it->M);
    double c = beta * it->M / m_other, raw = 0.0, lifted = 0.0;
    for (int i = 0; i < f->o.dim; i++) {
        S[i] = (float)(si[i] - c * (f->G[i] - a * si[i]));
        raw += (double)si[i] * si[i];
        lifted += (double)S[i] * S[i];
    }
    /* The distinct gate: squared lengths, so distinct^2 */
    double d = f->o.distinct;
    return lifted < d * d * raw ? HL_FOLDIN_NOT_DISTINCT : 0;
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
    int32_t k = find(f, id, len);
    return k < 0 ? 0 : due_of(f, at(f, k));
}

void hl_foldin_mark(hl_foldin *f, const char *id, uint32_t len, int64_t count)
{
    int32_t k = find(f, id, len);
    if (k >= 0)
        at(f, k)->published = count > INT32_MAX ? INT32_MAX : (int32_t)count;
}
