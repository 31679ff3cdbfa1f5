/* test_swap_chain.c - a second model swap while a shard is still moving
 * its users into the first (worker/swap.c): the first move ends before
 * the second begins, each with its own map, and no user is lost or
 * doubled at any point; and a model the set never served, whose map the
 * shard fits on its own thread. The single swaps are test_swap.c. */
#define T_SUITE "swap_chain"
#include "test.h"

#include "swap_test_util.h"

/* Events [from, to) of the stream applied to tbl under m, as a shard
 * would (the reference's events after a swap). */
static void apply_plain(hl_table *tbl, const hl_model *m, int from, int to)
{
    char item[16];
    for (int i = from; i < to; i++) {
        hl_event ev = event_at(m, i, item);
        hl_table_apply(tbl, &ev, 1, hl_model_e_in(m), N_ITEMS, NULL);
    }
}

/* Ticks until the shard's migration is over (or 100000 ticks), counting
 * users lost or doubled on the way into *bad. */
static void sweep_to_end(hl_shard *sh, int *bad)
{
    for (int ticks = 0; sh->mig_from != NULL && ticks < 100000; ticks++) {
        hl_shard_swap_tick(sh, 300);
        if (ticks % 7 == 0)
            *bad += misplaced(sh);
    }
}

/* A model (items it<first>.., of shape sp) written to path, renamed over
 * the live path and loaded: it goes live. */
static void load_model(fixture *f, const char *path, int first, const char *version,
                       const shape *sp)
{
    CHECK(write_model_shape(path, first, version, sp) == 0 && rename(path, LIVE) == 0);
    CHECK(hl_models_check(f->ms, 0, 1) == 1);
}

/* Model C (of shape c_shape, items it100..) loaded; the served model's
 * reference. */
static hl_mref *load_c(fixture *f, const shape *c_shape)
{
    load_model(f, PATH_C, 100, "C", c_shape);
    return hl_models_acquire(f->ms);
}

/* Two swaps in a row, the second (C, of shape c_shape) arriving while the
 * first reshape (A -> B) is still moving users: the shard finishes A -> B
 * first (every user moved into B's table, none left in A's), then goes
 * from B to C with C's own map (from_prev, fitted against B). Every user
 * ends in C's table exactly once, equal to moving it offline A -> B
 * (hl_migration_row_into), B's events, B -> C (the same again), C's
 * events; none is lost or doubled at any point, and each move counts. */
