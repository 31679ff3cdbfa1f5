/* snapshot.c - write a shard's table to a file in steps; name and retain
 * the files. Reading is in snapshot_load.c, the bytes in schemas/snapshot.md.
 *
 * The central invariant is the one DESIGN.md section 2 rests on: a snapshot
 * whose header says next_offset = N, loaded and followed by a replay of the
 * input from N, gives exactly the state of the run that never stopped.
 * hl_snapshot_begin() is called when every event below N is applied; the
 * steps then copy rows while the owner keeps applying events >= N between
 * them. A row copied before such an event lacks it, and the replay from N
 * supplies it; a row copied after it already holds it, and carries it in
 * last_offset, so the replay skips it (hl_table_apply's idempotence). So
 * the copy may be fuzzy in time and still exact after replay, and the owner
 * is never stalled for more than one step (HL_SNAPSHOT_STEP_ROWS rows).
 *
 * Two corners of that scheme. The shard-wide meta (newest_ts_ms, the LRU
 * counter, the sweep cursor) is taken when the last row is out and stored
 * in the trailer, not the header, so it is never older than a row it
 * covers; so is the row count. A user evicted after its row was copied and
 * inserted again at a higher row id appears twice; the loader keeps the
 * first copy and counts the second (n_dup_rows): the replay from N then
 * re-applies the events of the second life on top of the first, which only
 * an eviction could tell apart.
 *
 * Files are written to a temporary name of their own (tmp_path), fsynced,
 * renamed and the directory fsynced (Redis's rdbSave() scheme), so a crash
 * leaves the old snapshot or the new one, never a torn one under a final
 * name. All file access goes
 * through an hl_io so tests can fail any call. Nothing here reads the
 * table after the last step, so commit may run on another thread, and with
 * hl_snapshot_async() so may the writes themselves. */
#include "snapshot_format.h"

#include "crc32c.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

/* ---- names -------------------------------------------------------------- */

int hl_snapshot_topic_ok(const char *t)
{
    size_t n = strnlen(t, HL_SNAPSHOT_TOPIC_MAX + 1);
    if (n == 0 || n > HL_SNAPSHOT_TOPIC_MAX || !strcmp(t, ".") || !strcmp(t, ".."))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = t[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

int hl_snapshot_name(const hl_snapshot_meta *meta, char *name, size_t len,
                     char *errbuf, size_t errlen)
{
    if (!hl_snapshot_topic_ok(meta->topic))
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "snapshot: topic '%.*s' is not 1..%d of [A-Za-z0-9._-]",
                      HL_SNAPSHOT_TOPIC_MAX, meta->topic, HL_SNAPSHOT_TOPIC_MAX);
    if (meta->partition < 0 || meta->next_offset < 0)
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "snapshot: partition %d / next offset %lld must be >= 0",
                      (int)meta->partition, (long long)meta->next_offset);
    /* Zero-padded so names sort like offsets. */
    int n = snprintf(name, len, "%s.%d.%020lld.hls", meta->topic,
                     (int)meta->partition, (long long)meta->next_offset);
    if (n < 0 || (size_t)n >= len)
        return hl_err(errbuf, errlen, HL_EINVAL, "snapshot: name too long");
    return 0;
}

typedef struct file_list {
    const char       *prefix;      /* "<topic>.<partition>." */
    size_t            prefix_len;
    hl_snapshot_file *f;
    size_t            n, cap;
} file_list;

