/* config.c - the key table, the three layers (file < environment < -X) and
 * the typed getters.
 *
 * The table below is the single source of truth: its defaults are what the
 * getters return before anything is set, its ranges and choices are what
 * hl_config_set() enforces, and its help text is `halflife run --help` and
 * README.md's key list (`halflife run --help-markdown`, `make readme-keys`).
 * hl_config_worker_opts() (config_opts.c) is the one place a key becomes a
 * field of hl_worker_opts.
 * A value is parsed and checked once, when it is set, so a getter never
 * fails. kafka.* keys are not in the table: each is tried on a scratch
 * librdkafka configuration when set, so a misspelt Kafka property is
 * refused at start like any other key, then kept (prefix removed) in the
 * order first set. */
#include "config.h"
#include "cpus.h"
#include "foldin.h"
#include "kafka_conf.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum { T_STR, T_INT, T_NUM, T_BOOL, T_ENUM } key_type;

typedef struct key_def {
    const char *key;
    key_type    type;
    const char *def;        /* NULL: no default (see the getters) */
    double      min, max;   /* T_INT, T_NUM: range; T_STR: length range */
    const char *choices;    /* T_ENUM: "a|b|c" */
    const char *help;
} key_def;

#define BIG    1e15

static const key_def keys[] = {
    {"group.id",            T_STR,  "halflife", 1, 255, NULL, "consumer group"},
    {"input.topic",         T_STR,  "behaviour-events", 1, 249, NULL, "topic of BehaviourEvents, keyed by user_id"},
    {"output.topic",        T_STR,  "recommendations", 1, 249, NULL, "topic of RecommendationLists, keyed by user_id"},
    {"dlq.topic",           T_STR,  NULL, 0, 249, NULL, "dead letters (default <input.topic>.dlq); empty disables"},
    {"items.topic",         T_STR,  "items", 0, 249, NULL, "topic of ItemUpdates (compacted, keyed by item_id), read whole by every worker before it reports ready, then followed; empty disables"},
    {"items.schema.id",     T_INT,  "3", 0, 2147483647.0, NULL, "schema id of ItemUpdates in Confluent framing (others are unknown_schema); unused with schema.registry.url"},
    {"catalogue.foldin",    T_BOOL, "true", 0, 0, NULL, "items unknown to the model earn vectors from the query vectors of the users who interact with them; each worker publishes them to items.topic (needs it set)"},
    {"catalogue.foldin.min.events", T_INT, "2", 1, 1000000, NULL, "interactions (events of weight > 0) one worker sees with an unknown item before it publishes the item's vectors (then again at each doubling)"},
    {"catalogue.foldin.lift", T_NUM, HL_FOLDIN_LIFT, 0, 1, NULL, "beta: the model items a folded item takes its vectors from are ranked by its users' mean query less beta x the other new items' users' mean query, their biases weighted 1 - beta; 1: by what sets its users apart, not by popularity"},
    {"catalogue.foldin.distinct", T_NUM, HL_FOLDIN_DISTINCT, 0, 1, NULL, "with the lift: a folded item is published only while its lifted mean query keeps at least this share of its users' mean query's length (else again at its next doubling); 0 off. 0.95 keeps ml-latest-small exactly at the frozen catalogue's HR@10 and taobao-sample's gain (tests/quality/RESULTS.md, The lift)"},
    {"catalogue.foldin.e_in.scale", T_NUM, HL_FOLDIN_E_IN_SCALE, 0, 1, NULL, "share of an event's weight with which a folded item's e_in (published by fold-in, not an operator's embedding) enters the user's state; 0: as an unknown item"},
    {"catalogue.max.new.items", T_INT, "100000", 0, 10000000, NULL, "items unknown to the model the catalogue keeps (added from the item topic, or only hidden or named by it); when full, a new id takes the slot of the least recently published fold-in item (tombstoned, halflife_items_foldin_evicted_total); only with every slot an operator's is an update refused and counted (catalogue_full)"},
    {"input.format",        T_ENUM, "confluent", 0, 0, "confluent|raw", "input framing: Confluent (magic 0, schema id) or plain Avro binary"},
    {"output.format",       T_ENUM, "confluent", 0, 0, "confluent|raw", "output framing"},
    {"schemas.dir",         T_STR,  "schemas", 1, 4095, NULL, "writer schemas by id, <dir>/<id>.avsc"},
    {"output.schema.id",    T_INT,  "2", 0, 2147483647.0, NULL, "schema id written before each list in Confluent framing (without schema.registry.url)"},
    {"schema.registry.url", T_STR,  NULL, 1, 4095, NULL, "Schema Registry URLs, comma-separated, tried in turn; set: writer schemas of events and item updates come from it by id and the lists' schema is registered under <output.topic>-value (schemas.dir, output.schema.id and items.schema.id are then unused)"},
    {"schema.registry.timeout.ms", T_INT, "10000", 1, 600000, NULL, "longest wait for one registry request to one URL"},
    {"schema.registry.auto.register", T_BOOL, "true", 0, 0, NULL, "register the lists' schema at start; false: only look its id up (it must be registered)"},
    {"schema.registry.basic.auth.user.info", T_STR, NULL, 1, 1024, NULL, "user:password for HTTP Basic auth to the registry (never printed)"},
    {"schema.registry.ssl.ca.location", T_STR, NULL, 1, 4095, NULL, "CA certificates file to verify the registry's TLS certificate (default: the system's)"},
    {"schema.registry.ssl.certificate.location", T_STR, NULL, 1, 4095, NULL, "client certificate file (PEM) for TLS to the registry"},
    {"schema.registry.ssl.key.location", T_STR, NULL, 1, 4095, NULL, "private key file (PEM) of that certificate"},
    {"schema.registry.fallback.dir", T_STR, NULL, 1, 4095, NULL, "writer schemas <dir>/<id>.avsc used only for ids the registry answers 404 for; unset: none"},
    {"event.min.ts.ms",     T_INT,  "0", -BIG, BIG, NULL, "events before this time (ms since 1970) are invalid (bad_timestamp)"},
    {"event.max.ts.ms",     T_INT,  HL_STR(HL_EVENT_MAX_TS_MS), -BIG, BIG, NULL, "events after this time are invalid (default 2100-01-01)"},
    {"event.max.future.ms", T_INT,  "3600000", 0, BIG, NULL, "events dated further than this ahead of the worker's wall clock are invalid (bad_timestamp), so one bad producer clock cannot move the stream time every user decays to and expires_at is compared against; 0 = no bound (only event.max.ts.ms)"},
    {"event.max.weight",    T_NUM,  HL_STR(HL_EVENT_MAX_WEIGHT), 1e-6, 1e30, NULL, "events whose weight field is above this (or NaN, infinite, negative) are invalid (bad_weight)"},
    {"model.path",          T_STR,  NULL, 1, 4095, NULL, "the .hlm model file (demo: trains one when unset); replace it by rename to swap models live"},
    {"model.dir",           T_STR,  NULL, 1, 4095, NULL, "where every model served is kept as <fingerprint>.hlm, so snapshots written under it migrate after a restart with another model (default <snapshot.dir>/models)"},
    {"model.retain",        T_INT,  "4", 1, 1000, NULL, "models kept in model.dir (the least recently served go first, never one served or migrated from here, nor one any worker sharing model.dir served in the last 10 minutes)"},
    {"model.check.ms",      T_INT,  "10000", 0, 86400000, NULL, "how often model.path is checked for a new model (also on SIGHUP); 0 = only on SIGHUP"},
    {"recs.enabled",        T_BOOL, "true", 0, 0, NULL, "publish lists; false keeps state only"},
    {"recs.k",              T_INT,  "20", 1, 1000, NULL, "list length"},
    {"recs.exclude.seen",   T_BOOL, "true", 0, 0, NULL, "drop items in the user's history from the list"},
    {"recs.exclude.seen.events", T_INT, "0", 0, 255, NULL, "with recs.exclude.seen, drop only the items of the user's last N events, so state.history can keep more events (a more exact model swap) than lists leave out; at most state.history (refused at start above it); 0 = every event the history holds"},
    {"recs.scoring",        T_ENUM, "auto", 0, 0, "auto|exact|two-stage", "two-stage: an int8 copy of e_out proposes candidates under an error bound and exact fp32 scores decide, so lists equal exact's, 3-4x faster at 1M items; exact: fp32 over every item; auto: two-stage where the CPU has AVX-512 VNNI, else exact"},
    {"recs.index",          T_ENUM, "none", 0, 0, "none|ivf", "ivf: an approximate inverted-file index over e_out, built at model load, scores only the recs.index.nprobe clusters nearest the user's query (for catalogues of millions of items); returned scores are exact, the set may miss some of the exact list (recall@k logged at start, halflife_index_recall); none: recs.scoring over every item"},
    {"recs.index.nlist",    T_INT,  "0", 0, 1048576, NULL, "clusters (lists) of the ivf index, at most the number of items; 0 = 4 sqrt(items)"},
    {"recs.index.nprobe",   T_INT,  "0", 0, 1048576, NULL, "clusters scored per refresh with recs.index=ivf, at most recs.index.nlist: more is slower and closer to exact; 0 = nlist/16 of each model's index, a model swapped in included (recall@20 0.996 on bench_index's clustered model at 1M items with the inner-product partition; nlist/64 already gives 0.97)"},
    {"recs.index.shadow.every", T_INT, "1000", 0, 1000000000, NULL, "with recs.index=ivf, every Nth refreshed user is also scored exactly and the lists compared (halflife_index_recall); 0 disables"},
    {"recs.min.interval.ms",T_INT,  "0", 0, BIG, NULL, "refresh a user at most this often (event time; a held list also goes out once it has waited this long on the worker's clock); 0 = after every batch that touched it"},
    {"worker.threads",      T_INT,  "0", 0, 256, NULL, "shard-owning threads; 0 = the CPUs this process may use (affinity, cgroup CPU quota)"},
    {"worker.io.slice.us",  T_INT,  "0", 0, 100000, NULL, "scheduler time slice in microseconds of the thread that starts the worker and of librdkafka's threads (fetches, sends, delivery reports), e.g. 100; shard threads keep the kernel's default. A short slice lets them run soon after they wake instead of waiting out a refresh, with the same CPU share (Linux 6.12+; older kernels ignore it). Experimental: A/B runs on a shared machine disagreed (tests/bench/RESULTS.md); 0 = the kernel's default"},
    {"batch.max.messages",  T_INT,  "10000", 1, 1000000, NULL, "most records per batch"},
    {"batch.max.ms",        T_INT,  "5", 0, 60000, NULL, "longest wait to fill a batch"},
    {"state.history",       T_INT,  "32", 1, 255, NULL, "events kept per user (seen items, because, rebuilds)"},
    {"state.max.users",     T_INT,  "10000000", 1, 1e9, NULL, "users per shard; the least recently active go first beyond, and on restore (a snapshot or changelog of more users is cut: event=restore_over_max_users)"},
    {"state.evict.mass",    T_NUM,  "1e-6", 0, 1e30, NULL, "a user whose decayed mass is below this in every head is dropped"},
    {"weight.view",         T_NUM,  NULL, 0, 1e6, NULL, "type weight of VIEW (default: the model's)"},
    {"weight.click",        T_NUM,  NULL, 0, 1e6, NULL, "type weight of CLICK (default: the model's)"},
    {"weight.favorite",     T_NUM,  NULL, 0, 1e6, NULL, "type weight of FAVORITE (default: the model's)"},
    {"weight.add_to_cart",  T_NUM,  NULL, 0, 1e6, NULL, "type weight of ADD_TO_CART (default: the model's)"},
    {"weight.purchase",     T_NUM,  NULL, 0, 1e6, NULL, "type weight of PURCHASE (default: the model's)"},
    {"weight.rate",         T_NUM,  NULL, 0, 1e6, NULL, "type weight of RATE (default: the model's)"},
    {"snapshot.dir",        T_STR,  "snapshots", 1, 4095, NULL, "directory of shard snapshots"},
    {"deadletter.max.bytes", T_INT, "1073741824", 0, BIG, NULL, "bytes snapshot.dir/dead-letters may hold (bad records whose dead-letter topic copy failed); a record is written while the directory is below the cap, so the last one may pass it by its own size (at most receive.message.max.bytes), and a record larger than the cap never holds a partition by itself; at the cap a partition with such a record stops being consumed (its offset held, lag grows) until files are moved out of that directory; 0 = no cap"},
    {"snapshot.interval.ms",T_INT,  "30000", 0, 86400000, NULL, "time between snapshots of a shard; 0 = only on revocation and shutdown"},
    {"snapshot.retain",     T_INT,  "2", 1, 1000, NULL, "snapshots kept per shard"},
    {"state.store",         T_ENUM, "file", 0, 0, "file|kafka", "where a shard's durable state lives: file (snapshot.dir alone; one machine or a shared volume) or kafka (a compacted changelog topic, snapshot.dir a local cache)"},
    {"state.topic",         T_STR,  NULL, 0, 249, NULL, "changelog topic of state.store=kafka (default <group.id>-state)"},
    {"state.flush.ms",      T_INT,  NULL, 1, 86400000, NULL, "time between changelog flushes of a shard (default snapshot.interval.ms, or 1000 when that is 0)"},
    {"shutdown.timeout.ms", T_INT,  "30000", 0, 3600000, NULL, "graceful stop bound; also how long a revocation waits for its partitions' undelivered lists (refused, or the broker away) before it lets them go, their events left for the next owner to read again; every record the producer still holds is then purged (lists still owned are refreshed again), so no old list lands after the next owner's newer one; partitions lost by session timeout go at once"},
    {"metrics.port",        T_INT,  "9464", 0, 65535, NULL, "HTTP port of /metrics, /healthz, /readyz; 0 disables"},
    {"metrics.bind",        T_STR,  "0.0.0.0", 1, 45, NULL, "IP address the HTTP endpoint listens on: 0.0.0.0 every IPv4 interface (Kubernetes probes and scrapes reach the pod IP), 127.0.0.1 this host only, :: every IPv6 and IPv4 interface, ::1 IPv6 loopback only"},
    {"auto.offset.reset",   T_ENUM, "earliest", 0, 0, "earliest|latest", "where a partition with nothing to restore (no snapshot, no changelog) starts; the group's committed offset is not used (kafka.auto.offset.reset wins if set)"},
    {"log.level",           T_ENUM, "info", 0, 0, "debug|info|warn|error", "lowest level logged"},
    {"embedded.partitions", T_INT,  "4", 1, 1000, NULL, "partitions per topic of the embedded broker (no kafka.bootstrap.servers)"},
};
#define N_KEYS ((int)(sizeof keys / sizeof keys[0]))

