/* test_registry.c - the Schema Registry parts that need no registry:
 * worker/registry.c (URL checks, redaction, an unreachable URL is
 * transient and its error text holds no secret), worker/schema_store.c (an
 * unknown id waits while the registry is away; the up gauge says so; a
 * request to a registry that never answers does not hold up destroy), the
 * codec's schema source (a waiting id decodes as HL_CODEC_WAIT, then as the
 * same event as the file path once the text comes; a refused id is
 * unknown_schema; encode writes event_schema_id), the embedded lists'
 * schema against schemas/recommendation_list.avsc, and the configuration
 * never printing the registry password.
 * tests/integration/test_schema_registry.py covers the rest against a
 * stand-in registry over HTTP. */
#define T_SUITE "registry"
#include "test.h"

#include "codec.h"
#include "config.h"
#include "registry.h"
#include "schema_store.h"

#include <arpa/inet.h>
#include <avro.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Port 1 on the loopback: nothing listens, the connection is refused at
 * once (no network leaves the machine). */
#define DEAD_URL "http://127.0.0.1:1"

static const char *top(void)
{
    const char *t = getenv("HL_TOP");
    return t && *t ? t : ".";
}

static void test_urls_checked(void)
{
    char err[512], shown[512];
    hl_registry_opts o = {.urls = "ftp://h:1", .timeout_ms = 100};
    CHECK(hl_registry_create(&o, err, sizeof err) == NULL);
    CHECKF(strstr(err, "ftp://h:1") != NULL, "%s", err);
    o.urls = " , ";
    CHECK(hl_registry_create(&o, err, sizeof err) == NULL);
    o.urls = "http://u:topsecret@a:8081/, https://b:8082";
    hl_registry *r = hl_registry_create(&o, err, sizeof err);
    CHECKF(r != NULL, "%s", err);
    if (r == NULL)
        return;
    hl_registry_urls_redacted(r, shown, sizeof shown);
    CHECKF(strcmp(shown, "http://***@a:8081,https://b:8082") == 0, "%s", shown);
    hl_registry_destroy(r);
}

static void test_user_info_needs_a_colon(void)
{
    char err[512];
    hl_registry_opts o = {.urls = DEAD_URL, .user_info = "justapassword"};
    CHECK(hl_registry_create(&o, err, sizeof err) == NULL);
    CHECKF(strstr(err, "user:password") && !strstr(err, "justapassword"), "%s", err);
}

static void test_unreachable_is_transient(void)
{
    char err[512] = "", *text = NULL;
    int32_t id = -1;
    hl_registry_opts o = {.urls = "http://u:pw-SECRET@127.0.0.1:1," DEAD_URL, .timeout_ms = 1000,
                          .user_info = "me:pw-SECRET"};
    hl_registry *r = hl_registry_create(&o, err, sizeof err);
    CHECKF(r != NULL, "%s", err);
    if (r == NULL)
        return;
    CHECK(hl_registry_schema_by_id(r, 7, &text, err, sizeof err) == HL_EAGAIN);
    CHECKF(strstr(err, "/schemas/ids/7") && !strstr(err, "SECRET"), "%s", err);
    CHECK(hl_registry_register(r, "t-value", "\"string\"", &id, err, sizeof err) == HL_EAGAIN);
    CHECKF(strstr(err, "/subjects/t-value/versions") && !strstr(err, "SECRET"), "%s", err);
    CHECK(hl_registry_lookup(r, "a b/c", "\"string\"", &id, err, sizeof err) == HL_EAGAIN);
    CHECKF(strstr(err, "/subjects/a%20b%2Fc") != NULL, "subject not escaped: %s", err);
    CHECK(text == NULL && id == -1);
    hl_registry_destroy(r);
}

static void test_store_waits_while_registry_away(void)
{
    char err[512] = "", why[256] = "", *text = NULL;
    hl_registry_opts o = {.urls = DEAD_URL, .timeout_ms = 500};
    hl_metrics *m = hl_metrics_create();
    hl_schema_store *s = hl_schema_store_create(hl_registry_create(&o, err, sizeof err), NULL,
                                                m, err, sizeof err);
    CHECKF(s != NULL, "%s", err);
    if (s == NULL) {
        hl_metrics_destroy(m);
        return;
    }
    CHECK(hl_schema_store_get(s, 42, &text, why, sizeof why) == HL_EAGAIN);
    for (int i = 0; i < 100 && hl_schema_store_up(s); i++)
        usleep(20000);
    CHECK(!hl_schema_store_up(s));
    CHECK(hl_metrics_gauge_sum(m, "halflife_schema_registry_up") == 0);
    CHECK(hl_metrics_counter_sum(m, "halflife_schema_registry_requests_total") >= 1);
    /* Still waiting, never "no such id": the registry did not say so. */
    CHECK(hl_schema_store_get(s, 42, &text, why, sizeof why) == HL_EAGAIN);
    CHECK(text == NULL);
    hl_schema_store_destroy(s);
    hl_metrics_destroy(m);
}

