/* model.h - the .hlm model file: item dictionary, e_in, the encoder MLP,
 * e_out and item biases (DESIGN.md section 5; bytes in schemas/model.md).
 *
 * hl_model_open() maps a file read-only, validates every size and value and
 * builds the item_id -> row index; the arrays it hands out point into the
 * mapping, start on 64-byte boundaries, and are valid until hl_model_close().
 * A model is immutable once open: any number of threads may read it. */
#ifndef HL_MODEL_H
#define HL_MODEL_H

#include "hl.h"

#define HL_MAX_LAYERS 4

/* The largest |value| of any float in e_in, the layers, e_out and bias.
 * Finite is not enough: a file of finite 3e38s overflowed every list's
 * scores to inf or NaN. With every |value| <= B = 2^8 no score can
 * overflow, whatever the shape the format allows (schemas/model.md):
 * the encoder's input is per head a weighted mean of e_in rows (weights
 * >= 0: type weights are, and the codec keeps event weights in [0,
 * event.max.weight]), so <= B, and log(1 + m_h) < 89 < B while the mass
 * is finite (a state beyond this is the ranker's query clamp's:
 * encoder.h). Layer l gives |y| <= in_l B a + B for inputs <= a, with
 * in_0 = n_heads (dim + 1) <= 8 x 4097 = 32776 and in_l <= 65536 after:
 * a <= 2^31.0004, 2^55.0004, 2^79.0004, 2^103.0004 after 1..4 layers. A
 * score is <= dim |q| B + B <= 2^12 2^103.0004 2^8 = 2^123.0004, FLT_MAX
 * / 32, and so is every partial sum of it in any order (rounding adds a
 * factor below 1.004): a margin of 32x. B = 2^9 would allow 2^129.
 * Trained models sit far inside: the largest |value| of 14 models
 * halflife train wrote (ml-latest-small and taobao-sample, five seeds
 * each, and others) is 1.16, of the tests' random ones 1. The live
 * catalogue's embeddings are held to the same bound (core/catalogue.c). */
#define HL_MODEL_MAX_ABS 256.0f

typedef struct hl_model hl_model;   /* opaque */

typedef struct hl_model_info {
    int      dim;                            /* embedding and query width */
    int      n_heads;
    double   half_life_ms[HL_MAX_HEADS];     /* finite, > 0 */
    float    type_weight[HL_N_TYPES];        /* by HL_VIEW..; finite, >= 0 */
    int32_t  n_items;
    /* The encoder MLP. Its input is n_heads x (dim + 1): per head the
     * weighted mean s_h / max(m_h, eps) then log(1 + m_h). Layer l maps
     * layer_in(l) to layer_out[l] floats, W_l is (layer_out[l], layer_in(l))
     * row-major, ReLU between layers, none after the last;
     * layer_out[n_layers - 1] == dim. */
    int      n_layers;                       /* 1..HL_MAX_LAYERS */
    int      layer_out[HL_MAX_LAYERS];
    char     version[64];                    /* NUL-terminated */
    uint64_t fingerprint;                    /* FNV-1a 64 of the 512-byte header,
                                                which holds the CRC-32 of every
                                                other byte: it identifies the
                                                whole file's contents */
} hl_model_info;

/* Width of the encoder input for an info: n_heads * (dim + 1). */
static inline int hl_model_input_dim(const hl_model_info *mi)
{
    return mi->n_heads * (mi->dim + 1);
}

/* Input width of layer l (0..n_layers-1): hl_model_input_dim for the first,
 * layer_out[l - 1] after it. */
static inline int hl_model_layer_in(const hl_model_info *mi, int l)
{
    return l == 0 ? hl_model_input_dim(mi) : mi->layer_out[l - 1];
}

/* Maps and validates path: a regular file (a FIFO, directory or device is
 * refused at once, never waited on), magic, format version, dims in range,
 * half-lives finite and > 0, type weights finite and >= 0, section
 * offsets and sizes adding up to the file length, the CRC-32 of the file,
 * zero padding, finite floats, item ids 1..HL_MAX_ID_LEN bytes and unique.
 * NULL on any damage, with a reason naming the field, what was expected and
 * what was found. Costs one pass over the file (CRC and finite checks). */
hl_model *hl_model_open(const char *path, char *errbuf, size_t errlen);
void      hl_model_close(hl_model *m);           /* NULL is a no-op */

const hl_model_info *hl_model_info_get(const hl_model *m);

/* The file m was read from, as fstat saw it on the descriptor that was
 * mapped: whatever is at the path now may be another file (a rename since),
 * and only this identity says which one m is. */
typedef struct hl_model_file {
    uint64_t dev, ino;
    int64_t  size, mtime_ns;
} hl_model_file;
const hl_model_file *hl_model_file_get(const hl_model *m);
/* The whole file as it was read and validated (*len its bytes): what to
 * copy once the path may name another file since. */
const void *hl_model_bytes(const hl_model *m, size_t *len);

/* Row of an item id, or -1 for an item outside the model. No allocation. */
int32_t     hl_model_item_find(const hl_model *m, const char *id, size_t len);
/* The id of row (not NUL-terminated); *len set. */
const char *hl_model_item_id(const hl_model *m, int32_t row, uint32_t *len);

const float *hl_model_e_in(const hl_model *m);           /* (n_items, dim) */
const float *hl_model_e_out(const hl_model *m);          /* (n_items, dim) */
const float *hl_model_bias(const hl_model *m);           /* (n_items) */
const float *hl_model_layer_w(const hl_model *m, int l); /* (out, in); NULL if
                                                            l >= n_layers */
const float *hl_model_layer_b(const hl_model *m, int l); /* (out) */

/* Everything a model file holds, as the writer takes it. */
typedef struct hl_model_parts {
    hl_model_info       info;          /* fingerprint is computed, ignored here */
    const char *const  *item_id;       /* n_items ids */
    const uint32_t     *item_id_len;
    const float        *e_in, *e_out, *bias;
    const float        *layer_w[HL_MAX_LAYERS], *layer_b[HL_MAX_LAYERS];
} hl_model_parts;

/* Writes p to path atomically (path.tmp, fsync, rename, fsync of the
 * directory): a crash leaves the old file or the new one. Refuses (HL_EINVAL,
 * nothing written) what hl_model_open would refuse: dims out of range, a
 * half-life or type weight out of range, ids outside 1..HL_MAX_ID_LEN
 * bytes or repeated, non-finite floats.
 * layer_w/layer_b beyond info.n_layers are ignored. */
int hl_model_write(const char *path, const hl_model_parts *p,
                   char *errbuf, size_t errlen);

#endif
