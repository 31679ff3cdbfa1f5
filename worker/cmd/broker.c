/* broker.c - `halflife broker`: librdkafka's mock cluster as a standalone
 * process speaking the Kafka protocol over TCP, for tests and development.
 *
 * The mock cluster needs a client handle to live in (a producer that never
 * connects anywhere); it then listens on 127.0.0.1 with kernel-chosen ports.
 * librdkafka 2.0.2 cannot be told a port, so --port P puts a small TCP relay
 * on 127.0.0.1:P in front of broker 1: clients bootstrap through it, and the
 * metadata they get back sends them straight to the brokers' own ports.
 *
 * Signals: SIGTERM/SIGINT stop, SIGUSR1 takes every broker down, SIGUSR2
 * brings them back (the broker-outage test of the worker); each is logged.
 *
 * --refuse-produce FILE: while FILE exists and names a Kafka error, every
 * Produce request is answered with that error (the refused-delivery test
 * of the worker: a broker that refuses lists for good, as an ACL mistake
 * does). OUT_OF_ORDER_SEQUENCE_NUMBER makes an idempotent producer fail
 * fatally instead (librdkafka 2.0.2's rd_kafka_handle_idempotent_Produce_error:
 * the first refused request is the head of the line), the producer-fatal
 * test of the worker. The mock of librdkafka 2.0.2 can inject errors only
 * per request type, not per topic (rd_kafka_mock_topic_set_error reaches
 * Metadata only), so the refusal covers every topic: a test produces its
 * input before it creates the file. The mock takes injected errors from a
 * stack, one per request; each tick refills it (REFUSE_STACK), so it
 * never runs dry while the file is there and is cleared when it goes.
 * --delay-produce FILE answers Produce late instead (a window between a
 * record in the log and its writer knowing it, held open for a test),
 * from a stack per broker topped up each tick; when FILE goes, what is
 * left of it is used up by requests of this process's own, so the next
 * writer is not held up (drain_delays).
 * Signals cannot simply be blocked and taken with sigwaitinfo(): OpenBLAS,
 * linked into the binary, starts its threads in a constructor with no
 * signal blocked, and the kernel would deliver a SIGTERM to one of those.
 * So a handler counts each signal in a file-static array (a signal handler
 * can reach nothing else: the same exception STYLE.md section 6 makes for
 * main.c's stop flag) and the main loop looks at the counts every 50 ms.
 *
 * Limits (DESIGN.md section 9): the mock keeps at most 5 MiB and 100,000
 * message sets per partition and silently drops older data, so whoever
 * pushes more must spread it over partitions and check the watermarks. */
#include "cmd.h"
#include "cmd_common.h"
#include "hl.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_TOPICS "behaviour-events,recommendations,behaviour-events.dlq,items"
#define RELAY_MAX_CONNS 64
#define REFUSE_STACK    1000    /* Produce errors queued per 50 ms tick: more
                                   requests than a tick sees, few enough that
                                   the mock's memmove per request stays small */
#define DELAY_STACK     8       /* delayed Produce answers queued per broker */
#define PRODUCE_KEY     0       /* the ApiKey of Produce */

enum { SIG_STOP, SIG_DOWN, SIG_UP, N_SIGS };
static volatile sig_atomic_t signals_seen[N_SIGS];

static void on_signal(int sig)
{
    int which = (sig == SIGUSR1) ? SIG_DOWN : (sig == SIGUSR2) ? SIG_UP : SIG_STOP;
    signals_seen[which]++;
}

typedef struct broker_args {
    int         port;         /* 0: no relay */
    int         partitions;
    int         brokers;
    const char *topics;
    const char *refuse_file;  /* --refuse-produce; NULL: never */
    const char *delay_file;   /* --delay-produce; NULL: never */
} broker_args;

