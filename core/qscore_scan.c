/* qscore_scan.c - the candidate scan of two-stage scoring: the proposals
 * each user keeps, the plain and the AVX-512 VNNI kernels, and running a
 * scan (the int8 table, the query and the bound are in qscore.c).
 *
 * The scan keeps per user a min-heap of the k largest lower bounds a - U
 * (its root is L) and the proposals with their upper bounds a + U >= L.
 * L only rises, so a proposal can later fall below it: when the buffer is
 * full, those are dropped; if half of it is still needed (a crowd of
 * near-ties), the user is given up to rank.c's exact scan. Items are
 * visited in ascending order per user, so the sorted seen list and the
 * catalogue's sorted hidden rows are walked with cursors; the extra
 * exclusions (eval) are searched linearly, and only for items that pass
 * the test. Seeds (exact scores of the catalogue's side items) enter the
 * lower-bound heap before the scan, so L may come from them.
 *
 * Blocking: items go by in blocks of BLOCK_CHUNKS chunks (at dim 64,
 * 147 KB: stays in L2) and each block meets every user of the batch, four
 * users by four chunks per step (sixteen accumulators, each row load
 * serving four users). A single user reads the chunks in order: its scan
 * is a read of the table at memory bandwidth. */
#include "qscore_internal.h"

/* ---- proposals ---- */

static int is_excluded(hl_qscan *qs, int u, int32_t j)
{
    const hl_qscan_user *us = &qs->users[u];
    int pos = qs->seen_pos[u];

    while (pos < us->n_seen && us->seen[pos] < j)
        pos++;
    qs->seen_pos[u] = pos;
    if (pos < us->n_seen && us->seen[pos] == j)
        return 1;
    pos = qs->hid_pos[u];
    while (pos < us->n_hidden && us->hidden[pos] < j)
        pos++;
    qs->hid_pos[u] = pos;
    if (pos < us->n_hidden && us->hidden[pos] == j)
        return 1;
    for (int i = 0; i < us->n_extra; i++)
        if (us->extra[i] == j)
            return 1;
    return 0;
}

static void lb_sift_down(float *h, int n, int i)
{
    float v = h[i];
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && h[c + 1] < h[c])
            c++;
        if (!(h[c] < v))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = v;
}

/* Offers a lower bound to user u's heap of the k largest; updates L. */
void hl_qscan_offer_lower(hl_qscan *qs, int u, float lb)
{
    float *h = qs->lb + (size_t)u * qs->k;
    int *n = &qs->n_lb[u];

    if (*n < qs->k) {
        int i = (*n)++;
        for (; i > 0 && h[(i - 1) / 2] > lb; i = (i - 1) / 2)
            h[i] = h[(i - 1) / 2];
        h[i] = lb;
        if (*n == qs->k)
            qs->L[u] = h[0];
    } else if (lb > h[0]) {
        h[0] = lb;
        lb_sift_down(h, qs->k, 0);
        qs->L[u] = h[0];
    }
}

/* Drops proposals whose upper bound fell below L; gives the user up when
 * more than half the buffer is still needed. */
static void compact(hl_qscan *qs, int u)
{
    int32_t *cand = qs->cand + (size_t)u * qs->cap;
    float *ub = qs->cand_ub + (size_t)u * qs->cap, L = qs->L[u];
    int n = 0;

    for (int i = 0; i < qs->n_cand[u]; i++)
        if (ub[i] >= L) {
            cand[n] = cand[i];
            ub[n++] = ub[i];
        }
    qs->n_cand[u] = n;
    if (2 * n > qs->cap) {
        qs->failed[u] = 1;
        qs->L[u] = INFINITY;
    }
}

/* Item j passed the first test for user u: its own bound decides. */
static void propose(hl_qscan *qs, int u, int32_t j, float a)
{
    const hl_qitems *qi = qs->qi;
    float U = item_bound(qs, u, qi->r[j], qi->nrm[j]);
    float ub = a + U;

    if (!(ub >= qs->L[u]) || is_excluded(qs, u, j))
        return;
    if (qs->n_cand[u] == qs->cap) {
        compact(qs, u);
        if (qs->failed[u])
            return;
    }
    qs->cand[(size_t)u * qs->cap + qs->n_cand[u]] = j;
    qs->cand_ub[(size_t)u * qs->cap + qs->n_cand[u]++] = ub;
    hl_qscan_offer_lower(qs, u, a - U);
}

