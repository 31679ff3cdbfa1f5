/* table.c - one shard's users: user_id -> row of decayed heads and history.
 *
 * Rows live in blocks of ROWS_PER_BLOCK fixed-size rows, each block one
 * anonymous mapping (2 MB aligned, transparent huge pages requested: random
 * access over gigabytes of rows is TLB bound otherwise). Untouched pages of a
 * block cost nothing, so a block is large in address space only. A row id is
 * (block << ROWS_SHIFT) | index and a row never moves: ids are stable until
 * the user is evicted. A new user takes the lowest free id, so the set of
 * live ids alone decides future ids (what makes restore_at exact).
 *
 * One row (stride rounded up to 64 bytes):
 *
 *   0  row_hdr: t_ref, last_offset, active_seq, next_dirty, user_len,
 *      hist_head, n_hist                                  (32 bytes)
 *   32 flags (live is in the block bitmap, not here)       (1)
 *   33 user_id bytes inline, key_cap of them; a longer id is kept in a
 *      malloc'd copy whose pointer is stored here instead
 *   m  (n_heads) floats, s (n_heads, dim) floats (32-byte aligned)
 *   hist_type (history) uint8, hist_item (history) int32, hist_ts (history)
 *      int64, hist_key (history) uint64, hist_w (history) float: separate
 *      arrays so the payload is tight, the types first so they share the
 *      last line of s (an update then writes one line less). Keys and
 *      weights are what a model swap needs (migrate.c), nothing else.
 *
 * The key sits in the row's first lines, which an update touches anyway.
 *
 * Users are found through index.c (32-bit hash tag -> row id, grown
 * incrementally) and confirmed by key. hl_table_apply runs a batch as a
 * four-stage software pipeline (hash + index prefetch, row guess + row and
 * embedding prefetch, history prefetch, apply) so the misses of many events
 * overlap. Capacity eviction takes the exact least recently active users
 * from a candidate pool that lru.c keeps, refilled by a scan spread over
 * inserts; no single call scans the table.
 *
 * Dirty rows form an intrusive FIFO list through next_dirty; eviction clears
 * the dirty mark and leaves the id in the list, take_dirty skips it.
 *
 * One thread, the shard's owner, calls everything; nothing locks. No I/O,
 * no clock: time comes in with the events.
 *
 * This file holds the event path: create, row ids, the dirty list, insert,
 * eviction (capacity, mass, removal) and apply. Rows in and out away from
 * it (views, edits for a model swap, restore, meta, stats) are in
 * table_rows.c; the struct and row accessors both use, in table_internal.h. */
#include "table_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* ---- row layout ---------------------------------------------------------- */

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

/* Offsets for a given inline key capacity; returns the bytes used. */
static size_t layout(hl_table *tbl, size_t key_cap)
{
    size_t nh = (size_t)tbl->n_heads, hist = (size_t)tbl->history;
    tbl->key_cap   = key_cap;
    tbl->off_m     = align_up(sizeof(row_hdr) + 1 + key_cap, 4);
    tbl->off_s     = align_up(tbl->off_m + nh * 4, 32);
    tbl->off_htype = tbl->off_s + nh * (size_t)tbl->dim * 4;
    tbl->off_hitem = align_up(tbl->off_htype + hist, 4);
    tbl->off_hts   = align_up(tbl->off_hitem + hist * 4, 8);
    tbl->off_hkey  = tbl->off_hts + hist * 8;
    tbl->off_hw    = tbl->off_hkey + hist * 8;
    return tbl->off_hw + hist * 4;
}

/* Stride is the layout with a 24-byte key rounded up to a cache line; the
 * rounding slack then goes to the key (up to 255 bytes). */
static void plan_rows(hl_table *tbl)
{
    tbl->stride = align_up(layout(tbl, 24), 64);
    size_t cap = 24;
    while (cap < 255 && layout(tbl, cap + 1) <= tbl->stride) cap++;
    layout(tbl, cap);
    tbl->payload_fixed = (size_t)tbl->n_heads * tbl->dim * 4
                       + (size_t)tbl->n_heads * 4 + 8 + 8
                       + (size_t)tbl->history * (4 + 1 + 8 + 8 + 4);
}

