/* registry.c - the Schema Registry REST client: URLs tried in turn, one
 * curl easy handle reused across calls (keep-alive), JSON by jansson.
 *
 * The request and answer shapes follow Confluent's Schema Registry API
 * reference (the subset registry.h lists): bodies are
 * application/vnd.schemaregistry.v1+json, errors are
 * {"error_code": N, "message": "..."} with the HTTP status, and 40403 is
 * "schema not found". The status decides what a failure means (registry.h),
 * but only an answer that is the registry's own can say "bad" or "no such
 * id": a proxy or load balancer before it (an HTML error page, a captive
 * portal's 200, an ingress's bare 404 while the registry restarts) or
 * another service's JSON (a 2xx without the field the call reads) is the
 * registry being away. error_code and message go into the error text.
 * An id that a register or lookup gives is fetched back and compared with
 * the schema, parsed (hl_registry_check_id), before anyone writes it.
 *
 * Secrets: the user info goes to curl as CURLOPT_USERPWD and nowhere else.
 * A URL may itself carry "user:pw@"; every text built here names a URL in
 * its redacted form. Redirects are not followed (a redirect would send the
 * credentials elsewhere), and only http and https are spoken. */
#include "registry.h"
#include "avsc.h"
#include "fnv.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MEDIA "application/vnd.schemaregistry.v1+json"

struct hl_registry {
    hl_registry_opts o;
    char  *urls_copy;                        /* the strings below point into it */
    char  *url[HL_REGISTRY_MAX_URLS];        /* without a trailing '/' */
    char  *shown[HL_REGISTRY_MAX_URLS];      /* the same, user info redacted */
    int    n_url, good;                      /* good: the one that answered last */
    long   status;                           /* HTTP status of the last answer, 0: none */
    char  *user_info, *ssl_ca, *ssl_cert, *ssl_key;
    CURL  *curl;
    struct curl_slist *headers;
    const atomic_int *abort;                 /* non-zero: stop the request */
    volatile sig_atomic_t *sig_abort;        /* the same, set by a signal handler */
};

/* The field a call reads from the registry's 2xx answer, and its type:
 * an answer without it is not the registry's (want_missing). */
typedef struct want {
    const char *field;
    json_type   type;
} want;

/* An answer being received; full once it passes HL_REGISTRY_MAX_BODY. */
typedef struct body {
    char  *p;
    size_t n, cap;
    int    too_big;
} body;

/* ---- create ------------------------------------------------------------- */

/* url with "user:pw@" after the scheme replaced by "***@", malloc'd. */
static char *redact(const char *url)
{
    const char *host = strstr(url, "://");
    host = host ? host + 3 : url;
    size_t hlen = strcspn(host, "/");
    const char *at = memchr(host, '@', hlen);
    size_t n = strlen(url) + 8;
    char *s = malloc(n);
    if (s == NULL)
        return NULL;
    if (at == NULL)
        snprintf(s, n, "%s", url);
    else
        snprintf(s, n, "%.*s***%s", (int)(host - url), url, at);
    return s;
}

static char *dup_or_null(const char *s)
{
    return s != NULL && s[0] != '\0' ? strdup(s) : NULL;
}

/* Splits o->urls on ',' (spaces trimmed) into r->url[]. */
static int split_urls(hl_registry *r, char *errbuf, size_t errlen)
{
    char *save = NULL;
    for (char *u = strtok_r(r->urls_copy, ",", &save); u; u = strtok_r(NULL, ",", &save)) {
        while (*u == ' ')
            u++;
        size_t n = strlen(u);
        while (n > 0 && (u[n - 1] == ' ' || u[n - 1] == '/'))
            u[--n] = '\0';
        if (n == 0)
            continue;
        if (r->n_url == HL_REGISTRY_MAX_URLS)
            return hl_err(errbuf, errlen, HL_EINVAL, "schema.registry.url: more than %d URLs",
                          HL_REGISTRY_MAX_URLS);
        if ((r->shown[r->n_url] = redact(u)) == NULL)
            return hl_err(errbuf, errlen, HL_ENOMEM, "schema registry: out of memory");
        if (strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0)
            return hl_err(errbuf, errlen, HL_EINVAL, "schema.registry.url: \"%s\" is not an "
                          "http:// or https:// URL", r->shown[r->n_url]);
        r->url[r->n_url++] = u;
    }
    if (r->n_url == 0)
        return hl_err(errbuf, errlen, HL_EINVAL, "schema.registry.url: no URL given");
    return 0;
}

