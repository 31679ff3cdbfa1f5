/* bench_snapshot.c - snapshot write and load throughput for a 1M-user shard
 * and the longest stall a snapshot imposes on the shard's owner.
 *
 * Shard: 1M users, dim 64, three heads, a full history ring of 32 (about
 * 1.2 GB of snapshot), made by bench_make_shard (bench_table_util.h). Figures, each the median of REPS runs, one JSON line each:
 *
 *   snapshot_write     bytes / (begin .. durable: every step, the drains,
 *                      commit with its fsync) as the worker runs it: a drain
 *                      thread writes the buffers (hl_snapshot_async) and
 *                      the owner sleeps 200 us between steps (a batch);
 *                      ceiling: write() of the same byte count in 1 MiB
 *                      pieces + fsync to the same directory. _sync: the
 *                      owner writing, steps back to back.
 *   snapshot_steps     bytes / time in begin + steps alone: what the owner
 *                      pays, with a drain thread writing (and _sync: the
 *                      owner writing into the page cache); ceiling: memcpy.
 *   snapshot_load      bytes / hl_snapshot_load (CRC, parse, table build),
 *                      file in the page cache. Two ceilings: read() of the
 *                      file into a reused 1 MiB buffer ("ceiling"), and
 *                      ("ceiling_fresh") read() of it into fresh memory the
 *                      size of the loaded table, all of it touched: a load
 *                      builds a table in memory the process never touched,
 *                      and on these VMs first-touching a page costs more
 *                      than reading it from the page cache. ceiling_fresh_thp
 *                      is the same into memory advised for huge pages, as
 *                      table.c maps its rows.
 *   snapshot_stall_max the longest single hl_snapshot_step with the default
 *                      budget (HL_SNAPSHOT_STEP_ROWS) and a drain thread
 *                      writing the buffers (hl_snapshot_async), as the
 *                      worker should run it; target 10 ms. Also p99 and
 *                      the same figures with the owner writing (sync).
 *   crc32c             hl_crc32c over 256 MiB in memory; ceiling: memcpy.
 *
 * Usage: bench_snapshot [DIR] (default $HL_BUILD or build; the files are
 * removed at the end). HL_BENCH_USERS overrides the user count. */
#include "bench_table_util.h"
#include "bench_args.h"
#include "crc32c.h"
#include "snapshot.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DIM     64
#define HISTORY 32
#define REPS    3

typedef struct write_run {
    double total_s, steps_s, stall_max_s, stall_p99_s, cpu_max_s;
    uint64_t bytes;
    char path[HL_SNAPSHOT_PATH_MAX];
} write_run;

typedef struct drainer {
    hl_snapshot_writer *w;
    atomic_int          stop;
} drainer;

/* What the worker's committer thread does while the owner steps. */
static void *drain_loop(void *arg)
{
    drainer *d = arg;
    char err[512];
    while (!atomic_load(&d->stop)) {
        int n = hl_snapshot_drain(d->w, err, sizeof err);
        if (n < 0) bench_die("drain", err);
        if (n == 0) usleep(100);
    }
    return NULL;
}

