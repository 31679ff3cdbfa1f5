/* shard.c - a partition's table plus the batch of events waiting for it,
 * and the refresh schedule of recs.min.interval.ms.
 *
 * The batch arrays are sized once at create time (the thread's
 * batch.max.messages), so filling and applying a batch never allocates
 * (STYLE.md section 9). The table itself may grow as users arrive, and so
 * may the schedule's arrays (amortised doubling, like the table's).
 *
 * The schedule keeps, beside the table and keyed by row id, each row's last
 * refresh time, so hl_row stays as it is. Pending rows sit in two lazily
 * cleaned queues: a min-heap by due time (which to refresh when the shard's
 * newest event time moves) and a FIFO by the offset at which they became
 * pending (which bounds the publishable offset). An entry is live while its
 * row's mark is pending with the same pend_off; anything else (refreshed
 * since, row evicted, id reused by another user) makes it stale, and stale
 * entries are dropped when they reach the front. Row ids are reused after
 * an eviction, so a mark also holds a hash of its user id: a row whose user
 * hashes differently is a new user and starts unmarked. */
#include "shard.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MARK_NONE, MARK_REFRESHED, MARK_PENDING };

struct hl_shard_mark {
    int64_t  last_ms;        /* t_ref_ms of the last list produced */
    int64_t  pend_off;       /* MARK_PENDING: first offset of that batch */
    uint32_t tag;            /* hash of the user id */
    uint8_t  state;
};

struct hl_shard_due {
    int64_t  key;            /* heap: due time; fifo: pend_off */
    int64_t  pend_off;
    uint32_t row;
};

static void register_series(hl_shard *sh, hl_metrics *reg)
{
    char labels[48];
    snprintf(labels, sizeof labels, "partition=\"%d\"", (int)sh->partition);
    sh->series.consumed = hl_metrics_counter(reg, "halflife_events_consumed_total",
        "Input records consumed (valid or not), by partition.", labels);
    sh->series.users = hl_metrics_gauge(reg, "halflife_users",
        "Users held in the shard's state.", labels);
    sh->series.state_bytes = hl_metrics_gauge(reg, "halflife_state_bytes",
        "Memory held by the shard's state.", labels);
}

hl_shard *hl_shard_create(int32_t partition, hl_table *tbl, int64_t restored_offset,
                          hl_persist_shard *ps, int cap_ev, hl_metrics *reg,
                          char *errbuf, size_t errlen)
{
    hl_shard *sh = calloc(1, sizeof *sh);
    if (sh == NULL) {
        hl_table_destroy(tbl);
        hl_persist_shard_destroy(ps);
        goto nomem;
    }
    sh->partition = partition;
    sh->tbl = tbl;
    sh->ps = ps;
    sh->next_offset = sh->delivered_offset = sh->noted_offset = restored_offset;
    sh->cap_ev = cap_ev;
    sh->ev = malloc(sizeof *sh->ev * (size_t)cap_ev);
    sh->status = malloc((size_t)cap_ev);
    if (sh->ev == NULL || sh->status == NULL)
        goto nomem;
    if (tbl == NULL)
        goto nomem;
    if (reg != NULL)
        register_series(sh, reg);
    hl_shard_batch_begin(sh);
    return sh;
nomem:
    hl_err(errbuf, errlen, HL_ENOMEM, "shard %d: out of memory", (int)partition);
    hl_shard_destroy(sh);
    return NULL;
}

void hl_shard_destroy(hl_shard *sh)
{
    if (sh == NULL)
        return;
    hl_persist_shard_destroy(sh->ps);
    hl_table_destroy(sh->tbl);
    free(sh->ev);
    free(sh->status);
    free(sh->mark);
    free(sh->heap);
    free(sh->fifo);
    free(sh);
}

void hl_shard_batch_begin(hl_shard *sh)
{
    sh->n_ev = 0;
    sh->n_seen = 0;
    sh->batch_next_offset = -1;
    sh->batch_newest_off = -1;
}

