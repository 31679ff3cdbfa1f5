/* migrate.c - a user's heads from one model's e_in space into another's:
 * the least-squares map M between the two models and the per-row update
 * (the contract and the math are in migrate.h; what is approximated is in
 * schemas/model.md).
 *
 * The row update, per head h, with f_i = exp(-lambda_h (t_ref - t_i)) and
 * w_i the weight of the ring's i-th event:
 *
 *     R_old = sum_i w_i f_i e_old[item_i]     the ring's part, old space
 *     R_new = sum_i w_i f_i e_new[item'_i]    the same events, new space
 *     s'    = (s - R_old) M + R_new
 *
 * so the ring's part is exact and only what is older than the ring goes
 * through M. With identical models M = I and R_old = R_new: s' = s up to
 * rounding. Models are borrowed and must outlive the migration. */
#include "migrate.h"

#include "index.h"

#include <cblas.h>
#include <sys/mman.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* LAPACK (Fortran, column-major), exported by Debian's libopenblas. */
extern void sgelsd_(const int *m, const int *n, const int *nrhs, float *a,
                    const int *lda, float *b, const int *ldb, float *s,
                    const float *rcond, int *rank, float *work,
                    const int *lwork, int *iwork, int *info);

struct hl_migration {
    const hl_model *from, *to;
    hl_decay  decay;
    int       dim, n_heads, n_shared;
    double    residual;       /* ||E_from M - E_to||_F / ||E_to||_F, shared items */
    float     tw[HL_N_TYPES];
    float    *m;              /* (dim_from, dim); dim_from == dim but in a reshape */
    float    *delta;          /* (n_from, dim): e_to[row_map[r]] - e_from[r] M, or
                                 -e_from[r] M for an item to drops */
    size_t    delta_bytes;    /* its mapping (hl_map_huge) */
    int32_t  *row_map;        /* from's n_items: to's row or -1 */
    int32_t   n_from, n_to;
    uint64_t *key_slot;       /* to's items by hl_item_key: open addressing */
    int32_t  *key_row;        /* of (key, row), key 0 empty */
    size_t    key_mask;
    int       rebuild;        /* no from: heads and masses from the ring alone */
    int       reshape;        /* from's state shape (dim, heads, half-lives) is not
                                 to's: rows move into another table (row_into) */
    int       dim_from;       /* from's dim; M is (dim_from, dim) */
    hl_decay  decay_from;     /* from's heads (a reshape; else decay is both's) */
    const float *e_from, *e_to;
    float    *pair;           /* a reshape: (n_from, dim_from + dim), from's e_in
                                 row then to's row of the same item (0s if none) */
    size_t    pair_bytes;     /* its mapping (hl_map_huge) */
};

/* ---- the fit ------------------------------------------------------------ */

/* sgelsd on A (n, da) column-major, B (ldb, db) column-major; X lands in
 * B's first da rows. */
static int lapack_lstsq(float *a, float *b, int n, int da, int db, int ldb,
                        char *errbuf, size_t errlen)
{
    int info = 0, rank = 0, lwork = -1, iwq = 0;
    float wq = 0, rcond = 1e-6f;
    float *sv = malloc(sizeof *sv * (size_t)(da < n ? da : n) + 4);
    if (sv == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "migration fit: out of memory");
    sgelsd_(&n, &da, &db, a, &n, b, &ldb, sv, &rcond, &rank, &wq, &lwork, &iwq, &info);
    lwork = (int)wq + 1;
    float *work = malloc(sizeof *work * (size_t)lwork);
    int *iwork = malloc(sizeof *iwork * (size_t)(iwq > 1 ? iwq : 1));
    if (info == 0 && work && iwork)
        sgelsd_(&n, &da, &db, a, &n, b, &ldb, sv, &rcond, &rank, work, &lwork, iwork, &info);
    int rc = work && iwork ? 0 : hl_err(errbuf, errlen, HL_ENOMEM, "migration fit: out of memory");
    if (rc == 0 && info != 0)
        rc = hl_err(errbuf, errlen, HL_EINVAL, "migration fit: sgelsd info=%d "
                    "(the SVD did not converge)", info);
    free(sv); free(work); free(iwork);
    return rc;
}

int hl_migration_fit(const float *a, const float *b, int n, int dim_a, int dim_b,
                     float *m, char *errbuf, size_t errlen)
{
    memset(m, 0, sizeof *m * (size_t)dim_a * dim_b);
    if (n == 0)
        return 0;
    int ldb = n > dim_a ? n : dim_a;
    float *ac = malloc(sizeof *ac * (size_t)n * dim_a);
    float *bc = calloc((size_t)ldb * dim_b, sizeof *bc);
    int rc = HL_ENOMEM;
    if (ac == NULL || bc == NULL) {
        hl_err(errbuf, errlen, rc, "migration fit: out of memory (%d items)", n);
        goto out;
    }
    /* Row-major (n, d) to column-major: element (i, j) at i + j n. */
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < dim_a; j++) ac[i + (size_t)j * n] = a[(size_t)i * dim_a + j];
        for (int j = 0; j < dim_b; j++) bc[i + (size_t)j * ldb] = b[(size_t)i * dim_b + j];
    }
    if ((rc = lapack_lstsq(ac, bc, n, dim_a, dim_b, ldb, errbuf, errlen)) != 0)
        goto out;
    for (int k = 0; k < dim_a; k++)
        for (int j = 0; j < dim_b; j++) m[(size_t)k * dim_b + j] = bc[k + (size_t)j * ldb];
