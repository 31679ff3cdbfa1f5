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
 * c_ih = w_i exp(-lambda_h (B_h - t_i)) / max(m_h, eps), B_h the head's
 * base (decay.h), so d e_in[item_i] += c_ih d x_h. The mass feature log(1 + m_h) has no
 * parameters. AdamW updates every parameter densely after each batch.
 *
 * Determinism: one seeded generator drives the initialisation, the
 * shuffles, the dropout masks and the negatives; every reduction written
 * in train*.c runs in a fixed order; the rest is OpenBLAS, deterministic
 * for a given thread count. Nothing here reads a clock, logs or makes
 * threads.
 *
 * This file holds the trainer: its examples, one batch's forward and
 * backward, the epochs and hl_train_run. The events grouped by user, the
 * parameter layout and the forward pass are in train_net.c, the softmax
 * and AdamW kernels in train_kernels.c, the leave-one-out check in
 * train_eval.c; each has its header (train_net.h, train_kernels.h,
 * train_eval.h), included in one direction only. */
#include "train_eval.h"
#include "train_kernels.h"
#include "train_net.h"
#include "encoder.h"

#include <cblas.h>

/* ---- training state ---------------------------------------------------------------------- */

typedef struct trainer {
    const hl_train_opts *o;
    hl_decay  dec;
    seqs      sq;
    net       p, g;                 /* parameters, gradients */
    float    *p_block, *g_block, *m_block, *v_block, *best_block;
    float    *avg_block;            /* o->ema: the averaged parameters */
    float     th_avg[HL_MAX_HEADS]; /* and the averaged log rates */
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
    /* learn_half_lives: theta_h = log lambda_h (per ms), its gradient, Adam
     * moments and the best epoch's; x before dropout and each history
     * event's age per head (B_h - t_i, ms: hist_ages), for the gradient
     * through lambda */
    float     th[HL_MAX_HEADS], th_g[HL_MAX_HEADS], th_m[HL_MAX_HEADS],
              th_v[HL_MAX_HEADS], th_best[HL_MAX_HEADS];
    float    *x_raw, *hist_age;
} trainer;

