/* snapshot_load.c - read a snapshot file back: check it, describe it, or
 * load it into a new table (the format is in schemas/snapshot.md; writing
 * and the invariant that makes a fuzzy snapshot exact are in snapshot.c).
 *
 * The loader trusts no byte: it is fed damaged files and, by
 * tests/fuzz/fuzz_snapshot.c, arbitrary ones. Every length is checked
 * against the header's shape and against what is left of the file before
 * it is used, and a CRC32C over everything before the trailer's last field
 * must match, folded in row by row while each row is in L1. Rows stream
 * through a buffer of about 1 MiB, so a snapshot larger than memory's
 * spare room still loads; since rows are restored before the CRC at the
 * end is known, a failed load destroys the table it was building. A load
 * sizes the table's index once from the file size and restores each row
 * with one index probe, prefetched a row ahead (the index is far larger
 * than the cache). Picking a shard's newest file goes by the name, so each
 * one's header must name the same topic, partition and next offset, or it
 * is rejected (a renamed or copied file). This file does not decide what
 * to do with a bad snapshot: it reports the file and the reason, the
 * worker logs and picks the next one (hl_snapshot_load_newest). */
#include "snapshot_format.h"

#include "crc32c.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define RD_FIRST (64u << 10)   /* reading starts small (a small file costs
                                  little) and doubles up to BUF_MIN */

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
    int               nofollow;       /* a symlink is refused (a directory scan) */
    hl_row_view       v;
    uint32_t          row;            /* the row's id in the written table */
    float            *s, *m;          /* (n_heads, dim), (n_heads) */
    int32_t          *hist_item;      /* history entries each */
    int64_t          *hist_ts;
    uint8_t          *hist_type;
    uint64_t         *hist_key;       /* format 2 only */
    float            *hist_w;
    int (*on_header)(void *arg, const hl_snapshot_info *info, uint64_t file_bytes,
                     char *errbuf, size_t errlen);
    hl_snapshot_row_fn on_row;
    void            (*on_next_user)(void *arg, const char *user, size_t user_len);
    void             *arg;
    int               hist_cap;       /* history scratch at least this long:
                                         hl_table_restore copies a whole ring */
    uint64_t          file_bytes;     /* the file's size, 0 if unknown */
    hl_decay          decay;          /* the file's heads: a row of a version
                                         before 3 is rebased with it */
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
    const size_t n_magic = sizeof hl_snapshot_magic;
    int rc = rd_need(r, n_magic + 4 + 2, "the header", NO_ROW, errbuf, errlen);
    const unsigned char *p;

    if (rc != 0)
        return rc;
    p = rd_take(r, n_magic + 4);
    if (memcmp(p, hl_snapshot_magic, n_magic) != 0)
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "snapshot %s: not a halflife snapshot (bad magic)", r->path);
    info->version = get_u32(p + n_magic);
    if (info->version < 1 || info->version > HL_SNAPSHOT_VERSION)
        return hl_err(errbuf, errlen, HL_EVERSION,
                      "snapshot %s: format version %u, this build reads versions 1..%d",
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
    if (!hl_snapshot_topic_ok(info->meta.topic))
        return bad(errbuf, errlen, r, "topic name has bytes outside [A-Za-z0-9._-]", 0, 0);
    return 0;
}

