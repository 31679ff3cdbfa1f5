/* test_metrics.c - the metrics registry (worker/metrics.c) and the HTTP
 * endpoint (worker/http.c): exact exposition text, cumulative histogram
 * buckets, label escaping, hiding, read-back of totals, lock-free updates from
 * several threads, and real HTTP over a socket to 127.0.0.1.
 *
 * With HL_METRICS_DUMP=path it instead writes a rendering that holds every
 * kind of series (and awkward label values) to path and exits, so
 * tests/integration/test_metrics_promtool.sh can hand it to promtool. */
#define T_SUITE "test_metrics"
#include "test.h"

#include "hl.h"
#include "metrics.h"
#include "http.h"
#include "log.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static char *render(hl_metrics *reg)
{
    char *out = NULL;
    size_t len = 0;
    int rc = hl_metrics_render(reg, &out, &len);
    CHECKF(rc == 0, "render returned %d", rc);
    CHECK(out == NULL || strlen(out) == len);
    return out;
}

/* Registers one series of every kind, with labels a careless renderer
 * would break on. Used by the tests and by the dump mode. */
static void fill_sample(hl_metrics *reg)
{
    static const double size_bounds[] = {1, 10, 100, 1000, 10000};
    char esc[128], labels[192];

    hl_counter_add(hl_metrics_counter(reg, "halflife_events_consumed_total",
                                      "Events read from the input topic.", "partition=\"0\""), 41);
    hl_counter_add(hl_metrics_counter(reg, "halflife_events_consumed_total", NULL,
                                      "partition=\"1\""), 1);
    hl_counter_add(hl_metrics_counter(reg, "halflife_batches_total", "Batches applied.", NULL), 3);
    hl_gauge_set(hl_metrics_gauge(reg, "halflife_state_bytes",
                                  "Bytes of state per shard.", "partition=\"0\""), 1.5e9);
    hl_gauge_set(hl_metrics_gauge(reg, "halflife_consumer_lag",
                                  "Messages behind the high watermark.\nSecond line \\ with a backslash.",
                                  "partition=\"0\""), 0);
    hl_metrics_escape(esc, sizeof esc, "v1 \"quoted\" back\\slash\nnewline");
    snprintf(labels, sizeof labels, "version=\"%s\",items=\"1000\",dim=\"64\"", esc);
    hl_gauge_set(hl_metrics_gauge(reg, "halflife_model_info", "The model in use.", labels), 1);
    /* Bytes that are not UTF-8, escaped and not: either way one such label
     * value made Prometheus refuse the whole scrape. */
    hl_metrics_escape(esc, sizeof esc, "latin1 caf\xe9 \xff\xfe");
    snprintf(labels, sizeof labels, "version=\"%s\"", esc);
    hl_gauge_set(hl_metrics_gauge(reg, "halflife_build_info", "The running build.", labels), 1);
    hl_gauge_set(hl_metrics_gauge(reg, "halflife_build_info", NULL, "version=\"raw \xc3\x28\""), 1);
    hl_histogram *h = hl_metrics_histogram(reg, "halflife_stage_duration_seconds",
                                           "Time per batch stage.", "stage=\"decode\"",
                                           hl_latency_bounds_s, hl_latency_bounds_n);
    hl_histogram_observe(h, 0.00003);
    hl_histogram_observe(h, 0.002);
    hl_histogram_observe(h, 42);
    h = hl_metrics_histogram(reg, "halflife_batch_size", "Events per batch.", NULL,
                             size_bounds, 5);
    hl_histogram_observe(h, 10);
    hl_histogram_observe(h, 11);
}

static void test_counter_text(void)
{
    hl_metrics *reg = hl_metrics_create();
    hl_counter *a = hl_metrics_counter(reg, "halflife_x_total", "Things.", NULL);
    hl_counter *b = hl_metrics_counter(reg, "halflife_y_total", "Others.", "reason=\"too_short\"");
    hl_counter_add(a, 2);
    hl_counter_add(a, 3);
    hl_counter_add(b, 1);
    CHECK(hl_metrics_counter(reg, "halflife_x_total", "ignored", NULL) == a);
    CHECK(hl_metrics_counter(reg, "halflife_x_total", NULL, "") == a);
    CHECK(hl_counter_get(a) == 5);
    char *out = render(reg);
    const char *want =
        "# HELP halflife_x_total Things.\n"
        "# TYPE halflife_x_total counter\n"
        "halflife_x_total 5\n"
        "# HELP halflife_y_total Others.\n"
        "# TYPE halflife_y_total counter\n"
        "halflife_y_total{reason=\"too_short\"} 1\n";
    CHECKF(out && strcmp(out, want) == 0, "got:\n%s", out ? out : "(null)");
    free(out);
    hl_metrics_destroy(reg);
}