typedef struct setting {
    char   *text;           /* as set (or the default); NULL: unset, no default */
    int64_t i;              /* T_INT, T_BOOL, T_ENUM (index in choices) */
    double  d;              /* T_NUM */
    int     is_set;
} setting;

struct hl_config {
    setting        v[N_KEYS];
    hl_kafka_prop *kafka;   /* keys and values malloc'd */
    int            n_kafka, cap_kafka;
    char          *dlq_default;   /* "<input.topic>.dlq", rebuilt by the getter */
};

static int find_key(const char *key)
{
    for (int k = 0; k < N_KEYS; k++)
        if (strcmp(keys[k].key, key) == 0)
            return k;
    return -1;
}

/* The index of s in "a|b|c", or -1. */
static int choice_index(const char *choices, const char *s)
{
    size_t n = strlen(s);
    int i = 0;
    for (const char *p = choices; ; i++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, s, n) == 0)
            return i;
        if (!bar)
            return -1;
        p = bar + 1;
    }
}

static int parse_bool(const char *s)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) return 1;
        if (strcasecmp(s, no[i]) == 0) return 0;
    }
    return -1;
}

/* A key whose value is never printed: credentials (ours, and librdkafka's
 * sasl.password, ssl.key.password, sasl.oauthbearer.client.secret, ...). */
