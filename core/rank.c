/* rank.c - the ranker: create, the live catalogue, a batch refresh
 * (encode, find candidates, rescore, `because`), two-stage scoring (the
 * definitions are in rank.h).
 *
 * A refresh encodes each user's query (rank_encode.c), finds candidates
 * by one of three searches, rescores them with det_score and keeps the
 * best k, then explains each item (`because`). The searches: the blocked
 * SGEMM over every item (rank_block.c, recs.scoring=exact), the int8 scan
 * (qscore.c, two-stage, below) and the approximate index (rank_index.c,
 * recs.index=ivf). Every buffer is sized at create: refresh never
 * allocates. hl_ranker_refresh_naive (rank_naive.c) is the plain-loop twin.
 *
 * Batch independence. SGEMM's result for one row depends in its last bits
 * on the shape of the call (OpenBLAS picks kernels and edge paths by M, N
 * and K), so a user scored alone and in a batch of 256 got scores 6e-8
 * apart, enough to swap two near-equal items after a crash replay. So
 * nothing published depends on the batch: each user's query is encoded by
 * a kernel here whose every output is one fixed chain of fused
 * multiply-adds (rank_encode.c); the blocked SGEMM only
 * picks k + DET_PAD candidates per user; each candidate is rescored with a
 * fixed-order dot product (det_score) and the list is the best k of those
 * scores, lower row first on equal scores. The candidates provably hold
 * that list when the k-th exact score beats the worst candidate's SGEMM
 * score by more than both scores' rounding bound (det_margin: the textbook
 * bound gamma_n sum |q_d e_d|, with Cauchy-Schwarz over every item); when
 * it does not (exact ties at the cut), that user is rescored over every
 * item with det_score (hl_rank_rescan_exact, rank_block.c), which is slow
 * but rare.
 *
 * The live catalogue (hl_ranker_set_catalogue): its hidden rows never
 * appear and its side items (rows n_items.. of their own matrix) are scored
 * on every path; on the two-stage path the hidden rows are excluded inside
 * the int8 scan like the user's exclusions, and the side items are scored
 * with det_score and seed the scan's k-th lower bound (two_stage_scan,
 * select_cands).
 *
 * Two-stage scoring (HL_SCORING_TWO_STAGE). The published list is defined
 * by det_score alone: the best k of det_score over the items not excluded,
 * lower row first on equal scores. The exact path above finds it with
 * SGEMM candidates; the two-stage path finds it with candidates from the
 * int8 copy of e_out (qscore.c), whose bound covers det_score's own
 * rounding, and rescores them with the same det_score (select_cands). So
 * the two paths publish the same items, order and bits, and SGEMM's
 * summation order, which differs from det_score's, never decides a near
 * tie in either. A user whose candidates cannot be bounded is rescanned
 * exactly (counted: hl_ranker_fallbacks). */
#include "rank_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_BLOCK 512
#define MAX_K         1000
#define MAX_BATCH     65536

/* The int8 copy and its scratch (two-stage scoring). */
static int two_stage_create(hl_ranker *r, const hl_rank_opts *o, char *errbuf,
                            size_t errlen)
{
    r->qi = o->qitems;
    if (r->qi == NULL)
        r->qi = r->own_qi = hl_qitems_create(r->e_out, r->bias, r->n_items, r->dim,
                                             o->qkernel, errbuf, errlen);
    if (r->qi == NULL)
        return HL_EINVAL;
    if ((r->qs = hl_qscan_create(r->qi, r->max_batch, r->k, errbuf, errlen)) == NULL)
        return HL_ENOMEM;
    if ((r->qusers = calloc((size_t)r->max_batch, sizeof *r->qusers)) == NULL ||
        (r->seed = malloc((size_t)r->max_batch * r->k * sizeof(float))) == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "ranker: out of memory");
    snprintf(r->scoring_name, sizeof r->scoring_name, "two-stage/%s",
             hl_qitems_kernel(r->qi));
    return 0;
}

/* ---- create / destroy ---- */

