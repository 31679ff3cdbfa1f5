/* decay.h - exact exponentially decayed sums, one per timescale ("head").
 *
 * DESIGN.md section 4. For each head h with half-life T_h,
 * lambda_h = ln 2 / T_h, a user's state at its reference time t_ref is
 *
 *     s_h = sum_i w_i exp(-lambda_h (t_ref - t_i)) x_i     (dim floats)
 *     m_h = sum_i w_i exp(-lambda_h (t_ref - t_i))         (decayed mass)
 *
 * An event at t >= t_ref decays s and m to t, adds w x and moves t_ref to t;
 * a late event (t < t_ref) adds w exp(-lambda_h (t_ref - t)) x and leaves
 * t_ref. Both are exact, so every arrival order gives the same state up to
 * float rounding. Time is an argument; nothing here reads a clock.
 *
 * Stored heads are kept at a base time, not at t_ref itself: head h's
 * floats are s_h and m_h at B_h = t_ref rounded down to a multiple of
 * grid_ms[h] (hl_decay_base_ms), the largest power of two with
 * lambda_h grid_ms[h] <= 2^-12. Why: a head decayed straight to each
 * event multiplies by a factor rounded to float, and for lambda dt below
 * 2^-25 that factor is exactly 1: a 30-day head fed an event every 100 ms
 * never decayed at all, and every 5 s left its mass 1% high after 10^6
 * events. With a base, a head moves only when t_ref enters a later cell,
 * by exp(-lambda (B' - B)), at least 2^-13 below 1 unless the grid is
 * 1 ms (float holds that step to 2^-12 of itself), and an
 * event in the cell is added with weight w exp(lambda (t - B)), at most
 * w (1 + 2^-12). A head of half-life under ~3 s has grid 1: its base is
 * t_ref, as before. s_h / m_h, the mean the encoder reads, is the same at
 * either time; m_h at t_ref is m_h exp(-lambda_h (t_ref - B_h)), within
 * 2^-12 of the stored one. The encoder's mass feature reads the stored
 * m_h, in training as in serving. Snapshots before format 3 and changelog
 * rows before format 3 held heads at t_ref; hl_decay_rebase converts. */
#ifndef HL_DECAY_H
#define HL_DECAY_H

#include "hl.h"

typedef struct hl_decay {
    int    n_heads;                        /* 1..HL_MAX_HEADS */
    int    dim;                            /* floats per head vector */
    double half_life_ms[HL_MAX_HEADS];
    double lambda_per_ms[HL_MAX_HEADS];    /* ln 2 / half_life_ms */
    int64_t grid_ms[HL_MAX_HEADS];         /* hl_decay_grid_ms(lambda_per_ms) */
} hl_decay;

/* The largest power of two G (1 .. 2^52) with lambda_per_ms G <= 2^-12:
 * a head's base grid (above). Whoever sets lambda_per_ms sets this too. */
int64_t hl_decay_grid_ms(double lambda_per_ms);

/* B_h: where head h of a row with reference time t_ref_ms is stored.
 * The grid is a power of two, so the mask rounds down for negative times
 * too, and INT64_MIN (a fresh row) stays INT64_MIN. */
static inline int64_t hl_decay_base_ms(const hl_decay *d, int h, int64_t t_ref_ms)
{
    return t_ref_ms & -d->grid_ms[h];
}

/* w exp(lambda (t_ms - B)), the weight an event of weight w at t_ms
 * carries in sums held at the base B = t_ms rounded down to grid_ms (a
 * head, core/foldin.c's sums): at most w (1 + 2^-12), so its Taylor series
 * to degree 2 is within 2^-38 of it. A grid of 1 gives w even for a lambda
 * of inf (a denormal half-life), whose product with 0 would be NaN. Inline:
 * hl_decay_add takes it per head per event. */
static inline float hl_decay_cell_weight(double lambda_per_ms, int64_t grid_ms, int64_t t_ms,
                                         float w)
{
    double x = grid_ms > 1 ? lambda_per_ms * (double)(t_ms - (t_ms & -grid_ms)) : 0.0;
    return (float)((double)w * (1.0 + x * (1.0 + 0.5 * x)));
}

/* A decay factor below this is exactly 0: what it drops is below 1e-30 of
 * the newest event's own weight (decay.c). */
#define HL_DECAY_TINY 1e-30

/* The SSE flush-to-zero and denormals-are-zero modes on, returning the
 * caller's mode for hl_decay_flush_off to put back: results that would be
 * subnormal become 0, so a decayed sum never holds a subnormal float and
 * every later update of it keeps the fast path (decay.c). No-ops off x86.
 * Fold-in's sums (core/foldin.c) decay under the same rule. */
