/* test_table.c - core/table.c against a reference model written the slow,
 * obvious way: users addressed directly by number, row ids by a bitmap scan
 * from 0, capacity victims by sorting every live user by active_seq, the
 * sweep by walking ids. Millions of random inserts, updates, duplicates,
 * late events, unknown items, sweeps and capacity evictions must leave both
 * identical, bit for bit (both use hl_decay_add, which test_decay checks
 * against the formula). Plus growth and restore equivalence (what
 * snapshots rely on); the cases one by one are in test_table_cases.c. */
#define T_SUITE "test_table"
#include "table_test_util.h"

#include <sys/mman.h>

/* ---- the reference ------------------------------------------------------- */

typedef struct ref_user {
    int      live, dirty;
    uint32_t row;
    float    s[HEADS * DIM], m[HEADS];
    int64_t  t_ref, last_off;
    uint64_t seq;
    int      n_hist, head;
    int32_t  hitem[HIST];
    uint8_t  htype[HIST];
    int64_t  hts[HIST];
} ref_user;

typedef struct ref {
    hl_decay  d;
    ref_user *u;
    int      *user_of_row;     /* MAX_K entries, -1 = free */
    int       k;
    size_t    n_live, max_users, batch;
    float     evict_mass;
    uint64_t  seq;
    int64_t   newest;
    uint32_t  cursor, row_limit;   /* 1 + highest live row */
    uint64_t  ev_mass, ev_cap, dups, applied, inserted;
} ref;

static void ref_init(ref *R, const hl_table_opts *o, int k)
{
    memset(R, 0, sizeof *R);
    R->d = o->decay;
    R->k = k;
    R->u = calloc((size_t)k, sizeof *R->u);
    R->user_of_row = malloc(sizeof(int) * MAX_K);
    for (int i = 0; i < MAX_K; i++) R->user_of_row[i] = -1;
    R->max_users = o->max_users;
    R->batch = o->max_users / 64 ? o->max_users / 64 : 1;
    if (R->batch > 64) R->batch = 64;
    R->evict_mass = o->evict_mass;
    R->newest = INT64_MIN;
}

static void ref_free(ref *R) { free(R->u); free(R->user_of_row); }

static uint32_t ref_row_limit(const ref *R) { return R->row_limit; }

static void ref_evict(ref *R, int u)
{
    R->user_of_row[R->u[u].row] = -1;
    while (R->row_limit > 0 && R->user_of_row[R->row_limit - 1] < 0) R->row_limit--;
    R->u[u].live = 0;
    R->u[u].dirty = 0;
    R->n_live--;
}

/* The batch smallest seqs, by insertion into a small sorted array. */
static void ref_evict_oldest(ref *R)
{
    uint64_t (*v)[2] = malloc((R->batch + 1) * sizeof *v);
    size_t n = 0;
    for (int u = 0; u < R->k; u++) {
        uint64_t seq = R->u[u].seq;
        if (!R->u[u].live || (n == R->batch && seq >= v[n - 1][0])) continue;
        size_t i = n < R->batch ? n++ : R->batch - 1;   /* drop the largest */
        for (; i > 0 && v[i - 1][0] > seq; i--) {
            v[i][0] = v[i - 1][0];
            v[i][1] = v[i - 1][1];
        }
        v[i][0] = seq;
        v[i][1] = (uint64_t)u;
    }
    for (size_t i = 0; i < n; i++) ref_evict(R, (int)v[i][1]);
    R->ev_cap += n;
    free(v);
}

static void ref_insert(ref *R, int u)
{
    if (R->max_users && R->n_live >= R->max_users) ref_evict_oldest(R);
    uint32_t r = 0;
    while (R->user_of_row[r] >= 0) r++;
    R->user_of_row[r] = u;
    if (r >= R->row_limit) R->row_limit = r + 1;
    ref_user *x = &R->u[u];
    memset(x, 0, sizeof *x);
    x->live = 1;
    x->row = r;
    x->t_ref = INT64_MIN;
    x->last_off = INT64_MIN;
    R->n_live++;
    R->inserted++;
}

/* 1 applied, 2 applied to a user it inserted, 0 duplicate (hl_table_apply's
 * status). */