int hl_shard_apply(hl_shard *sh, const hl_model *m, int *n_dup, int *n_failed)
{
    *n_dup = *n_failed = 0;
    if (sh->n_ev == 0)
        return 0;
    const hl_model_info *mi = hl_model_info_get(m);
    int n = hl_table_apply(sh->tbl, sh->ev, sh->n_ev, hl_model_e_in(m),
                           mi->n_items, sh->status);
    uint64_t dup = 0, failed = 0;
    for (int i = 0; i < sh->n_ev; i++) {
        dup += sh->status[i] == 0;
        failed += sh->status[i] < 0;
    }
    atomic_fetch_add_explicit(&sh->applied, (uint64_t)n, memory_order_relaxed);
    atomic_fetch_add_explicit(&sh->duplicates, dup, memory_order_relaxed);
    atomic_fetch_add_explicit(&sh->failed, failed, memory_order_relaxed);
    *n_dup = (int)dup;
    *n_failed = (int)failed;
    return n;
}

void hl_shard_publish_stats(hl_shard *sh, hl_counter *const evictions[2])
{
    hl_table_stats st;
    hl_table_stats_get(sh->tbl, &st);
    if (sh->series.users) {
        hl_gauge_set(sh->series.users, (double)st.users);
        hl_gauge_set(sh->series.state_bytes, (double)st.bytes);
    }
    if (evictions != NULL) {
        hl_counter_add(evictions[0], st.evicted_mass - sh->evicted_mass_seen);
        hl_counter_add(evictions[1], st.evicted_capacity - sh->evicted_capacity_seen);
    }
    sh->evicted_mass_seen = st.evicted_mass;
    sh->evicted_capacity_seen = st.evicted_capacity;
}

/* ---- recs.min.interval.ms ---------------------------------------------- */

void hl_shard_set_min_interval(hl_shard *sh, int64_t interval_ms)
{
    sh->min_interval_ms = interval_ms > 0 ? interval_ms : 0;
}

static uint32_t user_tag(const char *user, uint32_t len)
{
    uint32_t h = 2166136261u;                       /* FNV-1a */
    for (uint32_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)user[i]) * 16777619u;
    return h;
}

/* The mark of row, the array grown to reach it; NULL when out of memory. */
static struct hl_shard_mark *mark_of(hl_shard *sh, uint32_t row)
{
    if (row >= sh->cap_mark) {
        uint32_t cap = sh->cap_mark ? sh->cap_mark : 1024;
        while (cap <= row)
            cap = cap > UINT32_MAX / 2 ? UINT32_MAX : cap * 2;
        struct hl_shard_mark *mk = realloc(sh->mark, sizeof *mk * (size_t)cap);
        if (mk == NULL)
            return NULL;
        memset(mk + sh->cap_mark, 0, sizeof *mk * (size_t)(cap - sh->cap_mark));
        sh->mark = mk;
        sh->cap_mark = cap;
    }
    return &sh->mark[row];
}

static int entry_live(const hl_shard *sh, const struct hl_shard_due *e)
{
    const struct hl_shard_mark *mk = &sh->mark[e->row];
    return mk->state == MARK_PENDING && mk->pend_off == e->pend_off;
}

static int grow(struct hl_shard_due **a, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap * 2 : 1024;
    struct hl_shard_due *p = realloc(*a, sizeof *p * n);
    if (p == NULL)
        return HL_ENOMEM;
    *a = p;
    *cap = n;
    return 0;
}

static void heap_push(hl_shard *sh, struct hl_shard_due e)
{
    size_t i = sh->n_heap++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (sh->heap[up].key <= e.key)
            break;
        sh->heap[i] = sh->heap[up];
        i = up;
    }
    sh->heap[i] = e;
}

static void heap_pop(hl_shard *sh)
{
    struct hl_shard_due last = sh->heap[--sh->n_heap];
    size_t i = 0, n = sh->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && sh->heap[c + 1].key < sh->heap[c].key)
            c++;
        if (last.key <= sh->heap[c].key)
            break;
        sh->heap[i] = sh->heap[c];
        i = c;
    }
    if (n > 0)
        sh->heap[i] = last;
}

