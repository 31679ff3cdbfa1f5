/* bench_changelog.c - what state.store=kafka costs (worker/changelog.h):
 * the flushes' cost to the state-update rate, and the restore rate.
 *
 * In one process: librdkafka's mock cluster (one broker), the worker's
 * producer and an hl_changelog on it, as the worker builds them. One JSON
 * line per figure:
 *
 *   changelog_flush   state updates/s of a 1M-user shard (dim 64, three
 *                     heads, history 32) whose active users are 1% of all
 *                     per second (a new 10k-user set each second), applied
 *                     in batches of 1024 with a flush due every second
 *                     (hl_changelog_tick between batches: the scan of the
 *                     row headers, the copy of the changed rows, their
 *                     produce); ceiling: the same loop with no store work
 *                     in the same run. Target ratio >= 0.8. Also the rows
 *                     and MB flushed per second. The file store's own cost
 *                     at its interval is bench_snapshot's snapshot_steps.
 *   changelog_restore rows/s and MB/s of hl_changelog_restore reading one
 *                     partition, from its assign to the last record applied
 *                     (the whole restore, with the watermark query and the
 *                     claim's round trip, is also printed); ceiling: a bare
 *                     consumer reading the same partition from its assign,
 *                     doing nothing with the records. Target ratio >= 0.5.
 *                     Also hl_snapshot_load of the same table from a file.
 *                     The mock keeps 5 MiB per partition (DESIGN.md
 *                     section 9), so the partition holds what fits in 4
 *                     MiB (dim 16, history 8: about 12k users), not the
 *                     200k users a real broker would; the watermarks are
 *                     checked so no dropped record hides in the figure.
 *
 * Usage: bench_changelog. HL_BENCH_USERS (default 1000000), HL_BENCH_SECONDS
 * (default 5 per phase) and HL_BENCH_ACTIVE_PCT (default 1) change the
 * flush figure's size. */
#include "changelog.h"
#include "log.h"
#include "snapshot.h"

#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define N_ITEMS 10000
#define BATCH   1024
#define FP      42

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct env {
    rd_kafka_t              *mrk;
    rd_kafka_mock_cluster_t *mock;
    const char              *bootstrap;
    hl_producer             *prod;
    rd_kafka_t              *cons;      /* stands for the group consumer */
    hl_metrics              *reg;
} env;

static rd_kafka_t *consumer(const char *bootstrap, const char *group)
{
    char err[256];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "bootstrap.servers", bootstrap, err, sizeof err);
    rd_kafka_conf_set(c, "group.id", group, err, sizeof err);
    rd_kafka_conf_set(c, "enable.auto.commit", "false", err, sizeof err);
    rd_kafka_conf_set(c, "fetch.wait.max.ms", "10", err, sizeof err);
    rd_kafka_conf_set(c, "fetch.message.max.bytes", "16777216", err, sizeof err);
    rd_kafka_conf_set(c, "queued.min.messages", "1000000", err, sizeof err);
    return rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof err);
}

static int env_start(env *e, const char *const *topics, int n_topics)
{
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "log_level", "3", err, sizeof err);
    e->mrk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
    e->mock = rd_kafka_mock_cluster_new(e->mrk, 1);
    for (int i = 0; i < n_topics; i++)
        rd_kafka_mock_topic_create(e->mock, topics[i], 1, 1);
    e->bootstrap = rd_kafka_mock_cluster_bootstraps(e->mock);
    hl_kafka_prop props[] = {{"bootstrap.servers", e->bootstrap}};
    e->prod = hl_producer_create(props, 1, NULL, err, sizeof err);
    e->cons = consumer(e->bootstrap, "bench");
    e->reg = hl_metrics_create();
    if (e->prod == NULL || e->cons == NULL) {
        fprintf(stderr, "bench_changelog: %s\n", err);
        return -1;
    }
    return 0;
}

static void env_stop(env *e)
{
    hl_producer_destroy(e->prod, 10000);
    rd_kafka_destroy(e->cons);
    rd_kafka_mock_cluster_destroy(e->mock);
    rd_kafka_destroy(e->mrk);
    hl_metrics_destroy(e->reg);
}