/* ---- plain kernel ---- */

static void dots_plain(const uint8_t *rows, const int8_t *qq, int ng, int32_t *D)
{
    for (int i = 0; i < CHUNK; i++) {
        int32_t s = 0;
        for (int g = 0; g < ng; g++) {
            const uint8_t *e = rows + (size_t)g * 64 + i * 4;
            const int8_t *x = qq + g * 4;
            s += e[0] * x[0] + e[1] * x[1] + e[2] * x[2] + e[3] * x[3];
        }
        D[i] = s;
    }
}

static void chunk_plain(hl_qscan *qs, int u, int32_t c)
{
    const hl_qitems *qi = qs->qi;
    const float *s = chunk_scale(qi, c), *b = chunk_bias(qi, c);
    int32_t D[CHUNK];

    dots_plain(chunk_rows(qi, c), qs->qq + (size_t)u * qi->dp, qi->ng, D);
    for (int i = 0, n = chunk_len(qi, c); i < n; i++) {
        float a = approx_score(qs, u, D[i], s[i], b[i]);
        if (a >= first_test(qs, u))
            propose(qs, u, c * CHUNK + i, a);
    }
}

static void scan_plain(hl_qscan *qs, int n)
{
    for (int32_t c0 = 0; c0 < qs->qi->n_chunks; c0 += BLOCK_CHUNKS) {
        int32_t c1 = c0 + BLOCK_CHUNKS < qs->qi->n_chunks ? c0 + BLOCK_CHUNKS
                                                           : qs->qi->n_chunks;
        for (int u = 0; u < n; u++)
            if (!qs->failed[u])
                for (int32_t c = c0; c < c1; c++)
                    chunk_plain(qs, u, c);
    }
}

/* ---- AVX-512 VNNI kernel ---- */

#ifdef HAVE_VNNI
#define VNNI_TARGET __attribute__((target("avx512f,avx512vnni")))

/* The sixteen a_j of chunk c for user u from dot products already
 * corrected by -corr: the same operations as approx_score, lane by lane. */
VNNI_TARGET static inline __m512 approx16(const hl_qscan *qs, int u, int32_t c, __m512i d)
{
    const hl_qitems *qi = qs->qi;
    __m512 sqs = _mm512_mul_ps(_mm512_set1_ps(qs->s_q[u]), _mm512_load_ps(chunk_scale(qi, c)));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), sqs, _mm512_load_ps(chunk_bias(qi, c)));
}

static inline int32_t load4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The first test's lanes for user u, chunk c, from its dot products:
 * a_j >= L - Ug, on the items that exist. */
VNNI_TARGET static inline unsigned first_mask(const hl_qscan *qs, int u, int32_t c, __m512i D)
{
    int n = chunk_len(qs->qi, c);
    unsigned valid = n == CHUNK ? 0xffffu : (1u << n) - 1u;
    return valid & _mm512_cmp_ps_mask(approx16(qs, u, c, D),
                                      _mm512_set1_ps(first_test(qs, u)), _CMP_GE_OQ);
}

/* A tile (nu users by nc chunks, D[u * 4 + x]) where some lane passed the
 * first test (rare): the same proposals in the same order as chunk_plain,
 * each user's items ascending, the test redone against the user's
 * current L. */
VNNI_TARGET static void tile_passes(hl_qscan *qs, int u0, int nu, int32_t c, int nc,
                                    const __m512i *D)
{
    for (int u = 0; u < nu; u++)
        for (int x = 0; x < nc; x++) {
            if (qs->failed[u0 + u])
                break;
            unsigned m = first_mask(qs, u0 + u, c + x, D[u * 4 + x]);
            if (m == 0)
                continue;
            float av[CHUNK];
            _mm512_storeu_ps(av, approx16(qs, u0 + u, c + x, D[u * 4 + x]));
            for (; m != 0; m &= m - 1) {
                int i = __builtin_ctz(m);
                if (av[i] >= first_test(qs, u0 + u))
                    propose(qs, u0 + u, (c + x) * CHUNK + i, av[i]);
            }
        }
}

#define DPB(a, e, q) a = _mm512_dpbusd_epi32(a, e, q)

