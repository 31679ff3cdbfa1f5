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

#include <cblas.h>
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
    float     tw[HL_N_TYPES];
    float    *m;              /* (dim, dim) */
    int32_t  *row_map;        /* from's n_items: to's row or -1 */
    int32_t   n_from, n_to;
    const float *e_from, *e_to;
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

/* ---- building one ------------------------------------------------------- */

static int same_shape(const hl_model_info *a, const hl_model_info *b,
                      char *errbuf, size_t errlen)
{
    if (a->dim != b->dim || a->n_heads != b->n_heads)
        return hl_err(errbuf, errlen, HL_EMISMATCH, "state shape differs: dim %d heads %d "
                      "serving, dim %d heads %d in the new model", a->dim, a->n_heads,
                      b->dim, b->n_heads);
    for (int h = 0; h < a->n_heads; h++)
        if (a->half_life_ms[h] != b->half_life_ms[h])
            return hl_err(errbuf, errlen, HL_EMISMATCH, "half-life of head %d differs: "
                          "%.0f ms serving, %.0f ms in the new model", h,
                          a->half_life_ms[h], b->half_life_ms[h]);
    return 0;
}

/* row_map and the shared items' rows of both e_in, stacked for the fit. */
static int match_items(hl_migration *mg, float **ea, float **eb)
{
    int d = mg->dim, n = 0;
    for (int32_t r = 0; r < mg->n_from; r++) {
        uint32_t len;
        const char *id = hl_model_item_id(mg->from, r, &len);
        mg->row_map[r] = hl_model_item_find(mg->to, id, len);
        n += mg->row_map[r] >= 0;
    }
    *ea = malloc(sizeof **ea * ((size_t)n * d + 1));
    *eb = malloc(sizeof **eb * ((size_t)n * d + 1));
    if (*ea == NULL || *eb == NULL)
        return HL_ENOMEM;
    int k = 0;
    for (int32_t r = 0; r < mg->n_from; r++) {
        if (mg->row_map[r] < 0) continue;
        memcpy(*ea + (size_t)k * d, mg->e_from + (size_t)r * d, sizeof **ea * d);
        memcpy(*eb + (size_t)k * d, mg->e_to + (size_t)mg->row_map[r] * d, sizeof **eb * d);
        k++;
    }
    mg->n_shared = n;
    return 0;
}

hl_migration *hl_migration_create(const hl_model *from, const hl_model *to,
                                  const float tw[HL_N_TYPES],
                                  char *errbuf, size_t errlen)
{
    const hl_model_info *a = hl_model_info_get(from), *b = hl_model_info_get(to);
    float *ea = NULL, *eb = NULL;
    if (same_shape(a, b, errbuf, errlen) != 0)
        return NULL;
    hl_migration *mg = calloc(1, sizeof *mg);
    if (mg == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "migration: out of memory");
        return NULL;
    }
    if (hl_decay_init(&mg->decay, a->n_heads, a->dim, a->half_life_ms,
                                    errbuf, errlen) != 0)
        goto fail;
    *mg = (hl_migration){.from = from, .to = to, .decay = mg->decay, .dim = a->dim,
                         .n_heads = a->n_heads, .n_from = a->n_items, .n_to = b->n_items,
                         .e_from = hl_model_e_in(from), .e_to = hl_model_e_in(to)};
    memcpy(mg->tw, tw, sizeof mg->tw);
    mg->m = malloc(sizeof *mg->m * (size_t)a->dim * a->dim);
    mg->row_map = malloc(sizeof *mg->row_map * ((size_t)a->n_items + 1));
    if (mg->m == NULL || mg->row_map == NULL || match_items(mg, &ea, &eb) != 0) {
        hl_err(errbuf, errlen, HL_ENOMEM, "migration: out of memory (%d items)", (int)a->n_items);
        goto fail;
    }
    if (hl_migration_fit(ea, eb, mg->n_shared, a->dim, a->dim, mg->m, errbuf, errlen) != 0)
        goto fail;
    free(ea); free(eb);
    return mg;
fail:
    free(ea); free(eb);
    hl_migration_destroy(mg);
    return NULL;
}

void hl_migration_destroy(hl_migration *mg)
{
    if (mg == NULL)
        return;
    free(mg->m);
    free(mg->row_map);
    free(mg);
}

const float *hl_migration_map(const hl_migration *mg) { return mg->m; }
int hl_migration_shared(const hl_migration *mg) { return mg->n_shared; }

/* ---- one row ------------------------------------------------------------ */

/* r_old, r_new (n_heads, dim) += the ring's events in each space. */
static void ring_parts(const hl_migration *mg, const hl_row_edit *e, float *r_old, float *r_new)
{
    const hl_row_view *v = &e->v;
    int d = mg->dim;
    float f[HL_MAX_HEADS];
    for (int i = 0; i < v->n_hist; i++) {
        int k = hl_row_hist_index(v, i);
        int32_t item = e->hist_item[k];
        if (item < 0 || item >= mg->n_from) continue;    /* added nothing */
        uint8_t type = v->hist_type[k];
        float w = type < HL_N_TYPES ? mg->tw[type] : 0.0f;
        int64_t dt = v->t_ref_ms - v->hist_ts_ms[k];
        hl_decay_factors(&mg->decay, dt > 0 ? dt : 0, f);
        const float *xo = mg->e_from + (size_t)item * d;
        int32_t to = mg->row_map[item];
        const float *xn = to >= 0 ? mg->e_to + (size_t)to * d : NULL;
        for (int h = 0; h < mg->n_heads; h++) {
            float c = w * f[h];
            cblas_saxpy(d, c, xo, 1, r_old + (size_t)h * d, 1);
            if (xn) cblas_saxpy(d, c, xn, 1, r_new + (size_t)h * d, 1);
        }
    }
}

static void map_ring_items(const hl_migration *mg, hl_row_edit *e)
{
    for (int i = 0; i < e->v.n_hist; i++) {
        int k = hl_row_hist_index(&e->v, i);
        int32_t item = e->hist_item[k];
        e->hist_item[k] = item >= 0 && item < mg->n_from ? mg->row_map[item] : -1;
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
    float *rem = scratch, *r_new = scratch + per * (size_t)n;
    memset(scratch, 0, sizeof *scratch * 2 * per * (size_t)n);
    /* rem (n nh, d) := s - R_old, the part older than the ring; r_new the
     * ring's events in the new space. Then s := rem M + R_new, one
     * (n nh, dim) x (dim, dim) product for all n rows: SGEMM runs far
     * better on many rows than on three. */
    for (int r = 0; r < n; r++) {
        float *ro = rem + per * (size_t)r;
        ring_parts(mg, &e[r], ro, r_new + per * (size_t)r);
        for (size_t j = 0; j < per; j++) ro[j] = e[r].s[j] - ro[j];
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n * nh, d, d, 1.0f,
                rem, d, mg->m, d, 1.0f, r_new, d);
    for (int r = 0; r < n; r++) {
        memcpy(e[r].s, r_new + per * (size_t)r, sizeof(float) * per);
        map_ring_items(mg, &e[r]);
    }
}