static void test_gauge_values(void)
{
    hl_metrics *reg = hl_metrics_create();
    hl_gauge *g = hl_metrics_gauge(reg, "halflife_g", "A gauge.", "p=\"1\"");
    hl_gauge *inf = hl_metrics_gauge(reg, "halflife_g", NULL, "p=\"2\"");
    hl_gauge *nan = hl_metrics_gauge(reg, "halflife_g", NULL, "p=\"3\"");
    hl_gauge_set(g, 0.1);
    hl_gauge_add(g, 0.2);
    hl_gauge_add(g, -1);
    hl_gauge_set(inf, -INFINITY);
    hl_gauge_set(nan, NAN);
    char *out = render(reg);
    CHECKF(out && strstr(out, "halflife_g{p=\"1\"} -0.7\n"), "got:\n%s", out);
    CHECKF(out && strstr(out, "halflife_g{p=\"2\"} -Inf\n"), "got:\n%s", out);
    CHECKF(out && strstr(out, "halflife_g{p=\"3\"} NaN\n"), "got:\n%s", out);
    CHECK(out && strstr(out, "# TYPE halflife_g gauge\n"));
    free(out);
    hl_metrics_destroy(reg);
}

static void test_histogram_buckets(void)
{
    static const double bounds[] = {0.001, 0.01, 0.1};
    hl_metrics *reg = hl_metrics_create();
    hl_histogram *h = hl_metrics_histogram(reg, "halflife_h_seconds", "Latency.",
                                           "stage=\"apply\"", bounds, 3);
    double obs[] = {0.0005, 0.001, 0.005, 0.05, 0.05, 3, NAN};
    for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++) hl_histogram_observe(h, obs[i]);
    char *out = render(reg);
    const char *want =
        "# HELP halflife_h_seconds Latency.\n"
        "# TYPE halflife_h_seconds histogram\n"
        "halflife_h_seconds_bucket{stage=\"apply\",le=\"0.001\"} 2\n"   /* le is inclusive */
        "halflife_h_seconds_bucket{stage=\"apply\",le=\"0.01\"} 3\n"
        "halflife_h_seconds_bucket{stage=\"apply\",le=\"0.1\"} 5\n"
        "halflife_h_seconds_bucket{stage=\"apply\",le=\"+Inf\"} 6\n"
        "halflife_h_seconds_sum{stage=\"apply\"} 3.1065\n"
        "halflife_h_seconds_count{stage=\"apply\"} 6\n";
    CHECKF(out && strcmp(out, want) == 0, "got:\n%s", out ? out : "(null)");
    free(out);
    hl_metrics_destroy(reg);
}

/* A batch's events share a stage: n observations in one call count as n,
 * sum n v; n = 0 and NaN change nothing. The live bounds step 1 ms to 10 ms. */
static void test_histogram_observe_n(void)
{
    hl_metrics *reg = hl_metrics_create();
    hl_histogram *h = hl_metrics_histogram(reg, "halflife_live_seconds", "Live.", NULL,
                                           hl_live_bounds_s, hl_live_bounds_n);
    hl_histogram_observe_n(h, 0.0034, 250);
    hl_histogram_observe_n(h, 0.0034, 0);
    hl_histogram_observe_n(h, NAN, 5);
    hl_histogram_observe(h, 0.0101);
    uint64_t c[64];
    int n = hl_histogram_counts(h, c, 64);
    CHECK(n == hl_live_bounds_n + 1);
    int at = -1, total = 0;
    for (int i = 0; i < n; i++) {
        total += (int)c[i];
        if (c[i] == 250)
            at = i;
    }
    CHECKF(total == 251, "%d observations", total);
    CHECKF(at >= 0 && hl_live_bounds_s[at] == 0.004 && hl_live_bounds_s[at - 1] == 0.003,
           "250 landed in bucket %d", at);
    for (int i = 1; i < hl_live_bounds_n && hl_live_bounds_s[i] <= 0.010; i++)
        CHECK(hl_live_bounds_s[i] - hl_live_bounds_s[i - 1] <= 0.001 + 1e-12);
    char *out = render(reg);
    CHECKF(out && strstr(out, "halflife_live_seconds_sum 0.8601\n"), "got:\n%s", out ? out : "");
    free(out);
    hl_metrics_destroy(reg);
}