static void chain_case(const shape *c_shape)
{
    fixture f;
    CHECK(fixture_open_shape(&f, &SHAPE_R) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_mref *b = hl_models_acquire(f.ms);
    hl_table *want_b = new_table_shape(&SHAPE_R), *want_c = new_table_shape(c_shape);
    apply_plain(f.plain, f.a, 0, 12 * N_USERS);
    CHECK(hl_migration_table_into(b->from_prev, f.plain, want_b) == N_USERS);

    CHECK(hl_shard_swap_begin(f.sh, b) == 0);
    int from = 20 * N_USERS;            /* users 0..1999 move by touch, under B */
    feed(f.sh, b->m, from, from + 2000, 256);
    apply_plain(want_b, b->m, from, from + 2000);
    for (int i = 0; i < 3; i++)
        hl_shard_swap_tick(f.sh, 300);
    hl_table_stats st = {0};
    if (f.sh->old_tbl != NULL)
        hl_table_stats_get(f.sh->old_tbl, &st);
    CHECKF(f.sh->old_tbl != NULL && st.users > 0 && f.sh->mig_rows > 2000,
           "the first move is not under way when C arrives: %zu users left in A's table, "
           "%llu moved", st.users, (unsigned long long)f.sh->mig_rows);

    hl_mref *c = load_c(&f, c_shape);
    CHECK(c->gen == b->gen + 1 && c->from_prev != NULL);
    CHECK(hl_migration_table_into(c->from_prev, want_b, want_c) == N_USERS);
    CHECK(hl_shard_swap_begin(f.sh, c) == 0);
    CHECK(f.sh->mref == c && f.sh->mig_from == b && f.sh->mig == c->from_prev);
    int bad = misplaced(f.sh);
    CHECKF(hl_counter_get(f.sh->c_migrated) == N_USERS, "%llu moved into B before C began",
           (unsigned long long)hl_counter_get(f.sh->c_migrated));
    feed(f.sh, c->m, from + 2000, from + 5000, 256);   /* users 2000..4999, under C */
    apply_plain(want_c, c->m, from + 2000, from + 5000);
    sweep_to_end(f.sh, &bad);
    CHECKF(bad == 0, "%d users lost or doubled while C's move ran", bad);
    CHECK(f.sh->old_tbl == NULL && f.sh->mig_from == NULL && f.sh->mref == c);
    const hl_decay *d = &hl_table_opts_get(f.sh->tbl)->decay;
    CHECKF(d->dim == c_shape->dim && d->n_heads == c_shape->n_heads, "table of dim %d heads "
           "%d, C's is %d %d", d->dim, d->n_heads, c_shape->dim, c_shape->n_heads);
    hl_table_stats_get(f.sh->tbl, &st);
    CHECKF(st.users == N_USERS, "%zu users in C's table", st.users);
    CHECKF(hl_counter_get(f.sh->c_migrated) == 2 * N_USERS, "migrated counter %llu, want %d",
           (unsigned long long)hl_counter_get(f.sh->c_migrated), 2 * N_USERS);
    check_rows_as(f.sh->tbl, want_c, c_shape);
    hl_mref_release(c);
    hl_mref_release(b);
    hl_table_destroy(want_b);
    hl_table_destroy(want_c);
    fixture_close(&f);
}

static void test_reshape_then_reshape(void)
{
    chain_case(&SHAPE_C);
}

/* C of B's shape: the second swap migrates B's new table in place. */
static void test_reshape_then_same_shape(void)
{
    chain_case(&SHAPE_R);
}

/* A shard that missed a swap (still under A when C, fitted against B,
 * arrives) cannot use C's from_prev: the set fitted C a map from A too
 * when C went live (the shard still served A), so the shard fits none on
 * its thread, and every user equals hl_migration_create_any(A, C) of its
 * row. */
static void test_missed_swap_uses_skip_map(void)
{
    char err[256];
    fixture f;
    CHECK(fixture_open_shape(&f, &SHAPE_R) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_mref *c = load_c(&f, &SHAPE_C);
    CHECK(c->gen == f.sh->mref->gen + 2);
    CHECKF(c->n_skip == 1 && c->skip[0].from == f.sh->mref, "%d maps from older models, "
           "want 1 from A", c->n_skip);
    apply_plain(f.plain, f.a, 0, 12 * N_USERS);
    hl_migration *mg = hl_migration_create_any(f.a, c->m, f.sh->mref->tw, err, sizeof err);
    hl_table *want = new_table_shape(&SHAPE_C);
    CHECK(mg != NULL && hl_migration_table_into(mg, f.plain, want) == N_USERS);
    CHECK(hl_shard_swap_begin(f.sh, c) == 0);
    CHECK(f.sh->mig == atomic_load(&c->skip[0].mig) && f.sh->mig_own == NULL);
    CHECK(hl_counter_get(f.sh->c_fits) == 0);
    int bad = 0;
    sweep_to_end(f.sh, &bad);
    CHECKF(bad == 0, "%d users lost or doubled", bad);
    CHECK(f.sh->old_tbl == NULL && f.sh->mig_from == NULL);
    check_rows_as(f.sh->tbl, want, &SHAPE_C);
    hl_migration_destroy(mg);
    hl_table_destroy(want);
    hl_mref_release(c);
    fixture_close(&f);
}

/* The thread's case (worker/thread.c model_sync): A -> B (a reshape) is
 * under way when C and then D go live; the thread keeps B until its
 * shards are done, then jumps B -> D. D's map from B was fitted when D
 * went live (B was still served; A, only moved out of, got none), so the
 * shard fits nothing on its thread. Every user ends in D's table exactly
 * once, equal to moving it offline A -> B, B's events, B -> D (a map
 * fitted here, applied with hl_migration_table_into as the shard applies
 * hl_migration_row_into), D's events; none is lost or doubled at any
 * point. Once B is out of use, the next check drops D's map from it. */
static void test_two_swaps_during_move(void)
{
    char err[256];
    fixture f;
    CHECK(fixture_open_shape(&f, &SHAPE_R) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_mref *b = hl_models_acquire(f.ms);
    hl_table *want_b = new_table_shape(&SHAPE_R), *want_d = new_table_shape(&SHAPE_C);
    apply_plain(f.plain, f.a, 0, 12 * N_USERS);
    CHECK(hl_migration_table_into(b->from_prev, f.plain, want_b) == N_USERS);
    CHECK(hl_shard_swap_begin(f.sh, b) == 0);
    int from = 20 * N_USERS;            /* users 0..1999 move by touch, under B */
    feed(f.sh, b->m, from, from + 2000, 256);
    apply_plain(want_b, b->m, from, from + 2000);
    hl_shard_swap_tick(f.sh, 300);
    CHECK(f.sh->old_tbl != NULL && f.sh->mig_from != NULL);

    load_model(&f, PATH_C, 100, "C", &SHAPE_A);     /* nobody takes C */
    load_model(&f, PATH_D, 150, "D", &SHAPE_C);
    hl_mref *d = hl_models_acquire(f.ms);
    CHECK(d->gen == b->gen + 2 && strcmp(d->mi->version, "D") == 0);
    CHECKF(d->n_skip == 1 && d->skip[0].from == b, "%d maps from older models, want 1 "
           "from B", d->n_skip);
    CHECKF(f.sh->old_tbl != NULL, "the move into B ended before D arrived");
    hl_migration *bd = hl_migration_create_any(b->m, d->m, b->tw, err, sizeof err);
    CHECK(bd != NULL);

    int bad = 0;
    sweep_to_end(f.sh, &bad);           /* the thread keeps B until done */
    CHECK(f.sh->mig_from == NULL && f.sh->mref == b);
    CHECK(hl_shard_swap_begin(f.sh, d) == 0);
    CHECKF(f.sh->mig_own == NULL && f.sh->mig == atomic_load(&d->skip[0].mig) &&
           hl_counter_get(f.sh->c_fits) == 0, "the shard fitted B -> D on its thread");
    feed(f.sh, d->m, from + 2000, from + 5000, 256);   /* users 2000..4999, under D */
    CHECK(hl_migration_table_into(bd, want_b, want_d) == N_USERS);
    apply_plain(want_d, d->m, from + 2000, from + 5000);
    sweep_to_end(f.sh, &bad);
    CHECKF(bad == 0, "%d users lost or doubled", bad);
    CHECK(f.sh->old_tbl == NULL && f.sh->mig_from == NULL && f.sh->mref == d);
    hl_table_stats st;
    hl_table_stats_get(f.sh->tbl, &st);
    CHECKF(st.users == N_USERS, "%zu users in D's table", st.users);
    CHECKF(hl_counter_get(f.sh->c_migrated) == 2 * N_USERS, "migrated counter %llu",
           (unsigned long long)hl_counter_get(f.sh->c_migrated));
    check_rows_as(f.sh->tbl, want_d, &SHAPE_C);

    hl_mref_release(b);                 /* B out of use: its map goes */
    hl_models_check(f.ms, 0, 0);
    CHECK(atomic_load(&d->skip[0].mig) == NULL);
    hl_migration_destroy(bd);
    hl_mref_release(d);
    hl_table_destroy(want_b);
    hl_table_destroy(want_d);
    fixture_close(&f);
}

/* A shard under a model the set never served (another set's, here) has
 * no map fitted for it: it fits its own on its thread, logged and
 * counted, and every user still equals that map's migration. */
static void test_unforeseen_model_fits_on_thread(void)
{
    char err[256];
    fixture f;
    CHECK(fixture_open_shape(&f, &SHAPE_R) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_models_opts mo = {.path = NULL, .reg = f.reg};
    hl_models *other = hl_models_create(&mo, f.a, err, sizeof err);
    CHECK(other != NULL);
    if (other == NULL) { fixture_close(&f); return; }
    hl_mref_release(f.sh->mref);
    f.sh->mref = hl_models_acquire(other);
    hl_mref *b = hl_models_acquire(f.ms);
    CHECK(hl_mref_migration(b, f.sh->mref) == NULL);
    apply_plain(f.plain, f.a, 0, 12 * N_USERS);
    hl_migration *mg = hl_migration_create_any(f.a, b->m, f.sh->mref->tw, err, sizeof err);
    hl_table *want = new_table_shape(&SHAPE_R);
    CHECK(mg != NULL && hl_migration_table_into(mg, f.plain, want) == N_USERS);
    CHECK(hl_shard_swap_begin(f.sh, b) == 0);
    CHECK(f.sh->mig_own != NULL && hl_counter_get(f.sh->c_fits) == 1);
    int bad = 0;
    sweep_to_end(f.sh, &bad);
    CHECKF(bad == 0, "%d users lost or doubled", bad);
    check_rows_as(f.sh->tbl, want, &SHAPE_R);
    hl_migration_destroy(mg);
    hl_table_destroy(want);
    hl_mref_release(b);
    fixture_close(&f);
    hl_models_destroy(other);
}

int main(void)
{
    hl_log_set_level(HL_LOG_WARN);
    for (int u = 0; u < N_USERS; u++)
        snprintf(g_users[u], sizeof g_users[u], "u%d", u);
    RUN(test_reshape_then_reshape);
    RUN(test_reshape_then_same_shape);
    RUN(test_missed_swap_uses_skip_map);
    RUN(test_two_swaps_during_move);
    RUN(test_unforeseen_model_fits_on_thread);
    unlink(PATH_B);
    unlink(PATH_C);
    unlink(PATH_D);
    TEST_EXIT();
}