static int setup_curl(hl_registry *r, char *errbuf, size_t errlen)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0 || (r->curl = curl_easy_init()) == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "schema registry: libcurl would not start");
    r->headers = curl_slist_append(NULL, "Content-Type: " MEDIA);
    r->headers = curl_slist_append(r->headers, "Accept: " MEDIA ", application/json");
    if (r->headers == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "schema registry: out of memory");
    return 0;
}

hl_registry *hl_registry_create(const hl_registry_opts *o, char *errbuf, size_t errlen)
{
    hl_registry *r = calloc(1, sizeof *r);
    if (r == NULL || (r->urls_copy = strdup(o->urls ? o->urls : "")) == NULL) {
        free(r);
        hl_err(errbuf, errlen, HL_ENOMEM, "schema registry: out of memory");
        return NULL;
    }
    r->o = *o;
    if (r->o.timeout_ms <= 0)
        r->o.timeout_ms = 30000;
    if (split_urls(r, errbuf, errlen) != 0)
        goto fail;
    if (o->user_info != NULL && o->user_info[0] != '\0' && strchr(o->user_info, ':') == NULL) {
        hl_err(errbuf, errlen, HL_EINVAL, "schema.registry.basic.auth.user.info: want "
               "user:password (the value is not shown)");
        goto fail;
    }
    r->user_info = dup_or_null(o->user_info);
    r->ssl_ca = dup_or_null(o->ssl_ca);
    r->ssl_cert = dup_or_null(o->ssl_cert);
    r->ssl_key = dup_or_null(o->ssl_key);
    if (setup_curl(r, errbuf, errlen) != 0)
        goto fail;
    return r;
fail:
    hl_registry_destroy(r);
    return NULL;
}

void hl_registry_destroy(hl_registry *r)
{
    if (r == NULL)
        return;
    if (r->curl != NULL)
        curl_easy_cleanup(r->curl);
    curl_slist_free_all(r->headers);
    for (int i = 0; i < HL_REGISTRY_MAX_URLS; i++)
        free(r->shown[i]);
    if (r->user_info != NULL) {           /* not left behind in freed memory */
        memset(r->user_info, 0, strlen(r->user_info));
        free(r->user_info);
    }
    free(r->ssl_ca);
    free(r->ssl_cert);
    free(r->ssl_key);
    free(r->urls_copy);
    free(r);
}

void hl_registry_urls_redacted(const hl_registry *r, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < r->n_url && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? "," : "", r->shown[i]);
}

/* ---- one request -------------------------------------------------------- */

static size_t on_data(char *p, size_t size, size_t n, void *arg)
{
    body *b = arg;
    size_t len = size * n;
    if (b->n + len > HL_REGISTRY_MAX_BODY) {
        b->too_big = 1;
        return 0;                           /* curl stops with CURLE_WRITE_ERROR */
    }
    if (b->n + len + 1 > b->cap) {
        size_t cap = (b->n + len + 1) * 2;
        char *np = realloc(b->p, cap);
        if (np == NULL)
            return 0;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, len);
    b->n += len;
    b->p[b->n] = '\0';
    return len;
}

void hl_registry_set_abort(hl_registry *r, const atomic_int *flag)
{
    r->abort = flag;
}

void hl_registry_set_signal_abort(hl_registry *r, volatile sig_atomic_t *flag)
{
    r->sig_abort = flag;
}

static int aborted(const hl_registry *r)
{
    return (r->abort != NULL && atomic_load(r->abort) != 0) ||
           (r->sig_abort != NULL && *r->sig_abort != 0);
}

/* libcurl calls this about once a second, also while connecting. */
static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    return aborted(arg);                    /* non-zero aborts the transfer */
}

