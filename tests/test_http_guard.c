/* test_http_guard.c - worker/http_guard.c, with time passed in: a request
 * timeout that a trickling client cannot extend, the bounds per address and
 * in total, and that a newcomer (a probe) always gets in by displacing the
 * oldest connection still waiting for its request. The same behaviour
 * against a real worker under attack is tests/integration/test_http_attack.py. */
#define T_SUITE "http_guard"
#include "test.h"

#include "http_guard.h"

static const hl_http_guard_opts opts = {
    .max_total = 8, .max_per_ip = 3, .slack = 4,
    .request_timeout_ms = 3000, .busy_grace_ms = 2000,
};

static void ip_of(unsigned char ip[16], int last)
{
    memset(ip, 0, 16);
    ip[10] = ip[11] = 0xff;
    ip[12] = 10;
    ip[15] = (unsigned char)last;
}

/* Opens fd from 10.0.0.last at now; the victims' fds go to v (and are
 * closed in the guard, as the server would once it sees the shutdown). */
static int open_conn(hl_http_guard *g, int last, int fd, int64_t now, hl_http_guard_victim *v,
                     int *n_v, int *slot_of_fd)
{
    unsigned char ip[16];
    ip_of(ip, last);
    int id = hl_http_guard_open(g, ip, fd, now, v, n_v);
    if (id >= 0) slot_of_fd[fd] = id;
    return id;
}

static void close_victims(hl_http_guard *g, const hl_http_guard_victim *v, int n_v, int *slot_of_fd)
{
    for (int i = 0; i < n_v; i++) {
        if (slot_of_fd[v[i].fd] >= 0) hl_http_guard_close(g, slot_of_fd[v[i].fd]);
        slot_of_fd[v[i].fd] = -1;
    }
}

static void test_per_ip_displaces_oldest_waiting(void)
{
    hl_http_guard *g = hl_http_guard_create(&opts);
    hl_http_guard_victim v[16];
    int n_v, slot_of_fd[64];
    memset(slot_of_fd, -1, sizeof slot_of_fd);

    for (int fd = 10; fd < 13; fd++) {
        CHECK(open_conn(g, 1, fd, 100 + fd, v, &n_v, slot_of_fd) >= 0);
        CHECK(n_v == 0);
    }
    /* The fourth from 10.0.0.1 gets in; the oldest (fd 10) is closed. */
    CHECK(open_conn(g, 1, 13, 200, v, &n_v, slot_of_fd) >= 0);
    CHECKF(n_v == 1 && v[0].fd == 10 && v[0].reason == HL_GUARD_PER_IP, "n_v %d fd %d", n_v, v[0].fd);
    close_victims(g, v, n_v, slot_of_fd);
    /* Another address is not touched by 10.0.0.1's bound. */
    CHECK(open_conn(g, 2, 20, 210, v, &n_v, slot_of_fd) >= 0 && n_v == 0);
    /* A connection being answered is not displaced, the next oldest is. */
    hl_http_guard_busy(g, slot_of_fd[11], 220);
    CHECK(open_conn(g, 1, 14, 230, v, &n_v, slot_of_fd) >= 0);
    CHECKF(n_v == 1 && v[0].fd == 12, "n_v %d fd %d", n_v, v[0].fd);
    close_victims(g, v, n_v, slot_of_fd);
    /* ...until it has been busy beyond busy_grace_ms (never reads) and
     * no connection of that address is waiting. */
    hl_http_guard_busy(g, slot_of_fd[13], 2290);
    hl_http_guard_busy(g, slot_of_fd[14], 2290);
    CHECK(open_conn(g, 1, 15, 2300, v, &n_v, slot_of_fd) >= 0);
    CHECKF(n_v == 1 && v[0].fd == 11, "n_v %d fd %d", n_v, v[0].fd);
    hl_http_guard_destroy(g);
    hl_http_guard_destroy(NULL);
}

/* A connection's request timeout runs from accept, whatever it sends (the
 * guard never hears of bytes); after an answer it starts again. */
