/* bench_events.h - what bench_codec.c and bench_registry.c share: the
 * reader schema's JSON as the benchmarks write it, the 200,000 realistic
 * events (ids like "user-123456") encoded with the codec, the timer, and
 * the decode loop whose rate both report. Header-only (each benchmark is
 * one executable); functions are static inline so either may leave one
 * unused. */
#ifndef HL_BENCH_EVENTS_H
#define HL_BENCH_EVENTS_H

#include "codec.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N_EVENTS 200000

/* worker/codec.c's reader schema up to its last field; close it with "]}"
 * (or add fields of a later writer version first). */
#define BENCH_OURS_FIELDS \
    "{\"type\":\"record\",\"name\":\"BehaviourEvent\",\"namespace\":\"halflife\",\"fields\":[" \
    "{\"name\":\"user_id\",\"type\":\"string\"},{\"name\":\"item_id\",\"type\":\"string\"}," \
    "{\"name\":\"event_type\",\"type\":{\"type\":\"enum\",\"name\":\"EventType\",\"symbols\":" \
    "[\"VIEW\",\"CLICK\",\"FAVORITE\",\"ADD_TO_CART\",\"PURCHASE\",\"RATE\"],\"default\":\"VIEW\"}," \
    "\"default\":\"VIEW\"}," \
    "{\"name\":\"timestamp\",\"type\":{\"type\":\"long\",\"logicalType\":\"timestamp-millis\"}}," \
    "{\"name\":\"weight\",\"type\":[\"null\",\"float\"],\"default\":null}," \
    "{\"name\":\"context\",\"type\":[\"null\",{\"type\":\"map\",\"values\":\"string\"}],\"default\":null}"

typedef struct payloads {
    uint8_t *buf;
    size_t   off[N_EVENTS + 1];     /* event i is buf[off[i] .. off[i+1]) */
} payloads;

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static inline uint32_t rnd(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-quantile of v (sorted in place). */
static inline double quantile(double *v, int n, double q)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[(int)(q * (n - 1))];
}

/* Event i of the sequence (call in order from i = 0 after rng is reset);
 * its ids are written into user and item (32 bytes each). */
static inline hl_codec_event bench_event(int i, char *user, char *item)
{
    int type = (int)(rnd() % HL_N_TYPES), has_w = rnd() & 1;
    float w = (float)(rnd() % 50) / 10.0f;
    snprintf(user, 32, "user-%u", rnd() % 1000000);
    snprintf(item, 32, "item-%u", rnd() % 100000);
    return (hl_codec_event){ user, (uint32_t)strlen(user), item, (uint32_t)strlen(item),
                             type, 1700000000000LL + i * 37, has_w ? w : 1.0f, has_w };
}

/* N_EVENTS events in our layout, encoded by c (its framing and writer
 * id); tail bytes appended to each body (the fields a later writer
 * version adds). */
static inline void bench_make_payloads(hl_codec *c, payloads *pl, const uint8_t *tail,
                                       size_t tail_len)
{
    uint8_t *p = pl->buf = malloc((size_t)N_EVENTS * (64 + tail_len));
    if (p == NULL) {
        fprintf(stderr, "bench: out of memory\n");
        exit(1);
    }
    rng = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < N_EVENTS; i++) {
        char user[32], item[32];
        hl_codec_event ev = bench_event(i, user, item);
        pl->off[i] = (size_t)(p - pl->buf);
        p += hl_codec_encode_event(c, &ev, p, 64);
        if (tail_len > 0)           /* memcpy from NULL is undefined even for 0 bytes */
            memcpy(p, tail, tail_len);
        p += tail_len;
    }
    pl->off[N_EVENTS] = (size_t)(p - pl->buf);
}

/* Events/s decoded by c; sum keeps the work observable. Every event must
 * decode: a benchmark of failures would measure the wrong path. */
static inline double bench_time_decode(hl_codec *c, const payloads *pl, uint64_t *sum)
{
    double t0 = now_s();
    for (int i = 0; i < N_EVENTS; i++) {
        hl_codec_event ev;
        char detail[160];
        if (hl_codec_decode_event(c, pl->buf + pl->off[i], pl->off[i + 1] - pl->off[i], &ev,
                                  detail, sizeof detail) != HL_CODEC_OK) {
            fprintf(stderr, "bench: event %d does not decode: %s\n", i, detail);
            exit(1);
        }
        *sum += (uint64_t)ev.ts_ms + ev.user_len;
    }
    return N_EVENTS / (now_s() - t0);
}

#endif
