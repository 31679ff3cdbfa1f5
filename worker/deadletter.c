/* deadletter.c - a bad record that the dead-letter topic did not take,
 * kept on local disk (the format is in deadletter.h).
 *
 * The caller holds the record's input offset back until this returns 0,
 * so the write must be durable before it returns: temporary name, fsync,
 * rename, directory fsync (the scheme snapshots use). A failure leaves no
 * file under the final name; the caller retries later. */
#include "deadletter.h"
#include "io.h"
#include "tempname.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A temporary of another worker (or of an older build) left unchanged this
 * long is a crash's: a dead letter is written in well under a second. */
#define TEMP_STALE_S 3600

/* The text head of the file into buf; its length, or -1 if it does not fit. */
static int format_head(char *buf, size_t cap, const hl_header *headers,
                       size_t key_len, size_t value_len)
{
    size_t n = 0;
    int w = snprintf(buf, cap, "halflife dead letter 1\n");
    for (int i = 0; w >= 0 && (n += (size_t)w) < cap && headers[i].name; i++)
        w = snprintf(buf + n, cap - n, "%s: %.*s\n", headers[i].name,
                     (int)headers[i].len, (const char *)headers[i].value);
    if (w < 0 || n >= cap)
        return -1;
    w = snprintf(buf + n, cap - n, "key.bytes: %zu\nvalue.bytes: %zu\n\n", key_len, value_len);
    if (w < 0 || (n += (size_t)w) >= cap)
        return -1;
    return (int)n;
}

/* dir, made durable in its parent when this call creates it. */
static int make_dir(const hl_io *io, const char *dir)
{
    char parent[PATH_MAX];
    if (mkdir(dir, 0755) != 0)
        return errno == EEXIST ? 0 : -1;
    snprintf(parent, sizeof parent, "%s", dir);
    char *slash = strrchr(parent, '/');
    if (slash == NULL)
        snprintf(parent, sizeof parent, ".");
    else if (slash == parent)
        slash[1] = '\0';
    else
        *slash = '\0';
    return io->fsync_dir(io->ctx, parent);
}

/* The temporary name is predictable, so whatever is there goes first: a
 * leftover of a process of this host and pid (gone: only one thread
 * writes a partition's records), or a FIFO (opening it would block this
 * consumer thread for good) or a symlink (the record would go over its
 * target) put there by anyone who can write the directory. O_EXCL then
 * creates a new regular file or fails; it never follows a symlink. */
static int write_file(const hl_io *io, const char *tmp, const char *head, size_t head_len,
                      const void *key, size_t key_len, const void *value, size_t value_len)
{
    io->unlink(io->ctx, tmp);      /* ENOENT as a rule; any other, O_EXCL reports */
    int fd = io->open(io->ctx, tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0)
        return -1;
    int rc = hl_io_write_all(io, fd, head, head_len);
    if (rc == 0 && key_len > 0)
        rc = hl_io_write_all(io, fd, key, key_len);
    if (rc == 0 && value_len > 0)
        rc = hl_io_write_all(io, fd, value, value_len);
    if (rc == 0)
        rc = io->fsync(io->ctx, fd);
    int saved = errno;
    if (io->close(io->ctx, fd) != 0 && rc == 0)
        return -1;
    errno = saved;
    return rc;
}

int hl_deadletter_write(const char *dir, const char *topic, int32_t partition,
                        int64_t offset, const hl_header *headers,
                        const void *key, size_t key_len,
                        const void *value, size_t value_len,
                        char *path, size_t path_len, int64_t *bytes,
                        char *errbuf, size_t errlen)
{
    const hl_io *io = hl_io_posix();
    char final[PATH_MAX], tmp[PATH_MAX + 40], head[4096];
    int head_len = format_head(head, sizeof head, headers, key_len, value_len);
    if (head_len < 0)
        return hl_err(errbuf, errlen, HL_EINVAL, "dead letter %s/%d/%lld: headers too long",
                      topic, (int)partition, (long long)offset);
    if (snprintf(final, sizeof final, "%s/%s.%d.%020lld.dead", dir, topic, (int)partition,
                 (long long)offset) >= (int)sizeof final)
        return hl_err(errbuf, errlen, HL_EINVAL, "dead letter: path too long in %s", dir);
    /* Not "<final>.tmp": two workers on one snapshot.dir write the same
     * record at once (the partition's old owner, its offsets held, still
     * retrying after a rebalance; the new owner reading the record again),
     * and one's unlink removed the other's file in flight, or its rename
     * published the other's half-written one, torn for good if that
     * worker was then stopped. */
    if (hl_tempname_make(tmp, sizeof tmp, final, hl_tempname_host(), (long)getpid()) != 0)
        return hl_err(errbuf, errlen, HL_EINVAL, "dead letter: path too long in %s", dir);
    if (make_dir(io, dir) != 0)
        return hl_err(errbuf, errlen, HL_EIO, "dead letter: mkdir %s: %s", dir, strerror(errno));
    if (write_file(io, tmp, head, (size_t)head_len, key, key_len, value, value_len) != 0) {
        hl_err(errbuf, errlen, HL_EIO, "dead letter %s: %s", tmp, strerror(errno));
        io->unlink(io->ctx, tmp);
        return HL_EIO;
    }
    if (io->rename(io->ctx, tmp, final) != 0 || io->fsync_dir(io->ctx, dir) != 0) {
        hl_err(errbuf, errlen, HL_EIO, "dead letter %s: publish: %s", final, strerror(errno));
        io->unlink(io->ctx, tmp);
        return HL_EIO;
    }
    if (path != NULL)
        snprintf(path, path_len, "%s", final);
    if (bytes != NULL)
        *bytes = (int64_t)((size_t)head_len + key_len + value_len);
    return 0;
}

