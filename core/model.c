/* model.c - the .hlm model file: write it, map it, check it, index it.
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
 * Not here: the encoder, ranking (encoder.c, rank.c) or training. */
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define HLM_MAGIC       "HLMODEL"     /* 8 bytes with its NUL */
#define HLM_VERSION     1u
#define HLM_HEADER_SIZE 512u
#define HLM_ALIGN       64u
#define HLM_MAX_DIM     4096u
#define HLM_MAX_WIDTH   65536u        /* hidden layer width */

/* Sections, in file order (W and b of each layer alternate); layers beyond
 * n_layers have offset 0, size 0. */
enum {
    SEC_ID_OFF, SEC_ID_BYTES, SEC_E_IN,
    SEC_E_OUT = SEC_E_IN + 1 + 2 * HL_MAX_LAYERS, SEC_BIAS, N_SEC
};
#define SEC_W(l) (SEC_E_IN + 1 + 2 * (l))
#define SEC_B(l) (SEC_E_IN + 2 + 2 * (l))

/* Header byte offsets (schemas/model.md, "Header"). */
enum {
    H_MAGIC = 0, H_VERSION = 8, H_CRC = 12, H_FILE_SIZE = 16,
    H_HEADER_SIZE = 24, H_DIM = 28, H_HEADS = 32, H_ITEMS = 36,
    H_LAYERS = 40, H_LAYER_OUT = 44, H_RESERVED0 = 60, H_HALF_LIFE = 64,
    H_TYPE_WEIGHT = 128, H_N_TYPES = 152, H_RESERVED1 = 156, H_VERSION_STR = 160,
    H_SECTIONS = 224, H_END = H_SECTIONS + 16 * N_SEC
};

typedef struct layout {
    uint64_t off[N_SEC], size[N_SEC];
    uint64_t file_size;
} layout;

struct hl_model {
    hl_model_info   info;
    const uint8_t  *map;                 /* the whole file, read-only */
    size_t          map_len;
    const uint64_t *id_off;              /* (n_items + 1) offsets into id_bytes */
    const char     *id_bytes;
    const float    *e_in, *e_out, *bias;
    const float    *layer_w[HL_MAX_LAYERS], *layer_b[HL_MAX_LAYERS];
    int32_t        *slots;               /* open addressing: row or -1 */
    uint64_t        mask;                /* n_slots - 1 */
};

/* ---- little-endian fields ---- */

/* The file is little-endian, as is every CPU halflife runs on; a big-endian
 * build stops here instead of misreading models. memcpy keeps unaligned
 * header fields legal. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "model.c assumes a little-endian host");
static uint32_t get_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static float    get_f32(const uint8_t *p) { float v;    memcpy(&v, p, 4); return v; }
static double   get_f64(const uint8_t *p) { double v;   memcpy(&v, p, 8); return v; }
static void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static void put_f32(uint8_t *p, float v)    { memcpy(p, &v, 4); }
static void put_f64(uint8_t *p, double v)   { memcpy(p, &v, 8); }

/* ---- CRC-32 (reflected 0xEDB88320, as zlib) ---- */

/* The tables live in the caller's struct, built per file (a few
 * microseconds), so there is no global to initialise. */
typedef struct crc_tab {
    uint32_t t[8][256];
    int      clmul;              /* the CPU has PCLMULQDQ: fold 64-byte blocks */
} crc_tab;

static void crc_tab_init(crc_tab *ct)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
        ct->t[0][i] = c;
    }
    for (int s = 1; s < 8; s++)
        for (int i = 0; i < 256; i++)
            ct->t[s][i] = (ct->t[s - 1][i] >> 8) ^ ct->t[0][ct->t[s - 1][i] & 0xff];
#if defined(__x86_64__)
    ct->clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#else
    ct->clmul = 0;
#endif
}

/* Slice-by-8 on the raw register (no pre/post inversion): eight table
 * lookups per 8 bytes. The portable path, and every tail. */
