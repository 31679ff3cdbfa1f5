/* bench_changelog.c - what state.store=kafka costs (worker/changelog.h)
 * against state.store=file (worker/persist.h): the flushes' cost to the
 * state-update rate, and the restore rate.
 *
 * In one process: librdkafka's mock cluster, the worker's producer, an
 * hl_changelog and an hl_persist, as the worker builds them. One JSON line
 * per figure:
 *
 *   changelog_flush   state updates/s of a 1M-user shard (dim 64, three
 *                     heads, full history rings of 32: 1.2 KB rows) whose
 *                     active users are a share of all per second (a new
 *                     set each second), applied in batches of 1024 with one
 *                     store tick after each batch, as a worker thread runs
 *                     them (thread.c). The figure is state.store=kafka
 *                     flushing every second (the scan of the row headers,
 *                     the copy of the changed rows, their produce); beside
 *                     it state.store=file snapshotting every second (the
 *                     owner's steps; a committer thread writes, fsyncs,
 *                     renames), and the ceiling: the same loop with no
 *                     store. Each is the median of ROUNDS phases taken in
 *                     turn, each phase after a warm-up of one interval.
 *                     Target: kafka >= 0.8 x file ("vs_file"). One line per
 *                     active share: 0.1%, 1%, 10% per second.
 *   file_snapshot_under_load  seconds from begin to durable of one
 *                     file snapshot of that shard while the loop runs: at
 *                     1M users (1.6 GB) it is longer than the 1 s interval,
 *                     so the file store snapshots back to back.
 *   changelog_restore rows/s and MB/s of hl_changelog_restore reading a
 *                     200k-user partition (dim 64, history 32), from its
 *                     assign to the last record applied (read_s); the
 *                     ceiling: a bare consumer with the same settings
 *                     reading the same partition, doing nothing with the
 *                     records ("ceiling"), and the same consumer copying
 *                     each record into fresh memory the size of the
 *                     restored table ("ceiling_fresh": what building a
 *                     table in untouched memory costs on these VMs, where
 *                     the kernel zeroing new pages dominates); beside it
 *                     hl_snapshot_load of the same
 *                     table from a file in the page cache. Medians of
 *                     REPS runs after one warm-up run. Target ratio >= 0.5.
 *                     The mock keeps at most 5 MiB per partition
 *                     (rd_kafka_mock_partition_init sets it, with no way
 *                     to change it, in librdkafka 2.0.2 as in master) but
 *                     never drops the newest message set, whatever its
 *                     size: so the partition is written as ONE message set
 *                     (the producer's batch.size and message.max.bytes
 *                     raised), and the restores' claims go to a second
 *                     mock cluster, so no later message set trims it. The
 *                     watermarks are checked: a dropped record fails the
 *                     line. The shape differs from a real broker's: one
 *                     fetch brings the whole partition, so the read does
 *                     not overlap the apply as it would over many fetches.
 *   changelog_restore_sets  the same over what fits the 5 MiB in the
 *                     producer's usual ~1 MB message sets (dim 16, history
 *                     8: about 12k users). The mock answers a fetch with
 *                     one message set, so this one measures fetch round
 *                     trips more than the restore.
 *
 * Usage: bench_changelog [DIR] (the file store's snapshots; default
 * $HL_BUILD or build, removed at the end). HL_BENCH_USERS (1000000),
 * HL_BENCH_SECONDS (3 per phase), HL_BENCH_ACTIVE_PCT (one share instead
 * of the three) and HL_BENCH_RESTORE_USERS (200000) change the sizes;
 * HL_BENCH_ONLY=restore or flush runs only those figures. */
#include "bench_table_util.h"
#include "bench_args.h"
#include "changelog.h"
#include "log.h"
#include "persist.h"
#include "snapshot.h"

#include <dirent.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define N_ITEMS 10000
#define BATCH   1024
#define ROUNDS  3
#define REPS    5

/* ---- the cluster ------------------------------------------------------- */

typedef struct env {
    rd_kafka_t              *mrk;
    rd_kafka_mock_cluster_t *mock;
    const char              *bootstrap;
    hl_producer             *prod;
    rd_kafka_t              *cons;      /* stands for the group consumer */
    hl_metrics              *reg;
} env;

