/* train_net.h - the trainer's data and network: events grouped by user
 * (seqs), the parameters in one block (net), the forward pass, and the one
 * seeded generator (rng) that drives everything random in training.
 * Private to core/train/ (train_net.c implements it); the trainer's
 * contract is train.h.
 *
 * The trainer's files include one another's headers in one direction
 * only: train.c -> train_eval.h, train_kernels.h -> train_net.h -> train.h. */
#ifndef HL_TRAIN_NET_H
#define HL_TRAIN_NET_H

#include "train.h"
#include "decay.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Allocates count elements for ptr, or returns HL_ENOMEM from the caller. */
#define ALLOC(ptr, count) \
    do { if (((ptr) = malloc((size_t)(count) * sizeof *(ptr))) == NULL) return HL_ENOMEM; } while (0)

/* ---- random numbers (splitmix64) ---------------------------------------- */

typedef struct rng { uint64_t s; } rng;

static inline uint64_t rng_next(rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline double rng_unit(rng *r)    /* [0, 1) */
{
    return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

static inline float rng_normal(rng *r)
{
    double u1 = rng_unit(r), u2 = rng_unit(r);
    return (float)(sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2));
}

/* ---- per-user sequences (train_net.c) ----------------------------------- */

/* The events grouped by user, each user's in time order (ties by index). */
typedef struct seqs {
    int32_t  n_users;
    int64_t *off;      /* (n_users + 1): user u is [off[u], off[u+1]) */
    int32_t *item;
    int64_t *ts_ms;
    float   *w;        /* type_weight[type] x weight */
} seqs;

/* 0 if every event of d is in range, else HL_EINVAL naming the event. */
int  hl_train_check_data(const hl_train_data *d, char *errbuf, size_t errlen);
/* Groups d's events into sq (which then owns its arrays); on failure sq
 * is left empty. */
int  hl_train_seqs_build(seqs *sq, const hl_train_data *d, const float *type_weight,
                         char *errbuf, size_t errlen);
void hl_train_seqs_free(seqs *sq);

/* ---- parameters and the forward pass (train_net.c) ---------------------- */

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

/* Sets n's shape from mi (no arrays yet). */
void hl_train_net_shape(net *n, const hl_model_info *mi, int tie);
/* Points n's arrays into block (n->n_params floats). */
void hl_train_net_bind(net *n, float *block);
/* Random embeddings and weights (He for hidden layers), zero biases. */
void hl_train_net_init(net *n, rng *r);
/* A read-only net view of a result's arrays. */
void hl_train_net_of_result(net *n, const hl_train_result *res);

/* Fills x (n_heads*(dim+1)) with the heads of user u after events
 * [first, last] (indices into sq), newest last. s is scratch
 * (n_heads*dim). If coef is not NULL it receives, for each of those events
 * in order, the n_heads weights c_ih of e_in[item_i] in the mean part. */
void hl_train_heads_input(const hl_decay *dec, const float *e_in, const seqs *sq,
                          int64_t first, int64_t last, float *s, float *x,
                          float *coef);

/* Forward of n rows. z[l] (n, out_l) get the pre-activations, a[l] the
 * activations (ReLU, times mask[l] if masks are given); the last layer has
 * no ReLU and a[L-1] is q. x_in is the (already masked) input. */
void hl_train_mlp_forward(const net *nt, const float *x_in, int n, float **z,
                          float **a, float *const *mask);

#endif
