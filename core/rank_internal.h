/* rank_internal.h - the ranker's state and the helpers its files share:
 * rank.c (create, refresh, two-stage), rank_encode.c (the encoder),
 * rank_block.c (the blocked exact search and the exact rescan),
 * rank_index.c (recs.index=ivf) and rank_naive.c (the plain-loop twin),
 * and nothing else (STYLE.md section 2: private to the ranker). */
#ifndef HL_RANK_INTERNAL_H
#define HL_RANK_INTERNAL_H

#include "rank.h"
#include "encoder.h"
#include "qscore.h"
#include "ivf.h"
#include "topkey.h"

#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define MAX_RING      255      /* table.h: state.history is 1..255 */
#define DET_PAD       4        /* candidates kept beyond k for the exact rescoring: a
                                  near tie at the cut costs a rescan, a larger heap
                                  costs every refresh (16 cost 8% at 10k items) */
#define ENC_GROUP     4        /* users encoded together (register blocking only) */

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
    hl_decay       decay;      /* the model's heads: because's shares weigh the
                                  ring's events as the stored heads hold them */
    float          type_weight[HL_N_TYPES];  /* applied, by type: hl_rank_opts's */
    int            k, exclude_seen, max_batch, block;
    int            seen_window; /* hl_rank_opts.seen_window: 0 = the whole ring */
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
    uint8_t       *excl;       /* (n_items) exclusion marks (rescan, index search), zero between uses */
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
    uint8_t       *hmask;      /* (n_items) with the index: 1 on the catalogue's
                                  hidden model rows, skipped inside its search */
    int32_t        hmask_n;    /* rows set in hmask */
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

/* q . e + b in one fixed order: eight running sums over d (so the compiler
 * may use one vector register, lane by lane, without reordering), combined
 * pairwise, then the tail, then the bias. The same inputs give the same
 * bits whatever else is being scored. */
static inline float det_score(const float *q, const float *e, int dim, float b)
{
    float acc[8] = {0};
    int d = 0;
#if defined(__SSE2__)
    /* The same eight sums as the loop below, four lanes at a time (SSE is
     * part of x86-64, so every such CPU takes this path). */
    __m128 lo = _mm_setzero_ps(), hi = _mm_setzero_ps();
    for (; d + 8 <= dim; d += 8) {
        lo = _mm_add_ps(lo, _mm_mul_ps(_mm_loadu_ps(q + d), _mm_loadu_ps(e + d)));
        hi = _mm_add_ps(hi, _mm_mul_ps(_mm_loadu_ps(q + d + 4), _mm_loadu_ps(e + d + 4)));
    }
    _mm_storeu_ps(acc, lo);
    _mm_storeu_ps(acc + 4, hi);
#endif
    for (; d + 8 <= dim; d += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += q[d + l] * e[d + l];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; d < dim; d++)
        s += q[d] * e[d];
    return s + b;
}

HL_PREFETCH_FN void prefetch_row(const float *row, int dim)
{
    for (int d = 0; d < dim; d += 16)      /* one 64-byte line per 16 floats */
        __builtin_prefetch(row + d);
}

/* ---- across the ranker's files ---- */

/* rank_encode.c */
layer_fn     hl_rank_pick_layer(void);
/* Q (n, dim): each user's query, independent of the batch; returns r->Q. */
const float *hl_rank_encode(struct hl_ranker *r, const hl_row_view *users, int n);

/* rank_block.c */
scan_fn hl_rank_pick_scan(void);
/* User u's known ring items, sorted, into r->seen (exclusions by cursor). */
void    hl_rank_load_seen(struct hl_ranker *r, int u, const hl_row_view *v);
/* The blocked SGEMM search: every user's k + DET_PAD candidates. */
void    hl_rank_score_all(struct hl_ranker *r, const float *Q, const hl_row_view *users,
                          int n, const hl_rank_exclude *extra);
/* User u's list from the blocked search's candidates; returns its length. */
int     hl_rank_select_exact(struct hl_ranker *r, int u, const hl_rank_exclude *ex);
/* User u's exact list over every item (model and side) into its heap,
 * best first; returns its length. Slow: the fallback and the shadow check. */
int     hl_rank_rescan_exact(struct hl_ranker *r, int u, const hl_rank_exclude *ex);
/* Sets (v 1) or clears (v 0) u's excluded model rows in r->excl: own
 * marks its ring (when exclude_seen) and ex's rows, excl also the
 * catalogue's hidden rows; r->excl is zero between uses. */
void    hl_rank_mark_own(struct hl_ranker *r, int u, const hl_rank_exclude *ex, uint8_t v);
void    hl_rank_mark_excl(struct hl_ranker *r, int u, const hl_rank_exclude *ex, uint8_t v);
/* User u's visible side items not in ex, det_score'd into its heap of *n. */
void    hl_rank_side_push(struct hl_ranker *r, int u, const hl_rank_exclude *ex, int *n);

/* rank_index.c (recs.index=ivf) */
int     hl_rank_index_create(struct hl_ranker *r, const hl_rank_opts *o, char *errbuf,
                             size_t errlen);
void    hl_rank_index_free(struct hl_ranker *r);
/* After a catalogue change: the hidden model rows into r->hmask. */
void    hl_rank_index_catalogue(struct hl_ranker *r);
/* The index's batch search for users[0..n) (queries in r->Q). */
void    hl_rank_index_batch(struct hl_ranker *r, int n, const hl_rank_exclude *extra);
/* User u's list from the index; returns its length. */
int     hl_rank_select_index(struct hl_ranker *r, int u, const hl_rank_exclude *ex);

#endif
