/* migrate_test_util.h - what test_migrate.c (the map and same-shape rows)
 * and test_reshape.c (rows into another shape) share: models of a chosen
 * shape over ids "it<n>", small tables, one user's events, the twin of
 * two tables (under A and under B) and the plain formula's heads. Each
 * test defines PATH_A and PATH_B (its own model files) first. */
#ifndef HL_MIGRATE_TEST_UTIL_H
#define HL_MIGRATE_TEST_UTIL_H

#include "test.h"

#include "migrate.h"

#include <math.h>
#include <unistd.h>

#define DIM   8
#define HEADS 3

static double g_half_life0 = 3600e3;    /* head 0's, for the mismatch case */

/* The state shape model_at gives (a reshape test sets another, then
 * shape_default()). */
static int    g_dim = DIM, g_heads = HEADS;
static double g_hl[HL_MAX_HEADS] = {3600e3, 86400e3, 30 * 86400e3};

static inline void shape_default(void)
{
    static const double hl[HEADS] = {3600e3, 86400e3, 30 * 86400e3};
    g_dim = DIM;
    g_heads = HEADS;
    memcpy(g_hl, hl, sizeof hl);
}

/* exp(-lambda (B - t)) for a head of this half-life: what an event of
 * weight 1 at t weighs in the stored heads of a row with reference time
 * t_ref, which sit at their base B (decay.h). */
static inline double stored_weight(double half_life_ms, int64_t t_ref, int64_t t)
{
    double lambda = log(2.0) / half_life_ms;
    int64_t base = t_ref & -hl_decay_grid_ms(lambda);
    return exp(-lambda * ((double)base - (double)t));
}

