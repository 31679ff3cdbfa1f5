/* train_kernels.h - the trainer's numeric kernels, each with its plain
 * twin for the tests: softmax cross-entropy, column sums, AdamW. Private to
 * core/train/ (train_kernels.c implements it). */
#ifndef HL_TRAIN_KERNELS_H
#define HL_TRAIN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* Softmax cross-entropy of each row of L (B, C) (plus bias[j] if bias is
 * not NULL) against column tcol[r]; L becomes dLoss/dL (divided by B).
 * Returns the summed loss. */
double hl_train_softmax_xent(float *L, const float *bias, int B, int C,
                             const int32_t *tcol);
/* g[j] += sum_r G[r][j] for G (B, C): column sums in row order. */
void   hl_train_add_colsums(float *g, const float *G, int B, int C);
/* AdamW step number `step` (1-based) over the n parameters p with
 * gradient g and moments m, v; weight decay lr x l2. Clears g. */
void   hl_train_adam_step(float *p, float *g, float *m, float *v, size_t n,
                          int64_t step, float lr, float l2);
/* avg = e avg + (1 - e) p over n floats: the running average of --ema. */
void   hl_train_average(float *avg, const float *p, size_t n, float e);

#endif