static uint32_t crc_raw_tab(const crc_tab *ct, uint32_t crc, const uint8_t *b, size_t n)
{
    for (; n >= 8; n -= 8, b += 8) {
        uint32_t lo = get_u32(b) ^ crc, hi = get_u32(b + 4);
        crc = ct->t[7][lo & 0xff] ^ ct->t[6][(lo >> 8) & 0xff] ^
              ct->t[5][(lo >> 16) & 0xff] ^ ct->t[4][lo >> 24] ^
              ct->t[3][hi & 0xff] ^ ct->t[2][(hi >> 8) & 0xff] ^
              ct->t[1][(hi >> 16) & 0xff] ^ ct->t[0][hi >> 24];
    }
    while (n--) crc = (crc >> 8) ^ ct->t[0][(crc ^ *b++) & 0xff];
    return crc;
}

#if defined(__x86_64__)
/* Carry-less folding (the method of Intel's "Fast CRC Computation for
 * Generic Polynomials Using PCLMULQDQ"): a 128-bit lane A, D bits before a
 * lane B, is replaced by lo(A) * (x^(D+32) mod P) ^ hi(A) * (x^(D-32) mod P),
 * which has A x^D's residue in B's frame; the constants are bit-reflected
 * and shifted left one for the reflected CRC. Four lanes fold over 64-byte
 * steps (D = 512), then into one (D = 128), and the last 16 bytes go
 * through the table: the CRC of the lane equals the CRC of what it folds. */
#define K_512_LO 0x154442bd4ll   /* x^544 mod P */
#define K_512_HI 0x1c6e41596ll   /* x^480 mod P */
#define K_128_LO 0x1751997d0ll   /* x^160 mod P */
#define K_128_HI 0x0ccaa009ell   /* x^96  mod P */

__attribute__((target("pclmul,sse4.1")))
static inline __m128i crc_fold1(__m128i a, __m128i k, __m128i b)
{
    return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(a, k, 0x00),
                                       _mm_clmulepi64_si128(a, k, 0x11)), b);
}

/* Raw CRC register after n64 (>= 1) whole 64-byte blocks at b. */
__attribute__((target("pclmul,sse4.1")))
static uint32_t crc_raw_clmul(const crc_tab *ct, uint32_t crc, const uint8_t *b, size_t n64)
{
    const __m128i k512 = _mm_set_epi64x(K_512_HI, K_512_LO);
    const __m128i k128 = _mm_set_epi64x(K_128_HI, K_128_LO);
    __m128i x0 = _mm_loadu_si128((const __m128i *)(const void *)b);
    __m128i x1 = _mm_loadu_si128((const __m128i *)(const void *)(b + 16));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(const void *)(b + 32));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(const void *)(b + 48));
    uint8_t last[16];

    x0 = _mm_xor_si128(x0, _mm_cvtsi32_si128((int)crc));   /* the register enters the first 4 bytes */
    for (size_t i = 1; i < n64; i++) {
        b += 64;
        x0 = crc_fold1(x0, k512, _mm_loadu_si128((const __m128i *)(const void *)b));
        x1 = crc_fold1(x1, k512, _mm_loadu_si128((const __m128i *)(const void *)(b + 16)));
        x2 = crc_fold1(x2, k512, _mm_loadu_si128((const __m128i *)(const void *)(b + 32)));
        x3 = crc_fold1(x3, k512, _mm_loadu_si128((const __m128i *)(const void *)(b + 48)));
    }
    x1 = crc_fold1(x0, k128, x1);
    x2 = crc_fold1(x1, k128, x2);
    x3 = crc_fold1(x2, k128, x3);
    _mm_storeu_si128((__m128i *)(void *)last, x3);
    return crc_raw_tab(ct, 0, last, 16);
}
#endif

/* crc of (previous bytes, p[0..n)) given crc of the previous bytes; start
 * with 0. Same value as zlib.crc32(data, crc). */
static uint32_t crc_update(const crc_tab *ct, uint32_t crc, const void *p, size_t n)
{
    const uint8_t *b = p;
    crc = ~crc;
#if defined(__x86_64__)
    if (ct->clmul && n >= 256) {
        size_t n64 = n / 64;
        crc = crc_raw_clmul(ct, crc, b, n64);
        b += 64 * n64;
        n -= 64 * n64;
    }
#endif
    return ~crc_raw_tab(ct, crc, b, n);
}

