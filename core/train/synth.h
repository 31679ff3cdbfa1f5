/* synth.h - a built-in synthetic behaviour stream whose users' interests
 * drift over time, for `halflife demo`, tests and benchmarks.
 *
 * Items fall into topics (contiguous blocks of item rows). Each user likes
 * two topics at a time and now and then swaps one of them for another, so a
 * model that weights recent events more (the short half-life heads) predicts
 * better than one that remembers everything equally. The stream is a pure
 * function of the options (seeded), so two runs produce the same events. */
#ifndef HL_SYNTH_H
#define HL_SYNTH_H

#include "hl.h"

typedef struct hl_synth hl_synth;   /* opaque */

typedef struct hl_synth_opts {
    uint64_t seed;
    int32_t  n_users;       /* users "u000000".. */
    int32_t  n_items;       /* items "i000000".. */
    int32_t  n_topics;      /* 1..n_items; items per topic = n_items / n_topics */
    int64_t  start_ms;      /* time of the first event */
    int64_t  step_ms;       /* mean gap between two events of the stream */
    double   drift;         /* chance per event that the user swaps a topic */
    double   focus;         /* chance an event comes from a liked topic */
} hl_synth_opts;

/* Defaults: 2,000 users, 1,000 items in 20 topics, 1 s steps from
 * 2026-01-01, drift 0.02, focus 0.85, seed 1. */
void hl_synth_opts_default(hl_synth_opts *o);

/* One event. user and item are NUL-terminated and borrowed: valid until the
 * next hl_synth_next on the same generator. */
typedef struct hl_synth_event {
    const char *user;  uint32_t user_len;  int32_t user_row;
    const char *item;  uint32_t item_len;  int32_t item_row;
    int         type;                      /* HL_VIEW.. */
    int64_t     ts_ms;
    float       weight;                    /* 1 except for RATE */
    int         has_weight;
} hl_synth_event;

hl_synth *hl_synth_create(const hl_synth_opts *o, char *errbuf, size_t errlen);
void      hl_synth_destroy(hl_synth *s);             /* NULL is a no-op */

/* Fills ev with the next event; never fails. */
void hl_synth_next(hl_synth *s, hl_synth_event *ev);

/* Moves the stream's clock: the next event is stamped at least ts_ms. The
 * demo uses it to put the stream on the wall clock. */
void hl_synth_set_time(hl_synth *s, int64_t ts_ms);

/* Writes ids the way the stream does ("u000042", "i000007"); returns the
 * length. buf holds at least 16 bytes. */
int hl_synth_user_id(int32_t row, char *buf);
int hl_synth_item_id(int32_t row, char *buf);

#endif
