/* index.c - tag -> row id, open addressing, incremental doubling; see
 * index.h for the slot format and the growth scheme.
 *
 * Invariant while growing: every live entry is in cur, or in old at a slot
 * not yet migrated, or both (migration copies, it does not move); a deleted
 * entry is in neither. Inserts go to cur only, so cur must hold everything
 * before old runs out: doubling starts at load 0.7, leaving cur at 0.35,
 * and MIGRATE_PER_PUT old slots move per insert, so old is drained after
 * at most 1/16 of its size in inserts, with cur still near 0.38. */
#include "index.h"

#include <string.h>
#include <sys/mman.h>

#define SLOT_EMPTY 0ull
#define SLOT_TOMB  UINT64_MAX
#define HUGE_PAGE  (2u << 20)
#define MIGRATE_PER_PUT  16u    /* old slots copied per insert */
#define MIGRATE_PER_STEP 1024u  /* and per hl_index_step */

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

void *hl_map_huge(size_t bytes, size_t *map_bytes)
{
    if (bytes < HUGE_PAGE) {            /* small: a huge page would be waste */
        size_t small = align_up(bytes, 4096);
        void *q = mmap(NULL, small, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (q == MAP_FAILED) return NULL;
        *map_bytes = small;
        return q;
    }
    size_t len = align_up(bytes, HUGE_PAGE);
    uint8_t *p = mmap(NULL, len + HUGE_PAGE, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    uint8_t *a = (uint8_t *)align_up((uintptr_t)p, HUGE_PAGE);
    if (a > p) munmap(p, (size_t)(a - p));
    if (a + len < p + len + HUGE_PAGE)
        munmap(a + len, (size_t)(p + len + HUGE_PAGE - (a + len)));
#ifdef MADV_HUGEPAGE
    madvise(a, len, MADV_HUGEPAGE);
#endif
    *map_bytes = len;
    return a;
}

static uint32_t slot_tag(uint64_t v) { return (uint32_t)(v >> 32); }
static uint32_t slot_row(uint64_t v) { return (uint32_t)v - 1; }
static uint64_t make_slot(uint32_t tag, uint32_t r)
{
    return (uint64_t)tag << 32 | (uint64_t)(r + 1);
}

static size_t home(const hl_index_tab *t, uint32_t tag) { return hl_index_home(t, tag); }

static size_t mask(const hl_index_tab *t) { return ((size_t)1 << t->bits) - 1; }

static int tab_alloc(hl_index_tab *t, uint32_t bits)
{
    t->slot = hl_map_huge(sizeof(uint64_t) << bits, &t->map_bytes);
    if (t->slot == NULL) return HL_ENOMEM;
    t->bits = bits;
    t->used = 0;
    return 0;
}

static void tab_free(hl_index_tab *t)
{
    if (t->slot != NULL) munmap(t->slot, t->map_bytes);
    memset(t, 0, sizeof *t);
}

/* Slots for expected entries at load <= 0.7. */
static uint32_t bits_for(size_t expected)
{
    uint32_t bits = 6;
    while (bits < 31 && ((size_t)7 << bits) < expected * 10 + 10) bits++;
    return bits;
}

int hl_index_init(hl_index *ix, size_t expected)
{
    memset(ix, 0, sizeof *ix);
    return tab_alloc(&ix->cur, bits_for(expected));
}

void hl_index_free(hl_index *ix)
{
    tab_free(&ix->cur);
    tab_free(&ix->old);
    tab_free(&ix->spare);
}

void hl_index_first(const hl_index *ix, uint32_t tag, hl_index_it *it)
{
    it->t = 0;
    it->i = home(&ix->cur, tag);
}

int64_t hl_index_next(const hl_index *ix, uint32_t tag, hl_index_it *it)
{
    while (it->t <= ix->growing) {
        const hl_index_tab *t = it->t ? &ix->old : &ix->cur;
        uint64_t v = t->slot[it->i];
        if (v == SLOT_EMPTY) {
            if (++it->t <= ix->growing) it->i = home(&ix->old, tag);
            continue;
        }
        it->i = (it->i + 1) & mask(t);
        if (v != SLOT_TOMB && slot_tag(v) == tag) return slot_row(v);
    }
    return -1;
}

static void tab_put(hl_index_tab *t, uint64_t v)
{
    size_t m = mask(t), i = home(t, slot_tag(v));
    while (t->slot[i] != SLOT_EMPTY) i = (i + 1) & m;
    t->slot[i] = v;
    t->used++;
}

/* Copies up to n old slots into cur; frees old when done. */
static void migrate(hl_index *ix, size_t n)
{
    size_t end = (size_t)1 << ix->old.bits;
    for (; n > 0 && ix->migrate_pos < end; n--, ix->migrate_pos++) {
        uint64_t v = ix->old.slot[ix->migrate_pos];
        if (v != SLOT_EMPTY && v != SLOT_TOMB) tab_put(&ix->cur, v);
    }
    if (ix->migrate_pos == end) {
        tab_free(&ix->old);
        ix->growing = 0;
    }
}

static int full(const hl_index_tab *t)
{
    return (t->used + 1) * 10 > ((size_t)7 << t->bits);
}

/* A doubling due before the last one finished finishes that one at once:
 * by the rates in the overview that cannot happen, a safety net only. */
int hl_index_reserve(hl_index *ix)
{
    if (!full(&ix->cur)) return 0;
    if (ix->growing) migrate(ix, SIZE_MAX);
    if (!full(&ix->cur)) return 0;
    if (ix->cur.bits >= 32) return HL_EFULL;
    hl_index_tab next = ix->spare;
    memset(&ix->spare, 0, sizeof ix->spare);
    if (next.slot == NULL && tab_alloc(&next, ix->cur.bits + 1) != 0)
        return HL_ENOMEM;
    ix->old = ix->cur;
    ix->cur = next;
    ix->growing = 1;
    ix->migrate_pos = 0;
    return 0;
}

int64_t hl_index_put_absent(hl_index *ix, uint32_t tag, uint32_t row,
                            int (*same)(const void *ctx, uint32_t row), const void *ctx)
{
    hl_index_tab *t = &ix->cur;
    if (ix->growing) {                  /* two tables to probe: the slow way */
        hl_index_it it;
        int64_t r;
        hl_index_first(ix, tag, &it);
        while ((r = hl_index_next(ix, tag, &it)) >= 0)
            if (same(ctx, (uint32_t)r)) return r;
        hl_index_put(ix, tag, row);
        return -1;
    }
    /* cur alone holds no tombstones, so the first empty slot of the probe
     * ends the search and is where tab_put would put the entry. */
    size_t m = mask(t), i = home(t, tag);
    for (uint64_t v; (v = t->slot[i]) != SLOT_EMPTY; i = (i + 1) & m)
        if (slot_tag(v) == tag && same(ctx, slot_row(v))) return slot_row(v);
    t->slot[i] = make_slot(tag, row);
    t->used++;
    return -1;
}

int hl_index_presize(hl_index *ix, size_t expected)
{
    hl_index fresh;
    if (ix->cur.used > 0 || ix->growing || bits_for(expected) <= ix->cur.bits) return 0;
    if (hl_index_init(&fresh, expected) != 0) return HL_ENOMEM;
    hl_index_free(ix);
    *ix = fresh;
    return 0;
}

int hl_index_fit(hl_index *ix)
{
    hl_index_tab fresh;
    if (ix->growing) migrate(ix, SIZE_MAX);
    uint32_t bits = bits_for(ix->cur.used) + 1;
    if (bits >= ix->cur.bits) return 0;
    if (tab_alloc(&fresh, bits) != 0) return HL_ENOMEM;
    size_t end = (size_t)1 << ix->cur.bits;
    for (size_t i = 0; i < end; i++)    /* cur alone holds no tombstones */
        if (ix->cur.slot[i] != SLOT_EMPTY) tab_put(&fresh, ix->cur.slot[i]);
    tab_free(&ix->cur);
    tab_free(&ix->spare);       /* sized to double the old cur */
    ix->prefault_pos = 0;
    ix->cur = fresh;
    return 0;
}

void hl_index_put(hl_index *ix, uint32_t tag, uint32_t row)
{
    tab_put(&ix->cur, make_slot(tag, row));
    if (ix->growing) migrate(ix, MIGRATE_PER_PUT);
}

static void del_cur(hl_index_tab *t, uint64_t want)
{
    size_t m = mask(t), i = home(t, slot_tag(want));
    while (t->slot[i] != want) {
        if (t->slot[i] == SLOT_EMPTY) return;
        i = (i + 1) & m;
    }
    /* Backward shift: pull later entries of the run into the hole unless
     * their home lies cyclically in (i, j]. */
    for (size_t j = (i + 1) & m;; j = (j + 1) & m) {
        uint64_t v = t->slot[j];
        if (v == SLOT_EMPTY) break;
        size_t k = home(t, slot_tag(v));
        int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (!stays) {
            t->slot[i] = v;
            i = j;
        }
    }
    t->slot[i] = SLOT_EMPTY;
    t->used--;
}

static void del_old(hl_index_tab *t, uint64_t want)
{
    size_t m = mask(t);
    for (size_t i = home(t, slot_tag(want)); t->slot[i] != SLOT_EMPTY; i = (i + 1) & m)
        if (t->slot[i] == want) {
            t->slot[i] = SLOT_TOMB;
            t->used--;
            return;
        }
}

void hl_index_del(hl_index *ix, uint32_t tag, uint32_t row)
{
    del_cur(&ix->cur, make_slot(tag, row));
    if (ix->growing) del_old(&ix->old, make_slot(tag, row));
}

/* From load 0.45 on, map the table the next doubling will need and fault in
 * one huge page (512 small ones) of it per step, so the doubling finds its
 * memory ready. Without this the first batch after a doubling paid for
 * zeroing the whole new table at once (181 ms at 3M users on this VM). On
 * failure nothing is lost: hl_index_reserve maps the table itself. */
static void prepare_growth(hl_index *ix)
{
    hl_index_tab *nx = &ix->spare;
    if (ix->cur.bits >= 32) return;
    if (nx->slot == NULL) {
        if (ix->cur.used * 20 < ((size_t)9 << ix->cur.bits)) return;
        if (tab_alloc(nx, ix->cur.bits + 1) != 0) return;
        ix->prefault_pos = 0;
    }
    volatile uint8_t *p = (volatile uint8_t *)nx->slot;
    size_t end = ix->prefault_pos + HUGE_PAGE;
    for (; ix->prefault_pos < end && ix->prefault_pos < nx->map_bytes;
         ix->prefault_pos += 4096)
        p[ix->prefault_pos] = 0;
}

void hl_index_step(hl_index *ix)
{
    if (ix->growing) migrate(ix, MIGRATE_PER_STEP);
    else prepare_growth(ix);
}

size_t hl_index_bytes(const hl_index *ix)
{
    size_t b = 0;
    if (ix->cur.slot != NULL) b += sizeof(uint64_t) << ix->cur.bits;
    if (ix->old.slot != NULL) b += sizeof(uint64_t) << ix->old.bits;
    if (ix->spare.slot != NULL) b += ix->prefault_pos;
    return b;
}
