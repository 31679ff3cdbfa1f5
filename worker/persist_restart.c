/* persist_restart.c - a restart at a recreated input topic's offset:
 * hl_persist_shard_restart_at writes the kept users' file at the new
 * topic's offset and sets the old topic's files aside, and its intent
 * file lets a restore finish one cut short (hl_persist_finish_restart,
 * called by persist.c before every restore). The snapshots themselves
 * are persist.c's. */
#include "persist_internal.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* hl_persist_shard_restart_at writes the kept users' file at the new
 * topic's offset, then renames the old topic's files aside. A crash
 * between the two left both under their offsets, and a restore takes the
 * highest: the old topic's, once the new topic had grown past it (nothing
 * then looks recreated), so the new topic's events below it were skipped
 * and the rows' old applied offsets dropped more as duplicates
 * (tests/test_persist.c, restart_at_cut_before_renames). So the restart
 * first writes an intent file, <topic>.<partition>.recreating (no listing
 * matches the name), and removes it only once every old file is aside; a
 * restore that finds it finishes the renames first
 * (hl_persist_finish_restart).
 *
 * The intent names the files it is about:
 *     <offset>\n                  the kept users' file's
 *     old <offset> <inode>\n      one per old file, listed before the write
 *     end\n                       the list is whole
 * so a restore sets aside only those still there under their names and
 * inodes (a file the new topic wrote later at an old file's offset is
 * another inode: the old one is still held by its renamed file). An
 * intent that outlived its restart (its unlink failed) then finds none of
 * them and is dropped with a log line; before it named only the offset,
 * and a restore set aside every other file, the new topic's later
 * snapshots among them, and replayed the topic from that offset
 * (restart_intent_outlived). An intent with no "end" (written before the
 * list, or of more than INTENT_OLD_MAX files) sets aside every file but
 * its offset's, as before. */

#define INTENT_OLD_MAX  4096        /* old files an intent names */
#define INTENT_LINE_MAX 48          /* "old " + 20 digits + " " + 20 digits + "\n" */

typedef struct old_file {
    int64_t  offset;
    uint64_t ino;               /* 0: not known, the name alone decides */
} old_file;

typedef struct intent {
    int64_t   offset;           /* of the kept users' file */
    old_file *old;              /* malloc'd */
    size_t    n, cap;
    int       listed;           /* old is every old file ("end") */
} intent;

/* dir/name into path; HL_EINVAL when it does not fit. */
static int in_dir(const hl_persist *p, const char *name, char *path, size_t len)
{
    int n = snprintf(path, len, "%s/%s", p->dir, name);
    return n < 0 || (size_t)n >= len ? HL_EINVAL : 0;
}

static int intent_path(const hl_persist *p, int32_t partition, char *path, size_t len)
{
    char name[HL_SNAPSHOT_TOPIC_MAX + 32];
    snprintf(name, sizeof name, "%s.%d.recreating", p->topic, (int)partition);
    return in_dir(p, name, path, len);
}

static uint64_t inode_of(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_ino : 0;
}

/* Appends one old file; non-zero (no memory, or too many to name) ends
 * the list unfinished. */
static int add_old(intent *in, int64_t offset, uint64_t ino)
{
    if (in->n == INTENT_OLD_MAX)
        return 1;
    if (in->n == in->cap) {
        size_t cap = in->cap ? in->cap * 2 : 16;
        old_file *f = realloc(in->old, cap * sizeof *f);
        if (f == NULL)
            return 1;
        in->old = f;
        in->cap = cap;
    }
    in->old[in->n++] = (old_file){offset, ino};
    return 0;
}

/* The offset of name when it is a snapshot of the partition, else -1. */
static int64_t snapshot_offset(const hl_persist *p, int32_t partition, const char *name)
{
    hl_snapshot_meta m = {.partition = partition};
    char prefix[HL_SNAPSHOT_TOPIC_MAX + 16], want[HL_SNAPSHOT_TOPIC_MAX + 48], *end;
    int n = snprintf(prefix, sizeof prefix, "%s.%d.", p->topic, (int)partition);
    if (n < 0 || (size_t)n >= sizeof prefix || strncmp(name, prefix, (size_t)n) != 0)
        return -1;
    m.next_offset = strtoll(name + n, &end, 10);
    snprintf(m.topic, sizeof m.topic, "%s", p->topic);
    if (m.next_offset < 0 || hl_snapshot_name(&m, want, sizeof want, NULL, 0) != 0 ||
        strcmp(want, name) != 0)
        return -1;              /* a temporary file, one set aside, another's */
    return m.next_offset;
}