static int is_secret_name(const char *key)
{
    return strstr(key, "user.info") != NULL || strstr(key, "password") != NULL ||
           strstr(key, "secret") != NULL;
}

static int is_secret(const key_def *d)
{
    return is_secret_name(d->key);
}

/* Parses text for key k into *out; a reason naming key, value, origin and
 * what is allowed otherwise. */
static int parse_value(int k, const char *text, const char *origin, setting *out,
                       char *errbuf, size_t errlen)
{
    const key_def *d = &keys[k];
    char *end;
    double x;
    size_t len = strlen(text);

    switch (d->type) {
    case T_STR:
        if ((len < d->min || len > d->max) && is_secret(d))
            return hl_err(errbuf, errlen, HL_EINVAL, "%s (from %s): length %zu, allowed %.0f..%.0f "
                          "(the value is not shown)", d->key, origin, len, d->min, d->max);
        if (len < d->min || len > d->max)
            return hl_err(errbuf, errlen, HL_EINVAL, "%s=\"%.64s%s\" (from %s): length %zu, allowed %.0f..%.0f",
                          d->key, text, HL_MORE64(len), origin, len, d->min, d->max);
        return 0;
    case T_INT:
        errno = 0;
        out->i = strtoll(text, &end, 10);
        if (len == 0 || *end != '\0' || (errno != 0 && errno != ERANGE) ||
            isspace((unsigned char)text[0]))
            return hl_err(errbuf, errlen, HL_EINVAL, "%s=\"%.64s%s\" (from %s): not an integer; "
                          "allowed %.0f..%.0f", d->key, text, HL_MORE64(len), origin, d->min, d->max);
        if (errno == ERANGE || (double)out->i < d->min || (double)out->i > d->max)
            return hl_err(errbuf, errlen, HL_EINVAL, "%s=%.64s%s (from %s): out of range; "
                          "allowed %.0f..%.0f", d->key, text, HL_MORE64(len), origin, d->min, d->max);
        return 0;
    case T_NUM:
        errno = 0;
        x = strtod(text, &end);
        if (len == 0 || *end != '\0' || (errno != 0 && errno != ERANGE) || isnan(x) ||
            isspace((unsigned char)text[0]))
            return hl_err(errbuf, errlen, HL_EINVAL, "%s=\"%.64s%s\" (from %s): not a number; "
                          "allowed %g..%g", d->key, text, HL_MORE64(len), origin, d->min, d->max);
        if (errno == ERANGE || !isfinite(x) || x < d->min || x > d->max)
            return hl_err(errbuf, errlen, HL_EINVAL, "%s=%.64s%s (from %s): out of range; "
                          "allowed %g..%g", d->key, text, HL_MORE64(len), origin, d->min, d->max);
        out->d = x;
        return 0;
    case T_BOOL:
        if ((out->i = parse_bool(text)) < 0)
            return hl_err(errbuf, errlen, HL_EINVAL, "%s=\"%.64s%s\" (from %s): allowed "
                          "true|false", d->key, text, HL_MORE64(len), origin);
        return 0;
    case T_ENUM:
        if ((out->i = choice_index(d->choices, text)) < 0)
            return hl_err(errbuf, errlen, HL_EINVAL, "%s=\"%.64s%s\" (from %s): allowed %s",
                          d->key, text, HL_MORE64(len), origin, d->choices);
        return 0;
    }
    return HL_EINVAL;
}

