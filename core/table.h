/* table.h - one shard's users: user_id -> row of decayed heads and history.
 *
 * A table is one shard (one input partition). Exactly one thread, the
 * shard's owner, calls anything here; nothing locks. Rows are carved from
 * large blocks and never move, so a row id stays valid until that user is
 * evicted. DESIGN.md sections 2 and 4. */
#ifndef HL_TABLE_H
#define HL_TABLE_H

#include "decay.h"

typedef struct hl_table hl_table;   /* opaque */

typedef struct hl_table_opts {
    hl_decay decay;          /* heads and dim (copied) */
    int      history;        /* events kept per user (state.history), 1..255 */
    size_t   max_users;      /* state.max.users: inserting a new user at this
                                count first evicts the clamp(max_users/64,
                                1, 64) least recently active users (smallest
                                active_seq); 0 means no limit */
    float    evict_mass;     /* state.evict.mass; 0 disables mass eviction */
    size_t   expected_users; /* sizing hint only; the table grows */
} hl_table_opts;

/* A history entry's item that no model row names but whose e_in (the live
 * catalogue's, hl_event.x) went into the heads: a migration leaves its
 * share in the mapped remainder (migrate.h), where a -1 entry added
 * nothing. */
#define HL_ITEM_ADDED (-2)

/* One decoded event, ready to apply. */
typedef struct hl_event {
    const char *user;        /* user_id bytes, not NUL-terminated */
    uint32_t    user_len;    /* 1..HL_MAX_ID_LEN */
    int32_t     item;        /* model row, -1 for an item outside the model, or
                                HL_ITEM_ADDED (with x) */
    uint64_t    item_key;    /* hl_item_key of its id; 0: unknown */
    uint8_t     type;        /* HL_VIEW.. */
    float       w;           /* type weight x the event's weight field */
    int64_t     ts_ms;       /* event time */
    int64_t     offset;      /* input position: the idempotence key */
    const float *x;          /* the item's e_in when the model has none: an
                                item the live catalogue added (dim floats,
                                borrowed for the apply); NULL: e_in[item] */
} hl_event;

/* A borrowed look at one row; valid until the next call that may evict
 * (hl_table_apply, hl_table_sweep, hl_table_restore). */
typedef struct hl_row_view {
    const char    *user;
    uint32_t       user_len;
    const float   *s;            /* (n_heads, dim) decayed sums at t_ref_ms */
    const float   *m;            /* (n_heads) decayed masses at t_ref_ms */
    int64_t        t_ref_ms;     /* newest event time applied */
    int64_t        last_offset;  /* offset of the last applied event */
    uint64_t       active_seq;   /* shard-wide apply counter at last touch (LRU) */
    int            history;      /* ring length */
    int            n_hist;       /* entries in use, <= history */
    int            hist_head;    /* ring index of the oldest entry */
    const int32_t *hist_item;    /* ring storage, history entries each */
    const uint8_t *hist_type;
    const int64_t *hist_ts_ms;
    const uint64_t *hist_key;    /* hl_item_key per entry, 0 unknown; NULL in a
                                    view given to restore: all unknown */
    const float   *hist_w;       /* the weight each was applied with, NAN
                                    unknown; NULL in a restore: all unknown */
} hl_row_view;

/* The i-th history entry, 0 = oldest, i < v->n_hist. */
static inline int hl_row_hist_index(const hl_row_view *v, int i)
{
    return (v->hist_head + i) % v->history;
}

/* The first history entry (0 = oldest) whose item counts as seen when the
 * lists leave out only the user's last `window` events
 * (recs.exclude.seen.events; 0 = the whole ring). Entries from here to
 * n_hist - 1 are seen. Why a window apart from the ring: a longer ring
 * keeps more of each head exact across a model swap (core/migrate.c),
 * while leaving out that many items would cost lists most of their hits
 * on data where users come back to items (README, "Daily retrain"). The
 * ranker, the worker's added-item exclusions and halflife eval all take
 * the seen entries from here, so they agree. */
static inline int hl_row_seen_from(const hl_row_view *v, int window)
{
    return window > 0 && window < v->n_hist ? v->n_hist - window : 0;
}

typedef struct hl_table_stats {
    size_t   users;               /* live rows */
    size_t   bytes;               /* memory held: rows, index, keys */
    size_t   payload_bytes;       /* what the live rows' fields need */
    uint64_t applied;             /* events that changed state */
    uint64_t duplicates;          /* skipped: offset <= the row's last */
    uint64_t inserted;            /* users created */
    uint64_t evicted_mass;        /* dropped by state.evict.mass */
    uint64_t evicted_capacity;    /* dropped by state.max.users */
    uint64_t non_finite;          /* refused: would take a mass past
                                     HL_TABLE_MAX_MASS (see hl_table_apply) */
    int64_t  newest_ts_ms;        /* newest event time this shard has seen */
} hl_table_stats;