/* Version 2: the changelog offset and epoch the file covers (snapshot.h). */
static int read_changelog_fields(reader *r, hl_snapshot_info *info, char *errbuf,
                                 size_t errlen)
{
    int rc = rd_need(r, 16, "the header", NO_ROW, errbuf, errlen);
    if (rc != 0)
        return rc;
    const unsigned char *p = rd_take(r, 16);
    info->meta.changelog_offset = (int64_t)get_u64(p);
    info->meta.changelog_epoch = (int64_t)get_u64(p + 8);
    if (info->meta.changelog_offset < 0 || info->meta.changelog_epoch < 0)
        return bad(errbuf, errlen, r, "negative changelog offset %lld or epoch %lld",
                   (long long)info->meta.changelog_offset,
                   (long long)info->meta.changelog_epoch);
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
    return info->version >= 2 ? read_changelog_fields(r, info, errbuf, errlen) : 0;
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
    ps->hist_key = calloc(n_h, sizeof(uint64_t));
    ps->hist_w = calloc(n_h, sizeof(float));
    if (!ps->m || !ps->hist_item || !ps->hist_ts || !ps->hist_type || !ps->hist_key ||
        !ps->hist_w)
        return hl_err(errbuf, errlen, HL_ENOMEM, "snapshot %s: no memory", r->path);
    ps->s = ps->m + in->n_heads;
    if (hl_decay_init(&ps->decay, in->n_heads, in->dim, in->half_life_ms, errbuf, errlen) != 0)
        return HL_EFORMAT;          /* read_shape checked them: not reached */
    return rd_grow(r, 2 * row_max(in->n_heads, in->dim, in->history), errbuf, errlen);
}

static int read_header(reader *r, parse *ps, char *errbuf, size_t errlen)
{
    int rc;
    if ((rc = read_magic(r, ps->info, errbuf, errlen)) != 0 ||
        (rc = read_topic(r, ps->info, errbuf, errlen)) != 0 ||
        (rc = read_shape(r, ps->info, errbuf, errlen)) != 0)
        return rc;
    if (ps->on_header &&
        (rc = ps->on_header(ps->arg, ps->info, ps->file_bytes, errbuf, errlen)) != 0)
        return rc;
    return alloc_scratch(ps, r, errbuf, errlen);
}


/* Format 2's item keys and weights after the types; format 1 has none:
 * the view says unknown (NULL), which a restore records as key 0 and
 * weight NAN (a later model swap then falls back, see schemas/model.md). */
static void decode_keys(hl_snapshot_row_scratch *sc, hl_row_view *v, int has_keys,
                        const unsigned char *p, size_t n_hist)
{
    if (!has_keys) {
        v->hist_key = NULL;
        v->hist_w = NULL;
        return;
    }
    for (size_t i = 0; i < n_hist; i++) {
        uint32_t u = get_u32(p + 8 * n_hist + 4 * i);
        sc->hist_key[i] = get_u64(p + 8 * i);
        memcpy(&sc->hist_w[i], &u, 4);
    }
    v->hist_key = sc->hist_key;
    v->hist_w = sc->hist_w;
}

int hl_snapshot_row_decode(const unsigned char *p, size_t len, int n_heads, int dim,
                           int history, uint32_t version, hl_snapshot_row_scratch *sc,
                           uint32_t *row, hl_row_view *v)
{
    size_t n_f = (size_t)n_heads * ((size_t)dim + 1), user_len, n_hist;
    size_t hist_bytes = version == 1 ? HIST_BYTES_V1 : HIST_BYTES;

    if (version < 1 || version > HL_SNAPSHOT_VERSION || len < ROW_FIXED)
        return HL_EFORMAT;
    user_len = get_u16(p);
    if (user_len < 1 || user_len > HL_MAX_ID_LEN || len < ROW_FIXED + user_len)
        return HL_EFORMAT;
    n_hist = get_u16(p + user_len + ROW_FIXED - 2);
    if (n_hist > (size_t)history || len != ROW_FIXED + user_len + 4 * n_f + hist_bytes * n_hist)
        return HL_EFORMAT;
    v->user = (const char *)p + 2;
    v->user_len = (uint32_t)user_len;
    p += 2 + user_len;
    *row = get_u32(p);
    v->t_ref_ms = (int64_t)get_u64(p + 4);
    v->last_offset = (int64_t)get_u64(p + 12);
    v->active_seq = get_u64(p + 20);
    p += ROW_FIXED - 2;
    get_f32s(sc->m, p, n_f);          /* m then s, as in the file */
    p += 4 * n_f;
#ifdef NATIVE_LE
    memcpy(sc->hist_item, p, 4 * n_hist);
    memcpy(sc->hist_ts, p + 4 * n_hist, 8 * n_hist);
#else
    for (size_t i = 0; i < n_hist; i++) {
        sc->hist_item[i] = (int32_t)get_u32(p + 4 * i);
        sc->hist_ts[i] = (int64_t)get_u64(p + 4 * n_hist + 8 * i);
    }
#endif
    p += 12 * n_hist;
    for (size_t i = 0; i < n_hist; i++) {
        if (p[i] >= HL_N_TYPES)
            return HL_ERANGE;
        sc->hist_type[i] = p[i];
    }
    p += n_hist;
    decode_keys(sc, v, version >= 2, p, n_hist);
    v->s = sc->m + n_heads;
    v->m = sc->m;
    v->history = history;
    v->n_hist = (int)n_hist;
    v->hist_head = 0;
    v->hist_item = sc->hist_item;
    v->hist_ts_ms = sc->hist_ts;
    v->hist_type = sc->hist_type;
    return 0;
}

