/* test_items_load.c - the item topic's reader (worker/items.c) reports the
 * catalogue loaded only once every partition was read to its end: a
 * worker joins its group on that signal, so a partition counted as read
 * before it was would let lists go out without its hidden items masked.
 * Here the broker fails the watermark query once (a ListOffsets error, as
 * during a leader change) and is slow to fetch. Also: what the reader logs
 * of a hostile update stays one event. */
#define T_SUITE "items_load"
#include "catalogue_test_util.h"
#include "codec_item.h"
#include "items.h"
#include "log.h"
#include "metrics.h"
#include "codec.h"

#include <stdatomic.h>

#include <librdkafka/rdkafka_mock.h>


#define N_UPD 20

/* A model, a mock cluster with the topic "items" (one partition) and a
 * producer to it: what each case starts from. */
typedef struct bed {
    tm                       a;
    hl_model                *m;
    rd_kafka_t              *mrk, *p;       /* the mock's host handle; the producer */
    rd_kafka_mock_cluster_t *mock;
    const char              *bootstrap;
    hl_metrics              *reg;
} bed;

static void bed_open_n(bed *b, const char *name, int partitions)
{
    char err[512];
    tm_init(&b->a, N);
    b->m = tm_open(&b->a, name);
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "log_level", "0", err, sizeof err);
    b->mrk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
    b->mock = rd_kafka_mock_cluster_new(b->mrk, 1);
    CHECK(b->mock != NULL);
    rd_kafka_mock_topic_create(b->mock, "items", partitions, 1);
    b->bootstrap = rd_kafka_mock_cluster_bootstraps(b->mock);
    rd_kafka_conf_t *pc = rd_kafka_conf_new();
    rd_kafka_conf_set(pc, "bootstrap.servers", b->bootstrap, err, sizeof err);
    b->p = rd_kafka_new(RD_KAFKA_PRODUCER, pc, err, sizeof err);
    b->reg = hl_metrics_create();
}

static void bed_open(bed *b, const char *name)
{
    bed_open_n(b, name, 1);
}

static void bed_close(bed *b)
{
    hl_metrics_destroy(b->reg);
    rd_kafka_destroy(b->p);
    rd_kafka_mock_cluster_destroy(b->mock);
    rd_kafka_destroy(b->mrk);
    hl_model_close(b->m);
    tm_free(&b->a);
}

/* Produces one update hiding item id to partition part, framed as co says. */
static void send_upd_to(rd_kafka_t *p, const char *id, const hl_item_codec_opts *co, int part)
{
    char buf[256];
    hl_item_update u = upd(id);
    u.available = 0;
    int len = hl_item_encode(co, &u, buf, sizeof buf);
    CHECK(len > 0);
    CHECK(rd_kafka_producev(p, RD_KAFKA_V_TOPIC("items"), RD_KAFKA_V_PARTITION(part),
                            RD_KAFKA_V_KEY(id, strlen(id)), RD_KAFKA_V_VALUE(buf, (size_t)len),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END) == 0);
}

static void send_upd(rd_kafka_t *p, const char *id, const hl_item_codec_opts *co)
{
    send_upd_to(p, id, co, 0);
}

static void test_loaded_only_after_reading_to_the_end(void)
{
    char err[512];
    bed b;
    bed_open(&b, "load");
    hl_item_codec_opts co = {.framing = HL_FRAMING_RAW, .dim = DIM,
                             .min_ts_ms = INT64_MIN, .max_ts_ms = INT64_MAX};
    for (int i = 0; i < N_UPD; i++) {     /* hide model items i0..i19 */
        char id[16];
        snprintf(id, sizeof id, "i%d", i);
        send_upd(b.p, id, &co);
    }
    CHECK(rd_kafka_flush(b.p, 10000) == 0);
    /* the watermark query fails once (ListOffsets, api key 2), and every
     * request takes 300 ms from now on */
    rd_kafka_mock_push_request_errors(b.mock, 2, 2, RD_KAFKA_RESP_ERR_UNKNOWN,
                                      RD_KAFKA_RESP_ERR_UNKNOWN);
    rd_kafka_mock_broker_set_rtt(b.mock, 1, 300);
    hl_items_opts o = {.bootstrap = b.bootstrap, .topic = "items", .codec = co, .m = b.m,
                       .max_new = 100, .reg = b.reg};
    hl_items *it = hl_items_create(&o, err, sizeof err);
    CHECKF(it != NULL, "%s", err);
    CHECK(hl_items_start(it, err, sizeof err) == 0);
    long long applied_at_load = -1;
    for (int t = 0; t < 600 && applied_at_load < 0; t++) {
        if (hl_items_loaded(it))
            applied_at_load = hl_items_applied(it);

        usleep(50000);
    }
    CHECKF(applied_at_load == N_UPD, "loaded with %lld of the topic's %d updates applied "
           "(-1: never loaded)", applied_at_load, N_UPD);
    hl_items_destroy(it);
    bed_close(&b);
}

