/* train_net.c - the network as training sees it: the events grouped by
 * user, the parameters laid out in one block, the forward pass from a
 * user's events to a query, and the trained result handed to the caller.
 *
 * The heads of an example are computed with hl_decay_add() and turned into
 * the encoder input by hl_encoder_features(), the worker's own code, so a
 * model scores the same in training, in evaluation and when served. The
 * parameters, their gradient and the Adam moments share one layout (net),
 * so an optimiser step is one pass over a flat block (train_kernels.c).
 * Nothing here knows about batches, losses or epochs (train.c). */
#include "train_net.h"
#include "encoder.h"

#include <cblas.h>

/* ---- per-user sequences ----------------------------------------------------- */

typedef struct ev_key { int32_t user; int64_t ts_ms, idx; } ev_key;

static int ev_key_cmp(const void *pa, const void *pb)
{
    const ev_key *a = pa, *b = pb;
    if (a->user != b->user) return a->user < b->user ? -1 : 1;
    if (a->ts_ms != b->ts_ms) return a->ts_ms < b->ts_ms ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

void hl_train_seqs_free(seqs *sq)
{
    free(sq->off); free(sq->item); free(sq->ts_ms); free(sq->w);
    memset(sq, 0, sizeof *sq);
}

int hl_train_check_data(const hl_train_data *d, char *errbuf, size_t errlen)
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

int hl_train_seqs_build(seqs *sq, const hl_train_data *d, const float *type_weight,
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
        hl_train_seqs_free(sq);
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

void hl_train_net_shape(net *n, const hl_model_info *mi, int tie)
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

void hl_train_net_bind(net *n, float *block)
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

void hl_train_net_init(net *n, rng *r)
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

void hl_train_net_of_result(net *n, const hl_train_result *res)
{
    hl_train_net_shape(n, &res->info, 0);
    n->e_in = res->e_in;
    n->e_out = res->e_out;
    n->bias = res->bias;
    for (int l = 0; l < n->n_layers; l++) {
        n->w[l] = res->layer_w[l];
        n->b[l] = res->layer_b[l];
    }
}

/* ---- the encoder input: heads through hl_decay_add ----------------------- */

void hl_train_heads_input(const hl_decay *dec, const float *e_in, const seqs *sq,
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
    /* each event's share of the stored heads, which sit at their bases
     * (decay.h), not at t_ref */
    float inv[HL_MAX_HEADS], f[HL_MAX_HEADS];
    for (int h = 0; h < nh; h++)
        inv[h] = 1.0f / fmaxf(m[h], HL_ENCODER_EPS);
    for (int64_t i = first; i <= last; i++) {
        hl_decay_weights(dec, t_ref, sq->ts_ms[i], f);
        for (int h = 0; h < nh; h++)
            coef[(i - first) * nh + h] = sq->w[i] * f[h] * inv[h];
    }
}

/* ---- the MLP ------------------------------------------------------------------------------------ */

void hl_train_mlp_forward(const net *nt, const float *x_in, int n, float **z,
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

/* ---- the trained result ------------------------------------------------------------- */

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

    hl_train_net_of_result(&nt, res);
    for (int l = 0; l < nt.n_layers; l++) {
        size_t nz = (size_t)n * nt.layer_out[l];
        z[l] = malloc(nz * sizeof(float));
        a[l] = l == nt.n_layers - 1 ? q : malloc(nz * sizeof(float));
        if (!z[l] || !a[l]) {
            rc = hl_err(errbuf, errlen, HL_ENOMEM, "train: no memory to encode %d rows", n);
            goto out;
        }
    }
    hl_train_mlp_forward(&nt, x, n, z, a, NULL);
out:
    for (int l = 0; l < nt.n_layers; l++) {
        free(z[l]);
        if (l != nt.n_layers - 1) free(a[l]);
    }
    return rc;
}
