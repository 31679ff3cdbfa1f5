/* model_internal.h - what the .hlm reader (model.c), its writer
 * (model_write.c) and the rules both apply (model_format.c) share: the
 * header's byte offsets, the section order, the canonical layout, the CRC
 * and the id index. One definition of each keeps the writer from producing
 * a file the reader refuses. Private to those three files. */
#ifndef HL_MODEL_INTERNAL_H
#define HL_MODEL_INTERNAL_H

#include "fnv.h"
#include "model.h"

#include <stdint.h>
#include <string.h>

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

/* ---- little-endian fields ---- */

/* The file is little-endian, as is every CPU halflife runs on; a big-endian
 * build stops here instead of misreading models. memcpy keeps unaligned
 * header fields legal. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the .hlm code assumes a little-endian host");
static inline uint32_t get_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t get_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline float    get_f32(const uint8_t *p) { float v;    memcpy(&v, p, 4); return v; }
static inline double   get_f64(const uint8_t *p) { double v;   memcpy(&v, p, 8); return v; }
static inline void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static inline void put_f32(uint8_t *p, float v)    { memcpy(p, &v, 4); }
static inline void put_f64(uint8_t *p, double v)   { memcpy(p, &v, 8); }

/* ---- CRC-32 (reflected 0xEDB88320, as zlib) ---- */

/* The tables live in the caller's struct, built per file (a few
 * microseconds), so there is no global to initialise. */
typedef struct crc_tab {
    uint32_t t[8][256];
    int      clmul;              /* the CPU has PCLMULQDQ: fold 64-byte blocks */
} crc_tab;

/* Fills ct (the CPU's PCLMULQDQ support included); no global state. */
void     hl_model_crc_init(crc_tab *ct);
/* crc of (previous bytes, p[0..n)) given crc of the previous bytes; start
 * with 0. Same value as zlib.crc32(data, crc). */
uint32_t hl_model_crc_update(const crc_tab *ct, uint32_t crc, const void *p, size_t n);

static inline int layer_in(const hl_model_info *mi, int l)
{
    return l == 0 ? hl_model_input_dim(mi) : mi->layer_out[l - 1];
}

/* Checks the header's scalar fields; the message names the field, the
 * range expected and the value found. */
int  hl_model_info_check(const hl_model_info *mi, const char *path,
                         char *errbuf, size_t errlen);
/* The canonical layout for a shape and id_bytes bytes of item ids. */
void hl_model_layout_compute(const hl_model_info *mi, uint64_t id_bytes, layout *lo);
/* HL_EFORMAT naming what[row][col] and the value if any of x[0..n) is
 * inf, nan or beyond HL_MODEL_MAX_ABS in magnitude. */
int  hl_model_floats_check(const float *x, size_t n, size_t row_len, const char *what,
                           const char *path, char *errbuf, size_t errlen);

/* Ids come either from a file (offsets + bytes) or from a writer's arrays. */
typedef struct id_src {
    const uint64_t    *off;
    const char        *bytes;
    const char *const *ids;
    const uint32_t    *lens;
} id_src;

/* The row of id in the index (slots, mask), or -1; *slot is where it is or
 * would go. */
int32_t hl_model_index_find(const int32_t *slots, uint64_t mask, const id_src *src,
                            const char *id, size_t len, uint64_t *slot);
/* Builds the open-addressing index (load <= 0.5) of n ids; refuses a
 * duplicate, naming both rows. *slots_out is the caller's to free. */
int     hl_model_index_build(const id_src *src, int32_t n, int32_t **slots_out,
                             uint64_t *mask_out, const char *path, char *errbuf,
                             size_t errlen);

#endif
