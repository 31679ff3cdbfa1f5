/* model_write.c - writes a .hlm model file (hl_model_write): header, body
 * and CRC, published atomically (write path.tmp.XXXXXX, fsync, rename,
 * fsync the directory), so a reader sees the old file or the new one, never
 * a torn one. The temporary name is unique (mkstemp): two writers of one
 * path, e.g. a retrain job started again while the last one still writes,
 * each publish a whole file; with a fixed path.tmp the second truncated
 * the first's, whose rename then published a mixture of both.
 *
 * Separate from model.c because writing is the trainer's and the tools'
 * business and opening is the worker's: neither path needs the other's
 * code to be read. Before a byte is written the parts are checked against
 * what open would refuse (model_format.c), so a bad model fails here. */
#include "model_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- header encode ---- */

static void header_encode(uint8_t *h, const hl_model_info *mi, const layout *lo)
{
    memset(h, 0, HLM_HEADER_SIZE);
    memcpy(h + H_MAGIC, HLM_MAGIC, 8);
    put_u32(h + H_VERSION, HLM_VERSION);
    put_u64(h + H_FILE_SIZE, lo->file_size);
    put_u32(h + H_HEADER_SIZE, HLM_HEADER_SIZE);
    put_u32(h + H_DIM, (uint32_t)mi->dim);
    put_u32(h + H_HEADS, (uint32_t)mi->n_heads);
    put_u32(h + H_ITEMS, (uint32_t)mi->n_items);
    put_u32(h + H_LAYERS, (uint32_t)mi->n_layers);
    for (int l = 0; l < mi->n_layers; l++)
        put_u32(h + H_LAYER_OUT + 4 * l, (uint32_t)mi->layer_out[l]);
    for (int i = 0; i < mi->n_heads; i++)
        put_f64(h + H_HALF_LIFE + 8 * i, mi->half_life_ms[i]);
    for (int t = 0; t < HL_N_TYPES; t++)
        put_f32(h + H_TYPE_WEIGHT + 4 * t, mi->type_weight[t]);
    put_u32(h + H_N_TYPES, HL_N_TYPES);
    memcpy(h + H_VERSION_STR, mi->version, strnlen(mi->version, sizeof mi->version - 1));
    for (int s = 0; s < N_SEC; s++) {
        put_u64(h + H_SECTIONS + 16 * s, lo->off[s]);
        put_u64(h + H_SECTIONS + 16 * s + 8, lo->size[s]);
    }
}

/* ---- write ---- */

/* A buffered writer that keeps the running CRC of what it writes. */
typedef struct wbuf {
    int      fd;
    uint32_t crc;
    uint64_t pos;
    size_t   n;
    crc_tab  ct;
    uint8_t  buf[1 << 16];
} wbuf;

static int wbuf_flush(wbuf *w)
{
    size_t done = 0;
    while (done < w->n) {
        ssize_t k = write(w->fd, w->buf + done, w->n - done);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        done += (size_t)k;
    }
    w->n = 0;
    return 0;
}

static int wbuf_put(wbuf *w, const void *p, size_t len)
{
    const uint8_t *b = p;
    while (len > 0) {
        size_t k = sizeof w->buf - w->n < len ? sizeof w->buf - w->n : len;
        memcpy(w->buf + w->n, b, k);
        w->n += k; w->pos += k; b += k; len -= k;
        if (w->n == sizeof w->buf) {
            w->crc = hl_model_crc_update(&w->ct, w->crc, w->buf, w->n);
            if (wbuf_flush(w) != 0) return -1;
        }
    }
    return 0;
}

/* Zero bytes up to offset to (the start of the next section). */
static int wbuf_pad(wbuf *w, uint64_t to)
{
    static const uint8_t zero[HLM_ALIGN];
    return w->pos < to ? wbuf_put(w, zero, (size_t)(to - w->pos)) : 0;
}

static int wbuf_end(wbuf *w)
{
    w->crc = hl_model_crc_update(&w->ct, w->crc, w->buf, w->n);
    return wbuf_flush(w);
}

