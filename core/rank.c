/* rank.c - batch refresh: encoder, blocked scoring, running top-K,
 * exclusions and `because` (the definitions are in rank.h).
 *
 * The score matrix of a batch (n users x N items) is too large to keep
 * (256 x 1M floats is 1 GiB), and writing it out would cost more than
 * computing it. So items go by in blocks of r->block: one SGEMM writes the
 * (n, block) scores into a scratch that stays in cache, excluded items are
 * overwritten with -inf, and one pass per row offers each score to the
 * row's min-heap of the k best so far. The pass compares sixteen scores at
 * a time against the row's threshold (the heap's worst entry once it is
 * full) and only touches the heap when one beats it, which after the first
 * few blocks is rare: the pass costs a small fraction of the SGEMM. Seen
 * items are sorted once per refresh, so each block finds its own with a
 * cursor.
 *
 * Ties: blocks and rows are scanned in ascending item order and an item
 * enters a full heap only if its score is strictly above the threshold, so
 * among equal scores the lower row wins; the heap's keys (make_key) break
 * ties the same way. Every buffer is sized at create: refresh never
 * allocates. hl_ranker_refresh_naive (rank_naive.c) is the plain-loop twin.
 *
 * Batch independence. SGEMM's result for one row depends in its last bits
 * on the shape of the call (OpenBLAS picks kernels and edge paths by M, N
 * and K), so a user scored alone and in a batch of 256 got scores 6e-8
 * apart, enough to swap two near-equal items after a crash replay. So
 * nothing published depends on the batch: each user's query is encoded by
 * a kernel here whose every output is one fixed chain of fused
 * multiply-adds (encode, layer_avx2 / layer_plain); the blocked SGEMM only
 * picks k + DET_PAD candidates per user; each candidate is rescored with a
 * fixed-order dot product (det_score) and the list is the best k of those
 * scores, lower row first on equal scores. The candidates provably hold
 * that list when the k-th exact score beats the worst candidate's SGEMM
 * score by more than both scores' rounding bound (det_margin: the textbook
 * bound gamma_n sum |q_d e_d|, with Cauchy-Schwarz over every item); when
 * it does not (exact ties at the cut), that user is rescored over every
 * item with det_score (rescan_exact), which is slow but rare.
 *
 * The live catalogue (hl_ranker_set_catalogue) adds two things: its hidden
 * rows are set to -inf in each block next to the seen items, and its side
 * items are more blocks after the model's, read from their own matrix
 * (out_row, bias_of), so the model's e_out is never copied or grown. On the
 * two-stage path the hidden rows are excluded inside the int8 scan like
 * the user's exclusions, and the side items are scored with det_score and
 * seed the scan's k-th lower bound (two_stage_scan, select_cands).
 *
 * Two-stage scoring (HL_SCORING_TWO_STAGE). The published list is defined
 * by det_score alone: the best k of det_score over the items not excluded,
 * lower row first on equal scores. The exact path above finds it with
 * SGEMM candidates; the two-stage path finds it with candidates from the
 * int8 copy of e_out (qscore.c), whose bound covers det_score's own
 * rounding, and rescores them with the same det_score (select_cands). So
 * the two paths publish the same items, order and bits, and SGEMM's
 * summation order, which differs from det_score's, never decides a near
 * tie in either. A user whose candidates cannot be bounded is rescanned
 * exactly (counted: hl_ranker_fallbacks). */
#include "rank_internal.h"

#include <cblas.h>
#include <math.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AVX2_SCAN 1
#include <immintrin.h>
#endif

#define DEFAULT_BLOCK 512
#define MAX_K         1000
#define MAX_BATCH     65536
#define DET_PAD       4        /* candidates kept beyond k for the exact rescoring: a
                                  near tie at the cut costs a rescan, a larger heap
                                  costs every refresh (16 cost 8% at 10k items) */
#define IVF_EXTRA     64       /* extra exclusions a user may have and still join the
                                  index's batch search (more: searched alone) */
#define ENC_GROUP     4        /* users encoded together (register blocking only) */


static scan_fn pick_scan(void);
static layer_fn pick_layer(void);

/* The int8 copy and its scratch (two-stage scoring). */
static int two_stage_create(hl_ranker *r, const hl_rank_opts *o, char *errbuf,
                            size_t errlen)
{
    r->qi = o->qitems;
    if (r->qi == NULL)
        r->qi = r->own_qi = hl_qitems_create(r->e_out, r->bias, r->n_items, r->dim,
                                             o->qkernel, errbuf, errlen);
    if (r->qi == NULL)
        return HL_EINVAL;
    if ((r->qs = hl_qscan_create(r->qi, r->max_batch, r->k, errbuf, errlen)) == NULL)
        return HL_ENOMEM;
    if ((r->qusers = calloc((size_t)r->max_batch, sizeof *r->qusers)) == NULL ||
        (r->seed = malloc((size_t)r->max_batch * r->k * sizeof(float))) == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "ranker: out of memory");
    snprintf(r->scoring_name, sizeof r->scoring_name, "two-stage/%s",
             hl_qitems_kernel(r->qi));
    return 0;
}

