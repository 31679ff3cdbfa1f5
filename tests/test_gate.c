/* test_gate.c - recs.min.interval.ms (worker/gate.c) driven the way
 * publish.c drives it (publish_gated): a batch applies its events, every
 * dirty row asks the gate, the rows it lets through and the waiting rows
 * whose time has come get a list (hl_gate_refreshed), and the shard's
 * publishable offset is read after the batch. */
#define T_SUITE "test_gate"
#include "table_test_util.h"
#include "gate.h"

#include <string.h>
#include <time.h>

typedef struct fx {
    hl_table *tbl;
    hl_gate  *g;
    int       lists[64];      /* per user number */
} fx;

static void fx_open(fx *f, int64_t interval_ms)
{
    char err[256];
    memset(f, 0, sizeof *f);
    fill_items();
    hl_table_opts o = small_opts(1000, 0.0f);
    f->tbl = hl_table_create(&o, err, sizeof err);
    f->g = hl_gate_create(interval_ms);
    CHECK(f->tbl != NULL && f->g != NULL);
}

static void fx_close(fx *f)
{
    hl_gate_destroy(f->g);
    hl_table_destroy(f->tbl);
}

static int user_no(const hl_row_view *v)
{
    int u = -1;
    sscanf(v->user, "u%d", &u);
    return u;
}

static void publish(fx *f, uint32_t row)
{
    hl_row_view v;
    hl_table_view(f->tbl, row, &v);
    int u = user_no(&v);
    if (u >= 0 && u < 64)
        f->lists[u]++;
    hl_gate_refreshed(f->g, row, &v);
}

/* One batch of one event per entry (user u[i] at time ts[i]), offsets from
 * first_off on; returns the publishable offset after it. */
static int64_t batch(fx *f, const int *u, const int64_t *ts, int n, int64_t first_off)
{
    char name[64][16];
    hl_event ev[64];
    for (int i = 0; i < n; i++) {
        snprintf(name[i], sizeof name[i], "u%d", u[i]);
        ev[i] = (hl_event){.user = name[i], .user_len = (uint32_t)strlen(name[i]),
                           .item = i % N_ITEMS, .w = 1.0f, .ts_ms = ts[i],
                           .offset = first_off + i};
    }
    CHECK(hl_table_apply(f->tbl, ev, n, e_in, N_ITEMS, NULL) == n);
    hl_table_stats st;
    hl_table_stats_get(f->tbl, &st);
    uint32_t rows[64];
    int m = hl_table_take_dirty(f->tbl, rows, 64);
    for (int i = 0; i < m; i++) {
        hl_row_view v;
        hl_table_view(f->tbl, rows[i], &v);
        if (hl_gate_pass(f->g, rows[i], &v, st.newest_ts_ms, first_off))
            publish(f, rows[i]);
    }
    while ((m = hl_gate_take_due(f->g, f->tbl, rows, 64, st.newest_ts_ms)) > 0)
        for (int i = 0; i < m; i++)
            publish(f, rows[i]);
    return hl_gate_publishable_offset(f->g, first_off + n);
}

#define NOW_MS   1700000000000LL
#define DAY_MS   86400000LL

/* One event of user 0 stamped a day ahead (a client clock off by a day,
 * well inside event.max.ts.ms) and then its events at the right time: the
 * shard's newest event time stays at the skewed stamp, so by event time
 * alone user 0's next list is due only a day later. The other users'
 * events go on for hours of event time (each gets its lists: the skew
 * raised the shard's clock past their due times). Before the fix user 0
 * never got its list and the publishable offset, and with it every stored
 * offset and snapshot of the partition, stayed where user 0's wait began
 * (1 after 10982 records). Now a wait also ends after the interval of the
 * worker's own clock. */
static void test_future_stamp_freezes_offset(void)
{
    fx f;
    fx_open(&f, 20);            /* recs.min.interval.ms = 20 */
    int u = 0;
    int64_t ts = NOW_MS + DAY_MS;
    CHECK(batch(&f, &u, &ts, 1, 0) == 1);       /* new user: out at once */
    CHECK(f.lists[0] == 1);
    ts = NOW_MS;
    int64_t off = batch(&f, &u, &ts, 1, 1);     /* user 0 at the right time: waits */
    CHECK(off == 1);
    /* three hours of event time of other users, one event per second */
    int64_t next = 2;
    for (int s = 1; s <= 3 * 3600; s++) {
        int us = 1 + s % 40;
        int64_t tss = NOW_MS + s * 1000LL;
        if (s == 3 * 3600) {
            struct timespec nap = {0, 40 * 1000000L};   /* 2 intervals of the clock */
            nanosleep(&nap, NULL);
        }
        off = batch(&f, &us, &tss, 1, next);
        next += 1;
    }
    CHECKF(f.lists[0] == 2, "user 0 got %d lists, want 2 (its held one out)", f.lists[0]);
    CHECKF(off == next, "publishable offset %lld after %lld records", (long long)off,
           (long long)next);
    fx_close(&f);
}

/* The event-time rule still holds while the stream's event time runs
 * ahead of the clock (a replay): one list per interval of event time. */
static void test_event_time_rule_kept(void)
{
    fx f;
    fx_open(&f, 60000);
    int64_t next = 0, off = 0;
    for (int s = 0; s < 600; s++) {             /* 10 minutes, one event per second */
        int u = 0;
        int64_t ts = NOW_MS + s * 1000LL;
        off = batch(&f, &u, &ts, 1, next);
        next++;
    }
    CHECKF(f.lists[0] == 10, "%d lists in 10 min with a 1 min interval", f.lists[0]);
    CHECK(off < next);                          /* the last events wait */
    fx_close(&f);
}

/* A thread whose partitions go quiet: no batch comes to take a held list,
 * so between batches the loop asks hl_gate_overdue and takes the lists
 * whose wait ran the interval on the clock (hl_publish_overdue). */
static void test_overdue_when_idle(void)
{
    fx f;
    fx_open(&f, 20);
    int u = 0;
    int64_t ts = NOW_MS;
    CHECK(batch(&f, &u, &ts, 1, 0) == 1);
    ts = NOW_MS + 5;
    CHECK(batch(&f, &u, &ts, 1, 1) == 1);       /* within the interval: waits */
    CHECK(hl_gate_overdue(f.g) == 0);
    struct timespec nap = {0, 40 * 1000000L};
    nanosleep(&nap, NULL);
    CHECK(hl_gate_overdue(f.g) == 1);
    uint32_t rows[4];
    CHECK(hl_gate_take_due(f.g, f.tbl, rows, 4, NOW_MS + 5) == 1);
    publish(&f, rows[0]);
    CHECK(hl_gate_overdue(f.g) == 0);
    CHECK(hl_gate_publishable_offset(f.g, 2) == 2);
    fx_close(&f);
}

int main(void)
{
    RUN(test_future_stamp_freezes_offset);
    RUN(test_event_time_rule_kept);
    RUN(test_overdue_when_idle);
    TEST_EXIT();
}
