/* test_foldin.c - fold-in arithmetic (core/foldin.c): the e_out -> e_in map
 * recovers a linear relation it was fitted on, the decayed sums do not
 * depend on arrival order, an item is ready after min_events, memory stays
 * within max_items (least recently touched go, counted), and an item bought
 * by users of one interest cluster ranks high for other users of that
 * cluster and low for the rest, and an item's interaction count stops at
 * INT32_MAX instead of overflowing. */
#define T_SUITE "foldin"
#include "test.h"
/* The file itself, to reach a record's counters (test_count_saturates);
 * the library's copy is then never pulled in, as in test_train.c. */
#include "foldin.c"

#include <stdint.h>

#define D 8

static uint64_t rng = 0xD1B54A32D192ED03ull;

static float frand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)(rng >> 40) / (float)(1 << 23) - 1.0f;
}

typedef struct model { float e_in[1000 * D], e_out[1000 * D], bias[1000]; int n; } model;

/* Items in two clusters, +c and -c along one axis, with e_in = e_out W0. */
static void model_init(model *m, int n, const float *W0)
{
    m->n = n;
    for (int j = 0; j < n; j++) {
        float sign = j % 2 ? 1.0f : -1.0f;
        for (int d = 0; d < D; d++)
            m->e_out[j * D + d] = (d == 0 ? 2.0f * sign : 0.0f) + 0.5f * frand();
        for (int c = 0; c < D; c++) {
            double s = 0;
            for (int a = 0; a < D; a++)
                s += m->e_out[j * D + a] * W0[a * D + c];
            m->e_in[j * D + c] = (float)s;
        }
        m->bias[j] = 0.1f * frand();
    }
}

static void test_map_recovers_linear_relation(void)
{
    static model m;
    float W0[D * D];
    for (int i = 0; i < D * D; i++)
        W0[i] = frand();
    model_init(&m, 1000, W0);
    hl_foldin_opts o = {.dim = D, .max_items = 16, .min_events = 3, .half_life_ms = 3600e3,
                        .ridge = 1e-6f};
    char err[256];
    hl_foldin *f = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    CHECKF(f != NULL, "%s", err);
    if (f)
        CHECK_CLOSE(hl_foldin_map(f), W0, D * D, 1e-3);
    hl_foldin_destroy(f);
    o.min_events = 0;
    CHECK(hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err) == NULL);
}

static void test_order_independent_and_ready(void)
{
    static model m;
    float W0[D * D] = {0};
    for (int i = 0; i < D; i++)
        W0[i * D + i] = 1.0f;
    model_init(&m, 200, W0);
    hl_foldin_opts o = {.dim = D, .max_items = 16, .min_events = 3, .half_life_ms = 1000};
    char err[256];
    hl_foldin *a = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    hl_foldin *b = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    float q[4][D], ein[D], eout[D], ein2[D], eout2[D], bias, bias2;
    int64_t ts[4] = {1000, 1500, 4000, 2500};
    for (int i = 0; i < 4; i++)
        for (int d = 0; d < D; d++)
            q[i][d] = frand();
    CHECK(hl_foldin_add(a, "new", 3, q[0], 1.0f, ts[0]) == 0);
    CHECK(hl_foldin_add(a, "new", 3, q[1], 2.0f, ts[1]) == 0);
    CHECK(hl_foldin_vectors(a, "new", 3, ein, eout, &bias) == HL_ENOENT);
    CHECK(hl_foldin_add(a, "new", 3, q[2], 1.0f, ts[2]) == 1);          /* ready now */
    CHECK(hl_foldin_add(a, "new", 3, q[3], 0.5f, ts[3]) == 0);          /* late */
    int order[4] = {3, 2, 0, 1};
    for (int i = 0; i < 4; i++) {
        float w[4] = {1.0f, 2.0f, 1.0f, 0.5f};
        hl_foldin_add(b, "new", 3, q[order[i]], w[order[i]], ts[order[i]]);
    }
    CHECK(hl_foldin_vectors(a, "new", 3, ein, eout, &bias) == 0);
    CHECK(hl_foldin_vectors(b, "new", 3, ein2, eout2, &bias2) == 0);
    CHECK_CLOSE(eout, eout2, D, 1e-5);
    CHECK_CLOSE(ein, ein2, D, 1e-5);
    CHECK(fabsf(bias - bias2) < 1e-5f);
    float nan_q[D] = {NAN};
    CHECK(hl_foldin_add(a, "x", 1, nan_q, 1.0f, 0) == HL_EINVAL);
    /* beyond the encoder's clamp: the sums' quick bound assumes it */
    float far_q[D] = {0};
    far_q[D - 1] = -0x1p65f;
    CHECK(hl_foldin_add(a, "x", 1, far_q, 1.0f, 0) == HL_EINVAL);
    far_q[D - 1] = -0x1p64f;
    CHECK(hl_foldin_add(a, "x", 1, far_q, 1.0f, 0) >= 0);
    CHECK(hl_foldin_add(a, "x", 1, q[0], -1.0f, 0) == HL_EINVAL);
    CHECK(hl_foldin_add(a, "", 0, q[0], 1.0f, 0) == HL_EINVAL);
    hl_foldin_destroy(a);
    hl_foldin_destroy(b);
}