out:
    free(ac);
    free(bc);
    return rc;
}

/* ---- to's items by key ---------------------------------------------------- */

static int index_keys(hl_migration *mg);

static int index_keys_of(hl_migration *mg, const hl_model *to)
{
    mg->to = to;
    mg->n_to = hl_model_info_get(to)->n_items;
    return index_keys(mg);
}

static int index_keys(hl_migration *mg)
{
    size_t cap = 16;
    while (cap < 2 * (size_t)mg->n_to) cap *= 2;
    mg->key_slot = calloc(cap, sizeof *mg->key_slot);
    mg->key_row = malloc(cap * sizeof *mg->key_row);
    if (mg->key_slot == NULL || mg->key_row == NULL)
        return HL_ENOMEM;
    mg->key_mask = cap - 1;
    for (int32_t r = 0; r < mg->n_to; r++) {
        uint32_t len;
        const char *id = hl_model_item_id(mg->to, r, &len);
        uint64_t k = hl_item_key(id, len);
        size_t i = (size_t)(k * 0x9E3779B97F4A7C15ull >> 20) & mg->key_mask;
        while (mg->key_slot[i] != 0 && mg->key_slot[i] != k) i = (i + 1) & mg->key_mask;
        if (mg->key_slot[i] == 0) {         /* two ids of one key: the first */
            mg->key_slot[i] = k;
            mg->key_row[i] = r;
        }
    }
    return 0;
}

/* to's row of an item key, -1 when to does not know it (or key 0). */
static int32_t key_find(const hl_migration *mg, uint64_t k)
{
    if (k == 0)
        return -1;
    size_t i = (size_t)(k * 0x9E3779B97F4A7C15ull >> 20) & mg->key_mask;
    while (mg->key_slot[i] != 0) {
        if (mg->key_slot[i] == k) return mg->key_row[i];
        i = (i + 1) & mg->key_mask;
    }
    return -1;
}

/* ---- building one ------------------------------------------------------- */

/* Why a row of a cannot be migrated in place into b (another shape), for
 * a live swap's refusal: a restart migrates it (hl_migration_create_any
 * into a table of the new shape). */
#define RESTART_MIGRATES "; a live swap cannot change the state's shape: restart the " \
                         "worker with it (a restart migrates the snapshots into it)"
static int same_shape(const hl_model_info *a, const hl_model_info *b,
                      char *errbuf, size_t errlen)
{
    int h = hl_decay_shape_diff(a->dim, a->n_heads, a->half_life_ms,
                                b->dim, b->n_heads, b->half_life_ms);
    if (h == HL_SHAPE_SAME)
        return 0;
    if (h == HL_SHAPE_SIZE)
        return hl_err(errbuf, errlen, HL_EMISMATCH, "state shape differs: dim %d heads %d "
                      "serving, dim %d heads %d in the new model" RESTART_MIGRATES,
                      a->dim, a->n_heads, b->dim, b->n_heads);
    return hl_err(errbuf, errlen, HL_EMISMATCH, "half-life of head %d differs: "
                  "%.0f ms serving, %.0f ms in the new model" RESTART_MIGRATES, h,
                  a->half_life_ms[h], b->half_life_ms[h]);
}

/* row_map and the shared items' rows of both e_in, stacked for the fit;
 * with item_w (from's items) each pair is scaled by sqrt(w), so the fit
 * minimises sum_j w_j ||e_old[j] M - e_new[j]||^2. */
static int match_items(hl_migration *mg, const float *item_w, float **ea, float **eb)
{
    int da = mg->dim_from, db = mg->dim, n = 0;
    for (int32_t r = 0; r < mg->n_from; r++) {
        uint32_t len;
        const char *id = hl_model_item_id(mg->from, r, &len);
        mg->row_map[r] = hl_model_item_find(mg->to, id, len);
        n += mg->row_map[r] >= 0;
    }
    *ea = malloc(sizeof **ea * ((size_t)n * da + 1));
    *eb = malloc(sizeof **eb * ((size_t)n * db + 1));
    if (*ea == NULL || *eb == NULL)
        return HL_ENOMEM;
    int k = 0;
    for (int32_t r = 0; r < mg->n_from; r++) {
        if (mg->row_map[r] < 0) continue;
        float sw = item_w ? sqrtf(item_w[r] > 0 ? item_w[r] : 0) : 1.0f;
        const float *xa = mg->e_from + (size_t)r * da, *xb = mg->e_to + (size_t)mg->row_map[r] * db;
        for (int j = 0; j < da; j++) (*ea)[(size_t)k * da + j] = sw * xa[j];
        for (int j = 0; j < db; j++) (*eb)[(size_t)k * db + j] = sw * xb[j];
        k++;
    }
    mg->n_shared = n;
    return 0;
}

/* delta = E_to[row_map] - E_from M (one SGEMM over from's items): what a
 * ring event on each item adds beyond s M, so a row's ring costs one
 * gathered vector per event instead of two. It costs from's e_in once
 * more in memory while the migration lives. */