static write_run snapshot_once(const char *dir, const hl_table *tbl, int64_t next, int async,
                               const hl_io *io)
{
    static double step_s[1 << 16];
    size_t n_steps = 0;
    drainer d = {0};
    pthread_t th;
    hl_snapshot_meta meta = {.topic = "bench", .partition = 0, .next_offset = next,
                             .model_fingerprint = BENCH_FP};
    hl_snapshot_writer *w;
    hl_snapshot_result res;
    write_run r = {0};
    char err[512];
    int rc;
    double t0 = now_s(), t;

    if (hl_snapshot_begin(io, dir, &meta, tbl, &w, err, sizeof err) != 0) bench_die("begin", err);
    r.steps_s = now_s() - t0;
    if (async) {
        hl_snapshot_async(w);
        d.w = w;
        pthread_create(&th, NULL, drain_loop, &d);
    }
    do {
        double c = cpu_s();
        t = now_s();
        rc = hl_snapshot_step(w, tbl, 0, err, sizeof err);
        t = now_s() - t;
        c = cpu_s() - c;
        if (c > r.cpu_max_s) r.cpu_max_s = c;
        r.steps_s += t;
        if (t > r.stall_max_s) r.stall_max_s = t;
        if (n_steps < sizeof step_s / sizeof step_s[0]) step_s[n_steps++] = t;
        if (rc == 0 && async) usleep(200);   /* the owner's batch in between */
    } while (rc == 0);
    if (rc < 0) bench_die("step", err);
    if (async) {
        atomic_store(&d.stop, 1);
        pthread_join(th, NULL);
    }
    r.stall_p99_s = n_steps ? (qsort(step_s, n_steps, sizeof *step_s, cmp_double),
                               step_s[n_steps * 99 / 100]) : 0;
    if (hl_snapshot_commit(w, 1, &res, err, sizeof err) != 0) bench_die("commit", err);
    r.total_s = now_s() - t0;
    r.bytes = res.bytes;
    snprintf(r.path, sizeof r.path, "%s", res.path);
    return r;
}

/* The machine's rate for the same bytes: write + fsync, then read back. */
static double raw_write(const char *path, uint64_t bytes, unsigned char *buf, size_t chunk)
{
    double t0 = now_s();
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) bench_die("open", path);
    for (uint64_t done = 0; done < bytes; done += chunk) {
        size_t n = bytes - done < chunk ? (size_t)(bytes - done) : chunk;
        if (write(fd, buf, n) != (ssize_t)n) bench_die("write", path);
    }
    if (fsync(fd) != 0) bench_die("fsync", path);
    close(fd);
    return (double)bytes / (now_s() - t0);
}

static double raw_read(const char *path, unsigned char *buf, size_t chunk)
{
    double t0 = now_s();
    uint64_t total = 0;
    ssize_t n;
    int fd = open(path, O_RDONLY);
    if (fd < 0) bench_die("open", path);
    while ((n = read(fd, buf, chunk)) > 0) total += (uint64_t)n;
    close(fd);
    return (double)total / (now_s() - t0);
}