/* ---- memory -------------------------------------------------------------- */

static int add_block(hl_table *tbl)
{
    if ((size_t)(tbl->n_blocks + 1) << ROWS_SHIFT > HL_TABLE_MAX_ROWS)
        return HL_EFULL;
    if (tbl->n_blocks == tbl->cap_blocks) {
        uint32_t cap = tbl->cap_blocks ? tbl->cap_blocks * 2 : 16;
        block **nb = realloc(tbl->blocks, cap * sizeof *nb);
        if (nb == NULL) return HL_ENOMEM;
        tbl->blocks = nb;
        uint8_t **nr = realloc(tbl->rows, cap * sizeof *nr);
        if (nr == NULL) return HL_ENOMEM;
        tbl->rows = nr;
        tbl->cap_blocks = cap;
    }
    block *b = calloc(1, sizeof *b);
    if (b == NULL) return HL_ENOMEM;
    b->rows = hl_map_huge((size_t)ROWS_PER_BLOCK * tbl->stride, &b->map_bytes);
    if (b->rows == NULL) {
        free(b);
        return HL_ENOMEM;
    }
    tbl->rows[tbl->n_blocks] = b->rows;
    tbl->blocks[tbl->n_blocks++] = b;
    return 0;
}

/* ---- create / destroy ---------------------------------------------------- */

static int check_opts(const hl_table_opts *o, char *errbuf, size_t errlen)
{
    const hl_decay *d = &o->decay;
    if (d->n_heads < 1 || d->n_heads > HL_MAX_HEADS || d->dim < 1)
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "table: %d heads of dim %d, want 1..%d heads, dim >= 1",
                      d->n_heads, d->dim, HL_MAX_HEADS);
    if (o->history < 1 || o->history > 255)
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "table: history %d, want 1..255", o->history);
    if (!(o->evict_mass >= 0) || o->evict_mass > 3.4e38f)
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "table: evict_mass %g, want finite and >= 0",
                      (double)o->evict_mass);
    if (o->max_users > HL_TABLE_MAX_ROWS)
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "table: max_users %zu, want <= %u", o->max_users,
                      HL_TABLE_MAX_ROWS);
    return 0;
}

hl_table *hl_table_create(const hl_table_opts *o, char *errbuf, size_t errlen)
{
    if (check_opts(o, errbuf, errlen) != 0) return NULL;
    hl_table *tbl = calloc(1, sizeof *tbl);
    if (tbl == NULL) goto nomem;
    tbl->o = *o;
    tbl->n_heads = o->decay.n_heads;
    tbl->dim = o->decay.dim;
    tbl->history = o->history;
    plan_rows(tbl);
    tbl->dirty_head = tbl->dirty_tail = NONE;
    tbl->newest_ts_ms = INT64_MIN;
    tbl->st.newest_ts_ms = INT64_MIN;
    tbl->evict_batch = o->max_users / 64;
    if (tbl->evict_batch < 1) tbl->evict_batch = 1;
    if (tbl->evict_batch > MAX_EVICT_BATCH) tbl->evict_batch = MAX_EVICT_BATCH;
    hl_lru_init(&tbl->lru, o->max_users / 16 > 4 * tbl->evict_batch
                           ? o->max_users / 16 : 4 * tbl->evict_batch);
    if (hl_index_init(&tbl->ix, o->expected_users) != 0)
        goto nomem;
    return tbl;
nomem:
    hl_table_destroy(tbl);
    hl_err(errbuf, errlen, HL_ENOMEM, "table: out of memory");
    return NULL;
}

static void free_heap_key(hl_table *tbl, uint8_t *p)
{
    if (!(*flags(p) & F_HEAPKEY)) return;
    char *k = (char *)row_key(p);
    tbl->heap_key_bytes -= hdr(p)->user_len;
    free(k);
    *flags(p) &= (uint8_t)~F_HEAPKEY;
}

