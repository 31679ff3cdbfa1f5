/* migrate.c - a user's heads from one model's e_in space into another's:
 * the least-squares map M between the two models and the per-row update
 * (the contract and the math are in migrate.h; what is approximated is in
 * schemas/model.md).
 *
 * The row update, per head h, with f_i = exp(-lambda_h (B_h - t_i)) (B_h the
 * head's base, decay.h) and
 * w_i the weight of the ring's i-th event:
 *
 *     R_old = sum_i w_i f_i e_old[item_i]     the ring's part, old space
 *     R_new = sum_i w_i f_i e_new[item'_i]    the same events, new space
 *     s'    = (s - R_old) M + R_new
 *
 * so the ring's part is exact and only what is older than the ring goes
 * through M. With identical models M = I and R_old = R_new: s' = s up to
 * rounding. Models are borrowed and must outlive the migration. */
#include "migrate_internal.h"

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
int32_t hl_mig_key_find(const hl_migration *mg, uint64_t k)
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
                         .local = HL_MIG_LOCAL,
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

void hl_migration_set_local(hl_migration *mg, float kappa)
{
    mg->local = kappa > 0 && isfinite(kappa) ? kappa : 0.0f;
}

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

void hl_mig_axpy_heads(float *restrict y, const float *c, int nh,
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
    return e->v.hist_key ? hl_mig_key_find(mg, e->v.hist_key[k]) : -1;
}

/* The weight entry k was applied with; a ring restored from a format-1
 * snapshot does not know it: the type's weight then (model.md). */
float hl_mig_entry_weight(const hl_migration *mg, const hl_row_view *v, int k)
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

/* A row's ring masses per head, for the local correction (rows_end). */
typedef struct ring_mass {
    float m0[HL_MAX_HEADS];             /* the row's masses before the migration */
    float rem[HL_MAX_HEADS];            /* m0 less the ring's events from knew:
                                           the remainder's mass */
    float kept[HL_MAX_HEADS];           /* the ring's events from knew */
} ring_mass;

/* One ring event's share of its row's correction: acc += c x, x a
 * gathered row: a delta (into the row's deltas, scaled at the end:
 * rows_end) or to's e_in (into the row's heads). */
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
 * neither model knows, or an added one) and maps its item (map_entry):
 * a delta into the row's dacc, its c into rm (the local correction's
 * masses), an item only to knows into acc. A rebuild adds the entry's
 * masses to e->m (zeroed by the caller). Returns 1 when it listed one. */
static int list_entry(const hl_migration *mg, hl_row_edit *e, int k, float *acc,
                      float *dacc, ring_mass *rm, gather *g)
{
    int in_to;
    const float *x = entry_vector(mg, e, k, &in_to);
    map_entry(mg, e, k, g);
    if (x == NULL)
        return 0;       /* g->item is NULL: only the delta path leaves one */
    float f[HL_MAX_HEADS], w = hl_mig_entry_weight(mg, &e->v, k);
    hl_decay_weights(&mg->decay, e->v.t_ref_ms, e->v.hist_ts_ms[k], f);
    for (int h = 0; h < mg->n_heads; h++) {
        g->c[h] = w * f[h];
        if (in_to)
            e->m[h] += g->c[h];
        if (g->item != NULL) {          /* from knew it: not the remainder's */
            rm->rem[h] -= g->c[h];
            rm->kept[h] += g->c[h];
        }
    }
    g->x = x;
    g->acc = g->item != NULL ? dacc : acc;
    g->m = e->m;
    return 1;
}

/* Lists up to GATHER_MAX events of the slice's rings from *wk on, in
 * order (row by row, oldest first, so each row's sum is added in the same
 * order as one row alone would add it). acc holds per floats per row. */
static int collect(const hl_migration *mg, hl_row_edit *e, int n, walk *wk,
                   float *acc, float *dacc, ring_mass *rm, size_t per, gather *g)
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
        ng += list_entry(mg, er, k, acc + per * (size_t)wk->r, dacc + per * (size_t)wk->r,
                         &rm[wk->r], &g[ng]);
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
        hl_mig_axpy_heads(g[j].acc, g[j].c, mg->n_heads, g[j].x, mg->dim);
        if (g[j].item != NULL && (*g[j].item = mg->row_map[g[j].from_row]) < 0)
            drop_mass(g[j].m, g[j].c, mg->n_heads);
    }
}

