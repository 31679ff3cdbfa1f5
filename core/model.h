/* model.h - the .hlm model file: item dictionary, e_in, the encoder MLP,
 * e_out and item biases (DESIGN.md section 5; bytes in schemas/model.md).
 *
 * hl_model_open() maps a file read-only, validates every size and value and
 * builds the item_id -> row index; the arrays it hands out point into the
 * mapping and are valid until hl_model_close(). */
#ifndef HL_MODEL_H
#define HL_MODEL_H

#include "hl.h"

#define HL_MAX_LAYERS 4

typedef struct hl_model hl_model;   /* opaque */

typedef struct hl_model_info {
    int      dim;                            /* embedding and query width */
    int      n_heads;
    double   half_life_ms[HL_MAX_HEADS];
    float    type_weight[HL_N_TYPES];        /* by HL_VIEW.. */
    int32_t  n_items;
    /* The encoder MLP. Its input is n_heads x (dim + 1): per head the
     * weighted mean s_h / max(m_h, eps) then log(1 + m_h). Layer l maps
     * layer_in(l) to layer_out[l] floats, W_l is (layer_out[l], layer_in(l))
     * row-major, ReLU between layers, none after the last;
     * layer_out[n_layers - 1] == dim. */
    int      n_layers;                       /* 1..HL_MAX_LAYERS */
    int      layer_out[HL_MAX_LAYERS];
    char     version[64];                    /* NUL-terminated */
    uint64_t fingerprint;                    /* of the whole file's contents */
} hl_model_info;

/* Width of the encoder input for an info: n_heads * (dim + 1). */
static inline int hl_model_input_dim(const hl_model_info *mi)
{
    return mi->n_heads * (mi->dim + 1);
}

/* Maps and validates path. NULL with a reason naming what is wrong (magic,
 * version, a size that does not add up, a non-finite value, a duplicate
 * item id) on any damage. */
hl_model *hl_model_open(const char *path, char *errbuf, size_t errlen);
void      hl_model_close(hl_model *m);           /* NULL is a no-op */

const hl_model_info *hl_model_info_get(const hl_model *m);

/* Row of an item id, or -1 for an item outside the model. */
int32_t     hl_model_item_find(const hl_model *m, const char *id, size_t len);
/* The id of row (not NUL-terminated); *len set. */
const char *hl_model_item_id(const hl_model *m, int32_t row, uint32_t *len);

const float *hl_model_e_in(const hl_model *m);           /* (n_items, dim) */
const float *hl_model_e_out(const hl_model *m);          /* (n_items, dim) */
const float *hl_model_bias(const hl_model *m);           /* (n_items) */
const float *hl_model_layer_w(const hl_model *m, int l); /* (out, in) */
const float *hl_model_layer_b(const hl_model *m, int l); /* (out) */

/* Everything a model file holds, as the writer takes it. */
typedef struct hl_model_parts {
    hl_model_info       info;          /* fingerprint is computed, ignored here */
    const char *const  *item_id;       /* n_items ids */
    const uint32_t     *item_id_len;
    const float        *e_in, *e_out, *bias;
    const float        *layer_w[HL_MAX_LAYERS], *layer_b[HL_MAX_LAYERS];
} hl_model_parts;

/* Writes p to path atomically (temporary file, fsync, rename). */
int hl_model_write(const char *path, const hl_model_parts *p,
                   char *errbuf, size_t errlen);

#endif