static void test_histogram_unlabelled_and_shared_bounds(void)
{
    hl_metrics *reg = hl_metrics_create();
    hl_histogram *h = hl_metrics_histogram(reg, "halflife_l_seconds", "L.", NULL,
                                           hl_latency_bounds_s, hl_latency_bounds_n);
    hl_histogram_observe(h, 0.00005);
    char *out = render(reg);
    CHECKF(out && strstr(out, "halflife_l_seconds_bucket{le=\"5e-05\"} 1\n"), "got:\n%s", out);
    CHECKF(out && strstr(out, "halflife_l_seconds_bucket{le=\"0.00025\"} 1\n"), "got:\n%s", out);
    CHECKF(out && strstr(out, "halflife_l_seconds_bucket{le=\"10\"} 1\n"), "got:\n%s", out);
    CHECK(out && strstr(out, "halflife_l_seconds_count 1\n"));
    CHECK(out && strstr(out, "halflife_l_seconds_sum 5e-05\n"));
    for (int i = 1; i < hl_latency_bounds_n; i++)
        CHECK(hl_latency_bounds_s[i] > hl_latency_bounds_s[i - 1]);
    CHECK(hl_latency_bounds_s[0] == 0.00005 && hl_latency_bounds_s[hl_latency_bounds_n - 1] == 10);
    free(out);
    hl_metrics_destroy(reg);
}

static void test_escaping(void)
{
    char buf[64];
    size_t n = hl_metrics_escape(buf, sizeof buf, "a\"b\\c\nd");
    CHECKF(strcmp(buf, "a\\\"b\\\\c\\nd") == 0, "got %s", buf);
    CHECK(n == strlen(buf));
    n = hl_metrics_escape(buf, 4, "\"\"\"");          /* truncates like snprintf */
    CHECK(n == 6 && strcmp(buf, "\\\"\\") == 0);
    CHECK(hl_metrics_escape(NULL, 0, "ab\n") == 4);
    /* Not UTF-8: each bad byte becomes '?', a valid character stays. */
    n = hl_metrics_escape(buf, sizeof buf, "caf\xc3\xa9 \xe9\xff\xc3\x28");
    CHECKF(strcmp(buf, "caf\xc3\xa9 ??" "?(") == 0, "got %s", buf);
    CHECK(n == strlen(buf));

    hl_metrics *reg = hl_metrics_create();
    hl_metrics_counter(reg, "halflife_e_total", "Line one\nback\\slash", NULL);
    char *out = render(reg);
    CHECKF(out && strstr(out, "# HELP halflife_e_total Line one\\nback\\\\slash\n"), "got:\n%s", out);
    free(out);
    /* Labels given unescaped bytes that are not UTF-8 are quarantined. */
    hl_metrics_counter(reg, "halflife_f_total", NULL, "v=\"a\xff" "b\"");
    out = render(reg);
    CHECKF(out && strstr(out, "halflife_f_total{invalid_labels=\"v=\\\"a?b\\\"\"} 0\n"),
           "got:\n%s", out);
    free(out);
    hl_metrics_destroy(reg);
}

