/* bench_worker.c - the worker end to end, as processes over TCP: a
 * `halflife broker`, `halflife run`, and this program producing events and
 * reading the results (issue 4's benchmarks). One JSON line per figure:
 *
 *  worker_state_only: events/s with list refresh off (recs.enabled=false),
 *    over a whole 1.5M-event topic on 32 partitions (100k users), read off the worker's
 *    /metrics (polled every 10 ms). Ceiling: a do-nothing librdkafka consumer (same
 *    queued.min.messages and fetch settings) reading the same topic from
 *    the same broker in the same run. Each repetition is a pair, the
 *    ceiling consumer then the worker, seconds apart; "ratio" is the median
 *    of the pairs' ratios ("ratios" lists them), "value" and "ceiling" the
 *    medians of each side. Pairing is what makes the figure hold on a
 *    shared 2-core machine: another process's load comes and goes over
 *    seconds to minutes, so a ratio of two medians taken from different
 *    moments swung between 0.35 and 0.9 for the same binary, while the two
 *    halves of one pair see the same load. Each read lasts about half a
 *    second, hence 7 pairs (REPS_STATE), not 3. The worker runs
 *    worker.threads=2, its default on this 2-core machine; its shard
 *    threads share the cores with its own librdkafka fetch thread, as in
 *    production, while the ceiling's one application thread does nothing.
 *    The ceiling consumer runs in a fresh process of its own, as the worker
 *    does: run inside this program, its second and later reads reused the
 *    heap pages the first had faulted in, which on this VM read 20% faster
 *    (median 4.66M vs 3.85M events/s over 9 interleaved reads of each).
 *    The model is a small one, 1,000 items of dim 16 (STATE_ITEMS,
 *    STATE_DIM; the line prints them), not the dim-64 shape of bench_state
 *    and worker_lists: an update's cost grows with heads x dim, so this
 *    figure says the worker keeps up with its consumer at that shape only.
 *  worker_lists: lists/s with a 100k-item, dim-64 model, k 20, where
 *    nearly every event is a different user (500k users) so every event
 *    triggers a refresh. Ceiling: hl_ranker_refresh in this process on the
 *    same model and users like the stream's, batches of 256, in as many
 *    threads at once as the worker has (bench_worker_model.h),
 *    with the scoring the worker's recs.scoring=auto picks on this CPU
 *    (two-stage int8 where the vector kernel runs); the exact fp32 rate is
 *    printed beside it (ceiling_fp32_exact), not a ceiling for int8.
 *  worker_event_to_publish: p50/p99 latency at half the highest rate the
 *    worker sustains live (ascending probes from a fraction of the lists/s
 *    above, which is a catch-up rate with full 256-user refreshes; live
 *    batches are small and a refresh scans all of e_out whatever its user
 *    count). Events are stamped with the wall clock; for each list read
 *    back, latency = when this program's reader got it from the output
 *    topic minus its generated_at (the newest event's time): where a
 *    downstream consumer sees the list ("e2e_ends"). Target p99 < 25 ms
 *    (issue 14). Ending at the list's Kafka timestamp (the worker's
 *    produce call) left out delivery and the reader's fetch, so it could
 *    read below the worker's own share; it is printed beside it
 *    (to_produce_call_ms). The same line holds the worker's own share, fetched to
 *    delivered (halflife_fetch_to_delivery_seconds, target p99 < 10 ms),
 *    and the path by stage (halflife_event_stage_seconds), both read from
 *    the worker's /metrics before and after the window. The mock broker
 *    holds an empty fetch for the whole fetch.wait.max.ms whatever arrives
 *    (rd_kafka_mock_handle_Fetch in librdkafka 2.0.2 sets the response's
 *    retry time to now + MaxWait when it has no data, and MinBytes is read
 *    and ignored), so a record that lands just after an empty fetch waits
 *    up to that long: the worker, the reader and the floor below set it to
 *    2 ms (10 ms put 4-5 ms on the broker stage's p50). The live stream's
 *    producer lingers 0 ms (5 ms put 5 ms more there): an application that
 *    wants fresh lists does not hold its events back. After the window,
 *    kafka_floor: a bare producer and consumer with those settings at the
 *    same rate through the same broker, no worker (bench_kafka_floor.h),
 *    the floor the broker and deliver stages are read against: the line
 *    gives the floor's one-hop p99s and the ratios p99 / (2 x hop p99; the
 *    event in and the list out each cross the broker) and worker p99 /
 *    ack p99. The window
 *    runs on topics of its own (b7, b7-recs) with a fresh worker, not on
 *    the probes' (bench_latency() says why).
 *  worker_live_rate: that highest live rate against the catch-up lists/s
 *    of worker_lists in the same run (the ceiling). Target ratio >= 0.5.
 *    The same line holds broker_floor, the highest rate the broker path
 *    sustains alone by the same probes and criterion, and ratio_to_floor.
 *    A live worker makes librdkafka's mock broker (one thread, on the
 *    same 2 cores) carry every event twice, the events in and the lists
 *    out, so the floor is two bare producer -> consumer streams at once.
 *    The mock's cost per record grows with the records it holds: it
 *    answers a fetch with at most one message set per partition and finds
 *    that set by walking the partition's sets from the oldest
 *    (rd_kafka_mock_msgset_find, "FIXME: Maintain an index", librdkafka
 *    2.0.2), which was 29% of its samples at 2,500 events/s (perf); its
 *    kernel side (a small request and response per record) 54%. Catch-up
 *    reads a topic filled in large sets and pays neither.
 *
 * Medians of 3 repetitions (7 pairs for the state-only figure, 1 for the
 * latency run). The mock broker keeps
 * at most 5 MiB per partition (DESIGN.md section 9): the watermarks are
 * checked after producing, so a figure never hides lost data.
 * Usage: bench_worker [halflife binary]  (default: build/halflife);
 * bench_worker --ceiling BOOTSTRAP TOPIC GROUP N is the ceiling consumer's
 * own process (ceiling_consumer() starts it). */