/* --port: client fd i is relayed to upstream fd i. */
typedef struct relay {
    int                listen_fd;
    int                stop_pipe[2];
    struct sockaddr_in upstream;
    int                client[RELAY_MAX_CONNS], server[RELAY_MAX_CONNS];
    int                n;
    pthread_t          thread;
    int                running;
} relay;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: halflife broker [--port P] [--partitions N] [--topics a,b] [--brokers B]\n"
        "                       [--refuse-produce FILE] [--delay-produce FILE]\n\n"
        "Runs librdkafka's mock Kafka cluster on 127.0.0.1 and prints its bootstrap\n"
        "address as one line on stdout. SIGTERM or SIGINT stops it; SIGUSR1 takes all\n"
        "brokers down, SIGUSR2 brings them back up.\n\n"
        "  --port P        bootstrap port (a relay to broker 1; default: a free port)\n"
        "  --partitions N  partitions per topic (default 4)\n"
        "  --topics a,b    topics to create (default\n"
        "                  " DEFAULT_TOPICS ");\n"
        "                  other topics are created on first use; names as real Kafka\n"
        "                  takes them: 1..249 of letters, digits, '.', '_' and '-'\n"
        "  --brokers B     brokers in the cluster (default 1)\n"
        "  --refuse-produce FILE\n"
        "                  while FILE exists and holds a Kafka error, by name or\n"
        "                  number (TOPIC_AUTHORIZATION_FAILED, 29), every Produce\n"
        "                  request, to any topic, is answered with that error;\n"
        "                  checked every 50 ms, logged when it changes; its\n"
        "                  directory must exist\n"
        "  --delay-produce FILE\n"
        "                  while FILE exists and holds a number of milliseconds,\n"
        "                  every Produce request is answered that much later (its\n"
        "                  records are in the log at once); checked every 50 ms,\n"
        "                  logged when it changes; not with --refuse-produce\n\n"
        "The mock keeps at most 5 MiB and 100,000 message sets per partition and\n"
        "drops older data silently: spread big streams over enough partitions.\n");
}

/* Why name, the n bytes at t, is no topic name real Kafka takes, NULL if
 * it is one: the mock takes any bytes, so a test on it would pass with a
 * topic that a real cluster refuses (Kafka's Topic.validate). */
static const char *bad_topic(const char *t, size_t n)
{
    if (n == 0)
        return "an empty name (an empty list, or two commas in a row, or one at an end)";
    if (n > 249)
        return "longer than 249 characters";
    if ((n == 1 && t[0] == '.') || (n == 2 && t[0] == '.' && t[1] == '.'))
        return "'.' and '..' are not topic names";
    if (strspn(t, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") < n)
        return "a topic name is made of ASCII letters, digits, '.', '_' and '-'";
    return NULL;
}

/* --topics: each name valid for Kafka and given once. 0 or 2 (said). */
static int check_topics(const char *list)
{
    for (const char *t = list; t != NULL; ) {  /* "" and "a," end in an empty name */
        size_t n = strcspn(t, ",");
        const char *why = bad_topic(t, n);
        for (const char *u = list; why == NULL && u < t; u += strcspn(u, ",") + 1)
            if (strcspn(u, ",") == n && n > 0 && memcmp(u, t, n) == 0)
                why = "named twice";
        if (why != NULL) {
            fprintf(stderr, "halflife broker: --topics: \"%.*s%s\": %s\n", (int)(n > 60 ? 60 : n),
                    t, n > 60 ? "..." : "", why);
            return 2;
        }
        t = t[n] == ',' ? t + n + 1 : NULL;
    }
    return 0;
}

/* --refuse-produce FILE (opt) must be creatable: in a missing directory
 * the refusal the test waits for would never come. 0 or 2 (said). */
static int check_refuse_file(const char *opt, const char *path)
{
    char dir[4096];
    struct stat st;
    const char *slash = strrchr(path, '/');
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        fprintf(stderr, "halflife broker: %s %s: is a directory: name a file "
                "to create when Produce should be %s\n", opt, path,
                strcmp(opt, "--refuse-produce") == 0 ? "refused" : "delayed");
        return 2;
    }
    snprintf(dir, sizeof dir, "%.*s", slash == NULL ? 1 : slash == path ? 1 : (int)(slash - path),
             slash == NULL ? "." : path);
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "halflife broker: %s %s: directory %s does not exist, so "
                "the file could never be created there\n", opt, path, dir);
        return 2;
    }
    return 0;
}

