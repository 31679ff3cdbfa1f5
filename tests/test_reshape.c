/* test_reshape.c - core/reshape.c: rows moved into a model of another
 * shape (dim, heads, half-lives): exact when the ring holds every event,
 * the remainder through the map, a new head's remainder between the old
 * ones, a rebuild from the ring, and one shape through create_any in place. */
#define T_SUITE "reshape"
#define PATH_A "/tmp/test_reshape_a.hlm"
#define PATH_B "/tmp/test_reshape_b.hlm"
#include "migrate_test_util.h"

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
        const float *x = hl_model_e_in(a) + (size_t)va->hist_item[k] * DIM;
        for (int h = 0; h < HEADS; h++) {
            double c = va->hist_w[k] * stored_weight(hl_a[h], va->t_ref_ms, va->hist_ts_ms[k]);
            bp->rm_old[h] -= c;
            for (int j = 0; j < DIM; j++) bp->rv_old[h][j] -= c * x[j];
        }
        double c = va->hist_w[k] * stored_weight(hl_new, va->t_ref_ms, va->hist_ts_ms[k]);
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

/* A remainder of one age moves exactly into a head of a new half-life,
 * between two old ones (5d: between() from 1d and 30d) or beyond them
 * (90d: from_one() from 30d), as the comments of both promise, up to
 * float rounding: 6 events into a ring of 5, the first two at one time
 * t0 (one falls out: a0 is its age), the last near the end of the 30-day
 * head's cell. The old remainders sit at their heads' bases and the new
 * head's at its own (decay.h): taken as if at t_ref, the new masses were
 * off by up to 2^-12 of the remainder (1e-5 of these masses). */
static void check_one_age(const double *hl_b)
{
    static const int64_t t0 = (int64_t)1 << 32;
    static const int64_t at[6] = {0, 0, 100000, 200000, 300000, 520000};
    hl_model *a = model_at(PATH_A, 0, 50, 11, NULL, NULL);
    memcpy(g_hl, hl_b, sizeof(double) * HEADS);
    hl_model *b = model_at(PATH_B, 0, 50, 11, NULL, NULL);
    shape_default();
    char err[256];
    hl_migration *mg = a && b ? hl_migration_create_any(a, b, k_tw, err, sizeof err) : NULL;
    CHECKF(mg != NULL, "%s", a && b ? err : "no model");
    hl_table *ta = table_for(5), *tb = b ? table_of(b, 5) : NULL;
    for (int i = 0; mg != NULL && i < 6; i++) {
        char id[16];
        int len = snprintf(id, sizeof id, "it%d", 3 * i + 1);
        hl_event ev = {.user = "u1", .user_len = 2, .item = hl_model_item_find(a, id, (size_t)len),
                       .item_key = hl_item_key(id, (size_t)len), .type = HL_VIEW,
                       .w = 1.0f + (float)i, .ts_ms = t0 + at[i], .offset = i};
        hl_table_apply(ta, &ev, 1, hl_model_e_in(a), 50, NULL);
        hl_table_apply(tb, &ev, 1, hl_model_e_in(b), 50, NULL);
    }
    if (mg != NULL) {
        hl_table *tm = moved(mg, ta, b, 5);
        hl_row_view vm, vb;
        heads_of(tm, &vm);
        heads_of(tb, &vb);
        CHECK_CLOSE(vm.m, vb.m, HEADS, 2e-6);
        CHECK_CLOSE(vm.s, vb.s, HEADS * DIM, 2e-5);
        hl_table_destroy(tm);
    }
    hl_table_destroy(ta); hl_table_destroy(tb);
    hl_migration_destroy(mg);
    hl_model_close(a); hl_model_close(b);
}

