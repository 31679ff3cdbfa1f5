/* http.c - the worker's HTTP endpoint: /metrics, /healthz and /readyz,
 * served by libmicrohttpd on its own internal polling thread.
 *
 * Scrapes and probes are rare and small, so one thread handles every
 * connection in turn; nothing here touches the hot path beyond rendering the
 * registry (metrics.c), which takes the registry lock only while it copies
 * values. /healthz answers 200 as long as this thread runs: it says "the
 * process is alive", which is what a liveness probe should restart on.
 * /readyz asks the worker through ready(), so Kubernetes sends no traffic
 * (and KEDA counts no replica as serving) until every assigned shard has
 * been restored from its snapshot. The same answer is exported as the gauge
 * halflife_ready, refreshed on every scrape, for alerts.
 *
 * libmicrohttpd's own error messages are routed to hl_log(), and while the
 * daemon starts they are captured as the reason hl_http_start() returns
 * (a port in use is an operator's mistake worth a precise message). */
#include "http.h"

#include "hl.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

struct hl_http {
    struct MHD_Daemon *d;
    hl_metrics *reg;
    hl_ready_fn ready;
    void       *ready_arg;
    hl_gauge   *ready_gauge;       /* halflife_ready: /readyz as a number */
    int         port;
    _Atomic int starting;          /* 1 while MHD_start_daemon runs */
    char        start_err[256];    /* MHD's last message while starting */
};

#define CT_TEXT     "text/plain; charset=utf-8"
#define CT_METRICS  "text/plain; version=0.0.4; charset=utf-8"

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    hl_http *http = cls;
    char msg[256];
    size_t n;

    vsnprintf(msg, sizeof msg, fmt, ap);
    n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    if (http->starting) snprintf(http->start_err, sizeof http->start_err, "%s", msg);
    else hl_log(HL_LOG_WARN, "http_error", "err=\"%s\"", msg);
}

/* Queues body (taking ownership if must_free) with status and type. */
static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status,
                             const char *type, char *body, size_t len, int must_free)
{
    struct MHD_Response *rsp;
    enum MHD_Result ret;

    rsp = MHD_create_response_from_buffer(len, body,
              must_free ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (rsp == NULL) {
        if (must_free) free(body);
        return MHD_NO;          /* MHD closes the connection */
    }
    MHD_add_response_header(rsp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(rsp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    ret = MHD_queue_response(conn, status, rsp);
    MHD_destroy_response(rsp);
    return ret;
}

static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned status,
                                  const char *text)
{
    return reply(conn, status, CT_TEXT, (char *)text, strlen(text), 0);
}

static int is_ready(hl_http *http, char *why, size_t whylen)
{
    return http->ready == NULL || http->ready(http->ready_arg, why, whylen) == 1;
}

/* halflife_ready is set here, outside the registry lock, rather than in an
 * on-render hook: ready() may take the worker's locks, and the worker takes
 * the registry lock while holding them when it registers series. */
static enum MHD_Result serve_metrics(hl_http *http, struct MHD_Connection *conn)
{
    char *body, why[256];
    size_t len;

    hl_gauge_set(http->ready_gauge, is_ready(http, why, sizeof why));
    if (hl_metrics_render(http->reg, &body, &len) != 0)
        return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    return reply(conn, MHD_HTTP_OK, CT_METRICS, body, len, 1);
}

/* 200 "ready", or 503 with the reason ready() wrote, so `curl /readyz`
 * tells an operator what the worker is still waiting for. */
static enum MHD_Result serve_ready(hl_http *http, struct MHD_Connection *conn)
{
    char why[256] = "", *body;
    int ok, n;

    ok = is_ready(http, why, sizeof why);
    if (ok) return reply_text(conn, MHD_HTTP_OK, "ready\n");
    n = asprintf(&body, "not ready: %s\n", why[0] ? why : "no reason given");
    if (n < 0) return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "not ready\n");
    return reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, CT_TEXT, body, (size_t)n, 1);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    hl_http *http = cls;

    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
    if (strcmp(url, "/metrics") == 0) return serve_metrics(http, conn);
    if (strcmp(url, "/healthz") == 0) return reply_text(conn, MHD_HTTP_OK, "ok\n");
    if (strcmp(url, "/readyz") == 0)  return serve_ready(http, conn);
    return reply_text(conn, MHD_HTTP_NOT_FOUND,
                      "not found: try /metrics, /healthz or /readyz\n");
}

/* Fills *ss from "a.b.c.d", "::1"-style text or NULL/"" (every IPv4
 * interface). *flags gets MHD_USE_IPv6 for an IPv6 address. */
static int parse_addr(const char *addr, int port, struct sockaddr_storage *ss,
                      unsigned *flags, char *errbuf, size_t errlen)
{
    struct sockaddr_in  *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

    memset(ss, 0, sizeof *ss);
    if (port < 0 || port > 65535)
        return hl_err(errbuf, errlen, HL_EINVAL, "metrics.port %d: not a TCP port", port);
    if (addr == NULL || addr[0] == '\0') addr = "0.0.0.0";
    if (inet_pton(AF_INET, addr, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        return 0;
    }
    if (inet_pton(AF_INET6, addr, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        *flags |= MHD_USE_IPv6;
        return 0;
    }
    return hl_err(errbuf, errlen, HL_EINVAL, "metrics address '%s': not an IP address", addr);
}

hl_http *hl_http_start(const char *bind_addr, int port, hl_metrics *reg,
                       hl_ready_fn ready, void *arg,
                       char *errbuf, size_t errlen)
{
    struct sockaddr_storage ss;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    const union MHD_DaemonInfo *info;
    hl_http *http;

    if ((http = calloc(1, sizeof *http)) == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "http: out of memory");
        return NULL;
    }
    if (parse_addr(bind_addr, port, &ss, &flags, errbuf, errlen) != 0) goto fail;
    http->reg = reg;
    http->ready = ready;
    http->ready_arg = arg;
    http->ready_gauge = hl_metrics_gauge(reg, "halflife_ready",
        "1 when /readyz answers 200 (every assigned partition restored), else 0.", NULL);
    http->starting = 1;
    errno = 0;
    http->d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, http,
                               MHD_OPTION_EXTERNAL_LOGGER, mhd_log, http,
                               MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                               MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
                               MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                               MHD_OPTION_END);
    http->starting = 0;
    if (http->d == NULL) {
        hl_err(errbuf, errlen, HL_EIO, "http: cannot serve on %s:%d: %s",
               bind_addr && *bind_addr ? bind_addr : "0.0.0.0", port,
               http->start_err[0] ? http->start_err : errno ? strerror(errno) : "unknown error");
        goto fail;
    }
    info = MHD_get_daemon_info(http->d, MHD_DAEMON_INFO_BIND_PORT);
    http->port = info && info->port ? info->port : port;
    return http;
fail:
    free(http);
    return NULL;
}

int hl_http_port(const hl_http *http)
{
    return http->port;
}

/* Waits for the serving thread to finish its current request; after this
 * no callback (ready(), on-render hooks) runs any more. */
void hl_http_stop(hl_http *http)
{
    if (http == NULL) return;
    MHD_stop_daemon(http->d);
    free(http);
}