/* 0, 1 (--help printed) or 2 (usage error, explained on stderr). */
static int parse_args(int argc, char **argv, broker_args *a)
{
    *a = (broker_args){ 0, 4, 1, DEFAULT_TOPICS, NULL, NULL };
    const hl_arg opts[] = {
        {"--port", HL_ARG_INT, 1, 65535, &a->port},
        {"--partitions", HL_ARG_INT, 1, 10000, &a->partitions},
        {"--brokers", HL_ARG_INT, 1, 16, &a->brokers},
        {"--topics", HL_ARG_STR, 0, 0, &a->topics},
        {"--refuse-produce", HL_ARG_STR, 0, 0, &a->refuse_file},
        {"--delay-produce", HL_ARG_STR, 0, 0, &a->delay_file},
    };
    hl_cmd_args args = {.cmd = "broker", .opts = opts, .usage = usage,
                        .n_opts = (int)(sizeof opts / sizeof opts[0])};
    int rc = hl_cmd_parse_args(&args, argc, argv);
    if (rc == 0)
        rc = check_topics(a->topics);
    if (rc == 0 && a->refuse_file != NULL)
        rc = check_refuse_file("--refuse-produce", a->refuse_file);
    if (rc == 0 && a->delay_file != NULL)
        rc = check_refuse_file("--delay-produce", a->delay_file);
    if (rc == 0 && a->refuse_file != NULL && a->delay_file != NULL) {
        /* rd_kafka_mock_next_request_error reads a broker's own stack (the
         * delays) instead of the cluster's (the refusals) once the broker
         * has one, even an empty one: the refusals would never come. */
        fprintf(stderr, "halflife broker: --refuse-produce and --delay-produce cannot be "
                "used together: once a delay was set, librdkafka 2.0.2's mock would never "
                "answer with the refusal\n");
        rc = 2;
    }
    return rc;
}

/* ---- the --port relay --------------------------------------------------- */

