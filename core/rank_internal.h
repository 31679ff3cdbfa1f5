/* rank_internal.h - the ranker's state, shared by rank.c (the blocked
 * and two-stage refresh) and rank_naive.c (its plain-loop twin) and by
 * nothing else (STYLE.md section 2: private to the ranker). */
#ifndef HL_RANK_INTERNAL_H
#define HL_RANK_INTERNAL_H

#include "rank.h"
#include "encoder.h"
#include "qscore.h"

#define MAX_RING      255      /* table.h: state.history is 1..255 */

struct hl_ranker;
typedef void (*scan_fn)(struct hl_ranker *r, int u, const float *srow,
                        const float *brow, int32_t j0, int nb);
typedef void (*layer_fn)(const float *const *in, int n_users, int n_in, int n_out,
                         const float *wt, const float *b, int relu, float *const *out);

struct hl_ranker {
    hl_encoder_net net;
    scan_fn        scan;       /* scan_row_avx2 where the CPU has it */
    layer_fn       layer;      /* layer_avx2 where the CPU has it */
    float         *wt[HL_MAX_LAYERS]; /* W_l^T (layer_in, layer_out): the encoder's weights
                                         laid out for one user at a time */
    int            width_max;  /* widest layer input or output */
    const float   *e_in, *e_out, *bias;     /* (n_items, dim), (n_items) */
    int32_t        n_items;
    int            dim, n_heads;
    float          lambda_per_ms[HL_MAX_HEADS];
    float          type_weight[HL_N_TYPES];
    int            k, exclude_seen, max_batch, block;
    int            kc;         /* candidates per user: k + DET_PAD */
    double         e_norm_max; /* max_j ||e_out[j]||_2 */
    double         bias_max;   /* max_j |bias[j]| */
    double         side_norm_max, side_bias_max;  /* the same over the side items */
    float         *x1, *act1;  /* ENC_GROUP users' encoder inputs and activations
                                  (ENC_GROUP, width_max) each, ping-pong */
    float         *Q;          /* (max_batch, dim) queries, each encoded alone */
    float         *q_norm;     /* (max_batch) ||q||_2 */
    float         *S;          /* (max_batch, block) one block's scores */
    uint64_t      *top;        /* (max_batch, kc): one min-heap of keys per user */
    uint8_t       *excl;       /* (n_items) rescan_exact's marks, zero between uses */
    int           *top_n;      /* (max_batch) entries in each heap */
    int32_t       *seen;       /* (max_batch, MAX_RING) ring items, sorted */
    int           *seen_n;     /* (max_batch) entries in seen */
    int           *seen_pos;   /* (max_batch) first entry not yet passed */
    float         *bc_hist;    /* (MAX_RING, dim) e_in rows of known history */
    float         *bc_rec;     /* (k, dim) e_out rows of the returned items */
    float         *bc_dot;     /* (k, MAX_RING) rec . hist */
    float         *bc_a;       /* (MAX_RING) a_e of each history entry */
    int32_t       *bc_item;    /* (MAX_RING) item of each history entry */
    const hl_qitems *qi;       /* two-stage: the int8 copy of e_out, else NULL */
    hl_qitems     *own_qi;     /* the same when the ranker built it, else NULL */
    hl_qscan      *qs;         /* two-stage: its scan scratch */
    hl_qscan_user *qusers;     /* (max_batch) two-stage: each user's query and exclusions */
    uint64_t       fallbacks;  /* two-stage users rescanned exactly */
    const hl_ivf  *ivf;        /* recs.index=ivf: the index, else NULL */
    hl_ivf_scan   *is;         /* its search scratch */
    int32_t       *icand;      /* (max_batch, istride) the batch search's candidates */
    int           *icap;       /* (max_batch) candidates asked per user; 0: alone */
    int           *ifound;     /* (max_batch) candidates found per user */
    int            istride;    /* kc + MAX_RING + IVF_EXTRA */
    int32_t       *shadow;     /* (k) the exact list of a shadow-checked user */
    int            nprobe, shadow_every;
    uint64_t       refreshed;  /* users refreshed through the index */
    uint64_t       shadow_hits, shadow_total; /* hl_ranker_index_recall */
    char           scoring_name[32];
    hl_rank_catalogue cat;     /* the live catalogue: hidden rows, side items */
    float         *seed;       /* (max_batch, k) two-stage: each user's best side
                                  item scores, the scan's seeds */
};

/* e_out row and bias of a ranker row: the model's, or a side item's. */
static inline const float *out_row(const struct hl_ranker *r, int32_t j)
{
    return j < r->n_items ? r->e_out + (size_t)j * r->dim
                          : r->cat.e_out + (size_t)(j - r->n_items) * r->dim;
}

static inline float bias_of(const struct hl_ranker *r, int32_t j)
{
    return j < r->n_items ? r->bias[j] : r->cat.bias[j - r->n_items];
}

/* Fills item and a with the ring's known entries, newest first, and their
 * weights a_e (rank.h, `because`); returns their count. */
int hl_rank_history_weights(const hl_ranker *r, const hl_row_view *v,
                            int32_t *item, float *a);

#endif