static hl_table_opts shape(int dim, int history)
{
    hl_table_opts o;
    char err[256];
    memset(&o, 0, sizeof o);
    hl_decay_init(&o.decay, 3, dim, hl_default_half_life_ms, err, sizeof err);
    o.history = history;
    o.expected_users = 1024;
    return o;
}

static hl_changelog *changelog(env *e, const char *topic, const hl_table_opts *o)
{
    char err[512];
    hl_changelog_opts co = {
        .topic = topic, .input_topic = "in", .bootstrap = e->bootstrap, .flush_ms = 1000,
        .model_fingerprint = FP, .topts = o, .prod = e->prod, .consumer = e->cons,
        .reg = e->reg, .create = 0, .timeout_ms = 10000,
    };
    hl_changelog *cl = hl_changelog_create(&co, err, sizeof err);
    if (cl == NULL)
        fprintf(stderr, "bench_changelog: %s\n", err);
    return cl;
}

/* ---- users and events ---------------------------------------------------- */

static char   (*names)[12];
static float   *e_in;
static int64_t  next_off, ts_ms = 1700000000000;

static void make_world(size_t users, int dim)
{
    names = malloc(users * sizeof *names);
    for (size_t u = 0; u < users; u++)
        snprintf(names[u], sizeof names[u], "u%u", (unsigned)(u % 1000000000u));
    e_in = malloc(sizeof(float) * N_ITEMS * (size_t)dim);
    for (size_t i = 0; i < (size_t)N_ITEMS * dim; i++)
        e_in[i] = (float)(rnd() % 2000) / 1000.0f - 1.0f;
}

/* Applies n events of users [first, first + span) (mod users). */
static void apply_some(hl_table *tbl, size_t users, size_t first, size_t span, int n)
{
    hl_event ev[BATCH];
    for (int i = 0; i < n; i++) {
        size_t u = (first + rnd() % span) % users;
        ev[i] = (hl_event){.user = names[u], .user_len = (uint32_t)strlen(names[u]),
                           .item = (int32_t)(rnd() % N_ITEMS), .type = 0, .w = 1.0f,
                           .ts_ms = ts_ms++, .offset = next_off++};
    }
    hl_table_apply(tbl, ev, n, e_in, N_ITEMS, NULL);
}

/* ---- changelog_flush ------------------------------------------------------ */

typedef struct phase { double events_per_s; uint64_t rows, bytes; } phase;

static phase run_phase(env *e, hl_changelog *cl, hl_table *tbl, size_t users, double secs)
{
    hl_changelog_restored r = {.next_offset = next_off, .epoch = 1};
    hl_changelog_shard *cs = cl ? hl_changelog_shard_create(cl, 0, tbl, &r) : NULL;
    uint64_t rows0 = hl_metrics_counter_sum(e->reg, "halflife_changelog_records_total");
    uint64_t bytes0 = hl_metrics_counter_sum(e->reg, "halflife_changelog_bytes_total");
    double pct = getenv("HL_BENCH_ACTIVE_PCT") ? atof(getenv("HL_BENCH_ACTIVE_PCT")) : 1;
    size_t active = (size_t)((double)users * pct / 100);
    if (active < 1) active = 1;
    double t0 = now_s(), t;
    uint64_t n = 0;
    while ((t = now_s()) - t0 < secs) {
        size_t first = (size_t)(t - t0) * active;       /* a new 1% each second */
        apply_some(tbl, users, first, active, BATCH);
        n += BATCH;
        if (cs) {
            hl_changelog_tick(cs, tbl, next_off, next_off, (int64_t)(t * 1000));
            hl_producer_poll(e->prod, 0);
        }
    }
    phase ph = {.events_per_s = (double)n / (now_s() - t0)};
    if (cs) {
        hl_changelog_flush_now(cs, tbl, next_off, (int64_t)(now_s() * 1000) + 30000);
        ph.rows = hl_metrics_counter_sum(e->reg, "halflife_changelog_records_total") - rows0;
        ph.bytes = hl_metrics_counter_sum(e->reg, "halflife_changelog_bytes_total") - bytes0;
        hl_table_on_evict(tbl, NULL, NULL);
        hl_changelog_shard_destroy(cs);
    }
    return ph;
}