/* A loopback listener that never answers: connections complete in the
 * kernel's backlog and requests wait for a reply that never comes. */
static int silent_listener(int *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 16) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A store's destroy ends a request in progress at once, not after
 * schema.registry.timeout.ms (here 30 s). */
static void test_destroy_does_not_wait_for_a_silent_registry(void)
{
    char url[64], err[512], why[256], *text = NULL;
    int port, fd = silent_listener(&port);
    if (fd < 0)
        SKIP("no loopback listener");
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    hl_registry_opts o = {.urls = url, .timeout_ms = 30000};
    hl_schema_store *s = hl_schema_store_create(hl_registry_create(&o, err, sizeof err), NULL,
                                                NULL, err, sizeof err);
    CHECKF(s != NULL, "%s", err);
    if (s != NULL) {
        CHECK(hl_schema_store_get(s, 3, &text, why, sizeof why) == HL_EAGAIN);
        usleep(300000);                     /* the request is waiting now */
        double t0 = now_s();
        hl_schema_store_destroy(s);
        CHECKF(now_s() - t0 < 3.0, "destroy took %.1f s", now_s() - t0);
    }
    close(fd);
}

/* A schema source for the codec: what a registry would answer, by id. */
typedef struct source {
    int         rc;          /* 0: text, else what to answer */
    const char *text;
    int         calls;
} source;

static int source_fn(void *arg, int32_t id, char **text, char *why, size_t whylen)
{
    source *src = arg;
    src->calls++;
    if (src->rc != 0)
        return hl_err(why, whylen, src->rc, "schema id %d: as the test says", (int)id);
    *text = strdup(src->text);
    return *text ? 0 : HL_ENOMEM;
}

/* Our own schema plus an optional field: a second registered version. */
static const char v2_json[] =
    "{\"type\":\"record\",\"name\":\"BehaviourEvent\",\"namespace\":\"halflife\","
    "\"fields\":["
    "{\"name\":\"user_id\",\"type\":\"string\"},"
    "{\"name\":\"item_id\",\"type\":\"string\"},"
    "{\"name\":\"event_type\",\"type\":{\"type\":\"enum\",\"name\":\"EventType\","
    "\"symbols\":[\"VIEW\",\"CLICK\",\"FAVORITE\",\"ADD_TO_CART\",\"PURCHASE\",\"RATE\"]}},"
    "{\"name\":\"timestamp\",\"type\":\"long\"},"
    "{\"name\":\"weight\",\"type\":[\"null\",\"float\"],\"default\":null},"
    "{\"name\":\"context\",\"type\":[\"null\",{\"type\":\"map\",\"values\":\"string\"}],"
    "\"default\":null},"
    "{\"name\":\"session_id\",\"type\":[\"null\",\"string\"],\"default\":null}]}";

/* The v2 encoding of ev: ours with session_id appended (branch 1, "s1"). */
static int encode_v2(hl_codec *c, const hl_codec_event *ev, uint8_t *buf, size_t cap)
{
    int n = hl_codec_encode_event(c, ev, buf, cap);
    if (n < 0 || (size_t)n + 4 > cap)
        return -1;
    memcpy(buf + n, "\x02\x04s1", 4);
    return n + 4;
}

static void test_codec_waits_then_decodes(void)
{
    char err[256], detail[160];
    uint8_t buf[256];
    source src = {HL_EAGAIN, v2_json, 0};
    hl_codec_opts o = {HL_FRAMING_CONFLUENT, HL_FRAMING_CONFLUENT, "/nonexistent", 2, 0,
                       INT64_MAX, 0, source_fn, &src, 77};
    hl_codec *c = hl_codec_create(&o, err, sizeof err);
    CHECKF(c != NULL, "%s", err);
    if (c == NULL)
        return;
    hl_codec_event ev = {"u1", 2, "i9", 2, HL_PURCHASE, 1767225600000LL, 2.5f, 1}, got;
    int n = encode_v2(c, &ev, buf, sizeof buf);
    CHECK(n > 5 && buf[4] == 77);          /* event_schema_id in the header */
    CHECK(hl_codec_decode_event(c, buf, (size_t)n, &got, detail, sizeof detail) == HL_CODEC_WAIT);
    CHECK(hl_codec_writer(c, 77) == HL_CODEC_WRITER_WAIT);
    src.rc = 0;                             /* the registry answers */
    CHECK(hl_codec_writer(c, 77) == HL_CODEC_WRITER_RESOLVED);
    hl_codec_reason r = hl_codec_decode_event(c, buf, (size_t)n, &got, detail, sizeof detail);
    CHECKF(r == HL_CODEC_OK, "%s: %s", hl_codec_reason_name(r), detail);
    CHECK(got.user_len == 2 && !memcmp(got.user, "u1", 2) && got.item_len == 2 &&
          !memcmp(got.item, "i9", 2) && got.type == HL_PURCHASE &&
          got.ts_ms == ev.ts_ms && got.has_weight && got.weight == 2.5f);
    int calls = src.calls;
    CHECK(hl_codec_decode_event(c, buf, (size_t)n, &got, detail, sizeof detail) == HL_CODEC_OK);
    CHECK(src.calls == calls);              /* cached: asked no more */
    hl_codec_destroy(c);
}