static int relay_listen(relay *r, int port, char *errbuf, size_t errlen)
{
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                               .sin_addr = { htonl(INADDR_LOOPBACK) } };
    int on = 1;
    if ((r->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        return hl_err(errbuf, errlen, HL_EIO, "socket: %s", strerror(errno));
    setsockopt(r->listen_fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (bind(r->listen_fd, (struct sockaddr *)&sin, sizeof sin) != 0 ||
        listen(r->listen_fd, 16) != 0)
        return hl_err(errbuf, errlen, HL_EIO, "listen on 127.0.0.1:%d: %s", port, strerror(errno));
    return 0;
}

static void relay_drop(relay *r, int i)
{
    close(r->client[i]);
    close(r->server[i]);
    r->n--;
    r->client[i] = r->client[r->n];
    r->server[i] = r->server[r->n];
}

static void relay_accept(relay *r)
{
    int c = accept4(r->listen_fd, NULL, NULL, SOCK_CLOEXEC), s;
    if (c < 0)
        return;
    s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (r->n == RELAY_MAX_CONNS || s < 0 ||
        connect(s, (struct sockaddr *)&r->upstream, sizeof r->upstream) != 0) {
        close(c);                       /* the client retries, as with a real broker */
        if (s >= 0) close(s);
        return;
    }
    r->client[r->n] = c;
    r->server[r->n] = s;
    r->n++;
}

/* Moves what is readable on from to to; -1 when either side is done. */
static int relay_pump(int from, int to)
{
    char buf[65536];
    ssize_t n = read(from, buf, sizeof buf), off = 0;
    if (n <= 0)
        return -1;
    while (off < n) {
        ssize_t w = write(to, buf + off, (size_t)(n - off));
        if (w <= 0)
            return -1;
        off += w;
    }
    return 0;
}

static void *relay_main(void *arg)
{
    relay *r = arg;
    struct pollfd pfd[2 + 2 * RELAY_MAX_CONNS];
    for (;;) {
        int n = r->n;
        pfd[0] = (struct pollfd){ r->stop_pipe[0], POLLIN, 0 };
        pfd[1] = (struct pollfd){ r->listen_fd, POLLIN, 0 };
        for (int i = 0; i < n; i++) {
            pfd[2 + 2 * i] = (struct pollfd){ r->client[i], POLLIN, 0 };
            pfd[3 + 2 * i] = (struct pollfd){ r->server[i], POLLIN, 0 };
        }
        if (poll(pfd, (nfds_t)(2 + 2 * n), -1) < 0 && errno != EINTR)
            break;
        if (pfd[0].revents)
            break;
        /* Backwards, so dropping pair i moves an already visited pair. */
        for (int i = n - 1; i >= 0; i--) {
            int bad = 0;
            if (pfd[2 + 2 * i].revents)
                bad |= relay_pump(r->client[i], r->server[i]);
            if (pfd[3 + 2 * i].revents)
                bad |= relay_pump(r->server[i], r->client[i]);
            if (bad)
                relay_drop(r, i);
        }
        if (pfd[1].revents & POLLIN)
            relay_accept(r);
    }
    while (r->n > 0)
        relay_drop(r, 0);
    return NULL;
}

/* "127.0.0.1:1234,..." -> the first address. */
static int parse_bootstrap(const char *bs, struct sockaddr_in *sin)
{
    char host[64];
    int port;
    if (sscanf(bs, "%63[^:]:%d", host, &port) != 2)
        return -1;
    memset(sin, 0, sizeof *sin);
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host, &sin->sin_addr) == 1 ? 0 : -1;
}

static int relay_start(relay *r, int port, const char *bootstraps, char *errbuf, size_t errlen)
{
    int rc;
    memset(r, 0, sizeof *r);
    r->listen_fd = r->stop_pipe[0] = r->stop_pipe[1] = -1;
    if (parse_bootstrap(bootstraps, &r->upstream) != 0)
        return hl_err(errbuf, errlen, HL_EINVAL, "cannot parse mock bootstrap %s", bootstraps);
    if ((rc = relay_listen(r, port, errbuf, errlen)) != 0)
        return rc;
    if (pipe2(r->stop_pipe, O_CLOEXEC) != 0)
        return hl_err(errbuf, errlen, HL_EIO, "pipe: %s", strerror(errno));
    if (pthread_create(&r->thread, NULL, relay_main, r) != 0)
        return hl_err(errbuf, errlen, HL_EIO, "cannot start the relay thread");
    r->running = 1;
    return 0;
}

static void relay_stop(relay *r)
{
    if (r->running) {
        if (write(r->stop_pipe[1], "x", 1) != 1)
            hl_log(HL_LOG_WARN, "relay_stop_failed", "err=\"%s\"", strerror(errno));
        pthread_join(r->thread, NULL);
        r->running = 0;
    }
    if (r->listen_fd >= 0) close(r->listen_fd);
    if (r->stop_pipe[0] >= 0) close(r->stop_pipe[0]);
    if (r->stop_pipe[1] >= 0) close(r->stop_pipe[1]);
    r->listen_fd = r->stop_pipe[0] = r->stop_pipe[1] = -1;
}

/* ---- the cluster -------------------------------------------------------- */

/* A producer handle for the mock cluster to live in; it never connects. */
static rd_kafka_t *host_handle(char *errbuf, size_t errlen)
{
    char why[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk;
    rd_kafka_conf_set(conf, "log_level", "4", why, sizeof why);   /* warnings and worse */
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof why);
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);     /* rd_kafka_new frees conf only on success */
        hl_err(errbuf, errlen, HL_EINVAL, "mock host handle: %s", why);
    }
    return rk;
}

