/* test_table_cases.c - core/table.c case by case, each against numbers
 * worked out by hand: idempotence by offset, unknown items, the history
 * ring, the dirty set, capacity and mass eviction with their hook, long
 * and bad user ids, the non-finite guard, refused options and the byte
 * counts. (test_table.c checks the table against a reference model.) */
#define T_SUITE "test_table_cases"
#include "table_test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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
    /* 1h head: two half-lives, less the part of a grid cell its base is
     * behind t_ref (decay.h) */
    double quarter = exp(-o.decay.lambda_per_ms[0] * (double)hl_decay_base_ms(&o.decay, 0, 7200000));
    CHECK(fabs(v.m[0] - quarter) < 1e-6 && fabs(quarter - 0.25) < 1e-4);
    CHECK(fabs(v.s[0] - quarter * e_in[DIM]) < 1e-6);
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
 * HL_TABLE_MAX_MASS (|m| + |w| (1 + 2^-12) > 1e30, or a weight that is not finite):
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

/* An event late in its head's grid cell adds w exp(lambda (t - B)), up to
 * w (1 + 2^-12) (decay.h): one that |m| + |w| let through just below the
 * bound crossed it, and the row would then be refused on restore (its
 * mass past the guard). ts 1023 is the end of the 1-hour head's first
 * 1024 ms cell. */
static void test_guard_allows_for_base_weight(void)
{
    hl_table_opts o = small_opts(0, 0);
    hl_table *tbl = hl_table_create(&o, NULL, 0);
    fill_items();
    hl_row_view v;
    float s[HEADS * DIM], m[HEADS];
    hl_event edge[2] = { one("walt", 3, 1023, 20), one("walt", 4, 1023, 21) };
    edge[0].w = 5e29f;
    CHECK(hl_table_apply(tbl, &edge[0], 1, e_in, N_ITEMS, NULL) == 1);
    snapshot_row(tbl, "walt", &v, s, m);
    edge[1].w = (float)((double)HL_TABLE_MAX_MASS - (double)m[0] - 5e25);
    hl_table_apply(tbl, &edge[1], 1, e_in, N_ITEMS, NULL);
    snapshot_row(tbl, "walt", &v, s, m);
    for (int h = 0; h < HEADS; h++)
        CHECKF(m[h] <= HL_TABLE_MAX_MASS, "head %d: mass %.9g past the guard's %.9g", h,
               (double)m[h], (double)HL_TABLE_MAX_MASS);
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

/* A reserve for far more users than came, then hl_table_fit: the index
 * shrinks to the users, every one is still found, and the table grows
 * past the fitted size as before (a doubling from the small index). */
static void test_fit_after_reserve(void)
{
    hl_table_opts o = small_opts(0, 0);
    hl_table *tbl = hl_table_create(&o, NULL, 0);
    char nm[32];
    hl_table_stats big, fit;
    CHECK(hl_table_reserve(tbl, 1000000) == 0);
    for (int u = 0; u < 3000; u++) {
        hl_event e = one(nm, u % N_ITEMS, u, u);
        e.user_len = (uint32_t)snprintf(nm, sizeof nm, "user-%07d", u);
        hl_table_apply(tbl, &e, 1, e_in, N_ITEMS, NULL);
        if (u == 99) {
            hl_table_stats_get(tbl, &big);
            CHECK(hl_table_fit(tbl) == 0);
            hl_table_stats_get(tbl, &fit);
        }
    }
    CHECKF(big.bytes - fit.bytes > 8000000, "fit gave back %zu bytes of %zu",
           big.bytes - fit.bytes, big.bytes);
    int found = 0;
    for (int u = 0; u < 3000; u++) {
        int n = snprintf(nm, sizeof nm, "user-%07d", u);
        found += hl_table_find(tbl, nm, (size_t)n) >= 0;
    }
    CHECKF(found == 3000, "%d of 3000 users found after the fit and the growth", found);
    hl_table_destroy(tbl);
}

int main(void)
{
    RUN(test_idempotence);
    RUN(test_apply_rows);
    RUN(test_unknown_items);
    RUN(test_history_ring);
    RUN(test_dirty_set);
    RUN(test_capacity_eviction);
    RUN(test_mass_eviction);
    RUN(test_long_user_ids);
    RUN(test_bad_user_len);
    RUN(test_non_finite_guard);
    RUN(test_guard_allows_for_base_weight);
    RUN(test_create_rejects);
    RUN(test_stats_bytes);
    RUN(test_evict_hook_and_remove);
    RUN(test_fit_after_reserve);
    TEST_EXIT();
}