/* Checks what open would refuse, so a bad model fails at write time. */
static int parts_check(const hl_model_parts *p, uint64_t *id_bytes, const char *path,
                       char *errbuf, size_t errlen)
{
    const hl_model_info *mi = &p->info;
    size_t n, d;
    int rc;

    if ((rc = hl_model_info_check(mi, path, errbuf, errlen)) != 0) return rc;
    n = (size_t)mi->n_items;
    d = (size_t)mi->dim;
    *id_bytes = 0;
    for (size_t r = 0; r < n; r++) {
        if (p->item_id_len[r] < 1 || p->item_id_len[r] > HL_MAX_ID_LEN)
            return hl_err(errbuf, errlen, HL_EINVAL,
                          "model %s: item id at row %zu: length %u outside 1..%d",
                          path, r, p->item_id_len[r], HL_MAX_ID_LEN);
        *id_bytes += p->item_id_len[r];
    }
    if ((rc = hl_model_floats_check(p->e_in, n * d, d, "e_in", path, errbuf, errlen)) != 0 ||
        (rc = hl_model_floats_check(p->e_out, n * d, d, "e_out", path, errbuf, errlen)) != 0 ||
        (rc = hl_model_floats_check(p->bias, n, n, "bias", path, errbuf, errlen)) != 0)
        return rc;
    for (int l = 0; l < mi->n_layers; l++) {
        size_t out = (size_t)mi->layer_out[l], in = (size_t)layer_in(mi, l);
        char w[32], b[32];
        snprintf(w, sizeof w, "layer_w[%d]", l);   /* named as the reader names them */
        snprintf(b, sizeof b, "layer_b[%d]", l);
        if ((rc = hl_model_floats_check(p->layer_w[l], out * in, in, w, path, errbuf, errlen)) != 0 ||
            (rc = hl_model_floats_check(p->layer_b[l], out, out, b, path, errbuf, errlen)) != 0)
            return rc;
    }
    return 0;
}

static int parts_check_ids(const hl_model_parts *p, const char *path,
                           char *errbuf, size_t errlen)
{
    id_src src = { .ids = p->item_id, .lens = p->item_id_len };
    int32_t *slots = NULL;
    uint64_t mask;
    int rc = hl_model_index_build(&src, p->info.n_items, &slots, &mask, path, errbuf, errlen);
    free(slots);
    return rc;
}

static int body_write(wbuf *w, const hl_model_parts *p, const layout *lo)
{
    const hl_model_info *mi = &p->info;
    uint64_t off = 0, n = (uint64_t)mi->n_items;
    uint8_t b8[8];

    for (uint64_t r = 0; r <= n; r++) {
        put_u64(b8, off);
        if (wbuf_put(w, b8, 8) != 0) return -1;
        if (r < n) off += p->item_id_len[r];
    }
    for (uint64_t r = 0; r < n; r++)
        if (wbuf_put(w, p->item_id[r], p->item_id_len[r]) != 0) return -1;
#define SECTION(sec, ptr) \
    if (wbuf_pad(w, lo->off[sec]) != 0 || wbuf_put(w, ptr, lo->size[sec]) != 0) return -1
    SECTION(SEC_E_IN, p->e_in);
    for (int l = 0; l < mi->n_layers; l++) {
        SECTION(SEC_W(l), p->layer_w[l]);
        SECTION(SEC_B(l), p->layer_b[l]);
    }
    SECTION(SEC_E_OUT, p->e_out);
    SECTION(SEC_BIAS, p->bias);
#undef SECTION
    return 0;
}

