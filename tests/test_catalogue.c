/* test_catalogue.c - the live catalogue (core/catalogue.c) and its hook in
 * the ranker: updates replace an item's state, tombstones forget it, the
 * bound on unknown items holds, expiry answers by event time; and a list
 * ranked with hidden and side items equals, item for item and score for
 * score, the list of a model that lacks the hidden items and holds the side
 * items as ordinary rows (and the plain-loop twin agrees). */
#define T_SUITE "catalogue"
#include "test.h"
#include "catalogue.h"
#include "table.h"
#include "qscore.h"
#include "rank.h"

#include <stdint.h>
#include <unistd.h>

#define DIM 16
#define N   300

static uint64_t rng = 0x243F6A8885A308D3ull;

static float frand(void)   /* uniform in [-1, 1) */
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)(rng >> 40) / (float)(1 << 23) - 1.0f;
}

/* A model of n items with ids "i<row>"; arrays owned here. */
typedef struct tm {
    hl_model_parts p;
    char  *ids[N + 64];
    uint32_t lens[N + 64];
    float *e_in, *e_out, *bias, *w, *b;
} tm;

static void tm_init(tm *t, int n)
{
    memset(t, 0, sizeof *t);
    hl_model_info *mi = &t->p.info;
    mi->dim = DIM;
    mi->n_heads = 1;
    mi->half_life_ms[0] = 3600e3;
    for (int i = 0; i < HL_N_TYPES; i++)
        mi->type_weight[i] = 1.0f;
    mi->n_items = n;
    mi->n_layers = 1;
    mi->layer_out[0] = DIM;
    snprintf(mi->version, sizeof mi->version, "cat-test");
    for (int r = 0; r < n; r++) {
        t->ids[r] = malloc(16);
        t->lens[r] = (uint32_t)snprintf(t->ids[r], 16, "i%d", r);
    }
    t->e_in = malloc((size_t)n * DIM * sizeof(float));
    t->e_out = malloc((size_t)n * DIM * sizeof(float));
    t->bias = malloc((size_t)n * sizeof(float));
    for (int i = 0; i < n * DIM; i++) {
        t->e_in[i] = frand();
        t->e_out[i] = frand();
    }
    for (int i = 0; i < n; i++)
        t->bias[i] = 0.3f * frand();
    t->w = malloc((size_t)DIM * (DIM + 1) * sizeof(float));
    t->b = calloc(DIM, sizeof(float));
    for (int i = 0; i < DIM * (DIM + 1); i++)
        t->w[i] = 0.5f * frand();
    t->p.layer_w[0] = t->w;
    t->p.layer_b[0] = t->b;
    t->p.item_id = (const char *const *)t->ids;
    t->p.item_id_len = t->lens;
    t->p.e_in = t->e_in;
    t->p.e_out = t->e_out;
    t->p.bias = t->bias;
}

static void tm_free(tm *t)
{
    for (int r = 0; r < t->p.info.n_items; r++)
        free(t->ids[r]);
    free(t->e_in); free(t->e_out); free(t->bias); free(t->w); free(t->b);
}

static hl_model *tm_open(const tm *t, const char *name)
{
    char path[128], err[256];
    snprintf(path, sizeof path, "/tmp/hl_test_catalogue_%d_%s.hlm", (int)getpid(), name);
    if (hl_model_write(path, &t->p, err, sizeof err) != 0) {
        printf("    write: %s\n", err);
        return NULL;
    }
    hl_model *m = hl_model_open(path, err, sizeof err);
    unlink(path);
    return m;
}

static hl_item_update upd(const char *id)
{
    return (hl_item_update){.id = id, .id_len = (uint32_t)strlen(id), .available = 1,
                            .expires_at_ms = HL_CATALOGUE_NO_EXPIRY};
}

/* ---- the table ---- */

static void test_updates_replace_and_tombstones_forget(void)
{
    tm t;
    tm_init(&t, N);
    hl_model *m = tm_open(&t, "rep");
    char err[256];
    hl_catalogue *c = hl_catalogue_create(m, 4, err, sizeof err);
    hl_catalogue_stats st;
    hl_item_update u = upd("i7");
    u.available = 0;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("i9");
    u.expires_at_ms = 5000;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    hl_catalogue_stats_get(c, &st);
    CHECK(st.hidden == 1 && st.expiring == 1 && st.added == 0);
    /* The whole state each time: i7 available again, no expiry. */
    u = upd("i7");
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    hl_catalogue_stats_get(c, &st);
    CHECK(st.hidden == 0 && st.expiring == 1);
    u = upd("i9");
    u.tombstone = 1;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    hl_catalogue_stats_get(c, &st);
    CHECK(st.hidden == 0 && st.expiring == 0);
    CHECK(hl_catalogue_version(c) == 4);
    hl_catview *v = hl_catalogue_view(c);
    int32_t out[8];
    int64_t next;
    CHECK(hl_catview_hidden_at(v, INT64_MAX - 1, out, &next) == 0);
    hl_catview_destroy(v);
    hl_catalogue_destroy(c);
    hl_model_close(m);
    tm_free(&t);
}