/* A registry stand-in for the items' writer schema ids: 7 is ours, every
 * other id another subject's schema (the events'). calls7 counts the
 * lookups of id 7; the reader thread calls it. */
static atomic_int calls7;
static int ids_fn(void *arg, int32_t id, char **text, char *why, size_t whylen)
{
    if (id == 7)
        atomic_fetch_add(&calls7, 1);
    *text = strdup(id == 7 ? hl_item_schema() : hl_codec_event_schema());
    return *text != NULL ? 0 : HL_ENOMEM;
}

/* Updates naming 100 ids of other subjects' schemas (ids are global in a
 * registry, and anyone who may write the topic can name them) must not
 * fill the ids the reader remembers: our schema's id, seen after them, is
 * checked once, not fetched and parsed again for each update (before the
 * fix: once per update, 20 times). */
static void test_foreign_ids_do_not_fill_known(void)
{
    char err[512];
    bed b;
    bed_open(&b, "known");
    hl_item_codec_opts co = {.framing = HL_FRAMING_CONFLUENT, .dim = DIM,
                             .min_ts_ms = INT64_MIN, .max_ts_ms = INT64_MAX};
    for (int i = 0; i < 100; i++) {
        co.schema_id = 100 + i;
        send_upd(b.p, "i0", &co);
    }
    co.schema_id = 7;
    for (int i = 0; i < N_UPD; i++) {
        char id[16];
        snprintf(id, sizeof id, "i%d", i);
        send_upd(b.p, id, &co);
    }
    CHECK(rd_kafka_flush(b.p, 10000) == 0);
    co.schema_id = 0;
    hl_items_opts o = {.bootstrap = b.bootstrap, .topic = "items", .m = b.m, .max_new = 100,
                       .reg = b.reg, .schema_fn = ids_fn, .codec = co};
    atomic_store(&calls7, 0);
    hl_items *it = hl_items_create(&o, err, sizeof err);
    CHECKF(it != NULL, "%s", err);
    CHECK(hl_items_start(it, err, sizeof err) == 0);
    for (int t = 0; t < 1200 && !(hl_items_loaded(it) && hl_items_applied(it) >= N_UPD); t++)
        usleep(50000);
    CHECKF(hl_items_applied(it) == N_UPD, "%lld of %d updates applied",
           (long long)hl_items_applied(it), N_UPD);
    CHECKF(atomic_load(&calls7) == 1, "id 7 was looked up %d times for %d updates, want "
           "once", atomic_load(&calls7), N_UPD);
    hl_items_destroy(it);
    bed_close(&b);
}

/* How many "event" keys a key=value reader finds in the line at s: values
 * in quotes end at the first '"' not escaped with '\\'. */
static int count_events(const char *s)
{
    int n = 0;
    while (*s != '\0' && *s != '\n') {
        while (*s == ' ')
            s++;
        const char *k = s;
        while (*s != '\0' && *s != '\n' && *s != '=' && *s != ' ')
            s++;
        n += s - k == 5 && strncmp(k, "event", 5) == 0;
        if (*s != '=')
            continue;
        if (*++s == '"') {
            for (s++; *s != '\0' && *s != '\n' && *s != '"'; s++)
                if (*s == '\\' && s[1] != '\0')
                    s++;
            if (*s == '"')
                s++;
        } else
            while (*s != '\0' && *s != '\n' && *s != ' ')
                s++;
    }
    return n;
}

/* One bad_item_update line for an update whose id holds '"' (valid UTF-8:
 * anyone who may write the topic chooses it) and that the catalogue
 * refuses (catalogue_full names the id): the id must stay inside the
 * detail value, not end it and add fields of its own. Before the fix the
 * line read detail="catalogue: item "x" event=forged_event ..." and a
 * key=value reader saw a second event. */
static void test_hostile_id_stays_in_its_value(void)
{
    static const char id[] = "x\" event=forged_event y=\"";
    char err[512], got[8192];
    bed b;
    bed_open(&b, "quote");
    hl_item_codec_opts co = {.framing = HL_FRAMING_RAW, .dim = DIM,
                             .min_ts_ms = INT64_MIN, .max_ts_ms = INT64_MAX};
    send_upd(b.p, id, &co);
    CHECK(rd_kafka_flush(b.p, 10000) == 0);
    hl_items_opts o = {.bootstrap = b.bootstrap, .topic = "items", .codec = co, .m = b.m,
                       .max_new = 0, .reg = b.reg};
    FILE *tmp = tmpfile();
    int saved = dup(STDERR_FILENO);
    CHECK(tmp != NULL && saved >= 0);
    dup2(fileno(tmp), STDERR_FILENO);
    hl_log_set_level(HL_LOG_WARN);
    hl_items *it = hl_items_create(&o, err, sizeof err);
    if (it != NULL && hl_items_start(it, err, sizeof err) == 0)
        for (int t = 0; t < 600 && !hl_items_loaded(it); t++)
            usleep(50000);
    int loaded = it != NULL && hl_items_loaded(it);
    hl_items_destroy(it);
    hl_log_set_level(HL_LOG_ERROR);
    dup2(saved, STDERR_FILENO);
    close(saved);
    rewind(tmp);
    size_t n = fread(got, 1, sizeof got - 1, tmp);
    got[n] = '\0';
    fclose(tmp);
    CHECKF(loaded, "the reader never loaded the topic: %s", err);
    const char *line = strstr(got, "event=bad_item_update");
    CHECKF(line != NULL, "no bad_item_update line in: %s", got);
    int events = line ? count_events(line) : 0;
    const char *eol = line ? strchr(line, '\n') : NULL;
    CHECKF(events == 1, "%d event fields (the id ended its value and forged one): %.*s",
           events, (int)(eol && line ? eol - line : 0), line ? line : "");
    bed_close(&b);
}