static void test_bounded_least_recent_go(void)
{
    static model m;
    float W0[D * D] = {0};
    for (int i = 0; i < D; i++)
        W0[i * D + i] = 1.0f;
    model_init(&m, 100, W0);
    hl_foldin_opts o = {.dim = D, .max_items = 32, .min_events = 1, .half_life_ms = 1000};
    char err[256], id[16];
    float q[D] = {1, 0, 0, 0, 0, 0, 0, 0}, ein[D], eout[D], bias;
    hl_foldin *f = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    for (int i = 0; i < 100; i++) {
        snprintf(id, sizeof id, "n%d", i);
        CHECK(hl_foldin_add(f, id, (uint32_t)strlen(id), q, 1.0f, i) == 1);
        hl_foldin_add(f, "keep", 4, q, 1.0f, i);       /* touched all along */
    }
    hl_foldin_stats st;
    hl_foldin_stats_get(f, &st);
    CHECK(st.items <= 32 && st.evicted >= 68 && st.ready == st.items);
    CHECK(hl_foldin_vectors(f, "keep", 4, ein, eout, &bias) == 0);
    CHECK(hl_foldin_vectors(f, "n99", 3, ein, eout, &bias) == 0);
    CHECK(hl_foldin_vectors(f, "n0", 2, ein, eout, &bias) == HL_ENOENT);
    hl_foldin_destroy(f);
}

/* Users of cluster +c buy "launch"; among the model's 1000 items (half of
 * them in +c) plus the newcomer, it must rank in the top 100 for every +c
 * user not among the buyers and in the bottom half for every -c user. (It
 * points at its buyers' mean query, so model items that match a user's own
 * direction still beat it: fold-in places a newcomer in its cluster, the
 * retrain ranks it within.) */
static void test_cluster_buyers_spread_to_their_cluster(void)
{
    static model m;
    float W0[D * D] = {0};
    for (int i = 0; i < D; i++)
        W0[i * D + i] = 0.5f;
    model_init(&m, 1000, W0);
    hl_foldin_opts o = {.dim = D, .max_items = 64, .min_events = 5, .half_life_ms = 86400e3};
    char err[256];
    hl_foldin *f = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    float q[80][D];
    for (int u = 0; u < 80; u++)                 /* 0..39 cluster +c, 40..79 cluster -c */
        for (int d = 0; d < D; d++)
            q[u][d] = (d == 0 ? (u < 40 ? 1.5f : -1.5f) : 0.0f) + 0.4f * frand();
    for (int u = 0; u < 8; u++)                  /* eight +c users buy it */
        hl_foldin_add(f, "launch", 6, q[u], 1.0f, 1000 * u);
    float ein[D], eout[D], b;
    CHECK(hl_foldin_vectors(f, "launch", 6, ein, eout, &b) == 0);
    /* In two steps (the worker makes the vectors outside its lock): the
     * same vectors, bit for bit. */
    float S[D], ein2[D], eout2[D], b2;
    double M;
    CHECK(hl_foldin_sums(f, "launch", 6, S, &M) == 0 && M > 0.0);
    hl_foldin_vectors_from(f, S, M, ein2, eout2, &b2);
    CHECK(memcmp(ein, ein2, sizeof ein) == 0 && memcmp(eout, eout2, sizeof eout) == 0 &&
          b == b2);
    CHECK(hl_foldin_sums(f, "never", 5, S, &M) == HL_ENOENT);
    int top_a = 0, top_b = 0;
    for (int u = 8; u < 80; u++) {
        double s_new = b;
        for (int d = 0; d < D; d++)
            s_new += (double)q[u][d] * eout[d];
        int above = 0;                           /* model items scoring higher */
        for (int j = 0; j < m.n; j++) {
            double s = m.bias[j];
            for (int d = 0; d < D; d++)
                s += (double)q[u][d] * m.e_out[j * D + d];
            above += s > s_new;
        }
        top_a += u < 40 && above < 100;
        top_b += u >= 40 && above < 500;
    }
    CHECKF(top_a == 32 && top_b == 0, "launch in the top 100 of 1001 for %d of 32 +c users, "
           "in the top 500 for %d of 40 -c users", top_a, top_b);
    hl_foldin_destroy(f);
}

/* With neighbours T the vectors are the means of the T model items the
 * mean query scores highest: a query along axis 0 over items whose e_out is
 * (j, 0, ...) with bias 0 picks the last T; the mean-query rule
 * (neighbours < 0) points e_out at the query instead. */
/* The neighbours rule's bias from the model's mean, and the shrinkage
 * towards the model's mean item by c / (M + c). */
