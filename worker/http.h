/* http.h - the HTTP endpoint of the worker (DESIGN.md section 7). */
#ifndef HL_HTTP_H
#define HL_HTTP_H

#include "metrics.h"

#include <stddef.h>

/* The HTTP endpoint (libmicrohttpd, its own thread): /metrics, /healthz
 * (200 while live(arg) returns 1, else 503 with the reason it wrote; live
 * NULL: 200 while the process runs), /readyz (200 when ready(arg) returns
 * 1, else 503 with the reason ready() wrote). port 0 picks a free port; see
 * hl_http_port(). NULL and a reason on failure (port in use, ...).
 * It registers the gauge halflife_ready in reg and sets it from ready()
 * before each /metrics render. ready() runs on the HTTP thread, never under
 * the registry lock. bind_addr is an IPv4 or IPv6 address (NULL or "":
 * 0.0.0.0; "::" takes IPv4 clients too). Whoever reaches the port cannot
 * starve the probes: connections are bounded per client address and in
 * total, and one that has not sent a whole request in 3 s makes room for a
 * newcomer (http_guard.c). */
typedef struct hl_http hl_http;
typedef int (*hl_ready_fn)(void *arg, char *why, size_t whylen);
hl_http *hl_http_start(const char *bind_addr, int port, hl_metrics *reg,
                       hl_ready_fn ready, hl_ready_fn live, void *arg,
                       char *errbuf, size_t errlen);
int      hl_http_port(const hl_http *http);
void     hl_http_stop(hl_http *http);                    /* NULL is a no-op */

#endif
