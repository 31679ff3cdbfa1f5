/* snapshot.c - write a shard's table to a file in steps; load it back.
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
 * counter) is taken when the last row is out and stored in the trailer,
 * not the header, so it is never older than a row it covers, as with the
 * row count. A user evicted after its row was copied and inserted again at
 * a higher row id appears twice; the loader keeps the first copy and counts
 * the second (n_dup_rows): the replay from N then re-applies the events of
 * the second life on top of the first, which only an eviction could tell
 * apart.
 *
 * Files are written to a temporary name, fsynced, renamed and the directory
 * fsynced (Redis's rdbSave() scheme), so a crash leaves the old snapshot or
 * the new one, never a torn one under a final name. The loader trusts no
 * byte: every length is checked against the header's shape and what is left
 * of the file before it is used, and a CRC32C over everything before the
 * trailer's last field must match. It reads through a small buffer, so a
 * snapshot larger than memory still loads. All file access goes through an
 * hl_io so tests can fail any call. This file does not decide what to do
 * with a bad snapshot: it reports, the worker logs and picks. */
#include "snapshot.h"

#include "crc32c.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const unsigned char magic[8] = {'H', 'L', 'S', 'N', 'A', 'P', '\r', '\n'};

#define BUF_MIN     (1u << 20)    /* I/O buffer: big writes, few syscalls */
#define RD_FIRST    (64u << 10)   /* reading starts small (a small file costs
                                     little) and doubles up to BUF_MIN */
#define TRAILER_LEN (2 + 8 + 8 + 8 + 4 + 4)
#define ROW_FIXED   (2 + 4 + 8 + 8 + 8 + 2)  /* user_len, row id, t_ref, offset, seq, n_hist */
#define HIST_BYTES  (4 + 8 + 1)           /* item, ts_ms, type */

/* ---- little-endian encoding ------------------------------------------- */

static unsigned char *put_u16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    return p + 2;
}

static unsigned char *put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
    return p + 4;
}

static unsigned char *put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
    return p + 8;
}

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define NATIVE_LE 1     /* the file's byte order: fields are plain copies */
#endif

static inline uint16_t get_u16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t get_u32(const unsigned char *p)
{
#ifdef NATIVE_LE
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
#else
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
#endif
}

static inline uint64_t get_u64(const unsigned char *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static unsigned char *put_f64(unsigned char *p, double d)
{
    uint64_t u;
    memcpy(&u, &d, 8);
    return put_u64(p, u);
}

static double get_f64(const unsigned char *p)
{
    uint64_t u = get_u64(p);
    double d;
    memcpy(&d, &u, 8);
    return d;
}

/* n floats, bit for bit: a plain copy on little-endian hosts. */
static unsigned char *put_f32s(unsigned char *p, const float *x, size_t n)
{
#ifdef NATIVE_LE
    memcpy(p, x, n * 4);
#else
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        put_u32(p + 4 * i, u);
    }
#endif
    return p + n * 4;
}

static void get_f32s(float *x, const unsigned char *p, size_t n)
{
#ifdef NATIVE_LE
    memcpy(x, p, n * 4);
#else
    for (size_t i = 0; i < n; i++) {
        uint32_t u = get_u32(p + 4 * i);
        memcpy(&x[i], &u, 4);
    }
#endif
}

static const hl_io *io_or_posix(const hl_io *io)
{
    return io != NULL ? io : hl_io_posix();
}

/* Largest row a table of this shape can produce: sizes the I/O buffers. */
static size_t row_max(int n_heads, int dim, int history)
{
    return ROW_FIXED + HL_MAX_ID_LEN + 4 * (size_t)n_heads * ((size_t)dim + 1) +
           HIST_BYTES * (size_t)history;
}

/* ---- names -------------------------------------------------------------- */

static int topic_ok(const char *t)
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
    if (!topic_ok(meta->topic))
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

/* A file of one shard: its offset and whether it is a leftover .tmp. */
typedef struct cand {
    int64_t offset;
    int     tmp;
    char    name[HL_SNAPSHOT_TOPIC_MAX + 48];
} cand;

typedef struct cand_list {
    const char *prefix;      /* "<topic>.<partition>." */
    size_t      prefix_len;
    cand       *c;
    size_t      n, cap;
} cand_list;

/* Parses "<20 digits>.hls" or "<20 digits>.hls.tmp" after the prefix. */
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
    if (!strcmp(s + 20, ".hls.tmp")) { *tmp = 1; return 0; }
    return -1;
}