/* What the restorer and the bare consumer both get beyond the restorer's
 * defaults: a fetch response may hold a partition of one message set. */
static const hl_kafka_prop big_fetch[] = {
    {"receive.message.max.bytes", "2000000000"},
};
/* The producer writing a whole partition as one message set. */
static const hl_kafka_prop one_set[] = {
    {"linger.ms", "5000"}, {"batch.num.messages", "1000000"},
    {"batch.size", "1000000000"}, {"message.max.bytes", "1000000000"},
    {"queue.buffering.max.kbytes", "2097151"},
};

static rd_kafka_t *consumer(const char *bootstrap, const char *group)
{
    static const hl_kafka_prop props[] = {
        {"enable.auto.commit", "false"}, {"fetch.wait.max.ms", "10"},
        {"fetch.message.max.bytes", "16777216"}, {"queued.min.messages", "1000000"},
        {"receive.message.max.bytes", "2000000000"},
    };
    char err[256];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "bootstrap.servers", bootstrap, err, sizeof err);
    rd_kafka_conf_set(c, "group.id", group, err, sizeof err);
    for (size_t i = 0; i < sizeof props / sizeof props[0]; i++)
        rd_kafka_conf_set(c, props[i].key, props[i].value, err, sizeof err);
    return rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof err);
}

/* A one-broker mock with topics of one partition, and a producer on it
 * given props. */
static void env_start(env *e, const char *const *topics, int n_topics,
                      const hl_kafka_prop *props, int n_props)
{
    char err[512];
    hl_kafka_prop all[8] = {{"bootstrap.servers", NULL}};
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "log_level", "3", err, sizeof err);
    /* the mock refuses a request above its handle's receive limit */
    rd_kafka_conf_set(c, "receive.message.max.bytes", "2000000000", err, sizeof err);
    e->mrk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
    e->mock = rd_kafka_mock_cluster_new(e->mrk, 1);
    for (int i = 0; i < n_topics; i++)
        rd_kafka_mock_topic_create(e->mock, topics[i], 1, 1);
    e->bootstrap = rd_kafka_mock_cluster_bootstraps(e->mock);
    all[0].value = e->bootstrap;
    for (int i = 0; i < n_props && i < 7; i++)
        all[1 + i] = props[i];
    e->prod = hl_producer_create(all, 1 + n_props, NULL, err, sizeof err);
    e->cons = consumer(e->bootstrap, "bench");
    e->reg = hl_metrics_create();
    if (e->prod == NULL || e->cons == NULL)
        bench_die("cluster", err);
}

static void env_stop(env *e)
{
    hl_producer_destroy(e->prod, 10000);
    rd_kafka_destroy(e->cons);
    rd_kafka_mock_cluster_destroy(e->mock);
    rd_kafka_destroy(e->mrk);
    hl_metrics_destroy(e->reg);
}

/* An hl_changelog reading topic on e, writing (flushes, claims) through
 * prod, which may be another cluster's. */
static hl_changelog *changelog(env *e, hl_producer *prod, const char *topic,
                               const hl_table_opts *o)
{
    char err[512];
    hl_changelog_opts co = {
        .topic = topic, .input_topic = "in", .bootstrap = e->bootstrap,
        .kafka = big_fetch, .n_kafka = 1, .flush_ms = 1000,
        .model_fingerprint = BENCH_FP, .topts = o, .prod = prod, .consumer = e->cons,
        .reg = e->reg, .create = 0, .timeout_ms = 30000,
    };
    hl_changelog *cl = hl_changelog_create(&co, err, sizeof err);
    if (cl == NULL)
        bench_die("changelog", err);
    return cl;
}

/* ---- users and events ---------------------------------------------------- */

static char   (*names)[16];
static float   *e_in;
static int64_t  next_off, ts_ms = 1701000000000LL;

/* Names of users 0..users-1 as bench_make_shard made them; next_off above
 * every offset the shard holds. */