/* The index's scratch (recs.index=ivf); it replaces both candidate scans. */
static int index_create(hl_ranker *r, const hl_rank_opts *o, char *errbuf, size_t errlen)
{
    int32_t n_items;
    int dim;
    hl_ivf_shape(o->ivf, &n_items, &dim);
    if (n_items != r->n_items || dim != r->dim)
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "ranker: the index has %d items of dim %d, the model %d of dim %d",
                      (int)n_items, dim, (int)r->n_items, r->dim);
    r->ivf = o->ivf;
    r->nprobe = o->nprobe < hl_ivf_nlist(o->ivf) ? o->nprobe : hl_ivf_nlist(o->ivf);
    r->shadow_every = o->shadow_every;
    r->istride = r->kc + MAX_RING + IVF_EXTRA;
    if ((r->is = hl_ivf_scan_create(r->ivf, r->max_batch, r->nprobe, r->istride, errbuf,
                                    errlen)) == NULL)
        return HL_ENOMEM;
    r->icand = malloc((size_t)r->max_batch * r->istride * sizeof(int32_t));
    r->icap = malloc((size_t)r->max_batch * sizeof(int));
    r->ifound = malloc((size_t)r->max_batch * sizeof(int));
    r->shadow = malloc((size_t)r->k * sizeof(int32_t));
    if (!r->icand || !r->icap || !r->ifound || !r->shadow)
        return hl_err(errbuf, errlen, HL_ENOMEM, "ranker: out of memory");
    snprintf(r->scoring_name, sizeof r->scoring_name, "ivf/nlist=%d/nprobe=%d",
             hl_ivf_nlist(r->ivf), r->nprobe);
    return 0;
}

/* ---- create / destroy ---- */

static int check_opts(const hl_model_parts *p, const hl_rank_opts *o,
                      char *errbuf, size_t errlen)
{
    if (o->k < 1 || o->k > MAX_K)
        return hl_err(errbuf, errlen, HL_EINVAL, "ranker: k %d (1..%d)", o->k, MAX_K);
    if (o->max_batch < 1 || o->max_batch > MAX_BATCH)
        return hl_err(errbuf, errlen, HL_EINVAL, "ranker: max_batch %d (1..%d)",
                      o->max_batch, MAX_BATCH);
    if (o->block_items < 0)
        return hl_err(errbuf, errlen, HL_EINVAL, "ranker: block_items %d",
                      o->block_items);
    if (o->scoring != HL_SCORING_EXACT && o->scoring != HL_SCORING_TWO_STAGE)
        return hl_err(errbuf, errlen, HL_EINVAL, "ranker: scoring %d (exact 0, two-stage 1)",
                      o->scoring);
    if (o->scoring == HL_SCORING_TWO_STAGE && p->info.dim > HL_QSCORE_MAX_DIM)
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "ranker: two-stage scoring handles dim up to %d, the model has %d; "
                      "use recs.scoring=exact", HL_QSCORE_MAX_DIM, p->info.dim);
    if (o->ivf != NULL && (o->nprobe < 1 || o->shadow_every < 0))
        return hl_err(errbuf, errlen, HL_EINVAL, "ranker: index nprobe %d (>= 1), "
                      "shadow_every %d (>= 0)", o->nprobe, o->shadow_every);
    if (p->info.n_items < 1 || !p->e_in || !p->e_out || !p->bias)
        return hl_err(errbuf, errlen, HL_EINVAL, "ranker: model has no items");
    for (int h = 0; h < p->info.n_heads && h < HL_MAX_HEADS; h++)
        if (!(p->info.half_life_ms[h] > 0.0) || !isfinite(p->info.half_life_ms[h]))
            return hl_err(errbuf, errlen, HL_EINVAL,
                          "ranker: head %d half-life %g ms", h,
                          p->info.half_life_ms[h]);
    return 0;
}

static int alloc_scratch(hl_ranker *r)
{
    size_t nb = (size_t)r->max_batch, k = (size_t)r->k, dim = (size_t)r->dim;

    int w = hl_encoder_in_dim(&r->net);
    for (int l = 0; l < r->net.n_layers; l++) {
        int n_in = hl_encoder_layer_in(&r->net, l), n_out = r->net.layer_out[l];
        w = n_out > w ? n_out : w;
        if ((r->wt[l] = malloc((size_t)n_in * n_out * sizeof(float))) == NULL)
            return HL_ENOMEM;
        for (int o = 0; o < n_out; o++)         /* W_l is (n_out, n_in) */
            for (int i = 0; i < n_in; i++)
                r->wt[l][(size_t)i * n_out + o] = r->net.layer_w[l][(size_t)o * n_in + i];
    }
    r->width_max = w;
    r->x1 = malloc((size_t)ENC_GROUP * w * sizeof(float));
    r->act1 = malloc((size_t)ENC_GROUP * w * sizeof(float));
    r->Q = malloc(nb * dim * sizeof(float));
    r->q_norm = malloc(nb * sizeof(float));
    r->excl = calloc((size_t)r->n_items, 1);
    r->S = malloc(nb * (size_t)r->block * sizeof(float));
    r->top = malloc(nb * (size_t)r->kc * sizeof(uint64_t));
    r->top_n = malloc(nb * sizeof(int));
    r->seen = malloc(nb * MAX_RING * sizeof(int32_t));
    r->seen_n = malloc(nb * sizeof(int));
    r->seen_pos = malloc(nb * sizeof(int));
    r->bc_hist = malloc(MAX_RING * dim * sizeof(float));
    r->bc_rec = malloc(k * dim * sizeof(float));
    r->bc_dot = malloc(MAX_RING * k * sizeof(float));
    r->bc_a = malloc(MAX_RING * sizeof(float));
    r->bc_item = malloc(MAX_RING * sizeof(int32_t));
    if (!r->x1 || !r->act1 || !r->Q || !r->q_norm || !r->excl || !r->S || !r->top ||
        !r->top_n || !r->seen ||
        !r->seen_n || !r->seen_pos || !r->bc_hist || !r->bc_rec || !r->bc_dot ||
        !r->bc_a || !r->bc_item)
        return HL_ENOMEM;
    return 0;
}

