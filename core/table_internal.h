/* table_internal.h - the table's row layout, its struct and the helpers
 * that read a row, shared by table.c (create, insert, evict, apply) and
 * table_rows.c (views, edits, restore, meta, stats) and by nothing else
 * (STYLE.md section 2: private to the table). The row layout is drawn at
 * the top of table.c.
 *
 * The accessors are static inline: apply's pipeline calls them per event,
 * as it did when they were file-local. */
#ifndef HL_TABLE_INTERNAL_H
#define HL_TABLE_INTERNAL_H

#include "table.h"

#include "index.h"
#include "lru.h"

#include <stdint.h>
#include <string.h>

#define ROWS_SHIFT      14
#define ROWS_PER_BLOCK  (1u << ROWS_SHIFT)
#define WORDS_PER_BLOCK (ROWS_PER_BLOCK / 64)
#define NONE            UINT32_MAX

#define F_DIRTY   1u    /* changed since the last take_dirty */
#define F_INLIST  2u    /* id is on the dirty list (maybe no longer dirty) */
#define F_HEAPKEY 4u    /* user_id is in a malloc'd copy */
#define F_GEN     8u    /* the model generation's parity the heads are in
                           (hl_table_flip_generation) */

#define LRU_SCAN_PER_INSERT 64u /* rows an LRU scan advances per new user */
#define MAX_EVICT_BATCH 64u     /* users evicted at once at capacity */
#define PIPE 8                  /* events between pipeline stages */
#define RING 64                 /* > 3 PIPE, a power of two */

typedef struct row_hdr {
    int64_t  t_ref_ms;
    int64_t  last_offset;
    uint64_t active_seq;
    uint32_t next_dirty;
    uint16_t user_len;
    uint8_t  hist_head;
    uint8_t  n_hist;
} row_hdr;

typedef struct block {
    uint8_t *rows;                     /* ROWS_PER_BLOCK * stride bytes */
    size_t   map_bytes;
    uint64_t live[WORDS_PER_BLOCK];    /* bit set: row in use */
} block;

struct hl_table {
    hl_table_opts o;
    int      n_heads, dim, history;
    size_t   stride, key_cap;
    size_t   off_m, off_s, off_hts, off_hitem, off_htype, off_hkey, off_hw;
    size_t   payload_fixed;            /* payload bytes of a row but its id */

    block  **blocks;
    uint8_t **rows;                    /* blocks[b]->rows: one load, not two */
    uint32_t n_blocks, cap_blocks;
    uint32_t row_limit;                /* 1 + highest live id */
    uint32_t row_ever;                 /* 1 + highest id ever live: above
                                          it rows are untouched memory */
    uint32_t free_hint;                /* no free id below it */
    size_t   users, key_bytes, heap_key_bytes;

    hl_index ix;                       /* tag -> row id, see index.h */

    uint32_t dirty_head, dirty_tail;
    uint64_t active_seq;
    int64_t  newest_ts_ms;
    uint32_t sweep_cursor;
    uint8_t  gen_flag;                 /* F_GEN or 0: the parity fresh rows carry */
    size_t   evict_batch;              /* clamp(max_users / 64, 1, 64) */
    hl_lru   lru;                      /* exact oldest rows, see lru.h */
    hl_table_stats st;

    uint64_t pipe_hash[RING];          /* apply's lookahead, see hl_table_apply */
    int64_t  pipe_row[RING];
    uint64_t pipe_gen[RING];
    uint64_t evictions;                /* ever; a guess older than one is rechecked */
    int      pipe_hist[RING];
    hl_table_evict_fn on_evict;        /* hl_table_on_evict; NULL: none */
    void    *on_evict_arg;
};

/* ---- rows ---------------------------------------------------------------- */

static inline uint8_t *row_ptr(const hl_table *tbl, uint32_t r)
{
    return tbl->rows[r >> ROWS_SHIFT]
         + (size_t)(r & (ROWS_PER_BLOCK - 1)) * tbl->stride;
}