static int check_opts(const hl_model_parts *p, const hl_rank_opts *o,
                      char *errbuf, size_t errlen)
{
    if (o->k < 1 || o->k > MAX_K)
        return hl_err(errbuf, errlen, HL_EINVAL, "ranker: k %d (1..%d)", o->k, MAX_K);
    if (o->seen_window < 0 || o->seen_window > MAX_RING)
        return hl_err(errbuf, errlen, HL_EINVAL, "ranker: seen_window %d (0..%d)",
                      o->seen_window, MAX_RING);
    if (o->max_batch < 1 || o->max_batch > MAX_BATCH)
        return hl_err(errbuf, errlen, HL_EINVAL, "ranker: max_batch %d (1..%d)",
                      o->max_batch, MAX_BATCH);
    if (o->block_items < 0)
        return hl_err(errbuf, errlen, HL_EINVAL, "ranker: block_items %d",
                      o->block_items);
    if (o->scoring != HL_SCORING_EXACT && o->scoring != HL_SCORING_TWO_STAGE)
        return hl_err(errbuf, errlen, HL_EINVAL, "ranker: scoring %d (exact 0, two-stage 1)",
                      o->scoring);
    if (o->scoring == HL_SCORING_TWO_STAGE && p->info.dim > HL_QSCORE_MAX_DIM)
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "ranker: two-stage scoring handles dim up to %d, the model has %d; "
                      "use recs.scoring=exact", HL_QSCORE_MAX_DIM, p->info.dim);
    if (o->ivf != NULL && (o->nprobe < 0 || o->shadow_every < 0))
        return hl_err(errbuf, errlen, HL_EINVAL, "ranker: index nprobe %d (>= 0), "
                      "shadow_every %d (>= 0)", o->nprobe, o->shadow_every);
    if (p->info.n_items < 1 || !p->e_in || !p->e_out || !p->bias)
        return hl_err(errbuf, errlen, HL_EINVAL, "ranker: model has no items");
    for (int h = 0; h < p->info.n_heads && h < HL_MAX_HEADS; h++)
        if (!(p->info.half_life_ms[h] > 0.0) || !isfinite(p->info.half_life_ms[h]))
            return hl_err(errbuf, errlen, HL_EINVAL,
                          "ranker: head %d half-life %g ms", h,
                          p->info.half_life_ms[h]);
    return 0;
}

static int alloc_scratch(hl_ranker *r)
{
    size_t nb = (size_t)r->max_batch, k = (size_t)r->k, dim = (size_t)r->dim;

    int w = hl_encoder_in_dim(&r->net);
    for (int l = 0; l < r->net.n_layers; l++) {
        int n_in = hl_encoder_layer_in(&r->net, l), n_out = r->net.layer_out[l];
        w = n_out > w ? n_out : w;
        if ((r->wt[l] = malloc((size_t)n_in * n_out * sizeof(float))) == NULL)
            return HL_ENOMEM;
        for (int o = 0; o < n_out; o++)         /* W_l is (n_out, n_in) */
            for (int i = 0; i < n_in; i++)
                r->wt[l][(size_t)i * n_out + o] = r->net.layer_w[l][(size_t)o * n_in + i];
    }
    r->width_max = w;
    r->x1 = malloc((size_t)ENC_GROUP * w * sizeof(float));
    r->act1 = malloc((size_t)ENC_GROUP * w * sizeof(float));
    r->Q = malloc(nb * dim * sizeof(float));
    r->q_norm = malloc(nb * sizeof(float));
    r->excl = calloc((size_t)r->n_items, 1);
    r->S = malloc(nb * (size_t)r->block * sizeof(float));
    r->top = malloc(nb * (size_t)r->kc * sizeof(uint64_t));
    r->top_n = malloc(nb * sizeof(int));
    r->seen = malloc(nb * MAX_RING * sizeof(int32_t));
    r->seen_n = malloc(nb * sizeof(int));
    r->seen_pos = malloc(nb * sizeof(int));
    r->bc_hist = malloc(MAX_RING * dim * sizeof(float));
    r->bc_rec = malloc(k * dim * sizeof(float));
    r->bc_dot = malloc(MAX_RING * k * sizeof(float));
    r->bc_a = malloc(MAX_RING * sizeof(float));
    r->bc_item = malloc(MAX_RING * sizeof(int32_t));
    if (!r->x1 || !r->act1 || !r->Q || !r->q_norm || !r->excl || !r->S || !r->top ||
        !r->top_n || !r->seen ||
        !r->seen_n || !r->seen_pos || !r->bc_hist || !r->bc_rec || !r->bc_dot ||
        !r->bc_a || !r->bc_item)
        return HL_ENOMEM;
    return 0;
}

