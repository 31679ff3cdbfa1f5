/* test_migrate.c - core/migrate.c: the least-squares map between two
 * models' e_in and the per-row migration (identity for identical models,
 * exact when the ring covers every event or when E_new = E_old A). */
#define T_SUITE "migrate"
#include "test.h"
#define PATH_A "/tmp/test_migrate_a.hlm"
#define PATH_B "/tmp/test_migrate_b.hlm"
#include "migrate_test_util.h"


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
    unlink(PATH_A);
    unlink(PATH_B);
    TEST_EXIT();
}
