/* test_train.c - core/train.c: the backward pass against finite
 * differences (full softmax, sampled softmax, tied embeddings), identical
 * bytes for the same seed, a sequence rule that must be learned, the
 * training forward against the serving encoder (core/encoder.h), the model
 * file round trip, and the optimised kernels against their plain twins.
 *
 * It includes the core/train*.c files themselves (with HL_TEST) to reach
 * the static trainer and kernels; the library's copies are then never
 * pulled in. */
#define T_SUITE "test_train"
#define HL_TEST
#include "train/train.c"
#include "train/train_eval.c"
#include "train/train_kernels.c"
#include "train/train_net.c"
#include "test.h"

#include <stdio.h>
#include <unistd.h>

/* ---- synthetic data ---------------------------------------------------------------------- */

#define HOUR_MS 3600000LL

typedef struct synth {
    int64_t n;
    int32_t user[4096], item[4096];
    uint8_t type[4096];
    int64_t ts[4096];
    float   weight[4096];
    hl_train_data d;
} synth;

/* The events' spacing (each jittered by up to a second, less when the
 * spacing is shorter, so they stay in time order). */
static int64_t g_step_ms = HOUR_MS;

/* n_users users of len events; the next item is (item + 7) mod n_items (one
 * cycle through every item, so a target is never a seen item), the first
 * one random. Types cycle so type weights matter. */
static void synth_rule(synth *s, int n_users, int len, int n_items, uint64_t seed)
{
    uint64_t jitter = g_step_ms < 1000 ? (uint64_t)g_step_ms : 1000;
    rng r = {seed};
    s->n = 0;
    for (int u = 0; u < n_users; u++) {
        int32_t it = (int32_t)(rng_next(&r) % (uint64_t)n_items);
        for (int k = 0; k < len && s->n < 4096; k++) {
            s->user[s->n] = u;
            s->item[s->n] = it;
            s->type[s->n] = (uint8_t)(k % 3 == 2 ? HL_PURCHASE : HL_VIEW);
            s->ts[s->n] = k * g_step_ms + (int64_t)(rng_next(&r) % jitter);
            s->weight[s->n] = 1.0f + 0.25f * (float)(k % 2);
            s->n++;
            it = (it + 7) % n_items;
        }
    }
    s->d = (hl_train_data){s->n, n_users, n_items, s->user, s->item, s->type,
                           s->ts, s->weight};
}

static void tiny_opts(hl_train_opts *o)
{
    hl_train_opts_default(o);
    o->dim = 4;
    o->n_heads = 2;
    o->half_life_ms[0] = 1.0 * HOUR_MS;
    o->half_life_ms[1] = 24.0 * HOUR_MS;
    o->hidden[0] = 6;
    o->batch = 8;
    o->epochs = 1;
    o->max_history = 5;          /* shorter than the sequences: truncation is exercised */
    o->learn_half_lives = 0;     /* the tests that want it say so */
    o->tie = 0;
    o->dropout = 0.3f;
    o->full_softmax_max_items = 50000;
}

/* ---- gradient check ---------------------------------------------------------------------- */

/* Loss of one fixed batch (summed; the gradient is of the mean). The
 * generator is rewound so sampled negatives are the same every call. */
static double batch_loss(trainer *t, const int64_t *idx, int B, rng r0)
{
    t->r = r0;
    double loss = batch_grad(t, idx, B, 0);
    memset(t->g_block, 0, t->p.n_params * sizeof(float));
    return loss;
}