void hl_table_destroy(hl_table *tbl)
{
    if (tbl == NULL) return;
    for (uint32_t r = 0; r < tbl->row_limit; r++)
        if (row_is_live(tbl, r)) free_heap_key(tbl, row_ptr(tbl, r));
    for (uint32_t b = 0; b < tbl->n_blocks; b++) {
        munmap(tbl->blocks[b]->rows, tbl->blocks[b]->map_bytes);
        free(tbl->blocks[b]);
    }
    free(tbl->blocks);
    free(tbl->rows);
    hl_index_free(&tbl->ix);
    hl_lru_free(&tbl->lru);
    free(tbl);
}

const hl_table_opts *hl_table_opts_get(const hl_table *tbl) { return &tbl->o; }

/* ---- row ids -------------------------------------------------------------- */

/* Lowest id with a clear live bit, scanning words from free_hint; may add a
 * block. The hint only moves down on eviction, so scanning is amortised. */
int hl_table_take_id(hl_table *tbl, uint32_t *out)
{
    for (uint32_t w = tbl->free_hint / 64;; w++) {
        uint32_t b = w / WORDS_PER_BLOCK;
        if (b >= tbl->n_blocks) {
            int rc = add_block(tbl);
            if (rc != 0) return rc;
        }
        uint64_t bits = tbl->blocks[b]->live[w % WORDS_PER_BLOCK];
        if (bits != UINT64_MAX) {
            *out = w * 64 + (uint32_t)__builtin_ctzll(~bits);
            tbl->free_hint = *out;
            return 0;
        }
    }
}

int hl_table_claim_id(hl_table *tbl, uint32_t r)
{
    while ((r >> ROWS_SHIFT) >= tbl->n_blocks) {
        int rc = add_block(tbl);
        if (rc != 0) return rc;
    }
    return row_is_live(tbl, r) ? HL_EINVAL : 0;
}

int hl_table_map_rows(hl_table *tbl, size_t n_rows, hl_table_span *spans, int max_spans)
{
    if (tbl->o.max_users > 0 && n_rows > 2 * tbl->o.max_users) n_rows = 2 * tbl->o.max_users;
    if (n_rows > HL_TABLE_MAX_ROWS) n_rows = HL_TABLE_MAX_ROWS;
    uint32_t want = (uint32_t)((n_rows + ROWS_PER_BLOCK - 1) >> ROWS_SHIFT);
    while (tbl->n_blocks < want) {
        int rc = add_block(tbl);
        if (rc != 0) return rc;
    }
    int n = 0;
    for (uint32_t b = 0; b < want && n < max_spans; b++)
        spans[n++] = (hl_table_span){tbl->blocks[b]->rows, tbl->blocks[b]->map_bytes,
                                     b << ROWS_SHIFT, ROWS_PER_BLOCK};
    return n;
}

void hl_table_mark_live(hl_table *tbl, uint32_t r)
{
    set_live(tbl, r, 1);
    if (r >= tbl->row_limit) tbl->row_limit = r + 1;
    if (r >= tbl->row_ever) tbl->row_ever = r + 1;
    if (r == tbl->free_hint) tbl->free_hint = r + 1;
}

static void mark_dead(hl_table *tbl, uint32_t r)
{
    set_live(tbl, r, 0);
    if (r < tbl->free_hint) tbl->free_hint = r;
    while (tbl->row_limit > 0 && !row_is_live(tbl, tbl->row_limit - 1))
        tbl->row_limit--;
}

/* ---- dirty list ----------------------------------------------------------- */

static void mark_dirty(hl_table *tbl, uint32_t r, uint8_t *p)
{
    uint8_t *f = flags(p);
    *f |= F_DIRTY;
    if (*f & F_INLIST) return;
    *f |= F_INLIST;
    hdr(p)->next_dirty = NONE;
    if (tbl->dirty_tail == NONE) tbl->dirty_head = r;
    else hdr(row_ptr(tbl, tbl->dirty_tail))->next_dirty = r;
    tbl->dirty_tail = r;
}