static void test_hide(void)
{
    hl_metrics *reg = hl_metrics_create();
    hl_gauge *g0 = hl_metrics_gauge(reg, "halflife_lag", "Lag.", "partition=\"0\"");
    hl_gauge *g1 = hl_metrics_gauge(reg, "halflife_lag", "Lag.", "partition=\"1\"");
    hl_gauge_set(g0, 5);
    hl_gauge_set(g1, 7);
    hl_metrics_hide(reg, "halflife_lag", "partition=\"1\"");
    hl_metrics_hide(reg, "halflife_nothing", NULL);          /* no-op */
    char *out = render(reg);
    CHECK(out && strstr(out, "partition=\"0\"} 5") && !strstr(out, "partition=\"1\""));
    free(out);
    hl_metrics_hide(reg, "halflife_lag", "partition=\"0\"");
    out = render(reg);
    CHECKF(out && out[0] == '\0', "a family with nothing shown is left out, got:\n%s", out);
    free(out);
    CHECK(hl_metrics_gauge(reg, "halflife_lag", NULL, "partition=\"1\"") == g1);
    out = render(reg);
    CHECK(out && strstr(out, "halflife_lag{partition=\"1\"} 7\n"));
    free(out);
    hl_metrics_destroy(reg);
}

/* A dropped series is gone from the text and from the registry: the same
 * labels registered again start afresh, and the others keep their order. */
static void test_drop(void)
{
    hl_metrics *reg = hl_metrics_create();
    hl_gauge_set(hl_metrics_gauge(reg, "halflife_info", "Info.", "v=\"a\""), 1);
    hl_gauge_set(hl_metrics_gauge(reg, "halflife_info", NULL, "v=\"b\""), 2);
    hl_gauge_set(hl_metrics_gauge(reg, "halflife_info", NULL, "v=\"c\""), 3);
    hl_metrics_drop(reg, "halflife_info", "v=\"a\"");
    hl_metrics_drop(reg, "halflife_nothing", NULL);          /* no-op */
    hl_metrics_drop(reg, "halflife_info", "v=\"zz\"");      /* no-op */
    CHECK(hl_metrics_series_count(reg, "halflife_info") == 2);
    CHECK(hl_metrics_series_count(reg, "halflife_nothing") == 0);
    char *out = render(reg);
    CHECKF(out && !strstr(out, "v=\"a\"") &&
           strstr(out, "halflife_info{v=\"b\"} 2\nhalflife_info{v=\"c\"} 3\n"), "%s", out);
    free(out);
    hl_metrics_gauge(reg, "halflife_info", NULL, "v=\"a\"");
    out = render(reg);
    CHECKF(out && strstr(out, "halflife_info{v=\"a\"} 0\n"), "%s", out);
    free(out);
    hl_metrics_destroy(reg);
}

/* Runs fn in a child process; 1 if it aborted (SIGABRT). */
static int aborts(void (*fn)(void))
{
    int status = 0;
    pid_t pid = fork();
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        fn();
        _exit(0);
    }
    if (pid < 0 || waitpid(pid, &status, 0) != pid) return 0;
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

static void register_two_kinds(void)
{
    hl_metrics *reg = hl_metrics_create();
    hl_metrics_counter(reg, "halflife_a_total", "A.", NULL);
    hl_metrics_gauge(reg, "halflife_a_total", "A.", NULL);
}

/* A name registered as two kinds is a bug that stops the process; labels
 * that would make Prometheus reject the scrape are quarantined into one
 * escaped label instead (they may come from a model file); good label
 * strings pass unchanged. */
static void test_registration_mistakes(void)
{
    CHECK(aborts(register_two_kinds));

    hl_metrics *reg = hl_metrics_create();
    const char *bad[] = {"reason=too_short", "reason=\"a\\tb\"", "a=\"1\",", "v=\"x\"y\"", "=\"1\""};
    for (int pass = 0; pass < 2; pass++)            /* the second finds the same series */
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
            hl_counter_add(hl_metrics_counter(reg, "halflife_q_total", "Q.", bad[i]), 1);
    char *out = render(reg);
    CHECKF(out && strstr(out, "halflife_q_total{invalid_labels=\"reason=too_short\"} 2\n"), "got:\n%s", out);
    CHECKF(out && strstr(out, "halflife_q_total{invalid_labels=\"v=\\\"x\\\"y\\\"\"} 2\n"), "got:\n%s", out);
    free(out);
    hl_metrics_destroy(reg);

    reg = hl_metrics_create();
    hl_metrics_counter(reg, "halflife_b_total", NULL, "a=\"\",b_2=\"x\\\"y\\\\z\\n\"");
    hl_metrics_counter(reg, "halflife_b_total", "Late help.", NULL);
    out = render(reg);
    CHECKF(out && strstr(out, "# HELP halflife_b_total Late help.\n"), "got:\n%s", out);
    CHECKF(out && strstr(out, "halflife_b_total{a=\"\",b_2=\"x\\\"y\\\\z\\n\"} 0\n"), "got:\n%s", out);
    free(out);
    hl_metrics_destroy(reg);
}