/* 1 if s is TMP_TOKEN_LEN lower-case hex digits then ".tmp". */
static int tmp_token_tail(const char *s)
{
    for (int i = 0; i < TMP_TOKEN_LEN; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return strcmp(s + TMP_TOKEN_LEN, ".tmp") == 0;
}

/* Parses "<20 digits>.hls" or a temporary "<20 digits>.hls.<token>.tmp"
 * after the prefix ("<20 digits>.hls.tmp" too: what builds before the
 * token left, so retention still removes it). The prefix ends in the
 * partition and a dot, and digits follow at once, so a topic that itself
 * ends in ".<digits>" never matches another's files. */
static int parse_tail(const char *s, int64_t *offset, int *tmp)
{
    uint64_t v = 0;
    for (int i = 0; i < 20; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
        if (v > (uint64_t)INT64_MAX)
            return -1;
    }
    *offset = (int64_t)v;
    if (!strcmp(s + 20, ".hls")) { *tmp = 0; return 0; }
    if (!strcmp(s + 20, ".hls.tmp") ||
        (!strncmp(s + 20, ".hls.", 5) && tmp_token_tail(s + 25))) { *tmp = 1; return 0; }
    return -1;
}

static int list_entry(void *arg, const char *name)
{
    file_list *l = arg;
    hl_snapshot_file f;

    if (strncmp(name, l->prefix, l->prefix_len) != 0 ||
        strlen(name) >= sizeof f.name ||
        parse_tail(name + l->prefix_len, &f.offset, &f.tmp) != 0)
        return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        hl_snapshot_file *nf = realloc(l->f, cap * sizeof *nf);
        if (nf == NULL) {
            errno = ENOMEM;
            return -1;
        }
        l->f = nf;
        l->cap = cap;
    }
    strcpy(f.name, name);
    l->f[l->n++] = f;
    return 0;
}

static int newest_first(const void *a, const void *b)
{
    const hl_snapshot_file *x = a, *y = b;
    return x->offset < y->offset ? 1 : x->offset > y->offset ? -1 : 0;
}

int hl_snapshot_list(const hl_io *io, const char *dir, const char *topic,
                     int32_t partition, hl_snapshot_file **files, size_t *n,
                     char *errbuf, size_t errlen)
{
    char prefix[HL_SNAPSHOT_TOPIC_MAX + 16];
    file_list l = {.prefix = prefix};

    *files = NULL;
    *n = 0;
    snprintf(prefix, sizeof prefix, "%s.%d.", topic, (int)partition);
    l.prefix_len = strlen(prefix);
    if (io->list(io->ctx, dir, list_entry, &l) != 0) {
        int e = errno;
        free(l.f);
        return hl_err(errbuf, errlen, e == ENOENT ? HL_ENOENT : HL_EIO,
                      "snapshot: list %s: %s", dir, strerror(e));
    }
    if (l.n > 1)
        qsort(l.f, l.n, sizeof *l.f, newest_first);
    *files = l.f;
    *n = l.n;
    return 0;
}

