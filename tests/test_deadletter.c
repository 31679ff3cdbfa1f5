/* test_deadletter.c - the local dead-letter file (worker/deadletter.c): a
 * full disk leaves nothing under either name and a retry succeeds once
 * there is room; whatever sits under the record's temporary name (a
 * leftover, a FIFO, a symlink) neither stalls nor redirects the write. */
#define T_SUITE "deadletter"
#include "test.h"

#include "deadletter.h"
#include "hl.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
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
    snprintf(tmp, sizeof tmp, "%s.tmp", final);
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

/* The temporary name is predictable (the record's final name + ".tmp"),
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
    snprintf(tmp, sizeof tmp, "%s/ev.0.%020lld.dead.tmp", dir, (long long)off);
    CHECK(mkfifo(tmp, 0644) == 0);
    int rc = put(off, 1000, path, sizeof path, err, sizeof err);
    CHECKF(rc == 0 && !exists(tmp), "fifo: %d %s", rc, err);

    snprintf(victim, sizeof victim, "%s/victim", dir);
    int fd = open(victim, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0 && write(fd, "keep", 4) == 4);
    if (fd >= 0) close(fd);
    snprintf(tmp, sizeof tmp, "%s/ev.0.%020lld.dead.tmp", dir, (long long)++off);
    CHECK(symlink(victim, tmp) == 0);
    rc = put(off, 1000, path, sizeof path, err, sizeof err);
    struct stat st;
    CHECKF(rc == 0 && stat(victim, &st) == 0 && st.st_size == 4,
           "symlink: %d %s; its target now %lld bytes", rc, err, (long long)st.st_size);
    alarm(0);
    dir[strlen(dir) - strlen("/" HL_DEADLETTER_SUBDIR)] = '\0';
}

int main(void)
{
    RUN(test_full_disk_leaves_nothing);
    RUN(test_tmp_name_taken);
    if (dir[0]) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) perror("rm");
    }
    TEST_EXIT();
}