static void grad_check(hl_train_opts *o, int max_bad)
{
    synth s;
    trainer t;
    char err[256];
    synth_rule(&s, 4, 9, 11, 5);
    int rc = trainer_init(&t, o, &s.d, err, sizeof err);
    CHECKF(rc == 0, "trainer_init: %s", err);
    if (rc) { trainer_free(&t); return; }
    int B = 6;
    int64_t idx[6] = {0, 3, 7, 12, 20, 25};
    rng r0 = t.r;
    memset(t.g_block, 0, t.p.n_params * sizeof(float));
    t.r = r0;
    batch_grad(&t, idx, B, 0);
    float *g = malloc(t.p.n_params * sizeof *g);
    memcpy(g, t.g_block, t.p.n_params * sizeof *g);
    memset(t.g_block, 0, t.p.n_params * sizeof(float));
    int bad = 0;
    for (size_t i = 0; i < t.p.n_params; i++) {
        float keep = t.p_block[i], h = 1e-2f;
        t.p_block[i] = keep + h;
        double lp = batch_loss(&t, idx, B, r0);
        t.p_block[i] = keep - h;
        double lm = batch_loss(&t, idx, B, r0);
        t.p_block[i] = keep;
        double fd = (lp - lm) / (2.0 * h) / B;
        if (fabs(fd - g[i]) > 2e-3 + 3e-2 * fabs(fd)) {
            if (bad < 3) printf("    param %zu: backward %.6g, finite difference %.6g\n",
                                i, g[i], fd);
            bad++;
        }
    }
    /* A ReLU kink inside +-h can spoil a handful; a wrong formula spoils many. */
    CHECKF(bad <= max_bad, "%d of %zu gradients disagree with finite differences",
           bad, t.p.n_params);
    free(g);
    trainer_free(&t);
}

static void test_grad_full_softmax(void)
{
    hl_train_opts o;
    tiny_opts(&o);
    grad_check(&o, 2);
}

static void test_grad_sampled_softmax(void)
{
    hl_train_opts o;
    tiny_opts(&o);
    o.full_softmax_max_items = 5;      /* 11 items: sampled */
    o.n_negatives = 7;
    grad_check(&o, 2);
}

static void test_grad_tied_no_hidden(void)
{
    hl_train_opts o;
    tiny_opts(&o);
    o.tie = 1;
    o.n_hidden = 0;
    grad_check(&o, 0);
}

/* The gradient through each head's decay rate (learn_half_lives) against
 * finite differences of log lambda, with the mean and the mass features,
 * the normalisation and history truncation all in play. */
static void test_grad_decay_rates(void)
{
    hl_train_opts o;
    synth s;
    trainer t;
    char err[256];
    tiny_opts(&o);
    o.learn_half_lives = 1;
    synth_rule(&s, 4, 9, 11, 5);
    int rc = trainer_init(&t, &o, &s.d, err, sizeof err);
    CHECKF(rc == 0, "trainer_init: %s", err);
    if (rc) { trainer_free(&t); return; }
    int B = 6, bad = 0;
    int64_t idx[6] = {0, 3, 7, 12, 20, 25};
    rng r0 = t.r;
    t.r = r0;
    batch_grad(&t, idx, B, 0);
    float g[HL_MAX_HEADS];
    memcpy(g, t.th_g, sizeof g);
    for (int h = 0; h < o.n_heads; h++) {
        float keep = t.th[h], d = 1e-2f;
        t.th[h] = keep + d;
        decay_from_theta(&t.dec, t.th);
        double lp = batch_loss(&t, idx, B, r0);
        t.th[h] = keep - d;
        decay_from_theta(&t.dec, t.th);
        double lm = batch_loss(&t, idx, B, r0);
        t.th[h] = keep;
        decay_from_theta(&t.dec, t.th);
        double fd = (lp - lm) / (2.0 * d) / B;
        printf("    head %d: backward %.6g, finite difference %.6g\n", h, g[h], fd);
        bad += fabs(fd - g[h]) > 1e-3 + 2e-2 * fabs(fd) || fabs(fd) < 1e-6;
    }
    CHECKF(bad == 0, "%d of %d decay-rate gradients disagree with finite differences",
           bad, o.n_heads);
    trainer_free(&t);
}

/* Head h's features (mean, log1p of the mass) of row r's history under
 * rate lambda, in double, from the definition: each event weighs
 * w exp(-lambda (B_h - t)), B_h the head's base at the newest event's
 * time under the trainer's grid (decay.h), as the stored heads do. */