static void test_model_bias_and_shrinkage(void)
{
    static model m;
    float W0[D * D] = {0}, q[D] = {1}, ein[2][D], eout[2][D], b[2];
    model_init(&m, 50, W0);
    double mean_b = 0, mean_out0 = 0, mean_in0 = 0;
    for (int j = 0; j < m.n; j++) {
        m.bias[j] = (float)(j % 5) - 1.0f;                 /* the top items' is not the mean */
        mean_b += m.bias[j] / m.n;
        mean_out0 += m.e_out[j * D] / m.n;
        mean_in0 += m.e_in[j * D] / m.n;
    }
    hl_foldin_opts o = {.dim = D, .max_items = 8, .min_events = 2, .half_life_ms = 1e12,
                        .neighbours = 4, .shrink = -1};
    char err[256];
    for (int k = 0; k < 2; k++) {                          /* neighbours' bias, the model's */
        o.bias = k ? HL_FOLDIN_BIAS_MODEL : HL_FOLDIN_BIAS_NEIGHBOURS;
        hl_foldin *f = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
        hl_foldin_add(f, "x", 1, q, 1.0f, 0);
        hl_foldin_add(f, "x", 1, q, 1.0f, 0);
        CHECK(hl_foldin_vectors(f, "x", 1, ein[k], eout[k], &b[k]) == 0);
        hl_foldin_destroy(f);
    }
    CHECKF(memcmp(eout[0], eout[1], sizeof eout[0]) == 0 && fabsf(b[1] - (float)mean_b) < 1e-5f &&
           fabsf(b[0] - (float)mean_b) > 0.1f, "bias %g %g, model's mean %g", b[0], b[1], mean_b);
    o.bias = HL_FOLDIN_BIAS_NEIGHBOURS;
    o.shrink = 2.0f;                                       /* M = 2: half way to the mean */
    float e2[D], i2[D], b2;
    hl_foldin *f = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    hl_foldin_add(f, "x", 1, q, 1.0f, 0);
    hl_foldin_add(f, "x", 1, q, 1.0f, 0);
    CHECK(hl_foldin_vectors(f, "x", 1, i2, e2, &b2) == 0);
    CHECKF(fabsf(e2[0] - (0.5f * eout[0][0] + 0.5f * (float)mean_out0)) < 1e-5f &&
           fabsf(i2[0] - (0.5f * ein[0][0] + 0.5f * (float)mean_in0)) < 1e-5f &&
           fabsf(b2 - (0.5f * b[0] + 0.5f * (float)mean_b)) < 1e-5f,
           "e_out %g e_in %g bias %g", e2[0], i2[0], b2);
    hl_foldin_destroy(f);
}

static void test_neighbours_are_the_means_of_the_top_items(void)
{
    static model m;
    float W0[D * D] = {0}, q[D] = {1}, ein[D], eout[D], b;
    model_init(&m, 50, W0);
    for (int j = 0; j < m.n; j++) {
        memset(m.e_out + j * D, 0, D * sizeof(float));
        m.e_out[j * D] = (float)j;
        m.e_out[j * D + 1] = (float)(j % 3);
        m.e_in[j * D] = (float)(2 * j);
        m.bias[j] = 0.0f;
    }
    hl_foldin_opts o = {.dim = D, .max_items = 8, .min_events = 2, .half_life_ms = 1e12,
                        .neighbours = 4};
    char err[256];
    hl_foldin *f = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    CHECKF(f != NULL, "%s", err);
    hl_foldin_add(f, "x", 1, q, 1.0f, 0);
    hl_foldin_add(f, "x", 1, q, 1.0f, 0);
    CHECK(hl_foldin_vectors(f, "x", 1, ein, eout, &b) == 0);
    float want_out = (46 + 47 + 48 + 49) / 4.0f, want_y = (1 + 2 + 0 + 1) / 4.0f;
    CHECKF(fabsf(eout[0] - want_out) < 1e-4f && fabsf(eout[1] - want_y) < 1e-4f &&
           fabsf(ein[0] - 2 * want_out) < 1e-4f && b == 0.0f,
           "e_out %g %g e_in %g bias %g", eout[0], eout[1], ein[0], b);
    hl_foldin_destroy(f);
    o.neighbours = -1;                                   /* the mean-query rule */
    f = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    hl_foldin_add(f, "x", 1, q, 1.0f, 0);
    hl_foldin_add(f, "x", 1, q, 1.0f, 0);
    CHECK(hl_foldin_vectors(f, "x", 1, ein, eout, &b) == 0);
    CHECK(eout[0] > 0.0f && eout[1] == 0.0f);
    hl_foldin_destroy(f);
}

/* Publication: due at min_events, then at each doubling of the count of
 * the last publication, this accumulator's or the topic's (hl_foldin_mark). */
/* The lift (catalogue.foldin.lift): every user's query shares a component
 * (axis 2, what everyone likes, carried by high-bias "generic" items);
 * x's buyers are cluster a (axis 0), y's cluster b (axis 1). Without the
 * lift x's neighbours are the generic items (its users' lists lead with
 * them); with lift 1 they are cluster a's, the part of x's users' mean
 * query the other new items' users do not share, and bias no longer
 * counts. With x alone the lift only drops the bias: the generic items
 * again. And when y is bought by x's own users, the baseline would cancel
 * x's direction (a zero query: ties, cluster a by row order); the guard
 * (beta' = M' / (M' + M)) keeps half of it: the generic items. */
static void test_lift_ranks_what_sets_users_apart(void)
{
    static model m;
    m.n = 12;
    memset(m.e_in, 0, sizeof m.e_in);
    memset(m.e_out, 0, sizeof m.e_out);
    for (int j = 0; j < m.n; j++) {     /* 0-3 cluster a, 4-7 cluster b, 8-11 generic */
        int g = j / 4;                  /* (ties rank the lower row first: a zero query
                                           would pick cluster a) */
        m.e_out[j * D + g] = g == 2 ? 3.0f : 2.0f;
        m.e_in[j * D + 3] = g == 2 ? 0.0f : (float)(g + 1);
        m.bias[j] = g == 2 ? 0.5f : 0.0f;
    }
    float qa[D] = {1, 0, 1}, qb[D] = {0, 1, 1}, ein[D], eout[D], b;
    char err[256];
    /* lift, y's buyers (0: no y, 1: cluster b, 2: x's own) and weight, the
     * group of x's neighbours (0 generic, 1 cluster a) */
    static const struct { float lift; int y; float wy, group; } cases[] = {
        {0, 1, 10, 0}, {1, 1, 10, 1}, {1, 1, 1, 1}, {1, 0, 0, 0}, {1, 2, 1, 0},
    };
    for (int k = 0; k < (int)(sizeof cases / sizeof cases[0]); k++) {
        hl_foldin_opts o = {.dim = D, .max_items = 8, .min_events = 2, .half_life_ms = 1e12,
                            .neighbours = 4, .lift = cases[k].lift};
        hl_foldin *f = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
        CHECKF(f != NULL, "%s", err);
        for (int i = 0; i < 3; i++) {
            hl_foldin_add(f, "x", 1, qa, 1.0f, i);
            if (cases[k].y > 0)
                hl_foldin_add(f, "y", 1, cases[k].y == 1 ? qb : qa, cases[k].wy, i);
        }
        CHECK(hl_foldin_vectors(f, "x", 1, ein, eout, &b) == 0);
        CHECKF(fabsf(ein[3] - cases[k].group) < 1e-6f,
               "lift case %d: x's neighbours are group %g, want %g (0 generic, 1 cluster a)",
               k, ein[3], cases[k].group);
        hl_foldin_destroy(f);
    }
}