typedef struct listing {
    const hl_persist *p;
    int32_t           partition;
    intent           *in;
} listing;

static int list_old(void *arg, const char *name)
{
    listing *l = arg;
    char path[HL_SNAPSHOT_PATH_MAX];
    int64_t offset = snapshot_offset(l->p, l->partition, name);
    if (offset < 0 || offset == l->in->offset || in_dir(l->p, name, path, sizeof path) != 0)
        return 0;
    return add_old(l->in, offset, inode_of(path));
}

/* in: the partition's files other than the one at offset, as they are. */
static void intent_list(const hl_persist *p, int32_t partition, int64_t offset, intent *in)
{
    listing l = {p, partition, in};
    *in = (intent){.offset = offset};
    in->listed = p->io->list(p->io->ctx, p->dir, list_old, &l) == 0;
}

/* in's text, malloc'd (NULL: no memory); *len its length. */
static char *intent_text(const intent *in, size_t *len)
{
    size_t cap = (in->n + 2) * INTENT_LINE_MAX, n;
    char *text = malloc(cap);
    if (text == NULL)
        return NULL;
    n = (size_t)snprintf(text, cap, "%lld\n", (long long)in->offset);
    for (size_t i = 0; i < in->n; i++)
        n += (size_t)snprintf(text + n, cap - n, "old %lld %llu\n",
                              (long long)in->old[i].offset,
                              (unsigned long long)in->old[i].ino);
    if (in->listed)
        n += (size_t)snprintf(text + n, cap - n, "end\n");
    *len = n;
    return text;
}