static int make_delta(hl_migration *mg, char *errbuf, size_t errlen)
{
    int d = mg->dim;
    /* Huge pages: every ring event gathers a row of it at random, and in
     * small pages most gathers also missed the TLB (measured: the rows of
     * a 100k-item delta cost twice the rest of a migration). */
    mg->delta = hl_map_huge(sizeof *mg->delta * ((size_t)mg->n_from * d + 1), &mg->delta_bytes);
    if (mg->delta == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "migration: out of memory (%d items x %d)",
                      (int)mg->n_from, d);
    if (mg->n_from > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, mg->n_from, d, d, -1.0f,
                    mg->e_from, d, mg->m, d, 0.0f, mg->delta, d);
    double res = 0, norm = 0;
    for (int32_t r = 0; r < mg->n_from; r++) {
        if (mg->row_map[r] < 0) continue;
        float *dr = mg->delta + (size_t)r * d;
        const float *xn = mg->e_to + (size_t)mg->row_map[r] * d;
        for (int j = 0; j < d; j++) {
            dr[j] += xn[j];
            res += (double)dr[j] * dr[j];
            norm += (double)xn[j] * xn[j];
        }
    }
    mg->residual = norm > 0 ? sqrt(res / norm) : 0;
    return 0;
}

/* A reshape's ring entries each gather from's and to's e_in row of one
 * item, at random over the catalogue: from the models' own mappings (4 KB
 * pages) every gather also missed the TLB, and axpy_heads' loads of those
 * rows were 90% of its time and a fifth of bench_swap --shape reshape's.
 * Both rows of an item side by side in huge pages: one gather, adjacent
 * lines, a few TLB entries for the whole catalogue. */
static int make_pair(hl_migration *mg, char *errbuf, size_t errlen)
{
    size_t da = (size_t)mg->dim_from, db = (size_t)mg->dim, w = da + db;
    mg->pair = hl_map_huge(sizeof *mg->pair * ((size_t)mg->n_from * w + 1), &mg->pair_bytes);
    if (mg->pair == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "migration: out of memory (%d items)",
                      (int)mg->n_from);
    for (int32_t r = 0; r < mg->n_from; r++) {
        float *p = mg->pair + (size_t)r * w;
        memcpy(p, mg->e_from + (size_t)r * da, sizeof *p * da);
        if (mg->row_map[r] >= 0)
            memcpy(p + da, mg->e_to + (size_t)mg->row_map[r] * db, sizeof *p * db);
        else
            memset(p + da, 0, sizeof *p * db);
    }
    return 0;
}

hl_migration *hl_migration_create(const hl_model *from, const hl_model *to,
                                  const float tw[HL_N_TYPES],
                                  char *errbuf, size_t errlen)
{
    return hl_migration_create_weighted(from, to, tw, NULL, errbuf, errlen);
}

/* ||E_from M - E_to||_F / ||E_to||_F over the shared rows ea, eb (a
 * reshape: make_delta, which also gives it, is for same-shape rows). */
static void fit_residual(hl_migration *mg, const float *ea, const float *eb)
{
    int n = mg->n_shared, da = mg->dim_from, db = mg->dim;
    float *p = n > 0 ? malloc(sizeof *p * (size_t)n * db) : NULL;
    double res = 0, norm = 0;
    if (p != NULL) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, db, da, 1.0f,
                    ea, da, mg->m, db, 0.0f, p, db);
        for (size_t i = 0; i < (size_t)n * db; i++) {
            res += ((double)p[i] - eb[i]) * ((double)p[i] - eb[i]);
            norm += (double)eb[i] * eb[i];
        }
    }
    free(p);
    mg->residual = norm > 0 ? sqrt(res / norm) : 0;
}

/* any_shape: from and to may differ in dim, heads or half-lives (a
 * reshape); else such a pair is refused (a live swap). */
static hl_migration *create(const hl_model *from, const hl_model *to,
                            const float tw[HL_N_TYPES], const float *item_w, int any_shape,
                            char *errbuf, size_t errlen)
{
    const hl_model_info *a = hl_model_info_get(from), *b = hl_model_info_get(to);
    float *ea = NULL, *eb = NULL;
    int reshape = same_shape(a, b, errbuf, errlen) != 0;
    if (reshape && !any_shape)
        return NULL;
    if (reshape && errlen > 0)
        errbuf[0] = '\0';
    hl_migration *mg = calloc(1, sizeof *mg);
    if (mg == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "migration: out of memory");
        return NULL;
    }
    hl_decay from_decay, to_decay;
    if (hl_decay_init(&from_decay, a->n_heads, a->dim, a->half_life_ms, errbuf, errlen) != 0 ||
        hl_decay_init(&to_decay, b->n_heads, b->dim, b->half_life_ms, errbuf, errlen) != 0)
        goto fail;
    *mg = (hl_migration){.from = from, .to = to, .decay = to_decay, .decay_from = from_decay,
                         .dim = b->dim, .dim_from = a->dim, .reshape = reshape,
                         .n_heads = b->n_heads, .n_from = a->n_items, .n_to = b->n_items,
                         .e_from = hl_model_e_in(from), .e_to = hl_model_e_in(to)};
    memcpy(mg->tw, tw, sizeof mg->tw);
    mg->m = malloc(sizeof *mg->m * (size_t)a->dim * b->dim);
    mg->row_map = malloc(sizeof *mg->row_map * ((size_t)a->n_items + 1));
    if (mg->m == NULL || mg->row_map == NULL || index_keys(mg) != 0 ||
        match_items(mg, item_w, &ea, &eb) != 0) {
        hl_err(errbuf, errlen, HL_ENOMEM, "migration: out of memory (%d items)", (int)a->n_items);
        goto fail;
    }
    if (hl_migration_fit(ea, eb, mg->n_shared, a->dim, b->dim, mg->m, errbuf, errlen) != 0 ||
        (!reshape && make_delta(mg, errbuf, errlen) != 0) ||
        (reshape && make_pair(mg, errbuf, errlen) != 0))
        goto fail;
    if (reshape)
        fit_residual(mg, ea, eb);
    free(ea); free(eb);
    return mg;
