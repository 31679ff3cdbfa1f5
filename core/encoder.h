/* encoder.h - a user's decayed heads -> the query vector q (DESIGN.md
 * section 5).
 *
 * The encoder input x has n_heads x (dim + 1) floats: per head h the
 * weighted mean s_h / max(m_h, HL_ENCODER_EPS) followed by the activity
 * feature log(1 + m_h). The MLP maps x through n_layers layers,
 * a_l = W_l a_{l-1} + b_l, with ReLU between layers and none after the last,
 * whose output is q (dim floats). Serving (rank.c) and training (train.c)
 * both call these functions, so the two cannot disagree on the definition.
 *
 * Everything works on raw arrays (hl_encoder_net), so a model in memory
 * (a test, the trainer) needs no file. Nothing here allocates. */
#ifndef HL_ENCODER_H
#define HL_ENCODER_H

#include "model.h"
#include "table.h"

/* Below this mass a head's mean fades towards zero instead of dividing by a
 * vanishing number: s_h / eps = (m_h / eps) x mean. */
#define HL_ENCODER_EPS 1e-6f

/* The MLP's weights, borrowed. W_l is (layer_out[l], layer_in(l)) row-major,
 * layer_in(0) = n_heads * (dim + 1), layer_in(l) = layer_out[l - 1]. */
typedef struct hl_encoder_net {
    int          n_heads, dim;
    int          n_layers;                    /* 1..HL_MAX_LAYERS */
    int          layer_out[HL_MAX_LAYERS];    /* layer_out[n_layers-1] == dim */
    const float *layer_w[HL_MAX_LAYERS];
    const float *layer_b[HL_MAX_LAYERS];
} hl_encoder_net;

/* Fills net from an open model or from in-memory parts (borrowing). */
void hl_encoder_net_from_model(hl_encoder_net *net, const hl_model *m);
void hl_encoder_net_from_parts(hl_encoder_net *net, const hl_model_parts *p);

/* HL_EINVAL with a reason if the shape is inconsistent (layer count, last
 * width != dim, a NULL weight). */
int hl_encoder_net_check(const hl_encoder_net *net, char *errbuf, size_t errlen);

/* Input width n_heads * (dim + 1), and layer l's input width. */
int hl_encoder_in_dim(const hl_encoder_net *net);
int hl_encoder_layer_in(const hl_encoder_net *net, int l);

/* Floats of the activation buffer hl_encoder_forward needs for n users:
 * n x (sum of layer_out). */
size_t hl_encoder_act_floats(const hl_encoder_net *net, int n);

/* x (n_heads * (dim + 1)) from one user's heads s (n_heads, dim) and
 * masses m (n_heads). */
void hl_encoder_features(int n_heads, int dim, const float *s, const float *m,
                         float *x);

/* X (n, in_dim): row u from users[u].s and users[u].m. */
void hl_encoder_features_rows(const hl_encoder_net *net,
                              const hl_row_view *users, int n, float *X);

/* X (n, in_dim) -> act. act holds every layer's output, layer by layer:
 * layer l is (n, layer_out[l]) at act + n * (layer_out[0] + .. +
 * layer_out[l-1]), after its ReLU (none on the last). Each layer is one
 * cblas_sgemm over the batch. Returns a pointer to Q (n, dim), the last
 * layer, inside act. The trainer keeps act for backpropagation. */
float *hl_encoder_forward(const hl_encoder_net *net, const float *X, int n,
                          float *act);

/* The ranker's last guard on a query q (dim floats): each component
 * beyond HL_QUERY_MAX_ABS in magnitude is clamped to it, nan becomes 0.
 * A model that loads gives |q| <= 2^103 (model.h) and trained ones far
 * less, but a state can leave the model's bound: a migration's map M
 * scales what is older than the ring, catalogue and fold-in e_in are not
 * the model's, and event weights up to 1e30 can overflow a head. With |q_i| <= 2^64 and every e_out and bias within
 * 2^8 (2^14 for the norm of a folded item's e_out), a score stays below
 * 2^12 2^64 2^14 = 2^90, far from FLT_MAX, so no list holds inf or nan
 * and top-K never compares nan. Per user, not per item: no cost in the
 * scoring kernels. */
#define HL_QUERY_MAX_ABS 0x1p64f
void hl_encoder_query_bound(float *q, int dim);

/* Plain-loop twin of hl_encoder_forward, for tests (STYLE.md section 8). */
float *hl_encoder_forward_naive(const hl_encoder_net *net, const float *X,
                                int n, float *act);

#endif
