/* model.c - opens a .hlm model file: map it, check it, index it.
 *
 * A file is a 512-byte header followed by sections whose offsets follow from
 * the header's shape fields alone (schemas/model.md has every byte). The
 * reader recomputes that layout and compares it with the section table the
 * file carries, so a damaged field is named with the value expected and the
 * value found. Float arrays start on 64-byte boundaries, so the pointers
 * handed out from the read-only mapping are aligned for SIMD loads.
 *
 * Integrity: a CRC-32 (zlib's polynomial, so Python's zlib.crc32 checks it
 * too) over every byte after the CRC field is computed at write time and
 * verified at open: by carry-less multiplication where the CPU has it
 * (PCLMULQDQ, over 10 GB/s), slice-by-8 tables elsewhere (~1.5 GB/s). The fingerprint is FNV-1a 64 of the 512-byte header, which
 * holds that CRC: it changes with any byte of the file and costs nothing.
 *
 * Open also checks what a CRC cannot: every float finite, every id 1..256
 * bytes, no id twice. The id -> row index is the only allocation at open.
 *
 * Not here: writing a file (model_write.c), the CRC, layout and id index
 * that reading and writing share (model_format.c), the encoder, ranking
 * (encoder.c, rank.c) or training. */
#include "model_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct hl_model {
    hl_model_info   info;
    const uint8_t  *map;                 /* the whole file, read-only */
    size_t          map_len;
    hl_model_file   file;                /* the file the map was read from */
    const uint64_t *id_off;              /* (n_items + 1) offsets into id_bytes */
    const char     *id_bytes;
    const float    *e_in, *e_out, *bias;
    const float    *layer_w[HL_MAX_LAYERS], *layer_b[HL_MAX_LAYERS];
    int32_t        *slots;               /* open addressing: row or -1 */
    uint64_t        mask;                /* n_slots - 1 */
};

static const char *sec_name(int s, char *buf, size_t len)
{
    static const char *const fixed[] = { "item_id_offsets", "item_id_bytes", "e_in" };
    if (s <= SEC_E_IN) return fixed[s];
    if (s < SEC_E_OUT) {
        snprintf(buf, len, "layer_%c[%d]", (s - SEC_W(0)) % 2 ? 'b' : 'w', (s - SEC_W(0)) / 2);
        return buf;
    }
    return s == SEC_E_OUT ? "e_out" : "bias";
}

/* ---- header decode ---- */

/* First nonzero byte of p[from..to), or -1. */
static long first_nonzero(const uint8_t *p, long from, long to)
{
    for (long i = from; i < to; i++)
        if (p[i] != 0) return i;
    return -1;
}

static int header_check_fixed(const uint8_t *h, uint64_t file_len, const char *path,
                              char *errbuf, size_t errlen)
{
    uint32_t v;
    long nz;

    if (memcmp(h + H_MAGIC, HLM_MAGIC, 8) != 0)
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "model %s: field magic: expected \"HLMODEL\\0\", found %02x %02x %02x %02x %02x %02x %02x %02x"
                      " (not a .hlm file)", path, h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]);
    if ((v = get_u32(h + H_VERSION)) != HLM_VERSION)
        return hl_err(errbuf, errlen, HL_EVERSION,
                      "model %s: field format_version: expected %u, found %u",
                      path, HLM_VERSION, v);
    if ((v = get_u32(h + H_HEADER_SIZE)) != HLM_HEADER_SIZE)
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "model %s: field header_size: expected %u, found %u",
                      path, HLM_HEADER_SIZE, v);
    if (get_u64(h + H_FILE_SIZE) != file_len)
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "model %s: field file_size: header says %llu bytes, file has %llu"
                      " (truncated or appended to)", path,
                      (unsigned long long)get_u64(h + H_FILE_SIZE),
                      (unsigned long long)file_len);
    if ((v = get_u32(h + H_N_TYPES)) != HL_N_TYPES)
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "model %s: field n_types: expected %d, found %u", path, HL_N_TYPES, v);
    if ((nz = first_nonzero(h, H_RESERVED0, H_RESERVED0 + 4)) >= 0 ||
        (nz = first_nonzero(h, H_RESERVED1, H_RESERVED1 + 4)) >= 0 ||
        (nz = first_nonzero(h, H_END, HLM_HEADER_SIZE)) >= 0)
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "model %s: reserved header byte %ld: expected 0, found %u",
                      path, nz, h[nz]);
    return 0;
}

