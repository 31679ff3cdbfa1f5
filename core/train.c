/* train.c - next-item training of e_in, the encoder MLP, e_out and biases.
 *
 * Every position t of a user's time-ordered events is one example: the
 * heads after events 0..t (the newest max_history of them, applied with
 * hl_decay_add(), the worker's own code) go through the encoder MLP to a
 * query q, and the target is item t+1. The loss is softmax cross-entropy
 * over the whole catalogue when it is small enough (one SGEMM per batch),
 * else over the batch's targets plus shared negatives drawn from the item
 * frequency^0.75, each logit corrected by -log(expected count) (logQ).
 *
 * Backward: through the MLP into the encoder input, then into e_in: the
 * mean part of head h is sum_i c_ih e_in[item_i] with
 * c_ih = w_i exp(-lambda_h (t_ref - t_i)) / max(m_h, eps), so
 * d e_in[item_i] += c_ih d x_h. The mass feature log(1 + m_h) has no
 * parameters. AdamW updates every parameter densely after each batch.
 *
 * Determinism: one seeded generator drives the initialisation, the
 * shuffles, the dropout masks and the negatives; every reduction written
 * here runs in a fixed order; the rest is OpenBLAS, deterministic for a
 * given thread count. Nothing here reads a clock, logs or makes threads. */
#include "train.h"
#include "decay.h"
#include "encoder.h"

#include <cblas.h>
#include <math.h>
#ifdef __SSE__
#include <xmmintrin.h>
#endif
#include <stdlib.h>
#include <string.h>

#define EVAL_BLOCK  256       /* users scored per SGEMM in evaluation */
#define ADAM_B1     0.9f
#define ADAM_B2     0.999f
#define ADAM_EPS    1e-8f

/* ---- random numbers (splitmix64) ---------------------------------------- */

typedef struct rng { uint64_t s; } rng;