static uint64_t fnv1a64(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* ---- shape and layout ---- */

static uint64_t align_up(uint64_t x)
{
    return (x + HLM_ALIGN - 1) & ~(uint64_t)(HLM_ALIGN - 1);
}

static int layer_in(const hl_model_info *mi, int l)
{
    return l == 0 ? hl_model_input_dim(mi) : mi->layer_out[l - 1];
}

/* Checks the header's scalar fields; the message names the field, the
 * range expected and the value found. */
static int info_check(const hl_model_info *mi, const char *path,
                      char *errbuf, size_t errlen)
{
    const char *f = NULL;
    long long v = 0, lo = 0, hi = 0;

#define RANGE(name, val, a, b) \
    if (f == NULL && ((long long)(val) < (a) || (long long)(val) > (b))) \
        { f = name; v = (long long)(val); lo = (a); hi = (b); }
    RANGE("dim", mi->dim, 1, HLM_MAX_DIM);
    RANGE("n_heads", mi->n_heads, 1, HL_MAX_HEADS);
    RANGE("n_items", mi->n_items, 1, INT32_MAX);
    RANGE("n_layers", mi->n_layers, 1, HL_MAX_LAYERS);
    for (int l = 0; f == NULL && l < mi->n_layers; l++)
        RANGE("layer_out", mi->layer_out[l], 1, HLM_MAX_WIDTH);
#undef RANGE
    if (f != NULL)
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "model %s: field %s: expected %lld..%lld, found %lld",
                      path, f, lo, hi, v);
    if (mi->layer_out[mi->n_layers - 1] != mi->dim)
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "model %s: field layer_out[%d]: expected dim %d, found %d",
                      path, mi->n_layers - 1, mi->dim, mi->layer_out[mi->n_layers - 1]);
    for (int h = 0; h < mi->n_heads; h++)
        if (!isfinite(mi->half_life_ms[h]) || mi->half_life_ms[h] <= 0)
            return hl_err(errbuf, errlen, HL_EFORMAT,
                          "model %s: field half_life_ms[%d]: expected finite and > 0, found %g",
                          path, h, mi->half_life_ms[h]);
    /* A negative weight makes a head's mass negative: x_h = s_h / max(m_h,
     * eps) then divides by eps and lists score in the millions. Zero is a
     * weight ("ignore this type"), so only below zero is refused. */
    for (int t = 0; t < HL_N_TYPES; t++)
        if (!isfinite(mi->type_weight[t]) || mi->type_weight[t] < 0)
            return hl_err(errbuf, errlen, HL_EFORMAT,
                          "model %s: field type_weight[%s]: expected finite and >= 0, found %g",
                          path, hl_type_name(t), (double)mi->type_weight[t]);
    if (memchr(mi->version, '\0', sizeof mi->version) == NULL)
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "model %s: field version: not NUL-terminated within 64 bytes", path);
    return 0;
}

/* The canonical layout for a shape and id_bytes bytes of item ids. */
static void layout_compute(const hl_model_info *mi, uint64_t id_bytes, layout *lo)
{
    uint64_t n = (uint64_t)mi->n_items, d = (uint64_t)mi->dim, pos = HLM_HEADER_SIZE;

    memset(lo, 0, sizeof *lo);
#define PLACE(sec, bytes) do { lo->off[sec] = pos; lo->size[sec] = (bytes); \
                               pos += lo->size[sec]; } while (0)
    PLACE(SEC_ID_OFF, 8 * (n + 1));
    PLACE(SEC_ID_BYTES, id_bytes);
    pos = align_up(pos);
    PLACE(SEC_E_IN, 4 * n * d);
    for (int l = 0; l < mi->n_layers; l++) {
        uint64_t out = (uint64_t)mi->layer_out[l], in = (uint64_t)layer_in(mi, l);
        pos = align_up(pos);
        PLACE(SEC_W(l), 4 * out * in);
        pos = align_up(pos);
        PLACE(SEC_B(l), 4 * out);
    }
    pos = align_up(pos);
    PLACE(SEC_E_OUT, 4 * n * d);
    pos = align_up(pos);
    PLACE(SEC_BIAS, 4 * n);
#undef PLACE
    lo->file_size = pos;
}

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

/* ---- header encode / decode ---- */

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
    mi->fingerprint = fnv1a64(h, HLM_HEADER_SIZE);
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
    layout_compute(mi, id_bytes, lo);
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

