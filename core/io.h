/* io.h - the file system calls snapshot code makes, as a table of functions.
 *
 * Everything snapshot.c does to files goes through an hl_io, so tests can
 * fail the Nth write, fsync or rename (SQLite's aSyscall[] in os_unix.c
 * exists for the same reason) and the fuzzer can feed a file from memory.
 * hl_io_posix() is the real thing. Every function takes the table's ctx
 * first; the rest mirrors POSIX: -1 (or a short count) with errno set on
 * failure. */
#ifndef HL_IO_H
#define HL_IO_H

#include <stddef.h>
#include <sys/types.h>

/* Called once per directory entry name (not "." or ".."); a non-zero return
 * stops the listing and becomes list()'s return value. */
typedef int (*hl_io_entry_fn)(void *arg, const char *name);

typedef struct hl_io {
    void   *ctx;
    int     (*open)(void *ctx, const char *path, int flags, int mode);
    ssize_t (*write)(void *ctx, int fd, const void *buf, size_t len);
    ssize_t (*read)(void *ctx, int fd, void *buf, size_t len);
    int     (*fsync)(void *ctx, int fd);
    int     (*close)(void *ctx, int fd);
    int     (*rename)(void *ctx, const char *from, const char *to);
    int     (*unlink)(void *ctx, const char *path);
    /* Calls fn for each entry of dir; 0, -1 with errno, or fn's non-zero. */
    int     (*list)(void *ctx, const char *dir, hl_io_entry_fn fn, void *arg);
    /* Makes a rename inside dir durable (open the directory, fsync it). */
    int     (*fsync_dir)(void *ctx, const char *dir);
    /* Optional, NULL means "not available"; both are hints, never needed
     * for correctness, so a test table that leaves them out still works.
     * write_behind starts writeback of [off, off + len) of fd without
     * waiting for it (sync_file_range WRITE), so the final fsync has
     * little left to do; size is fd's file size or -1 (fstat), which a
     * load uses to size the table's index once. */
    int     (*write_behind)(void *ctx, int fd, off_t off, off_t len);
    off_t   (*size)(void *ctx, int fd);
    /* Optional: fd's file type (st_mode & S_IFMT, fstat) or -1. A reader
     * refuses anything but a regular file with it; NULL (a test table,
     * the fuzzer's memory file) takes every file as regular. */
    int     (*file_type)(void *ctx, int fd);
} hl_io;

/* The POSIX instance (ctx NULL); a static const table, never NULL. */
const hl_io *hl_io_posix(void);

/* write() until len bytes are out, retrying on EINTR and short writes.
 * 0 or -1 with errno set (EIO for a write that returned 0). */
int hl_io_write_all(const hl_io *io, int fd, const void *buf, size_t len);

/* read() until len bytes are in or end of file, retrying on EINTR.
 * Returns the bytes read (< len only at end of file) or -1 with errno. */
ssize_t hl_io_read_full(const hl_io *io, int fd, void *buf, size_t len);

#endif
