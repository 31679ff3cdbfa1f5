/* test_model_bounds.c - a model that opens cannot make a score inf or NaN.
 *
 * The loader refuses any float of magnitude above HL_MODEL_MAX_ABS
 * (core/model.h says why that bound is enough for every shape the format
 * allows). Here a model whose every float sits at the bound, all of one
 * sign so nothing cancels, goes through every ranking path the worker has
 * (exact fp32, two-stage int8, the IVF index, a migration into it and out
 * of it) and every score must be finite and every list full; and a model
 * with one value just past the bound is refused.
 *
 * With HL_BOUNDS_SCALE=X set, main instead writes models whose floats are
 * all +-X (of one sign, then mixed), opens them and prints what each path
 * did: how the behaviour before the bound was measured (the writer and the
 * loader refuse X > HL_MODEL_MAX_ABS now). */
#define T_SUITE "test_model_bounds"
#include "test.h"

#include "migrate.h"
#include "model.h"
#include "rank.h"

#include <stdint.h>
#include <unistd.h>

enum { N = 700, D = 16, H = 3, W = 32, K = 10 };

static char tmpdir[64];

typedef struct parts {
    hl_model_parts p;
    char   ids[N][16];
    const char *idp[N];
    uint32_t idl[N];
    float e_in[N * D], e_out[N * D], bias[N];
    float w0[W * H * (D + 1)], b0[W], w1[D * W], b1[D];
} parts;

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float sgn(int mixed)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return mixed && (rng >> 63) ? -1.0f : 1.0f;
}

/* Every float is +-v (all + unless mixed). */
static void parts_init(parts *t, float v, int mixed)
{
    hl_model_parts *p = &t->p;
    memset(t, 0, sizeof *t);
    p->info.dim = D;
    p->info.n_heads = H;
    p->info.n_items = N;
    p->info.n_layers = 2;
    p->info.layer_out[0] = W;
    p->info.layer_out[1] = D;
    p->info.half_life_ms[0] = 3.6e6; p->info.half_life_ms[1] = 8.64e7; p->info.half_life_ms[2] = 2.6e9;
    for (int i = 0; i < HL_N_TYPES; i++) p->info.type_weight[i] = 1.0f;
    snprintf(p->info.version, sizeof p->info.version, "bounds-%g", (double)v);
    for (int r = 0; r < N; r++) {
        t->idl[r] = (uint32_t)snprintf(t->ids[r], sizeof t->ids[r], "item-%d", r);
        t->idp[r] = t->ids[r];
        t->bias[r] = v * sgn(mixed);
    }
    for (int i = 0; i < N * D; i++) { t->e_in[i] = v * sgn(mixed); t->e_out[i] = v * sgn(mixed); }
    for (size_t i = 0; i < sizeof t->w0 / sizeof *t->w0; i++) t->w0[i] = v * sgn(mixed);
    for (size_t i = 0; i < sizeof t->w1 / sizeof *t->w1; i++) t->w1[i] = v * sgn(mixed);
    for (int i = 0; i < W; i++) t->b0[i] = v * sgn(mixed);
    for (int i = 0; i < D; i++) t->b1[i] = v * sgn(mixed);
    p->item_id = t->idp;
    p->item_id_len = t->idl;
    p->e_in = t->e_in; p->e_out = t->e_out; p->bias = t->bias;
    p->layer_w[0] = t->w0; p->layer_b[0] = t->b0;
    p->layer_w[1] = t->w1; p->layer_b[1] = t->b1;
}

/* What went wrong in one path's lists. */
typedef struct tally {
    int lists, short_lists, nonfinite, unsorted;
    float lo, hi;
} tally;

static void tally_list(tally *ty, const hl_rec *rec, int n)
{
    ty->lists++;
    if (n < K) ty->short_lists++;
    for (int i = 0; i < n; i++) {
        float s = rec[i].score;
        if (!isfinite(s)) ty->nonfinite++;
        else {
            if (s < ty->lo) ty->lo = s;
            if (s > ty->hi) ty->hi = s;
        }
        if (i > 0 && !(rec[i - 1].score >= s)) ty->unsorted++;
    }
}

/* Users whose heads are made of e_in rows of m (the weighted mean of
 * row u % N and row (u * 7) % N), masses 1; refreshed through one ranker. */