static inline row_hdr *hdr(uint8_t *p)            { return (row_hdr *)p; }
static inline uint8_t *flags(uint8_t *p)          { return p + sizeof(row_hdr); }
static inline float   *row_m(const hl_table *tbl, uint8_t *p) { return (float *)(p + tbl->off_m); }
static inline float   *row_s(const hl_table *tbl, uint8_t *p) { return (float *)(p + tbl->off_s); }
static inline int64_t *row_hts(const hl_table *tbl, uint8_t *p) { return (int64_t *)(p + tbl->off_hts); }
static inline int32_t *row_hitem(const hl_table *tbl, uint8_t *p) { return (int32_t *)(p + tbl->off_hitem); }
static inline uint8_t *row_htype(const hl_table *tbl, uint8_t *p) { return p + tbl->off_htype; }
static inline uint64_t *row_hkey(const hl_table *tbl, uint8_t *p) { return (uint64_t *)(p + tbl->off_hkey); }
static inline float   *row_hw(const hl_table *tbl, uint8_t *p) { return (float *)(p + tbl->off_hw); }

static inline const char *row_key(uint8_t *p)
{
    const char *inl = (const char *)flags(p) + 1, *heap;
    if (!(*flags(p) & F_HEAPKEY)) return inl;
    memcpy(&heap, inl, sizeof heap);
    return heap;
}

static inline int row_is_live(const hl_table *tbl, uint32_t r)
{
    if (r >> ROWS_SHIFT >= tbl->n_blocks) return 0;
    const block *b = tbl->blocks[r >> ROWS_SHIFT];
    uint32_t i = r & (ROWS_PER_BLOCK - 1);
    return (b->live[i / 64] >> (i % 64)) & 1;
}

static inline void set_live(hl_table *tbl, uint32_t r, int on)
{
    block *b = tbl->blocks[r >> ROWS_SHIFT];
    uint32_t i = r & (ROWS_PER_BLOCK - 1);
    if (on) b->live[i / 64] |= 1ull << (i % 64);
    else    b->live[i / 64] &= ~(1ull << (i % 64));
}

/* ---- hashing and the index ----------------------------------------------- */

/* 64-bit hash of a short string: 8 bytes at a time, multiply-xorshift, then
 * a murmur-style finaliser so every output bit depends on every input bit. */
static inline uint64_t hash_key(const char *p, size_t n)
{
    uint64_t h = 0x6a09e667f3bcc909ull ^ (n * 0x9e3779b97f4a7c15ull);
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 29;
    }
    /* The 0..7 tail in at most two loads (overlapping for 4..7, three
     * bytes for 1..3): a variable-length memcpy into a word was a byte loop
     * whose stores the word load then waited on. Every byte counts once the
     * length is known, and n is mixed in. */
    uint64_t v = 0;
    if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + n - 4, 4);
        v = (uint64_t)a << 32 | b;
    } else if (n > 0) {
        const uint8_t *q = (const uint8_t *)p;
        v = (uint64_t)q[0] << 16 | (uint64_t)q[n >> 1] << 8 | q[n - 1];
    }
    h = (h ^ v ^ ((uint64_t)n << 59)) * 0x94d049bb133111ebull;
    h ^= h >> 32;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static inline uint32_t tag_of(uint64_t h) { return (uint32_t)(h >> 32); }

static inline int key_eq(uint8_t *p, const char *user, size_t len)
{
    return hdr(p)->user_len == len && memcmp(row_key(p), user, len) == 0;
}

/* Row of user, or -1: index candidates by tag, confirmed by key. */
static inline int64_t lookup(const hl_table *tbl, uint64_t h, const char *user,
                      size_t len)
{
    hl_index_it it;
    int64_t r;
    hl_index_first(&tbl->ix, tag_of(h), &it);
    while ((r = hl_index_next(&tbl->ix, tag_of(h), &it)) >= 0)
        if (key_eq(row_ptr(tbl, (uint32_t)r), user, len)) return r;
    return -1;
}

/* A new or restored row's heads are in the table's current generation. */
static inline void set_fresh(const hl_table *tbl, uint8_t *p)
{
    *flags(p) = (uint8_t)((*flags(p) & ~F_GEN) | tbl->gen_flag);
}

/* ---- row ids and keys (table.c) ------------------------------------------ */

/* Lowest free id (may add a block); 0 or HL_EFULL / HL_ENOMEM. */
int  hl_table_take_id(hl_table *tbl, uint32_t *out);
/* Makes id r available (adding blocks up to it); HL_EINVAL if live. */
int  hl_table_claim_id(hl_table *tbl, uint32_t r);
void hl_table_mark_live(hl_table *tbl, uint32_t r);
/* Empties row r's memory for a new user, keeping its dirty-list link. */
void hl_table_clear_row(hl_table *tbl, uint32_t r, uint8_t *p);
/* Writes the user's id into a fresh row; HL_ENOMEM for a long id. */
int  hl_table_set_key(hl_table *tbl, uint8_t *p, const char *user, size_t len);

#endif