static void make_world(size_t users, int dim)
{
    names = malloc(users * sizeof *names);
    e_in = malloc(sizeof(float) * N_ITEMS * (size_t)dim);
    if (names == NULL || e_in == NULL)
        bench_die("world", "out of memory");
    for (size_t u = 0; u < users; u++)
        bench_user_id(names[u], sizeof names[u], u);
    for (size_t i = 0; i < (size_t)N_ITEMS * dim; i++)
        e_in[i] = (float)(rnd() % 2000) / 1000.0f - 1.0f;
    next_off = (int64_t)users + 1;
}

static void free_world(void)
{
    free(names);
    free(e_in);
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

/* ---- the stores under test ------------------------------------------------ */

typedef enum { STORE_NONE, STORE_KAFKA, STORE_FILE, N_STORES } store_kind;

typedef struct store {
    store_kind          kind;
    env                *e;
    hl_changelog       *cl;
    hl_persist         *p;
    hl_changelog_shard *cs;
    hl_persist_shard   *ps;
} store;

/* A shard of the store, starting clean at next_off. */
static void store_open(store *s, hl_table *tbl)
{
    hl_changelog_restored r = {.next_offset = next_off, .epoch = 1};
    if (s->kind == STORE_KAFKA && (s->cs = hl_changelog_shard_create(s->cl, 0, tbl, &r)) == NULL)
        bench_die("changelog shard", "out of memory");
    if (s->kind == STORE_FILE && (s->ps = hl_persist_shard_create(s->p, 0, next_off)) == NULL)
        bench_die("persist shard", "out of memory");
}

/* What a worker thread does after each batch: every list is delivered. */
static void store_tick(store *s, hl_table *tbl, int64_t now_ms)
{
    if (s->kind == STORE_KAFKA) {
        hl_changelog_tick(s->cs, tbl, next_off, next_off, now_ms);
        hl_producer_poll(s->e->prod, 0);
    } else if (s->kind == STORE_FILE) {
        hl_persist_tick(s->ps, tbl, next_off, next_off, now_ms);
    }
}

/* Bytes the store has made durable so far. */
static uint64_t store_bytes(store *s)
{
    hl_persist_stats st;
    if (s->kind == STORE_KAFKA)
        return hl_metrics_counter_sum(s->e->reg, "halflife_changelog_bytes_total");
    if (s->kind != STORE_FILE)
        return 0;
    hl_persist_stats_get(s->p, &st);
    return st.bytes;
}

/* Ends the shard; nothing of it runs on into the next phase. */
static void store_close(store *s, hl_table *tbl)
{
    hl_persist_stats st;
    if (s->kind == STORE_KAFKA) {
        hl_changelog_flush_now(s->cs, tbl, next_off, (int64_t)(now_s() * 1000) + 30000);
        hl_table_on_evict(tbl, NULL, NULL);
        hl_changelog_shard_destroy(s->cs);
    } else if (s->kind == STORE_FILE) {
        hl_persist_shard_destroy(s->ps);
        do {
            usleep(10000);
            hl_persist_stats_get(s->p, &st);
        } while (st.queued > 0);
    }
    s->cs = NULL;
    s->ps = NULL;
}

/* ---- changelog_flush ------------------------------------------------------ */

typedef struct phase { double events_per_s, mb_per_s; } phase;

/* warm_s of untimed work (a snapshot or flush under way), then secs timed. */
static phase run_phase(store *s, hl_table *tbl, size_t users, size_t active,
                       double warm_s, double secs)
{
    store_open(s, tbl);
    double t0 = now_s(), t, t_timed = 0;
    uint64_t n = 0, bytes0 = 0;
    int timed = 0;
    while ((t = now_s()) - t0 < warm_s + secs) {
        if (!timed && t - t0 >= warm_s) {
            timed = 1;
            t_timed = t;
            bytes0 = store_bytes(s);
        }
        size_t first = (size_t)(t - t0) * active;       /* a new set each second */
        apply_some(tbl, users, first, active, BATCH);
        n += timed ? BATCH : 0;
        store_tick(s, tbl, (int64_t)(t * 1000));
    }
    phase ph = {.events_per_s = (double)n / (now_s() - t_timed),
                .mb_per_s = (double)(store_bytes(s) - bytes0) / (now_s() - t_timed) / 1e6};
    store_close(s, tbl);
    return ph;
}

static void flush_line(size_t users, double share, const phase *med)
{
    double none = med[STORE_NONE].events_per_s, kafka = med[STORE_KAFKA].events_per_s;
    double file = med[STORE_FILE].events_per_s;
    printf("{\"bench\":\"changelog_flush\",\"users\":%zu,\"active_share_per_s\":%g,"
           "\"interval_ms\":1000,\"figure\":%.0f,\"unit\":\"events/s\",\"ceiling\":%.0f,"
           "\"ceiling_what\":\"the same apply loop with no store\",\"ratio\":%.3f,"
           "\"file_events_per_s\":%.0f,\"file_ratio\":%.3f,\"vs_file\":%.3f,"
           "\"target_vs_file\":0.8,\"met\":%s,\"kafka_mb_per_s\":%.1f,\"rounds\":%d}\n",
           users, share, kafka, none, kafka / none, file, file / none, kafka / file,
           kafka >= 0.8 * file ? "true" : "false", med[STORE_KAFKA].mb_per_s, ROUNDS);
    fflush(stdout);
}

/* ROUNDS phases of each store in turn at one active share; medians. */
static void flush_share(store *st, hl_table *tbl, size_t users, double pct, double secs)
{
    double eps[N_STORES][ROUNDS], mbs[N_STORES][ROUNDS];
    size_t active = (size_t)((double)users * pct / 100);
    if (active < 1) active = 1;
    for (int r = 0; r < ROUNDS; r++)
        for (int k = 0; k < N_STORES; k++) {
            phase ph = run_phase(&st[k], tbl, users, active, 1.2, secs);
            eps[k][r] = ph.events_per_s;
            mbs[k][r] = ph.mb_per_s;
        }
    phase med[N_STORES];
    for (int k = 0; k < N_STORES; k++)
        med[k] = (phase){median(eps[k], ROUNDS), median(mbs[k], ROUNDS)};
    flush_line(users, pct / 100, med);
}

/* How long one file snapshot takes while the loop runs (begin to durable),
 * at the given share: at 1M users it cannot finish within its 1 s interval,
 * so "every second" means back to back; this says how far apart. */
static void file_snapshot_line(store *s, hl_table *tbl, size_t users, double pct)
{
    hl_persist_done done[4];
    size_t active = (size_t)((double)users * pct / 100);
    double t0 = now_s(), t;
    int n = 0;
    while (hl_persist_poll(s->p, done, 4) > 0)
        ;                                   /* the phases' snapshots */
    store_open(s, tbl);
    while (n == 0 && (t = now_s()) - t0 < 300) {
        apply_some(tbl, users, (size_t)(t - t0) * (active ? active : 1), active ? active : 1,
                   BATCH);
        store_tick(s, tbl, (int64_t)(t * 1000));
        n = hl_persist_poll(s->p, done, 4);
    }
    store_close(s, tbl);
    if (n == 0 || done[0].rc != 0) {
        printf("{\"bench\":\"file_snapshot_under_load\",\"error\":\"no snapshot completed "
               "in 300 s\"}\n");
        return;
    }
    printf("{\"bench\":\"file_snapshot_under_load\",\"users\":%zu,\"active_share_per_s\":%g,"
           "\"figure\":%.2f,\"unit\":\"s\",\"bytes\":%llu,\"interval_ms\":1000,"
           "\"note\":\"begin to durable of one state.store=file snapshot while the apply "
           "loop runs; longer than the interval means snapshots run back to back\"}\n",
           users, pct / 100, done[0].duration_s, (unsigned long long)done[0].bytes);
    fflush(stdout);
}

static hl_persist *file_store(const char *dir)
{
    char err[512];
    hl_persist_opts po = {.dir = dir, .topic = "in", .retain = 1, .interval_ms = 1000,
                          .model_fingerprint = BENCH_FP};
    hl_persist *p = hl_persist_create(&po, err, sizeof err);
    if (p == NULL)
        bench_die("file store", err);
    return p;
}

static void bench_flush(const char *dir)
{
    static const char *const topics[] = {"in", "flush-state"};
    static const double shares[] = {0.1, 1, 10};
    const char *pct_env = getenv("HL_BENCH_ACTIVE_PCT");
    size_t users = getenv("HL_BENCH_USERS") ? strtoull(getenv("HL_BENCH_USERS"), NULL, 10)
                                            : 1000000;
    double secs = getenv("HL_BENCH_SECONDS") ? atof(getenv("HL_BENCH_SECONDS")) : 3;
    env e;
    env_start(&e, topics, 2, NULL, 0);
    hl_table_opts o = bench_table_opts(users, 64, 32);
    hl_table *tbl = bench_make_shard(&o, users);
    make_world(users, 64);
    store st[N_STORES] = {
        {.kind = STORE_NONE, .e = &e},
        {.kind = STORE_KAFKA, .e = &e, .cl = changelog(&e, e.prod, "flush-state", &o)},
        {.kind = STORE_FILE, .e = &e, .p = file_store(dir)},
    };
    if (pct_env != NULL)
        flush_share(st, tbl, users, atof(pct_env), secs);
    else
        for (size_t i = 0; i < sizeof shares / sizeof shares[0]; i++)
            flush_share(st, tbl, users, shares[i], secs);
    file_snapshot_line(&st[STORE_FILE], tbl, users, pct_env ? atof(pct_env) : 1);
    hl_persist_destroy(st[STORE_FILE].p);
    hl_changelog_destroy(st[STORE_KAFKA].cl);
    hl_table_destroy(tbl);
    env_stop(&e);
    free_world();
}

/* ---- changelog_restore ------------------------------------------------------ */

/* A bare consumer over [0, high) of the partition: seconds, bytes. With
 * fresh_bytes > 0 it also copies each record into fresh memory of that
 * size (wrapping around), all of it touched: a restore builds a table in
 * memory the process never touched, and on these VMs the kernel's zeroing
 * of new pages costs more than the copy (bench_snapshot's ceiling_fresh). */
static double bare_read(env *e, const char *topic, int64_t high, size_t fresh_bytes,
                        uint64_t *bytes)
{
    rd_kafka_t *rk = consumer(e->bootstrap, "bare");
    double t0 = now_s();
    unsigned char *mem = NULL;
    size_t at = 0;
    if (fresh_bytes > 0 && (mem = mmap(NULL, fresh_bytes, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)) == MAP_FAILED)
        bench_die("bare read", "mmap");
    if (mem != NULL)
        madvise(mem, fresh_bytes, MADV_HUGEPAGE);   /* as table.c maps its rows */
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
            if (mem != NULL && m->len < fresh_bytes) {
                at = at + m->len > fresh_bytes ? 0 : at;
                memcpy(mem + at, m->payload, m->len);
                at += m->len;
            }
        }
        rd_kafka_message_destroy(m);
    }
    if (mem != NULL && at < fresh_bytes)
        memset(mem + at, 0, fresh_bytes - at);      /* the rest of the table's pages */
    double s = now_s() - t0;
    if (mem != NULL)
        munmap(mem, fresh_bytes);
    rd_kafka_destroy(rk);
    return s;
}

