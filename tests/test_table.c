/* test_table.c - core/table.c against a reference model written the slow,
 * obvious way: users addressed directly by number, row ids by a bitmap scan
 * from 0, capacity victims by sorting every live user by active_seq, the
 * sweep by walking ids. Millions of random inserts, updates, duplicates,
 * late events, unknown items, sweeps and capacity evictions must leave both
 * identical, bit for bit (both use hl_decay_add, which test_decay checks
 * against the formula). Plus growth, idempotence, the dirty set, long ids,
 * and restore equivalence (what snapshots rely on). */
#define T_SUITE "test_table"
#include "test.h"
#include "table.h"

#include <stdint.h>

#if defined(__SANITIZE_ADDRESS__)
#define SAN_SLOW 8
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SAN_SLOW 8
#endif
#endif
#ifndef SAN_SLOW
#define SAN_SLOW 1
#endif

#define DIM     8
#define HEADS   3
#define HIST    8
#define N_ITEMS 50
#define MAXU    64             /* reference users up to this many ... */
#define MAX_K   40000          /* ... distinct user numbers */

static uint64_t rng_state = 1;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static double unit(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }

static float e_in[N_ITEMS * DIM];

static void fill_items(void)
{
    for (int i = 0; i < N_ITEMS * DIM; i++) e_in[i] = (float)(unit() * 2 - 1);
}

/* User number -> id string: short ones, and every 97th long enough (120
 * bytes) to take the table's out-of-row key path. */
static size_t user_name(int u, char *buf)
{
    if (u % 97 == 0)
        return (size_t)snprintf(buf, 200, "long-user-%0110d", u);
    return (size_t)snprintf(buf, 200, "u%d", u);
}

static hl_table_opts small_opts(size_t max_users, float evict_mass)
{
    hl_table_opts o = { .history = HIST, .max_users = max_users,
                        .evict_mass = evict_mass };
    int rc = hl_decay_init(&o.decay, HEADS, DIM, hl_default_half_life_ms, NULL, 0);
    CHECK(rc == 0);
    return o;
}

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

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
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

static hl_event one(const char *user, int32_t item, int64_t ts, int64_t offset)
{
    return (hl_event){ .user = user, .user_len = (uint32_t)strlen(user),
                       .item = item, .type = HL_CLICK, .w = 1.0f,
                       .ts_ms = ts, .offset = offset };
}

static void snapshot_row(const hl_table *tbl, const char *user, hl_row_view *v,
                         float *s, float *m)
{
    int64_t r = hl_table_find(tbl, user, strlen(user));
    CHECK(r >= 0);
    if (r < 0) return;
    hl_table_view(tbl, (uint32_t)r, v);
    memcpy(s, v->s, sizeof(float) * HEADS * DIM);
    memcpy(m, v->m, sizeof(float) * HEADS);
}

static void test_idempotence(void)
{
    hl_table_opts o = small_opts(0, 0);
    hl_table *tbl = hl_table_create(&o, NULL, 0);
    fill_items();
    hl_event e[3] = { one("alice", 3, 5000, 10), one("alice", 4, 6000, 11),
                      one("bob", 4, 6000, 12) };
    int8_t st[3];
    CHECK(hl_table_apply(tbl, e, 3, e_in, N_ITEMS, st) == 3);
    uint32_t rows[8];
    CHECK(hl_table_take_dirty(tbl, rows, 8) == 2);
    hl_row_view before, after;
    float s0[HEADS * DIM], m0[HEADS], s1[HEADS * DIM], m1[HEADS];
    snapshot_row(tbl, "alice", &before, s0, m0);
    /* Replays: the same offsets, an older one, in any order. */
    hl_event again[3] = { one("alice", 9, 9000, 11), one("alice", 9, 1, 10),
                          one("alice", -1, 9000, 3) };
    CHECK(hl_table_apply(tbl, again, 3, e_in, N_ITEMS, st) == 0);
    CHECK(st[0] == 0 && st[1] == 0 && st[2] == 0);
    snapshot_row(tbl, "alice", &after, s1, m1);
    CHECK(memcmp(s0, s1, sizeof s0) == 0 && memcmp(m0, m1, sizeof m0) == 0);
    CHECK(after.n_hist == 2 && after.last_offset == 11 && after.t_ref_ms == 6000);
    CHECK(after.active_seq == before.active_seq);
    CHECK(hl_table_take_dirty(tbl, rows, 8) == 0);
    hl_table_stats sts;
    hl_table_stats_get(tbl, &sts);
    CHECK(sts.duplicates == 3 && sts.applied == 3 && sts.inserted == 2);
    hl_table_destroy(tbl);
}