int hl_table_take_dirty(hl_table *tbl, uint32_t *rows, int max)
{
    int n = 0;
    while (n < max && tbl->dirty_head != NONE) {
        uint32_t r = tbl->dirty_head;
        uint8_t *p = row_ptr(tbl, r);
        tbl->dirty_head = hdr(p)->next_dirty;
        if (tbl->dirty_head == NONE) tbl->dirty_tail = NONE;
        *flags(p) &= (uint8_t)~F_INLIST;
        if ((*flags(p) & F_DIRTY) && row_is_live(tbl, r)) {
            *flags(p) &= (uint8_t)~F_DIRTY;
            rows[n++] = r;
        }
    }
    return n;
}

/* ---- insert and evict ----------------------------------------------------- */

/* Writes the user's id into a fresh row: inline, or a heap copy if long. */
int hl_table_set_key(hl_table *tbl, uint8_t *p, const char *user, size_t len)
{
    char *dst = (char *)flags(p) + 1;
    hdr(p)->user_len = (uint16_t)len;
    if (len <= tbl->key_cap) {
        memcpy(dst, user, len);
        return 0;
    }
    char *k = malloc(len);
    if (k == NULL) return HL_ENOMEM;
    memcpy(k, user, len);
    memcpy(dst, &k, sizeof k);
    *flags(p) |= F_HEAPKEY;
    tbl->heap_key_bytes += len;
    return 0;
}

/* Empties row memory for a new user, keeping only its dirty-list link. A
 * row never used is left unread: it is zero already, and a read would
 * first map the huge zero page, so the write after it faults again (a
 * second fault and a TLB flush per fresh 2 MB of rows). */
void hl_table_clear_row(hl_table *tbl, uint32_t r, uint8_t *p)
{
    if (r >= tbl->row_ever) return;
    uint32_t next = hdr(p)->next_dirty;
    uint8_t keep = *flags(p) & F_INLIST;
    memset(p, 0, tbl->stride);
    hdr(p)->next_dirty = next;
    *flags(p) = keep;
}

static void evict(hl_table *tbl, uint32_t r)
{
    uint8_t *p = row_ptr(tbl, r);
    uint32_t tag = tag_of(hash_key(row_key(p), hdr(p)->user_len));
    if (tbl->on_evict != NULL)
        tbl->on_evict(tbl->on_evict_arg, row_key(p), hdr(p)->user_len);
    hl_index_del(&tbl->ix, tag, r);
    tbl->key_bytes -= hdr(p)->user_len;
    free_heap_key(tbl, p);
    *flags(p) &= (uint8_t)~F_DIRTY;
    mark_dead(tbl, r);
    tbl->evictions++;
    tbl->users--;
}

/* Advances the LRU scan by up to rows row ids; finishes it at the end. */
static void lru_step(hl_table *tbl, size_t rows)
{
    hl_lru *l = &tbl->lru;
    for (; rows > 0 && l->pos < tbl->row_limit; rows--, l->pos++)
        if (row_is_live(tbl, l->pos))
            hl_lru_offer(l, l->pos, hdr(row_ptr(tbl, l->pos))->active_seq);
    if (l->pos >= tbl->row_limit) hl_lru_finish(l);
}

/* Once per new user: within max_users/16 of the cap with the pool below
 * half, start a scan; advance a running one LRU_SCAN_PER_INSERT rows. A
 * scan of n rows then ends within n/64 inserts, before the k = n/16 pool
 * (or what is left of it) runs out, so no insert pays for a whole scan. */
static int lru_tick(hl_table *tbl)
{
    hl_lru *l = &tbl->lru;
    size_t cap = tbl->o.max_users;
    if (cap == 0) return 0;
    if (!l->scanning && l->pool_n < l->k / 2 && tbl->users + cap / 16 >= cap) {
        int rc = hl_lru_begin(l, tbl->active_seq + 1);
        if (rc != 0) return rc;
    }
    if (l->scanning) lru_step(tbl, LRU_SCAN_PER_INSERT);
    return 0;
}