/* The partitions of the topic the cluster reports that the reader is
 * shown: librdkafka's mock cannot add partitions to a topic (no
 * CreatePartitions), so the topic has two and the reader sees one until
 * the test "adds" the second. */
static atomic_int visible_parts;
static int parts_seen(void *arg, int n)
{
    (void)arg;
    int v = atomic_load(&visible_parts);
    return n < v ? n : v;
}

/* The sample of metric name (no labels) in reg's /metrics text, -1 when
 * absent. */
static double metric_value(hl_metrics *reg, const char *name)
{
    char *text = NULL, *at, line[128];
    size_t len = 0;
    double v = -1;
    snprintf(line, sizeof line, "\n%s ", name);
    if (hl_metrics_render(reg, &text, &len) == 0 && (at = strstr(text, line)) != NULL)
        v = strtod(at + strlen(line), NULL);
    free(text);
    return v;
}

static double parts_gauge(hl_metrics *reg)
{
    return metric_value(reg, "halflife_items_partitions");
}

/* A partition added to the topic while the worker runs (an operator
 * raises the partition count) is read from its beginning: before the fix
 * the reader asked the count once at start, and an update sent to a new
 * partition (a hide, a tombstone) never reached the running worker. */
static void test_partition_added_later_is_read(void)
{
    char err[512];
    bed b;
    bed_open_n(&b, "grow", 2);
    hl_item_codec_opts co = {.framing = HL_FRAMING_RAW, .dim = DIM,
                             .min_ts_ms = INT64_MIN, .max_ts_ms = INT64_MAX};
    send_upd_to(b.p, "i0", &co, 0);
    send_upd_to(b.p, "i1", &co, 1);
    CHECK(rd_kafka_flush(b.p, 10000) == 0);
    atomic_store(&visible_parts, 1);
    hl_items_opts o = {.bootstrap = b.bootstrap, .topic = "items", .codec = co, .m = b.m,
                       .max_new = 100, .reg = b.reg, .partitions_check_ms = 100,
                       .partitions_seen = parts_seen};
    hl_items *it = hl_items_create(&o, err, sizeof err);
    CHECKF(it != NULL, "%s", err);
    CHECK(hl_items_start(it, err, sizeof err) == 0);
    for (int t = 0; t < 600 && !(hl_items_loaded(it) && hl_items_applied(it) >= 1); t++)
        usleep(50000);
    CHECKF(hl_items_loaded(it) && hl_items_applied(it) == 1, "one partition: %lld updates "
           "applied, want 1", (long long)hl_items_applied(it));
    atomic_store(&visible_parts, 2);            /* the topic grows to two */
    for (int t = 0; t < 400 && hl_items_applied(it) < 2; t++)
        usleep(50000);
    CHECKF(hl_items_applied(it) == 2, "the update on the added partition: %lld of 2 "
           "updates applied 20 s after the topic grew", (long long)hl_items_applied(it));
    CHECKF(parts_gauge(b.reg) == 2, "halflife_items_partitions %g, want 2",
           parts_gauge(b.reg));
    hl_items_destroy(it);
    bed_close(&b);
}

/* Produces a fold-in record of new item id (built from 2 interactions)
 * under its fold-in key. */
static void send_foldin(rd_kafka_t *p, const char *id, const hl_item_codec_opts *co)
{
    char buf[512], key[HL_ITEM_KEY_MAX];
    float v[DIM];
    for (int d = 0; d < DIM; d++)
        v[d] = 0.1f * (float)(d + 1);
    hl_item_update u = upd(id);
    u.e_in = u.e_out = v;
    u.foldin_events = 2;
    int len = hl_item_encode(co, &u, buf, sizeof buf);
    uint32_t key_len = hl_item_foldin_key(id, (uint32_t)strlen(id), key);
    CHECK(len > 0);
    CHECK(rd_kafka_producev(p, RD_KAFKA_V_TOPIC("items"), RD_KAFKA_V_KEY(key, key_len),
                            RD_KAFKA_V_VALUE(buf, (size_t)len),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END) == 0);
    CHECK(rd_kafka_flush(p, 10000) == 0);
}

/* Records the worker's producer holds (it points at no broker, so
 * nothing leaves it but by a purge), after waiting up to ms for want. */