/* hl_table_apply_rows gives each applied event's row (the one
 * hl_table_find names after the call), HL_TABLE_NO_ROW for a duplicate,
 * and for every event of a call that evicted a user for room. */
static void test_apply_rows(void)
{
    hl_table_opts o = small_opts(0, 0);
    hl_table *tbl = hl_table_create(&o, NULL, 0);
    fill_items();
    hl_event e[4] = { one("alice", 3, 5000, 10), one("bob", 4, 6000, 12),
                      one("alice", 4, 6000, 11), one("alice", 5, 7000, 10) };
    int8_t st[4];
    uint32_t rows[4];
    CHECK(hl_table_apply_rows(tbl, e, 4, e_in, N_ITEMS, st, rows) == 3);
    CHECK(rows[0] == (uint32_t)hl_table_find(tbl, "alice", 5) && rows[2] == rows[0] &&
          rows[1] == (uint32_t)hl_table_find(tbl, "bob", 3) && rows[1] != rows[0]);
    CHECK(st[3] == 0 && rows[3] == HL_TABLE_NO_ROW);       /* a duplicate */
    hl_table_destroy(tbl);
    o.max_users = 2;                                        /* room for two users */
    tbl = hl_table_create(&o, NULL, 0);
    hl_event f[2] = { one("ann", 3, 5000, 1), one("ben", 3, 5000, 1) };
    CHECK(hl_table_apply_rows(tbl, f, 2, e_in, N_ITEMS, st, rows) == 2);
    CHECK(rows[0] != HL_TABLE_NO_ROW && rows[1] != HL_TABLE_NO_ROW);
    hl_event g[2] = { one("ann", 4, 6000, 2), one("cid", 3, 6000, 1) };  /* cid evicts */
    CHECK(hl_table_apply_rows(tbl, g, 2, e_in, N_ITEMS, st, rows) == 2);
    CHECK(st[0] > 0 && rows[0] == HL_TABLE_NO_ROW && rows[1] == HL_TABLE_NO_ROW);
    hl_table_destroy(tbl);
}

/* Items outside the model (-1, n_items) go into the history and move t_ref
 * forward (decaying the heads) but add nothing. */
static void test_unknown_items(void)
{
    hl_table_opts o = small_opts(0, 0);
    hl_table *tbl = hl_table_create(&o, NULL, 0);
    fill_items();
    hl_event e[3] = { one("carol", 1, 0, 1), one("carol", -1, 3600000, 2),
                      one("carol", N_ITEMS, 7200000, 3) };
    CHECK(hl_table_apply(tbl, e, 3, e_in, N_ITEMS, NULL) == 3);
    hl_row_view v;
    hl_table_view(tbl, (uint32_t)hl_table_find(tbl, "carol", 5), &v);
    CHECK(v.n_hist == 3 && v.t_ref_ms == 7200000);
    CHECK(v.hist_item[1] == -1 && v.hist_item[2] == N_ITEMS);
    CHECK(fabs(v.m[0] - 0.25) < 1e-6);   /* 1h head: two half-lives */
    CHECK(fabs(v.s[0] - 0.25 * e_in[DIM]) < 1e-6);
    /* NULL e_in: nothing known, everything recorded. */
    hl_event d = one("dave", 1, 0, 4);
    CHECK(hl_table_apply(tbl, &d, 1, NULL, 0, NULL) == 1);
    hl_table_view(tbl, (uint32_t)hl_table_find(tbl, "dave", 4), &v);
    CHECK(v.n_hist == 1 && v.m[0] == 0 && v.m[2] == 0);
    hl_table_destroy(tbl);
}