/* catalogue.foldin.distinct: x's users (query qa, 3 events) against y's
 * (weight 10, 3 events): with y's users elsewhere (qb) the lifted sums
 * keep |3 qa - (10/11)(3/30) 30 qb| / |3 qa| = 0.9578 of their length, so
 * 0.95 passes and 0.96 holds x back; with y's users x's own (qa) only
 * 1/11 is left; without a lift (no baseline) nothing is held. */
static void test_distinct_gate(void)
{
    static model m;
    float W0[D * D] = {0};
    model_init(&m, 20, W0);
    float qa[D] = {1, 0, 1}, qb[D] = {0, 1, 1}, ein[D], eout[D], b, S[D];
    static const struct { float lift, distinct; int y_elsewhere, want; } cases[] = {
        {1, 0.95f, 1, 0}, {1, 0.96f, 1, HL_FOLDIN_NOT_DISTINCT}, {1, 0, 0, 0},
        {1, 0.5f, 0, HL_FOLDIN_NOT_DISTINCT}, {1, 0.09f, 0, 0}, {0, 0.99f, 0, 0},
    };
    char err[256];
    for (int k = 0; k < (int)(sizeof cases / sizeof cases[0]); k++) {
        hl_foldin_opts o = {.dim = D, .max_items = 8, .min_events = 2, .half_life_ms = 1e12,
                            .lift = cases[k].lift, .distinct = cases[k].distinct};
        hl_foldin *f = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
        CHECKF(f != NULL, "%s", err);
        for (int i = 0; i < 3; i++) {
            hl_foldin_add(f, "x", 1, qa, 1.0f, i);
            hl_foldin_add(f, "y", 1, cases[k].y_elsewhere ? qb : qa, 10.0f, i);
        }
        double M;
        ein[0] = 7.0f;
        int rc = hl_foldin_vectors(f, "x", 1, ein, eout, &b);
        CHECKF(rc == cases[k].want && hl_foldin_sums(f, "x", 1, S, &M) == rc,
               "distinct case %d: %d, want %d", k, rc, cases[k].want);
        CHECK(rc == 0 || ein[0] == 7.0f);           /* held: nothing written */
        hl_foldin_destroy(f);
    }
    hl_foldin_opts bad = {.dim = D, .max_items = 8, .min_events = 2, .half_life_ms = 1e12,
                          .lift = 1, .distinct = 1.5f};
    CHECK(hl_foldin_create(&bad, m.e_in, m.e_out, m.bias, m.n, err, sizeof err) == NULL &&
          strstr(err, "distinct") != NULL);
}

static void test_due_at_min_events_then_doublings(void)
{
    static model m;
    float W0[D * D] = {0}, q[D] = {1};
    model_init(&m, 50, W0);
    hl_foldin_opts o = {.dim = D, .max_items = 8, .min_events = 3, .half_life_ms = 1000};
    char err[256];
    hl_foldin *f = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    int due_at[8], n_due = 0;
    CHECK(hl_foldin_due(f, "x", 1) == 0);                /* never seen */
    int same = 1;
    for (int i = 1; i <= 24; i++) {
        int32_t due_now;     /* the add's own answer is the lookup's (worker/fold.c uses it) */
        hl_foldin_add_due(f, "x", 1, hl_foldin_hash("x", 1), q, 1.0f, i, &due_now);
        int32_t n = hl_foldin_due(f, "x", 1);
        same &= due_now == n;
        if (n > 0 && n_due < 8) {
            due_at[n_due++] = n;
            hl_foldin_mark(f, "x", 1, n);
        }
    }
    CHECKF(n_due == 4 && due_at[0] == 3 && due_at[1] == 6 && due_at[2] == 12 &&
           due_at[3] == 24, "due %d times, first at %d", n_due, n_due ? due_at[0] : 0);
    CHECK(same);
    for (int i = 0; i < 5; i++)                          /* a fresh item, a topic at 4 */
        hl_foldin_add(f, "y", 1, q, 1.0f, i);
    hl_foldin_mark(f, "y", 1, 4);
    CHECK(hl_foldin_due(f, "y", 1) == 0);
    int32_t due_y = -1;
    for (int i = 0; i < 3; i++)
        hl_foldin_add_due(f, "y", 1, hl_foldin_hash("y", 1), q, 1.0f, i, &due_y);
    CHECK(hl_foldin_due(f, "y", 1) == 8 && due_y == 8);
    CHECK(hl_foldin_add_due(f, "y", 1, hl_foldin_hash("y", 1), q, -1.0f, 0, &due_y) ==
          HL_EINVAL && due_y == 0);
    hl_foldin_destroy(f);
}