/* D (16 lanes) of users u0..u0+3 by chunks c..c+3 into out[u * 4 + x]:
 * sixteen accumulators in named registers (an array of them defeated the
 * register allocator), each 64-byte row load serving four users. They
 * start at -corr, so they end as D_j. */
VNNI_TARGET static void dots_4x4(const hl_qscan *qs, int u0, int32_t c, __m512i *out)
{
    const hl_qitems *qi = qs->qi;
    const uint8_t *e0 = chunk_rows(qi, c), *e1 = e0 + qi->chunk_bytes,
                  *e2 = e1 + qi->chunk_bytes, *e3 = e2 + qi->chunk_bytes;
    const int8_t *q0 = qs->qq + (size_t)u0 * qi->dp, *q1 = q0 + qi->dp,
                 *q2 = q1 + qi->dp, *q3 = q2 + qi->dp;
    __m512i a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33;
    a00 = a01 = a02 = a03 = _mm512_set1_epi32(-qs->corr[u0]);
    a10 = a11 = a12 = a13 = _mm512_set1_epi32(-qs->corr[u0 + 1]);
    a20 = a21 = a22 = a23 = _mm512_set1_epi32(-qs->corr[u0 + 2]);
    a30 = a31 = a32 = a33 = _mm512_set1_epi32(-qs->corr[u0 + 3]);
    for (int g = 0; g < qi->ng; g++) {
        size_t o = (size_t)g * 64;
        __m512i x0 = _mm512_load_si512(e0 + o), x1 = _mm512_load_si512(e1 + o);
        __m512i x2 = _mm512_load_si512(e2 + o), x3 = _mm512_load_si512(e3 + o);
        __m512i q = _mm512_set1_epi32(load4(q0 + g * 4));
        DPB(a00, x0, q); DPB(a01, x1, q); DPB(a02, x2, q); DPB(a03, x3, q);
        q = _mm512_set1_epi32(load4(q1 + g * 4));
        DPB(a10, x0, q); DPB(a11, x1, q); DPB(a12, x2, q); DPB(a13, x3, q);
        q = _mm512_set1_epi32(load4(q2 + g * 4));
        DPB(a20, x0, q); DPB(a21, x1, q); DPB(a22, x2, q); DPB(a23, x3, q);
        q = _mm512_set1_epi32(load4(q3 + g * 4));
        DPB(a30, x0, q); DPB(a31, x1, q); DPB(a32, x2, q); DPB(a33, x3, q);
    }
    out[0] = a00; out[1] = a01; out[2] = a02; out[3] = a03;
    out[4] = a10; out[5] = a11; out[6] = a12; out[7] = a13;
    out[8] = a20; out[9] = a21; out[10] = a22; out[11] = a23;
    out[12] = a30; out[13] = a31; out[14] = a32; out[15] = a33;
}

/* One user by one chunk. A single user reuses nothing, so its scan is a
 * read of the table: chunk after chunk, a single sequential stream, which
 * the hardware prefetchers follow at memory bandwidth (four chunks read in
 * interleaved rows, or software prefetches ahead, ran at half of it). */
VNNI_TARGET static void dots_1x1(const hl_qscan *qs, int u, int32_t c, __m512i *out)
{
    const hl_qitems *qi = qs->qi;
    const uint8_t *e = chunk_rows(qi, c);
    const int8_t *q = qs->qq + (size_t)u * qi->dp;
    __m512i a = _mm512_set1_epi32(-qs->corr[u]), b = _mm512_setzero_si512();
    int g = 0;
    for (; g + 2 <= qi->ng; g += 2) {      /* two chains: half the latency */
        DPB(a, _mm512_load_si512(e + (size_t)g * 64), _mm512_set1_epi32(load4(q + g * 4)));
        DPB(b, _mm512_load_si512(e + (size_t)g * 64 + 64), _mm512_set1_epi32(load4(q + g * 4 + 4)));
    }
    if (g < qi->ng)
        DPB(a, _mm512_load_si512(e + (size_t)g * 64), _mm512_set1_epi32(load4(q + g * 4)));
    out[0] = _mm512_add_epi32(a, b);
}

/* The first test on the dot products D[u * 4 + x] of nu users by nc
 * chunks: any lane passing sends the tile to tile_passes. */