fail:
    free(ea); free(eb);
    hl_migration_destroy(mg);
    return NULL;
}

hl_migration *hl_migration_create_weighted(const hl_model *from, const hl_model *to,
                                           const float tw[HL_N_TYPES], const float *item_w,
                                           char *errbuf, size_t errlen)
{
    return create(from, to, tw, item_w, 0, errbuf, errlen);
}

hl_migration *hl_migration_create_any(const hl_model *from, const hl_model *to,
                                      const float tw[HL_N_TYPES], char *errbuf, size_t errlen)
{
    return create(from, to, tw, NULL, 1, errbuf, errlen);
}

int hl_migration_reshapes(const hl_migration *mg) { return mg->reshape; }

hl_migration *hl_migration_rebuild(const hl_model *to, const float tw[HL_N_TYPES],
                                   char *errbuf, size_t errlen)
{
    const hl_model_info *b = hl_model_info_get(to);
    hl_migration *mg = calloc(1, sizeof *mg);
    if (mg == NULL || index_keys_of(mg, to) != 0) {
        hl_migration_destroy(mg);
        hl_err(errbuf, errlen, HL_ENOMEM, "rebuild: out of memory (%d items)", (int)b->n_items);
        return NULL;
    }
    mg->rebuild = 1;
    mg->dim = mg->dim_from = b->dim;
    mg->n_heads = b->n_heads;
    mg->e_to = hl_model_e_in(to);
    memcpy(mg->tw, tw, sizeof mg->tw);
    if (hl_decay_init(&mg->decay, b->n_heads, b->dim, b->half_life_ms, errbuf, errlen) != 0) {
        hl_migration_destroy(mg);
        return NULL;
    }
    return mg;
}

void hl_migration_destroy(hl_migration *mg)
{
    if (mg == NULL)
        return;
    free(mg->m);
    if (mg->delta != NULL)
        munmap(mg->delta, mg->delta_bytes);
    if (mg->pair != NULL)
        munmap(mg->pair, mg->pair_bytes);
    free(mg->row_map);
    free(mg->key_slot);
    free(mg->key_row);
    free(mg);
}

const float *hl_migration_map(const hl_migration *mg) { return mg->m; }
int hl_migration_shared(const hl_migration *mg) { return mg->n_shared; }
double hl_migration_residual(const hl_migration *mg) { return mg->residual; }

/* ---- one row ------------------------------------------------------------ */

/* y (nh, d) += c[h] x for every head h: x is loaded once for all heads
 * (it is a gathered row, usually a cache miss). Blocks of a fixed 8 so the
 * compiler vectorises them at -O2; a saxpy call per (entry, head) cost
 * more than its 64 multiply-adds. As decay.c's kernels: the SSE2 baseline
 * and an AVX2 copy picked at run time (one instruction per block instead
 * of two; no FMA, so both round alike and give the same bits). Once the
 * gathers hit (a reshape's pair rows), these multiply-adds were a fifth
 * of a reshape's time (perf, bench_reshape). */
#define AXPY_HEADS(ATTR, SUFFIX)                                              \
ATTR static void axpy_heads##SUFFIX(float *restrict y, const float *c, int nh, \
                                    const float *restrict x, int d)           \
{                                                                             \
    int j = 0;                                                                \
    for (; j + 8 <= d; j += 8)                                                \
        for (int h = 0; h < nh; h++) {                                        \
            float *restrict yh = y + (size_t)h * d + j;                       \
            for (int u = 0; u < 8; u++) yh[u] += c[h] * x[j + u];             \
        }                                                                     \
    for (; j < d; j++)                                                        \
        for (int h = 0; h < nh; h++) y[(size_t)h * d + j] += c[h] * x[j];     \
}

AXPY_HEADS(, _base)
#if defined(__x86_64__) && defined(__GNUC__)
AXPY_HEADS(__attribute__((target("avx2"))), _avx2)
#define HAVE_AVX2 1
#endif

static void axpy_heads(float *restrict y, const float *c, int nh,
                       const float *restrict x, int d)
{
#ifdef HAVE_AVX2
    if (__builtin_cpu_supports("avx2")) {
        axpy_heads_avx2(y, c, nh, x, d);
        return;
    }
#endif
    axpy_heads_base(y, c, nh, x, d);
}

/* The ring entry k's row in to: through from's row when from knew the
 * item, else by its key (an item only the new model knows). */
static int32_t new_row(const hl_migration *mg, const hl_row_edit *e, int k)
{
    int32_t item = e->hist_item[k];
    if (!mg->rebuild && item >= 0 && item < mg->n_from)
        return mg->row_map[item];
    return e->v.hist_key ? key_find(mg, e->v.hist_key[k]) : -1;
}

