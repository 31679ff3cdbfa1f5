/* test_deadletter.c - the local dead-letter file (worker/deadletter.c): a
 * full disk leaves nothing under either name and a retry succeeds once
 * there is room; whatever sits under the record's temporary name (a
 * leftover, a FIFO, a symlink) neither stalls nor redirects the write;
 * another writer's temporary of the same record is never touched, and a
 * killed writer's is swept once provably abandoned; deadletter.max.bytes
 * bounds the directory across every thread writing it at once. */
#define T_SUITE "deadletter"
#include "test.h"

#include "deadletter.h"
#include "hl.h"
#include "tempname.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[512];

static void fresh_dir(void)
{
    const char *b = getenv("HL_BUILD");
    char cmd[600];
    if (dir[0]) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) perror("rm");
    }
    snprintf(dir, sizeof dir, "%s/dltest.XXXXXX", b && *b ? b : "/tmp");
    if (mkdtemp(dir) == NULL) perror("mkdtemp");
}

static const hl_header headers[] = {
    {"halflife.reason", "bad_enum", 8},
    {"halflife.dlq.error", "Broker: Topic authorization failed", 34},
    {NULL, NULL, 0},
};

/* Writes offset's record of value_len bytes (all 'v'); its rc. */
static int put(int64_t offset, size_t value_len, char *path, size_t path_len, char *err,
               size_t errlen)
{
    char *value = malloc(value_len);
    if (value == NULL) return HL_ENOMEM;
    memset(value, 'v', value_len);
    int rc = hl_deadletter_write(dir, "ev", 0, offset, headers, "k", 1, value, value_len,
                                 path, path_len, NULL, err, errlen);
    free(value);
    return rc;
}

/* The temporary of the record final by pid on host, into out. */
static void temp_of(char *out, size_t len, const char *final, uint64_t host, long pid)
{
    if (hl_tempname_make(out, len, final, host, pid) != 0)
        out[0] = '\0';
}

/* This process's temporary of topic "ev" partition 0 at offset in dir. */
static void own_temp(char *out, size_t len, int64_t offset)
{
    char final[1024];
    snprintf(final, sizeof final, "%s/ev.0.%020lld.dead", dir, (long long)offset);
    temp_of(out, len, final, hl_tempname_host(), getpid());
}

static int exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* A file size limit stands for a full disk (EFBIG where ENOSPC would be:
 * the same short write), so the test needs neither root nor a tmpfs. */
static void test_full_disk_leaves_nothing(void)
{
    char path[1024], err[512], final[1024], tmp[1100];
    struct rlimit old, lim;
    fresh_dir();
    snprintf(final, sizeof final, "%s/ev.0.%020d.dead", dir, 7);
    own_temp(tmp, sizeof tmp, 7);
    signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 4096;
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    int rc = put(7, 100000, path, sizeof path, err, sizeof err);
    setrlimit(RLIMIT_FSIZE, &old);
    CHECKF(rc == HL_EIO && strstr(err, tmp) && strstr(err, "too large"), "%d %s", rc, err);
    CHECK(!exists(final) && !exists(tmp));
    rc = put(7, 100000, path, sizeof path, err, sizeof err);
    CHECKF(rc == 0 && strcmp(path, final) == 0, "retry: %d %s", rc, err);
    struct stat st;
    CHECK(stat(final, &st) == 0 && st.st_size > 100000 && !exists(tmp));
}

static void hung(int sig)
{
    static const char msg[] = "FAIL: a dead-letter write hung opening its temporary file\n";
    (void)sig;
    if (write(2, msg, sizeof msg - 1) < 0) _exit(1);
    _exit(1);
}

/* The temporary name is predictable (the record's final name, host, pid),
 * so anything can be waiting there: a crash's leftover, or a FIFO or a
 * symlink planted by someone who can write snapshot.dir. The consumer
 * thread writes the file; a FIFO must not stall it, a symlink must not
 * send the record over its target. */