static int create_topics(rd_kafka_mock_cluster_t *mc, const broker_args *a,
                         char *errbuf, size_t errlen)
{
    char *list = strdup(a->topics), *save = NULL;
    int rc = 0;
    if (list == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "out of memory");
    for (char *t = strtok_r(list, ",", &save); t && rc == 0; t = strtok_r(NULL, ",", &save)) {
        rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(mc, t, a->partitions, 1);
        if (err)
            rc = hl_err(errbuf, errlen, HL_EINVAL, "create topic %s: %s", t, rd_kafka_err2str(err));
    }
    free(list);
    return rc;
}

static void set_all(rd_kafka_mock_cluster_t *mc, int brokers, int up)
{
    for (int id = 1; id <= brokers; id++) {
        rd_kafka_resp_err_t err = up ? rd_kafka_mock_broker_set_up(mc, id)
                                     : rd_kafka_mock_broker_set_down(mc, id);
        if (err)
            hl_log(HL_LOG_WARN, "broker_set_failed", "broker=%d up=%d err=\"%s\"", id, up,
                   rd_kafka_err2str(err));
    }
    hl_log(HL_LOG_INFO, up ? "brokers_up" : "brokers_down", "brokers=%d", brokers);
}

/* ---- the control files ------------------------------------------------ */

/* The first word of the small file at path into buf (size bytes), blanks
 * before it skipped: "" when the file is absent or holds none. */
static void control_read(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "r");
    size_t n = 0, skip;
    if (f != NULL) {
        n = fread(buf, 1, size - 1, f);
        fclose(f);
    }
    buf[n] = '\0';
    skip = strspn(buf, " \t\r\n");
    memmove(buf, buf + skip, n - skip + 1);
    buf[strcspn(buf, " \t\r\n")] = '\0';
}

/* ---- --refuse-produce --------------------------------------------------- */

/* The error FILE names (a name from rd_kafka_get_err_descs or a number),
 * 0 when FILE is absent or empty, -1 when it names none. */
static int refuse_read(const char *path)
{
    char buf[96], *end;
    control_read(path, buf, sizeof buf);
    if (buf[0] == '\0')
        return 0;
    long v = strtol(buf, &end, 10);
    if (*end == '\0')
        return v > 0 && v < 32768 ? (int)v : -1;
    const struct rd_kafka_err_desc *d;
    size_t cnt;
    rd_kafka_get_err_descs(&d, &cnt);
    for (size_t i = 0; i < cnt; i++)
        if (d[i].name != NULL && d[i].code > 0 && strcmp(d[i].name, buf) == 0)
            return d[i].code;
    return -1;
}

/* One tick: the refusal FILE asks for now, applied. *cur is the error in
 * force (0: none). The stack is cleared and refilled every tick so that
 * it never runs dry and a removed FILE stops the refusals at once. */
static void refuse_tick(rd_kafka_mock_cluster_t *mc, const char *path, int *cur)
{
    rd_kafka_resp_err_t errs[REFUSE_STACK];
    int want = refuse_read(path);
    if (want < 0) {
        if (*cur != -1)
            hl_log(HL_LOG_WARN, "refuse_produce_unknown", "file=%s action=\"not refusing; "
                   "write an error name (TOPIC_AUTHORIZATION_FAILED) or number\"", path);
        rd_kafka_mock_clear_request_errors(mc, PRODUCE_KEY);
        *cur = -1;
        return;
    }
    if (want != *cur)
        hl_log(HL_LOG_INFO, want ? "refuse_produce_on" : "refuse_produce_off",
               "err=\"%s\" file=%s", want ? rd_kafka_err2name(want) : "", path);
    if (*cur > 0 || want > 0)
        rd_kafka_mock_clear_request_errors(mc, PRODUCE_KEY);
    if (want > 0) {
        for (int i = 0; i < REFUSE_STACK; i++)
            errs[i] = (rd_kafka_resp_err_t)want;
        rd_kafka_mock_push_request_errors_array(mc, PRODUCE_KEY, REFUSE_STACK, errs);
    }
    *cur = want;
}