static uint64_t rng_next(rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double rng_unit(rng *r)           /* [0, 1) */
{
    return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

static float rng_normal(rng *r)
{
    double u1 = rng_unit(r), u2 = rng_unit(r);
    return (float)(sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2));
}

/* ---- per-user sequences ----------------------------------------------------- */

/* The events grouped by user, each user's in time order (ties by index). */
typedef struct seqs {
    int32_t  n_users;
    int64_t *off;      /* (n_users + 1): user u is [off[u], off[u+1]) */
    int32_t *item;
    int64_t *ts_ms;
    float   *w;        /* type_weight[type] x weight */
} seqs;

typedef struct ev_key { int32_t user; int64_t ts_ms, idx; } ev_key;

static int ev_key_cmp(const void *pa, const void *pb)
{
    const ev_key *a = pa, *b = pb;
    if (a->user != b->user) return a->user < b->user ? -1 : 1;
    if (a->ts_ms != b->ts_ms) return a->ts_ms < b->ts_ms ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

static void seqs_free(seqs *sq)
{
    free(sq->off); free(sq->item); free(sq->ts_ms); free(sq->w);
    memset(sq, 0, sizeof *sq);
}

static int check_data(const hl_train_data *d, char *errbuf, size_t errlen)
{
    if (d->n_events < 1 || d->n_users < 1 || d->n_items < 1)
        return hl_err(errbuf, errlen, HL_EINVAL, "train: no events, users or items");
    for (int64_t i = 0; i < d->n_events; i++) {
        if (d->user[i] < 0 || d->user[i] >= d->n_users ||
            d->item[i] < 0 || d->item[i] >= d->n_items || d->type[i] >= HL_N_TYPES)
            return hl_err(errbuf, errlen, HL_EINVAL,
                          "train: event %lld has a user, item or type out of range",
                          (long long)i);
        if (d->weight && !isfinite(d->weight[i]))
            return hl_err(errbuf, errlen, HL_EINVAL,
                          "train: event %lld has a non-finite weight", (long long)i);
    }
    return 0;
}

static int seqs_build(seqs *sq, const hl_train_data *d, const float *type_weight,
                      char *errbuf, size_t errlen)
{
    int64_t n = d->n_events;
    ev_key *k = malloc((size_t)n * sizeof *k);
    memset(sq, 0, sizeof *sq);
    sq->n_users = d->n_users;
    sq->off = calloc((size_t)d->n_users + 1, sizeof *sq->off);
    sq->item = malloc((size_t)n * sizeof *sq->item);
    sq->ts_ms = malloc((size_t)n * sizeof *sq->ts_ms);
    sq->w = malloc((size_t)n * sizeof *sq->w);
    if (!k || !sq->off || !sq->item || !sq->ts_ms || !sq->w) {
        free(k);
        seqs_free(sq);
        return hl_err(errbuf, errlen, HL_ENOMEM, "train: no memory for %lld events",
                      (long long)n);
    }
    for (int64_t i = 0; i < n; i++)
        k[i] = (ev_key){d->user[i], d->ts_ms[i], i};
    qsort(k, (size_t)n, sizeof *k, ev_key_cmp);
    for (int64_t i = 0; i < n; i++) {
        int64_t j = k[i].idx;
        sq->off[k[i].user + 1]++;
        sq->item[i] = d->item[j];
        sq->ts_ms[i] = d->ts_ms[j];
        sq->w[i] = type_weight[d->type[j]] * (d->weight ? d->weight[j] : 1.0f);
    }
    for (int32_t u = 0; u < d->n_users; u++)
        sq->off[u + 1] += sq->off[u];
    free(k);
    return 0;
}

/* ---- parameters ------------------------------------------------------------------ */

/* Views into one block of floats; the gradient and Adam moments use the
 * same layout. With tie, e_out aliases e_in. */
typedef struct net {
    int     dim, n_heads, in_dim, n_layers;
    int     layer_in[HL_MAX_LAYERS], layer_out[HL_MAX_LAYERS];
    int32_t n_items;
    int     tie;
    size_t  n_params;
    float  *e_in, *e_out, *bias;
    float  *w[HL_MAX_LAYERS], *b[HL_MAX_LAYERS];
} net;

static void net_shape(net *n, const hl_model_info *mi, int tie)
{
    memset(n, 0, sizeof *n);
    n->dim = mi->dim;
    n->n_heads = mi->n_heads;
    n->in_dim = hl_model_input_dim(mi);
    n->n_layers = mi->n_layers;
    n->n_items = mi->n_items;
    n->tie = tie;
    size_t np = (size_t)mi->n_items * mi->dim * (tie ? 1 : 2) + (size_t)mi->n_items;
    for (int l = 0; l < n->n_layers; l++) {
        n->layer_in[l] = l == 0 ? n->in_dim : mi->layer_out[l - 1];
        n->layer_out[l] = mi->layer_out[l];
        np += (size_t)n->layer_in[l] * n->layer_out[l] + n->layer_out[l];
    }
    n->n_params = np;
}

/* Points n's arrays into block (n->n_params floats). */
static void net_bind(net *n, float *block)
{
    size_t emb = (size_t)n->n_items * n->dim;
    n->e_in = block;
    block += emb;
    if (n->tie) {
        n->e_out = n->e_in;
    } else {
        n->e_out = block;
        block += emb;
    }
    n->bias = block;
    block += n->n_items;
    for (int l = 0; l < n->n_layers; l++) {
        n->w[l] = block;
        block += (size_t)n->layer_in[l] * n->layer_out[l];
        n->b[l] = block;
        block += n->layer_out[l];
    }
}

static void net_init(net *n, rng *r)
{
    size_t emb = (size_t)n->n_items * n->dim;
    float s = 1.0f / sqrtf((float)n->dim);
    for (size_t i = 0; i < emb; i++) n->e_in[i] = s * rng_normal(r);
    if (!n->tie)
        for (size_t i = 0; i < emb; i++) n->e_out[i] = s * rng_normal(r);
    memset(n->bias, 0, (size_t)n->n_items * sizeof *n->bias);
    for (int l = 0; l < n->n_layers; l++) {
        size_t nw = (size_t)n->layer_in[l] * n->layer_out[l];
        float ws = sqrtf(2.0f / (float)n->layer_in[l]);    /* He, for ReLU */
        if (l == n->n_layers - 1) ws = sqrtf(1.0f / (float)n->layer_in[l]);
        for (size_t i = 0; i < nw; i++) n->w[l][i] = ws * rng_normal(r);
        memset(n->b[l], 0, (size_t)n->layer_out[l] * sizeof(float));
    }
}

/* ---- the encoder input: heads through hl_decay_add ----------------------- */

/* Fills x (n_heads*(dim+1)) with the heads of user u after events
 * [first, last] (indices into sq), newest last. s is scratch
 * (n_heads*dim). If coef is not NULL it receives, for each of those events
 * in order, the n_heads weights c_ih of e_in[item_i] in the mean part. */
static void heads_input(const hl_decay *dec, const float *e_in, const seqs *sq,
                        int64_t first, int64_t last, float *s, float *x,
                        float *coef)
{
    int dim = dec->dim, nh = dec->n_heads;
    float m[HL_MAX_HEADS] = {0};
    int64_t t_ref = INT64_MIN;

    memset(s, 0, (size_t)nh * dim * sizeof *s);
    for (int64_t i = first; i <= last; i++)
        hl_decay_add(dec, s, m, &t_ref, sq->ts_ms[i], sq->w[i],
                     e_in + (size_t)sq->item[i] * dim);
    hl_encoder_features(nh, dim, s, m, x);    /* the serving definition */
    if (coef == NULL)
        return;
    for (int h = 0; h < nh; h++) {
        float inv = 1.0f / fmaxf(m[h], HL_ENCODER_EPS);
        for (int64_t i = first; i <= last; i++) {
            double dt = (double)(t_ref - sq->ts_ms[i]);
            coef[(i - first) * nh + h] =
                (float)(sq->w[i] * exp(-dec->lambda_per_ms[h] * dt)) * inv;
        }
    }
}

/* ---- the MLP ------------------------------------------------------------------------------------ */

/* Forward of n rows. z[l] (n, out_l) get the pre-activations, a[l] the
 * activations (ReLU, times mask[l] if masks are given); the last layer has
 * no ReLU and a[L-1] is q. x_in is the (already masked) input. */
static void mlp_forward(const net *nt, const float *x_in, int n, float **z,
                        float **a, float *const *mask)
{
    const float *prev = x_in;
    for (int l = 0; l < nt->n_layers; l++) {
        int in = nt->layer_in[l], out = nt->layer_out[l];
        size_t nz = (size_t)n * out;
        for (int r = 0; r < n; r++)
            memcpy(z[l] + (size_t)r * out, nt->b[l], (size_t)out * sizeof(float));
        /* Z (n, out) += X (n, in) W^T (in, out) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f,
                    prev, in, nt->w[l], in, 1.0f, z[l], out);
        if (l == nt->n_layers - 1) {
            if (a[l] != z[l]) memcpy(a[l], z[l], nz * sizeof(float));
        } else {
            for (size_t i = 0; i < nz; i++) {
                float v = z[l][i] > 0.0f ? z[l][i] : 0.0f;
                a[l][i] = mask && mask[l] ? v * mask[l][i] : v;
            }
        }
        prev = a[l];
    }
}

/* ---- training state ---------------------------------------------------------------------- */

typedef struct trainer {
    const hl_train_opts *o;
    hl_decay  dec;
    seqs      sq;
    net       p, g;                 /* parameters, gradients */
    float    *p_block, *g_block, *m_block, *v_block, *best_block;
    int64_t   step, total_steps;
    rng       r;
    /* examples: user row and index (into sq) of the last input event */
    int64_t   n_ex;
    int32_t  *ex_user;
    int64_t  *ex_last;
    /* batch scratch */
    int       B, H, n_cols, sampled;
    float    *x, *x_mask, *s_scratch, *z[HL_MAX_LAYERS], *a[HL_MAX_LAYERS],
             *mask[HL_MAX_LAYERS], *logits, *d1, *d2;
    int32_t  *hist_item, *target, *cand, *diag;
    int      *hist_n;
    float    *hist_coef, *cand_e, *cand_b, *cand_ge, *cand_gb;
    double   *pop_cdf;              /* sampled softmax: cumulative q_j */
    float    *pop_logq;             /* log q_j */
    int32_t  *train_len;            /* events per user used for training */
} trainer;

static void trainer_free(trainer *t)
{
    seqs_free(&t->sq);
    free(t->p_block); free(t->g_block); free(t->m_block); free(t->v_block);
    free(t->best_block); free(t->ex_user); free(t->ex_last);
    free(t->x); free(t->x_mask); free(t->s_scratch);
    for (int l = 0; l < HL_MAX_LAYERS; l++) {
        free(t->z[l]); free(t->a[l]); free(t->mask[l]);
    }
    free(t->logits); free(t->d1); free(t->d2);
    free(t->hist_item); free(t->target); free(t->cand); free(t->diag); free(t->hist_n);
    free(t->hist_coef); free(t->cand_e); free(t->cand_b);
    free(t->cand_ge); free(t->cand_gb); free(t->pop_cdf); free(t->pop_logq);
    free(t->train_len);
}

static void info_from_opts(hl_model_info *mi, const hl_train_opts *o, int32_t n_items)
{
    memset(mi, 0, sizeof *mi);
    mi->dim = o->dim;
    mi->n_heads = o->n_heads;
    memcpy(mi->half_life_ms, o->half_life_ms, sizeof mi->half_life_ms);
    memcpy(mi->type_weight, o->type_weight, sizeof mi->type_weight);
    mi->n_items = n_items;
    mi->n_layers = o->n_hidden + 1;
    for (int l = 0; l < o->n_hidden; l++)
        mi->layer_out[l] = o->hidden[l];
    mi->layer_out[o->n_hidden] = o->dim;
}

static int check_opts(const hl_train_opts *o, char *errbuf, size_t errlen)
{
    if (o->dim < 1 || o->dim > 4096)
        return hl_err(errbuf, errlen, HL_EINVAL, "train: dim %d outside 1..4096", o->dim);
    if (o->n_hidden < 0 || o->n_hidden > HL_MAX_LAYERS - 1)
        return hl_err(errbuf, errlen, HL_EINVAL, "train: %d hidden layers (at most %d)",
                      o->n_hidden, HL_MAX_LAYERS - 1);
    for (int l = 0; l < o->n_hidden; l++)
        if (o->hidden[l] < 1 || o->hidden[l] > 65536)
            return hl_err(errbuf, errlen, HL_EINVAL, "train: hidden width %d", o->hidden[l]);
    if (o->epochs < 0 || o->batch < 1 || o->max_history < 1)
        return hl_err(errbuf, errlen, HL_EINVAL, "train: epochs, batch or max_history");
    if (!(o->lr > 0) || !(o->l2 >= 0) || !(o->dropout >= 0 && o->dropout < 1))
        return hl_err(errbuf, errlen, HL_EINVAL, "train: lr must be > 0, l2 >= 0, dropout in [0,1)");
    if (!(o->train_fraction > 0 && o->train_fraction <= 1))
        return hl_err(errbuf, errlen, HL_EINVAL, "train: train_fraction must be in (0,1]");
    if (o->n_negatives < 1)
        return hl_err(errbuf, errlen, HL_EINVAL, "train: n_negatives must be >= 1");
    for (int i = 0; i < HL_N_TYPES; i++)
        if (!isfinite(o->type_weight[i]) || o->type_weight[i] < 0)
            return hl_err(errbuf, errlen, HL_EINVAL, "train: bad type weight");
    return 0;
}

static int cmp_i64(const void *pa, const void *pb)
{
    int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;
    return (a > b) - (a < b);
}

/* The time before which events train, for train_fraction < 1: the time of
 * the event at that quantile; INT64_MAX otherwise. */
static int64_t train_until_ms(const seqs *sq, float fraction)
{
    int64_t n = sq->off[sq->n_users];
    if (fraction >= 1.0f) return INT64_MAX;
    int64_t *ts = malloc((size_t)n * sizeof *ts), cut;
    if (!ts) return INT64_MIN;
    memcpy(ts, sq->ts_ms, (size_t)n * sizeof *ts);
    qsort(ts, (size_t)n, sizeof *ts, cmp_i64);
    cut = ts[(int64_t)((double)fraction * (double)(n - 1))];
    free(ts);
    return cut;
}

/* Examples: every position whose next event is a training target. With
 * holdout_loo a user's last two events are no target and no input; with
 * train_fraction < 1 neither are the events at or after the cut time. */
static int build_examples(trainer *t)
{
    const seqs *sq = &t->sq;
    int64_t n = 0, until = train_until_ms(sq, t->o->train_fraction);
    t->train_len = malloc((size_t)sq->n_users * sizeof *t->train_len);
    if (!t->train_len || until == INT64_MIN) return HL_ENOMEM;
    for (int32_t u = 0; u < sq->n_users; u++) {
        int64_t len = sq->off[u + 1] - sq->off[u];
        if (t->o->holdout_loo) len = len >= 3 ? len - 2 : 0;
        while (len > 0 && sq->ts_ms[sq->off[u] + len - 1] >= until) len--;
        t->train_len[u] = (int32_t)len;
        n += len > 1 ? len - 1 : 0;
    }
    t->n_ex = n;
    t->ex_user = malloc((size_t)(n ? n : 1) * sizeof *t->ex_user);
    t->ex_last = malloc((size_t)(n ? n : 1) * sizeof *t->ex_last);
    if (!t->ex_user || !t->ex_last) return HL_ENOMEM;
    n = 0;
    for (int32_t u = 0; u < sq->n_users; u++)
        for (int64_t k = 0; k + 1 < t->train_len[u]; k++) {
            t->ex_user[n] = u;
            t->ex_last[n++] = sq->off[u] + k;
        }
    return 0;
}

/* Sampled softmax: q_j proportional to (count_j + 1)^0.75 over targets. */
static int build_sampler(trainer *t)
{
    int32_t N = t->p.n_items;
    double *cnt = calloc((size_t)N, sizeof *cnt), tot = 0;
    t->pop_cdf = malloc((size_t)N * sizeof *t->pop_cdf);
    t->pop_logq = malloc((size_t)N * sizeof *t->pop_logq);
    if (!cnt || !t->pop_cdf || !t->pop_logq) {
        free(cnt);
        return HL_ENOMEM;
    }
    for (int64_t e = 0; e < t->n_ex; e++)
        cnt[t->sq.item[t->ex_last[e] + 1]] += 1;
    for (int32_t j = 0; j < N; j++) {
        cnt[j] = pow(cnt[j] + 1.0, 0.75);
        tot += cnt[j];
        t->pop_cdf[j] = tot;
    }
    for (int32_t j = 0; j < N; j++) {
        t->pop_cdf[j] /= tot;
        t->pop_logq[j] = (float)log(cnt[j] / tot);
    }
    free(cnt);
    return 0;
}

static int32_t sample_item(trainer *t)
{
    double u = rng_unit(&t->r);
    int32_t lo = 0, hi = t->p.n_items - 1;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (t->pop_cdf[mid] > u) hi = mid; else lo = mid + 1;
    }
    return lo;
}

#define ALLOC(ptr, count) \
    do { if (((ptr) = malloc((size_t)(count) * sizeof *(ptr))) == NULL) return HL_ENOMEM; } while (0)

static int alloc_scratch(trainer *t)
{
    const net *n = &t->p;
    int B = t->B, wmax = n->in_dim;
    for (int l = 0; l < n->n_layers; l++)
        if (n->layer_out[l] > wmax) wmax = n->layer_out[l];
    t->sampled = n->n_items > t->o->full_softmax_max_items;
    t->n_cols = t->sampled ? B + t->o->n_negatives : n->n_items;
    ALLOC(t->x, (size_t)B * n->in_dim);
    ALLOC(t->x_mask, (size_t)B * n->in_dim);
    ALLOC(t->s_scratch, (size_t)n->n_heads * n->dim);
    for (int l = 0; l < n->n_layers; l++) {
        ALLOC(t->z[l], (size_t)B * n->layer_out[l]);
        ALLOC(t->a[l], (size_t)B * n->layer_out[l]);
        ALLOC(t->mask[l], (size_t)B * n->layer_out[l]);
    }
    ALLOC(t->logits, (size_t)B * t->n_cols);
    ALLOC(t->d1, (size_t)B * wmax);
    ALLOC(t->d2, (size_t)B * wmax);
    ALLOC(t->hist_item, (size_t)B * t->H);
    ALLOC(t->hist_coef, (size_t)B * t->H * n->n_heads);
    ALLOC(t->hist_n, B);
    ALLOC(t->target, B);
    if (t->sampled) {
        ALLOC(t->cand, t->n_cols);
        ALLOC(t->diag, B);                  /* row r's target is column r */
        for (int r = 0; r < B; r++) t->diag[r] = r;
        ALLOC(t->cand_e, (size_t)t->n_cols * n->dim);
        ALLOC(t->cand_b, t->n_cols);
        ALLOC(t->cand_ge, (size_t)t->n_cols * n->dim);
        ALLOC(t->cand_gb, t->n_cols);
    }
    return 0;
}

static int trainer_init(trainer *t, const hl_train_opts *o, const hl_train_data *d,
                        char *errbuf, size_t errlen)
{
    hl_model_info mi;
    int rc;

    memset(t, 0, sizeof *t);
    t->o = o;
    t->r.s = o->seed;
    if ((rc = hl_decay_init(&t->dec, o->n_heads, o->dim, o->half_life_ms, errbuf, errlen)))
        return rc;
    if ((rc = seqs_build(&t->sq, d, o->type_weight, errbuf, errlen)))
        return rc;
    info_from_opts(&mi, o, d->n_items);
    net_shape(&t->p, &mi, o->tie);
    t->g = t->p;
    t->B = o->batch;
    t->H = o->max_history;
    size_t np = t->p.n_params;
    t->p_block = malloc(np * sizeof(float));
    t->g_block = calloc(np, sizeof(float));
    t->m_block = calloc(np, sizeof(float));
    t->v_block = calloc(np, sizeof(float));
    if (o->holdout_loo) t->best_block = malloc(np * sizeof(float));
    if (!t->p_block || !t->g_block || !t->m_block || !t->v_block ||
        (o->holdout_loo && !t->best_block))
        return hl_err(errbuf, errlen, HL_ENOMEM, "train: no memory for %zu parameters", np);
    net_bind(&t->p, t->p_block);
    net_bind(&t->g, t->g_block);
    net_init(&t->p, &t->r);
    if (build_examples(t) || alloc_scratch(t) || (t->sampled && build_sampler(t)))
        return hl_err(errbuf, errlen, HL_ENOMEM, "train: no memory for the batch buffers");
    return 0;
}

/* ---- one batch ---------------------------------------------------------------------------- */

static void batch_inputs(trainer *t, const int64_t *idx, int B, int train)
{
    const net *n = &t->p;
    float keep = 1.0f - t->o->dropout, scale = 1.0f / keep;
    for (int r = 0; r < B; r++) {
        int64_t e = idx[r], last = t->ex_last[e];
        int64_t first = t->sq.off[t->ex_user[e]];
        if (last - first + 1 > t->H) first = last - t->H + 1;
        t->hist_n[r] = (int)(last - first + 1);
        for (int64_t i = first; i <= last; i++)
            t->hist_item[(size_t)r * t->H + (i - first)] = t->sq.item[i];
        t->target[r] = t->sq.item[last + 1];
        heads_input(&t->dec, n->e_in, &t->sq, first, last, t->s_scratch,
                    t->x + (size_t)r * n->in_dim,
                    t->hist_coef + (size_t)r * t->H * n->n_heads);
    }
    size_t nx = (size_t)B * n->in_dim;
    for (size_t i = 0; i < nx; i++) {
        t->x_mask[i] = (!train || t->o->dropout <= 0) ? 1.0f
                       : (rng_unit(&t->r) < keep ? scale : 0.0f);
        t->x[i] *= t->x_mask[i];
    }
    for (int l = 0; l + 1 < n->n_layers; l++) {
        size_t nz = (size_t)B * n->layer_out[l];
        for (size_t i = 0; i < nz; i++)
            t->mask[l][i] = (!train || t->o->dropout <= 0) ? 1.0f
                            : (rng_unit(&t->r) < keep ? scale : 0.0f);
    }
}

/* GCC vectorises the loops below only at -O3 and without errno on sqrtf;
 * -O2 is the project's level, so these few hot functions ask for more. */
#if defined(__GNUC__) && !defined(__clang__)
#define HOT __attribute__((optimize("O3", "-fno-math-errno")))
#else
#define HOT
#endif

/* exp(x) for x <= 0 within 1e-5 relative (y - n loses a few bits): 2^(x log2 e) split into an
 * integer n, put into the exponent bits, and 2^f (|f| <= 0.5) by its
 * degree-6 Taylor polynomial. Written branch-free so loops vectorise. */
HOT static inline float fast_exp(float x)
{
    /* x = max(x, -87) as a bit select: a float ?: is control flow that GCC
     * does not vectorise without -ffinite-math-only. */
    const float lo = -87.0f;
    int32_t xi, li, below = -(x < lo);
    memcpy(&xi, &x, 4);
    memcpy(&li, &lo, 4);
    xi = (xi & ~below) | (li & below);
    memcpy(&x, &xi, 4);
    float y = x * 1.44269504f;
    float t = y + 12582912.0f;                 /* 1.5 x 2^23: rounds y */
    float n = t - 12582912.0f, f = y - n;
    int32_t ti, pi;
    memcpy(&ti, &t, 4);
    float p = 1.0f + f * (0.693147181f + f * (0.240226507f + f * (0.0555041087f +
              f * (0.00961812911f + f * (0.00133335581f + f * 0.000154035304f)))));
    memcpy(&pi, &p, 4);
    pi += (ti - 0x4b400000) * (1 << 23);
    memcpy(&p, &pi, 4);
    return p;
}

/* Sum of n floats in eight interleaved partial sums: vectorisable and the
 * same order every time. */
HOT static float sum_floats(const float *v, int n)
{
    float acc[8] = {0}, s = 0;
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) acc[k] += v[j + k];
    for (; j < n; j++) s += v[j];
    for (int k = 0; k < 8; k++) s += acc[k];
    return s;
}

/* Softmax cross-entropy of one row of C logits (plus bias[j] if bias is not
 * NULL) against column tc. The row becomes dLoss/dlogit times scale.
 * Returns the row's loss. */
HOT static double softmax_row(float *row, const float *bias, int C, int tc, float scale)
{
    float mx = -INFINITY;
    if (bias)
        for (int j = 0; j < C; j++) row[j] += bias[j];
    for (int j = 0; j < C; j++) mx = row[j] > mx ? row[j] : mx;
    float lt = row[tc] - mx;
    for (int j = 0; j < C; j++) row[j] = fast_exp(row[j] - mx);
    float sum = sum_floats(row, C);
    float k = scale / sum;
    for (int j = 0; j < C; j++) row[j] *= k;
    row[tc] -= scale;
    return log((double)sum) - lt;
}

/* Softmax cross-entropy of each row of L (B, C) against column tcol[r];
 * L becomes dLoss/dL (divided by B). Returns the summed loss. */
static double softmax_xent(float *L, const float *bias, int B, int C, const int32_t *tcol)
{
    double loss = 0;
    for (int r = 0; r < B; r++)
        loss += softmax_row(L + (size_t)r * C, bias, C, tcol[r], 1.0f / (float)B);
    return loss;
}

#ifdef HL_TEST
/* Plain-loop twin of softmax_xent (expf, one running sum), for tests. */
static double softmax_xent_naive(float *L, const float *bias, int B, int C,
                                 const int32_t *tcol)
{
    double loss = 0;
    for (int r = 0; r < B; r++) {
        float *row = L + (size_t)r * C;
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < C; j++) {
            row[j] += bias ? bias[j] : 0.0f;
            mx = row[j] > mx ? row[j] : mx;
        }
        for (int j = 0; j < C; j++) sum += exp(row[j] - mx);
        loss += log(sum) - (row[tcol[r]] - mx);
        for (int j = 0; j < C; j++) row[j] = (float)(exp(row[j] - mx) / sum / B);
        row[tcol[r]] -= 1.0f / (float)B;
    }
    return loss;
}
#endif

/* g[j] += sum_r G[r][j] for G (B, C): column sums in row order. */
HOT static void add_colsums(float *g, const float *G, int B, int C)
{
    for (int r = 0; r < B; r++) {
        const float *row = G + (size_t)r * C;
        for (int j = 0; j < C; j++) g[j] += row[j];
    }
}

/* Full softmax: logits (B, N) = q e_out^T + b; accumulates d e_out, d b
 * and writes dq (B, dim) into t->d1. */
static double output_full(trainer *t, const float *q, int B)
{
    const net *n = &t->p;
    int N = n->n_items, dim = n->dim;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, N, dim, 1.0f, q, dim,
                n->e_out, dim, 0.0f, t->logits, N);
    double loss = softmax_xent(t->logits, n->bias, B, N, t->target);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, dim, N, 1.0f,
                t->logits, N, n->e_out, dim, 0.0f, t->d1, dim);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, dim, B, 1.0f,
                t->logits, N, q, dim, 1.0f, t->g.e_out, dim);
    add_colsums(t->g.bias, t->logits, B, N);
    return loss;
}