static int collect_entry(void *arg, const char *name)
{
    cand_list *l = arg;
    cand c;

    if (strncmp(name, l->prefix, l->prefix_len) != 0 ||
        strlen(name) >= sizeof c.name ||
        parse_tail(name + l->prefix_len, &c.offset, &c.tmp) != 0)
        return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        cand *nc = realloc(l->c, cap * sizeof *nc);
        if (nc == NULL) {
            errno = ENOMEM;
            return -1;
        }
        l->c = nc;
        l->cap = cap;
    }
    strcpy(c.name, name);
    l->c[l->n++] = c;
    return 0;
}

static int cand_newest_first(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    return x->offset < y->offset ? 1 : x->offset > y->offset ? -1 : 0;
}

/* Lists dir's files of topic/partition, newest first. */
static int collect(const hl_io *io, const char *dir, const char *topic,
                   int32_t partition, cand_list *l, char *errbuf, size_t errlen)
{
    char prefix[HL_SNAPSHOT_TOPIC_MAX + 16];
    snprintf(prefix, sizeof prefix, "%s.%d.", topic, (int)partition);
    memset(l, 0, sizeof *l);
    l->prefix = prefix;
    l->prefix_len = strlen(prefix);
    if (io->list(io->ctx, dir, collect_entry, l) != 0) {
        int e = errno;
        free(l->c);
        l->c = NULL;
        return hl_err(errbuf, errlen, e == ENOENT ? HL_ENOENT : HL_EIO,
                      "snapshot: list %s: %s", dir, strerror(e));
    }
    l->prefix = NULL;     /* it pointed at this frame */
    if (l->n > 1)
        qsort(l->c, l->n, sizeof *l->c, cand_newest_first);
    return 0;
}

static int join(char *out, size_t len, const char *dir, const char *name)
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

    memcpy(p, magic, sizeof magic);
    p = put_u32(p + sizeof magic, HL_SNAPSHOT_VERSION);
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

