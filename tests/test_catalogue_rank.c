/* test_catalogue_rank.c - the live catalogue (core/catalogue.c) in the
 * ranker: a list ranked with hidden and side items equals, item for item
 * and score for score, the list of a model that lacks the hidden items and
 * holds the side items as ordinary rows (and the plain-loop twin agrees);
 * lists stay full while items remain; an event on an added item counts as
 * seen history. Apart from test_catalogue.c, which checks the catalogue's
 * own state, because these cases need users, a table and a ranker. */
#define T_SUITE "catalogue_rank"
#include "catalogue_test_util.h"
#include "table.h"
#include "qscore.h"
#include "rank.h"

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

/* Hides the item each user likes most (up to 30 distinct ones), so the
 * mask must act inside the top-K; their rows go to hidden[]. Returns how
 * many. */
static int hide_favourites(hl_ranker *r0, hl_catalogue *c, int32_t *hidden)
{
    char err[256];
    hl_rec base[NU * K];
    int n_base[NU], n_hidden = 0;
    hl_ranker_refresh(r0, views, 1, base, n_base);   /* warm: check shapes */
    for (int u = 0; u < NU; u++)
        hl_ranker_refresh(r0, &views[u], 1, base + u * K, &n_base[u]);
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
    return n_hidden;
}

/* Three added items, strong enough to enter lists: their ids, e_out and
 * bias are what the reference model holds as ordinary rows. */
static const char *const s_ids[] = {"new-a", "new-b", "new-c"};
static const float s_bias[3] = {1.5f, 0.2f, 2.5f};

static void add_side_items(hl_catalogue *c, float *s_out, float *s_in)
{
    char err[256];
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
}

/* The masked lists (got, and naive from the plain loop) against the
 * reference model's (want), item for item and score for score; none holds
 * a hidden item. Returns how many entries are added items. */
static int compare_masked(const tm *a, const tm *b, const hl_catview *v, const hl_rec *got,
                          const hl_rec *naive, const hl_rec *want, const int *n_got,
                          const int *n_naive, const int *n_want, const int32_t *hidden,
                          int n_hidden)
{
    int side_seen = 0;
    for (int u = 0; u < NU; u++) {
        CHECKF(n_got[u] == K && n_want[u] == K && n_naive[u] == K, "user %d lengths %d %d %d",
               u, n_got[u], n_want[u], n_naive[u]);
        for (int j = 0; j < K; j++) {
            uint32_t lg, lw;
            const char *g = rec_id(a, v, got[u * K + j].item, &lg);
            const char *w = rec_id(b, NULL, want[u * K + j].item, &lw);
            side_seen += got[u * K + j].item >= N;
            CHECKF(lg == lw && memcmp(g, w, lg) == 0 && got[u * K + j].score ==
                   want[u * K + j].score, "user %d pos %d: %.*s %.9g want %.*s %.9g", u, j,
                   (int)lg, g, got[u * K + j].score, (int)lw, w, want[u * K + j].score);
            CHECK(naive[u * K + j].item == got[u * K + j].item);
            for (int i = 0; i < n_hidden; i++)
                CHECK(got[u * K + j].item != hidden[i]);
        }
    }
    return side_seen;
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
    int32_t hidden[N];
    int n_hidden = hide_favourites(r0, c, hidden);
    float s_out[3 * DIM], s_in[3 * DIM];
    add_side_items(c, s_out, s_in);
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
    int side_seen = compare_masked(&a, &b, v, got, naive, want, n_got, n_naive, n_want,
                                   hidden, n_hidden);
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
/* Model b (made with N + 1 rows): model a's rows, then new-a (s_in,
 * s_out, a bias of 50 that would top every list) as an ordinary row N. */
static void model_plus_new_a(const tm *a, tm *b, const float *s_in, const float *s_out)
{
    memcpy(b->e_in, a->e_in, (size_t)N * DIM * sizeof(float));
    memcpy(b->e_out, a->e_out, (size_t)N * DIM * sizeof(float));
    memcpy(b->bias, a->bias, (size_t)N * sizeof(float));
    memcpy(b->w, a->w, (size_t)DIM * (DIM + 1) * sizeof(float));
    memcpy(b->e_in + (size_t)N * DIM, s_in, DIM * sizeof(float));
    memcpy(b->e_out + (size_t)N * DIM, s_out, DIM * sizeof(float));
    b->bias[N] = 50.0f;
    b->lens[N] = (uint32_t)snprintf(b->ids[N], 16, "new-a");
}

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
    model_plus_new_a(&a, &b, s_in, s_out);
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
    RUN(test_masked_top_k_equals_model_without_them);
    RUN(test_masked_top_k_two_stage);
    RUN(test_masked_top_k_two_stage_plain);
    RUN(test_list_full_while_items_remain);
    RUN(test_list_full_two_stage);
    RUN(test_added_item_counts_as_seen_history);
    TEST_EXIT();
}
