/* foldin_count.h - a folded item's bias from how popular it is now,
 * calibrated against the model's own items (issue 11: "a bias from the
 * item's decayed count"; README "Fold-in").
 *
 * The stream's decayed count of each known item j (the same weights and
 * half-life as fold-in's mass M) is kept beside the model:
 *
 *     c_j = sum_i w_i exp(-lambda (t_now - t_i))
 *
 * and, when a folded item is published, a least-squares line
 *
 *     b_j ~ a + s ln(1 + c_j)       over the known items with c_j > 0
 *
 * gives the newcomer a + s ln(1 + M), capped at the model's mean bias plus
 * a margin: an item as popular now as a model item gets that item's typical
 * bias, instead of the model's mean (which under-rates a hit) or its
 * neighbours' (which over-rated every newcomer). Pure arithmetic, one
 * thread. */
#ifndef HL_FOLDIN_COUNT_H
#define HL_FOLDIN_COUNT_H

#include <stdint.h>

typedef struct hl_item_counts {
    int32_t  n;              /* the model's items */
    int32_t  stride;         /* only items j % stride == 0 are counted (a sample) */
    double   lambda_per_ms;
    double  *c;              /* decayed to t[j] */
    int64_t *t;
} hl_item_counts;

typedef struct hl_count_fit {
    double  a, s;            /* b ~ a + s ln(1 + c) */
    int32_t used;            /* items in the fit; < 2: no line, the mean bias */
    double  median;          /* their median decayed count; 0 with none */
} hl_count_fit;

/* 0, or HL_EINVAL (n < 1, stride < 1, half_life <= 0) / HL_ENOMEM. */
int  hl_item_counts_init(hl_item_counts *ic, int32_t n, int32_t stride, double half_life_ms);
void hl_item_counts_free(hl_item_counts *ic);

/* Known item j (0 <= j < n) had an interaction of weight w at ts_ms. An
 * event older than j's newest is decayed to it, as core/decay does. */
void hl_item_counts_add(hl_item_counts *ic, int32_t j, float w, int64_t ts_ms);

/* The line over the counted items with a count above zero, their counts
 * decayed to now_ms, against the model's bias (n floats), and their median
 * count. O(n / stride log n); allocates n / stride doubles (without them
 * the median is 0). */
hl_count_fit hl_item_counts_fit(const hl_item_counts *ic, const float *bias, int64_t now_ms);

/* A folded item's bias from its decayed mass M: a + s ln(1 + M), at most
 * b_mean + margin (margin < 0: no cap); b_mean when the fit has no line. */
float hl_count_bias(const hl_count_fit *fit, double M, double b_mean, double margin);

#endif
