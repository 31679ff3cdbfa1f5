/* test_config_opts.c - worker/config.c and config_opts.c, from the key
 * table to its readers: hl_config_worker_opts() maps every key the worker
 * uses (a key added to the table and forgotten there fails here),
 * auto.offset.reset follows kafka.auto.offset.reset, log.level reads as an
 * HL_LOG_* level, and the Markdown listing has a row per key of --help.
 * The README side is tests/integration/test_config_docs.sh. */
#define T_SUITE "config_opts"
#include "test.h"

#include "config.h"
#include "log.h"

/* Keys that are not the worker's: the commands read them (run.c, demo.c). */
static int commands_key(const char *key)
{
    return !strncmp(key, "kafka.", 6) || !strcmp(key, "model.path") ||
           !strcmp(key, "metrics.port") || !strcmp(key, "metrics.bind") ||
           !strcmp(key, "log.level");
}

/* The text of --help, malloc'd. */
static char *help_text(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    hl_config_print_help(f);
    fclose(f);
    return buf;
}

/* A valid value of key other than cur, from its allowed line of --help:
 * "string", "integer A..B", "number A..B", "true|false" or "a|b|c". */
static void other_value(const char *allowed, const char *cur, char *out, size_t len)
{
    const char *dots = strstr(allowed, "..");
    if (!strcmp(allowed, "string")) {
        snprintf(out, len, "zz");
    } else if (dots != NULL) {
        const char *lo = strchr(allowed, ' ') + 1;
        snprintf(out, len, "%s", dots + 2);                   /* the maximum */
        if (cur != NULL && !strcmp(out, cur))
            snprintf(out, len, "%.*s", (int)(dots - lo), lo); /* the minimum */
    } else {
        const char *p = allowed;
        for (;;) {
            size_t n = strcspn(p, "|");
            snprintf(out, len, "%.*s", (int)n, p);
            if (cur == NULL || strcmp(out, cur) != 0 || p[n] == '\0')
                break;
            p += n + 1;
        }
    }
}

/* Set each worker key of --help to another value: some byte of
 * hl_worker_opts must change. */
static void test_every_worker_key_maps(void)
{
    char *help = help_text(), *line, *save = NULL, key[64], allowed[128], val[64], err[256];
    int n_keys = 0;
    for (line = strtok_r(help, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "  ", 2) != 0 || line[2] == ' ' || sscanf(line, "%63s", key) != 1)
            continue;
        /* the key's meaning (wrapped), then its "allowed: " line */
        char *next = strtok_r(NULL, "\n", &save);
        while (next != NULL && strncmp(next, "      allowed: ", 15) != 0)
            next = strtok_r(NULL, "\n", &save);
        if (next == NULL || commands_key(key))
            continue;
        snprintf(allowed, sizeof allowed, "%s", next + 15);
        hl_config *cfg = hl_config_create();
        hl_worker_opts a, b;
        hl_config_worker_opts(cfg, &a);
        other_value(allowed, hl_config_str(cfg, key), val, sizeof val);
        CHECKF(hl_config_set(cfg, key, val, "test", err, sizeof err) == 0, "%s", err);
        hl_config_worker_opts(cfg, &b);
        CHECKF(memcmp(&a, &b, sizeof a) != 0,
               "%s=%s changes nothing in hl_worker_opts: map it in hl_config_worker_opts()",
               key, val);
        hl_config_destroy(cfg);
        n_keys++;
    }
    CHECKF(n_keys >= 25, "only %d worker keys found in --help", n_keys);
    free(help);
}

static void test_snapshot_weights_interval(void)
{
    char err[256] = "";
    hl_config *cfg = hl_config_create();
    char *args[] = { "snapshot.dir=/tmp/s", "snapshot.interval.ms=1000", "snapshot.retain=5",
                     "weight.purchase=4.5", "recs.min.interval.ms=60000", "embedded.partitions=8" };
    hl_worker_opts o;
    CHECKF(hl_config_load(cfg, NULL, NULL, args, 6, err, sizeof err) == 0, "%s", err);
    hl_config_worker_opts(cfg, &o);
    CHECK(!strcmp(o.snapshot_dir, "/tmp/s") && o.snapshot_interval_ms == 1000 && o.snapshot_retain == 5);
    CHECK(o.has_type_weight && o.type_weight[HL_PURCHASE] == 4.5f && isnan(o.type_weight[HL_VIEW]));
    CHECK(o.recs_min_interval_ms == 60000 && o.embedded_partitions == 8);
    CHECK(o.on_list == NULL && o.on_list_arg == NULL);
    hl_config_destroy(cfg);
}

/* state.store and its keys: file by default; state.flush.ms follows
 * snapshot.interval.ms unless set (1000 when that is 0); a state.topic that
 * is another topic of the worker is refused. */