static void test_reshape_one_age_remainder_exact(void)
{
    static const double between[HEADS] = {3600e3, 5 * 86400e3, 30 * 86400e3};
    static const double beyond[HEADS] = {3600e3, 86400e3, 90 * 86400e3};
    check_one_age(between);
    check_one_age(beyond);
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
                double c = vm.hist_w[k] * stored_weight(hl_b[h], vm.t_ref_ms, vm.hist_ts_ms[k]);
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


/* A head far faster than any old one (a half-life of 1e-300 ms, the
 * shortest kind the format lets through: a denormal, whose rate is inf, is
 * refused at load, test_model), and a user whose events all sit at its
 * t_ref (a0 = 0, a remainder beyond the ring of 5) moved into it: the new
 * head's remainder is taken from the nearest old head with
 * exp(-(lambda - l) * 0). With lambda = inf that was exp(NaN), which the
 * clamp read as e^80, masses of 1.4e36 past HL_TABLE_MAX_MASS, and the row
 * refused (a live swap dropped the user). At age 0 every head counts an
 * event whole (hl_decay_factors), so the masses are 30 each. */
static void test_reshape_tiny_half_life(void)
{
    static const double hl_b[HEADS] = {1e-300, 86400e3, 30 * 86400e3};
    hl_model *a = model_at(PATH_A, 0, 50, 11, NULL, NULL);
    memcpy(g_hl, hl_b, sizeof hl_b);
    double keep0 = g_half_life0;
    g_half_life0 = hl_b[0];
    hl_model *b = model_at(PATH_B, 0, 50, 5, NULL, NULL);
    g_half_life0 = keep0;
    shape_default();
    char err[256];
    hl_migration *mg = a && b ? hl_migration_create_any(a, b, k_tw, err, sizeof err) : NULL;
    CHECKF(mg != NULL, "%s", a && b ? err : "no model");
    if (mg != NULL) {
        hl_table *ta = table_for(5), *tb = table_of(b, 5);
        for (int i = 0; i < 30; i++) {          /* every event at one time */
            char id[16];
            int len = snprintf(id, sizeof id, "it%d", i);
            hl_event ev = {.user = "u1", .user_len = 2,
                           .item = hl_model_item_find(a, id, (size_t)len),
                           .item_key = hl_item_key(id, (size_t)len), .type = HL_VIEW,
                           .w = 1, .ts_ms = 1000000, .offset = i};
            hl_table_apply(ta, &ev, 1, hl_model_e_in(a), 50, NULL);
        }
        int64_t n = hl_migration_table_into(mg, ta, tb);
        CHECKF(n == 1, "moved %lld (%s)", (long long)n, n < 0 ? hl_strerror((int)n) : "");
        if (n == 1) {
            hl_row_view v;
            heads_of(tb, &v);
            for (int h = 0; h < HEADS; h++)
                /* stored at the heads' bases (decay.h): up to 2^-12 above 30 */
                CHECKF(fabsf(v.m[h] - 30.0f) < 30.0f * 0x1p-12f + 1e-3f, "head %d mass %.9g",
                       h, v.m[h]);
        }
        hl_table_destroy(ta);
        hl_table_destroy(tb);
    }
    hl_migration_destroy(mg);
    hl_model_close(a);
    hl_model_close(b);
}

/* u1's row of ta into a new table with ring entries 0 and 1 (in time
 * order) dated old and young (t_ref is kept). */
static hl_table *redated(hl_table *ta, int64_t old, int64_t young, int64_t *ts)
{
    hl_row_view v;
    heads_of(ta, &v);
    memcpy(ts, v.hist_ts_ms, sizeof *ts * (size_t)v.history);
    ts[hl_row_hist_index(&v, 0)] = old;
    ts[hl_row_hist_index(&v, 1)] = young;
    v.hist_ts_ms = ts;
    hl_table *t = table_for(v.history);
    CHECK(hl_table_restore(t, &v) == 0);
    return t;
}

/* Hostile ring times (a snapshot's or a changelog record's: nothing
 * bounds them as event.min/max.ts.ms bound events) through a reshape and
 * a rebuild: t_ref - INT64_MIN overflowed int64 (UBSan stops here; a
 * plain build wrapped it to a negative age and counted the entry whole).
 * An entry impossibly far before t_ref counts as one 4e18 ms old
 * (nothing), one dated after t_ref as one at t_ref (whole). */
static void test_reshape_hostile_times(void)
{
    hl_model *a = model_at(PATH_A, 0, 50, 11, NULL, NULL);
    g_dim = 5;
    hl_model *b = model_at(PATH_B, 0, 50, 5, NULL, NULL);
    shape_default();
    char err[256];
    hl_migration *mg[2] = {
        a && b ? hl_migration_create_any(a, b, k_tw, err, sizeof err) : NULL,
        b ? hl_migration_rebuild(b, k_tw, err, sizeof err) : NULL};
    CHECKF(mg[0] != NULL && mg[1] != NULL, "%s", err);
    int item[6] = {1, 2, 3, 4, 5, 6};
    hl_table *ta = table_for(8);
    if (a != NULL)
        apply_all(ta, a, item, 6, 0);
    hl_row_view v;
    heads_of(ta, &v);
    int64_t t_ref = v.t_ref_ms, ts_h[8], ts_p[8];
    hl_table *th = redated(ta, INT64_MIN, INT64_MAX, ts_h);
    hl_table *tp = redated(ta, t_ref - 4000000000000000000LL, t_ref, ts_p);
    for (int i = 0; i < 2 && mg[0] != NULL && mg[1] != NULL; i++) {
        hl_table *oh = table_of(b, 8), *op = table_of(b, 8);
        CHECK(hl_migration_table_into(mg[i], th, oh) == 1);
        CHECK(hl_migration_table_into(mg[i], tp, op) == 1);
        hl_row_view vh, vp;
        heads_of(oh, &vh);
        heads_of(op, &vp);
        CHECK_CLOSE(vh.m, vp.m, HEADS, 1e-6);
        CHECK_CLOSE(vh.s, vp.s, HEADS * 5, 1e-6);
        hl_table_destroy(oh);
        hl_table_destroy(op);
    }
    hl_table_destroy(ta); hl_table_destroy(th); hl_table_destroy(tp);
    hl_migration_destroy(mg[0]); hl_migration_destroy(mg[1]);
    hl_model_close(a); hl_model_close(b);
}

int main(void)
{
    RUN(test_reshape_full_ring_exact);
    RUN(test_reshape_other_dim_maps_remainder);
    RUN(test_reshape_new_head_between);
    RUN(test_reshape_one_age_remainder_exact);
    RUN(test_reshape_rebuild);
    RUN(test_reshape_wrong_destination);
    RUN(test_any_same_shape_is_in_place);
    RUN(test_reshape_tiny_half_life);
    RUN(test_reshape_hostile_times);
    unlink(PATH_A);
    unlink(PATH_B);
    TEST_EXIT();
}