static void test_codec_refused_id_is_unknown_schema(void)
{
    char err[256], detail[160];
    uint8_t buf[256];
    source src = {HL_ENOENT, NULL, 0};
    hl_codec_opts o = {HL_FRAMING_CONFLUENT, HL_FRAMING_CONFLUENT, "/nonexistent", 2, 0,
                       INT64_MAX, 0, source_fn, &src, 0};
    hl_codec *c = hl_codec_create(&o, err, sizeof err);
    CHECKF(c != NULL, "%s", err);
    if (c == NULL)
        return;
    hl_codec_event ev = {"u1", 2, "i9", 2, HL_VIEW, 1767225600000LL, 1, 0}, got;
    int n = hl_codec_encode_event(c, &ev, buf, sizeof buf);
    CHECK(n > 5 && buf[4] == 1);            /* the default id */
    /* With a source, id 1 is the registry's: not built in. */
    CHECK(hl_codec_decode_event(c, buf, (size_t)n, &got, detail, sizeof detail) ==
          HL_CODEC_UNKNOWN_SCHEMA);
    CHECKF(strstr(detail, "as the test says") != NULL, "%s", detail);
    hl_codec_destroy(c);
}

static void test_list_schema_matches_file(void)
{
    char path[512];
    avro_schema_t mine = NULL, file = NULL;
    snprintf(path, sizeof path, "%s/schemas/recommendation_list.avsc", top());
    FILE *f = fopen(path, "r");
    char text[8192];
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f)
        fclose(f);
    text[n] = '\0';
    CHECKF(n > 0, "cannot read %s", path);
    CHECK(avro_schema_from_json_length(text, n, &file) == 0);
    CHECK(avro_schema_from_json_length(hl_codec_list_schema(), strlen(hl_codec_list_schema()),
                                       &mine) == 0);
    CHECK(mine && file && avro_schema_equal(mine, file));
    if (mine)
        avro_schema_decref(mine);
    if (file)
        avro_schema_decref(file);
}

static void test_config_never_prints_the_password(void)
{
    char err[512], big[1100];
    hl_config *cfg = hl_config_create();
    memset(big, 'Q', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    CHECK(hl_config_set(cfg, "schema.registry.basic.auth.user.info", big, "-X", err,
                        sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "QQQQ") == NULL && strstr(err, "not shown") != NULL, "%s", err);
    /* librdkafka's own secrets too, when it refuses one. */
    CHECK(hl_config_set(cfg, "kafka.no.such.password", "hunter2", "-X", err, sizeof err) ==
          HL_EINVAL);
    CHECKF(strstr(err, "hunter2") == NULL && strstr(err, "not shown") != NULL, "%s", err);
    CHECK(hl_config_set(cfg, "schema.registry.basic.auth.user.info", "u:pw", "-X", err,
                        sizeof err) == 0);
    hl_worker_opts o;
    hl_config_worker_opts(cfg, &o);
    CHECK(o.registry.user_info && !strcmp(o.registry.user_info, "u:pw"));
    CHECK(o.registry.urls == NULL && o.registry_auto_register == 1);
    hl_config_destroy(cfg);
}

int main(void)
{
    RUN(test_urls_checked);
    RUN(test_user_info_needs_a_colon);
    RUN(test_unreachable_is_transient);
    RUN(test_store_waits_while_registry_away);
    RUN(test_destroy_does_not_wait_for_a_silent_registry);
    RUN(test_codec_waits_then_decodes);
    RUN(test_codec_refused_id_is_unknown_schema);
    RUN(test_list_schema_matches_file);
    RUN(test_config_never_prints_the_password);
    TEST_EXIT();
}