static int held_after(hl_producer *prod, int want, int ms)
{
    int n = 0;
    for (int t = 0; t <= ms / 50 && (n = hl_producer_flush(prod, 0)) != want; t++)
        usleep(50000);
    return n;
}

/* A full catalogue's eviction tombstone that a purge takes back (a
 * release's purge takes every record the worker's producer holds) is sent
 * again, as long as no newer record of the item came meanwhile. Before,
 * it was logged as record_purged and lost: the item's record stayed on the
 * topic, and a worker started later listed the item again. */
static void test_purged_eviction_tombstone_is_sent_again(void)
{
    char err[512];
    bed b;
    bed_open(&b, "evict");
    hl_item_codec_opts co = {.framing = HL_FRAMING_RAW, .dim = DIM,
                             .min_ts_ms = INT64_MIN, .max_ts_ms = INT64_MAX};
    hl_kafka_prop kp[] = {{"bootstrap.servers", "127.0.0.1:1"}, {"log_level", "0"}};
    hl_producer *prod = hl_producer_create(kp, 2, NULL, err, sizeof err);
    send_foldin(b.p, "new-a", &co);
    send_foldin(b.p, "new-b", &co);
    hl_items_opts o = {.bootstrap = b.bootstrap, .topic = "items", .codec = co, .m = b.m,
                       .max_new = 2, .prod = prod, .reg = b.reg};
    hl_items *it = prod != NULL ? hl_items_create(&o, err, sizeof err) : NULL;
    CHECKF(it != NULL, "%s", err);
    if (it == NULL)
        return;
    CHECK(hl_items_start(it, err, sizeof err) == 0);
    for (int t = 0; t < 600 && !(hl_items_loaded(it) && hl_items_applied(it) == 2); t++)
        usleep(50000);
    send_foldin(b.p, "new-c", &co);             /* full: new-a goes, tombstoned */
    CHECKF(held_after(prod, 1, 10000) == 1, "no eviction tombstone held");
    CHECK(hl_producer_purge(prod) == 1);
    int n = held_after(prod, 1, 3000);
    CHECKF(n == 1, "%d records held 3 s after the purge, want 1: new-a's tombstone again", n);
    send_foldin(b.p, "new-a", &co);             /* new-a again (new-b goes): newer than */
    CHECKF(held_after(prod, 2, 10000) == 2, "new-b's tombstone not held");   /* its tombstone */
    CHECK(hl_producer_purge(prod) == 2);
    held_after(prod, 1, 3000);
    usleep(300000);                 /* and nothing more comes */
    n = hl_producer_flush(prod, 0);
    CHECKF(n == 1, "%d records held after the second purge, want 1: new-b's tombstone, not "
           "new-a's (its new record would go)", n);
    hl_items_stop(it);              /* as the worker does: stopped, settled, freed */
    hl_producer_purge(prod);
    hl_items_destroy(it);
    hl_producer_destroy(prod, 0);
    bed_close(&b);
}

/* The header of the first tombstone of item id's fold-in key on "items"
 * (partition 0) at bootstrap, into at ("" without one). 1 when one came
 * within 10 s. */
static int evict_header(const char *bootstrap, const char *id, char *at, size_t at_len)
{
    char err[512], key[HL_ITEM_KEY_MAX];
    uint32_t key_len = hl_item_foldin_key(id, (uint32_t)strlen(id), key);
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "bootstrap.servers", bootstrap, err, sizeof err);
    rd_kafka_conf_set(c, "group.id", "evict-header", err, sizeof err);
    rd_kafka_conf_set(c, "log_level", "0", err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof err);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, "items", 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    int found = 0;
    at[0] = '\0';
    for (int t = 0; t < 100 && !found; t++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        rd_kafka_headers_t *h;
        const void *v;
        size_t n;
        found = m != NULL && !m->err && m->payload == NULL && m->key_len == key_len &&
                memcmp(m->key, key, key_len) == 0;
        if (found && rd_kafka_message_headers(m, &h) == 0 &&
            rd_kafka_header_get_last(h, HL_ITEM_EVICTS_HEADER, &v, &n) == 0 && n < at_len) {
            memcpy(at, v, n);
            at[n] = '\0';
        }
        if (m != NULL)
            rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return found;
}

/* An eviction tombstone sent again after a purge names the record it
 * evicts, as the first send did (halflife.evicts.offset): without it, a
 * worker's newer record of the item, published meanwhile, would be
 * deleted by it in every reader. The worker's producer sends to a second
 * cluster, down until the purge is over. MORE_EVICTIONS more items are
 * evicted after new-a before the purge: the reader once kept only its
 * latest 64 evictions' records, and new-a's resend then named none. */
