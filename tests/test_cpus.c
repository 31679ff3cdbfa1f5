/* test_cpus.c - worker.threads 0: the CPUs this process may use, not the
 * machine's (worker/cpus.c). */
#define T_SUITE "test_cpus"
#include "test.h"

#include "config.h"
#include "cpus.h"

#include <sched.h>
#include <unistd.h>

static void test_quota_text(void)
{
    CHECK(hl_cpus_from_quota("200000 100000\n") == 2);
    CHECK(hl_cpus_from_quota("150000 100000") == 2);    /* rounded up */
    CHECK(hl_cpus_from_quota("50000 100000\n") == 1);
    CHECK(hl_cpus_from_quota("max 100000\n") == 0);     /* no limit */
    CHECK(hl_cpus_from_quota("") == 0);
    CHECK(hl_cpus_from_quota(NULL) == 0);
    CHECK(hl_cpus_from_quota("-1 100000") == 0);        /* v1's "none" */
    CHECK(hl_cpus_from_quota("100000 0") == 0);
    CHECK(hl_cpus_from_quota("100000") == 0);
    CHECK(hl_cpus_from_quota("abc def") == 0);
    CHECK(hl_cpus_from_quota("100000 100000 junk") == 0);
    CHECK(hl_cpus_from_quota("9223372036854775807 1") == 4096);
}

/* Pinned to one CPU (as taskset or a cpuset would), worker.threads 0 is
 * one thread: before, it was sysconf's online count. */
static void test_affinity_counts(void)
{
    cpu_set_t old, one;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    int all = hl_cpus_available();
    char err[256];
    hl_config *cfg;
    CHECKF(all >= 1 && all <= online, "available %d, online %ld", all, online);
    if (sched_getaffinity(0, sizeof old, &old) != 0)
        SKIP("sched_getaffinity failed");
    if (online < 2)
        SKIP("one online CPU: nothing to narrow");
    CPU_ZERO(&one);
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &old)) { CPU_SET(c, &one); break; }
    CHECK(sched_setaffinity(0, sizeof one, &one) == 0);
    CHECKF(hl_cpus_available() == 1, "pinned to one CPU: %d", hl_cpus_available());
    cfg = hl_config_create();
    CHECK(hl_config_set(cfg, "worker.threads", "0", "-X", err, sizeof err) == 0);
    CHECKF(hl_config_int(cfg, "worker.threads") == 1, "worker.threads 0 read as %lld",
           (long long)hl_config_int(cfg, "worker.threads"));
    CHECK(hl_config_set(cfg, "worker.threads", "3", "-X", err, sizeof err) == 0);
    CHECK(hl_config_int(cfg, "worker.threads") == 3);         /* set: taken as is */
    hl_config_destroy(cfg);
    CHECK(sched_setaffinity(0, sizeof old, &old) == 0);
}

int main(void)
{
    RUN(test_quota_text);
    RUN(test_affinity_counts);
    TEST_EXIT();
}
