/* test_changelog_reshape.c - a changelog restore whose rows were written
 * under a model of another shape (issue 10): with the old model at hand
 * (the reshape hook hands over a migration) each row is migrated; without
 * it each is rebuilt from its ring. Offline (hl_changelog_replay over
 * records in memory); the cases over the mock broker are test_changelog.c. */
#define T_SUITE "test_changelog_reshape"
#include "test.h"

#include "changelog.h"
#include "changelog_internal.h"
#include "hl.h"
#include "log.h"
#include "migrate.h"
#include "model.h"
#include "snapshot.h"

#include <unistd.h>

#define R_ITEMS  12
#define R_HIST   4
#define R_USERS  5

/* A model of dim x heads (half-lives hl) over ids "it0".."it<R_ITEMS-1>",
 * e_in from the seed. */
static hl_model *r_model(const char *path, int dim, int heads, const double *hl, uint64_t seed)
{
    hl_model_parts p;
    memset(&p, 0, sizeof p);
    hl_model_info *mi = &p.info;
    mi->dim = dim; mi->n_heads = heads; mi->n_items = R_ITEMS; mi->n_layers = 1;
    mi->layer_out[0] = dim;
    for (int h = 0; h < heads; h++) mi->half_life_ms[h] = hl[h];
    for (int t = 0; t < HL_N_TYPES; t++) mi->type_weight[t] = 1.0f;
    snprintf(mi->version, sizeof mi->version, "r%d", dim);
    int in = hl_model_input_dim(mi), n = R_ITEMS;
    float *ein = malloc(sizeof(float) * n * dim), *e_out = malloc(sizeof(float) * n * dim);
    float *bias = calloc((size_t)n, sizeof(float)), *w = calloc((size_t)dim * in, sizeof(float));
    float *b = calloc((size_t)dim, sizeof(float));
    char ids[R_ITEMS][8];
    const char *idp[R_ITEMS];
    uint32_t lens[R_ITEMS];
    for (int i = 0; i < n; i++) {
        lens[i] = (uint32_t)snprintf(ids[i], sizeof ids[i], "it%d", i);
        idp[i] = ids[i];
        for (int j = 0; j < dim; j++) {
            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
            ein[i * dim + j] = (float)((double)(seed >> 11) / 9007199254740992.0) - 0.5f;
            e_out[i * dim + j] = ein[i * dim + j];
        }
    }
    p.item_id = idp; p.item_id_len = lens;
    p.e_in = ein; p.e_out = e_out; p.bias = bias; p.layer_w[0] = w; p.layer_b[0] = b;
    char err[256];
    hl_model *m = NULL;
    if (hl_model_write(path, &p, err, sizeof err) == 0)
        m = hl_model_open(path, err, sizeof err);
    CHECKF(m != NULL, "model %s: %s", path, err);
    free(ein); free(e_out); free(bias); free(w); free(b);
    return m;
}

static hl_table *r_table(const hl_model *m)
{
    const hl_model_info *mi = hl_model_info_get(m);
    hl_table_opts o = {.history = R_HIST, .expected_users = 16};
    char err[256];
    hl_decay_init(&o.decay, mi->n_heads, mi->dim, mi->half_life_ms, err, sizeof err);
    return hl_table_create(&o, err, sizeof err);
}

/* The two models a reshape replay moves between, and whether the old one
 * is at hand (else a rebuild, as the worker does for a model not kept). */
typedef struct r_pair {
    const hl_model *from, *to;
    int             kept;
} r_pair;

static const float r_tw[HL_N_TYPES] = {1, 1, 1, 1, 1, 1};

static hl_migration *r_migration(const r_pair *rp)
{
    char err[256];
    return rp->kept ? hl_migration_create_any(rp->from, rp->to, r_tw, err, sizeof err)
                    : hl_migration_rebuild(rp->to, r_tw, err, sizeof err);
}

/* hl_changelog_opts.reshape over the pair (the worker's asks model.dir). */
static int r_reshape(void *arg, uint64_t fp, hl_changelog_reshape *out)
{
    const r_pair *rp = arg;
    const hl_model_info *mi = hl_model_info_get(rp->from);
    CHECK(fp == mi->fingerprint);
    *out = (hl_changelog_reshape){.mg = r_migration(rp), .rebuilt = !rp->kept,
                                  .n_heads = mi->n_heads, .dim = mi->dim};
    memcpy(out->half_life_ms, mi->half_life_ms, sizeof out->half_life_ms);
    return 0;
}