/* A new easy handle for each request, never one reused: libcurl 7.88.1
 * (Debian bookworm's) keeps a pointer to the last response header of the
 * handle's previous request, freed when the next one starts, and an
 * answer whose first header line is folded (starts with a space) is
 * appended to it: a use after free that any registry, or a proxy before
 * it, could trigger (curl issue 11101, fixed in 8.1.0; found by
 * fuzz_registry). Registry requests are rare (at start and per new schema
 * id), so the connection a reused handle would keep costs nothing. */
static int fresh_handle(hl_registry *r)
{
    CURL *c = curl_easy_init();
    if (c == NULL)
        return HL_ENOMEM;
    curl_easy_cleanup(r->curl);
    r->curl = c;
    return 0;
}

static void set_options(hl_registry *r, const char *url, const char *post, body *b)
{
    CURL *c = r->curl;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)r->o.timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)r->o.timeout_ms);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
    if (post != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, post);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(post));
    }
    if (r->user_info != NULL) {
        curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(c, CURLOPT_USERPWD, r->user_info);
    }
    if (r->abort != NULL || r->sig_abort != NULL) {
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, (void *)r);
    }
    if (r->ssl_ca != NULL)
        curl_easy_setopt(c, CURLOPT_CAINFO, r->ssl_ca);
    if (r->ssl_cert != NULL)
        curl_easy_setopt(c, CURLOPT_SSLCERT, r->ssl_cert);
    if (r->ssl_key != NULL)
        curl_easy_setopt(c, CURLOPT_SSLKEY, r->ssl_key);
}

/* The registry's own words from an error body: "error_code N: message". */
static void error_words(const body *b, char *out, size_t len)
{
    json_t *j = b->p ? json_loadb(b->p, b->n, 0, NULL) : NULL;
    json_t *code = json_object_get(j, "error_code"), *msg = json_object_get(j, "message");
    if (json_is_integer(code))
        snprintf(out, len, "error_code %lld: %.200s", (long long)json_integer_value(code),
                 json_is_string(msg) ? json_string_value(msg) : "");
    else
        snprintf(out, len, "no error body");
    json_decref(j);
}

/* The body parsed when it is a JSON object, as every answer of the
 * registry's is (errors too), else NULL. */
