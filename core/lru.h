/* lru.h - the k least recently active rows of a table, found by a scan that
 * can be spread over many calls (used by table.c for state.max.users).
 *
 * A scan offers every live row's (row, seq) once; rows whose seq is at or
 * above the scan's start mark s0 (touched since the scan began) are not
 * candidates. When the scan finishes, the k smallest offered become the
 * pool, popped smallest first. Why that is exact: a row left out either had
 * a seq above every kept one when it was offered, or was touched after the
 * scan began and so has a seq >= s0 above every kept one. The caller drops
 * popped rows that changed since (evicted, or touched: seq differs); what
 * remains are exactly the oldest live rows. Owner thread only. */
#ifndef HL_LRU_H
#define HL_LRU_H

#include "hl.h"

typedef struct hl_lru_ent { uint64_t seq; uint32_t row; } hl_lru_ent;

typedef struct hl_lru {
    size_t      k;           /* candidates kept per scan */
    hl_lru_ent *pool;        /* min-heap of the last finished scan's rows */
    size_t      pool_n;
    hl_lru_ent *scan;        /* max-heap of the k smallest offered so far */
    size_t      scan_n;
    uint64_t    s0;          /* only seq < s0 qualifies in this scan */
    uint32_t    pos;         /* the caller's scan cursor (next row id) */
    int         scanning;
} hl_lru;

/* Zeroes l; no allocation until the first scan. */
void hl_lru_init(hl_lru *l, size_t k);
void hl_lru_free(hl_lru *l);                   /* l itself is the caller's */

/* Starts a scan (dropping one in progress). HL_ENOMEM if arrays cannot be
 * allocated. */
int  hl_lru_begin(hl_lru *l, uint64_t s0);
void hl_lru_offer(hl_lru *l, uint32_t row, uint64_t seq);
/* Ends the scan: its candidates replace the pool. */
void hl_lru_finish(hl_lru *l);

/* Smallest-seq candidate of the pool; 0 when the pool is empty. */
int  hl_lru_pop(hl_lru *l, hl_lru_ent *out);

size_t hl_lru_bytes(const hl_lru *l);

#endif