/* The weight entry k was applied with; a ring restored from a format-1
 * snapshot does not know it: the type's weight then (model.md). */
static float entry_weight(const hl_migration *mg, const hl_row_view *v, int k)
{
    float w = v->hist_w ? v->hist_w[k] : NAN;
    if (w == w)
        return w;
    return v->hist_type[k] < HL_N_TYPES ? mg->tw[v->hist_type[k]] : 0.0f;
}

/* What ring entry k adds to s' = s M + sum_k c_k x_k: delta[item] for an
 * item from knew (its e_new - e_old M, or -e_old M when to drops it),
 * to's e_in for one only to knows (found by key), NULL for nothing (an
 * item neither knows, or an added one: its share stays in s and goes
 * through M). *in_to: an item from did not know and to does, so the
 * event now counts in the masses too (as it does in to's own state). */
static const float *entry_vector(const hl_migration *mg, const hl_row_edit *e, int k,
                                 int *in_to)
{
    int32_t item = e->hist_item[k];
    *in_to = 0;
    if (!mg->rebuild && item >= 0 && item < mg->n_from)
        return mg->delta + (size_t)item * mg->dim;
    if (!mg->rebuild && item == HL_ITEM_ADDED)
        return NULL;
    int32_t to = new_row(mg, e, k);
    *in_to = to >= 0;
    return to >= 0 ? mg->e_to + (size_t)to * mg->dim : NULL;
}

/* One ring event's share of its row's correction: acc += c x, x a
 * gathered row (delta or to's e_in). */
typedef struct gather {
    const float *x;
    float       *acc;                   /* the row's (n_heads, dim) in scratch */
    float        c[HL_MAX_HEADS];       /* w f_h per head */
    int32_t     *item;                  /* the ring's item, still from's row: */
    int32_t      from_row;              /* set to row_map[from_row] when added */
    float       *m;                     /* the row's masses: c leaves them when
                                           to drops the item (its share of s is
                                           taken out with -e_old M) */
} gather;

#define GATHER_MAX   256    /* events listed per pass: 16 KB of stack */
#define GATHER_AHEAD 16     /* events whose rows are being fetched */

/* Where collect() stopped: row r of the slice, its ring's i-th oldest. */
typedef struct walk { int r, i; } walk;

/* Maps ring entry k's item to to's row. An item from knows is left for
 * accumulate() (g->item set): row_map is a random read too, made while
 * the gathers are in flight. */
static void map_entry(const hl_migration *mg, hl_row_edit *e, int k, gather *g)
{
    int32_t item = e->hist_item[k];
    g->item = NULL;
    if (!mg->rebuild && item >= 0 && item < mg->n_from) {
        g->item = &e->hist_item[k];
        g->from_row = item;
        return;
    }
    int32_t to = new_row(mg, e, k);
    /* an added item the new model does not know either stays one: its
     * share is still in the heads, mapped */
    if (to >= 0 || mg->rebuild || item != HL_ITEM_ADDED)
        e->hist_item[k] = to;
}

/* Lists ring entry k of row e (nothing when it adds nothing: an item
 * neither model knows, or an added one) and maps its item (map_entry).
 * A rebuild adds the entry's masses to e->m (zeroed by the caller).
 * Returns 1 when it listed one. */
static int list_entry(const hl_migration *mg, hl_row_edit *e, int k, float *acc, gather *g)
{
    int in_to;
    const float *x = entry_vector(mg, e, k, &in_to);
    map_entry(mg, e, k, g);
    if (x == NULL)
        return 0;       /* g->item is NULL: only the delta path leaves one */
    float f[HL_MAX_HEADS], w = entry_weight(mg, &e->v, k);
    int64_t dt = e->v.t_ref_ms - e->v.hist_ts_ms[k];
    hl_decay_factors(&mg->decay, dt > 0 ? dt : 0, f);
    for (int h = 0; h < mg->n_heads; h++) {
        g->c[h] = w * f[h];
        if (in_to)
            e->m[h] += g->c[h];
    }
    g->x = x;
    g->acc = acc;
    g->m = e->m;
    return 1;
}

/* Lists up to GATHER_MAX events of the slice's rings from *wk on, in
 * order (row by row, oldest first, so each row's sum is added in the same
 * order as one row alone would add it). acc holds per floats per row. */
static int collect(const hl_migration *mg, hl_row_edit *e, int n, walk *wk,
                   float *acc, size_t per, gather *g)
{
    int ng = 0;
    while (wk->r < n && ng < GATHER_MAX) {
        hl_row_edit *er = &e[wk->r];
        if (wk->i >= er->v.n_hist) {
            wk->r++;
            wk->i = 0;
            continue;
        }
        int k = hl_row_hist_index(&er->v, wk->i++);
        ng += list_entry(mg, er, k, acc + per * (size_t)wk->r, &g[ng]);
    }
    return ng;
}

/* Asks for every line of x: its row is random in a table larger than the
 * cache (delta is n_items x dim), and a row's dozen of such gathers, each
 * waited for in turn, were most of a migration's time. */
HL_PREFETCH_FN void prefetch_vec(const float *x, int dim)
{
    const char *p = (const char *)x;
    for (size_t o = 0; o < sizeof(float) * (size_t)dim; o += 64)
        __builtin_prefetch(p + o);
}