/* Seconds of hl_snapshot_load of src from a file (median of REPS). */
static double file_load_s(const char *dir, const hl_table *src, const hl_table_opts *o,
                          uint64_t *bytes)
{
    char err[512];
    double t[REPS];
    hl_snapshot_meta m = {.partition = 0, .next_offset = next_off,
                          .model_fingerprint = BENCH_FP};
    hl_snapshot_result res;
    snprintf(m.topic, sizeof m.topic, "in");
    if (hl_snapshot_write(NULL, dir, &m, src, 1, &res, err, sizeof err) != 0)
        bench_die("snapshot write", err);
    for (int i = 0; i < REPS; i++) {
        hl_table *back = NULL;
        double t0 = now_s();
        if (hl_snapshot_load(NULL, res.path, o, BENCH_FP, &back, NULL, err, sizeof err) != 0)
            bench_die("snapshot load", err);
        t[i] = now_s() - t0;
        hl_table_destroy(back);
    }
    unlink(res.path);
    *bytes = res.bytes;
    return median(t, REPS);
}

typedef struct restore_fig {
    double read_s, all_s, bare_s, fresh_s, ratio_lo, ratio_hi;
    size_t table_bytes;
    uint64_t rows, bytes, bare_bytes;
    int64_t low, high;
} restore_fig;