/* Replaces slot k's value with text, parsed. */
static int store(setting *slot, int k, const char *text, const char *origin, int is_set,
                 char *errbuf, size_t errlen)
{
    setting nv = {0};
    int rc = parse_value(k, text, origin, &nv, errbuf, errlen);
    if (rc != 0)
        return rc;
    if ((nv.text = strdup(text)) == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "config: out of memory");
    nv.is_set = is_set;
    free(slot->text);
    *slot = nv;
    return 0;
}

hl_config *hl_config_create(void)
{
    hl_config *cfg = calloc(1, sizeof *cfg);
    if (cfg == NULL)
        return NULL;
    for (int k = 0; k < N_KEYS; k++) {
        if (keys[k].def == NULL) {
            cfg->v[k].d = NAN;
            continue;
        }
        /* A default that does not parse is a bug in the table above. */
        if (store(&cfg->v[k], k, keys[k].def, "default", 0, NULL, 0) != 0) {
            hl_config_destroy(cfg);
            return NULL;
        }
    }
    return cfg;
}

void hl_config_destroy(hl_config *cfg)
{
    if (cfg == NULL)
        return;
    for (int k = 0; k < N_KEYS; k++)
        free(cfg->v[k].text);
    for (int i = 0; i < cfg->n_kafka; i++) {
        free((char *)cfg->kafka[i].key);
        free((char *)cfg->kafka[i].value);
    }
    free(cfg->kafka);
    free(cfg->dlq_default);
    free(cfg);
}

/* kafka.* keys the worker owns or whose value would break its
 * at-least-once promise, refused rather than passed on. group.id: below.
 * enable.auto.offset.store=true lets
 * librdkafka store (and auto-commit) each event's offset as it is
 * consumed, before its batch's lists are delivered: a crash then loses
 * those lists, and the next owner without a snapshot starts past the
 * events. The value was accepted by librdkafka, so only its bool matters. */
static int kafka_breaks_guarantee(const char *key, const char *text, const char *origin,
                                  char *errbuf, size_t errlen)
{
    /* The group is the worker's own key: kafka.group.id moved only the
     * consumer, while the state topic (<group.id>-state), the logs and
     * the metrics kept group.id, so two deployments could share state. */
    if (strcmp(key, "group.id") == 0)
        return hl_err(errbuf, errlen, HL_EINVAL, "kafka.group.id (from %s): the consumer group "
                      "is the worker's key: set group.id instead (HALFLIFE_GROUP_ID, "
                      "-X group.id=...), which also names the state topic", origin);
    if (strcmp(key, "enable.auto.offset.store") == 0 && parse_bool(text) == 1)
        return hl_err(errbuf, errlen, HL_EINVAL, "kafka.enable.auto.offset.store=%s (from %s): "
                      "the worker stores an offset only once its batch's lists are delivered; "
                      "librdkafka's own storing would commit events whose lists a crash loses. "
                      "Remove the key", text, origin);
    return 0;
}

/* kafka.<key>: librdkafka must accept it (a scratch conf tells), then it is
 * kept, replacing an earlier value of the same key. */
