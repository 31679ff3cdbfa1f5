/* http.c - the worker's HTTP endpoint: /metrics, /healthz and /readyz,
 * served by libmicrohttpd on its own internal polling thread.
 *
 * Scrapes and probes are rare and small, so one thread handles every
 * connection in turn; nothing here touches the hot path beyond rendering the
 * registry (metrics.c), which takes the registry lock only while it copies
 * values. /healthz answers 200 as long as this thread runs and live()
 * says the worker can still work: it says "the process is alive and not
 * beyond repair", which is what a liveness probe should restart on (a
 * producer that failed fatally is beyond repair: the worker exits on it,
 * and the 503 covers a worker that somehow does not). /readyz asks the
 * worker through ready(), so Kubernetes sends no traffic
 * (and KEDA counts no replica as serving) until every assigned shard has
 * been restored from its snapshot. The same answer is exported as the gauge
 * halflife_ready, refreshed on every scrape, for alerts.
 *
 * libmicrohttpd's own error messages are routed to hl_log(), at most one
 * line a second (a flood of connections once wrote 10,171 lines in 30 s),
 * and while the daemon starts they are captured as the reason
 * hl_http_start() returns (a port in use is an operator's mistake worth a
 * precise message).
 *
 * Anyone who reaches the port can open connections, and a liveness probe
 * that goes unanswered restarts the pod, so which connections keep a slot
 * is decided by http_guard.c on every arrival: a whole request within
 * REQUEST_TIMEOUT_MS, bounded connections per client address and in total,
 * and the oldest connection still waiting for its request makes room for a
 * newcomer. Everything here runs on libmicrohttpd's one epoll thread (epoll,
 * not select(), which cannot watch a descriptor above 1023). A request
 * with a body (POST /metrics) has the body read and dropped before the 405,
 * so the client reads an answer instead of a reset connection. */
#include "http.h"

#include "hl.h"
#include "http_guard.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* The bounds of http_guard.c. A probe or a scrape sends its request at
 * once and is answered in milliseconds: REQUEST_TIMEOUT_MS is generous for
 * them and short for a slowloris client. MAX_PER_IP is far below
 * MAX_TOTAL, so one address never displaces another's connections; every
 * slot is a descriptor, and MAX_TOTAL + SLACK stays well under the usual
 * limit of 1024 open files, leaving room for Kafka's sockets. */
#define REQUEST_TIMEOUT_MS  3000
#define BUSY_GRACE_MS       2000
#define MAX_PER_IP          32
#define MAX_TOTAL           512
#define SLACK               128
#define IDLE_TIMEOUT_S      10      /* libmicrohttpd's: no byte either way */
#define MAX_DISCARD_BYTES   (16u << 20) /* a request body read and dropped */

struct hl_http {
    struct MHD_Daemon *d;
    hl_metrics *reg;
    hl_ready_fn ready;
    hl_ready_fn live;              /* NULL: /healthz is always 200 */
    void       *ready_arg;         /* ready's and live's */
    hl_gauge   *ready_gauge;       /* halflife_ready: /readyz as a number */
    hl_counter *closed[HL_GUARD_N_REASONS]; /* halflife_http_connections_closed_total */
    hl_http_guard *guard;          /* the MHD thread's only */
    hl_http_guard_victim *victims; /* (capacity + 1), scratch for guard_open */
    hl_log_limit err_limit;        /* http_error lines */
    hl_log_limit shed_limit;       /* http_connections_closed lines */
    int         port;
    _Atomic int starting;          /* 1 while MHD_start_daemon runs */
    char        start_err[256];    /* MHD's last message while starting */
};

#define CT_TEXT     "text/plain; charset=utf-8"
#define CT_METRICS  "text/plain; version=0.0.4; charset=utf-8"
#define NOT_ALLOWED "method not allowed: only GET and HEAD\n"

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    hl_http *http = cls;
    char msg[256];
    size_t n;
    uint64_t sup = 0;

    vsnprintf(msg, sizeof msg, fmt, ap);
    n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    if (http->starting) snprintf(http->start_err, sizeof http->start_err, "%s", msg);
    else if (hl_log_limit_pass(&http->err_limit, &sup))
        hl_log(HL_LOG_WARN, "http_error", "err=\"%s\" suppressed=%llu", msg, (unsigned long long)sup);
}