static void bench_flush(void)
{
    const char *topics[] = {"in", "flush-state"};
    size_t users = getenv("HL_BENCH_USERS") ? strtoull(getenv("HL_BENCH_USERS"), NULL, 10)
                                            : 1000000;
    double secs = getenv("HL_BENCH_SECONDS") ? atof(getenv("HL_BENCH_SECONDS")) : 5;
    env e;
    if (env_start(&e, topics, 2) != 0)
        return;
    hl_table_opts o = shape(64, 32);
    char err[256];
    hl_table *tbl = hl_table_create(&o, err, sizeof err);
    hl_changelog *cl = changelog(&e, "flush-state", &o);
    make_world(users, 64);
    for (size_t u = 0; u < users; u += BATCH)           /* every user once */
        apply_some(tbl, users, u, 1, BATCH);
    for (size_t u = 0; u < users; u++) {
        hl_event ev = {.user = names[u], .user_len = (uint32_t)strlen(names[u]), .item = 1,
                       .w = 1.0f, .ts_ms = ts_ms++, .offset = next_off++};
        hl_table_apply(tbl, &ev, 1, e_in, N_ITEMS, NULL);
    }
    phase none = run_phase(&e, NULL, tbl, users, secs);
    phase kafka = run_phase(&e, cl, tbl, users, secs);
    phase none2 = run_phase(&e, NULL, tbl, users, secs);
    double ceiling = (none.events_per_s + none2.events_per_s) / 2;
    double pct = getenv("HL_BENCH_ACTIVE_PCT") ? atof(getenv("HL_BENCH_ACTIVE_PCT")) : 1;
    printf("{\"bench\":\"changelog_flush\",\"users\":%zu,\"active_share_per_s\":%g,"
           "\"flush_ms\":1000,\"figure\":%.0f,\"unit\":\"events/s\",\"ceiling\":%.0f,"
           "\"ceiling_what\":\"the same apply loop with no store work\",\"ratio\":%.3f,"
           "\"target_ratio\":0.8,\"records_flushed_per_s\":%.0f,\"mb_flushed_per_s\":%.1f}\n",
           users, pct / 100, kafka.events_per_s, ceiling, kafka.events_per_s / ceiling,
           (double)kafka.rows / secs, (double)kafka.bytes / secs / 1e6);
    fflush(stdout);
    hl_changelog_destroy(cl);
    hl_table_destroy(tbl);
    env_stop(&e);
    free(names);
    free(e_in);
}

/* ---- changelog_restore ------------------------------------------------------ */

