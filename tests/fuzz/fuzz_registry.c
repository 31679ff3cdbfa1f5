/* fuzz_registry.c - libFuzzer target for what a Schema Registry answers.
 *
 * The registry is a server the worker does not control (schema.registry.url
 * may name anyone's, or be answered by a proxy), so its answers are input:
 * the status line, the headers and the JSON. A thread of this process
 * serves one HTTP answer per connection on 127.0.0.1, built from the input:
 *   byte 0, bits 0-1: the call (0 schema by id, 1 register, 2 lookup);
 *           bit 2: the rest of the input is the whole answer, status line
 *           and headers included (else byte 1 picks a status from the
 *           table below and the rest is the body, with a Content-Length);
 *   byte 1: the status.
 * The real client (worker/registry.c, over libcurl) makes the call. A
 * schema it hands back then goes where schema_store.c sends it: into a
 * codec as the writer schema of an id (avro-c parses it, codec_writer.c
 * walks and resolves it), and one event encoded by our schema is decoded
 * under it; and into the items topic's check (codec_item.c). A crash, a leak, a sanitizer report, a hang, an error without
 * a reason or a result code registry.h does not list is a bug.
 *
 * With HL_FUZZ_SEEDS=DIR set, LLVMFuzzerInitialize writes seed answers
 * into DIR: our schema, an evolved one, errors with error_code and message,
 * a non-Avro schemaType, ids in and out of range, and a raw answer. */
#include "codec.h"
#include "codec_item.h"
#include "registry.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_INPUT (256u << 10)

static const int statuses[] = { 200, 201, 404, 401, 403, 500, 503, 408, 429, 422,
                                409, 400, 204, 301, 302, 100, 199, 299, 600, 999 };
#define N_STATUS (int)(sizeof statuses / sizeof statuses[0])

static int listen_fd = -1;
static hl_registry *reg;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char *answer;            /* what the server sends to the next request */
static size_t answer_len;

/* ---- the server ---- */

static int read_some(int fd, char *buf, size_t cap, size_t *n)
{
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 5000) <= 0) return -1;
    ssize_t k = recv(fd, buf + *n, cap - *n, 0);
    if (k <= 0) return -1;
    *n += (size_t)k;
    return 0;
}

/* Reads one request: the headers, then Content-Length bytes of body. */
static void read_request(int fd)
{
    static char buf[1 << 16];
    size_t n = 0, want = 0;
    char *end = NULL;
    while (end == NULL) {
        if (n == sizeof buf - 1 || read_some(fd, buf, sizeof buf - 1, &n) != 0) return;
        buf[n] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    for (char *h = buf; h < end; h = strstr(h, "\r\n") + 2)
        if (strncasecmp(h, "Content-Length:", 15) == 0)
            want = strtoul(h + 15, NULL, 10);
    size_t have = n - (size_t)(end + 4 - buf);
    while (have < want) {
        n = 0;
        if (read_some(fd, buf, sizeof buf - 1, &n) != 0) return;
        have += n;
    }
}

static void *serve(void *arg)
{
    for (;;) {
        int fd = accept(listen_fd, NULL, NULL);
        if (fd < 0) continue;
        read_request(fd);
        pthread_mutex_lock(&mu);
        for (size_t off = 0; off < answer_len;) {
            ssize_t k = send(fd, answer + off, answer_len - off, MSG_NOSIGNAL);
            if (k <= 0) break;
            off += (size_t)k;
        }
        pthread_mutex_unlock(&mu);
        shutdown(fd, SHUT_WR);
        char drain[4096];
        struct pollfd p = {fd, POLLIN, 0};
        while (poll(&p, 1, 1000) > 0 && recv(fd, drain, sizeof drain, 0) > 0) {}
        close(fd);
    }
    return NULL;
}

static void set_answer(const uint8_t *data, size_t size)
{
    char head[256];
    int raw = data[0] & 4;
    size_t body = size - 2;
    int h = raw ? 0 : snprintf(head, sizeof head, "HTTP/1.1 %d X\r\nContent-Type: "
                               "application/vnd.schemaregistry.v1+json\r\nContent-Length: %zu\r\n"
                               "Connection: close\r\n\r\n", statuses[data[1] % N_STATUS], body);
    pthread_mutex_lock(&mu);
    free(answer);
    answer_len = (size_t)h + body;
    answer = malloc(answer_len + 1);
    memcpy(answer, head, (size_t)h);
    memcpy(answer + h, data + 2, body);
    pthread_mutex_unlock(&mu);
}

/* ---- the schema, where schema_store.c sends it ---- */

static const char *schema_text;

static int schema_fn(void *arg, int32_t id, char **text, char *why, size_t whylen)
{
    if ((*text = strdup(schema_text)) == NULL) abort();
    return 0;
}

static void use_schema(const char *text)
{
    char err[256], detail[256];
    uint8_t buf[256];
    schema_text = text;
    hl_codec_opts o = {HL_FRAMING_CONFLUENT, HL_FRAMING_CONFLUENT, NULL, 2, -(1LL << 50),
                       1LL << 50, 0, schema_fn, NULL, 7};
    hl_codec *c = hl_codec_create(&o, err, sizeof err);
    if (c == NULL) abort();
    hl_codec_writer(c, 7);
    hl_codec_event ev = {"user-1", 6, "item-42", 7, 1, 1700000000000LL, 2.5f, 1}, got;
    int n = hl_codec_encode_event(c, &ev, buf, sizeof buf);
    if (n > 0) hl_codec_decode_event(c, buf, (size_t)n, &got, detail, sizeof detail);
    hl_codec_destroy(c);
    hl_item_schema_is_ours(text, err, sizeof err);   /* items.topic's writer check */
}

/* ---- one input ---- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512] = "", *schema = NULL;
    int32_t id = -1;
    int rc;
    if (size < 2 || size > MAX_INPUT) return 0;
    set_answer(data, size);
    switch (data[0] & 3) {
    case 0:
        rc = hl_registry_schema_by_id(reg, 7, &schema, err, sizeof err);
        break;
    case 1:
        rc = hl_registry_register(reg, "events-value", hl_codec_event_schema(), &id, err, sizeof err);
        break;
    default:
        rc = hl_registry_lookup(reg, "events-value", hl_codec_event_schema(), &id, err, sizeof err);
        break;
    }
    if (rc != 0 && rc != HL_ENOENT && rc != HL_EAGAIN && rc != HL_EDENIED &&
        rc != HL_EINVAL && rc != HL_EFORMAT)
        abort();                                  /* a code registry.h does not list */
    if (rc != 0 && err[0] == '\0') abort();       /* a refusal without a reason */
    if (rc == 0 && (data[0] & 3) == 0 && schema == NULL) abort();
    if (rc == 0 && (data[0] & 3) != 0 && id < 0) abort();
    if (schema != NULL) use_schema(schema);
    free(schema);
    return 0;
}