/* Unused layer_out / half-life slots and the bytes after the version's NUL
 * must be zero: the file then has one canonical form. */
static int header_check_unused(const uint8_t *h, const hl_model_info *mi,
                               const char *path, char *errbuf, size_t errlen)
{
    long nz;
    size_t vlen = strnlen((const char *)h + H_VERSION_STR, 64);

    if ((nz = first_nonzero(h, H_LAYER_OUT + 4 * mi->n_layers, H_RESERVED0)) >= 0 ||
        (nz = first_nonzero(h, H_HALF_LIFE + 8 * mi->n_heads, H_TYPE_WEIGHT)) >= 0 ||
        (vlen < 64 && (nz = first_nonzero(h, H_VERSION_STR + (long)vlen, H_SECTIONS)) >= 0))
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "model %s: unused header byte %ld: expected 0, found %u",
                      path, nz, h[nz]);
    return 0;
}

static void header_decode(const uint8_t *h, hl_model_info *mi)
{
    /* header_check_counts() has made sure every count fits an int. */
    memset(mi, 0, sizeof *mi);
    mi->dim = (int)get_u32(h + H_DIM);
    mi->n_heads = (int)get_u32(h + H_HEADS);
    mi->n_items = (int32_t)get_u32(h + H_ITEMS);
    mi->n_layers = (int)get_u32(h + H_LAYERS);
    for (int l = 0; l < HL_MAX_LAYERS; l++)
        mi->layer_out[l] = (int)get_u32(h + H_LAYER_OUT + 4 * l);
    for (int i = 0; i < HL_MAX_HEADS; i++)
        mi->half_life_ms[i] = get_f64(h + H_HALF_LIFE + 8 * i);
    for (int t = 0; t < HL_N_TYPES; t++)
        mi->type_weight[t] = get_f32(h + H_TYPE_WEIGHT + 4 * t);
    memcpy(mi->version, h + H_VERSION_STR, sizeof mi->version);
    mi->fingerprint = hl_fnv1a64(HL_FNV64_HLM, h, HLM_HEADER_SIZE);
}

/* Counts that do not fit an int32 (bit 31 set) are refused before decode. */
static int header_check_counts(const uint8_t *h, const char *path,
                               char *errbuf, size_t errlen)
{
    static const struct { int off; const char *name; } f[] = {
        { H_DIM, "dim" }, { H_HEADS, "n_heads" }, { H_ITEMS, "n_items" },
        { H_LAYERS, "n_layers" },
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        uint32_t v = get_u32(h + f[i].off);
        if (v > INT32_MAX)
            return hl_err(errbuf, errlen, HL_EFORMAT,
                          "model %s: field %s: expected < 2^31, found %u", path, f[i].name, v);
    }
    for (int l = 0; l < HL_MAX_LAYERS; l++)
        if (get_u32(h + H_LAYER_OUT + 4 * l) > INT32_MAX)
            return hl_err(errbuf, errlen, HL_EFORMAT,
                          "model %s: field layer_out[%d]: expected < 2^31, found %u",
                          path, l, get_u32(h + H_LAYER_OUT + 4 * l));
    return 0;
}

