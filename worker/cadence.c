/* cadence.c - the batch-closing rule of cadence.h and its two online
 * estimates (refresh cost a + b n, arrival rate). Pure arithmetic: the
 * caller measures and passes times in. */
#include "cadence.h"

void hl_cadence_fit_add(hl_cadence_fit *f, double n, double cost_ms, double decay)
{
    if (!(n >= 0) || !(cost_ms >= 0))
        return;                 /* NaN or negative: a clock went wrong, skip */
    f->w = f->w * decay + 1;
    f->sn = f->sn * decay + n;
    f->sc = f->sc * decay + cost_ms;
    f->snn = f->snn * decay + n * n;
    f->snc = f->snc * decay + n * cost_ms;
}

void hl_cadence_fit_get(const hl_cadence_fit *f, double *a_ms, double *b_ms)
{
    *a_ms = *b_ms = 0;
    if (f->w <= 0 || f->sn <= 0)
        return;
    /* The normal equations of cost = a + b n; their determinant is the
     * weighted variance of n, zero while every refresh had the same n. */
    double det = f->w * f->snn - f->sn * f->sn;
    if (det <= 1e-9 * f->w * f->snn) {
        *b_ms = f->sc / f->sn;
        return;
    }
    double b = (f->w * f->snc - f->sn * f->sc) / det;
    double a = (f->sc - b * f->sn) / f->w;
    if (b < 0) {                /* noise: cost cannot fall with n */
        b = 0;
        a = f->sc / f->w;
    }
    if (a < 0) {                /* nor be negative for one user */
        a = 0;
        b = f->snc / f->snn;
    }
    *a_ms = a;
    *b_ms = b;
}

double hl_cadence_cycle_ms(double a_ms, double b_ms, double rate_per_ms, double max_ms)
{
    double load = b_ms * rate_per_ms;
    if (load >= 1)
        return max_ms;
    double cycle = a_ms / (1 - load);
    return cycle < max_ms ? cycle : max_ms;
}

double hl_cadence_wait_ms(const hl_cadence_in *in)
{
    double left = in->max_ms - in->age_ms;
    if (in->n_taken <= 0)
        return in->max_ms > 0 ? in->max_ms : 0;     /* nothing to refresh yet */
    if (in->n_taken >= in->max_messages || left <= 0)
        return 0;
    double cycle = hl_cadence_cycle_ms(in->a_ms, in->b_ms, in->rate_per_ms, in->max_ms);
    if (in->age_ms >= cycle)
        return 0;
    /* Waiting pays only if a record is likely to come meanwhile: at one
     * expected record per cycle or less, the wait would be pure delay. */
    if (in->rate_per_ms * (cycle - in->age_ms) < 1)
        return 0;
    double wait = cycle - in->age_ms;
    return wait < left ? wait : left;
}

void hl_cadence_rate_add(hl_cadence_rate *r, double records, double ms, double decay)
{
    if (!(records >= 0) || !(ms >= 0))
        return;
    r->records = r->records * decay + records;
    r->ms = r->ms * decay + ms;
}

double hl_cadence_rate_get(const hl_cadence_rate *r)
{
    return r->ms > 0 ? r->records / r->ms : 0;
}