/* The ring keeps the newest `history` events, oldest first. */
static void test_history_ring(void)
{
    hl_table_opts o = small_opts(0, 0);
    hl_table *tbl = hl_table_create(&o, NULL, 0);
    for (int i = 0; i < 20; i++) {
        hl_event e = one("erin", i, i * 1000, i);
        CHECK(hl_table_apply(tbl, &e, 1, e_in, N_ITEMS, NULL) == 1);
    }
    hl_row_view v;
    hl_table_view(tbl, (uint32_t)hl_table_find(tbl, "erin", 4), &v);
    CHECK(v.n_hist == HIST);
    for (int i = 0; i < HIST; i++) {
        int k = hl_row_hist_index(&v, i);
        CHECK(v.hist_item[k] == 20 - HIST + i);
        CHECK(v.hist_ts_ms[k] == (20 - HIST + i) * 1000);
        CHECK(v.hist_type[k] == HL_CLICK);
    }
    hl_table_destroy(tbl);
}

/* Marks accumulate across batches, each row comes out once, evicted rows
 * never, and a row reused by a new user comes out once. */
static void test_dirty_set(void)
{
    hl_table_opts o = small_opts(4, 0);   /* batch of 1 at a time */
    hl_table *tbl = hl_table_create(&o, NULL, 0);
    const char *names[] = { "a", "b", "c", "d", "e" };
    int64_t off = 0;
    for (int rep = 0; rep < 3; rep++)
        for (int i = 0; i < 4; i++) {
            hl_event e = one(names[i], 1, 100 + off, off);
            off++;
            hl_table_apply(tbl, &e, 1, e_in, N_ITEMS, NULL);
        }
    uint32_t rows[8];
    CHECK(hl_table_take_dirty(tbl, rows, 3) == 3);
    CHECK(hl_table_take_dirty(tbl, rows + 3, 3) == 1);
    qsort(rows, 4, 4, cmp_u32);
    for (uint32_t i = 0; i < 4; i++) CHECK(rows[i] == i);
    /* Touch a and b, then a new user e evicts the least recent (c, row 2)
     * and takes its row. Dirty: a, b, e (row 2). */
    hl_event e1 = one("a", 1, 500, off++);
    hl_table_apply(tbl, &e1, 1, e_in, N_ITEMS, NULL);
    hl_event e2 = one("b", 1, 500, off++);
    hl_table_apply(tbl, &e2, 1, e_in, N_ITEMS, NULL);
    hl_event e3 = one("e", 1, 500, off++);
    hl_table_apply(tbl, &e3, 1, e_in, N_ITEMS, NULL);
    CHECK(hl_table_find(tbl, "c", 1) < 0);
    CHECK(hl_table_find(tbl, "e", 1) == 2);
    int n = hl_table_take_dirty(tbl, rows, 8);
    qsort(rows, (size_t)n, 4, cmp_u32);
    CHECKF(n == 3 && rows[0] == 0 && rows[1] == 1 && rows[2] == 2,
           "dirty %d rows", n);
    CHECK(hl_table_take_dirty(tbl, rows, 8) == 0);
    hl_table_destroy(tbl);
}

typedef struct evicted_log { char names[16][8]; int n; } evicted_log;

static void note_evicted(void *arg, const char *user, uint32_t len)
{
    evicted_log *l = arg;
    if (l->n < 16 && len < 8) {
        memcpy(l->names[l->n], user, len);
        l->names[l->n++][len] = '\0';
    }
}

/* The hook sees every capacity eviction (the changelog's tombstones) and
 * no removal; a removed user is gone and its row id free again. */
static void test_evict_hook_and_remove(void)
{
    hl_table_opts o = small_opts(4, 0);
    hl_table *tbl = hl_table_create(&o, NULL, 0);
    evicted_log log = {.n = 0};
    hl_table_on_evict(tbl, note_evicted, &log);
    const char *names[] = {"a", "b", "c", "d", "e"};
    for (int i = 0; i < 5; i++) {
        hl_event e = one(names[i], 1, 100 + i, i);
        hl_table_apply(tbl, &e, 1, e_in, N_ITEMS, NULL);
    }
    CHECKF(log.n == 1 && strcmp(log.names[0], "a") == 0, "%d evicted, first %s", log.n,
           log.n ? log.names[0] : "-");
    CHECK(hl_table_remove(tbl, "c", 1) == 0);
    CHECK(hl_table_remove(tbl, "c", 1) == HL_ENOENT);
    CHECK(hl_table_find(tbl, "c", 1) < 0);
    CHECK(log.n == 1);
    hl_table_stats st;
    hl_table_stats_get(tbl, &st);
    CHECK(st.users == 3 && st.evicted_capacity == 1 && st.evicted_mass == 0);
    hl_event e = one("f", 1, 200, 10);
    hl_table_apply(tbl, &e, 1, e_in, N_ITEMS, NULL);
    CHECK(hl_table_find(tbl, "f", 1) == 2);       /* c's row, the lowest free id */
    hl_table_on_evict(tbl, NULL, NULL);
    hl_table_destroy(tbl);
}