/* The sgemv scan (hl_foldin_vectors_from) and its plain twin pick the same
 * top T to the bit, also where the float scores cannot tell items apart:
 * pairs of identical items (exact ties: the lower row first), a run of
 * items 1e-7 apart along the query, closer than float's rounding, and
 * items whose scores cancel two terms of 1e4 (float errors ~1e-3 against
 * gaps of 1e-3, so the float order is wrong and the bound must hold). */
static void test_scan_matches_plain_loop(void)
{
    static model m;
    float W0[D * D] = {0};
    model_init(&m, 1000, W0);
    for (int j = 0; j < 200; j += 2) {                   /* exact ties */
        memcpy(m.e_out + (j + 1) * D, m.e_out + j * D, D * sizeof(float));
        m.bias[j + 1] = m.bias[j];
    }
    for (int j = 200; j < 260; j++) {                    /* near ties */
        for (int d = 0; d < D; d++)
            m.e_out[j * D + d] = 3.0f;
        m.e_out[j * D] = 3.0f + 3e-7f * (float)(j % 7);
        m.bias[j] = 0.0f;
    }
    for (int j = 300; j < 400; j++) {        /* cancellation: float errors ~1e-3 */
        memset(m.e_out + j * D, 0, D * sizeof(float));
        m.e_out[j * D] = 1e4f + 9.765625e-4f * (float)((j * 37) % 16);
        m.e_out[j * D + 1] = -1e4f;
        m.e_out[j * D + 2] = 1e-4f * (float)((j * 53) % 100);
        m.bias[j] = 100.0f;
    }
    hl_foldin_opts o = {.dim = D, .max_items = 8, .min_events = 1, .half_life_ms = 1e12};
    char err[256];
    hl_foldin *f = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    CHECKF(f != NULL, "%s", err);
    int same = 0, tries = 80;
    for (int t = 0; f != NULL && t < tries; t++) {
        float S[D], a[2 * D + 1], b[2 * D + 1];
        double M = t % 3 == 0 ? 0.0 : 1.0 + 100.0 * (frand() + 1.0);
        for (int d = 0; d < D; d++)             /* a third point along the near ties */
            S[d] = t % 3 == 1 ? 1.0f + 1e-3f * frand() : 50.0f * frand();
        if (t % 4 == 3) {                       /* a quarter along the cancellation */
            memset(S, 0, sizeof S);
            S[0] = S[1] = 1.37f + 0.01f * (float)t;
            S[2] = 1.0f;
            M = 1.0;
        }
        hl_foldin_vectors_from(f, S, M, a, a + D, a + 2 * D);
        hl_foldin_vectors_from_naive(f, S, M, b, b + D, b + 2 * D);
        same += memcmp(a, b, sizeof a) == 0;
    }
    CHECKF(same == tries, "%d of %d queries gave the plain loop's vectors", same, tries);
    hl_foldin_destroy(f);
}

/* The definition in foldin.h, one item at a time, for the test below. */
typedef struct ref_item {
    char     id[200];  uint32_t len;
    float    S[D];     double M;
    int64_t  t_ref;    uint64_t touched;
    int      count, live;
} ref_item;

static void ref_add(ref_item *r, const float *q, float w, int64_t ts, double lambda,
                    uint64_t clock)
{
    float a = 1.0f, b = w;
    if (r->count > 0 && ts >= r->t_ref)
        a = (float)exp(-lambda * (double)(ts - r->t_ref));
    else if (r->count > 0)
        b = w * (float)exp(-lambda * (double)(r->t_ref - ts));
    for (int d = 0; d < D; d++)
        r->S[d] = a * r->S[d] + b * q[d];
    r->M = a * r->M + b;
    r->t_ref = r->count == 0 || ts > r->t_ref ? ts : r->t_ref;
    r->touched = clock;
    r->count++;
}

/* Drops the least recently touched sixteenth of the live items. */
static void ref_evict(ref_item *r, int n, int live)
{
    uint64_t t[64], cut;
    int m = 0;
    for (int i = 0; i < n; i++)
        if (r[i].live)
            t[m++] = r[i].touched;
    for (int i = 1; i < m; i++)               /* insertion sort: 64 at most */
        for (int j = i; j > 0 && t[j - 1] > t[j]; j--) {
            uint64_t x = t[j]; t[j] = t[j - 1]; t[j - 1] = x;
        }
    cut = t[live / 16];
    for (int i = 0; i < n; i++)
        if (r[i].live && r[i].touched <= cut)
            r[i].live = 0;
}

/* Ids short enough to sit beside the counters and long ones (up to 199
 * bytes) kept apart, a hash that grows and an eviction every few inserts,
 * late events: every item's sums equal the definition's, to the bit, and
 * exactly the evicted ones are gone. */