static void test_new_items_are_bounded(void)
{
    tm t;
    tm_init(&t, N);
    hl_model *m = tm_open(&t, "bound");
    char err[256], id[32];
    float e[DIM] = {0};
    hl_catalogue *c = hl_catalogue_create(m, 3, err, sizeof err);
    for (int i = 0; i < 3; i++) {
        snprintf(id, sizeof id, "new-%d", i);
        hl_item_update u = upd(id);
        u.e_in = u.e_out = e;
        CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    }
    hl_item_update u = upd("new-3");
    u.e_in = u.e_out = e;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == HL_EFULL);
    CHECKF(strstr(err, "catalogue.max.new.items") != NULL, "%s", err);
    u = upd("i3");                        /* a known item is never refused */
    u.e_in = u.e_out = e;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("new-0");                     /* forgetting one makes room */
    u.tombstone = 1;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("new-3");
    u.e_in = u.e_out = e;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    hl_catalogue_stats st;
    hl_catalogue_stats_get(c, &st);
    CHECK(st.added == 3 && st.overridden == 1);
    e[2] = NAN;
    u = upd("new-9");
    u.e_in = u.e_out = e;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == HL_EINVAL);
    hl_catview *v = hl_catalogue_view(c);
    CHECK(hl_catview_n_side(v) == 4);
    uint32_t len = 0;
    const char *s = hl_catview_item_id(v, hl_catview_row_find(v, "new-3", 5), &len);
    CHECK(s != NULL && len == 5 && memcmp(s, "new-3", 5) == 0);
    CHECK(hl_catview_row_find(v, "i3", 2) >= N);     /* listed under its side row */
    CHECK(hl_catview_row_find(v, "nope", 4) == -1);
    hl_catview_destroy(v);
    hl_catalogue_destroy(c);
    hl_model_close(m);
    tm_free(&t);
}

static void test_expiry_by_event_time(void)
{
    tm t;
    tm_init(&t, N);
    hl_model *m = tm_open(&t, "exp");
    char err[256];
    hl_catalogue *c = hl_catalogue_create(m, 0, err, sizeof err);
    const char *ids[] = {"i50", "i10", "i20"};
    int64_t at[] = {3000, 1000, 2000};
    for (int i = 0; i < 3; i++) {
        hl_item_update u = upd(ids[i]);
        u.expires_at_ms = at[i];
        hl_catalogue_apply(c, &u, err, sizeof err);
    }
    hl_item_update u = upd("i5");
    u.available = 0;
    hl_catalogue_apply(c, &u, err, sizeof err);
    hl_catview *v = hl_catalogue_view(c);
    int32_t out[8];
    int64_t next;
    CHECK(hl_catview_hidden_max(v) == 4);
    CHECK(hl_catview_hidden_at(v, 999, out, &next) == 1 && out[0] == 5 && next == 1000);
    CHECK(hl_catview_hidden_at(v, 1000, out, &next) == 2 && out[1] == 10 && next == 2000);
    int32_t n = hl_catview_hidden_at(v, 5000, out, &next);
    CHECK(n == 4 && out[0] == 5 && out[1] == 10 && out[2] == 20 && out[3] == 50);
    CHECK(next == HL_CATALOGUE_NO_EXPIRY);
    hl_catview_destroy(v);
    hl_catalogue_destroy(c);
    hl_model_close(m);
    tm_free(&t);
}

/* ---- the masked top-K ---- */

#define NU 40
#define K  20

typedef struct tu { float s[DIM], m[1]; } tu;
static hl_row_view views[NU];

static void users_init(tu *us)
{
    for (int u = 0; u < NU; u++) {
        memset(&us[u], 0, sizeof us[u]);
        us[u].m[0] = 1.0f + (float)u;
        for (int d = 0; d < DIM; d++)
            us[u].s[d] = us[u].m[0] * frand();
        memset(&views[u], 0, sizeof views[u]);
        views[u].user = "u";
        views[u].user_len = 1;
        views[u].s = us[u].s;
        views[u].m = us[u].m;
        views[u].history = 1;
        views[u].t_ref_ms = 1000;
    }
}