/* The largest norm and |bias| of n rows of e_out, for det_margin. */
static void row_bounds(const float *e_out, const float *bias, int32_t n, int dim,
                       double *norm_max, double *bias_max)
{
    double e2 = 0.0, b = 0.0;
    for (int32_t j = 0; j < n; j++) {
        const float *e = e_out + (size_t)j * dim;
        double s = 0.0;
        for (int d = 0; d < dim; d++)
            s += (double)e[d] * e[d];
        e2 = s > e2 ? s : e2;
        b = fabs(bias[j]) > b ? fabs(bias[j]) : b;
    }
    *norm_max = sqrt(e2);
    *bias_max = b;
}

static void model_bounds(hl_ranker *r)
{
    row_bounds(r->e_out, r->bias, r->n_items, r->dim, &r->e_norm_max, &r->bias_max);
}

hl_ranker *hl_ranker_create_parts(const hl_model_parts *p,
                                  const hl_rank_opts *o,
                                  char *errbuf, size_t errlen)
{
    hl_ranker *r = NULL;

    if (check_opts(p, o, errbuf, errlen) != 0)
        return NULL;
    if ((r = calloc(1, sizeof *r)) == NULL)
        goto nomem;
    hl_encoder_net_from_parts(&r->net, p);
    if (hl_encoder_net_check(&r->net, errbuf, errlen) != 0)
        goto fail;
    r->e_in = p->e_in;
    r->e_out = p->e_out;
    r->bias = p->bias;
    r->n_items = p->info.n_items;
    r->dim = p->info.dim;
    r->n_heads = p->info.n_heads;
    for (int h = 0; h < r->n_heads; h++)
        r->lambda_per_ms[h] = (float)(log(2.0) / p->info.half_life_ms[h]);
    memcpy(r->type_weight, p->info.type_weight, sizeof r->type_weight);
    r->k = o->k;
    r->kc = o->k + DET_PAD;
    r->exclude_seen = o->exclude_seen;
    r->max_batch = o->max_batch;
    r->block = o->block_items > 0 ? o->block_items : DEFAULT_BLOCK;
    if (r->block > r->n_items)
        r->block = r->n_items;
    if (alloc_scratch(r) != 0)
        goto nomem;
    model_bounds(r);
    r->scan = pick_scan();
    r->layer = pick_layer();
    snprintf(r->scoring_name, sizeof r->scoring_name, "exact");
    if (o->ivf != NULL) {
        if (index_create(r, o, errbuf, errlen) != 0)
            goto fail;
    } else if (o->scoring == HL_SCORING_TWO_STAGE && two_stage_create(r, o, errbuf, errlen) != 0)
        goto fail;
    return r;
nomem:
    hl_err(errbuf, errlen, HL_ENOMEM, "ranker: out of memory (max_batch %d, k %d)",
           o->max_batch, o->k);
fail:
    hl_ranker_destroy(r);
    return NULL;
}

hl_ranker *hl_ranker_create(const hl_model *m, const hl_rank_opts *o,
                            char *errbuf, size_t errlen)
{
    hl_model_parts p;

    memset(&p, 0, sizeof p);
    p.info = *hl_model_info_get(m);
    p.e_in = hl_model_e_in(m);
    p.e_out = hl_model_e_out(m);
    p.bias = hl_model_bias(m);
    for (int l = 0; l < p.info.n_layers && l < HL_MAX_LAYERS; l++) {
        p.layer_w[l] = hl_model_layer_w(m, l);
        p.layer_b[l] = hl_model_layer_b(m, l);
    }
    return hl_ranker_create_parts(&p, o, errbuf, errlen);
}

void hl_ranker_set_catalogue(hl_ranker *r, const hl_rank_catalogue *c)
{
    if (c != NULL)
        r->cat = *c;
    else
        memset(&r->cat, 0, sizeof r->cat);
    r->side_norm_max = r->side_bias_max = 0.0;
    if (r->cat.n_side > 0)          /* the side rows are SGEMM-scored too */
        row_bounds(r->cat.e_out, r->cat.bias, r->cat.n_side, r->dim, &r->side_norm_max,
                   &r->side_bias_max);
}

void hl_ranker_destroy(hl_ranker *r)
{
    if (r == NULL)
        return;
    free(r->x1);
    free(r->act1);
    for (int l = 0; l < HL_MAX_LAYERS; l++)
        free(r->wt[l]);
    free(r->Q);
    free(r->q_norm);
    free(r->excl);
    free(r->S);
    free(r->top);
    free(r->top_n);
    free(r->seen);
    free(r->seen_n);
    free(r->seen_pos);
    free(r->bc_hist);
    free(r->bc_rec);
    free(r->bc_dot);
    free(r->bc_a);
    free(r->bc_item);
    hl_qscan_destroy(r->qs);
    hl_qitems_destroy(r->own_qi);
    free(r->qusers);
    hl_ivf_scan_destroy(r->is);
    free(r->icand);
    free(r->icap);
    free(r->ifound);
    free(r->shadow);
    free(r->seed);
    free(r);
}

/* ---- the running top-K: a min-heap whose root is the worst entry ---- */

/* An entry is one 64-bit key that orders like (score, -item): the score's
 * bits made to sort as unsigned integers above, the complement of the
 * item below. A larger key is a better entry (higher score, or equal score
 * and lower row), so the heap compares integers, not pairs. */
static inline uint64_t make_key(float score, int32_t item)
{
    uint32_t u;
    if (score == 0.0f)
        score = 0.0f;                         /* -0 and +0 are one score */
    memcpy(&u, &score, sizeof u);
    u = (u & 0x80000000u) ? ~u : u | 0x80000000u;
    return (uint64_t)u << 32 | (uint32_t)~(uint32_t)item;
}