static int set_kafka(hl_config *cfg, const char *key, const char *text, const char *origin,
                     char *errbuf, size_t errlen)
{
    char why[512];
    char *k2, *v2;
    size_t len = strlen(text);
    if (strcmp(key, "bootstrap.servers") == 0 && len > HL_BOOTSTRAP_MAX)
        return hl_err(errbuf, errlen, HL_EINVAL, "kafka.bootstrap.servers (from %s): %zu "
                      "characters, at most %d: list fewer brokers (a few of a cluster's are "
                      "enough to find the rest)", origin, len, HL_BOOTSTRAP_MAX);
    /* Empty is not unset: a variable whose source rendered empty started
     * the embedded broker, a worker that reported ready on no real data. */
    if (strcmp(key, "bootstrap.servers") == 0 && text[strspn(text, " \t,")] == '\0')
        return hl_err(errbuf, errlen, HL_EINVAL, "kafka.bootstrap.servers (from %s) is empty: "
                      "give the brokers as host:port,... (halflife run starts an "
                      "embedded broker only when the key is unset)", origin);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_res_t res = rd_kafka_conf_set(conf, key, text, why, sizeof why);
    rd_kafka_conf_destroy(conf);
    hl_kafka_chomp(why);
    if ((*key == '\0' || res != RD_KAFKA_CONF_OK) && is_secret_name(key))
        return hl_err(errbuf, errlen, HL_EINVAL, "kafka.%s (from %s): librdkafka refuses it "
                      "(the value is not shown): %s", key, origin, why);
    if (*key == '\0' || res != RD_KAFKA_CONF_OK)
        return hl_err(errbuf, errlen, HL_EINVAL, "kafka.%s=\"%.64s%s\" (from %s): librdkafka "
                      "refuses it: %s", key, text, HL_MORE64(len), origin,
                      *key ? why : "empty property name");
    if (kafka_breaks_guarantee(key, text, origin, errbuf, errlen) != 0)
        return HL_EINVAL;
    if ((v2 = strdup(text)) == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "config: out of memory");
    for (int i = 0; i < cfg->n_kafka; i++) {
        if (strcmp(cfg->kafka[i].key, key) == 0) {
            free((char *)cfg->kafka[i].value);
            cfg->kafka[i].value = v2;
            return 0;
        }
    }
    if (cfg->n_kafka == cfg->cap_kafka) {
        int cap = cfg->cap_kafka ? cfg->cap_kafka * 2 : 8;
        hl_kafka_prop *np = realloc(cfg->kafka, (size_t)cap * sizeof *np);
        if (np == NULL) {
            free(v2);
            return hl_err(errbuf, errlen, HL_ENOMEM, "config: out of memory");
        }
        cfg->kafka = np;
        cfg->cap_kafka = cap;
    }
    if ((k2 = strdup(key)) == NULL) {
        free(v2);
        return hl_err(errbuf, errlen, HL_ENOMEM, "config: out of memory");
    }
    cfg->kafka[cfg->n_kafka].key = k2;
    cfg->kafka[cfg->n_kafka].value = v2;
    cfg->n_kafka++;
    return 0;
}

int hl_config_set(hl_config *cfg, const char *key, const char *value, const char *origin,
                  char *errbuf, size_t errlen)
{
    int k;
    if (strncmp(key, "kafka.", 6) == 0)
        return set_kafka(cfg, key + 6, value, origin, errbuf, errlen);
    if ((k = find_key(key)) < 0)
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "unknown key \"%.64s%s\" (from %s); 'halflife run --help' lists the keys",
                      key, HL_MORE64(strlen(key)), origin);
    return store(&cfg->v[k], k, value, origin, 1, errbuf, errlen);
}

static char *trim(char *s)
{
    char *e;
    while (isspace((unsigned char)*s))
        s++;
    e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* One "key=value" with the key and value trimmed (as Kafka users write
 * properties files, "key = value" is allowed). */
static int set_pair(hl_config *cfg, char *line, const char *origin, char *errbuf, size_t errlen)
{
    char *eq = strchr(line, '=');
    if (eq == NULL)
        return hl_err(errbuf, errlen, HL_EINVAL, "%s: \"%.64s%s\" is not key=value", origin, line,
                      HL_MORE64(strlen(line)));
    *eq = '\0';
    return hl_config_set(cfg, trim(line), trim(eq + 1), origin, errbuf, errlen);
}

/* Lines are read whole, however long (getline), so a comment stays one
 * comment: with a fixed buffer the tail of a long comment came back as a
 * line of its own and "# ...group.id=hijacked" set the group. A NUL byte
 * would cut a line short without a word, so it is refused instead. A
 * UTF-8 byte order mark (Windows editors write one) is skipped at the
 * start of the file only: it is invisible, and the first key was refused
 * as 'unknown key "group.id"'. */
int hl_config_load_file(hl_config *cfg, const char *path, char *errbuf, size_t errlen)
{
    char *line = NULL, origin[512];
    size_t cap = 0;
    ssize_t len;
    int rc = 0, n = 0;
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return hl_err(errbuf, errlen, HL_EIO, "config file %s: %s", path, strerror(errno));
    while (rc == 0 && (len = getline(&line, &cap, f)) >= 0) {
        char *s;
        n++;
        snprintf(origin, sizeof origin, "%s line %d", path, n);
        if (strlen(line) != (size_t)len) {
            rc = hl_err(errbuf, errlen, HL_EINVAL, "%s: contains a NUL byte", origin);
            break;
        }
        s = line;
        if (n == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
            s += 3;
        s = trim(s);
        if (*s == '\0' || *s == '#' || *s == '!')
            continue;
        rc = set_pair(cfg, s, origin, errbuf, errlen);
    }
    /* getline also stops on ENOMEM without setting the error flag: only
     * the end of the file is a clean end. */
    if (rc == 0 && (ferror(f) || !feof(f)))
        rc = hl_err(errbuf, errlen, HL_EIO, "config file %s line %d: %s", path, n + 1,
                    errno ? strerror(errno) : "read error");
    free(line);
    fclose(f);
    return rc;
}

/* HALFLIFE_RECS_K -> recs.k: the table key whose upper-cased, '.'->'_' form
 * matches; HALFLIFE_KAFKA_X_Y -> kafka.x.y (librdkafka keys have no '_'). */
static int env_key(const char *name, char *key, size_t keylen)
{
    for (int k = 0; k < N_KEYS; k++) {
        const char *a = keys[k].key;
        size_t i;
        for (i = 0; a[i] && name[i]; i++)
            if ((a[i] == '.' ? '_' : toupper((unsigned char)a[i])) != name[i])
                break;
        if (a[i] == '\0' && name[i] == '\0') {
            snprintf(key, keylen, "%s", a);
            return 0;
        }
    }
    if (strncmp(name, "KAFKA_", 6) == 0 && strlen(name) < keylen) {
        size_t i;
        for (i = 0; name[i]; i++)
            key[i] = name[i] == '_' ? '.' : (char)tolower((unsigned char)name[i]);
        key[i] = '\0';
        return 0;
    }
    return -1;
}

int hl_config_load_env(hl_config *cfg, char *const *envp, char *errbuf, size_t errlen)
{
    char name[256], key[256];
    for (; envp != NULL && *envp != NULL; envp++) {
        const char *e = *envp, *eq = strchr(e, '=');
        int rc;
        if (strncmp(e, "HALFLIFE_", 9) != 0 || eq == NULL)
            continue;
        snprintf(name, sizeof name, "%.*s", (int)(eq - e), e);
        if (env_key(name + 9, key, sizeof key) != 0)
            return hl_err(errbuf, errlen, HL_EINVAL,
                          "environment variable %s names no key; 'halflife run --help' lists the keys",
                          name);
        if ((rc = hl_config_set(cfg, key, eq + 1, name, errbuf, errlen)) != 0)
            return rc;
    }
    return 0;
}

int hl_config_set_arg(hl_config *cfg, const char *arg, char *errbuf, size_t errlen)
{
    char *copy = strdup(arg);
    int rc;
    if (copy == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "config: out of memory");
    rc = set_pair(cfg, copy, "-X", errbuf, errlen);
    free(copy);
    return rc;
}

/* Every topic the worker reads or writes, as it will name them, must be a
 * topic of its own. A dead letter written to the input is consumed again,
 * is bad again and is written again in a tight loop (95 a second,
 * measured), and the topic grows without bound; a list written to the
 * input is not a BehaviourEvent, so each one is dead-lettered in turn; a
 * changelog written into the item or input topic feeds records of another
 * schema to their readers. Defaults count as the worker uses them:
 * dlq.topic "<input.topic>.dlq" (empty disables it), state.topic
 * "<group.id>-state" when state.store=kafka (empty is that default too;
 * a state.topic that is set is checked with either store),
 * items.topic empty disables the catalogue. A derived name must also fit
 * Kafka's 249 characters: the broker refuses a longer one at the first
 * write, long after start. */
#define KAFKA_TOPIC_MAX 249

typedef struct topic_use {
    const char *key, *name, *fix;
    const char *derived;          /* non-NULL: name is the default, made from this key */
} topic_use;

static int topic_clash(const topic_use *a, const topic_use *b, char *errbuf, size_t errlen)
{
    if (!strcmp(a->key, "input.topic") && !strcmp(b->key, "dlq.topic"))
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "dlq.topic=\"%.64s\" is the input.topic: every bad record would be "
                      "consumed, dead-lettered and consumed again for ever (unset dlq.topic "
                      "for \"%.64s.dlq\", or set it empty to disable dead letters)",
                      b->name, a->name);
    return hl_err(errbuf, errlen, HL_EINVAL, "%s=\"%.64s\"%s%s%s is also the %s: %s",
                  b->key, b->name, b->derived ? " (its default, from " : "",
                  b->derived ? b->derived : "", b->derived ? ")" : "", a->key, b->fix);
}

/* A name Kafka accepts (its Topic.validate: 1-249 of [A-Za-z0-9._-], not
 * "." or ".."). Checked at load, where the error can name the key, rather
 * than left to the broker: names also build paths (the dead-letter files
 * under snapshot.dir), where "a/../b" must never reach. */
static int topic_legal(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > KAFKA_TOPIC_MAX || !strcmp(name, ".") || !strcmp(name, ".."))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)name[i]) && name[i] != '.' && name[i] != '_' &&
            name[i] != '-')
            return 0;
    return 1;
}

