/* train.h - fit a model (e_in, the encoder MLP, e_out, item biases) by
 * next-item prediction over each user's events in time order (DESIGN.md
 * section 5).
 *
 * The heads a training example sees are computed with hl_decay_add(), the
 * code the worker runs, so training and serving agree. Events arrive in
 * memory (hl_train_data) so `halflife train` (file input) and `halflife demo`
 * (a synthetic stream) share one entry point. Nothing here reads a clock,
 * logs or starts threads: progress goes to a callback, and parallelism is
 * OpenBLAS's (the caller sets its thread count). A run is deterministic for
 * a given seed and OpenBLAS thread count. */
#ifndef HL_TRAIN_H
#define HL_TRAIN_H

#include "model.h"

/* Events in memory, any order: train sorts each user's events by time
 * (ties keep their index order). Rows are dense: users 0..n_users-1,
 * items 0..n_items-1. */
typedef struct hl_train_data {
    int64_t        n_events;
    int32_t        n_users, n_items;
    const int32_t *user;       /* user row per event */
    const int32_t *item;       /* item row per event */
    const uint8_t *type;       /* HL_VIEW.. per event */
    const int64_t *ts_ms;      /* event time */
    const float   *weight;     /* the event's weight field; NULL means all 1 */
} hl_train_data;

/* What the callback sees after each batch (in_epoch 1) and once at the end
 * of each epoch (in_epoch 0); the caller adds the wall time. An epoch of
 * a large file takes minutes, so a caller that prints only epoch ends
 * leaves its user without a word meanwhile. */
typedef struct hl_train_progress {
    int     epoch, epochs;     /* 1-based */
    double  loss;              /* mean cross-entropy over the epoch (so far) */
    int64_t examples;          /* next-item examples an epoch trains */
    int64_t done;              /* of which trained so far (examples at the end) */
    int     in_epoch;          /* 1: after a batch; loss and done are partial */
    double  valid_hr10;        /* HR@10 on the validation item; -1 without holdout
                                  or in_epoch */
} hl_train_progress;

typedef void (*hl_train_progress_fn)(void *ctx, const hl_train_progress *p);

typedef struct hl_train_opts {
    int      dim;                          /* embedding and query width */
    int      n_heads;
    double   half_life_ms[HL_MAX_HEADS];
    float    type_weight[HL_N_TYPES];      /* w = type_weight[type] x weight */
    int      n_hidden;                     /* hidden layers: 0..HL_MAX_LAYERS-1 */
    int      hidden[HL_MAX_LAYERS - 1];    /* their widths */
    int      epochs;
    int      batch;                        /* examples per step */
    float    lr;                           /* Adam step size */
    float    lr_final;                     /* cosine decay to lr x lr_final */
    float    l2;                           /* weight decay on every parameter */
    float    ema;                          /* weight averaging: after each step
                                              avg = e avg + (1 - e) params, e =
                                              min(ema, (1 + step) / (10 + step));
                                              validated and written instead of
                                              the last step's; 0: off */
    float    dropout;                      /* on the encoder input and hidden */
    int      max_history;                  /* events per example's heads (newest) */
    int      holdout_loo;                  /* keep each user's last two events out */
    float    train_fraction;               /* train on events before the time of
                                              this quantile of all events (1 = all):
                                              the rest stays unseen for a later
                                              prequential evaluation */
    int      full_softmax_max_items;       /* full softmax up to this many items */
    int      n_negatives;                  /* sampled softmax: shared negatives */
    int      tie;                          /* e_out = e_in during training */
    int      learn_half_lives;             /* train each head's decay rate too:
                                              half_life_ms is the start, the
                                              model gets the learned ones */
    uint64_t seed;
    /* A warm start (`halflife train --init`): training item i starts from
     * row init_row[i] of init (its e_in, and e_out and bias unless tie),
     * -1 keeps the random start; the MLP starts from init's when every
     * layer has the same shape. init's dim must equal dim. NULL: none. */
    const hl_model *init;
    const int32_t  *init_row;          /* n_items entries */
    hl_train_progress_fn progress;         /* may be NULL */
    void    *progress_ctx;
} hl_train_opts;

/* Defaults: the best recipe measured on Amazon Beauty (leave-one-out,
 * tests/integration/test_quality.sh): dim 128 tied in and out, heads
 * starting at 15m/1h/4h/1d/30d and learned, one hidden layer of 256,
 * dropout 0.5, 16 epochs of batch 256, lr 3e-3 cosine to 3e-4, full
 * softmax up to 5,000 items and 2,048 sampled negatives beyond. */
void hl_train_opts_default(hl_train_opts *o);

/* About how many bytes hl_train_run allocates to train n_items items and
 * n_events events under o, and the parameter count into *n_params: the
 * parameters, their gradients, Adam's two moments (and the best epoch's
 * and the running average's copies) dominate, then a few words per event.
 * Nothing is checked or allocated; a caller prints it before a run that a
 * machine without that much memory would not finish. */
size_t hl_train_memory_bytes(const hl_train_opts *o, int32_t n_items, int64_t n_events,
                             size_t *n_params);

/* The trained parameters, owned (hl_train_result_reset frees them). */
typedef struct hl_train_result {
    hl_model_info info;        /* version is left for the caller to fill */
    float  *e_in, *e_out, *bias;
    float  *layer_w[HL_MAX_LAYERS], *layer_b[HL_MAX_LAYERS];
    double  final_loss;
    double  valid_hr10;        /* -1 without holdout */
    double  test_hr10, test_ndcg10; /* loo test item; -1 without holdout */
    int64_t examples_per_epoch;
} hl_train_result;

/* Trains on d with o. On success res owns the parameters; on failure res is
 * left empty and errbuf says why. */
int  hl_train_run(const hl_train_opts *o, const hl_train_data *d,
                  hl_train_result *res, char *errbuf, size_t errlen);
void hl_train_result_reset(hl_train_result *res);   /* empty res is a no-op */

/* Points p at res's arrays and the given item ids, ready for
 * hl_model_write(). p borrows from res and item_id. */
void hl_train_result_parts(const hl_train_result *res,
                           const char *const *item_id,
                           const uint32_t *item_id_len, hl_model_parts *p);

/* The training-side encoder: x (n, n_heads*(dim+1)) -> q (n, dim) through
 * the MLP of res (ReLU between layers). Exposed so a test can check it
 * against the serving encoder on the same weights. */
int  hl_train_encode(const hl_train_result *res, const float *x, int n,
                     float *q, char *errbuf, size_t errlen);

/* Leave-one-out full ranking on d with res: for each user with at least
 * `back + 1` events, the heads after every event but the last `back`
 * predict the event `back` from the end; the user's earlier items are
 * excluded. back = 1 is the test item, 2 the validation item. */
int  hl_train_eval_loo(const hl_train_result *res, const hl_train_data *d,
                       int back, int max_users, double *hr10, double *ndcg10,
                       char *errbuf, size_t errlen);

#endif