/* Model b: model a's rows minus those in hidden[], then the side rows. */
static void build_reference(const tm *a, const int32_t *hidden, int n_hidden,
                            const float *s_out, const float *s_bias, int n_side,
                            const char *const *s_ids, tm *b)
{
    int n = 0;
    tm_init(b, a->p.info.n_items - n_hidden + n_side);
    for (int r = 0; r < a->p.info.n_items; r++) {
        int h = 0;
        for (int i = 0; i < n_hidden; i++)
            h |= hidden[i] == r;
        if (h)
            continue;
        memcpy(b->e_out + (size_t)n * DIM, a->e_out + (size_t)r * DIM, DIM * sizeof(float));
        b->bias[n] = a->bias[r];
        b->lens[n] = (uint32_t)snprintf(b->ids[n], 16, "%s", a->ids[r]);
        n++;
    }
    for (int s = 0; s < n_side; s++, n++) {
        memcpy(b->e_out + (size_t)n * DIM, s_out + (size_t)s * DIM, DIM * sizeof(float));
        b->bias[n] = s_bias[s];
        b->lens[n] = (uint32_t)snprintf(b->ids[n], 16, "%s", s_ids[s]);
    }
    memcpy(b->w, a->w, (size_t)DIM * (DIM + 1) * sizeof(float));
}

static const char *rec_id(const tm *t, const hl_catview *v, int32_t row, uint32_t *len)
{
    if (v != NULL)
        return hl_catview_item_id(v, row, len);
    *len = t->lens[row];
    return t->ids[row];
}

/* scoring: HL_SCORING_EXACT or HL_SCORING_TWO_STAGE; qkernel for the
 * latter (the int8 scan's kernel). The reference is always exact. */
static void masked_top_k_equals_model_without_them(int scoring, int qkernel)
{
    tm a, b;
    tm_init(&a, N);
    hl_model *m = tm_open(&a, "mask");
    char err[256];
    hl_catalogue *c = hl_catalogue_create(m, 8, err, sizeof err);
    tu us[NU];
    users_init(us);
    hl_rank_opts ro = {.k = K, .exclude_seen = 1, .max_batch = NU, .block_items = 64};
    hl_rank_opts rs = ro;
    rs.scoring = scoring;
    rs.qkernel = qkernel;
    hl_ranker *r0 = hl_ranker_create(m, &rs, err, sizeof err);
    CHECKF(r0 != NULL, "%s", err);
    hl_rec base[NU * K];
    int n_base[NU];
    hl_ranker_refresh(r0, views, 1, base, n_base);   /* warm: check shapes */
    /* Hide the items users like most, so the mask must act inside the top-K. */
    for (int u = 0; u < NU; u++)
        hl_ranker_refresh(r0, &views[u], 1, base + u * K, &n_base[u]);
    int32_t hidden[N];
    int n_hidden = 0;
    for (int u = 0; u < NU && n_hidden < 30; u++) {
        char id[16];
        int32_t row = base[u * K].item;
        int dup = 0;
        for (int i = 0; i < n_hidden; i++)
            dup |= hidden[i] == row;
        if (dup)
            continue;
        hidden[n_hidden++] = row;
        snprintf(id, sizeof id, "i%d", row);
        hl_item_update upd_h = upd(id);
        upd_h.available = 0;
        CHECK(hl_catalogue_apply(c, &upd_h, err, sizeof err) == 0);
    }
    /* Three added items, strong enough to enter lists. */
    const char *s_ids[] = {"new-a", "new-b", "new-c"};
    float s_out[3 * DIM], s_in[3 * DIM], s_bias[3] = {1.5f, 0.2f, 2.5f};
    for (int i = 0; i < 3 * DIM; i++) {
        s_out[i] = 2.0f * frand();
        s_in[i] = frand();
    }
    for (int s = 0; s < 3; s++) {
        hl_item_update ua = upd(s_ids[s]);
        ua.e_in = s_in + s * DIM;
        ua.e_out = s_out + s * DIM;
        ua.bias = s_bias[s];
        CHECK(hl_catalogue_apply(c, &ua, err, sizeof err) == 0);
    }
    hl_catview *v = hl_catalogue_view(c);
    int32_t hrows[N];
    int64_t next;
    hl_rank_catalogue rc = {.hidden = hrows, .n_hidden = hl_catview_hidden_at(v, 0, hrows, &next),
                            .e_in = hl_catview_side_e_in(v), .e_out = hl_catview_side_e_out(v),
                            .bias = hl_catview_side_bias(v), .n_side = hl_catview_n_side(v)};
    CHECK(rc.n_hidden == n_hidden && rc.n_side == 3);
    hl_ranker_set_catalogue(r0, &rc);
    hl_rec got[NU * K], naive[NU * K], want[NU * K];
    int n_got[NU], n_naive[NU], n_want[NU];
    CHECK(hl_ranker_refresh(r0, views, NU, got, n_got) == 0);
    CHECK(hl_ranker_refresh_naive(r0, views, NU, NULL, naive, n_naive) == 0);

    build_reference(&a, hidden, n_hidden, s_out, s_bias, 3, s_ids, &b);
    hl_ranker *r1 = hl_ranker_create_parts(&b.p, &ro, err, sizeof err);
    CHECK(hl_ranker_refresh(r1, views, NU, want, n_want) == 0);
    int side_seen = 0;
    for (int u = 0; u < NU; u++) {
        CHECKF(n_got[u] == K && n_want[u] == K && n_naive[u] == K, "user %d lengths %d %d %d",
               u, n_got[u], n_want[u], n_naive[u]);
        for (int j = 0; j < K; j++) {
            uint32_t lg, lw;
            const char *g = rec_id(&a, v, got[u * K + j].item, &lg);
            const char *w = rec_id(&b, NULL, want[u * K + j].item, &lw);
            side_seen += got[u * K + j].item >= N;
            CHECKF(lg == lw && memcmp(g, w, lg) == 0 && got[u * K + j].score ==
                   want[u * K + j].score, "user %d pos %d: %.*s %.9g want %.*s %.9g", u, j,
                   (int)lg, g, got[u * K + j].score, (int)lw, w, want[u * K + j].score);
            CHECK(naive[u * K + j].item == got[u * K + j].item);
            for (int i = 0; i < n_hidden; i++)
                CHECK(got[u * K + j].item != hidden[i]);
        }
    }
    CHECKF(side_seen > 0, "no added item reached any list: the test shows nothing");
    CHECKF(hl_ranker_fallbacks(r0) == 0, "%s: %llu users rescanned: the scan was not tested",
           hl_ranker_scoring(r0), (unsigned long long)hl_ranker_fallbacks(r0));
    hl_ranker_destroy(r0);
    hl_ranker_destroy(r1);
    hl_catview_destroy(v);
    hl_catalogue_destroy(c);
    hl_model_close(m);
    tm_free(&a);
    tm_free(&b);
}