/* Evicts the evict_batch least recently active users: smallest active_seq,
 * unique per row, so the choice is exact and deterministic. Candidates come
 * from the LRU pool (lru.h); one that was evicted or touched since its scan
 * is skipped. Only when the pool runs dry does a scan run here in full. */
static int evict_oldest(hl_table *tbl)
{
    hl_lru *l = &tbl->lru;
    size_t want = tbl->evict_batch < tbl->users ? tbl->evict_batch : tbl->users;
    size_t done = 0;
    hl_lru_ent e;
    while (done < want) {
        if (!hl_lru_pop(l, &e)) {
            int rc;
            if (!l->scanning && (rc = hl_lru_begin(l, tbl->active_seq + 1)) != 0)
                return rc;
            lru_step(tbl, SIZE_MAX);
            if (l->pool_n == 0) break;
            continue;
        }
        if (!row_is_live(tbl, e.row) || hdr(row_ptr(tbl, e.row))->active_seq != e.seq)
            continue;
        evict(tbl, e.row);
        done++;
    }
    tbl->st.evicted_capacity += done;
    return 0;
}

static int by_seq(const void *a, const void *b)
{
    uint64_t x = ((const hl_lru_ent *)a)->seq, y = ((const hl_lru_ent *)b)->seq;
    return x < y ? -1 : x > y;
}

/* Down to max_users after a restore: a file written under a larger limit
 * loads whole (its rows' recency is known only at the end), then the least
 * recently active go, exactly as live inserts would have taken them. One
 * sort rather than the LRU pool: the pool holds max_users/16 candidates a
 * scan, so a file many times the limit would take a full scan per pool.
 * Their rows stay mapped for new users; their keys and index entries go. */
int hl_table_trim(hl_table *tbl, size_t *evicted)
{
    size_t cap = tbl->o.max_users, n = 0;
    if (evicted != NULL) *evicted = 0;
    if (cap == 0 || tbl->users <= cap) return 0;
    hl_lru_ent *all = malloc(tbl->users * sizeof *all);
    if (all == NULL) return HL_ENOMEM;
    for (uint32_t r = 0; r < tbl->row_limit && n < tbl->users; r++)
        if (row_is_live(tbl, r))
            all[n++] = (hl_lru_ent){hdr(row_ptr(tbl, r))->active_seq, r};
    qsort(all, n, sizeof *all, by_seq);
    size_t over = n > cap ? n - cap : 0;
    for (size_t i = 0; i < over; i++)
        evict(tbl, all[i].row);
    free(all);
    tbl->st.evicted_capacity += over;
    if (evicted != NULL) *evicted = over;
    return 0;
}

/* A row for a user not in the table: capacity first, then an id, the key,
 * and the index entry. */
static int insert_user(hl_table *tbl, uint64_t h, const char *user, size_t len,
                       uint32_t *out)
{
    int rc;
    if ((rc = lru_tick(tbl)) != 0) return rc;
    if (tbl->o.max_users > 0 && tbl->users >= tbl->o.max_users
        && (rc = evict_oldest(tbl)) != 0)
        return rc;
    if ((rc = hl_index_reserve(&tbl->ix)) != 0) return rc;
    uint32_t r;
    if ((rc = hl_table_take_id(tbl, &r)) != 0) return rc;
    uint8_t *p = row_ptr(tbl, r);
    hl_table_clear_row(tbl, r, p);
    set_fresh(tbl, p);
    if ((rc = hl_table_set_key(tbl, p, user, len)) != 0) return rc;
    hdr(p)->t_ref_ms = INT64_MIN;
    hdr(p)->last_offset = INT64_MIN;
    hl_index_put(&tbl->ix, tag_of(h), r);
    hl_table_mark_live(tbl, r);
    tbl->users++;
    tbl->key_bytes += len;
    tbl->st.inserted++;
    *out = r;
    return 0;
}

/* ---- apply ---------------------------------------------------------------- */

/* Ring index the next event goes to (a wrap by subtraction: a division by
 * the runtime history length costs more than the rest of this). */
