/* io.c - the POSIX hl_io and the loops that make write/read complete.
 *
 * Nothing here decides anything: each function is the system call it names,
 * with ctx ignored, so that swapping the table (tests/test_snapshot_write.c fails
 * the Nth call; tests/fuzz/ serves a file from memory) changes only where
 * the bytes go, never what snapshot.c does with them. */
#include "io.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int px_open(void *ctx, const char *path, int flags, int mode)
{
    return open(path, flags | O_CLOEXEC, (mode_t)mode);
}

static ssize_t px_write(void *ctx, int fd, const void *buf, size_t len)
{
    return write(fd, buf, len);
}

static ssize_t px_read(void *ctx, int fd, void *buf, size_t len)
{
    return read(fd, buf, len);
}

static int px_fsync(void *ctx, int fd)
{
    return fsync(fd);
}

static int px_close(void *ctx, int fd)
{
    return close(fd);
}

static int px_rename(void *ctx, const char *from, const char *to)
{
    return rename(from, to);
}

static int px_unlink(void *ctx, const char *path)
{
    return unlink(path);
}

static int px_list(void *ctx, const char *dir, hl_io_entry_fn fn, void *arg)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int rc = 0;

    if (d == NULL)
        return -1;
    while (rc == 0) {
        errno = 0;
        if ((de = readdir(d)) == NULL) {
            if (errno != 0) rc = -1;
            break;
        }
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        rc = fn(arg, de->d_name);
    }
    int saved = errno;
    closedir(d);
    errno = saved;
    return rc;
}

static int px_fsync_dir(void *ctx, const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

static int px_write_behind(void *ctx, int fd, off_t off, off_t len)
{
    return sync_file_range(fd, off, len, SYNC_FILE_RANGE_WRITE);
}

static off_t px_size(void *ctx, int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? st.st_size : -1;
}

static int px_file_type(void *ctx, int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? (int)(st.st_mode & S_IFMT) : -1;
}

static const hl_io posix_io = {
    .ctx = NULL,
    .open = px_open, .write = px_write, .read = px_read, .fsync = px_fsync,
    .close = px_close, .rename = px_rename, .unlink = px_unlink,
    .list = px_list, .fsync_dir = px_fsync_dir,
    .write_behind = px_write_behind, .size = px_size, .file_type = px_file_type,
};

const hl_io *hl_io_posix(void)
{
    return &posix_io;
}

int hl_io_write_all(const hl_io *io, int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = io->write(io->ctx, fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0) {
            errno = EIO;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

ssize_t hl_io_read_full(const hl_io *io, int fd, void *buf, size_t len)
{
    char *p = buf;
    size_t got = 0;
    while (got < len) {
        ssize_t n = io->read(io->ctx, fd, p + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}