static inline float frand(uint64_t *s)
{
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return (float)((double)(*s >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

/* A model over ids "it<first>".."it<first+n-1>", e_in from the seed, or
 * e_in = base's rows times a (DIM, DIM) when a is not NULL; of the shape
 * g_dim, g_heads, g_hl (head 0: g_half_life0 in the default shape). */
static inline hl_model *model_at(const char *path, int first, int n, uint64_t seed,
                                 const float *a, const hl_model *base)
{
    hl_model_parts p;
    memset(&p, 0, sizeof p);
    hl_model_info *mi = &p.info;
    int D = g_dim;
    mi->dim = D; mi->n_heads = g_heads; mi->n_items = n; mi->n_layers = 1;
    mi->layer_out[0] = D;
    for (int h = 0; h < g_heads; h++) mi->half_life_ms[h] = g_hl[h];
    if (g_heads == HEADS && D == DIM) mi->half_life_ms[0] = g_half_life0;
    for (int t = 0; t < HL_N_TYPES; t++) mi->type_weight[t] = 1.0f + (float)t;
    snprintf(mi->version, sizeof mi->version, "m%d-%d", first, n);
    int in = hl_model_input_dim(mi);
    float *e_in = malloc(sizeof(float) * n * D), *e_out = malloc(sizeof(float) * n * D);
    float *bias = calloc((size_t)n, sizeof(float)), *w = calloc((size_t)D * in, sizeof(float));
    float *b = calloc((size_t)D, sizeof(float));
    char **ids = malloc(sizeof *ids * n);
    uint32_t *lens = malloc(sizeof *lens * n);
    for (int i = 0; i < n; i++) {
        ids[i] = malloc(16);
        lens[i] = (uint32_t)snprintf(ids[i], 16, "it%d", first + i);
        for (int j = 0; j < D; j++) e_out[i * D + j] = frand(&seed);
        for (int j = 0; j < D; j++) e_in[i * D + j] = frand(&seed);
        if (a != NULL) {
            int32_t r = hl_model_item_find(base, ids[i], lens[i]);
            const float *x = hl_model_e_in(base) + (size_t)r * DIM;
            for (int j = 0; j < DIM; j++) {
                double acc = 0;
                for (int k = 0; k < DIM; k++) acc += (double)x[k] * a[k * DIM + j];
                e_in[i * DIM + j] = (float)acc;
            }
        }
    }
    p.item_id = (const char *const *)ids; p.item_id_len = lens;
    p.e_in = e_in; p.e_out = e_out; p.bias = bias; p.layer_w[0] = w; p.layer_b[0] = b;
    char err[256];
    hl_model *m = NULL;
    if (hl_model_write(path, &p, err, sizeof err) == 0)
        m = hl_model_open(path, err, sizeof err);
    if (m == NULL) printf("    model %s: %s\n", path, err);
    for (int i = 0; i < n; i++) free(ids[i]);
    free(ids); free(lens); free(e_in); free(e_out); free(bias); free(w); free(b);
    return m;
}

/* A table of model m's shape. */
static inline hl_table *table_of(const hl_model *m, int history)
{
    const hl_model_info *mi = hl_model_info_get(m);
    hl_table_opts o = {.history = history, .expected_users = 16};
    char err[256];
    hl_decay_init(&o.decay, mi->n_heads, mi->dim, mi->half_life_ms, err, sizeof err);
    return hl_table_create(&o, err, sizeof err);
}

static inline hl_table *table_for(int history)
{
    hl_table_opts o = {.history = history, .expected_users = 16};
    double hl[HEADS] = {3600e3, 86400e3, 30 * 86400e3};
    char err[256];
    hl_decay_init(&o.decay, HEADS, DIM, hl, err, sizeof err);
    return hl_table_create(&o, err, sizeof err);
}

/* Applies n events of user, items "it<item[i]>" resolved in m. */
static inline void apply_events(hl_table *tbl, const hl_model *m, const char *user,
                                const int *item, int n, int first_off)
{
    const float tw[HL_N_TYPES] = {1, 2, 3, 4, 5, 6};
    for (int i = 0; i < n; i++) {
        char id[16];
        int len = snprintf(id, sizeof id, "it%d", item[i]);
        uint8_t type = (uint8_t)(i % HL_N_TYPES);
        hl_event ev = {.user = user, .user_len = (uint32_t)strlen(user),
                       .item = hl_model_item_find(m, id, (size_t)len),
                       .item_key = hl_item_key(id, (size_t)len),
                       .type = type, .w = tw[type] * (1.0f + 0.5f * (float)(i % 3)),
                       .ts_ms = 1000000 + (int64_t)(i * 7919 % 13) * 600000 + i * 1000,
                       .offset = first_off + i};
        hl_table_apply(tbl, &ev, 1, hl_model_e_in(m), hl_model_info_get(m)->n_items, NULL);
    }
}

static inline void apply_all(hl_table *tbl, const hl_model *m, const int *item, int n,
                             int first_off)
{
    apply_events(tbl, m, "u1", item, n, first_off);
}

static inline void apply_user(hl_table *tbl, const hl_model *m, const char *user,
                              const int *item, int n)
{
    apply_events(tbl, m, user, item, n, 0);
}

static inline void migrate_user(hl_table *tbl, const hl_migration *mg)
{
    float scratch[2 * HEADS * DIM];
    hl_row_edit e;
    hl_table_edit(tbl, (uint32_t)hl_table_find(tbl, "u1", 2), &e);
    hl_migration_row(mg, &e, scratch);
}

static inline const float *heads_of(hl_table *tbl, hl_row_view *v)
{
    hl_table_view(tbl, (uint32_t)hl_table_find(tbl, "u1", 2), v);
    return v->s;
}

static const float k_tw[HL_N_TYPES] = {1, 2, 3, 4, 5, 6};

/* Old model A (items 0..49) and new model B, and one user's n events
 * (item i is it<(i * step) % mod>) applied twice: under A into ta, under B
 * into tb, the state B would have built from the start. */
typedef struct twin {
    hl_model *a, *b;
    hl_table *ta, *tb;
    int       item[32];
} twin;

/* B holds items b_first.. (b_n of them) with vectors from b_seed, or, with
 * amap, A's e_in times amap. 0, or -1 (checked and said) when a model could
 * not be built; t can be closed either way. */
static inline int twin_open(twin *t, int b_first, int b_n, uint64_t b_seed, const float *amap,
                            int history, int n, int step, int mod)
{
    memset(t, 0, sizeof *t);
    t->a = model_at(PATH_A, 0, 50, 11, NULL, NULL);
    t->b = t->a ? model_at(PATH_B, b_first, b_n, b_seed, amap, t->a) : NULL;
    CHECK(t->a != NULL && t->b != NULL);
    if (t->a == NULL || t->b == NULL) return -1;
    for (int i = 0; i < n; i++) t->item[i] = (i * step) % mod;
    t->ta = table_for(history);
    t->tb = table_for(history);
    apply_all(t->ta, t->a, t->item, n, 0);
    apply_all(t->tb, t->b, t->item, n, 0);
    return 0;
}

static inline void twin_close(twin *t)
{
    hl_table_destroy(t->ta);
    hl_table_destroy(t->tb);
    hl_model_close(t->a);
    hl_model_close(t->b);
}

/* Migrates ta's user with mg; its heads must then be tb's within tol.
 * va and vb are left viewing both rows for the caller's own checks. */
static inline void check_migrated(twin *t, const hl_migration *mg, double tol,
                                  hl_row_view *va, hl_row_view *vb)
{
    migrate_user(t->ta, mg);
    CHECK_CLOSE(heads_of(t->ta, va), heads_of(t->tb, vb), HEADS * DIM, tol);
}

/* The ring keeps its items (by position) through a migration. */
static inline void check_same_ring(const hl_row_view *va, const hl_row_view *vb)
{
    for (int i = 0; i < va->n_hist; i++) {
        int k = hl_row_hist_index(va, i);
        CHECK(va->hist_item[k] == vb->hist_item[k]);
    }
}

static float g_kappa = HL_MIG_LOCAL;    /* plain_heads' (set_local's) */

/* The plain formula, per head: s' = (s - R_old) M + R_new + the local
 * correction kappa (rem / kept) sum_kept c (e_new - e_old M), rem the
 * head's mass older than the ring and kept the ring's mass of the items
 * A knows (e_new 0 for one B drops; core/migrate.h), the ring's events summed in loops, in
 * double, once under each model (the naive twin of hl_migration_rows,
 * which gathers one precomputed e_new - e_old M per event and multiplies
 * all rows' heads by M in one SGEMM). nh heads of half-lives hl under A
 * and B alike, any dims. ev[i] is the item number of the ring's i-th
 * oldest event. */
static inline void plain_heads(const hl_model *a, const hl_model *b, const float *m,
                               const hl_row_view *v, const int *ev, int nh, const double *hl,
                               float *out)
{
    int da = hl_model_info_get(a)->dim, db = hl_model_info_get(b)->dim;
    double rem[HL_MAX_HEADS * DIM], r_new[HL_MAX_HEADS * DIM] = {0};
    double d_kept[HL_MAX_HEADS * DIM] = {0}, rem_m[HL_MAX_HEADS], kept_m[HL_MAX_HEADS] = {0};
    for (int j = 0; j < nh * da; j++) rem[j] = v->s[j];
    for (int h = 0; h < nh; h++) rem_m[h] = v->m[h];
    for (int i = 0; i < v->n_hist; i++) {
        int k = hl_row_hist_index(v, i);
        char id[16];
        int len = snprintf(id, sizeof id, "it%d", ev[i]);
        int32_t ra = hl_model_item_find(a, id, (size_t)len), rb = hl_model_item_find(b, id, (size_t)len);
        const float *xa = hl_model_e_in(a) + (size_t)ra * da, *xb = hl_model_e_in(b) + (size_t)rb * db;
        for (int h = 0; h < nh; h++) {
            double c = v->hist_w[k] * stored_weight(hl[h], v->t_ref_ms, v->hist_ts_ms[k]);
            rem_m[h] -= ra >= 0 ? c : 0;
            kept_m[h] += ra >= 0 ? c : 0;
            for (int j = 0; j < da && ra >= 0; j++)
                rem[h * da + j] -= c * xa[j];
            for (int j = 0; j < db && rb >= 0; j++)
                r_new[h * db + j] += c * xb[j];
            for (int j = 0; j < db && ra >= 0; j++) {   /* e_new 0 when B drops it */
                double xm = 0;
                for (int q = 0; q < da; q++) xm += xa[q] * m[q * db + j];
                d_kept[h * db + j] += c * ((rb >= 0 ? xb[j] : 0) - xm);
            }
        }
    }
    for (int h = 0; h < nh; h++) {
        double sc = kept_m[h] > 0 && rem_m[h] > 1e-5 * v->m[h] ? g_kappa * rem_m[h] / kept_m[h] : 0;
        for (int j = 0; j < db; j++) {
            double acc = r_new[h * db + j] + sc * d_kept[h * db + j];
            for (int q = 0; q < da; q++) acc += rem[h * da + q] * m[q * db + j];
            out[h * db + j] = (float)acc;
        }
    }
}

#endif