#include "bench_args.h"

#include "codec.h"
#include "model.h"
#include "producer.h"
#include "qscore.h"
#include "rank.h"
#include "synth.h"
#include "table.h"

#include <arpa/inet.h>
#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REPS        3
#define REPS_STATE  7
#define N_STATE     1500000
#define STATE_USERS 100000
#define STATE_ITEMS 1000      /* worker_state_only's model: small (the header) */
#define STATE_DIM   16
#define N_LISTS     40000
#define PARTS       32
static int THREADS = 2;   /* HL_BENCH_THREADS */
#define LAT_SECONDS 10
#define WARMUP_S    3

static const char *hl_bin = "build/halflife";
/* The live path's client settings (the header says why); env overrides
 * for A/B runs: HL_BENCH_FETCH_WAIT, HL_BENCH_LINGER. */
static const char *fetch_wait = "2", *live_linger = "0";
static char tmp[64], bootstrap[256];
static pid_t broker_pid;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_worker: %s\n", what);
    if (broker_pid > 0)
        kill(broker_pid, SIGTERM);
    exit(1);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

/* ---- processes --------------------------------------------------------- */

/* fork/exec argv with stdout and stderr to log (or stdout to *out_fd). */
static pid_t spawn(char *const argv[], const char *log, int *out_fd)
{
    int pfd[2] = {-1, -1};
    if (out_fd && pipe(pfd) != 0)
        die("pipe");
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 2);
        dup2(out_fd ? pfd[1] : fd, 1);
        execv(argv[0], argv);
        _exit(127);
    }
    if (out_fd) {
        close(pfd[1]);
        *out_fd = pfd[0];
    }
    return pid;
}

static int stop(pid_t pid)
{
    int st = 0;
    kill(pid, SIGTERM);
    waitpid(pid, &st, 0);
    return st;
}

static void start_broker(void)
{
    char log[128], parts[16];
    int fd;
    snprintf(log, sizeof log, "%s/broker.log", tmp);
    snprintf(parts, sizeof parts, "%d", PARTS);
    char *argv[] = {(char *)hl_bin, "broker", "--partitions", parts, "--topics",
                    "b1,b2,b3,b2-recs,b3-recs,b4,b5,b6,b7,b7-recs", NULL};
    broker_pid = spawn(argv, log, &fd);
    FILE *f = fdopen(fd, "r");
    if (f == NULL || fgets(bootstrap, sizeof bootstrap, f) == NULL)
        die("halflife broker printed no address");
    bootstrap[strcspn(bootstrap, "\r\n")] = '\0';
}

static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    bind(s, (struct sockaddr *)&a, sizeof a);
    getsockname(s, (struct sockaddr *)&a, &len);
    close(s);
    return ntohs(a.sin_port);
}