/* ---- connection slots (http_guard.c) ------------------------------------ */

/* The client's address as 16 bytes, IPv4 mapped into IPv6. */
static void client_ip(struct MHD_Connection *conn, unsigned char ip[16])
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;

    memset(ip, 0, 16);
    if (sa != NULL && sa->sa_family == AF_INET) {
        ip[10] = ip[11] = 0xff;
        memcpy(ip + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa != NULL && sa->sa_family == AF_INET6) {
        memcpy(ip, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    }
}

/* shutdown(), not close(): libmicrohttpd owns the descriptor. It sees the
 * end of the stream on its next turn and closes the connection itself, and
 * until it does (CLOSED below frees the slot) the descriptor cannot be
 * reused, so the fd named here is always the connection the guard meant. */
static void shed(hl_http *http, const unsigned char ip[16], int n_v)
{
    static const unsigned char v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    char addr[INET6_ADDRSTRLEN] = "?";
    uint64_t sup = 0;
    int reason = -1;

    for (int i = 0; i < n_v; i++) {
        shutdown(http->victims[i].fd, SHUT_RDWR);
        hl_counter_add(http->closed[http->victims[i].reason], 1);
        if (http->victims[i].reason != HL_GUARD_TIMEOUT) reason = http->victims[i].reason;
    }
    if (reason < 0 || !hl_log_limit_pass(&http->shed_limit, &sup))
        return;             /* timeouts are routine; bounds reached are news */
    if (memcmp(ip, v4_mapped, sizeof v4_mapped) == 0) inet_ntop(AF_INET, ip + 12, addr, sizeof addr);
    else inet_ntop(AF_INET6, ip, addr, sizeof addr);
    hl_log(HL_LOG_WARN, "http_connections_closed", "reason=%s arriving_from=%s open=%d suppressed=%llu",
           hl_http_guard_reason_name(reason), addr, hl_http_guard_count(http->guard),
           (unsigned long long)sup);
}

/* The slot is kept in the connection's socket context as id + 1 (NULL: none,
 * the connection was refused and is closing). */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    hl_http *http = cls;
    const union MHD_ConnectionInfo *fi;
    unsigned char ip[16];
    int id, n_v = 0;

    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        if (*socket_context != NULL)
            hl_http_guard_close(http->guard, (int)((intptr_t)*socket_context - 1));
        *socket_context = NULL;
        return;
    }
    fi = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (fi == NULL) return;
    client_ip(conn, ip);
    id = hl_http_guard_open(http->guard, ip, fi->connect_fd, hl_now_mono_ms(), http->victims, &n_v);
    *socket_context = id >= 0 ? (void *)(intptr_t)(id + 1) : NULL;
    shed(http, ip, n_v);
}

static int slot_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci && ci->socket_context ? (int)((intptr_t)ci->socket_context - 1) : -1;
}

/* The answer is sent (or the request failed): on keep-alive the connection
 * waits for its next request, within REQUEST_TIMEOUT_MS again. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    hl_http *http = cls;
    int id = slot_of(conn);

    (void)con_cls;
    (void)toe;
    if (id >= 0) hl_http_guard_idle(http->guard, id, hl_now_mono_ms());
}

/* Queues body (taking ownership if must_free) with status and type, and
 * an Allow header when allow is not NULL. */
static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type,
                             char *body, size_t len, int must_free, const char *allow)
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
    if (allow != NULL) MHD_add_response_header(rsp, MHD_HTTP_HEADER_ALLOW, allow);
    ret = MHD_queue_response(conn, status, rsp);
    MHD_destroy_response(rsp);
    return ret;
}

static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned status,
                                  const char *text)
{
    return reply(conn, status, CT_TEXT, (char *)text, strlen(text), 0, NULL);
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
    return reply(conn, MHD_HTTP_OK, CT_METRICS, body, len, 1, NULL);
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
    return reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, CT_TEXT, body, (size_t)n, 1, NULL);
}