/* The totals the worker reports besides /metrics are read back from the
 * registry: counters summed with hidden series (a revoked partition's count
 * stays in the total), gauges without them, histograms bucket by bucket. */
static void test_read_back(void)
{
    static const double bounds[] = {0.01, 0.1, 1};
    hl_metrics *reg = hl_metrics_create();
    hl_counter_add(hl_metrics_counter(reg, "halflife_x_total", "X.", "partition=\"1\""), 5);
    hl_counter_add(hl_metrics_counter(reg, "halflife_x_total", "X.", "partition=\"2\""), 7);
    hl_gauge_set(hl_metrics_gauge(reg, "halflife_users", "U.", "partition=\"1\""), 10);
    hl_gauge_set(hl_metrics_gauge(reg, "halflife_users", "U.", "partition=\"2\""), 20);
    hl_metrics_hide(reg, "halflife_x_total", "partition=\"2\"");
    hl_metrics_hide(reg, "halflife_users", "partition=\"2\"");
    CHECK(hl_metrics_counter_sum(reg, "halflife_x_total") == 12);
    CHECK(hl_metrics_gauge_sum(reg, "halflife_users") == 10);
    CHECK(hl_metrics_counter_sum(reg, "halflife_none_total") == 0);
    CHECK(hl_metrics_counter_sum(reg, "halflife_users") == 0);     /* not a counter */
    hl_histogram *h = hl_metrics_histogram(reg, "halflife_h_seconds", "H.", NULL, bounds, 3);
    hl_histogram_observe(h, 0.005);
    hl_histogram_observe(h, 0.5);
    hl_histogram_observe(h, 0.5);
    hl_histogram_observe(h, 5);
    uint64_t c[8];
    int nb = 0;
    const double *b = hl_histogram_bounds(h, &nb);
    CHECK(hl_histogram_counts(h, c, 8) == 4 && nb == 3 && b[2] == 1);
    CHECKF(c[0] == 1 && c[1] == 0 && c[2] == 2 && c[3] == 1, "%llu %llu %llu %llu",
           (unsigned long long)c[0], (unsigned long long)c[1], (unsigned long long)c[2],
           (unsigned long long)c[3]);
    CHECK(hl_histogram_counts(h, c, 2) == 2);
    hl_metrics_destroy(reg);
    hl_metrics_destroy(NULL);
}

#define N_THREADS 4
#define N_ITERS   200000

typedef struct upd_ctx {
    hl_counter   *c;
    hl_gauge     *g;
    hl_histogram *h;
} upd_ctx;

static void *updater(void *arg)
{
    upd_ctx *u = arg;
    for (int i = 0; i < N_ITERS; i++) {
        hl_counter_add(u->c, 1);
        hl_gauge_add(u->g, 0.5);
        hl_histogram_observe(u->h, (i % 4) * 0.001);
    }
    return NULL;
}

/* Updates race each other and a renderer; no increment may be lost. */
static void test_concurrent_updates(void)
{
    static const double bounds[] = {0.0015};
    hl_metrics *reg = hl_metrics_create();
    upd_ctx u = {
        hl_metrics_counter(reg, "halflife_c_total", "C.", NULL),
        hl_metrics_gauge(reg, "halflife_g", "G.", NULL),
        hl_metrics_histogram(reg, "halflife_h", "H.", NULL, bounds, 1),
    };
    pthread_t th[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) pthread_create(&th[i], NULL, updater, &u);
    for (int i = 0; i < 20; i++) free(render(reg));
    for (int i = 0; i < N_THREADS; i++) pthread_join(th[i], NULL);
    char *out = render(reg), want[128];
    CHECK(hl_counter_get(u.c) == (uint64_t)N_THREADS * N_ITERS);
    snprintf(want, sizeof want, "halflife_g %d\n", N_THREADS * N_ITERS / 2);
    CHECKF(out && strstr(out, want), "want %s got:\n%s", want, out);
    snprintf(want, sizeof want, "halflife_h_bucket{le=\"0.0015\"} %d\n", N_THREADS * N_ITERS / 2);
    CHECKF(out && strstr(out, want), "want %s", want);
    snprintf(want, sizeof want, "halflife_h_count %d\n", N_THREADS * N_ITERS);
    CHECKF(out && strstr(out, want), "want %s", want);
    const char *sum = out ? strstr(out, "halflife_h_sum ") : NULL;
    double got = sum ? strtod(sum + strlen("halflife_h_sum "), NULL) : -1;
    CHECKF(fabs(got - 1200.0) < 1e-6, "sum %.17g, want 1200", got);   /* rounding only */
    free(out);
    hl_metrics_destroy(reg);
}