static inline float key_score(uint64_t key)
{
    uint32_t u = (uint32_t)(key >> 32);
    float f;
    u = (u & 0x80000000u) ? u & 0x7fffffffu : ~u;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline int32_t key_item(uint64_t key)
{
    return (int32_t)~(uint32_t)key;
}

static void sift_down(uint64_t *h, int n, int i)
{
    uint64_t key = h[i];

    for (;;) {
        int c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && h[c + 1] < h[c])
            c++;
        if (h[c] >= key)
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = key;
}

static void sift_up(uint64_t *h, int i)
{
    uint64_t key = h[i];

    while (i > 0) {
        int p = (i - 1) / 2;
        if (h[p] <= key)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = key;
}

/* Offers (s, item) to a heap of capacity k holding *n; the caller has
 * checked s beats the threshold. Returns the new threshold. */
static float heap_offer(uint64_t *h, int *n, int k, float s, int32_t item)
{
    if (*n < k) {
        h[*n] = make_key(s, item);
        sift_up(h, (*n)++);
        return *n == k ? key_score(h[0]) : -INFINITY;
    }
    h[0] = make_key(s, item);
    sift_down(h, k, 0);
    return key_score(h[0]);
}

/* Sorts a heap in place, best first (heapsort: the worst goes to the end). */
static void heap_sort(uint64_t *h, int n)
{
    for (int end = n - 1; end > 0; end--) {
        uint64_t key = h[0];
        h[0] = h[end];
        h[end] = key;
        sift_down(h, end, 0);
    }
}

/* ---- one block ---- */

/* 0 when ex (may be NULL) names row. */
static int listed(const hl_rank_exclude *ex, int32_t row)
{
    for (int i = 0; ex != NULL && i < ex->n; i++)
        if (ex->item[i] == row)
            return 0;
    return 1;
}

static int cmp_row(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static void mark_excluded(float *srow, int32_t j0, int nb, const int32_t *items,
                          int n)
{
    for (int i = 0; i < n; i++) {
        int64_t off = (int64_t)items[i] - j0;
        if (off >= 0 && off < nb)
            srow[off] = -INFINITY;
    }
}

/* Sorts user u's known ring items into r->seen, so each block finds its
 * excluded items with a cursor instead of walking the ring again. */
static void load_seen(hl_ranker *r, int u, const hl_row_view *v)
{
    int32_t *seen = r->seen + (size_t)u * MAX_RING;
    int n = 0, slot = v->hist_head;

    for (int i = 0; i < v->n_hist && n < MAX_RING; i++) {
        int32_t it = v->hist_item[slot];
        slot = slot + 1 == v->history ? 0 : slot + 1;
        if (it < 0 || it >= r->n_items)
            continue;
        int j = n++;
        for (; j > 0 && seen[j - 1] > it; j--)   /* insertion sort: n <= 255 */
            seen[j] = seen[j - 1];
        seen[j] = it;
    }
    r->seen_n[u] = n;
    r->seen_pos[u] = 0;
}

static void mark_seen(hl_ranker *r, int u, float *srow, int32_t j0, int nb)
{
    const int32_t *seen = r->seen + (size_t)u * MAX_RING;
    int pos = r->seen_pos[u];

    for (; pos < r->seen_n[u] && seen[pos] < j0 + nb; pos++)
        srow[seen[pos] - j0] = -INFINITY;
    r->seen_pos[u] = pos;
}

/* Offers srow[j] + brow[j], j < nb, to user u's heap. Excluded entries are
 * -inf, which never beats a threshold (the threshold of a heap that is not
 * full is -inf and the test is strict). */
static void scan_row(hl_ranker *r, int u, const float *srow, const float *brow,
                     int32_t j0, int nb)
{
    uint64_t *h = r->top + (size_t)u * r->kc;
    int *hn = &r->top_n[u];
    float thr = *hn == r->kc ? key_score(h[0]) : -INFINITY;

    for (int j = 0; j < nb; j++) {
        float s = srow[j] + brow[j];
        if (s > thr)
            thr = heap_offer(h, hn, r->kc, s, j0 + j);
    }
}

#ifdef HAVE_AVX2_SCAN
/* scan_row, sixteen scores per step: one compare against the threshold
 * says whether any of them needs the heap, which is rarely the case. The
 * sums are the same single additions as in scan_row, so both agree to the
 * bit. Built for AVX2 whatever the compiler flags; used only if the CPU
 * has it. */
__attribute__((target("avx2")))
static void scan_row_avx2(hl_ranker *r, int u, const float *srow,
                          const float *brow, int32_t j0, int nb)
{
    uint64_t *h = r->top + (size_t)u * r->kc;
    int *hn = &r->top_n[u];
    float thr = *hn == r->kc ? key_score(h[0]) : -INFINITY;
    __m256 t = _mm256_set1_ps(thr);
    int j = 0;

    for (; j + 16 <= nb; j += 16) {
        __m256 a = _mm256_add_ps(_mm256_loadu_ps(srow + j), _mm256_loadu_ps(brow + j));
        __m256 b = _mm256_add_ps(_mm256_loadu_ps(srow + j + 8),
                                 _mm256_loadu_ps(brow + j + 8));
        unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(a, t, _CMP_GT_OQ)) |
                        (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(b, t, _CMP_GT_OQ)) << 8;
        if (mask == 0)
            continue;
        for (; mask != 0; mask &= mask - 1) {
            int q = __builtin_ctz(mask);
            float s = srow[j + q] + brow[j + q];
            if (s > thr)        /* thr may have risen within these sixteen */
                thr = heap_offer(h, hn, r->kc, s, j0 + j + q);
        }
        t = _mm256_set1_ps(thr);
    }
    for (; j < nb; j++) {
        float s = srow[j] + brow[j];
        if (s > thr)
            thr = heap_offer(h, hn, r->kc, s, j0 + j);
    }
}
#endif

static scan_fn pick_scan(void)
{
#ifdef HAVE_AVX2_SCAN
    if (__builtin_cpu_supports("avx2"))
        return scan_row_avx2;
#endif
    return scan_row;
}

/* The catalogue's hidden rows in [j0, j0 + nb): *lo is the first (the
 * blocks go by in order, so the caller keeps it as a cursor); returns the
 * end. */
static int32_t hidden_in(const hl_ranker *r, int32_t *lo, int32_t j0, int nb)
{
    const int32_t *h = r->cat.hidden;
    int32_t i = *lo;
    while (i < r->cat.n_hidden && h[i] < j0)
        i++;
    *lo = i;
    while (i < r->cat.n_hidden && h[i] < j0 + nb)
        i++;
    return i;
}

/* S (n, nb) = Q (n, dim) e_out[j0 .. j0+nb)^T, then exclusions (seen,
 * extra, the catalogue's hidden rows) and top-K. A block lies wholly in
 * the model's rows or wholly in the side rows (out_row(j0) on). *hid is
 * the hidden-row cursor. */
static void score_block(hl_ranker *r, const float *Q, const hl_row_view *users,
                        int n, const hl_rank_exclude *extra, int32_t j0, int nb,
                        int32_t *hid)
{
    int side = j0 >= r->n_items;
    const float *brow = side ? r->cat.bias + (j0 - r->n_items) : r->bias + j0;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nb, r->dim, 1.0f,
                Q, r->dim, out_row(r, j0), r->dim, 0.0f, r->S, nb);
    int32_t h_end = hidden_in(r, hid, j0, nb);
    for (int u = 0; u < n; u++) {
        float *srow = r->S + (size_t)u * nb;
        if (r->exclude_seen && !side)      /* the ring names model rows only */
            mark_seen(r, u, srow, j0, nb);
        for (int32_t i = *hid; i < h_end; i++)
            srow[r->cat.hidden[i] - j0] = -INFINITY;
        if (extra != NULL)
            mark_excluded(srow, j0, nb, extra[u].item, extra[u].n);
        r->scan(r, u, srow, brow, j0, nb);
    }
}

/* ---- because ---- */

/* Fills bc_item and bc_a with the ring's known entries, newest first (so
 * that the strict argmax below prefers the newest on equal c). Returns
 * their count. */
int hl_rank_history_weights(const hl_ranker *r, const hl_row_view *v,
                            int32_t *item, float *a)
{
    float inv_m[HL_MAX_HEADS];
    int n = 0;

    for (int h = 0; h < r->n_heads; h++)
        inv_m[h] = 1.0f / fmaxf(v->m[h], HL_ENCODER_EPS);
    for (int i = v->n_hist - 1; i >= 0; i--) {
        int slot = hl_row_hist_index(v, i);
        int32_t it = v->hist_item[slot];
        int type = v->hist_type[slot];
        if (it < 0 || it >= r->n_items || n >= MAX_RING)
            continue;
        float dt = (float)(v->t_ref_ms - v->hist_ts_ms[slot]), share = 0.0f;
        for (int h = 0; h < r->n_heads; h++)
            share += (dt > 0.0f ? expf(-r->lambda_per_ms[h] * dt) : 1.0f) * inv_m[h];
        item[n] = it;
        a[n++] = share * (type < HL_N_TYPES ? r->type_weight[type] : 0.0f);
    }
    return n;
}

static void prefetch_row(const float *row, int dim)
{
    for (int d = 0; d < dim; d += 16)      /* one 64-byte line per 16 floats */
        __builtin_prefetch(row + d);
}

/* dot (n_rec, n_hist) = e_out[rec] . e_in[hist] as one SGEMM, then the
 * argmax of a_e x dot along each returned item's row. */
static void because_fast(hl_ranker *r, const hl_row_view *v, hl_rec *recs,
                         int n_rec)
{
    int dim = r->dim;
    int n_hist = hl_rank_history_weights(r, v, r->bc_item, r->bc_a);

    for (int j = 0; j < n_rec; j++)
        recs[j].because = -1;
    if (n_hist == 0 || n_rec == 0)
        return;
    /* The rows are scattered over the tables: start every miss at once. */
    for (int e = 0; e < n_hist; e++)
        prefetch_row(r->e_in + (size_t)r->bc_item[e] * dim, dim);
    for (int j = 0; j < n_rec; j++)
        prefetch_row(out_row(r, recs[j].item), dim);
    for (int e = 0; e < n_hist; e++)
        memcpy(r->bc_hist + (size_t)e * dim, r->e_in + (size_t)r->bc_item[e] * dim,
               (size_t)dim * sizeof(float));
    for (int j = 0; j < n_rec; j++)
        memcpy(r->bc_rec + (size_t)j * dim, out_row(r, recs[j].item),
               (size_t)dim * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n_rec, n_hist, dim,
                1.0f, r->bc_rec, dim, r->bc_hist, dim, 0.0f, r->bc_dot, n_hist);
    for (int j = 0; j < n_rec; j++) {
        const float *dot = r->bc_dot + (size_t)j * n_hist;
        float best = 0.0f;
        for (int e = 0; e < n_hist; e++) {
            float c = r->bc_a[e] * dot[e];
            if (c > best) {
                best = c;
                recs[j].because = r->bc_item[e];
            }
        }
    }
}

/* ---- refresh ---- */

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

#ifdef HAVE_AVX2_SCAN
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

static layer_fn pick_layer(void)
{
#ifdef HAVE_AVX2_SCAN
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
static const float *encode(hl_ranker *r, const hl_row_view *users, int n)
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
            const float *q = r->Q + (size_t)(u0 + u) * dim;
            double ss = 0.0;
            for (int d = 0; d < dim; d++)
                ss += (double)q[d] * q[d];
            r->q_norm[u0 + u] = (float)sqrt(ss);
        }
    }
    return r->Q;
}

