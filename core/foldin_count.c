/* foldin_count.c - the stream's decayed counts of the model's items and the
 * bias line fitted over them (definitions in foldin_count.h). */
#include "foldin_count.h"
#include "hl.h"

#include <math.h>
#include <stdlib.h>

int hl_item_counts_init(hl_item_counts *ic, int32_t n, int32_t stride, double half_life_ms)
{
    *ic = (hl_item_counts){0};
    if (n < 1 || stride < 1 || !(half_life_ms > 0))
        return HL_EINVAL;
    ic->n = n;
    ic->stride = stride;
    ic->lambda_per_ms = log(2.0) / half_life_ms;
    ic->c = calloc((size_t)n, sizeof *ic->c);
    ic->t = calloc((size_t)n, sizeof *ic->t);
    if (ic->c == NULL || ic->t == NULL) {
        hl_item_counts_free(ic);
        return HL_ENOMEM;
    }
    return 0;
}

void hl_item_counts_free(hl_item_counts *ic)
{
    free(ic->c);
    free(ic->t);
    *ic = (hl_item_counts){0};
}

void hl_item_counts_add(hl_item_counts *ic, int32_t j, float w, int64_t ts_ms)
{
    if (j < 0 || j >= ic->n || j % ic->stride != 0)
        return;
    if (ic->c[j] == 0.0) {
        ic->c[j] = w;
        ic->t[j] = ts_ms;
    } else if (ts_ms >= ic->t[j]) {
        ic->c[j] = ic->c[j] * exp(-ic->lambda_per_ms * (double)(ts_ms - ic->t[j])) + w;
        ic->t[j] = ts_ms;
    } else {
        ic->c[j] += w * exp(-ic->lambda_per_ms * (double)(ic->t[j] - ts_ms));
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

hl_count_fit hl_item_counts_fit(const hl_item_counts *ic, const float *bias, int64_t now_ms)
{
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    double *cs = malloc(((size_t)ic->n / ic->stride + 1) * sizeof *cs);
    int32_t m = 0;
    for (int32_t j = 0; j < ic->n; j += ic->stride) {
        if (!(ic->c[j] > 0.0))
            continue;
        double age = now_ms > ic->t[j] ? (double)(now_ms - ic->t[j]) : 0.0;
        double c = ic->c[j] * exp(-ic->lambda_per_ms * age);
        double x = log1p(c), y = bias[j];
        sx += x; sy += y; sxx += x * x; sxy += x * y;
        if (cs)
            cs[m] = c;
        m++;
    }
    hl_count_fit fit = {.used = m};
    if (cs && m > 0) {
        qsort(cs, (size_t)m, sizeof *cs, cmp_double);
        fit.median = m % 2 ? cs[m / 2] : 0.5 * (cs[m / 2 - 1] + cs[m / 2]);
    }
    free(cs);
    double var = m > 1 ? sxx - sx * sx / m : 0.0;
    if (!(var > 0.0)) {
        fit.used = m < 2 ? m : 1;       /* every count alike: no line */
        return fit;
    }
    fit.s = (sxy - sx * sy / m) / var;
    fit.a = (sy - fit.s * sx) / m;
    return fit;
}

float hl_count_bias(const hl_count_fit *fit, double M, double b_mean, double margin)
{
    if (fit->used < 2)
        return (float)b_mean;
    double b = fit->a + fit->s * log1p(M > 0 ? M : 0);
    if (margin >= 0 && b > b_mean + margin)
        b = b_mean + margin;
    return (float)b;
}