static int hist_next(const hl_table *tbl, const row_hdr *rh)
{
    int i = rh->hist_head + rh->n_hist;
    if (rh->n_hist == tbl->history) i = rh->hist_head;
    return i >= tbl->history ? i - tbl->history : i;
}

static void push_history(hl_table *tbl, uint8_t *p, const hl_event *e)
{
    row_hdr *rh = hdr(p);
    int i = hist_next(tbl, rh);
    if (rh->n_hist < tbl->history) {
        rh->n_hist++;
    } else {
        int next = rh->hist_head + 1;
        rh->hist_head = (uint8_t)(next == tbl->history ? 0 : next);
    }
    row_hts(tbl, p)[i] = e->ts_ms;
    row_hitem(tbl, p)[i] = e->item;
    row_htype(tbl, p)[i] = e->type;
    row_hkey(tbl, p)[i] = e->item_key;
    row_hw(tbl, p)[i] = e->w;
}

/* Could an event of weight w take one of row p's masses past
 * HL_TABLE_MAX_MASS? A mass moves by at most |w| (1 + 2^-12) per event
 * (every decay factor is <= 1; an event after its head's base weighs up
 * to 1 + 2^-12, decay.h), so |m| + that bounds it; a NaN anywhere says
 * yes. Checked before the update, so a refused event needs no undo;
 * n_heads floats on lines the update reads anyway. */
static int mass_would_overflow(const hl_table *tbl, uint8_t *p, float w)
{
    const float *m = row_m(tbl, p);
    float aw = fabsf(w) * (1.0f + 0x1p-12f);
    for (int h = 0; h < tbl->n_heads; h++)
        if (!(fabsf(m[h]) + aw <= HL_TABLE_MAX_MASS)) return 1;
    return 0;
}

/* Applies one event to row r: 1 applied, 0 duplicate, HL_ERANGE refused
 * by the mass guard. */
static int apply_one(hl_table *tbl, uint32_t r, const hl_event *e,
                     const float *e_in, int32_t n_items)
{
    uint8_t *p = row_ptr(tbl, r);
    row_hdr *rh = hdr(p);
    if (e->offset <= rh->last_offset) {
        tbl->st.duplicates++;
        return 0;
    }
    if (mass_would_overflow(tbl, p, e->w)) {
        tbl->st.non_finite++;
        return HL_ERANGE;
    }
    const float *x = e->x;
    if (x == NULL && e_in != NULL && e->item >= 0 && e->item < n_items)
        x = e_in + (size_t)e->item * tbl->dim;
    hl_decay_add(&tbl->o.decay, row_s(tbl, p), row_m(tbl, p), &rh->t_ref_ms,
                 e->ts_ms, e->w, x);
    push_history(tbl, p, e);
    rh->last_offset = e->offset;
    rh->active_seq = ++tbl->active_seq;
    if (e->ts_ms > tbl->newest_ts_ms) tbl->newest_ts_ms = e->ts_ms;
    mark_dirty(tbl, r, p);
    tbl->st.applied++;
    return 1;
}

/* The row a hinted lookup named, if it still holds this user (an earlier
 * event of the batch may have evicted it or inserted the user since). The
 * index holds live rows only, so a hint taken with no eviction since is
 * live without a look at the bitmap (a cache miss of its own at 5M users). */
static int64_t resolve(hl_table *tbl, int64_t hint, uint64_t gen, uint64_t h,
                       const hl_event *e, int *rc)
{
    if (hint >= 0 && (gen == tbl->evictions || row_is_live(tbl, (uint32_t)hint))
        && key_eq(row_ptr(tbl, (uint32_t)hint), e->user, e->user_len))
        return hint;
    int64_t r = lookup(tbl, h, e->user, e->user_len);
    if (r >= 0) return r;
    uint32_t nr;
    if ((*rc = insert_user(tbl, h, e->user, e->user_len, &nr)) != 0) return -1;
    return nr;
}