static int check_topics(const hl_config *cfg, char *errbuf, size_t errlen)
{
    const char *in = hl_config_str(cfg, "input.topic"), *dlq = hl_config_str(cfg, "dlq.topic");
    const char *items = hl_config_str(cfg, "items.topic"), *st = hl_config_str(cfg, "state.topic");
    char st_def[300];
    topic_use t[5] = {
        {"input.topic", in, "", NULL},
        {"output.topic", hl_config_str(cfg, "output.topic"),
         "the worker would consume its own lists, or mix them with other records", NULL},
        {"dlq.topic", dlq, "dead letters need a topic of their own (unset dlq.topic for "
         "\"<input.topic>.dlq\", or set it empty to disable them)", NULL},
        {"items.topic", items[0] ? items : NULL, "give the catalogue a topic of its own "
         "(or set it empty to disable it)", NULL},
        {"state.topic", NULL, "the changelog needs a topic of its own", NULL},
    };
    if (cfg->v[find_key("dlq.topic")].text == NULL)   /* the getter gave the default */
        t[2].derived = "input.topic";
    else if (dlq[0] == '\0')
        t[2].name = NULL;
    if (st != NULL && st[0] != '\0') {
        t[4].name = st;         /* checked with either store: it is meant for one */
    } else if (!strcmp(hl_config_str(cfg, "state.store"), "kafka")) {
        snprintf(st_def, sizeof st_def, "%s-state", hl_config_str(cfg, "group.id"));
        t[4].name = st_def, t[4].derived = "group.id";
    }
    for (int j = 0; j < 5; j++) {
        if (t[j].name == NULL) continue;
        if (t[j].derived && strlen(t[j].name) > KAFKA_TOPIC_MAX)
            return hl_err(errbuf, errlen, HL_EINVAL, "%s: its default \"%.64s...\" (from %s) "
                          "has %zu characters, Kafka allows at most %d: set %s, or a shorter "
                          "%s", t[j].key, t[j].name, t[j].derived, strlen(t[j].name),
                          KAFKA_TOPIC_MAX, t[j].key, t[j].derived);
        if (!topic_legal(t[j].name))
            return hl_err(errbuf, errlen, HL_EINVAL, "%s: \"%.64s\"%s%s%s is not a Kafka "
                          "topic name: use letters, digits, '.', '_' and '-' (not \".\" or "
                          "\"..\")", t[j].key, t[j].name, t[j].derived ? " (from " : "",
                          t[j].derived ? t[j].derived : "", t[j].derived ? ")" : "");
        for (int i = 0; i < j; i++)
            if (t[i].name != NULL && !strcmp(t[i].name, t[j].name))
                return topic_clash(&t[i], &t[j], errbuf, errlen);
    }
    return 0;
}