static json_t *json_body(const body *b)
{
    json_t *j = b->too_big || b->p == NULL ? NULL : json_loadb(b->p, b->n, 0, NULL);
    if (j != NULL && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

/* Why a 2xx answer is not the registry's, into what; 0 when it is. The
 * registry answers every call with a JSON object holding the field the
 * call reads ("schema" a string, "id" an integer). One without it is a
 * gateway's or another service's (a health page's {"status":"UP"}, a
 * URL naming the wrong service): it had made the id bad and its records
 * dead-lettered, on the word of something that is not the registry. */
static int want_missing(const body *b, const json_t *j, const want *w, char *what,
                        size_t len)
{
    json_t *v = json_object_get(j, w->field);
    if (j == NULL)
        snprintf(what, len, "%s", b->too_big ? "too large" : "not a JSON object");
    else if (v == NULL || json_typeof(v) != w->type)
        snprintf(what, len, "a JSON object without a \"%s\" %s", w->field,
                 w->type == JSON_STRING ? "string" : "integer");
    else
        return 0;
    return 1;
}

/* The registry's "not found" carries error_code 404xx (40401 subject,
 * 40403 schema); a proxy's 404, HTML or JSON of its own, has none. */
static int registry_not_found(const json_t *j)
{
    json_t *code = json_object_get(j, "error_code");
    json_int_t n = json_is_integer(code) ? json_integer_value(code) : 0;
    return n >= 40400 && n < 40500;
}

/* What an HTTP status means to the caller (registry.h), j the body when it
 * is a JSON object, foreign set when a 2xx is not the registry's
 * (want_missing). A 2xx or 404 that is not the registry's JSON waits: it
 * had made ids bad or unknown, their records dead-lettered, on a proxy's
 * word. */
static int status_code(long status, const json_t *j, int foreign)
{
    if (status >= 200 && status < 300)
        return foreign ? HL_EAGAIN : 0;
    if (status == 404)
        return registry_not_found(j) ? HL_ENOENT : HL_EAGAIN;
    if (status == 401 || status == 403)
        return HL_EDENIED;
    if (status >= 500 || status == 408 || status == 429)
        return HL_EAGAIN;
    return HL_EINVAL;
}

/* A TLS failure is the configuration's (wrong CA, no or bad client
 * certificate), not the network's: HL_EDENIED, so a start fails at once. */
static int tls_failure(CURLcode cc)
{
    switch (cc) {
    case CURLE_PEER_FAILED_VERIFICATION: case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM: case CURLE_SSL_CACERT_BADFILE: case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR: case CURLE_SSL_CIPHER: case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        return 1;
    default:
        return 0;
    }
}

/* The sentence for an answer that is not a success, rc from status_code,
 * what why a 2xx is not the registry's (want_missing). A 2xx too large to
 * read is the registry's (HL_EFORMAT: a schema over HL_REGISTRY_MAX_BODY
 * is refused) only when its Content-Type says JSON. */
static int refusal(hl_registry *r, int i, const char *path, const body *b, long status,
                   int rc, const char *what, char *errbuf, size_t errlen)
{
    char words[256];
    const char *type = NULL;
    curl_easy_getinfo(r->curl, CURLINFO_CONTENT_TYPE, &type);
    if (status >= 200 && status < 300 && b->too_big && type && strcasestr(type, "json"))
        return hl_err(errbuf, errlen, HL_EFORMAT, "schema registry %s%s: answer larger than "
                      "%d bytes", r->shown[i], path, HL_REGISTRY_MAX_BODY);
    if (status >= 200 && status < 300)
        return hl_err(errbuf, errlen, rc, "schema registry %s%s: HTTP %ld, but the answer is "
                      "not the registry's (%.64s, %s); a proxy in the way, or "
                      "schema.registry.url names another service?", r->shown[i], path, status,
                      type ? type : "no Content-Type", what);
    if (status == 404 && rc == HL_EAGAIN)
        return hl_err(errbuf, errlen, rc, "schema registry %s%s: HTTP 404 without the "
                      "registry's error body: check schema.registry.url (a path missing or "
                      "extra?), or a proxy has no route to the registry", r->shown[i], path);
    error_words(b, words, sizeof words);
    if (rc == HL_EDENIED)
        return hl_err(errbuf, errlen, rc, "schema registry %s%s: HTTP %ld, credentials refused "
                      "(%s); check schema.registry.basic.auth.user.info", r->shown[i], path,
                      status, words);
    return hl_err(errbuf, errlen, rc, "schema registry %s%s: HTTP %ld (%s%s)", r->shown[i],
                  path, status, words, b->too_big ? ", answer too large to read" : "");
}

/* One request to one URL. 0 with the answer's JSON object in *out (w's
 * field in it), else the code and a sentence. The status is read before
 * the size is judged: an answer too large is a 5xx page as much as a
 * schema. */
static int request_one(hl_registry *r, int i, const char *path, const char *post,
                       const want *w, body *b, json_t **out, char *errbuf, size_t errlen)
{
    char url[4096], what[96] = "";
    long status = 0;
    if (snprintf(url, sizeof url, "%s%s", r->url[i], path) >= (int)sizeof url)
        return hl_err(errbuf, errlen, HL_EINVAL, "schema registry %s: path too long", r->shown[i]);
    b->n = 0;
    b->too_big = 0;
    r->status = 0;
    if (fresh_handle(r) != 0)
        return hl_err(errbuf, errlen, HL_EAGAIN, "schema registry %s%s: out of memory for "
                      "the request", r->shown[i], path);
    set_options(r, url, post, b);
    CURLcode cc = curl_easy_perform(r->curl);
    if (b->too_big)
        cc = CURLE_OK;                      /* the headers came: judged below */
    if (cc != CURLE_OK && tls_failure(cc))
        return hl_err(errbuf, errlen, HL_EDENIED, "schema registry %s%s: TLS: %s; check "
                      "schema.registry.ssl.ca.location, .certificate.location and "
                      ".key.location", r->shown[i], path, curl_easy_strerror(cc));
    if (cc != CURLE_OK)
        return hl_err(errbuf, errlen, HL_EAGAIN, "schema registry %s%s: %s", r->shown[i], path,
                      curl_easy_strerror(cc));
    curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &status);
    r->status = status;
    json_t *j = json_body(b);
    int rc = status_code(status, j, want_missing(b, j, w, what, sizeof what));
    if (rc == 0) {
        *out = j;
        return 0;
    }
    json_decref(j);
    return refusal(r, i, path, b, status, rc, what, errbuf, errlen);
}

/* The request on each URL in turn, from the one that answered last, while
 * the answer is transient. The JSON object of a 2xx answer, holding w's
 * field, in *out. */
static int request(hl_registry *r, const char *path, const char *post, const want *w,
                   json_t **out, char *errbuf, size_t errlen)
{
    body b = {0};
    int rc = HL_EAGAIN;
    /* An aborted request tries no other URL: the caller is stopping. */
    for (int k = 0; k < r->n_url && rc == HL_EAGAIN && !aborted(r); k++) {
        int i = (r->good + k) % r->n_url;
        if ((rc = request_one(r, i, path, post, w, &b, out, errbuf, errlen)) != HL_EAGAIN)
            r->good = i;
    }
    free(b.p);
    return rc;
}

/* ---- the calls ---------------------------------------------------------- */

long hl_registry_last_status(const hl_registry *r)
{
    return r->status;
}

int hl_registry_schema_by_id(hl_registry *r, int32_t id, char **schema,
                             char *errbuf, size_t errlen)
{
    static const want w = {"schema", JSON_STRING};
    char path[64];
    json_t *j = NULL;
    if (id < 0)
        return hl_err(errbuf, errlen, HL_ENOENT, "schema id %d is negative", (int)id);
    snprintf(path, sizeof path, "/schemas/ids/%d", (int)id);
    int rc = request(r, path, NULL, &w, &j, errbuf, errlen);
    if (rc != 0)
        return rc;
    json_t *s = json_object_get(j, "schema"), *type = json_object_get(j, "schemaType");
    if (json_is_string(type) && strcmp(json_string_value(type), "AVRO") != 0)
        rc = hl_err(errbuf, errlen, HL_EFORMAT, "schema id %d is a %.32s schema, not Avro",
                    (int)id, json_string_value(type));
    else if ((*schema = strdup(json_string_value(s))) == NULL)
        rc = hl_err(errbuf, errlen, HL_ENOMEM, "schema registry: out of memory");
    json_decref(j);
    return rc;
}

/* POST {"schema": schema} to /subjects/<subject><suffix>; the "id" of the
 * answer in *id. */
static int post_schema(hl_registry *r, const char *subject, const char *suffix,
                       const char *schema, int32_t *id, char *errbuf, size_t errlen)
{
    static const want w = {"id", JSON_INTEGER};
    char path[1024];
    json_t *j = NULL, *req = json_pack("{s:s}", "schema", schema);
    char *enc = curl_easy_escape(r->curl, subject, 0);
    char *post = req ? json_dumps(req, JSON_COMPACT) : NULL;
    int rc;
    if (enc == NULL || post == NULL)
        rc = hl_err(errbuf, errlen, HL_ENOMEM, "schema registry: out of memory");
    else if (snprintf(path, sizeof path, "/subjects/%s%s", enc, suffix) >= (int)sizeof path)
        rc = hl_err(errbuf, errlen, HL_EINVAL, "subject %.64s...: too long", subject);
    else if ((rc = request(r, path, post, &w, &j, errbuf, errlen)) == 0) {
        json_int_t n = json_integer_value(json_object_get(j, "id"));
        if (n < 0 || n > INT32_MAX)
            rc = hl_err(errbuf, errlen, HL_EFORMAT, "schema registry %s%s: \"id\" %lld is "
                        "not a schema id", r->shown[r->good], path, (long long)n);
        else
            *id = (int32_t)n;
    }
    json_decref(j);
    json_decref(req);
    free(post);
    curl_free(enc);
    return rc;
}

int hl_registry_register(hl_registry *r, const char *subject, const char *schema,
                         int32_t *id, char *errbuf, size_t errlen)
{
    return post_schema(r, subject, "/versions", schema, id, errbuf, errlen);
}

int hl_registry_lookup(hl_registry *r, const char *subject, const char *schema,
                       int32_t *id, char *errbuf, size_t errlen)
{
    return post_schema(r, subject, "", schema, id, errbuf, errlen);
}

/* ---- checking an id ----------------------------------------------------- */

/* FNV-1a 64 of text's JSON with its keys sorted and no spaces: one value
 * for texts that differ in layout alone, for the mismatch sentence; 0 for
 * text that is not JSON. */
static uint64_t fingerprint(const char *text)
{
    json_t *j = json_loads(text, JSON_DECODE_ANY, NULL);
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY) : NULL;
    uint64_t h = s ? hl_fnv1a64(HL_FNV64_BASIS, s, strlen(s)) : 0;
    free(s);
    json_decref(j);
    return h;
}