/* Pipeline stage one: hash event a's user and prefetch its index slots.
 * (The stages store into the table: a helper that only prefetched would look
 * side-effect free to gcc's IPA, which then drops the call, prefetch and all.) */
static void stage_hash(hl_table *tbl, const hl_event *e, int a)
{
    uint64_t h = hash_key(e->user, e->user_len);
    tbl->pipe_hash[a & (RING - 1)] = h;
    hl_index_prefetch(&tbl->ix, tag_of(h));
}

/* First tag match in the current (then old) table, without touching rows:
 * a guess that resolve() confirms once the row is in cache. */
static int64_t guess_row(const hl_table *tbl, uint64_t h)
{
    hl_index_it it;
    hl_index_first(&tbl->ix, tag_of(h), &it);
    return hl_index_next(&tbl->ix, tag_of(h), &it);
}

/* Stage two: guess event b's row and prefetch the lines an update writes
 * (header, key, masses, heads) and the item's embedding. */
static void stage_guess(hl_table *tbl, const hl_event *e, int b,
                        const float *e_in, int32_t n_items)
{
    int64_t r = guess_row(tbl, tbl->pipe_hash[b & (RING - 1)]);
    tbl->pipe_row[b & (RING - 1)] = r;
    tbl->pipe_gen[b & (RING - 1)] = tbl->evictions;
    const float *x = e->x;
    if (x == NULL && e_in != NULL && e->item >= 0 && e->item < n_items)
        x = e_in + (size_t)e->item * tbl->dim;
    for (int j = 0; x != NULL && j < tbl->dim; j += 16) __builtin_prefetch(x + j, 0, 3);
    if (r < 0) return;
    const uint8_t *p = row_ptr(tbl, (uint32_t)r);
    for (size_t off = 0; off < tbl->off_htype; off += 64)
        __builtin_prefetch(p + off, 1, 3);
}

/* Stage three: with c's row header in cache by now, prefetch the history
 * entries its event will write (three arrays, three lines). */
static void stage_hist(hl_table *tbl, int c)
{
    int64_t r = tbl->pipe_row[c & (RING - 1)];
    if (r < 0) return;
    uint8_t *p = row_ptr(tbl, (uint32_t)r);
    row_hdr *rh = hdr(p);
    int k = hist_next(tbl, rh);
    tbl->pipe_hist[c & (RING - 1)] = k;    /* a store: see stage_hash */
    __builtin_prefetch(row_hts(tbl, p) + k, 1, 3);
    __builtin_prefetch(row_hitem(tbl, p) + k, 1, 3);
    __builtin_prefetch(row_htype(tbl, p) + k, 1, 3);
}

int hl_table_apply(hl_table *tbl, const hl_event *ev, int n,
                   const float *e_in, int32_t n_items, int8_t *status)
{
    return hl_table_apply_rows(tbl, ev, n, e_in, n_items, status, NULL);
}

int hl_table_apply_rows(hl_table *tbl, const hl_event *ev, int n, const float *e_in,
                        int32_t n_items, int8_t *status, uint32_t *rows)
{
    int applied = 0;
    uint64_t evicted = tbl->st.evicted_capacity;
    hl_index_step(&tbl->ix);
    /* A four-stage pipeline over the batch, so the cache misses of many
     * events overlap: event i + 3 PIPE is hashed and its index slot
     * prefetched, i + 2 PIPE's slot read and its row and item prefetched,
     * i + PIPE's history slots prefetched, and i applied. */
    for (int i = -3 * PIPE; i < n; i++) {
        int a = i + 3 * PIPE, b = i + 2 * PIPE, c = i + PIPE;
        if (a < n) stage_hash(tbl, &ev[a], a);
        if (b >= 0 && b < n) stage_guess(tbl, &ev[b], b, e_in, n_items);
        if (c >= 0 && c < n) stage_hist(tbl, c);
        if (i < 0) continue;
        int rc = HL_EINVAL;                /* a user_id no row can hold */
        uint64_t inserted = tbl->st.inserted;
        int64_t r = -1;
        if (!(fabsf(ev[i].w) <= HL_TABLE_MAX_MASS)) {
            rc = HL_ERANGE;                /* refused before it creates a user */
            tbl->st.non_finite++;
        } else if (ev[i].user_len >= 1 && ev[i].user_len <= HL_MAX_ID_LEN) {
            r = resolve(tbl, tbl->pipe_row[i & (RING - 1)], tbl->pipe_gen[i & (RING - 1)],
                        tbl->pipe_hash[i & (RING - 1)], &ev[i], &rc);
        }
        int got = r < 0 ? rc : apply_one(tbl, (uint32_t)r, &ev[i], e_in, n_items);
        if (got > 0 && tbl->st.inserted != inserted) got = 2;   /* it created its user */
        if (got > 0) applied++;
        if (status != NULL) status[i] = (int8_t)got;
        if (rows != NULL) rows[i] = got > 0 ? (uint32_t)r : HL_TABLE_NO_ROW;
    }
    /* A row evicted for room may have been given to a later event's user:
     * no row of this call is then vouched for. */
    for (int i = 0; rows != NULL && tbl->st.evicted_capacity != evicted && i < n; i++)
        rows[i] = HL_TABLE_NO_ROW;
    return applied;
}

