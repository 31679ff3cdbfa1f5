/* test_registry.c - the Schema Registry parts that need no registry:
 * worker/registry.c (URL checks, redaction, an unreachable URL is
 * transient and its error text holds no secret), worker/schema_store.c (an
 * unknown id waits while the registry is away; the up gauge says so; a
 * request to a registry that never answers does not hold up destroy, nor
 * a known id, and ends at schema.registry.timeout.ms; a full table of
 * waiting ids neither refuses a new id nor drops a fetched schema; the
 * fallback file is read after a 404 only, never after a bad answer; one
 * id the registry keeps failing does not starve the others, nor makes the
 * registry read down; a 5xx for every id does; a table full of fetched
 * schemas still takes a new id; a new id goes before rechecks of "no such
 * id"; a proxy's page in the registry's place, a 200 that is not JSON, a
 * bare 404 or a 5xx of any size, makes records wait, not bad), the
 * codec's schema source (a waiting id decodes as HL_CODEC_WAIT, then as the
 * same event as the file path once the text comes; a refused id is
 * unknown_schema; encode writes event_schema_id), the embedded lists'
 * schema against schemas/recommendation_list.avsc, an answer that starts
 * with a folded header line after an earlier request, and the configuration
 * never printing the registry password.
 * tests/integration/test_schema_registry.py covers the rest against a
 * stand-in registry over HTTP. */
#define T_SUITE "registry"
#include "test.h"

#include "codec.h"
#include "config.h"
#include "log.h"
#include "registry.h"
#include "schema_store.h"

#include <arpa/inet.h>
#include <avro.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
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

/* A store asking the registry on the loopback's port, each request given
 * timeout_ms; NULL (checked) when it cannot be made. */
