/* synth.c - the synthetic drifting-interest stream of synth.h.
 *
 * State is two liked topics per user and a clock. Each event picks a user
 * (skewed: a few users are much more active), maybe swaps one of its topics
 * (the drift), then picks an item from a liked topic with probability focus
 * (popular items within a topic more often) or from anywhere otherwise.
 * Everything comes from one xorshift generator seeded by the options, so
 * the stream is reproducible; no clock is read here. */
#include "synth.h"

#include <stdio.h>
#include <stdlib.h>

struct hl_synth {
    hl_synth_opts o;
    uint64_t      rng;
    int32_t      *topic;         /* (n_users, 2) liked topics */
    int32_t       per_topic;     /* items per topic */
    int64_t       now_ms;
    char          user[16], item[16];
};

void hl_synth_opts_default(hl_synth_opts *o)
{
    o->seed = 1;
    o->n_users = 2000;
    o->n_items = 1000;
    o->n_topics = 20;
    o->start_ms = 1767225600000LL;      /* 2026-01-01T00:00:00Z */
    o->step_ms = 1000;
    o->drift = 0.02;
    o->focus = 0.85;
}

static uint64_t next_u64(hl_synth *s)
{
    /* xorshift64*: fast, good enough for a workload generator. */
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return s->rng * 2685821657736338717ULL;
}

static double next_unit(hl_synth *s)          /* [0, 1) */
{
    return (double)(next_u64(s) >> 11) * (1.0 / 9007199254740992.0);
}

static int32_t next_below(hl_synth *s, int32_t n)
{
    return (int32_t)(next_unit(s) * n);
}

/* Skewed pick in [0, n): density falls like 1/sqrt, so low rows are hot. */
static int32_t next_skewed(hl_synth *s, int32_t n)
{
    double u = next_unit(s);
    return (int32_t)(u * u * n);
}

int hl_synth_user_id(int32_t row, char *buf)
{
    return snprintf(buf, 16, "u%06d", (int)row);
}

int hl_synth_item_id(int32_t row, char *buf)
{
    return snprintf(buf, 16, "i%06d", (int)row);
}

hl_synth *hl_synth_create(const hl_synth_opts *o, char *errbuf, size_t errlen)
{
    if (o->n_users < 1 || o->n_items < 1 || o->n_topics < 1 ||
        o->n_topics > o->n_items || o->step_ms < 1 ||
        o->n_users > 999999 || o->n_items > 999999) {
        hl_err(errbuf, errlen, HL_EINVAL,
               "synth: need 1 <= users, items <= 999999, 1 <= topics <= items, step >= 1");
        return NULL;
    }
    hl_synth *s = calloc(1, sizeof *s);
    if (s == NULL || (s->topic = malloc(sizeof(int32_t) * 2 * (size_t)o->n_users)) == NULL) {
        free(s);
        hl_err(errbuf, errlen, HL_ENOMEM, "synth: out of memory for %d users", o->n_users);
        return NULL;
    }
    s->o = *o;
    s->rng = o->seed * 0x9E3779B97F4A7C15ULL + 0x2545F4914F6CDD1DULL;
    if (s->rng == 0)
        s->rng = 1;
    s->per_topic = o->n_items / o->n_topics;
    s->now_ms = o->start_ms;
    for (int32_t u = 0; u < o->n_users; u++) {
        s->topic[2 * u] = next_below(s, o->n_topics);
        s->topic[2 * u + 1] = next_below(s, o->n_topics);
    }
    return s;
}

void hl_synth_destroy(hl_synth *s)
{
    if (s == NULL)
        return;
    free(s->topic);
    free(s);
}

void hl_synth_set_time(hl_synth *s, int64_t ts_ms)
{
    if (ts_ms > s->now_ms)
        s->now_ms = ts_ms;
}

/* VIEW 70%, CLICK 15%, FAVORITE 4%, ADD_TO_CART 5%, PURCHASE 4%, RATE 2%. */
static int next_type(hl_synth *s)
{
    static const double cum[HL_N_TYPES] = {0.70, 0.85, 0.89, 0.94, 0.98, 1.0};
    double u = next_unit(s);
    for (int t = 0; t < HL_N_TYPES - 1; t++)
        if (u < cum[t])
            return t;
    return HL_RATE;
}

static int32_t next_item(hl_synth *s, int32_t user)
{
    if (next_unit(s) >= s->o.focus)
        return next_below(s, s->o.n_items);
    int32_t t = s->topic[2 * user + (next_u64(s) & 1)];
    return t * s->per_topic + next_skewed(s, s->per_topic);
}

void hl_synth_next(hl_synth *s, hl_synth_event *ev)
{
    int32_t user = next_skewed(s, s->o.n_users);
    if (next_unit(s) < s->o.drift)
        s->topic[2 * user + (next_u64(s) & 1)] = next_below(s, s->o.n_topics);
    int32_t item = next_item(s, user);

    s->now_ms += 1 + (int64_t)(next_unit(s) * (double)(2 * s->o.step_ms - 1));
    ev->user_row = user;
    ev->user = s->user;
    ev->user_len = (uint32_t)hl_synth_user_id(user, s->user);
    ev->item_row = item;
    ev->item = s->item;
    ev->item_len = (uint32_t)hl_synth_item_id(item, s->item);
    ev->type = next_type(s);
    ev->ts_ms = s->now_ms;
    ev->has_weight = ev->type == HL_RATE;
    ev->weight = ev->has_weight ? (float)(1 + next_below(s, 5)) : 1.0f;
}
