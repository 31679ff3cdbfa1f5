/* test_qscore.c - two-stage scoring: the bound (|q.e + b - a| <= U on
 * every item), the int8 kernel against its plain twin (the same
 * approximate scores and proposals to the bit), and the
 * ranker's two-stage lists against its exact (fp32) lists: the same items,
 * order and scores, on random and adversarial models (near-ties, exact
 * ties, large and mixed norms, negative biases), with seen and extra
 * exclusions, at dims 8..256. */
#define T_SUITE "qscore"
#include "test.h"
#define RNG_SEED 0x243F6A8885A308D3ull
#include "rank_util.h"
#include "qscore.h"

#include <stdint.h>

enum { M_RANDOM, M_TIES, M_NEAR_TIES, M_NORMS, M_NEG_BIAS, M_HUGE };

/* Reshapes a random e_out and bias into the adversarial kind. */
static void make_adversarial(tmodel *t, int kind)
{
    int32_t n = t->p.info.n_items;
    int dim = t->p.info.dim;
    for (int32_t j = 0; j < n; j++) {
        float *e = t->e_out + (size_t)j * dim;
        if (kind == M_TIES && j % 7 != 0) {          /* whole groups of equal rows */
            memcpy(e, t->e_out + (size_t)(j - j % 7) * dim, (size_t)dim * sizeof(float));
            t->bias[j] = t->bias[j - j % 7];
        } else if (kind == M_NEAR_TIES && j % 5 != 0) { /* a few ulps apart */
            memcpy(e, t->e_out + (size_t)(j - j % 5) * dim, (size_t)dim * sizeof(float));
            e[j % dim] = nextafterf(e[j % dim], j % 2 ? INFINITY : -INFINITY);
            t->bias[j] = nextafterf(t->bias[j - j % 5], INFINITY);
        } else if (kind == M_NORMS) {                 /* norms from 1e-3 to 1e3 */
            float sc = powf(10.0f, 3.0f * frand());
            for (int d = 0; d < dim; d++)
                e[d] *= sc;
        } else if (kind == M_NEG_BIAS) {              /* biases far below the dot products */
            t->bias[j] = -50.0f * (frand() + 1.0f) - (j % 3 == 0 ? 1e4f : 0.0f);
        } else if (kind == M_HUGE) {                  /* one spike per row, large values */
            e[j % dim] *= 1e6f;
            t->bias[j] *= 1e6f;
        }
    }
}

/* A model of three heads and one hidden layer of 32, of the given kind. */
static void qmodel_init(tmodel *t, int32_t n_items, int dim, int kind)
{
    tmodel_init(t, n_items, dim, 3, 1, 32);
    make_adversarial(t, kind);
}

/* Users with random heads and a ring of 32 known (and a few unknown)
 * items; every array is one allocation owned by tusers. */
#define RING 32
typedef struct tusers {
    float   *s, *m;
    int32_t *item;
    uint8_t *type;
    int64_t *ts;
    hl_row_view *v;
    int n;
} tusers;

static void tusers_init(tusers *tu, const tmodel *t, int n)
{
    int dim = t->p.info.dim;
    tu->n = n;
    tu->s = malloc((size_t)n * 3 * dim * sizeof(float));
    tu->m = malloc((size_t)n * 3 * sizeof(float));
    tu->item = malloc((size_t)n * RING * sizeof(int32_t));
    tu->type = calloc((size_t)n * RING, 1);
    tu->ts = malloc((size_t)n * RING * sizeof(int64_t));
    tu->v = calloc((size_t)n, sizeof *tu->v);
    for (int u = 0; u < n; u++) {
        hl_row_view *v = &tu->v[u];
        for (int h = 0; h < 3; h++) {
            tu->m[u * 3 + h] = 0.1f + 3.0f * (frand() + 1.0f);
            for (int d = 0; d < dim; d++)
                tu->s[((size_t)u * 3 + h) * dim + d] = tu->m[u * 3 + h] * frand();
        }
        for (int i = 0; i < RING; i++) {
            uint32_t z = urand() % 20;
            tu->item[u * RING + i] = z == 0 ? -1
                : (int32_t)(urand() % (uint32_t)t->p.info.n_items);
            tu->ts[u * RING + i] = 1000000000 - (int64_t)(urand() % 100000000);
        }
        v->user = "u";
        v->user_len = 1;
        v->s = tu->s + (size_t)u * 3 * dim;
        v->m = tu->m + (size_t)u * 3;
        v->t_ref_ms = 1000000000;
        v->history = RING;
        v->n_hist = u % 5 == 0 ? 0 : RING;
        v->hist_item = tu->item + (size_t)u * RING;
        v->hist_type = tu->type + (size_t)u * RING;
        v->hist_ts_ms = tu->ts + (size_t)u * RING;
    }
}