static void features_at(const trainer *t, int64_t first, int64_t last, int h, double lambda,
                        double *x)
{
    int dim = t->p.dim;
    int64_t base = hl_decay_base_ms(&t->dec, h, t->sq.ts_ms[last]);
    double m = 0;
    memset(x, 0, sizeof *x * (size_t)(dim + 1));
    for (int64_t i = first; i <= last; i++) {
        double u = t->sq.w[i] * exp(-lambda * (double)(base - t->sq.ts_ms[i]));
        m += u;
        for (int j = 0; j < dim; j++) x[j] += u * t->p.e_in[(size_t)t->sq.item[i] * dim + j];
    }
    for (int j = 0; j < dim; j++) x[j] /= fmax(m, HL_ENCODER_EPS);
    x[dim] = log1p(m);
}

/* The gradient through the decay rates where events are closer than a
 * head's base grid (a session of clicks 300 ms apart; grids 1 s and
 * 16 s): decay_grad against the features' derivative in d log lambda,
 * taken by central differences of the double definition, for a random
 * dX. Before, decay_grad took each event's age from t_ref while the
 * features read the heads at their bases, so the mass feature's part was
 * off by lambda (t_ref - B_h) m / (1 + m): small beside an age of hours,
 * but the whole gradient, even of the wrong sign, within a session. */
static void test_grad_decay_rates_dense(void)
{
    hl_train_opts o;
    synth s;
    trainer t;
    char err[256];
    tiny_opts(&o);
    o.learn_half_lives = 1;
    g_step_ms = 300;
    synth_rule(&s, 4, 9, 11, 5);
    g_step_ms = HOUR_MS;
    int rc = trainer_init(&t, &o, &s.d, err, sizeof err);
    CHECKF(rc == 0, "trainer_init: %s", err);
    if (rc) { trainer_free(&t); return; }
    enum { B = 6 };
    int64_t idx[B] = {0, 3, 7, 12, 20, 25};
    int in = t.p.in_dim, dim = t.p.dim;         /* tiny_opts: 4, within xp's 16 */
    float *dX = malloc(sizeof *dX * (size_t)B * in);
    double xp[16], xm[16], want[HL_MAX_HEADS] = {0};
    rng r = {7};
    for (int i = 0; i < B * in; i++) dX[i] = 2.0f * (float)rng_unit(&r) - 1.0f;
    batch_inputs(&t, idx, B, 0);
    memset(t.th_g, 0, sizeof t.th_g);
    decay_grad(&t, B, dX);
    for (int k = 0; k < B; k++) {
        int64_t last = t.ex_last[idx[k]], first = t.sq.off[t.ex_user[idx[k]]];
        if (last - first + 1 > t.H) first = last - t.H + 1;
        for (int h = 0; h < o.n_heads; h++) {
            double l = t.dec.lambda_per_ms[h], e = 1e-4;
            features_at(&t, first, last, h, l * exp(e), xp);
            features_at(&t, first, last, h, l * exp(-e), xm);
            for (int j = 0; j <= dim; j++)
                want[h] += dX[(size_t)k * in + h * (dim + 1) + j] * (xp[j] - xm[j]) / (2 * e);
        }
    }
    for (int h = 0; h < o.n_heads; h++)
        CHECKF(fabs(t.th_g[h] - want[h]) <= 1e-2 * fabs(want[h]) + 1e-9,
               "head %d: d/d log lambda %.6g, the definition's %.6g", h, t.th_g[h], want[h]);
    free(dX);
    trainer_free(&t);
}

/* ---- determinism and learning ------------------------------------------------------------ */

static void train_or_fail(const hl_train_opts *o, const hl_train_data *d, hl_train_result *r)
{
    char err[256];
    int rc = hl_train_run(o, d, r, err, sizeof err);
    CHECKF(rc == 0, "hl_train_run: %s", err);
}