static void test_masked_top_k_equals_model_without_them(void)
{
    masked_top_k_equals_model_without_them(HL_SCORING_EXACT, HL_QKERNEL_AUTO);
}

static void test_masked_top_k_two_stage(void)
{
    masked_top_k_equals_model_without_them(HL_SCORING_TWO_STAGE, HL_QKERNEL_AUTO);
}

static void test_masked_top_k_two_stage_plain(void)
{
    masked_top_k_equals_model_without_them(HL_SCORING_TWO_STAGE, HL_QKERNEL_PLAIN);
}

/* With almost everything hidden the list is as long as what is left. */
static void list_full_while_items_remain(int scoring)
{
    tm a;
    tm_init(&a, 40);
    hl_model *m = tm_open(&a, "full");
    char err[256];
    tu us[NU];
    users_init(us);
    hl_rank_opts ro = {.k = K, .exclude_seen = 1, .max_batch = NU, .block_items = 16,
                       .scoring = scoring};
    hl_ranker *r = hl_ranker_create(m, &ro, err, sizeof err);
    int32_t hid[40];
    for (int i = 0; i < 25; i++)
        hid[i] = i;                                      /* 15 remain */
    hl_rank_catalogue rc = {.hidden = hid, .n_hidden = 25};
    hl_ranker_set_catalogue(r, &rc);
    hl_rec got[NU * K];
    int n_got[NU];
    CHECK(hl_ranker_refresh(r, views, NU, got, n_got) == 0);
    for (int u = 0; u < NU; u++) {
        CHECK(n_got[u] == 15);
        for (int j = 0; j < n_got[u]; j++)
            CHECK(got[u * K + j].item >= 25);
    }
    rc.n_hidden = 20;                                    /* 20 remain: k = 20 */
    hl_ranker_set_catalogue(r, &rc);
    CHECK(hl_ranker_refresh(r, views, NU, got, n_got) == 0);
    for (int u = 0; u < NU; u++)
        CHECK(n_got[u] == K);
    hl_ranker_destroy(r);
    hl_model_close(m);
    tm_free(&a);
}

static void test_list_full_while_items_remain(void)
{
    list_full_while_items_remain(HL_SCORING_EXACT);
}

static void test_list_full_two_stage(void)
{
    list_full_while_items_remain(HL_SCORING_TWO_STAGE);
}

/* Reverses t's item order (ids and vectors move together): a retrained
 * model whose rows are not the old one's. */
