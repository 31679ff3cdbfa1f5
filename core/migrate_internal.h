/* migrate_internal.h - what migrate.c (the fit, rows of one shape in
 * place) and reshape.c (rows into another shape) share: the migration's
 * fields and the row kernels. Private to those two files (STYLE.md
 * section 2); the contract is migrate.h. */
#ifndef HL_MIGRATE_INTERNAL_H
#define HL_MIGRATE_INTERNAL_H

#include "migrate.h"

#include <math.h>

struct hl_migration {
    const hl_model *from, *to;
    hl_decay  decay;
    int       dim, n_heads, n_shared;
    double    residual;       /* ||E_from M - E_to||_F / ||E_to||_F, shared items */
    float     tw[HL_N_TYPES];
    float    *m;              /* (dim_from, dim); dim_from == dim but in a reshape */
    float    *delta;          /* (n_from, dim): e_to[row_map[r]] - e_from[r] M, or
                                 -e_from[r] M for an item to drops */
    size_t    delta_bytes;    /* its mapping (hl_map_huge) */
    int32_t  *row_map;        /* from's n_items: to's row or -1 */
    int32_t   n_from, n_to;
    uint64_t *key_slot;       /* to's items by hl_item_key: open addressing */
    int32_t  *key_row;        /* of (key, row), key 0 empty */
    size_t    key_mask;
    int       rebuild;        /* no from: heads and masses from the ring alone */
    int       reshape;        /* from's state shape (dim, heads, half-lives) is not
                                 to's: rows move into another table (row_into) */
    int       dim_from;       /* from's dim; M is (dim_from, dim) */
    hl_decay  decay_from;     /* from's heads (a reshape; else decay is both's) */
    const float *e_from, *e_to;
    float    *pair;           /* a reshape: (n_from, dim_from + dim), from's e_in
                                 row then to's row of the same item (0s if none) */
    size_t    pair_bytes;     /* its mapping (hl_map_huge) */
    float     local;          /* the local correction's kappa (HL_MIG_LOCAL) */
};

/* y (nh, d) += c[h] x for every head h (x loaded once for all heads). */
void    hl_mig_axpy_heads(float *restrict y, const float *c, int nh,
                          const float *restrict x, int d);
/* The weight ring entry k of v was applied with (model.md). */
float   hl_mig_entry_weight(const hl_migration *mg, const hl_row_view *v, int k);
/* to's row of the item with key k, -1 when to does not know it. */
int32_t hl_mig_key_find(const hl_migration *mg, uint64_t k);

/* A head's remainder (m less the ring's mass) is usable when it is
 * clearly above the rounding of m - (ring's mass): rm is such a
 * difference, and a remainder at rounding level (a user whose whole
 * history is in the ring) must give nothing, not a scaled-up noise: for
 * another half-life (reshape.c) or for the local correction. */
static inline int hl_mig_usable(float rm, float m)
{
    return isfinite(rm) && rm > 1e-5f * fabsf(m);
}

#endif