int hl_snapshot_join(char *out, size_t len, const char *dir, const char *name)
{
    int n = snprintf(out, len, "%s/%s", dir, name);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

/* ---- writing ------------------------------------------------------------ */

/* Rows are serialised into a ring of N_BUFS buffers. The filler (step, on
 * the owner thread) takes buffer `filled % N_BUFS`; a full one is published
 * by a release-store of `filled`, and the drainer writes buffers
 * [drained, filled) in order and publishes each by a release-store of
 * `drained`. Without hl_snapshot_async() the filler drains inline, so
 * only one buffer is ever in use; with it, another thread drains and a
 * step that finds the ring full stops early instead of waiting for the
 * disk. */
#define N_BUFS 4

struct hl_snapshot_writer {
    const hl_io     *io;
    int              fd;
    int              done;          /* every row is in a buffer or the file */
    int              async;         /* another thread drains */
    int              n_heads, dim, history;
    size_t           max_row;
    uint32_t         next_row;      /* first row id not yet examined */
    uint64_t         n_rows;
    unsigned char   *bufs[N_BUFS];
    size_t           lens[N_BUFS];  /* of published buffers */
    size_t           cap;           /* bytes per buffer */
    unsigned char   *buf;           /* the buffer being filled, bufs[filled % N_BUFS] */
    size_t           len;
    _Atomic uint64_t filled, drained;
    _Atomic int      io_rc;         /* the drainer's first failure */
    char             io_err[512];   /* ... its reason, written before io_rc */
    uint64_t         bytes;         /* drainer only: written so far */
    uint32_t         crc;           /* drainer only: of the bytes written */
    hl_snapshot_meta meta;
    char             dir[HL_SNAPSHOT_PATH_MAX];
    char             path[HL_SNAPSHOT_PATH_MAX];
    char             tmp[HL_SNAPSHOT_PATH_MAX];
};

/* Writes the published buffers. One drainer at a time. Returns how many
 * it wrote or the first failure (which also sticks in io_rc). */
static int drain(hl_snapshot_writer *w)
{
    uint64_t d = atomic_load_explicit(&w->drained, memory_order_relaxed);
    uint64_t f = atomic_load_explicit(&w->filled, memory_order_acquire);
    int rc = atomic_load_explicit(&w->io_rc, memory_order_acquire), n = 0;

    if (rc != 0)
        return rc;
    for (; d < f; d++, n++) {
        const unsigned char *b = w->bufs[d % N_BUFS];
        size_t len = w->lens[d % N_BUFS];
        w->crc = hl_crc32c(w->crc, b, len);
        if (hl_io_write_all(w->io, w->fd, b, len) != 0) {
            rc = hl_err(w->io_err, sizeof w->io_err, HL_EIO, "snapshot: write %s: %s",
                        w->tmp, strerror(errno));
            atomic_store_explicit(&w->io_rc, rc, memory_order_release);
            return rc;
        }
        /* Writeback of this piece starts now, while the next ones are
         * made, rather than all of it in the final fsync; a hint, so its
         * failure is ignored (fsync still reports any real one). */
        if (w->io->write_behind != NULL)
            w->io->write_behind(w->io->ctx, w->fd, (off_t)w->bytes, (off_t)len);
        w->bytes += len;
        atomic_store_explicit(&w->drained, d + 1, memory_order_release);
    }
    return n;
}

static int io_failed(hl_snapshot_writer *w, char *errbuf, size_t errlen)
{
    int rc = atomic_load_explicit(&w->io_rc, memory_order_acquire);
    if (rc != 0)
        hl_err(errbuf, errlen, rc, "%s", w->io_err);
    return rc;
}

/* Hands the current buffer to the drainer and moves to the next one.
 * Returns 0, 1 when the ring is full (async only: try again later), or
 * the drainer's failure. */
static int publish_buf(hl_snapshot_writer *w, char *errbuf, size_t errlen)
{
    uint64_t f = atomic_load_explicit(&w->filled, memory_order_relaxed);
    uint64_t d = atomic_load_explicit(&w->drained, memory_order_acquire);
    if (w->len == 0)
        return 0;
    if (f + 1 - d >= N_BUFS)     /* the next buffer is still being written */
        return io_failed(w, errbuf, errlen) ? HL_EIO : 1;
    w->lens[f % N_BUFS] = w->len;
    atomic_store_explicit(&w->filled, f + 1, memory_order_release);
    w->buf = w->bufs[(f + 1) % N_BUFS];
    w->len = 0;
    if (!w->async)
        drain(w);
    return io_failed(w, errbuf, errlen);
}

/* Room for need more bytes in the current buffer: 0, 1 if the ring is full
 * (async), or a failure. */
static int make_room(hl_snapshot_writer *w, size_t need, char *errbuf, size_t errlen)
{
    return w->cap - w->len >= need ? 0 : publish_buf(w, errbuf, errlen);
}

static size_t put_header(hl_snapshot_writer *w, const hl_table_opts *o)
{
    unsigned char *p = w->buf;
    size_t topic_len = strlen(w->meta.topic);   /* <= 249, checked by the name */

    memcpy(p, hl_snapshot_magic, sizeof hl_snapshot_magic);
    p = put_u32(p + sizeof hl_snapshot_magic, HL_SNAPSHOT_VERSION);
    p = put_u16(p, (uint16_t)topic_len);
    memcpy(p, w->meta.topic, topic_len);
    p = put_u32(p + topic_len, (uint32_t)w->meta.partition);
    p = put_u64(p, (uint64_t)w->meta.next_offset);
    p = put_u64(p, w->meta.model_fingerprint);
    p = put_u32(p, (uint32_t)o->decay.dim);
    p = put_u32(p, (uint32_t)o->decay.n_heads);
    for (int h = 0; h < o->decay.n_heads; h++)
        p = put_f64(p, o->decay.half_life_ms[h]);
    p = put_u32(p, (uint32_t)o->history);
    p = put_u64(p, (uint64_t)w->meta.changelog_offset);
    p = put_u64(p, (uint64_t)w->meta.changelog_epoch);
    return (size_t)(p - w->buf);
}

/* A history field of v's ring, oldest first: at most two pieces of the
 * ring, each a plain copy on little-endian hosts. */
static unsigned char *put_ring(unsigned char *p, const void *ring, size_t size,
                               const hl_row_view *v)
{
    const unsigned char *base = ring;
#ifdef NATIVE_LE
    size_t n = (size_t)v->n_hist, head = (size_t)v->hist_head;
    size_t first = n < (size_t)v->history - head ? n : (size_t)v->history - head;
    memcpy(p, base + head * size, first * size);
    memcpy(p + first * size, base, (n - first) * size);
    return p + n * size;
#else
    for (int i = 0; i < v->n_hist; i++) {
        const unsigned char *e = base + (size_t)hl_row_hist_index(v, i) * size;
        uint64_t x = size == 8 ? *(const uint64_t *)e : size == 4 ? *(const uint32_t *)e : *e;
        for (size_t b = 0; b < size; b++) *p++ = (unsigned char)(x >> (8 * b));
    }
    return p;
#endif
}

/* One row as schemas/snapshot.md lays it out; history oldest first. The
 * changelog (worker/changelog.c) sends rows in this same layout, so a
 * change of the row format reaches both. */
size_t hl_snapshot_row_encode(unsigned char *start, int n_heads, int dim,
                              uint32_t row, const hl_row_view *v)
{
    unsigned char *p = put_u16(start, (uint16_t)v->user_len);
    size_t n_s = (size_t)n_heads * (size_t)dim;

    memcpy(p, v->user, v->user_len);
    p = put_u32(p + v->user_len, row);
    p = put_u64(p, (uint64_t)v->t_ref_ms);
    p = put_u64(p, (uint64_t)v->last_offset);
    p = put_u64(p, v->active_seq);
    p = put_u16(p, (uint16_t)v->n_hist);
    p = put_f32s(p, v->m, (size_t)n_heads);
    p = put_f32s(p, v->s, n_s);
    p = put_ring(p, v->hist_item, 4, v);
    p = put_ring(p, v->hist_ts_ms, 8, v);
    p = put_ring(p, v->hist_type, 1, v);
    p = put_ring(p, v->hist_key, 8, v);
    p = put_ring(p, v->hist_w, 4, v);
    return (size_t)(p - start);
}

size_t hl_snapshot_row_max(int n_heads, int dim, int history)
{
    return row_max(n_heads, dim, history);
}

static size_t put_row(unsigned char *start, const hl_snapshot_writer *w,
                      uint32_t row, const hl_row_view *v)
{
    return hl_snapshot_row_encode(start, w->n_heads, w->dim, row, v);
}

/* A value no other writer picks: the temporary file's name must be this
 * writer's alone (see tmp_path). getrandom() is a few hundred ns, once per
 * snapshot; if it fails, pid, address and a process-wide count still
 * differ between the writers of one process (core/ reads no clock). */
static uint64_t tmp_token(const void *w)
{
    static _Atomic uint64_t n_writers;
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, GRND_NONBLOCK) != (ssize_t)sizeof v)
        v = ((uint64_t)getpid() << 40) ^ (uint64_t)(uintptr_t)w ^
            (atomic_fetch_add(&n_writers, 1) * 0x9e3779b97f4a7c15ull);
    return v;
}