static hl_schema_store *store_at(int port, int timeout_ms, const char *dir, hl_metrics *m)
{
    char url[64], err[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    hl_registry_opts o = {.urls = url, .timeout_ms = timeout_ms};
    hl_schema_store *s = hl_schema_store_create(hl_registry_create(&o, err, sizeof err), dir, m,
                                                err, sizeof err);
    CHECKF(s != NULL, "%s", err);
    return s;
}

/* A store's destroy ends a request in progress at once, not after
 * schema.registry.timeout.ms (here 30 s). */
static void test_destroy_does_not_wait_for_a_silent_registry(void)
{
    char why[256], *text = NULL;
    int port, fd = silent_listener(&port);
    if (fd < 0)
        SKIP("no loopback listener");
    hl_schema_store *s = store_at(port, 30000, NULL, NULL);
    if (s != NULL) {
        CHECK(hl_schema_store_get(s, 3, &text, why, sizeof why) == HL_EAGAIN);
        usleep(300000);                     /* the request is waiting now */
        double t0 = now_s();
        hl_schema_store_destroy(s);
        CHECKF(now_s() - t0 < 3.0, "destroy took %.1f s", now_s() - t0);
    }
    close(fd);
}

/* A registry that answers one request (status and body; by default 200
 * with a string schema) and then no more: later connections complete in
 * the listen backlog and wait for ever. */
typedef struct one_answer {
    int         fd;
    const char *status;     /* NULL: "200 OK" */
    const char *body;       /* NULL: the string schema */
    const char *type;       /* NULL: the registry's media type */
} one_answer;

/* Reads a request up to the end of its headers (the tests' requests are
 * GETs, or POSTs small enough to come with them). */
static void read_head(int c)
{
    char req[4096];
    size_t got = 0;
    ssize_t n;
    while (got < sizeof req - 1 && (n = read(c, req + got, sizeof req - 1 - got)) > 0) {
        got += (size_t)n;
        req[got] = '\0';
        if (strstr(req, "\r\n\r\n") != NULL)
            break;
    }
}

static void *answer_once(void *arg)
{
    static const char string_schema[] = "{\"schema\":\"{\\\"type\\\":\\\"string\\\"}\"}";
    char head[256];
    one_answer *oa = arg;
    const char *body = oa->body ? oa->body : string_schema;
    int c = accept(oa->fd, NULL, NULL);
    if (c < 0)
        return NULL;
    read_head(c);
    int hn = snprintf(head, sizeof head, "HTTP/1.1 %s\r\nContent-Type: %s\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                      oa->status ? oa->status : "200 OK",
                      oa->type ? oa->type : "application/vnd.schemaregistry.v1+json",
                      strlen(body));
    if (write(c, head, (size_t)hn) != hn || write(c, body, strlen(body)) < 0)
        perror("answer_once");
    close(c);
    return NULL;
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
    int port, fd = silent_listener(&port);
    if (fd < 0)
        SKIP("no loopback listener");
    raw_answers ra = {fd, 2, raw};
    pthread_t tid;
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    hl_registry_opts o = {.urls = url, .timeout_ms = 5000};
    hl_registry *r = hl_registry_create(&o, err, sizeof err);
    CHECKF(r != NULL, "%s", err);
    if (r == NULL || pthread_create(&tid, NULL, answer_raw, &ra) != 0) {
        hl_registry_destroy(r);
        close(fd);
        return;
    }
    int rc = hl_registry_schema_by_id(r, 1, &text, err, sizeof err);
    CHECKF(rc == 0 && text != NULL && !strcmp(text, "1"), "first answer: rc %d %s", rc, err);
    free(text);
    text = NULL;
    rc = hl_registry_schema_by_id(r, 2, &text, err, sizeof err);
    CHECKF(rc != 0 && err[0] != '\0', "folded answer: rc %d", rc);
    free(text);
    pthread_join(tid, NULL);
    hl_registry_destroy(r);
    close(fd);
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

/* Answers that are not the registry's (a proxy's or a load balancer's
 * page, a captive portal's 200) were its word: a 200 that is not JSON and
 * anything over HL_REGISTRY_MAX_BODY (a 502 page too: the size was judged
 * before the status) made the id bad, and a bare 404 "no such id"; their
 * records were dead-lettered. They are the registry being away now. */
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
    };
    enum { N = sizeof c / sizeof c[0] };
    const char *raw[N];
    char url[64], err[512], *text = NULL;
    int port, fd = silent_listener(&port);
    for (int i = 0; i < N; i++)
        raw[i] = c[i].raw ? c[i].raw : "";
    raw_answers ra = {fd, N, raw};
    pthread_t tid;
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    hl_registry_opts o = {.urls = url, .timeout_ms = 5000};
    hl_registry *r = fd >= 0 ? hl_registry_create(&o, err, sizeof err) : NULL;
    if (r != NULL && pthread_create(&tid, NULL, answer_raw, &ra) == 0) {
        for (int i = 0; i < N; i++) {
            err[0] = '\0';
            int rc = hl_registry_schema_by_id(r, 8, &text, err, sizeof err);
            CHECKF(rc == c[i].want && strstr(err, c[i].say), "answer %d: rc %d, want %d "
                   "naming \"%s\": %s", i, rc, c[i].want, c[i].say, err);
            free(text);
            text = NULL;
        }
        pthread_join(tid, NULL);
    } else {
        CHECK(fd < 0);                          /* else the setup failed */
    }
    hl_registry_destroy(r);
    if (fd >= 0)
        close(fd);
    for (int i = 0; i < N; i++)
        free(c[i].raw);
}

/* A fetch that hangs on a registry that stopped answering holds up nobody
 * who asks for an id already known (the store's lock is not held across
 * the request), and schema.registry.timeout.ms ends it: the registry is
 * then down and the new id still waits, never "no such id". */
static void test_known_ids_do_not_wait_for_a_silent_registry(void)
{
    char why[256], *text = NULL;
    pthread_t tid;
    int port;
    one_answer oa = {silent_listener(&port), NULL, NULL, NULL};
    if (oa.fd < 0 || pthread_create(&tid, NULL, answer_once, &oa) != 0)
        SKIP("no loopback listener");
    hl_schema_store *s = store_at(port, 1500, NULL, NULL);
    if (s == NULL)
        goto out;
    int rc = HL_EAGAIN;
    for (int i = 0; i < 200 && (rc = hl_schema_store_get(s, 1, &text, why, sizeof why)) ==
                                HL_EAGAIN; i++)
        usleep(10000);
    CHECKF(rc == 0 && text && !strcmp(text, "{\"type\":\"string\"}"), "id 1: %d %s", rc, why);
    free(text);
    double t0 = now_s(), worst = 0;
    CHECK(hl_schema_store_get(s, 2, &text, why, sizeof why) == HL_EAGAIN);   /* hangs now */
    usleep(200000);
    for (int i = 0; i < 20000; i++) {
        double t1 = now_s();
        rc = hl_schema_store_get(s, 1, &text, why, sizeof why);
        worst = now_s() - t1 > worst ? now_s() - t1 : worst;
        free(text);
        text = NULL;
        CHECK(rc == 0);
        if (rc != 0)
            break;
    }
    CHECKF(worst < 0.1, "a known id took %.3f s while another id's fetch hung", worst);
    CHECKF(hl_schema_store_up(s), "down after %.2f s, before the 1.5 s timeout", now_s() - t0);
    for (int i = 0; i < 400 && hl_schema_store_up(s); i++)
        usleep(10000);
    double down_s = now_s() - t0;
    CHECKF(!hl_schema_store_up(s) && down_s >= 1.4 && down_s < 4.0,
           "registry down after %.2f s; schema.registry.timeout.ms is 1.5 s", down_s);
    CHECK(hl_schema_store_get(s, 2, &text, why, sizeof why) == HL_EAGAIN);
    hl_schema_store_destroy(s);
out:
    pthread_join(tid, NULL);
    close(oa.fd);
}

