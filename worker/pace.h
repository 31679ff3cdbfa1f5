/* pace.h - holds a sender to a number of events per second.
 *
 * The schedule is absolute: the n-th event is due at start + n / rate, so a
 * sender that fell behind (a full queue, a slow read) catches up with a
 * burst instead of losing the time for good, and the average over a run is
 * the rate asked for. Used by `halflife produce --rate` and the demo's
 * producer thread. */
#ifndef HL_PACE_H
#define HL_PACE_H

#include <stdint.h>

typedef struct hl_pace {
    double   rate;        /* events per second; 0 or less: never waits */
    int64_t  start_us;    /* monotonic clock at hl_pace_init */
    uint64_t n_sent;      /* events counted by hl_pace_sent */
} hl_pace;

/* Starts the schedule now. */
void    hl_pace_init(hl_pace *pc, double rate);

/* When the next event is due (monotonic µs): start + n_sent / rate. */
int64_t hl_pace_next_us(const hl_pace *pc);

/* Counts one event sent, then sleeps until the next one is due. Does not
 * sleep when the rate is 0 or the sender is behind. */
void    hl_pace_sent(hl_pace *pc);

#endif
