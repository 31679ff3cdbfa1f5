/* http_guard.h - which HTTP connections keep a slot when clients compete
 * for them (the policy http.c applies on top of libmicrohttpd). */
#ifndef HL_HTTP_GUARD_H
#define HL_HTTP_GUARD_H

#include <stdint.h>

typedef struct hl_http_guard hl_http_guard;   /* opaque */

typedef struct hl_http_guard_opts {
    int     max_total;          /* live connections, all clients together */
    int     max_per_ip;         /* live connections of one client address */
    int     slack;              /* slots for connections told to close that
                                   have not closed yet; capacity is
                                   max_total + slack */
    int64_t request_timeout_ms; /* to send a whole request, from accept or
                                   from the end of the previous answer */
    int64_t busy_grace_ms;      /* a connection being answered is displaced
                                   only when busy longer than this */
} hl_http_guard_opts;

/* NULL when out of memory. */
hl_http_guard *hl_http_guard_create(const hl_http_guard_opts *o);
void           hl_http_guard_destroy(hl_http_guard *g);     /* NULL is a no-op */
int            hl_http_guard_capacity(const hl_http_guard *g);

/* Why a connection was told to close (index of hl_http_guard_reason_name). */
enum { HL_GUARD_TIMEOUT, HL_GUARD_PER_IP, HL_GUARD_TOTAL, HL_GUARD_REFUSED, HL_GUARD_N_REASONS };
const char *hl_http_guard_reason_name(int reason);

/* A connection to close: the caller shuts its socket down (the server then
 * closes it and calls hl_http_guard_close), and counts the reason. */
typedef struct hl_http_guard_victim {
    int fd;
    int reason;
} hl_http_guard_victim;

/* A new connection from ip (16 bytes: IPv6, or IPv4-mapped) on socket fd at
 * now_ms. First every connection past its request timeout is told to
 * close; then if ip or everyone is at the bound, the oldest connection
 * still waiting for its request (of ip, or of anyone; if none waits, the
 * oldest busy beyond busy_grace_ms) makes room for the newcomer. The newcomer is the one most likely to be a real client (a
 * probe sends its request at once); an attacker's idle or trickling
 * connections are always older than it. Returns the newcomer's slot (>= 0),
 * or -1 if no connection could make room (the newcomer is then in *v too).
 * v must hold capacity + 1 entries; *n_v gets how many were written. */
int  hl_http_guard_open(hl_http_guard *g, const unsigned char ip[16], int fd, int64_t now_ms,
                        hl_http_guard_victim *v, int *n_v);
/* Slot id has a whole request and is being answered / has been answered
 * and waits for the next request (keep-alive). */
void hl_http_guard_busy(hl_http_guard *g, int id, int64_t now_ms);
void hl_http_guard_idle(hl_http_guard *g, int id, int64_t now_ms);
/* The server closed slot id's socket (or is about to): the slot is free. */
void hl_http_guard_close(hl_http_guard *g, int id);
/* Connections in slots, those told to close included. */
int  hl_http_guard_count(const hl_http_guard *g);

#endif
