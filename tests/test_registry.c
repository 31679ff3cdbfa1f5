/* test_registry.c - the Schema Registry client, needing no registry:
 * worker/registry.c (URL checks, redaction, an unreachable URL is
 * transient and its error text holds no secret; an answer that starts with
 * a folded header line after an earlier request; a proxy's page in the
 * registry's place, a 200 that is not JSON, a bare 404 or a 5xx of any
 * size, is the registry away, not its word), the codec's schema source (a
 * waiting id decodes as HL_CODEC_WAIT, then as the same event as the file
 * path once the text comes; a refused id is unknown_schema; encode writes
 * event_schema_id), the embedded lists' schema against
 * schemas/recommendation_list.avsc, and the configuration never printing
 * the registry password. test_schema_store.c covers the store of fetched
 * schemas; tests/integration/test_schema_registry.py the rest against a
 * stand-in registry over HTTP. */
#define T_SUITE "registry"
#include "test.h"
#include "registry_test_util.h"

#include "codec.h"
#include "config.h"
#include "log.h"
#include "registry.h"

#include <avro.h>
#include <jansson.h>
#include <pthread.h>

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

/* Answers n connections in turn, each with its raw bytes (status line and
 * headers included), reading each request first. */
typedef struct raw_answers {
    int                fd, n;
    const char *const *raw;
} raw_answers;

static void *answer_raw(void *arg)
{
    raw_answers *ra = arg;
    for (int i = 0; i < ra->n; i++) {
        int c = accept(ra->fd, NULL, NULL);
        if (c < 0)
            return NULL;
        read_head(c);
        /* The client hangs up on an answer too large: no SIGPIPE, no error. */
        (void)!send(c, ra->raw[i], strlen(ra->raw[i]), MSG_NOSIGNAL);
        close(c);
    }
    return NULL;
}

/* A registry's answer whose first header line is a continuation (it
 * starts with a space) after an earlier answer: libcurl 7.88.1 (Debian
 * bookworm's) appended it to the previous request's last header, which it
 * had freed (curl issue 11101, fixed in 8.1.0): a use after free in the
 * worker, found by fuzz_registry. The answer is refused, and under
 * SAN=1 nothing reads freed memory. */
static void test_folded_first_header_after_a_request(void)
{
    static const char *const raw[] = {
        "HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 14\r\n\r\n{\"schema\":\"1\"}",
        "HTTP/1.1 200 OK\r\n folded: 1\r\nContent-Length: 14\r\n\r\n{\"schema\":\"2\"}",
    };
    char url[64], err[512], *text = NULL;
    int port;
    raw_answers ra = {-1, 2, raw};
    pthread_t tid;
    if (standin_start(&ra.fd, &port, answer_raw, &ra, &tid) != 0)
        SKIP("no loopback listener");
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    hl_registry_opts o = {.urls = url, .timeout_ms = 5000};
    hl_registry *r = hl_registry_create(&o, err, sizeof err);
    CHECKF(r != NULL, "%s", err);
    if (r != NULL) {
        int rc = hl_registry_schema_by_id(r, 1, &text, err, sizeof err);
        CHECKF(rc == 0 && text != NULL && !strcmp(text, "1"), "first answer: rc %d %s", rc,
               err);
        free(text);
        text = NULL;
        rc = hl_registry_schema_by_id(r, 2, &text, err, sizeof err);
        CHECKF(rc != 0 && err[0] != '\0', "folded answer: rc %d", rc);
        free(text);
    }
    standin_stop(ra.fd, NULL, tid);
    hl_registry_destroy(r);
}

/* An HTTP answer of status, Content-Type type and a body of n bytes (body,
 * else that many 'x'), malloc'd. */
static char *raw_answer(const char *status, const char *type, const char *body, size_t n)
{
    char head[256];
    int hn = snprintf(head, sizeof head, "HTTP/1.1 %s\r\nContent-Type: %s\r\n"
                      "Content-Length: %zu\r\n\r\n", status, type, body ? strlen(body) : n);
    char *raw = malloc((size_t)hn + (body ? strlen(body) : n) + 1);
    if (raw == NULL)
        return NULL;
    memcpy(raw, head, (size_t)hn);
    if (body != NULL)
        strcpy(raw + hn, body);
    else {
        memset(raw + hn, 'x', n);
        raw[hn + n] = '\0';
    }
    return raw;
}

