/* test_rank.c - the blocked ranker against its plain-loop twin (items,
 * order, scores within 1e-4, because), on random models, with exclusions,
 * ties, short lists and odd block sizes; and hand-checked cases, the
 * exclusion window (recs.exclude.seen.events) on every scoring path. */
#define T_SUITE "rank"
#include "test.h"
#define RNG_SEED 0x9E3779B97F4A7C15ull
#include "rank_util.h"
#include "encoder.h"
#include "rank_internal.h"     /* hl_rank_history_weights */

#include <stdint.h>
#include <unistd.h>

/* A user row in memory with a random state and a random ring. */
#define T_MAX_HEADS 3
#define T_MAX_DIM   64
#define T_RING      32
typedef struct tuser {
    float   s[T_MAX_HEADS * T_MAX_DIM], m[T_MAX_HEADS];
    int32_t item[T_RING];
    uint8_t type[T_RING];
    int64_t ts[T_RING];
    float   w[T_RING];
    hl_row_view v;
} tuser;

static void tuser_init(tuser *u, const tmodel *t, int n_hist)
{
    int dim = t->p.info.dim, n_heads = t->p.info.n_heads;
    memset(u, 0, sizeof *u);
    /* s_h = m_h x (a mean of unit-scale vectors), as the decay code makes
     * it; some heads have faded below the encoder's eps. */
    for (int h = 0; h < n_heads; h++) {
        u->m[h] = urand() % 5 == 0 ? 1e-8f : 0.1f + 3.0f * (frand() + 1.0f);
        for (int d = 0; d < dim; d++)
            u->s[h * dim + d] = u->m[h] * frand();
    }
    u->v.user = "u";
    u->v.user_len = 1;
    u->v.s = u->s;
    u->v.m = u->m;
    u->v.t_ref_ms = 1000000000;
    u->v.history = T_RING;
    u->v.n_hist = n_hist;
    u->v.hist_head = (int)(urand() % T_RING);
    u->v.hist_item = u->item;
    u->v.hist_type = u->type;
    u->v.hist_ts_ms = u->ts;
    /* The weights the events were applied with: mostly known (a rating
     * times the type weight), some unknown (a ring restored from a
     * format-1 snapshot), and now and then a view without any (restore). */
    u->v.hist_w = urand() % 8 == 0 ? NULL : u->w;
    for (int i = 0; i < T_RING; i++) {
        uint32_t z = urand() % 20;
        /* Mostly known items, some unknown (-1) and some beyond the model. */
        u->item[i] = z == 0 ? -1 : z == 1 ? t->p.info.n_items + 5
                   : (int32_t)(urand() % (uint32_t)t->p.info.n_items);
        u->type[i] = (uint8_t)(urand() % HL_N_TYPES);
        u->ts[i] = u->v.t_ref_ms - (int64_t)(urand() % 100000000);
        u->w[i] = urand() % 6 == 0 ? NAN : 5.0f * (frand() + 1.0f);
    }
}

static int in_ring(const hl_row_view *v, int32_t item)
{
    for (int i = 0; i < v->n_hist; i++)
        if (v->hist_item[hl_row_hist_index(v, i)] == item)
            return 1;
    return 0;
}

static int in_list(const hl_rank_exclude *ex, int32_t item)
{
    for (int i = 0; ex && i < ex->n; i++)
        if (ex->item[i] == item)
            return 1;
    return 0;
}

/* Runs the fast and the naive ranker on users and compares them. Returns
 * the total number of recs so callers can check the lists were not empty. */