static int results_equal(const hl_train_result *a, const hl_train_result *b)
{
    size_t emb = (size_t)a->info.n_items * a->info.dim * sizeof(float);
    int same = memcmp(a->e_in, b->e_in, emb) == 0 && memcmp(a->e_out, b->e_out, emb) == 0 &&
               memcmp(a->bias, b->bias, (size_t)a->info.n_items * sizeof(float)) == 0;
    net n;
    hl_train_net_of_result(&n, a);
    for (int l = 0; l < n.n_layers; l++)
        same &= memcmp(a->layer_w[l], b->layer_w[l],
                       (size_t)n.layer_in[l] * n.layer_out[l] * sizeof(float)) == 0;
    return same;
}

/* Learned half-lives reach the model: they move from their start, stay
 * ordered and in range, and the result's encoder uses them. */
static void test_half_lives_are_learned(void)
{
    hl_train_opts o;
    synth s;
    hl_train_result r;
    tiny_opts(&o);
    o.learn_half_lives = 1;
    o.epochs = 4;
    o.lr = 0.05f;
    synth_rule(&s, 60, 12, 23, 9);
    train_or_fail(&o, &s.d, &r);
    const hl_model_info *mi = &r.info;
    int moved = 0, ordered = 1;
    for (int h = 0; h < mi->n_heads; h++) {
        moved += fabs(mi->half_life_ms[h] / o.half_life_ms[h] - 1) > 0.01;
        ordered &= mi->half_life_ms[h] >= HL_MIN_MS && mi->half_life_ms[h] <= HL_MAX_MS;
        if (h > 0) ordered &= mi->half_life_ms[h] >= 1.049 * mi->half_life_ms[h - 1];
    }
    printf("    learned half-lives: %.3g h, %.3g h (from 1 h, 24 h)\n",
           mi->half_life_ms[0] / HOUR_MS, mi->half_life_ms[1] / HOUR_MS);
    CHECKF(moved > 0 && ordered, "moved %d, ordered and in range %d", moved, ordered);
    hl_train_result_reset(&r);
}

static void test_same_seed_same_bytes(void)
{
    synth s;
    hl_train_opts o;
    hl_train_result a, b, c;
    synth_rule(&s, 40, 10, 30, 9);
    tiny_opts(&o);
    o.dim = 8;
    o.epochs = 3;
    o.dropout = 0.2f;
    o.holdout_loo = 1;
    train_or_fail(&o, &s.d, &a);
    train_or_fail(&o, &s.d, &b);
    o.seed = 2;
    train_or_fail(&o, &s.d, &c);
    if (a.e_in && b.e_in && c.e_in) {
        CHECK(results_equal(&a, &b));
        CHECK(!results_equal(&a, &c));
        CHECK(a.valid_hr10 == b.valid_hr10 && a.test_hr10 == b.test_hr10);
    }
    hl_train_result_reset(&a);
    hl_train_result_reset(&b);
    hl_train_result_reset(&c);
}

static void test_sequence_rule_is_learned(void)
{
    synth s;
    hl_train_opts o;
    hl_train_result r;
    synth_rule(&s, 200, 12, 50, 3);
    hl_train_opts_default(&o);
    o.dim = 16;
    o.hidden[0] = 32;
    o.epochs = 12;
    o.batch = 64;
    o.lr = 5e-3f;
    o.dropout = 0.0f;
    o.holdout_loo = 1;
    train_or_fail(&o, &s.d, &r);
    CHECKF(r.test_hr10 >= 0.95, "test HR@10 %.3f (valid %.3f), want >= 0.95",
           r.test_hr10, r.valid_hr10);
    CHECKF(r.test_ndcg10 >= 0.7, "test NDCG@10 %.3f", r.test_ndcg10);
    /* The public evaluation agrees with the one run inside training. */
    double hr, ndcg;
    char err[256];
    CHECK(hl_train_eval_loo(&r, &s.d, 1, 0, &hr, &ndcg, err, sizeof err) == 0);
    CHECK(hr == r.test_hr10 && ndcg == r.test_ndcg10);
    hl_train_result_reset(&r);
}