static void trainer_free(trainer *t)
{
    hl_train_seqs_free(&t->sq);
    free(t->p_block); free(t->g_block); free(t->m_block); free(t->v_block);
    free(t->best_block); free(t->avg_block); free(t->ex_user); free(t->ex_last);
    free(t->x); free(t->x_mask); free(t->s_scratch);
    for (int l = 0; l < HL_MAX_LAYERS; l++) {
        free(t->z[l]); free(t->a[l]); free(t->mask[l]);
    }
    free(t->logits); free(t->d1); free(t->d2);
    free(t->hist_item); free(t->target); free(t->cand); free(t->diag); free(t->hist_n);
    free(t->hist_coef); free(t->cand_e); free(t->cand_b);
    free(t->cand_ge); free(t->cand_gb); free(t->pop_cdf); free(t->pop_logq);
    free(t->train_len); free(t->x_raw); free(t->hist_age);
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
    /* What the model file refuses (model_format.c), refused before any training,
     * named as the file names it. */
    if (o->n_heads < 1 || o->n_heads > HL_MAX_HEADS)
        return hl_err(errbuf, errlen, HL_EINVAL, "train: n_heads %d outside 1..%d",
                      o->n_heads, HL_MAX_HEADS);
    for (int h = 0; h < o->n_heads; h++)
        if (!isfinite(o->half_life_ms[h]) || !(o->half_life_ms[h] > 0))
            return hl_err(errbuf, errlen, HL_EINVAL, "train: half_life_ms[%d]: expected "
                          "finite and > 0, found %g", h, o->half_life_ms[h]);
    for (int i = 0; i < HL_N_TYPES; i++)
        if (!isfinite(o->type_weight[i]) || o->type_weight[i] < 0)
            return hl_err(errbuf, errlen, HL_EINVAL, "train: type_weight[%s]: expected "
                          "finite and >= 0, found %g", hl_type_name(i),
                          (double)o->type_weight[i]);
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
    if (t->o->learn_half_lives) {
        ALLOC(t->x_raw, (size_t)B * n->in_dim);
        ALLOC(t->hist_age, (size_t)B * t->H * n->n_heads);
    }
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

/* The MLP of init, when its layers have n's shapes. */
static void warm_layers(net *n, const hl_model *init)
{
    const hl_model_info *mi = hl_model_info_get(init);
    if (mi->n_layers != n->n_layers || hl_model_input_dim(mi) != n->in_dim)
        return;
    for (int l = 0; l < n->n_layers; l++)
        if (mi->layer_out[l] != n->layer_out[l] || hl_model_layer_in(mi, l) != n->layer_in[l])
            return;
    for (int l = 0; l < n->n_layers; l++) {
        memcpy(n->w[l], hl_model_layer_w(init, l),
               sizeof(float) * (size_t)n->layer_in[l] * n->layer_out[l]);
        memcpy(n->b[l], hl_model_layer_b(init, l), sizeof(float) * (size_t)n->layer_out[l]);
    }
}

/* Items init knows start from its rows (a retrain moves the space little,
 * so migrating users into the new model loses little). */
static int warm_start(net *n, const hl_train_opts *o, char *errbuf, size_t errlen)
{
    if (o->init == NULL)
        return 0;
    const hl_model_info *mi = hl_model_info_get(o->init);
    size_t d = (size_t)n->dim;
    if (mi->dim != n->dim)
        return hl_err(errbuf, errlen, HL_EINVAL, "train: --init model has dim %d, training "
                      "dim is %d (pass --dim %d)", mi->dim, n->dim, mi->dim);
    for (int32_t i = 0; i < n->n_items; i++) {
        int32_t r = o->init_row[i];
        if (r < 0 || r >= mi->n_items) continue;
        memcpy(n->e_in + i * d, hl_model_e_in(o->init) + r * d, sizeof(float) * d);
        if (n->tie) continue;
        memcpy(n->e_out + i * d, hl_model_e_out(o->init) + r * d, sizeof(float) * d);
        n->bias[i] = hl_model_bias(o->init)[r];
    }
    warm_layers(n, o->init);
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
    if ((rc = hl_train_seqs_build(&t->sq, d, o->type_weight, errbuf, errlen)))
        return rc;
    info_from_opts(&mi, o, d->n_items);
    hl_train_net_shape(&t->p, &mi, o->tie);
    t->g = t->p;
    t->B = o->batch;
    t->H = o->max_history;
    size_t np = t->p.n_params;
    t->p_block = malloc(np * sizeof(float));
    t->g_block = calloc(np, sizeof(float));
    t->m_block = calloc(np, sizeof(float));
    t->v_block = calloc(np, sizeof(float));
    if (o->holdout_loo) t->best_block = malloc(np * sizeof(float));
    if (o->ema > 0) t->avg_block = malloc(np * sizeof(float));
    if (!t->p_block || !t->g_block || !t->m_block || !t->v_block ||
        (o->holdout_loo && !t->best_block) || (o->ema > 0 && !t->avg_block))
        return hl_err(errbuf, errlen, HL_ENOMEM, "train: no memory for %zu parameters", np);
    hl_train_net_bind(&t->p, t->p_block);
    hl_train_net_bind(&t->g, t->g_block);
    hl_train_net_init(&t->p, &t->r);
    if ((rc = warm_start(&t->p, o, errbuf, errlen)))
        return rc;
    if (build_examples(t) || alloc_scratch(t) || (t->sampled && build_sampler(t)))
        return hl_err(errbuf, errlen, HL_ENOMEM, "train: no memory for the batch buffers");
    for (int h = 0; h < o->n_heads; h++)
        t->th[h] = t->th_best[h] = t->th_avg[h] = (float)log(t->dec.lambda_per_ms[h]);
    if (t->avg_block)
        memcpy(t->avg_block, t->p_block, np * sizeof(float));
    return 0;
}

/* ---- one batch ---------------------------------------------------------------------------- */

/* age (H, n_heads): each history event's age B_h - t_i in each head, from
 * the head's base B_h (decay.h), where the stored heads the features read
 * sit: from t_ref, the mass feature's gradient was off by
 * lambda (t_ref - B_h) m / (1 + m), the whole of it within a session of
 * events closer than the grid. B_h - t_i is below 0 for an event after
 * the base. */
static void hist_ages(const trainer *t, int64_t first, int64_t last, float *age)
{
    int nh = t->dec.n_heads;
    int64_t t_ref = t->sq.ts_ms[first];
    for (int64_t i = first + 1; i <= last; i++)
        t_ref = t->sq.ts_ms[i] > t_ref ? t->sq.ts_ms[i] : t_ref;
    for (int h = 0; h < nh; h++) {
        int64_t base = hl_decay_base_ms(&t->dec, h, t_ref);
        for (int64_t i = first; i <= last; i++)
            age[(i - first) * nh + h] = (float)((double)base - (double)t->sq.ts_ms[i]);
    }
}

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
        hl_train_heads_input(&t->dec, n->e_in, &t->sq, first, last, t->s_scratch,
                             t->x + (size_t)r * n->in_dim,
                             t->hist_coef + (size_t)r * t->H * n->n_heads);
        if (t->x_raw) {
            memcpy(t->x_raw + (size_t)r * n->in_dim, t->x + (size_t)r * n->in_dim,
                   (size_t)n->in_dim * sizeof(float));
            hist_ages(t, first, last, t->hist_age + (size_t)r * t->H * n->n_heads);
        }
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

/* Full softmax: logits (B, N) = q e_out^T + b; accumulates d e_out, d b
 * and writes dq (B, dim) into t->d1. */
static double output_full(trainer *t, const float *q, int B)
{
    const net *n = &t->p;
    int N = n->n_items, dim = n->dim;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, N, dim, 1.0f, q, dim,
                n->e_out, dim, 0.0f, t->logits, N);
    double loss = hl_train_softmax_xent(t->logits, n->bias, B, N, t->target);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, dim, N, 1.0f,
                t->logits, N, n->e_out, dim, 0.0f, t->d1, dim);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, dim, B, 1.0f,
                t->logits, N, q, dim, 1.0f, t->g.e_out, dim);
    hl_train_add_colsums(t->g.bias, t->logits, B, N);
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
    double loss = hl_train_softmax_xent(t->logits, t->cand_b, B, C, t->diag);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, dim, C, 1.0f,
                t->logits, C, t->cand_e, dim, 0.0f, t->d1, dim);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, dim, B, 1.0f,
                t->logits, C, q, dim, 0.0f, t->cand_ge, dim);
    memset(t->cand_gb, 0, (size_t)C * sizeof(float));
    hl_train_add_colsums(t->cand_gb, t->logits, B, C);            /* d bias per column */
    for (int c = 0; c < C; c++) {
        t->g.bias[t->cand[c]] += t->cand_gb[c];
        cblas_saxpy(dim, 1.0f, t->cand_ge + (size_t)c * dim, 1,
                    t->g.e_out + (size_t)t->cand[c] * dim, 1);
    }
    return loss;
}