static int ref_apply(ref *R, int u, const hl_event *e)
{
    int inserted = !R->u[u].live;
    if (inserted) ref_insert(R, u);
    ref_user *x = &R->u[u];
    if (e->offset <= x->last_off) { R->dups++; return 0; }
    const float *v = e->item >= 0 && e->item < N_ITEMS ? e_in + e->item * DIM : NULL;
    hl_decay_add(&R->d, x->s, x->m, &x->t_ref, e->ts_ms, e->w, v);
    int i;
    if (x->n_hist < HIST) i = (x->head + x->n_hist++) % HIST;
    else { i = x->head; x->head = (x->head + 1) % HIST; }
    x->hitem[i] = e->item; x->htype[i] = e->type; x->hts[i] = e->ts_ms;
    x->last_off = e->offset;
    x->seq = ++R->seq;
    x->dirty = 1;
    if (e->ts_ms > R->newest) R->newest = e->ts_ms;
    R->applied++;
    return inserted ? 2 : 1;
}

static int ref_mass_gone(const ref *R, const ref_user *x)
{
    float f[HEADS];
    hl_decay_factors(&R->d, R->newest > x->t_ref ? R->newest - x->t_ref : 0, f);
    for (int h = 0; h < HEADS; h++) if (!(x->m[h] * f[h] < R->evict_mass)) return 0;
    return 1;
}

static size_t ref_sweep(ref *R, size_t max_rows)
{
    size_t gone = 0;
    if (!(R->evict_mass > 0)) return 0;
    for (size_t i = 0; i < max_rows && R->n_live > 0; i++) {
        uint32_t lim = ref_row_limit(R), r = R->cursor;
        while (r < lim && R->user_of_row[r] < 0) r++;
        if (r >= lim) { r = 0; while (R->user_of_row[r] < 0) r++; }
        R->cursor = r + 1;
        int u = R->user_of_row[r];
        if (ref_mass_gone(R, &R->u[u])) { ref_evict(R, u); gone++; }
    }
    if (R->cursor >= ref_row_limit(R)) R->cursor = 0;
    R->ev_mass += gone;
    return gone;
}

/* ---- comparing ------------------------------------------------------------ */

static int view_matches(const hl_row_view *v, const ref_user *x)
{
    if (v->t_ref_ms != x->t_ref || v->last_offset != x->last_off
        || v->active_seq != x->seq || v->n_hist != x->n_hist
        || v->hist_head != x->head || v->history != HIST
        || memcmp(v->s, x->s, sizeof x->s) != 0
        || memcmp(v->m, x->m, sizeof x->m) != 0)
        return 0;
    for (int i = 0; i < x->n_hist; i++) {
        int k = hl_row_hist_index(v, i);
        if (v->hist_item[k] != x->hitem[k] || v->hist_type[k] != x->htype[k]
            || v->hist_ts_ms[k] != x->hts[k])
            return 0;
    }
    return 1;
}

static void compare_all(const hl_table *tbl, const ref *R)
{
    char name[200];
    int bad = 0;
    for (int u = 0; u < R->k && bad < 3; u++) {
        size_t len = user_name(u, name);
        int64_t r = hl_table_find(tbl, name, len);
        const ref_user *x = &R->u[u];
        if (!x->live) {
            if (r >= 0) { CHECKF(0, "user %d found, reference evicted it", u); bad++; }
            continue;
        }
        if (r != (int64_t)x->row) {
            CHECKF(0, "user %d row %lld, reference %u", u, (long long)r, x->row);
            bad++;
            continue;
        }
        hl_row_view v;
        hl_table_view(tbl, (uint32_t)r, &v);
        if (v.user_len != len || memcmp(v.user, name, len) != 0 || !view_matches(&v, x)) {
            CHECKF(0, "user %d row %lld differs from the reference", u, (long long)r);
            bad++;
        }
    }
    hl_table_stats st;
    hl_table_stats_get(tbl, &st);
    CHECKF(st.users == R->n_live, "users %zu want %zu", st.users, R->n_live);
    CHECKF(st.evicted_capacity == R->ev_cap && st.evicted_mass == R->ev_mass,
           "evictions cap %llu mass %llu, want %llu %llu",
           (unsigned long long)st.evicted_capacity,
           (unsigned long long)st.evicted_mass, (unsigned long long)R->ev_cap,
           (unsigned long long)R->ev_mass);
    CHECK(st.applied == R->applied && st.duplicates == R->dups
          && st.inserted == R->inserted);
    CHECK(hl_table_row_limit(tbl) == ref_row_limit(R));
    uint32_t lim = hl_table_row_limit(tbl);
    for (uint32_t r = 0; r < lim; r++)
        if (hl_table_row_live(tbl, r) != (R->user_of_row[r] >= 0)) {
            CHECKF(0, "row %u live %d, reference %d", r, hl_table_row_live(tbl, r),
                   R->user_of_row[r] >= 0);
            break;
        }
}