/* A bare consumer over [0, high) of the partition: seconds, bytes. */
static double bare_read(env *e, const char *topic, int64_t high, uint64_t *bytes)
{
    rd_kafka_t *rk = consumer(e->bootstrap, "bare");
    int64_t lo, hi;
    rd_kafka_query_watermark_offsets(rk, topic, 0, &lo, &hi, 10000);
    double t0 = now_s();
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, 0)->offset = 0;
    rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    int64_t next = 0;
    *bytes = 0;
    while (next < high) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (m == NULL) continue;
        if (!m->err) {
            *bytes += m->len + m->key_len;
            next = m->offset + 1;
        }
        rd_kafka_message_destroy(m);
    }
    double s = now_s() - t0;
    rd_kafka_destroy(rk);
    return s;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void bench_restore(void)
{
    const char *topics[] = {"in", "restore-state"};
    env e;
    char err[512];
    if (env_start(&e, topics, 2) != 0)
        return;
    hl_table_opts o = shape(16, 8);
    size_t row = hl_snapshot_row_max(3, 16, 8) - HL_MAX_ID_LEN + 12;
    size_t users = (4u << 20) / (row + 12);
    hl_table *src = hl_table_create(&o, err, sizeof err);
    hl_changelog *cl = changelog(&e, "restore-state", &o);
    make_world(users, 16);
    for (int rep = 0; rep < 8; rep++)               /* full history rings */
        for (size_t u = 0; u < users; u += BATCH)
            apply_some(src, users, u, 1, BATCH);
    for (size_t u = 0; u < users; u++) {
        hl_event ev = {.user = names[u], .user_len = (uint32_t)strlen(names[u]), .item = 1,
                       .w = 1.0f, .ts_ms = ts_ms++, .offset = next_off++};
        hl_table_apply(src, &ev, 1, e_in, N_ITEMS, NULL);
    }
    hl_changelog_restored r0 = {.next_offset = -1, .epoch = 1};
    hl_changelog_shard *cs = hl_changelog_shard_create(cl, 0, src, &r0);
    hl_changelog_flush_now(cs, src, next_off, (int64_t)(now_s() * 1000) + 60000);
    hl_changelog_shard_destroy(cs);
    double t_cl[5], t_bare[5], t_all[5];
    uint64_t rows = 0, bytes = 0, bare_bytes = 0;
    int64_t low = -1, high = -1;
    for (int i = 0; i < 5; i++) {                   /* the median of 5 */
        hl_table *tbl = hl_table_create(&o, err, sizeof err);
        hl_changelog_restored r;
        if (hl_changelog_restore(cl, 0, tbl, NULL, &r, err, sizeof err) != 0)
            fprintf(stderr, "bench_changelog: restore: %s\n", err);
        t_cl[i] = r.read_s;
        t_all[i] = r.duration_s;
        rows = r.n_rows;
        bytes = r.bytes;
        low = r.low;
        high = r.high;
        hl_table_destroy(tbl);
        t_bare[i] = bare_read(&e, "restore-state", r.high, &bare_bytes);
    }
    qsort(t_cl, 5, sizeof(double), cmp_d);
    qsort(t_bare, 5, sizeof(double), cmp_d);
    qsort(t_all, 5, sizeof(double), cmp_d);
    /* the same table from a file */
    char dir[] = "/tmp/hl_bench_changelog_XXXXXX";
    double t_file = 0;
    if (mkdtemp(dir) != NULL) {
        hl_snapshot_meta m = {.partition = 0, .next_offset = next_off, .model_fingerprint = FP};
        snprintf(m.topic, sizeof m.topic, "in");
        hl_snapshot_result res;
        hl_table *back = NULL;
        if (hl_snapshot_write(NULL, dir, &m, src, 1, &res, err, sizeof err) == 0) {
            double t0 = now_s();
            hl_snapshot_load(NULL, res.path, &o, FP, &back, NULL, err, sizeof err);
            t_file = now_s() - t0;
            unlink(res.path);
        }
        hl_table_destroy(back);
        rmdir(dir);
    }
    printf("{\"bench\":\"changelog_restore\",\"users\":%zu,\"rows\":%llu,\"bytes\":%llu,"
           "\"figure\":%.0f,\"unit\":\"rows/s\",\"mb_per_s\":%.1f,\"ceiling\":%.0f,"
           "\"ceiling_what\":\"a bare consumer reading the same partition\","
           "\"ceiling_mb_per_s\":%.1f,\"ratio\":%.3f,\"target_ratio\":0.5,"
           "\"with_watermarks_and_claim_s\":%.4f,\"read_s\":%.4f,"
           "\"file_load_rows_per_s\":%.0f,\"low\":%lld,\"high\":%lld}\n",
           users, (unsigned long long)rows, (unsigned long long)bytes, (double)rows / t_cl[2],
           (double)bytes / t_cl[2] / 1e6, (double)rows / t_bare[2],
           (double)bare_bytes / t_bare[2] / 1e6, t_bare[2] / t_cl[2], t_all[2], t_cl[2],
           t_file > 0 ? (double)users / t_file : 0, (long long)low, (long long)high);
    if (low != 0)
        printf("{\"bench\":\"changelog_restore\",\"error\":\"the mock dropped records "
               "(low watermark %lld): the figure is wrong\"}\n", (long long)low);
    hl_changelog_destroy(cl);
    hl_table_destroy(src);
    env_stop(&e);
    free(names);
    free(e_in);
}

int main(void)
{
    hl_log_set_level(HL_LOG_WARN);
    bench_restore();
    bench_flush();
    return 0;
}
