/* encoder.c - heads -> encoder input -> MLP -> query, for a batch of users.
 *
 * The batch is the unit of work: X is (n, in_dim) with one user per row,
 * and each layer is a single SGEMM A_l = A_{l-1} W_l^T over all n users,
 * so the cost per user falls as the batch grows (DESIGN.md section 9).
 * Biases are written into the output first and the SGEMM accumulates on
 * top of them (beta = 1), which saves a pass over the output. The plain-loop
 * twin computes the same thing one dot product at a time; tests compare them.
 * Nothing here allocates: callers size act with hl_encoder_act_floats(). */
#include "encoder.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

void hl_encoder_net_from_model(hl_encoder_net *net, const hl_model *m)
{
    const hl_model_info *mi = hl_model_info_get(m);

    memset(net, 0, sizeof *net);
    net->n_heads = mi->n_heads;
    net->dim = mi->dim;
    net->n_layers = mi->n_layers;
    for (int l = 0; l < mi->n_layers && l < HL_MAX_LAYERS; l++) {
        net->layer_out[l] = mi->layer_out[l];
        net->layer_w[l] = hl_model_layer_w(m, l);
        net->layer_b[l] = hl_model_layer_b(m, l);
    }
}

void hl_encoder_net_from_parts(hl_encoder_net *net, const hl_model_parts *p)
{
    memset(net, 0, sizeof *net);
    net->n_heads = p->info.n_heads;
    net->dim = p->info.dim;
    net->n_layers = p->info.n_layers;
    for (int l = 0; l < p->info.n_layers && l < HL_MAX_LAYERS; l++) {
        net->layer_out[l] = p->info.layer_out[l];
        net->layer_w[l] = p->layer_w[l];
        net->layer_b[l] = p->layer_b[l];
    }
}

int hl_encoder_net_check(const hl_encoder_net *net, char *errbuf, size_t errlen)
{
    if (net->n_heads < 1 || net->n_heads > HL_MAX_HEADS || net->dim < 1)
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "encoder: %d heads of dim %d", net->n_heads, net->dim);
    if (net->n_layers < 1 || net->n_layers > HL_MAX_LAYERS)
        return hl_err(errbuf, errlen, HL_EINVAL, "encoder: %d layers (1..%d)",
                      net->n_layers, HL_MAX_LAYERS);
    for (int l = 0; l < net->n_layers; l++) {
        if (net->layer_out[l] < 1)
            return hl_err(errbuf, errlen, HL_EINVAL,
                          "encoder: layer %d has width %d", l, net->layer_out[l]);
        if (net->layer_w[l] == NULL || net->layer_b[l] == NULL)
            return hl_err(errbuf, errlen, HL_EINVAL,
                          "encoder: layer %d has no weights", l);
    }
    if (net->layer_out[net->n_layers - 1] != net->dim)
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "encoder: last layer width %d != dim %d",
                      net->layer_out[net->n_layers - 1], net->dim);
    return 0;
}

int hl_encoder_in_dim(const hl_encoder_net *net)
{
    return net->n_heads * (net->dim + 1);
}

int hl_encoder_layer_in(const hl_encoder_net *net, int l)
{
    return l == 0 ? hl_encoder_in_dim(net) : net->layer_out[l - 1];
}

size_t hl_encoder_act_floats(const hl_encoder_net *net, int n)
{
    size_t width = 0;
    for (int l = 0; l < net->n_layers; l++)
        width += (size_t)net->layer_out[l];
    return width * (size_t)n;
}

void hl_encoder_features(int n_heads, int dim, const float *s, const float *m,
                         float *x)
{
    for (int h = 0; h < n_heads; h++) {
        const float *sh = s + (size_t)h * dim;
        float *xh = x + (size_t)h * (dim + 1);
        float inv = 1.0f / fmaxf(m[h], HL_ENCODER_EPS);
        for (int d = 0; d < dim; d++)
            xh[d] = sh[d] * inv;
        /* log1pf keeps precision for the small masses of fading heads. */
        xh[dim] = log1pf(fmaxf(m[h], 0.0f));
    }
}

void hl_encoder_features_rows(const hl_encoder_net *net,
                              const hl_row_view *users, int n, float *X)
{
    size_t in_dim = (size_t)hl_encoder_in_dim(net);
    for (int u = 0; u < n; u++)
        hl_encoder_features(net->n_heads, net->dim, users[u].s, users[u].m,
                            X + (size_t)u * in_dim);
}

static void relu(float *a, size_t len)
{
    for (size_t i = 0; i < len; i++)
        a[i] = a[i] > 0.0f ? a[i] : 0.0f;
}

float *hl_encoder_forward(const hl_encoder_net *net, const float *X, int n,
                          float *act)
{
    const float *in = X;
    float *out = act;

    for (int l = 0; l < net->n_layers; l++) {
        int n_in = hl_encoder_layer_in(net, l), n_out = net->layer_out[l];
        /* out (n, n_out) = b_l broadcast, then += in (n, n_in) W_l^T. */
        for (int u = 0; u < n; u++)
            memcpy(out + (size_t)u * n_out, net->layer_b[l],
                   (size_t)n_out * sizeof(float));
        if (n > 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n_out, n_in,
                        1.0f, in, n_in, net->layer_w[l], n_in, 1.0f, out, n_out);
        if (l < net->n_layers - 1)
            relu(out, (size_t)n * n_out);
        in = out;
        out += (size_t)n * n_out;
    }
    return (float *)in;
}

float *hl_encoder_forward_naive(const hl_encoder_net *net, const float *X,
                                int n, float *act)
{
    const float *in = X;
    float *out = act;

    for (int l = 0; l < net->n_layers; l++) {
        int n_in = hl_encoder_layer_in(net, l), n_out = net->layer_out[l];
        const float *W = net->layer_w[l];
        for (int u = 0; u < n; u++) {
            for (int o = 0; o < n_out; o++) {
                double acc = net->layer_b[l][o];
                for (int i = 0; i < n_in; i++)
                    acc += (double)in[(size_t)u * n_in + i] * W[(size_t)o * n_in + i];
                float v = (float)acc;
                if (l < net->n_layers - 1 && v < 0.0f)
                    v = 0.0f;
                out[(size_t)u * n_out + o] = v;
            }
        }
        in = out;
        out += (size_t)n * n_out;
    }
    return (float *)in;
}

void hl_encoder_query_bound(float *q, int dim)
{
    for (int d = 0; d < dim; d++)
        if (!(fabsf(q[d]) <= HL_QUERY_MAX_ABS))     /* rare: a branch, not a min/max */
            q[d] = isnan(q[d]) ? 0.0f : copysignf(HL_QUERY_MAX_ABS, q[d]);
}