static void compare_dirty(hl_table *tbl, ref *R)
{
    static uint32_t got[MAX_K], want[MAX_K];
    int n = 0, m = 0, k;
    while ((k = hl_table_take_dirty(tbl, got + n, 7)) > 0) n += k;
    for (int u = 0; u < R->k; u++)
        if (R->u[u].live && R->u[u].dirty) { want[m++] = R->u[u].row; R->u[u].dirty = 0; }
    qsort(got, (size_t)n, 4, cmp_u32);
    qsort(want, (size_t)m, 4, cmp_u32);
    CHECKF(n == m && memcmp(got, want, (size_t)n * 4) == 0,
           "dirty rows: %d taken, reference %d", n, m);
}

/* ---- random workload ------------------------------------------------------ */

typedef struct gen {
    int      k, hot;
    int64_t  now, offset;
    hl_event recent[256];      /* replayed now and then: duplicates */
    int      recent_u[256];
    char     names[512][200];  /* id bytes of the batch being built */
} gen;

static int gen_event(gen *g, hl_event *e, int slot)
{
    int u;
    if (rnd() % 100 < 3 && g->offset > 256) {
        int i = (int)(rnd() % 256);
        *e = g->recent[i];
        u = g->recent_u[i];
    } else {
        u = rnd() % 2 ? (int)(rnd() % (uint64_t)g->hot) : (int)(rnd() % (uint64_t)g->k);
        g->now += (int64_t)(rnd() % 60000);
        int64_t ts = g->now;
        if (rnd() % 10 == 0) ts -= (int64_t)(rnd() % (3 * 86400000LL));
        int item = (int)(rnd() % (N_ITEMS + 20)) - 10;
        *e = (hl_event){ .item = item < 0 ? -1 : item, .type = (uint8_t)(rnd() % 6),
                         .w = (float)(0.1 + 2 * unit()), .ts_ms = ts,
                         .offset = ++g->offset };
        g->recent[g->offset % 256] = *e;
        g->recent_u[g->offset % 256] = u;
    }
    e->user_len = (uint32_t)user_name(u, g->names[slot]);
    e->user = g->names[slot];
    return u;
}

/* Runs n_events in random batches through the table and the reference,
 * sweeping and taking dirty rows now and then, comparing as it goes. */
static void run_random(hl_table *tbl, ref *R, gen *g, long n_events, int full_every)
{
    static hl_event ev[512];
    static int us[512];
    static int8_t status[512];
    long done = 0;
    for (int round = 0; done < n_events; round++) {
        int n = 1 + (int)(rnd() % 300);
        for (int i = 0; i < n; i++) us[i] = gen_event(g, &ev[i], i);
        int applied = hl_table_apply(tbl, ev, n, e_in, N_ITEMS, status);
        int want_applied = 0, bad = 0;
        for (int i = 0; i < n; i++) {
            int w = ref_apply(R, us[i], &ev[i]);
            want_applied += w > 0;
            if (status[i] != w && bad++ == 0)
                CHECKF(0, "event %d status %d want %d", i, status[i], w);
        }
        CHECK(applied == want_applied);
        if (rnd() % 3 == 0) {
            size_t m = rnd() % 400;
            size_t got = hl_table_sweep(tbl, m), want = ref_sweep(R, m);
            CHECKF(got == want, "sweep(%zu) evicted %zu want %zu", m, got, want);
        }
        if (rnd() % 5 == 0) compare_dirty(tbl, R);
        done += n;
        if (round % full_every == 0 || done >= n_events) compare_all(tbl, R);
        if (t_case_failed) return;
    }
}