/* Fills the view from one whole row at p (full bytes), user_len and n_hist
 * checked. */
static int decode_row(reader *r, parse *ps, const unsigned char *p, size_t full,
                      char *errbuf, size_t errlen)
{
    const hl_snapshot_info *in = ps->info;
    hl_snapshot_row_scratch sc = {ps->m, ps->hist_item, ps->hist_ts, ps->hist_type,
                                   ps->hist_key, ps->hist_w};
    int rc = hl_snapshot_row_decode(p, full, in->n_heads, in->dim, in->history,
                                    in->version, &sc, &ps->row, &ps->v);
    if (rc == HL_ERANGE)
        return bad(errbuf, errlen, r, "row %lld: an event type is unknown",
                   (long long)in->n_rows, 0);
    if (rc != 0)
        return bad(errbuf, errlen, r, "row %lld: malformed", (long long)in->n_rows, 0);
    if (in->version < 3)    /* heads at t_ref: to their bases (decay.h) */
        hl_decay_rebase(&ps->decay, ps->v.t_ref_ms, ps->s, ps->m);
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
    full = ROW_FIXED + user_len + 4 * n_f +
           (in->version == 1 ? HIST_BYTES_V1 : HIST_BYTES) * n_hist;
    if ((rc = rd_need(r, full, "row", in->n_rows, errbuf, errlen)) != 0)
        return rc;
    return decode_row(r, ps, rd_take(r, full), full, errbuf, errlen);
}

static void count_row(hl_snapshot_info *in, const hl_row_view *v)
{
    in->n_rows++;
    in->hist_entries += (uint64_t)v->n_hist;
    if (v->t_ref_ms < in->min_t_ref_ms) in->min_t_ref_ms = v->t_ref_ms;
    if (v->t_ref_ms > in->max_t_ref_ms) in->max_t_ref_ms = v->t_ref_ms;
    if (v->last_offset > in->max_last_offset) in->max_last_offset = v->last_offset;
}

/* Shows the next row's user id, when it is already in the buffer, before
 * the current row is handed on (the loader prefetches its index slot). */
static void peek_next_user(reader *r, parse *ps)
{
    size_t left = r->end - r->pos, len;
    if (ps->on_next_user == NULL || left < 2)
        return;
    len = get_u16(r->buf + r->pos);
    if (len >= 1 && len <= HL_MAX_ID_LEN && left >= 2 + len)
        ps->on_next_user(ps->arg, (const char *)r->buf + r->pos + 2, len);
}