/* The largest norm and |bias| of n rows of e_out, for det_margin. */
static void row_bounds(const float *e_out, const float *bias, int32_t n, int dim,
                       double *norm_max, double *bias_max)
{
    double e2 = 0.0, b = 0.0;
    for (int32_t j = 0; j < n; j++) {
        const float *e = e_out + (size_t)j * dim;
        double s = 0.0;
        for (int d = 0; d < dim; d++)
            s += (double)e[d] * e[d];
        e2 = s > e2 ? s : e2;
        b = fabs(bias[j]) > b ? fabs(bias[j]) : b;
    }
    *norm_max = sqrt(e2);
    *bias_max = b;
}

static void model_bounds(hl_ranker *r)
{
    row_bounds(r->e_out, r->bias, r->n_items, r->dim, &r->e_norm_max, &r->bias_max);
}
hl_ranker *hl_ranker_create_parts(const hl_model_parts *p,
                                  const hl_rank_opts *o,
                                  char *errbuf, size_t errlen)
{
    hl_ranker *r = NULL;

    if (check_opts(p, o, errbuf, errlen) != 0)
        return NULL;
    if ((r = calloc(1, sizeof *r)) == NULL)
        goto nomem;
    hl_encoder_net_from_parts(&r->net, p);
    if (hl_encoder_net_check(&r->net, errbuf, errlen) != 0)
        goto fail;
    r->e_in = p->e_in;
    r->e_out = p->e_out;
    r->bias = p->bias;
    r->n_items = p->info.n_items;
    r->dim = p->info.dim;
    r->n_heads = p->info.n_heads;
    if (hl_decay_init(&r->decay, r->n_heads, r->dim, p->info.half_life_ms, errbuf,
                      errlen) != 0)
        goto fail;
    memcpy(r->type_weight, o->type_weight ? o->type_weight : p->info.type_weight,
           sizeof r->type_weight);
    r->k = o->k;
    r->kc = o->k + DET_PAD;
    r->exclude_seen = o->exclude_seen;
    r->seen_window = o->seen_window;
    r->max_batch = o->max_batch;
    r->block = o->block_items > 0 ? o->block_items : DEFAULT_BLOCK;
    if (r->block > r->n_items)
        r->block = r->n_items;
    if (alloc_scratch(r) != 0)
        goto nomem;
    model_bounds(r);
    r->scan = hl_rank_pick_scan();
    r->layer = hl_rank_pick_layer();
    snprintf(r->scoring_name, sizeof r->scoring_name, "exact");
    if (o->ivf != NULL) {
        if (hl_rank_index_create(r, o, errbuf, errlen) != 0)
            goto fail;
    } else if (o->scoring == HL_SCORING_TWO_STAGE && two_stage_create(r, o, errbuf, errlen) != 0)
        goto fail;
    return r;
nomem:
    hl_err(errbuf, errlen, HL_ENOMEM, "ranker: out of memory (max_batch %d, k %d)",
           o->max_batch, o->k);
fail:
    hl_ranker_destroy(r);
    return NULL;
}