HL_PREFETCH_FN void prefetch_gather(const hl_migration *mg, const gather *g)
{
    prefetch_vec(g->x, mg->dim);
    if (g->item != NULL)
        __builtin_prefetch(mg->row_map + g->from_row);
}

/* m -= c, never below 0 (the rounding of a mass made of that event alone). */
static void drop_mass(float *m, const float *c, int nh)
{
    for (int h = 0; h < nh; h++)
        m[h] = m[h] > c[h] ? m[h] - c[h] : 0.0f;
}

/* acc += c x for each listed event, and its ring item mapped; what the
 * event GATHER_AHEAD later reads is already asked for, so its misses
 * overlap this work. */
static void accumulate(const hl_migration *mg, const gather *g, int ng)
{
    for (int j = 0; j < ng && j < GATHER_AHEAD; j++)
        prefetch_gather(mg, &g[j]);
    for (int j = 0; j < ng; j++) {
        if (j + GATHER_AHEAD < ng)
            prefetch_gather(mg, &g[j + GATHER_AHEAD]);
        axpy_heads(g[j].acc, g[j].c, mg->n_heads, g[j].x, mg->dim);
        if (g[j].item != NULL && (*g[j].item = mg->row_map[g[j].from_row]) < 0)
            drop_mass(g[j].m, g[j].c, mg->n_heads);
    }
}

void hl_migration_row(const hl_migration *mg, hl_row_edit *e, float *scratch)
{
    hl_migration_rows(mg, e, 1, scratch);
}

void hl_migration_rows(const hl_migration *mg, hl_row_edit *e, int n, float *scratch)
{
    int d = mg->dim, nh = mg->n_heads;
    size_t per = (size_t)nh * d;
    float *old = scratch, *acc = scratch + per * (size_t)n;
    gather g[GATHER_MAX];
    walk wk = {0, 0};
    /* s' = (s - R_old) M + R_new = s M + sum_ring c (e_new - e_old M): old
     * (n nh, d) gathers the heads, acc the ring's correction (listed, then
     * added with the gathers prefetched), then one (n nh, d) x (d, d)
     * product for all n rows adds s M to it (SGEMM runs far better on
     * many rows than on three). */
    memset(acc, 0, sizeof *acc * per * (size_t)n);
    for (int r = 0; r < n; r++) {
        if (!mg->rebuild)
            memcpy(old + per * (size_t)r, e[r].s, sizeof *old * per);
        else            /* the ring alone: its masses too */
            memset(e[r].m, 0, sizeof(float) * (size_t)nh);
    }
    for (int ng; (ng = collect(mg, e, n, &wk, acc, per, g)) > 0;)
        accumulate(mg, g, ng);
    if (!mg->rebuild)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n * nh, d, d, 1.0f,
                    old, d, mg->m, d, 1.0f, acc, d);
    for (int r = 0; r < n; r++)
        memcpy(e[r].s, acc + per * (size_t)r, sizeof(float) * per);
}

int64_t hl_migration_table(const hl_migration *mg, hl_table *tbl)
{
    size_t per = (size_t)mg->n_heads * (size_t)mg->dim;
    float *scratch = malloc(sizeof(float) * 2 * per * HL_MIG_ROWS);
    hl_row_edit *e = malloc(sizeof *e * HL_MIG_ROWS);
    int64_t done = 0;
    int n = 0;
    if (scratch == NULL || e == NULL) {
        free(scratch);
        free(e);
        return HL_ENOMEM;
    }
    for (uint32_t row = hl_table_next_live(tbl, 0); row != UINT32_MAX;
         row = hl_table_next_live(tbl, row + 1)) {
        hl_table_edit(tbl, row, &e[n++]);
        if (n == HL_MIG_ROWS) {
            hl_migration_rows(mg, e, n, scratch);
            done += n;
            n = 0;
        }
    }
    if (n > 0)
        hl_migration_rows(mg, e, n, scratch);
    free(scratch);
    free(e);
    return done + n;
}

/* ---- into another shape ------------------------------------------------- */

/* An old head's remainder is usable for another half-life when it is
 * clearly above the rounding of m - (ring's mass): rm is such a
 * difference, and a remainder at rounding level (a user whose whole
 * history is in the ring) must give nothing, not a scaled-up noise. */
static int usable(float rm, float m)
{
    return isfinite(rm) && rm > 1e-5f * fabsf(m);
}

/* The remainder under lambda from one old head h alone: its mean vector
 * kept, its mass moved as if it all sat at age a0 (the ring's oldest
 * event's, a lower bound on every remainder event's age when events come
 * in time order): exact for a
 * remainder just older than the ring, and on the safe side otherwise
 * (an upper bound of the mass for a shorter half-life, a lower one for
 * a longer). out += scale x rem_h. */
static float from_one(const hl_migration *mg, const float *rem, const float *rmass, int h,
                      double lambda, double a0, float *out)
{
    int da = mg->dim_from;
    double e = -(lambda - mg->decay_from.lambda_per_ms[h]) * a0;
    float sc = (float)exp(e < 80 ? e : 80);
    for (int j = 0; j < da; j++) out[j] = sc * rem[(size_t)h * da + j];
    return sc * rmass[h];
}