static void tm_reverse(tm *t)
{
    int n = t->p.info.n_items;
    for (int i = 0, j = n - 1; i < j; i++, j--) {
        char *id = t->ids[i]; t->ids[i] = t->ids[j]; t->ids[j] = id;
        uint32_t l = t->lens[i]; t->lens[i] = t->lens[j]; t->lens[j] = l;
        for (int d = 0; d < DIM; d++) {
            float x = t->e_in[i * DIM + d];
            t->e_in[i * DIM + d] = t->e_in[j * DIM + d];
            t->e_in[j * DIM + d] = x;
        }
    }
}

static int32_t row_of(const hl_model *m, const char *id)
{
    return hl_model_item_find(m, id, strlen(id));
}

/* A swap to a model with other rows in another order: the hide and the
 * expiry follow their items by id; the added item the new model does not
 * know keeps its vectors (listed, found by key); the override of a known
 * item and the embedding of an added item the new model learned are
 * dropped and counted (the model's vectors win). */
static void test_rebind_follows_ids(void)
{
    tm a, b;
    tm_init(&a, N);
    tm_init(&b, N + 10);                  /* knows i300..i309 too */
    tm_reverse(&b);
    hl_model *ma = tm_open(&a, "fa"), *mb = tm_open(&b, "fb");
    char err[256];
    float e[DIM] = {1}, e2[DIM] = {2};
    hl_catalogue *c = hl_catalogue_create(ma, 8, err, sizeof err);
    hl_item_update u = upd("i305");       /* unknown to a, known to b */
    u.e_in = u.e_out = e;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("new-x");                     /* unknown to both */
    u.e_in = u.e_out = e2;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("i7");                        /* an override of a known item */
    u.e_in = u.e_out = e;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("i4");
    u.available = 0;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("i9");
    u.expires_at_ms = 1000;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    hl_catalogue_rebind_stats rs;
    CHECK(hl_catalogue_rebind(c, mb, &rs) == 0);
    CHECK(rs.dropped_known == 2 && rs.dropped_dim == 0);
    hl_model_close(ma);                   /* nothing may point into it now */
    hl_catalogue_stats st;
    hl_catalogue_stats_get(c, &st);
    CHECK(st.added == 1 && st.overridden == 0 && st.hidden == 1 && st.expiring == 1);
    hl_catview *v = hl_catalogue_view(c);
    int32_t out[8], nb = N + 10;
    int64_t next;
    CHECK(hl_catview_hidden_at(v, 999, out, &next) == 1 && out[0] == row_of(mb, "i4"));
    CHECK(next == 1000);
    int32_t n = hl_catview_hidden_at(v, 1000, out, &next);
    CHECK(n == 2 && out[0] == row_of(mb, "i9") && out[1] == row_of(mb, "i4"));
    CHECK(hl_catview_n_side(v) == 1 && hl_catview_side_e_in(v)[0] == 2.0f);
    CHECK(hl_catview_added_row(v, hl_item_key("new-x", 5)) == nb);
    CHECK(hl_catview_added_row(v, hl_item_key("i305", 4)) == -1);
    CHECK(hl_catview_row_find(v, "i305", 4) == row_of(mb, "i305"));
    uint32_t len;
    const char *id = hl_catview_item_id(v, nb, &len);
    CHECK(id != NULL && len == 5 && memcmp(id, "new-x", 5) == 0);
    hl_catview_destroy(v);
    hl_catalogue_destroy(c);
    hl_model_close(mb);
    tm_free(&a);
    tm_free(&b);
}

/* Another dim: embeddings of unknown items are dropped and counted, hides
 * stay, and later embeddings are kept at the new width. */
static void test_rebind_to_other_dim(void)
{
    tm a, c3;
    tm_init(&a, N);
    tm_init(&c3, N);
    c3.p.info.dim = DIM / 2;
    c3.p.info.layer_out[0] = DIM / 2;
    hl_model *ma = tm_open(&a, "da"), *mc = tm_open(&c3, "dc");
    char err[256];
    float e[DIM] = {1};
    hl_catalogue *c = hl_catalogue_create(ma, 8, err, sizeof err);
    hl_item_update u = upd("new-y");
    u.e_in = u.e_out = e;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("i4");
    u.available = 0;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    hl_catalogue_rebind_stats rs;
    CHECK(mc != NULL && hl_catalogue_rebind(c, mc, &rs) == 0);
    CHECK(rs.dropped_dim == 1 && rs.dropped_known == 0);
    hl_catalogue_stats st;
    hl_catalogue_stats_get(c, &st);
    CHECK(st.added == 0 && st.overridden == 0 && st.hidden == 1);
    float e2[DIM / 2] = {2};
    u = upd("brand-new");
    u.e_in = u.e_out = e2;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    hl_catview *v = hl_catalogue_view(c);
    CHECK(hl_catview_n_side(v) == 1 && hl_catview_side_e_out(v)[0] == 2.0f);
    CHECK(hl_catview_added_row(v, hl_item_key("new-y", 5)) == -1);
    CHECK(hl_catview_added_row(v, hl_item_key("brand-new", 9)) == N);
    hl_catview_destroy(v);
    hl_catalogue_destroy(c);
    hl_model_close(ma);
    hl_model_close(mc);
    tm_free(&a);
    tm_free(&c3);
}