/* The gradient through each head's decay rate, into th_g (d/d log lambda).
 * With a_i = B - t_i (B the head's base, decay.h: the features read the
 * heads stored there), u_i = w_i exp(-lambda a_i), m = sum u_i and
 * c_i = u_i / max(m, eps) (hist_coef), the head's mean part x = sum c_i e_i
 * moves as dx/dlambda = -sum c_i a_i (e_i - x) while m >= eps (the
 * normalisation) and -sum c_i a_i e_i below it; its mass feature
 * log(1 + m) as -sum u_i a_i / (1 + m). dX is the gradient at the
 * encoder input before dropout. */
static void decay_grad(trainer *t, int B, const float *dX)
{
    const net *n = &t->p;
    int dim = n->dim, nh = n->n_heads;
    for (int r = 0; r < B; r++) {
        const float *dx = dX + (size_t)r * n->in_dim, *x = t->x_raw + (size_t)r * n->in_dim;
        const float *age = t->hist_age + (size_t)r * t->H * nh;
        for (int h = 0; h < nh; h++) {
            const float *dxh = dx + (size_t)h * (dim + 1), *xh = x + (size_t)h * (dim + 1);
            float m = expm1f(xh[dim]);                  /* the mass feature's inverse */
            int normed = m >= HL_ENCODER_EPS;
            double g = 0, ca_sum = 0, dxx = 0;
            for (int j = 0; normed && j < dim; j++) dxx += (double)dxh[j] * xh[j];
            for (int i = 0; i < t->hist_n[r]; i++) {
                const float *e = n->e_in + (size_t)t->hist_item[(size_t)r * t->H + i] * dim;
                double ca = (double)t->hist_coef[((size_t)r * t->H + i) * nh + h] *
                            age[(size_t)i * nh + h];
                double de = 0;
                if (ca == 0) continue;
                for (int j = 0; j < dim; j++) de += (double)dxh[j] * e[j];
                g -= ca * (normed ? de - dxx : de);
                ca_sum += ca;
            }
            /* sum u_i a_i = max(m, eps) sum c_i a_i */
            g -= (double)dxh[dim] * fmax(m, HL_ENCODER_EPS) * ca_sum / (1.0 + m);
            t->th_g[h] += (float)(g * t->dec.lambda_per_ms[h]);
        }
    }
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
    if (t->x_raw)
        decay_grad(t, B, dz);
}
/* The learned half-lives stay ordered (each head at least 1.05 times the
 * one before) and within 1 s .. 10 years. */