#define MORE_EVICTIONS 70
static void test_purged_eviction_tombstone_names_its_record(void)
{
    char err[512], at[24];
    bed b;
    bed_open(&b, "evictnamed");
    hl_item_codec_opts co = {.framing = HL_FRAMING_RAW, .dim = DIM,
                             .min_ts_ms = INT64_MIN, .max_ts_ms = INT64_MAX};
    rd_kafka_mock_cluster_t *to = rd_kafka_mock_cluster_new(b.mrk, 1);
    rd_kafka_mock_topic_create(to, "items", 1, 1);
    rd_kafka_mock_broker_set_down(to, 1);
    hl_kafka_prop kp[] = {{"bootstrap.servers", rd_kafka_mock_cluster_bootstraps(to)},
                          {"log_level", "0"}};
    hl_producer *prod = hl_producer_create(kp, 2, NULL, err, sizeof err);
    send_foldin(b.p, "new-a", &co);             /* offset 0 */
    send_foldin(b.p, "new-b", &co);
    hl_items_opts o = {.bootstrap = b.bootstrap, .topic = "items", .codec = co, .m = b.m,
                       .max_new = 2, .prod = prod, .reg = b.reg};
    hl_items *it = prod != NULL ? hl_items_create(&o, err, sizeof err) : NULL;
    CHECKF(it != NULL, "%s", err);
    if (it == NULL)
        return;
    CHECK(hl_items_start(it, err, sizeof err) == 0);
    for (int t = 0; t < 600 && !(hl_items_loaded(it) && hl_items_applied(it) == 2); t++)
        usleep(50000);
    send_foldin(b.p, "new-c", &co);             /* full: new-a goes, tombstoned */
    for (int i = 0; i < MORE_EVICTIONS; i++) {  /* and new-b, new-c, more-0, ... */
        char id[32];
        snprintf(id, sizeof id, "more-%d", i);
        send_foldin(b.p, id, &co);
    }
    int n = 1 + MORE_EVICTIONS;
    CHECKF(held_after(prod, n, 10000) == n, "not every eviction tombstone held");
    CHECK(hl_producer_purge(prod) == (uint64_t)n);
    CHECKF(held_after(prod, n, 3000) == n, "the eviction tombstones not sent again");
    rd_kafka_mock_broker_set_up(to, 1);
    CHECK(hl_producer_flush(prod, 10000) == 0);
    int found = evict_header(rd_kafka_mock_cluster_bootstraps(to), "new-a", at, sizeof at);
    CHECKF(found && strcmp(at, "0") == 0, "new-a's tombstone %s, its header \"%s\" (want "
           "\"0\": the offset of the record it evicts)", found ? "delivered" : "missing", at);
    hl_items_stop(it);
    hl_producer_purge(prod);
    hl_items_destroy(it);
    hl_producer_destroy(prod, 0);
    rd_kafka_mock_cluster_destroy(to);
    bed_close(&b);
}

/* Conditional tombstones of id's fold-in key, n of them, each naming
 * offset `at` (an older record than the key's: stale), in one flush. */
static void send_stale_tombstones(rd_kafka_t *p, const char *id, int n, int64_t at)
{
    char key[HL_ITEM_KEY_MAX], digits[24];
    uint32_t key_len = hl_item_foldin_key(id, (uint32_t)strlen(id), key);
    int len = snprintf(digits, sizeof digits, "%lld", (long long)at);
    for (int i = 0; i < n; i++)
        CHECK(rd_kafka_producev(p, RD_KAFKA_V_TOPIC("items"), RD_KAFKA_V_KEY(key, key_len),
                                RD_KAFKA_V_VALUE(NULL, 0),
                                RD_KAFKA_V_HEADER(HL_ITEM_EVICTS_HEADER, digits, len),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END) == 0);
    CHECK(rd_kafka_flush(p, 10000) == 0);
}

/* Stale tombstones read while loading are noted and answered once the
 * topic was read: one per key, however many the topic holds. Before, each
 * was noted (about 280 bytes) and answered with a copy of the record, so
 * a topic of millions of them (a lagging worker's, or a hostile writer's)
 * grew the reader without bound and sent as many copies. */
#define N_STALE 1000
static void test_stale_tombstones_noted_once_per_key(void)
{
    char err[512];
    bed b;
    bed_open(&b, "stalemany");
    hl_item_codec_opts co = {.framing = HL_FRAMING_RAW, .dim = DIM,
                             .min_ts_ms = INT64_MIN, .max_ts_ms = INT64_MAX};
    hl_kafka_prop kp[] = {{"bootstrap.servers", "127.0.0.1:1"}, {"log_level", "0"}};
    hl_producer *prod = hl_producer_create(kp, 2, NULL, err, sizeof err);
    send_foldin(b.p, "new-a", &co);             /* offset 0 */
    send_foldin(b.p, "new-a", &co);             /* offset 1: the one kept */
    send_stale_tombstones(b.p, "new-a", N_STALE, 0);
    send_foldin(b.p, "new-b", &co);
    send_stale_tombstones(b.p, "new-b", N_STALE, 0);    /* new-b is later: stale */
    hl_items_opts o = {.bootstrap = b.bootstrap, .topic = "items", .codec = co, .m = b.m,
                       .max_new = 4, .prod = prod, .reg = b.reg};
    hl_items *it = prod != NULL ? hl_items_create(&o, err, sizeof err) : NULL;
    CHECKF(it != NULL, "%s", err);
    if (it == NULL)
        return;
    CHECK(hl_items_start(it, err, sizeof err) == 0);
    for (int t = 0; t < 600 && !hl_items_loaded(it); t++)
        usleep(50000);
    CHECK(hl_items_loaded(it));
    held_after(prod, 2, 8000);      /* each note waits a random delay below 5 s */
    usleep(300000);                 /* and nothing more comes */
    int n = hl_producer_flush(prod, 0);
    CHECKF(n == 2, "%d records sent again for %d stale tombstones of 2 keys, want 2 (one "
           "per key)", n, 2 * N_STALE);
    hl_items_stop(it);
    hl_producer_purge(prod);
    hl_items_destroy(it);
    hl_producer_destroy(prod, 0);
    bed_close(&b);
}

