/* slice.h - the kernel scheduler's time slice of the calling thread
 * (worker.io.slice.us).
 *
 * On Linux 6.6 and later (EEVDF) a thread that wakes runs before the thread
 * on the CPU only if its virtual deadline is earlier, and the deadline is
 * its slice away; with the default slice (0.7 ms x (1 + log2 CPUs), 1.4 ms
 * on 2 cores) a woken thread waits out much of a busy thread's slice. The
 * worker's live path is a chain of such wake-ups (librdkafka's broker
 * threads for the fetch, the send and the acknowledgement, the thread that
 * serves delivery reports), each waiting behind a shard thread's refresh
 * on a loaded machine. A short slice (sched_setattr's sched_runtime, Linux
 * 6.12+) makes them run soon after they wake without giving them a larger
 * share of the CPU: the weight (nice) is unchanged. A slice is inherited
 * by threads created afterwards, which is how librdkafka's threads get it.
 * Off by default: on a shared 2-core machine one set of A/B runs showed a
 * gain and a second set, with the key built, did not (tests/bench/RESULTS.md). */
#ifndef HL_SLICE_H
#define HL_SLICE_H

/* Sets the calling thread's slice to us microseconds (the kernel clamps to
 * 100..100,000); 0 restores the kernel's default. 0 on success; -1 where
 * the call is refused or not available (not Linux); a kernel older than
 * 6.12 accepts and ignores it. */
int hl_slice_set_us(int us);

#endif