static int rank_users(const hl_model *m, hl_rank_opts *ro, const float *s_over, tally *ty,
                      char *err, size_t errlen)
{
    enum { U = 8 };
    const float *e_in = hl_model_e_in(m);
    static float s[U][H * D], mass[U][H];
    static int32_t item[U][2];
    static uint8_t type[U][2];
    static int64_t ts[U][2];
    hl_row_view v[U];
    hl_rec out[U * K];
    int n_out[U];
    hl_ranker *rk = hl_ranker_create(m, ro, err, errlen);
    if (rk == NULL) return -1;
    for (int u = 0; u < U; u++) {
        int a = u % N, b = (u * 7 + 3) % N;
        for (int h = 0; h < H; h++) {
            mass[u][h] = 1.0f;
            for (int d = 0; d < D; d++)
                s[u][h * D + d] = s_over ? s_over[h * D + d]
                                         : 0.5f * e_in[(size_t)a * D + d] + 0.5f * e_in[(size_t)b * D + d];
        }
        item[u][0] = a; item[u][1] = b;
        v[u] = (hl_row_view){.user = "u", .user_len = 1, .s = s[u], .m = mass[u], .history = 2,
                             .n_hist = 2, .hist_item = item[u], .hist_type = type[u],
                             .hist_ts_ms = ts[u]};
    }
    int rc = hl_ranker_refresh(rk, v, U, out, n_out);
    if (rc == 0)
        for (int u = 0; u < U; u++) tally_list(ty, out + u * K, n_out[u]);
    hl_ranker_destroy(rk);
    return rc;
}

/* Every ranking path on m; names[i]'s result in ty[i]. */
enum { P_EXACT, P_TWO_STAGE, P_IVF, P_MIGRATED, N_PATHS };
static const char *path_name[N_PATHS] = {"exact", "two-stage int8", "ivf", "migrated state"};

static void all_paths(const hl_model *m, const hl_model *other, tally ty[N_PATHS], char *err,
                      size_t errlen)
{
    const hl_model_info *mi = hl_model_info_get(m);
    for (int i = 0; i < N_PATHS; i++) ty[i] = (tally){.lo = INFINITY, .hi = -INFINITY};
    hl_qitems *qi = hl_qitems_create(hl_model_e_out(m), hl_model_bias(m), mi->n_items, mi->dim,
                                     HL_QKERNEL_AUTO, err, errlen);
    if (qi == NULL) printf("    int8 table: %s\n", err);
    hl_ivf_opts io = {.iters = 4, .nlist = 8};
    hl_ivf *ivf = hl_ivf_create(hl_model_e_out(m), hl_model_bias(m), mi->n_items, mi->dim,
                                &io, err, errlen);
    if (ivf == NULL) printf("    ivf: %s\n", err);
    hl_rank_opts exact = {.k = K, .max_batch = 8, .scoring = HL_SCORING_EXACT};
    hl_rank_opts two = {.k = K, .max_batch = 8, .scoring = HL_SCORING_TWO_STAGE, .qitems = qi};
    hl_rank_opts ix = {.k = K, .max_batch = 8, .scoring = HL_SCORING_EXACT, .ivf = ivf,
                       .nprobe = 2};
    if (rank_users(m, &exact, NULL, &ty[P_EXACT], err, errlen) != 0)
        printf("    exact: %s\n", err);
    if (qi && rank_users(m, &two, NULL, &ty[P_TWO_STAGE], err, errlen) != 0)
        printf("    two-stage: %s\n", err);
    if (ivf && rank_users(m, &ix, NULL, &ty[P_IVF], err, errlen) != 0)
        printf("    ivf: %s\n", err);
    /* A user of the other model, migrated into m, then ranked by m. */
    hl_migration *mg = hl_migration_create(other, m, mi->type_weight, err, errlen);
    if (mg == NULL) { printf("    migration: %s\n", err); goto out; }
    float s[H * D], mass[H], scratch[2 * H * D];
    int32_t item[2] = {1, 5};
    uint8_t type[2] = {0, 0};
    int64_t ts[2] = {0, 0};
    uint64_t key[2];
    float w[2] = {1, 1};
    for (int i = 0; i < 2; i++) {
        char id[16];
        int len = snprintf(id, sizeof id, "item-%d", item[i]);
        key[i] = hl_item_key(id, (uint32_t)len);
    }
    const float *eo = hl_model_e_in(other);
    for (int h = 0; h < H; h++) {
        mass[h] = 2.0f;
        for (int d = 0; d < D; d++) s[h * D + d] = eo[1 * D + d] + eo[5 * D + d];
    }
    hl_row_edit e = {.v = {.s = s, .m = mass, .history = 2, .n_hist = 2, .hist_item = item,
                           .hist_type = type, .hist_ts_ms = ts, .hist_key = key, .hist_w = w},
                     .s = s, .m = mass, .hist_item = item};
    hl_migration_row(mg, &e, scratch);
    hl_migration_destroy(mg);
    for (int i = 0; i < H * D; i++) s[i] /= 2.0f;   /* the heads' means, as rank_users gives */
    if (rank_users(m, &exact, s, &ty[P_MIGRATED], err, errlen) != 0)
        printf("    migrated: %s\n", err);
out:
    hl_ivf_destroy(ivf);
    hl_qitems_destroy(qi);
}