/* The FIFO is a ring; entries arrive in offset order. Growing copies the
 * entries in order into a larger ring that starts at 0. */
static int fifo_push(hl_shard *sh, struct hl_shard_due e)
{
    if (sh->fifo_n == sh->cap_fifo) {
        size_t cap = sh->cap_fifo ? sh->cap_fifo * 2 : 1024;
        struct hl_shard_due *p = malloc(sizeof *p * cap);
        if (p == NULL)
            return HL_ENOMEM;
        for (size_t i = 0; i < sh->fifo_n; i++)
            p[i] = sh->fifo[(sh->fifo_head + i) % sh->cap_fifo];
        free(sh->fifo);
        sh->fifo = p;
        sh->cap_fifo = cap;
        sh->fifo_head = 0;
    }
    sh->fifo[(sh->fifo_head + sh->fifo_n++) % sh->cap_fifo] = e;
    return 0;
}

int hl_shard_gate(hl_shard *sh, uint32_t row, const hl_row_view *v, int64_t newest_ms)
{
    if (sh->min_interval_ms == 0)
        return 1;
    struct hl_shard_mark *mk = mark_of(sh, row);
    if (mk == NULL)
        return 1;
    uint32_t tag = user_tag(v->user, v->user_len);
    if (mk->state == MARK_NONE || mk->tag != tag)
        return 1;                       /* never refreshed here: a new user */
    if (mk->state == MARK_PENDING)
        return 0;                       /* its heap entry decides */
    int64_t due = mk->last_ms > INT64_MAX - sh->min_interval_ms
        ? INT64_MAX : mk->last_ms + sh->min_interval_ms;
    if (newest_ms >= due)
        return 1;
    if (grow(&sh->heap, &sh->cap_heap, sh->n_heap + 1) != 0)
        return 1;
    struct hl_shard_due e = {.key = due, .pend_off = sh->batch_first_off, .row = row};
    struct hl_shard_due q = {.key = sh->batch_first_off, .pend_off = sh->batch_first_off,
                             .row = row};
    if (fifo_push(sh, q) != 0)
        return 1;
    heap_push(sh, e);
    mk->state = MARK_PENDING;
    mk->pend_off = sh->batch_first_off;
    return 0;
}

int hl_shard_take_due(hl_shard *sh, uint32_t *rows, int max, int64_t newest_ms)
{
    int n = 0;
    while (n < max && sh->n_heap > 0 && sh->heap[0].key <= newest_ms) {
        struct hl_shard_due e = sh->heap[0];
        heap_pop(sh);
        if (!entry_live(sh, &e))
            continue;
        sh->mark[e.row].state = MARK_REFRESHED;   /* leaves both queues */
        if (!hl_table_row_live(sh->tbl, e.row))
            continue;                   /* evicted: its state is gone */
        hl_row_view v;
        hl_table_view(sh->tbl, e.row, &v);
        if (user_tag(v.user, v.user_len) != sh->mark[e.row].tag)
            continue;                   /* reused by another user meanwhile */
        rows[n++] = e.row;
    }
    return n;
}

void hl_shard_refreshed(hl_shard *sh, uint32_t row, const hl_row_view *v)
{
    if (sh->min_interval_ms == 0)
        return;
    struct hl_shard_mark *mk = mark_of(sh, row);
    if (mk == NULL)
        return;                         /* unmarked: refreshed again next time */
    mk->state = MARK_REFRESHED;
    mk->last_ms = v->t_ref_ms;
    mk->tag = user_tag(v->user, v->user_len);
}

int64_t hl_shard_publishable_offset(hl_shard *sh)
{
    while (sh->fifo_n > 0 && !entry_live(sh, &sh->fifo[sh->fifo_head])) {
        sh->fifo_head = (sh->fifo_head + 1) % sh->cap_fifo;
        sh->fifo_n--;
    }
    if (sh->fifo_n > 0 && sh->fifo[sh->fifo_head].key < sh->next_offset)
        return sh->fifo[sh->fifo_head].key;
    return sh->next_offset;
}