/* ---- --delay-produce --------------------------------------------------- */

/* The delay FILE names in ms, 0 when FILE is absent, empty or names none. */
static int delay_read(const char *path)
{
    char buf[32], *end;
    control_read(path, buf, sizeof buf);
    long v = strtol(buf, &end, 10);
    return end != buf && v > 0 && v <= 600000 ? (int)v : 0;
}

/* Entries (delays) left on the brokers' Produce stacks. */
static size_t delays_left(rd_kafka_mock_cluster_t *mc, int brokers)
{
    size_t left = 0;
    for (int id = 1; id <= brokers; id++) {
        size_t n = 0;
        if (rd_kafka_mock_broker_error_stack_cnt(mc, id, PRODUCE_KEY, &n) == 0)
            left += n;
    }
    return left;
}

/* A socket to the broker at addr ("127.0.0.1:port") that has sent it n
 * Produce requests naming no topic, or -1. The mock takes a stack entry
 * for each (none when the stack is empty); its answers are never read. */
static int send_empty_produces(const char *addr, int n)
{
    static const unsigned char req[] = {
        0, 0, 0, 20,            /* size of what follows */
        0, 0, 0, 0,             /* ApiKey Produce, ApiVersion 0 */
        0, 0, 0, 0,             /* correlation id */
        0, 0,                   /* client id "" */
        0, 1,                   /* acks */
        0, 0, 0x03, 0xe8,       /* timeout 1000 ms */
        0, 0, 0, 0,             /* no topics */
    };
    struct sockaddr_in sin;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || parse_bootstrap(addr, &sin) != 0 ||
        connect(fd, (struct sockaddr *)&sin, sizeof sin) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (send(fd, req, sizeof req, MSG_NOSIGNAL) != (ssize_t)sizeof req)
            break;
    return fd;
}

/* FILE went or changed: the entries still on the stacks would delay as
 * many more Produce requests of whoever writes next, up to DELAY_STACK
 * times the old delay per broker (a test's next worker waited 16 s), and
 * librdkafka 2.0.2 has no call that clears a broker's stack. So they are
 * used up here by requests of our own to every broker; the sockets stay
 * open until the mock has read them (a close with their late answers
 * unread would reset the connection) and are never read. */
static void drain_delays(rd_kafka_mock_cluster_t *mc, int brokers)
{
    char *list = strdup(rd_kafka_mock_cluster_bootstraps(mc)), *save = NULL;
    int fds[16], n = 0;
    const struct timespec nap = { 0, 5 * 1000 * 1000 };
    for (char *a = list ? strtok_r(list, ",", &save) : NULL; a != NULL && n < 16;
         a = strtok_r(NULL, ",", &save))
        if ((fds[n] = send_empty_produces(a, DELAY_STACK)) >= 0)
            n++;
    free(list);
    for (int waited_ms = 0; waited_ms < 1000 && delays_left(mc, brokers) > 0; waited_ms += 5)
        nanosleep(&nap, NULL);
    size_t left = delays_left(mc, brokers);
    if (left > 0)
        hl_log(HL_LOG_WARN, "delay_produce_left", "entries=%zu reason=\"a broker did not "
               "take the requests that use them up (down?)\" action=\"that many more Produce "
               "requests are answered late\"", left);
    while (n > 0)
        close(fds[--n]);
}

/* One tick: while FILE names a delay, each broker's stack of Produce
 * entries is topped up to DELAY_STACK entries of (no error, the delay):
 * the mock takes one per request, appends its records at once and sends
 * the answer that much later (a slow disk or replica, as a producer sees
 * it). When FILE goes or names another delay, what is left of the stacks
 * is used up at once (drain_delays). */