static int compare(hl_ranker *r, const tuser *users, int n, int k,
                   const hl_rank_exclude *extra, int exclude_seen)
{
    hl_row_view v[256];
    hl_rec *a = calloc((size_t)n * k, sizeof *a), *b = calloc((size_t)n * k, sizeof *b);
    int na[256], nb[256], total = 0, near_ties = 0;

    for (int u = 0; u < n; u++)
        v[u] = users[u].v;
    CHECK(hl_ranker_refresh_ex(r, v, n, extra, a, na) == 0);
    CHECK(hl_ranker_refresh_naive(r, v, n, extra, b, nb) == 0);
    for (int u = 0; u < n && !t_case_failed; u++) {
        CHECKF(na[u] == nb[u], "user %d: %d recs, naive %d", u, na[u], nb[u]);
        for (int j = 0; j < na[u] && j < nb[u] && !t_case_failed; j++) {
            const hl_rec *x = &a[(size_t)u * k + j], *y = &b[(size_t)u * k + j];
            CHECKF(fabsf(x->score - y->score) <= 1e-4f * fmaxf(1.0f, fabsf(y->score)),
                   "user %d rank %d: score %.7g, naive %.7g", u, j, x->score, y->score);
            if (x->item != y->item && fabsf(x->score - y->score) < 2e-5f) {
                near_ties++;   /* rounding may order near-equal scores either way */
                continue;
            }
            CHECKF(x->item == y->item, "user %d rank %d: item %d, naive %d",
                   u, j, x->item, y->item);
            CHECKF(x->because == y->because, "user %d rank %d: because %d, naive %d",
                   u, j, x->because, y->because);
            CHECK(!(exclude_seen && in_ring(&v[u], x->item)));
            CHECK(!in_list(extra ? &extra[u] : NULL, x->item));
            if (j > 0)
                CHECK(x->score <= a[(size_t)u * k + j - 1].score);
        }
        total += na[u];
    }
    CHECKF(near_ties <= 2, "%d near ties", near_ties);
    free(a);
    free(b);
    return total;
}

static hl_ranker *make_ranker(const tmodel *t, int k, int exclude_seen,
                              int max_batch, int block)
{
    char err[256] = "";
    hl_rank_opts o = {.k = k, .exclude_seen = exclude_seen,
                      .max_batch = max_batch, .block_items = block};
    hl_ranker *r = hl_ranker_create_parts(&t->p, &o, err, sizeof err);
    CHECKF(r != NULL, "create: %s", err);
    return r;
}

static void run_random(int32_t n_items, int dim, int n_heads, int n_hidden,
                       int k, int n_users, int block, int exclude_seen)
{
    tmodel t;
    tuser *users = malloc((size_t)n_users * sizeof *users);
    tmodel_init(&t, n_items, dim, n_heads, n_hidden, 48);
    for (int u = 0; u < n_users; u++)
        tuser_init(&users[u], &t, u % 4 == 0 ? 0 : (int)(urand() % (T_RING + 1)));
    hl_ranker *r = make_ranker(&t, k, exclude_seen, n_users, block);
    if (r != NULL)
        CHECK(compare(r, users, n_users, k, NULL, exclude_seen) > 0);
    hl_ranker_destroy(r);
    free(users);
    tmodel_free(&t);
}

static void test_random_models_match_naive(void)
{
    run_random(3000, 16, 3, 1, 10, 37, 0, 1);     /* default block, partial last */
    run_random(1000, 64, 3, 1, 20, 64, 37, 1);    /* block not a multiple of 8 */
    run_random(5000, 8, 1, 0, 50, 5, 1024, 1);    /* no hidden layer */
    run_random(777, 32, 2, 2, 1, 1, 100, 1);      /* k = 1, one user */
    run_random(2000, 16, 3, 1, 10, 20, 0, 0);     /* seen items allowed */
    run_random(300, 16, 3, 1, 10, 256, 5000, 1);  /* block > n_items */
}

/* k larger than what remains: the list is every non-excluded item. */
static void test_short_lists(void)
{
    tmodel t;
    tuser users[3];
    int32_t ex_items[60];
    hl_rank_exclude ex[3] = {{NULL, 0}, {ex_items, 0}, {ex_items, 60}};
    tmodel_init(&t, 40, 8, 2, 1, 16);
    for (int i = 0; i < 60; i++)
        ex_items[i] = i < 37 ? i : i == 37 ? -3 : 1000 + i;   /* junk is ignored */
    for (int u = 0; u < 3; u++)
        tuser_init(&users[u], &t, u == 0 ? 0 : T_RING);
    hl_ranker *r = make_ranker(&t, 50, 1, 3, 16);
    if (r != NULL) {
        compare(r, users, 3, 50, ex, 1);
        hl_row_view v[3] = {users[0].v, users[1].v, users[2].v};
        hl_rec out[150];
        int n_out[3];
        CHECK(hl_ranker_refresh_ex(r, v, 3, ex, out, n_out) == 0);
        CHECK(n_out[0] == 40);
        int distinct = 0;
        for (int32_t j = 0; j < 40; j++)
            distinct += in_ring(&v[1], j);
        CHECKF(n_out[1] == 40 - distinct, "n_out %d, want %d", n_out[1], 40 - distinct);
        CHECK(n_out[2] <= 3);
    }
    hl_ranker_destroy(r);
    tmodel_free(&t);
}