/* The remainder (old space, da floats into out; its mass returned) of a
 * new head of rate lambda that no old head shares: between two old heads
 * (rates lo < lambda < hi), log-mass and mean vector interpolated linearly
 * in lambda (a remainder of one age a has log-mass log w - lambda a:
 * linear, so exact then); outside the old heads' range, the nearest one's
 * (from_one). m: the old masses (for usable()). */
static float between(const hl_migration *mg, const float *rem, const float *rmass,
                     const float *m, double lambda, double a0, float *out)
{
    const hl_decay *d = &mg->decay_from;
    int lo = -1, hi = -1, da = mg->dim_from;
    for (int h = 0; h < d->n_heads; h++) {
        double l = d->lambda_per_ms[h];
        if (l < lambda && (lo < 0 || l > d->lambda_per_ms[lo])) lo = h;
        if (l > lambda && (hi < 0 || l < d->lambda_per_ms[hi])) hi = h;
    }
    int ok_lo = lo >= 0 && usable(rmass[lo], m[lo]), ok_hi = hi >= 0 && usable(rmass[hi], m[hi]);
    if (ok_lo && ok_hi) {
        double t = (lambda - d->lambda_per_ms[lo]) /
                   (d->lambda_per_ms[hi] - d->lambda_per_ms[lo]);
        double rm = exp((1 - t) * log(rmass[lo]) + t * log(rmass[hi]));
        double a = rm * (1 - t) / rmass[lo], b = rm * t / rmass[hi];
        for (int j = 0; j < da; j++)
            out[j] = (float)(a * rem[(size_t)lo * da + j] + b * rem[(size_t)hi * da + j]);
        return (float)rm;
    }
    /* one side only (outside the range, or the other's remainder is at
     * rounding level): the usable one, else nothing */
    int h = ok_lo ? lo : ok_hi ? hi : -1;
    if (h < 0) {
        memset(out, 0, sizeof *out * (size_t)da);
        return 0;
    }
    return from_one(mg, rem, rmass, h, lambda, a0, out);
}

/* The old head with half-life hl, -1 when none. */
static int same_half_life(const hl_decay *d, double hl)
{
    for (int h = 0; h < d->n_heads; h++)
        if (d->half_life_ms[h] == hl)
            return h;
    return -1;
}

/* Ring entries whose pair rows are being fetched ahead of their use. */
#define RING_AHEAD 8

/* The pair row of the ring's i-th entry (in time order) into cache. */
static void prefetch_pair(const hl_migration *mg, const hl_row_view *v, int i, size_t w_pair)
{
    int32_t item = v->hist_item[hl_row_hist_index(v, i)];
    if (item < 0 || item >= mg->n_from)
        return;
    const char *p = (const char *)(mg->pair + (size_t)item * w_pair);
    for (size_t b = 0; b < w_pair * sizeof(float); b += 64)
        __builtin_prefetch(p + b);
}

/* The ring's part under the old model out of rem (what is older than the
 * ring, per old head: vectors and masses), and under the new one into
 * acc (heads) and ring_m (masses of the events the old model counted);
 * out_item: the ring's items as to's rows. Returns the age of the ring's
 * oldest event by time (0 for an empty ring): with events in time order,
 * every event older than the ring is at least that old. */
static double split_ring(const hl_migration *mg, const hl_row_view *v, float *rem,
                         float *rmass, float *acc, float *ring_m, float *adj_m,
                         int32_t *out_item)
{
    int na = mg->decay_from.n_heads, nb = mg->n_heads, da = mg->dim_from;
    size_t w_pair = (size_t)da + (size_t)mg->dim;
    double a0 = 0;
    for (int i = 0; i < v->n_hist && i < RING_AHEAD; i++)
        prefetch_pair(mg, v, i, w_pair);
    for (int i = 0; i < v->n_hist; i++) {
        if (i + RING_AHEAD < v->n_hist)
            prefetch_pair(mg, v, i + RING_AHEAD, w_pair);
        int k = hl_row_hist_index(v, i);
        int32_t item = v->hist_item[k];
        int64_t dt = v->t_ref_ms - v->hist_ts_ms[k];
        dt = dt > 0 ? dt : 0;
        if ((double)dt > a0) a0 = (double)dt;
        float w = entry_weight(mg, v, k), f[HL_MAX_HEADS], c[HL_MAX_HEADS];
        int from_knows = item >= 0 && item < mg->n_from;
        const float *pr = from_knows ? mg->pair + (size_t)item * w_pair : NULL;
        if (from_knows) {
            hl_decay_factors(&mg->decay_from, dt, f);
            for (int h = 0; h < na; h++) {
                c[h] = -w * f[h];
                rmass[h] += c[h];
            }
            axpy_heads(rem, c, na, pr, da);
        }
        int32_t to = from_knows ? mg->row_map[item]
                                : v->hist_key ? key_find(mg, v->hist_key[k]) : -1;
        hl_decay_factors(&mg->decay, dt, f);
        /* the masses follow what s' counts: + an item only to knows, - one
         * to drops (as in place, hl_migration_rows) */
        float sign = !from_knows && item != HL_ITEM_ADDED && to >= 0 ? 1.0f
                   : from_knows && to < 0 ? -1.0f : 0.0f;
        for (int h = 0; h < nb; h++) {
            c[h] = w * f[h];
            if (from_knows || item == HL_ITEM_ADDED)    /* in the old masses */
                ring_m[h] += c[h];
            adj_m[h] += sign * c[h];
        }
        /* an added item's share stays in the remainder (as in place) */
        if (to >= 0 && item != HL_ITEM_ADDED)
            axpy_heads(acc, c, nb, from_knows ? pr + da : mg->e_to + (size_t)to * mg->dim,
                       mg->dim);
        out_item[k] = to >= 0 || item != HL_ITEM_ADDED ? to : HL_ITEM_ADDED;
    }
    return a0;
}