/* One warm-up and REPS measured restores of partition 0 into fresh
 * tables, each followed by a bare read of the same offsets. */
static restore_fig restore_runs(env *e, hl_changelog *cl, const char *topic,
                                const hl_table_opts *o)
{
    char err[512];
    double rd[REPS], all[REPS], bare[REPS], fresh[REPS];
    restore_fig f = {.ratio_lo = 1e9};
    hl_table_stats st;
    uint64_t ignored;
    for (int i = -1; i < REPS; i++) {
        hl_table *tbl = hl_table_create(o, err, sizeof err);
        hl_changelog_restored r;
        if (tbl == NULL || hl_changelog_restore(cl, 0, tbl, NULL, &r, err, sizeof err) != 0)
            bench_die("restore", err);
        hl_table_stats_get(tbl, &st);
        hl_table_destroy(tbl);
        double b = bare_read(e, topic, r.high, 0, &f.bare_bytes);
        double bf = bare_read(e, topic, r.high, st.bytes, &ignored);
        f.rows = r.n_rows;
        f.bytes = r.bytes;
        f.low = r.low;
        f.high = r.high;
        if (i < 0)
            continue;                       /* the warm-up: page faults, first fetches */
        rd[i] = r.read_s;
        all[i] = r.duration_s;
        bare[i] = b;
        fresh[i] = bf;
        if (b / r.read_s < f.ratio_lo) f.ratio_lo = b / r.read_s;
        if (b / r.read_s > f.ratio_hi) f.ratio_hi = b / r.read_s;
    }
    f.read_s = median(rd, REPS);
    f.all_s = median(all, REPS);
    f.bare_s = median(bare, REPS);
    f.fresh_s = median(fresh, REPS);
    f.table_bytes = st.bytes;
    return f;
}

