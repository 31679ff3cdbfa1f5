/* test_swap.c - a shard's live migration into a new model (worker/swap.c):
 * the sweep's slices are bounded by time, not by a count of rows; the
 * records a batch may take follow the measured cost per row; the old
 * model is released in a tick of its own; and the rows end exactly where
 * migrating the whole table at once puts them (core/migrate.c). */
#define T_SUITE "swap"
#include "test.h"

#include "log.h"
#include "models.h"
#include "shard.h"

#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#define DIM     16
#define HEADS   3
#define N_ITEMS 500
#define N_USERS 6000
#define PATH_A  "/tmp/test_swap_a.hlm"
#define PATH_B  "/tmp/test_swap_b.hlm"
#define PATH_C  "/tmp/test_swap_c.hlm"
#define PATH_D  "/tmp/test_swap_d.hlm"
#define LIVE    "/tmp/test_swap_live.hlm"

static uint64_t g_seed = 0x9E3779B97F4A7C15ull;
static float frand(void)
{
    g_seed ^= g_seed << 13; g_seed ^= g_seed >> 7; g_seed ^= g_seed << 17;
    return (float)((double)(g_seed >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

/* A model's state shape. */
typedef struct shape {
    int    dim, n_heads;
    double half_life_ms[HEADS];
} shape;
static const shape SHAPE_A = {DIM, HEADS, {3600e3, 86400e3, 30 * 86400e3}};
/* another dim, fewer heads, one half-life kept and one new */
static const shape SHAPE_R = {12, 2, {3600e3, 7 * 86400e3}};
/* a third shape: another dim again, three heads, two half-lives new */
static const shape SHAPE_C = {8, 3, {1800e3, 86400e3, 14 * 86400e3}};

/* N_ITEMS items "it<first>".. with random e_in (B shares 450 of A's ids),
 * of shape sp. */
static int write_model_shape(const char *path, int first, const char *version,
                             const shape *sp)
{
    hl_model_parts p;
    memset(&p, 0, sizeof p);
    hl_model_info *mi = &p.info;
    const int dim = sp->dim;
    *mi = (hl_model_info){.dim = dim, .n_heads = sp->n_heads, .n_items = N_ITEMS,
                          .n_layers = 1, .layer_out = {dim}};
    memcpy(mi->half_life_ms, sp->half_life_ms, sizeof(double) * (size_t)sp->n_heads);
    for (int t = 0; t < HL_N_TYPES; t++) mi->type_weight[t] = 1;
    snprintf(mi->version, sizeof mi->version, "%s", version);
    int in = hl_model_input_dim(mi);
    float *e_in = malloc(sizeof(float) * N_ITEMS * dim), *e_out = malloc(sizeof(float) * N_ITEMS * dim);
    float *bias = calloc(N_ITEMS, sizeof(float)), *w = calloc((size_t)dim * in, sizeof(float));
    float *b = calloc((size_t)dim, sizeof(float));
    char **ids = malloc(sizeof *ids * N_ITEMS);
    uint32_t *lens = malloc(sizeof *lens * N_ITEMS);
    for (int i = 0; i < N_ITEMS * dim; i++) { e_in[i] = frand(); e_out[i] = frand(); }
    for (int i = 0; i < N_ITEMS; i++) {
        ids[i] = malloc(16);
        lens[i] = (uint32_t)snprintf(ids[i], 16, "it%d", first + i);
    }
    p.item_id = (const char *const *)ids; p.item_id_len = lens;
    p.e_in = e_in; p.e_out = e_out; p.bias = bias; p.layer_w[0] = w; p.layer_b[0] = b;
    char err[256];
    int rc = hl_model_write(path, &p, err, sizeof err);
    if (rc != 0) printf("    model %s: %s\n", path, err);
    for (int i = 0; i < N_ITEMS; i++) free(ids[i]);
    free(ids); free(lens); free(e_in); free(e_out); free(bias); free(w); free(b);
    return rc;
}

static int write_model(const char *path, int first, const char *version)
{
    return write_model_shape(path, first, version, &SHAPE_A);
}

static size_t g_max_users;     /* state.max.users of the tables made next; 0 none */

static hl_table *new_table_shape(const shape *sp)
{
    hl_table_opts o = {.history = 8, .expected_users = N_USERS, .max_users = g_max_users};
    char err[256];
    hl_decay_init(&o.decay, sp->n_heads, sp->dim, sp->half_life_ms, err, sizeof err);
    return hl_table_create(&o, err, sizeof err);
}

static hl_table *new_table(void)
{
    return new_table_shape(&SHAPE_A);
}

static char g_users[N_USERS][16];   /* events in a batch point at their user */

/* Event i of the stream: user i % N_USERS, so each user gets a dozen,
 * more than the ring holds (the remainder goes through M). */
static hl_event event_at(const hl_model *m, int i, char *item)
{
    const char *user = g_users[i % N_USERS];
    int len = snprintf(item, 16, "it%d", (i * 7919) % (N_ITEMS + 50));
    return (hl_event){.user = user, .user_len = (uint32_t)strlen(user),
                      .item = hl_model_item_find(m, item, (size_t)len),
                      .item_key = hl_item_key(item, (size_t)len), .type = HL_VIEW, .w = 1,
                      .ts_ms = 1000000 + (int64_t)i * 1000, .offset = i};
}

/* Events [from, to) into sh's table, a batch of bsz at a time, under m. */
static void feed(hl_shard *sh, const hl_model *m, int from, int to, int bsz)
{
    char item[16];
    int dup, failed;
    for (int i = from; i < to;) {
        hl_shard_batch_begin(sh);
        for (int k = 0; k < bsz && i < to; k++, i++) {
            hl_event ev = event_at(m, i, item);
            hl_shard_push(sh, &ev);
        }
        hl_shard_apply(sh, m, &dup, &failed);
    }
}

typedef struct fixture {
    hl_metrics *reg;
    hl_models  *ms;
    hl_model   *a;
    hl_shard   *sh;
    hl_table   *plain;      /* the same events, migrated all at once */
} fixture;

/* Model A serving a shard fed 12 events per user, B (of shape b_shape)
 * renamed over the path and loaded (not yet begun in the shard). */
static int fixture_open_shape(fixture *f, const shape *b_shape)
{
    char err[512];
    memset(f, 0, sizeof *f);
    unlink(LIVE);
    if (write_model(PATH_A, 0, "A") != 0 || write_model_shape(PATH_B, 50, "B", b_shape) != 0 ||
        (f->a = hl_model_open(PATH_A, err, sizeof err)) == NULL || link(PATH_A, LIVE) != 0)
        return -1;
    f->reg = hl_metrics_create();
    hl_models_opts mo = {.path = LIVE, .check_ms = 0, .reg = f->reg};
    f->ms = hl_models_create(&mo, f->a, err, sizeof err);
    f->sh = hl_shard_create(0, new_table(), -1, NULL, 1024, 0, f->reg, err, sizeof err);
    if (f->ms == NULL || f->sh == NULL)
        return -1;
    f->sh->mref = hl_models_acquire(f->ms);
    f->sh->c_migrated = hl_metrics_counter(f->reg, "halflife_users_migrated_total", "", NULL);
    f->sh->c_fits = hl_metrics_counter(f->reg, "halflife_model_migration_fits_on_thread_total",
                                       "", NULL);
    f->plain = new_table();
    feed(f->sh, f->a, 0, 12 * N_USERS, 1024);
    return rename(PATH_B, LIVE) == 0 && hl_models_check(f->ms, 0, 1) == 1 ? 0 : -1;
}

static int fixture_open(fixture *f)
{
    return fixture_open_shape(f, &SHAPE_A);
}

static void fixture_close(fixture *f)
{
    hl_shard_destroy(f->sh);
    hl_table_destroy(f->plain);
    hl_models_destroy(f->ms);
    hl_model_close(f->a);
    hl_metrics_destroy(f->reg);
    unlink(PATH_A);
    unlink(LIVE);
}

/* The plain table: the same events applied under A, then every row
 * migrated at once with the same map. */
static void plain_state(fixture *f, const hl_mref *b)
{
    char item[16];
    for (int i = 0; i < 12 * N_USERS; i++) {
        hl_event ev = event_at(f->a, i, item);
        hl_table_apply(f->plain, &ev, 1, hl_model_e_in(f->a), N_ITEMS, NULL);
    }
    CHECK(hl_migration_table(b->from_prev, f->plain) == N_USERS);
}

/* Every user's heads in the shard equal the plain table's. */
static void check_same_state(fixture *f)
{
    int bad = 0;
    for (int u = 0; u < N_USERS && bad < 3; u++) {
        char user[16];
        int len = snprintf(user, sizeof user, "u%d", u);
        int64_t ra = hl_table_find(f->sh->tbl, user, (size_t)len);
        int64_t rb = hl_table_find(f->plain, user, (size_t)len);
        hl_row_view va, vb;
        CHECK(ra >= 0 && rb >= 0);
        if (ra < 0 || rb < 0) return;
        hl_table_view(f->sh->tbl, (uint32_t)ra, &va);
        hl_table_view(f->plain, (uint32_t)rb, &vb);
        for (int j = 0; j < HEADS * DIM; j++)
            if (fabsf(va.s[j] - vb.s[j]) > 1e-4f * (1 + fabsf(vb.s[j]))) {
                CHECKF(0, "user %s head value %d: %g, all at once %g", user, j, va.s[j], vb.s[j]);
                bad++;
                break;
            }
    }
}

/* Small budgets: every slice moves rows and stops near its budget (on
 * the thread's CPU time, checked loosely: a test machine is shared); the
 * release comes in a tick of its own; the state equals the all-at-once
 * migration. */
static void test_slices_bounded_by_time(void)
{
    fixture f;
    CHECK(fixture_open(&f) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_mref *b = hl_models_acquire(f.ms);
    plain_state(&f, b);
    CHECK(hl_shard_swap_batch_cap(f.sh, HL_SWAP_BATCH_BUDGET_US) == INT_MAX);
    CHECK(hl_shard_swap_begin(f.sh, b) == 0);
    int ticks = 0, saw_release = 0;
    while (f.sh->mig_from != NULL && ticks < 100000) {
        int releasing = f.sh->mig_finished;
        size_t rows = hl_shard_swap_tick(f.sh, 300);
        if (releasing) {
            saw_release = 1;
            CHECK(rows == 0 && f.sh->mig_from == NULL);
        } else if (!f.sh->mig_finished) {
            CHECKF(rows > 0, "tick %d moved no row", ticks);
        }
        ticks++;
    }
    CHECK(saw_release);
    /* 6000 rows at a few us each do not fit one 300 us slice */
    CHECKF(ticks > 3, "%d ticks: the slices were not bounded", ticks);
    check_same_state(&f);
    hl_mref_release(b);
    fixture_close(&f);
}

/* The batch cap: within its bounds while migrating, shrinking with the
 * budget, and batches of stale users end in the same state as above. */
static void test_batch_cap_follows_cost(void)
{
    fixture f;
    CHECK(fixture_open(&f) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_mref *b = hl_models_acquire(f.ms);
    CHECK(hl_shard_swap_begin(f.sh, b) == 0);
    int big = hl_shard_swap_batch_cap(f.sh, 1000000), small = hl_shard_swap_batch_cap(f.sh, 1);
    CHECK(big == HL_SWAP_BATCH_MAX);
    CHECK(small == HL_SWAP_BATCH_MIN);
    int cap = hl_shard_swap_batch_cap(f.sh, HL_SWAP_BATCH_BUDGET_US);
    CHECK(cap >= HL_SWAP_BATCH_MIN && cap <= HL_SWAP_BATCH_MAX);
    /* batches of users the sweep has not reached: each migrates its rows
     * first, and the cost measured replaces the starting guess */
    double start = f.sh->mig_row_us;
    for (int i = 0; i < 6; i++) {
        int n = hl_shard_swap_batch_cap(f.sh, HL_SWAP_BATCH_BUDGET_US);
        feed(f.sh, b->m, 20 * N_USERS + i * 1000, 20 * N_USERS + i * 1000 + n, n);
    }
    CHECK(f.sh->mig_row_us != start && f.sh->mig_row_us > 0);
    CHECK(f.sh->mig_rows > 0);
    hl_shard_swap_finish(f.sh);
    CHECK(f.sh->mig_from == NULL);
    CHECK(hl_shard_swap_batch_cap(f.sh, HL_SWAP_BATCH_BUDGET_US) == INT_MAX);
    hl_mref_release(b);
    fixture_close(&f);
}

/* 0 when the two rows are the same user state (heads and masses within
 * float tolerance, ring and offsets equal); else reports the first
 * difference. */
static int same_row(const hl_row_view *a, const hl_row_view *b, int n_heads, int dim)
{
    for (int j = 0; j < n_heads * dim; j++)
        if (fabsf(a->s[j] - b->s[j]) > 1e-4f * (1 + fabsf(b->s[j]))) {
            CHECKF(0, "user %.*s head value %d: %g, expected %g", (int)a->user_len,
                   a->user, j, a->s[j], b->s[j]);
            return -1;
        }
    for (int h = 0; h < n_heads; h++)
        if (fabsf(a->m[h] - b->m[h]) > 1e-4f * (1 + fabsf(b->m[h]))) {
            CHECKF(0, "user %.*s mass %d: %g, expected %g", (int)a->user_len, a->user, h,
                   a->m[h], b->m[h]);
            return -1;
        }
    if (a->n_hist != b->n_hist || a->last_offset != b->last_offset || a->t_ref_ms != b->t_ref_ms) {
        CHECKF(0, "user %.*s ring %d / offset %lld, expected %d / %lld", (int)a->user_len,
               a->user, a->n_hist, (long long)a->last_offset, b->n_hist,
               (long long)b->last_offset);
        return -1;
    }
    for (int i = 0; i < a->n_hist; i++)
        if (a->hist_item[hl_row_hist_index(a, i)] != b->hist_item[hl_row_hist_index(b, i)]) {
            CHECKF(0, "user %.*s ring entry %d differs", (int)a->user_len, a->user, i);
            return -1;
        }
    return 0;
}

/* Where user u is: 1 in the shard's (new) table, 2 in the old one, 3 in
 * both (doubled), 0 in neither (lost). */
static int where(const hl_shard *sh, int u)
{
    const char *user = g_users[u];
    size_t len = strlen(user);
    return (hl_table_find(sh->tbl, user, len) >= 0) |
           (sh->old_tbl && hl_table_find(sh->old_tbl, user, len) >= 0) << 1;
}

/* Every user's row in got equals its row in want, both of shape sp (the
 * first three that differ are reported). */
static void check_rows_as(const hl_table *got, const hl_table *want, const shape *sp)
{
    int bad = 0;
    for (int u = 0; u < N_USERS && bad < 3; u++) {
        size_t len = strlen(g_users[u]);
        int64_t ra = hl_table_find(got, g_users[u], len);
        int64_t rb = hl_table_find(want, g_users[u], len);
        CHECK(ra >= 0 && rb >= 0);
        if (ra < 0 || rb < 0) break;
        hl_row_view va, vb;
        hl_table_view(got, (uint32_t)ra, &va);
        hl_table_view(want, (uint32_t)rb, &vb);
        bad += same_row(&va, &vb, sp->n_heads, sp->dim) != 0;
    }
}

/* A model of another dim, number of heads and half-lives goes live in a
 * running shard: users move into a table of the new shape when a batch
 * touches them (before their event) and by the time-bounded sweep; none is
 * lost or doubled at any point; each ends as hl_migration_row_into of its
 * old row, then the events after the swap under B (the all-at-once
 * hl_migration_table_into and the same events). */
/* After batches touched users 0..n_touch-1 mid-swap: those are in the new
 * table only, the rest in the old only; none lost, none in both. */
static void check_touched_moved(hl_shard *sh, int n_touch)
{
    int lost = 0, doubled = 0, early = 0;
    for (int u = 0; u < N_USERS; u++) {
        int w = where(sh, u);
        lost += w == 0;
        doubled += w == 3;
        early += u < n_touch ? w != 1 : w != 2;
    }
    CHECKF(lost == 0 && doubled == 0 && early == 0, "lost %d doubled %d misplaced %d",
           lost, doubled, early);
}

/* The sweep moves the rest in bounded slices, each moving someone until
 * the old table is released, and never loses or doubles a user. */
static void sweep_checked(hl_shard *sh)
{
    int ticks = 0, lost = 0;
    while (sh->mig_from != NULL && ticks < 100000) {
        int releasing = sh->mig_finished;
        size_t rows = hl_shard_swap_tick(sh, 300);
        if (!releasing && !sh->mig_finished)
            CHECKF(rows > 0, "tick %d moved no user", ticks);
        if (ticks % 7 == 0 && sh->mig_from != NULL)
            for (int u = 0; u < N_USERS; u++)
                if (where(sh, u) == 0 || where(sh, u) == 3) lost++;
        ticks++;
    }
    CHECKF(lost == 0, "%d users lost or doubled during the sweep", lost);
    CHECKF(ticks > 3, "%d ticks: the slices were not bounded", ticks);
}

static void test_reshape_moves_every_user(void)
{
    fixture f;
    CHECK(fixture_open_shape(&f, &SHAPE_R) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_mref *b = hl_models_acquire(f.ms);
    CHECK(b->mi->dim == SHAPE_R.dim && hl_migration_reshapes(b->from_prev));
    char item[16];
    for (int i = 0; i < 12 * N_USERS; i++) {
        hl_event ev = event_at(f.a, i, item);
        hl_table_apply(f.plain, &ev, 1, hl_model_e_in(f.a), N_ITEMS, NULL);
    }
    hl_table *want = new_table_shape(&SHAPE_R);
    CHECK(hl_migration_table_into(b->from_prev, f.plain, want) == N_USERS);
    hl_table *old = f.sh->tbl;

    CHECK(hl_shard_swap_begin(f.sh, b) == 0);
    CHECK(f.sh->old_tbl == old && f.sh->tbl != old);
    CHECK(hl_table_opts_get(f.sh->tbl)->decay.dim == SHAPE_R.dim &&
          hl_table_opts_get(f.sh->tbl)->decay.n_heads == SHAPE_R.n_heads);
    /* batches touch users 0..1999 (events of the stream after the swap) */
    int from = 20 * N_USERS, n_touch = 2000;
    feed(f.sh, b->m, from, from + n_touch, 256);
    for (int i = from; i < from + n_touch; i++) {
        hl_event ev = event_at(b->m, i, item);
        hl_table_apply(want, &ev, 1, hl_model_e_in(b->m), N_ITEMS, NULL);
    }
    CHECKF(f.sh->mig_rows == (uint64_t)n_touch, "%llu moved by touch, want %d",
           (unsigned long long)f.sh->mig_rows, n_touch);
    check_touched_moved(f.sh, n_touch);
    sweep_checked(f.sh);
    CHECK(f.sh->old_tbl == NULL && f.sh->mig_from == NULL);
    CHECKF(hl_counter_get(f.sh->c_migrated) == N_USERS, "migrated counter %llu",
           (unsigned long long)hl_counter_get(f.sh->c_migrated));
    hl_table_stats st;
    hl_table_stats_get(f.sh->tbl, &st);
    CHECKF(st.users == N_USERS, "%zu users in the new table", st.users);
    check_rows_as(f.sh->tbl, want, &SHAPE_R);
    /* events keep flowing into the new shape after the migration */
    feed(f.sh, b->m, from + n_touch, from + n_touch + 100, 100);
    hl_mref_release(b);
    hl_table_destroy(want);
    fixture_close(&f);
}

/* A refused list's user is looked up by key to be refreshed again
 * (hl_publish_again): mid-reshape, a user not moved yet is in the old
 * table, and a lookup of the new one alone took it for a user no longer
 * owned, so its list was dropped. It is found, moved (once) and counted;
 * a user the shard never held is still not. */
static void test_reshape_find_moves_user(void)
{
    fixture f;
    CHECK(fixture_open_shape(&f, &SHAPE_R) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_mref *b = hl_models_acquire(f.ms);
    CHECK(hl_shard_swap_begin(f.sh, b) == 0 && f.sh->old_tbl != NULL);
    const char *user = g_users[7];
    CHECK(where(f.sh, 7) == 2);
    int64_t row = hl_shard_swap_find(f.sh, user, strlen(user));
    CHECKF(row >= 0, "a user not moved yet not found (row %lld)", (long long)row);
    CHECKF(where(f.sh, 7) == 1, "user in tables %d, want the new one only", where(f.sh, 7));
    CHECK(hl_shard_swap_find(f.sh, user, strlen(user)) == row);
    CHECK(f.sh->mig_rows == 1 && hl_counter_get(f.sh->c_migrated) == 1);
    CHECK(hl_shard_swap_find(f.sh, "nobody", 6) == -1);
    hl_shard_swap_finish(f.sh);
    hl_mref_release(b);
    fixture_close(&f);
}

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

/* Users lost (in neither table) or doubled (in both) right now. */
static int misplaced(const hl_shard *sh)
{
    int n = 0;
    for (int u = 0; u < N_USERS; u++)
        n += where(sh, u) == 0 || where(sh, u) == 3;
    return n;
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

/* A stop (or a snapshot, a revocation) mid-reshape finishes the move: every
 * user in the new table, none in two. */
static void count_evict(void *arg, const char *user, uint32_t user_len)
{
    (void)user; (void)user_len;
    (*(int *)arg)++;
}

static void test_reshape_finish_moves_rest(void)
{
    fixture f;
    CHECK(fixture_open_shape(&f, &SHAPE_R) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_mref *b = hl_models_acquire(f.ms);
    int evicted = 0;            /* the changelog's hook: the new table reports too */
    hl_table_on_evict(f.sh->tbl, count_evict, &evicted);
    CHECK(hl_shard_swap_begin(f.sh, b) == 0);
    void *arg = NULL;
    CHECK(hl_table_evict_hook(f.sh->tbl, &arg) == count_evict && arg == &evicted);
    hl_shard_swap_tick(f.sh, 100);
    CHECK(f.sh->old_tbl != NULL);
    hl_shard_swap_finish(f.sh);
    CHECK(f.sh->old_tbl == NULL && f.sh->mig_from == NULL && f.sh->mref == b);
    CHECKF(evicted == 0, "%d moves reported as evictions (tombstones)", evicted);
    int ok = 0;
    for (int u = 0; u < N_USERS; u++)
        ok += where(f.sh, u) == 1;
    CHECKF(ok == N_USERS, "%d of %d users in the new table", ok, N_USERS);
    CHECK(hl_counter_get(f.sh->c_migrated) == N_USERS);
    hl_mref_release(b);
    fixture_close(&f);
}

/* The row view of user u in the shard's (new) table. */
static uint32_t view_of(const hl_shard *sh, int u, hl_row_view *v)
{
    int64_t r = hl_table_find(sh->tbl, g_users[u], strlen(g_users[u]));
    CHECKF(r >= 0, "user %d not in the table", u);
    if (r >= 0)
        hl_table_view(sh->tbl, (uint32_t)r, v);
    return r >= 0 ? (uint32_t)r : 0;
}

/* recs.min.interval.ms across a reshape: the gate keys users by row id,
 * which a move changes. Users waiting before the swap are due at once
 * after their move (their list goes out from the new model), the offset
 * stays bounded by their wait until that list is taken, and a user
 * refreshed recently keeps its interval. */
static void test_reshape_carries_gate(void)
{
    fixture f;
    CHECK(fixture_open_shape(&f, &SHAPE_R) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_mref *b = hl_models_acquire(f.ms);
    hl_gate *g = hl_gate_create(1000000);
    CHECK(g != NULL && f.sh->gate == NULL);
    f.sh->gate = g;
    hl_row_view v;
    int n_wait = 10, n_recent = 10, waiting = 0;
    for (int u = 0; u < n_wait + n_recent; u++) {
        uint32_t r = view_of(f.sh, u, &v);
        hl_gate_refreshed(g, r, &v);
        if (u < n_wait)             /* an event within the interval: it waits */
            waiting += hl_gate_pass(g, r, &v, v.t_ref_ms + 1, 100 + u) == 0;
    }
    CHECK(waiting == n_wait);
    f.sh->next_offset = 5000;
    CHECK(hl_shard_publishable_offset(f.sh) == 100);
    CHECK(hl_shard_swap_begin(f.sh, b) == 0);
    CHECK(f.sh->old_gate == g && f.sh->gate != NULL && f.sh->gate != g);
    CHECK(hl_gate_interval(f.sh->gate) == 1000000);
    hl_shard_swap_tick(f.sh, 100);
    CHECKF(hl_shard_publishable_offset(f.sh) == 100, "mid-move bound %lld",
           (long long)hl_shard_publishable_offset(f.sh));
    hl_shard_swap_finish(f.sh);
    CHECK(f.sh->old_gate == NULL && f.sh->old_tbl == NULL);
    CHECKF(hl_shard_publishable_offset(f.sh) == 100, "after the move, bound %lld",
           (long long)hl_shard_publishable_offset(f.sh));
    /* due at once, whatever the shard's event time: exactly the waiting users */
    uint32_t rows[64];
    int n = hl_gate_take_due(f.sh->gate, f.sh->tbl, rows, 64, 0), ok = 0;
    for (int i = 0; i < n; i++) {
        hl_table_view(f.sh->tbl, rows[i], &v);
        for (int u = 0; u < n_wait; u++)
            ok += v.user_len == strlen(g_users[u]) && !memcmp(v.user, g_users[u], v.user_len);
    }
    CHECKF(n == n_wait && ok == n_wait, "%d due (%d of them waiting users), want %d", n, ok,
           n_wait);
    CHECK(hl_shard_publishable_offset(f.sh) == 5000);
    /* the recently refreshed keep their interval; a user never refreshed goes at once */
    uint32_t r = view_of(f.sh, n_wait, &v);
    CHECK(hl_gate_pass(f.sh->gate, r, &v, v.t_ref_ms + 1, 6000) == 0);
    r = view_of(f.sh, n_wait + n_recent + 5, &v);
    CHECK(hl_gate_pass(f.sh->gate, r, &v, v.t_ref_ms + 1, 6000) == 1);
    hl_mref_release(b);
    fixture_close(&f);
}

/* A setup that cannot follow a reshape (reshape_refused) refuses such a
 * model, counted, and keeps serving; a model of the same shape still goes
 * live there. */
static void test_reshape_refused_when_asked(void)
{
    char err[512];
    unlink(LIVE);
    CHECK(write_model(PATH_A, 0, "A") == 0 && write_model_shape(PATH_B, 50, "B", &SHAPE_R) == 0);
    hl_model *a = hl_model_open(PATH_A, err, sizeof err);
    CHECK(a != NULL && link(PATH_A, LIVE) == 0);
    if (a == NULL) return;
    hl_metrics *reg = hl_metrics_create();
    hl_models_opts mo = {.path = LIVE, .check_ms = 0, .reg = reg,
                         .reshape_refused = "not in this setup"};
    hl_models *ms = hl_models_create(&mo, a, err, sizeof err);
    CHECK(rename(PATH_B, LIVE) == 0);
    CHECK(hl_models_check(ms, 0, 1) < 0);
    hl_mref *r = hl_models_acquire(ms);
    CHECK(r->gen == 1 && strcmp(r->mi->version, "A") == 0);
    hl_mref_release(r);
    CHECK(write_model(PATH_B, 50, "B2") == 0 && rename(PATH_B, LIVE) == 0);
    CHECK(hl_models_check(ms, 0, 1) == 1);
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_metrics_destroy(reg);
    unlink(PATH_A);
    unlink(LIVE);
}

/* A swap to another shape puts a new table, with its own eviction counts
 * from 0, under the shard: the worker-wide evictions counter must not go
 * down by what the old table counted (it wrapped to a huge delta and
 * Prometheus saw a reset), and the new table's evictions still count. */
static void test_reshape_keeps_eviction_counts(void)
{
    fixture f;
    g_max_users = N_USERS - 500;             /* the first table evicts */
    int rc = fixture_open_shape(&f, &SHAPE_R);
    g_max_users = 0;
    CHECK(rc == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_counter *ev[2] = {
        hl_metrics_counter(f.reg, "halflife_evictions_total", "", "reason=\"mass\""),
        hl_metrics_counter(f.reg, "halflife_evictions_total", "", "reason=\"capacity\"")};
    hl_shard_publish_stats(f.sh, ev);
    uint64_t before = hl_counter_get(ev[1]);
    CHECKF(before >= 500, "the first table evicted %llu", (unsigned long long)before);
    hl_mref *b = hl_models_acquire(f.ms);
    CHECK(hl_shard_swap_begin(f.sh, b) == 0 && f.sh->old_tbl != NULL);
    hl_shard_publish_stats(f.sh, ev);
    CHECKF(hl_counter_get(ev[1]) == before, "capacity evictions %llu after the swap began, "
           "%llu before", (unsigned long long)hl_counter_get(ev[1]), (unsigned long long)before);
    hl_shard_swap_finish(f.sh);
    hl_shard_publish_stats(f.sh, ev);
    CHECK(hl_counter_get(ev[1]) >= before && hl_counter_get(ev[0]) < (1ull << 40));
    hl_mref_release(b);
    fixture_close(&f);
}


/* Once the replaced model is out of use (the shard moved off it) and the
 * set releases it, the map from it goes too: its delta table (the old
 * model's items x dim, in huge pages) must not stay for as long as the
 * new model serves (models.c: "the maps from it go first"). */
static void test_map_from_released_model_dropped(void)
{
    fixture f;
    CHECK(fixture_open(&f) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_mref *b = hl_models_acquire(f.ms);
    CHECK(b->from_prev != NULL);
    CHECK(hl_shard_swap_begin(f.sh, b) == 0);
    hl_shard_swap_finish(f.sh);
    CHECK(f.sh->mig_from == NULL);
    /* the next main-loop pass releases A: nobody but the set holds it */
    CHECK(hl_models_check(f.ms, 0, 0) == 0);
    CHECKF(b->from_prev == NULL, "the map from the released model A is still held by B");
    hl_mref_release(b);
    fixture_close(&f);
}

/* The gauge line "name value" of reg's /metrics text, as a number; -1 when
 * absent. */
static double gauge_of(hl_metrics *reg, const char *name)
{
    char *text = NULL;
    size_t len = 0;
    double v = -1;
    if (hl_metrics_render(reg, &text, &len) != 0)
        return -1;
    for (char *l = text; l != NULL && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (strncmp(l, name, strlen(name)) == 0 && l[strlen(name)] == ' ')
            v = strtod(l + strlen(name) + 1, NULL);
    free(text);
    return v;
}

/* A model renamed over model.path after the first one was opened and
 * before the set was made (the index build, up to tens of seconds at
 * millions of items) is a change: the first periodic check loads it.
 * halflife_model_file_timestamp_seconds is the served file's own time. */
static void test_rename_before_create_is_seen(void)
{
    char err[512];
    struct stat st;
    unlink(LIVE);
    CHECK(write_model(PATH_A, 0, "A") == 0 && write_model(PATH_B, 50, "B") == 0);
    CHECK(link(PATH_A, LIVE) == 0);
    struct timespec old[2] = {{.tv_sec = 1700000000}, {.tv_sec = 1700000000}};
    CHECK(utimensat(AT_FDCWD, LIVE, old, 0) == 0);
    hl_model *a = hl_model_open(LIVE, err, sizeof err);
    CHECK(a != NULL && rename(PATH_B, LIVE) == 0 && stat(LIVE, &st) == 0);
    if (a == NULL) return;
    hl_metrics *reg = hl_metrics_create();
    hl_models_opts mo = {.path = LIVE, .check_ms = 1000, .reg = reg};
    hl_models *ms = hl_models_create(&mo, a, err, sizeof err);
    CHECKF(gauge_of(reg, "halflife_model_file_timestamp_seconds") == 1700000000.0,
           "file time %.3f before the check", gauge_of(reg, "halflife_model_file_timestamp_seconds"));
    CHECKF(hl_models_check(ms, 2000, 0) == 1, "the model renamed over the path before the "
           "set was made was not loaded at the first check");
    hl_mref *r = hl_models_acquire(ms);
    CHECK(strcmp(r->mi->version, "B") == 0);
    hl_mref_release(r);
    double want = (double)st.st_mtim.tv_sec + (double)st.st_mtim.tv_nsec / 1e9;
    CHECKF(fabs(gauge_of(reg, "halflife_model_file_timestamp_seconds") - want) < 1e-3,
           "file time %.3f, B's mtime %.3f",
           gauge_of(reg, "halflife_model_file_timestamp_seconds"), want);
    CHECK(hl_models_check(ms, 4000, 0) == 0);          /* unchanged since */
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_metrics_destroy(reg);
    unlink(PATH_A);
    unlink(LIVE);
}

int main(void)
{
    hl_log_set_level(HL_LOG_WARN);
    for (int u = 0; u < N_USERS; u++)
        snprintf(g_users[u], sizeof g_users[u], "u%d", u);
    RUN(test_slices_bounded_by_time);
    RUN(test_batch_cap_follows_cost);
    RUN(test_reshape_moves_every_user);
    RUN(test_reshape_finish_moves_rest);
    RUN(test_reshape_find_moves_user);
    RUN(test_reshape_then_reshape);
    RUN(test_reshape_then_same_shape);
    RUN(test_missed_swap_uses_skip_map);
    RUN(test_two_swaps_during_move);
    RUN(test_unforeseen_model_fits_on_thread);
    RUN(test_reshape_carries_gate);
    RUN(test_reshape_refused_when_asked);
    RUN(test_reshape_keeps_eviction_counts);
    RUN(test_map_from_released_model_dropped);
    RUN(test_rename_before_create_is_seen);
    unlink(PATH_B);
    unlink(PATH_C);
    unlink(PATH_D);
    TEST_EXIT();
}