/* The final path plus ".<token>.tmp". A fixed "<final>.tmp" was shared by
 * every writer of the shard and offset: a second one (two workers on one
 * snapshot.dir, a zombie owner after a rebalance) truncated the first's
 * file, whose rename then published a torn mix; and whatever sat under
 * the name was opened as is, so a FIFO stalled the owner thread and a
 * symlink sent the bytes to its target. A fresh name opened O_EXCL (which
 * never follows a symlink) is a new regular file or an error. */
static int tmp_path(hl_snapshot_writer *w)
{
    int n = snprintf(w->tmp, sizeof w->tmp, "%s.%0*llx.tmp", w->path, TMP_TOKEN_LEN,
                     (unsigned long long)tmp_token(w));
    return n < 0 || (size_t)n >= sizeof w->tmp ? -1 : 0;
}

static int writer_init(hl_snapshot_writer *w, const hl_io *io, const char *dir,
                       const hl_snapshot_meta *meta, const hl_table_opts *o,
                       char *errbuf, size_t errlen)
{
    char name[HL_SNAPSHOT_TOPIC_MAX + 48];
    int rc;

    w->io = io;
    w->fd = -1;
    w->meta = *meta;
    w->n_heads = o->decay.n_heads;
    w->dim = o->decay.dim;
    w->history = o->history;
    if ((rc = hl_snapshot_name(meta, name, sizeof name, errbuf, errlen)) != 0)
        return rc;
    if (w->dim > HL_SNAPSHOT_MAX_DIM || w->history > 65535)
        return hl_err(errbuf, errlen, HL_EINVAL, "snapshot: dim %d / history %d beyond "
                      "what the format holds", w->dim, w->history);
    if (snprintf(w->dir, sizeof w->dir, "%s", dir) >= (int)sizeof w->dir ||
        hl_snapshot_join(w->path, sizeof w->path, dir, name) != 0 ||
        tmp_path(w) != 0)
        return hl_err(errbuf, errlen, HL_EINVAL, "snapshot: path too long: %s", dir);
    w->max_row = row_max(w->n_heads, w->dim, w->history);
    w->cap = 2 * w->max_row > BUF_MIN ? 2 * w->max_row : BUF_MIN;
    for (int i = 0; i < N_BUFS; i++)
        if ((w->bufs[i] = malloc(w->cap)) == NULL)
            return hl_err(errbuf, errlen, HL_ENOMEM, "snapshot: no memory for %zu bytes",
                          w->cap);
    w->buf = w->bufs[0];
    return 0;
}