/* Sampled softmax: candidates are the batch's targets (column r is row r's
 * own) then n_negatives shared draws; other rows' targets and accidental
 * hits are masked; every logit is corrected by -log(expected count). */
static double output_sampled(trainer *t, const float *q, int B)
{
    const net *n = &t->p;
    int C = B + t->o->n_negatives, dim = n->dim;
    double S = t->o->n_negatives;
    for (int c = 0; c < C; c++) {
        int32_t j = c < B ? t->target[c] : sample_item(t);
        t->cand[c] = j;
        memcpy(t->cand_e + (size_t)c * dim, n->e_out + (size_t)j * dim, dim * sizeof(float));
        t->cand_b[c] = n->bias[j] - (t->pop_logq[j] + (float)log(S));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, C, dim, 1.0f, q, dim,
                t->cand_e, dim, 0.0f, t->logits, C);
    for (int r = 0; r < B; r++)
        for (int c = 0; c < C; c++)
            if (c != r && (c < B || t->cand[c] == t->target[r]))
                t->logits[(size_t)r * C + c] = -INFINITY;
    double loss = softmax_xent(t->logits, t->cand_b, B, C, t->diag);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, dim, C, 1.0f,
                t->logits, C, t->cand_e, dim, 0.0f, t->d1, dim);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, dim, B, 1.0f,
                t->logits, C, q, dim, 0.0f, t->cand_ge, dim);
    memset(t->cand_gb, 0, (size_t)C * sizeof(float));
    add_colsums(t->cand_gb, t->logits, B, C);            /* d bias per column */
    for (int c = 0; c < C; c++) {
        t->g.bias[t->cand[c]] += t->cand_gb[c];
        cblas_saxpy(dim, 1.0f, t->cand_ge + (size_t)c * dim, 1,
                    t->g.e_out + (size_t)t->cand[c] * dim, 1);
    }
    return loss;
}