/* 1 when name is a dead letter's temporary that hl_tempname_abandoned
 * proves abandoned, and it is removed: "<final>.<host>.<pid>.tmp", or "<final>.tmp" as
 * builds before 2026-12-07 named it (host 0: only its age tells). This
 * process's own are never removed here: another of its threads may be
 * writing one, and a failed write removes its own; after a restart they
 * are another host's (a new pid namespace) and go after the hour. */
static int abandoned(const char *dir, const char *name, uint64_t own, time_t now)
{
    const char *at = strstr(name, ".dead.");
    uint64_t host = 0;
    long pid = 0;
    char path[PATH_MAX];
    if (at == NULL || (strcmp(at, ".dead.tmp") != 0 &&
                       hl_tempname_parse(at + strlen(".dead."), &host, &pid) != 0))
        return 0;
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return 0;
    return hl_tempname_abandoned(path, host, pid, own, 0, TEMP_STALE_S, now) &&
           unlink(path) == 0;
}

int64_t hl_deadletter_dir_bytes(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return errno == ENOENT ? 0 : -1;
    int64_t sum = 0;
    struct dirent *e;
    struct stat st;
    uint64_t own = hl_tempname_host();
    time_t now = time(NULL);
    while ((e = readdir(d)) != NULL)
        if (!abandoned(dir, e->d_name, own, now) &&
            fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
            sum += (int64_t)st.st_size;
    closedir(d);
    return sum;
}

void hl_deadletter_count_init(hl_dlcount *c)
{
    atomic_init(&c->files, -1);
    atomic_init(&c->pending, 0);
}

/* A refusal (used at or over cap, n past it) or not. */
static int at_cap(int64_t used, int64_t cap, int64_t n)
{
    return used >= cap && used > cap - n;
}

/* files + pending, never less than the bytes they stand for: pending is
 * read first, and settle adds to files before it takes from pending, so a
 * settle in between is counted twice at worst, never missed. */
static int64_t used_now(hl_dlcount *c, int64_t *pending)
{
    *pending = atomic_load(&c->pending);
    int64_t files = atomic_load(&c->files);
    return files < 0 ? -1 : files + *pending;
}

/* files from a scan of dir, unless a settle added to them meanwhile (its
 * file may have been renamed after the scan went by: the scan's count
 * would miss it; the caller then judges by the count it has). */
static void rescan(hl_dlcount *c, const char *dir)
{
    long long before = atomic_load(&c->files);
    int64_t scan = hl_deadletter_dir_bytes(dir);
    atomic_compare_exchange_strong(&c->files, &before, scan);
}

/* The check and the reservation are one step (a compare-and-swap on
 * pending): threads that checked at once, each seeing the other's bytes
 * not written yet, each let a record in, N records over the cap with N
 * threads. The count of files is made by a scan the first time, kept up
 * by each settle, and made again whenever the cap seems reached (this
 * process's temporaries are counted then as well as reserved: too much,
 * never too little, until the next scan). A directory that cannot be read
 * is left to the write to report. */
int hl_deadletter_reserve(hl_dlcount *c, const char *dir, int64_t cap, int64_t n,
                          char *errbuf, size_t errlen)
{
    int scanned = 0;
    long long pending;                  /* the atomic's own type: clang checks it */
    for (;;) {
        int64_t p, used = used_now(c, &p);
        if ((used < 0 || at_cap(used, cap, n)) && !scanned && cap > 0) {
            rescan(c, dir);
            scanned = 1;
            continue;
        }
        if (cap > 0 && used >= 0 && at_cap(used, cap, n))
            return hl_err(errbuf, errlen, HL_EFULL, "%s holds %lld bytes (with writes in "
                          "progress), at deadletter.max.bytes=%lld: move its files out (or "
                          "raise the cap and restart) to let this partition move on", dir,
                          (long long)used, (long long)cap);
        pending = p;
        if (atomic_compare_exchange_weak(&c->pending, &pending, pending + n))
            return 0;
    }
}

void hl_deadletter_settle(hl_dlcount *c, int64_t n, int64_t written)
{
    long long files = atomic_load(&c->files);
    while (written > 0 && files >= 0 &&
           !atomic_compare_exchange_weak(&c->files, &files, files + written))
        ;
    atomic_fetch_sub(&c->pending, n);
}