/* Returns NULL and writes a reason into errbuf on bad options or no memory. */
hl_table *hl_table_create(const hl_table_opts *o, char *errbuf, size_t errlen);
void      hl_table_destroy(hl_table *tbl);       /* NULL is a no-op */
const hl_table_opts *hl_table_opts_get(const hl_table *tbl);

/* Applies ev[0..n) in order. e_in is the model's input embeddings
 * (n_items, dim) row-major; an event adds ev.x when it is set, else
 * e_in[item]; events whose item is -1 or >= n_items without an x add
 * nothing to the heads but are still recorded in the history. An event whose
 * offset is not above its user's last_offset changes nothing (idempotence).
 * An event that could take one of its user's masses past HL_TABLE_MAX_MASS
 * (|m| + |w| (1 + 2^-12) above it, or w or m not finite) changes nothing
 * either and is counted in stats.non_finite: so every mass stays finite,
 * and every head vector too while the model's embeddings are below 1e8 in
 * magnitude (|s_h[j]| <= m_h max|x[j]| for weights >= 0).
 * status[i], if status is not NULL: 1 applied, 2 applied to a user this
 * event inserted (its first in the table: what the worker checks for a
 * user in two partitions), 0 duplicate, or a negative
 * HL_E* (HL_ENOMEM when the table cannot grow, HL_EINVAL for a user_len
 * outside 1..HL_MAX_ID_LEN, HL_ERANGE for the guard). Every applied user is
 * marked dirty. Returns the number of events applied. */
#define HL_TABLE_MAX_MASS 1e30f
int hl_table_apply(hl_table *tbl, const hl_event *ev, int n,
                   const float *e_in, int32_t n_items, int8_t *status);

/* hl_table_apply, also giving the row each event was applied to in
 * rows[i] (n of them), or HL_TABLE_NO_ROW when it was not applied, or for
 * every event when the call evicted a user for room (state.max.users: a
 * row may then hold another user than an earlier event's; look the user
 * up). Valid until the next call that may evict. Saves fold-in a lookup
 * per unknown-item event. */
#define HL_TABLE_NO_ROW UINT32_MAX
int hl_table_apply_rows(hl_table *tbl, const hl_event *ev, int n, const float *e_in,
                        int32_t n_items, int8_t *status, uint32_t *rows);

/* Moves up to max ids of rows marked dirty since the last call into rows
 * (each once, evicted rows left out) and clears their mark; returns the
 * count. Call again while it returns max. */
int hl_table_take_dirty(hl_table *tbl, uint32_t *rows, int max);

/* Row id of user, or -1. */
int64_t hl_table_find(const hl_table *tbl, const char *user, size_t user_len);

/* Fills v for a live row id. */
void hl_table_view(const hl_table *tbl, uint32_t row, hl_row_view *v);

/* ---- model generations (DESIGN.md section 10) --------------------------
 * Every row carries the parity of the model generation its heads are in.
 * hl_table_flip_generation() makes every live row stale at once (O(1));
 * rows inserted or restored afterwards are fresh. The caller migrates each
 * stale row (hl_table_edit, then hl_table_row_done) and must finish every
 * row before it flips again: a parity tells two generations apart, not
 * three. */
void hl_table_flip_generation(hl_table *tbl);
int  hl_table_row_stale(const hl_table *tbl, uint32_t row);  /* live row */
void hl_table_row_done(hl_table *tbl, uint32_t row);         /* now fresh */

/* Writable heads and ring items of a live row, for a migration: s is
 * (n_heads, dim), hist_item the ring's model rows (history entries); v
 * is the rest, read-only. Valid like a view. Masses, times and offsets
 * are not for editing. */
typedef struct hl_row_edit {
    hl_row_view v;
    float      *s;
    float      *m;           /* a rebuild from the ring sets masses too */
    int32_t    *hist_item;
} hl_row_edit;
void hl_table_edit(hl_table *tbl, uint32_t row, hl_row_edit *e);

/* The first live row id at or after row, UINT32_MAX when none (no wrap). */
uint32_t hl_table_next_live(const hl_table *tbl, uint32_t row);

/* Row ids are below this bound; hl_table_row_live() says which are in use.
 * Iteration in id order is how snapshots walk a table. */
uint32_t hl_table_row_limit(const hl_table *tbl);
int      hl_table_row_live(const hl_table *tbl, uint32_t row);

/* Examines up to max_rows live rows in row id order from a cursor that wraps
 * around and evicts those whose mass, decayed to newest_ts_ms, is below
 * evict_mass in every head (a user whose events all named unknown items has
 * mass 0 and goes too). Returns the number evicted. Bounded work, so call it
 * between batches. */
size_t hl_table_sweep(hl_table *tbl, size_t max_rows);

