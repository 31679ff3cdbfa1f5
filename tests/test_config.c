/* test_config.c - worker/config.c: defaults, the precedence file < env < -X,
 * refusals that name the key, the value and what is allowed, and kafka.*
 * passthrough. */
#define T_SUITE "config"
#include "test.h"

#include "config.h"

#include <unistd.h>

static char path[64];

static void write_props(const char *text)
{
    FILE *f;
    snprintf(path, sizeof path, "/tmp/hl_test_config_%d.properties", (int)getpid());
    f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void test_defaults(void)
{
    hl_config *cfg = hl_config_create();
    CHECK(!strcmp(hl_config_str(cfg, "group.id"), "halflife"));
    CHECK(!strcmp(hl_config_str(cfg, "input.topic"), "behaviour-events"));
    CHECK(!strcmp(hl_config_str(cfg, "output.topic"), "recommendations"));
    CHECK(!strcmp(hl_config_str(cfg, "dlq.topic"), "behaviour-events.dlq"));
    CHECK(hl_config_str(cfg, "dlq.topic") == hl_config_str(cfg, "dlq.topic"));  /* stable */
    CHECK(hl_config_str(cfg, "model.path") == NULL);
    CHECK(hl_config_int(cfg, "recs.k") == 20);
    CHECK(hl_config_bool(cfg, "recs.exclude.seen") == 1);
    CHECK(hl_config_int(cfg, "output.schema.id") == 2);
    CHECK(hl_config_int(cfg, "input.format") == 0);       /* confluent */
    CHECK(hl_config_int(cfg, "batch.max.messages") == 10000);
    CHECK(hl_config_int(cfg, "batch.max.ms") == 5);
    CHECK(hl_config_int(cfg, "state.history") == 32);
    CHECK(hl_config_int(cfg, "state.max.users") == 10000000);
    CHECK(hl_config_num(cfg, "state.evict.mass") == 1e-6);
    CHECK(hl_config_int(cfg, "snapshot.interval.ms") == 30000);
    CHECK(hl_config_int(cfg, "snapshot.retain") == 2);
    CHECK(hl_config_int(cfg, "shutdown.timeout.ms") == 30000);
    CHECK(hl_config_int(cfg, "metrics.port") == 9464);
    CHECK(hl_config_int(cfg, "worker.threads") >= 1);
    CHECK(isnan(hl_config_num(cfg, "weight.click")));
    CHECK(!hl_config_is_set(cfg, "recs.k"));
    CHECK(!hl_config_is_set(cfg, "kafka.bootstrap.servers"));
    int n = -1;
    hl_config_kafka(cfg, &n);
    CHECK(n == 0);
    hl_config_destroy(cfg);
    hl_config_destroy(NULL);
}

static void test_precedence_file_env_args(void)
{
    char err[256] = "";
    hl_config *cfg = hl_config_create();
    char *env[] = { "HALFLIFE_RECS_K=30", "HALFLIFE_BATCH_MAX_MS=7", "PATH=/bin",
                    "HALFLIFE_WEIGHT_ADD_TO_CART=3.5", NULL };
    char *args[] = { "recs.k=40", "input.topic = in2" };
    write_props("# comment\n\nrecs.k = 10\nbatch.max.ms=9\nbatch.max.messages=77\n"
                "  ! also a comment\ngroup.id=g1\n");
    int rc = hl_config_load(cfg, path, env, args, 2, err, sizeof err);
    CHECKF(rc == 0, "%s", err);
    CHECK(hl_config_int(cfg, "recs.k") == 40);              /* -X beats env and file */
    CHECK(hl_config_int(cfg, "batch.max.ms") == 7);         /* env beats file */
    CHECK(hl_config_int(cfg, "batch.max.messages") == 77);  /* file beats default */
    CHECK(!strcmp(hl_config_str(cfg, "group.id"), "g1"));
    CHECK(!strcmp(hl_config_str(cfg, "input.topic"), "in2"));
    CHECK(!strcmp(hl_config_str(cfg, "dlq.topic"), "in2.dlq"));
    CHECK(hl_config_num(cfg, "weight.add_to_cart") == 3.5);
    CHECK(hl_config_is_set(cfg, "recs.k") && !hl_config_is_set(cfg, "recs.exclude.seen"));
    hl_config_destroy(cfg);
    unlink(path);
}

/* Expect set(key, value) to fail with a message holding every needle. */
static void expect_refused(const char *key, const char *value, const char *n1, const char *n2)
{
    char err[256] = "";
    hl_config *cfg = hl_config_create();
    int rc = hl_config_set(cfg, key, value, "-X", err, sizeof err);
    CHECKF(rc == HL_EINVAL, "%s=%s accepted", key, value);
    CHECKF(strstr(err, key) != NULL, "message lacks the key: %s", err);
    CHECKF(strstr(err, n1) != NULL, "message lacks \"%s\": %s", n1, err);
    CHECKF(n2 == NULL || strstr(err, n2) != NULL, "message lacks \"%s\": %s", n2, err);
    hl_config_destroy(cfg);
}

static void test_bad_values_refused(void)
{
    expect_refused("recs.k", "abc", "abc", "1..1000");
    expect_refused("recs.k", "0", "out of range", "1..1000");
    expect_refused("recs.k", "1001", "1001", "1..1000");
    expect_refused("recs.k", "12x", "12x", "integer");
    expect_refused("recs.k", "", "integer", NULL);
    expect_refused("recs.k", "99999999999999999999999", "out of range", "1..1000");
    expect_refused("state.evict.mass", "-1", "out of range", NULL);
    expect_refused("state.evict.mass", "nan", "number", NULL);
    expect_refused("recs.exclude.seen", "maybe", "maybe", "true|false");
    expect_refused("input.format", "json", "json", "confluent|raw");
    expect_refused("log.level", "loud", "loud", "debug|info|warn|error");
    expect_refused("metrics.port", "70000", "0..65535", NULL);
    expect_refused("input.topic", "", "length", NULL);
}

static void test_unknown_key_refused(void)
{
    char err[256] = "";
    hl_config *cfg = hl_config_create();
    CHECK(hl_config_set(cfg, "recs.kk", "3", "-X", err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "recs.kk") && strstr(err, "unknown"), "%s", err);
    CHECK(hl_config_set_arg(cfg, "recs.k", err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "key=value"), "%s", err);
    char *env[] = { "HALFLIFE_NO_SUCH_KEY=1", NULL };
    CHECK(hl_config_load_env(cfg, env, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "HALFLIFE_NO_SUCH_KEY"), "%s", err);
    char *env2[] = { "HALFLIFE_RECS_K=zero", NULL };
    CHECK(hl_config_load_env(cfg, env2, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "recs.k") && strstr(err, "zero") && strstr(err, "HALFLIFE_RECS_K"), "%s", err);
    write_props("recs.k=5\nthis line has no equals\n");
    CHECK(hl_config_load_file(cfg, path, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "line 2"), "%s", err);
    write_props("recs.k=5\nnope.key=1\n");
    CHECK(hl_config_load_file(cfg, path, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "nope.key") && strstr(err, "line 2"), "%s", err);
    unlink(path);
    CHECK(hl_config_load_file(cfg, "/nonexistent/x.properties", err, sizeof err) == HL_EIO);
    hl_config_destroy(cfg);
}

static void test_kafka_passthrough(void)
{
    char err[256] = "";
    hl_config *cfg = hl_config_create();
    char *env[] = { "HALFLIFE_KAFKA_BOOTSTRAP_SERVERS=envhost:9092",
                    "HALFLIFE_KAFKA_STATISTICS_INTERVAL_MS=1000", NULL };
    char *args[] = { "kafka.bootstrap.servers=127.0.0.1:1234", "kafka.linger.ms=3" };
    int n;
    CHECKF(hl_config_load(cfg, NULL, env, args, 2, err, sizeof err) == 0, "%s", err);
    const hl_kafka_prop *p = hl_config_kafka(cfg, &n);
    CHECK(n == 3);
    CHECK(n == 3 && !strcmp(p[0].key, "bootstrap.servers") && !strcmp(p[0].value, "127.0.0.1:1234"));
    CHECK(n == 3 && !strcmp(p[1].key, "statistics.interval.ms") && !strcmp(p[1].value, "1000"));
    CHECK(!strcmp(hl_config_kafka_get(cfg, "linger.ms"), "3"));
    CHECK(hl_config_is_set(cfg, "kafka.linger.ms"));
    CHECK(hl_config_set(cfg, "kafka.no.such.property", "1", "-X", err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "kafka.no.such.property"), "%s", err);
    CHECK(hl_config_set(cfg, "kafka.linger.ms", "soon", "-X", err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "soon"), "%s", err);
    hl_worker_opts o;
    hl_config_worker_opts(cfg, &o);
    CHECK(o.bootstrap && !strcmp(o.bootstrap, "127.0.0.1:1234") && o.n_kafka == 3);
    hl_config_destroy(cfg);
}

static void test_cross_key_checks(void)
{
    char err[256] = "";
    hl_config *cfg = hl_config_create();
    char *args[] = { "event.min.ts.ms=100", "event.max.ts.ms=50" };
    CHECK(hl_config_load(cfg, NULL, NULL, args, 2, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "event.min.ts.ms"), "%s", err);
    hl_config_destroy(cfg);
}

/* A topic the worker writes equal to the one it reads would loop: a dead
 * letter on the input is consumed, dead-lettered and consumed again. */
static void expect_load_refused(char **args, int n, const char *n1, const char *n2)
{
    char err[512] = "";
    hl_config *cfg = hl_config_create();
    int rc = hl_config_load(cfg, NULL, NULL, args, n, err, sizeof err);
    CHECKF(rc == HL_EINVAL, "%s ... accepted", args[0]);
    CHECKF(strstr(err, n1) != NULL, "message lacks \"%s\": %s", n1, err);
    CHECKF(n2 == NULL || strstr(err, n2) != NULL, "message lacks \"%s\": %s", n2, err);
    hl_config_destroy(cfg);
}

static void test_topic_loops_refused(void)
{
    char *dlq_is_input[] = { "dlq.topic=behaviour-events" };
    char *dlq_is_input2[] = { "input.topic=ev", "dlq.topic=ev" };
    char *out_is_input[] = { "output.topic=behaviour-events" };
    char *input_is_out[] = { "input.topic=recommendations" };
    char *fine[] = { "input.topic=ev", "dlq.topic=", "output.topic=ev.recs" };
    char err[256] = "";
    hl_config *cfg;

    expect_load_refused(dlq_is_input, 1, "dlq.topic", "input.topic");
    expect_load_refused(dlq_is_input2, 2, "dlq.topic=\"ev\"", "input.topic");
    expect_load_refused(out_is_input, 1, "output.topic", "input.topic");
    expect_load_refused(input_is_out, 1, "output.topic=\"recommendations\"", "input.topic");
    cfg = hl_config_create();
    CHECKF(hl_config_load(cfg, NULL, NULL, fine, 3, err, sizeof err) == 0, "%s", err);
    hl_config_destroy(cfg);
}

/* A long value shows only its first 64 bytes, so where it came from and
 * what was wrong still fit the message (a number too large for its type
 * is out of range: test_bad_values_refused); a bootstrap list the worker
 * would cut is refused. */
static void test_long_values_in_errors(void)
{
    char big[700], kbig[700], boot[700];
    snprintf(big, sizeof big, "recs.k=");
    memset(big + 7, '9', 600);
    big[607] = '\0';
    snprintf(kbig, sizeof kbig, "kafka.socket.timeout.ms=%0600d", 1);
    int n = snprintf(boot, sizeof boot, "kafka.bootstrap.servers=");
    while (n < 600) n += snprintf(boot + n, sizeof boot - (size_t)n, "broker-%d:9092,", n);
    char *huge_int[] = { big };
    char *kafka_long[] = { kbig };
    char *boot_long[] = { boot };
    expect_load_refused(huge_int, 1, "...", "(from -X): out of range");
    expect_load_refused(kafka_long, 1, "...\" (from -X): librdkafka refuses it", NULL);
    expect_load_refused(boot_long, 1, "kafka.bootstrap.servers (from -X)", "at most 511");
}

/* The changelog's topic as the worker names it: state.topic, or
 * "<group.id>-state" when unset or empty; and a default name too long for
 * Kafka (249 characters) is refused at start, not at the first write. */
static void test_topic_defaults_checked(void)
{
    char *state_is_items[] = { "state.store=kafka", "state.topic=items" };
    char *default_is_input[] = { "state.store=kafka", "group.id=foo", "input.topic=foo-state" };
    char *dlq_is_items[] = { "items.topic=behaviour-events.dlq" };
    char *both_off[] = { "dlq.topic=", "state.topic=", "state.store=kafka" };
    char long_in[300], long_group[300];
    snprintf(long_in, sizeof long_in, "input.topic=%0249d", 7);
    snprintf(long_group, sizeof long_group, "group.id=%0250d", 7);
    char *dlq_too_long[] = { long_in };
    char *state_too_long[] = { long_group, "state.store=kafka" };
    char *state_unused[] = { long_group };
    char err[512] = "";
    hl_config *cfg;

    expect_load_refused(state_is_items, 2, "state.topic=\"items\"", "items.topic");
    expect_load_refused(default_is_input, 3, "state.topic=\"foo-state\" (its default, from "
                        "group.id)", "input.topic");
    expect_load_refused(dlq_is_items, 1, "items.topic", "dlq.topic");
    expect_load_refused(dlq_too_long, 1, "dlq.topic: its default", "at most 249");
    expect_load_refused(state_too_long, 2, "state.topic: its default", "group.id");
    cfg = hl_config_create();
    CHECKF(hl_config_load(cfg, NULL, NULL, both_off, 3, err, sizeof err) == 0, "%s", err);
    hl_config_destroy(cfg);
    cfg = hl_config_create();       /* a long group is fine without a changelog */
    CHECKF(hl_config_load(cfg, NULL, NULL, state_unused, 1, err, sizeof err) == 0, "%s", err);
    hl_config_destroy(cfg);
}

static void test_metrics_bind(void)
{
    char *v6[] = { "metrics.bind=::1" };
    char *bad[] = { "metrics.bind=localhost" };
    char err[256] = "";
    hl_config *cfg = hl_config_create();
    CHECK(!strcmp(hl_config_str(cfg, "metrics.bind"), "0.0.0.0"));   /* Kubernetes: pod IP */
    CHECKF(hl_config_load(cfg, NULL, NULL, v6, 1, err, sizeof err) == 0, "%s", err);
    CHECK(!strcmp(hl_config_str(cfg, "metrics.bind"), "::1"));
    hl_config_destroy(cfg);
    expect_load_refused(bad, 1, "metrics.bind", "localhost");
}

/* Lines of any length: with an 8 KB buffer the tail of a long comment came
 * back as a line of its own and set the group. */
static char *long_text(const char *head, size_t n, char fill, const char *tail)
{
    size_t h = strlen(head), t = strlen(tail);
    char *s = malloc(h + n + t + 1);
    memcpy(s, head, h);
    memset(s + h, fill, n);
    memcpy(s + h + n, tail, t + 1);
    return s;
}

static void test_long_lines(void)
{
    char err[512] = "";
    hl_config *cfg = hl_config_create();
    /* "#" and 8,190 bytes: the old 8 KB buffer ended exactly before "group.id". */
    char *comment = long_text("recs.k=5\n#", 8190, 'x', "group.id=hijacked\nbatch.max.ms=9\n");
    write_props(comment);
    CHECKF(hl_config_load_file(cfg, path, err, sizeof err) == 0, "%s", err);
    CHECKF(!strcmp(hl_config_str(cfg, "group.id"), "halflife"), "group.id=%s from a comment",
           hl_config_str(cfg, "group.id"));
    CHECK(hl_config_int(cfg, "recs.k") == 5 && hl_config_int(cfg, "batch.max.ms") == 9);
    free(comment);

    /* A 1 MB comment is a comment; the bad line after it is line 3. */
    comment = long_text("recs.k=6\n#", 1 << 20, 'y', "\nno equals here\n");
    write_props(comment);
    CHECK(hl_config_load_file(cfg, path, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "line 3:") && strstr(err, "no equals"), "%s", err);
    CHECK(hl_config_int(cfg, "recs.k") == 6);
    free(comment);

    /* A value too long for its key names the line, however long the value. */
    comment = long_text("recs.k=7\ngroup.id=", 100000, 'g', "\n");
    write_props(comment);
    CHECK(hl_config_load_file(cfg, path, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "line 2") && strstr(err, "group.id") && strstr(err, "length 100000"), "%s", err);
    free(comment);

    /* A NUL byte would cut a line short without a word: refused. */
    FILE *f = fopen(path, "w");
    fwrite("recs.k=8\ngroup.id=a\0b\n", 1, 22, f);
    fclose(f);
    CHECK(hl_config_load_file(cfg, path, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "line 2") && strstr(err, "NUL"), "%s", err);
    unlink(path);
    hl_config_destroy(cfg);
}

static void test_worker_opts(void)
{
    char err[256] = "";
    hl_config *cfg = hl_config_create();
    char *args[] = { "input.format=raw", "worker.threads=3", "dlq.topic=", "recs.enabled=false" };
    hl_worker_opts o;
    CHECKF(hl_config_load(cfg, NULL, NULL, args, 4, err, sizeof err) == 0, "%s", err);
    hl_config_worker_opts(cfg, &o);
    CHECK(o.codec.input_framing == HL_FRAMING_RAW && o.codec.output_framing == HL_FRAMING_CONFLUENT);
    CHECK(o.threads == 3 && o.recs_k == 20 && !o.recs_enabled);
    CHECK(o.dlq_topic != NULL && o.dlq_topic[0] == '\0');
    CHECK(o.bootstrap == NULL && o.n_kafka == 0);
    CHECK(!strcmp(o.codec.schemas_dir, "schemas") && o.codec.output_schema_id == 2);
    CHECK(o.codec.min_ts_ms == 0 && o.codec.max_ts_ms == 4102444800000LL);
    hl_config_destroy(cfg);
}

static void test_help_lists_every_key(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    hl_config_print_help(f);
    fclose(f);
    const char *must[] = { "kafka.bootstrap.servers", "group.id", "input.format", "schemas.dir",
                           "output.schema.id", "dlq.topic", "recs.k", "worker.threads",
                           "snapshot.interval.ms", "metrics.port", "weight.purchase", "30000" };
    for (size_t i = 0; i < sizeof must / sizeof must[0]; i++)
        CHECKF(strstr(buf, must[i]) != NULL, "--help lacks %s", must[i]);
    free(buf);
}

/* A file saved by a Windows editor: a UTF-8 byte order mark before the
 * first key and CRLF line ends. The mark is invisible in every editor and
 * in the error, which read: unknown key "group.id". */
static void test_bom_and_crlf(void)
{
    char err[512] = "";
    hl_config *cfg = hl_config_create();
    write_props("\xEF\xBB\xBFgroup.id=from-bom\r\nrecs.k=5\r\n");
    CHECKF(hl_config_load_file(cfg, path, err, sizeof err) == 0, "%s", err);
    CHECK(!strcmp(hl_config_str(cfg, "group.id"), "from-bom"));
    CHECK(hl_config_int(cfg, "recs.k") == 5);
    /* Only at the very start: a mark on a later line is not a key. */
    write_props("recs.k=6\n\xEF\xBB\xBFgroup.id=x\n");
    CHECK(hl_config_load_file(cfg, path, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "line 2"), "%s", err);
    unlink(path);
    hl_config_destroy(cfg);
}

/* kafka.* keys that would let librdkafka commit offsets of events whose
 * lists were never delivered are refused, whatever the spelling of true. */
static void test_kafka_guarantees(void)
{
    char err[512] = "";
    hl_config *cfg = hl_config_create();
    const char *yes[] = {"true", "True", "1", "TRUE"};
    for (int i = 0; i < 4; i++) {
        CHECKF(hl_config_set(cfg, "kafka.enable.auto.offset.store", yes[i], "-X", err,
                             sizeof err) == HL_EINVAL, "enable.auto.offset.store=%s taken", yes[i]);
        CHECKF(strstr(err, "kafka.enable.auto.offset.store") && strstr(err, "delivered"), "%s", err);
    }
    CHECK(hl_config_kafka_get(cfg, "enable.auto.offset.store") == NULL);
    CHECKF(hl_config_set(cfg, "kafka.enable.auto.offset.store", "false", "-X", err,
                         sizeof err) == 0, "%s", err);
    char *env[] = { "HALFLIFE_KAFKA_ENABLE_AUTO_OFFSET_STORE=true", NULL };
    CHECK(hl_config_load_env(cfg, env, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "HALFLIFE_KAFKA_ENABLE_AUTO_OFFSET_STORE"), "%s", err);
    hl_config_destroy(cfg);
}

/* An empty kafka.bootstrap.servers (a variable whose source rendered
 * empty) is not "unset": it used to start the embedded broker, a worker
 * that reported ready and never read the real cluster. */
static void test_empty_bootstrap(void)
{
    char err[512] = "";
    hl_config *cfg = hl_config_create();
    const char *blank[] = {"", " ", " , "};
    for (int i = 0; i < 3; i++) {
        CHECKF(hl_config_set(cfg, "kafka.bootstrap.servers", blank[i], "-X", err,
                             sizeof err) == HL_EINVAL, "bootstrap \"%s\" taken", blank[i]);
        CHECKF(strstr(err, "kafka.bootstrap.servers") && strstr(err, "unset"), "%s", err);
    }
    CHECK(hl_config_kafka_get(cfg, "bootstrap.servers") == NULL);
    char *env[] = { "HALFLIFE_KAFKA_BOOTSTRAP_SERVERS=", NULL };
    CHECK(hl_config_load(cfg, NULL, env, NULL, 0, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "HALFLIFE_KAFKA_BOOTSTRAP_SERVERS"), "%s", err);
    hl_config_destroy(cfg);
}

/* kafka.group.id would move the consumer to another group while the
 * state topic (<group.id>-state), the logs and the metrics stay with
 * group.id: refused, naming the key to use. */
static void test_kafka_group_id(void)
{
    char err[512] = "";
    hl_config *cfg = hl_config_create();
    CHECK(hl_config_set(cfg, "kafka.group.id", "other", "-X", err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "kafka.group.id") && strstr(err, "set group.id"), "%s", err);
    CHECK(hl_config_kafka_get(cfg, "group.id") == NULL);
    char *env[] = { "HALFLIFE_KAFKA_GROUP_ID=other", NULL };
    CHECK(hl_config_load_env(cfg, env, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "HALFLIFE_KAFKA_GROUP_ID") && strstr(err, "HALFLIFE_GROUP_ID"), "%s", err);
    hl_config_destroy(cfg);
}

int main(void)
{
    RUN(test_defaults);
    RUN(test_precedence_file_env_args);
    RUN(test_bad_values_refused);
    RUN(test_unknown_key_refused);
    RUN(test_kafka_passthrough);
    RUN(test_cross_key_checks);
    RUN(test_topic_loops_refused);
    RUN(test_topic_defaults_checked);
    RUN(test_long_values_in_errors);
    RUN(test_long_lines);
    RUN(test_worker_opts);
    RUN(test_help_lists_every_key);
    RUN(test_metrics_bind);
    RUN(test_bom_and_crlf);
    RUN(test_kafka_guarantees);
    RUN(test_empty_bootstrap);
    RUN(test_kafka_group_id);
    TEST_EXIT();
}