/* Starts `halflife run` on topic with extra -X pairs (NULL-terminated). */
static pid_t start_worker(const char *topic, const char *group, const char *model,
                          int port, const char *const *extra, const char *log)
{
    char *argv[64];
    static char buf[16][512];
    int n = 0, b = 0;
    argv[n++] = (char *)hl_bin;
    argv[n++] = "run";
#define X(...) do { snprintf(buf[b], sizeof buf[b], __VA_ARGS__); \
                    argv[n++] = "-X"; argv[n++] = buf[b++]; } while (0)
    X("kafka.bootstrap.servers=%s", bootstrap);
    X("input.topic=%s", topic);
    X("group.id=%s", group);
    X("model.path=%s", model);
    X("metrics.port=%d", port);
    X("snapshot.dir=%s/snap-%s", tmp, group);
    X("worker.threads=%d", THREADS);
    X("kafka.fetch.wait.max.ms=%s", fetch_wait);
    X("dlq.topic=");
#undef X
    for (int i = 0; extra && extra[i]; i++) {
        argv[n++] = "-X";
        argv[n++] = (char *)extra[i];
    }
    static char more[512];               /* key=value ... for experiments */
    snprintf(more, sizeof more, "%s", getenv("HL_BENCH_X") ? getenv("HL_BENCH_X") : "");
    for (char *kv = strtok(more, " "); kv != NULL && n < 62; kv = strtok(NULL, " ")) {
        argv[n++] = "-X";
        argv[n++] = kv;
    }
    argv[n] = NULL;
    return spawn(argv, log, NULL);
}

static char resp[1 << 20];

/* The body of 127.0.0.1:port/metrics in resp; NULL if it does not answer. */
static char *metrics_body(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
        close(s);
        return NULL;
    }
    const char *req = "GET /metrics HTTP/1.0\r\n\r\n";
    if (write(s, req, strlen(req)) < 0) {
        close(s);
        return NULL;
    }
    size_t got = 0;
    ssize_t r;
    while ((r = read(s, resp + got, sizeof resp - 1 - got)) > 0)
        got += (size_t)r;
    close(s);
    resp[got] = '\0';
    char *body = strstr(resp, "\r\n\r\n");
    return body ? body + 4 : NULL;
}

/* Sum of the samples of a metric on 127.0.0.1:port/metrics; -1 if the
 * endpoint does not answer. */
static double metric(int port, const char *name)
{
    char *body = metrics_body(port);
    if (body == NULL)
        return -1;
    double sum = 0;
    size_t nl = strlen(name);
    for (char *line = body; line && *line;) {
        char *next = strchr(line, '\n');
        if (strncmp(line, name, nl) == 0 && (line[nl] == ' ' || line[nl] == '{')) {
            char *val = line[nl] == '{' ? strchr(line, '}') : line + nl;
            if (val)
                sum += strtod(strchr(val, ' '), NULL);
        }
        line = next ? next + 1 : NULL;
    }
    return sum;
}

#include "bench_kafka_floor.h"

/* ---- producing --------------------------------------------------------- */

/* linger.ms 5 to fill topics fast; the live stream's is live_linger. */
static hl_producer *bench_producer(const char *linger)
{
    char err[512];
    hl_kafka_prop props[] = {{"bootstrap.servers", bootstrap}, {"linger.ms", linger},
                             {"batch.num.messages", "10000"},
                             {"enable.idempotence", "false"}, {"socket.nagle.disable", "true"}};
    hl_producer *p = hl_producer_create(props, 5, NULL, err, sizeof err);
    if (p == NULL)
        die(err);
    return p;
}

static hl_codec *bench_codec(void)
{
    char err[512];
    hl_codec_opts o = {.input_framing = HL_FRAMING_CONFLUENT, .output_framing = HL_FRAMING_CONFLUENT,
                       .schemas_dir = "schemas", .output_schema_id = 2,
                       .min_ts_ms = 0, .max_ts_ms = INT64_MAX};
    hl_codec *c = hl_codec_create(&o, err, sizeof err);
    if (c == NULL)
        die(err);
    return c;
}