/* A row of from's shape into to's (dim, heads, half-lives): per new head,
 * the ring's part recomputed under to (exact), what is older than the
 * ring taken from the old head of the same half-life (exact up to M) or
 * interpolated between the old heads (between()), then through M. */
static void reshape_row(const hl_migration *mg, const hl_row_view *v, float *s, float *m,
                        int32_t *out_item, float *scratch)
{
    int na = mg->decay_from.n_heads, nb = mg->n_heads, da = mg->dim_from, db = mg->dim;
    float *rem = scratch, *rv = rem + (size_t)na * da, *acc = rv + (size_t)nb * da;
    float rmass[HL_MAX_HEADS], ring_m[HL_MAX_HEADS] = {0}, adj_m[HL_MAX_HEADS] = {0};
    memcpy(rem, v->s, sizeof *rem * (size_t)na * da);
    memcpy(rmass, v->m, sizeof *rmass * (size_t)na);
    memset(acc, 0, sizeof *acc * (size_t)nb * db);
    double a0 = split_ring(mg, v, rem, rmass, acc, ring_m, adj_m, out_item);
    for (int h = 0; h < nb; h++) {
        int o = same_half_life(&mg->decay_from, mg->decay.half_life_ms[h]);
        float *out = rv + (size_t)h * da;
        if (o >= 0) {           /* exact: that head's remainder, its mass */
            memcpy(out, rem + (size_t)o * da, sizeof *out * (size_t)da);
            m[h] = v->m[o];
        } else {
            m[h] = between(mg, rem, rmass, v->m, mg->decay.lambda_per_ms[h], a0, out) + ring_m[h];
        }
        m[h] = m[h] + adj_m[h] > 0.0f ? m[h] + adj_m[h] : 0.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, db, da, 1.0f,
                rv, da, mg->m, db, 1.0f, acc, db);
    memcpy(s, acc, sizeof *s * (size_t)nb * db);
}

size_t hl_migration_scratch_floats(const hl_migration *mg)
{
    size_t na = (size_t)(mg->reshape ? mg->decay_from.n_heads : mg->n_heads);
    size_t da = (size_t)(mg->reshape ? mg->dim_from : mg->dim);
    size_t nb = (size_t)mg->n_heads, db = (size_t)mg->dim;
    size_t a = 2 * nb * db, b = na * da + nb * da + nb * db;
    return a > b ? a : b;
}

void hl_migration_row_into(const hl_migration *mg, const hl_row_view *v, float *s, float *m,
                           int32_t *hist_item, float *scratch)
{
    memcpy(hist_item, v->hist_item, sizeof *hist_item * (size_t)v->history);
    if (mg->reshape) {
        reshape_row(mg, v, s, m, hist_item, scratch);
        return;
    }
    /* the same shape (or a rebuild, which reads only the ring): in place
     * on a copy, so the result is hl_migration_row's to the bit */
    size_t per = (size_t)mg->n_heads * mg->dim;
    if (!mg->rebuild) {
        memcpy(s, v->s, sizeof *s * per);
        memcpy(m, v->m, sizeof *m * (size_t)mg->n_heads);
    }
    hl_row_edit e = {.v = *v, .s = s, .m = m, .hist_item = hist_item};
    hl_migration_rows(mg, &e, 1, scratch);
}

int64_t hl_migration_table_into(const hl_migration *mg, const hl_table *src, hl_table *dst)
{
    const hl_table_opts *o = hl_table_opts_get(dst);
    if (o->decay.dim != mg->dim || o->decay.n_heads != mg->n_heads ||
        o->history != hl_table_opts_get(src)->history)
        return HL_EINVAL;
    for (int h = 0; h < mg->n_heads; h++)
        if (o->decay.half_life_ms[h] != mg->decay.half_life_ms[h])
            return HL_EINVAL;
    size_t per = (size_t)mg->n_heads * mg->dim;
    float *scratch = malloc(sizeof(float) * hl_migration_scratch_floats(mg));
    float *s = malloc(sizeof(float) * per), *m = malloc(sizeof(float) * (size_t)mg->n_heads);
    int32_t *item = malloc(sizeof *item * (size_t)o->history);
    int64_t done = scratch && s && m && item ? 0 : HL_ENOMEM;
    for (uint32_t row = hl_table_next_live(src, 0); done >= 0 && row != UINT32_MAX;
         row = hl_table_next_live(src, row + 1)) {
        hl_row_view v, nv;
        hl_table_view(src, row, &v);
        hl_migration_row_into(mg, &v, s, m, item, scratch);
        nv = v;
        nv.s = s;
        nv.m = m;
        nv.hist_item = item;
        int rc = hl_table_restore_at(dst, row, &nv);
        done = rc == 0 ? done + 1 : rc;
    }
    if (done >= 0) {
        hl_table_meta meta;
        hl_table_meta_get(src, &meta);
        hl_table_meta_set(dst, &meta);
    }
    free(scratch); free(s); free(m); free(item);
    return done;
}
