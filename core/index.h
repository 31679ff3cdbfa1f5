/* index.h - a table's map from a 32-bit hash tag to row ids: open
 * addressing with linear probing, doubled incrementally (table.c's index).
 *
 * Slots are 64 bits, tag << 32 | row + 1 (0 is empty), so a probe compares
 * tags without touching rows; the caller confirms a candidate by its key.
 * The home slot is the top bits of tag * golden ratio, so a tag alone
 * re-homes an entry, and doubling sends home h to 2h or 2h + 1: migration
 * writes the new table in order. Growth is Redis dict style: a table twice
 * the size takes every insert while each put and each hl_index_step copy a
 * bounded number of old slots across; lookups try the new table, then the
 * old. Deletion in the new table shifts entries back (no tombstones); in the
 * old one, which only drains, it leaves a tombstone. The table the next
 * doubling needs is mapped and faulted in ahead, one huge page per step.
 * One thread; no I/O apart from anonymous memory mappings. */
#ifndef HL_INDEX_H
#define HL_INDEX_H

#include "hl.h"

typedef struct hl_index_tab {
    uint64_t *slot;
    size_t    map_bytes;
    uint32_t  bits;            /* slots = 1 << bits */
    size_t    used;            /* entries, tombstones excluded */
} hl_index_tab;

typedef struct hl_index {
    hl_index_tab cur;          /* takes inserts */
    hl_index_tab old;          /* drained into cur while growing */
    hl_index_tab spare;        /* the next cur, faulted in ahead */
    int          growing;
    size_t       migrate_pos;  /* next old slot to copy */
    size_t       prefault_pos; /* bytes of spare touched so far */
} hl_index;

/* Probe position over both tables, for hl_index_next. */
typedef struct hl_index_it { int t; size_t i; } hl_index_it;

/* Sized for expected entries at load <= 0.7. HL_ENOMEM on failure. */
int  hl_index_init(hl_index *ix, size_t expected);
void hl_index_free(hl_index *ix);

/* An entry's home slot: the top bits of tag * golden ratio (index.c). */
static inline size_t hl_index_home(const hl_index_tab *t, uint32_t tag)
{
    return (uint32_t)(tag * 0x9e3779b1u) >> (32 - t->bits);
}

/* Brings tag's home slots (both tables while growing) towards the cache
 * ahead of a lookup. In the header so the hints land in the caller: out
 * of line it was a call that gcc may delete (hl.h, HL_PREFETCH_FN). */
HL_PREFETCH_FN void hl_index_prefetch(const hl_index *ix, uint32_t tag)
{
    __builtin_prefetch(&ix->cur.slot[hl_index_home(&ix->cur, tag)], 0, 3);
    if (ix->growing) __builtin_prefetch(&ix->old.slot[hl_index_home(&ix->old, tag)], 0, 3);
}

/* Rows whose entry carries tag, the current table first: call first, then
 * next until it returns -1. No put or del in between. */
void    hl_index_first(const hl_index *ix, uint32_t tag, hl_index_it *it);
int64_t hl_index_next(const hl_index *ix, uint32_t tag, hl_index_it *it);

/* Makes room for one more entry, starting a doubling if due: 0, HL_ENOMEM
 * or HL_EFULL (2^32 slots). Call before each hl_index_put. */
int  hl_index_reserve(hl_index *ix);
void hl_index_put(hl_index *ix, uint32_t tag, uint32_t row);
void hl_index_del(hl_index *ix, uint32_t tag, uint32_t row);

/* Insert-if-absent in one probe (snapshot loads): returns the row of an
 * entry with tag that same(ctx, row) accepts, or puts row under tag and
 * returns -1. Call hl_index_reserve first, as for hl_index_put. */
int64_t hl_index_put_absent(hl_index *ix, uint32_t tag, uint32_t row,
                            int (*same)(const void *ctx, uint32_t row), const void *ctx);

/* An empty index re-sized for expected entries at once (a load that knows
 * its row count skips the doublings); a no-op if entries exist or it is
 * large enough. 0 or HL_ENOMEM (the index is then unchanged). */
int hl_index_presize(hl_index *ix, size_t expected);

/* Shrinks cur to its entries with room for as many again (load <= 0.35)
 * when it is at least twice that: a presize for more entries than came
 * (a changelog restore sizes for every record of its range, many times
 * the users on a topic not yet compacted) held that memory for good.
 * Finishes a doubling first. 0, or HL_ENOMEM with the index unchanged
 * (only a doubling finished). */
int hl_index_fit(hl_index *ix);

/* Bounded background work, once per batch: migration, or faulting in the
 * spare table. */
void hl_index_step(hl_index *ix);

size_t hl_index_bytes(const hl_index *ix);

/* An anonymous mapping of at least bytes, zero-filled and lazily backed;
 * from 2 MB up it is 2 MB aligned with transparent huge pages requested (a
 * small table's index stays in small pages). NULL on failure. Release with
 * munmap(p, *map_bytes). Shared with table.c's row blocks. */
void *hl_map_huge(size_t bytes, size_t *map_bytes);

#endif