/* Asks for n ids from first on; returns how many were not HL_EAGAIN. */
static int ask_many(hl_schema_store *s, int32_t first, int n)
{
    char why[256], *text = NULL;
    int not_waiting = 0;
    for (int i = 0; i < n; i++) {
        int rc = hl_schema_store_get(s, first + i, &text, why, sizeof why);
        not_waiting += rc != HL_EAGAIN;
        if (rc == 0)
            free(text);
    }
    return not_waiting;
}

/* During an outage every id stays wanted. Ids written once (here a full
 * table of bogus ones) must not turn a later id into "no such id": its
 * records would be dead-lettered instead of waiting for the registry. */
static void test_waiting_ids_do_not_fill_the_store(void)
{
    char err[512], why[256] = "", *text = NULL;
    hl_registry_opts o = {.urls = DEAD_URL, .timeout_ms = 500};
    hl_schema_store *s = hl_schema_store_create(hl_registry_create(&o, err, sizeof err), NULL,
                                                NULL, err, sizeof err);
    CHECKF(s != NULL, "%s", err);
    if (s == NULL)
        return;
    CHECK(ask_many(s, 1000, HL_SCHEMA_STORE_MAX_IDS) == 0);
    int rc = hl_schema_store_get(s, 3, &text, why, sizeof why);
    CHECKF(rc == HL_EAGAIN && strstr(why, "being fetched"), "id 3: rc %d: %s", rc, why);
    /* As many again: each takes the place of one asked for less lately. */
    CHECK(ask_many(s, 100000, HL_SCHEMA_STORE_MAX_IDS + 10) == 0);
    CHECK(hl_schema_store_get(s, 3, &text, why, sizeof why) == HL_EAGAIN && text == NULL);
    hl_schema_store_destroy(s);
}

/* Starts a store on a registry that answers one request as oa says, then
 * no more. NULL (and no thread) when that cannot be set up. */
static hl_schema_store *store_answering_once(one_answer *oa, pthread_t *tid, const char *dir,
                                             hl_metrics *m)
{
    int port;
    if ((oa->fd = silent_listener(&port)) < 0)
        return NULL;
    if (pthread_create(tid, NULL, answer_once, oa) != 0) {
        close(oa->fd);
        return NULL;
    }
    hl_schema_store *s = store_at(port, 1500, dir, m);
    if (s == NULL) {
        shutdown(oa->fd, SHUT_RDWR);        /* ends the accept */
        pthread_join(*tid, NULL);
        close(oa->fd);
    }
    return s;
}

static void store_answering_once_end(hl_schema_store *s, one_answer *oa, pthread_t tid)
{
    hl_schema_store_destroy(s);
    pthread_join(tid, NULL);
    close(oa->fd);
}

/* Asks for id until the answer is no longer "wait" (at most ~2 s). */
static int get_settled(hl_schema_store *s, int32_t id, char **text, char *why, size_t whylen)
{
    int rc = HL_EAGAIN;
    for (int i = 0; i < 200 && (rc = hl_schema_store_get(s, id, text, why, whylen)) ==
                                HL_EAGAIN; i++)
        usleep(10000);
    return rc;
}

/* A full table of waiting ids never pushes out a fetched schema: records
 * still decode with it. */
