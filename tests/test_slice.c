/* test_slice.c - worker.io.slice.us's helper (worker/slice.c): the slice
 * it sets is the calling thread's, threads created afterwards inherit it
 * (how librdkafka's threads get it), 0 gives the kernel's default back, and
 * the thread's nice is left as it was. Read back from the kernel's own
 * account (/proc/thread-self/sched, "se.slice" in ns, Linux 6.6+); skipped
 * where the kernel does not show or honour a custom slice (before 6.12). */
#define T_SUITE "test_slice"
#include "test.h"

#include "slice.h"

#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The calling thread's se.slice in ns; -1 if the kernel does not show it. */
static long long slice_ns(void)
{
    FILE *f = fopen("/proc/thread-self/sched", "r");
    char line[256];
    long long v = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "se.slice", 8) == 0)
            v = atoll(strchr(line, ':') + 1);
    if (f)
        fclose(f);
    return v;
}

/* Whether the kernel honours a custom slice, asked without the code under
 * test (so a helper that does nothing fails instead of skipping): the raw
 * call with the VER0 struct, on a thread of its own. */
struct probe_attr {
    unsigned size, policy;
    unsigned long long flags;
    int nice;
    unsigned prio;
    unsigned long long runtime, deadline, period;
};

static void *probe(void *arg)
{
    struct probe_attr a = {.size = sizeof a, .runtime = 300000};
    int nice = getpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid));
    a.nice = nice;
    *(int *)arg = syscall(SYS_sched_setattr, 0, &a, 0) == 0 && slice_ns() == 300000;
    return NULL;
}

static long long default_ns = -1;   /* before any change */
static int honoured;                /* the kernel takes a custom slice */

static void *child(void *arg)
{
    long long *got = arg;
    got[0] = slice_ns();            /* inherited */
    got[1] = hl_slice_set_us(0);
    got[2] = slice_ns();            /* the default again */
    return NULL;
}

static void test_set_and_inherit(void)
{
    if (!honoured) {
        SKIP("this kernel shows no se.slice or ignores sched_runtime (Linux < 6.12)");
        return;
    }
    CHECK(hl_slice_set_us(100) == 0);
    CHECKF(slice_ns() == 100000, "se.slice %lld, want 100000", slice_ns());
    long long got[3] = {0};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, child, got) == 0);
    pthread_join(th, NULL);
    CHECKF(got[0] == 100000, "a new thread's se.slice %lld, want 100000", got[0]);
    CHECK(got[1] == 0);
    CHECKF(got[2] == default_ns, "after 0: %lld, want the default %lld", got[2], default_ns);
    CHECK(slice_ns() == 100000);    /* the child's reset was its own */
    CHECK(hl_slice_set_us(0) == 0);
    CHECK(slice_ns() == default_ns);
}

/* A `nice -n` the process was started with stays. The thread's nice is
 * raised by 3 first, but never past 19, the kernel's cap: under
 * `nice -n 19 make test` the raise would be clamped and the test would
 * fail on its own arithmetic (a helper that resets nice to 0 still fails). */
static void test_keeps_nice(void)
{
    pid_t tid = (pid_t)syscall(SYS_gettid);
    int before = getpriority(PRIO_PROCESS, (id_t)tid);
    int want = before + 3 > 19 ? 19 : before + 3;
    CHECK(setpriority(PRIO_PROCESS, (id_t)tid, want) == 0);
    CHECK(hl_slice_set_us(200) == 0);
    CHECKF(getpriority(PRIO_PROCESS, (id_t)tid) == want, "nice %d, want %d",
           getpriority(PRIO_PROCESS, (id_t)tid), want);
    if (honoured)
        CHECKF(slice_ns() == 200000, "se.slice %lld, want 200000", slice_ns());
    CHECK(hl_slice_set_us(0) == 0);
    CHECK(getpriority(PRIO_PROCESS, (id_t)tid) == want);
}

int main(void)
{
    default_ns = slice_ns();
    pthread_t th;
    if (default_ns > 0 && pthread_create(&th, NULL, probe, &honoured) == 0)
        pthread_join(th, NULL);
    RUN(test_set_and_inherit);
    RUN(test_keeps_nice);
    TEST_EXIT();
}