/* metrics.bind is checked here, with the other keys, so a typo exits 2 at
 * start rather than when the HTTP endpoint opens (http.c parses it again). */
static int check_bind(const hl_config *cfg, char *errbuf, size_t errlen)
{
    const char *addr = hl_config_str(cfg, "metrics.bind");
    unsigned char buf[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, addr, buf) != 1 && inet_pton(AF_INET6, addr, buf) != 1)
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "metrics.bind=\"%s\": not an IPv4 or IPv6 address (0.0.0.0: every IPv4 interface)",
                      addr);
    return 0;
}

/* schema.registry.url: each comma-separated URL is http:// or https://, so
 * a typo exits 2 at start like any other bad key (registry.c checks again). */
static int check_registry_urls(const hl_config *cfg, char *errbuf, size_t errlen)
{
    const char *urls = hl_config_str(cfg, "schema.registry.url");
    int i = 0;
    for (const char *p = urls; p != NULL && *p; i++) {
        size_t n = strcspn(p, ",");
        const char *u = p + strspn(p, " ");
        /* Not shown: a URL may carry user:password. */
        if (u < p + n && strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0)
            return hl_err(errbuf, errlen, HL_EINVAL, "schema.registry.url: URL %d of the list "
                          "does not begin with http:// or https://", i + 1);
        p += n + (p[n] == ',');
    }
    return 0;
}

int hl_config_load(hl_config *cfg, const char *file, char *const *envp,
                   char *const *args, int n_args, char *errbuf, size_t errlen)
{
    int rc;
    if (file != NULL && (rc = hl_config_load_file(cfg, file, errbuf, errlen)) != 0)
        return rc;
    if ((rc = hl_config_load_env(cfg, envp, errbuf, errlen)) != 0)
        return rc;
    for (int i = 0; i < n_args; i++)
        if ((rc = hl_config_set_arg(cfg, args[i], errbuf, errlen)) != 0)
            return rc;
    if (hl_config_int(cfg, "event.min.ts.ms") > hl_config_int(cfg, "event.max.ts.ms"))
        return hl_err(errbuf, errlen, HL_EINVAL, "event.min.ts.ms=%lld is after event.max.ts.ms=%lld",
                      (long long)hl_config_int(cfg, "event.min.ts.ms"),
                      (long long)hl_config_int(cfg, "event.max.ts.ms"));
    /* Refused rather than clamped: a window the ring cannot hold would
     * silently leave out fewer items than asked for. */
    if (hl_config_int(cfg, "recs.exclude.seen.events") > hl_config_int(cfg, "state.history"))
        return hl_err(errbuf, errlen, HL_EINVAL, "recs.exclude.seen.events=%lld is above "
                      "state.history=%lld: the history holds only that many events (raise "
                      "state.history, or 0 = the whole history)",
                      (long long)hl_config_int(cfg, "recs.exclude.seen.events"),
                      (long long)hl_config_int(cfg, "state.history"));
    if ((rc = check_topics(cfg, errbuf, errlen)) != 0 ||
        (rc = check_registry_urls(cfg, errbuf, errlen)) != 0)
        return rc;
    return check_bind(cfg, errbuf, errlen);
}

/* ---- getters -------------------------------------------------------------- */

/* The slot of key, which must be of type t: anything else is a bug in the
 * caller, reported and aborted on (not input: keys are literals). */
static const setting *slot_of(const hl_config *cfg, const char *key, key_type t)
{
    int k = find_key(key);
    int ok = k >= 0 && (keys[k].type == t || (t == T_INT && keys[k].type == T_ENUM));
    if (!ok) {
        fprintf(stderr, "halflife: bug: config key %s read with the wrong type or unknown\n", key);
        abort();
    }
    return &cfg->v[k];
}

/* "<input.topic>.dlq", built on first use and kept, so every caller gets
 * the same pointer (rebuilt only if input.topic changed since). */
static const char *dlq_default(const hl_config *cfg)
{
    const char *in = hl_config_str(cfg, "input.topic");
    hl_config *mut = (hl_config *)cfg;       /* a cache of a derived default */
    size_t n = strlen(in);
    if (mut->dlq_default != NULL && strncmp(mut->dlq_default, in, n) == 0 &&
        strcmp(mut->dlq_default + n, ".dlq") == 0)
        return mut->dlq_default;
    free(mut->dlq_default);
    if ((mut->dlq_default = malloc(n + 5)) == NULL)
        return NULL;
    memcpy(mut->dlq_default, in, n);
    memcpy(mut->dlq_default + n, ".dlq", 5);
    return mut->dlq_default;
}

const char *hl_config_str(const hl_config *cfg, const char *key)
{
    int k = find_key(key);
    if (k < 0) {
        fprintf(stderr, "halflife: bug: unknown config key %s\n", key);
        abort();
    }
    if (cfg->v[k].text == NULL && strcmp(key, "dlq.topic") == 0)
        return dlq_default(cfg);
    return cfg->v[k].text;
}

int64_t hl_config_int(const hl_config *cfg, const char *key)
{
    const setting *v = slot_of(cfg, key, T_INT);
    if (v->i == 0 && strcmp(key, "worker.threads") == 0)
        return hl_cpus_available();
    return v->i;
}

double hl_config_num(const hl_config *cfg, const char *key)
{
    const setting *v = slot_of(cfg, key, T_NUM);
    return v->text != NULL ? v->d : NAN;
}

int hl_config_bool(const hl_config *cfg, const char *key)
{
    return (int)slot_of(cfg, key, T_BOOL)->i;
}

int hl_config_is_set(const hl_config *cfg, const char *key)
{
    int k;
    if (strncmp(key, "kafka.", 6) == 0)
        return hl_config_kafka_get(cfg, key + 6) != NULL;
    k = find_key(key);
    return k >= 0 && cfg->v[k].is_set;
}