/* Fold-in records (foldin_events > 0) add unknown items and replace one
 * another, but never an operator's record nor a model item; an operator's
 * record replaces a fold-in one. hl_catalogue_foldin_state says which. */
static void test_foldin_never_overrides_an_operator(void)
{
    tm t;
    tm_init(&t, N);
    hl_model *m = tm_open(&t, "fold");
    char err[256];
    float e[DIM] = {1};
    hl_catalogue *c = hl_catalogue_create(m, 8, err, sizeof err);
    hl_catalogue_stats st;
    hl_item_update u = upd("new-f");
    u.e_in = u.e_out = e;
    u.foldin_events = 5;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    CHECK(hl_catalogue_foldin_state(c, "new-f", 5) == 5);
    u.foldin_events = 10;                         /* a later publication replaces it */
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    CHECK(hl_catalogue_foldin_state(c, "new-f", 5) == 10);
    hl_catalogue_stats_get(c, &st);
    CHECK(st.foldin == 1 && st.added == 0);
    u = upd("i4");                                /* the model knows it */
    u.e_in = u.e_out = e;
    u.foldin_events = 5;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == HL_CATALOGUE_IGNORED);
    CHECK(hl_catalogue_foldin_state(c, "i4", 2) == -1);
    u = upd("new-o");                             /* an operator hid it first */
    u.available = 0;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("new-o");
    u.e_in = u.e_out = e;
    u.foldin_events = 50;
    uint64_t ver = hl_catalogue_version(c);
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == HL_CATALOGUE_IGNORED);
    CHECK(hl_catalogue_version(c) == ver && hl_catalogue_foldin_state(c, "new-o", 5) == -1);
    u = upd("new-f");                             /* an operator takes over new-f */
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    CHECK(hl_catalogue_foldin_state(c, "new-f", 5) == -1);
    CHECK(hl_catalogue_foldin_state(c, "never", 5) == 0);
    hl_catalogue_stats_get(c, &st);
    CHECK(st.foldin == 0 && st.added == 0 && st.hidden == 1);
    hl_catalogue_destroy(c);
    hl_model_close(m);
    tm_free(&t);
}

/* Two keys: a compacted topic keeps the newest record per key, and after
 * delete.retention.ms not even the tombstones. The catalogue's state must
 * be the same whether it read every record or only what compaction left:
 * random logs over three new items, operator records (with vectors, hidden,
 * or plain) under the item_id, fold-in records under the fold-in key, and
 * tombstones under either, read whole, compacted, and compacted without
 * tombstones. The race of issue 11 (an operator's record and a fold-in one
 * written at the same moment, the fold-in one landing later) is one of
 * the logs: the operator's stays in effect in all three. */
typedef struct logrec { int item, key, kind; float v; } logrec;  /* kind 0 tombstone */

static void apply_log(hl_catalogue *c, const logrec *lg, int n, int skip_tombstones)
{
    static const char *ids[3] = {"new-a", "new-b", "new-c"};
    char err[256];
    for (int i = 0; i < n; i++) {
        float e[DIM] = {0};
        e[0] = lg[i].v;
        e[1] = 1.0f;
        hl_item_update u = upd(ids[lg[i].item]);
        u.foldin_key = lg[i].key;
        if (lg[i].kind == 0 && skip_tombstones)
            continue;
        u.tombstone = lg[i].kind == 0;
        if (lg[i].kind == 2 || lg[i].key == 1)
            u.e_in = u.e_out = e;
        u.available = lg[i].kind != 3;
        u.foldin_events = lg[i].key == 1 ? 5 + (int64_t)lg[i].v : 0;
        int rc = hl_catalogue_apply(c, &u, err, sizeof err);
        CHECKF(rc == 0 || rc == HL_CATALOGUE_IGNORED, "record %d: %s", i, err);
    }
}

