/* cadence.h - when a shard thread closes its batch and refreshes
 * (DESIGN.md section 14): from what is waiting and what a refresh costs.
 *
 * A refresh of n users costs about a + b n (a: the pass over e_out and
 * the fixed work, b: each user's share), fitted online from measured
 * refreshes. With records arriving at r per ms, a thread that refreshes
 * every T ms spends a + b r T of each T, so it keeps up when
 * T >= a / (1 - b r): the keep-up cycle. The rule waits for more records
 * only while the oldest record in hand is younger than that cycle, so at
 * low rates (r near 0, cycle near a) a list goes out as soon as it is
 * computed, and batches grow only as the rate demands; batch.max.ms stays
 * the upper bound. Everything here is arithmetic on its arguments: no
 * clock, no Kafka, so tests/test_cadence.c drives it with numbers. */
#ifndef HL_CADENCE_H
#define HL_CADENCE_H

#include <stdint.h>

/* The online fit of cost_ms = a + b n: least squares over the measured
 * refreshes, each older one weighing `decay` times the next (so the fit
 * follows a machine whose speed changes). Zero it to start. */
typedef struct hl_cadence_fit {
    double w, sn, sc, snn, snc;     /* weighted sums: 1, n, cost, n^2, n cost */
} hl_cadence_fit;

/* Adds one measured refresh of n users that took cost_ms. */
void hl_cadence_fit_add(hl_cadence_fit *f, double n, double cost_ms, double decay);

/* The fitted a and b (ms, ms per user), both >= 0. Before two distinct
 * batch sizes were seen, b is the mean cost per user and a is 0; with no
 * refresh at all, both are 0. */
void hl_cadence_fit_get(const hl_cadence_fit *f, double *a_ms, double *b_ms);

/* What the batch loop knows when its queue is empty. */
typedef struct hl_cadence_in {
    int    n_taken;         /* records in the batch so far */
    int    max_messages;    /* batch.max.messages */
    double age_ms;          /* since the oldest record in hand was fetched */
    double max_ms;          /* batch.max.ms: the bound on age_ms */
    double rate_per_ms;     /* records arriving per ms (recent) */
    double a_ms, b_ms;      /* the refresh cost fit */
} hl_cadence_in;

/* How long to wait for the next record before refreshing: 0 means
 * refresh now. Never more than max_ms - age_ms. */
double hl_cadence_wait_ms(const hl_cadence_in *in);

/* The keep-up cycle a / (1 - b r), in ms; max_ms when b r >= 1 (the thread
 * cannot keep up at this rate whatever it does: batches as large as
 * allowed). */
double hl_cadence_cycle_ms(double a_ms, double b_ms, double rate_per_ms, double max_ms);

/* The arrival rate: an average of records per ms over batch cycles, each
 * older cycle weighing `decay` times the next. */
typedef struct hl_cadence_rate {
    double records, ms;
} hl_cadence_rate;

void   hl_cadence_rate_add(hl_cadence_rate *r, double records, double ms, double decay);
double hl_cadence_rate_get(const hl_cadence_rate *r);

#endif