static void restore_line(const char *name, size_t users, int dim, int history,
                         const char *sets, const restore_fig *f, double file_s,
                         uint64_t file_bytes)
{
    printf("{\"bench\":\"%s\",\"users\":%zu,\"dim\":%d,\"history\":%d,\"message_sets\":\"%s\","
           "\"rows\":%llu,\"bytes\":%llu,\"figure\":%.0f,\"unit\":\"rows/s\",\"mb_per_s\":%.1f,"
           "\"ceiling\":%.0f,\"ceiling_what\":\"a bare consumer reading the same partition\","
           "\"ceiling_mb_per_s\":%.1f,\"ratio\":%.3f,\"ratio_min\":%.3f,\"ratio_max\":%.3f,"
           "\"target_ratio\":0.5,\"met\":%s,\"ceiling_fresh\":%.0f,\"ratio_fresh\":%.3f,"
           "\"table_bytes\":%zu,\"runs\":%d,\"read_s\":%.4f,"
           "\"with_watermarks_and_claim_s\":%.4f,\"file_load_rows_per_s\":%.0f,"
           "\"file_load_mb_per_s\":%.1f,\"vs_file\":%.3f,\"low\":%lld,\"high\":%lld}\n",
           name, users, dim, history, sets, (unsigned long long)f->rows,
           (unsigned long long)f->bytes, (double)f->rows / f->read_s,
           (double)f->bytes / f->read_s / 1e6, (double)f->rows / f->bare_s,
           (double)f->bare_bytes / f->bare_s / 1e6, f->bare_s / f->read_s, f->ratio_lo,
           f->ratio_hi, f->bare_s / f->read_s >= 0.5 ? "true" : "false",
           (double)f->rows / f->fresh_s, f->fresh_s / f->read_s, f->table_bytes, REPS, f->read_s,
           f->all_s, (double)users / file_s, (double)file_bytes / file_s / 1e6,
           file_s / f->read_s, (long long)f->low, (long long)f->high);
    fflush(stdout);
}

/* Writes users rows of shape (dim, history) to partition 0 of a fresh
 * topic in one flush, checks the broker holds all of it, and measures.
 * one_msgset: the partition goes in one message set, and restores claim
 * on a second cluster (see the overview). */