/* 1 if any of x[0..n) is inf or nan. An exponent of all ones plus one
 * carries into bit 31, so the test is AND, ADD and OR only: it vectorises. */
static int any_nonfinite(const float *x, size_t n)
{
    uint32_t acc = 0, u;
    for (size_t j = 0; j < n; j++) {
        memcpy(&u, &x[j], sizeof u);
        acc |= (u & 0x7f800000u) + 0x00800000u;
    }
    return (acc & 0x80000000u) != 0;
}

/* Index of the first non-finite float in x[0..n), or -1. Chunks of a fixed
 * size keep the common all-finite scan a loop the compiler vectorises. */
static int64_t first_nonfinite(const float *x, size_t n)
{
    enum { CHUNK = 4096 };
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t len = n - i < CHUNK ? n - i : CHUNK;
        if (len == CHUNK ? !any_nonfinite(x + i, CHUNK) : !any_nonfinite(x + i, len))
            continue;
        for (size_t j = i; j < i + len; j++)
            if (!isfinite(x[j])) return (int64_t)j;
    }
    return -1;
}

static int floats_check(const float *x, size_t n, size_t row_len, const char *what,
                        const char *path, char *errbuf, size_t errlen)
{
    int64_t i = first_nonfinite(x, n);
    if (i < 0) return 0;
    return hl_err(errbuf, errlen, HL_EFORMAT,
                  "model %s: %s[%lld][%lld] is %g: expected finite values",
                  path, what, (long long)((size_t)i / row_len),
                  (long long)((size_t)i % row_len), (double)x[i]);
}

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

/* ---- the id index ---- */

/* Ids come either from a file (offsets + bytes) or from a writer's arrays. */
typedef struct id_src {
    const uint64_t    *off;
    const char        *bytes;
    const char *const *ids;
    const uint32_t    *lens;
} id_src;

static const char *id_get(const id_src *src, int32_t row, uint32_t *len)
{
    if (src->off != NULL) {
        *len = (uint32_t)(src->off[row + 1] - src->off[row]);
        return src->bytes + src->off[row];
    }
    *len = src->lens[row];
    return src->ids[row];
}

static int32_t index_find(const int32_t *slots, uint64_t mask, const id_src *src,
                          const char *id, size_t len, uint64_t *slot)
{
    uint64_t i = fnv1a64(id, len) & mask;
    for (;; i = (i + 1) & mask) {
        uint32_t l;
        const char *s;
        if (slots[i] < 0) { *slot = i; return -1; }
        s = id_get(src, slots[i], &l);
        if (l == len && memcmp(s, id, len) == 0) { *slot = i; return slots[i]; }
    }
}

/* Builds the open-addressing index (load <= 0.5) of n ids; refuses a
 * duplicate, naming both rows. *slots_out is the caller's to free. */