hl_ranker *hl_ranker_create(const hl_model *m, const hl_rank_opts *o,
                            char *errbuf, size_t errlen)
{
    hl_model_parts p;

    memset(&p, 0, sizeof p);
    p.info = *hl_model_info_get(m);
    p.e_in = hl_model_e_in(m);
    p.e_out = hl_model_e_out(m);
    p.bias = hl_model_bias(m);
    for (int l = 0; l < p.info.n_layers && l < HL_MAX_LAYERS; l++) {
        p.layer_w[l] = hl_model_layer_w(m, l);
        p.layer_b[l] = hl_model_layer_b(m, l);
    }
    return hl_ranker_create_parts(&p, o, errbuf, errlen);
}

void hl_ranker_set_catalogue(hl_ranker *r, const hl_rank_catalogue *c)
{
    if (c != NULL)
        r->cat = *c;
    else
        memset(&r->cat, 0, sizeof r->cat);
    r->side_norm_max = r->side_bias_max = 0.0;
    if (r->cat.n_side > 0)          /* the side rows are SGEMM-scored too */
        row_bounds(r->cat.e_out, r->cat.bias, r->cat.n_side, r->dim, &r->side_norm_max,
                   &r->side_bias_max);
    hl_rank_index_catalogue(r);
}


void hl_ranker_destroy(hl_ranker *r)
{
    if (r == NULL)
        return;
    free(r->x1);
    free(r->act1);
    for (int l = 0; l < HL_MAX_LAYERS; l++)
        free(r->wt[l]);
    free(r->Q);
    free(r->q_norm);
    free(r->excl);
    free(r->S);
    free(r->top);
    free(r->top_n);
    free(r->seen);
    free(r->seen_n);
    free(r->seen_pos);
    free(r->bc_hist);
    free(r->bc_rec);
    free(r->bc_dot);
    free(r->bc_a);
    free(r->bc_item);
    hl_qscan_destroy(r->qs);
    hl_qitems_destroy(r->own_qi);
    free(r->qusers);
    hl_rank_index_free(r);
    free(r->seed);
    free(r);
}


/* ---- because ---- */

/* The weight ring entry slot was applied with (type weight x its weight
 * field); where the ring does not know it (NAN: restored from a format-1
 * snapshot; no hist_w at all), the weight its type is applied with: the
 * worker's weight.* override when set (hl_rank_opts.type_weight), as the
 * heads took it. The model's alone put a type the operator weighs up or
 * down back at the trainer's weight, for old entries only. */
static float entry_weight(const hl_ranker *r, const hl_row_view *v, int slot)
{
    float w = v->hist_w != NULL ? v->hist_w[slot] : NAN;
    int type = v->hist_type[slot];
    if (w == w)
        return w;
    return type < HL_N_TYPES ? r->type_weight[type] : 0.0f;
}

/* Fills bc_item and bc_a with the ring's known entries, newest first (so
 * that the strict argmax below prefers the newest on equal c). Returns
 * their count. */
int hl_rank_history_weights(const hl_ranker *r, const hl_row_view *v,
                            int32_t *item, float *a)
{
    float inv_m[HL_MAX_HEADS], lambda[HL_MAX_HEADS];
    int n = 0;

    /* Event e weighs exp(-lambda_h (B_h - t_e)) in head h, B_h its base,
     * where m sits (decay.h): exp(-lambda_h (t_ref - t_e)) times the
     * head's lag g_h = exp(lambda_h (t_ref - B_h)), one exp per head here,
     * so each head's shares sum to 1 (from t_ref alone they fell short by
     * up to 2^-12, the slow heads most) at the cost they had. */
    for (int h = 0; h < r->n_heads; h++) {
        int64_t base = hl_decay_base_ms(&r->decay, h, v->t_ref_ms);
        double g = base == v->t_ref_ms ? 1.0     /* a grid of 1: lambda may be inf */
                 : exp(r->decay.lambda_per_ms[h] * ((double)v->t_ref_ms - (double)base));
        inv_m[h] = (float)g / fmaxf(v->m[h], HL_ENCODER_EPS);
        lambda[h] = (float)r->decay.lambda_per_ms[h];
    }
    for (int i = v->n_hist - 1; i >= 0; i--) {
        int slot = hl_row_hist_index(v, i);
        int32_t it = v->hist_item[slot];
        if (it < 0 || it >= r->n_items || n >= MAX_RING)
            continue;
        float dt = (float)hl_decay_age_ms(v->t_ref_ms, v->hist_ts_ms[slot]), share = 0.0f;
        for (int h = 0; h < r->n_heads; h++)
            share += (dt > 0.0f ? expf(-lambda[h] * dt) : 1.0f) * inv_m[h];
        item[n] = it;
        a[n++] = share * entry_weight(r, v, slot);
    }
    return n;
}