/* ---- mass eviction -------------------------------------------------------- */

/* Mass decayed to the newest time the shard has seen, below the bar in
 * every head? */
static int mass_gone(const hl_table *tbl, uint8_t *p)
{
    float f[HL_MAX_HEADS];
    int64_t t_ref = hdr(p)->t_ref_ms, now = tbl->newest_ts_ms;
    hl_decay_to(&tbl->o.decay, t_ref, now, f);     /* from the heads' bases */
    const float *m = row_m(tbl, p);
    for (int h = 0; h < tbl->n_heads; h++)
        if (!(m[h] * f[h] < tbl->o.evict_mass)) return 0;
    return 1;
}

/* Next live id at or after r (wrapping once to 0), or NONE if none is live. */
static uint32_t next_live(const hl_table *tbl, uint32_t r)
{
    for (int pass = 0; pass < 2; pass++, r = 0) {
        for (uint32_t w = r / 64; w * 64 < tbl->row_limit; w++) {
            uint64_t bits = tbl->blocks[w / WORDS_PER_BLOCK]->live[w % WORDS_PER_BLOCK];
            if (w == r / 64) bits &= UINT64_MAX << (r % 64);
            if (bits != 0) return w * 64 + (uint32_t)__builtin_ctzll(bits);
        }
    }
    return NONE;
}

size_t hl_table_sweep(hl_table *tbl, size_t max_rows)
{
    size_t gone = 0;
    if (!(tbl->o.evict_mass > 0)) return 0;
    for (size_t i = 0; i < max_rows && tbl->users > 0; i++) {
        uint32_t r = next_live(tbl, tbl->sweep_cursor);
        tbl->sweep_cursor = r + 1;
        if (mass_gone(tbl, row_ptr(tbl, r))) {
            evict(tbl, r);
            gone++;
        }
    }
    if (tbl->sweep_cursor >= tbl->row_limit) tbl->sweep_cursor = 0;
    tbl->st.evicted_mass += gone;
    return gone;
}

/* ---- removal and the eviction hook ----------------------------------------- */

void hl_table_on_evict(hl_table *tbl, hl_table_evict_fn fn, void *arg)
{
    tbl->on_evict = fn;
    tbl->on_evict_arg = arg;
}

hl_table_evict_fn hl_table_evict_hook(const hl_table *tbl, void **arg)
{
    *arg = tbl->on_evict_arg;
    return tbl->on_evict;
}

int hl_table_remove(hl_table *tbl, const char *user, size_t user_len)
{
    int64_t r = hl_table_find(tbl, user, user_len);
    if (r < 0) return HL_ENOENT;
    hl_table_evict_fn fn = tbl->on_evict;
    tbl->on_evict = NULL;               /* a removal is not an eviction */
    evict(tbl, (uint32_t)r);
    tbl->on_evict = fn;
    return 0;
}