/* Items with e_out = 0 and one shared bias score exactly the bias: the
 * tied items must come out lowest row first, excluded ones skipped. */
static void test_ties_lower_row_first(void)
{
    tmodel t;
    tuser users[4];
    tmodel_init(&t, 2000, 16, 3, 1, 32);
    for (int32_t j = 0; j < 2000; j++)
        if (j % 7 == 3) {
            memset(t.e_out + (size_t)j * 16, 0, 16 * sizeof(float));
            t.bias[j] = 1000.0f;
        }
    for (int u = 0; u < 4; u++)
        tuser_init(&users[u], &t, T_RING);
    users[1].item[users[1].v.hist_head] = 3;     /* the first tied item is seen */
    hl_ranker *r = make_ranker(&t, 12, 1, 4, 64);
    if (r != NULL) {
        compare(r, users, 4, 12, NULL, 1);
        hl_row_view v[4] = {users[0].v, users[1].v, users[2].v, users[3].v};
        hl_rec out[48];
        int n_out[4];
        CHECK(hl_ranker_refresh(r, v, 4, out, n_out) == 0);
        for (int u = 0; u < 4; u++) {
            int32_t want = 3;
            for (int j = 0; j < n_out[u]; j++, want += 7) {
                while (in_ring(&v[u], want))
                    want += 7;
                CHECKF(out[u * 12 + j].item == want && out[u * 12 + j].score == 1000.0f,
                       "user %d rank %d: item %d score %g, want %d", u, j,
                       out[u * 12 + j].item, out[u * 12 + j].score, want);
            }
        }
    }
    hl_ranker_destroy(r);
    tmodel_free(&t);
}

/* because by hand: item 2 points along e_in[0], item 3 away from both. */
static void test_because_by_hand(void)
{
    tmodel t;
    tuser u;
    tmodel_init(&t, 4, 2, 1, 0, 0);
    float e_in[8] = {1, 0, 0, 1, 0, 0, 0, 0};
    float e_out[8] = {0, 0, 0, 0, 1, 0.1f, -1, -1};
    float bias[4] = {-100, -100, 5, 4};
    memcpy(t.e_in, e_in, sizeof e_in);
    memcpy(t.e_out, e_out, sizeof e_out);
    memcpy(t.bias, bias, sizeof bias);
    tuser_init(&u, &t, 2);
    u.v.hist_head = 0;
    u.item[0] = 0; u.type[0] = HL_VIEW; u.ts[0] = u.v.t_ref_ms - 3600000;
    u.item[1] = 1; u.type[1] = HL_VIEW; u.ts[1] = u.v.t_ref_ms;
    u.w[0] = u.w[1] = 1.0f;                     /* VIEW's weight in tmodel */
    u.m[0] = 1.5f;
    hl_ranker *r = make_ranker(&t, 4, 1, 1, 0);
    if (r != NULL) {
        hl_rec out[4];
        int n_out;
        CHECK(hl_ranker_refresh(r, &u.v, 1, out, &n_out) == 0);
        CHECK(n_out == 2);
        /* item 2: c = a_0 x 1 for history item 0 and a_1 x 0.1 for item 1,
         * with a_0 = 0.5/1.5 and a_1 = 1/1.5: item 0 wins (0.33 > 0.067). */
        CHECK(out[0].item == 2 && out[0].because == 0);
        CHECK(out[1].item == 3 && out[1].because == -1);
        compare(r, &u, 1, 4, NULL, 1);
    }
    hl_ranker_destroy(r);
    tmodel_free(&t);
}

/* because weighs each event by the weight it was applied with (its
 * rating times its type weight), not by its type weight alone: two RATE
 * events at the same time on items 0 and 1, which item 2 points to
 * equally, rated 5 and 1. The heavier one explains item 2 although the
 * lighter one is newer (which wins a tie). An entry whose weight is
 * unknown (NAN: a ring from a format-1 snapshot) counts with its type
 * weight, as before. */