/* 200 "ok", or 503 with the reason live() wrote: the liveness probe then
 * fails and Kubernetes restarts the pod. */
static enum MHD_Result serve_health(hl_http *http, struct MHD_Connection *conn)
{
    char why[512] = "", *body;
    int n;

    if (http->live == NULL || http->live(http->ready_arg, why, sizeof why) == 1)
        return reply_text(conn, MHD_HTTP_OK, "ok\n");
    n = asprintf(&body, "not live: %s\n", why[0] ? why : "no reason given");
    if (n < 0) return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "not live\n");
    return reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, CT_TEXT, body, (size_t)n, 1, NULL);
}

/* Any method but GET and HEAD: 405, once the body has been read and
 * dropped. Answering before it is read makes libmicrohttpd close the socket
 * with the body unread, and the client's kernel then sees a reset instead
 * of the answer. *con_cls counts the bytes dropped so far, plus one (NULL
 * is the first call). Beyond MAX_DISCARD_BYTES the connection is closed:
 * reading on would only spend the thread on the sender's behalf, and
 * libmicrohttpd 0.9.75 queues no answer while a body is still arriving. */
static enum MHD_Result refuse_method(struct MHD_Connection *conn, size_t *upload_data_size,
                                     void **con_cls)
{
    uintptr_t seen = (uintptr_t)*con_cls;

    if (seen == 0) {
        *con_cls = (void *)(uintptr_t)1;
        return MHD_YES;         /* libmicrohttpd calls again with the body */
    }
    /* Allow is what RFC 9110 requires of a 405: the client learns what
     * works instead of guessing. */
    if (*upload_data_size == 0)
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, CT_TEXT, (char *)NOT_ALLOWED,
                     sizeof NOT_ALLOWED - 1, 0, "GET, HEAD");
    seen += *upload_data_size;
    *upload_data_size = 0;
    *con_cls = (void *)seen;
    return seen - 1 > MAX_DISCARD_BYTES ? MHD_NO : MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    hl_http *http = cls;
    int id;

    (void)version;
    (void)upload_data;
    /* A refused method's body is drained while the connection still counts
     * as waiting for its request: a body trickled a byte at a time must not
     * hold a busy slot (which only a 2 s grace lets a newcomer take) beyond
     * REQUEST_TIMEOUT_MS, or one address's trickling POSTs starve its probes. */
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return refuse_method(conn, upload_data_size, con_cls);
    if ((id = slot_of(conn)) >= 0)
        hl_http_guard_busy(http->guard, id, hl_now_mono_ms());
    if (strcmp(url, "/metrics") == 0) return serve_metrics(http, conn);
    if (strcmp(url, "/healthz") == 0) return serve_health(http, conn);
    if (strcmp(url, "/readyz") == 0)  return serve_ready(http, conn);
    return reply_text(conn, MHD_HTTP_NOT_FOUND,
                      "not found: try /metrics, /healthz or /readyz\n");
}

/* Fills *ss from "a.b.c.d", "::1"-style text or NULL/"" (every IPv4
 * interface). *flags gets MHD_USE_IPv6 for an IPv6 address; for "::" it
 * gets MHD_USE_DUAL_STACK: "::" is every interface, and a socket bound to
 * it takes IPv4 clients too on Linux, except that libmicrohttpd makes it
 * IPv6 only unless told. IPv6 only, the kubelet's probes of a dual-stack
 * pod's IPv4 address were refused and the pod restarted. */
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
        *flags |= IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr) ? MHD_USE_DUAL_STACK : MHD_USE_IPv6;
        return 0;
    }
    return hl_err(errbuf, errlen, HL_EINVAL, "metrics address '%s': not an IP address", addr);
}

static void register_closed(hl_http *http)
{
    char labels[64];
    for (int r = 0; r < HL_GUARD_N_REASONS; r++) {
        snprintf(labels, sizeof labels, "reason=\"%s\"", hl_http_guard_reason_name(r));
        http->closed[r] = hl_metrics_counter(http->reg, "halflife_http_connections_closed_total",
            "HTTP connections the endpoint closed to keep slots for probes and scrapes, "
            "by reason (request_timeout, per_ip_limit, total_limit, no_room).", labels);
    }
}