/* ---- HTTP over a plain socket */

typedef struct http_rsp {
    int  status;
    char head[1024];
    char body[16384];
} http_rsp;

/* GET path (HTTP/1.0, so the server closes when done) from addr:port
 * (IPv4 or IPv6 text). */
static int http_get_at(const char *addr, int port, const char *method, const char *path,
                       http_rsp *r)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct sockaddr_in6 sa6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
    int v6 = inet_pton(AF_INET6, addr, &sa6.sin6_addr) == 1;
    struct timeval tv = {5, 0};
    char req[256], all[sizeof r->head + sizeof r->body];
    size_t got = 0;
    ssize_t n;
    int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);

    memset(r, 0, sizeof *r);
    inet_pton(AF_INET, addr, &sa.sin_addr);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (fd < 0 || connect(fd, v6 ? (struct sockaddr *)&sa6 : (struct sockaddr *)&sa,
                          v6 ? sizeof sa6 : sizeof sa) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", method, path);
    if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) { close(fd); return -1; }
    while (got + 1 < sizeof all && (n = read(fd, all + got, sizeof all - 1 - got)) > 0)
        got += (size_t)n;
    close(fd);
    all[got] = '\0';
    char *sep = strstr(all, "\r\n\r\n");
    if (sep == NULL || sscanf(all, "HTTP/1.%*d %d", &r->status) != 1) return -1;
    *sep = '\0';
    size_t hlen = strlen(all), blen = strlen(sep + 4);
    if (hlen >= sizeof r->head || blen >= sizeof r->body) return -1;
    memcpy(r->head, all, hlen + 1);
    memcpy(r->body, sep + 4, blen + 1);
    return 0;
}

static int http_get(int port, const char *method, const char *path, http_rsp *r)
{
    return http_get_at("127.0.0.1", port, method, path, r);
}

/* Set by the test's thread, read by the HTTP thread's callbacks. */
static atomic_int ready_flag;

static int ready_cb(void *arg, char *why, size_t whylen)
{
    atomic_int *flag = arg;
    if (atomic_load(flag)) return 1;
    snprintf(why, whylen, "partition 3 restoring");
    return 0;
}

/* Live unless the flag reads 2 (a worker whose producer failed fatally). */
static int live_cb(void *arg, char *why, size_t whylen)
{
    atomic_int *flag = arg;
    if (atomic_load(flag) != 2) return 1;
    snprintf(why, whylen, "the producer failed fatally");
    return 0;
}

