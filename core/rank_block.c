/* rank_block.c - the exact path's candidate search (recs.scoring=exact)
 * and the exact rescan every path falls back on.
 *
 * The score matrix of a batch (n users x N items) is too large to keep
 * (256 x 1M floats is 1 GiB), and writing it out would cost more than
 * computing it. So items go by in blocks of r->block: one SGEMM writes the
 * (n, block) scores into a scratch that stays in cache, excluded items are
 * overwritten with -inf, and one pass per row offers each score to the
 * row's min-heap of the k + DET_PAD best so far. The pass compares sixteen
 * scores at a time against the row's threshold (the heap's worst entry
 * once it is full) and only touches the heap when one beats it, which
 * after the first few blocks is rare: the pass costs a small fraction of
 * the SGEMM. Seen items are sorted once per refresh, so each block finds
 * its own with a cursor.
 *
 * Ties: blocks and rows are scanned in ascending item order and an item
 * enters a full heap only if its score is strictly above the threshold, so
 * among equal scores the lower row wins; the heap's keys (make_key) break
 * ties the same way.
 *
 * The live catalogue's hidden rows are set to -inf in each block next to
 * the seen items, and its side items are more blocks after the model's,
 * read from their own matrix (out_row, bias_of), so the model's e_out is
 * never copied or grown.
 *
 * The SGEMM scores only pick candidates: hl_rank_select_exact rescores them
 * with det_score and proves they hold the list (det_margin), else the user
 * is rescanned over every item (hl_rank_rescan_exact, also the two-stage
 * and index paths' fallback and the index's shadow check). */
#include "rank_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AVX2_SCAN 1
#include <immintrin.h>
#endif

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

/* Sorts user u's known seen items (the ring's, or its last seen_window
 * entries') into r->seen, so each block finds its excluded items with a
 * cursor instead of walking the ring again. Every path (blocked, two-stage,
 * index, rescan) excludes from r->seen. */