static void test_records_match_the_definition(void)
{
    static model m;
    float W0[D * D];
    for (int i = 0; i < D * D; i++)
        W0[i] = frand();
    model_init(&m, 64, W0);
    enum { N = 60, CAP = 40 };
    hl_foldin_opts o = {.dim = D, .max_items = CAP, .min_events = 1, .half_life_ms = 5000};
    char err[256];
    hl_foldin *f = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    CHECKF(f != NULL, "%s", err);
    static ref_item r[N];
    memset(r, 0, sizeof r);
    for (int i = 0; i < N; i++) {
        r[i].len = (uint32_t)snprintf(r[i].id, sizeof r[i].id, "item-%d", i);
        uint32_t want = i % 4 == 1 ? 24 : 25 + (uint32_t)(3 * i) % 170;  /* 24: the inline limit */
        for (; i % 2 && r[i].len < want; r[i].len++)
            r[i].id[r[i].len] = (char)('a' + (i + (int)r[i].len) % 26);
    }
    int live = 0, bad = 0;
    int64_t ts = 1000000;
    double lambda = log(2.0) / o.half_life_ms;
    for (uint64_t e = 1; f != NULL && e <= 3000; e++) {
        ref_item *it = &r[(int)((frand() + 1.0f) * 0.5f * N) % N];
        float q[D], w = 2.0f * (frand() + 1.0f);
        for (int d = 0; d < D; d++)
            q[d] = 3.0f * frand();
        ts += (int64_t)(100.0f * frand()) + 20;       /* some late */
        if (!it->live) {
            if (live == CAP) {
                ref_evict(r, N, live);
                live -= live / 16 + 1;
            }
            memset(it->S, 0, sizeof it->S);
            it->M = 0.0; it->count = 0; it->live = 1;
            live++;
        }
        ref_add(it, q, w, ts, lambda, e);
        bad += hl_foldin_add(f, it->id, it->len, q, w, ts) < 0;
    }
    hl_foldin_stats st;
    if (f != NULL)
        hl_foldin_stats_get(f, &st);
    CHECKF(f == NULL || st.items == live, "%d items kept, the definition keeps %d",
           f ? st.items : -1, live);
    for (int i = 0; f != NULL && i < N; i++) {
        float S[D];
        double M;
        int rc = hl_foldin_sums(f, r[i].id, r[i].len, S, &M);
        bad += r[i].live ? rc != 0 || memcmp(S, r[i].S, sizeof S) != 0 || M != r[i].M
                         : rc != HL_ENOENT;
    }
    CHECKF(bad == 0, "%d adds or items differ from the definition", bad);
    hl_foldin_destroy(f);
}

/* A fold-in item idle for long and then touched by an event that adds
 * nothing to its direction (a zero query, a weight that is itself
 * subnormal): its sums must be exactly 0, never subnormal floats, which
 * would put every later add of the item on the slow path, as core/decay.c
 * keeps users' heads. 130 half-lives is one factor of 2^-130 (subnormal
 * as a float); 70 + 70 is two normal factors whose product is subnormal. */
static int idle_subnormals(hl_foldin *f, const char *id, const int64_t *ts, int n, float w0)
{
    float ones[D], zero[D] = {0}, S[D];
    double M;
    for (int d = 0; d < D; d++)
        ones[d] = 1.0f;
    hl_foldin_add(f, id, (uint32_t)strlen(id), ones, w0, 0);
    for (int i = 0; i < n; i++)
        hl_foldin_add(f, id, (uint32_t)strlen(id), zero, 1.0f, ts[i]);
    if (hl_foldin_sums(f, id, (uint32_t)strlen(id), S, &M) != 0)
        return -1;
    int bad = 0;
    for (int d = 0; d < D; d++)
        bad += S[d] != 0.0f || fpclassify(S[d]) == FP_SUBNORMAL;
    return bad;
}

static void test_idle_sums_reach_zero(void)
{
    static model m;
    float W0[D * D] = {0};
    for (int i = 0; i < D; i++)
        W0[i * D + i] = 1.0f;
    model_init(&m, 64, W0);
    hl_foldin_opts o = {.dim = D, .max_items = 16, .min_events = 1, .half_life_ms = 1000};
    char err[256];
    hl_foldin *f = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    CHECKF(f != NULL, "%s", err);
    if (f == NULL)
        return;
    int64_t one[1] = {130000}, two[2] = {70000, 140000};
    int a = idle_subnormals(f, "idle", one, 1, 1.0f);
    int b = idle_subnormals(f, "steps", two, 2, 1.0f);
    int c = idle_subnormals(f, "tiny", two, 0, 1e-40f);
    CHECKF(a == 0, "130 half-lives idle: %d of %d sums not exactly 0", a, D);
    CHECKF(b == 0, "two idle spans of 70 half-lives: %d of %d sums not exactly 0", b, D);
    CHECKF(c == 0, "a weight of 1e-40: %d of %d sums not exactly 0", c, D);
    hl_foldin_destroy(f);
}

/* min.events counts interactions that carry evidence: events of weight 0
 * (a type weighted 0, a weight field of 0) add nothing to the sums, so
 * they must not make an item ready: before, an item seen only in such
 * events became ready with S = 0 and M = 0, every model item tied at
 * score 0, and it was published with the vectors of the first rows. */