static void send_synth(hl_producer *p, hl_codec *c, const char *topic, hl_synth *s,
                       int64_t ts_override)
{
    hl_synth_event se;
    uint8_t buf[1024];
    char err[256];
    hl_synth_next(s, &se);
    hl_codec_event ev = {se.user, se.user_len, se.item, se.item_len, se.type,
                         ts_override ? ts_override : se.ts_ms, se.weight, se.has_weight};
    int len = hl_codec_encode_event(c, &ev, buf, sizeof buf);
    if (len < 0 || hl_producer_send(p, topic, -1, se.user, se.user_len, buf, (size_t)len,
                                    NULL, NULL, err, sizeof err) != 0)
        die("produce failed");
}

static int64_t topic_count(rd_kafka_t *rk, const char *topic)
{
    int64_t total = 0, lo, hi;
    for (int p = 0; p < PARTS; p++) {
        if (rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 10000))
            die("watermarks");
        if (lo != 0)
            die("the broker dropped data (low watermark > 0): spread over more partitions");
        total += hi;
    }
    return total;
}

/* Produces n synthetic events with users drawn from n_users as fast as
 * possible and checks the broker holds all of them. */
static void fill_topic(const char *topic, int n, int n_users, int n_items)
{
    hl_producer *p = bench_producer("5");
    hl_codec *c = bench_codec();
    hl_synth_opts so;
    hl_synth_opts_default(&so);
    so.n_users = n_users;
    so.n_items = n_items;
    so.n_topics = 100;
    hl_synth *s = hl_synth_create(&so, NULL, 0);
    for (int i = 0; i < n; i++) {
        send_synth(p, c, topic, s, 0);
        if ((i & 1023) == 0)
            hl_producer_poll(p, 0);
    }
    rd_kafka_flush(hl_producer_handle(p), 60000);
    if (topic_count(hl_producer_handle(p), topic) != n)
        die("the broker does not hold every event produced");
    hl_synth_destroy(s);
    hl_codec_destroy(c);
    hl_producer_destroy(p, 1000);
}

#include "bench_worker_ceiling.h"

/* ---- the worker's rate ------------------------------------------------- */

/* Polls the worker's /metrics every 10 ms until `events` events were
 * consumed; returns the rate of what_metric from the first poll that saw
 * a consumed event to the one that saw them all (as the ceiling). */
static double worker_rate(int port, int events, const char *what_metric)
{
    double t10 = 0, t90 = 0, v10 = 0, v90 = 0, deadline = now_s() + 120;
    struct timespec nap = {0, 10 * 1000000L};
    while (now_s() < deadline) {
        double c = metric(port, "halflife_events_consumed_total");
        if (c > 0 && !t10) { t10 = now_s(); v10 = metric(port, what_metric); }
        if (c >= events && !t90) { t90 = now_s(); v90 = metric(port, what_metric); }
        if (c >= events)
            break;
        nanosleep(&nap, NULL);
    }
    if (!t90)
        die("the worker did not consume every event in time");
    return (v90 - v10) / (t90 - t10);
}

static double worker_run(const char *topic, const char *group, const char *model, int events,
                         const char *const *extra, const char *what_metric)
{
    char log[256];
    int port = free_port();
    snprintf(log, sizeof log, "%s/worker-%s.log", tmp, group);
    pid_t pid = start_worker(topic, group, model, port, extra, log);
    double r = worker_rate(port, events, what_metric);
    int st = stop(pid);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        die("the worker did not exit 0 on SIGTERM");
    return r;
}

#include "bench_worker_model.h"

/* ---- the figures ------------------------------------------------------- */

static void bench_state_only(const char *model)
{
    double w[REPS_STATE], c[REPS_STATE], r[REPS_STATE];
    char group[32], ratios[REPS_STATE * 8] = "";
    const char *extra[] = {"recs.enabled=false", NULL};
    fill_topic("b1", N_STATE, STATE_USERS, STATE_ITEMS);
    for (int rep = 0; rep < REPS_STATE; rep++) {
        snprintf(group, sizeof group, "ceil%d", rep);
        c[rep] = ceiling_consumer("b1", group, N_STATE);
        snprintf(group, sizeof group, "state%d", rep);
        w[rep] = worker_run("b1", group, model, N_STATE, extra, "halflife_events_consumed_total");
        r[rep] = w[rep] / c[rep];
        snprintf(ratios + strlen(ratios), sizeof ratios - strlen(ratios), "%s%.2f",
                 rep ? "," : "", r[rep]);
    }
    double wm = median(w, REPS_STATE), cm = median(c, REPS_STATE);
    printf("{\"bench\":\"worker_state_only\",\"events\":%d,\"partitions\":%d,\"threads\":%d,"
           "\"users\":%d,\"items\":%d,\"dim\":%d,"
           "\"value\":%.4g,\"unit\":\"events/s\",\"ceiling\":%.4g,\"ratio\":%.2f,"
           "\"ratios\":[%s]}\n",
           N_STATE, PARTS, THREADS, STATE_USERS, STATE_ITEMS, STATE_DIM, wm, cm,
           median(r, REPS_STATE), ratios);
    fflush(stdout);
}