void hl_rank_load_seen(hl_ranker *r, int u, const hl_row_view *v)
{
    int32_t *seen = r->seen + (size_t)u * MAX_RING;
    int i0 = hl_row_seen_from(v, r->seen_window);
    int n = 0, slot = hl_row_hist_index(v, i0);

    for (int i = i0; i < v->n_hist && n < MAX_RING; i++) {
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

scan_fn hl_rank_pick_scan(void)
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

/* How far an SGEMM score and det_score of one item can lie apart for user
 * u: each is within gamma_{dim+2} (|q| |e| + |b|) of the exact value
 * (Higham's bound for a sum of dim products and the bias in any order,
 * fused or not, with sum |q_d e_d| <= |q| |e| by Cauchy-Schwarz), with 1%
 * for the rounding of the bound itself. That bound is relative: a product
 * that underflows is off by up to half the smallest subnormal, 2^-150,
 * whatever its size, so each score also carries (dim + 2) 2^-150 (the
 * sums of subnormals are exact). */
static double det_margin(const hl_ranker *r, int u)
{
    double unit = ldexp(1.0, -24), nu = (r->dim + 2) * unit;
    double gamma = nu / (1.0 - nu);
    double e = r->e_norm_max > r->side_norm_max ? r->e_norm_max : r->side_norm_max;
    double b = r->bias_max > r->side_bias_max ? r->bias_max : r->side_bias_max;
    return 2.0 * (gamma * ((double)r->q_norm[u] * e + b) * 1.01 +
                  (r->dim + 2) * ldexp(1.0, -150));
}

/* Sets (v 1) or clears (v 0) user u's own excluded model rows in
 * r->excl: its ring when exclude_seen, and ex's rows. */
void hl_rank_mark_own(hl_ranker *r, int u, const hl_rank_exclude *ex, uint8_t v)
{
    const int32_t *seen = r->seen + (size_t)u * MAX_RING;
    int n_seen = r->exclude_seen ? r->seen_n[u] : 0;
    for (int i = 0; i < n_seen; i++)
        r->excl[seen[i]] = v;
    for (int i = 0; ex != NULL && i < ex->n; i++)
        if (ex->item[i] >= 0 && ex->item[i] < r->n_items)
            r->excl[ex->item[i]] = v;
}

/* The same and the catalogue's hidden rows. */
void hl_rank_mark_excl(hl_ranker *r, int u, const hl_rank_exclude *ex, uint8_t v)
{
    hl_rank_mark_own(r, u, ex, v);
    for (int32_t i = 0; i < r->cat.n_hidden && r->cat.hidden[i] < r->n_items; i++)
        r->excl[r->cat.hidden[i]] = v;
}

static void rescan_one(hl_ranker *r, uint64_t *h, int *n, const float *q, int32_t j)
{
    push_best(h, n, r->k, make_key(det_score(q, out_row(r, j), r->dim, bias_of(r, j)), j));
}

static int side_hidden(const hl_ranker *r, int32_t row)
{
    return r->cat.n_hidden > 0 &&     /* hidden may be NULL then: bsearch wants a base */
           bsearch(&row, r->cat.hidden, (size_t)r->cat.n_hidden, sizeof row, cmp_row) != NULL;
}

/* User u's side items that are neither hidden nor in ex, scored with
 * det_score into its heap of *n entries (the best k kept). */
void hl_rank_side_push(hl_ranker *r, int u, const hl_rank_exclude *ex, int *n)
{
    uint64_t *h = r->top + (size_t)u * r->kc;
    const float *q = r->Q + (size_t)u * r->dim;
    for (int32_t j = r->n_items; j < r->n_items + r->cat.n_side; j++)
        if (!side_hidden(r, j) && listed(ex, j))
            rescan_one(r, h, n, q, j);
}

/* The exact list of user u over every item (exclusions as in the blocked
 * path) into its heap, best first; returns its length. The slow path:
 * n_items dot products, only when the candidates cannot be proven to hold
 * the list (exact or near ties at the cut), and for the index's shadow
 * check. */
int hl_rank_rescan_exact(hl_ranker *r, int u, const hl_rank_exclude *ex)
{
    uint64_t *h = r->top + (size_t)u * r->kc;
    const float *q = r->Q + (size_t)u * r->dim;
    int n = 0;

    hl_rank_mark_excl(r, u, ex, 1);
    for (int32_t j = 0; j < r->n_items; j++)
        if (!r->excl[j])
            rescan_one(r, h, &n, q, j);
    hl_rank_mark_excl(r, u, ex, 0);
    hl_rank_side_push(r, u, ex, &n);
    heap_sort(h, n);
    return n;
}

/* User u's list from its SGEMM candidates: each rescored with det_score,
 * sorted best first in its heap; returns the list's length. When the
 * candidate heap was full, an item left out scored at most its worst
 * entry (thr) by SGEMM, so at most thr + det_margin exactly: the k-th
 * rescored candidate must beat that, or the user is rescanned. */
int hl_rank_select_exact(hl_ranker *r, int u, const hl_rank_exclude *ex)
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
        return hl_rank_rescan_exact(r, u, ex);
    return n < r->k ? n : r->k;
}

/* The blocked search over every item for users[0..n) (Q their queries):
 * the model's rows, then the side items, each user's k + DET_PAD best
 * SGEMM scores into its heap. */
void hl_rank_score_all(hl_ranker *r, const float *Q, const hl_row_view *users, int n,
                       const hl_rank_exclude *extra)
{
    int32_t hid = 0, end = r->n_items + r->cat.n_side;
    for (int32_t j0 = 0; j0 < r->n_items; j0 += r->block) {
        int nb = r->n_items - j0 < r->block ? (int)(r->n_items - j0) : r->block;
        score_block(r, Q, users, n, extra, j0, nb, &hid);
    }
    for (int32_t j0 = r->n_items; j0 < end; j0 += r->block) {   /* the side items */
        int nb = end - j0 < r->block ? (int)(end - j0) : r->block;
        score_block(r, Q, users, n, extra, j0, nb, &hid);
    }
}