/* Capacity: the oldest max_users/64 by last activity go, exactly. */
static void test_capacity_eviction(void)
{
    hl_table_opts o = small_opts(640, 0);
    hl_table *tbl = hl_table_create(&o, NULL, 0);
    char nm[32];
    hl_event e;
    for (int u = 0; u < 640; u++) {
        e = one(nm, 1, 1000, u);
        e.user_len = (uint32_t)snprintf(nm, sizeof nm, "c%d", u);
        hl_table_apply(tbl, &e, 1, e_in, N_ITEMS, NULL);
    }
    /* Refresh users 0..4 so users 5..14 are now the 10 oldest. */
    for (int u = 0; u < 5; u++) {
        e = one(nm, 1, 2000, 1000 + u);
        e.user_len = (uint32_t)snprintf(nm, sizeof nm, "c%d", u);
        hl_table_apply(tbl, &e, 1, e_in, N_ITEMS, NULL);
    }
    e = one("newcomer", 1, 3000, 5000);
    CHECK(hl_table_apply(tbl, &e, 1, e_in, N_ITEMS, NULL) == 1);
    hl_table_stats st;
    hl_table_stats_get(tbl, &st);
    CHECK(st.evicted_capacity == 10 && st.users == 631);
    for (int u = 0; u < 20; u++) {
        int len = snprintf(nm, sizeof nm, "c%d", u);
        int gone = hl_table_find(tbl, nm, (size_t)len) < 0;
        CHECKF(gone == (u >= 5 && u < 15), "user c%d gone=%d", u, gone);
    }
    CHECK(hl_table_find(tbl, "newcomer", 8) == 5);   /* lowest free row */
    hl_table_destroy(tbl);
}

/* Mass: a user whose mass decayed to the shard's newest time is below the
 * bar in every head goes; one still above in the 30-day head stays. */
static void test_mass_eviction(void)
{
    hl_table_opts o = small_opts(0, 0.1f);
    hl_table *tbl = hl_table_create(&o, NULL, 0);
    int64_t day = 86400000LL;
    hl_event e[3] = { one("old", 1, 0, 1), one("mid", 1, 100 * day, 2),
                      one("new", 1, 130 * day, 3) };
    hl_table_apply(tbl, e, 3, e_in, N_ITEMS, NULL);
    CHECK(hl_table_sweep(tbl, 1) == 1);      /* examines row 0: old, 2^-4.3 */
    CHECK(hl_table_find(tbl, "old", 3) < 0);
    CHECK(hl_table_sweep(tbl, 10) == 0);     /* mid: 30 days = one half-life */
    hl_table_stats st;
    hl_table_stats_get(tbl, &st);
    CHECK(st.evicted_mass == 1 && st.users == 2);
    hl_event later = one("new", 1, 200 * day, 4);
    hl_table_apply(tbl, &later, 1, e_in, N_ITEMS, NULL);
    CHECK(hl_table_sweep(tbl, 10) == 1);
    CHECK(hl_table_find(tbl, "mid", 3) < 0 && hl_table_find(tbl, "new", 3) >= 0);
    hl_table_destroy(tbl);
}

/* Ids longer than the inline key space live in their own allocation; ASan
 * checks they are freed on eviction and destroy. */