#define TH_GAP   0.04879f                     /* log 1.05 */
#define HL_MIN_MS 1e3
#define HL_MAX_MS 3.156e11

/* Sets the decay the next batch computes with from th. */
static void decay_from_theta(hl_decay *dec, const float *th)
{
    for (int h = 0; h < dec->n_heads; h++) {
        dec->lambda_per_ms[h] = exp((double)th[h]);
        dec->half_life_ms[h] = M_LN2 / dec->lambda_per_ms[h];
        dec->grid_ms[h] = hl_decay_grid_ms(dec->lambda_per_ms[h]);
    }
}

/* Adam on theta (no weight decay: it would pull every rate to 1/ms), then
 * the range and order constraints, by projection. */
static void theta_step(trainer *t, float lr)
{
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    float c1 = 1.0f - powf(b1, (float)t->step), c2 = 1.0f - powf(b2, (float)t->step);
    float lo = (float)log(M_LN2 / HL_MAX_MS), hi = (float)log(M_LN2 / HL_MIN_MS);
    for (int h = 0; h < t->dec.n_heads; h++) {
        float g = t->th_g[h];
        t->th_m[h] = b1 * t->th_m[h] + (1 - b1) * g;
        t->th_v[h] = b2 * t->th_v[h] + (1 - b2) * g * g;
        t->th[h] -= lr * (t->th_m[h] / c1) / (sqrtf(t->th_v[h] / c2) + eps);
        t->th_g[h] = 0;
        t->th[h] = fminf(fmaxf(t->th[h], lo), hi);
        if (h > 0 && t->th[h] > t->th[h - 1] - TH_GAP)
            t->th[h] = t->th[h - 1] - TH_GAP;     /* longer half-life, smaller rate */
    }
    decay_from_theta(&t->dec, t->th);
}

/* The running average of the parameters and log rates (o->ema): its
 * decay ramps up from 0.1 so the random start is forgotten early. Convex
 * combinations keep the rates' range and order. */
static void average_step(trainer *t)
{
    double r = (1.0 + (double)t->step) / (10.0 + (double)t->step);
    float e = (float)(r < t->o->ema ? r : t->o->ema);
    hl_train_average(t->avg_block, t->p_block, t->p.n_params, e);
    for (int h = 0; h < t->dec.n_heads; h++)
        t->th_avg[h] = e * t->th_avg[h] + (1.0f - e) * t->th[h];
}