static void test_zero_weight_is_no_interaction(void)
{
    static model m;
    float W0[D * D] = {0}, q[D] = {1}, S[D];
    model_init(&m, 50, W0);
    hl_foldin_opts o = {.dim = D, .max_items = 8, .min_events = 2, .half_life_ms = 1000};
    char err[256];
    hl_foldin *f = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    CHECKF(f != NULL, "%s", err);
    if (f == NULL)
        return;
    double M = -1.0;
    for (int i = 0; i < 5; i++)
        hl_foldin_add(f, "zero", 4, q, 0.0f, i);
    int rc = hl_foldin_sums(f, "zero", 4, S, &M);
    CHECKF(hl_foldin_due(f, "zero", 4) == 0 && rc == HL_ENOENT,
           "5 events of weight 0: due %d, sums rc %d (M %g), want 0 and not ready",
           (int)hl_foldin_due(f, "zero", 4), rc, M);
    hl_foldin_add(f, "mixed", 5, q, 0.0f, 1);
    hl_foldin_add(f, "mixed", 5, q, 1.0f, 2);
    CHECKF(hl_foldin_due(f, "mixed", 5) == 0, "one weighted event and one of weight 0: "
           "due %d, want 0 (min.events 2)", (int)hl_foldin_due(f, "mixed", 5));
    CHECK(hl_foldin_add(f, "mixed", 5, q, 2.0f, 3) == 1 && hl_foldin_due(f, "mixed", 5) == 2);
    hl_foldin_destroy(f);
}

static int sums_finite(const hl_foldin *f, const char *id, uint32_t len)
{
    float S[D];
    double M = 0.0;
    int rc = hl_foldin_sums(f, id, len, S, &M);
    int ok = rc >= 0 && M == M && M < INFINITY;
    for (int d = 0; rc >= 0 && d < D; d++)
        ok &= S[d] == S[d] && fabsf(S[d]) < INFINITY;
    return ok;
}

/* The extremes the worker lets through: an event weight of 1e30 (the
 * most a user's state takes, HL_TABLE_MAX_MASS; event.max.weight goes to
 * 1e30) by a user whose query sits at the ranker's clamp (2^64). w q was
 * inf in the item's float sums and in the lift's baseline G, and stayed:
 * decay keeps inf, and 0 x inf after a long idle is NaN. So one such event
 * spoilt its item's and, through G, every other new item's neighbours for
 * good. Such an add is refused (counted) and leaves everything finite. */
static void test_extreme_weight_is_refused(void)
{
    static model m;
    float W0[D * D] = {0}, q[D], big[D];
    for (int i = 0; i < D; i++)
        W0[i * D + i] = 1.0f;
    model_init(&m, 64, W0);
    for (int d = 0; d < D; d++)
        big[d] = q[d] = frand();
    big[0] = 0x1p64f;
    hl_foldin_opts o = {.dim = D, .max_items = 8, .min_events = 1, .half_life_ms = 1000,
                        .lift = 1.0f};
    char err[256];
    hl_foldin *f = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    CHECKF(f != NULL, "%s", err);
    if (f == NULL)
        return;
    CHECK(hl_foldin_add(f, "plain", 5, q, 1.0f, 0) == 1);
    /* a mass past the quick bound (2^36) whose sums fit: read and taken */
    CHECK(hl_foldin_add(f, "mid", 3, q, 1e12f, 0) == 1);
    int rc = hl_foldin_add(f, "hot", 3, big, 1e30f, 0);
    CHECK(hl_foldin_add(f, "hot", 3, q, 1.0f, 1000) >= 0);
    CHECK(hl_foldin_add(f, "plain", 5, q, 1.0f, 1000) == 0);
    CHECKF(sums_finite(f, "hot", 3) && sums_finite(f, "plain", 5),
           "after one event of weight 1e30 and query 2^64 on \"hot\" (add rc %d): "
           "hot's sums finite %d, plain's (lifted by G) %d", rc,
           sums_finite(f, "hot", 3), sums_finite(f, "plain", 5));
    CHECK(hl_foldin_add(f, "hot", 3, q, 1.0f, 1000000) == 0);   /* 0 x inf was NaN */
    CHECK(sums_finite(f, "hot", 3));
    hl_foldin_stats st;
    hl_foldin_stats_get(f, &st);
    CHECKF(rc == HL_ERANGE && st.refused == 1, "add rc %d, refused %llu", rc,
           (unsigned long long)st.refused);
    /* Two items each within the bound whose sum in the baseline is not:
     * the second still counts for its item, the baseline leaves it out
     * (counted apart: the event was taken, so the worker counts it folded
     * in and must not count it refused as well). */
    big[0] = 0.6f * HL_FOLDIN_MAX_SUM / 1e30f;
    CHECK(hl_foldin_add(f, "x", 1, big, 1e30f, 2000000) == 1);
    CHECK(hl_foldin_add(f, "y", 1, big, 1e30f, 2000000) == 1);
    hl_foldin_stats_get(f, &st);
    CHECK(st.refused == 1 && st.baseline_refused == 1 && sums_finite(f, "x", 1) &&
          sums_finite(f, "y", 1));
    hl_foldin_destroy(f);
}

/* Sums fed an event every 100 ms by a 30-day half-life: decayed straight
 * to each add, the float factor was exactly 1 (lambda dt < 2^-25) and the
 * item (or the lift's baseline, which takes every new item's events)
 * never decayed: M was 1e6 after 1e6 adds, 1.3% above the decayed sum.
 * Held at a base on a grid, M is within 2^-12 of its value at the newest
 * add, and a late add in or before the cell lands where an on-time one
 * would (the same sums in any order). */
