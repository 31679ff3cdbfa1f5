/* slice.c - see slice.h. glibc 2.36 has no wrapper for sched_getattr and
 * sched_setattr, so these are the raw system calls with the kernel's
 * struct sched_attr (SCHED_ATTR_SIZE_VER0: policy, nice, runtime). */
#include "slice.h"

#ifdef __linux__
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

struct hl_sched_attr {
    uint32_t size, sched_policy;
    uint64_t sched_flags;
    int32_t  sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime, sched_deadline, sched_period;   /* ns */
};

int hl_slice_set_us(int us)
{
#if defined(SYS_sched_setattr) && defined(SYS_sched_getattr)
    /* The thread's own policy and nice (a `nice -n` or `chrt -b` the
     * process was started with) stay: only the slice changes. */
    struct hl_sched_attr a = {0};
    if (syscall(SYS_sched_getattr, 0, &a, (unsigned)sizeof a, 0) != 0)
        return -1;
    a.size = sizeof a;
    a.sched_flags = 0;
    a.sched_runtime = us > 0 ? (uint64_t)us * 1000 : 0;
    return syscall(SYS_sched_setattr, 0, &a, 0) == 0 ? 0 : -1;
#else
    (void)us;
    return -1;
#endif
}
#else
int hl_slice_set_us(int us)
{
    (void)us;
    return -1;
}
#endif