/* "record halflife.RecommendationList (fingerprint 0123...)" into buf. */
static void describe(avro_schema_t s, const char *text, char *buf, size_t len)
{
    const char *space = s != NULL ? avro_schema_namespace(s) : NULL;
    const char *kind = s == NULL ? "no Avro schema" : is_avro_record(s) ? "record "
                     : is_avro_enum(s) ? "enum " : is_avro_fixed(s) ? "fixed " : "";
    snprintf(buf, len, "%s%s%s%.128s (fingerprint %016llx)", kind,
             space != NULL && *space != '\0' ? space : "",
             space != NULL && *space != '\0' ? "." : "",
             s != NULL ? avro_schema_type_name(s) : "",
             (unsigned long long)fingerprint(text));
}

/* ours and theirs (the registry's schema of id) compared, both parsed. */
static int compare(hl_registry *r, int32_t id, const char *ours, const char *theirs,
                   char *errbuf, size_t errlen)
{
    avro_schema_t a = NULL, b = NULL;
    char why[200], mine[256], other[256];
    int rc = 0;
    if (hl_avsc_parse(ours, strlen(ours), &a, why, sizeof why) != 0)
        rc = hl_err(errbuf, errlen, HL_EINVAL, "our own schema does not parse: %s", why);
    else if (hl_avsc_parse(theirs, strlen(theirs), &b, why, sizeof why) != 0 ||
             !avro_schema_equal(a, b)) {
        describe(a, ours, mine, sizeof mine);
        describe(b, theirs, other, sizeof other);
        rc = hl_err(errbuf, errlen, HL_EMISMATCH, "schema registry %s: id %d, given for our "
                    "%s, is %s there: another schema's id", r->shown[r->good], (int)id, mine,
                    other);
    }
    if (a != NULL)
        avro_schema_decref(a);
    if (b != NULL)
        avro_schema_decref(b);
    return rc;
}