/* A registry client on the loopback's port; NULL (checked) when it cannot
 * be made. */
static hl_registry *registry_at(int port)
{
    char url[64], err[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    hl_registry_opts o = {.urls = url, .timeout_ms = 5000};
    hl_registry *r = hl_registry_create(&o, err, sizeof err);
    CHECKF(r != NULL, "%s", err);
    return r;
}

/* Answers that are not the registry's (a proxy's or a load balancer's
 * page, a captive portal's 200) were its word: a 200 that is not JSON and
 * anything over HL_REGISTRY_MAX_BODY (a 502 page too: the size was judged
 * before the status) made the id bad, and a bare 404 "no such id"; their
 * records were dead-lettered. So did a 200 with JSON of another service
 * (a health page's {"status":"UP"}) or a "schema" that is no string. They
 * are the registry being away now. */
static void test_proxy_answers_are_not_the_registrys(void)
{
    static const char *const html = "<html><body>Sign in to the network</body></html>";
    static const char *const json = "application/vnd.schemaregistry.v1+json";
    const size_t big = HL_REGISTRY_MAX_BODY + 4096;
    struct { char *raw; int want; const char *say; } c[] = {
        {raw_answer("200 OK", "text/html", html, 0), HL_EAGAIN, "not the registry's"},
        {raw_answer("404 Not Found", "text/html", html, 0), HL_EAGAIN, "schema.registry.url"},
        {raw_answer("404 Not Found", json, "{\"error_code\":40403,\"message\":\"Schema 8 not "
                    "found\"}", 0), HL_ENOENT, "40403"},
        {raw_answer("502 Bad Gateway", "text/html", NULL, big), HL_EAGAIN, "HTTP 502"},
        {raw_answer("200 OK", "text/html", NULL, big), HL_EAGAIN, "not the registry's"},
        {raw_answer("200 OK", json, NULL, big), HL_EFORMAT, "larger than"},
        {raw_answer("200 OK", json, "{\"status\":\"UP\"}", 0), HL_EAGAIN,
         "without a \"schema\" string"},
        {raw_answer("200 OK", "application/json", "{\"schema\":{\"type\":\"string\"}}", 0),
         HL_EAGAIN, "without a \"schema\" string"},
    };
    enum { N = sizeof c / sizeof c[0] };
    const char *raw[N];
    char err[512], *text = NULL;
    int port;
    for (int i = 0; i < N; i++)
        raw[i] = c[i].raw ? c[i].raw : "";
    raw_answers ra = {-1, N, raw};
    pthread_t tid;
    if (standin_start(&ra.fd, &port, answer_raw, &ra, &tid) != 0) {
        for (int i = 0; i < N; i++)
            free(c[i].raw);
        SKIP("no loopback listener");
    }
    hl_registry *r = registry_at(port);
    for (int i = 0; r != NULL && i < N; i++) {
        err[0] = '\0';
        int rc = hl_registry_schema_by_id(r, 8, &text, err, sizeof err);
        CHECKF(rc == c[i].want && strstr(err, c[i].say), "answer %d: rc %d, want %d "
               "naming \"%s\": %s", i, rc, c[i].want, c[i].say, err);
        free(text);
        text = NULL;
    }
    standin_stop(ra.fd, NULL, tid);
    hl_registry_destroy(r);
    for (int i = 0; i < N; i++)
        free(c[i].raw);
}

/* Registering and looking up read "id": a 2xx JSON object without an
 * integer "id" is another service's answer and is waited for (it had
 * failed the worker's start as a bad answer); an "id" out of range is the
 * registry's own and is refused. */
static void test_register_answer_without_an_id_waits(void)
{
    static const char *const json = "application/vnd.schemaregistry.v1+json";
    struct { char *raw; int want; const char *say; } c[] = {
        {raw_answer("200 OK", json, "{\"status\":\"UP\"}", 0), HL_EAGAIN,
         "without a \"id\" integer"},
        {raw_answer("200 OK", json, "{\"id\":\"12\"}", 0), HL_EAGAIN, "a proxy in the way"},
        {raw_answer("200 OK", json, "{\"id\":-3}", 0), HL_EFORMAT, "-3 is not a schema id"},
        {raw_answer("200 OK", json, "{\"id\":12}", 0), 0, ""},
    };
    enum { N = sizeof c / sizeof c[0] };
    const char *raw[N];
    char err[512];
    int port;
    for (int i = 0; i < N; i++)
        raw[i] = c[i].raw ? c[i].raw : "";
    raw_answers ra = {-1, N, raw};
    pthread_t tid;
    if (standin_start(&ra.fd, &port, answer_raw, &ra, &tid) != 0)
        SKIP("no loopback listener");
    hl_registry *r = registry_at(port);
    if (r != NULL) {
        for (int i = 0; i < N; i++) {
            int32_t id = -1;
            err[0] = '\0';
            int rc = i % 2 ? hl_registry_lookup(r, "t-value", "\"string\"", &id, err, sizeof err)
                           : hl_registry_register(r, "t-value", "\"string\"", &id, err,
                                                  sizeof err);
            CHECKF(rc == c[i].want && strstr(err, c[i].say) && (rc != 0 || id == 12),
                   "answer %d: rc %d, id %d, want %d naming \"%s\": %s", i, rc, (int)id,
                   c[i].want, c[i].say, err);
        }
    }
    standin_stop(ra.fd, NULL, tid);
    hl_registry_destroy(r);
    for (int i = 0; i < N; i++)
        free(c[i].raw);
}

/* Another service's JSON on the first URL is not the registry's answer:
 * the next URL is asked, and its schema is the answer. */
static void test_next_url_after_another_services_json(void)
{
    static const char *const json = "application/json";
    char *raw_a = raw_answer("200 OK", json, "{\"status\":\"UP\"}", 0);
    char *raw_b = raw_answer("200 OK", json, "{\"schema\":\"\\\"string\\\"\"}", 0);
    const char *ra_raw[] = {raw_a ? raw_a : ""}, *rb_raw[] = {raw_b ? raw_b : ""};
    char url[128], err[512] = "", *text = NULL;
    int port_a, port_b;
    raw_answers ra = {-1, 1, ra_raw}, rb = {-1, 1, rb_raw};
    pthread_t ta, tb;
    if (standin_start(&ra.fd, &port_a, answer_raw, &ra, &ta) != 0) {
        free(raw_a);
        free(raw_b);
        SKIP("no loopback listener");
    }
    if (standin_start(&rb.fd, &port_b, answer_raw, &rb, &tb) != 0) {
        standin_stop(ra.fd, NULL, ta);
        free(raw_a);
        free(raw_b);
        SKIP("no loopback listener");
    }
    snprintf(url, sizeof url, "http://127.0.0.1:%d,http://127.0.0.1:%d", port_a, port_b);
    hl_registry_opts o = {.urls = url, .timeout_ms = 5000};
    hl_registry *r = hl_registry_create(&o, err, sizeof err);
    CHECKF(r != NULL, "%s", err);
    int rc = r != NULL ? hl_registry_schema_by_id(r, 4, &text, err, sizeof err) : -1;
    CHECKF(rc == 0 && text && !strcmp(text, "\"string\""), "rc %d text %s: %s", rc,
           text ? text : "-", err);
    standin_stop(rb.fd, NULL, tb);              /* ends the accept when B was not asked */
    standin_stop(ra.fd, NULL, ta);
    free(text);
    hl_registry_destroy(r);
    free(raw_a);
    free(raw_b);
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

/* {"schema": text} as the registry's 200 answer, malloc'd; text laid out
 * again (keys sorted, no spaces) when relaid, as a registry may store it. */
static char *schema_answer(const char *text, int relaid)
{
    json_t *j = relaid ? json_loads(text, 0, NULL) : NULL;
    char *laid = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_t *ans = json_pack("{s:s}", "schema", laid ? laid : text);
    char *body = ans ? json_dumps(ans, JSON_COMPACT) : NULL;
    char *raw = body ? raw_answer("200 OK", "application/vnd.schemaregistry.v1+json", body, 0)
                     : NULL;
    free(body);
    json_decref(ans);
    free(laid);
    json_decref(j);
    return raw;
}

/* A register or lookup answered with another schema's id (a proxy's stale
 * cache, a registry's bug) was trusted: every list went out under it. The
 * id's schema is fetched and compared parsed: the same schema laid out
 * again is taken; another one, or text that is no Avro schema, is
 * HL_EMISMATCH naming the id and both schemas; an id the registry does not
 * have yet (a replica behind) is waited for. */
static void test_registered_id_is_checked(void)
{
    static const char *const json = "application/vnd.schemaregistry.v1+json";
    const char *ours = hl_codec_list_schema();
    struct { char *raw; int want; const char *say; } c[] = {
        {raw_answer("200 OK", json, "{\"id\":7}", 0), 0, ""},
        {schema_answer(ours, 1), 0, ""},
        {raw_answer("200 OK", json, "{\"id\":7}", 0), 0, ""},
        {schema_answer(hl_codec_event_schema(), 0), HL_EMISMATCH,
         "halflife.BehaviourEvent (fingerprint "},
        {raw_answer("200 OK", json, "{\"id\":7}", 0), 0, ""},
        {schema_answer("{\"type\":\"nope\"}", 0), HL_EMISMATCH, "no Avro schema"},
        {raw_answer("200 OK", json, "{\"id\":7}", 0), 0, ""},
        {raw_answer("404 Not Found", json, "{\"error_code\":40403,\"message\":\"Schema 7 not "
                    "found\"}", 0), HL_EAGAIN, "not in the registry yet"},
        /* the last pair's id asked again five times, 200 ms apart (a
         * replica catching up), before "not yet"; then one that catches up */
        {raw_answer("404 Not Found", json, "{\"error_code\":40403}", 0), 0, ""},
        {raw_answer("404 Not Found", json, "{\"error_code\":40403}", 0), 0, ""},
        {raw_answer("404 Not Found", json, "{\"error_code\":40403}", 0), 0, ""},
        {raw_answer("404 Not Found", json, "{\"error_code\":40403}", 0), 0, ""},
        {raw_answer("404 Not Found", json, "{\"error_code\":40403}", 0), 0, ""},
        {raw_answer("200 OK", json, "{\"id\":7}", 0), 0, ""},
        {raw_answer("404 Not Found", json, "{\"error_code\":40403}", 0), 0, ""},
        {schema_answer(ours, 0), 0, ""},
    };
    enum { N = sizeof c / sizeof c[0], N_PAIRS = 4 };   /* a register or lookup, a check */
    const char *raw[N];
    char err[1024];
    int port;
    for (int i = 0; i < N; i++)
        raw[i] = c[i].raw ? c[i].raw : "";
    raw_answers ra = {-1, N, raw};
    pthread_t tid;
    if (standin_start(&ra.fd, &port, answer_raw, &ra, &tid) != 0)
        SKIP("no loopback listener");
    hl_registry *r = registry_at(port);
    for (int i = 0; r != NULL && i < 2 * N_PAIRS; i += 2) {
        int32_t id = -1;
        err[0] = '\0';
        int rc = hl_registry_subject_id(r, "recommendations-value", ours, i % 4 == 0, &id, err,
                                        sizeof err);
        CHECKF(rc == c[i + 1].want && id == 7 && strstr(err, c[i + 1].say) &&
               (rc != HL_EMISMATCH || (strstr(err, "id 7") &&
                                       strstr(err, "record halflife.RecommendationList"))),
               "answer %d: rc %d, want %d naming \"%s\": %s", i + 1, rc, c[i + 1].want,
               c[i + 1].say, err);
    }
    int32_t id = -1;
    int rc = r != NULL ? hl_registry_subject_id(r, "recommendations-value", ours, 1, &id, err,
                                                sizeof err) : 0;
    CHECKF(rc == 0 && id == 7, "a 404 then the schema: rc %d id %d: %s", rc, (int)id, err);
    standin_stop(ra.fd, NULL, tid);
    hl_registry_destroy(r);
    for (int i = 0; i < N; i++)
        free(c[i].raw);
}

/* A registry's schema that the codec refuses (here a record without
 * user_id: it does not resolve) is the same text at each look: ids are
 * immutable and the store keeps it. Each shard's codec copied and parsed
 * it again every 5 s while records named the id (50 to 300 ms for 1 MiB,
 * the shard's records waiting meanwhile); now after 30 s, doubling. A
 * source that has no schema for the id is still asked every 5 s. */
static void test_codec_refused_text_not_parsed_every_5_s(void)
{
    static const char lacks_user[] = "{\"type\":\"record\",\"name\":\"BehaviourEvent\","
                                     "\"fields\":[{\"name\":\"item_id\",\"type\":\"string\"}]}";
    static const uint8_t rec[] = {0, 0, 0, 0, 9, 2, 'x'};
    char err[256], detail[160];
    source src = {0, lacks_user, 0}, none = {HL_ENOENT, NULL, 0};
    hl_codec_opts o = {HL_FRAMING_CONFLUENT, HL_FRAMING_CONFLUENT, "/nonexistent", 2, 0,
                       INT64_MAX, 0, source_fn, &src, 0};
    hl_codec *c = hl_codec_create(&o, err, sizeof err);
    o.schema_arg = &none;
    hl_codec *c_none = hl_codec_create(&o, err, sizeof err);
    CHECKF(c != NULL && c_none != NULL, "%s", err);
    if (c == NULL || c_none == NULL) {
        hl_codec_destroy(c);
        hl_codec_destroy(c_none);
        return;
    }
    hl_codec_event got;
    hl_codec_reason r = hl_codec_decode_event(c, rec, sizeof rec, &got, detail, sizeof detail);
    CHECKF(r == HL_CODEC_UNKNOWN_SCHEMA && strstr(detail, "user_id") && src.calls == 1,
           "%s: %s (asked %d times)", hl_codec_reason_name(r), detail, src.calls);
    CHECK(hl_codec_decode_event(c_none, rec, sizeof rec, &got, detail, sizeof detail) ==
          HL_CODEC_UNKNOWN_SCHEMA && none.calls == 1);
    usleep(5200000);
    r = hl_codec_decode_event(c, rec, sizeof rec, &got, detail, sizeof detail);
    CHECKF(r == HL_CODEC_UNKNOWN_SCHEMA && src.calls == 1, "after 5.2 s: %s, the refused "
           "text asked for and parsed %d times (want 1)", hl_codec_reason_name(r), src.calls);
    CHECKF(hl_codec_decode_event(c_none, rec, sizeof rec, &got, detail, sizeof detail) ==
           HL_CODEC_UNKNOWN_SCHEMA && none.calls == 2, "an id without a schema: asked %d "
           "times in 5.2 s (want 2)", none.calls);
    hl_codec_destroy(c);
    hl_codec_destroy(c_none);
}

int main(void)
{
    RUN(test_urls_checked);
    RUN(test_user_info_needs_a_colon);
    RUN(test_unreachable_is_transient);
    RUN(test_folded_first_header_after_a_request);
    RUN(test_proxy_answers_are_not_the_registrys);
    RUN(test_register_answer_without_an_id_waits);
    RUN(test_next_url_after_another_services_json);
    RUN(test_codec_waits_then_decodes);
    RUN(test_codec_refused_id_is_unknown_schema);
    RUN(test_list_schema_matches_file);
    RUN(test_config_never_prints_the_password);
    RUN(test_registered_id_is_checked);
    RUN(test_codec_refused_text_not_parsed_every_5_s);
    TEST_EXIT();
}