static void test_state_store(void)
{
    char err[256] = "";
    hl_worker_opts o;
    hl_config *cfg = hl_config_create();
    hl_config_worker_opts(cfg, &o);
    CHECK(!o.state_kafka && o.state_topic == NULL && o.state_flush_ms == 30000);
    char *a1[] = {"state.store=kafka", "snapshot.interval.ms=0"};
    CHECKF(hl_config_load(cfg, NULL, NULL, a1, 2, err, sizeof err) == 0, "%s", err);
    hl_config_worker_opts(cfg, &o);
    CHECK(o.state_kafka && o.state_flush_ms == 1000);
    char *a2[] = {"state.flush.ms=250", "state.topic=mystate"};
    CHECKF(hl_config_load(cfg, NULL, NULL, a2, 2, err, sizeof err) == 0, "%s", err);
    hl_config_worker_opts(cfg, &o);
    CHECK(o.state_flush_ms == 250 && !strcmp(o.state_topic, "mystate"));
    hl_config_destroy(cfg);
    cfg = hl_config_create();
    char *a3[] = {"state.topic=behaviour-events"};
    CHECK(hl_config_load(cfg, NULL, NULL, a3, 1, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "state.topic") != NULL, "%s", err);
    char *a4[] = {"state.store=s3"};
    CHECK(hl_config_load(cfg, NULL, NULL, a4, 1, err, sizeof err) == HL_EINVAL);
    hl_config_destroy(cfg);
}

/* The worker key sets both the worker's start and librdkafka's (start_kafka
 * adds it); kafka.auto.offset.reset wins for both and o.kafka is the
 * config's own list, nothing appended. */
static void test_offset_reset(void)
{
    char err[256] = "";
    hl_worker_opts o;
    int n;
    hl_config *cfg = hl_config_create();
    hl_config_worker_opts(cfg, &o);
    CHECK(!o.offset_reset_latest && o.n_kafka == 0);
    CHECK(hl_config_set(cfg, "auto.offset.reset", "latest", "-X", err, sizeof err) == 0);
    hl_config_worker_opts(cfg, &o);
    CHECK(o.offset_reset_latest && o.n_kafka == 0);
    CHECK(hl_config_set(cfg, "kafka.auto.offset.reset", "earliest", "-X", err, sizeof err) == 0);
    hl_config_worker_opts(cfg, &o);
    CHECK(!o.offset_reset_latest);
    CHECK(o.kafka == hl_config_kafka(cfg, &n) && o.n_kafka == n && n == 1);
    CHECK(hl_config_set(cfg, "kafka.auto.offset.reset", "end", "-X", err, sizeof err) == 0);
    hl_config_worker_opts(cfg, &o);
    CHECK(o.offset_reset_latest);
    /* Every name librdkafka accepts for the newest offset is the newest. */
    CHECK(hl_config_set(cfg, "kafka.auto.offset.reset", "largest", "-X", err, sizeof err) == 0);
    hl_config_worker_opts(cfg, &o);
    CHECK(o.offset_reset_latest);
    CHECK(hl_config_set(cfg, "kafka.auto.offset.reset", "smallest", "-X", err, sizeof err) == 0);
    hl_config_worker_opts(cfg, &o);
    CHECK(!o.offset_reset_latest);
    hl_config_destroy(cfg);
}

static void test_log_level(void)
{
    char err[256] = "";
    hl_config *cfg = hl_config_create();
    CHECK(hl_config_log_level(cfg) == HL_LOG_INFO);
    CHECK(hl_config_set(cfg, "log.level", "warn", "-X", err, sizeof err) == 0);
    CHECK(hl_config_log_level(cfg) == HL_LOG_WARN);
    CHECK(hl_config_set(cfg, "log.level", "debug", "-X", err, sizeof err) == 0);
    CHECK(hl_config_log_level(cfg) == HL_LOG_DEBUG);
    hl_config_destroy(cfg);
}

/* One row per key of --help, four cells each: a '|' inside a cell is
 * escaped, and so is a '<' that could open an HTML tag. */
static void test_markdown_rows(void)
{
    char *buf = NULL, *help = help_text(), *line, *save = NULL;
    size_t len = 0;
    int rows = 0, keys = 0;
    FILE *f = open_memstream(&buf, &len);
    hl_config_print_markdown(f);
    fclose(f);
    for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        int bars = 0;
        for (const char *p = line; *p; p++)
            bars += *p == '|' && (p == line || p[-1] != '\\');
        CHECKF(bars == 5, "%d cell borders in: %s", bars, line);
        rows += strncmp(line, "| `", 3) == 0;
    }
    for (line = strtok_r(help, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        keys += strncmp(line, "  ", 2) == 0 && line[2] != ' ';
    CHECKF(rows == keys && rows > 30, "%d Markdown rows, %d keys in --help", rows, keys);
    free(buf);                  /* cut by strtok_r: print it again whole */
    f = open_memstream(&buf, &len);
    hl_config_print_markdown(f);
    fclose(f);
    CHECK(strstr(buf, "| `input.format` | `confluent` | confluent\\|raw |") != NULL);
    CHECK(strstr(buf, "\\<dir>/\\<id>.avsc") != NULL);
    CHECK(strstr(buf, "| `kafka.bootstrap.servers` | (none) |") != NULL);
    free(buf);
    free(help);
}

int main(void)
{
    RUN(test_every_worker_key_maps);
    RUN(test_snapshot_weights_interval);
    RUN(test_offset_reset);
    RUN(test_state_store);
    RUN(test_log_level);
    RUN(test_markdown_rows);
    TEST_EXIT();
}