/* A stop sends the notes still waiting for their delay: the record a
 * stale tombstone would let compaction delete is sent again at once.
 * Before, a reader stopped within a note's delay (below 5 s) dropped it,
 * and if no other worker answered, the item was lost to the next start
 * until its next doubling. */
static void test_stop_sends_waiting_notes(void)
{
    char err[512];
    bed b;
    bed_open(&b, "stalestop");
    hl_item_codec_opts co = {.framing = HL_FRAMING_RAW, .dim = DIM,
                             .min_ts_ms = INT64_MIN, .max_ts_ms = INT64_MAX};
    hl_kafka_prop kp[] = {{"bootstrap.servers", "127.0.0.1:1"}, {"log_level", "0"}};
    hl_producer *prod = hl_producer_create(kp, 2, NULL, err, sizeof err);
    send_foldin(b.p, "new-a", &co);             /* offset 0 */
    send_foldin(b.p, "new-a", &co);             /* offset 1: the one kept */
    send_stale_tombstones(b.p, "new-a", 1, 0);
    hl_items_opts o = {.bootstrap = b.bootstrap, .topic = "items", .codec = co, .m = b.m,
                       .max_new = 4, .prod = prod, .reg = b.reg};
    hl_items *it = prod != NULL ? hl_items_create(&o, err, sizeof err) : NULL;
    CHECKF(it != NULL, "%s", err);
    if (it == NULL)
        return;
    CHECK(hl_items_start(it, err, sizeof err) == 0);
    for (int t = 0; t < 600 && !hl_items_loaded(it); t++)
        usleep(10000);
    hl_items_stop(it);              /* most likely within the note's delay */
    int n = hl_producer_flush(prod, 0);
    CHECKF(n == 1, "%d records sent again by the stop for 1 stale tombstone, want 1", n);
    hl_producer_purge(prod);
    hl_items_destroy(it);
    hl_producer_destroy(prod, 0);
    bed_close(&b);
}

/* Sends a record under key "bad" that no decoder takes. */
static void send_garbage(rd_kafka_t *p)
{
    CHECK(rd_kafka_producev(p, RD_KAFKA_V_TOPIC("items"), RD_KAFKA_V_PARTITION(0),
                            RD_KAFKA_V_KEY("bad", 3), RD_KAFKA_V_VALUE("\x07\x07\x07", 3),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END) == 0);
}

/* halflife_dlq_errors_total once it reads want, or what it reads after ms. */
static double dlq_errors_after(hl_metrics *reg, double want, int ms)
{
    double v = -1;
    for (int t = 0; t <= ms / 50 && (v = metric_value(reg, "halflife_dlq_errors_total")) != want;
         t++)
        usleep(50000);
    return v;
}

/* A bad update's dead-letter copy that a purge takes back (a release's, or
 * the stop's settle after the reader stopped) did not reach the DLQ topic:
 * counted in halflife_dlq_errors_total and said (event=item_dlq_failed).
 * Before, the copy went without a ticket: purged, it counted nowhere but
 * in the purged records, and only the producer's record_purged line, not
 * naming the update, said it. */
