/* pace.c - an absolute send schedule and the sleep that keeps to it; see
 * pace.h. Waits of under half a millisecond are skipped: nanosleep
 * overshoots by about that much, and the next event's wait absorbs them. */
#include "pace.h"
#include "log.h"

#include <time.h>

#define MIN_SLEEP_US 500

void hl_pace_init(hl_pace *pc, double rate)
{
    pc->rate = rate;
    pc->start_us = hl_now_mono_us();
    pc->n_sent = 0;
}

int64_t hl_pace_next_us(const hl_pace *pc)
{
    if (pc->rate <= 0)
        return pc->start_us;
    return pc->start_us + (int64_t)((double)pc->n_sent * 1e6 / pc->rate);
}

void hl_pace_sent(hl_pace *pc)
{
    pc->n_sent++;
    if (pc->rate <= 0)
        return;
    int64_t ahead_us = hl_pace_next_us(pc) - hl_now_mono_us();
    if (ahead_us < MIN_SLEEP_US)
        return;
    struct timespec ts = {(time_t)(ahead_us / 1000000), (long)(ahead_us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}
