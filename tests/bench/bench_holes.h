/* bench_holes.h - the machine's own holes, for benchmarks that time
 * stalls or tail latencies (bench_swap, bench_worker).
 *
 * This machine is a 2-vCPU VM whose host sometimes stops a vCPU for up to
 * ~100 ms. The guest cannot tell (no steal time is reported): the stopped
 * thread's CPU clock runs on. A loop of pure arithmetic (no memory to
 * speak of, no syscall) measured a 22 us unit at 100.3 ms with the other
 * vCPU busy (2026-12-04). A stall taken in such a hole is the host's, not
 * the swap's. One sentinel thread per vCPU, pinned to it at real-time
 * priority (so nothing in the guest delays its wake-up), sleeps 1 ms at a
 * time and notes every wake-up later than HOLE_US: its vCPU was stopped.
 * A stall that overlaps a hole of the vCPU it ran on is told apart
 * (bench_swap), and the holes are printed beside the figure: the
 * machine's own ceiling for it, in the same run (a p99 cannot beat the
 * host when its holes take more than 1% of the window). Without the privilege
 * for real-time priority the sentinels run at normal priority and would
 * note a busy guest's delays as holes too: "sentinel" says which. */
#ifndef HL_BENCH_HOLES_H
#define HL_BENCH_HOLES_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE             /* CPU_SET, pthread_setaffinity_np */
#endif
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define HOLE_US   2000
#define HOLES_MAX 4096
#define CPUS_MAX  8

static inline double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct sentinel {
    pthread_t  th;
    int        cpu, fifo;
    atomic_int *stop;
    int        n;                   /* holes noted */
    double     from[HOLES_MAX], to[HOLES_MAX];   /* wall seconds */
} sentinel;

typedef struct sentinels {
    atomic_int stop;
    int        n_cpu, fifo;
    sentinel   s[CPUS_MAX];
} sentinels;

static inline void *sentinel_run(void *arg)
{
    sentinel *st = arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(st->cpu, &set);
    struct sched_param sp = {.sched_priority = 1};
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    st->fifo = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp) == 0;
    const struct timespec ms = {0, 1000000};
    while (!atomic_load(st->stop)) {
        double t0 = wall_s();
        nanosleep(&ms, NULL);
        double t1 = wall_s();
        if ((t1 - t0 - 1e-3) * 1e6 > HOLE_US && st->n < HOLES_MAX) {
            st->from[st->n] = t0 + 1e-3;
            st->to[st->n++] = t1;
        }
    }
    return NULL;
}

static inline sentinels *sentinels_start(void)
{
    sentinels *ss = calloc(1, sizeof *ss);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (ss == NULL)
        return NULL;
    ss->n_cpu = n < 1 ? 1 : n > CPUS_MAX ? CPUS_MAX : (int)n;
    for (int c = 0; c < ss->n_cpu; c++) {
        ss->s[c].cpu = c;
        ss->s[c].stop = &ss->stop;
        if (pthread_create(&ss->s[c].th, NULL, sentinel_run, &ss->s[c]) != 0)
            ss->n_cpu = c;
    }
    return ss;
}

static inline void sentinels_stop(sentinels *ss)
{
    atomic_store(&ss->stop, 1);
    ss->fifo = 1;
    for (int c = 0; c < ss->n_cpu; c++) {
        pthread_join(ss->s[c].th, NULL);
        ss->fifo &= ss->s[c].fifo;
    }
}

/* 1 when [a, b] overlaps a hole of cpu (-1: of any). */
static inline int in_hole(const sentinels *ss, int cpu, double a, double b)
{
    for (int c = 0; c < ss->n_cpu; c++) {
        const sentinel *st = &ss->s[c];
        for (int i = 0; (cpu < 0 || c == cpu) && i < st->n; i++)
            if (st->from[i] < b && st->to[i] > a)
                return 1;
    }
    return 0;
}

static inline double longest_hole(const sentinels *ss, int *n)
{
    double m = 0;
    *n = 0;
    for (int c = 0; c < ss->n_cpu; c++)
        for (int i = 0; i < ss->s[c].n; i++, ++*n)
            if (ss->s[c].to[i] - ss->s[c].from[i] > m) m = ss->s[c].to[i] - ss->s[c].from[i];
    return m;
}

/* Total hole time of every vCPU's sentinel (seconds). */
static inline double holes_total(const sentinels *ss)
{
    double t = 0;
    for (int c = 0; c < ss->n_cpu; c++)
        for (int i = 0; i < ss->s[c].n; i++)
            t += ss->s[c].to[i] - ss->s[c].from[i];
    return t;
}

#endif