/* q . e + b in one fixed order: eight running sums over d (so the compiler
 * may use one vector register, lane by lane, without reordering), combined
 * pairwise, then the tail, then the bias. The same inputs give the same
 * bits whatever else is being scored. */
static float det_score(const float *q, const float *e, int dim, float b)
{
    float acc[8] = {0};
    int d = 0;
#if defined(__SSE2__)
    /* The same eight sums as the loop below, four lanes at a time (SSE is
     * part of x86-64, so every such CPU takes this path). */
    __m128 lo = _mm_setzero_ps(), hi = _mm_setzero_ps();
    for (; d + 8 <= dim; d += 8) {
        lo = _mm_add_ps(lo, _mm_mul_ps(_mm_loadu_ps(q + d), _mm_loadu_ps(e + d)));
        hi = _mm_add_ps(hi, _mm_mul_ps(_mm_loadu_ps(q + d + 4), _mm_loadu_ps(e + d + 4)));
    }
    _mm_storeu_ps(acc, lo);
    _mm_storeu_ps(acc + 4, hi);
#endif
    for (; d + 8 <= dim; d += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += q[d + l] * e[d + l];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; d < dim; d++)
        s += q[d] * e[d];
    return s + b;
}

/* How far an SGEMM score and det_score of one item can lie apart for user
 * u: each is within gamma_{dim+2} (|q| |e| + |b|) of the exact value
 * (Higham's bound for a sum of dim products and the bias in any order,
 * fused or not, with sum |q_d e_d| <= |q| |e| by Cauchy-Schwarz), with 1%
 * for the rounding of the bound itself. */
