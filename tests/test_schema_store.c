/* test_schema_store.c - worker/schema_store.c against stand-in
 * registries on the loopback: an unknown id waits while the registry is
 * away; the up gauge says so; a request to a registry that never answers
 * does not hold up destroy, nor a known id, and ends at
 * schema.registry.timeout.ms; a full table of waiting ids neither refuses
 * a new id nor drops a fetched schema; the fallback file is read after a
 * 404 only, never after a bad answer; one id the registry keeps failing
 * does not starve the others, nor makes the registry read down; a 5xx for
 * every id does; a table full of fetched schemas still takes a new id; a
 * new id goes before rechecks of "no such id"; a proxy's page in the
 * registry's place makes records wait, not bad; a schema over
 * HL_CODEC_MAX_SCHEMA_BYTES, the registry's or the fallback file's, is
 * refused saying so; a copy that finds no memory makes the record wait
 * with a reason. */
#define T_SUITE "schema_store"
#include "test.h"
#include "registry_test_util.h"

#include "codec.h"
#include "log.h"
#include "registry.h"
#include "schema_store.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>

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
/* A negative id is no registry's (ids are 0..2^31-1): "no such id" at
 * once, with no entry and no request. It took a table entry that the
 * fetch thread, reading a negative id as "none", never asked for: it
 * waited for good ("being fetched"), and an item update whose header
 * named it held its partition paused. */