static void adam_step(trainer *t, float lr)
{
    t->step++;
    hl_train_adam_step(t->p_block, t->g_block, t->m_block, t->v_block, t->p.n_params,
                       t->step, lr, t->o->l2);
    if (t->x_raw)
        theta_step(t, lr);
    if (t->avg_block)
        average_step(t);
}

/* Forward and backward of one batch (examples idx[0..B)); gradients are
 * accumulated into t->g. Returns the summed loss. */
static double batch_grad(trainer *t, const int64_t *idx, int B, int train)
{
    const net *n = &t->p;
    batch_inputs(t, idx, B, train);
    hl_train_mlp_forward(n, t->x, B, t->z, t->a, train ? t->mask : NULL);
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

static void report_batch(const trainer *t, int ep, double loss, int64_t done)
{
    if (!t->o->progress) return;
    hl_train_progress p = {ep, t->o->epochs, loss / (double)done, t->n_ex, done, 1, -1};
    t->o->progress(t->o->progress_ctx, &p);
}

static double train_epoch(trainer *t, int64_t *order, int ep)
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
        report_batch(t, ep, loss, b + B);
    }
    return t->n_ex ? loss / (double)t->n_ex : 0;
}

/* ---- the public API ---------------------------------------------------------------------------- */

void hl_train_opts_default(hl_train_opts *o)
{
    static const double heads_ms[] = {15 * 60e3, 3600e3, 4 * 3600e3, 86400e3, 30 * 86400e3};
    memset(o, 0, sizeof *o);
    o->dim = 128;
    o->n_heads = (int)(sizeof heads_ms / sizeof heads_ms[0]);
    for (int h = 0; h < o->n_heads; h++)
        o->half_life_ms[h] = heads_ms[h];
    o->learn_half_lives = 1;
    for (int i = 0; i < HL_N_TYPES; i++) o->type_weight[i] = 1.0f;
    o->type_weight[HL_FAVORITE] = 2.0f;
    o->type_weight[HL_ADD_TO_CART] = 2.0f;
    o->type_weight[HL_PURCHASE] = 3.0f;
    o->n_hidden = 1;
    o->hidden[0] = 256;
    o->epochs = 16;
    o->batch = 256;
    o->lr = 3e-3f;
    o->lr_final = 0.1f;
    o->l2 = 0.0f;
    o->dropout = 0.5f;
    o->max_history = 256;
    o->tie = 1;
    o->full_softmax_max_items = 5000;
    o->n_negatives = 2048;
    o->train_fraction = 1.0f;
    o->seed = 1;
}