/* The intent file, durable. 0 or HL_EIO with the reason. */
static int intent_write(const hl_persist *p, int32_t partition, const intent *in,
                        char *errbuf, size_t errlen)
{
    char path[HL_SNAPSHOT_PATH_MAX];
    size_t n = 0;
    int fd = -1, rc = HL_EIO;
    if (intent_path(p, partition, path, sizeof path) != 0)
        return hl_err(errbuf, errlen, HL_EINVAL, "snapshot.dir %s: path too long", p->dir);
    char *text = intent_text(in, &n);
    if (text == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "intent %s: out of memory", path);
    if ((fd = p->io->open(p->io->ctx, path, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0 ||
        hl_io_write_all(p->io, fd, text, n) != 0 || p->io->fsync(p->io->ctx, fd) != 0)
        hl_err(errbuf, errlen, rc, "write %s: %s", path, strerror(errno));
    else
        rc = 0;
    free(text);
    if (fd >= 0 && p->io->close(p->io->ctx, fd) != 0 && rc == 0)
        rc = hl_err(errbuf, errlen, HL_EIO, "close %s: %s", path, strerror(errno));
    if (rc == 0 && p->io->fsync_dir(p->io->ctx, p->dir) != 0)
        rc = hl_err(errbuf, errlen, HL_EIO, "fsync %s: %s", p->dir, strerror(errno));
    return rc;
}

/* The lines after the offset's into in; a line of neither kind leaves the
 * list unfinished (in->listed 0). */
static void intent_parse_old(char *s, intent *in)
{
    long long off;
    unsigned long long ino;
    int used;
    while (*s != '\0') {
        if (strcmp(s, "end\n") == 0) {
            in->listed = 1;
            return;
        }
        if (sscanf(s, "old %lld %llu\n%n", &off, &ino, &used) != 2 || off < 0 ||
            s[used - 1] != '\n' || add_old(in, off, ino) != 0)
            return;
        s += used;
    }
}

/* 1 and in (free in->old) when the partition's intent file is there and
 * holds an offset; -1 when it is there and holds none; 0 when there is
 * none. */
static int intent_read(const hl_persist *p, int32_t partition, intent *in)
{
    char path[HL_SNAPSHOT_PATH_MAX], *end;
    size_t cap = (INTENT_OLD_MAX + 2) * INTENT_LINE_MAX;
    *in = (intent){.offset = HL_PERSIST_NO_OFFSET};
    if (intent_path(p, partition, path, sizeof path) != 0)
        return 0;
    int fd = p->io->open(p->io->ctx, path, O_RDONLY, 0);
    if (fd < 0)
        return 0;
    char *text = calloc(1, cap + 1);
    ssize_t n = text ? hl_io_read_full(p->io, fd, text, cap) : -1;
    p->io->close(p->io->ctx, fd);
    if (text == NULL)
        return 0;               /* no memory: left for the next restore */
    long long v = n > 0 ? strtoll(text, &end, 10) : -1;
    int r = n <= 0 || end == text || *end != '\n' || v < 0 ? -1 : 1;
    if (r == 1) {
        in->offset = v;
        intent_parse_old(end + 1, in);
    }
    free(text);
    return r;
}

static int intent_remove(const hl_persist *p, int32_t partition)
{
    char path[HL_SNAPSHOT_PATH_MAX];
    if (intent_path(p, partition, path, sizeof path) != 0)
        return HL_EINVAL;
    if (p->io->unlink(p->io->ctx, path) != 0 && errno != ENOENT)
        return HL_EIO;
    return p->io->fsync_dir(p->io->ctx, p->dir) == 0 ? 0 : HL_EIO;
}

/* intent_remove, saying so when the file stays: it names its files, so a
 * restore that finds it again sets aside none of the new topic's. */
static void intent_drop(const hl_persist *p, int32_t partition)
{
    if (intent_remove(p, partition) != 0)
        hl_log(HL_LOG_WARN, "snapshot_intent_left", "partition=%d dir=%s err=\"%s\" "
               "consequence=\"the next restore finds it again and drops it when none of "
               "the old files it names is left\"", (int)partition, p->dir, strerror(errno));
}

/* 1 when the partition has a snapshot named at offset. */
static int file_at(const hl_persist *p, int32_t partition, int64_t offset, char *path,
                   size_t len)
{
    hl_snapshot_meta m = {.partition = partition, .next_offset = offset};
    char name[HL_SNAPSHOT_PATH_MAX];
    snprintf(m.topic, sizeof m.topic, "%s", p->topic);
    if (hl_snapshot_name(&m, name, sizeof name, NULL, 0) != 0 ||
        in_dir(p, name, path, len) != 0)
        return 0;
    int fd = p->io->open(p->io->ctx, path, O_RDONLY, 0);
    if (fd < 0)
        return 0;
    p->io->close(p->io->ctx, fd);
    return 1;
}

/* Sets aside the old files in names that are still there (the same
 * inode). *n_left: those found. 0, or HL_EIO naming one that stays. */
static int aside_listed(const hl_persist *p, int32_t partition, const intent *in,
                        int *n_left, int *n_aside, char *errbuf, size_t errlen)
{
    char path[HL_SNAPSHOT_PATH_MAX], to[HL_SNAPSHOT_PATH_MAX + 32];
    int rc = 0;
    *n_left = *n_aside = 0;
    for (size_t i = 0; i < in->n; i++) {
        const old_file *f = &in->old[i];
        if (!file_at(p, partition, f->offset, path, sizeof path) ||
            (f->ino != 0 && inode_of(path) != f->ino))
            continue;           /* aside already, deleted, or the new topic's */
        (*n_left)++;
        /* not over an earlier recreation's copy of the same name */
        int moved = hl_snapshot_aside_name(p->io, path, ".topic-recreated", to, sizeof to) == 0
                  ? p->io->rename(p->io->ctx, path, to) == 0 : (errno = ENAMETOOLONG, 0);
        if (moved)
            (*n_aside)++;
        else
            rc = hl_err(errbuf, errlen, HL_EIO, "snapshot: rename %s aside: %s; move it "
                        "out of %s by hand", path, strerror(errno), p->dir);
    }
    if (*n_aside > 0 && p->io->fsync_dir(p->io->ctx, p->dir) != 0)
        rc = hl_err(errbuf, errlen, HL_EIO, "snapshot: fsync directory %s: %s", p->dir,
                    strerror(errno));
    return rc;
}

/* With the kept users' file there: the old files still under their names
 * go aside (all but that file's, for an intent that does not list them).
 * *n_left: old files found; 0 for a listing intent means its restart had
 * finished. 0, or HL_EIO (logged): the intent stays for the next restore. */
static int finish_kept(hl_persist *p, int32_t partition, const intent *in, int *n_left)
{
    char why[512];
    int n_aside = 0, rc = in->listed
        ? aside_listed(p, partition, in, n_left, &n_aside, why, sizeof why)
        : hl_snapshot_set_aside(p->io, p->dir, p->topic, partition, in->offset,
                                ".topic-recreated", &n_aside, why, sizeof why);
    if (!in->listed)
        *n_left = n_aside;
    if (rc != 0)
        hl_log(HL_LOG_ERROR, "snapshots_not_set_aside", "partition=%d err=\"%s\" "
               "action=\"move the file out of snapshot.dir, or a restore takes it for the "
               "new topic's state\"", (int)partition, why);
    else if (*n_left > 0)
        hl_log(HL_LOG_WARN, "input_topic_restart_finished", "partition=%d next_offset=%lld "
               "files_aside=%d reason=\"a restart at a recreated input topic's offset was cut "
               "short before the old topic's files were set aside\"", (int)partition,
               (long long)in->offset, n_aside);
    return rc;
}

/* Before a restore: a restart the intent file shows cut short is
 * finished, with the kept users' file written. Without that file, nothing
 * was done but the intent (or an old file at that offset set aside): the
 * old files stay, and the restore sees the recreation again. An intent
 * whose old files are all gone had outlived a restart that finished
 * (its unlink failed): it is dropped, and nothing else moves. */
void hl_persist_finish_restart(hl_persist *p, int32_t partition)
{
    char path[HL_SNAPSHOT_PATH_MAX];
    intent in;
    int n_left = -1, r = intent_read(p, partition, &in);
    if (r == 0)
        return;
    int kept = r > 0 && file_at(p, partition, in.offset, path, sizeof path);
    int rc = kept ? finish_kept(p, partition, &in, &n_left) : 0;
    if (kept && rc == 0 && in.listed && n_left == 0)
        hl_log(HL_LOG_INFO, "snapshot_intent_stale", "partition=%d next_offset=%lld "
               "reason=\"a restart at a recreated input topic's offset had finished; its "
               "intent file was left behind\" action=\"removed, no file moved\"",
               (int)partition, (long long)in.offset);
    free(in.old);
    if (rc == 0)
        intent_drop(p, partition);
}


/* ---- a recreated input topic ------------------------------------------- */

/* An old file named at offset itself goes first: after the intent, a
 * restore would take it for the kept users' file. 0, or HL_EIO. */
static int old_at_aside(const hl_persist *p, int32_t partition, int64_t offset,
                        int *n_aside, char *errbuf, size_t errlen)
{
    char path[HL_SNAPSHOT_PATH_MAX], to[HL_SNAPSHOT_PATH_MAX + 32];
    if (!file_at(p, partition, offset, path, sizeof path))
        return 0;
    snprintf(to, sizeof to, "%s.topic-recreated", path);
    if (p->io->rename(p->io->ctx, path, to) != 0 || p->io->fsync_dir(p->io->ctx, p->dir) != 0)
        return hl_err(errbuf, errlen, HL_EIO, "snapshot: rename %s aside: %s; move it "
                      "out of %s by hand", path, strerror(errno), p->dir);
    (*n_aside)++;
    return 0;
}

int hl_persist_shard_restart_at(hl_persist_shard *ps, const hl_table *tbl, int64_t offset,
                                int64_t deadline_ms, int *n_aside, char *errbuf,
                                size_t errlen)
{
    hl_persist *p = ps->p;
    char why[512];
    intent in;
    int n_first = 0, noted = old_at_aside(p, ps->partition, offset, &n_first, why, sizeof why);
    intent_list(p, ps->partition, offset, &in);
    if (noted == 0)
        noted = intent_write(p, ps->partition, &in, why, sizeof why);
    free(in.old);
    if (noted != 0)            /* the renames below go on: the window stays open */
        hl_log(HL_LOG_WARN, "snapshot_intent_failed", "partition=%d err=\"%s\" "
               "consequence=\"a crash before the old files are set aside restores one\"",
               (int)ps->partition, why);
    ps->fp_changed = 1;     /* written even if a file at offset exists (an old one) */
    int rc = hl_persist_flush(ps, tbl, offset, deadline_ms, errbuf, errlen);
    /* The old topic's files go aside even when the kept users could not be
     * written: left under their offsets, one is restored as the new
     * topic's state once the new topic grows past it (nothing then looks
     * wrong), every new event below it dropped as applied; and one below
     * offset is a fallback a restore takes when the newer files are
     * damaged. The users are then in memory only, until the shard's next
     * snapshot (the renamed files hold them for the operator). */
    int aside = hl_snapshot_set_aside(p->io, p->dir, p->topic, ps->partition,
                                      rc == 0 ? offset : HL_PERSIST_NO_OFFSET,
                                      ".topic-recreated", n_aside, why, sizeof why);
    *n_aside += n_first;
    /* Kept when a rename failed: the next restore tries it again. */
    if (aside == 0)
        intent_drop(p, ps->partition);
    if (aside == 0)
        return rc;
    if (rc == 0)
        return hl_err(errbuf, errlen, aside, "%s", why);
    char wrote[512];            /* both failed: both reasons */
    snprintf(wrote, sizeof wrote, "%s", errbuf);
    return hl_err(errbuf, errlen, rc, "%s; and %s", wrote, why);
}