/* The rows of old (from's shape) written as a flush under from writes
 * them, replayed into a table of to's shape: every user must be there,
 * none bad, each row equal to hl_migration_row_into of the old row, and
 * counted migrated (or rebuilt). */
/* R_USERS users "u0".. with more events than the ring holds, under a. */
static void r_fill(hl_table *old, const hl_model *a, char users[R_USERS][16])
{
    for (int u = 0; u < R_USERS; u++) {
        snprintf(users[u], 16, "u%d", u);
        for (int i = 0; i < 7 + u; i++) {
            char id[8];
            int len = snprintf(id, sizeof id, "it%d", (u * 5 + i * 3) % R_ITEMS);
            hl_event ev = {.user = users[u], .user_len = (uint32_t)strlen(users[u]),
                           .item = hl_model_item_find(a, id, (size_t)len),
                           .item_key = hl_item_key(id, (size_t)len), .w = 1.0f,
                           .ts_ms = 1700000000000LL + i * 3600000LL, .offset = u * 100 + i};
            hl_table_apply(old, &ev, 1, hl_model_e_in(a), R_ITEMS, NULL);
        }
    }
}

/* The replayed user equals core/'s migration of its old row (s, m and
 * scratch are the caller's buffers of the new shape). */
static void r_check_user(int kept, hl_table *old, hl_table *tbl, hl_migration *mg,
                         const hl_model_info *mb, const char *user, uint32_t row,
                         float *s, float *m, float *scratch)
{
    size_t per = (size_t)mb->n_heads * mb->dim;
    int32_t item[R_HIST];
    hl_row_view v, got;
    hl_table_view(old, row, &v);
    hl_migration_row_into(mg, &v, s, m, item, scratch);
    int64_t r = hl_table_find(tbl, user, strlen(user));
    CHECKF(r >= 0, "kept %d: user %s lost", kept, user);
    if (r < 0)
        return;
    hl_table_view(tbl, (uint32_t)r, &got);
    int ring = got.n_hist == v.n_hist;
    for (int i = 0; i < got.n_hist && ring; i++)
        ring = got.hist_item[hl_row_hist_index(&got, i)] == item[hl_row_hist_index(&v, i)];
    CHECKF(memcmp(got.s, s, sizeof(float) * per) == 0 &&
           memcmp(got.m, m, sizeof(float) * mb->n_heads) == 0 && ring &&
           got.last_offset == v.last_offset && got.t_ref_ms == v.t_ref_ms &&
           (uint32_t)r == row, "kept %d: user %s differs from "
           "hl_migration_row_into (s[0] %g vs %g, m[0] %g vs %g, row %lld vs %u)",
           kept, user, got.s[0], s[0], got.m[0], m[0], (long long)r, row);
}

#define R_TEXT(x)  #x
#define R_TEXT2(x) R_TEXT(x)
#define R_FORMAT   R_TEXT2(HL_CHANGELOG_FORMAT)   /* today's rows' header */

/* Each user of old as a changelog row record under model fingerprint fp
 * (hex), its table row in rows; returns the encoded bytes recs point
 * into (the caller frees them). */
static unsigned char *r_records(hl_table *old, const hl_model_info *ma,
                                char users[R_USERS][16], const char *fp,
                                hl_changelog_rec recs[R_USERS], uint32_t rows[R_USERS])
{
    size_t max = hl_snapshot_row_max(ma->n_heads, ma->dim, R_HIST);
    unsigned char *bytes = malloc(max * R_USERS);
    for (int u = 0; u < R_USERS; u++) {
        hl_row_view v;
        rows[u] = (uint32_t)hl_table_find(old, users[u], strlen(users[u]));
        hl_table_view(old, rows[u], &v);
        recs[u] = (hl_changelog_rec){.key = users[u], .key_len = strlen(users[u]),
            .value = bytes + max * u, .epoch = "1", .epoch_len = 1, .model = fp,
            .model_len = strlen(fp), .format = R_FORMAT, .format_len = strlen(R_FORMAT),
            .offset = u};
        recs[u].len = hl_snapshot_row_encode(bytes + max * u, ma->n_heads, ma->dim,
                                             rows[u], &v);
    }
    return bytes;
}