static int result_take(hl_train_result *res, const trainer *t, const float *block)
{
    hl_model_info mi;
    info_from_opts(&mi, t->o, t->p.n_items);
    memset(res, 0, sizeof *res);
    memcpy(mi.half_life_ms, t->dec.half_life_ms, sizeof mi.half_life_ms);
    res->info = mi;
    net n = t->p;
    hl_train_net_bind(&n, (float *)block);
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

size_t hl_train_memory_bytes(const hl_train_opts *o, int32_t n_items, int64_t n_events,
                             size_t *n_params)
{
    hl_model_info mi;
    net n;
    info_from_opts(&mi, o, n_items);
    hl_train_net_shape(&n, &mi, o->tie);
    *n_params = n.n_params;
    /* blocks: p, g, m, v, the result's copy, best (loo), avg (ema) */
    size_t blocks = 5 + (o->holdout_loo != 0) + (o->ema > 0);
    size_t cols = n_items > o->full_softmax_max_items
                  ? (size_t)o->batch + (size_t)o->n_negatives : (size_t)n_items;
    size_t per_event = 2 * sizeof(int32_t) + 3 * sizeof(int64_t) + sizeof(float); /* seqs, examples */
    return blocks * n.n_params * sizeof(float) + (size_t)n_events * per_event +
           (size_t)o->batch * (cols + (size_t)o->max_history * (mi.n_heads + 2)) *
           sizeof(float);
}

static void report_epoch(const trainer *t, int ep, double loss, double vhr)
{
    if (!t->o->progress) return;
    hl_train_progress p = {ep, t->o->epochs, loss, t->n_ex, t->n_ex, 0, vhr};
    t->o->progress(t->o->progress_ctx, &p);
}

/* What training hands on: the parameters and log rates of the last step,
 * or their average (o->ema). */
static const float *served_block(const trainer *t)
{
    return t->avg_block ? t->avg_block : t->p_block;
}

static const float *served_theta(const trainer *t)
{
    return t->avg_block ? t->th_avg : t->th;
}

/* Validation HR@10 of what training hands on now into *vhr; 0, or HL_ENOMEM. */
static int validate(const trainer *t, double *vhr)
{
    double vndcg;
    net n = t->p;
    hl_decay dec = t->dec;
    hl_train_net_bind(&n, (float *)served_block(t));
    decay_from_theta(&dec, served_theta(t));
    return hl_train_eval_net(&n, &dec, &t->sq, 2, 0, vhr, &vndcg);
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
    memcpy(t->th_best, t->th, sizeof t->th);
    for (int ep = 1; ep <= t->o->epochs; ep++) {
        double vhr = -1;
        *final_loss = train_epoch(t, order, ep);
        if (t->o->holdout_loo) {
            if (validate(t, &vhr)) {
                free(order);
                return HL_ENOMEM;
            }
            if (vhr > *best_hr) {
                *best_hr = vhr;
                memcpy(t->best_block, served_block(t), t->p.n_params * sizeof(float));
                memcpy(t->th_best, served_theta(t), sizeof t->th);
            }
        }
        report_epoch(t, ep, *final_loss, vhr);
    }
    free(order);
    return 0;
}

/* Epochs over no example would hand back the random start as a trained
 * model (a file of users with one event each, or a wrong user column that
 * makes every line its own user): refused, with what an example needs.
 * Zero epochs asks for no training (a warm start copied as is). */
static int check_examples(const trainer *t, char *errbuf, size_t errlen)
{
    const hl_train_opts *o = t->o;
    if (t->n_ex > 0 || o->epochs == 0)
        return 0;
    return hl_err(errbuf, errlen, HL_EINVAL, "train: no training examples in %lld events "
                  "of %d users: an example is a user's event followed by another, so a "
                  "user needs %d events%s; check that the user column groups each user's "
                  "events", (long long)t->sq.off[t->sq.n_users], t->sq.n_users,
                  o->holdout_loo ? 3 : 2,
                  o->holdout_loo ? " (the last two are held out)"
                  : o->train_fraction < 1 ? " before the holdout time" : "");
}

int hl_train_run(const hl_train_opts *o, const hl_train_data *d,
                 hl_train_result *res, char *errbuf, size_t errlen)
{
    trainer t;
    double loss = 0, best_hr = -1;
    int rc;

    memset(res, 0, sizeof *res);
    if ((rc = check_opts(o, errbuf, errlen)) || (rc = hl_train_check_data(d, errbuf, errlen)))
        return rc;
    if ((rc = trainer_init(&t, o, d, errbuf, errlen)) ||
        (rc = check_examples(&t, errbuf, errlen)))
        goto out;
    if ((rc = run_epochs(&t, &loss, &best_hr))) {
        hl_err(errbuf, errlen, rc, "train: no memory during training");
        goto out;
    }
    const float *block = t.best_block && best_hr >= 0 ? t.best_block : served_block(&t);
    if (block == t.best_block && o->learn_half_lives)
        decay_from_theta(&t.dec, t.th_best);      /* the kept epoch's rates */
    else if (t.avg_block && o->learn_half_lives)
        decay_from_theta(&t.dec, t.th_avg);
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
        hl_train_net_of_result(&n, res);
        if ((rc = hl_train_eval_net(&n, &t.dec, &t.sq, 1, 0, &res->test_hr10,
                                    &res->test_ndcg10)))
            hl_err(errbuf, errlen, rc, "train: no memory for the evaluation");
    }
out:
    if (rc) hl_train_result_reset(res);
    trainer_free(&t);
    return rc;
}