/* One line per item: its row kind, e_out[0], hidden, fold-in state. */
static void describe(const hl_catalogue *c, char *out, size_t cap)
{
    static const char *ids[3] = {"new-a", "new-b", "new-c"};
    hl_catview *v = hl_catalogue_view(c);
    int32_t hid[64], nh = 0;
    int64_t next;
    size_t used = 0;
    if (v != NULL)
        nh = hl_catview_hidden_at(v, 0, hid, &next);
    for (int i = 0; v != NULL && i < 3; i++) {
        int32_t row = hl_catview_row_find(v, ids[i], 5);
        int hidden = 0;
        for (int k = 0; k < nh; k++)
            hidden |= hid[k] == row;
        float e0 = row >= hl_catview_n_model(v) ?
                   hl_catview_side_e_out(v)[(size_t)(row - hl_catview_n_model(v)) * DIM] : 0;
        used += (size_t)snprintf(out + used, cap - used, "%s row %d e0 %g hidden %d fold %lld; ",
                                 ids[i], row >= 0, (double)e0, hidden,
                                 (long long)hl_catalogue_foldin_state(c, ids[i], 5));
    }
    hl_catview_destroy(v);
}

static void test_two_keys_survive_compaction(void)
{
    tm t;
    tm_init(&t, N);
    hl_model *m = tm_open(&t, "keys");
    char err[256], full[512], comp[512], bare[512];
    int bad = 0;
    for (int run = 0; run < 300; run++) {
        logrec lg[24], kept[24];
        int n = run == 0 ? 2 : 6 + (int)(frand() * 8 + 8), nk = 0;
        for (int i = 0; i < n; i++) {
            int r = (int)((frand() + 1.0f) * 50.0f);
            lg[i] = (logrec){r % 3, (r / 3) % 2, (r / 6) % 4, (float)(i + 1)};
            if (lg[i].key == 1 && lg[i].kind != 0)
                lg[i].kind = 2;                   /* fold-in: vectors, available */
        }
        if (run == 0) {                           /* the race: operator's, then fold-in's */
            lg[0] = (logrec){0, 0, 2, 7.0f};
            lg[1] = (logrec){0, 1, 2, 9.0f};
        }
        for (int i = 0; i < n; i++) {             /* compaction: the newest per key */
            int newest = 1;
            for (int j = i + 1; j < n; j++)
                newest &= !(lg[j].item == lg[i].item && lg[j].key == lg[i].key);
            if (newest)
                kept[nk++] = lg[i];
        }
        hl_catalogue *a = hl_catalogue_create(m, 8, err, sizeof err);
        hl_catalogue *b = hl_catalogue_create(m, 8, err, sizeof err);
        hl_catalogue *c = hl_catalogue_create(m, 8, err, sizeof err);
        apply_log(a, lg, n, 0);
        apply_log(b, kept, nk, 0);
        apply_log(c, kept, nk, 1);
        describe(a, full, sizeof full);
        describe(b, comp, sizeof comp);
        describe(c, bare, sizeof bare);
        if (strcmp(full, comp) != 0 || strcmp(full, bare) != 0) {
            if (bad++ == 0)
                printf("    run %d:\n    read whole: %s\n    compacted:  %s\n    no "
                       "tombstones: %s\n", run, full, comp, bare);
        }
        if (run == 0)
            CHECKF(strstr(full, "new-a row 1 e0 7 hidden 0 fold -1") != NULL,
                   "the operator's record lost the race: %s", full);
        hl_catalogue_destroy(a);
        hl_catalogue_destroy(b);
        hl_catalogue_destroy(c);
    }
    CHECKF(bad == 0, "%d of 300 logs read differently once compacted", bad);
    hl_model_close(m);
    tm_free(&t);
}

/* ---- added items in a user's state ---- */

static hl_table *one_head_table(void)
{
    hl_table_opts o = {.history = 8, .expected_users = 4};
    double half[1] = {3600e3};
    char err[256];
    hl_decay_init(&o.decay, 1, DIM, half, err, sizeof err);
    return hl_table_create(&o, err, sizeof err);
}

/* u's events: model items i3, i8 and the added item new-a (row -1 in a,
 * x from the view; row N in b, an ordinary item). */
static void apply_user(hl_table *tbl, const hl_model *m, const float *x_new)
{
    const char *ids[] = {"i3", "new-a", "i8", "new-a"};
    for (int i = 0; i < 4; i++) {
        size_t len = strlen(ids[i]);
        hl_event ev = {.user = "u", .user_len = 1, .item = hl_model_item_find(m, ids[i], len),
                       .item_key = hl_item_key(ids[i], len), .type = HL_CLICK,
                       .w = 1.0f + (float)i, .ts_ms = 1000 + i * 60000, .offset = i,
                       .x = x_new != NULL && i % 2 ? x_new : NULL};
        if (ev.x != NULL)
            ev.item = HL_ITEM_ADDED;
        CHECK(hl_table_apply(tbl, &ev, 1, hl_model_e_in(m), hl_model_info_get(m)->n_items,
                             NULL) == 1);
    }
}