static void test_sampled_rule_is_learned(void)
{
    synth s;
    hl_train_opts o;
    hl_train_result r;
    synth_rule(&s, 200, 12, 50, 4);
    hl_train_opts_default(&o);
    o.dim = 16;
    o.hidden[0] = 32;
    o.epochs = 12;
    o.batch = 64;
    o.lr = 5e-3f;
    o.holdout_loo = 1;
    o.dropout = 0.0f;
    o.full_softmax_max_items = 10;
    o.n_negatives = 16;
    train_or_fail(&o, &s.d, &r);
    CHECKF(r.test_hr10 >= 0.9, "sampled softmax: test HR@10 %.3f", r.test_hr10);
    hl_train_result_reset(&r);
}

/* ---- training forward == serving encoder ------------------------------------------------ */

static void test_forward_equals_encoder(void)
{
    synth s;
    hl_train_opts o;
    hl_train_result r;
    synth_rule(&s, 20, 8, 25, 11);
    tiny_opts(&o);
    o.dim = 8;
    o.n_hidden = 2;
    o.hidden[0] = 12;
    o.hidden[1] = 10;
    o.epochs = 2;
    train_or_fail(&o, &s.d, &r);
    if (!r.e_in) return;

    /* The heads of user 3 after all its events, applied by the worker's
     * code, turned into x by the encoder, must equal hl_train_heads_input's
     * x. */
    hl_decay dec;
    seqs sq;
    char err[256];
    CHECK(hl_decay_init(&dec, o.n_heads, o.dim, o.half_life_ms, err, sizeof err) == 0);
    CHECK(hl_train_seqs_build(&sq, &s.d, o.type_weight, err, sizeof err) == 0);
    int in_dim = o.n_heads * (o.dim + 1);
    float xs[4 * 32], xt[4 * 32], sbuf[64], st[64], m[HL_MAX_HEADS] = {0};
    int64_t t_ref = INT64_MIN;
    memset(st, 0, sizeof st);
    for (int64_t i = sq.off[3]; i < sq.off[4]; i++)
        hl_decay_add(&dec, st, m, &t_ref, sq.ts_ms[i], sq.w[i], r.e_in + (size_t)sq.item[i] * o.dim);
    hl_encoder_features(o.n_heads, o.dim, st, m, xs);
    hl_train_heads_input(&dec, r.e_in, &sq, sq.off[3], sq.off[4] - 1, sbuf, xt, NULL);
    CHECK_CLOSE(xt, xs, in_dim, 0);

    /* Four rows of x through the training MLP and through the encoder. */
    for (int i = in_dim; i < 4 * in_dim; i++) xs[i] = (float)((i * 37) % 11) / 5.0f - 1.0f;
    float q_train[4 * 8], act[4 * (12 + 10 + 8)];
    hl_model_parts p;
    hl_encoder_net en;
    CHECK(hl_train_encode(&r, xs, 4, q_train, err, sizeof err) == 0);
    hl_train_result_parts(&r, NULL, NULL, &p);
    hl_encoder_net_from_parts(&en, &p);
    CHECK(hl_encoder_net_check(&en, err, sizeof err) == 0);
    CHECK(hl_encoder_act_floats(&en, 4) <= sizeof act / sizeof act[0]);
    const float *q_enc = hl_encoder_forward(&en, xs, 4, act);
    CHECK_CLOSE(q_train, q_enc, 4 * o.dim, 1e-5);
    hl_train_seqs_free(&sq);
    hl_train_result_reset(&r);
}

/* ---- model file --------------------------------------------------------------------------- */