static void test_http_endpoints(void)
{
    char err[256] = "";
    http_rsp r;
    hl_metrics *reg = hl_metrics_create();
    fill_sample(reg);
    atomic_store(&ready_flag, 0);
    hl_http *http = hl_http_start("127.0.0.1", 0, reg, ready_cb, live_cb, &ready_flag, err,
                                  sizeof err);
    CHECKF(http != NULL, "start: %s", err);
    if (http == NULL) { hl_metrics_destroy(reg); return; }
    int port = hl_http_port(http);
    CHECKF(port > 0 && port < 65536, "port %d", port);

    CHECK(http_get(port, "GET", "/metrics", &r) == 0 && r.status == 200);
    CHECKF(strstr(r.head, "Content-Type: text/plain; version=0.0.4"), "head:\n%s", r.head);
    CHECK(strstr(r.body, "halflife_events_consumed_total{partition=\"0\"} 41\n") != NULL);
    CHECK(strstr(r.body, "halflife_batch_size_bucket{le=\"+Inf\"} 2\n") != NULL);
    CHECKF(strstr(r.body, "\nhalflife_ready 0\n") != NULL, "not ready yet:\n%s", r.body);
    CHECK(http_get(port, "GET", "/healthz", &r) == 0 && r.status == 200);
    CHECK(http_get(port, "GET", "/readyz", &r) == 0 && r.status == 503);
    CHECKF(strstr(r.body, "partition 3 restoring"), "body: %s", r.body);
    atomic_store(&ready_flag, 1);
    CHECK(http_get(port, "GET", "/readyz", &r) == 0 && r.status == 200);
    CHECK(http_get(port, "GET", "/metrics", &r) == 0 && strstr(r.body, "\nhalflife_ready 1\n"));
    atomic_store(&ready_flag, 2);  /* ready() reads non-zero as ready: only live() fails */
    CHECK(http_get(port, "GET", "/healthz", &r) == 0 && r.status == 503);
    CHECKF(strstr(r.body, "not live: the producer failed fatally"), "body: %s", r.body);
    atomic_store(&ready_flag, 1);
    CHECK(http_get(port, "GET", "/healthz", &r) == 0 && r.status == 200);
    CHECK(http_get(port, "GET", "/nope", &r) == 0 && r.status == 404);
    CHECK(http_get(port, "GET", "/metricsx", &r) == 0 && r.status == 404);
    CHECK(http_get(port, "POST", "/metrics", &r) == 0 && r.status == 405);
    /* A 405 must name the methods that work (RFC 9110 15.5.6). */
    CHECKF(strstr(r.head, "\r\nAllow: GET, HEAD") != NULL, "405 head:\n%s", r.head);
    CHECK(http_get(port, "OPTIONS", "/healthz", &r) == 0 && r.status == 405);
    CHECKF(strstr(r.head, "\r\nAllow: GET, HEAD") != NULL, "405 head:\n%s", r.head);

    /* The same port again fails with a reason naming it. */
    char want[32];
    snprintf(want, sizeof want, ":%d", port);
    hl_http *again = hl_http_start("127.0.0.1", port, reg, NULL, NULL, NULL, err, sizeof err);
    CHECKF(again == NULL && strstr(err, want), "second start: %s", err);
    hl_http_stop(again);
    CHECK(hl_http_start("not-an-ip", 0, reg, NULL, NULL, NULL, err, sizeof err) == NULL);
    CHECKF(strstr(err, "not-an-ip") != NULL, "err: %s", err);

    hl_http_stop(http);
    hl_http_stop(NULL);
    CHECK(http_get(port, "GET", "/healthz", &r) != 0);      /* stopped: refused */
    hl_metrics_destroy(reg);
}

/* metrics.bind=:: is every interface of both families, as a socket bound
 * to :: is on Linux unless told otherwise. libmicrohttpd made it IPv6 only,
 * so the kubelet's probes of a dual-stack pod's IPv4 address, and the
 * image's health check on 127.0.0.1, were refused and the pod restarted. */
static void test_http_bind_any_ipv6(void)
{
    char err[256] = "";
    http_rsp r;
    hl_metrics *reg = hl_metrics_create();
    hl_http *http = hl_http_start("::", 0, reg, NULL, NULL, NULL, err, sizeof err);
    if (http == NULL) {
        printf("SKIP test_metrics.test_http_bind_any_ipv6: no IPv6 here (%s)\n", err);
        hl_metrics_destroy(reg);
        return;
    }
    int port = hl_http_port(http);
    CHECK(http_get_at("::1", port, "GET", "/healthz", &r) == 0 && r.status == 200);
    CHECKF(http_get_at("127.0.0.1", port, "GET", "/healthz", &r) == 0 && r.status == 200,
           "bound to :: port %d: IPv4 client refused", port);
    hl_http_stop(http);
    /* One IPv6 address is that address only. */
    http = hl_http_start("::1", 0, reg, NULL, NULL, NULL, err, sizeof err);
    CHECKF(http != NULL, "start on ::1: %s", err);
    if (http != NULL) {
        port = hl_http_port(http);
        CHECK(http_get_at("::1", port, "GET", "/healthz", &r) == 0 && r.status == 200);
        CHECK(http_get_at("127.0.0.1", port, "GET", "/healthz", &r) != 0);
        hl_http_stop(http);
    }
    hl_metrics_destroy(reg);
}