static double det_margin(const hl_ranker *r, int u)
{
    double unit = ldexp(1.0, -24), nu = (r->dim + 2) * unit;
    double gamma = nu / (1.0 - nu);
    double e = r->e_norm_max > r->side_norm_max ? r->e_norm_max : r->side_norm_max;
    double b = r->bias_max > r->side_bias_max ? r->bias_max : r->side_bias_max;
    return 2.0 * gamma * ((double)r->q_norm[u] * e + b) * 1.01;
}

/* Keeps the k largest keys in the min-heap h of *n entries. */
static inline void push_best(uint64_t *h, int *n, int k, uint64_t key)
{
    if (*n < k) {
        h[*n] = key;
        sift_up(h, (*n)++);
    } else if (key > h[0]) {
        h[0] = key;
        sift_down(h, *n, 0);
    }
}

/* The exact list of user u over every item (exclusions as in the blocked
 * path) into its heap, best first; returns its length. The slow path:
 * n_items dot products, only when the candidates cannot be proven to hold
 * the list (exact or near ties at the cut). */
static void mark_excl(hl_ranker *r, int u, const hl_rank_exclude *ex, uint8_t v)
{
    const int32_t *seen = r->seen + (size_t)u * MAX_RING;
    int n_seen = r->exclude_seen ? r->seen_n[u] : 0;
    for (int i = 0; i < n_seen; i++)
        r->excl[seen[i]] = v;
    for (int i = 0; ex != NULL && i < ex->n; i++)
        if (ex->item[i] >= 0 && ex->item[i] < r->n_items)
            r->excl[ex->item[i]] = v;
    for (int32_t i = 0; i < r->cat.n_hidden && r->cat.hidden[i] < r->n_items; i++)
        r->excl[r->cat.hidden[i]] = v;
}

static void rescan_one(hl_ranker *r, uint64_t *h, int *n, const float *q, int32_t j)
{
    push_best(h, n, r->k, make_key(det_score(q, out_row(r, j), r->dim, bias_of(r, j)), j));
}

static int side_hidden(const hl_ranker *r, int32_t row)
{
    return bsearch(&row, r->cat.hidden, (size_t)r->cat.n_hidden, sizeof row,
                   cmp_row) != NULL;
}

static int rescan_exact(hl_ranker *r, int u, const hl_rank_exclude *ex)
{
    uint64_t *h = r->top + (size_t)u * r->kc;
    const float *q = r->Q + (size_t)u * r->dim;
    int n = 0;

    mark_excl(r, u, ex, 1);
    for (int32_t j = 0; j < r->n_items; j++)
        if (!r->excl[j])
            rescan_one(r, h, &n, q, j);
    mark_excl(r, u, ex, 0);
    for (int32_t j = r->n_items; j < r->n_items + r->cat.n_side; j++)
        if (!side_hidden(r, j) && listed(ex, j))
            rescan_one(r, h, &n, q, j);
    heap_sort(h, n);
    return n;
}

/* User u's list from its SGEMM candidates: each rescored with det_score,
 * sorted best first in its heap; returns the list's length. When the
 * candidate heap was full, an item left out scored at most its worst
 * entry (thr) by SGEMM, so at most thr + det_margin exactly: the k-th
 * rescored candidate must beat that, or the user is rescanned. */