static void test_purged_dead_letter_copy_is_counted_and_said(void)
{
    char err[512], got[16384];
    bed b;
    bed_open(&b, "dlqpurge");
    hl_item_codec_opts co = {.framing = HL_FRAMING_RAW, .dim = DIM,
                             .min_ts_ms = INT64_MIN, .max_ts_ms = INT64_MAX};
    hl_kafka_prop kp[] = {{"bootstrap.servers", "127.0.0.1:1"}, {"log_level", "0"}};
    hl_producer *prod = hl_producer_create(kp, 2, NULL, err, sizeof err);
    send_garbage(b.p);
    hl_items_opts o = {.bootstrap = b.bootstrap, .topic = "items", .codec = co, .m = b.m,
                       .max_new = 4, .prod = prod, .dlq_topic = "items.dlq", .reg = b.reg};
    FILE *tmp = tmpfile();
    int saved = dup(STDERR_FILENO);
    CHECK(tmp != NULL && saved >= 0);
    dup2(fileno(tmp), STDERR_FILENO);
    hl_log_set_level(HL_LOG_WARN);
    hl_items *it = prod != NULL ? hl_items_create(&o, err, sizeof err) : NULL;
    if (it != NULL && hl_items_start(it, err, sizeof err) == 0)
        for (int t = 0; t < 600 && !hl_items_loaded(it); t++)
            usleep(50000);
    int held = held_after(prod, 1, 10000);
    uint64_t purged = hl_producer_purge(prod);
    double running = dlq_errors_after(b.reg, 1, 3000);
    send_garbage(b.p);                          /* held when the reader stops */
    int held2 = held_after(prod, 1, 10000);
    hl_items_stop(it);                          /* as the worker does: stopped, settled, freed */
    hl_producer_purge(prod);
    hl_items_destroy(it);
    double stopped = dlq_errors_after(b.reg, 2, 0);
    hl_producer_destroy(prod, 0);
    hl_log_set_level(HL_LOG_ERROR);
    dup2(saved, STDERR_FILENO);
    close(saved);
    rewind(tmp);
    size_t n = fread(got, 1, sizeof got - 1, tmp);
    got[n] = '\0';
    fclose(tmp);
    const char *line = strstr(got, "event=item_dlq_failed");
    CHECKF(held == 1 && purged == 1 && held2 == 1, "copies held %d and %d, purged %llu (want "
           "1 each)", held, held2, (unsigned long long)purged);
    CHECKF(running == 1 && stopped == 2, "halflife_dlq_errors_total %g after the purge (want "
           "1), %g after the stop's (want 2)", running, stopped);
    CHECKF(line != NULL && strstr(line, "key=\"bad\"") != NULL && strstr(line, "purged"),
           "no item_dlq_failed line naming the purged copy in: %s", got);
    bed_close(&b);
}

/* stderr into a temporary file from here on, at HL_LOG_WARN. */
static FILE *stderr_to_tmp(int *saved)
{
    FILE *tmp = tmpfile();
    *saved = dup(STDERR_FILENO);
    CHECK(tmp != NULL && *saved >= 0);
    dup2(fileno(tmp), STDERR_FILENO);
    hl_log_set_level(HL_LOG_WARN);
    return tmp;
}

/* stderr back; what it got into got (cap bytes, NUL-terminated). */
static void stderr_back(FILE *tmp, int saved, char *got, size_t cap)
{
    hl_log_set_level(HL_LOG_ERROR);
    dup2(saved, STDERR_FILENO);
    close(saved);
    rewind(tmp);
    size_t n = fread(got, 1, cap - 1, tmp);
    got[n] = '\0';
    fclose(tmp);
}

/* Serves prod's reports until metric name reads want or ms pass; what it
 * reads then. */
static double served_until(hl_producer *prod, hl_metrics *reg, const char *name,
                           double want, int ms)
{
    double v = -1;
    for (int t = 0; t <= ms / 50 && (v = metric_value(reg, name)) != want; t++)
        hl_producer_poll(prod, 50);
    return v;
}

/* A bad update's dead-letter copy the broker refuses: counted in
 * halflife_dlq_errors_total alone and said once, by item_dlq_failed, which
 * names the update's partition, offset and reason. Before, the producer
 * also counted it in halflife_delivery_errors_total (whose alert says the
 * worker fails to publish lists) with a delivery_failed line of its own,
 * halflife_item_updates_dlq_total counted it when it was queued, and
 * item_dlq_failed named no partition nor reason. A copy the broker takes
 * counts in halflife_item_updates_dlq_total. */