static void test_fetched_schema_outlives_waiting_ids(void)
{
    char why[256] = "", *text = NULL;
    pthread_t tid;
    one_answer oa = {-1, NULL, NULL, NULL};
    hl_schema_store *s = store_answering_once(&oa, &tid, NULL, NULL);
    if (s == NULL)
        SKIP("no loopback listener");
    int rc = get_settled(s, 1, &text, why, sizeof why);
    CHECKF(rc == 0 && text != NULL, "id 1: %d %s", rc, why);
    free(text);
    text = NULL;
    /* The registry is silent now: every new id waits. */
    CHECK(ask_many(s, 1000, HL_SCHEMA_STORE_MAX_IDS + 10) == 0);
    rc = hl_schema_store_get(s, 1, &text, why, sizeof why);
    CHECKF(rc == 0 && text && !strcmp(text, "{\"type\":\"string\"}"), "id 1: %d %s", rc, why);
    free(text);
    store_answering_once_end(s, &oa, tid);
}

/* A directory holding <id>.avsc for id with a schema of its own. */
static int fallback_dir(char *dir, size_t len, int32_t id)
{
    char path[512];
    snprintf(dir, len, "/tmp/hl-test-registry-XXXXXX");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(path, sizeof path, "%s/%d.avsc", dir, (int)id);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fputs("{\"type\":\"long\"}", f);
    return fclose(f);
}

static void fallback_dir_remove(const char *dir, int32_t id)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%d.avsc", dir, (int)id);
    unlink(path);
    rmdir(dir);
}

static uint64_t requests(hl_metrics *m, const char *labels)
{
    return hl_counter_get(hl_metrics_counter(m, "halflife_schema_registry_requests_total",
                                             NULL, labels));
}

/* Asks a store with a fallback directory (7.avsc: "long") for id 7, the
 * registry answering oa once: the answer is want_text (NULL: unknown,
 * the reason naming want_why and not "fallback"), counted once under
 * result=counted and never under result=not_counted. */
static void fallback_case(one_answer oa, const char *want_text, const char *want_why,
                          const char *counted, const char *not_counted)
{
    char dir[64], why[256] = "", *text = NULL, label[64];
    pthread_t tid;
    if (fallback_dir(dir, sizeof dir, 7) != 0)
        SKIP("cannot write a fallback directory in /tmp");
    hl_metrics *m = hl_metrics_create();
    hl_schema_store *s = store_answering_once(&oa, &tid, dir, m);
    if (s == NULL) {
        hl_metrics_destroy(m);
        fallback_dir_remove(dir, 7);
        SKIP("no loopback listener");
    }
    int rc = get_settled(s, 7, &text, why, sizeof why);
    if (want_text != NULL) {
        CHECKF(rc == 0 && text && !strcmp(text, want_text), "id 7: rc %d %s", rc, why);
    } else {
        CHECKF(rc == HL_ENOENT && text == NULL, "id 7: rc %d text %s", rc, text ? text : "-");
        CHECKF(strstr(why, want_why) && !strstr(why, "fallback"), "%s", why);
    }
    snprintf(label, sizeof label, "result=\"%s\"", counted);
    CHECK(requests(m, label) == 1);
    snprintf(label, sizeof label, "result=\"%s\"", not_counted);
    CHECK(requests(m, label) == 0);
    free(text);
    store_answering_once_end(s, &oa, tid);
    hl_metrics_destroy(m);
    fallback_dir_remove(dir, 7);
}

/* The registry answered 200 with a schema that is not Avro: the id is
 * unknown, counted as a bad answer, and the fallback file is not read (it
 * is read only after a 404; a file must not shadow the registry's answer). */
static void test_bad_answer_does_not_read_the_fallback_file(void)
{
    one_answer oa = {-1, NULL, "{\"schema\":\"syntax = \\\"proto3\\\";\","
                               "\"schemaType\":\"PROTOBUF\"}", NULL};
    fallback_case(oa, NULL, "PROTOBUF", "bad_answer", "not_found");
}

/* The other side of it: after a 404 the fallback file is the schema. */
static void test_not_found_reads_the_fallback_file(void)
{
    one_answer oa = {-1, "404 Not Found", "{\"error_code\":40403,\"message\":\"Schema 7 not "
                                          "found\"}", NULL};
    fallback_case(oa, "{\"type\":\"long\"}", NULL, "not_found", "bad_answer");
}

/* A proxy's page for id 7 (here a bare 404 and a captive portal's 200,
 * the fallback directory holding 7.avsc): the id waits and the registry
 * reads down. The 404 had read the file in the registry's place, the 200
 * made the id unknown and its records dead-lettered. */