/* One row as schemas/snapshot.md lays it out; history oldest first. */
static size_t put_row(unsigned char *start, const hl_snapshot_writer *w,
                      uint32_t row, const hl_row_view *v)
{
    unsigned char *p = put_u16(start, (uint16_t)v->user_len);
    size_t n_s = (size_t)w->n_heads * (size_t)w->dim;

    memcpy(p, v->user, v->user_len);
    p = put_u32(p + v->user_len, row);
    p = put_u64(p, (uint64_t)v->t_ref_ms);
    p = put_u64(p, (uint64_t)v->last_offset);
    p = put_u64(p, v->active_seq);
    p = put_u16(p, (uint16_t)v->n_hist);
    p = put_f32s(p, v->m, (size_t)w->n_heads);
    p = put_f32s(p, v->s, n_s);
    p = put_ring(p, v->hist_item, 4, v);
    p = put_ring(p, v->hist_ts_ms, 8, v);
    p = put_ring(p, v->hist_type, 1, v);
    return (size_t)(p - start);
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
    if (snprintf(w->dir, sizeof w->dir, "%s", dir) >= (int)sizeof w->dir ||
        join(w->path, sizeof w->path, dir, name) != 0 ||
        snprintf(w->tmp, sizeof w->tmp, "%s.tmp", w->path) >= (int)sizeof w->tmp)
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
    w->fd = io->open(io->ctx, w->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
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

/* Deletes this shard's files beyond the newest `retain`, and temporary
 * files older than the one just published (left by a crash). */
static void retain_newest(hl_snapshot_writer *w, int retain, hl_snapshot_result *res)
{
    char path[HL_SNAPSHOT_PATH_MAX];
    cand_list l;
    int kept = 0;

    if (collect(w->io, w->dir, w->meta.topic, w->meta.partition, &l, NULL, 0) != 0) {
        res->n_delete_failed++;
        return;
    }
    for (size_t i = 0; i < l.n; i++) {
        int drop = l.c[i].tmp ? l.c[i].offset < w->meta.next_offset : ++kept > retain;
        if (!drop)
            continue;
        if (join(path, sizeof path, w->dir, l.c[i].name) == 0 &&
            w->io->unlink(w->io->ctx, path) == 0)
            res->n_deleted++;
        else
            res->n_delete_failed++;
    }
    free(l.c);
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

/* ---- reading ------------------------------------------------------------ */

/* A forward-only buffered reader that keeps a running CRC of the bytes it
 * has handed out. buf[pos, end) is unread; buf[crc_pos, pos) is read but
 * not yet in crc (folded in large pieces, not per field). */
typedef struct reader {
    const hl_io   *io;
    int            fd;
    const char    *path;
    unsigned char *buf;
    size_t         cap, pos, end, crc_pos;
    uint64_t       base;      /* file offset of buf[0] */
    uint32_t       crc;
    int            eof;
} reader;

static uint64_t rd_offset(const reader *r)
{
    return r->base + r->pos;
}

static void rd_fold_crc(reader *r)
{
    r->crc = hl_crc32c(r->crc, r->buf + r->crc_pos, r->pos - r->crc_pos);
    r->crc_pos = r->pos;
}

static int rd_grow(reader *r, size_t cap, char *errbuf, size_t errlen)
{
    unsigned char *nb;
    if (cap <= r->cap)
        return 0;
    if ((nb = realloc(r->buf, cap)) == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "snapshot %s: no memory for %zu bytes",
                      r->path, cap);
    r->buf = nb;
    r->cap = cap;
    return 0;
}

#define NO_ROW UINT64_MAX

/* Makes n bytes available at buf + pos, or says the file ends inside
 * `what` (row number `row` unless NO_ROW). */
static int rd_need(reader *r, size_t n, const char *what, uint64_t row,
                   char *errbuf, size_t errlen)
{
    int rc;

    if (r->end - r->pos >= n)
        return 0;
    if ((rc = rd_grow(r, n, errbuf, errlen)) != 0)
        return rc;
    rd_fold_crc(r);
    memmove(r->buf, r->buf + r->pos, r->end - r->pos);
    r->base += r->pos;
    r->end -= r->pos;
    r->pos = r->crc_pos = 0;
    if (!r->eof && r->cap < BUF_MIN && r->base > 0 &&
        (rc = rd_grow(r, 2 * r->cap, errbuf, errlen)) != 0)
        return rc;      /* the file outgrew the buffer once: read more per call */
    while (r->end < n && !r->eof) {
        ssize_t got = hl_io_read_full(r->io, r->fd, r->buf + r->end, r->cap - r->end);
        if (got < 0)
            return hl_err(errbuf, errlen, HL_EIO, "snapshot %s: read: %s", r->path,
                          strerror(errno));
        r->eof = (size_t)got < r->cap - r->end;
        r->end += (size_t)got;
    }
    if (r->end >= n)
        return 0;
    if (r->base + r->end == 0)
        return hl_err(errbuf, errlen, HL_EFORMAT, "snapshot %s: empty file (0 bytes)",
                      r->path);
    char where[64];
    if (row == NO_ROW) snprintf(where, sizeof where, "%s", what);
    else snprintf(where, sizeof where, "%s %llu", what, (unsigned long long)row);
    return hl_err(errbuf, errlen, HL_EFORMAT,
                  "snapshot %s: truncated: the file ends at byte %llu, inside %s",
                  r->path, (unsigned long long)(r->base + r->end), where);
}

static const unsigned char *rd_take(reader *r, size_t n)
{
    const unsigned char *p = r->buf + r->pos;
    r->pos += n;
    return p;
}

/* The parse in progress: the header's shape and one decoded row. */
typedef struct parse {
    hl_snapshot_info *info;
    hl_row_view       v;
    uint32_t          row;            /* the row's id in the written table */
    float            *s, *m;          /* (n_heads, dim), (n_heads) */
    int32_t          *hist_item;      /* history entries each */
    int64_t          *hist_ts;
    uint8_t          *hist_type;
    int (*on_header)(void *arg, const hl_snapshot_info *info, char *errbuf, size_t errlen);
    hl_snapshot_row_fn on_row;
    void             *arg;
    int               hist_cap;       /* history scratch at least this long:
                                         hl_table_restore copies a whole ring */
} parse;

static int bad(char *errbuf, size_t errlen, const reader *r, const char *fmt, long long a,
               long long b)
{
    char what[160];
    snprintf(what, sizeof what, fmt, a, b);
    return hl_err(errbuf, errlen, HL_EFORMAT, "snapshot %s: %s (byte %llu)", r->path,
                  what, (unsigned long long)rd_offset(r));
}

static int read_magic(reader *r, hl_snapshot_info *info, char *errbuf, size_t errlen)
{
    int rc = rd_need(r, sizeof magic + 4 + 2, "the header", NO_ROW, errbuf, errlen);
    const unsigned char *p;

    if (rc != 0)
        return rc;
    p = rd_take(r, sizeof magic + 4);
    if (memcmp(p, magic, sizeof magic) != 0)
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "snapshot %s: not a halflife snapshot (bad magic)", r->path);
    info->version = get_u32(p + sizeof magic);
    if (info->version != HL_SNAPSHOT_VERSION)
        return hl_err(errbuf, errlen, HL_EVERSION,
                      "snapshot %s: format version %u, this build reads version %d",
                      r->path, info->version, HL_SNAPSHOT_VERSION);
    return 0;
}

static int read_topic(reader *r, hl_snapshot_info *info, char *errbuf, size_t errlen)
{
    size_t len = get_u16(rd_take(r, 2));
    int rc;

    if (len == 0 || len > HL_SNAPSHOT_TOPIC_MAX)
        return bad(errbuf, errlen, r, "topic length %lld outside 1..%lld", (long long)len,
                   HL_SNAPSHOT_TOPIC_MAX);
    if ((rc = rd_need(r, len + 4 + 8 + 8 + 4 + 4, "the header", NO_ROW, errbuf, errlen)) != 0)
        return rc;
    memcpy(info->meta.topic, rd_take(r, len), len);
    info->meta.topic[len] = '\0';
    if (!topic_ok(info->meta.topic))
        return bad(errbuf, errlen, r, "topic name has bytes outside [A-Za-z0-9._-]", 0, 0);
    return 0;
}

static int read_shape(reader *r, hl_snapshot_info *info, char *errbuf, size_t errlen)
{
    const unsigned char *p = rd_take(r, 4 + 8 + 8 + 4 + 4);
    uint32_t dim, n_heads, history;
    int rc;

    info->meta.partition = (int32_t)get_u32(p);
    info->meta.next_offset = (int64_t)get_u64(p + 4);
    info->meta.model_fingerprint = get_u64(p + 12);
    dim = get_u32(p + 20);
    n_heads = get_u32(p + 24);
    if (info->meta.partition < 0 || info->meta.next_offset < 0)
        return bad(errbuf, errlen, r, "negative partition %lld or next offset %lld",
                   info->meta.partition, (long long)info->meta.next_offset);
    if (dim < 1 || dim > HL_SNAPSHOT_MAX_DIM || n_heads < 1 || n_heads > HL_MAX_HEADS)
        return bad(errbuf, errlen, r, "dim %lld or head count %lld out of range",
                   (long long)dim, (long long)n_heads);
    if ((rc = rd_need(r, 8 * n_heads + 4, "the header", NO_ROW, errbuf, errlen)) != 0)
        return rc;
    p = rd_take(r, 8 * n_heads + 4);
    for (uint32_t h = 0; h < n_heads; h++) {
        info->half_life_ms[h] = get_f64(p + 8 * h);
        if (!isfinite(info->half_life_ms[h]) || !(info->half_life_ms[h] > 0))
            return bad(errbuf, errlen, r, "half-life of head %lld is not finite and > 0",
                       (long long)h, 0);
    }
    history = get_u32(p + 8 * n_heads);
    if (history < 1 || history > 65535)
        return bad(errbuf, errlen, r, "history length %lld outside 1..%lld",
                   (long long)history, 65535);
    info->dim = (int)dim;
    info->n_heads = (int)n_heads;
    info->history = (int)history;
    return 0;
}

static int alloc_scratch(parse *ps, reader *r, char *errbuf, size_t errlen)
{
    const hl_snapshot_info *in = ps->info;
    size_t n_f = (size_t)in->n_heads * ((size_t)in->dim + 1);
    size_t n_h = (size_t)(in->history > ps->hist_cap ? in->history : ps->hist_cap);

    ps->m = malloc(n_f * sizeof(float));
    ps->hist_item = calloc(n_h, sizeof(int32_t));
    ps->hist_ts = calloc(n_h, sizeof(int64_t));
    ps->hist_type = calloc(n_h, 1);
    if (!ps->m || !ps->hist_item || !ps->hist_ts || !ps->hist_type)
        return hl_err(errbuf, errlen, HL_ENOMEM, "snapshot %s: no memory", r->path);
    ps->s = ps->m + in->n_heads;
    return rd_grow(r, 2 * row_max(in->n_heads, in->dim, in->history), errbuf, errlen);
}

static int read_header(reader *r, parse *ps, char *errbuf, size_t errlen)
{
    int rc;
    if ((rc = read_magic(r, ps->info, errbuf, errlen)) != 0 ||
        (rc = read_topic(r, ps->info, errbuf, errlen)) != 0 ||
        (rc = read_shape(r, ps->info, errbuf, errlen)) != 0)
        return rc;
    if (ps->on_header && (rc = ps->on_header(ps->arg, ps->info, errbuf, errlen)) != 0)
        return rc;
    return alloc_scratch(ps, r, errbuf, errlen);
}


/* Fills the view from one whole row at p, user_len and n_hist checked. */
static int decode_row(reader *r, parse *ps, const unsigned char *p, size_t user_len,
                      size_t n_hist, char *errbuf, size_t errlen)
{
    const hl_snapshot_info *in = ps->info;
    size_t n_f = (size_t)in->n_heads * ((size_t)in->dim + 1);
    hl_row_view *v = &ps->v;

    v->user = (const char *)p + 2;
    v->user_len = (uint32_t)user_len;
    p += 2 + user_len;
    ps->row = get_u32(p);
    v->t_ref_ms = (int64_t)get_u64(p + 4);
    v->last_offset = (int64_t)get_u64(p + 12);
    v->active_seq = get_u64(p + 20);
    p += ROW_FIXED - 2;
    get_f32s(ps->m, p, n_f);          /* m then s, as in the file */
    p += 4 * n_f;
#ifdef NATIVE_LE
    memcpy(ps->hist_item, p, 4 * n_hist);
    memcpy(ps->hist_ts, p + 4 * n_hist, 8 * n_hist);
#else
    for (size_t i = 0; i < n_hist; i++) {
        ps->hist_item[i] = (int32_t)get_u32(p + 4 * i);
        ps->hist_ts[i] = (int64_t)get_u64(p + 4 * n_hist + 8 * i);
    }
#endif
    p += 12 * n_hist;
    for (size_t i = 0; i < n_hist; i++) {
        if (p[i] >= HL_N_TYPES)
            return bad(errbuf, errlen, r, "row %lld: event type %lld unknown",
                       (long long)in->n_rows, p[i]);
        ps->hist_type[i] = p[i];
    }
    v->s = ps->s;
    v->m = ps->m;
    v->history = in->history;
    v->n_hist = (int)n_hist;
    v->hist_head = 0;
    v->hist_item = ps->hist_item;
    v->hist_ts_ms = ps->hist_ts;
    v->hist_type = ps->hist_type;
    return 0;
}

/* Reads the next row into ps->v; *end set instead at the end-of-rows mark.
 * Sizes are peeked before the row is taken so it stays whole in buf. */
static int read_row(reader *r, parse *ps, int *end, char *errbuf, size_t errlen)
{
    const hl_snapshot_info *in = ps->info;
    size_t n_f = (size_t)in->n_heads * ((size_t)in->dim + 1), user_len, n_hist, full;
    int rc;

    if ((rc = rd_need(r, 2, "row", in->n_rows, errbuf, errlen)) != 0)
        return rc;
    user_len = get_u16(r->buf + r->pos);
    if (user_len == 0) {
        *end = 1;
        return 0;
    }
    if (user_len > HL_MAX_ID_LEN)
        return bad(errbuf, errlen, r, "row %lld: user_id length %lld over 256",
                   (long long)in->n_rows, (long long)user_len);
    if ((rc = rd_need(r, ROW_FIXED + user_len, "row", in->n_rows, errbuf, errlen)) != 0)
        return rc;
    n_hist = get_u16(r->buf + r->pos + user_len + ROW_FIXED - 2);
    if (n_hist > (size_t)in->history)
        return bad(errbuf, errlen, r, "row %lld: %lld history entries, more than the header's length",
                   (long long)in->n_rows, (long long)n_hist);
    full = ROW_FIXED + user_len + 4 * n_f + HIST_BYTES * n_hist;
    if ((rc = rd_need(r, full, "row", in->n_rows, errbuf, errlen)) != 0)
        return rc;
    return decode_row(r, ps, rd_take(r, full), user_len, n_hist, errbuf, errlen);
}

static void count_row(hl_snapshot_info *in, const hl_row_view *v)
{
    in->n_rows++;
    in->hist_entries += (uint64_t)v->n_hist;
    if (v->t_ref_ms < in->min_t_ref_ms) in->min_t_ref_ms = v->t_ref_ms;
    if (v->t_ref_ms > in->max_t_ref_ms) in->max_t_ref_ms = v->t_ref_ms;
    if (v->last_offset > in->max_last_offset) in->max_last_offset = v->last_offset;
}

static int read_rows(reader *r, parse *ps, char *errbuf, size_t errlen)
{
    for (;;) {
        int end = 0, rc = read_row(r, ps, &end, errbuf, errlen);
        if (rc != 0 || end)
            return rc;
        count_row(ps->info, &ps->v);
        if (ps->on_row && (rc = ps->on_row(ps->arg, ps->info, ps->row, &ps->v)) != 0)
            return rc;
    }
}

/* 1 if bytes follow the trailer (the file was appended to or glued). */
static int rd_more(reader *r)
{
    return r->pos < r->end || rd_need(r, 1, "", NO_ROW, NULL, 0) == 0;
}

static int read_trailer(reader *r, hl_snapshot_info *in, char *errbuf, size_t errlen)
{
    const unsigned char *p;
    uint64_t n_rows;
    int rc;

    if ((rc = rd_need(r, TRAILER_LEN, "the trailer", NO_ROW, errbuf, errlen)) != 0)
        return rc;
    p = rd_take(r, TRAILER_LEN - 4);
    n_rows = get_u64(p + 2);
    in->table_meta.newest_ts_ms = (int64_t)get_u64(p + 10);
    in->table_meta.active_seq = get_u64(p + 18);
    in->table_meta.sweep_cursor = get_u32(p + 26);
    rd_fold_crc(r);
    in->crc_stored = get_u32(rd_take(r, 4));
    in->crc_computed = r->crc;
    in->crc_ok = in->crc_stored == in->crc_computed;
    in->bytes = rd_offset(r);
    if (rd_more(r))
        return bad(errbuf, errlen, r, "bytes follow the trailer that ends at byte %lld",
                   (long long)in->bytes, 0);
    if (!in->crc_ok)
        return hl_err(errbuf, errlen, HL_ECRC,
                      "snapshot %s: CRC32C mismatch: stored %08x, computed %08x over "
                      "%llu bytes: the file is damaged", r->path, in->crc_stored,
                      in->crc_computed, (unsigned long long)(in->bytes - 4));
    if (n_rows != in->n_rows)
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "snapshot %s: the trailer counts %llu rows, the file holds %llu",
                      r->path, (unsigned long long)n_rows, (unsigned long long)in->n_rows);
    return 0;
}

/* After a structural error: does the file's last word still match the
 * CRC32C of the rest? Tells a damaged file from a writer bug. */
static void append_crc_note(const hl_io *io, const char *path, char *errbuf, size_t errlen)
{
    enum { CHUNK = 1 << 20 };
    unsigned char *buf = malloc(CHUNK + 4);
    size_t carry = 0, len = errbuf ? strlen(errbuf) : 0;
    uint32_t crc = 0;
    ssize_t got = 1;
    int fd;

    if (buf == NULL || errbuf == NULL || len + 1 >= errlen ||
        (fd = io->open(io->ctx, path, O_RDONLY, 0)) < 0) {
        free(buf);
        return;
    }
    while ((got = hl_io_read_full(io, fd, buf + carry, CHUNK)) > 0) {
        size_t n = carry + (size_t)got;
        crc = hl_crc32c(crc, buf, n - 4 < n ? n - 4 : 0);
        if (n >= 4) { memmove(buf, buf + n - 4, 4); carry = 4; }
        else carry = n;     /* only a file under 4 bytes gets here */
    }
    io->close(io->ctx, fd);
    if (got == 0 && carry == 4)
        snprintf(errbuf + len, errlen - len, get_u32(buf) == crc
                 ? "; the CRC32C at its end matches, so the writer was faulty"
                 : "; the CRC32C at its end does not match either: the file is damaged or torn");
    free(buf);
}

static int read_file(const hl_io *io, const char *path, parse *ps,
                     char *errbuf, size_t errlen)
{
    reader r = {.io = io, .fd = -1, .path = path};
    hl_snapshot_info *in = ps->info;
    int rc;

    memset(in, 0, sizeof *in);
    in->min_t_ref_ms = INT64_MAX;
    in->max_t_ref_ms = INT64_MIN;
    in->max_last_offset = INT64_MIN;
    if ((r.fd = io->open(io->ctx, path, O_RDONLY, 0)) < 0)
        return hl_err(errbuf, errlen, errno == ENOENT ? HL_ENOENT : HL_EIO,
                      "snapshot %s: open: %s", path, strerror(errno));
    if ((rc = rd_grow(&r, RD_FIRST, errbuf, errlen)) == 0 &&
        (rc = read_header(&r, ps, errbuf, errlen)) == 0 &&
        (rc = read_rows(&r, ps, errbuf, errlen)) == 0)
        rc = read_trailer(&r, in, errbuf, errlen);
    io->close(io->ctx, r.fd);
    if (rc == HL_EFORMAT && r.base + r.end >= 4)
        append_crc_note(io, path, errbuf, errlen);
    free(r.buf);
    free(ps->m);
    free(ps->hist_item);
    free(ps->hist_ts);
    free(ps->hist_type);
    return rc;
}

int hl_snapshot_read(const hl_io *io, const char *path, hl_snapshot_info *info,
                     hl_snapshot_row_fn fn, void *arg, char *errbuf, size_t errlen)
{
    parse ps = {.info = info, .on_row = fn, .arg = arg};
    return read_file(io_or_posix(io), path, &ps, errbuf, errlen);
}

/* ---- loading into a table ----------------------------------------------- */

typedef struct loader {
    const hl_table_opts *o;
    uint64_t             fingerprint;
    const char          *path;
    hl_table            *tbl;
    hl_table_meta        seen;        /* the newest t_ref and seq of any row */
    uint32_t             row_bound;   /* ids at or above are not trusted */
    char                *errbuf;
    size_t               errlen;
} loader;

static int shape_matches(const hl_table_opts *o, const hl_snapshot_info *in)
{
    if (o->decay.dim != in->dim || o->decay.n_heads != in->n_heads)
        return 0;
    for (int h = 0; h < in->n_heads; h++)
        if (o->decay.half_life_ms[h] != in->half_life_ms[h])
            return 0;
    return 1;
}

static int load_header(void *arg, const hl_snapshot_info *in, char *errbuf, size_t errlen)
{
    loader *ld = arg;

    if (!shape_matches(ld->o, in))
        return hl_err(errbuf, errlen, HL_EMISMATCH,
                      "snapshot %s: state of dim %d with %d heads (half-life[0] %.0f ms), "
                      "the table is dim %d with %d heads (half-life[0] %.0f ms)",
                      ld->path, in->dim, in->n_heads, in->half_life_ms[0],
                      ld->o->decay.dim, ld->o->decay.n_heads, ld->o->decay.half_life_ms[0]);
    if (in->meta.model_fingerprint != ld->fingerprint)
        return hl_err(errbuf, errlen, HL_EMISMATCH,
                      "snapshot %s: made with model %016llx, the loaded model is %016llx",
                      ld->path, (unsigned long long)in->meta.model_fingerprint,
                      (unsigned long long)ld->fingerprint);
    if ((ld->tbl = hl_table_create(ld->o, errbuf, errlen)) == NULL)
        return HL_EINVAL;
    return 0;
}

static int load_row(void *arg, const hl_snapshot_info *in, uint32_t row,
                    const hl_row_view *v)
{
    loader *ld = arg;
    hl_row_view rv = *v;
    int rc;

    /* A shorter configured history keeps each user's newest entries. */
    rv.history = ld->o->history;
    if (rv.n_hist > rv.history) {
        int skip = rv.n_hist - rv.history;
        rv.n_hist = rv.history;
        rv.hist_item += skip;
        rv.hist_ts_ms += skip;
        rv.hist_type += skip;
    }
    /* Rows keep their ids, so sweeps visit them in the original order; an
     * id no table of these options reaches (damage) takes the lowest free
     * one instead of making the table allocate up to it. */
    rc = row < ld->row_bound ? hl_table_restore_at(ld->tbl, row, &rv)
                             : hl_table_restore(ld->tbl, &rv);
    if (rc != 0) {
        if (hl_table_find(ld->tbl, v->user, v->user_len) < 0)
            return hl_err(ld->errbuf, ld->errlen, rc,
                          "snapshot %s: row %llu does not fit the table (%s)", ld->path,
                          (unsigned long long)in->n_rows - 1, hl_strerror(rc));
        ((hl_snapshot_info *)in)->n_dup_rows++;   /* see the file overview */
    }
    if (v->t_ref_ms > ld->seen.newest_ts_ms) ld->seen.newest_ts_ms = v->t_ref_ms;
    if (v->active_seq > ld->seen.active_seq) ld->seen.active_seq = v->active_seq;
    return 0;
}

/* A table of these options never has row ids above its user bound: a new
 * user takes the lowest free id (table.c). Files from a table with a larger
 * bound still load, their rows then packed at the lowest free ids. */
static uint32_t row_bound(const hl_table_opts *o)
{
    uint64_t users = o->max_users ? o->max_users : (uint64_t)1 << 26;
    if (o->max_users == 0 && o->expected_users > users) users = o->expected_users;
    uint64_t b = 2 * users + 1024;
    return b < HL_TABLE_MAX_ROWS ? (uint32_t)b : HL_TABLE_MAX_ROWS;
}

int hl_snapshot_load(const hl_io *io, const char *path, const hl_table_opts *o,
                     uint64_t model_fingerprint, hl_table **tblp,
                     hl_snapshot_info *info, char *errbuf, size_t errlen)
{
    hl_snapshot_info local;
    loader ld = {.o = o, .fingerprint = model_fingerprint, .path = path,
                 .seen = {INT64_MIN, 0, 0}, .row_bound = row_bound(o),
                 .errbuf = errbuf, .errlen = errlen};
    parse ps = {.info = info ? info : &local, .on_header = load_header,
                .on_row = load_row, .arg = &ld, .hist_cap = o->history};
    int rc;

    *tblp = NULL;
    if ((rc = read_file(io_or_posix(io), path, &ps, errbuf, errlen)) != 0) {
        hl_table_destroy(ld.tbl);
        return rc;
    }
    /* The trailer's meta is never older than a row, unless forged. */
    hl_table_meta tm = ps.info->table_meta;
    if (ld.seen.newest_ts_ms > tm.newest_ts_ms) tm.newest_ts_ms = ld.seen.newest_ts_ms;
    if (ld.seen.active_seq > tm.active_seq) tm.active_seq = ld.seen.active_seq;
    hl_table_meta_set(ld.tbl, &tm);
    *tblp = ld.tbl;
    return 0;
}

static void report_add(char *report, size_t report_len, const char *msg)
{
    size_t n;
    if (report == NULL || report_len == 0)
        return;
    n = strnlen(report, report_len);
    if (n + 1 < report_len)
        snprintf(report + n, report_len - n, "%srejected %s", n ? "; " : "", msg);
}

int hl_snapshot_load_newest(const hl_io *io, const char *dir,
                            const char *topic, int32_t partition,
                            const hl_table_opts *o, uint64_t model_fingerprint,
                            hl_table **tblp, hl_snapshot_info *info,
                            char *path, size_t path_len,
                            char *report, size_t report_len,
                            char *errbuf, size_t errlen)
{
    char file[HL_SNAPSHOT_PATH_MAX], why[1024], first[1024] = "";
    int rc, first_rc = 0, tried = 0;
    cand_list l;

    *tblp = NULL;
    io = io_or_posix(io);
    if (report && report_len) report[0] = '\0';
    if (!topic_ok(topic) || partition < 0)
        return hl_err(errbuf, errlen, HL_EINVAL, "snapshot: bad topic '%.*s' or partition %d",
                      HL_SNAPSHOT_TOPIC_MAX, topic, (int)partition);
    if ((rc = collect(io, dir, topic, partition, &l, errbuf, errlen)) != 0)
        return rc;
    for (size_t i = 0; i < l.n && *tblp == NULL; i++) {
        if (l.c[i].tmp || join(file, sizeof file, dir, l.c[i].name) != 0)
            continue;
        rc = hl_snapshot_load(io, file, o, model_fingerprint, tblp, info, why, sizeof why);
        if (rc == 0) {
            if (path) snprintf(path, path_len, "%s", file);
            break;
        }
        report_add(report, report_len, why);
        if (tried++ == 0) {
            first_rc = rc;
            snprintf(first, sizeof first, "%s", why);
        }
    }
    free(l.c);
    if (*tblp != NULL)
        return 0;
    if (tried == 0)
        return hl_err(errbuf, errlen, HL_ENOENT, "snapshot: none of %s/%d in %s",
                      topic, (int)partition, dir);
    return hl_err(errbuf, errlen, first_rc, "snapshot: all %d snapshots of %s/%d "
                  "rejected; newest: %s", tried, topic, (int)partition, first);
}
