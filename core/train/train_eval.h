/* train_eval.h - leave-one-out HR@10 / NDCG@10 of a network during
 * training. Private to core/train/ (train_eval.c implements it; the public
 * hl_train_eval_loo is in train.h). */
#ifndef HL_TRAIN_EVAL_H
#define HL_TRAIN_EVAL_H

#include "train_net.h"

/* HR@10 and NDCG@10 of n on the item `back` from the end of each user's
 * sequence; at most max_users users (evenly strided, 0 = all). 0 or
 * HL_ENOMEM. */
int hl_train_eval_net(const net *n, const hl_decay *dec, const seqs *sq, int back,
                      int max_users, double *hr, double *ndcg);

#endif
