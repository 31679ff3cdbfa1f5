/* gate.c - the recs.min.interval.ms schedule of gate.h.
 *
 * Kept beside the table and keyed by row id, so hl_row stays as it is: per
 * row the event time of its last refresh, whether it waits, and a hash of
 * its user id. Waiting rows sit in two lazily cleaned queues: a min-heap by
 * due time (which to refresh when the shard's newest event time moves) and
 * a FIFO by the offset at which they began to wait (which bounds the
 * publishable offset). An entry is live while its row's mark waits with the
 * same pend_off; anything else (refreshed since, row evicted, id reused by
 * another user) makes it stale, and stale entries are dropped when they
 * reach the front. The table reuses a row id after an eviction without
 * telling anyone, so a mark also holds a hash of its user id: a row whose
 * user hashes differently is a new user and starts unmarked. */
#include "gate.h"
#include "fnv.h"
#include "hl.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

enum { MARK_NONE, MARK_REFRESHED, MARK_PENDING };

struct mark {
    int64_t  last_ms;        /* t_ref_ms of the last list produced */
    int64_t  pend_off;       /* MARK_PENDING: first offset of that batch */
    uint32_t tag;            /* hash of the user id */
    uint8_t  state;
};

struct due {
    int64_t  key;            /* heap: due time; fifo: pend_off */
    int64_t  pend_off;
    int64_t  since_ms;       /* fifo: monotonic clock when the wait began */
    uint32_t row;
};

struct hl_gate {
    int64_t      interval_ms;
    /* users carried in by hl_gate_carry and not taken yet: their heap
     * entries (key CARRIED, due at once) have no FIFO entry, since their
     * offsets are older than the FIFO's; the oldest bounds the offset */
    size_t       carry_n;
    int64_t      carry_min;
    struct mark *mark;      uint32_t cap_mark;
    struct due  *heap;      size_t n_heap, cap_heap;             /* by due time */
    struct due  *fifo;      size_t fifo_head, fifo_n, cap_fifo;  /* by offset */
};

#define CARRIED INT64_MIN       /* the heap key of a carried user: due at once */

hl_gate *hl_gate_create(int64_t interval_ms)
{
    hl_gate *g = calloc(1, sizeof *g);
    if (g != NULL) {
        g->interval_ms = interval_ms;
        g->carry_min = INT64_MAX;
    }
    return g;
}

int64_t hl_gate_interval(const hl_gate *g)
{
    return g != NULL ? g->interval_ms : 0;
}

void hl_gate_destroy(hl_gate *g)
{
    if (g == NULL)
        return;
    free(g->mark);
    free(g->heap);
    free(g->fifo);
    free(g);
}

static uint32_t user_tag(const char *user, uint32_t len)
{
    return hl_fnv1a32(user, len);
}

/* The mark of row, the array grown to reach it; NULL when out of memory. */
static struct mark *mark_of(hl_gate *g, uint32_t row)
{
    if (row >= g->cap_mark) {
        uint32_t cap = g->cap_mark ? g->cap_mark : 1024;
        while (cap <= row)
            cap = cap > UINT32_MAX / 2 ? UINT32_MAX : cap * 2;
        struct mark *mk = realloc(g->mark, sizeof *mk * (size_t)cap);
        if (mk == NULL)
            return NULL;
        memset(mk + g->cap_mark, 0, sizeof *mk * (size_t)(cap - g->cap_mark));
        g->mark = mk;
        g->cap_mark = cap;
    }
    return &g->mark[row];
}

static int entry_live(const hl_gate *g, const struct due *e)
{
    const struct mark *mk = &g->mark[e->row];
    return mk->state == MARK_PENDING && mk->pend_off == e->pend_off;
}

static int grow(struct due **a, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap * 2 : 1024;
    struct due *p = realloc(*a, sizeof *p * n);
    if (p == NULL)
        return HL_ENOMEM;
    *a = p;
    *cap = n;
    return 0;
}

static void heap_push(hl_gate *g, struct due e)
{
    size_t i = g->n_heap++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (g->heap[up].key <= e.key)
            break;
        g->heap[i] = g->heap[up];
        i = up;
    }
    g->heap[i] = e;
}

static void heap_pop(hl_gate *g)
{
    struct due last = g->heap[--g->n_heap];
    size_t i = 0, n = g->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && g->heap[c + 1].key < g->heap[c].key)
            c++;
        if (last.key <= g->heap[c].key)
            break;
        g->heap[i] = g->heap[c];
        i = c;
    }
    if (n > 0)
        g->heap[i] = last;
}

/* The FIFO is a ring; entries arrive in offset order. Growing copies the
 * entries in order into a larger ring that starts at 0. */
static int fifo_push(hl_gate *g, struct due e)
{
    if (g->fifo_n == g->cap_fifo) {
        size_t cap = g->cap_fifo ? g->cap_fifo * 2 : 1024;
        struct due *p = malloc(sizeof *p * cap);
        if (p == NULL)
            return HL_ENOMEM;
        for (size_t i = 0; i < g->fifo_n; i++)
            p[i] = g->fifo[(g->fifo_head + i) % g->cap_fifo];
        free(g->fifo);
        g->fifo = p;
        g->cap_fifo = cap;
        g->fifo_head = 0;
    }
    g->fifo[(g->fifo_head + g->fifo_n++) % g->cap_fifo] = e;
    return 0;
}

static void fifo_pop(hl_gate *g)
{
    g->fifo_head = (g->fifo_head + 1) % g->cap_fifo;
    g->fifo_n--;
}