static void test_model_round_trip(void)
{
    synth s;
    hl_train_opts o;
    hl_train_result r;
    synth_rule(&s, 10, 6, 12, 2);
    tiny_opts(&o);
    train_or_fail(&o, &s.d, &r);
    if (!r.e_in) return;
    char ids[12][8], path[64], err[256];
    const char *idp[12];
    uint32_t idl[12];
    for (int i = 0; i < 12; i++) {
        idl[i] = (uint32_t)snprintf(ids[i], sizeof ids[i], "it%d", i);
        idp[i] = ids[i];
    }
    snprintf(path, sizeof path, "/tmp/test_train_%d.hlm", (int)getpid());
    snprintf(r.info.version, sizeof r.info.version, "halflife-train test seed=1");
    hl_model_parts p;
    hl_train_result_parts(&r, idp, idl, &p);
    int rc = hl_model_write(path, &p, err, sizeof err);
    CHECKF(rc == 0, "hl_model_write: %s", err);
    hl_model *m = rc ? NULL : hl_model_open(path, err, sizeof err);
    CHECKF(rc || m, "hl_model_open: %s", err);
    if (m) {
        const hl_model_info *mi = hl_model_info_get(m);
        CHECK(mi->dim == 4 && mi->n_heads == 2 && mi->n_items == 12 && mi->n_layers == 2);
        CHECK(mi->half_life_ms[1] == 24.0 * HOUR_MS);
        CHECK(mi->type_weight[HL_PURCHASE] == o.type_weight[HL_PURCHASE]);
        CHECK(hl_model_item_find(m, "it7", 3) == 7);
        CHECK_CLOSE(hl_model_e_in(m), r.e_in, 12 * 4, 0);
        CHECK_CLOSE(hl_model_e_out(m), r.e_out, 12 * 4, 0);
        CHECK_CLOSE(hl_model_layer_w(m, 1), r.layer_w[1], 4 * 6, 0);
        hl_model_close(m);
    }
    unlink(path);
    hl_train_result_reset(&r);
}

/* --init: items the old model knows start from its rows, the MLP from its
 * weights; the others start fresh; another dim is refused. Epochs 0 shows
 * the starting point itself. */
static void test_warm_start(void)
{
    synth s;
    hl_train_opts o;
    hl_train_result a, b;
    char ids[12][8], path[64], err[256];
    const char *idp[12];
    uint32_t idl[12];
    synth_rule(&s, 10, 6, 12, 2);
    tiny_opts(&o);
    train_or_fail(&o, &s.d, &a);
    if (!a.e_in) return;
    for (int i = 0; i < 12; i++) {
        idl[i] = (uint32_t)snprintf(ids[i], sizeof ids[i], "it%d", i);
        idp[i] = ids[i];
    }
    snprintf(path, sizeof path, "/tmp/test_train_init_%d.hlm", (int)getpid());
    snprintf(a.info.version, sizeof a.info.version, "init");
    hl_model_parts p;
    hl_train_result_parts(&a, idp, idl, &p);
    hl_model *m = hl_model_write(path, &p, err, sizeof err) == 0
                ? hl_model_open(path, err, sizeof err) : NULL;
    CHECKF(m != NULL, "%s", err);
    int32_t rows[12];
    for (int i = 0; i < 12; i++) rows[i] = i < 6 ? 11 - i : -1;   /* another order */
    o.init = m;
    o.init_row = rows;
    o.epochs = 0;
    o.seed = 99;
    train_or_fail(&o, &s.d, &b);
    if (m && b.e_in) {
        for (int i = 0; i < 6; i++) {
            CHECK_CLOSE(b.e_in + i * 4, a.e_in + (11 - i) * 4, 4, 0);
            CHECK_CLOSE(b.e_out + i * 4, a.e_out + (11 - i) * 4, 4, 0);
        }
        CHECK(memcmp(b.e_in + 6 * 4, a.e_in + 6 * 4, 6 * 4 * sizeof(float)) != 0);
        CHECK_CLOSE(b.layer_w[0], a.layer_w[0], 6 * 2 * 5, 0);
        CHECK_CLOSE(b.layer_w[1], a.layer_w[1], 4 * 6, 0);
        hl_train_result_reset(&b);
        o.dim = 8;
        CHECK(hl_train_run(&o, &s.d, &b, err, sizeof err) == HL_EINVAL);
        CHECKF(strstr(err, "--init model has dim 4") != NULL, "err=%s", err);
    }
    hl_model_close(m);
    unlink(path);
    hl_train_result_reset(&a);
    hl_train_result_reset(&b);
}

