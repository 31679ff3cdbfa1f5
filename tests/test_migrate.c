/* test_migrate.c - core/migrate.c: the least-squares map between two
 * models' e_in and the per-row migration (identity for identical models,
 * exact when the ring covers every event or when E_new = E_old A). */
#define T_SUITE "migrate"
#include "test.h"

#include "migrate.h"

#include <unistd.h>

#define DIM   8
#define HEADS 3
#define PATH_A "/tmp/test_migrate_a.hlm"
#define PATH_B "/tmp/test_migrate_b.hlm"

static double g_half_life0 = 3600e3;    /* head 0's, for the mismatch case */

/* The state shape model_at gives (a reshape test sets another, then
 * shape_default()). */
static int    g_dim = DIM, g_heads = HEADS;
static double g_hl[HL_MAX_HEADS] = {3600e3, 86400e3, 30 * 86400e3};

static void shape_default(void)
{
    static const double hl[HEADS] = {3600e3, 86400e3, 30 * 86400e3};
    g_dim = DIM;
    g_heads = HEADS;
    memcpy(g_hl, hl, sizeof hl);
}

static float frand(uint64_t *s)
{
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return (float)((double)(*s >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

/* A model over ids "it<first>".."it<first+n-1>", e_in from the seed, or
 * e_in = base's rows times a (DIM, DIM) when a is not NULL; of the shape
 * g_dim, g_heads, g_hl (head 0: g_half_life0 in the default shape). */
static hl_model *model_at(const char *path, int first, int n, uint64_t seed,
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
static hl_table *table_of(const hl_model *m, int history)
{
    const hl_model_info *mi = hl_model_info_get(m);
    hl_table_opts o = {.history = history, .expected_users = 16};
    char err[256];
    hl_decay_init(&o.decay, mi->n_heads, mi->dim, mi->half_life_ms, err, sizeof err);
    return hl_table_create(&o, err, sizeof err);
}

static hl_table *table_for(int history)
{
    hl_table_opts o = {.history = history, .expected_users = 16};
    double hl[HEADS] = {3600e3, 86400e3, 30 * 86400e3};
    char err[256];
    hl_decay_init(&o.decay, HEADS, DIM, hl, err, sizeof err);
    return hl_table_create(&o, err, sizeof err);
}

/* Applies n events of user, items "it<item[i]>" resolved in m. */
static void apply_events(hl_table *tbl, const hl_model *m, const char *user, const int *item,
                         int n, int first_off)
{
    const float tw[HL_N_TYPES] = {1, 2, 3, 4, 5, 6};
    for (int i = 0; i < n; i++) {
        char id[16];
        int len = snprintf(id, sizeof id, "it%d", item[i]);
        uint8_t type = (uint8_t)(i % HL_N_TYPES);
        hl_event ev = {.user = user, .user_len = (uint32_t)strlen(user), .item = hl_model_item_find(m, id, (size_t)len),
                       .item_key = hl_item_key(id, (size_t)len),
                       .type = type, .w = tw[type] * (1.0f + 0.5f * (float)(i % 3)),
                       .ts_ms = 1000000 + (int64_t)(i * 7919 % 13) * 600000 + i * 1000,
                       .offset = first_off + i};
        hl_table_apply(tbl, &ev, 1, hl_model_e_in(m), hl_model_info_get(m)->n_items, NULL);
    }
}

static void apply_all(hl_table *tbl, const hl_model *m, const int *item, int n, int first_off)
{
    apply_events(tbl, m, "u1", item, n, first_off);
}

static void apply_user(hl_table *tbl, const hl_model *m, const char *user, const int *item, int n)
{
    apply_events(tbl, m, user, item, n, 0);
}

static void migrate_user(hl_table *tbl, const hl_migration *mg)
{
    float scratch[2 * HEADS * DIM];
    hl_row_edit e;
    hl_table_edit(tbl, (uint32_t)hl_table_find(tbl, "u1", 2), &e);
    hl_migration_row(mg, &e, scratch);
}

static const float *heads_of(hl_table *tbl, hl_row_view *v)
{
    hl_table_view(tbl, (uint32_t)hl_table_find(tbl, "u1", 2), v);
    return v->s;
}

static const float k_tw[HL_N_TYPES] = {1, 2, 3, 4, 5, 6};

static void test_fit_recovers_constructed_map(void)
{
    enum { N = 300, DA = 6, DB = 4 };
    static float a[N * DA], b[N * DB], want[DA * DB], m[DA * DB];
    uint64_t s = 7;
    for (int i = 0; i < N * DA; i++) a[i] = frand(&s);
    for (int i = 0; i < DA * DB; i++) want[i] = frand(&s) * 3;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < DB; j++) {
            double acc = 0;
            for (int k = 0; k < DA; k++) acc += (double)a[i * DA + k] * want[k * DB + j];
            b[i * DB + j] = (float)acc;
        }
    char err[256];
    CHECK(hl_migration_fit(a, b, N, DA, DB, m, err, sizeof err) == 0);
    CHECK_CLOSE(m, want, DA * DB, 1e-4);
    CHECK(hl_migration_fit(a, b, 0, DA, DB, m, err, sizeof err) == 0);
    CHECK(m[0] == 0 && m[DA * DB - 1] == 0);
}

/* Largest |e_a[j] M - e_b[j]| over items j < n (rows of both at j). */
static double fit_error(const hl_model *a, const hl_model *b, const float *m, int n)
{
    double worst = 0;
    for (int j = 0; j < n; j++)
        for (int c = 0; c < DIM; c++) {
            double acc = -hl_model_e_in(b)[j * DIM + c];
            for (int k = 0; k < DIM; k++) acc += (double)hl_model_e_in(a)[j * DIM + k] * m[k * DIM + c];
            worst = fabs(acc) > worst ? fabs(acc) : worst;
        }
    return worst;
}

/* Unrelated e_in (no M maps all 50 items); weighted to DIM items alone,
 * the fit maps exactly those, which the unweighted fit does not. */
static void test_weighted_fit_follows_weights(void)
{
    hl_model *a = model_at(PATH_A, 0, 50, 11, NULL, NULL);
    hl_model *b = a ? model_at(PATH_B, 0, 50, 77, NULL, NULL) : NULL;
    float w[50];
    char err[256];
    for (int j = 0; j < 50; j++) w[j] = j < DIM ? 1.0f : 0.0f;
    hl_migration *plain = a && b ? hl_migration_create(a, b, k_tw, err, sizeof err) : NULL;
    hl_migration *wt = a && b ? hl_migration_create_weighted(a, b, k_tw, w, err, sizeof err) : NULL;
    CHECKF(plain != NULL && wt != NULL, "%s", err);
    if (plain && wt) {
        double e_wt = fit_error(a, b, hl_migration_map(wt), DIM);
        double e_plain = fit_error(a, b, hl_migration_map(plain), DIM);
        CHECKF(e_wt < 1e-3, "weighted fit error %g on its items", e_wt);
        CHECKF(e_plain > 0.1, "unweighted fit error %g: the test cannot tell them apart", e_plain);
    }
    hl_migration_destroy(plain);
    hl_migration_destroy(wt);
    hl_model_close(a);
    hl_model_close(b);
}

static void test_identical_models_are_identity(void)
{
    hl_model *m = model_at(PATH_A, 0, 50, 11, NULL, NULL);
    CHECK(m != NULL);
    if (m == NULL) return;
    hl_table *tbl = table_for(4);           /* the ring holds 4 of 20 */
    int item[20];
    for (int i = 0; i < 20; i++) item[i] = (i * 17) % 50;
    apply_all(tbl, m, item, 20, 0);
    hl_row_view v;
    float before[HEADS * DIM];
    memcpy(before, heads_of(tbl, &v), sizeof before);
    char err[256];
    hl_migration *mg = hl_migration_create(m, m, k_tw, err, sizeof err);
    CHECKF(mg != NULL, "%s", err);
    if (mg) {
        CHECK(hl_migration_shared(mg) == 50);
        migrate_user(tbl, mg);
        CHECK_CLOSE(heads_of(tbl, &v), before, HEADS * DIM, 1e-4);
        for (int i = 0; i < v.n_hist; i++)
            CHECK(v.hist_item[hl_row_hist_index(&v, i)] == item[16 + i]);
    }
    hl_migration_destroy(mg);
    hl_table_destroy(tbl);
    hl_model_close(m);
}

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
static int twin_open(twin *t, int b_first, int b_n, uint64_t b_seed, const float *amap,
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

static void twin_close(twin *t)
{
    hl_table_destroy(t->ta);
    hl_table_destroy(t->tb);
    hl_model_close(t->a);
    hl_model_close(t->b);
}

/* Migrates ta's user with mg; its heads must then be tb's within tol.
 * va and vb are left viewing both rows for the caller's own checks. */
static void check_migrated(twin *t, const hl_migration *mg, double tol,
                           hl_row_view *va, hl_row_view *vb)
{
    migrate_user(t->ta, mg);
    CHECK_CLOSE(heads_of(t->ta, va), heads_of(t->tb, vb), HEADS * DIM, tol);
}

/* The ring keeps its items (by position) through a migration. */
static void check_same_ring(const hl_row_view *va, const hl_row_view *vb)
{
    for (int i = 0; i < va->n_hist; i++) {
        int k = hl_row_hist_index(va, i);
        CHECK(va->hist_item[k] == vb->hist_item[k]);
    }
}

/* B knows items 10..69 under other rows and other vectors; A knows 0..49.
 * Events name items both know, items only A knows (they add nothing in B)
 * and items only B knows (found by their key). Weights vary beyond the
 * type's (the ring keeps each). With the ring holding every event,
 * migration gives B's heads exactly, and B's masses: an event on an item
 * only B knows now counts in them, one on an item B drops no longer does.
 * (Until Dec 5 the masses stayed A's, and a user whose ring held only
 * items new to B kept a mass of 0 under heads of B's vectors: a mean
 * s / max(m, eps) a million times too long, and a query to match.) */
static void test_full_ring_is_exact(void)
{
    twin t;
    char err[256];
    if (twin_open(&t, 10, 60, 99, NULL, 32, 24, 13, 70) != 0) goto out;
    hl_migration *mg = hl_migration_create(t.a, t.b, k_tw, err, sizeof err);
    CHECKF(mg != NULL, "%s", err);
    if (mg) {
        CHECK(hl_migration_shared(mg) == 40);
        hl_row_view va, vb;
        int only_b = 0;
        for (int i = 0; i < 24; i++) only_b += t.item[i] >= 50;
        CHECK(only_b > 0);
        int only_a = 0;
        for (int i = 0; i < 24; i++) only_a += t.item[i] < 10;
        CHECK(only_a > 0);
        float mass[HEADS];
        heads_of(t.ta, &va);
        memcpy(mass, va.m, sizeof mass);
        check_migrated(&t, mg, 1e-4, &va, &vb);
        CHECK_CLOSE(va.m, vb.m, HEADS, 1e-5);   /* B's own masses */
        int moved = 0;
        for (int h = 0; h < HEADS; h++) moved += fabsf(mass[h] - vb.m[h]) > 1e-3f * vb.m[h];
        CHECK(moved == HEADS);                  /* and not A's: the case is one that moves */
        check_same_ring(&va, &vb);
    }
    hl_migration_destroy(mg);
out:
    twin_close(&t);
}

/* B's e_in is A's times a fixed A_map for every item: M recovers it, so
 * even the part older than a short ring migrates exactly. */
static void test_linear_map_migrates_remainder(void)
{
    float amap[DIM * DIM];
    uint64_t s = 3;
    for (int i = 0; i < DIM * DIM; i++) amap[i] = frand(&s);
    twin t;
    char err[256];
    if (twin_open(&t, 0, 50, 5, amap, 5, 30, 7, 50) != 0) goto out;
    hl_migration *mg = hl_migration_create(t.a, t.b, k_tw, err, sizeof err);
    CHECKF(mg != NULL, "%s", err);
    if (mg) {
        CHECK_CLOSE(hl_migration_map(mg), amap, DIM * DIM, 1e-3);
        hl_row_view va, vb;
        check_migrated(&t, mg, 1e-3, &va, &vb);
    }
    hl_migration_destroy(mg);
out:
    twin_close(&t);
}

/* Like apply_all; an item m does not know is given x (the live
 * catalogue's e_in for an item it added: HL_ITEM_ADDED). */
static void apply_added(hl_table *tbl, const hl_model *m, const int *item, int n,
                        const float *x)
{
    for (int i = 0; i < n; i++) {
        char id[16];
        int len = snprintf(id, sizeof id, "it%d", item[i]);
        uint8_t type = (uint8_t)(i % HL_N_TYPES);
        hl_event ev = {.user = "u1", .user_len = 2, .item = hl_model_item_find(m, id, (size_t)len),
                       .item_key = hl_item_key(id, (size_t)len), .type = type, .w = k_tw[type],
                       .ts_ms = 1000000 + i * 60000, .offset = i};
        if (ev.item < 0) {
            ev.item = HL_ITEM_ADDED;
            ev.x = x;
        }
        hl_table_apply(tbl, &ev, 1, hl_model_e_in(m), hl_model_info_get(m)->n_items, NULL);
    }
}

/* it49 is unknown to A and added by the catalogue with its vector in F
 * (A's items plus it49); B is F's e_in times a map. Migrating A's heads
 * into B maps the added item's share with the rest (it is not added again
 * under B, which learned it): the result is B's own heads, and the ring
 * names B's row for it49. */
static void test_added_item_is_mapped_not_doubled(void)
{
    float amap[DIM * DIM];
    uint64_t s = 9;
    for (int i = 0; i < DIM * DIM; i++) amap[i] = frand(&s);
    hl_model *f = model_at("/tmp/test_migrate_f.hlm", 0, 50, 11, NULL, NULL);
    hl_model *a = model_at("/tmp/test_migrate_a.hlm", 0, 49, 11, NULL, NULL);
    hl_model *b = f ? model_at("/tmp/test_migrate_b.hlm", 0, 50, 5, amap, f) : NULL;
    CHECK(f != NULL && a != NULL && b != NULL);
    if (f == NULL || a == NULL || b == NULL) goto out;
    const float *x49 = hl_model_e_in(f) + 49 * DIM;
    int item[24];
    for (int i = 0; i < 24; i++) item[i] = i % 3 == 1 ? 49 : (i * 7) % 49;
    hl_table *ta = table_for(6), *tb = table_for(6);
    apply_added(ta, a, item, 24, x49);
    apply_added(tb, b, item, 24, NULL);
    char err[256];
    hl_migration *mg = hl_migration_create(a, b, k_tw, err, sizeof err);
    CHECKF(mg != NULL, "%s", err);
    if (mg) {
        migrate_user(ta, mg);
        hl_row_view va, vb;
        CHECK_CLOSE(heads_of(ta, &va), heads_of(tb, &vb), HEADS * DIM, 1e-3);
        for (int i = 0; i < va.n_hist; i++) {
            int k = hl_row_hist_index(&va, i);
            CHECK(va.hist_item[k] == vb.hist_item[hl_row_hist_index(&vb, i)]);
        }
    }
    hl_migration_destroy(mg);
    hl_table_destroy(ta);
    hl_table_destroy(tb);
out:
    hl_model_close(f);
    hl_model_close(a);
    hl_model_close(b);
}

/* Without the old model: heads and masses rebuilt from the ring alone by
 * item key; with the ring holding every event that is B's build exactly
 * (masses too: only items B knows count). */
static void test_rebuild_from_ring(void)
{
    twin t;
    char err[256];
    if (twin_open(&t, 10, 60, 99, NULL, 32, 24, 13, 70) != 0) goto out;
    hl_migration *mg = hl_migration_rebuild(t.b, k_tw, err, sizeof err);
    CHECKF(mg != NULL, "%s", err);
    if (mg) {
        hl_row_view va, vb;
        check_migrated(&t, mg, 1e-4, &va, &vb);
        CHECK_CLOSE(va.m, vb.m, HEADS, 1e-5);
        check_same_ring(&va, &vb);
    }
    hl_migration_destroy(mg);
out:
    twin_close(&t);
}

/* The table's generation parity: a flip makes every row stale, rows added
 * afterwards are fresh, done marks one fresh. */
static void test_table_generations(void)
{
    hl_model *m = model_at(PATH_A, 0, 50, 11, NULL, NULL);
    if (m == NULL) { CHECK(0); return; }
    hl_table *tbl = table_for(4);
    int item[3] = {1, 2, 3};
    apply_all(tbl, m, item, 3, 0);
    uint32_t r = (uint32_t)hl_table_find(tbl, "u1", 2);
    CHECK(!hl_table_row_stale(tbl, r));
    hl_table_flip_generation(tbl);
    CHECK(hl_table_row_stale(tbl, r));
    hl_event ev = {.user = "u2", .user_len = 2, .item = 1, .w = 1, .ts_ms = 5, .offset = 9};
    hl_table_apply(tbl, &ev, 1, hl_model_e_in(m), 50, NULL);
    CHECK(!hl_table_row_stale(tbl, (uint32_t)hl_table_find(tbl, "u2", 2)));
    hl_table_row_done(tbl, r);
    CHECK(!hl_table_row_stale(tbl, r));
    CHECK(hl_table_next_live(tbl, 0) == r);
    CHECK(hl_table_next_live(tbl, hl_table_row_limit(tbl)) == UINT32_MAX);
    hl_table_destroy(tbl);
    hl_model_close(m);
}

static void test_shape_mismatch_refused(void)
{
    hl_model *a = model_at(PATH_A, 0, 50, 11, NULL, NULL);
    g_half_life0 = 7200e3;
    hl_model *b = model_at(PATH_B, 0, 50, 12, NULL, NULL);
    g_half_life0 = 3600e3;
    CHECK(a != NULL && b != NULL);
    char err[256] = "";
    hl_migration *mg = a && b ? hl_migration_create(a, b, k_tw, err, sizeof err) : NULL;
    CHECK(mg == NULL);
    CHECKF(strstr(err, "half-life of head 0 differs") != NULL, "err=%s", err);
    hl_migration_destroy(mg);
    hl_model_close(a);
    hl_model_close(b);
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
static void plain_heads(const hl_model *a, const hl_model *b, const float *m,
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
            double c = v->hist_w[k] * exp(-log(2.0) / hl[h] * (double)(v->t_ref_ms - v->hist_ts_ms[k]));
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

/* plain_heads with this file's default shape. */
static void plain_migration(const hl_model *a, const hl_model *b, const float *m,
                            const hl_row_view *v, const int *ev, float *out)
{
    static const double hl[HEADS] = {3600e3, 86400e3, 30 * 86400e3};
    plain_heads(a, b, m, v, ev, HEADS, hl, out);
}

/* Several users with rings shorter than their events, items of both, one
 * and neither model (B's vectors unrelated to A's, so M leaves a residual),
 * migrated together in one hl_migration_rows call: each row equals the
 * plain formula. */
#define N_USERS 5
static void rows_match_plain_formula(float kappa)
{
    hl_model *a = model_at(PATH_A, 0, 50, 11, NULL, NULL);
    hl_model *b = a ? model_at(PATH_B, 10, 60, 77, NULL, NULL) : NULL;
    hl_table *tbl = table_for(6);
    char err[256], user[16];
    int ev[N_USERS][20];
    CHECK(a != NULL && b != NULL && tbl != NULL);
    hl_migration *mg = a && b ? hl_migration_create(a, b, k_tw, err, sizeof err) : NULL;
    CHECKF(mg != NULL, "%s", err);
    if (mg == NULL) goto out;
    hl_migration_set_local(mg, kappa);
    g_kappa = kappa;
    hl_row_edit e[N_USERS];
    float want[N_USERS][HEADS * DIM], scratch[2 * N_USERS * HEADS * DIM];
    for (int u = 0; u < N_USERS; u++) {
        for (int i = 0; i < 20; i++) ev[u][i] = (i * 17 + u * 5) % 80;  /* 70..79: neither */
        snprintf(user, sizeof user, "u%d", u);
        apply_user(tbl, a, user, ev[u], 20);
        hl_table_edit(tbl, (uint32_t)hl_table_find(tbl, user, strlen(user)), &e[u]);
        plain_migration(a, b, hl_migration_map(mg), &e[u].v, ev[u] + 20 - e[u].v.n_hist, want[u]);
    }
    hl_migration_rows(mg, e, N_USERS, scratch);
    for (int u = 0; u < N_USERS; u++)
        CHECK_CLOSE(e[u].s, want[u], HEADS * DIM, 1e-4);
out:
    hl_migration_destroy(mg);
    hl_table_destroy(tbl);
    hl_model_close(a);
    hl_model_close(b);
}

static void test_rows_match_plain_formula(void) { rows_match_plain_formula(HL_MIG_LOCAL); }

/* kappa 0 (the map alone: what eval --swap-local 0 compares with) and a
 * kappa above the default: hl_migration_set_local's rows are the plain
 * formula's with that kappa. */
static void test_rows_local_off_and_on(void)
{
    rows_match_plain_formula(0.0f);
    rows_match_plain_formula(1.0f);
    g_kappa = HL_MIG_LOCAL;
}

/* ---- a slice of rows against one row at a time --------------------------- */

#define SLICE_USERS 48
#define SLICE_HIST  32

/* User i's events (item numbers) by kind i % 4: a full ring (40 events),
 * a short one (3..7), none (an empty ring, restored), and items B does
 * not know (0..9 only A knows, 70..79 neither does). Returns the count. */
static int slice_events(int i, int *ev)
{
    int n = i % 4 == 0 ? 40 : i % 4 == 1 ? 3 + i % 5 : i % 4 == 2 ? 0 : 12;
    for (int j = 0; j < n; j++)
        ev[j] = i % 4 == 3 ? (j % 2 ? j % 10 : 70 + j % 10) : (j * 17 + i * 5) % 80;
    return n;
}

/* A restored row with an empty ring: heads and masses from seed i. */
static void restore_empty(hl_table *tbl, const char *user, int i)
{
    float s[HEADS * DIM], m[HEADS];
    uint64_t seed = 1000 + (uint64_t)i;
    for (int j = 0; j < HEADS * DIM; j++) s[j] = frand(&seed);
    for (int h = 0; h < HEADS; h++) m[h] = 1.0f + frand(&seed) * 0.5f;
    hl_row_view v = {.user = user, .user_len = (uint32_t)strlen(user), .s = s, .m = m,
                     .t_ref_ms = 5000000, .history = SLICE_HIST};
    CHECK(hl_table_restore(tbl, &v) == 0);
}

static hl_table *slice_table(const hl_model *a)
{
    hl_table *tbl = table_for(SLICE_HIST);
    char user[16];
    int ev[40];
    for (int i = 0; i < SLICE_USERS && tbl != NULL; i++) {
        snprintf(user, sizeof user, "u%d", i);
        int n = slice_events(i, ev);
        if (n == 0) restore_empty(tbl, user, i);
        else apply_user(tbl, a, user, ev, n);
    }
    return tbl;
}

static void edit_user(hl_table *tbl, int i, hl_row_edit *e)
{
    char user[16];
    snprintf(user, sizeof user, "u%d", i);
    hl_table_edit(tbl, (uint32_t)hl_table_find(tbl, user, strlen(user)), e);
}

/* Migrates two identical tables, one row at a time (hl_migration_row)
 * and all rows in one slice (hl_migration_rows: several gather passes, one
 * SGEMM); every row must come out the same: heads within rounding, masses
 * and ring items exactly. want (SLICE_USERS x HEADS x DIM, or NULL) is
 * the plain formula's heads, checked against the slice. */
static void check_slice_vs_rows(const hl_migration *mg, const hl_model *a,
                                const float *want)
{
    hl_table *t1 = slice_table(a), *t2 = slice_table(a);
    static hl_row_edit e1[SLICE_USERS], e2[SLICE_USERS];
    static float scratch[2 * SLICE_USERS * HEADS * DIM];
    CHECK(t1 != NULL && t2 != NULL);
    if (t1 == NULL || t2 == NULL) goto out;
    for (int i = 0; i < SLICE_USERS; i++) {
        edit_user(t1, i, &e1[i]);
        edit_user(t2, i, &e2[i]);
        hl_migration_row(mg, &e1[i], scratch);
    }
    hl_migration_rows(mg, e2, SLICE_USERS, scratch);
    for (int i = 0; i < SLICE_USERS; i++) {
        CHECK_CLOSE(e2[i].s, e1[i].s, HEADS * DIM, 1e-5);
        CHECK_CLOSE(e2[i].m, e1[i].m, HEADS, 0);
        CHECK(memcmp(e2[i].hist_item, e1[i].hist_item, sizeof(int32_t) * SLICE_HIST) == 0);
        if (want != NULL)
            CHECK_CLOSE(e2[i].s, want + (size_t)i * HEADS * DIM, HEADS * DIM, 1e-4);
    }
out:
    hl_table_destroy(t1);
    hl_table_destroy(t2);
}

/* The plain formula's heads of every user of slice_table. */
static void slice_plain(const hl_model *a, const hl_model *b, const float *m, float *want)
{
    hl_table *tbl = slice_table(a);
    int ev[40];
    for (int i = 0; i < SLICE_USERS && tbl != NULL; i++) {
        hl_row_edit e;
        int n = slice_events(i, ev);
        edit_user(tbl, i, &e);
        plain_migration(a, b, m, &e.v, ev + n - e.v.n_hist, want + (size_t)i * HEADS * DIM);
    }
    hl_table_destroy(tbl);
}

/* Full, short and empty rings, items only A knows and items neither knows,
 * in one slice of more events than one gather pass lists: the slice gives
 * what one row at a time gives, and both the plain formula; a rebuild
 * (no old model) too, masses included. */
static void test_slice_matches_row_by_row(void)
{
    hl_model *a = model_at(PATH_A, 0, 50, 11, NULL, NULL);
    hl_model *b = a ? model_at(PATH_B, 10, 60, 77, NULL, NULL) : NULL;
    static float want[SLICE_USERS * HEADS * DIM];
    char err[256];
    CHECK(a != NULL && b != NULL);
    hl_migration *mg = a && b ? hl_migration_create(a, b, k_tw, err, sizeof err) : NULL;
    hl_migration *rb = b ? hl_migration_rebuild(b, k_tw, err, sizeof err) : NULL;
    CHECKF(mg != NULL && rb != NULL, "%s", err);
    if (mg != NULL && rb != NULL) {
        slice_plain(a, b, hl_migration_map(mg), want);
        check_slice_vs_rows(mg, a, want);
        check_slice_vs_rows(rb, a, NULL);
    }
    hl_migration_destroy(mg);
    hl_migration_destroy(rb);
    hl_model_close(a);
    hl_model_close(b);
}

/* ---- into another shape (hl_migration_create_any) ------------------------ */

/* src's only user moved into a new table of to's shape. */
static hl_table *moved(const hl_migration *mg, const hl_table *src, const hl_model *to,
                       int history)
{
    hl_table *dst = table_of(to, history);
    int64_t n = hl_migration_table_into(mg, src, dst);
    CHECKF(n == 1, "moved %lld rows", (long long)n);
    return dst;
}

/* The events item[0..n) applied to a table of A (ta, moved into B's shape
 * by mg: tm, its row vm) and to one of B (tb, its row vb), history rows. */
typedef struct ring_pair {
    hl_table   *ta, *tb, *tm;
    hl_row_view vm, vb;
} ring_pair;

static void ring_pair_make(ring_pair *p, const hl_migration *mg, const hl_model *a,
                           const hl_model *b, const int *item, int n, int history)
{
    p->ta = table_for(history);
    p->tb = table_of(b, history);
    apply_all(p->ta, a, item, n, 0);
    apply_all(p->tb, b, item, n, 0);
    p->tm = moved(mg, p->ta, b, history);
    heads_of(p->tm, &p->vm);
    heads_of(p->tb, &p->vb);
}

static void ring_pair_free(ring_pair *p)
{
    hl_table_destroy(p->ta);
    hl_table_destroy(p->tb);
    hl_table_destroy(p->tm);
}

/* A user whose every event is in the ring moves exactly to any shape:
 * another dim, four heads of which one half-life is A's, whatever the
 * remainder interpolation would do, masses included. B knows A's items
 * (pass 0) or others (pass 1: items only A knows add nothing, items only
 * B knows are found by key, and the masses count the events B counts). */
static void test_reshape_full_ring_exact(void)
{
    static const double hl_b[4] = {7200e3, 86400e3, 10 * 86400e3, 90 * 86400e3};
    int item[24];
    for (int i = 0; i < 24; i++) item[i] = (i * 13) % 70;
    hl_model *a = model_at(PATH_A, 0, 50, 11, NULL, NULL);
    g_dim = 5; g_heads = 4; memcpy(g_hl, hl_b, sizeof hl_b);
    for (int pass = 0; pass < 2 && a != NULL; pass++) {
        hl_model *b = model_at(PATH_B, pass ? 10 : 0, pass ? 60 : 50, 99, NULL, NULL);
        char err[256];
        hl_migration *mg = b ? hl_migration_create_any(a, b, k_tw, err, sizeof err) : NULL;
        CHECKF(mg != NULL, "%s", err);
        if (mg != NULL) {
            CHECK(hl_migration_reshapes(mg));
            ring_pair p;
            ring_pair_make(&p, mg, a, b, item, 24, 32);
            CHECK_CLOSE(p.vm.s, p.vb.s, 4 * 5, 1e-4);
            CHECK_CLOSE(p.vm.m, p.vb.m, 4, 1e-5);
            CHECK(p.vm.t_ref_ms == p.vb.t_ref_ms && p.vm.last_offset == p.vb.last_offset);
            check_same_ring(&p.vm, &p.vb);
            ring_pair_free(&p);
        }
        hl_migration_destroy(mg);
        hl_model_close(b);
    }
    shape_default();
    hl_model_close(a);
}

/* Same half-lives, another dim (8 -> 5), other items and vectors, a ring
 * of 5 of 30 events: every head is (s - R_old) M + R_new with the
 * (8, 5) M, and the masses are A's plus the ring's events on items only
 * B knows, less those on items B drops (each decayed under B's head). */
static void test_reshape_other_dim_maps_remainder(void)
{
    static const double hl[HEADS] = {3600e3, 86400e3, 30 * 86400e3};
    int item[30];
    for (int i = 0; i < 30; i++) item[i] = (i * 7) % 60;
    hl_model *a = model_at(PATH_A, 0, 50, 11, NULL, NULL);
    g_dim = 5;
    hl_model *b = model_at(PATH_B, 10, 50, 5, NULL, NULL);
    shape_default();
    char err[256];
    hl_migration *mg = a && b ? hl_migration_create_any(a, b, k_tw, err, sizeof err) : NULL;
    CHECKF(mg != NULL, "%s", err);
    if (mg != NULL) {
        CHECK(hl_migration_reshapes(mg) && hl_migration_shared(mg) == 40);
        CHECK(hl_migration_residual(mg) > 0.1);     /* M is not exact here */
        hl_table *ta = table_for(5);
        apply_all(ta, a, item, 30, 0);
        hl_row_view va, vm;
        float want[HEADS * 5], mass[HEADS];
        heads_of(ta, &va);
        plain_heads(a, b, hl_migration_map(mg), &va, item + 25, HEADS, hl, want);
        memcpy(mass, va.m, sizeof mass);
        hl_decay dec;
        CHECK(hl_decay_init(&dec, HEADS, 5, hl, err, sizeof err) == 0);
        int adjusted = 0;
        for (int i = 25; i < 30; i++) {         /* the ring: A knows 0..49, B 10..59 */
            int k = hl_row_hist_index(&va, i - 25), in_a = item[i] < 50, in_b = item[i] >= 10;
            float f[HEADS], sign = !in_a && in_b ? 1.0f : in_a && !in_b ? -1.0f : 0.0f;
            hl_decay_factors(&dec, va.t_ref_ms - va.hist_ts_ms[k], f);
            for (int h = 0; h < HEADS; h++) mass[h] += sign * va.hist_w[k] * f[h];
            adjusted += sign != 0;
        }
        CHECK(adjusted > 0);
        hl_table *tm = moved(mg, ta, b, 5);
        heads_of(tm, &vm);
        CHECK_CLOSE(vm.s, want, HEADS * 5, 1e-4);
        CHECK_CLOSE(vm.m, mass, HEADS, 1e-5);
        hl_table_destroy(ta); hl_table_destroy(tm);
    }
    hl_migration_destroy(mg);
    hl_model_close(a); hl_model_close(b);
}

/* Old heads 1h, 1d, 30d; new 1h, 5d, 30d; the same items and vectors (M
 * = I). A user of 30 events with a ring of 5: the new 5d head's remainder
 * (its mass minus the ring's under 5d) lies between the old 1d and 30d
 * heads' remainders, and its mean vector between theirs; the 1h and 30d
 * heads are A's remainders exactly. A user with one event older than the
 * ring (a remainder of one age) moves exactly: log-mass is linear in
 * lambda then. */
/* A's row split in double: each old head's remainder beyond the ring
 * (mass, sum), and the new middle head's ring part. */
typedef struct between_parts {
    double rm_old[HEADS], rv_old[HEADS][DIM], ring_new_m, ring_new[DIM];
} between_parts;

static void split_ring(const hl_row_view *va, const hl_model *a, double hl_new,
                       between_parts *bp)
{
    static const double hl_a[HEADS] = {3600e3, 86400e3, 30 * 86400e3};
    memset(bp, 0, sizeof *bp);
    for (int h = 0; h < HEADS; h++) {
        bp->rm_old[h] = va->m[h];
        for (int j = 0; j < DIM; j++) bp->rv_old[h][j] = va->s[h * DIM + j];
    }
    for (int i = 0; i < va->n_hist; i++) {
        int k = hl_row_hist_index(va, i);
        double age = (double)(va->t_ref_ms - va->hist_ts_ms[k]);
        const float *x = hl_model_e_in(a) + (size_t)va->hist_item[k] * DIM;
        for (int h = 0; h < HEADS; h++) {
            double c = va->hist_w[k] * exp(-log(2.0) / hl_a[h] * age);
            bp->rm_old[h] -= c;
            for (int j = 0; j < DIM; j++) bp->rv_old[h][j] -= c * x[j];
        }
        double c = va->hist_w[k] * exp(-log(2.0) / hl_new * age);
        bp->ring_new_m += c;
        for (int j = 0; j < DIM; j++) bp->ring_new[j] += c * x[j];
    }
}

/* The new middle head's remainder lies between the old 1d and 30d heads'
 * remainders, in mass and in each coordinate of its mean. */
static void check_between(const hl_row_view *vm, const between_parts *bp)
{
    double rm = vm->m[1] - bp->ring_new_m;
    CHECKF(bp->rm_old[1] > 0 && rm >= bp->rm_old[1] && rm <= bp->rm_old[2],
           "%g not in [%g, %g]", rm, bp->rm_old[1], bp->rm_old[2]);
    for (int j = 0; j < DIM; j++) {
        double mu = (vm->s[DIM + j] - bp->ring_new[j]) / rm;
        double lo = fmin(bp->rv_old[1][j] / bp->rm_old[1], bp->rv_old[2][j] / bp->rm_old[2]);
        double hi = fmax(bp->rv_old[1][j] / bp->rm_old[1], bp->rv_old[2][j] / bp->rm_old[2]);
        CHECKF(mu >= lo - 1e-3 && mu <= hi + 1e-3, "mean[%d] %g not in [%g, %g]", j, mu, lo, hi);
    }
}

/* A user whose every event is still in the ring moves exactly, every head
 * as B's own table has it. */
static void check_all_in_ring(const hl_migration *mg, const hl_model *a, const hl_model *b,
                              const int *item)
{
    ring_pair p;
    ring_pair_make(&p, mg, a, b, item, 6, 5);
    CHECK_CLOSE(p.vm.s, p.vb.s, HEADS * DIM, 1e-4);
    CHECK_CLOSE(p.vm.m, p.vb.m, HEADS, 1e-5);
    ring_pair_free(&p);
}

static void test_reshape_new_head_between(void)
{
    static const double hl_b[HEADS] = {3600e3, 5 * 86400e3, 30 * 86400e3};
    hl_model *a = model_at(PATH_A, 0, 50, 11, NULL, NULL);
    memcpy(g_hl, hl_b, sizeof hl_b);
    g_half_life0 = 3600e3;
    hl_model *b = model_at(PATH_B, 0, 50, 11, NULL, NULL);
    shape_default();
    char err[256];
    hl_migration *mg = a && b ? hl_migration_create_any(a, b, k_tw, err, sizeof err) : NULL;
    CHECKF(mg != NULL, "%s", err);
    if (mg == NULL) goto out;
    int item[30];
    for (int i = 0; i < 30; i++) item[i] = (i * 7) % 50;
    hl_table *ta = table_for(5);
    apply_all(ta, a, item, 30, 0);
    hl_row_view va, vm;
    heads_of(ta, &va);
    between_parts bp;
    split_ring(&va, a, hl_b[1], &bp);
    hl_table *tm = moved(mg, ta, b, 5);
    heads_of(tm, &vm);
    check_between(&vm, &bp);
    CHECK_CLOSE(vm.m, va.m, 1, 0);              /* 1h: A's head */
    CHECK_CLOSE(vm.m + 2, va.m + 2, 1, 0);      /* 30d */
    CHECK_CLOSE(vm.s, va.s, DIM, 1e-4);
    CHECK_CLOSE(vm.s + 2 * DIM, va.s + 2 * DIM, DIM, 1e-4);
    hl_table_destroy(ta); hl_table_destroy(tm);
    check_all_in_ring(mg, a, b, item);
out:
    hl_migration_destroy(mg);
    hl_model_close(a); hl_model_close(b);
}

/* A rebuild (no old model) into another shape: heads and masses are the
 * ring's events alone under the new model (the plain sum, in double). */
static void test_reshape_rebuild(void)
{
    static const double hl_b[2] = {7200e3, 10 * 86400e3};
    int item[30];
    for (int i = 0; i < 30; i++) item[i] = (i * 7) % 50;
    hl_model *a = model_at(PATH_A, 0, 50, 11, NULL, NULL);
    g_dim = 4; g_heads = 2; memcpy(g_hl, hl_b, sizeof hl_b);
    hl_model *b = model_at(PATH_B, 0, 50, 3, NULL, NULL);
    shape_default();
    char err[256];
    hl_migration *mg = b ? hl_migration_rebuild(b, k_tw, err, sizeof err) : NULL;
    CHECKF(mg != NULL, "%s", err);
    if (a != NULL && mg != NULL) {
        hl_table *ta = table_for(8);
        apply_all(ta, a, item, 30, 0);
        hl_table *tm = moved(mg, ta, b, 8);
        hl_row_view vm;
        heads_of(tm, &vm);
        double want_s[2 * 4] = {0}, want_m[2] = {0};
        for (int i = 0; i < vm.n_hist; i++) {
            int k = hl_row_hist_index(&vm, i);
            const float *x = hl_model_e_in(b) + (size_t)vm.hist_item[k] * 4;
            for (int h = 0; h < 2; h++) {
                double c = vm.hist_w[k] * exp(-log(2.0) / hl_b[h] *
                                              (double)(vm.t_ref_ms - vm.hist_ts_ms[k]));
                want_m[h] += c;
                for (int j = 0; j < 4; j++) want_s[h * 4 + j] += c * x[j];
            }
        }
        CHECK(vm.n_hist == 8);
        CHECK_CLOSE(vm.s, want_s, 2 * 4, 1e-5);
        CHECK_CLOSE(vm.m, want_m, 2, 1e-5);
        hl_table_destroy(ta); hl_table_destroy(tm);
    }
    hl_migration_destroy(mg);
    hl_model_close(a); hl_model_close(b);
}

/* A table of another shape is refused by the same-shape calls' twin. */
static void test_reshape_wrong_destination(void)
{
    hl_model *a = model_at(PATH_A, 0, 50, 11, NULL, NULL);
    g_dim = 5;
    hl_model *b = model_at(PATH_B, 0, 50, 5, NULL, NULL);
    shape_default();
    char err[256];
    hl_migration *mg = a && b ? hl_migration_create_any(a, b, k_tw, err, sizeof err) : NULL;
    CHECKF(mg != NULL, "%s", err);
    if (mg != NULL) {
        hl_table *ta = table_for(8), *wrong = table_for(8);
        int it[3] = {1, 2, 3};
        apply_all(ta, a, it, 3, 0);
        CHECK(hl_migration_table_into(mg, ta, wrong) == HL_EINVAL);
        CHECK(hl_table_next_live(wrong, 0) == UINT32_MAX);
        hl_table_destroy(ta); hl_table_destroy(wrong);
    }
    hl_migration_destroy(mg);
    hl_model_close(a); hl_model_close(b);
}

/* Two models of one shape through create_any and table_into: the rows
 * are those hl_migration_table gives in place, to the bit (the restart
 * path takes create_any whatever the shape). */
static void test_any_same_shape_is_in_place(void)
{
    twin t;
    char err[256];
    if (twin_open(&t, 10, 60, 99, NULL, 5, 30, 13, 70) != 0) goto out;
    hl_migration *mg = hl_migration_create_any(t.a, t.b, k_tw, err, sizeof err);
    CHECKF(mg != NULL, "%s", err);
    if (mg != NULL) {
        CHECK(!hl_migration_reshapes(mg));
        hl_table *tm = moved(mg, t.ta, t.b, 5);
        CHECK(hl_migration_table(mg, t.ta) == 1);
        hl_row_view vm, va;
        heads_of(tm, &vm);
        heads_of(t.ta, &va);
        CHECK(memcmp(vm.s, va.s, sizeof(float) * HEADS * DIM) == 0);
        CHECK(memcmp(vm.m, va.m, sizeof(float) * HEADS) == 0);
        check_same_ring(&vm, &va);
        hl_table_destroy(tm);
    }
    hl_migration_destroy(mg);
out:
    twin_close(&t);
}

int main(void)
{
    RUN(test_fit_recovers_constructed_map);
    RUN(test_weighted_fit_follows_weights);
    RUN(test_identical_models_are_identity);
    RUN(test_full_ring_is_exact);
    RUN(test_linear_map_migrates_remainder);
    RUN(test_rows_match_plain_formula);
    RUN(test_rows_local_off_and_on);
    RUN(test_slice_matches_row_by_row);
    RUN(test_rebuild_from_ring);
    RUN(test_added_item_is_mapped_not_doubled);
    RUN(test_table_generations);
    RUN(test_shape_mismatch_refused);
    RUN(test_reshape_full_ring_exact);
    RUN(test_reshape_other_dim_maps_remainder);
    RUN(test_reshape_new_head_between);
    RUN(test_reshape_rebuild);
    RUN(test_reshape_wrong_destination);
    RUN(test_any_same_shape_is_in_place);
    unlink(PATH_A);
    unlink(PATH_B);
    TEST_EXIT();
}