static void test_because_weighs_each_event(void)
{
    tmodel t;
    tuser u;
    tmodel_init(&t, 4, 2, 1, 0, 0);
    float e_in[8] = {1, 0, 0, 1, 0, 0, 0, 0};
    float e_out[8] = {0, 0, 0, 0, 1, 1, -1, -1};
    float bias[4] = {-100, -100, 5, 4};
    memcpy(t.e_in, e_in, sizeof e_in);
    memcpy(t.e_out, e_out, sizeof e_out);
    memcpy(t.bias, bias, sizeof bias);
    tuser_init(&u, &t, 2);
    u.v.hist_head = 0;
    u.v.hist_w = u.w;
    float rate_w = t.p.info.type_weight[HL_RATE];
    u.item[0] = 1; u.type[0] = HL_RATE; u.ts[0] = u.v.t_ref_ms; u.w[0] = 5.0f * rate_w;
    u.item[1] = 0; u.type[1] = HL_RATE; u.ts[1] = u.v.t_ref_ms; u.w[1] = 1.0f * rate_w;
    hl_ranker *r = make_ranker(&t, 4, 1, 1, 0);
    if (r != NULL) {
        hl_rec out[4];
        int n_out = 0;
        CHECK(hl_ranker_refresh(r, &u.v, 1, out, &n_out) == 0);
        CHECKF(n_out == 2 && out[0].item == 2 && out[0].because == 1,
               "item %d because %d, want item 2 because 1 (rated 5, not 0 rated 1)",
               out[0].item, out[0].because);
        compare(r, &u, 1, 4, NULL, 1);
        u.w[0] = NAN;                 /* unknown: the type weight, a tie: newest */
        CHECK(hl_ranker_refresh(r, &u.v, 1, out, &n_out) == 0);
        CHECK(n_out == 2 && out[0].item == 2 && out[0].because == 0);
        u.v.hist_w = NULL;            /* a view without weights: the same */
        CHECK(hl_ranker_refresh(r, &u.v, 1, out, &n_out) == 0);
        CHECK(n_out == 2 && out[0].item == 2 && out[0].because == 0);
    }
    hl_ranker_destroy(r);
    tmodel_free(&t);
}

/* An entry whose weight the ring does not know (NAN or no hist_w: a ring
 * from a format-1 snapshot) counts with the weight the worker applies to
 * its type (hl_rank_opts.type_weight, its weight.* override), not the
 * model's: a VIEW on item 1 and a PURCHASE on item 0 at the same time,
 * item 2 pointing to both alike. The model weighs PURCHASE 5 and VIEW 1,
 * the worker VIEW 10, so the VIEW explains item 2. It used to fall back to
 * the model's weights: the PURCHASE did, in both paths. */
static void test_because_unknown_weight_is_the_served_types(void)
{
    tmodel t;
    tuser u;
    tmodel_init(&t, 4, 2, 1, 0, 0);
    float e_in[8] = {1, 0, 0, 1, 0, 0, 0, 0};
    float e_out[8] = {0, 0, 0, 0, 1, 1, -1, -1};
    float bias[4] = {-100, -100, 5, 4}, tw[HL_N_TYPES];
    memcpy(t.e_in, e_in, sizeof e_in);
    memcpy(t.e_out, e_out, sizeof e_out);
    memcpy(t.bias, bias, sizeof bias);
    memcpy(tw, t.p.info.type_weight, sizeof tw);
    tw[HL_VIEW] = 2.0f * t.p.info.type_weight[HL_PURCHASE];
    tuser_init(&u, &t, 2);
    u.v.hist_head = 0;
    u.v.hist_w = u.w;
    u.item[0] = 1; u.type[0] = HL_VIEW; u.ts[0] = u.v.t_ref_ms; u.w[0] = NAN;
    u.item[1] = 0; u.type[1] = HL_PURCHASE; u.ts[1] = u.v.t_ref_ms; u.w[1] = NAN;
    char err[256] = "";
    hl_rank_opts o = {.k = 4, .exclude_seen = 1, .max_batch = 1, .type_weight = tw};
    hl_ranker *r = hl_ranker_create_parts(&t.p, &o, err, sizeof err);
    CHECKF(r != NULL, "create: %s", err);
    for (int pass = 0; r != NULL && pass < 2; pass++) {
        hl_rec out[4], ref[4];
        int n_out = 0, n_ref = 0;
        u.v.hist_w = pass ? NULL : u.w;         /* a view without weights: the same */
        CHECK(hl_ranker_refresh(r, &u.v, 1, out, &n_out) == 0);
        CHECK(hl_ranker_refresh_naive(r, &u.v, 1, NULL, ref, &n_ref) == 0);
        int j = n_out == 2 && out[1].item == 2, i = n_ref == 2 && ref[1].item == 2;
        CHECKF(n_out == 2 && out[j].item == 2 && out[j].because == 1,
               "item 2 because %d, want 1 (the VIEW at weight.view 10, not the model's 1)",
               out[j].because);
        CHECKF(n_ref == 2 && ref[i].item == 2 && ref[i].because == 1,
               "naive: item 2 because %d, want 1", ref[i].because);
    }
    hl_ranker_destroy(r);
    tmodel_free(&t);
}