/* ---- seeds ---- */

static void write_seed(const char *dir, const char *name, int call, int status_i,
                       const char *body)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL) { perror(path); return; }
    fputc(call, f);
    fputc(status_i, f);
    fputs(body, f);
    fclose(f);
}

static void write_seeds(const char *dir)
{
    /* Our schema, as a registry answers it (a JSON string inside JSON). */
    const char *s = hl_codec_event_schema();
    size_t n = strlen(s);
    char *esc = malloc(2 * n + 64), *p = esc;
    p += sprintf(p, "{\"schema\":\"");
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"' || s[i] == '\\') *p++ = '\\';
        if (s[i] == '\n') { *p++ = '\\'; *p++ = 'n'; continue; }
        *p++ = s[i];
    }
    sprintf(p, "\"}");
    write_seed(dir, "by_id_ours", 0, 0, esc);
    free(esc);
    write_seed(dir, "by_id_evolved", 0, 0,
        "{\"schema\":\"{\\\"type\\\":\\\"record\\\",\\\"name\\\":\\\"BehaviourEvent\\\","
        "\\\"namespace\\\":\\\"halflife\\\",\\\"fields\\\":[{\\\"name\\\":\\\"user_id\\\","
        "\\\"type\\\":\\\"string\\\"},{\\\"name\\\":\\\"item_id\\\",\\\"type\\\":\\\"string\\\"},"
        "{\\\"name\\\":\\\"extra\\\",\\\"type\\\":[\\\"null\\\",{\\\"type\\\":\\\"array\\\","
        "\\\"items\\\":\\\"long\\\"}],\\\"default\\\":null}]}\",\"schemaType\":\"AVRO\"}");
    write_seed(dir, "by_id_protobuf", 0, 0, "{\"schema\":\"syntax = \\\"proto3\\\";\",\"schemaType\":\"PROTOBUF\"}");
    write_seed(dir, "by_id_404", 0, 2, "{\"error_code\":40403,\"message\":\"Schema not found\"}");
    write_seed(dir, "by_id_401", 0, 3, "{\"error_code\":401,\"message\":\"Unauthorized\"}");
    write_seed(dir, "by_id_500", 0, 5, "{\"error_code\":50001,\"message\":\"Error in the backend\"}");
    write_seed(dir, "by_id_recursive", 0, 0,
        "{\"schema\":\"{\\\"type\\\":\\\"record\\\",\\\"name\\\":\\\"L\\\",\\\"fields\\\":["
        "{\\\"name\\\":\\\"next\\\",\\\"type\\\":[\\\"null\\\",\\\"L\\\"]}]}\"}");
    write_seed(dir, "register_ok", 1, 0, "{\"id\":21}");
    write_seed(dir, "register_409", 1, 10, "{\"error_code\":409,\"message\":\"Schema being registered is incompatible\"}");
    write_seed(dir, "lookup_ok", 2, 0, "{\"subject\":\"events-value\",\"version\":3,\"id\":2147483647,\"schema\":\"\\\"string\\\"\"}");
    write_seed(dir, "lookup_big_id", 2, 0, "{\"id\":2147483648}");
    write_seed(dir, "raw", 4, 0, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 "9\r\n{\"id\":42}\r\n0\r\n\r\n");
}

/* At exit the server thread may still be sending the last answer (a
 * client that gave up early leaves it mid-send): the answer is freed under
 * mu, as set_answer replaces it, or the send reads freed memory. */
static void stop(void)
{
    hl_registry_destroy(reg);
    pthread_mutex_lock(&mu);
    free(answer);
    answer = NULL;
    answer_len = 0;
    pthread_mutex_unlock(&mu);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    char url[64], err[256];
    pthread_t th;
    if ((listen_fd = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
        bind(listen_fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(listen_fd, 16) != 0 ||
        getsockname(listen_fd, (struct sockaddr *)&a, &alen) != 0) {
        perror("fuzz_registry: listen");
        abort();
    }
    snprintf(url, sizeof url, "http://127.0.0.1:%d", ntohs(a.sin_port));
    hl_registry_opts o = {.urls = url, .timeout_ms = 3000};
    if ((reg = hl_registry_create(&o, err, sizeof err)) == NULL) {
        fprintf(stderr, "fuzz_registry: %s\n", err);
        abort();
    }
    if (pthread_create(&th, NULL, serve, NULL) != 0) abort();
    pthread_detach(th);
    atexit(stop);
    const char *dir = getenv("HL_FUZZ_SEEDS");
    if (dir && *dir)
        write_seeds(dir);
    return 0;
}