/* The section table must equal the layout the shape implies. */
static int sections_check(const uint8_t *h, const hl_model_info *mi, layout *lo,
                          const char *path, char *errbuf, size_t errlen)
{
    uint64_t id_bytes = get_u64(h + H_SECTIONS + 16 * SEC_ID_BYTES + 8);
    char nb[32];

    if (id_bytes < (uint64_t)mi->n_items || id_bytes > (uint64_t)mi->n_items * HL_MAX_ID_LEN)
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "model %s: section item_id_bytes: size %llu outside %d..%llu"
                      " (1..256 bytes per id)", path, (unsigned long long)id_bytes,
                      mi->n_items, (unsigned long long)mi->n_items * HL_MAX_ID_LEN);
    hl_model_layout_compute(mi, id_bytes, lo);
    for (int s = 0; s < N_SEC; s++) {
        uint64_t off = get_u64(h + H_SECTIONS + 16 * s);
        uint64_t size = get_u64(h + H_SECTIONS + 16 * s + 8);
        if (off != lo->off[s] || size != lo->size[s])
            return hl_err(errbuf, errlen, HL_EFORMAT,
                          "model %s: section %s: expected offset %llu size %llu, found"
                          " offset %llu size %llu", path, sec_name(s, nb, sizeof nb),
                          (unsigned long long)lo->off[s], (unsigned long long)lo->size[s],
                          (unsigned long long)off, (unsigned long long)size);
    }
    if (lo->file_size != get_u64(h + H_FILE_SIZE))
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "model %s: sizes do not add up: the sections end at byte %llu,"
                      " file_size says %llu", path, (unsigned long long)lo->file_size,
                      (unsigned long long)get_u64(h + H_FILE_SIZE));
    return 0;
}

/* ---- body checks ---- */

static int padding_check(const uint8_t *map, const layout *lo, const char *path,
                         char *errbuf, size_t errlen)
{
    uint64_t end = HLM_HEADER_SIZE;
    for (int s = 0; s < N_SEC; s++) {
        long nz;
        if (lo->size[s] == 0) continue;
        if ((nz = first_nonzero(map, (long)end, (long)lo->off[s])) >= 0)
            return hl_err(errbuf, errlen, HL_EFORMAT,
                          "model %s: padding byte %ld: expected 0, found %u",
                          path, nz, map[nz]);
        end = lo->off[s] + lo->size[s];
    }
    return 0;
}

/* Offsets start at 0, end at the byte count, and give every id 1..256 bytes. */
static int id_offsets_check(const uint64_t *off, int32_t n, uint64_t n_bytes,
                            const char *path, char *errbuf, size_t errlen)
{
    if (off[0] != 0)
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "model %s: item_id_offsets[0]: expected 0, found %llu",
                      path, (unsigned long long)off[0]);
    for (int32_t r = 0; r < n; r++) {
        uint64_t len = off[r + 1] - off[r];
        if (off[r + 1] < off[r] || len < 1 || len > HL_MAX_ID_LEN || off[r + 1] > n_bytes)
            return hl_err(errbuf, errlen, HL_EFORMAT,
                          "model %s: item id at row %d: offsets %llu..%llu give a length"
                          " outside 1..%d (or past the %llu id bytes)", path, r,
                          (unsigned long long)off[r], (unsigned long long)off[r + 1],
                          HL_MAX_ID_LEN, (unsigned long long)n_bytes);
    }
    if (off[n] != n_bytes)
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "model %s: item_id_offsets[%d]: expected %llu (the id bytes), found %llu",
                      path, n, (unsigned long long)n_bytes, (unsigned long long)off[n]);
    return 0;
}

/* ---- open ---- */

/* len bytes of fd into buf: 0, or HL_EIO when the file ends early (cut
 * while read) or read fails. */
static int read_all(int fd, uint8_t *buf, size_t len, const char *path,
                    char *errbuf, size_t errlen)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = read(fd, buf + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return hl_err(errbuf, errlen, HL_EIO, "model %s: %s at byte %zu of %zu", path,
                          n < 0 ? strerror(errno) : "the file got shorter while it was read "
                          "(written in place? replace it by rename)", off, len);
        off += (size_t)n;
    }
    return 0;
}