static void test_tmp_name_taken(void)
{
    char path[1024], err[512], tmp[1100], victim[1024];
    int64_t off = 11;
    fresh_dir();
    CHECK(mkdir(strcat(strcpy(path, dir), "/" HL_DEADLETTER_SUBDIR), 0755) == 0);
    snprintf(dir + strlen(dir), sizeof dir - strlen(dir), "/%s", HL_DEADLETTER_SUBDIR);
    signal(SIGALRM, hung);
    alarm(60);          /* only a hang reaches it: a write takes milliseconds */
    own_temp(tmp, sizeof tmp, off);
    CHECK(mkfifo(tmp, 0644) == 0);
    int rc = put(off, 1000, path, sizeof path, err, sizeof err);
    CHECKF(rc == 0 && !exists(tmp), "fifo: %d %s", rc, err);

    snprintf(victim, sizeof victim, "%s/victim", dir);
    int fd = open(victim, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0 && write(fd, "keep", 4) == 4);
    if (fd >= 0) close(fd);
    own_temp(tmp, sizeof tmp, ++off);
    CHECK(symlink(victim, tmp) == 0);
    rc = put(off, 1000, path, sizeof path, err, sizeof err);
    struct stat st;
    CHECKF(rc == 0 && stat(victim, &st) == 0 && st.st_size == 4,
           "symlink: %d %s; its target now %lld bytes", rc, err, (long long)st.st_size);
    alarm(0);
    dir[strlen(dir) - strlen("/" HL_DEADLETTER_SUBDIR)] = '\0';
}

/* Another worker on the same snapshot.dir writes the same record at once
 * (the partition's old owner still retrying after a rebalance, the new
 * owner reading the record again), on another host as pid 1 like this
 * one, or on this host. Its temporary, in flight, must be left alone:
 * named "<final>.tmp" by every writer, this write's unlink removed it (the
 * other's rename then failed) or this rename published its half. */
static void test_other_writers_temporary_left(void)
{
    char path[1024], err[512], final[1024], theirs[2][1100];
    struct stat st;
    fresh_dir();
    snprintf(final, sizeof final, "%s/ev.0.%020d.dead", dir, 5);
    temp_of(theirs[0], sizeof theirs[0], final, hl_tempname_host() ^ 1, getpid());
    temp_of(theirs[1], sizeof theirs[1], final, hl_tempname_host(), getppid());
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(theirs[i], "w");
        CHECK(f != NULL && fputs("halflife dead letter 1\nhalf", f) >= 0 && fclose(f) == 0);
        int rc = put(5, 1000, path, sizeof path, err, sizeof err);
        CHECKF(rc == 0, "%s writer: %d %s", i ? "this host's" : "another host's", rc, err);
        CHECKF(stat(theirs[i], &st) == 0 && st.st_size == 27, "%s writer's temporary %s, in "
               "flight, was %s", i ? "this host's" : "another host's", theirs[i],
               exists(theirs[i]) ? "rewritten" : "removed");
        CHECK(stat(final, &st) == 0 && st.st_size > 1000);
        CHECK(unlink(theirs[i]) == 0 && unlink(final) == 0);
    }
}

/* Writers killed mid-write leave their temporaries: counting the
 * directory removes (and leaves uncounted) those this host proves dead,
 * and leaves those of a live process here (another thread of this one
 * included) and of other hosts younger than the hour. */
static void test_abandoned_temporaries_swept(void)
{
    char final[1024], t[4][1100];
    fresh_dir();
    pid_t dead = fork();
    if (dead == 0)
        _exit(0);
    CHECK(dead > 0 && waitpid(dead, NULL, 0) == dead);
    const uint64_t here = hl_tempname_host();
    const struct { uint64_t host; long pid; int stays; const char *what; } c[4] = {
        {here, dead, 0, "this host's, its pid gone"}, {here, getpid(), 1, "this process's"},
        {here ^ 1, dead, 1, "another host's, young"}, {0, 0, 1, "old-format, young"}};
    for (int i = 0; i < 4; i++) {
        snprintf(final, sizeof final, "%s/ev.0.%020d.dead", dir, 20 + i);
        if (c[i].host != 0)
            temp_of(t[i], sizeof t[i], final, c[i].host, c[i].pid);
        else
            snprintf(t[i], sizeof t[i], "%s.tmp", final);
        FILE *f = fopen(t[i], "w");
        CHECK(f != NULL && fputs("0123456789", f) >= 0 && fclose(f) == 0);
    }
    int64_t n = hl_deadletter_dir_bytes(dir);
    CHECKF(n == 30, "counted %lld bytes, want 30 (three temporaries of 10 left)", (long long)n);
    for (int i = 0; i < 4; i++)
        CHECKF(exists(t[i]) == c[i].stays, "%s (%s) %s", t[i], c[i].what,
               c[i].stays ? "removed" : "left behind");
}

