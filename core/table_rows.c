/* table_rows.c - whole rows in and out of a table, away from the event
 * path: views of a row (snapshots, ranking), edits in place and model
 * generations (a model swap, migrate.c), restore of rows a snapshot holds
 * (at their ids or at the lowest free one), the table's meta and stats.
 *
 * Restoring a user who is in the table already is refused (HL_EINVAL), so
 * a damaged snapshot can never make two rows for one user. Same thread
 * rule as table.c: the shard's owner calls everything; nothing locks. */
#include "table_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- lookups and views ---------------------------------------------------- */

int64_t hl_table_find(const hl_table *tbl, const char *user, size_t user_len)
{
    return lookup(tbl, hash_key(user, user_len), user, user_len);
}

void hl_table_view(const hl_table *tbl, uint32_t row, hl_row_view *v)
{
    uint8_t *p = row_ptr(tbl, row);
    row_hdr *rh = hdr(p);
    *v = (hl_row_view){
        .user = row_key(p), .user_len = rh->user_len,
        .s = row_s(tbl, p), .m = row_m(tbl, p),
        .t_ref_ms = rh->t_ref_ms, .last_offset = rh->last_offset,
        .active_seq = rh->active_seq, .history = tbl->history,
        .n_hist = rh->n_hist, .hist_head = rh->hist_head,
        .hist_item = row_hitem(tbl, p), .hist_type = row_htype(tbl, p),
        .hist_ts_ms = row_hts(tbl, p), .hist_key = row_hkey(tbl, p),
        .hist_w = row_hw(tbl, p),
    };
}

uint32_t hl_table_row_limit(const hl_table *tbl) { return tbl->row_limit; }

int hl_table_row_live(const hl_table *tbl, uint32_t row)
{
    return row < tbl->row_limit && row_is_live(tbl, row);
}

/* ---- input positions ------------------------------------------------------ */

void hl_table_forget_offsets(hl_table *tbl)
{
    /* INT64_MIN: what a new row starts with (table.c), below any offset. */
    for (uint32_t r = hl_table_next_live(tbl, 0); r != NONE; r = hl_table_next_live(tbl, r + 1))
        hdr(row_ptr(tbl, r))->last_offset = INT64_MIN;
}

/* ---- model generations ---------------------------------------------------- */

void hl_table_flip_generation(hl_table *tbl)
{
    tbl->gen_flag ^= F_GEN;
}

int hl_table_row_stale(const hl_table *tbl, uint32_t row)
{
    return (*flags(row_ptr(tbl, row)) & F_GEN) != tbl->gen_flag;
}

void hl_table_edit(hl_table *tbl, uint32_t row, hl_row_edit *e)
{
    uint8_t *p = row_ptr(tbl, row);
    hl_table_view(tbl, row, &e->v);
    e->s = row_s(tbl, p);
    e->m = row_m(tbl, p);
    e->hist_item = row_hitem(tbl, p);
}

void hl_table_row_done(hl_table *tbl, uint32_t row)
{
    set_fresh(tbl, row_ptr(tbl, row));
}

uint32_t hl_table_next_live(const hl_table *tbl, uint32_t row)
{
    if (row >= tbl->row_limit) return UINT32_MAX;
    for (uint32_t w = row / 64; w * 64 < tbl->row_limit; w++) {
        uint64_t bits = tbl->blocks[w / WORDS_PER_BLOCK]->live[w % WORDS_PER_BLOCK];
        if (w == row / 64) bits &= UINT64_MAX << (row % 64);
        if (bits != 0) return w * 64 + (uint32_t)__builtin_ctzll(bits);
    }
    return UINT32_MAX;
}

/* ---- restore and meta ----------------------------------------------------- */

/* A row whose masses or sums are not finite, or whose masses are past what
 * hl_table_apply lets a row reach, would refuse every later event of its
 * user (the mass guard): such a row is damage, never restored (the snapshot
 * file is refused, the changelog record skipped and counted). The sum
 * over all floats is finite only when each is, so the loop vectorises. */