static void proxy_page_case(one_answer oa)
{
    char dir[64], why[256] = "", *text = NULL;
    pthread_t tid;
    if (fallback_dir(dir, sizeof dir, 7) != 0)
        SKIP("cannot write a fallback directory in /tmp");
    hl_schema_store *s = store_answering_once(&oa, &tid, dir, NULL);
    if (s == NULL) {
        fallback_dir_remove(dir, 7);
        SKIP("no loopback listener");
    }
    int rc = HL_EAGAIN;
    for (int i = 0; i < 200 && rc == HL_EAGAIN && hl_schema_store_up(s); i++) {
        rc = hl_schema_store_get(s, 7, &text, why, sizeof why);
        usleep(10000);
    }
    if (rc == HL_EAGAIN)
        rc = hl_schema_store_get(s, 7, &text, why, sizeof why);
    CHECKF(rc == HL_EAGAIN && text == NULL && !hl_schema_store_up(s), "%s: id 7 rc %d (%s), "
           "text %s, registry up %d", oa.status, rc, why, text ? text : "-",
           hl_schema_store_up(s));
    free(text);
    store_answering_once_end(s, &oa, tid);
    fallback_dir_remove(dir, 7);
}

static void test_proxy_pages_make_records_wait(void)
{
    proxy_page_case((one_answer){-1, "404 Not Found", "<html>404 Not Found</html>",
                                 "text/html"});
    proxy_page_case((one_answer){-1, "200 OK", "<html>Sign in to the network</html>",
                                 "text/html; charset=utf-8"});
}

/* A registry that fails one id for good (500, as a broken subject can)
 * and answers every other one: until stop, each request read and answered
 * by the id in its path. */
typedef struct one_id_fails {
    int         fd;
    atomic_int  stop, asked_good;
    atomic_int  fail_all;       /* set: every id gets the 500 */
    int         missing_from;   /* non-zero: ids from it on get the registry's 404 */
    int         delay_us;       /* each answer this late: a slow registry */
} one_id_fails;

static void *answer_but_id_5(void *arg)
{
    static const char ok[] = "{\"schema\":\"{\\\"type\\\":\\\"string\\\"}\"}";
    static const char bad[] = "{\"error_code\":50001,\"message\":\"store error\"}";
    static const char none[] = "{\"error_code\":40403,\"message\":\"Schema not found\"}";
    one_id_fails *of = arg;
    while (!atomic_load(&of->stop)) {
        char req[4096], head[256];
        int c = accept(of->fd, NULL, NULL);
        if (c < 0)
            return NULL;
        ssize_t n = read(c, req, sizeof req - 1);
        req[n > 0 ? n : 0] = '\0';
        const char *at = strstr(req, "/schemas/ids/");
        int fail = strstr(req, "/schemas/ids/5 ") != NULL || atomic_load(&of->fail_all);
        int missing = of->missing_from && at && atoi(at + 13) >= of->missing_from;
        atomic_fetch_add(&of->asked_good, !fail);
        const char *body = fail ? bad : missing ? none : ok;
        usleep((useconds_t)of->delay_us);
        int hn = snprintf(head, sizeof head, "HTTP/1.1 %s\r\nContent-Length: %zu\r\n"
                          "Connection: close\r\n\r\n", fail ? "500 Internal Server Error"
                          : missing ? "404 Not Found" : "200 OK", strlen(body));
        /* The client may have hung up (a destroy ends its request): no SIGPIPE. */
        if (send(c, head, (size_t)hn, MSG_NOSIGNAL) == hn)
            (void)!send(c, body, strlen(body), MSG_NOSIGNAL);
        close(c);
    }
    return NULL;
}

/* One id the registry keeps failing must not starve the others: the fetch
 * thread asked for the first waiting id in table order, so once id 5 was
 * waiting (500 after 500, behind its backoff), id 6 was never asked for
 * and its records waited for ever. */