/* dot (n_rec, n_hist) = e_out[rec] . e_in[hist] as one SGEMM, then the
 * argmax of a_e x dot along each returned item's row. */
static void because_fast(hl_ranker *r, const hl_row_view *v, hl_rec *recs,
                         int n_rec)
{
    int dim = r->dim;
    int n_hist = hl_rank_history_weights(r, v, r->bc_item, r->bc_a);

    for (int j = 0; j < n_rec; j++)
        recs[j].because = -1;
    if (n_hist == 0 || n_rec == 0)
        return;
    /* The rows are scattered over the tables: start every miss at once. */
    for (int e = 0; e < n_hist; e++)
        prefetch_row(r->e_in + (size_t)r->bc_item[e] * dim, dim);
    for (int j = 0; j < n_rec; j++)
        prefetch_row(out_row(r, recs[j].item), dim);
    for (int e = 0; e < n_hist; e++)
        memcpy(r->bc_hist + (size_t)e * dim, r->e_in + (size_t)r->bc_item[e] * dim,
               (size_t)dim * sizeof(float));
    for (int j = 0; j < n_rec; j++)
        memcpy(r->bc_rec + (size_t)j * dim, out_row(r, recs[j].item),
               (size_t)dim * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n_rec, n_hist, dim,
                1.0f, r->bc_rec, dim, r->bc_hist, dim, 0.0f, r->bc_dot, n_hist);
    for (int j = 0; j < n_rec; j++) {
        const float *dot = r->bc_dot + (size_t)j * n_hist;
        float best = 0.0f;
        for (int e = 0; e < n_hist; e++) {
            float c = r->bc_a[e] * dot[e];
            if (c > best) {
                best = c;
                recs[j].because = r->bc_item[e];
            }
        }
    }
}

/* User u's list from its two-stage candidates (qscore.h: they hold every
 * model item of the exact list): each scored with det_score into the heap
 * that already holds the user's best side items, the best k kept, sorted
 * best first. A user whose candidates could not be
 * bounded is rescanned over every item. Returns the list's length. */
static int select_cands(hl_ranker *r, int u, const hl_rank_exclude *ex)
{
    uint64_t *h = r->top + (size_t)u * r->kc;
    const float *q = r->Q + (size_t)u * r->dim;
    int nc, n = r->top_n[u];          /* the side items two_stage_scan kept */
    const int32_t *cand = hl_qscan_cands(r->qs, u, &nc);

    if (cand == NULL) {
        r->fallbacks++;
        return hl_rank_rescan_exact(r, u, ex);
    }
    for (int i = 0; i < nc && i < 8; i++)      /* rows are scattered: run ahead */
        prefetch_row(r->e_out + (size_t)cand[i] * r->dim, r->dim);
    for (int i = 0; i < nc; i++) {
        int32_t j = cand[i];
        if (i + 8 < nc)
            prefetch_row(r->e_out + (size_t)cand[i + 8] * r->dim, r->dim);
        push_best(h, &n, r->k, make_key(det_score(q, r->e_out + (size_t)j * r->dim, r->dim,
                                                  r->bias[j]), j));
    }
    heap_sort(h, n);
    return n;
}

/* Two-stage: every user's query and exclusions to the int8 scan. */
/* User u's side items (the catalogue's, not hidden, not excluded) scored
 * with det_score into its heap, the best k kept; their scores become the
 * scan's seeds: exact scores count as lower bounds, so the k-th lower bound
 * the scan proposes against may come from side items and the bound stays
 * rigorous over model and side items together. */