static int state_finite(const hl_table *tbl, const hl_row_view *v)
{
    size_t n_s = (size_t)tbl->n_heads * (size_t)tbl->dim;
    float acc = 0.0f;
    for (size_t i = 0; i < n_s; i++)
        acc += v->s[i] * 0.0f;
    for (int h = 0; h < tbl->n_heads; h++)
        acc += v->m[h] * 0.0f;
    if (acc != 0.0f)
        return 0;
    for (int h = 0; h < tbl->n_heads; h++)
        if (!(fabsf(v->m[h]) <= HL_TABLE_MAX_MASS))
            return 0;
    return 1;
}

/* The weights of the ring entries in use: each NAN (unknown) or finite
 * within the mass guard, as hl_table_apply leaves them. A migration adds
 * w x e_in of each entry into the new sums (core/migrate.c), so an inf
 * or 3e38 from a damaged or hostile snapshot or changelog record would
 * make the migrated row non-finite and refuse its user's every event. */
static int ring_weights_fit(const hl_row_view *v)
{
    for (int i = 0; v->hist_w != NULL && i < v->n_hist; i++) {
        float w = v->hist_w[hl_row_hist_index(v, i)];
        if (w == w && !(fabsf(w) <= HL_TABLE_MAX_MASS))
            return 0;
    }
    return 1;
}

static int view_fits(const hl_table *tbl, const hl_row_view *v)
{
    return v->history == tbl->history && v->n_hist >= 0
        && v->n_hist <= tbl->history && v->hist_head >= 0
        && v->hist_head < tbl->history && v->user_len >= 1
        && v->user_len <= HL_MAX_ID_LEN && v->user != NULL
        && v->s != NULL && v->m != NULL
        && (v->n_hist == 0 || (v->hist_item != NULL && v->hist_type != NULL
                               && v->hist_ts_ms != NULL))
        && state_finite(tbl, v) && ring_weights_fit(v);
}

/* Ring keys and weights, or "unknown" for a view without them (a
 * snapshot of format 1). */
static void copy_keys(hl_table *tbl, uint8_t *p, const hl_row_view *v)
{
    size_t hist = (size_t)tbl->history;
    uint64_t *k = row_hkey(tbl, p);
    float *w = row_hw(tbl, p);
    for (size_t i = 0; i < hist; i++) {
        k[i] = v->hist_key ? v->hist_key[i] : 0;
        w[i] = v->hist_w ? v->hist_w[i] : NAN;
    }
}

static void copy_view(hl_table *tbl, uint8_t *p, const hl_row_view *v)
{
    row_hdr *rh = hdr(p);
    size_t nh = (size_t)tbl->n_heads;
    rh->t_ref_ms = v->t_ref_ms;
    rh->last_offset = v->last_offset;
    rh->active_seq = v->active_seq;
    rh->hist_head = (uint8_t)v->hist_head;
    rh->n_hist = (uint8_t)v->n_hist;
    memcpy(row_m(tbl, p), v->m, nh * sizeof(float));
    memcpy(row_s(tbl, p), v->s, nh * (size_t)tbl->dim * sizeof(float));
    if (v->n_hist > 0) {
        size_t hist = (size_t)tbl->history;
        memcpy(row_hts(tbl, p), v->hist_ts_ms, hist * sizeof(int64_t));
        memcpy(row_hitem(tbl, p), v->hist_item, hist * sizeof(int32_t));
        memcpy(row_htype(tbl, p), v->hist_type, hist);
        copy_keys(tbl, p, v);
    }
}

typedef struct key_ref {
    const hl_table *tbl;
    const char     *user;
    size_t          len;
} key_ref;

static int same_key(const void *ctx, uint32_t r)
{
    const key_ref *k = ctx;
    return key_eq(row_ptr(k->tbl, r), k->user, k->len);
}