VNNI_TARGET static void tile_test(hl_qscan *qs, int u0, int nu, int32_t c, int nc,
                                  const __m512i *D)
{
    unsigned any = 0;
    for (int x = 0; x < nc; x++)
        for (int u = 0; u < nu; u++)
            any |= first_mask(qs, u0 + u, c + x, D[u * 4 + x]);
    if (any != 0)
        tile_passes(qs, u0, nu, c, nc, D);
}

/* tile_test for one user by four whole chunks (batch 1's hot path). */
VNNI_TARGET static inline void tile_test_1x4(hl_qscan *qs, int u, int32_t c, const __m512i *D)
{
    __m512 sq = _mm512_set1_ps(qs->s_q[u]), t = _mm512_set1_ps(first_test(qs, u));
    __mmask16 any = 0;
#pragma GCC unroll 4
    for (int x = 0; x < 4; x++) {
        __m512 a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(D[x]),
                                   _mm512_mul_ps(sq, _mm512_load_ps(chunk_scale(qs->qi, c + x))),
                                   _mm512_load_ps(chunk_bias(qs->qi, c + x)));
        any |= _mm512_cmp_ps_mask(a, t, _CMP_GE_OQ);
    }
    if (any != 0)
        tile_passes(qs, u, 1, c, 4, D);
}

/* tile_test for four users by four whole chunks, the batch's hot path:
 * the users' scales and thresholds broadcast once, the sixteen tests
 * before one branch, so they overlap. */
VNNI_TARGET static inline void tile_test_4x4(hl_qscan *qs, int u0, int32_t c, const __m512i *D)
{
    __m512 sq[4], t[4];
    __mmask16 any = 0;

    for (int u = 0; u < 4; u++) {
        sq[u] = _mm512_set1_ps(qs->s_q[u0 + u]);
        t[u] = _mm512_set1_ps(first_test(qs, u0 + u));
    }
#pragma GCC unroll 4
    for (int x = 0; x < 4; x++) {
        __m512 s = _mm512_load_ps(chunk_scale(qs->qi, c + x));
        __m512 b = _mm512_load_ps(chunk_bias(qs->qi, c + x));
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++) {
            __m512 a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(D[u * 4 + x]),
                                       _mm512_mul_ps(sq[u], s), b);
            any |= _mm512_cmp_ps_mask(a, t[u], _CMP_GE_OQ);
        }
    }
    if (any != 0)
        tile_passes(qs, u0, 4, c, 4, D);
}

/* While the first four users meet a block, the same chunks of the next
 * block are asked into L2: a group of users reads four chunks in
 * interleaved rows, which the hardware prefetchers follow less well than
 * one stream. The old "3-7% at batch 16" was measured while gcc dropped
 * this call (core/hl.h, HL_PREFETCH_FN); running, 7 interleaved pairs at
 * load 1-10 (2026-12-04) put it inside the noise: 1M items, batch 16
 * +2% (256: -1%), where batch 1, which never calls it, moved 1-3%. */
HL_PREFETCH_FN void prefetch_next_block(const hl_qitems *qi, int32_t c)
{
    int32_t cn = c + BLOCK_CHUNKS;
    if (cn + 4 > qi->n_chunks)
        return;
    const char *p = (const char *)chunk_rows(qi, cn);
    for (size_t o = 0; o < 4 * qi->chunk_bytes; o += 64)
        __builtin_prefetch(p + o, 0, 2);
}

VNNI_TARGET static void scan_vnni(hl_qscan *qs, int n)
{
    int32_t nc = qs->qi->n_chunks;
    __m512i D[16];

    for (int32_t c0 = 0; c0 < nc; c0 += BLOCK_CHUNKS) {
        int32_t c1 = c0 + BLOCK_CHUNKS < nc ? c0 + BLOCK_CHUNKS : nc, c;
        int u = 0;
        for (; u + 4 <= n; u += 4) {
            for (c = c0; c + 4 <= c1; c += 4) {
                if (u == 0)
                    prefetch_next_block(qs->qi, c);
                dots_4x4(qs, u, c, D);
                if ((c + 4) * CHUNK <= qs->qi->n_items)
                    tile_test_4x4(qs, u, c, D);
                else                        /* the table's last, partial chunk */
                    tile_test(qs, u, 4, c, 4, D);
            }
            for (; c < c1; c++)
                for (int v = u; v < u + 4; v++) {
                    dots_1x1(qs, v, c, D);
                    tile_test(qs, v, 1, c, 1, D);
                }
        }
        for (; u < n; u++) {
            if (qs->failed[u])
                continue;
            for (c = c0; c + 4 <= c1; c += 4) {
                for (int x = 0; x < 4; x++)     /* chunk after chunk: one stream */
                    dots_1x1(qs, u, c + x, D + x);
                if ((c + 4) * CHUNK <= qs->qi->n_items)
                    tile_test_1x4(qs, u, c, D);
                else
                    tile_test(qs, u, 1, c, 4, D);
            }
            for (; c < c1; c++) {
                dots_1x1(qs, u, c, D);
                tile_test(qs, u, 1, c, 1, D);
            }
        }
    }
}