static int fsync_dir(const char *path)
{
    char copy[PATH_MAX];
    int fd, rc;
    snprintf(copy, sizeof copy, "%s", path);
    if ((fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) return -1;
    rc = fsync(fd);
    close(fd);
    return rc;
}

/* Header first with crc 0, the body through the CRC-keeping buffer, then
 * the CRC patched in at byte 12 (it covers bytes 16.. including the header's
 * tail, which is known before the body is written). */
static int file_write(int fd, const hl_model_parts *p, const layout *lo,
                      const char *tmp, char *errbuf, size_t errlen)
{
    uint8_t hdr[HLM_HEADER_SIZE], c4[4];
    wbuf *w = malloc(sizeof *w);
    int rc = HL_EIO;

    if (w == NULL) return hl_err(errbuf, errlen, HL_ENOMEM, "model %s: no memory", tmp);
    header_encode(hdr, &p->info, lo);
    hl_model_crc_init(&w->ct);
    w->fd = fd;
    w->n = 0;
    w->pos = 0;
    w->crc = hl_model_crc_update(&w->ct, 0, hdr + H_FILE_SIZE, HLM_HEADER_SIZE - H_FILE_SIZE);
    memcpy(w->buf, hdr, HLM_HEADER_SIZE);
    w->n = w->pos = HLM_HEADER_SIZE;
    if (wbuf_flush(w) != 0 || body_write(w, p, lo) != 0 || wbuf_end(w) != 0) {
        hl_err(errbuf, errlen, rc, "model %s: write: %s", tmp, strerror(errno));
        goto out;
    }
    put_u32(c4, w->crc);
    if (pwrite(fd, c4, 4, H_CRC) != 4) {
        hl_err(errbuf, errlen, rc, "model %s: write crc: %s", tmp, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    free(w);
    return rc;
}

/* The mode open(2) would give a new file: 0666 less the umask. umask(2)
 * only reads by writing, so it is set back at once; nothing else creates
 * files while a model is written (train and model are one-shot commands). */
static mode_t umask_now(void)
{
    mode_t m = umask(022);
    umask(m);
    return m;
}

int hl_model_write(const char *path, const hl_model_parts *p,
                   char *errbuf, size_t errlen)
{
    char tmp[PATH_MAX];
    uint64_t id_bytes;
    layout lo;
    int fd = -1, close_rc, rc;

    if ((rc = parts_check(p, &id_bytes, path, errbuf, errlen)) != 0 ||
        (rc = parts_check_ids(p, path, errbuf, errlen)) != 0)
        return rc == HL_EFORMAT ? HL_EINVAL : rc;  /* the caller's parts, not a file */
    hl_model_layout_compute(&p->info, id_bytes, &lo);
    if (snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path) >= (int)sizeof tmp)
        return hl_err(errbuf, errlen, HL_EINVAL, "model path too long: %s", path);
    rc = HL_EIO;
    if ((fd = mkostemp(tmp, O_CLOEXEC)) < 0) {
        hl_err(errbuf, errlen, rc, "model %s: create: %s", tmp, strerror(errno));
        tmp[0] = '\0';                          /* nothing of ours to unlink */
        goto out;
    }
    if (fchmod(fd, 0666 & ~umask_now()) != 0) {  /* mkstemp's 0600: a worker may be another user */
        hl_err(errbuf, errlen, rc, "model %s: chmod: %s", tmp, strerror(errno));
        goto out;
    }
    if ((rc = file_write(fd, p, &lo, tmp, errbuf, errlen)) != 0) goto out;
    rc = HL_EIO;
    if (fsync(fd) != 0) {
        hl_err(errbuf, errlen, rc, "model %s: fsync: %s", tmp, strerror(errno));
        goto out;
    }
    close_rc = close(fd);
    fd = -1;                    /* never close twice, even if close failed */
    if (close_rc != 0) {
        hl_err(errbuf, errlen, rc, "model %s: close: %s", tmp, strerror(errno));
        goto out;
    }
    if (rename(tmp, path) != 0 || fsync_dir(path) != 0) {
        hl_err(errbuf, errlen, rc, "model %s: publish: %s", path, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (fd >= 0) close(fd);
    if (rc != 0 && tmp[0] != '\0') unlink(tmp);
    return rc;
}