int hl_snapshot_begin(const hl_io *io, const char *dir,
                      const hl_snapshot_meta *meta, const hl_table *tbl,
                      hl_snapshot_writer **wp, char *errbuf, size_t errlen)
{
    const hl_table_opts *o = hl_table_opts_get(tbl);
    hl_snapshot_writer *w;
    int rc;

    *wp = NULL;
    io = io_or_posix(io);
    if ((w = calloc(1, sizeof *w)) == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "snapshot: no memory");
    if ((rc = writer_init(w, io, dir, meta, o, errbuf, errlen)) != 0)
        goto fail;
    w->fd = io->open(io->ctx, w->tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (w->fd < 0) {
        rc = hl_err(errbuf, errlen, HL_EIO, "snapshot: open %s: %s", w->tmp,
                    strerror(errno));
        goto fail;
    }
    w->len = put_header(w, o);
    *wp = w;
    return 0;
fail:
    for (int i = 0; i < N_BUFS; i++)
        free(w->bufs[i]);
    free(w);
    return rc;
}

void hl_snapshot_async(hl_snapshot_writer *w)
{
    w->async = 1;
}

int hl_snapshot_drain(hl_snapshot_writer *w, char *errbuf, size_t errlen)
{
    int rc = drain(w);
    return rc < 0 ? io_failed(w, errbuf, errlen) : rc;
}

/* The trailer minus its CRC: end-of-rows mark, row count, table meta. */
static void put_trailer(hl_snapshot_writer *w, const hl_table *tbl)
{
    hl_table_meta tm;
    unsigned char *p = w->buf + w->len;

    hl_table_meta_get(tbl, &tm);
    p = put_u16(p, 0);
    p = put_u64(p, w->n_rows);
    p = put_u64(p, (uint64_t)tm.newest_ts_ms);
    p = put_u64(p, tm.active_seq);
    p = put_u32(p, tm.sweep_cursor);
    w->len = (size_t)(p - w->buf);
    w->done = 1;
}

int hl_snapshot_step(hl_snapshot_writer *w, const hl_table *tbl,
                     size_t budget_rows, char *errbuf, size_t errlen)
{
    uint32_t limit = hl_table_row_limit(tbl), end;
    hl_row_view v;
    int rc;

    if (w->done)
        return 1;
    if ((rc = io_failed(w, errbuf, errlen)) != 0)
        return rc;
    if (budget_rows == 0)
        budget_rows = HL_SNAPSHOT_STEP_ROWS;
    /* Rows inserted since begin may raise the limit; taking them is fine. */
    end = w->next_row >= limit ? limit
        : (limit - w->next_row > budget_rows ? w->next_row + (uint32_t)budget_rows : limit);
    for (; w->next_row < end; w->next_row++) {
        if (!hl_table_row_live(tbl, w->next_row))
            continue;
        if ((rc = make_room(w, w->max_row, errbuf, errlen)) != 0)
            return rc < 0 ? rc : 0;     /* ring full: the rest next time */
        hl_table_view(tbl, w->next_row, &v);
        w->len += put_row(w->buf + w->len, w, w->next_row, &v);
        w->n_rows++;
    }
    if (w->next_row < limit)
        return 0;
    if ((rc = make_room(w, TRAILER_LEN, errbuf, errlen)) != 0)
        return rc < 0 ? rc : 0;
    put_trailer(w, tbl);
    return 1;
}

/* Trailer CRC, then fsync, close, rename, directory fsync. */
static int publish(hl_snapshot_writer *w, char *errbuf, size_t errlen)
{
    const hl_io *io = w->io;
    unsigned char crc[4];
    int close_rc, rc;

    /* The steps are over and drains too (the caller's promise), so this
     * thread is the only one left: make room, publish the last buffer. */
    if (drain(w) < 0 || publish_buf(w, errbuf, errlen) != 0 || drain(w) < 0) {
        rc = io_failed(w, errbuf, errlen);
        return rc != 0 ? rc : hl_err(errbuf, errlen, HL_EIO, "snapshot: %s: buffers stuck",
                                     w->tmp);
    }
    put_u32(crc, w->crc);
    if (hl_io_write_all(io, w->fd, crc, sizeof crc) != 0)
        return hl_err(errbuf, errlen, HL_EIO, "snapshot: write %s: %s", w->tmp,
                      strerror(errno));
    w->bytes += sizeof crc;
    if (io->fsync(io->ctx, w->fd) != 0)
        return hl_err(errbuf, errlen, HL_EIO, "snapshot: fsync %s: %s", w->tmp,
                      strerror(errno));
    close_rc = io->close(io->ctx, w->fd);
    w->fd = -1;                 /* never close twice, even if close failed */
    if (close_rc != 0)
        return hl_err(errbuf, errlen, HL_EIO, "snapshot: close %s: %s", w->tmp,
                      strerror(errno));
    if (io->rename(io->ctx, w->tmp, w->path) != 0)
        return hl_err(errbuf, errlen, HL_EIO, "snapshot: rename %s to %s: %s",
                      w->tmp, w->path, strerror(errno));
    if (io->fsync_dir(io->ctx, w->dir) != 0)
        return hl_err(errbuf, errlen, HL_EIO, "snapshot: fsync directory %s: %s",
                      w->dir, strerror(errno));
    return 0;
}

/* Deletes this shard's files beyond the newest `retain` at or below the
 * one just published, and temporary files at or below it (a crash's, of
 * this offset too, or a crash loop at one offset piles them up; a writer
 * of the same offset still running then fails its rename, cleanly). A file named newer than the one just published is not this
 * writer's to judge (a damaged or planted file, one of another owner's,
 * a copy renamed to a higher offset): it is left alone and not counted.
 * Counted, two of them filled retain=2's slots, so every file published
 * was deleted at once, and the older one the restore had just used too:
 * a crash then found nothing of the shard to load. */
static void retain_newest(hl_snapshot_writer *w, int retain, hl_snapshot_result *res)
{
    char path[HL_SNAPSHOT_PATH_MAX];
    hl_snapshot_file *f;
    size_t n;
    int kept = 0;

    if (hl_snapshot_list(w->io, w->dir, w->meta.topic, w->meta.partition, &f, &n,
                         NULL, 0) != 0) {
        res->n_delete_failed++;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (!f[i].tmp && f[i].offset > w->meta.next_offset)
            continue;
        int drop = f[i].tmp ? f[i].offset <= w->meta.next_offset : ++kept > retain;
        if (!drop)
            continue;
        if (hl_snapshot_join(path, sizeof path, w->dir, f[i].name) == 0 &&
            w->io->unlink(w->io->ctx, path) == 0)
            res->n_deleted++;
        else
            res->n_delete_failed++;
    }
    free(f);
}

/* Whether path names an entry (open succeeds, or fails for another
 * reason than its absence: such a name is not free either). Non-blocking:
 * a fifo planted under the name must not hang the worker. */
static int taken(const hl_io *io, const char *path)
{
    int fd = io->open(io->ctx, path, O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0);
    if (fd >= 0)
        io->close(io->ctx, fd);
    return fd >= 0 || errno != ENOENT;
}

int hl_snapshot_aside_name(const hl_io *io, const char *from, const char *suffix,
                           char *to, size_t len)
{
    io = io_or_posix(io);
    if (snprintf(to, len, "%s%s", from, suffix) >= (int)len)
        return HL_EINVAL;
    for (int k = 2; k <= HL_SNAPSHOT_ASIDE_MAX && taken(io, to); k++)
        if (snprintf(to, len, "%s%s.%d", from, suffix, k) >= (int)len)
            return HL_EINVAL;
    return 0;
}

int hl_snapshot_set_aside(const hl_io *io, const char *dir, const char *topic,
                          int32_t partition, int64_t keep, const char *suffix,
                          int *n_aside, char *errbuf, size_t errlen)
{
    char from[HL_SNAPSHOT_PATH_MAX], to[HL_SNAPSHOT_PATH_MAX + 32];
    hl_snapshot_file *f = NULL;
    size_t n = 0;
    io = io_or_posix(io);
    int rc = hl_snapshot_list(io, dir, topic, partition, &f, &n, errbuf, errlen);
    *n_aside = 0;
    /* Every file is tried, one failure or not: each one left is a state
     * a restore may take for the new topic's. */
    for (size_t i = 0; i < n; i++) {
        if (f[i].tmp || f[i].offset == keep ||
            hl_snapshot_join(from, sizeof from, dir, f[i].name) != 0)
            continue;
        int moved = hl_snapshot_aside_name(io, from, suffix, to, sizeof to) == 0
                  ? io->rename(io->ctx, from, to) == 0 : (errno = ENAMETOOLONG, 0);
        if (moved)
            (*n_aside)++;
        else if (errno != ENOENT)   /* gone meanwhile (retention): nothing left to restore */
            rc = hl_err(errbuf, errlen, HL_EIO, "snapshot: rename %s aside: %s; move it "
                        "out of %s by hand", from, strerror(errno), dir);
    }
    free(f);
    if (*n_aside > 0 && io->fsync_dir(io->ctx, dir) != 0)
        rc = hl_err(errbuf, errlen, HL_EIO, "snapshot: fsync directory %s: %s", dir,
                    strerror(errno));
    return rc;
}

int hl_snapshot_commit(hl_snapshot_writer *w, int retain,
                       hl_snapshot_result *res, char *errbuf, size_t errlen)
{
    hl_snapshot_result local;
    int rc;

    if (res == NULL)
        res = &local;
    memset(res, 0, sizeof *res);
    if (!w->done) {
        rc = hl_err(errbuf, errlen, HL_EINVAL,
                    "snapshot: commit of %s before its last step", w->tmp);
        hl_snapshot_abort(w);
        return rc;
    }
    if ((rc = publish(w, errbuf, errlen)) != 0) {
        hl_snapshot_abort(w);
        return rc;
    }
    snprintf(res->path, sizeof res->path, "%s", w->path);
    res->n_rows = w->n_rows;
    res->bytes = w->bytes;
    retain_newest(w, retain < 1 ? HL_SNAPSHOT_RETAIN : retain, res);
    for (int i = 0; i < N_BUFS; i++)
        free(w->bufs[i]);
    free(w);
    return 0;
}

void hl_snapshot_abort(hl_snapshot_writer *w)
{
    if (w == NULL)
        return;
    if (w->fd >= 0)
        w->io->close(w->io->ctx, w->fd);
    w->io->unlink(w->io->ctx, w->tmp);   /* gone already after a rename */
    for (int i = 0; i < N_BUFS; i++)
        free(w->bufs[i]);
    free(w);
}

int hl_snapshot_write(const hl_io *io, const char *dir,
                      const hl_snapshot_meta *meta, const hl_table *tbl,
                      int retain, hl_snapshot_result *res,
                      char *errbuf, size_t errlen)
{
    hl_snapshot_writer *w;
    int rc = hl_snapshot_begin(io, dir, meta, tbl, &w, errbuf, errlen);

    while (rc == 0)
        rc = hl_snapshot_step(w, tbl, (size_t)1 << 30, errbuf, errlen);
    if (rc < 0) {
        hl_snapshot_abort(w);
        return rc;
    }
    return hl_snapshot_commit(w, retain, res, errbuf, errlen);
}