static int index_build(const id_src *src, int32_t n, int32_t **slots_out,
                       uint64_t *mask_out, const char *path, char *errbuf, size_t errlen)
{
    uint64_t cap = 16, slot;
    int32_t *slots;

    while (cap < 2 * (uint64_t)n) cap *= 2;
    if ((slots = malloc(cap * sizeof *slots)) == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "model %s: no memory for the id index"
                      " (%llu slots)", path, (unsigned long long)cap);
    memset(slots, 0xff, cap * sizeof *slots);
    for (int32_t r = 0; r < n; r++) {
        uint32_t len;
        const char *id = id_get(src, r, &len);
        int32_t prev = index_find(slots, cap - 1, src, id, len, &slot);
        if (prev >= 0) {
            free(slots);
            return hl_err(errbuf, errlen, HL_EFORMAT,
                          "model %s: duplicate item id \"%.*s\" at rows %d and %d",
                          path, (int)(len > 64 ? 64 : len), id, prev, r);
        }
        slots[slot] = r;
    }
    *slots_out = slots;
    *mask_out = cap - 1;
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

static int map_file(const char *path, const uint8_t **map, size_t *len,
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
    p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
        hl_err(errbuf, errlen, rc, "model %s: mmap: %s", path, strerror(errno));
        goto out;
    }
    *map = p;
    *len = (size_t)st.st_size;
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

    crc_tab_init(&ct);
    got = crc_update(&ct, 0, map + H_FILE_SIZE, len - H_FILE_SIZE);
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
    if ((rc = info_check(&m->info, path, errbuf, errlen)) != 0) return rc;
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

    if ((rc = floats_check(m->e_in, n * d, d, "e_in", path, errbuf, errlen)) != 0) return rc;
    for (int l = 0; l < mi->n_layers; l++) {
        size_t out = (size_t)mi->layer_out[l], in = (size_t)layer_in(mi, l);
        snprintf(w, sizeof w, "layer_w[%d]", l);
        snprintf(b, sizeof b, "layer_b[%d]", l);
        if ((rc = floats_check(m->layer_w[l], out * in, in, w, path, errbuf, errlen)) != 0 ||
            (rc = floats_check(m->layer_b[l], out, out, b, path, errbuf, errlen)) != 0)
            return rc;
    }
    if ((rc = floats_check(m->e_out, n * d, d, "e_out", path, errbuf, errlen)) != 0) return rc;
    return floats_check(m->bias, n, n, "bias", path, errbuf, errlen);
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
    if (map_file(path, &m->map, &m->map_len, errbuf, errlen) != 0) goto fail;
    if (header_read(m, path, &lo, errbuf, errlen) != 0) goto fail;
    if (crc_check(m->map, m->map_len, path, errbuf, errlen) != 0) goto fail;
    if (padding_check(m->map, &lo, path, errbuf, errlen) != 0) goto fail;
    pointers_set(m, &lo);
    if (id_offsets_check(m->id_off, m->info.n_items, lo.size[SEC_ID_BYTES],
                         path, errbuf, errlen) != 0) goto fail;
    if (values_check(m, path, errbuf, errlen) != 0) goto fail;
    src = (id_src){ .off = m->id_off, .bytes = m->id_bytes };
    if (index_build(&src, m->info.n_items, &m->slots, &m->mask,
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

int32_t hl_model_item_find(const hl_model *m, const char *id, size_t len)
{
    id_src src = { .off = m->id_off, .bytes = m->id_bytes };
    uint64_t slot;
    if (len < 1 || len > HL_MAX_ID_LEN) return -1;
    return index_find(m->slots, m->mask, &src, id, len, &slot);
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
            w->crc = crc_update(&w->ct, w->crc, w->buf, w->n);
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
    w->crc = crc_update(&w->ct, w->crc, w->buf, w->n);
    return wbuf_flush(w);
}

/* Checks what open would refuse, so a bad model fails at write time. */
static int parts_check(const hl_model_parts *p, uint64_t *id_bytes, const char *path,
                       char *errbuf, size_t errlen)
{
    const hl_model_info *mi = &p->info;
    size_t n, d;
    int rc;

    if ((rc = info_check(mi, path, errbuf, errlen)) != 0) return rc;
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
    if ((rc = floats_check(p->e_in, n * d, d, "e_in", path, errbuf, errlen)) != 0 ||
        (rc = floats_check(p->e_out, n * d, d, "e_out", path, errbuf, errlen)) != 0 ||
        (rc = floats_check(p->bias, n, n, "bias", path, errbuf, errlen)) != 0)
        return rc;
    for (int l = 0; l < mi->n_layers; l++) {
        size_t out = (size_t)mi->layer_out[l], in = (size_t)layer_in(mi, l);
        if ((rc = floats_check(p->layer_w[l], out * in, in, "layer_w", path, errbuf, errlen)) != 0 ||
            (rc = floats_check(p->layer_b[l], out, out, "layer_b", path, errbuf, errlen)) != 0)
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
    int rc = index_build(&src, p->info.n_items, &slots, &mask, path, errbuf, errlen);
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
    crc_tab_init(&w->ct);
    w->fd = fd;
    w->n = 0;
    w->pos = 0;
    w->crc = crc_update(&w->ct, 0, hdr + H_FILE_SIZE, HLM_HEADER_SIZE - H_FILE_SIZE);
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
    layout_compute(&p->info, id_bytes, &lo);
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return hl_err(errbuf, errlen, HL_EINVAL, "model path too long: %s", path);
    rc = HL_EIO;
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0) {
        hl_err(errbuf, errlen, rc, "model %s: open: %s", tmp, strerror(errno));
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
    if (rc != 0) unlink(tmp);
    return rc;
}