static void test_one_failing_id_does_not_starve_the_rest(void)
{
    char why[256] = "", *text = NULL;
    pthread_t tid;
    int port;
    one_id_fails of = {.fd = silent_listener(&port)};
    if (of.fd < 0 || pthread_create(&tid, NULL, answer_but_id_5, &of) != 0)
        SKIP("no loopback listener");
    hl_schema_store *s = store_at(port, 1500, NULL, NULL);
    if (s != NULL) {
        CHECK(hl_schema_store_get(s, 5, &text, why, sizeof why) == HL_EAGAIN);
        for (int i = 0; i < 100 && hl_schema_store_up(s); i++)
            usleep(10000);                      /* 5 failed at least once */
        int rc = HL_EAGAIN;
        for (int i = 0; i < 600 && (rc = hl_schema_store_get(s, 6, &text, why, sizeof why)) ==
                                    HL_EAGAIN; i++)
            usleep(10000);
        CHECKF(rc == 0 && text && !strcmp(text, "{\"type\":\"string\"}"),
               "id 6: rc %d (%s) after 6 s; asked for ids other than 5: %d times", rc, why,
               atomic_load(&of.asked_good));
        free(text);
        CHECK(hl_schema_store_get(s, 5, &text, why, sizeof why) == HL_EAGAIN);
        hl_schema_store_destroy(s);
    }
    atomic_store(&of.stop, 1);
    shutdown(of.fd, SHUT_RDWR);                 /* ends the accept */
    pthread_join(tid, NULL);
    close(of.fd);
}

/* ids first..first+n-1 asked for until each has its schema (up to 6 s),
 * the store's up read every 2 ms meanwhile and for 1.5 s after: how
 * many of those reads were 0, or -1 when an id never came. */
static int downs_while_fetching(hl_schema_store *s, int32_t first, int n)
{
    char why[256], *text = NULL;
    int downs = 0, left = n;
    unsigned char got[64] = {0};
    double t0 = now_s(), all_at = 0;
    while (now_s() - t0 < 6.0 && (left > 0 || now_s() - all_at < 1.5)) {
        for (int i = 0; i < n; i++)
            if (!got[i] && hl_schema_store_get(s, first + i, &text, why, sizeof why) == 0) {
                free(text);
                got[i] = 1;
                if (--left == 0)
                    all_at = now_s();
            }
        downs += !hl_schema_store_up(s);
        usleep(2000);
    }
    return left > 0 ? -1 : downs;
}

/* A registry that fails one id for good (500) and serves the others is
 * up: each answer set halflife_schema_registry_up and each failure of id
 * 5 cleared it (a log line each time), and once only 5 was left it read
 * 0 for good, though the registry answered every other id. */
static void test_one_failing_id_leaves_the_registry_up(void)
{
    char why[256] = "", *text = NULL;
    pthread_t tid;
    int port;
    one_id_fails of = {.fd = silent_listener(&port)};
    if (of.fd < 0 || pthread_create(&tid, NULL, answer_but_id_5, &of) != 0)
        SKIP("no loopback listener");
    hl_metrics *m = hl_metrics_create();
    hl_schema_store *s = store_at(port, 1500, NULL, m);
    if (s != NULL) {
        CHECK(hl_schema_store_get(s, 5, &text, why, sizeof why) == HL_EAGAIN);
        int downs = downs_while_fetching(s, 6, 10);
        CHECKF(downs == 0, "up read 0 %d times while ids 6..15 were fetched (-1: not all "
               "fetched) and id 5 failed", downs);
        CHECK(hl_metrics_gauge_sum(m, "halflife_schema_registry_up") == 1);
        CHECK(hl_schema_store_get(s, 5, &text, why, sizeof why) == HL_EAGAIN);
        CHECKF(strstr(why, "HTTP 500") != NULL, "why: %s", why);
        /* A 5xx for every id is the registry's: the fetched ones check it. */
        atomic_store(&of.fail_all, 1);
        for (int i = 0; i < 300 && hl_schema_store_up(s); i++)
            usleep(10000);
        CHECK(!hl_schema_store_up(s));
        hl_schema_store_destroy(s);
    }
    hl_metrics_destroy(m);
    atomic_store(&of.stop, 1);
    shutdown(of.fd, SHUT_RDWR);                 /* ends the accept */
    pthread_join(tid, NULL);
    close(of.fd);
}

/* A table full of fetched schemas (records naming that many ids the
 * registry has) made every later id "no such id" for good: dead-lettered
 * while the registry had it. The least lately asked schema now gives way,
 * and comes back when asked again. */
