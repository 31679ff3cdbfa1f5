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
#include <unistd.h>

/* hl_persist_shard_restart_at writes the kept users' file at the new
 * topic's offset, then renames the old topic's files aside. A crash
 * between the two left both under their offsets, and a restore takes the
 * highest: the old topic's, once the new topic had grown past it (nothing
 * then looks recreated), so the new topic's events below it were skipped
 * and the rows' old applied offsets dropped more as duplicates
 * (tests/test_persist.c, restart_at_cut_before_renames). So the restart
 * first writes an intent file, <topic>.<partition>.recreating holding the
 * offset (no listing matches the name), and removes it only once every
 * old file is aside; a restore that finds it finishes the renames first
 * (hl_persist_finish_restart). */

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

/* The intent file holding offset, durable. 0 or HL_EIO with the reason. */
static int intent_write(const hl_persist *p, int32_t partition, int64_t offset,
                        char *errbuf, size_t errlen)
{
    char path[HL_SNAPSHOT_PATH_MAX], text[24];
    int n = snprintf(text, sizeof text, "%lld\n", (long long)offset), fd = -1, rc = HL_EIO;
    if (intent_path(p, partition, path, sizeof path) != 0)
        return hl_err(errbuf, errlen, HL_EINVAL, "snapshot.dir %s: path too long", p->dir);
    if ((fd = p->io->open(p->io->ctx, path, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0 ||
        hl_io_write_all(p->io, fd, text, (size_t)n) != 0 || p->io->fsync(p->io->ctx, fd) != 0)
        hl_err(errbuf, errlen, rc, "write %s: %s", path, strerror(errno));
    else
        rc = 0;
    if (fd >= 0 && p->io->close(p->io->ctx, fd) != 0 && rc == 0)
        rc = hl_err(errbuf, errlen, HL_EIO, "close %s: %s", path, strerror(errno));
    if (rc == 0 && p->io->fsync_dir(p->io->ctx, p->dir) != 0)
        rc = hl_err(errbuf, errlen, HL_EIO, "fsync %s: %s", p->dir, strerror(errno));
    return rc;
}

/* 1 and *offset when the partition's intent file is there and holds an
 * offset; -1 when it is there and holds none; 0 when there is none. */
static int intent_read(const hl_persist *p, int32_t partition, int64_t *offset)
{
    char path[HL_SNAPSHOT_PATH_MAX], text[32] = {0}, *end;
    if (intent_path(p, partition, path, sizeof path) != 0)
        return 0;
    int fd = p->io->open(p->io->ctx, path, O_RDONLY, 0);
    if (fd < 0)
        return 0;
    ssize_t n = hl_io_read_full(p->io, fd, text, sizeof text - 1);
    p->io->close(p->io->ctx, fd);
    long long v = n > 0 ? strtoll(text, &end, 10) : -1;
    if (n <= 0 || end == text || *end != '\n' || v < 0)
        return -1;
    *offset = v;
    return 1;
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

/* Before a restore: a restart the intent file shows cut short is
 * finished. With the kept users' file written, every other file is set
 * aside (the old topic's; or, should the intent outlive its restart, the
 * new topic's later ones, which that file precedes: only replayed again).
 * Without it, nothing was done but the intent (or an old file at that
 * offset set aside): the old files stay, and the restore sees the
 * recreation again. */
void hl_persist_finish_restart(hl_persist *p, int32_t partition)
{
    char why[512], path[HL_SNAPSHOT_PATH_MAX];
    int64_t offset = HL_PERSIST_NO_OFFSET;
    int n_aside = 0, r = intent_read(p, partition, &offset);
    if (r == 0)
        return;
    int kept = r > 0 && file_at(p, partition, offset, path, sizeof path);
    if (kept && hl_snapshot_set_aside(p->io, p->dir, p->topic, partition, offset,
                                      ".topic-recreated", &n_aside, why, sizeof why) != 0) {
        hl_log(HL_LOG_ERROR, "snapshots_not_set_aside", "partition=%d err=\"%s\" "
               "action=\"move the file out of snapshot.dir, or a restore takes it for the "
               "new topic's state\"", (int)partition, why);
        return;                 /* the intent stays: tried again at the next restore */
    }
    if (kept)
        hl_log(HL_LOG_WARN, "input_topic_restart_finished", "partition=%d next_offset=%lld "
               "files_aside=%d reason=\"a restart at a recreated input topic's offset was cut "
               "short before the old topic's files were set aside\"", (int)partition,
               (long long)offset, n_aside);
    intent_remove(p, partition);
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
    int n_first = 0, intent = old_at_aside(p, ps->partition, offset, &n_first, why, sizeof why);
    if (intent == 0)
        intent = intent_write(p, ps->partition, offset, why, sizeof why);
    if (intent != 0)            /* the renames below go on: the window stays open */
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
        intent_remove(p, ps->partition);
    if (aside == 0)
        return rc;
    if (rc == 0)
        return hl_err(errbuf, errlen, aside, "%s", why);
    char wrote[512];            /* both failed: both reasons */
    snprintf(wrote, sizeof wrote, "%s", errbuf);
    return hl_err(errbuf, errlen, rc, "%s; and %s", wrote, why);
}