/* Backward from dq (t->d1) through the MLP to dX, then into e_in. */
static void backward_encoder(trainer *t, int B)
{
    const net *n = &t->p;
    float *dz = t->d1, *dprev = t->d2;
    for (int l = n->n_layers - 1; l >= 0; l--) {
        int in = n->layer_in[l], out = n->layer_out[l];
        const float *prev = l == 0 ? t->x : t->a[l - 1];
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, B, 1.0f,
                    dz, out, prev, in, 1.0f, t->g.w[l], in);
        for (int r = 0; r < B; r++)
            for (int j = 0; j < out; j++)
                t->g.b[l][j] += dz[(size_t)r * out + j];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, in, out, 1.0f,
                    dz, out, n->w[l], in, 0.0f, dprev, in);
        size_t np = (size_t)B * in;
        if (l > 0) {
            for (size_t i = 0; i < np; i++)
                dprev[i] = t->z[l - 1][i] > 0.0f ? dprev[i] * t->mask[l - 1][i] : 0.0f;
        } else {
            for (size_t i = 0; i < np; i++) dprev[i] *= t->x_mask[i];
        }
        float *tmp = dz; dz = dprev; dprev = tmp;
    }
    /* dz now holds dX (B, in_dim) */
    int dim = n->dim, nh = n->n_heads;
    for (int r = 0; r < B; r++) {
        const float *dx = dz + (size_t)r * n->in_dim;
        for (int i = 0; i < t->hist_n[r]; i++) {
            float *ge = t->g.e_in + (size_t)t->hist_item[(size_t)r * t->H + i] * dim;
            const float *c = t->hist_coef + ((size_t)r * t->H + i) * nh;
            for (int h = 0; h < nh; h++) {
                const float *dxh = dx + (size_t)h * (dim + 1);
                for (int j = 0; j < dim; j++) ge[j] += c[h] * dxh[j];
            }
        }
    }
}

