/* http_guard.c - which HTTP connections keep a slot when clients compete.
 *
 * libmicrohttpd 0.9.75 times a connection out only after CONNECTION_TIMEOUT
 * seconds without a byte (every recv() resets the clock), and at its
 * connection limit it stops accepting. So 64 clients trickling their
 * headers a byte a second held all 64 slots for ever, and a liveness probe
 * waited in the listen queue until it failed: the pod restarted. This file
 * decides instead, each time a connection arrives:
 *  - a connection gets request_timeout_ms to send a whole request (from
 *    accept, or from the end of its previous answer), however it trickles;
 *  - one client address holds at most max_per_ip connections, all clients
 *    max_total; a newcomer beyond a bound displaces the oldest connection
 *    still waiting for its request, so the newest arrival (a probe sends
 *    its request at once) always gets in and the attacker's own older
 *    connections pay. With the per-address bound well below the total, an
 *    attacker on one address never displaces anyone else's connections.
 * Expiry is checked on arrival only: a stale connection costs nothing until
 * someone wants its slot.
 *
 * It holds no sockets and reads no clock: the caller passes now_ms and
 * shuts down the sockets it is told to. Not thread-safe: http.c calls it
 * from libmicrohttpd's one polling thread. The slots are scanned linearly;
 * capacity is a few hundred and arrivals are rare except in an attack,
 * where a scan costs far less than the accept() that triggered it. */
#include "http_guard.h"

#include <stdlib.h>
#include <string.h>

typedef struct slot {
    int           used, doomed, busy;
    int           fd;
    unsigned char ip[16];
    int64_t       since_ms;     /* accept, start of the request or end of the answer */
    uint64_t      seq;          /* order of since_ms, ties broken by arrival */
} slot;

struct hl_http_guard {
    hl_http_guard_opts o;
    int       cap;
    uint64_t  seq;
    slot     *s;                /* (cap) */
};

hl_http_guard *hl_http_guard_create(const hl_http_guard_opts *o)
{
    hl_http_guard *g = calloc(1, sizeof *g);
    if (g == NULL)
        return NULL;
    g->o = *o;
    g->cap = o->max_total + o->slack;
    if ((g->s = calloc((size_t)g->cap, sizeof *g->s)) == NULL) {
        free(g);
        return NULL;
    }
    return g;
}

void hl_http_guard_destroy(hl_http_guard *g)
{
    if (g == NULL)
        return;
    free(g->s);
    free(g);
}

int hl_http_guard_capacity(const hl_http_guard *g)
{
    return g->cap;
}

const char *hl_http_guard_reason_name(int reason)
{
    static const char *const names[HL_GUARD_N_REASONS] = {
        "request_timeout", "per_ip_limit", "total_limit", "no_room"};
    return reason >= 0 && reason < HL_GUARD_N_REASONS ? names[reason] : "unknown";
}

static void doom(hl_http_guard_victim *v, int *n_v, slot *sl, int reason)
{
    sl->doomed = 1;
    v[*n_v].fd = sl->fd;
    v[*n_v].reason = reason;
    (*n_v)++;
}

/* Waiting connections past request_timeout_ms. */
static void expire(hl_http_guard *g, int64_t now_ms, hl_http_guard_victim *v, int *n_v)
{
    for (int i = 0; i < g->cap; i++) {
        slot *sl = &g->s[i];
        if (sl->used && !sl->doomed && !sl->busy && now_ms - sl->since_ms >= g->o.request_timeout_ms)
            doom(v, n_v, sl, HL_GUARD_TIMEOUT);
    }
}

/* Live connections of ip (NULL: of everyone). */
static int count_live(const hl_http_guard *g, const unsigned char *ip)
{
    int n = 0;
    for (int i = 0; i < g->cap; i++) {
        const slot *sl = &g->s[i];
        n += sl->used && !sl->doomed && (ip == NULL || memcmp(sl->ip, ip, 16) == 0);
    }
    return n;
}

/* The oldest connection of ip (NULL: anyone's) waiting for a request, or
 * with busy set, the oldest busy for longer than busy_grace_ms (a client
 * that never reads its answer). NULL if none. */
static slot *oldest(hl_http_guard *g, const unsigned char *ip, int busy, int64_t now_ms)
{
    slot *best = NULL;
    for (int i = 0; i < g->cap; i++) {
        slot *sl = &g->s[i];
        if (!sl->used || sl->doomed || sl->busy != busy || (ip != NULL && memcmp(sl->ip, ip, 16) != 0))
            continue;
        if (busy && now_ms - sl->since_ms < g->o.busy_grace_ms)
            continue;
        if (best == NULL || sl->seq < best->seq)
            best = sl;
    }
    return best;
}

/* Makes room under one bound, taking a waiting connection before a busy
 * one: 0, or -1 if nothing may be displaced. */
static int make_room(hl_http_guard *g, const unsigned char *ip, int bound, int reason,
                     int64_t now_ms, hl_http_guard_victim *v, int *n_v)
{
    slot *sl;
    if (count_live(g, ip) < bound)
        return 0;
    if ((sl = oldest(g, ip, 0, now_ms)) == NULL && (sl = oldest(g, ip, 1, now_ms)) == NULL)
        return -1;
    doom(v, n_v, sl, reason);
    return 0;
}

int hl_http_guard_open(hl_http_guard *g, const unsigned char ip[16], int fd, int64_t now_ms,
                       hl_http_guard_victim *v, int *n_v)
{
    int id = -1;
    *n_v = 0;
    expire(g, now_ms, v, n_v);
    if (make_room(g, ip, g->o.max_per_ip, HL_GUARD_PER_IP, now_ms, v, n_v) != 0 ||
        make_room(g, NULL, g->o.max_total, HL_GUARD_TOTAL, now_ms, v, n_v) != 0)
        goto refuse;
    for (int i = 0; i < g->cap && id < 0; i++)
        if (!g->s[i].used)
            id = i;
    if (id < 0)
        goto refuse;            /* every spare slot holds a connection still closing */
    g->s[id] = (slot){.used = 1, .fd = fd, .since_ms = now_ms, .seq = ++g->seq};
    memcpy(g->s[id].ip, ip, 16);
    return id;
refuse:
    v[*n_v].fd = fd;
    v[*n_v].reason = HL_GUARD_REFUSED;
    (*n_v)++;
    return -1;
}

void hl_http_guard_busy(hl_http_guard *g, int id, int64_t now_ms)
{
    g->s[id].busy = 1;
    g->s[id].since_ms = now_ms;
    g->s[id].seq = ++g->seq;
}

void hl_http_guard_idle(hl_http_guard *g, int id, int64_t now_ms)
{
    g->s[id].busy = 0;
    g->s[id].since_ms = now_ms;
    g->s[id].seq = ++g->seq;
}

void hl_http_guard_close(hl_http_guard *g, int id)
{
    memset(&g->s[id], 0, sizeof g->s[id]);
}

int hl_http_guard_count(const hl_http_guard *g)
{
    int n = 0;
    for (int i = 0; i < g->cap; i++)
        n += g->s[i].used;
    return n;
}