/* An event on an item the catalogue added adds the view's e_in to the
 * user's heads, and with the added row excluded (what the worker does for
 * such ring entries) the user's list is the list of a model that holds
 * the item as an ordinary row, item for item and score for score. */
static void test_added_item_counts_as_seen_history(void)
{
    tm a, b;
    tm_init(&a, N);
    tm_init(&b, N + 1);
    float s_in[DIM], s_out[DIM];
    for (int d = 0; d < DIM; d++) {
        s_in[d] = frand();
        s_out[d] = frand();
    }
    memcpy(b.e_in, a.e_in, (size_t)N * DIM * sizeof(float));
    memcpy(b.e_out, a.e_out, (size_t)N * DIM * sizeof(float));
    memcpy(b.bias, a.bias, (size_t)N * sizeof(float));
    memcpy(b.w, a.w, (size_t)DIM * (DIM + 1) * sizeof(float));
    memcpy(b.e_in + (size_t)N * DIM, s_in, sizeof s_in);
    memcpy(b.e_out + (size_t)N * DIM, s_out, sizeof s_out);
    b.bias[N] = 50.0f;                      /* would top every list */
    b.lens[N] = (uint32_t)snprintf(b.ids[N], 16, "new-a");
    hl_model *ma = tm_open(&a, "sa"), *mb = tm_open(&b, "sb");
    char err[256];
    hl_catalogue *c = hl_catalogue_create(ma, 8, err, sizeof err);
    hl_item_update u = upd("new-a");
    u.e_in = s_in;
    u.e_out = s_out;
    u.bias = 50.0f;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    hl_catview *v = hl_catalogue_view(c);
    int32_t row = hl_catview_added_row(v, hl_item_key("new-a", 5));
    CHECK(row == N);
    hl_table *ta = one_head_table(), *tb = one_head_table();
    apply_user(ta, ma, hl_catview_side_e_in(v) + (size_t)(row - N) * DIM);
    apply_user(tb, mb, NULL);
    hl_row_view va, vb;
    hl_table_view(ta, 0, &va);
    hl_table_view(tb, 0, &vb);
    CHECK(memcmp(va.s, vb.s, DIM * sizeof(float)) == 0 && va.m[0] == vb.m[0]);
    hl_rank_opts ro = {.k = K, .exclude_seen = 1, .max_batch = 1};
    hl_ranker *ra = hl_ranker_create(ma, &ro, err, sizeof err);
    hl_ranker *rb = hl_ranker_create(mb, &ro, err, sizeof err);
    hl_rank_catalogue rc = {.e_in = hl_catview_side_e_in(v), .e_out = hl_catview_side_e_out(v),
                            .bias = hl_catview_side_bias(v), .n_side = hl_catview_n_side(v)};
    hl_ranker_set_catalogue(ra, &rc);
    hl_rec got[K], want[K], plain[K];
    int n_got, n_want, n_plain;
    hl_rank_exclude ex = {.item = &row, .n = 1};
    CHECK(hl_ranker_refresh(ra, &va, 1, plain, &n_plain) == 0);
    CHECK(hl_ranker_refresh_ex(ra, &va, 1, &ex, got, &n_got) == 0);
    CHECK(hl_ranker_refresh(rb, &vb, 1, want, &n_want) == 0);
    CHECKF(n_plain > 0 && plain[0].item == N, "new-a is not first unexcluded: the test "
           "shows nothing");
    CHECK(n_got == K && n_want == K);
    for (int j = 0; j < K && n_got == K; j++)
        CHECKF(got[j].item == want[j].item && got[j].item != N &&
               got[j].score == want[j].score, "pos %d: row %d %.9g want row %d %.9g", j,
               got[j].item, got[j].score, want[j].item, want[j].score);
    hl_ranker_destroy(ra);
    hl_ranker_destroy(rb);
    hl_table_destroy(ta);
    hl_table_destroy(tb);
    hl_catview_destroy(v);
    hl_catalogue_destroy(c);
    hl_model_close(ma);
    hl_model_close(mb);
    tm_free(&a);
    tm_free(&b);
}

int main(void)
{
    RUN(test_foldin_never_overrides_an_operator);
    RUN(test_two_keys_survive_compaction);
    RUN(test_updates_replace_and_tombstones_forget);
    RUN(test_new_items_are_bounded);
    RUN(test_expiry_by_event_time);
    RUN(test_masked_top_k_equals_model_without_them);
    RUN(test_masked_top_k_two_stage);
    RUN(test_masked_top_k_two_stage_plain);
    RUN(test_list_full_while_items_remain);
    RUN(test_list_full_two_stage);
    RUN(test_rebind_follows_ids);
    RUN(test_rebind_to_other_dim);
    RUN(test_added_item_counts_as_seen_history);
    TEST_EXIT();
}
