/* reshape.c - rows of one model's state shape into another's (dim,
 * number of heads, half-lives): hl_migration_row_into and
 * hl_migration_table_into (the contract is migrate.h; what is exact and
 * what is approximated, schemas/model.md "Another dim, number of heads or
 * half-lives"). Per new head: the ring's part recomputed under the new
 * model (exact), what is older than the ring from the old head of the
 * same half-life or interpolated between two, mapped by the (dim_from x
 * dim) M, with the local correction. Same-shape rows go in place
 * (migrate.c). */
#include "migrate_internal.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

/* lambda_h (t_ref - B_h): the log of how far head h's stored floats, at
 * its base B_h (decay.h), stand above their values at t_ref. 0 on a grid
 * of 1 (B_h = t_ref), also for a lambda of inf. */
static double base_lag(const hl_decay *d, int h, int64_t t_ref)
{
    int64_t base = hl_decay_base_ms(d, h, t_ref);
    return base == t_ref ? 0.0 : d->lambda_per_ms[h] * ((double)t_ref - (double)base);
}

/* The remainder under lambda from one old head h alone: its mean vector
 * kept, its mass moved as if it all sat at age a0 (the ring's oldest
 * event's, a lower bound on every remainder event's age when events come
 * in time order): exact for a
 * remainder just older than the ring, and on the safe side otherwise
 * (an upper bound of the mass for a shorter half-life, a lower one for
 * a longer). out += scale x rem_h. shift: the new head's base_lag less
 * the old head's, which moves the remainder from the old base to the
 * new (ages are from t_ref). */
static float from_one(const hl_migration *mg, const float *rem, const float *rmass, int h,
                      double lambda, double a0, double shift, float *out)
{
    int da = mg->dim_from;
    /* at age 0 every head counts an event whole (hl_decay_factors): a
     * lambda of inf (a denormal half-life passes the format's "> 0") then
     * gave inf * 0 = NaN, which the clamp below read as e^80 */
    double e = (a0 > 0 ? -(lambda - mg->decay_from.lambda_per_ms[h]) * a0 : 0.0) + shift;
    float sc = (float)exp(e < 80 ? e : 80);
    for (int j = 0; j < da; j++) out[j] = sc * rem[(size_t)h * da + j];
    return sc * rmass[h];
}

/* The remainder (old space, da floats into out; its mass returned) of a
 * new head of rate lambda that no old head shares: between two old heads
 * (rates lo < lambda < hi), log-mass and mean vector interpolated linearly
 * in lambda (a remainder of one age a has log-mass log w - lambda a:
 * linear, so exact then); outside the old heads' range, the nearest one's
 * (from_one). m: the old masses (for hl_mig_usable()). The log-masses
 * are taken at t_ref (lag: each old head's base_lag) and the result is
 * at the new head's base (lag_new), so a remainder of one age moves
 * exactly whatever the heads' grids. */
static float between(const hl_migration *mg, const float *rem, const float *rmass,
                     const float *m, double lambda, double a0, const double *lag,
                     double lag_new, float *out)
{
    const hl_decay *d = &mg->decay_from;
    int lo = -1, hi = -1, da = mg->dim_from;
    for (int h = 0; h < d->n_heads; h++) {
        double l = d->lambda_per_ms[h];
        if (l < lambda && (lo < 0 || l > d->lambda_per_ms[lo])) lo = h;
        if (l > lambda && (hi < 0 || l < d->lambda_per_ms[hi])) hi = h;
    }
    int ok_lo = lo >= 0 && hl_mig_usable(rmass[lo], m[lo]), ok_hi = hi >= 0 && hl_mig_usable(rmass[hi], m[hi]);
    if (ok_lo && ok_hi) {
        double t = (lambda - d->lambda_per_ms[lo]) /
                   (d->lambda_per_ms[hi] - d->lambda_per_ms[lo]);
        double rm = exp((1 - t) * (log(rmass[lo]) - lag[lo]) +
                        t * (log(rmass[hi]) - lag[hi]) + lag_new);
        double a = rm * (1 - t) / rmass[lo], b = rm * t / rmass[hi];
        for (int j = 0; j < da; j++)
            out[j] = (float)(a * rem[(size_t)lo * da + j] + b * rem[(size_t)hi * da + j]);
        return (float)rm;
    }
    /* one side only (outside the range, or the other's remainder is at
     * rounding level): the usable one, else nothing */
    int h = ok_lo ? lo : ok_hi ? hi : -1;
    if (h < 0) {
        memset(out, 0, sizeof *out * (size_t)da);
        return 0;
    }
    return from_one(mg, rem, rmass, h, lambda, a0, lag_new - lag[h], out);
}