/* AdamW over n parameters from i0; clears their gradient. The scalar
 * loop is the reference; GCC will not vectorise sqrtf while it may set
 * errno, so SSE does four at a time where the build has it. */
typedef struct adam_k { float a, wd, bc2; } adam_k;

static void adam_scalar(float *p, float *g, float *m, float *v, size_t i0, size_t n,
                        adam_k k)
{
    for (size_t i = i0; i < n; i++) {
        m[i] = ADAM_B1 * m[i] + (1.0f - ADAM_B1) * g[i];
        v[i] = ADAM_B2 * v[i] + (1.0f - ADAM_B2) * g[i] * g[i];
        p[i] -= k.a * m[i] / (sqrtf(v[i] / k.bc2) + ADAM_EPS) + k.wd * p[i];
        g[i] = 0.0f;
    }
}

static void adam_update(float *p, float *g, float *m, float *v, size_t n, adam_k k)
{
    size_t i = 0;
#ifdef __SSE__
    const __m128 b1 = _mm_set1_ps(ADAM_B1), c1 = _mm_set1_ps(1.0f - ADAM_B1);
    const __m128 b2 = _mm_set1_ps(ADAM_B2), c2 = _mm_set1_ps(1.0f - ADAM_B2);
    const __m128 a = _mm_set1_ps(k.a), wd = _mm_set1_ps(k.wd);
    const __m128 ibc2 = _mm_set1_ps(1.0f / k.bc2), eps = _mm_set1_ps(ADAM_EPS);
    for (; i + 4 <= n; i += 4) {
        __m128 gi = _mm_loadu_ps(g + i), pi = _mm_loadu_ps(p + i);
        __m128 mi = _mm_add_ps(_mm_mul_ps(b1, _mm_loadu_ps(m + i)), _mm_mul_ps(c1, gi));
        __m128 vi = _mm_add_ps(_mm_mul_ps(b2, _mm_loadu_ps(v + i)),
                               _mm_mul_ps(c2, _mm_mul_ps(gi, gi)));
        __m128 den = _mm_add_ps(_mm_sqrt_ps(_mm_mul_ps(vi, ibc2)), eps);
        __m128 step = _mm_add_ps(_mm_div_ps(_mm_mul_ps(a, mi), den), _mm_mul_ps(wd, pi));
        _mm_storeu_ps(m + i, mi);
        _mm_storeu_ps(v + i, vi);
        _mm_storeu_ps(p + i, _mm_sub_ps(pi, step));
        _mm_storeu_ps(g + i, _mm_setzero_ps());
    }
#endif
    adam_scalar(p, g, m, v, i, n, k);
}