static void print_paths(const tally ty[N_PATHS])
{
    for (int i = 0; i < N_PATHS; i++)
        printf("    %-15s lists %d short %d nonfinite scores %d unsorted %d range [%g, %g]\n",
               path_name[i], ty[i].lists, ty[i].short_lists, ty[i].nonfinite, ty[i].unsorted,
               (double)ty[i].lo, (double)ty[i].hi);
}

static hl_model *open_parts(parts *t, const char *name, char *err, size_t errlen)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    if (hl_model_write(path, &t->p, err, errlen) != 0) return NULL;
    hl_model *m = hl_model_open(path, err, errlen);
    unlink(path);
    return m;
}

/* ---- cases ---- */

static parts big, small;

/* Every float at the bound, of one sign or of mixed signs: every path
 * lists K items with finite scores, in order. */
static void test_at_bound_every_path_finite(void)
{
    char err[512] = "";
    for (int mixed = 0; mixed < 2; mixed++) {
        parts_init(&big, HL_MODEL_MAX_ABS, mixed);
        parts_init(&small, 0.1f, 1);
        hl_model *m = open_parts(&big, "big.hlm", err, sizeof err);
        hl_model *o = open_parts(&small, "small.hlm", err, sizeof err);
        CHECKF(m != NULL && o != NULL, "open: %s", err);
        if (m == NULL || o == NULL) { hl_model_close(m); hl_model_close(o); return; }
        tally ty[N_PATHS];
        all_paths(m, o, ty, err, sizeof err);
        for (int i = 0; i < N_PATHS; i++) {
            CHECKF(ty[i].lists == 8 && ty[i].short_lists == 0 && ty[i].nonfinite == 0 &&
                   ty[i].unsorted == 0, "mixed %d, %s: %d lists, %d short, %d non-finite, "
                   "%d unsorted", mixed, path_name[i], ty[i].lists, ty[i].short_lists,
                   ty[i].nonfinite, ty[i].unsorted);
        }
        /* and back: the bound model's users migrated into the small one */
        all_paths(o, m, ty, err, sizeof err);
        CHECKF(ty[P_MIGRATED].lists == 8 && ty[P_MIGRATED].nonfinite == 0,
               "mixed %d, migrated out: %d lists, %d non-finite", mixed,
               ty[P_MIGRATED].lists, ty[P_MIGRATED].nonfinite);
        hl_model_close(m);
        hl_model_close(o);
    }
}

/* One float just past the bound, in each array, is refused by the writer
 * and named (array, row, column, value). */