static int guard_create(hl_http *http, char *errbuf, size_t errlen)
{
    hl_http_guard_opts go = {.max_total = MAX_TOTAL, .max_per_ip = MAX_PER_IP, .slack = SLACK,
                             .request_timeout_ms = REQUEST_TIMEOUT_MS,
                             .busy_grace_ms = BUSY_GRACE_MS};
    if ((http->guard = hl_http_guard_create(&go)) == NULL ||
        (http->victims = calloc((size_t)hl_http_guard_capacity(http->guard) + 1,
                                sizeof *http->victims)) == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "http: out of memory");
    http->err_limit.interval_ms = 1000;
    http->shed_limit.interval_ms = 1000;
    register_closed(http);
    return 0;
}

/* Linux hands a connection to accept() only once its first bytes have
 * arrived (or after about REQUEST_TIMEOUT_MS): a client that connects and
 * sends nothing costs a kernel request socket, not a slot, and a probe is
 * accepted with its request already readable, so it is served in the turn
 * that accepts it and a flood of newer arrivals cannot displace it first.
 * Best effort: without it the guard still bounds everything. */
static void defer_accept(struct MHD_Daemon *d)
{
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_LISTEN_FD);
    int secs = REQUEST_TIMEOUT_MS / 1000;
    if (info != NULL)
        (void)setsockopt(info->listen_fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &secs, sizeof secs);
}

static void http_free(hl_http *http)
{
    hl_http_guard_destroy(http->guard);
    free(http->victims);
    free(http);
}

hl_http *hl_http_start(const char *bind_addr, int port, hl_metrics *reg,
                       hl_ready_fn ready, hl_ready_fn live, void *arg,
                       char *errbuf, size_t errlen)
{
    struct sockaddr_storage ss;
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    const union MHD_DaemonInfo *info;
    hl_http *http;

    if ((http = calloc(1, sizeof *http)) == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "http: out of memory");
        return NULL;
    }
    if (parse_addr(bind_addr, port, &ss, &flags, errbuf, errlen) != 0) goto fail;
    http->reg = reg;
    http->ready = ready;
    http->live = live;
    http->ready_arg = arg;
    http->ready_gauge = hl_metrics_gauge(reg, "halflife_ready",
        "1 when /readyz answers 200 (the group's assignment in hand and every partition of "
        "it restored, not stopping), else 0 (the body of /readyz says why).", NULL);
    if (guard_create(http, errbuf, errlen) != 0) goto fail;
    http->starting = 1;
    errno = 0;
    /* libmicrohttpd's own limit is the guard's capacity, so it never refuses
     * a newcomer itself (the guard chooses whom to close instead). */
    http->d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, http,
                               MHD_OPTION_EXTERNAL_LOGGER, mhd_log, http,
                               MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                               MHD_OPTION_CONNECTION_LIMIT,
                               (unsigned)hl_http_guard_capacity(http->guard),
                               MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S,
                               MHD_OPTION_NOTIFY_CONNECTION, on_connection, http,
                               MHD_OPTION_NOTIFY_COMPLETED, on_completed, http,
                               MHD_OPTION_END);
    http->starting = 0;
    if (http->d == NULL) {
        /* Most often another process holds the port (a second worker or
         * demo on one machine): name the way out. */
        hl_err(errbuf, errlen, HL_EIO, "http: cannot serve on %s:%d: %s; set metrics.port "
               "to a free port (or 0: no HTTP endpoint)",
               bind_addr && *bind_addr ? bind_addr : "0.0.0.0", port,
               http->start_err[0] ? http->start_err : errno ? strerror(errno) : "unknown error");
        goto fail;
    }
    info = MHD_get_daemon_info(http->d, MHD_DAEMON_INFO_BIND_PORT);
    http->port = info && info->port ? info->port : port;
    defer_accept(http->d);
    return http;
fail:
    http_free(http);
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
    http_free(http);
}