static double raw_read_fresh(const char *path, size_t table_bytes, int huge)
{
    double t0 = now_s();
    unsigned char *mem = mmap(NULL, table_bytes, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (huge && mem != MAP_FAILED)
        madvise(mem, table_bytes, MADV_HUGEPAGE);   /* as table.c maps its rows */
    size_t got = 0;
    ssize_t n;
    int fd = open(path, O_RDONLY);
    if (mem == MAP_FAILED || fd < 0) bench_die("fresh read", path);
    while (got < table_bytes &&
           (n = read(fd, mem + got, table_bytes - got < (1 << 20) ? table_bytes - got : 1 << 20)) > 0)
        got += (size_t)n;
    close(fd);
    memset(mem + got, 0, table_bytes - got);
    munmap(mem, table_bytes);
    return (double)got / (now_s() - t0);
}

static void mem_rates(double *memcpy_bps, double *crc_bps)
{
    size_t n = (size_t)256 << 20;
    unsigned char *a = malloc(n), *b = malloc(n);
    double mc[REPS], cr[REPS];
    volatile uint32_t sink = 0;
    if (!a || !b) bench_die("memory", "256 MiB");
    memset(a, 1, n);
    memset(b, 2, n);
    for (int i = 0; i < REPS; i++) {
        double t0 = now_s();
        memcpy(b, a, n);
        mc[i] = (double)n / (now_s() - t0);
        t0 = now_s();
        sink += hl_crc32c(0, b, n);
        cr[i] = (double)n / (now_s() - t0);
    }
    (void)sink;
    *memcpy_bps = median(mc, REPS);
    *crc_bps = median(cr, REPS);
    free(a);
    free(b);
}

static void line(const char *bench, size_t users, double value, const char *unit,
                 double ceiling, const char *extra)
{
    printf("{\"bench\":\"%s\",\"users\":%zu,\"value\":%.4g,\"unit\":\"%s\","
           "\"ceiling\":%.4g,\"ratio\":%.3f%s}\n", bench, users, value, unit, ceiling,
           ceiling > 0 ? value / ceiling : 0.0, extra);
    fflush(stdout);
}

static const char usage[] =
    "usage: bench_snapshot [DIR]\n"
    "  DIR  where the snapshots go (default $HL_BUILD or build; removed at the end)\n"
    "Environment: HL_BENCH_USERS (default 1000000). Prints JSON lines.\n";

/* The write runs' rates (bytes/s) and worst stalls, index 0 the owner
 * writing alone (sync), 1 with a drain thread. */
typedef struct write_runs {
    double tot[REPS], steps[2][REPS], sync[REPS], nowb[REPS], raw[REPS];
    double stall[2], p99[2], cpu[2];
} write_runs;

/* The load runs' rates (bytes/s): hl_snapshot_load, a cached raw read,
 * a fresh read without and with huge pages. */
typedef struct load_runs {
    double load[REPS], cached[REPS], fresh[REPS], fresh_thp[REPS];
} load_runs;

static void worst(const write_run *r, int m, write_runs *w)
{
    if (r->stall_max_s > w->stall[m]) w->stall[m] = r->stall_max_s;
    if (r->stall_p99_s > w->p99[m]) w->p99[m] = r->stall_p99_s;
    if (r->cpu_max_s > w->cpu[m]) w->cpu[m] = r->cpu_max_s;
}

/* REPS rounds of the three writes and a raw write of the same size;
 * returns the last drain-thread run (its file is the one loaded). */
static write_run run_writes(const char *dir, hl_table *tbl, const char *raw,
                            unsigned char *buf, write_runs *w)
{
    write_run r = {0};
    hl_io no_wb = *hl_io_posix();
    no_wb.write_behind = NULL;      /* what sync_file_range buys */
    for (int i = 0; i < REPS; i++) {
        r = snapshot_once(dir, tbl, 1000 + i, 0, NULL); /* the owner writes */
        w->steps[0][i] = (double)r.bytes / r.steps_s;
        w->sync[i] = (double)r.bytes / r.total_s;
        worst(&r, 0, w);
        r = snapshot_once(dir, tbl, 1500 + i, 1, &no_wb); /* ... no write-behind */
        w->nowb[i] = (double)r.bytes / r.total_s;
        r = snapshot_once(dir, tbl, 2000 + i, 1, NULL); /* a drain thread writes */
        w->tot[i] = (double)r.bytes / r.total_s;
        w->steps[1][i] = (double)r.bytes / r.steps_s;
        worst(&r, 1, w);
        w->raw[i] = raw_write(raw, r.bytes, buf, 1 << 20);
    }
    return r;
}

static void run_loads(const write_run *r, const hl_table_opts *o, const hl_table_stats *st,
                      unsigned char *buf, load_runs *l)
{
    char err[512];
    for (int i = 0; i < REPS; i++) {
        hl_table *t = NULL;
        double t0 = now_s();
        if (hl_snapshot_load(NULL, r->path, o, BENCH_FP, &t, NULL, err, sizeof err) != 0)
            bench_die("load", err);
        l->load[i] = (double)r->bytes / (now_s() - t0);
        hl_table_destroy(t);
        l->cached[i] = raw_read(r->path, buf, 1 << 20);
        l->fresh[i] = raw_read_fresh(r->path, st->bytes > r->bytes ? st->bytes : r->bytes, 0);
        l->fresh_thp[i] = raw_read_fresh(r->path, st->bytes > r->bytes ? st->bytes : r->bytes, 1);
    }
}

static void print_lines(size_t users, const write_run *r, write_runs *w,
                        load_runs *l, double mcpy, double crc)
{
    char extra[256];
    snprintf(extra, sizeof extra, ",\"bytes\":%llu,\"fsync\":true", (unsigned long long)r->bytes);
    line("snapshot_write_sync", users, median(w->sync, REPS) / 1e9, "GB/s", median(w->raw, REPS) / 1e9, extra);
    snprintf(extra, sizeof extra, ",\"bytes\":%llu,\"fsync\":true,\"owner_gap_us\":200,"
             "\"drain_thread\":true", (unsigned long long)r->bytes);
    line("snapshot_write", users, median(w->tot, REPS) / 1e9, "GB/s", median(w->raw, REPS) / 1e9, extra);
    line("snapshot_write_no_write_behind", users, median(w->nowb, REPS) / 1e9, "GB/s",
         median(w->raw, REPS) / 1e9, extra);
    snprintf(extra, sizeof extra, ",\"bytes\":%llu", (unsigned long long)r->bytes);
    line("snapshot_steps", users, median(w->steps[1], REPS) / 1e9, "GB/s", mcpy / 1e9, extra);
    line("snapshot_steps_sync", users, median(w->steps[0], REPS) / 1e9, "GB/s", mcpy / 1e9, extra);
    snprintf(extra, sizeof extra, ",\"bytes\":%llu,\"ceiling_fresh\":%.4g,\"ratio_fresh\":%.3f,"
             "\"ceiling_fresh_thp\":%.4g", (unsigned long long)r->bytes, median(l->fresh, REPS) / 1e9,
             median(l->load, REPS) / median(l->fresh, REPS), median(l->fresh_thp, REPS) / 1e9);
    line("snapshot_load", users, median(l->load, REPS) / 1e9, "GB/s", median(l->cached, REPS) / 1e9, extra);
    for (int m = 1; m >= 0; m--)
        printf("{\"bench\":\"snapshot_stall_max%s\",\"users\":%zu,\"value\":%.3f,\"unit\":\"ms\","
               "\"p99_ms\":%.3f,\"cpu_max_ms\":%.3f,\"budget_rows\":%d,\"target\":10}\n",
               m ? "" : "_sync", users, w->stall[m] * 1e3, w->p99[m] * 1e3, w->cpu[m] * 1e3,
               HL_SNAPSHOT_STEP_ROWS);
    line("crc32c", 0, crc / 1e9, "GB/s", mcpy / 1e9, hl_crc32c_hw() ? ",\"sse42\":true" : ",\"sse42\":false");
}

int main(int argc, char **argv)
{
    bench_args("bench_snapshot", argc, argv, usage, bench_bad_dir(argc, argv));
    const char *base = argc > 1 ? argv[1] : getenv("HL_BUILD");
    const char *env_users = getenv("HL_BENCH_USERS");
    size_t users = env_users ? (size_t)atol(env_users) : 1000000;
    char dir[1024], raw[1100];
    double mcpy, crc;
    hl_table_stats st;
    unsigned char *buf = malloc(1 << 20);
    write_runs w = {0};
    load_runs l;

    snprintf(dir, sizeof dir, "%s/bench-snapshot.%d", base && *base ? base : "build",
             (int)getpid());
    if (mkdir(dir, 0755) != 0) bench_die("mkdir", dir);
    snprintf(raw, sizeof raw, "%s/raw.bin", dir);
    memset(buf, 0x5a, 1 << 20);
    hl_table_opts o = bench_table_opts(users, DIM, HISTORY);
    hl_table *tbl = bench_make_shard(&o, users);
    hl_table_stats_get(tbl, &st);

    write_run r = run_writes(dir, tbl, raw, buf, &w);
    run_loads(&r, &o, &st, buf, &l);
    mem_rates(&mcpy, &crc);
    print_lines(users, &r, &w, &l, mcpy, crc);

    unlink(raw);
    unlink(r.path);
    rmdir(dir);
    hl_table_destroy(tbl);
    free(buf);
    return 0;
}