static void test_against_reference(void)
{
    hl_table_opts o = small_opts(2000, 0.02f);
    ref R;
    ref_init(&R, &o, 12000);
    char err[128];
    hl_table *tbl = hl_table_create(&o, err, sizeof err);
    CHECK(tbl != NULL);
    if (tbl == NULL) return;
    static gen g;
    g = (gen){ .k = 12000, .hot = 1500, .now = 1700000000000LL };
    rng_state = 42;
    fill_items();
    run_random(tbl, &R, &g, 2000000 / SAN_SLOW, 200);
    hl_table_stats st;
    hl_table_stats_get(tbl, &st);
    /* The workload must exercise what it claims to. */
    CHECKF(st.inserted > 100000 / SAN_SLOW && st.evicted_capacity > 50000 / SAN_SLOW
           && st.evicted_mass > 1000 / SAN_SLOW && st.duplicates > 10000 / SAN_SLOW,
           "inserted %llu cap %llu mass %llu dup %llu",
           (unsigned long long)st.inserted, (unsigned long long)st.evicted_capacity,
           (unsigned long long)st.evicted_mass, (unsigned long long)st.duplicates);
    hl_table_destroy(tbl);
    ref_free(&R);
}

/* A small cap with a hot set: LRU scans span several inserts while hot
 * users are touched, and the candidate pool is often drained down to
 * recently scanned rows: where an inexact pool would show. */
static void test_small_capacity_against_reference(void)
{
    hl_table_opts o = small_opts(256, 0);
    ref R;
    ref_init(&R, &o, 3000);
    hl_table *tbl = hl_table_create(&o, NULL, 0);
    static gen g;
    g = (gen){ .k = 3000, .hot = 200, .now = 1700000000000LL };
    rng_state = 31337;
    fill_items();
    run_random(tbl, &R, &g, 500000 / SAN_SLOW, 100);
    hl_table_stats st;
    hl_table_stats_get(tbl, &st);
    CHECK(st.evicted_capacity > 100000 / SAN_SLOW);
    hl_table_destroy(tbl);
    ref_free(&R);
}

/* Neither eviction rule: the table only grows (index doubling while rows are
 * looked up, many times over) and must match the reference throughout. */
static void test_growth_against_reference(void)
{
    hl_table_opts o = small_opts(0, 0);
    ref R;
    ref_init(&R, &o, MAX_K);
    hl_table *tbl = hl_table_create(&o, NULL, 0);
    static gen g;
    g = (gen){ .k = MAX_K, .hot = MAX_K, .now = 1700000000000LL };
    rng_state = 4242;
    fill_items();
    run_random(tbl, &R, &g, 250000 / SAN_SLOW, 200);
    hl_table_stats st;
    hl_table_stats_get(tbl, &st);
    CHECK(st.users > 30000 / SAN_SLOW);
    CHECK(st.evicted_capacity == 0 && st.evicted_mass == 0);
    hl_table_destroy(tbl);
    ref_free(&R);
}

/* Many users in big batches: every one findable at every step of growth,
 * even with sweeps evicting during the index migration. */
static void test_growth_large(void)
{
    int n_users = 300000 / SAN_SLOW;
    hl_table_opts o = small_opts(0, 0.5f);
    hl_table *tbl = hl_table_create(&o, NULL, 0);
    static char names[1000][16];
    static hl_event ev[1000];
    for (int base = 0; base < n_users; base += 1000) {
        for (int i = 0; i < 1000; i++) {
            int u = base + i;
            ev[i] = (hl_event){ .user = names[i],
                                .user_len = (uint32_t)snprintf(names[i], 16, "g%d", u),
                                .item = u % N_ITEMS, .w = u % 10 == 0 ? 0.1f : 1.0f,
                                .ts_ms = 1000, .offset = u };
        }
        CHECK(hl_table_apply(tbl, ev, 1000, e_in, N_ITEMS, NULL) == 1000);
        hl_table_sweep(tbl, 300);           /* evicts the w = 0.1 users */
        if (base % 50000 == 0 || base + 1000 >= n_users) {
            int missing = 0;
            for (int u = 0; u <= base + 999; u++) {
                char nm[16];
                int len = snprintf(nm, 16, "g%d", u);
                int64_t r = hl_table_find(tbl, nm, (size_t)len);
                if (u % 10 != 0 && r < 0) missing++;
            }
            CHECKF(missing == 0, "%d users missing at %d", missing, base);
        }
    }
    hl_table_stats st;
    hl_table_stats_get(tbl, &st);
    CHECK(st.evicted_mass > 0);
    CHECK(st.users >= (size_t)n_users * 9 / 10);
    hl_table_destroy(tbl);
}