/* The old head with half-life hl, -1 when none. */
static int same_half_life(const hl_decay *d, double hl)
{
    for (int h = 0; h < d->n_heads; h++)
        if (d->half_life_ms[h] == hl)
            return h;
    return -1;
}

/* Ring entries whose pair rows are being fetched ahead of their use. */
#define RING_AHEAD 8

/* The pair row of the ring's i-th entry (in time order) into cache. */
HL_PREFETCH_FN void prefetch_pair(const hl_migration *mg, const hl_row_view *v, int i, size_t w_pair)
{
    int32_t item = v->hist_item[hl_row_hist_index(v, i)];
    if (item < 0 || item >= mg->n_from)
        return;
    const char *p = (const char *)(mg->pair + (size_t)item * w_pair);
    for (size_t b = 0; b < w_pair * sizeof(float); b += 64)
        __builtin_prefetch(p + b);
}

/* A reshape's ring under the new heads: acc (nb, db) the events on items
 * only to knows; kn (nb, db) and ko (nb, da) those on items from knew,
 * with to's e_in (0 for an item to drops) and with from's (the local
 * correction's delta is kn - ko M); ring_m their masses as the old model
 * counted them, adj_m what the new one counts on top, kept_m those of
 * kn. */
typedef struct ring_split {
    float *acc, *kn, *ko;
    float  ring_m[HL_MAX_HEADS], adj_m[HL_MAX_HEADS], kept_m[HL_MAX_HEADS];
} ring_split;

/* The ring's part under the old model out of rem (what is older than the
 * ring, per old head: vectors and masses), and under the new one into
 * rs; out_item: the ring's items as to's rows. Returns the age of the
 * ring's oldest event by time (0 for an empty ring): with events in time
 * order, every event older than the ring is at least that old. */