unsigned hl_decay_flush_on(void);
void     hl_decay_flush_off(unsigned csr);

/* Default heads: 1 hour, 1 day, 30 days. */
#define HL_DEFAULT_HEADS 3
extern const double hl_default_half_life_ms[HL_DEFAULT_HEADS];

/* Fills d. Fails with HL_EINVAL (and a reason) on a head count outside
 * 1..HL_MAX_HEADS, dim < 1, or a half-life that is not finite and > 0. */
int hl_decay_init(hl_decay *d, int n_heads, int dim, const double *half_life_ms,
                  char *errbuf, size_t errlen);

/* The state shape, what a table, a snapshot and a model's decay must share
 * for rows to pass between them unchanged (else only a migration moves
 * them): dim, head count and each head's half-life. hl_decay_shape_diff
 * says where shape b first differs from a: HL_SHAPE_SAME, HL_SHAPE_SIZE
 * (dim or head count), else the index of the first head whose half-life
 * differs. One comparison for core/migrate.c, core/snapshot_load.c and
 * worker/models.c. */
#define HL_SHAPE_SAME (-1)
#define HL_SHAPE_SIZE (-2)
int hl_decay_shape_diff(int dim_a, int n_heads_a, const double *half_life_ms_a,
                        int dim_b, int n_heads_b, const double *half_life_ms_b);

/* Applies one event of weight w at time t_ms to the state s (n_heads, dim),
 * m (n_heads), *t_ref_ms, each head held at its base (above). x is the
 * item's input vector (dim floats); NULL means an item outside the model:
 * the state is decayed to t_ms's bases when t_ms > *t_ref_ms but nothing is
 * added. A fresh state is all zeros with *t_ref_ms = INT64_MIN. */
void hl_decay_add(const hl_decay *d, float *s, float *m, int64_t *t_ref_ms,
                  int64_t t_ms, float w, const float *x);

/* Plain-loop twin of hl_decay_add, for tests (STYLE.md section 8). */
void hl_decay_add_naive(const hl_decay *d, float *s, float *m,
                        int64_t *t_ref_ms, int64_t t_ms, float w,
                        const float *x);

/* f[h] = exp(-lambda_h dt_ms) for dt_ms >= 0 (1 for dt_ms <= 0). */
void hl_decay_factors(const hl_decay *d, int64_t dt_ms, float *f);

/* f[h] = exp(-lambda_h (B_h - t)) with t = min(t_ms, t_ref_ms): the weight
 * an event of weight 1 at t_ms carries in the stored heads of a row with
 * reference time t_ref_ms (what a reader of the ring subtracts or adds);
 * up to 1 + 2^-12 for an event after the base. An event dated after
 * t_ref counts as one at t_ref (hl_decay_age_ms). Hostile times are safe:
 * the gap is taken in double. */
void hl_decay_weights(const hl_decay *d, int64_t t_ref_ms, int64_t t_ms, float *f);

/* f[h] = exp(-lambda_h (t_ms - B_h)) for t_ms > B_h, else 1: what takes the
 * stored heads of a row with reference time t_ref_ms to time t_ms (the
 * mass eviction's look at a row decayed to the shard's newest event). */
void hl_decay_to(const hl_decay *d, int64_t t_ref_ms, int64_t t_ms, float *f);

/* Heads s (n_heads, dim) and m held at t_ref_ms itself (snapshot files
 * and changelog rows before format 3) moved to their bases, in place:
 * each scaled by exp(lambda_h (t_ref_ms - B_h)) <= 1 + 2^-12. */
void hl_decay_rebase(const hl_decay *d, int64_t t_ref_ms, float *s, float *m);

/* The age t_ref_ms - t_ms of an event, for hl_decay_factors. Times read
 * back from a snapshot or the changelog are not bounded the way
 * event.min/max.ts.ms bound input events, and a plain subtraction of
 * hostile ones (INT64_MIN, INT64_MAX) overflows int64: undefined, and in
 * practice a wrapped negative age that counted the entry whole. An event
 * dated at or after t_ref is 0 (counted whole, as an event at t_ref is);
 * a gap past int64's range saturates at INT64_MAX, whose factor is 0 for
 * any half-life under ~10^9 years, as the true gap's is. */
static inline int64_t hl_decay_age_ms(int64_t t_ref_ms, int64_t t_ms)
{
    int64_t dt;
    if (t_ms >= t_ref_ms)
        return 0;
    return __builtin_sub_overflow(t_ref_ms, t_ms, &dt) ? INT64_MAX : dt;
}

#endif