/* A connected socket to 127.0.0.1:port, or -1. */
static int connect_local(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct timeval tv = {5, 0};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (fd < 0) return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* POST /metrics with a body of n bytes: the status read back, or -1 when
 * the connection broke (answered before the body was read, the client's
 * kernel sees a reset). */
static int post_body(int port, size_t n)
{
    char head[128], buf[512];
    static char chunk[65536];
    size_t sent = 0;
    ssize_t k, got = 0;
    int status = -1, fd = connect_local(port);

    if (fd < 0) return -1;
    snprintf(head, sizeof head, "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n", n);
    if (write(fd, head, strlen(head)) != (ssize_t)strlen(head)) goto out;
    memset(chunk, 'a', sizeof chunk);
    while (sent < n) {
        size_t want = n - sent < sizeof chunk ? n - sent : sizeof chunk;
        if ((k = send(fd, chunk, want, MSG_NOSIGNAL)) <= 0) goto out;
        sent += (size_t)k;
    }
    while (got < (ssize_t)sizeof buf - 1 && (k = read(fd, buf + got, sizeof buf - 1 - (size_t)got)) > 0)
        got += k;
    buf[got] = '\0';
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1) status = -1;
out:
    close(fd);
    return status;
}

/* libmicrohttpd alone kept 64 connections and then stopped accepting, so
 * 100 idle connections left a probe waiting for their 10 s timeout; a big
 * body was met with a reset instead of the 405. */
static void test_http_idle_connections_and_bodies(void)
{
    char err[256] = "";
    http_rsp r;
    int fds[100], n_open = 0;
    hl_metrics *reg = hl_metrics_create();
    hl_http *http = hl_http_start("127.0.0.1", 0, reg, NULL, NULL, NULL, err, sizeof err);
    CHECKF(http != NULL, "start: %s", err);
    if (http == NULL) { hl_metrics_destroy(reg); return; }
    int port = hl_http_port(http);
    for (int i = 0; i < 100; i++)
        if ((fds[n_open] = connect_local(port)) >= 0) n_open++;
    CHECK(n_open == 100);
    usleep(200 * 1000);             /* let the server accept them all */
    double t0 = hl_now_mono_s();
    CHECK(http_get(port, "GET", "/healthz", &r) == 0 && r.status == 200);
    CHECKF(hl_now_mono_s() - t0 < 2.0, "probe took %.1f s", hl_now_mono_s() - t0);
    for (int i = 0; i < n_open; i++) close(fds[i]);
    int st = post_body(port, 5u << 20);
    CHECKF(st == 405, "POST with 5 MB body: status %d", st);
    st = post_body(port, 17u << 20);
    CHECKF(st == -1, "POST with 17 MB body: status %d, want the connection closed", st);
    CHECK(http_get(port, "GET", "/healthz", &r) == 0 && r.status == 200);
    hl_http_stop(http);
    hl_metrics_destroy(reg);
}

/* HL_METRICS_DUMP=path: write a sample rendering for promtool, then exit. */
static int dump(const char *path)
{
    hl_metrics *reg = hl_metrics_create();
    char *out = NULL;
    size_t len = 0;
    FILE *f;
    int rc = 1;

    fill_sample(reg);
    if (hl_metrics_render(reg, &out, &len) == 0 && (f = fopen(path, "w")) != NULL) {
        rc = fwrite(out, 1, len, f) == len ? 0 : 1;
        rc |= fclose(f) != 0;
    }
    if (rc) fprintf(stderr, "test_metrics: cannot write %s\n", path);
    free(out);
    hl_metrics_destroy(reg);
    return rc;
}

int main(void)
{
    const char *dump_path = getenv("HL_METRICS_DUMP");
    if (dump_path && *dump_path) return dump(dump_path);

    RUN(test_counter_text);
    RUN(test_gauge_values);
    RUN(test_histogram_buckets);
    RUN(test_histogram_observe_n);
    RUN(test_histogram_unlabelled_and_shared_bounds);
    RUN(test_escaping);
    RUN(test_hide);
    RUN(test_drop);
    RUN(test_registration_mistakes);
    RUN(test_read_back);
    RUN(test_concurrent_updates);
    RUN(test_http_endpoints);
    RUN(test_http_idle_connections_and_bodies);
    RUN(test_http_bind_any_ipv6);
    TEST_EXIT();
}