static void test_negative_id_is_unknown_at_once(void)
{
    char err[512], why[256] = "", *text = NULL;
    hl_registry_opts o = {.urls = DEAD_URL, .timeout_ms = 500};
    hl_metrics *m = hl_metrics_create();
    hl_schema_store *s = hl_schema_store_create(hl_registry_create(&o, err, sizeof err), NULL,
                                                m, err, sizeof err);
    CHECKF(s != NULL, "%s", err);
    if (s == NULL) {
        hl_metrics_destroy(m);
        return;
    }
    int rc = hl_schema_store_get(s, -5, &text, why, sizeof why);
    CHECKF(rc == HL_ENOENT && text == NULL && strstr(why, "-5"), "id -5: rc %d: %s", rc, why);
    usleep(200000);
    rc = hl_schema_store_get(s, -5, &text, why, sizeof why);
    CHECKF(rc == HL_ENOENT, "id -5 after 200 ms: rc %d: %s", rc, why);
    CHECK(hl_metrics_counter_sum(m, "halflife_schema_registry_requests_total") == 0);
    CHECK(hl_schema_store_up(s));
    hl_schema_store_destroy(s);
    hl_metrics_destroy(m);
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

/* Sends stderr (the log) to a temporary file until log_end; *saved keeps
 * the real one. NULL when that cannot be done. */
static FILE *log_begin(int *saved)
{
    FILE *f = tmpfile();
    *saved = dup(STDERR_FILENO);
    if (f == NULL || *saved < 0 || dup2(fileno(f), STDERR_FILENO) < 0) {
        if (f != NULL)
            fclose(f);
        if (*saved >= 0)
            close(*saved);
        return NULL;
    }
    return f;
}

/* Puts stderr back and reads what was logged into buf. */
static void log_end(FILE *f, int saved, char *buf, size_t len)
{
    dup2(saved, STDERR_FILENO);
    close(saved);
    rewind(f);
    buf[fread(buf, 1, len - 1, f)] = '\0';
    fclose(f);
}

/* A store's destroy ends a request in progress at once, not after
 * schema.registry.timeout.ms (here 30 s), and that is no outage: the
 * aborted request ("Operation was aborted by an application callback")
 * had logged schema_registry_down, set the gauge to 0 and counted an
 * error at every stop. */
static void test_destroy_does_not_wait_for_a_silent_registry(void)
{
    char why[256], log[8192] = "", *text = NULL;
    int port, saved, fd = silent_listener(&port);
    if (fd < 0)
        SKIP("no loopback listener");
    hl_metrics *m = hl_metrics_create();
    hl_schema_store *s = store_at(port, 30000, NULL, m);
    if (s != NULL) {
        CHECK(hl_schema_store_get(s, 3, &text, why, sizeof why) == HL_EAGAIN);
        usleep(300000);                     /* the request is waiting now */
        FILE *f = log_begin(&saved);
        double t0 = now_s();
        hl_schema_store_destroy(s);
        CHECKF(now_s() - t0 < 3.0, "destroy took %.1f s", now_s() - t0);
        if (f != NULL)
            log_end(f, saved, log, sizeof log);
        CHECKF(strstr(log, "schema_registry_down") == NULL, "a stop logged an outage: %s", log);
        CHECK(hl_metrics_gauge_sum(m, "halflife_schema_registry_up") == 1);
        CHECK(hl_metrics_counter_sum(m, "halflife_schema_registry_requests_total") == 0);
    }
    hl_metrics_destroy(m);
    close(fd);
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
    one_answer oa = {-1, NULL, NULL, NULL};
    if (standin_start(&oa.fd, &port, answer_once, &oa, &tid) != 0)
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
    standin_stop(oa.fd, NULL, tid);
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
    if (standin_start(&oa->fd, &port, answer_once, oa, tid) != 0)
        return NULL;
    hl_schema_store *s = store_at(port, 1500, dir, m);
    if (s == NULL)
        standin_stop(oa->fd, NULL, *tid);
    return s;
}

static void store_answering_once_end(hl_schema_store *s, one_answer *oa, pthread_t tid)
{
    hl_schema_store_destroy(s);
    standin_stop(oa->fd, NULL, tid);
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

/* A proxy's page for id 7 (here a bare 404, a captive portal's 200 and a
 * health page's JSON, the fallback directory holding 7.avsc): the id waits
 * and the registry reads down. The 404 had read the file in the registry's
 * place, the 200s made the id unknown and its records dead-lettered. */
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
    proxy_page_case((one_answer){-1, "200 OK", "{\"status\":\"UP\"}", NULL});
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
    one_id_fails of = {0};
    if (standin_start(&of.fd, &port, answer_but_id_5, &of, &tid) != 0)
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
    standin_stop(of.fd, &of.stop, tid);
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
    one_id_fails of = {0};
    if (standin_start(&of.fd, &port, answer_but_id_5, &of, &tid) != 0)
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
    standin_stop(of.fd, &of.stop, tid);
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
    one_id_fails of = {0};
    if (standin_start(&of.fd, &port, answer_but_id_5, &of, &tid) != 0)
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
    standin_stop(of.fd, &of.stop, tid);
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
    one_id_fails of = {.missing_from = 1000, .delay_us = 2000};
    if (standin_start(&of.fd, &port, answer_but_id_5, &of, &tid) != 0)
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
    standin_stop(of.fd, &of.stop, tid);
}

/* A registry whose every schema is a string type with a doc of its own
 * size (text_bytes of schema text): until stop, each request answered. */
typedef struct big_schemas {
    int        fd;
    atomic_int stop;
    char      *answer;          /* the whole HTTP answer */
    atomic_int served;          /* requests answered */
} big_schemas;

static void *answer_big(void *arg)
{
    big_schemas *bs = arg;
    size_t n = strlen(bs->answer);
    while (!atomic_load(&bs->stop)) {
        int c = accept(bs->fd, NULL, NULL);
        if (c < 0)
            return NULL;
        read_head(c);
        (void)!send(c, bs->answer, n, MSG_NOSIGNAL);
        close(c);
        atomic_fetch_add(&bs->served, 1);
    }
    return NULL;
}

/* The HTTP answer of a schema of exactly text_bytes bytes, malloc'd. */
static char *big_answer(size_t text_bytes)
{
    static const char pre[] = "{\"schema\":\"{\\\"type\\\":\\\"string\\\",\\\"doc\\\":\\\"";
    static const char post[] = "\\\"}\"}";
    size_t pad = text_bytes - strlen("{\"type\":\"string\",\"doc\":\"\"}");
    size_t body = strlen(pre) + pad + strlen(post);
    char head[160], *a;
    int hn = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n\r\n", body);
    if ((a = malloc((size_t)hn + body + 1)) == NULL)
        return NULL;
    size_t at = (size_t)hn;
    memcpy(a, head, at);
    memcpy(a + at, pre, strlen(pre));
    at += strlen(pre);
    memset(a + at, 'x', pad);
    strcpy(a + at + pad, post);
    return a;
}

/* The largest schema taken: 63 fit in 64 MB, not 64. */
#define BIG_TEXT_BYTES ((size_t)HL_CODEC_MAX_SCHEMA_BYTES)

/* Fetched schemas are bounded in bytes, not only in count: 4,096 ids of
 * up to 4 MB each (1 MiB now) let a registry (broken, hostile, or serving many large
 * schemas) make the worker hold 16 GB. Past HL_SCHEMA_STORE_MAX_BYTES
 * the schemas asked for least lately give way, and are fetched again
 * when asked. */
static void test_fetched_schemas_stay_within_the_byte_budget(void)
{
    char why[256] = "", *text = NULL;
    pthread_t tid;
    int port, fit = (int)(HL_SCHEMA_STORE_MAX_BYTES / (BIG_TEXT_BYTES + 1)), n = fit + 2;
    big_schemas bs = {.answer = big_answer(BIG_TEXT_BYTES)};
    if (bs.answer == NULL || standin_start(&bs.fd, &port, answer_big, &bs, &tid) != 0)
        SKIP("no loopback listener");
    hl_log_set_level(HL_LOG_WARN);             /* not a schema_fetched line per id */
    hl_schema_store *s = store_at(port, 5000, NULL, NULL);
    for (int id = 1; s != NULL && id <= n; id++) {
        int rc = get_settled(s, id, &text, why, sizeof why);
        CHECKF(rc == 0 && text && strlen(text) == BIG_TEXT_BYTES, "id %d: rc %d %s", id, rc, why);
        free(text);
        text = NULL;
    }
    for (int id = n; s != NULL && id > n - fit; id--) {     /* the latest still held */
        int rc = hl_schema_store_get(s, id, &text, why, sizeof why);
        CHECKF(rc == 0, "id %d, among the %d asked for last: rc %d %s", id, fit, rc, why);
        free(text);
        text = NULL;
    }
    for (int id = 1; s != NULL && id <= n - fit; id++) {     /* the first ones gave way */
        int rc = hl_schema_store_get(s, id, &text, why, sizeof why);
        CHECKF(rc == HL_EAGAIN && strstr(why, "being fetched"), "id %d still held with %d "
               "schemas of %zu bytes fetched after it (budget %zu): rc %d", id, n - id,
               BIG_TEXT_BYTES, HL_SCHEMA_STORE_MAX_BYTES, rc);
        free(text);
        text = NULL;
    }
    hl_schema_store_destroy(s);
    hl_log_set_level(HL_LOG_INFO);
    standin_stop(bs.fd, &bs.stop, tid);
    free(bs.answer);
}

/* A store whose registry answers every request with a schema of
 * text_bytes bytes, into *bs (stop_big ends it); NULL when that cannot be
 * set up. */
static hl_schema_store *store_big(big_schemas *bs, pthread_t *tid, size_t text_bytes,
                                  const char *dir, hl_metrics *m)
{
    int port;
    *bs = (big_schemas){.fd = -1, .answer = big_answer(text_bytes)};
    if (bs->answer == NULL || standin_start(&bs->fd, &port, answer_big, bs, tid) != 0) {
        free(bs->answer);
        return NULL;
    }
    return store_at(port, 5000, dir, m);
}

static void stop_big(hl_schema_store *s, big_schemas *bs, pthread_t tid)
{
    hl_schema_store_destroy(s);
    standin_stop(bs->fd, &bs->stop, tid);
    free(bs->answer);
}

/* A registry's schema is held to the limit of a schemas.dir file
 * (HL_CODEC_MAX_SCHEMA_BYTES): it was taken up to HL_REGISTRY_MAX_BODY
 * (4 MB), and every shard's codec keeps up to 256 parsed ones, each many
 * times its text. One byte over is the registry's bad answer: logged and
 * counted as such, the id unknown (its records dead-lettered) with a
 * reason naming the id, the size and the limit. One at the limit is taken. */
static void test_schema_over_the_limit_is_refused(void)
{
    char why[256] = "", log[8192] = "", *text = NULL, size[32];
    big_schemas bs;
    pthread_t tid;
    int saved;
    hl_metrics *m = hl_metrics_create();
    hl_schema_store *s = store_big(&bs, &tid, HL_CODEC_MAX_SCHEMA_BYTES + 1, NULL, m);
    if (s == NULL) {
        hl_metrics_destroy(m);
        SKIP("no loopback listener");
    }
    FILE *f = log_begin(&saved);
    int rc = get_settled(s, 7, &text, why, sizeof why);
    if (f != NULL)
        log_end(f, saved, log, sizeof log);
    snprintf(size, sizeof size, "%d bytes", HL_CODEC_MAX_SCHEMA_BYTES + 1);
    CHECKF(rc == HL_ENOENT && text == NULL, "id 7 of %s: rc %d", size, rc);
    CHECKF(strstr(why, "schema id 7") && strstr(why, size), "why: %s", why);
    snprintf(size, sizeof size, "%d", HL_CODEC_MAX_SCHEMA_BYTES);
    CHECKF(strstr(why, size) != NULL, "why names no limit: %s", why);
    CHECK(requests(m, "result=\"bad_answer\"") == 1 && requests(m, "result=\"ok\"") == 0);
    CHECKF(strstr(log, "event=schema_registry_bad_answer") && strstr(log, "id=7"), "%s", log);
    free(text);
    stop_big(s, &bs, tid);
    hl_metrics_destroy(m);

    s = store_big(&bs, &tid, HL_CODEC_MAX_SCHEMA_BYTES, NULL, NULL);
    if (s == NULL)
        SKIP("no loopback listener");
    text = NULL;
    rc = get_settled(s, 7, &text, why, sizeof why);
    CHECKF(rc == 0 && text && strlen(text) == HL_CODEC_MAX_SCHEMA_BYTES, "at the limit: rc %d %s",
           rc, why);
    free(text);
    stop_big(s, &bs, tid);
}

/* The fallback directory's file over the limit says so: the reason was
 * "no file in schema.registry.fallback.dir" beside a file that is there. */
static void test_fallback_file_over_the_limit_says_so(void)
{
    char dir[64], path[600], why[256] = "", *text = NULL, size[32];
    pthread_t tid;
    one_answer oa = {-1, "404 Not Found", "{\"error_code\":40403,\"message\":\"Schema 7 not "
                                          "found\"}", NULL};
    if (fallback_dir(dir, sizeof dir, 7) != 0)
        SKIP("cannot write a fallback directory in /tmp");
    snprintf(path, sizeof path, "%s/7.avsc", dir);
    FILE *f = fopen(path, "w");
    for (int i = 0; f != NULL && i <= HL_CODEC_MAX_SCHEMA_BYTES; i++)
        fputc(' ', f);
    if (f == NULL || fclose(f) != 0) {
        fallback_dir_remove(dir, 7);
        SKIP("cannot write a fallback file");
    }
    hl_schema_store *s = store_answering_once(&oa, &tid, dir, NULL);
    if (s == NULL) {
        fallback_dir_remove(dir, 7);
        SKIP("no loopback listener");
    }
    int rc = get_settled(s, 7, &text, why, sizeof why);
    snprintf(size, sizeof size, "%d bytes", HL_CODEC_MAX_SCHEMA_BYTES + 1);
    CHECKF(rc == HL_ENOENT && text == NULL, "id 7: rc %d", rc);
    CHECKF(strstr(why, "7.avsc") && strstr(why, size) && !strstr(why, "no file"), "%s", why);
    free(text);
    store_answering_once_end(s, &oa, tid);
    fallback_dir_remove(dir, 7);
}

/* Pages of this process's address space (the first field of
 * /proc/self/statm), 0 when unknown. */
static size_t vm_pages(void)
{
    size_t pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f != NULL) {
        if (fscanf(f, "%zu", &pages) != 1)
            pages = 0;
        fclose(f);
    }
    return pages;
}