static double split_ring(const hl_migration *mg, const hl_row_view *v, float *rem,
                         float *rmass, ring_split *rs, int32_t *out_item)
{
    int na = mg->decay_from.n_heads, nb = mg->n_heads, da = mg->dim_from;
    size_t w_pair = (size_t)da + (size_t)mg->dim;
    double a0 = 0;
    for (int i = 0; i < v->n_hist && i < RING_AHEAD; i++)
        prefetch_pair(mg, v, i, w_pair);
    for (int i = 0; i < v->n_hist; i++) {
        if (i + RING_AHEAD < v->n_hist)
            prefetch_pair(mg, v, i + RING_AHEAD, w_pair);
        int k = hl_row_hist_index(v, i);
        int32_t item = v->hist_item[k];
        int64_t dt = hl_decay_age_ms(v->t_ref_ms, v->hist_ts_ms[k]);
        if ((double)dt > a0) a0 = (double)dt;
        float w = hl_mig_entry_weight(mg, v, k), f[HL_MAX_HEADS], c[HL_MAX_HEADS];
        int from_knows = item >= 0 && item < mg->n_from;
        const float *pr = from_knows ? mg->pair + (size_t)item * w_pair : NULL;
        if (from_knows) {
            hl_decay_weights(&mg->decay_from, v->t_ref_ms, v->hist_ts_ms[k], f);
            for (int h = 0; h < na; h++) {
                c[h] = -w * f[h];
                rmass[h] += c[h];
            }
            hl_mig_axpy_heads(rem, c, na, pr, da);
        }
        int32_t to = from_knows ? mg->row_map[item]
                                : v->hist_key ? hl_mig_key_find(mg, v->hist_key[k]) : -1;
        hl_decay_weights(&mg->decay, v->t_ref_ms, v->hist_ts_ms[k], f);
        /* the masses follow what s' counts: + an item only to knows, - one
         * to drops (as in place, hl_migration_rows) */
        float sign = !from_knows && item != HL_ITEM_ADDED && to >= 0 ? 1.0f
                   : from_knows && to < 0 ? -1.0f : 0.0f;
        for (int h = 0; h < nb; h++) {
            c[h] = w * f[h];
            if (from_knows || item == HL_ITEM_ADDED)    /* in the old masses */
                rs->ring_m[h] += c[h];
            rs->adj_m[h] += sign * c[h];
            rs->kept_m[h] += from_knows ? c[h] : 0.0f;
        }
        if (from_knows) {       /* to's half of the pair is 0s when to drops it */
            hl_mig_axpy_heads(rs->kn, c, nb, pr + da, mg->dim);
            hl_mig_axpy_heads(rs->ko, c, nb, pr, da);
        } else if (to >= 0 && item != HL_ITEM_ADDED) {
            /* an added item's share stays in the remainder (as in place) */
            hl_mig_axpy_heads(rs->acc, c, nb, mg->e_to + (size_t)to * mg->dim, mg->dim);
        }
        out_item[k] = to >= 0 || item != HL_ITEM_ADDED ? to : HL_ITEM_ADDED;
    }
    return a0;
}

/* The local correction of new head h (rows_end's, in old space before
 * M): rv_h -= sc ko_h, acc_h += (1 + sc) kn_h, sc = kappa rem / kept. */
static void reshape_local(const hl_migration *mg, ring_split *rs, int h, float rem,
                          float *rv, float *acc)
{
    int da = mg->dim_from, db = mg->dim;
    float sc = 0.0f;
    if (mg->local > 0 && rs->kept_m[h] > 0 && hl_mig_usable(rem, rem + rs->ring_m[h]))
        sc = mg->local * rem / rs->kept_m[h];
    const float *ko = rs->ko + (size_t)h * da, *kn = rs->kn + (size_t)h * db;
    float *a = acc + (size_t)h * db;
    for (int j = 0; j < da; j++) rv[j] -= sc * ko[j];
    for (int j = 0; j < db; j++) a[j] += (1.0f + sc) * kn[j];
}

/* A row of from's shape into to's (dim, heads, half-lives): per new head,
 * the ring's part recomputed under to (exact), what is older than the
 * ring taken from the old head of the same half-life (exact up to M) or
 * interpolated between the old heads (between()), then through M, with
 * the local correction (reshape_local). */
static void reshape_row(const hl_migration *mg, const hl_row_view *v, float *s, float *m,
                        int32_t *out_item, float *scratch)
{
    int na = mg->decay_from.n_heads, nb = mg->n_heads, da = mg->dim_from, db = mg->dim;
    float *rem = scratch, *rv = rem + (size_t)na * da;
    ring_split rs = {.acc = rv + (size_t)nb * da};
    rs.kn = rs.acc + (size_t)nb * db;
    rs.ko = rs.kn + (size_t)nb * db;
    float rmass[HL_MAX_HEADS];
    memcpy(rem, v->s, sizeof *rem * (size_t)na * da);
    memcpy(rmass, v->m, sizeof *rmass * (size_t)na);
    memset(rs.acc, 0, sizeof *rs.acc * (size_t)nb * (2 * db + da));
    double a0 = split_ring(mg, v, rem, rmass, &rs, out_item), lag[HL_MAX_HEADS];
    for (int h = 0; h < na; h++)
        lag[h] = base_lag(&mg->decay_from, h, v->t_ref_ms);
    for (int h = 0; h < nb; h++) {
        int o = same_half_life(&mg->decay_from, mg->decay.half_life_ms[h]);
        float *out = rv + (size_t)h * da, rm;
        if (o >= 0) {           /* exact: that head's remainder, its mass */
            memcpy(out, rem + (size_t)o * da, sizeof *out * (size_t)da);
            m[h] = v->m[o];
            rm = rmass[o];
        } else {
            rm = between(mg, rem, rmass, v->m, mg->decay.lambda_per_ms[h], a0, lag,
                         base_lag(&mg->decay, h, v->t_ref_ms), out);
            m[h] = rm + rs.ring_m[h];
        }
        m[h] = m[h] + rs.adj_m[h] > 0.0f ? m[h] + rs.adj_m[h] : 0.0f;
        reshape_local(mg, &rs, h, rm, out, rs.acc);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, db, da, 1.0f,
                rv, da, mg->m, db, 1.0f, rs.acc, db);
    memcpy(s, rs.acc, sizeof *s * (size_t)nb * db);
}

