/* swap_test_util.h - what test_swap.c (a shard's live migration: its
 * slices, batch caps, a reshape's moves) and test_swap_chain.c (a second
 * swap during a move) share: models of three shapes written on demand, the
 * event stream, a shard serving model A with model B loaded, and the checks
 * of its rows against an all-at-once migration. Header-only, static
 * inline: each test is one translation unit; include it after test.h with
 * T_SUITE defined (the model files are named for the suite). */
#ifndef HL_SWAP_TEST_UTIL_H
#define HL_SWAP_TEST_UTIL_H

#include "test.h"

#include "log.h"
#include "models.h"
#include "shard.h"

#include <math.h>
#include <unistd.h>

#define DIM     16
#define HEADS   3
#define N_ITEMS 500
#define N_USERS 6000
#define PATH_A  "/tmp/test_" T_SUITE "_a.hlm"
#define PATH_B  "/tmp/test_" T_SUITE "_b.hlm"
#define PATH_C  "/tmp/test_" T_SUITE "_c.hlm"
#define PATH_D  "/tmp/test_" T_SUITE "_d.hlm"
#define LIVE    "/tmp/test_" T_SUITE "_live.hlm"

static uint64_t g_seed = 0x9E3779B97F4A7C15ull;
static inline float frand(void)
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
static inline int write_model_shape(const char *path, int first, const char *version,
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

static inline int write_model(const char *path, int first, const char *version)
{
    return write_model_shape(path, first, version, &SHAPE_A);
}

static size_t g_max_users;     /* state.max.users of the tables made next; 0 none */

static inline hl_table *new_table_shape(const shape *sp)
{
    hl_table_opts o = {.history = 8, .expected_users = N_USERS, .max_users = g_max_users};
    char err[256];
    hl_decay_init(&o.decay, sp->n_heads, sp->dim, sp->half_life_ms, err, sizeof err);
    return hl_table_create(&o, err, sizeof err);
}

static inline hl_table *new_table(void)
{
    return new_table_shape(&SHAPE_A);
}

static char g_users[N_USERS][16];   /* events in a batch point at their user */

/* Event i of the stream: user i % N_USERS, so each user gets a dozen,
 * more than the ring holds (the remainder goes through M). */
static inline hl_event event_at(const hl_model *m, int i, char *item)
{
    const char *user = g_users[i % N_USERS];
    int len = snprintf(item, 16, "it%d", (i * 7919) % (N_ITEMS + 50));
    return (hl_event){.user = user, .user_len = (uint32_t)strlen(user),
                      .item = hl_model_item_find(m, item, (size_t)len),
                      .item_key = hl_item_key(item, (size_t)len), .type = HL_VIEW, .w = 1,
                      .ts_ms = 1000000 + (int64_t)i * 1000, .offset = i};
}

/* Events [from, to) into sh's table, a batch of bsz at a time, under m. */
static inline void feed(hl_shard *sh, const hl_model *m, int from, int to, int bsz)
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
static inline int fixture_open_shape(fixture *f, const shape *b_shape)
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

static inline int fixture_open(fixture *f)
{
    return fixture_open_shape(f, &SHAPE_A);
}

static inline void fixture_close(fixture *f)
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
static inline void plain_state(fixture *f, const hl_mref *b)
{
    char item[16];
    for (int i = 0; i < 12 * N_USERS; i++) {
        hl_event ev = event_at(f->a, i, item);
        hl_table_apply(f->plain, &ev, 1, hl_model_e_in(f->a), N_ITEMS, NULL);
    }
    CHECK(hl_migration_table(b->from_prev, f->plain) == N_USERS);
}

/* Every user's heads in the shard equal the plain table's. */
static inline void check_same_state(fixture *f)
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

/* 0 when the two rows are the same user state (heads and masses within
 * float tolerance, ring and offsets equal); else reports the first
 * difference. */
static inline int same_row(const hl_row_view *a, const hl_row_view *b, int n_heads, int dim)
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
static inline int where(const hl_shard *sh, int u)
{
    const char *user = g_users[u];
    size_t len = strlen(user);
    return (hl_table_find(sh->tbl, user, len) >= 0) |
           (sh->old_tbl && hl_table_find(sh->old_tbl, user, len) >= 0) << 1;
}

/* Every user's row in got equals its row in want, both of shape sp (the
 * first three that differ are reported). */
static inline void check_rows_as(const hl_table *got, const hl_table *want, const shape *sp)
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

/* Users lost (in neither table) or doubled (in both) right now. */
static inline int misplaced(const hl_shard *sh)
{
    int n = 0;
    for (int u = 0; u < N_USERS; u++)
        n += where(sh, u) == 0 || where(sh, u) == 3;
    return n;
}

#endif