static int map_file(const char *path, const uint8_t **map, size_t *len, hl_model_file *id,
                    char *errbuf, size_t errlen)
{
    struct stat st;
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
     * writer, and startup would hang without a word; it changes nothing
     * for a regular file, and anything else is refused below. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK), rc = HL_EIO;
    void *p;

    if (fd < 0)
        return hl_err(errbuf, errlen, errno == ENOENT ? HL_ENOENT : HL_EIO,
                      "model %s: open: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0) {
        hl_err(errbuf, errlen, rc, "model %s: fstat: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = hl_err(errbuf, errlen, HL_EINVAL, "model %s: not a regular file (%s)", path,
                    S_ISDIR(st.st_mode) ? "a directory" : S_ISFIFO(st.st_mode) ? "a FIFO" :
                    S_ISSOCK(st.st_mode) ? "a socket" : "a device");
        goto out;
    }
    if (st.st_size < (off_t)HLM_HEADER_SIZE) {
        rc = hl_err(errbuf, errlen, HL_EFORMAT,
                    "model %s: truncated: %lld bytes, the header alone is %u",
                    path, (long long)st.st_size, HLM_HEADER_SIZE);
        goto out;
    }
    /* A private copy, not a mapping of the file: a file written over in
     * place (cp, or a truncate) while its model serves would change the
     * validated bytes under the readers, or kill them with SIGBUS past a
     * truncation. Anonymous pages cost what the mapped ones did. */
    p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        hl_err(errbuf, errlen, rc, "model %s: %lld bytes: no memory: %s", path,
               (long long)st.st_size, strerror(errno));
        goto out;
    }
    madvise(p, (size_t)st.st_size, MADV_HUGEPAGE);     /* fewer faults and TLB misses */
    rc = read_all(fd, p, (size_t)st.st_size, path, errbuf, errlen);
    if (rc == 0 && mprotect(p, (size_t)st.st_size, PROT_READ) != 0)
        rc = hl_err(errbuf, errlen, HL_EIO, "model %s: mprotect: %s", path, strerror(errno));
    if (rc != 0) {
        munmap(p, (size_t)st.st_size);
        goto out;
    }
    *map = p;
    *len = (size_t)st.st_size;
    *id = (hl_model_file){.dev = (uint64_t)st.st_dev, .ino = (uint64_t)st.st_ino,
                          .size = (int64_t)st.st_size,
                          .mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 +
                                      st.st_mtim.tv_nsec};
    rc = 0;
out:
    close(fd);
    return rc;
}

static int crc_check(const uint8_t *map, size_t len, const char *path,
                     char *errbuf, size_t errlen)
{
    crc_tab ct;
    uint32_t want = get_u32(map + H_CRC), got;

    hl_model_crc_init(&ct);
    got = hl_model_crc_update(&ct, 0, map + H_FILE_SIZE, len - H_FILE_SIZE);
    if (got != want)
        return hl_err(errbuf, errlen, HL_ECRC,
                      "model %s: field crc32: header says %08x, the file's bytes give"
                      " %08x (damaged file)", path, want, got);
    return 0;
}

static int header_read(hl_model *m, const char *path, layout *lo,
                       char *errbuf, size_t errlen)
{
    const uint8_t *h = m->map;
    int rc;

    if ((rc = header_check_fixed(h, m->map_len, path, errbuf, errlen)) != 0) return rc;
    if ((rc = header_check_counts(h, path, errbuf, errlen)) != 0) return rc;
    header_decode(h, &m->info);
    if ((rc = hl_model_info_check(&m->info, path, errbuf, errlen)) != 0) return rc;
    if ((rc = header_check_unused(h, &m->info, path, errbuf, errlen)) != 0) return rc;
    return sections_check(h, &m->info, lo, path, errbuf, errlen);
}

static void pointers_set(hl_model *m, const layout *lo)
{
    m->id_off = (const uint64_t *)(const void *)(m->map + lo->off[SEC_ID_OFF]);
    m->id_bytes = (const char *)m->map + lo->off[SEC_ID_BYTES];
    m->e_in = (const float *)(const void *)(m->map + lo->off[SEC_E_IN]);
    m->e_out = (const float *)(const void *)(m->map + lo->off[SEC_E_OUT]);
    m->bias = (const float *)(const void *)(m->map + lo->off[SEC_BIAS]);
    for (int l = 0; l < m->info.n_layers; l++) {
        m->layer_w[l] = (const float *)(const void *)(m->map + lo->off[SEC_W(l)]);
        m->layer_b[l] = (const float *)(const void *)(m->map + lo->off[SEC_B(l)]);
    }
}