/* Takes memory in 64 KB pieces until none is left, into hold (cap
 * pieces at most); returns how many. What free() gave back to malloc
 * stays in the process, so holding the address space alone does not
 * make the next allocation fail. */
static int exhaust(void **hold, int cap)
{
    int n = 0;
    while (n < cap && (hold[n] = malloc(64 << 10)) != NULL)
        n++;
    return n;
}

/* A copy of a fetched schema that cannot be made (out of memory) makes
 * the record wait, and says why: it returned HL_EAGAIN with why left as
 * it was, so the record's wait had no reason to log. The address space
 * is held to what the process has and the memory in it taken, so the
 * 1 MiB copy cannot be had. */
static void test_copy_out_of_memory_says_why(void)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    SKIP("a sanitizer's shadow memory needs more address space than a limit allows");
#endif
    enum { CAP = 1 << 16 };
    char why[256] = "", *text = NULL;
    big_schemas bs;
    pthread_t tid;
    struct rlimit old, low;
    void **hold = calloc(CAP, sizeof *hold);
    hl_schema_store *s = hold ? store_big(&bs, &tid, HL_CODEC_MAX_SCHEMA_BYTES, NULL, NULL)
                              : NULL;
    if (s == NULL) {
        free(hold);
        SKIP("no loopback listener");
    }
    int rc = get_settled(s, 3, &text, why, sizeof why);
    CHECKF(rc == 0 && text != NULL, "id 3: rc %d %s", rc, why);
    free(text);
    text = NULL;
    size_t vm = vm_pages() * (size_t)sysconf(_SC_PAGESIZE);
    if (vm == 0 || getrlimit(RLIMIT_AS, &old) != 0) {
        stop_big(s, &bs, tid);
        free(hold);
        SKIP("no /proc/self/statm or RLIMIT_AS");
    }
    low = (struct rlimit){vm, old.rlim_max};
    snprintf(why, sizeof why, "(left as it was)");
    int held = 0;
    rc = -1000;
    if (setrlimit(RLIMIT_AS, &low) == 0) {
        held = exhaust(hold, CAP);
        rc = hl_schema_store_get(s, 3, &text, why, sizeof why);
    }
    setrlimit(RLIMIT_AS, &old);
    for (int i = 0; i < held; i++)
        free(hold[i]);
    CHECKF(rc == HL_EAGAIN && text == NULL && strstr(why, "schema id 3") &&
           strstr(why, "out of memory"), "rc %d, why: %s", rc, why);
    free(text);
    text = NULL;
    rc = hl_schema_store_get(s, 3, &text, why, sizeof why);
    CHECKF(rc == 0 && text && strlen(text) == HL_CODEC_MAX_SCHEMA_BYTES, "after: rc %d", rc);
    free(text);
    stop_big(s, &bs, tid);
    free(hold);
}