static void test_long_user_ids(void)
{
    hl_table_opts o = small_opts(8, 0);
    hl_table *tbl = hl_table_create(&o, NULL, 0);
    char nm[HL_MAX_ID_LEN + 1];
    for (int u = 0; u < 40; u++) {
        memset(nm, 'x', HL_MAX_ID_LEN);
        int len = snprintf(nm, sizeof nm, "%d", u);
        nm[len] = 'y';
        nm[HL_MAX_ID_LEN] = '\0';      /* one() takes strlen: the id ends here */
        hl_event e = one(nm, 1, u, u);
        e.user_len = HL_MAX_ID_LEN;
        CHECK(hl_table_apply(tbl, &e, 1, e_in, N_ITEMS, NULL) == 1);
        CHECK(hl_table_find(tbl, nm, HL_MAX_ID_LEN) >= 0);
        hl_row_view v;
        hl_table_view(tbl, (uint32_t)hl_table_find(tbl, nm, HL_MAX_ID_LEN), &v);
        CHECK(v.user_len == HL_MAX_ID_LEN && memcmp(v.user, nm, HL_MAX_ID_LEN) == 0);
    }
    hl_table_destroy(tbl);
}

/* A user_len no row can hold is refused per event; the batch goes on. */
static void test_bad_user_len(void)
{
    hl_table_opts o = small_opts(0, 0);
    hl_table *tbl = hl_table_create(&o, NULL, 0);
    static char big[HL_MAX_ID_LEN + 2];     /* + its NUL: one() takes strlen */
    memset(big, 'z', HL_MAX_ID_LEN + 1);
    hl_event e[3] = { one("ok", 1, 0, 1), one("", 1, 0, 2), one(big, 1, 0, 3) };
    e[2].user_len = HL_MAX_ID_LEN + 1;
    int8_t st[3];
    CHECK(hl_table_apply(tbl, e, 3, e_in, N_ITEMS, st) == 1);
    CHECK(st[0] == 2 && st[1] == HL_EINVAL && st[2] == HL_EINVAL);
    hl_table_stats sts;
    hl_table_stats_get(tbl, &sts);
    CHECK(sts.users == 1);
    hl_table_destroy(tbl);
}