int hl_registry_check_id(hl_registry *r, int32_t id, const char *schema,
                         char *errbuf, size_t errlen)
{
    char *theirs = NULL, why[400];
    int rc = hl_registry_schema_by_id(r, id, &theirs, why, sizeof why);
    /* A replica behind the one that gave the id (a load balancer before
     * several) has it within moments: asked again for up to a second
     * before the caller hears "not yet" (`halflife produce` does not
     * retry). */
    for (int k = 0; k < 5 && rc == HL_ENOENT && !aborted(r); k++) {
        usleep(200000);
        rc = hl_registry_schema_by_id(r, id, &theirs, why, sizeof why);
    }
    if (rc == HL_ENOENT)
        return hl_err(errbuf, errlen, HL_EAGAIN, "schema id %d, just given for our schema, is "
                      "not in the registry yet (%s)", (int)id, why);
    if (rc != 0)
        return hl_err(errbuf, errlen, rc, "%s", why);
    rc = compare(r, id, schema, theirs, errbuf, errlen);
    free(theirs);
    return rc;
}

int hl_registry_subject_id(hl_registry *r, const char *subject, const char *schema,
                           int auto_register, int32_t *id, char *errbuf, size_t errlen)
{
    int rc = auto_register ? hl_registry_register(r, subject, schema, id, errbuf, errlen)
                           : hl_registry_lookup(r, subject, schema, id, errbuf, errlen);
    return rc != 0 ? rc : hl_registry_check_id(r, *id, schema, errbuf, errlen);
}