static void test_refresh_is_repeatable(void)
{
    tmodel t;
    tuser users[8];
    hl_row_view v[8];
    hl_rec a[80], b[80];
    int na[8], nb[8];
    tmodel_init(&t, 4000, 32, 3, 1, 64);
    for (int u = 0; u < 8; u++) {
        tuser_init(&users[u], &t, T_RING);
        v[u] = users[u].v;
    }
    hl_ranker *r = make_ranker(&t, 10, 1, 8, 0);
    if (r != NULL) {
        CHECK(hl_ranker_refresh(r, v, 8, a, na) == 0);
        /* Alone: the same list to the bit (rank.c, "Batch independence"). */
        CHECK(hl_ranker_refresh(r, v + 3, 1, b, nb) == 0);
        CHECK(nb[0] == na[3]);
        CHECK(memcmp(b, a + 30, sizeof *b * (size_t)nb[0]) == 0);
        CHECK(hl_ranker_refresh(r, v, 8, b, nb) == 0);
        CHECK(memcmp(a, b, sizeof a) == 0 && memcmp(na, nb, sizeof na) == 0);
    }
    hl_ranker_destroy(r);
    tmodel_free(&t);
}

/* Issue 16 item 9: after a crash a user was refreshed in a batch of another
 * size and two items whose scores differ by 6e-8 swapped. A model built
 * for near ties: items come in twins whose e_out differ in one component
 * by one part in 2^20 (same bias), so a twin pair scores within about
 * 1e-7 of each other. Every user's list, scored alone, in a batch of 256
 * and in batches of 7, must be the same to the bit. */
static void test_same_list_alone_and_in_batch(void)
{
    enum { N = 256, K = 20, ITEMS = 4096, DIM = 64 };
    tmodel t;
    tuser *users = malloc(N * sizeof *users);
    hl_row_view v[N];
    hl_rec *a = calloc((size_t)N * K, sizeof *a), *b = calloc((size_t)N * K, sizeof *b);
    int na[N], nb[N], near = 0, diff_alone = 0, diff_7 = 0;

    tmodel_init(&t, ITEMS, DIM, 3, 1, 256);
    for (int32_t j = 0; j + 1 < ITEMS; j += 2) {
        memcpy(t.e_out + (size_t)(j + 1) * DIM, t.e_out + (size_t)j * DIM, DIM * sizeof(float));
        t.e_out[(size_t)(j + 1) * DIM + (j / 2) % DIM] *= 1.0f + 1.0f / (1 << 20);
        t.bias[j + 1] = t.bias[j];
    }
    for (int u = 0; u < N; u++) {
        tuser_init(&users[u], &t, T_RING);
        v[u] = users[u].v;
    }
    hl_ranker *r = make_ranker(&t, K, 1, N, 0);
    if (r != NULL) {
        CHECK(hl_ranker_refresh(r, v, N, a, na) == 0);
        for (int u = 0; u < N; u++)
            for (int j = 1; j < na[u]; j++) {
                const hl_rec *x = &a[(size_t)u * K + j - 1], *y = x + 1;
                near += (x->item ^ 1) == y->item && x->score - y->score < 1e-6f;
            }
        CHECKF(near >= N, "only %d adjacent near-tied twins in the lists", near);
        for (int u = 0; u < N; u++) {
            CHECK(hl_ranker_refresh(r, v + u, 1, b + (size_t)u * K, nb + u) == 0);
            diff_alone += nb[u] != na[u] ||
                memcmp(b + (size_t)u * K, a + (size_t)u * K, sizeof *a * (size_t)na[u]) != 0;
        }
        memset(b, 0, sizeof *b * (size_t)N * K);
        for (int u0 = 0; u0 < N; u0 += 7) {
            int n = N - u0 < 7 ? N - u0 : 7;
            CHECK(hl_ranker_refresh(r, v + u0, n, b + (size_t)u0 * K, nb + u0) == 0);
        }
        for (int u = 0; u < N; u++)
            diff_7 += nb[u] != na[u] ||
                memcmp(b + (size_t)u * K, a + (size_t)u * K, sizeof *a * (size_t)na[u]) != 0;
        CHECKF(diff_alone == 0 && diff_7 == 0,
               "%d of %d users got another list alone, %d in batches of 7",
               diff_alone, N, diff_7);
    }
    hl_ranker_destroy(r);
    free(a);
    free(b);
    free(users);
    tmodel_free(&t);
}