void hl_migration_row(const hl_migration *mg, hl_row_edit *e, float *scratch)
{
    hl_migration_rows(mg, e, 1, scratch);
}

/* The local correction: M carries what is older than the ring with the
 * fit's error, and a retrain moves the items one user touched much alike
 * (their deltas agree more than the fit's residual over all items says).
 * So each head's remainder also gets kappa times its mass times the mean
 * delta of the ring's items the old model knew (an item the new one drops
 * has delta = -e_old M: the remainder's own events on such items likely
 * went the same way):
 *   s' = s M + (1 + kappa rem_h / kept_h) sum_kept c delta + the rest,
 * rem_h the head's mass older than the ring, kept_h the ring's mass of
 * those items. kappa = HL_MIG_LOCAL: the error's minimum over kappa on
 * taobao-sample (tests/quality/RESULTS.md, "Model swap"). A remainder at
 * rounding level (hl_mig_usable()) gets none. Deciding an entry's buffer
 * when it is listed keeps accumulate() free of the row_map read it waits
 * for. */
static void rows_end(const hl_migration *mg, float *acc, const float *dacc,
                     const ring_mass *rm, int n)
{
    int d = mg->dim, nh = mg->n_heads;
    for (int r = 0; r < n; r++)
        for (int h = 0; h < nh; h++) {
            const ring_mass *q = &rm[r];
            float sc = 1.0f;
            if (mg->local > 0 && q->kept[h] > 0 && hl_mig_usable(q->rem[h], q->m0[h]))
                sc += mg->local * q->rem[h] / q->kept[h];
            size_t o = ((size_t)r * nh + (size_t)h) * (size_t)d;
            hl_mig_axpy_heads(acc + o, &sc, 1, dacc + o, d);   /* vectorised */
        }
}

/* At most HL_MIG_ROWS rows (ring_mass on the stack). */
static void rows_piece(const hl_migration *mg, hl_row_edit *e, int n, float *scratch)
{
    int d = mg->dim, nh = mg->n_heads;
    size_t per = (size_t)nh * d;
    float *dacc = scratch, *acc = scratch + per * (size_t)n;
    ring_mass rm[HL_MIG_ROWS];
    gather g[GATHER_MAX];
    walk wk = {0, 0};
    /* s' = (s - R_old) M + R_new = s M + sum_ring c (e_new - e_old M) (and
     * the local correction, rows_end): the heads gathered into dacc, one
     * (n nh, d) x (d, d) product for all n rows puts s M in acc (SGEMM
     * runs far better on many rows than on three), then dacc is reused
     * for the ring's deltas, listed and added with the gathers
     * prefetched. */
    for (int r = 0; r < n; r++) {
        memcpy(rm[r].m0, e[r].m, sizeof(float) * (size_t)nh);
        memcpy(rm[r].rem, e[r].m, sizeof(float) * (size_t)nh);
        memset(rm[r].kept, 0, sizeof rm[r].kept);
        if (!mg->rebuild)
            memcpy(dacc + per * (size_t)r, e[r].s, sizeof *dacc * per);
        else            /* the ring alone: its masses too */
            memset(e[r].m, 0, sizeof(float) * (size_t)nh);
    }
    if (!mg->rebuild)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n * nh, d, d, 1.0f,
                    dacc, d, mg->m, d, 0.0f, acc, d);
    else
        memset(acc, 0, sizeof *acc * per * (size_t)n);
    memset(dacc, 0, sizeof *dacc * per * (size_t)n);
    for (int ng; (ng = collect(mg, e, n, &wk, acc, dacc, rm, per, g)) > 0;)
        accumulate(mg, g, ng);
    rows_end(mg, acc, dacc, rm, n);
    for (int r = 0; r < n; r++)
        memcpy(e[r].s, acc + per * (size_t)r, sizeof(float) * per);
}

void hl_migration_rows(const hl_migration *mg, hl_row_edit *e, int n, float *scratch)
{
    for (int r = 0; r < n; r += HL_MIG_ROWS)
        rows_piece(mg, e + r, n - r < HL_MIG_ROWS ? n - r : HL_MIG_ROWS, scratch);
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