static void test_request_timeout(void)
{
    hl_http_guard *g = hl_http_guard_create(&opts);
    hl_http_guard_victim v[16];
    int n_v, slot_of_fd[64];
    memset(slot_of_fd, -1, sizeof slot_of_fd);

    CHECK(open_conn(g, 1, 10, 0, v, &n_v, slot_of_fd) >= 0);
    CHECK(open_conn(g, 2, 11, 0, v, &n_v, slot_of_fd) >= 0);
    hl_http_guard_busy(g, slot_of_fd[11], 10);
    hl_http_guard_idle(g, slot_of_fd[11], 1000);            /* answered, keep-alive */
    CHECK(open_conn(g, 3, 12, 2999, v, &n_v, slot_of_fd) >= 0 && n_v == 0);
    CHECK(open_conn(g, 3, 13, 3000, v, &n_v, slot_of_fd) >= 0);
    CHECKF(n_v == 1 && v[0].fd == 10 && v[0].reason == HL_GUARD_TIMEOUT, "n_v %d", n_v);
    close_victims(g, v, n_v, slot_of_fd);
    CHECK(open_conn(g, 3, 14, 4000, v, &n_v, slot_of_fd) >= 0);   /* 11 idle since 1000 */
    CHECKF(n_v == 1 && v[0].fd == 11, "n_v %d", n_v);
    close_victims(g, v, n_v, slot_of_fd);
    CHECK(hl_http_guard_count(g) == 3);
    hl_http_guard_destroy(g);
}

/* Many addresses fill the total: the oldest waiting connection anywhere
 * makes room; when every slot is busy and fresh, the newcomer is refused;
 * a victim still closing holds its slot (slack), so capacity is never
 * exceeded. */
static void test_total_and_refusal(void)
{
    hl_http_guard *g = hl_http_guard_create(&opts);
    hl_http_guard_victim v[16];
    int n_v, slot_of_fd[64];
    memset(slot_of_fd, -1, sizeof slot_of_fd);

    for (int i = 0; i < 8; i++)
        CHECK(open_conn(g, 10 + i, 10 + i, i, v, &n_v, slot_of_fd) >= 0 && n_v == 0);
    CHECK(open_conn(g, 30, 30, 100, v, &n_v, slot_of_fd) >= 0);
    CHECKF(n_v == 1 && v[0].fd == 10 && v[0].reason == HL_GUARD_TOTAL, "n_v %d", n_v);
    /* fd 10 not closed yet: it keeps its slot; 4 of slack, then refusals. */
    for (int i = 0; i < 8; i++)
        if (slot_of_fd[11 + i] >= 0) hl_http_guard_busy(g, slot_of_fd[11 + i], 200);
    hl_http_guard_busy(g, slot_of_fd[30], 200);
    CHECK(open_conn(g, 31, 31, 300, v, &n_v, slot_of_fd) < 0);
    CHECKF(n_v == 1 && v[0].fd == 31 && v[0].reason == HL_GUARD_REFUSED, "n_v %d", n_v);
    CHECK(hl_http_guard_count(g) == 9);
    CHECK(hl_http_guard_capacity(g) == 12);
    CHECK(!strcmp(hl_http_guard_reason_name(HL_GUARD_TIMEOUT), "request_timeout"));
    hl_http_guard_destroy(g);
}

/* The attack in numbers: one address opens a connection every ms and never
 * sends a request, a probe from the same address arrives in between, sends
 * its request at once and is answered: it is never the one displaced. */
static void test_probe_survives_flood(void)
{
    hl_http_guard *g = hl_http_guard_create(&opts);
    hl_http_guard_victim v[16];
    int n_v, slot_of_fd[4096];
    memset(slot_of_fd, -1, sizeof slot_of_fd);

    for (int t = 0; t < 2000; t++) {
        int fd = 100 + t;
        CHECK(open_conn(g, 1, fd, t, v, &n_v, slot_of_fd) >= 0);
        for (int i = 0; i < n_v; i++) CHECKF(v[i].fd != 50, "probe displaced at t=%d", t);
        close_victims(g, v, n_v, slot_of_fd);
        if (t == 1000) {
            CHECK(open_conn(g, 1, 50, t, v, &n_v, slot_of_fd) >= 0);
            close_victims(g, v, n_v, slot_of_fd);
            hl_http_guard_busy(g, slot_of_fd[50], t);        /* its request arrived */
        }
        if (t == 1001) {
            hl_http_guard_idle(g, slot_of_fd[50], t);        /* answered */
            hl_http_guard_close(g, slot_of_fd[50]);          /* HTTP/1.0: closed */
            slot_of_fd[50] = -1;
        }
        CHECK(hl_http_guard_count(g) <= 3);
    }
    hl_http_guard_destroy(g);
}

int main(void)
{
    RUN(test_per_ip_displaces_oldest_waiting);
    RUN(test_request_timeout);
    RUN(test_total_and_refusal);
    RUN(test_probe_survives_flood);
    TEST_EXIT();
}