static void test_fetched_schemas_do_not_fill_the_store(void)
{
    char why[256] = "", *text = NULL;
    pthread_t tid;
    int port, left = HL_SCHEMA_STORE_MAX_IDS;
    one_id_fails of = {.fd = silent_listener(&port)};
    if (of.fd < 0 || pthread_create(&tid, NULL, answer_but_id_5, &of) != 0)
        SKIP("no loopback listener");
    hl_log_set_level(HL_LOG_WARN);             /* not a schema_fetched line per id */
    hl_schema_store *s = store_at(port, 1500, NULL, NULL);
    if (s != NULL) {
        CHECK(ask_many(s, 1000, HL_SCHEMA_STORE_MAX_IDS) == 0);
        double t0 = now_s();
        while (left > 0 && now_s() - t0 < 60) {
            usleep(50000);
            left = HL_SCHEMA_STORE_MAX_IDS - ask_many(s, 1000, HL_SCHEMA_STORE_MAX_IDS);
        }
        CHECKF(left == 0, "%d ids not fetched after 60 s", left);
        int rc = get_settled(s, 9, &text, why, sizeof why);
        CHECKF(rc == 0 && text && !strcmp(text, "{\"type\":\"string\"}"), "id 9 with %d "
               "schemas fetched: rc %d: %s", HL_SCHEMA_STORE_MAX_IDS, rc, why);
        free(text);
        text = NULL;
        rc = get_settled(s, 1000, &text, why, sizeof why);
        CHECKF(rc == 0 && text != NULL, "id 1000, dropped for id 9: rc %d: %s", rc, why);
        free(text);
        hl_schema_store_destroy(s);
    }
    hl_log_set_level(HL_LOG_INFO);
    atomic_store(&of.stop, 1);
    shutdown(of.fd, SHUT_RDWR);                 /* ends the accept */
    pthread_join(tid, NULL);
    close(of.fd);
}

/* A new id waits behind no recheck: "no such id" entries that records
 * keep naming are asked again every 5 s, and the fetch thread took them
 * and the waiting ids in one turn, so a valid new id waited for up to
 * HL_SCHEMA_STORE_MAX_IDS requests (seconds on a slow registry). */
static void test_new_id_goes_before_rechecks(void)
{
    char why[256] = "", *text = NULL;
    pthread_t tid;
    int port, n = 1000, rc = HL_EAGAIN;
    one_id_fails of = {.fd = silent_listener(&port), .missing_from = 1000, .delay_us = 2000};
    if (of.fd < 0 || pthread_create(&tid, NULL, answer_but_id_5, &of) != 0)
        SKIP("no loopback listener");
    hl_schema_store *s = store_at(port, 1500, NULL, NULL);
    if (s != NULL) {
        double t0 = now_s();
        while (ask_many(s, 1000, n) < n && now_s() - t0 < 20)
            usleep(50000);                      /* each one "no such id" */
        usleep(5200000);                        /* due for a recheck */
        CHECK(ask_many(s, 1000, n) == n);       /* rechecks asked for */
        usleep(100000);                         /* and some made: the turn is past 7's place */
        t0 = now_s();
        while ((rc = hl_schema_store_get(s, 7, &text, why, sizeof why)) == HL_EAGAIN &&
               now_s() - t0 < 10)
            usleep(1000);
        double took = now_s() - t0;
        CHECKF(rc == 0 && took < 0.5, "new id 7 behind %d rechecks: rc %d after %.2f s (%s)",
               n, rc, took, why);
        free(text);
        hl_schema_store_destroy(s);
    }
    atomic_store(&of.stop, 1);
    shutdown(of.fd, SHUT_RDWR);                 /* ends the accept */
    pthread_join(tid, NULL);
    close(of.fd);
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
    RUN(test_known_ids_do_not_wait_for_a_silent_registry);
    RUN(test_waiting_ids_do_not_fill_the_store);
    RUN(test_fetched_schema_outlives_waiting_ids);
    RUN(test_bad_answer_does_not_read_the_fallback_file);
    RUN(test_not_found_reads_the_fallback_file);
    RUN(test_folded_first_header_after_a_request);
    RUN(test_proxy_answers_are_not_the_registrys);
    RUN(test_proxy_pages_make_records_wait);
    RUN(test_one_failing_id_does_not_starve_the_rest);
    RUN(test_one_failing_id_leaves_the_registry_up);
    RUN(test_fetched_schemas_do_not_fill_the_store);
    RUN(test_new_id_goes_before_rechecks);
    RUN(test_codec_waits_then_decodes);
    RUN(test_codec_refused_id_is_unknown_schema);
    RUN(test_list_schema_matches_file);
    RUN(test_config_never_prints_the_password);
    TEST_EXIT();
}