static void tusers_free(tusers *tu)
{
    free(tu->s);
    free(tu->m);
    free(tu->item);
    free(tu->type);
    free(tu->ts);
    free(tu->v);
}

static hl_ranker *make_ranker(const tmodel *t, int k, int scoring, int qkernel, int max_batch)
{
    char err[256] = "";
    hl_rank_opts o = {.k = k, .exclude_seen = 1, .max_batch = max_batch,
                      .scoring = scoring, .qkernel = qkernel};
    hl_ranker *r = hl_ranker_create_parts(&t->p, &o, err, sizeof err);
    CHECKF(r != NULL, "create: %s", err);
    return r;
}

/* Extra exclusions for every other user: 40 random items (some out of
 * range, some repeated). */
static hl_rank_exclude *make_extra(const tmodel *t, int n, int32_t *buf)
{
    hl_rank_exclude *ex = calloc((size_t)n, sizeof *ex);
    for (int u = 0; u < n; u++) {
        ex[u].item = buf + (size_t)u * 40;
        ex[u].n = u % 2 ? 40 : 0;
        for (int i = 0; i < 40; i++)
            buf[(size_t)u * 40 + i] = i == 7 ? t->p.info.n_items + 3 : i == 8
                ? buf[(size_t)u * 40] : (int32_t)(urand() % (uint32_t)t->p.info.n_items);
    }
    return ex;
}

/* The exact and two-stage lists of every user, compared: same length,
 * items, order, and the same float scores. Returns the fallbacks. */
static uint64_t compare_scoring(const tmodel *t, int k, int n_users, int qkernel,
                                int with_extra, const char *what)
{
    tusers tu;
    int32_t *buf = malloc((size_t)n_users * 40 * sizeof(int32_t));
    hl_rank_exclude *ex = with_extra ? make_extra(t, n_users, buf) : NULL;
    hl_rec *a = calloc((size_t)n_users * k, sizeof *a), *b = calloc((size_t)n_users * k, sizeof *b);
    int *na = calloc((size_t)n_users, sizeof(int)), *nb = calloc((size_t)n_users, sizeof(int));
    uint64_t fb = 0;

    tusers_init(&tu, t, n_users);
    hl_ranker *re = make_ranker(t, k, HL_SCORING_EXACT, 0, n_users);
    hl_ranker *rt = make_ranker(t, k, HL_SCORING_TWO_STAGE, qkernel, n_users);
    if (re && rt) {
        CHECK(hl_ranker_refresh_ex(re, tu.v, n_users, ex, a, na) == 0);
        CHECK(hl_ranker_refresh_ex(rt, tu.v, n_users, ex, b, nb) == 0);
        fb = hl_ranker_fallbacks(rt);
    }
    for (int u = 0; re && rt && u < n_users && !t_case_failed; u++) {
        CHECKF(na[u] == nb[u], "%s user %d: %d recs exact, %d two-stage", what, u, na[u], nb[u]);
        for (int j = 0; j < na[u] && !t_case_failed; j++) {
            const hl_rec *x = &a[(size_t)u * k + j], *y = &b[(size_t)u * k + j];
            CHECKF(x->item == y->item && x->score == y->score && x->because == y->because,
                   "%s user %d rank %d: exact item %d score %.9g, two-stage item %d score %.9g",
                   what, u, j, x->item, x->score, y->item, y->score);
        }
    }
    hl_ranker_destroy(re);
    hl_ranker_destroy(rt);
    tusers_free(&tu);
    free(a); free(b); free(na); free(nb); free(ex); free(buf);
    return fb;
}

static int have_vnni(void)
{
    char err[128];
    float e[16] = {1}, b[1] = {0};
    hl_qitems *qi = hl_qitems_create(e, b, 1, 16, HL_QKERNEL_AUTO, err, sizeof err);
    int yes = qi && strcmp(hl_qitems_kernel(qi), "avx512-vnni") == 0;
    hl_qitems_destroy(qi);
    return yes;
}

/* The vector kernel and its plain twin: the same a_j, bit for bit, on
 * every item, at dims that do and do not fill a group of four. */