static void delay_tick(rd_kafka_mock_cluster_t *mc, int brokers, const char *path, int *cur)
{
    int ms = delay_read(path);
    if (ms != *cur) {
        hl_log(HL_LOG_INFO, ms ? "delay_produce_on" : "delay_produce_off", "ms=%d file=%s",
               ms, path);
        if (*cur > 0)
            drain_delays(mc, brokers);
    }
    *cur = ms;
    for (int id = 1; ms > 0 && id <= brokers; id++) {
        size_t n = 0;
        if (rd_kafka_mock_broker_error_stack_cnt(mc, id, PRODUCE_KEY, &n) != 0)
            continue;
        for (; n < DELAY_STACK; n++)
            rd_kafka_mock_broker_push_request_error_rtts(mc, id, PRODUCE_KEY, 1,
                                                         RD_KAFKA_RESP_ERR_NO_ERROR, ms);
    }
}

static void install_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
}

/* Serves signals until SIGTERM or SIGINT. Down and up requests are applied
 * in the order they can be told apart: a down then an up within one 50 ms
 * tick leaves the brokers up. */
static void serve_signals(rd_kafka_mock_cluster_t *mc, const broker_args *a)
{
    sig_atomic_t seen_down = 0, seen_up = 0;
    int refusing = 0, delaying = 0;
    const struct timespec tick = { 0, 50 * 1000 * 1000 };
    while (signals_seen[SIG_STOP] == 0) {
        int down = signals_seen[SIG_DOWN] != seen_down, up = signals_seen[SIG_UP] != seen_up;
        seen_down = signals_seen[SIG_DOWN];
        seen_up = signals_seen[SIG_UP];
        if (down)
            set_all(mc, a->brokers, 0);
        if (up)
            set_all(mc, a->brokers, 1);
        if (a->refuse_file != NULL)
            refuse_tick(mc, a->refuse_file, &refusing);
        if (a->delay_file != NULL)
            delay_tick(mc, a->brokers, a->delay_file, &delaying);
        nanosleep(&tick, NULL);
    }
    hl_log(HL_LOG_INFO, "broker_stopping", "reason=signal");
}

int hl_cmd_broker(int argc, char **argv)
{
    broker_args a;
    char err[512], addr[256];
    rd_kafka_t *rk = NULL;
    rd_kafka_mock_cluster_t *mc = NULL;
    relay r = { .listen_fd = -1, .stop_pipe = { -1, -1 } };
    int rc = parse_args(argc, argv, &a);

    if (rc != 0)
        return rc == 1 ? 0 : 2;
    install_handlers();
    rc = 1;
    if ((rk = host_handle(err, sizeof err)) == NULL)
        goto out;
    if ((mc = rd_kafka_mock_cluster_new(rk, a.brokers)) == NULL) {
        snprintf(err, sizeof err, "cannot start the mock cluster");
        goto out;
    }
    if (create_topics(mc, &a, err, sizeof err) != 0)
        goto out;
    snprintf(addr, sizeof addr, "%s", rd_kafka_mock_cluster_bootstraps(mc));
    if (a.port != 0) {
        if (relay_start(&r, a.port, addr, err, sizeof err) != 0)
            goto out;
        snprintf(addr, sizeof addr, "127.0.0.1:%d", a.port);
    }
    printf("%s\n", addr);
    fflush(stdout);
    hl_log(HL_LOG_INFO, "broker_started", "bootstrap=%s brokers=%d partitions=%d topics=%s",
           addr, a.brokers, a.partitions, a.topics);
    serve_signals(mc, &a);
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "halflife broker: %s\n", err);
    relay_stop(&r);
    if (mc != NULL)
        rd_kafka_mock_cluster_destroy(mc);
    if (rk != NULL)
        rd_kafka_destroy(rk);
    return rc;
}