static void test_dense_adds_keep_decaying(void)
{
    static model m;
    float W0[D * D] = {0}, q[D];
    for (int i = 0; i < D; i++)
        W0[i * D + i] = 1.0f;
    model_init(&m, 200, W0);
    for (int d = 0; d < D; d++)
        q[d] = frand();
    hl_foldin_opts o = {.dim = D, .max_items = 16, .min_events = 1,
                        .half_life_ms = 30 * 86400e3};
    char err[256];
    hl_foldin *f = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    CHECKF(f != NULL, "%s", err);
    if (f == NULL)
        return;
    const int n = 1000000;
    const int64_t t0 = 1700000000000, step = 100;
    double lambda = log(2.0) / o.half_life_ms, want = 0.0, M;
    float got_s[D];
    for (int i = 0; i < n; i++)
        hl_foldin_add(f, "hot", 3, q, 1.0f, t0 + i * step);
    for (int i = 0; i < n; i++)
        want += exp(-lambda * (double)((int64_t)(n - 1 - i) * step));
    CHECK(hl_foldin_sums(f, "hot", 3, got_s, &M) == 0);
    CHECKF(fabs(M / want - 1.0) < 1e-3, "after %d adds every %lld ms: M %.1f, want %.1f (%+.4f)",
           n, (long long)step, M, want, M / want - 1.0);
    hl_foldin_destroy(f);

    /* the same dense adds in two orders: late ones in and before the cell */
    hl_foldin *a = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    hl_foldin *b = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    float qs[64][D], sa[D], sb[D];
    double ma = 0.0, mb = 0.0;
    int64_t ts[64];
    for (int i = 0; i < 64; i++) {
        ts[i] = t0 + (int64_t)(frand() * 4e8f);        /* cells of 2^28 ms at 30 days */
        for (int d = 0; d < D; d++)
            qs[i][d] = frand();
    }
    for (int i = 0; i < 64; i++)
        hl_foldin_add(a, "x", 1, qs[i], 1.0f, ts[i]);
    for (int i = 63; i >= 0; i--)
        hl_foldin_add(b, "x", 1, qs[i], 1.0f, ts[i]);
    CHECK(hl_foldin_sums(a, "x", 1, sa, &ma) == 0 && hl_foldin_sums(b, "x", 1, sb, &mb) == 0);
    CHECKF(fabs(ma / mb - 1.0) < 1e-5, "M %.6f in time order, %.6f reversed", ma, mb);
    CHECK_CLOSE(sa, sb, D, 1e-4);
    hl_foldin_destroy(a);
    hl_foldin_destroy(b);
}

/* An item's interaction count is an int32 in its 64-byte head: 2^31
 * events on one item in one worker took ++count past INT32_MAX (undefined;
 * in practice INT32_MIN, and the item left the ready set for good: its
 * sums answered HL_ENOENT, it was never due again and the ready gauge
 * lost it). The count stops at INT32_MAX; the sums keep taking events. */
static void test_count_saturates(void)
{
    float q[D] = {1, 0.5f}, S[D];
    double M0 = 0, M1 = 0;
    float W0[D * D] = {0};
    char err[256];
    static model m;
    for (int d = 0; d < D; d++) W0[d * D + d] = 1.0f;
    model_init(&m, 16, W0);
    hl_foldin_opts o = {.dim = D, .max_items = 8, .min_events = 2, .half_life_ms = 1e12,
                        .neighbours = -1};
    hl_foldin *f = hl_foldin_create(&o, m.e_in, m.e_out, m.bias, m.n, err, sizeof err);
    CHECKF(f != NULL, "%s", err);
    if (f == NULL) return;
    hl_foldin_add(f, "x", 1, q, 1.0f, 0);
    hl_foldin_add(f, "x", 1, q, 1.0f, 0);
    hl_foldin_mark(f, "x", 1, 1 << 30);
    at(f, find(f, "x", 1))->count = INT32_MAX - 1;     /* 2^31 - 2 events so far */
    CHECK(hl_foldin_sums(f, "x", 1, S, &M0) == 0);
    int32_t due[3];
    for (int i = 0; i < 3; i++)
        CHECK(hl_foldin_add_due(f, "x", 1, hl_foldin_hash("x", 1), q, 1.0f, 0, &due[i]) == 0);
    hl_foldin_stats st;
    hl_foldin_stats_get(f, &st);
    int32_t n = at(f, find(f, "x", 1))->count;
    CHECKF(n == INT32_MAX, "count %d after 2^31 + 1 events", (int)n);
    CHECKF(due[0] == INT32_MAX && due[2] == INT32_MAX, "due %d, %d (published at 2^30)",
           (int)due[0], (int)due[2]);
    CHECKF(hl_foldin_sums(f, "x", 1, S, &M1) == 0 && M1 == M0 + 3, "sums: M %g, was %g",
           M1, M0);
    CHECKF(st.ready == 1, "%d ready", (int)st.ready);
    hl_foldin_mark(f, "x", 1, n);
    CHECK(hl_foldin_due(f, "x", 1) == 0);       /* published at the cap: not again */
    hl_foldin_destroy(f);
}

int main(void)
{
    RUN(test_map_recovers_linear_relation);
    RUN(test_order_independent_and_ready);
    RUN(test_bounded_least_recent_go);
    RUN(test_cluster_buyers_spread_to_their_cluster);
    RUN(test_neighbours_are_the_means_of_the_top_items);
    RUN(test_scan_matches_plain_loop);
    RUN(test_records_match_the_definition);
    RUN(test_due_at_min_events_then_doublings);     /* after the others: their draws stay theirs */
    RUN(test_model_bias_and_shrinkage);
    RUN(test_lift_ranks_what_sets_users_apart);
    RUN(test_distinct_gate);
    RUN(test_idle_sums_reach_zero);
    RUN(test_zero_weight_is_no_interaction);
    RUN(test_extreme_weight_is_refused);
    RUN(test_dense_adds_keep_decaying);
    RUN(test_count_saturates);
    TEST_EXIT();
}