static void test_past_bound_refused(void)
{
    char err[512] = "";
    float past = nextafterf(HL_MODEL_MAX_ABS, INFINITY);
    struct { float *x; const char *want; } cases[] = {
        {&big.e_in[3 * D + 2], "e_in[3][2]"},
        {&big.w1[1 * W + 4], "layer_w[1][1][4]"},
        {&big.b0[5], "layer_b[0][0][5]"},
        {&big.e_out[7 * D], "e_out[7][0]"},
        {&big.bias[9], "bias[0][9]"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        parts_init(&big, 0.5f, 1);
        *cases[c].x = -past;
        hl_model *m = open_parts(&big, "past.hlm", err, sizeof err);
        CHECKF(m == NULL, "%s = %g: opened", cases[c].want, (double)-past);
        CHECKF(strstr(err, cases[c].want) != NULL && strstr(err, "256") != NULL,
               "message \"%s\" lacks \"%s\" or the bound", err, cases[c].want);
        hl_model_close(m);
    }
}

static int probe(float scale)
{
    char err[512] = "";
    for (int mixed = 0; mixed < 2; mixed++) {
        parts_init(&big, scale, mixed);
        parts_init(&small, 0.1f, 1);
        hl_model *m = open_parts(&big, "big.hlm", err, sizeof err);
        hl_model *o = open_parts(&small, "small.hlm", err, sizeof err);
        printf("scale %g, %s signs: %s\n", (double)scale, mixed ? "mixed" : "one", m ? "opened" : err);
        if (m != NULL && o != NULL) {
            tally ty[N_PATHS];
            all_paths(m, o, ty, err, sizeof err);
            print_paths(ty);
            all_paths(o, m, ty, err, sizeof err);
            printf("    (into the small model)\n");
            print_paths(ty);
        }
        hl_model_close(m);
        hl_model_close(o);
    }
    return 0;
}

/* A state beyond what the model's bound implies (a migration's map can
 * scale the remainder; nan from inf - inf): the ranker's query guard
 * (hl_encoder_query_bound) keeps every path's scores finite. */
static void test_state_beyond_bound_finite(void)
{
    char err[512] = "";
    parts_init(&big, HL_MODEL_MAX_ABS, 1);
    hl_model *m = open_parts(&big, "big.hlm", err, sizeof err);
    CHECKF(m != NULL, "open: %s", err);
    if (m == NULL) return;
    const hl_model_info *mi = hl_model_info_get(m);
    hl_qitems *qi = hl_qitems_create(hl_model_e_out(m), hl_model_bias(m), mi->n_items, mi->dim,
                                     HL_QKERNEL_AUTO, err, sizeof err);
    hl_ivf_opts io = {.iters = 4, .nlist = 8};
    hl_ivf *ivf = hl_ivf_create(hl_model_e_out(m), hl_model_bias(m), mi->n_items, mi->dim,
                                &io, err, sizeof err);
    CHECKF(qi != NULL && ivf != NULL, "tables: %s", err);
    hl_rank_opts ro[3] = {
        {.k = K, .max_batch = 8, .scoring = HL_SCORING_EXACT},
        {.k = K, .max_batch = 8, .scoring = HL_SCORING_TWO_STAGE, .qitems = qi},
        {.k = K, .max_batch = 8, .scoring = HL_SCORING_EXACT, .ivf = ivf, .nprobe = 2},
    };
    float s[H * D];
    for (int kind = 0; kind < 2; kind++) {
        for (int i = 0; i < H * D; i++)
            s[i] = kind == 0 ? 3e38f * sgn(1) : (i % 5 == 0 ? NAN : 1.0f);
        for (int p = 0; p < 3 && qi && ivf; p++) {
            tally ty = {.lo = INFINITY, .hi = -INFINITY};
            CHECKF(rank_users(m, &ro[p], s, &ty, err, sizeof err) == 0, "%s", err);
            CHECKF(ty.lists == 8 && ty.short_lists == 0 && ty.nonfinite == 0 && ty.unsorted == 0,
                   "%s state, %s: %d lists, %d short, %d non-finite, %d unsorted",
                   kind ? "nan" : "3e38", path_name[p], ty.lists, ty.short_lists,
                   ty.nonfinite, ty.unsorted);
        }
    }
    hl_ivf_destroy(ivf);
    hl_qitems_destroy(qi);
    hl_model_close(m);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/hl_test_bounds.XXXXXX");
    if (mkdtemp(tmpdir) == NULL) { perror("mkdtemp"); return 1; }
    if (getenv("HL_BOUNDS_SCALE")) {
        int rc = probe(strtof(getenv("HL_BOUNDS_SCALE"), NULL));
        rmdir(tmpdir);
        return rc;
    }
    RUN(test_at_bound_every_path_finite);
    RUN(test_past_bound_refused);
    RUN(test_state_beyond_bound_finite);
    rmdir(tmpdir);
    TEST_EXIT();
}