static void test_kernel_matches_plain(void)
{
    static const int dims[] = {1, 3, 8, 13, 64, 100, 256};
    char err[256];
    if (!have_vnni())
        SKIP("this CPU has no AVX-512 VNNI: the plain kernel is the only one");
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        int dim = dims[i];
        int32_t n = 1000 + (int32_t)(urand() % 37);
        float *e = rand_array((size_t)n * dim, 2.0f), *bias = rand_array((size_t)n, 1.0f);
        float *q = rand_array((size_t)dim, 3.0f);
        float *av = malloc((size_t)n * sizeof(float)), *ap = malloc((size_t)n * sizeof(float));
        hl_qitems *qv = hl_qitems_create(e, bias, n, dim, HL_QKERNEL_AUTO, err, sizeof err);
        hl_qitems *qp = hl_qitems_create(e, bias, n, dim, HL_QKERNEL_PLAIN, err, sizeof err);
        CHECK(qv && qp && strcmp(hl_qitems_kernel(qp), "plain") == 0);
        if (qv && qp) {
            CHECK(hl_qitems_approx(qv, q, av, NULL) == 0 && hl_qitems_approx(qp, q, ap, NULL) == 0);
            for (int32_t j = 0; j < n && !t_case_failed; j++)
                CHECKF(memcmp(&av[j], &ap[j], sizeof(float)) == 0,
                       "dim %d item %d: vnni %.9g plain %.9g", dim, j, av[j], ap[j]);
            /* and both are close to the real score */
            for (int32_t j = 0; j < n && !t_case_failed; j++) {
                double s = bias[j];
                for (int d = 0; d < dim; d++)
                    s += (double)q[d] * e[(size_t)j * dim + d];
                CHECKF(fabs(s - ap[j]) < 0.05 * (1.0 + fabs(s)) + 0.02 * dim,
                       "dim %d item %d: approx %.6g, exact %.6g", dim, j, ap[j], s);
            }
        }
        hl_qitems_destroy(qv);
        hl_qitems_destroy(qp);
        free(e); free(bias); free(q); free(av); free(ap);
    }
}

/* The bound itself: |q . e_j + b_j - a_j| <= U_j for every item (the
 * real score in long double, whose own error is far below the slack), on
 * every kind of model and query scale; and the bound is not vacuous: on a
 * random model it is under a tenth of the scores' spread. */
static void test_bound_holds(void)
{
    static const int dims[] = {8, 64, 256};
    static const float scales[] = {1e-3f, 1.0f, 1e4f};
    for (int kind = M_RANDOM; kind <= M_HUGE; kind++)
        for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
            for (size_t si = 0; si < sizeof scales / sizeof scales[0]; si++) {
                tmodel t;
                char err[256];
                int dim = dims[i];
                qmodel_init(&t, 2000, dim, kind);
                hl_qitems *qi = hl_qitems_create(t.e_out, t.bias, 2000, dim, 0, err, sizeof err);
                float *q = rand_array((size_t)dim, scales[si]);
                float *a = malloc(2000 * sizeof(float)), *U = malloc(2000 * sizeof(float));
                CHECKF(qi != NULL, "%s", err);
                if (qi && hl_qitems_approx(qi, q, a, U) == 0) {
                    double spread = 0.0, u_max = 0.0;
                    for (int32_t j = 0; j < 2000 && !t_case_failed; j++) {
                        long double s = t.bias[j];
                        for (int d = 0; d < dim; d++)
                            s += (long double)q[d] * t.e_out[(size_t)j * dim + d];
                        CHECKF(fabsl(s - a[j]) <= U[j], "kind %d dim %d scale %g item %d: "
                               "|%.9Lg - %.9g| > U %.9g", kind, dim, scales[si], j, s, a[j], U[j]);
                        spread = fmax(spread, fabs((double)s));
                        u_max = fmax(u_max, U[j]);
                    }
                    if (kind == M_RANDOM && !t_case_failed)
                        CHECKF(u_max < 0.1 * spread, "dim %d: bound %g vs scores up to %g",
                               dim, u_max, spread);
                }
                hl_qitems_destroy(qi);
                free(q); free(a); free(U);
                tmodel_free(&t);
            }
}

/* Both kernels propose the same items for the same users. */
static void test_kernels_propose_alike(void)
{
    if (!have_vnni())
        SKIP("this CPU has no AVX-512 VNNI: the plain kernel is the only one");
    for (int kind = M_RANDOM; kind <= M_HUGE; kind++) {
        tmodel t;
        qmodel_init(&t, 3001, 24, kind);
        hl_ranker *rv = make_ranker(&t, 10, HL_SCORING_TWO_STAGE, HL_QKERNEL_AUTO, 9);
        hl_ranker *rp = make_ranker(&t, 10, HL_SCORING_TWO_STAGE, HL_QKERNEL_PLAIN, 9);
        CHECK(rv && rp && strcmp(hl_ranker_scoring(rv), "two-stage/avx512-vnni") == 0 &&
              strcmp(hl_ranker_scoring(rp), "two-stage/plain") == 0);
        hl_ranker_destroy(rv);
        hl_ranker_destroy(rp);
        /* the lists of both equal the exact ones (and so each other) */
        compare_scoring(&t, 10, 9, HL_QKERNEL_AUTO, 1, "vnni");
        compare_scoring(&t, 10, 9, HL_QKERNEL_PLAIN, 1, "plain");
        tmodel_free(&t);
    }
}