int hl_gate_pass(hl_gate *g, uint32_t row, const hl_row_view *v, int64_t newest_ms,
                 int64_t batch_first_off)
{
    if (g == NULL)
        return 1;
    struct mark *mk = mark_of(g, row);
    if (mk == NULL)
        return 1;
    uint32_t tag = user_tag(v->user, v->user_len);
    if (mk->state == MARK_NONE || mk->tag != tag)
        return 1;                       /* never refreshed here: a new user */
    if (mk->state == MARK_PENDING)
        return 0;                       /* its heap entry decides */
    int64_t due = mk->last_ms > INT64_MAX - g->interval_ms
        ? INT64_MAX : mk->last_ms + g->interval_ms;
    if (newest_ms >= due)
        return 1;
    if (grow(&g->heap, &g->cap_heap, g->n_heap + 1) != 0)
        return 1;
    struct due e = {.key = due, .pend_off = batch_first_off, .row = row};
    struct due q = {.key = batch_first_off, .pend_off = batch_first_off,
                    .since_ms = hl_now_mono_ms(), .row = row};
    if (fifo_push(g, q) != 0)
        return 1;
    heap_push(g, e);
    mk->state = MARK_PENDING;
    mk->pend_off = batch_first_off;
    return 0;
}

/* Takes the live entry e (it leaves both queues): 1 when its row still
 * holds its user. */
static int take_entry(hl_gate *g, const hl_table *tbl, const struct due *e)
{
    g->mark[e->row].state = MARK_REFRESHED;
    if (!hl_table_row_live(tbl, e->row))
        return 0;                       /* evicted: its state is gone */
    hl_row_view v;
    hl_table_view(tbl, e->row, &v);
    return user_tag(v.user, v.user_len) == g->mark[e->row].tag;   /* else reused */
}

int hl_gate_take_due(hl_gate *g, const hl_table *tbl, uint32_t *rows, int max,
                     int64_t newest_ms)
{
    int n = 0;
    while (g != NULL && n < max && g->n_heap > 0 && g->heap[0].key <= newest_ms) {
        struct due e = g->heap[0];
        heap_pop(g);
        if (e.key == CARRIED && --g->carry_n == 0)
            g->carry_min = INT64_MAX;   /* every carried user's list is taken */
        if (entry_live(g, &e) && take_entry(g, tbl, &e))
            rows[n++] = e.row;
    }
    /* A wait also ends after interval_ms of the worker's own clock: the
     * shard's newest event time may not reach a user's due time for as
     * long as the stream runs (one event of the user stamped ahead, by a
     * client's clock, raises both), and the publishable offset, so every
     * stored offset and snapshot of the partition, would stay where that
     * wait began. The FIFO is in the order the waits began. Its heap entry
     * goes stale and is dropped when it reaches the top. */
    int64_t now = g != NULL && g->fifo_n > 0 ? hl_now_mono_ms() : 0;
    while (g != NULL && n < max && g->fifo_n > 0) {
        struct due e = g->fifo[g->fifo_head];
        if (entry_live(g, &e)) {
            if (e.since_ms > now - g->interval_ms)
                break;
            if (take_entry(g, tbl, &e))
                rows[n++] = e.row;
        }
        fifo_pop(g);
    }
    return n;
}

int hl_gate_carry(const hl_gate *from, uint32_t old_row, hl_gate *to, uint32_t row,
                  const hl_row_view *v)
{
    if (from == NULL || to == NULL || old_row >= from->cap_mark)
        return 0;
    const struct mark *om = &from->mark[old_row];
    uint32_t tag = user_tag(v->user, v->user_len);
    if (om->state == MARK_NONE || om->tag != tag)
        return 0;                       /* never refreshed there */
    struct mark *nm = mark_of(to, row);
    if (nm == NULL)
        return HL_ENOMEM;
    *nm = (struct mark){.last_ms = om->last_ms, .tag = tag, .state = MARK_REFRESHED};
    if (om->state != MARK_PENDING)
        return 0;
    if (grow(&to->heap, &to->cap_heap, to->n_heap + 1) != 0)
        return HL_ENOMEM;
    heap_push(to, (struct due){.key = CARRIED, .pend_off = om->pend_off, .row = row});
    nm->state = MARK_PENDING;
    nm->pend_off = om->pend_off;
    to->carry_n++;
    if (om->pend_off < to->carry_min)
        to->carry_min = om->pend_off;
    return 0;
}

/* Drops the FIFO's stale entries at its head. */
static void fifo_clean(hl_gate *g)
{
    while (g->fifo_n > 0 && !entry_live(g, &g->fifo[g->fifo_head]))
        fifo_pop(g);
}

int hl_gate_overdue(hl_gate *g)
{
    if (g == NULL)
        return 0;
    fifo_clean(g);
    return g->fifo_n > 0 &&
           g->fifo[g->fifo_head].since_ms <= hl_now_mono_ms() - g->interval_ms;
}

void hl_gate_refreshed(hl_gate *g, uint32_t row, const hl_row_view *v)
{
    struct mark *mk;
    if (g == NULL || (mk = mark_of(g, row)) == NULL)
        return;                         /* unmarked: refreshed again next time */
    mk->state = MARK_REFRESHED;
    mk->last_ms = v->t_ref_ms;
    mk->tag = user_tag(v->user, v->user_len);
}

size_t hl_gate_waiting(const hl_gate *g)
{
    return g != NULL ? g->n_heap : 0;
}

int64_t hl_gate_publishable_offset(hl_gate *g, int64_t next_offset)
{
    if (g == NULL)
        return next_offset;
    fifo_clean(g);
    if (g->carry_min < next_offset)
        next_offset = g->carry_min;
    if (g->fifo_n > 0 && g->fifo[g->fifo_head].key < next_offset)
        return g->fifo[g->fifo_head].key;
    return next_offset;
}