static int read_rows(reader *r, parse *ps, char *errbuf, size_t errlen)
{
    for (;;) {
        int end = 0, rc = read_row(r, ps, &end, errbuf, errlen);
        if (rc != 0 || end)
            return rc;
        /* The CRC of the row while it is in L1, not a pass over the
         * buffer later. */
        rd_fold_crc(r);
        peek_next_user(r, ps);
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
 * CRC32C of the rest? Tells a damaged file from a writer bug. Opened
 * O_NONBLOCK like the read (open_regular): the name may be a FIFO now. */
static void append_crc_note(const hl_io *io, const char *path, char *errbuf, size_t errlen)
{
    enum { CHUNK = 1 << 20 };
    unsigned char *buf = malloc(CHUNK + 4);
    size_t carry = 0, len = errbuf ? strlen(errbuf) : 0;
    uint32_t crc = 0;
    ssize_t got = 1;
    int fd;

    if (buf == NULL || errbuf == NULL || len + 1 >= errlen ||
        (fd = io->open(io->ctx, path, O_RDONLY | O_NONBLOCK, 0)) < 0) {
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

static const char *type_name(int type)
{
    switch (type) {
    case S_IFDIR:  return "a directory";
    case S_IFIFO:  return "a FIFO";
    case S_IFCHR:  return "a character device";
    case S_IFBLK:  return "a block device";
    case S_IFSOCK: return "a socket";
    default:       return "a special file";
    }
}

/* Opens path for reading, refusing whatever a snapshot never is: a FIFO
 * (opened without O_NONBLOCK, it would wait for a writer for ever and
 * stall the shard's restore), a directory or a device, and, for a file a
 * directory scan found (ps->nofollow), a symlink: that name would load a
 * file from outside the directory the worker keeps, and retention would
 * delete the link but never its target. The fd, or -1 with errbuf set. */
static int open_regular(const hl_io *io, const char *path, const parse *ps, int *rc,
                        char *errbuf, size_t errlen)
{
    int fd = io->open(io->ctx, path, O_RDONLY | O_NONBLOCK | (ps->nofollow ? O_NOFOLLOW : 0), 0);
    int type;

    if (fd < 0 && ps->nofollow && errno == ELOOP) {
        *rc = hl_err(errbuf, errlen, HL_EFORMAT, "snapshot %s: a symbolic link: refused, "
                     "snapshots are regular files the worker writes here (put the file "
                     "itself in the directory)", path);
        return -1;
    }
    if (fd < 0) {
        *rc = hl_err(errbuf, errlen, errno == ENOENT ? HL_ENOENT : HL_EIO,
                     "snapshot %s: open: %s", path, strerror(errno));
        return -1;
    }
    if (io->file_type != NULL && (type = io->file_type(io->ctx, fd)) != S_IFREG) {
        *rc = type < 0 ? hl_err(errbuf, errlen, HL_EIO, "snapshot %s: fstat: %s", path,
                                strerror(errno))
                       : hl_err(errbuf, errlen, HL_EFORMAT, "snapshot %s: %s, not a regular "
                                "file: refused (remove it)", path, type_name(type));
        io->close(io->ctx, fd);
        return -1;
    }
    return fd;
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
    if ((r.fd = open_regular(io, path, ps, &rc, errbuf, errlen)) < 0)
        return rc;
    if (io->size != NULL) {
        off_t size = io->size(io->ctx, r.fd);
        ps->file_bytes = size > 0 ? (uint64_t)size : 0;
    }
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
    free(ps->hist_key);
    free(ps->hist_w);
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
    const hl_snapshot_meta *expect;   /* topic, partition and next offset the
                                         file's name promises; NULL: any */
    const char          *path;
    int                  any_shape;   /* a file of another dim, heads or
                                         half-lives loads into a table of
                                         its own shape (own_o) */
    hl_table_opts        own_o;
    hl_table            *tbl;
    hl_table_meta        seen;        /* the newest t_ref and seq of any row */
    uint32_t             row_bound;   /* ids at or above are not trusted */
    char                *errbuf;
    size_t               errlen;
} loader;

static int shape_matches(const hl_table_opts *o, const hl_snapshot_info *in)
{
    return hl_decay_shape_diff(o->decay.dim, o->decay.n_heads, o->decay.half_life_ms,
                               in->dim, in->n_heads, in->half_life_ms) == HL_SHAPE_SAME;
}

/* About how many rows file_bytes hold: rows with half their history, so a
 * typical file is not far over (the index grows past an underestimate). */
static size_t rows_in(const hl_snapshot_info *in, uint64_t file_bytes)
{
    size_t row = ROW_FIXED + 12 + 4 * (size_t)in->n_heads * ((size_t)in->dim + 1) +
                 HIST_BYTES * (size_t)in->history / 2;
    return (size_t)(file_bytes / row);
}

/* A file's name is what picks it for a shard and orders it, but only its
 * header says whose rows it holds: a file of partition 1 renamed (or copied
 * by hand) to partition 0's name with a higher offset would otherwise
 * replace partition 0's users with partition 1's, and seek to an offset
 * partition 0 never had. So the three must agree, and a file where they do
 * not is rejected like a damaged one: the previous snapshot is used. */
static int name_matches(const loader *ld, const hl_snapshot_info *in,
                        char *errbuf, size_t errlen)
{
    const hl_snapshot_meta *e = ld->expect;
    if (e == NULL || (strcmp(in->meta.topic, e->topic) == 0 &&
                      in->meta.partition == e->partition &&
                      in->meta.next_offset == e->next_offset))
        return 0;
    return hl_err(errbuf, errlen, HL_EMISMATCH,
                  "snapshot %s: the header says topic %s partition %d next offset %lld, "
                  "the file name says topic %s partition %d offset %lld (a renamed or "
                  "copied file)", ld->path, in->meta.topic, (int)in->meta.partition,
                  (long long)in->meta.next_offset, e->topic, (int)e->partition,
                  (long long)e->next_offset);
}

static int load_header(void *arg, const hl_snapshot_info *in, uint64_t file_bytes,
                       char *errbuf, size_t errlen)
{
    loader *ld = arg;
    int rc;

    if ((rc = name_matches(ld, in, errbuf, errlen)) != 0)
        return rc;
    if (!shape_matches(ld->o, in) && ld->any_shape) {
        /* o's options but the file's state shape: the caller migrates the
         * rows into its own (hl_migration_table_into) */
        ld->own_o = *ld->o;
        if ((rc = hl_decay_init(&ld->own_o.decay, in->n_heads, in->dim, in->half_life_ms,
                                errbuf, errlen)) != 0)
            return rc;
        ld->o = &ld->own_o;
    }
    if (!shape_matches(ld->o, in))
        return hl_err(errbuf, errlen, HL_EMISMATCH,
                      "snapshot %s: state of dim %d with %d heads (half-life[0] %.0f ms), "
                      "the table is dim %d with %d heads (half-life[0] %.0f ms)",
                      ld->path, in->dim, in->n_heads, in->half_life_ms[0],
                      ld->o->decay.dim, ld->o->decay.n_heads, ld->o->decay.half_life_ms[0]);
    if (ld->fingerprint != HL_SNAPSHOT_ANY_MODEL && in->meta.model_fingerprint != ld->fingerprint)
        return hl_err(errbuf, errlen, HL_EMISMATCH,
                      "snapshot %s: made with model %016llx, the loaded model is %016llx",
                      ld->path, (unsigned long long)in->meta.model_fingerprint,
                      (unsigned long long)ld->fingerprint);
    if ((ld->tbl = hl_table_create(ld->o, errbuf, errlen)) == NULL)
        return HL_EINVAL;
    /* One index of the right size rather than doublings as rows arrive
     * (the worker's tables start at 1,024 users). */
    if (hl_table_reserve(ld->tbl, rows_in(in, file_bytes)) != 0)
        return hl_err(errbuf, errlen, HL_ENOMEM, "snapshot %s: no memory for the index of "
                      "%zu rows", ld->path, rows_in(in, file_bytes));
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
        if (rv.hist_key) rv.hist_key += skip;
        if (rv.hist_w) rv.hist_w += skip;
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

static void load_next_user(void *arg, const char *user, size_t user_len)
{
    loader *ld = arg;
    hl_table_prefetch(ld->tbl, user, user_len);
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

/* hl_snapshot_load, refusing a file whose header is not expect's (NULL:
 * no expectation; else a directory scan found it, so a symlink is
 * refused too). */
static int load_as(const hl_io *io, const char *path, const hl_table_opts *o,
                   uint64_t model_fingerprint, const hl_snapshot_meta *expect, int any_shape,
                   hl_table **tblp, hl_snapshot_info *info, char *errbuf, size_t errlen)
{
    hl_snapshot_info local;
    loader ld = {.o = o, .fingerprint = model_fingerprint, .expect = expect, .path = path,
                 .any_shape = any_shape,
                 .seen = {INT64_MIN, 0, 0}, .row_bound = row_bound(o),
                 .errbuf = errbuf, .errlen = errlen};
    parse ps = {.info = info ? info : &local, .on_header = load_header,
                .on_row = load_row, .on_next_user = load_next_user, .arg = &ld,
                .hist_cap = o->history, .nofollow = expect != NULL};
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
    /* A file written under a larger state.max.users keeps the pod's
     * limit: its least recently active users go now, not one batch per
     * new user (the table would stay past the limit for long). */
    if ((rc = hl_table_trim(ld.tbl, NULL)) != 0) {
        hl_table_destroy(ld.tbl);
        return hl_err(errbuf, errlen, rc, "snapshot %s: no memory to sort its users down "
                      "to state.max.users=%zu; give the pod more memory", path, o->max_users);
    }
    *tblp = ld.tbl;
    return 0;
}

int hl_snapshot_load(const hl_io *io, const char *path, const hl_table_opts *o,
                     uint64_t model_fingerprint, hl_table **tblp,
                     hl_snapshot_info *info, char *errbuf, size_t errlen)
{
    return load_as(io, path, o, model_fingerprint, NULL, 0, tblp, info, errbuf, errlen);
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

static int load_newest(const hl_io *io, const char *dir, const char *topic,
                       int32_t partition, const hl_table_opts *o, uint64_t model_fingerprint,
                       int any_shape, hl_table **tblp, hl_snapshot_info *info,
                       char *path, size_t path_len, char *report, size_t report_len,
                       char *errbuf, size_t errlen)
{
    char file[HL_SNAPSHOT_PATH_MAX], why[1024], first[1024] = "";
    int rc, first_rc = 0, tried = 0;
    hl_snapshot_file *f;
    size_t n;

    *tblp = NULL;
    io = io_or_posix(io);
    if (report && report_len) report[0] = '\0';
    if (!hl_snapshot_topic_ok(topic) || partition < 0)
        return hl_err(errbuf, errlen, HL_EINVAL, "snapshot: bad topic '%.*s' or partition %d",
                      HL_SNAPSHOT_TOPIC_MAX, topic, (int)partition);
    if ((rc = hl_snapshot_list(io, dir, topic, partition, &f, &n, errbuf, errlen)) != 0)
        return rc;
    for (size_t i = 0; i < n && *tblp == NULL; i++) {
        if (f[i].tmp || hl_snapshot_join(file, sizeof file, dir, f[i].name) != 0)
            continue;
        hl_snapshot_meta expect = {.partition = partition, .next_offset = f[i].offset};
        snprintf(expect.topic, sizeof expect.topic, "%s", topic);
        rc = load_as(io, file, o, model_fingerprint, &expect, any_shape, tblp, info,
                     why, sizeof why);
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
    free(f);
    if (*tblp != NULL)
        return 0;
    if (tried == 0)
        return hl_err(errbuf, errlen, HL_ENOENT, "snapshot: none of %s/%d in %s",
                      topic, (int)partition, dir);
    return hl_err(errbuf, errlen, first_rc, "snapshot: all %d snapshots of %s/%d "
                  "rejected; newest: %s", tried, topic, (int)partition, first);
}

int hl_snapshot_load_newest(const hl_io *io, const char *dir,
                            const char *topic, int32_t partition,
                            const hl_table_opts *o, uint64_t model_fingerprint,
                            hl_table **tblp, hl_snapshot_info *info,
                            char *path, size_t path_len,
                            char *report, size_t report_len,
                            char *errbuf, size_t errlen)
{
    return load_newest(io, dir, topic, partition, o, model_fingerprint, 0, tblp, info,
                       path, path_len, report, report_len, errbuf, errlen);
}

int hl_snapshot_load_newest_any(const hl_io *io, const char *dir,
                                const char *topic, int32_t partition,
                                const hl_table_opts *o, hl_table **tblp,
                                hl_snapshot_info *info, char *path, size_t path_len,
                                char *report, size_t report_len,
                                char *errbuf, size_t errlen)
{
    return load_newest(io, dir, topic, partition, o, HL_SNAPSHOT_ANY_MODEL, 1, tblp, info,
                       path, path_len, report, report_len, errbuf, errlen);
}
