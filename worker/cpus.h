/* cpus.h - how many CPUs this process may really use: what worker.threads
 * 0 means. sysconf's online count is the machine's (a node's 64 cores in a
 * pod limited to 2), so the answer is the least of the online count, the
 * CPUs in the process's affinity mask (taskset, a cpuset cgroup) and the
 * cgroup's CPU quota rounded up (cgroup v2 cpu.max, v1 cfs_quota_us /
 * cfs_period_us; Kubernetes and Docker set it from the CPU limit). */
#ifndef HL_CPUS_H
#define HL_CPUS_H

/* The CPUs available to this process, at least 1. Reads /proc/self/cgroup
 * and the cgroup files it names; each source that cannot be read is left
 * out. Not on any hot path (called when the configuration is read). */
int hl_cpus_available(void);

/* The quota in a cgroup v2 cpu.max text ("200000 100000", "max 100000"),
 * rounded up to whole CPUs: 0 when there is no limit or the text is not
 * two positive numbers. Apart so the parsing is tested. */
int hl_cpus_from_quota(const char *cpu_max);

#endif