VNNI_TARGET static void approx_vnni(hl_qscan *qs, float *a)
{
    const hl_qitems *qi = qs->qi;
    for (int32_t c = 0; c < qi->n_chunks; c++) {
        __m512i acc = _mm512_set1_epi32(-qs->corr[0]);
        for (int g = 0; g < qi->ng; g++)
            acc = _mm512_dpbusd_epi32(acc, _mm512_load_si512(chunk_rows(qi, c) + (size_t)g * 64),
                                      _mm512_set1_epi32(load4(qs->qq + g * 4)));
        float av[CHUNK];
        _mm512_storeu_ps(av, approx16(qs, 0, c, acc));
        memcpy(a + (size_t)c * CHUNK, av, (size_t)chunk_len(qi, c) * sizeof(float));
    }
}
#endif

/* ---- running a scan ---- */

static void finish_user(hl_qscan *qs, int u)
{
    if (qs->failed[u])
        return;
    compact(qs, u);              /* the final L: keeps exactly ub >= L */
    qs->failed[u] = 0;           /* compact's give-up rule is for a full buffer only */
}

int hl_qscan_run(hl_qscan *qs, const hl_qscan_user *users, int n)
{
    if (n < 0 || n > qs->max_users)
        return HL_EINVAL;
    qs->users = users;
    for (int u = 0; u < n; u++) {
        hl_qscan_prep(qs, u, users[u].q);
        for (int i = 0; !qs->failed[u] && i < users[u].n_seed; i++)
            if (!isnan(users[u].seed[i]))   /* NaN would stall L: not a bound */
                hl_qscan_offer_lower(qs, u, users[u].seed[i]);
    }
#ifdef HAVE_VNNI
    if (qs->qi->vnni)
        scan_vnni(qs, n);
    else
#endif
        scan_plain(qs, n);
    for (int u = 0; u < n; u++)
        finish_user(qs, u);
    qs->users = NULL;
    return 0;
}

const int32_t *hl_qscan_cands(const hl_qscan *qs, int u, int *n_cand)
{
    if (qs->failed[u]) {
        *n_cand = 0;
        return NULL;
    }
    *n_cand = qs->n_cand[u];
    return qs->cand + (size_t)u * qs->cap;
}

int hl_qitems_approx(const hl_qitems *qi, const float *q, float *a, float *U)
{
    char err[128];
    hl_qscan *qs = hl_qscan_create(qi, 1, 1, err, sizeof err);
    int rc = 0;

    if (qs == NULL)
        return HL_ENOMEM;
    hl_qscan_prep(qs, 0, q);
    if (qs->failed[0]) {
        rc = HL_ERANGE;
    }
#ifdef HAVE_VNNI
    else if (qi->vnni) {
        approx_vnni(qs, a);
    }
#endif
    else {
        for (int32_t c = 0; c < qi->n_chunks; c++) {
            int32_t D[CHUNK];
            dots_plain(chunk_rows(qi, c), qs->qq, qi->ng, D);
            for (int i = 0, n = chunk_len(qi, c); i < n; i++)
                a[(size_t)c * CHUNK + i] = approx_score(qs, 0, D[i], chunk_scale(qi, c)[i],
                                                        chunk_bias(qi, c)[i]);
        }
    }
    for (int32_t j = 0; rc == 0 && U != NULL && j < qi->n_items; j++)
        U[j] = item_bound(qs, 0, qi->r[j], qi->nrm[j]);
    hl_qscan_destroy(qs);
    return rc;
}