/* ---- kernels against their twins -------------------------------------------------------- */

static void test_fast_exp_accuracy(void)
{
    double worst = 0;
    for (float x = -80.0f; x <= 0.0f; x += 0.0137f) {
        double want = exp((double)x), rel = fabs(fast_exp(x) - want) / want;
        worst = rel > worst ? rel : worst;
    }
    CHECKF(worst < 1e-5, "fast_exp worst relative error %.3g", worst);
    CHECK(fast_exp(-INFINITY) >= 0.0f && fast_exp(-INFINITY) < 1e-37f);
    CHECK(fast_exp(0.0f) == 1.0f);
}

static void test_softmax_matches_naive(void)
{
    enum { B = 5, C = 301 };
    static float a[B * C], b[B * C], bias[C];
    int32_t tc[B] = {0, 7, 300, 150, 42};
    rng r = {77};
    for (int i = 0; i < B * C; i++) a[i] = b[i] = 8.0f * rng_normal(&r);
    for (int j = 0; j < C; j++) bias[j] = rng_normal(&r);
    a[3 * C + 5] = b[3 * C + 5] = -INFINITY;           /* a masked column */
    double la = hl_train_softmax_xent(a, bias, B, C, tc);
    double lb = softmax_xent_naive(b, bias, B, C, tc);
    CHECKF(fabs(la - lb) < 1e-4 * fabs(lb), "loss %.9g vs naive %.9g", la, lb);
    CHECK_CLOSE(a, b, B * C, 1e-5);
}

static void test_adam_simd_matches_scalar(void)
{
    enum { N = 1003 };
    static float p1[N], g1[N], m1[N], v1[N], p2[N], g2[N], m2[N], v2[N];
    rng r = {5};
    for (int i = 0; i < N; i++) {
        p1[i] = p2[i] = rng_normal(&r);
        g1[i] = g2[i] = rng_normal(&r);
        m1[i] = m2[i] = 0.1f * rng_normal(&r);
        v1[i] = v2[i] = fabsf(rng_normal(&r));
    }
    adam_k k = {1e-3f, 1e-5f, 0.01f};
    adam_update(p1, g1, m1, v1, N, k);
    adam_scalar(p2, g2, m2, v2, 0, N, k);
    CHECK_CLOSE(p1, p2, N, 1e-6);
    CHECK_CLOSE(m1, m2, N, 1e-6);
    CHECK_CLOSE(v1, v2, N, 1e-6);
    CHECK(g1[0] == 0.0f && g1[N - 1] == 0.0f);
}

/* --ema: what is written is the running average of the steps' parameters
 * and log rates. One step per epoch (the batch holds every example), no
 * holdout: the parameters after 0, 1 and 2 steps are the results of 0, 1
 * and 2 epochs (the first step's rate and shuffle do not depend on the
 * epoch count), and the average after 2 steps is e2 (e1 p0 + (1 - e1) p1)
 * + (1 - e2) p2 with e_s = min(ema, (1 + s) / (10 + s)). */
