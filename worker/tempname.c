/* tempname.c - temporary file names unique across the hosts sharing a
 * volume, and the proof that one is abandoned (the contract is
 * tempname.h). Not on any hot path: a model kept, a dead letter written,
 * a directory swept. */
#include "tempname.h"
#include "fnv.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t host_tag(void)
{
    /* The boot id tells machines (and boots) apart, the pid namespace's
     * inode the containers of one machine: together they say where a pid
     * names one process. The hostname would not: containers on the host
     * network share it, and a restarted pod keeps its name. */
    char boot[64] = "", ns[64] = "";
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    int ok = f != NULL && fgets(boot, sizeof boot, f) != NULL;
    if (f != NULL)
        fclose(f);
    ssize_t n = readlink("/proc/self/ns/pid", ns, sizeof ns - 1);
    uint64_t h = 0;
    if (ok && n > 0) {
        h = hl_fnv1a64(HL_FNV64_BASIS, boot, strlen(boot));
        h = hl_fnv1a64(h, ns, (size_t)n);
    } else if (getrandom(&h, sizeof h, 0) != (ssize_t)sizeof h) {
        h = ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL);
    }
    return h != 0 ? h : 1;
}

/* Worked out once per process: the dead-letter path asks per record, and
 * the random fallback (no /proc) must name this process's files the same
 * way every time, or its own temporaries would look like another host's.
 * The first value stored wins if two threads race. */
uint64_t hl_tempname_host(void)
{
    static _Atomic uint64_t cached;
    uint64_t h = atomic_load(&cached), zero = 0;
    if (h != 0)
        return h;
    h = host_tag();
    return atomic_compare_exchange_strong(&cached, &zero, h) ? h : zero;
}

int hl_tempname_make(char *out, size_t len, const char *final, uint64_t host, long pid)
{
    int n = snprintf(out, len, "%s.%016llx.%ld.tmp", final, (unsigned long long)host, pid);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

int hl_tempname_parse(const char *tail, uint64_t *host, long *pid)
{
    for (int i = 0; i < 16; i++)
        if (strchr("0123456789abcdef", tail[i]) == NULL || tail[i] == '\0')
            return -1;
    if (tail[16] != '.' || tail[17] < '1' || tail[17] > '9')
        return -1;
    char *end;
    errno = 0;
    long p = strtol(tail + 17, &end, 10);
    if (errno != 0 || p <= 0 || p > INT32_MAX || strcmp(end, ".tmp") != 0)
        return -1;
    *host = strtoull(tail, NULL, 16);
    *pid = p;
    return 0;
}

int hl_tempname_abandoned(const char *path, uint64_t host, long pid, uint64_t own_host,
                          int self_idle, int64_t bound_s, time_t now)
{
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return 0;
    if (host != 0 && host == own_host) {
        if (pid == (long)getpid())
            return self_idle;
        if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
            return 1;
    }
    /* ctime, not mtime: a hard link (as workers before 2026-12-07 kept a
     * model) carries the linked file's old mtime, while linking sets ctime. */
    return bound_s < 0 || (int64_t)(now - st.st_ctime) >= bound_s;
}