size_t hl_migration_scratch_floats(const hl_migration *mg)
{
    size_t na = (size_t)(mg->reshape ? mg->decay_from.n_heads : mg->n_heads);
    size_t da = (size_t)(mg->reshape ? mg->dim_from : mg->dim);
    size_t nb = (size_t)mg->n_heads, db = (size_t)mg->dim;
    size_t a = 2 * nb * db, b = na * da + 2 * nb * da + 2 * nb * db;
    return a > b ? a : b;
}

void hl_migration_row_into(const hl_migration *mg, const hl_row_view *v, float *s, float *m,
                           int32_t *hist_item, float *scratch)
{
    memcpy(hist_item, v->hist_item, sizeof *hist_item * (size_t)v->history);
    if (mg->reshape) {
        reshape_row(mg, v, s, m, hist_item, scratch);
        return;
    }
    /* the same shape (or a rebuild, which reads only the ring): in place
     * on a copy, so the result is hl_migration_row's to the bit */
    size_t per = (size_t)mg->n_heads * mg->dim;
    if (!mg->rebuild) {
        memcpy(s, v->s, sizeof *s * per);
        memcpy(m, v->m, sizeof *m * (size_t)mg->n_heads);
    }
    hl_row_edit e = {.v = *v, .s = s, .m = m, .hist_item = hist_item};
    hl_migration_rows(mg, &e, 1, scratch);
}

int64_t hl_migration_table_into(const hl_migration *mg, const hl_table *src, hl_table *dst)
{
    const hl_table_opts *o = hl_table_opts_get(dst);
    if (o->decay.dim != mg->dim || o->decay.n_heads != mg->n_heads ||
        o->history != hl_table_opts_get(src)->history)
        return HL_EINVAL;
    for (int h = 0; h < mg->n_heads; h++)
        if (o->decay.half_life_ms[h] != mg->decay.half_life_ms[h])
            return HL_EINVAL;
    size_t per = (size_t)mg->n_heads * mg->dim;
    float *scratch = malloc(sizeof(float) * hl_migration_scratch_floats(mg));
    float *s = malloc(sizeof(float) * per), *m = malloc(sizeof(float) * (size_t)mg->n_heads);
    int32_t *item = malloc(sizeof *item * (size_t)o->history);
    int64_t done = scratch && s && m && item ? 0 : HL_ENOMEM;
    for (uint32_t row = hl_table_next_live(src, 0); done >= 0 && row != UINT32_MAX;
         row = hl_table_next_live(src, row + 1)) {
        hl_row_view v, nv;
        hl_table_view(src, row, &v);
        hl_migration_row_into(mg, &v, s, m, item, scratch);
        nv = v;
        nv.s = s;
        nv.m = m;
        nv.hist_item = item;
        int rc = hl_table_restore_at(dst, row, &nv);
        done = rc == 0 ? done + 1 : rc;
    }
    if (done >= 0) {
        hl_table_meta meta;
        hl_table_meta_get(src, &meta);
        hl_table_meta_set(dst, &meta);
    }
    free(scratch); free(s); free(m); free(item);
    return done;
}