/* Each user replayed into tbl as core/'s migration moves the same row. */
static void r_check_users(const r_pair *rp, hl_table *old, hl_table *tbl,
                          char users[R_USERS][16], const uint32_t rows[R_USERS])
{
    const hl_model_info *mb = hl_model_info_get(rp->to);
    hl_migration *mg = r_migration(rp);
    size_t per = (size_t)mb->n_heads * mb->dim;
    float *s = malloc(sizeof(float) * per), *m = malloc(sizeof(float) * mb->n_heads);
    float *scratch = malloc(sizeof(float) * hl_migration_scratch_floats(mg));
    for (int u = 0; u < R_USERS; u++)
        r_check_user(rp->kept, old, tbl, mg, mb, users[u], rows[u], s, m, scratch);
    free(s); free(m); free(scratch);
    hl_migration_destroy(mg);
}

static void reshape_replay(int kept)
{
    static const double hl_a[3] = {3600e3, 86400e3, 30 * 86400e3};
    static const double hl_b[2] = {2 * 3600e3, 10 * 86400e3};
    char err[512] = "";
    hl_model *a = r_model("/tmp/test_changelog_a.hlm", 4, 3, hl_a, 11);
    hl_model *b = r_model("/tmp/test_changelog_b.hlm", 8, 2, hl_b, 29);
    if (a == NULL || b == NULL) {
        hl_model_close(a);
        hl_model_close(b);
        return;
    }
    r_pair rp = {a, b, kept};
    const hl_model_info *ma = hl_model_info_get(a), *mb = hl_model_info_get(b);
    hl_table *old = r_table(a), *tbl = r_table(b);
    char users[R_USERS][16], fp[24];
    r_fill(old, a, users);
    snprintf(fp, sizeof fp, "%016llx", (unsigned long long)ma->fingerprint);
    hl_changelog_rec recs[R_USERS];
    uint32_t rows[R_USERS];
    unsigned char *bytes = r_records(old, ma, users, fp, recs, rows);
    hl_changelog_opts co = {.topic = "st", .input_topic = "in",
                            .model_fingerprint = mb->fingerprint,
                            .topts = hl_table_opts_get(tbl), .reshape = r_reshape,
                            .reshape_arg = &rp};
    hl_metrics *reg = hl_metrics_create();
    co.reg = reg;
    hl_changelog *cl = hl_changelog_create_offline(&co, err, sizeof err);
    CHECKF(cl != NULL, "changelog: %s", err);
    hl_changelog_restored out;
    int rc = cl ? hl_changelog_replay(cl, tbl, NULL, recs, R_USERS, &out, err, sizeof err)
                : HL_EINVAL;
    CHECKF(rc == 0 && out.n_bad == 0 && out.n_rows == R_USERS &&
           (kept ? out.n_migrated : out.n_rebuilt) == R_USERS &&
           (kept ? out.n_rebuilt : out.n_migrated) == 0 && !out.mixed &&
           out.model_fingerprint == mb->fingerprint,
           "kept %d: rc %d (%s), bad %llu rows %llu migrated %llu rebuilt %llu mixed %d "
           "model %016llx", kept, rc, err, (unsigned long long)out.n_bad,
           (unsigned long long)out.n_rows, (unsigned long long)out.n_migrated,
           (unsigned long long)out.n_rebuilt, out.mixed,
           (unsigned long long)out.model_fingerprint);
    if (rc == 0)
        r_check_users(&rp, old, tbl, users, rows);
    free(bytes);
    hl_changelog_destroy(cl);
    hl_metrics_destroy(reg);
    hl_table_destroy(tbl);
    hl_table_destroy(old);
    hl_model_close(a);
    hl_model_close(b);
    unlink("/tmp/test_changelog_a.hlm");
    unlink("/tmp/test_changelog_b.hlm");
}

static void test_reshape_replay(void)
{
    reshape_replay(1);      /* the old model at hand: migrated */
    reshape_replay(0);      /* not kept: rebuilt from the rings, shape unknown */
}

int main(void)
{
    hl_log_set_level(HL_LOG_ERROR);
    RUN(test_reshape_replay);
    TEST_EXIT();
}