static void test_ema_writes_the_average(void)
{
    synth s;
    hl_train_opts o;
    hl_train_result r[3], avg;
    synth_rule(&s, 12, 6, 9, 4);
    tiny_opts(&o);
    o.batch = 4096;
    o.lr = 0.05f;
    o.learn_half_lives = 1;
    for (int e = 0; e < 3; e++) {
        o.epochs = e;
        train_or_fail(&o, &s.d, &r[e]);
    }
    o.ema = 0.9f;
    train_or_fail(&o, &s.d, &avg);
    if (r[0].e_in && r[1].e_in && r[2].e_in && avg.e_in) {
        double e1 = 2.0 / 11.0, e2 = 3.0 / 12.0;
        size_t emb = (size_t)avg.info.n_items * avg.info.dim;
        float *want = malloc(emb * sizeof *want);
        for (size_t i = 0; i < emb; i++)
            want[i] = (float)(e2 * (e1 * r[0].e_out[i] + (1 - e1) * r[1].e_out[i]) +
                              (1 - e2) * r[2].e_out[i]);
        CHECK_CLOSE(avg.e_out, want, emb, 1e-5);
        CHECK(!results_equal(&avg, &r[2]));
        double th[3], th_avg;
        for (int e = 0; e < 3; e++)
            th[e] = log(r[e].info.half_life_ms[0]);
        th_avg = e2 * (e1 * th[0] + (1 - e1) * th[1]) + (1 - e2) * th[2];
        CHECKF(fabs(log(avg.info.half_life_ms[0]) - th_avg) < 1e-5 && th[2] != th[0],
               "log half-life %.7f, want %.7f (start %.7f)",
               log(avg.info.half_life_ms[0]), th_avg, th[0]);
        free(want);
    }
    for (int e = 0; e < 3; e++)
        hl_train_result_reset(&r[e]);
    hl_train_result_reset(&avg);
}

static void test_bad_input_is_refused(void)
{
    synth s;
    hl_train_opts o;
    hl_train_result r;
    char err[256] = "";
    synth_rule(&s, 4, 4, 6, 1);
    tiny_opts(&o);
    s.item[3] = 6;                                   /* out of range */
    CHECK(hl_train_run(&o, &s.d, &r, err, sizeof err) == HL_EINVAL);
    CHECK(strstr(err, "event 3") != NULL);
    s.item[3] = 0;
    o.dropout = 1.0f;
    CHECK(hl_train_run(&o, &s.d, &r, err, sizeof err) == HL_EINVAL);
    CHECK(r.e_in == NULL);
}

/* Users of one event each (or of two with holdout_loo, which keeps both
 * out) give no next-item example: training would hand back the random
 * start as a model, so it is refused with the reason. Zero epochs (a warm
 * start copied as is, test_warm_start) is still allowed. */
static void test_no_examples_is_refused(void)
{
    synth s;
    hl_train_opts o;
    hl_train_result r;
    char err[256] = "";
    synth_rule(&s, 8, 1, 6, 1);
    tiny_opts(&o);
    CHECK(hl_train_run(&o, &s.d, &r, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "no training examples") != NULL, "err=%s", err);
    CHECK(r.e_in == NULL);
    hl_train_result_reset(&r);
    synth_rule(&s, 8, 2, 6, 1);
    o.holdout_loo = 1;
    err[0] = 0;
    CHECK(hl_train_run(&o, &s.d, &r, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "3 events") != NULL, "err=%s", err);
    hl_train_result_reset(&r);
    o.holdout_loo = 0;
    o.epochs = 0;
    synth_rule(&s, 8, 1, 6, 1);
    CHECK(hl_train_run(&o, &s.d, &r, err, sizeof err) == 0);
    hl_train_result_reset(&r);
}

int main(void)
{
    RUN(test_grad_full_softmax);
    RUN(test_grad_sampled_softmax);
    RUN(test_grad_tied_no_hidden);
    RUN(test_grad_decay_rates);
    RUN(test_grad_decay_rates_dense);
    RUN(test_half_lives_are_learned);
    RUN(test_same_seed_same_bytes);
    RUN(test_sequence_rule_is_learned);
    RUN(test_sampled_rule_is_learned);
    RUN(test_forward_equals_encoder);
    RUN(test_model_round_trip);
    RUN(test_warm_start);
    RUN(test_fast_exp_accuracy);
    RUN(test_softmax_matches_naive);
    RUN(test_adam_simd_matches_scalar);
    RUN(test_ema_writes_the_average);
    RUN(test_bad_input_is_refused);
    RUN(test_no_examples_is_refused);
    TEST_EXIT();
}