/* hl_ranker_create on a model file gives the lists create_parts gives on
 * the same arrays in memory. */
static void test_model_file_matches_parts(void)
{
    tmodel t;
    tuser users[6];
    hl_row_view v[6];
    hl_rec a[60], b[60];
    int na[6], nb[6];
    char dir[] = "/tmp/hl_test_rank_XXXXXX", path[64], err[256] = "";
    char ids[500][8];
    const char *id[500];
    uint32_t id_len[500];

    tmodel_init(&t, 500, 16, 3, 1, 32);
    for (int i = 0; i < 500; i++) {
        id_len[i] = (uint32_t)snprintf(ids[i], sizeof ids[i], "it%d", i);
        id[i] = ids[i];
    }
    t.p.item_id = id;
    t.p.item_id_len = id_len;
    snprintf(t.p.info.version, sizeof t.p.info.version, "test_rank");
    for (int u = 0; u < 6; u++) {
        tuser_init(&users[u], &t, T_RING);
        v[u] = users[u].v;
    }
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/m.hlm", dir);
    CHECKF(hl_model_write(path, &t.p, err, sizeof err) == 0, "write: %s", err);
    hl_model *m = hl_model_open(path, err, sizeof err);
    CHECKF(m != NULL, "open: %s", err);
    hl_rank_opts o = {.k = 10, .exclude_seen = 1, .max_batch = 6};
    hl_ranker *r1 = m ? hl_ranker_create(m, &o, err, sizeof err) : NULL;
    hl_ranker *r2 = make_ranker(&t, 10, 1, 6, 0);
    CHECK(r1 != NULL && r2 != NULL);
    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    if (r1 && r2) {
        CHECK(hl_ranker_refresh(r1, v, 6, a, na) == 0);
        CHECK(hl_ranker_refresh(r2, v, 6, b, nb) == 0);
        CHECK(memcmp(na, nb, sizeof na) == 0 && memcmp(a, b, sizeof a) == 0);
    }
    hl_ranker_destroy(r1);
    hl_ranker_destroy(r2);
    hl_model_close(m);
    unlink(path);
    rmdir(dir);
    tmodel_free(&t);
}

/* recs.exclude.seen.events (hl_rank_opts.seen_window): a user whose ring
 * holds 10 events (items 0..9, oldest first, the ring wrapped) and a
 * window of 3 gets every item but 7, 8 and 9 (k covers the catalogue, so
 * "can appear" means "appears"); window 0, or one at or past the 10
 * events, leaves out all ten. A second user's newest event repeats its
 * oldest item: in the window, so left out although also old. Every
 * scoring path (blocked exact, two-stage, the index probing every list,
 * the plain-loop twin) must leave out the same items. */
static int listed_items(const hl_rec *out, int n, uint8_t *in)
{
    memset(in, 0, 40);
    for (int j = 0; j < n; j++)
        if (out[j].item >= 0 && out[j].item < 40)
            in[out[j].item] = 1;
    return n;
}

