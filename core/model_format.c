/* model_format.c - the rules of the .hlm format that reading and writing
 * share: the CRC-32, the shape's limits, the canonical section layout, the
 * value check (finite and within HL_MODEL_MAX_ABS) and the item id index.
 *
 * They live apart from model.c (open and check a file) and model_write.c
 * (write one) because both sides must apply them identically: a writer that
 * computed the layout or the CRC its own way could produce files the reader
 * refuses. The CRC is zlib's (reflected 0xEDB88320), by carry-less
 * multiplication where the CPU has PCLMULQDQ, slice-by-8 tables elsewhere.
 * No I/O here. */
#include "model_internal.h"
#include "utf8.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* ---- CRC-32 (reflected 0xEDB88320, as zlib) ---- */

void hl_model_crc_init(crc_tab *ct)
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

uint32_t hl_model_crc_update(const crc_tab *ct, uint32_t crc, const void *p, size_t n)
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

/* ---- shape and layout ---- */

static uint64_t align_up(uint64_t x)
{
    return (x + HLM_ALIGN - 1) & ~(uint64_t)(HLM_ALIGN - 1);
}

int hl_model_info_check(const hl_model_info *mi, const char *path,
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
    for (int h = 0; h < mi->n_heads; h++) {
        if (!isfinite(mi->half_life_ms[h]) || mi->half_life_ms[h] <= 0)
            return hl_err(errbuf, errlen, HL_EFORMAT,
                          "model %s: field half_life_ms[%d]: expected finite and > 0, found %g",
                          path, h, mi->half_life_ms[h]);
        if (!isfinite(M_LN2 / mi->half_life_ms[h]))   /* a denormal: inf x 0 is NaN */
            return hl_err(errbuf, errlen, HL_EFORMAT,
                          "model %s: field half_life_ms[%d]: %g is too short, its rate ln 2 / "
                          "half-life is not finite", path, h, mi->half_life_ms[h]);
    }
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
    /* Every list carries it as an Avro string, which consumers decode as
     * UTF-8. */
    if (!hl_utf8_valid(mi->version, strlen(mi->version)))
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "model %s: field version: not valid UTF-8 (lists carry it as an Avro "
                      "string); write the version as UTF-8", path);
    return 0;
}

void hl_model_layout_compute(const hl_model_info *mi, uint64_t id_bytes, layout *lo)
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

/* ---- body checks ---- */

/* 1 if any of x[0..n) is beyond HL_MODEL_MAX_ABS in magnitude, inf or
 * nan. On the bits with the sign cleared, floats (nan included) order as
 * their magnitudes; both sides are below 2^31, so LIM - a goes negative
 * exactly when a > LIM. AND, SUB and OR only: it vectorises. */
static int any_out_of_bound(const float *x, size_t n)
{
    const float lim_f = HL_MODEL_MAX_ABS;
    uint32_t acc = 0, u, lim;
    memcpy(&lim, &lim_f, sizeof lim);
    for (size_t j = 0; j < n; j++) {
        memcpy(&u, &x[j], sizeof u);
        acc |= lim - (u & 0x7fffffffu);
    }
    return (acc & 0x80000000u) != 0;
}

/* Index of the first float in x[0..n) that is not within the bound, or
 * -1. Chunks of a fixed size keep the common scan a loop the compiler
 * vectorises. */
static int64_t first_out_of_bound(const float *x, size_t n)
{
    enum { CHUNK = 4096 };
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t len = n - i < CHUNK ? n - i : CHUNK;
        if (len == CHUNK ? !any_out_of_bound(x + i, CHUNK) : !any_out_of_bound(x + i, len))
            continue;
        for (size_t j = i; j < i + len; j++)
            if (!(fabsf(x[j]) <= HL_MODEL_MAX_ABS)) return (int64_t)j;
    }
    return -1;
}

int hl_model_floats_check(const float *x, size_t n, size_t row_len, const char *what,
                          const char *path, char *errbuf, size_t errlen)
{
    int64_t i = first_out_of_bound(x, n);
    if (i < 0) return 0;
    long long row = (long long)((size_t)i / row_len), col = (long long)((size_t)i % row_len);
    if (!isfinite(x[i]))
        return hl_err(errbuf, errlen, HL_EFORMAT,
                      "model %s: %s[%lld][%lld] is %g: expected finite values",
                      path, what, row, col, (double)x[i]);
    return hl_err(errbuf, errlen, HL_EFORMAT,
                  "model %s: %s[%lld][%lld] is %g: expected |value| <= %g (larger values"
                  " can overflow scores)", path, what, row, col, (double)x[i],
                  (double)HL_MODEL_MAX_ABS);
}

/* ---- the id index ---- */

static const char *id_get(const id_src *src, int32_t row, uint32_t *len)
{
    if (src->off != NULL) {
        *len = (uint32_t)(src->off[row + 1] - src->off[row]);
        return src->bytes + src->off[row];
    }
    *len = src->lens[row];
    return src->ids[row];
}

int32_t hl_model_index_find(const int32_t *slots, uint64_t mask, const id_src *src,
                            const char *id, size_t len, uint64_t *slot)
{
    uint64_t i = hl_fnv1a64(HL_FNV64_HLM, id, len) & mask;
    for (;; i = (i + 1) & mask) {
        uint32_t l;
        const char *s;
        if (slots[i] < 0) { *slot = i; return -1; }
        s = id_get(src, slots[i], &l);
        if (l == len && memcmp(s, id, len) == 0) { *slot = i; return slots[i]; }
    }
}

int hl_model_index_build(const id_src *src, int32_t n, int32_t **slots_out,
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
        /* Lists publish the id as an Avro string: a conforming reader
         * cannot decode a list naming an id that is not UTF-8. */
        if (!hl_utf8_valid(id, len)) {
            free(slots);
            return hl_err(errbuf, errlen, HL_EFORMAT,
                          "model %s: item id at row %d is not valid UTF-8 (bad byte at %zu of"
                          " %u; lists publish ids as Avro strings): re-export the ids as UTF-8",
                          path, r, hl_utf8_valid_prefix(id, len), len);
        }
        int32_t prev = hl_model_index_find(slots, cap - 1, src, id, len, &slot);
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