/* Fills row r (claimed, not yet live) from v and indexes it, unless the
 * user is in the table already (HL_EINVAL): the duplicate check and the
 * insert are one probe of the index, as a load restores a row per call. */
static int restore_row(hl_table *tbl, uint32_t r, const hl_row_view *v)
{
    uint64_t h = hash_key(v->user, v->user_len);
    key_ref k = {tbl, v->user, v->user_len};
    int rc;
    if ((rc = hl_index_reserve(&tbl->ix)) != 0) return rc;
    if (hl_index_put_absent(&tbl->ix, tag_of(h), r, same_key, &k) >= 0)
        return HL_EINVAL;
    uint8_t *p = row_ptr(tbl, r);
    hl_table_clear_row(tbl, r, p);
    set_fresh(tbl, p);
    if ((rc = hl_table_set_key(tbl, p, v->user, v->user_len)) != 0) {
        hl_index_del(&tbl->ix, tag_of(h), r);
        return rc;
    }
    copy_view(tbl, p, v);
    hl_table_mark_live(tbl, r);
    tbl->users++;
    tbl->key_bytes += v->user_len;
    if (v->active_seq > tbl->active_seq) tbl->active_seq = v->active_seq;
    return 0;
}

int hl_table_restore_at(hl_table *tbl, uint32_t row, const hl_row_view *v)
{
    if (!view_fits(tbl, v) || row >= HL_TABLE_MAX_ROWS)
        return HL_EINVAL;
    int rc = hl_table_claim_id(tbl, row);
    if (rc != 0) return rc;
    return restore_row(tbl, row, v);
}

int hl_table_restore(hl_table *tbl, const hl_row_view *v)
{
    if (!view_fits(tbl, v))
        return HL_EINVAL;
    uint32_t r;
    int rc = hl_table_take_id(tbl, &r);
    if (rc != 0) return rc;
    return restore_row(tbl, r, v);
}

void hl_table_prefetch(const hl_table *tbl, const char *user, size_t user_len)
{
    hl_index_prefetch(&tbl->ix, tag_of(hash_key(user, user_len)));
}

int hl_table_reserve(hl_table *tbl, size_t users)
{
    if (tbl->o.max_users > 0 && users > tbl->o.max_users) users = tbl->o.max_users;
    return hl_index_presize(&tbl->ix, users);
}

int hl_table_fit(hl_table *tbl)
{
    return hl_index_fit(&tbl->ix);
}

void hl_table_meta_get(const hl_table *tbl, hl_table_meta *meta)
{
    *meta = (hl_table_meta){ .newest_ts_ms = tbl->newest_ts_ms,
                             .active_seq = tbl->active_seq,
                             .sweep_cursor = tbl->sweep_cursor };
}

void hl_table_meta_set(hl_table *tbl, const hl_table_meta *meta)
{
    tbl->newest_ts_ms = meta->newest_ts_ms;
    if (meta->active_seq > tbl->active_seq) tbl->active_seq = meta->active_seq;
    tbl->sweep_cursor = meta->sweep_cursor < tbl->row_limit
                      ? meta->sweep_cursor : 0;
}

void hl_table_stats_get(const hl_table *tbl, hl_table_stats *st)
{
    *st = tbl->st;
    st->users = tbl->users;
    st->newest_ts_ms = tbl->newest_ts_ms;
    st->payload_bytes = tbl->users * tbl->payload_fixed + tbl->key_bytes;
    /* Rows up to the highest id ever carved in each block are touched;
     * untouched pages of a mapping are not counted. */
    size_t bytes = sizeof *tbl + tbl->cap_blocks * (sizeof(block *) + sizeof(uint8_t *))
                 + tbl->heap_key_bytes + hl_lru_bytes(&tbl->lru);
    for (uint32_t b = 0; b < tbl->n_blocks; b++)
        bytes += sizeof(block);
    bytes += (size_t)tbl->row_limit * tbl->stride;
    bytes += hl_index_bytes(&tbl->ix);
    st->bytes = bytes;
}