static void check_window(const tmodel *t, const hl_ivf *ix, int scoring, int window,
                         int naive)
{
    char err[256] = "";
    tuser u[2];
    for (int i = 0; i < 2; i++) {
        tuser_init(&u[i], t, 10);
        u[i].v.hist_head = T_RING - 4;             /* the 10 entries wrap */
        for (int e = 0; e < 10; e++)
            u[i].item[hl_row_hist_index(&u[i].v, e)] = e;
    }
    u[1].item[hl_row_hist_index(&u[1].v, 9)] = 0;  /* newest = oldest's item */
    hl_rank_opts o = {.k = 40, .exclude_seen = 1, .seen_window = window, .max_batch = 2,
                      .scoring = scoring, .qkernel = HL_QKERNEL_PLAIN, .ivf = ix,
                      .nprobe = 1000};
    hl_ranker *r = hl_ranker_create_parts(&t->p, &o, err, sizeof err);
    CHECKF(r != NULL, "create: %s", err);
    if (r == NULL)
        return;
    hl_row_view v[2] = {u[0].v, u[1].v};
    hl_rec out[80];
    int n_out[2];
    CHECK((naive ? hl_ranker_refresh_naive(r, v, 2, NULL, out, n_out)
                 : hl_ranker_refresh(r, v, 2, out, n_out)) == 0);
    int w = window > 0 && window < 10 ? window : 10;
    uint8_t in[40];
    for (int i = 0; i < 2; i++) {
        listed_items(out + i * 40, n_out[i], in);
        for (int32_t j = 0; j < 40; j++) {
            /* user 0: the last w events hold items 10-w..9; user 1 the
             * same but its newest is item 0 instead of 9 */
            int seen = i == 0 ? (j < 10 && j >= 10 - w)
                              : (j < 9 && j >= 10 - w) || (j == 0);
            CHECKF(in[j] == !seen, "window %d scoring %d ivf %d naive %d user %d item %d: "
                   "listed %d, seen %d", window, scoring, ix != NULL, naive, i, j, in[j], seen);
        }
    }
    hl_ranker_destroy(r);
}

static void test_seen_window(void)
{
    tmodel t;
    char err[256] = "";
    tmodel_init(&t, 40, 8, 2, 1, 16);
    hl_ivf_opts io = {.nlist = 4, .seed = 7};
    hl_ivf *ix = hl_ivf_create(t.e_out, t.bias, 40, 8, &io, err, sizeof err);
    CHECKF(ix != NULL, "index: %s", err);
    int windows[] = {0, 1, 3, 9, 10, 32, 255};
    for (size_t i = 0; i < sizeof windows / sizeof *windows; i++) {
        check_window(&t, NULL, HL_SCORING_EXACT, windows[i], 0);
        check_window(&t, NULL, HL_SCORING_EXACT, windows[i], 1);
        check_window(&t, NULL, HL_SCORING_TWO_STAGE, windows[i], 0);
        if (ix != NULL)
            check_window(&t, ix, HL_SCORING_EXACT, windows[i], 0);
    }
    hl_rank_opts o = {.k = 5, .exclude_seen = 1, .seen_window = 256, .max_batch = 2};
    CHECK(hl_ranker_create_parts(&t.p, &o, err, sizeof err) == NULL);
    CHECKF(strstr(err, "seen_window 256") != NULL, "err = %s", err);
    hl_ivf_destroy(ix);
    tmodel_free(&t);
}