static void adam_step(trainer *t, float lr)
{
    t->step++;
    adam_k k;
    k.bc2 = 1.0f - powf(ADAM_B2, (float)t->step);
    k.a = lr / (1.0f - powf(ADAM_B1, (float)t->step));
    k.wd = lr * t->o->l2;
    adam_update(t->p_block, t->g_block, t->m_block, t->v_block, t->p.n_params, k);
}

/* Forward and backward of one batch (examples idx[0..B)); gradients are
 * accumulated into t->g. Returns the summed loss. */
static double batch_grad(trainer *t, const int64_t *idx, int B, int train)
{
    const net *n = &t->p;
    batch_inputs(t, idx, B, train);
    mlp_forward(n, t->x, B, t->z, t->a, train ? t->mask : NULL);
    const float *q = t->a[n->n_layers - 1];
    double loss = t->sampled ? output_sampled(t, q, B) : output_full(t, q, B);
    backward_encoder(t, B);
    return loss;
}

static float lr_at(const trainer *t)
{
    const hl_train_opts *o = t->o;
    double f = t->total_steps > 0 ? (double)t->step / (double)t->total_steps : 0;
    double c = 0.5 * (1.0 + cos(M_PI * f));
    return (float)(o->lr * (o->lr_final + (1.0 - o->lr_final) * c));
}

static double train_epoch(trainer *t, int64_t *order)
{
    double loss = 0;
    for (int64_t i = t->n_ex - 1; i > 0; i--) {       /* Fisher-Yates */
        int64_t j = (int64_t)(rng_unit(&t->r) * (double)(i + 1));
        int64_t tmp = order[i]; order[i] = order[j]; order[j] = tmp;
    }
    for (int64_t b = 0; b < t->n_ex; b += t->B) {
        int B = (int)(t->n_ex - b < t->B ? t->n_ex - b : t->B);
        loss += batch_grad(t, order + b, B, 1);
        adam_step(t, lr_at(t));
    }
    return t->n_ex ? loss / (double)t->n_ex : 0;
}

/* ---- evaluation ------------------------------------------------------------------------------- */

/* Scratch for scoring blocks of users; sized once per evaluation. */
typedef struct evalbuf {
    float   *x, *s, *scores, *z[HL_MAX_LAYERS], *a[HL_MAX_LAYERS];
    int32_t *user;
    uint8_t *seen;         /* (n_items) marks of one user's input items */
    double   hits, ndcg;
    int64_t  n;
} evalbuf;

static void evalbuf_free(evalbuf *e)
{
    free(e->x); free(e->s); free(e->scores); free(e->user); free(e->seen);
    for (int l = 0; l < HL_MAX_LAYERS; l++) { free(e->z[l]); free(e->a[l]); }
}

