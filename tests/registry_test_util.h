/* registry_test_util.h - what test_registry.c (the REST client) and
 * test_schema_store.c (the fetched-schema table and its fetch thread)
 * share: a URL nothing listens on, a loopback listener that never
 * answers, a stand-in registry (a thread answering on such a listener)
 * started and stopped, and one answering one request. Header-only,
 * static inline. */
#ifndef HL_REGISTRY_TEST_UTIL_H
#define HL_REGISTRY_TEST_UTIL_H

#include "test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Port 1 on the loopback: nothing listens, the connection is refused at
 * once (no network leaves the machine). */
#define DEAD_URL "http://127.0.0.1:1"

/* A loopback listener that never answers: connections complete in the
 * kernel's backlog and requests wait for a reply that never comes. */
static inline int silent_listener(int *port)
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

/* A stand-in registry: fn(arg) in a thread of its own, answering on a
 * new loopback listener, *fd (set before the thread starts, so arg may
 * hold it), at *port. 0, or -1 with nothing left open. */
static inline int standin_start(int *fd, int *port, void *(*fn)(void *), void *arg,
                                pthread_t *tid)
{
    if ((*fd = silent_listener(port)) < 0)
        return -1;
    if (pthread_create(tid, NULL, fn, arg) != 0) {
        close(*fd);
        *fd = -1;
        return -1;
    }
    return 0;
}

/* Ends a stand-in: *stop set (NULL: fn ends by itself), its accept ended
 * by shutting the listener, the thread joined, the listener closed. */
static inline void standin_stop(int fd, atomic_int *stop, pthread_t tid)
{
    if (stop != NULL)
        atomic_store(stop, 1);
    shutdown(fd, SHUT_RDWR);
    pthread_join(tid, NULL);
    close(fd);
}

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
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
static inline void read_head(int c)
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

static inline void *answer_once(void *arg)
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

#endif