static void test_bad_arguments(void)
{
    tmodel t;
    char err[256] = "";
    tmodel_init(&t, 10, 4, 1, 0, 0);
    hl_rank_opts o = {.k = 0, .exclude_seen = 1, .max_batch = 4};
    CHECK(hl_ranker_create_parts(&t.p, &o, err, sizeof err) == NULL);
    CHECKF(strstr(err, "k 0") != NULL, "err = %s", err);
    o.k = 5;
    o.max_batch = 0;
    CHECK(hl_ranker_create_parts(&t.p, &o, err, sizeof err) == NULL);
    o.max_batch = 2;
    t.p.info.layer_out[0] = 3;   /* last layer must be dim wide */
    CHECK(hl_ranker_create_parts(&t.p, &o, err, sizeof err) == NULL);
    CHECKF(strstr(err, "last layer") != NULL, "err = %s", err);
    t.p.info.layer_out[0] = 4;
    hl_ranker *r = hl_ranker_create_parts(&t.p, &o, err, sizeof err);
    CHECK(r != NULL);
    if (r != NULL) {
        tuser u[3];
        hl_row_view v[3];
        hl_rec out[15];
        int n_out[3];
        for (int i = 0; i < 3; i++) {
            tuser_init(&u[i], &t, 0);
            v[i] = u[i].v;
        }
        CHECK(hl_ranker_refresh(r, v, 3, out, n_out) == HL_EINVAL);
        CHECK(hl_ranker_refresh(r, v, 0, out, n_out) == 0);
    }
    hl_ranker_destroy(r);
    hl_ranker_destroy(NULL);
    tmodel_free(&t);
}

/* because's shares against the definition: event e's share of head h is
 * w_e f_he / m_h, f_he its weight in the stored heads, which sit at the
 * heads' bases B_h (decay.h), as m_h does; the shares of a head whose
 * events are all in the ring sum to 1. They weighed from t_ref (f =
 * exp(-lambda (t_ref - t))) over the mass at B_h: each head's sum fell
 * short by up to 2^-12, more for the slower heads, whose bases lag more.
 * Heads built by hl_decay_add, t_ref 65 s into the slowest head's cell;
 * the shares in double from the event times. */
static void test_because_shares_match_the_heads(void)
{
    tmodel t;
    tmodel_init(&t, 8, 4, 3, 0, 0);
    hl_decay d;
    char err[256];
    CHECK(hl_decay_init(&d, 3, 4, t.p.info.half_life_ms, err, sizeof err) == 0);
    const int64_t t_ref = ((int64_t)1 << 32) + 65000, age[4] = {60000, 30000, 10000, 0};
    float s[3 * 4] = {0}, m[3] = {0}, w[4] = {1, 3, 2, 5}, a[4];
    int32_t item[4] = {0, 1, 2, 3}, got_item[4];
    uint8_t type[4] = {0};
    int64_t ts[4], tr = INT64_MIN;
    for (int i = 0; i < 4; i++) {
        ts[i] = t_ref - age[i];
        hl_decay_add(&d, s, m, &tr, ts[i], w[i], t.e_in + (size_t)item[i] * 4);
    }
    hl_row_view v = {.user = "u", .user_len = 1, .s = s, .m = m, .t_ref_ms = tr,
                     .history = 4, .n_hist = 4, .hist_item = item, .hist_type = type,
                     .hist_ts_ms = ts, .hist_w = w};
    hl_ranker *r = make_ranker(&t, 4, 0, 1, 0);
    int n = r != NULL ? hl_rank_history_weights(r, &v, got_item, a) : 0;
    CHECK(n == 4);
    for (int e = 0; e < n; e++) {           /* newest first */
        int i = 3 - e;
        double want = 0;
        for (int h = 0; h < 3; h++) {
            double base = (double)hl_decay_base_ms(&d, h, t_ref), mh = 0;
            for (int k = 0; k < 4; k++) mh += w[k] * exp(-d.lambda_per_ms[h] * (base - ts[k]));
            want += w[i] * exp(-d.lambda_per_ms[h] * (base - ts[i])) / mh;
        }
        CHECKF(got_item[e] == item[i] && fabs(a[e] / want - 1) < 1e-5,
               "event %d: share %.9g, want %.9g", i, a[e], want);
    }
    hl_ranker_destroy(r);
    tmodel_free(&t);
}

int main(void)
{
    RUN(test_random_models_match_naive);
    RUN(test_short_lists);
    RUN(test_ties_lower_row_first);
    RUN(test_because_by_hand);
    RUN(test_because_weighs_each_event);
    RUN(test_because_unknown_weight_is_the_served_types);
    RUN(test_because_shares_match_the_heads);
    RUN(test_refresh_is_repeatable);
    RUN(test_same_list_alone_and_in_batch);
    RUN(test_model_file_matches_parts);
    RUN(test_seen_window);
    RUN(test_bad_arguments);
    TEST_EXIT();
}