static int evalbuf_init(evalbuf *e, const net *n)
{
    memset(e, 0, sizeof *e);
    int nb = EVAL_BLOCK;
    ALLOC(e->x, (size_t)nb * n->in_dim);
    ALLOC(e->s, (size_t)n->n_heads * n->dim);
    ALLOC(e->scores, (size_t)nb * n->n_items);
    ALLOC(e->user, nb);
    if ((e->seen = calloc((size_t)n->n_items, 1)) == NULL) return HL_ENOMEM;
    for (int l = 0; l < n->n_layers; l++) {
        ALLOC(e->z[l], (size_t)nb * n->layer_out[l]);
        ALLOC(e->a[l], (size_t)nb * n->layer_out[l]);
    }
    return 0;
}

/* Rank of row r's target among the items the user has not seen in its
 * input events [first, last]; counts the items that score strictly higher.
 * A target among the seen items counts as a miss. */
static void eval_one(evalbuf *e, const net *n, const seqs *sq, const float *sc,
                     int64_t first, int64_t last)
{
    int32_t target = sq->item[last + 1];
    float ts = sc[target];
    int64_t above = 0;
    for (int64_t i = first; i <= last; i++)
        if (sq->item[i] == target) { e->n++; return; }
    for (int32_t j = 0; j < n->n_items; j++)
        above += sc[j] > ts;
    for (int64_t i = first; i <= last; i++) {       /* seen items do not count */
        int32_t j = sq->item[i];
        if (!e->seen[j] && sc[j] > ts) above--;
        e->seen[j] = 1;
    }
    for (int64_t i = first; i <= last; i++) e->seen[sq->item[i]] = 0;
    e->n++;
    if (above < 10) {
        e->hits += 1;
        e->ndcg += 1.0 / log2((double)above + 2.0);
    }
}

static void eval_block(evalbuf *e, const net *n, const hl_decay *dec,
                       const seqs *sq, int nb, int back)
{
    for (int r = 0; r < nb; r++) {
        int32_t u = e->user[r];
        heads_input(dec, n->e_in, sq, sq->off[u], sq->off[u + 1] - 1 - back, e->s,
                    e->x + (size_t)r * n->in_dim, NULL);
    }
    mlp_forward(n, e->x, nb, e->z, e->a, NULL);
    const float *q = e->a[n->n_layers - 1];
    for (int r = 0; r < nb; r++)
        memcpy(e->scores + (size_t)r * n->n_items, n->bias, (size_t)n->n_items * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, n->n_items, n->dim, 1.0f,
                q, n->dim, n->e_out, n->dim, 1.0f, e->scores, n->n_items);
    for (int r = 0; r < nb; r++) {
        int32_t u = e->user[r];
        eval_one(e, n, sq, e->scores + (size_t)r * n->n_items, sq->off[u],
                 sq->off[u + 1] - 1 - back);
    }
}

/* HR@10 and NDCG@10 of the item `back` from the end of each user's
 * sequence; at most max_users users (evenly strided, 0 = all). */
static int eval_loo(const net *n, const hl_decay *dec, const seqs *sq, int back,
                    int max_users, double *hr, double *ndcg)
{
    evalbuf e;
    int32_t n_ok = 0, nb = 0;
    if (evalbuf_init(&e, n)) {
        evalbuf_free(&e);
        return HL_ENOMEM;
    }
    for (int32_t u = 0; u < sq->n_users; u++)
        n_ok += sq->off[u + 1] - sq->off[u] >= back + 1;
    int64_t stride = max_users > 0 && n_ok > max_users ? n_ok : 0, acc = 0;
    for (int32_t u = 0; u < sq->n_users; u++) {
        if (sq->off[u + 1] - sq->off[u] < back + 1) continue;
        if (stride) {                       /* keep max_users of n_ok, spread */
            acc += max_users;
            if (acc < stride) continue;
            acc -= stride;
        }
        e.user[nb++] = u;
        if (nb == EVAL_BLOCK) {
            eval_block(&e, n, dec, sq, nb, back);
            nb = 0;
        }
    }
    if (nb) eval_block(&e, n, dec, sq, nb, back);
    *hr = e.n ? e.hits / (double)e.n : 0;
    *ndcg = e.n ? e.ndcg / (double)e.n : 0;
    evalbuf_free(&e);
    return 0;
}

/* ---- the public API ---------------------------------------------------------------------------- */

void hl_train_opts_default(hl_train_opts *o)
{
    memset(o, 0, sizeof *o);
    o->dim = 64;
    o->n_heads = HL_DEFAULT_HEADS;
    for (int h = 0; h < HL_DEFAULT_HEADS; h++)
        o->half_life_ms[h] = hl_default_half_life_ms[h];
    for (int i = 0; i < HL_N_TYPES; i++) o->type_weight[i] = 1.0f;
    o->type_weight[HL_FAVORITE] = 2.0f;
    o->type_weight[HL_ADD_TO_CART] = 2.0f;
    o->type_weight[HL_PURCHASE] = 3.0f;
    o->n_hidden = 1;
    o->hidden[0] = 256;
    o->epochs = 20;
    o->batch = 256;
    o->lr = 3e-3f;
    o->lr_final = 0.1f;
    o->l2 = 0.0f;
    o->dropout = 0.3f;
    o->max_history = 256;
    o->full_softmax_max_items = 50000;
    o->n_negatives = 2048;
    o->train_fraction = 1.0f;
    o->seed = 1;
}

static int result_take(hl_train_result *res, const trainer *t, const float *block)
{
    hl_model_info mi;
    info_from_opts(&mi, t->o, t->p.n_items);
    memset(res, 0, sizeof *res);
    res->info = mi;
    net n = t->p;
    net_bind(&n, (float *)block);
    size_t emb = (size_t)n.n_items * n.dim;
    res->e_in = malloc(emb * sizeof(float));
    res->e_out = malloc(emb * sizeof(float));
    res->bias = malloc((size_t)n.n_items * sizeof(float));
    if (!res->e_in || !res->e_out || !res->bias) return HL_ENOMEM;
    memcpy(res->e_in, n.e_in, emb * sizeof(float));
    memcpy(res->e_out, n.e_out, emb * sizeof(float));
    memcpy(res->bias, n.bias, (size_t)n.n_items * sizeof(float));
    for (int l = 0; l < n.n_layers; l++) {
        size_t nw = (size_t)n.layer_in[l] * n.layer_out[l];
        res->layer_w[l] = malloc(nw * sizeof(float));
        res->layer_b[l] = malloc((size_t)n.layer_out[l] * sizeof(float));
        if (!res->layer_w[l] || !res->layer_b[l]) return HL_ENOMEM;
        memcpy(res->layer_w[l], n.w[l], nw * sizeof(float));
        memcpy(res->layer_b[l], n.b[l], (size_t)n.layer_out[l] * sizeof(float));
    }
    return 0;
}