static void test_refused_dead_letter_copy_counted_once(void)
{
    char err[512], got[16384];
    int saved;
    bed b;
    bed_open(&b, "dlqrefused");
    rd_kafka_mock_topic_create(b.mock, "items.dlq", 1, 1);
    hl_item_codec_opts co = {.framing = HL_FRAMING_RAW, .dim = DIM,
                             .min_ts_ms = INT64_MIN, .max_ts_ms = INT64_MAX};
    hl_kafka_prop kp[] = {{"bootstrap.servers", b.bootstrap}, {"log_level", "0"}};
    hl_counter *derr = hl_metrics_counter(b.reg, "halflife_delivery_errors_total",
                                          "refused records", NULL);
    hl_producer *prod = hl_producer_create(kp, 2, derr, err, sizeof err);
    send_garbage(b.p);
    CHECK(rd_kafka_flush(b.p, 10000) == 0);     /* the bed's own produce is not refused */
    /* a refusal librdkafka does not remember: after a topic authorisation
     * error it fails the topic's next sends at once, and the second copy
     * below would not get there */
    rd_kafka_mock_push_request_errors(b.mock, 0 /* Produce */, 1,
                                      RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE);
    hl_items_opts o = {.bootstrap = b.bootstrap, .topic = "items", .codec = co, .m = b.m,
                       .max_new = 4, .prod = prod, .dlq_topic = "items.dlq", .reg = b.reg};
    FILE *tmp = stderr_to_tmp(&saved);
    hl_items *it = prod != NULL ? hl_items_create(&o, err, sizeof err) : NULL;
    if (it != NULL && hl_items_start(it, err, sizeof err) == 0)
        for (int t = 0; t < 600 && !hl_items_loaded(it); t++)
            usleep(50000);
    double lost = served_until(prod, b.reg, "halflife_dlq_errors_total", 1, 10000);
    double as_list = metric_value(b.reg, "halflife_delivery_errors_total");
    double copied = metric_value(b.reg, "halflife_item_updates_dlq_total");
    send_garbage(b.p);                          /* this copy gets there */
    double copied2 = served_until(prod, b.reg, "halflife_item_updates_dlq_total", 1, 10000);
    hl_items_stop(it);
    hl_producer_purge(prod);
    hl_items_destroy(it);
    hl_producer_destroy(prod, 0);
    stderr_back(tmp, saved, got, sizeof got);
    const char *line = strstr(got, "event=item_dlq_failed");
    CHECKF(lost == 1 && as_list == 0, "halflife_dlq_errors_total %g (want 1), "
           "halflife_delivery_errors_total %g (want 0)", lost, as_list);
    CHECKF(copied == 0 && copied2 == 1, "halflife_item_updates_dlq_total %g with the copy "
           "refused (want 0), %g once one got there (want 1)", copied, copied2);
    CHECKF(line != NULL && strstr(line, " partition=0 offset=0 reason=") != NULL &&
           strstr(line, " reason=? ") == NULL && strstr(line, "too large") != NULL,
           "no item_dlq_failed line naming partition, offset, reason and cause in: %s", got);
    CHECKF(strstr(got, "event=delivery_failed") == NULL, "the refusal said twice: %s", got);
    bed_close(&b);
}

/* A model swap to a model that no longer knows an item an operator's
 * record names (it counts against catalogue.max.new.items again) gives up
 * the stalest fold-in items beyond the bound at once, tombstoned, as the
 * end of a load does. Before, the catalogue kept max_new + 1 new items
 * until tombstones came, and so did every list: a worker started on the
 * new model kept max_new. */
static void test_swap_keeps_the_bound(void)
{
    char err[512];
    bed b;
    bed_open(&b, "swapbound");
    hl_item_codec_opts co = {.framing = HL_FRAMING_RAW, .dim = DIM,
                             .min_ts_ms = INT64_MIN, .max_ts_ms = INT64_MAX};
    hl_kafka_prop kp[] = {{"bootstrap.servers", "127.0.0.1:1"}, {"log_level", "0"}};
    hl_producer *prod = hl_producer_create(kp, 2, NULL, err, sizeof err);
    send_upd(b.p, "i5", &co);                   /* an operator hides i5 (known) */
    send_foldin(b.p, "new-a", &co);
    send_foldin(b.p, "new-b", &co);
    tm small;
    tm_init(&small, 4);                         /* i0..i3: no i5 */
    hl_model *m2 = tm_open(&small, "swapbound2");
    hl_items_opts o = {.bootstrap = b.bootstrap, .topic = "items", .codec = co, .m = b.m,
                       .max_new = 2, .prod = prod, .reg = b.reg};
    hl_items *it = prod != NULL && m2 != NULL ? hl_items_create(&o, err, sizeof err) : NULL;
    CHECKF(it != NULL, "%s", err);
    if (it == NULL)
        return;
    CHECK(hl_items_start(it, err, sizeof err) == 0);
    for (int t = 0; t < 600 && !(hl_items_loaded(it) && hl_items_applied(it) == 3); t++)
        usleep(50000);
    CHECK(hl_items_rebind(it, m2, 2) == 0);
    int64_t a = hl_items_foldin_state(it, "new-a", 5), bb = hl_items_foldin_state(it, "new-b", 5);
    int held = held_after(prod, 1, 3000);
    CHECKF(a == 0 && bb == 2 && held == 1, "after the swap: new-a %lld (want 0: given up), "
           "new-b %lld (want 2), tombstones sent %d (want 1: new-a's)", (long long)a,
           (long long)bb, held);
    hl_items_stop(it);
    hl_producer_purge(prod);
    hl_items_destroy(it);
    hl_producer_destroy(prod, 0);
    hl_model_close(m2);
    tm_free(&small);
    bed_close(&b);
}

int main(void)
{
    hl_log_set_level(HL_LOG_ERROR);
    RUN(test_loaded_only_after_reading_to_the_end);
    RUN(test_foreign_ids_do_not_fill_known);
    RUN(test_hostile_id_stays_in_its_value);
    RUN(test_partition_added_later_is_read);
    RUN(test_purged_eviction_tombstone_is_sent_again);
    RUN(test_purged_eviction_tombstone_names_its_record);
    RUN(test_stale_tombstones_noted_once_per_key);
    RUN(test_stop_sends_waiting_notes);
    RUN(test_swap_keeps_the_bound);
    RUN(test_purged_dead_letter_copy_is_counted_and_said);
    RUN(test_refused_dead_letter_copy_counted_once);
    TEST_EXIT();
}