static void side_seeds(hl_ranker *r, int u, const hl_rank_exclude *ex, hl_qscan_user *qu)
{
    uint64_t *h = r->top + (size_t)u * r->kc;
    float *seed = r->seed + (size_t)u * r->k;
    int n = 0;

    hl_rank_side_push(r, u, ex, &n);
    r->top_n[u] = n;
    qu->n_seed = 0;
    for (int i = 0; i < n; i++)
        if (!isnan(key_score(h[i])))
            seed[qu->n_seed++] = key_score(h[i]);
    qu->seed = seed;
}


/* Two-stage: every user's query and exclusions (the catalogue's hidden
 * rows with them) and side-item seeds to the int8 scan. */
static void two_stage_scan(hl_ranker *r, int n, const hl_rank_exclude *extra)
{
    for (int u = 0; u < n; u++) {
        hl_qscan_user *qu = &r->qusers[u];
        qu->q = r->Q + (size_t)u * r->dim;
        qu->seen = r->seen + (size_t)u * MAX_RING;
        qu->n_seen = r->exclude_seen ? r->seen_n[u] : 0;
        qu->extra = extra != NULL ? extra[u].item : NULL;
        qu->n_extra = extra != NULL ? extra[u].n : 0;
        qu->hidden = r->cat.hidden;
        qu->n_hidden = r->cat.n_hidden;
        side_seeds(r, u, extra != NULL ? &extra[u] : NULL, qu);
    }
    hl_qscan_run(r->qs, r->qusers, n);
}

static void emit(hl_ranker *r, const hl_row_view *users, int n,
                 const hl_rank_exclude *extra, hl_rec *out, int *n_out)
{
    for (int u = 0; u < n; u++) {
        uint64_t *h = r->top + (size_t)u * r->kc;
        hl_rec *o = out + (size_t)u * r->k;
        const hl_rank_exclude *ex = extra != NULL ? &extra[u] : NULL;
        n_out[u] = r->ivf != NULL ? hl_rank_select_index(r, u, ex)
                 : r->qs != NULL ? select_cands(r, u, ex) : hl_rank_select_exact(r, u, ex);
        for (int j = 0; j < n_out[u]; j++) {
            o[j].item = key_item(h[j]);
            o[j].score = key_score(h[j]);
        }
        because_fast(r, &users[u], o, n_out[u]);
    }
}


int hl_ranker_refresh_ex(hl_ranker *r, const hl_row_view *users, int n,
                         const hl_rank_exclude *extra, hl_rec *out, int *n_out)
{
    if (n < 0 || n > r->max_batch)
        return HL_EINVAL;
    if (n == 0)
        return 0;
    const float *Q = hl_rank_encode(r, users, n);
    memset(r->top_n, 0, (size_t)n * sizeof(int));
    if (r->exclude_seen)
        for (int u = 0; u < n; u++)
            hl_rank_load_seen(r, u, &users[u]);
    if (r->ivf != NULL)
        hl_rank_index_batch(r, n, extra);
    else if (r->qs != NULL)
        two_stage_scan(r, n, extra);
    else
        hl_rank_score_all(r, Q, users, n, extra);
    emit(r, users, n, extra, out, n_out);
    return 0;
}

const char *hl_ranker_scoring(const hl_ranker *r)
{
    return r->scoring_name;
}

uint64_t hl_ranker_fallbacks(const hl_ranker *r)
{
    return r->fallbacks;
}

int hl_ranker_refresh(hl_ranker *r, const hl_row_view *users, int n,
                      hl_rec *out, int *n_out)
{
    return hl_ranker_refresh_ex(r, users, n, NULL, out, n_out);
}

int hl_ranker_encode(hl_ranker *r, const hl_row_view *users, int n)
{
    if (n < 0 || n > r->max_batch)
        return HL_EINVAL;
    hl_rank_encode(r, users, n);
    return 0;
}

const float *hl_ranker_query(const hl_ranker *r, int u)
{
    return r->Q + (size_t)u * r->dim;
}