const hl_kafka_prop *hl_config_kafka(const hl_config *cfg, int *n)
{
    *n = cfg->n_kafka;
    return cfg->kafka;
}

const char *hl_config_kafka_get(const hl_config *cfg, const char *key)
{
    for (int i = 0; i < cfg->n_kafka; i++)
        if (strcmp(cfg->kafka[i].key, key) == 0)
            return cfg->kafka[i].value;
    return NULL;
}

/* ---- the listings: --help and README.md ------------------------------------ */

/* One row of the listings: the two kafka.* rows, which are librdkafka's
 * (set_kafka asks it), then the table's keys. def NULL: no default. */
typedef struct help_row {
    const char *key, *def, *help;
    char        allowed[96];
} help_row;

#define N_HELP_ROWS (2 + N_KEYS)

static void allowed_text(const key_def *d, char *buf, size_t len)
{
    switch (d->type) {
    case T_STR:  snprintf(buf, len, "string"); break;
    case T_INT:  snprintf(buf, len, "integer %.0f..%.0f", d->min, d->max); break;
    case T_NUM:  snprintf(buf, len, "number %g..%g", d->min, d->max); break;
    case T_BOOL: snprintf(buf, len, "true|false"); break;
    case T_ENUM: snprintf(buf, len, "%s", d->choices); break;
    }
}

static void help_row_get(int i, help_row *r)
{
    static const help_row kafka_rows[2] = {
        {"kafka.bootstrap.servers", NULL,
         "Kafka brokers; unset starts an embedded broker in the process (set empty is "
         "refused)", "string"},
        {"kafka.*", "", "any librdkafka property, passed without the kafka. prefix; the "
         "worker's own defaults unless given: queued.min.messages=1000000, "
         "socket.nagle.disable=true (Nagle held small requests for the peer's delayed ACK), "
         "fetch.wait.max.ms=5 on the embedded broker (it holds an empty fetch that long), "
         "and for the lists' producer enable.idempotence=true, linger.ms=0 (1 ms cost a list "
         "2 ms: librdkafka 2.0.2 rounds the wait up to whole ms). Refused: group.id (set "
         "group.id), enable.auto.offset.store=true (offsets of undelivered lists would be committed). "
         "Weakened, at your choice: enable.auto.commit=false commits only at a clean stop "
         "(group lag grows, a new owner without a snapshot reads again), "
         "enable.idempotence=false may duplicate or reorder a user's lists on a retry, "
         "isolation.level=read_uncommitted applies events of aborted transactions",
         "as librdkafka documents"},
    };
    const key_def *d;
    if (i < 2) {
        *r = kafka_rows[i];
        return;
    }
    d = &keys[i - 2];
    r->key = d->key;
    r->def = d->def;
    r->help = d->help;
    allowed_text(d, r->allowed, sizeof r->allowed);
}

/* text from column indent on, its words wrapped before column width; a
 * word longer than the room (a long value) stands alone on its line. */
static void print_wrapped(FILE *f, const char *text, int indent, int width)
{
    int col = indent;
    fprintf(f, "%*s", indent, "");
    while (*text) {
        while (*text == ' ') text++;
        int n = (int)strcspn(text, " ");
        if (n == 0) break;
        if (col > indent && col + 1 + n > width) {
            fprintf(f, "\n%*s", indent, "");
            col = indent;
        }
        if (col > indent) { fputc(' ', f); col++; }
        fprintf(f, "%.*s", n, text);
        col += n;
        text += n;
    }
    fputc('\n', f);
}

/* Each key with its default, then its meaning and allowed values below
 * it, wrapped to 80 columns: on the key's line, past columns as wide as
 * the longest key and default, a meaning ran to 900 columns. The columns
 * stay: a fixed width pushed the defaults of the long registry keys out
 * of line. */
void hl_config_print_help(FILE *f)
{
    help_row r;
    int wk = 0;
    char allowed[128];
    for (int i = 0; i < N_HELP_ROWS; i++) {
        help_row_get(i, &r);
        int k = (int)strlen(r.key);
        wk = k > wk ? k : wk;
    }
    fprintf(f, "configuration keys and their defaults (a properties file, then HALFLIFE_<KEY>\n"
               "environment variables, then -X key=value; the last one given wins):\n\n");
    for (int i = 0; i < N_HELP_ROWS; i++) {
        help_row_get(i, &r);
        if (r.def != NULL && r.def[0] == '\0')     /* kafka.*: librdkafka's defaults */
            fprintf(f, "  %s\n", r.key);
        else
            fprintf(f, "  %-*s  %s\n", wk, r.key, r.def ? r.def : "(none)");
        print_wrapped(f, r.help, 6, 80);
        snprintf(allowed, sizeof allowed, "allowed: %s", r.allowed);
        print_wrapped(f, allowed, 6, 80);
    }
}

/* s as one Markdown table cell, in a code span if code. '|' would end the
 * cell even in a code span (GitHub's tables), and outside one '<' could
 * open an HTML tag ("<dir>/<id>.avsc"), so both are escaped. */
static void md_cell(FILE *f, const char *s, int code)
{
    fputs(code ? " `" : " ", f);
    for (; *s; s++) {
        if (*s == '|' || (*s == '<' && !code))
            fputc('\\', f);
        fputc(*s, f);
    }
    fputs(code ? "` |" : " |", f);
}

void hl_config_print_markdown(FILE *f)
{
    help_row r;
    fprintf(f, "| key | default | allowed | meaning |\n|---|---|---|---|\n");
    for (int i = 0; i < N_HELP_ROWS; i++) {
        help_row_get(i, &r);
        fputc('|', f);
        md_cell(f, r.key, 1);
        md_cell(f, r.def ? r.def : "(none)", r.def != NULL && r.def[0] != '\0');
        md_cell(f, r.allowed, 0);
        md_cell(f, r.help, 0);
        fputc('\n', f);
    }
}