/* Random models at dims 8..256, batches that do and do not fill a group
 * of four users, with seen and extra exclusions; few users fall back. */
static void test_random_equals_exact(void)
{
    static const int dims[] = {8, 16, 31, 64, 128, 256};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        tmodel t;
        char what[64];
        qmodel_init(&t, 20000 + (int32_t)(urand() % 100), dims[i], M_RANDOM);
        snprintf(what, sizeof what, "random dim %d", dims[i]);
        uint64_t fb = compare_scoring(&t, 20, 23, HL_QKERNEL_AUTO, 1, what);
        CHECKF(fb <= 2, "%s: %llu of 23 users fell back to the exact scan", what,
               (unsigned long long)fb);
        fb = compare_scoring(&t, 20, 5, HL_QKERNEL_PLAIN, 0, what);
        CHECKF(fb <= 1, "%s plain: %llu of 5 users fell back", what, (unsigned long long)fb);
        tmodel_free(&t);
    }
}

/* Adversarial models: the lists must still be the exact ones (a crowd of
 * ties may send users to the exact scan; the list is the same). */
static void test_adversarial_equals_exact(void)
{
    static const char *names[] = {"random", "ties", "near-ties", "norms", "neg-bias", "huge"};
    static const int dims[] = {8, 64, 256};
    for (int kind = M_TIES; kind <= M_HUGE; kind++)
        for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
            tmodel t;
            char what[64];
            qmodel_init(&t, 5000, dims[i], kind);
            snprintf(what, sizeof what, "%s dim %d", names[kind], dims[i]);
            compare_scoring(&t, 20, 17, HL_QKERNEL_AUTO, 1, what);
            compare_scoring(&t, 1, 4, HL_QKERNEL_AUTO, 1, what);
            compare_scoring(&t, 300, 4, HL_QKERNEL_PLAIN, 0, what);
            tmodel_free(&t);
        }
}

/* Fewer items than k after exclusions, and a catalogue smaller than a
 * chunk: every remaining item, in the exact order. */
static void test_short_catalogues(void)
{
    static const int32_t sizes[] = {1, 5, 16, 17, 40};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        tmodel t;
        qmodel_init(&t, sizes[i], 8, M_RANDOM);
        compare_scoring(&t, 30, 6, HL_QKERNEL_AUTO, 1, "short");
        compare_scoring(&t, 30, 6, HL_QKERNEL_PLAIN, 1, "short plain");
        tmodel_free(&t);
    }
}

/* Bad shapes and values are refused with a reason, not crashed on. */
static void test_bad_input(void)
{
    char err[256] = "";
    float e[8] = {0}, b[2] = {0};
    CHECK(hl_qitems_create(e, b, 0, 4, 0, err, sizeof err) == NULL && err[0]);
    CHECK(hl_qitems_create(e, b, 2, HL_QSCORE_MAX_DIM + 1, 0, err, sizeof err) == NULL);
    e[3] = NAN;
    err[0] = 0;
    CHECK(hl_qitems_create(e, b, 2, 4, 0, err, sizeof err) == NULL && strstr(err, "finite"));
    e[3] = 0;
    b[1] = INFINITY;
    CHECK(hl_qitems_create(e, b, 2, 4, 0, err, sizeof err) == NULL);
    b[1] = 0;
    hl_qitems *qi = hl_qitems_create(e, b, 2, 4, 0, err, sizeof err);
    CHECK(qi != NULL);
    float q[4] = {1, NAN, 0, 0}, a[2];
    CHECK(qi && hl_qitems_approx(qi, q, a, NULL) == HL_ERANGE);
    hl_qscan *qs = qi ? hl_qscan_create(qi, 2, 1, err, sizeof err) : NULL;
    CHECK(qs != NULL);
    hl_qscan_user us[3] = {{.q = q}, {.q = q}, {.q = q}};
    CHECK(qs && hl_qscan_run(qs, us, 3) == HL_EINVAL);
    int nc;
    CHECK(qs && hl_qscan_run(qs, us, 1) == 0 && hl_qscan_cands(qs, 0, &nc) == NULL);
    hl_qscan_destroy(qs);
    hl_qitems_destroy(qi);
    tmodel t;
    qmodel_init(&t, 10, 8, M_RANDOM);
    hl_rank_opts o = {.k = 5, .max_batch = 1, .scoring = 7};
    CHECK(hl_ranker_create_parts(&t.p, &o, err, sizeof err) == NULL && strstr(err, "scoring"));
    tmodel_free(&t);
}

int main(void)
{
    RUN(test_kernel_matches_plain);
    RUN(test_bound_holds);
    RUN(test_kernels_propose_alike);
    RUN(test_random_equals_exact);
    RUN(test_adversarial_equals_exact);
    RUN(test_short_catalogues);
    RUN(test_bad_input);
    TEST_EXIT();
}