static void bench_restore(const char *name, const char *dir, size_t users, int dim,
                          int history, int one_msgset)
{
    static const char *const topics[] = {"in", "restore-state"};
    env e, sink;
    env_start(&e, topics, 2, one_msgset ? one_set : NULL,
              one_msgset ? (int)(sizeof one_set / sizeof one_set[0]) : 0);
    env_start(&sink, topics, 2, NULL, 0);
    hl_table_opts o = bench_table_opts(users, dim, history);
    hl_table *src = bench_make_shard(&o, users);
    make_world(users, dim);
    hl_changelog *writer = changelog(&e, e.prod, "restore-state", &o);
    hl_changelog_restored r0 = {.next_offset = -1, .epoch = 1};
    hl_changelog_shard *cs = hl_changelog_shard_create(writer, 0, src, &r0);
    if (cs == NULL || hl_changelog_flush_now(cs, src, next_off,
                                             (int64_t)(now_s() * 1000) + 120000) != 0)
        bench_die("restore", "the changelog was not written");
    hl_table_on_evict(src, NULL, NULL);
    hl_changelog_shard_destroy(cs);
    hl_changelog_destroy(writer);
    int64_t low = -1, high = -1;
    rd_kafka_query_watermark_offsets(e.cons, "restore-state", 0, &low, &high, 10000);
    if (low != 0 || high != (int64_t)users + 1) {
        printf("{\"bench\":\"%s\",\"error\":\"the mock holds offsets %lld..%lld of 0..%zu: "
               "records were dropped, no figure\"}\n", name, (long long)low, (long long)high,
               users + 1);
    } else {
        hl_changelog *cl = changelog(&e, one_msgset ? sink.prod : e.prod, "restore-state", &o);
        restore_fig f = restore_runs(&e, cl, "restore-state", &o);
        uint64_t file_bytes = 0;
        double file_s = file_load_s(dir, src, &o, &file_bytes);
        restore_line(name, users, dim, history, one_msgset ? "one" : "producer default", &f,
                     file_s, file_bytes);
        hl_changelog_destroy(cl);
    }
    hl_table_destroy(src);
    env_stop(&sink);
    env_stop(&e);
    free_world();
}

/* Removes dir and the snapshots in it (no subdirectories are made). */
static void remove_dir(const char *dir)
{
    char path[1300];
    struct dirent *de;
    DIR *d = opendir(dir);
    while (d != NULL && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        unlink(path);
    }
    if (d != NULL)
        closedir(d);
    rmdir(dir);
}

static const char usage[] =
    "usage: bench_changelog [DIR]\n"
    "  DIR  where the file store's snapshots go (default $HL_BUILD or build; removed)\n"
    "Environment: HL_BENCH_USERS, HL_BENCH_SECONDS, HL_BENCH_ACTIVE_PCT,\n"
    "HL_BENCH_RESTORE_USERS, HL_BENCH_ONLY=restore|flush (the comment at the top).\n"
    "Prints JSON lines.\n";

int main(int argc, char **argv)
{
    bench_args("bench_changelog", argc, argv, usage, bench_bad_dir(argc, argv));
    const char *base = argc > 1 ? argv[1] : getenv("HL_BUILD");
    const char *ru = getenv("HL_BENCH_RESTORE_USERS"), *only = getenv("HL_BENCH_ONLY");
    char dir[1024];
    hl_log_set_level(HL_LOG_WARN);
    snprintf(dir, sizeof dir, "%s/bench-changelog.%d", base && *base ? base : "build",
             (int)getpid());
    if (mkdir(dir, 0755) != 0)
        bench_die("mkdir", dir);
    /* What fits the mock's 5 MiB in ~1 MB sets: rows of dim 16, history 8. */
    size_t small = (4u << 20) / (hl_snapshot_row_max(BENCH_HEADS, 16, 8) - HL_MAX_ID_LEN + 40);
    if (only == NULL || strcmp(only, "restore") == 0) {
        bench_restore("changelog_restore", dir, ru ? strtoull(ru, NULL, 10) : 200000, 64, 32, 1);
        bench_restore("changelog_restore_sets", dir, small, 16, 8, 0);
    }
    if (only == NULL || strcmp(only, "flush") == 0)
        bench_flush(dir);
    remove_dir(dir);
    return 0;
}