#define N_WRITERS 8
#define CAP       1000
#define REC       600              /* a record's value bytes; its file is larger */

typedef struct writer {
    hl_dlcount        *c;
    pthread_barrier_t *all_checked;
    int64_t            offset;
    int                rc;
} writer;

/* One shard thread keeping one dead letter: reserve, then (once every
 * writer has reserved: the threads checked at once) write and settle. */
static void *write_one(void *arg)
{
    writer *w = arg;
    char err[256], path[600];
    w->rc = hl_deadletter_reserve(w->c, dir, CAP, REC + 1, err, sizeof err);
    pthread_barrier_wait(w->all_checked);
    if (w->rc == 0) {
        int64_t bytes = -1;
        char *value = malloc(REC);
        memset(value, 'v', REC);
        int rc = hl_deadletter_write(dir, "ev", 0, w->offset, headers, "k", 1, value, REC,
                                     path, sizeof path, &bytes, err, sizeof err);
        hl_deadletter_settle(w->c, REC + 1, rc == 0 ? bytes : -1);
        free(value);
    }
    return NULL;
}

/* Threads that checked the cap at once each wrote a record past it: the
 * count moved only once a write had ended, so N threads held up to N
 * records over deadletter.max.bytes, not one. */
static void test_cap_bounds_threads_at_once(void)
{
    hl_dlcount c;
    pthread_t tid[N_WRITERS];
    writer w[N_WRITERS];
    pthread_barrier_t b;
    char err[256];
    fresh_dir();
    hl_deadletter_count_init(&c);
    pthread_barrier_init(&b, NULL, N_WRITERS);
    for (int i = 0; i < N_WRITERS; i++) {
        w[i] = (writer){&c, &b, i, -1};
        pthread_create(&tid[i], NULL, write_one, &w[i]);
    }
    int let_in = 0;
    for (int i = 0; i < N_WRITERS; i++) {
        pthread_join(tid[i], NULL);
        let_in += w[i].rc == 0;
    }
    pthread_barrier_destroy(&b);
    int64_t used = hl_deadletter_dir_bytes(dir), file = used / (let_in ? let_in : 1);
    CHECKF(let_in >= 1 && used < CAP + file, "%d of %d writers let in: %lld bytes for a cap "
           "of %d (one record of %lld bytes over it at most)", let_in, N_WRITERS,
           (long long)used, CAP, (long long)file);
    CHECK(hl_deadletter_reserve(&c, dir, CAP, 1, err, sizeof err) == HL_EFULL);
}

/* A write that failed gives its reservation back: the record is retried,
 * and must not find the cap taken by itself. */
static void test_failed_write_gives_back(void)
{
    hl_dlcount c;
    char err[256];
    fresh_dir();
    hl_deadletter_count_init(&c);
    CHECK(hl_deadletter_reserve(&c, dir, CAP, CAP, err, sizeof err) == 0);
    hl_deadletter_settle(&c, CAP, -1);
    CHECKF(hl_deadletter_reserve(&c, dir, CAP, CAP, err, sizeof err) == 0, "%s", err);
    hl_deadletter_settle(&c, CAP, -1);
}

int main(void)
{
    RUN(test_full_disk_leaves_nothing);
    RUN(test_tmp_name_taken);
    RUN(test_other_writers_temporary_left);
    RUN(test_abandoned_temporaries_swept);
    RUN(test_cap_bounds_threads_at_once);
    RUN(test_failed_write_gives_back);
    if (dir[0]) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) perror("rm");
    }
    TEST_EXIT();
}