/* A read-only net view of a result's arrays. */
static void net_of_result(net *n, const hl_train_result *res)
{
    net_shape(n, &res->info, 0);
    n->e_in = res->e_in;
    n->e_out = res->e_out;
    n->bias = res->bias;
    for (int l = 0; l < n->n_layers; l++) {
        n->w[l] = res->layer_w[l];
        n->b[l] = res->layer_b[l];
    }
}

static void report_epoch(const trainer *t, int ep, double loss, double vhr)
{
    if (!t->o->progress) return;
    hl_train_progress p = {ep, t->o->epochs, loss, t->n_ex, vhr};
    t->o->progress(t->o->progress_ctx, &p);
}

/* Runs the epochs; keeps the parameters of the best validation epoch in
 * best_block when holding out. */
static int run_epochs(trainer *t, double *final_loss, double *best_hr)
{
    int64_t *order = malloc((size_t)(t->n_ex ? t->n_ex : 1) * sizeof *order);
    if (!order) return HL_ENOMEM;
    for (int64_t i = 0; i < t->n_ex; i++) order[i] = i;
    t->total_steps = (int64_t)t->o->epochs * ((t->n_ex + t->B - 1) / t->B);
    *best_hr = -1;
    if (t->best_block) memcpy(t->best_block, t->p_block, t->p.n_params * sizeof(float));
    for (int ep = 1; ep <= t->o->epochs; ep++) {
        double vhr = -1, vndcg;
        *final_loss = train_epoch(t, order);
        if (t->o->holdout_loo) {
            if (eval_loo(&t->p, &t->dec, &t->sq, 2, 0, &vhr, &vndcg)) {
                free(order);
                return HL_ENOMEM;
            }
            if (vhr > *best_hr) {
                *best_hr = vhr;
                memcpy(t->best_block, t->p_block, t->p.n_params * sizeof(float));
            }
        }
        report_epoch(t, ep, *final_loss, vhr);
    }
    free(order);
    return 0;
}

int hl_train_run(const hl_train_opts *o, const hl_train_data *d,
                 hl_train_result *res, char *errbuf, size_t errlen)
{
    trainer t;
    double loss = 0, best_hr = -1;
    int rc;

    memset(res, 0, sizeof *res);
    if ((rc = check_opts(o, errbuf, errlen)) || (rc = check_data(d, errbuf, errlen)))
        return rc;
    if ((rc = trainer_init(&t, o, d, errbuf, errlen)))
        goto out;
    if ((rc = run_epochs(&t, &loss, &best_hr))) {
        hl_err(errbuf, errlen, rc, "train: no memory during training");
        goto out;
    }
    const float *block = t.best_block && best_hr >= 0 ? t.best_block : t.p_block;
    if ((rc = result_take(res, &t, block))) {
        hl_err(errbuf, errlen, rc, "train: no memory for the result");
        goto out;
    }
    res->final_loss = loss;
    res->valid_hr10 = best_hr;
    res->test_hr10 = res->test_ndcg10 = -1;
    res->examples_per_epoch = t.n_ex;
    if (o->holdout_loo) {
        net n;
        net_of_result(&n, res);
        if ((rc = eval_loo(&n, &t.dec, &t.sq, 1, 0, &res->test_hr10, &res->test_ndcg10)))
            hl_err(errbuf, errlen, rc, "train: no memory for the evaluation");
    }
out:
    if (rc) hl_train_result_reset(res);
    trainer_free(&t);
    return rc;
}

void hl_train_result_reset(hl_train_result *res)
{
    free(res->e_in); free(res->e_out); free(res->bias);
    for (int l = 0; l < HL_MAX_LAYERS; l++) {
        free(res->layer_w[l]);
        free(res->layer_b[l]);
    }
    memset(res, 0, sizeof *res);
}

void hl_train_result_parts(const hl_train_result *res, const char *const *item_id,
                           const uint32_t *item_id_len, hl_model_parts *p)
{
    memset(p, 0, sizeof *p);
    p->info = res->info;
    p->item_id = item_id;
    p->item_id_len = item_id_len;
    p->e_in = res->e_in;
    p->e_out = res->e_out;
    p->bias = res->bias;
    for (int l = 0; l < res->info.n_layers; l++) {
        p->layer_w[l] = res->layer_w[l];
        p->layer_b[l] = res->layer_b[l];
    }
}

int hl_train_encode(const hl_train_result *res, const float *x, int n, float *q,
                    char *errbuf, size_t errlen)
{
    net nt;
    float *z[HL_MAX_LAYERS] = {0}, *a[HL_MAX_LAYERS] = {0};
    int rc = 0;

    net_of_result(&nt, res);
    for (int l = 0; l < nt.n_layers; l++) {
        size_t nz = (size_t)n * nt.layer_out[l];
        z[l] = malloc(nz * sizeof(float));
        a[l] = l == nt.n_layers - 1 ? q : malloc(nz * sizeof(float));
        if (!z[l] || !a[l]) {
            rc = hl_err(errbuf, errlen, HL_ENOMEM, "train: no memory to encode %d rows", n);
            goto out;
        }
    }
    mlp_forward(&nt, x, n, z, a, NULL);
out:
    for (int l = 0; l < nt.n_layers; l++) {
        free(z[l]);
        if (l != nt.n_layers - 1) free(a[l]);
    }
    return rc;
}

int hl_train_eval_loo(const hl_train_result *res, const hl_train_data *d, int back,
                      int max_users, double *hr10, double *ndcg10,
                      char *errbuf, size_t errlen)
{
    hl_decay dec;
    seqs sq;
    net n;
    int rc;

    if (back < 1)
        return hl_err(errbuf, errlen, HL_EINVAL, "train: eval back must be >= 1");
    if ((rc = check_data(d, errbuf, errlen)))
        return rc;
    if (d->n_items != res->info.n_items)
        return hl_err(errbuf, errlen, HL_EMISMATCH, "train: data has %d items, model %d",
                      d->n_items, res->info.n_items);
    if ((rc = hl_decay_init(&dec, res->info.n_heads, res->info.dim,
                            res->info.half_life_ms, errbuf, errlen)))
        return rc;
    if ((rc = seqs_build(&sq, d, res->info.type_weight, errbuf, errlen)))
        return rc;
    net_of_result(&n, res);
    rc = eval_loo(&n, &dec, &sq, back, max_users, hr10, ndcg10);
    if (rc) hl_err(errbuf, errlen, rc, "train: no memory for the evaluation");
    seqs_free(&sq);
    return rc;
}