/* Creates a row holding exactly v's contents (snapshot load) at the lowest
 * free row id; v->s and v->m must hold n_heads x dim and n_heads floats.
 * Fails with HL_EINVAL if the user exists or v does not fit the table's
 * shape (history length, ring indices, user_len), HL_ENOMEM if the table
 * cannot grow. Rows restored in id order into a fresh table get ids
 * 0, 1, 2, ...: the original's ids when it had no holes. Row ids never
 * change what a table does apart from the order hl_table_sweep visits rows. */
int hl_table_restore(hl_table *tbl, const hl_row_view *v);

/* Like hl_table_restore, at a given row id (which must be free and below
 * HL_TABLE_MAX_ROWS). A table rebuilt from another's rows with their ids
 * and its meta behaves exactly like it, sweeps included. */
#define HL_TABLE_MAX_ROWS 0xFFFFFFF0u
int hl_table_restore_at(hl_table *tbl, uint32_t row, const hl_row_view *v);

/* A hint: starts loading the index slot of user, which a restore or find
 * soon after will probe (a load calls it one row ahead: the index is far
 * larger than the cache, so each row's probe is otherwise a miss). */
void hl_table_prefetch(const hl_table *tbl, const char *user, size_t user_len);

/* Sizes an empty table's index for users rows at once (capped at
 * max_users), so a load of that many does no incremental doubling. A
 * sizing hint like expected_users: 0, or HL_ENOMEM with the table as it
 * was. No-op on a table that holds users. */
int hl_table_reserve(hl_table *tbl, size_t users);

/* After a load that reserved: gives back the index a reserve sized
 * beyond the users that came (hl_index_fit). 0, or HL_ENOMEM with the
 * table as it was. */
int hl_table_fit(hl_table *tbl);

/* After a restore: evicts the least recently active users beyond
 * max_users (a file written under a larger limit), counted as capacity
 * evictions; *evicted (may be NULL) says how many. The eviction hook is
 * called for each. 0, or HL_ENOMEM for the sort's scratch. */
int hl_table_trim(hl_table *tbl, size_t *evicted);

/* A span of a table's row memory (hl_table_map_rows). */
typedef struct hl_table_span {
    void    *addr;
    size_t   bytes;
    uint32_t first_row, n_rows;   /* the row ids it holds */
} hl_table_span;

/* Maps the row blocks that ids [0, n_rows) need (capped at twice
 * max_users, as far as a table with evictions hands out ids, and at
 * HL_TABLE_MAX_ROWS) now rather than on first use, and writes up to
 * max_spans of their memory ranges into spans; returns how many. Nothing
 * is touched: the caller may fault the ranges in from another thread
 * (madvise MADV_POPULATE_WRITE) while this one fills rows, so the kernel's
 * zeroing of new pages, the larger part of building a table on these VMs,
 * overlaps the filling. The spans stay valid until hl_table_destroy. A
 * negative HL_E* when a block cannot be mapped. Owner thread. */
int hl_table_map_rows(hl_table *tbl, size_t n_rows, hl_table_span *spans, int max_spans);

/* Called with the user id of every row evicted from now on (by
 * state.max.users inside hl_table_apply, or by hl_table_sweep), before the
 * row is gone: the Kafka changelog turns each into a tombstone. user is
 * valid during the call only; fn must not call into the table. NULL fn
 * removes the hook. */
typedef void (*hl_table_evict_fn)(void *arg, const char *user, uint32_t user_len);
void hl_table_on_evict(hl_table *tbl, hl_table_evict_fn fn, void *arg);
/* The hook set on tbl (NULL: none), and its arg in *arg: what a table
 * replacing tbl must report to as well (a live reshape, worker/swap.c). */
hl_table_evict_fn hl_table_evict_hook(const hl_table *tbl, void **arg);

/* Drops the user's row (a changelog tombstone or a newer copy of the row
 * being restored); not counted as an eviction and not reported to the
 * hook. HL_ENOENT if the user has no row. */
int hl_table_remove(hl_table *tbl, const char *user, size_t user_len);

/* Forgets every row's last applied offset, so the next event of each
 * user applies whatever its offset: the input topic was deleted and
 * created again (its offsets start again at 0) and the users' state is
 * kept while the new topic is read from its start. Without it, every
 * user's events would be dropped as duplicates until the new topic's
 * offsets passed the old ones. Owner thread; O(rows). */
void hl_table_forget_offsets(hl_table *tbl);

/* Shard-wide values a snapshot must carry to make a restored table behave
 * exactly like the original. */
typedef struct hl_table_meta {
    int64_t  newest_ts_ms;
    uint64_t active_seq;
    uint32_t sweep_cursor;   /* next row id hl_table_sweep examines; a value
                                at or beyond the row limit means 0 */
} hl_table_meta;
void hl_table_meta_get(const hl_table *tbl, hl_table_meta *meta);
void hl_table_meta_set(hl_table *tbl, const hl_table_meta *meta);

void hl_table_stats_get(const hl_table *tbl, hl_table_stats *st);

#endif