static int select_exact(hl_ranker *r, int u, const hl_rank_exclude *ex)
{
    uint64_t *h = r->top + (size_t)u * r->kc;
    const float *q = r->Q + (size_t)u * r->dim;
    int n = r->top_n[u];
    float thr = n == r->kc ? key_score(h[0]) : -INFINITY;

    for (int i = 0; i < n; i++) {
        int32_t j = key_item(h[i]);
        h[i] = make_key(det_score(q, out_row(r, j), r->dim, bias_of(r, j)), j);
    }
    for (int i = n / 2 - 1; i >= 0; i--)
        sift_down(h, n, i);
    heap_sort(h, n);
    if (n == r->kc && !((double)key_score(h[r->k - 1]) > (double)thr + det_margin(r, u)))
        return rescan_exact(r, u, ex);
    return n < r->k ? n : r->k;
}

/* User u's list from its two-stage candidates (qscore.h: they hold every
 * model item of the exact list): each scored with det_score into the heap
 * that already holds the user's best side items, the best k kept, sorted
 * best first. A user whose candidates could not be
 * bounded is rescanned over every item. Returns the list's length. */
static int select_cands(hl_ranker *r, int u, const hl_rank_exclude *ex)
{
    uint64_t *h = r->top + (size_t)u * r->kc;
    const float *q = r->Q + (size_t)u * r->dim;
    int nc, n = r->top_n[u];          /* the side items two_stage_scan kept */
    const int32_t *cand = hl_qscan_cands(r->qs, u, &nc);

    if (cand == NULL) {
        r->fallbacks++;
        return rescan_exact(r, u, ex);
    }
    for (int i = 0; i < nc && i < 8; i++)      /* rows are scattered: run ahead */
        prefetch_row(r->e_out + (size_t)cand[i] * r->dim, r->dim);
    for (int i = 0; i < nc; i++) {
        int32_t j = cand[i];
        if (i + 8 < nc)
            prefetch_row(r->e_out + (size_t)cand[i + 8] * r->dim, r->dim);
        push_best(h, &n, r->k, make_key(det_score(q, r->e_out + (size_t)j * r->dim, r->dim,
                                                  r->bias[j]), j));
    }
    heap_sort(h, n);
    return n;
}

/* The shadow check: how many of the exact list's n_exact items (r->shadow)
 * the index's list h[0..n) holds. */
static void shadow_count(hl_ranker *r, const uint64_t *h, int n, int n_exact)
{
    for (int i = 0; i < n_exact; i++)
        for (int j = 0; j < n; j++)
            if (key_item(h[j]) == r->shadow[i]) {
                r->shadow_hits++;
                break;
            }
    r->shadow_total += (uint64_t)n_exact;
}

/* User u's index candidates from the batch search, excluded ones left
 * out, rescored with det_score into its heap (best k); returns how many
 * were not excluded. */
static int rescore_ivf(hl_ranker *r, int u, const hl_rank_exclude *ex, int *n)
{
    uint64_t *h = r->top + (size_t)u * r->kc;
    const float *q = r->Q + (size_t)u * r->dim;
    const int32_t *cand = r->icand + (size_t)u * r->istride;
    int kept = 0;
    mark_excl(r, u, ex, 1);
    for (int i = 0; i < r->ifound[u]; i++) {
        int32_t j = cand[i];
        if (r->excl[j])
            continue;
        kept++;
        push_best(h, n, r->k, make_key(det_score(q, r->e_out + (size_t)j * r->dim, r->dim,
                                                 r->bias[j]), j));
    }
    mark_excl(r, u, ex, 0);
    return kept;
}

/* User u searched alone, excluded items left out inside the search (which
 * probes further lists when they leave fewer than k + DET_PAD), rescored
 * with det_score into its heap. */
static void search_alone(hl_ranker *r, int u, const hl_rank_exclude *ex, int *n)
{
    uint64_t *h = r->top + (size_t)u * r->kc;
    const float *q = r->Q + (size_t)u * r->dim;
    int32_t *cand = r->icand + (size_t)u * r->istride;
    *n = 0;
    mark_excl(r, u, ex, 1);
    int nc = hl_ivf_search(r->ivf, r->is, q, r->nprobe, r->kc, r->excl, cand, NULL);
    mark_excl(r, u, ex, 0);
    for (int i = 0; i < nc; i++)
        push_best(h, n, r->k, make_key(det_score(q, r->e_out + (size_t)cand[i] * r->dim,
                                                 r->dim, r->bias[cand[i]]), cand[i]));
}

/* User u's list from the index (recs.index=ivf): its batch candidates
 * (k + DET_PAD + the number it excludes), excluded ones dropped, each
 * rescored with det_score, the best k kept, sorted best first in its heap.
 * Fewer than k left (exclusions crowded the probed lists), or more
 * exclusions than the batch allows: the user is searched alone, which
 * filters inside and probes further. Every shadow_every-th user is first
 * scored over every item too (the shadow check), at the cost of one exact
 * refresh. Returns the list's length: k unless the catalogue runs out. */
static int select_ivf(hl_ranker *r, int u, const hl_rank_exclude *ex)
{
    uint64_t *h = r->top + (size_t)u * r->kc;
    int n = 0, n_exact = -1;

    if (r->shadow_every > 0 && r->refreshed % (uint64_t)r->shadow_every == 0) {
        n_exact = rescan_exact(r, u, ex);
        for (int i = 0; i < n_exact; i++)
            r->shadow[i] = key_item(h[i]);
    }
    r->refreshed++;
    if (r->icap[u] == 0 || rescore_ivf(r, u, ex, &n) < r->k)
        search_alone(r, u, ex, &n);
    heap_sort(h, n);
    if (n_exact >= 0)
        shadow_count(r, h, n, n_exact);
    return n;
}