static int values_check(const hl_model *m, const char *path, char *errbuf, size_t errlen)
{
    const hl_model_info *mi = &m->info;
    size_t n = (size_t)mi->n_items, d = (size_t)mi->dim;
    char w[32], b[32];
    int rc;

    if ((rc = hl_model_floats_check(m->e_in, n * d, d, "e_in", path, errbuf, errlen)) != 0) return rc;
    for (int l = 0; l < mi->n_layers; l++) {
        size_t out = (size_t)mi->layer_out[l], in = (size_t)layer_in(mi, l);
        snprintf(w, sizeof w, "layer_w[%d]", l);
        snprintf(b, sizeof b, "layer_b[%d]", l);
        if ((rc = hl_model_floats_check(m->layer_w[l], out * in, in, w, path, errbuf, errlen)) != 0 ||
            (rc = hl_model_floats_check(m->layer_b[l], out, out, b, path, errbuf, errlen)) != 0)
            return rc;
    }
    if ((rc = hl_model_floats_check(m->e_out, n * d, d, "e_out", path, errbuf, errlen)) != 0) return rc;
    return hl_model_floats_check(m->bias, n, n, "bias", path, errbuf, errlen);
}

hl_model *hl_model_open(const char *path, char *errbuf, size_t errlen)
{
    hl_model *m = calloc(1, sizeof *m);
    layout lo;
    id_src src;

    if (m == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "model %s: no memory", path);
        return NULL;
    }
    if (map_file(path, &m->map, &m->map_len, &m->file, errbuf, errlen) != 0) goto fail;
    if (header_read(m, path, &lo, errbuf, errlen) != 0) goto fail;
    if (crc_check(m->map, m->map_len, path, errbuf, errlen) != 0) goto fail;
    if (padding_check(m->map, &lo, path, errbuf, errlen) != 0) goto fail;
    pointers_set(m, &lo);
    if (id_offsets_check(m->id_off, m->info.n_items, lo.size[SEC_ID_BYTES],
                         path, errbuf, errlen) != 0) goto fail;
    if (values_check(m, path, errbuf, errlen) != 0) goto fail;
    src = (id_src){ .off = m->id_off, .bytes = m->id_bytes };
    if (hl_model_index_build(&src, m->info.n_items, &m->slots, &m->mask,
                             path, errbuf, errlen) != 0) goto fail;
    return m;
fail:
    hl_model_close(m);
    return NULL;
}

void hl_model_close(hl_model *m)
{
    if (m == NULL) return;
    if (m->map != NULL) munmap((void *)m->map, m->map_len);
    free(m->slots);
    free(m);
}

const hl_model_info *hl_model_info_get(const hl_model *m) { return &m->info; }
const hl_model_file *hl_model_file_get(const hl_model *m) { return &m->file; }
const void *hl_model_bytes(const hl_model *m, size_t *len)
{
    *len = m->map_len;
    return m->map;
}

int32_t hl_model_item_find(const hl_model *m, const char *id, size_t len)
{
    id_src src = { .off = m->id_off, .bytes = m->id_bytes };
    uint64_t slot;
    if (len < 1 || len > HL_MAX_ID_LEN) return -1;
    return hl_model_index_find(m->slots, m->mask, &src, id, len, &slot);
}

const char *hl_model_item_id(const hl_model *m, int32_t row, uint32_t *len)
{
    *len = (uint32_t)(m->id_off[row + 1] - m->id_off[row]);
    return m->id_bytes + m->id_off[row];
}

const float *hl_model_e_in(const hl_model *m)  { return m->e_in; }
const float *hl_model_e_out(const hl_model *m) { return m->e_out; }
const float *hl_model_bias(const hl_model *m)  { return m->bias; }

const float *hl_model_layer_w(const hl_model *m, int l)
{
    return (l >= 0 && l < m->info.n_layers) ? m->layer_w[l] : NULL;
}

const float *hl_model_layer_b(const hl_model *m, int l)
{
    return (l >= 0 && l < m->info.n_layers) ? m->layer_b[l] : NULL;
}