/* A schema over the size limit is the registry's word on an immutable id:
 * its "no such id" is asked again after 30 s, not 5 s. Records naming it
 * had it fetched again (1 MiB and more, up to 4 MB) every 5 s for as long
 * as they came. Here records name it every 50 ms for 6.5 s: one fetch. */
static void test_bad_answer_is_not_fetched_every_5_s(void)
{
    char why[256] = "", *text = NULL;
    big_schemas bs;
    pthread_t tid;
    hl_schema_store *s = store_big(&bs, &tid, HL_CODEC_MAX_SCHEMA_BYTES + 1, NULL, NULL);
    if (s == NULL)
        SKIP("no loopback listener");
    hl_log_set_level(HL_LOG_ERROR);            /* not a bad_answer line per recheck */
    int rc = get_settled(s, 7, &text, why, sizeof why);
    CHECKF(rc == HL_ENOENT && text == NULL, "id 7: rc %d %s", rc, why);
    for (double t0 = now_s(); now_s() - t0 < 6.5; usleep(50000)) {
        rc = hl_schema_store_get(s, 7, &text, why, sizeof why);
        CHECKF(rc == HL_ENOENT && text == NULL, "id 7 meanwhile: rc %d %s", rc, why);
        free(text);
        text = NULL;
    }
    int served = atomic_load(&bs.served);
    CHECKF(served == 1, "id 7, over the limit, fetched %d times in 6.5 s (want 1)", served);
    hl_log_set_level(HL_LOG_INFO);
    stop_big(s, &bs, tid);
}

int main(void)
{
    RUN(test_store_waits_while_registry_away);
    RUN(test_negative_id_is_unknown_at_once);
    RUN(test_destroy_does_not_wait_for_a_silent_registry);
    RUN(test_known_ids_do_not_wait_for_a_silent_registry);
    RUN(test_waiting_ids_do_not_fill_the_store);
    RUN(test_fetched_schema_outlives_waiting_ids);
    RUN(test_bad_answer_does_not_read_the_fallback_file);
    RUN(test_not_found_reads_the_fallback_file);
    RUN(test_proxy_pages_make_records_wait);
    RUN(test_one_failing_id_does_not_starve_the_rest);
    RUN(test_one_failing_id_leaves_the_registry_up);
    RUN(test_fetched_schemas_do_not_fill_the_store);
    RUN(test_new_id_goes_before_rechecks);
    RUN(test_fetched_schemas_stay_within_the_byte_budget);
    RUN(test_schema_over_the_limit_is_refused);
    RUN(test_fallback_file_over_the_limit_says_so);
    RUN(test_copy_out_of_memory_says_why);
    RUN(test_bad_answer_is_not_fetched_every_5_s);
    TEST_EXIT();
}
