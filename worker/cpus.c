/* cpus.c - the CPUs this process may use (the contract is cpus.h). */
#include "cpus.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int hl_cpus_from_quota(const char *cpu_max)
{
    char *end;
    long long quota, period;
    if (cpu_max == NULL || strncmp(cpu_max, "max", 3) == 0)
        return 0;
    quota = strtoll(cpu_max, &end, 10);
    if (end == cpu_max || quota <= 0 || *end != ' ')
        return 0;
    period = strtoll(end + 1, &end, 10);
    if (period <= 0 || (*end != '\n' && *end != '\0'))
        return 0;
    /* A quota of 1.5 periods lets two threads run most of the time:
     * rounded up, as the scheduler spreads it. Bounded so a huge quota
     * cannot overflow the int. */
    if (quota / period >= 4096)
        return 4096;
    return (int)((quota + period - 1) / period);
}

/* The first line of path, or "" when it cannot be read. */
static void read_line(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    buf[0] = '\0';
    if (f == NULL)
        return;
    if (fgets(buf, (int)cap, f) == NULL)
        buf[0] = '\0';
    fclose(f);
}

/* A cgroup v1 quota (cpu.cfs_quota_us, -1 for none, and cpu.cfs_period_us)
 * of the cgroup dir, under either name the cpu controller is mounted as. */
static int v1_quota(const char *dir)
{
    static const char *const mounts[] = { "cpu,cpuacct", "cpu" };
    char path[640], quota[64], period[64], text[160];
    for (size_t i = 0; i < sizeof mounts / sizeof mounts[0]; i++) {
        snprintf(path, sizeof path, "/sys/fs/cgroup/%s%s/cpu.cfs_quota_us", mounts[i], dir);
        read_line(path, quota, sizeof quota);
        if (quota[0] == '\0')
            continue;
        snprintf(path, sizeof path, "/sys/fs/cgroup/%s%s/cpu.cfs_period_us", mounts[i], dir);
        read_line(path, period, sizeof period);
        quota[strcspn(quota, "\n")] = '\0';
        snprintf(text, sizeof text, "%s %s", quota, period);
        return quota[0] != '-' ? hl_cpus_from_quota(text) : 0;
    }
    return 0;
}

/* The quota of this process's cgroup in whole CPUs, 0 for none known.
 * Only the process's own cgroup is read: a tighter limit on a parent
 * (rare; Kubernetes and Docker set the container's own) is not looked for. */
static int cgroup_quota(void)
{
    char line[512], path[640], text[128];
    FILE *f = fopen("/proc/self/cgroup", "r");
    int cpus = 0;
    if (f == NULL)
        return 0;
    while (cpus == 0 && fgets(line, sizeof line, f) != NULL) {
        char *dir;
        line[strcspn(line, "\n")] = '\0';
        if (strncmp(line, "0::", 3) == 0) {                 /* v2 */
            dir = line + 3;
            snprintf(path, sizeof path, "/sys/fs/cgroup%s/cpu.max",
                     strcmp(dir, "/") == 0 ? "" : dir);
            read_line(path, text, sizeof text);
            cpus = hl_cpus_from_quota(text);
        } else if ((dir = strstr(line, ":cpu,cpuacct:")) != NULL ||
                   (dir = strstr(line, ":cpu:")) != NULL) {  /* v1 */
            cpus = v1_quota(strchr(dir + 1, ':') + 1);
        }
    }
    fclose(f);
    return cpus;
}

int hl_cpus_available(void)
{
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    int n = online > 0 ? (online > 4096 ? 4096 : (int)online) : 1;
    cpu_set_t set;
    int quota = cgroup_quota();
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int mask = CPU_COUNT(&set);
        if (mask > 0 && mask < n)
            n = mask;
    }
    if (quota > 0 && quota < n)
        n = quota;
    return n;
}