/* ---- restore ------------------------------------------------------------- */

/* Copies every live row of a into b (with ids if at), then a's meta. */
static void copy_table(const hl_table *a, hl_table *b, int at)
{
    uint32_t lim = hl_table_row_limit(a);
    for (uint32_t r = 0; r < lim; r++) {
        if (!hl_table_row_live(a, r)) continue;
        hl_row_view v;
        hl_table_view(a, r, &v);
        int rc = at ? hl_table_restore_at(b, r, &v) : hl_table_restore(b, &v);
        CHECK(rc == 0);
    }
    hl_table_meta meta;
    hl_table_meta_get(a, &meta);
    hl_table_meta_set(b, &meta);
}

/* Same users, same views (byte for byte), same row ids if same_ids. */
static void compare_tables(const hl_table *a, const hl_table *b, int same_ids)
{
    hl_table_stats sa, sb;
    hl_table_stats_get(a, &sa);
    hl_table_stats_get(b, &sb);
    CHECK(sa.users == sb.users);
    uint32_t lim = hl_table_row_limit(a);
    int bad = 0;
    for (uint32_t r = 0; r < lim && bad < 3; r++) {
        if (!hl_table_row_live(a, r)) continue;
        hl_row_view va, vb;
        hl_table_view(a, r, &va);
        int64_t rb = hl_table_find(b, va.user, va.user_len);
        if (rb < 0 || (same_ids && rb != (int64_t)r)) {
            CHECKF(0, "row %u: in copy at %lld", r, (long long)rb);
            bad++;
            continue;
        }
        hl_table_view(b, (uint32_t)rb, &vb);
        size_t nh = HEADS, hb = HIST;
        if (va.t_ref_ms != vb.t_ref_ms || va.last_offset != vb.last_offset
            || va.active_seq != vb.active_seq || va.n_hist != vb.n_hist
            || va.hist_head != vb.hist_head
            || memcmp(va.s, vb.s, nh * DIM * 4) || memcmp(va.m, vb.m, nh * 4)
            || memcmp(va.hist_item, vb.hist_item, hb * 4)
            || memcmp(va.hist_type, vb.hist_type, hb)
            || memcmp(va.hist_ts_ms, vb.hist_ts_ms, hb * 8)) {
            CHECKF(0, "row %u differs in the copy", r);
            bad++;
        }
    }
    if (same_ids) CHECK(hl_table_row_limit(a) == hl_table_row_limit(b));
}

/* Drives two tables with the same random events and sweeps. */
static void drive_both(hl_table *a, hl_table *b, long n_events, int sweeps,
                       uint64_t seed)
{
    static gen g;
    static hl_event ev[512];
    g = (gen){ .k = 6000, .hot = 600, .now = 1700000000000LL + 400 * 86400000LL,
               .offset = 10000000 };
    rng_state = seed;
    for (long done = 0; done < n_events;) {
        int n = 1 + (int)(rnd() % 300);
        for (int i = 0; i < n; i++) gen_event(&g, &ev[i], i);
        CHECK(hl_table_apply(a, ev, n, e_in, N_ITEMS, NULL)
              == hl_table_apply(b, ev, n, e_in, N_ITEMS, NULL));
        if (sweeps && rnd() % 2) {
            size_t m = rnd() % 300;
            CHECK(hl_table_sweep(a, m) == hl_table_sweep(b, m));
        }
        done += n;
    }
}

/* Restores into b (a copy of a with ids) that must be refused: a user
 * already there, a live id, a wrong history length or head. */
static void check_restore_refusals(hl_table *a, hl_table *b)
{
    hl_row_view v;
    uint32_t r0 = 0;
    while (!hl_table_row_live(a, r0)) r0++;
    hl_table_view(a, r0, &v);
    CHECK(hl_table_restore(b, &v) == HL_EINVAL);
    hl_row_view w = v;
    w.user = "not-there";
    w.user_len = 9;
    CHECK(hl_table_restore_at(b, r0, &w) == HL_EINVAL);
    w.history = HIST + 1;
    CHECK(hl_table_restore(b, &w) == HL_EINVAL);
    w.history = HIST;
    w.hist_head = HIST;
    CHECK(hl_table_restore(b, &w) == HL_EINVAL);
}