/* The index's batch search for users[0..n): each asks for k + DET_PAD +
 * the items it excludes, so that k remain after they are dropped. */
static void ivf_batch(hl_ranker *r, int n, const hl_rank_exclude *extra)
{
    for (int u = 0; u < n; u++) {
        int want = r->kc + (r->exclude_seen ? r->seen_n[u] : 0) +
                   (extra != NULL ? extra[u].n : 0);
        r->icap[u] = want <= r->istride ? want : 0;
    }
    if (hl_ivf_search_batch(r->ivf, r->is, r->Q, n, r->nprobe, r->icap, r->icand,
                            r->istride, r->ifound) != 0)
        for (int u = 0; u < n; u++)
            r->icap[u] = 0;            /* cannot happen (sizes are checked at create) */
}

/* Two-stage: every user's query and exclusions to the int8 scan. */
/* User u's side items (the catalogue's, not hidden, not excluded) scored
 * with det_score into its heap, the best k kept; their scores become the
 * scan's seeds: exact scores count as lower bounds, so the k-th lower bound
 * the scan proposes against may come from side items and the bound stays
 * rigorous over model and side items together. */
static void side_seeds(hl_ranker *r, int u, const hl_rank_exclude *ex, hl_qscan_user *qu)
{
    uint64_t *h = r->top + (size_t)u * r->kc;
    const float *q = r->Q + (size_t)u * r->dim;
    float *seed = r->seed + (size_t)u * r->k;
    int n = 0;

    for (int32_t j = r->n_items; j < r->n_items + r->cat.n_side; j++)
        if (!side_hidden(r, j) && listed(ex, j))
            rescan_one(r, h, &n, q, j);
    r->top_n[u] = n;
    qu->n_seed = 0;
    for (int i = 0; i < n; i++)
        if (!isnan(key_score(h[i])))
            seed[qu->n_seed++] = key_score(h[i]);
    qu->seed = seed;
}

/* Two-stage: every user's query and exclusions (the catalogue's hidden
 * rows with them) and side-item seeds to the int8 scan. */
static void two_stage_scan(hl_ranker *r, int n, const hl_rank_exclude *extra)
{
    for (int u = 0; u < n; u++) {
        hl_qscan_user *qu = &r->qusers[u];
        qu->q = r->Q + (size_t)u * r->dim;
        qu->seen = r->seen + (size_t)u * MAX_RING;
        qu->n_seen = r->exclude_seen ? r->seen_n[u] : 0;
        qu->extra = extra != NULL ? extra[u].item : NULL;
        qu->n_extra = extra != NULL ? extra[u].n : 0;
        qu->hidden = r->cat.hidden;
        qu->n_hidden = r->cat.n_hidden;
        side_seeds(r, u, extra != NULL ? &extra[u] : NULL, qu);
    }
    hl_qscan_run(r->qs, r->qusers, n);
}

static void emit(hl_ranker *r, const hl_row_view *users, int n,
                 const hl_rank_exclude *extra, hl_rec *out, int *n_out)
{
    for (int u = 0; u < n; u++) {
        uint64_t *h = r->top + (size_t)u * r->kc;
        hl_rec *o = out + (size_t)u * r->k;
        const hl_rank_exclude *ex = extra != NULL ? &extra[u] : NULL;
        n_out[u] = r->ivf != NULL ? select_ivf(r, u, ex)
                 : r->qs != NULL ? select_cands(r, u, ex) : select_exact(r, u, ex);
        for (int j = 0; j < n_out[u]; j++) {
            o[j].item = key_item(h[j]);
            o[j].score = key_score(h[j]);
        }
        because_fast(r, &users[u], o, n_out[u]);
    }
}

int hl_ranker_refresh_ex(hl_ranker *r, const hl_row_view *users, int n,
                         const hl_rank_exclude *extra, hl_rec *out, int *n_out)
{
    if (n < 0 || n > r->max_batch)
        return HL_EINVAL;
    if (n == 0)
        return 0;
    const float *Q = encode(r, users, n);
    memset(r->top_n, 0, (size_t)n * sizeof(int));
    if (r->exclude_seen)
        for (int u = 0; u < n; u++)
            load_seen(r, u, &users[u]);
    if (r->ivf != NULL) {
        ivf_batch(r, n, extra);
    } else if (r->qs != NULL) {
        two_stage_scan(r, n, extra);
    } else {
        int32_t hid = 0;
        for (int32_t j0 = 0; j0 < r->n_items; j0 += r->block) {
            int nb = r->n_items - j0 < r->block ? (int)(r->n_items - j0) : r->block;
            score_block(r, Q, users, n, extra, j0, nb, &hid);
        }
        int32_t end = r->n_items + r->cat.n_side;
        for (int32_t j0 = r->n_items; j0 < end; j0 += r->block) {   /* the side items */
            int nb = end - j0 < r->block ? (int)(end - j0) : r->block;
            score_block(r, Q, users, n, extra, j0, nb, &hid);
        }
    }
    emit(r, users, n, extra, out, n_out);
    return 0;
}

const char *hl_ranker_scoring(const hl_ranker *r)
{
    return r->scoring_name;
}

void hl_ranker_index_recall(const hl_ranker *r, uint64_t *hits, uint64_t *total)
{
    *hits = r->shadow_hits;
    *total = r->shadow_total;
}

uint64_t hl_ranker_fallbacks(const hl_ranker *r)
{
    return r->fallbacks;
}

int hl_ranker_refresh(hl_ranker *r, const hl_row_view *users, int n,
                      hl_rec *out, int *n_out)
{
    return hl_ranker_refresh_ex(r, users, n, NULL, out, n_out);
}