static double bench_lists(const char *model)
{
    double w[REPS];
    char group[32];
    const char *extra[] = {"output.topic=b2-recs", "recs.k=20", NULL};
    /* The worker's recs.scoring=auto is two-stage where the int8 kernel
     * has its vector path (config.c), so that is the ceiling; a ratio to
     * the fp32 ceiling would compare two different scorers. */
    int two = hl_qscore_has_vector_kernel();
    double ceil = ranker_ceiling(model, two ? HL_SCORING_TWO_STAGE : HL_SCORING_EXACT);
    double fp32 = two ? ranker_ceiling(model, HL_SCORING_EXACT) : ceil;
    fill_topic("b2", N_LISTS, 500000, 100000);
    for (int rep = 0; rep < REPS; rep++) {
        snprintf(group, sizeof group, "lists%d", rep);
        w[rep] = worker_run("b2", group, model, N_LISTS, extra, "halflife_lists_published_total");
    }
    double wm = median(w, REPS);
    printf("{\"bench\":\"worker_lists\",\"items\":100000,\"dim\":64,\"k\":20,\"threads\":%d,"
           "\"value\":%.4g,\"unit\":\"lists/s\",\"ceiling\":%.4g,\"ratio\":%.2f,"
           "\"ceiling_is\":\"hl_ranker_refresh lists/s, threads at once, batch 256, "
           "%s scoring (the worker's recs.scoring=auto here)\",\"ceiling_fp32_exact\":%.4g,"
           "\"ratio_to_fp32\":%.2f}\n",
           THREADS, wm, ceil, wm / ceil, two ? "two-stage int8" : "exact fp32", fp32, wm / fp32);
    fflush(stdout);
    return wm;
}

#include "bench_worker_live.h"
#include "bench_worker_hist.h"
#include "bench_holes.h"

/* The broker path's own floor at the latency window's rate, right after
 * it (the same load): the live producer's settings and the worker's
 * consumer settings, no worker (bench_kafka_floor.h). Returns the p99 of
 * one hop, produce to fetch (ms); *ack99 the produce to ack p99. */
static double latency_floor(double rate, double *ack99)
{
    const char *pkv[] = {"linger.ms", live_linger, "enable.idempotence", "false",
                         "socket.nagle.disable", "true", NULL};
    const char *ckv[] = {"fetch.wait.max.ms", fetch_wait, "queued.min.messages", "1000000",
                         "socket.nagle.disable", "true", NULL};
    return bench_kafka_floor("kafka_floor", "b4", rate, 1.0, 5.0, pkv, ckv, ack99);
}

/* The live rate's ceiling: the broker path alone carrying two streams at
 * the worker probe's rates and criterion (bench_kafka_floor.h), with the
 * live producer's and the worker's consumer settings. */
static double live_floor(double catchup)
{
    static const char *const topics[2] = {"b5", "b6"};
    const char *pkv[] = {"linger.ms", live_linger, "enable.idempotence", "false",
                         "socket.nagle.disable", "true", NULL};
    const char *ckv[] = {"fetch.wait.max.ms", fetch_wait, "queued.min.messages", "1000000",
                         "socket.nagle.disable", "true", NULL};
    return floor_sustainable(topics, catchup, live_frac, N_LIVE_FRAC, pkv, ckv);
}

/* Starts a worker on topic (its lists to <topic>-recs, group "group")
 * and a reader of its lists, and warms both up with a slow stream. */