static int all_finite(const float *x, int n)
{
    for (int i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* Issue 16: one event of weight 1e38 (a valid Avro float) made a user's
 * masses inf and NaN, and its list noise. The guard refuses, before
 * anything changes, every event that could take a mass past
 * HL_TABLE_MAX_MASS (|m| + |w| > 1e30, or a weight that is not finite):
 * on time, late or for an unknown item, for an existing user or a new one
 * (which is then not created). Each is counted in non_finite and reported
 * as HL_ERANGE. Below the bound weights add up as before. */
static void test_non_finite_guard(void)
{
    hl_table_opts o = small_opts(0, 0);
    hl_table *tbl = hl_table_create(&o, NULL, 0);
    fill_items();
    hl_event ok = one("eve", 2, 1000, 1);
    int8_t st[7];
    CHECK(hl_table_apply(tbl, &ok, 1, e_in, N_ITEMS, st) == 1);
    hl_row_view v0, v1;
    float s0[HEADS * DIM], m0[HEADS], s1[HEADS * DIM], m1[HEADS];
    snapshot_row(tbl, "eve", &v0, s0, m0);
    hl_event bad[7] = { one("eve", 3, 2000, 2), one("eve", 3, 2000, 3), one("eve", 3, 2000, 4),
                        one("eve", 3, 500, 5), one("eve", -1, 3000, 6), one("eve", 3, 2000, 7),
                        one("mallory", 3, 2000, 8) };
    bad[0].w = 1e38f;       /* late and unknown-item paths too */
    bad[1].w = INFINITY;
    bad[2].w = NAN;
    bad[3].w = 1e38f;
    bad[4].w = 1e38f;
    bad[5].w = -INFINITY;
    bad[6].w = 1e38f;
    CHECK(hl_table_apply(tbl, bad, 7, e_in, N_ITEMS, st) == 0);
    for (int i = 0; i < 7; i++)
        CHECKF(st[i] == HL_ERANGE, "event %d: status %d, want HL_ERANGE", i, st[i]);
    snapshot_row(tbl, "eve", &v1, s1, m1);
    CHECK(memcmp(s0, s1, sizeof s0) == 0 && memcmp(m0, m1, sizeof m0) == 0);
    CHECK(v1.n_hist == 1 && v1.last_offset == 1 && v1.t_ref_ms == 1000);
    CHECK(hl_table_find(tbl, "mallory", 7) < 0);
    CHECK(hl_table_take_dirty(tbl, (uint32_t[8]){0}, 8) == 1);   /* eve, from ok */
    /* Large finite weights add up to the bound; the one that would cross
     * it is refused, and everything stays finite. */
    hl_event big[3] = { one("trent", 3, 1000, 10), one("trent", 4, 1000, 11),
                        one("trent", 5, 1000, 12) };
    for (int i = 0; i < 3; i++) big[i].w = 4e29f;
    CHECK(hl_table_apply(tbl, big, 3, e_in, N_ITEMS, st) == 2);
    CHECK(st[0] == 2 && st[1] == 1 && st[2] == HL_ERANGE);   /* 2: it inserted trent */
    snapshot_row(tbl, "trent", &v1, s1, m1);
    CHECK(all_finite(m1, HEADS) && all_finite(s1, HEADS * DIM));
    CHECK(fabs(m1[2] - 8e29) < 1e24);
    hl_table_stats sts;
    hl_table_stats_get(tbl, &sts);
    CHECKF(sts.non_finite == 8 && sts.applied == 3, "non_finite %llu applied %llu",
           (unsigned long long)sts.non_finite, (unsigned long long)sts.applied);
    hl_table_destroy(tbl);
}

static void test_create_rejects(void)
{
    char err[128] = "";
    hl_table_opts o = small_opts(0, 0);
    o.history = 0;
    CHECK(hl_table_create(&o, err, sizeof err) == NULL && strstr(err, "history"));
    o = small_opts(0, 0);
    o.evict_mass = NAN;
    CHECK(hl_table_create(&o, err, sizeof err) == NULL && strstr(err, "evict_mass"));
    o = small_opts(0, 0);
    o.decay.n_heads = 0;
    CHECK(hl_table_create(&o, err, sizeof err) == NULL);
    hl_table_destroy(NULL);
}

/* payload = heads*dim*4 + heads*4 + 8 t_ref + 8 offset + history*(4+1+8)
 * + user_len, per live user; bytes stays within 1.3x of it for these rows. */
static void test_stats_bytes(void)
{
    hl_table_opts o = small_opts(0, 0);
    o.decay.dim = 64;
    o.history = 32;
    hl_table *tbl = hl_table_create(&o, NULL, 0);
    static float big[N_ITEMS * 64];
    char nm[32];
    for (int u = 0; u < 20000; u++) {
        hl_event e = one(nm, u % N_ITEMS, u, u);
        e.user_len = (uint32_t)snprintf(nm, sizeof nm, "user-%07d", u);
        hl_table_apply(tbl, &e, 1, big, N_ITEMS, NULL);
    }
    hl_table_stats st;
    hl_table_stats_get(tbl, &st);
    size_t per = 3 * 64 * 4 + 3 * 4 + 8 + 8 + 32 * (13 + 12);   /* + item keys, weights */
    CHECK(st.payload_bytes == 20000 * (per + 12));
    double ratio = (double)st.bytes / (double)st.payload_bytes;
    CHECKF(ratio >= 1.0 && ratio < 1.3, "bytes/payload %.3f", ratio);
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

    /* Refusals: a user already there, a live id, a wrong history length. */
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
    hl_table_destroy(a);
    hl_table_destroy(b);
    hl_table_destroy(c);
    hl_table_destroy(d);
    hl_table_destroy(e);
}

int main(void)
{
    RUN(test_against_reference);
    RUN(test_apply_rows);
    RUN(test_small_capacity_against_reference);
    RUN(test_growth_against_reference);
    RUN(test_growth_large);
    RUN(test_idempotence);
    RUN(test_unknown_items);
    RUN(test_history_ring);
    RUN(test_dirty_set);
    RUN(test_capacity_eviction);
    RUN(test_mass_eviction);
    RUN(test_long_user_ids);
    RUN(test_bad_user_len);
    RUN(test_non_finite_guard);
    RUN(test_create_rejects);
    RUN(test_stats_bytes);
    RUN(test_restore_equivalence);
    RUN(test_evict_hook_and_remove);
    TEST_EXIT();
}