static void test_restore_equivalence(void)
{
    hl_table_opts o = small_opts(1500, 0.02f);
    fill_items();
    hl_table *a = hl_table_create(&o, NULL, 0);
    ref R;                           /* only to build a table with holes */
    ref_init(&R, &o, 6000);
    static gen g;
    g = (gen){ .k = 6000, .hot = 600, .now = 1700000000000LL };
    rng_state = 777;
    run_random(a, &R, &g, 300000 / SAN_SLOW, 1000);
    ref_free(&R);
    hl_table_stats sa;
    hl_table_stats_get(a, &sa);
    CHECK(hl_table_row_limit(a) > sa.users);          /* it has holes */

    /* With ids: identical now and under any future, sweeps included. */
    hl_table *b = hl_table_create(&o, NULL, 0);
    copy_table(a, b, 1);
    compare_tables(a, b, 1);
    drive_both(a, b, 200000 / SAN_SLOW, 1, 99);
    compare_tables(a, b, 1);
    hl_table_stats s1, s2;
    hl_table_stats_get(a, &s1);
    hl_table_stats_get(b, &s2);
    CHECK(s1.evicted_capacity - sa.evicted_capacity == s2.evicted_capacity);
    CHECK(s1.evicted_mass - sa.evicted_mass == s2.evicted_mass);
    CHECK(s2.evicted_mass > 0 && s2.evicted_capacity > 0);

    /* Without ids, in id order: compacted ids, same states, and the same
     * future without sweeps (capacity eviction goes by active_seq only). */
    hl_table *c = hl_table_create(&o, NULL, 0);
    copy_table(a, c, 0);
    compare_tables(a, c, 0);
    drive_both(a, c, 100000 / SAN_SLOW, 0, 5);
    compare_tables(a, c, 0);

    /* A table without holes restored in id order gets the same ids. */
    hl_table *d = hl_table_create(&o, NULL, 0);
    copy_table(c, d, 0);
    hl_table *e = hl_table_create(&o, NULL, 0);
    copy_table(d, e, 0);
    compare_tables(d, e, 1);

    check_restore_refusals(a, b);
    hl_table_destroy(a);
    hl_table_destroy(b);
    hl_table_destroy(c);
    hl_table_destroy(d);
    hl_table_destroy(e);
}

/* hl_table_map_rows: blocks mapped ahead for a restore, capped, and a
 * table restored into them is the table it copies. */
static void test_map_rows(void)
{
    hl_table_opts o = small_opts(1500, 0.02f);
    fill_items();
    hl_table *a = hl_table_create(&o, NULL, 0), *b = hl_table_create(&o, NULL, 0);
    static gen g;
    g = (gen){ .k = 6000, .hot = 600, .now = 1700000000000LL };
    rng_state = 31;
    ref R;
    ref_init(&R, &o, 6000);
    run_random(a, &R, &g, 20000 / SAN_SLOW, 1000);
    ref_free(&R);
    hl_table_span sp[4];
    int n = hl_table_map_rows(b, 1000000, sp, 4);    /* capped: 2 x max_users */
    CHECKF(n == 1 && sp[0].addr != NULL && sp[0].bytes > 0, "spans %d", n);
#ifdef MADV_POPULATE_WRITE
    CHECK(madvise(sp[0].addr, sp[0].bytes, MADV_POPULATE_WRITE) == 0);
#endif
    copy_table(a, b, 1);
    compare_tables(a, b, 1);
    hl_table_opts big = o;
    big.max_users = 0;
    hl_table *c = hl_table_create(&big, NULL, 0);
    CHECK(hl_table_map_rows(c, 40000, sp, 4) == 3);    /* 16384 rows a block */
    CHECK(sp[1].first_row == sp[0].n_rows && sp[2].first_row == 2 * sp[0].n_rows &&
          3 * sp[0].n_rows >= 40000);
    CHECK(hl_table_map_rows(c, 40000, sp, 1) == 1);
    CHECK(sp[0].addr != NULL);
    hl_table_destroy(c);
    hl_table_destroy(b);
    hl_table_destroy(a);
}

int main(void)
{
    RUN(test_against_reference);
    RUN(test_small_capacity_against_reference);
    RUN(test_growth_against_reference);
    RUN(test_growth_large);
    RUN(test_restore_equivalence);
    RUN(test_map_rows);
    TEST_EXIT();
}