static pid_t live_start(live *L, const char *model, const char *topic, const char *group)
{
    char log[256], out[96], recs[64];
    long sent;
    snprintf(recs, sizeof recs, "%s-recs", topic);
    snprintf(out, sizeof out, "output.topic=%s", recs);
    const char *extra[] = {out, NULL};
    L->topic = topic;
    L->port = free_port();
    L->total = 0;
    snprintf(log, sizeof log, "%s/worker-%s.log", tmp, group);
    pid_t pid = start_worker(topic, group, model, L->port, extra, log);
    L->reader = latency_reader(recs);
    double deadline = now_s() + 30;
    while (metric(L->port, "halflife_assigned_partitions") < PARTS && now_s() < deadline)
        usleep(100000);
    live_run(L, 100, WARMUP_S, 0, &sent);       /* fetchers, first lists, the reader */
    live_drain(L);
    return pid;
}

/* CPU seconds pid has used so far (user + system, /proc/pid/stat). */
static double proc_cpu_s(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');        /* the name may hold spaces */
    unsigned long ut = 0, st = 0;
    if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
                            &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static void live_stop(live *L, pid_t pid)
{
    stop(pid);
    rd_kafka_consumer_close(L->reader);
    rd_kafka_destroy(L->reader);
}

/* The host's stops of this VM's vCPUs during the latency window
 * (bench_holes.h): how many, the longest, and their share of the window
 * per vCPU. A list whose path crossed a hole waited for it: when the
 * share nears 1%, the p99s above are the machine's as much as ours. */
static void print_holes(const sentinels *ss, double window_s)
{
    if (ss == NULL || window_s <= 0)
        return;
    int n;
    double longest = longest_hole(ss, &n);
    printf(",\"machine_holes\":%d,\"longest_hole_ms\":%.1f,\"hole_share\":%.4f,"
           "\"sentinel\":\"%s\"", n, longest * 1e3, holes_total(ss) / (window_s * ss->n_cpu),
           ss->fifo ? "fifo" : "normal");
}

/* The latency window's producer, codec and synthetic stream: 500,000
 * users over 100,000 items. */
static void latency_source(live *L)
{
    L->p = bench_producer(live_linger);
    L->c = bench_codec();
    hl_synth_opts so;
    hl_synth_opts_default(&so);
    so.n_users = 500000;
    so.n_items = 100000;
    so.n_topics = 100;
    L->s = hl_synth_create(&so, NULL, 0);
}

/* What the latency window measured besides lat[] and lat_prod[]. */
typedef struct lat_window {
    worker_hists before, after;
    double       cpu_s, lists, batches, window_s;
    sentinels   *holes;
    long         sent;
    int          n_lat;
} lat_window;

/* Runs the window at rate on the worker pid, reading its histograms,
 * CPU and counters on both sides and the host's holes meanwhile. */
static void latency_window(live *L, pid_t pid, double rate, lat_window *win)
{
    /* The window's share is read from the worker's own histograms; the
     * warm second before it is counted there too (its lists settle the
     * same way), a small bias towards the steady state. */
    worker_hists_read(L->port, &win->before);
    double cpu0 = proc_cpu_s(pid), lists0 = metric(L->port, "halflife_lists_published_total");
    double bat0 = metric(L->port, "halflife_batch_size_count");
    win->holes = sentinels_start();     /* the host's stops of a vCPU */
    double hw0 = wall_s();
    win->sent = 0;
    win->n_lat = rate > 0 ? live_run(L, rate, 1.0, LAT_SECONDS, &win->sent) : 0;
    win->window_s = wall_s() - hw0;
    if (win->holes != NULL)
        sentinels_stop(win->holes);
    worker_hists_read(L->port, &win->after);
    win->cpu_s = proc_cpu_s(pid) - cpu0;
    win->lists = metric(L->port, "halflife_lists_published_total") - lists0;
    win->batches = metric(L->port, "halflife_batch_size_count") - bat0;
}

static void print_live_rate(double sustained, double catchup, double floor_rate)
{
    printf("{\"bench\":\"worker_live_rate\",\"items\":100000,\"dim\":64,\"threads\":%d,"
           "\"value\":%.0f,\"unit\":\"events/s sustained live\",\"ceiling\":%.0f,"
           "\"ceiling_is\":\"catch-up lists/s in this run\",\"ratio\":%.3f,"
           "\"target_ratio\":0.5,\"met\":%s,\"broker_floor\":%.0f,"
           "\"broker_floor_is\":\"two bare producer-consumer streams, same probe\","
           "\"ratio_to_floor\":%.3f}\n", THREADS, sustained, catchup,
           catchup > 0 ? sustained / catchup : 0, sustained >= 0.5 * catchup ? "true" : "false",
           floor_rate, floor_rate > 0 ? sustained / floor_rate : 0);
}

/* worker_event_to_publish: the window's end-to-end and worker-share
 * quantiles against the broker's floor (hop99, ack99: latency_floor), its cost per list, its stages
 * and the host's holes. */
static void print_latency(const lat_window *win, double rate, double sustained, double hop99,
                          double ack99)
{
    int n_lat = win->n_lat;
    qsort(lat, (size_t)n_lat, sizeof *lat, cmp_double);
    qsort(lat_prod, (size_t)n_lat, sizeof *lat_prod, cmp_double);
    double p50 = lat[n_lat / 2], p99 = lat[(int)(n_lat * 0.99)];
    double w50 = hist_quantile_ms(&win->before.share, &win->after.share, 0.5);
    double w99 = hist_quantile_ms(&win->before.share, &win->after.share, 0.99);
    printf("{\"bench\":\"worker_event_to_publish\",\"rate\":%.0f,\"sustainable_live\":%.0f,"
           "\"events\":%ld,\"lists\":%d,\"p50_ms\":%.1f,\"p99_ms\":%.1f,\"value\":%.1f,"
           "\"unit\":\"ms p99\",\"target\":25,\"met\":%s,\"worker_p50_ms\":%.2f,"
           "\"worker_p99_ms\":%.2f,\"worker_target\":10,\"worker_met\":%s,"
           "\"fetch_wait_max_ms\":%s,\"producer_linger_ms\":%s,", rate, sustained, win->sent,
           n_lat, p50, p99, p99, p99 < 25 ? "true" : "false", w50, w99,
           w99 >= 0 && w99 < 10 ? "true" : "false", fetch_wait, live_linger);
    /* What the worker's process spent per list in the window (all its
     * threads, librdkafka's included): the figure batch.cpu.budget trades. */
    printf("\"worker_cpu_ms_per_list\":%.3f,\"lists_per_batch\":%.2f,",
           win->lists > 0 ? 1000 * win->cpu_s / win->lists : 0,
           win->batches > 0 ? win->lists / win->batches : 0);
    printf("\"e2e_ends\":\"the list read back from the output topic by a consumer\","
           "\"to_produce_call_ms\":[%.1f,%.1f],\"floor_hop_p99_ms\":%.2f,"
           "\"floor_ack_p99_ms\":%.2f,\"p99_to_two_hops\":%.2f,\"worker_p99_to_floor_ack\":%.2f,",
           lat_prod[n_lat / 2], lat_prod[(int)(n_lat * 0.99)], hop99, ack99,
           hop99 > 0 ? p99 / (2 * hop99) : 0, ack99 > 0 ? w99 / ack99 : 0);
    print_stages(&win->before, &win->after);
    print_holes(win->holes, win->window_s);
    printf(",\"ceiling\":null}\n");
    fflush(stdout);
}

/* The probes (live_sustainable) run on b3; the latency window on b7 with
 * a fresh worker: the mock walks a partition's message sets from the
 * oldest to answer a fetch (bench_worker's header), so on b3 the window
 * would pay for every set the probes left there (a run with one probe
 * more saw its window's broker stage p50 at 1 s). */
static void bench_latency(const char *model, double catchup, double fixed_rate)
{
    live L = {0};
    lat_window win;
    latency_source(&L);
    double sustained = 2 * fixed_rate;
    if (fixed_rate <= 0) {
        pid_t probe_pid = live_start(&L, model, "b3", "probe");
        sustained = live_sustainable(&L, catchup);
        live_stop(&L, probe_pid);
    }
    double rate = sustained / 2;
    pid_t pid = live_start(&L, model, "b7", "lat");
    latency_window(&L, pid, rate, &win);
    live_stop(&L, pid);
    hl_synth_destroy(L.s);
    hl_codec_destroy(L.c);
    hl_producer_destroy(L.p, 1000);
    if (win.n_lat < 100)
        die("too few lists read back for the latency figure");
    double floor_rate = fixed_rate <= 0 ? live_floor(catchup) : 0;
    double ack99 = 0, hop99 = latency_floor(rate, &ack99);     /* prints kafka_floor */
    if (fixed_rate <= 0)
        print_live_rate(sustained, catchup, floor_rate);
    print_latency(&win, rate, sustained, hop99, ack99);
    free(win.holes);
}

/* The first argument bench_worker cannot take (NULL: none). */
static const char *bad_arg(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--ceiling") == 0)
        return argc == 6 ? NULL : argv[1];
    if (argc > 2)
        return argv[2];
    return argc == 2 && argv[1][0] == '-' ? argv[1] : NULL;
}

static const char usage[] =
    "usage: bench_worker [HALFLIFE]\n"
    "  HALFLIFE  the halflife binary (default $HL_HALFLIFE or build/halflife)\n"
    "Environment: HL_BENCH_ONLY=state|lists|latency|floor|floor-live, HL_BENCH_RATE,\n"
    "HL_BENCH_THREADS, HL_BENCH_FETCH_WAIT, HL_BENCH_LINGER, HL_BENCH_X (the comments\n"
    "in bench_worker.c). Prints JSON lines.\n"
    "(bench_worker --ceiling BOOTSTRAP TOPIC GROUP N is its own ceiling consumer.)\n";

int main(int argc, char **argv)
{
    char small[128], big[128];
    bench_args("bench_worker", argc, argv, usage, bad_arg(argc, argv));
    if (argc == 6 && strcmp(argv[1], "--ceiling") == 0) {     /* ceiling_consumer() */
        snprintf(bootstrap, sizeof bootstrap, "%s", argv[2]);
        printf("%.6g\n", ceiling_read(argv[3], argv[4], atoi(argv[5])));
        return 0;
    }
    if (argc > 1)
        hl_bin = argv[1];
    else if (getenv("HL_HALFLIFE"))
        hl_bin = getenv("HL_HALFLIFE");
    if (access(hl_bin, X_OK) != 0)
        die("no halflife binary (build/halflife, argv[1] or HL_HALFLIFE)");
    snprintf(tmp, sizeof tmp, "/tmp/hl_bench_worker_XXXXXX");
    if (mkdtemp(tmp) == NULL)
        die("mkdtemp");
    signal(SIGPIPE, SIG_IGN);
    if (getenv("HL_BENCH_FETCH_WAIT"))
        fetch_wait = getenv("HL_BENCH_FETCH_WAIT");
    if (getenv("HL_BENCH_LINGER"))
        live_linger = getenv("HL_BENCH_LINGER");
    if (getenv("HL_BENCH_THREADS"))
        THREADS = atoi(getenv("HL_BENCH_THREADS"));
    snprintf(small, sizeof small, "%s/small.hlm", tmp);
    snprintf(big, sizeof big, "%s/big.hlm", tmp);
    write_model(small, STATE_ITEMS, STATE_DIM);
    write_model(big, 100000, 64);
    start_broker();
    /* HL_BENCH_ONLY=state|lists|latency runs one figure (latency at
     * HL_BENCH_RATE events/s instead of half the live sustainable rate);
     * floor-live probes the broker floor alone from HL_BENCH_RATE as the
     * catch-up rate. */
    const char *only = getenv("HL_BENCH_ONLY"), *rate = getenv("HL_BENCH_RATE");
    if (only && !strcmp(only, "floor-live")) {  /* the live ceiling alone, base HL_BENCH_RATE */
        printf("{\"bench\":\"broker_floor_live_rate\",\"value\":%.0f,\"base\":%s}\n",
               live_floor(rate ? atof(rate) : 12000), rate ? rate : "12000");
        only = "none";
    }
    if (only && !strcmp(only, "floor")) {   /* experiments: HL_FLOOR_P / HL_FLOOR_C */
        static char pb[512], cb[512];
        const char *pkv[32], *ckv[32];
        floor_kv(getenv("HL_FLOOR_P"), pb, sizeof pb, pkv, 32);
        floor_kv(getenv("HL_FLOOR_C"), cb, sizeof cb, ckv, 32);
        bench_kafka_floor("kafka_floor", "b4", rate ? atof(rate) : 800, 1.0, 10.0, pkv, ckv, NULL);
        only = "none";
    }
    if (!only || !strcmp(only, "state"))
        bench_state_only(small);
    double lists = 0;
    if (!only || !strcmp(only, "lists") || (!strcmp(only, "latency") && !rate))
        lists = bench_lists(big);
    if (!only || !strcmp(only, "latency"))
        bench_latency(big, lists, rate ? atof(rate) : 0);
    stop(broker_pid);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    return system(cmd) != 0;
}
