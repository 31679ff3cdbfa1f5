/* test_swap.c - a shard's live migration into a new model (worker/swap.c):
 * the sweep's slices are bounded by time, not by a count of rows; the
 * records a batch may take follow the measured cost per row; the old
 * model is released in a tick of its own; and the rows end exactly where
 * migrating the whole table at once puts them (core/migrate.c). A second
 * swap during a move: test_swap_chain.c. */
#define T_SUITE "swap"
#include "test.h"

#include "log.h"
#include "models.h"
#include "shard.h"
#include "swap_test_util.h"

#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

/* Small budgets: every slice moves rows and stops near its budget (on
 * the thread's CPU time, checked loosely: a test machine is shared); the
 * release comes in a tick of its own; the state equals the all-at-once
 * migration. */
static void test_slices_bounded_by_time(void)
{
    fixture f;
    CHECK(fixture_open(&f) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_mref *b = hl_models_acquire(f.ms);
    plain_state(&f, b);
    CHECK(hl_shard_swap_batch_cap(f.sh, HL_SWAP_BATCH_BUDGET_US) == INT_MAX);
    CHECK(hl_shard_swap_begin(f.sh, b) == 0);
    int ticks = 0, saw_release = 0;
    while (f.sh->mig_from != NULL && ticks < 100000) {
        int releasing = f.sh->mig_finished;
        size_t rows = hl_shard_swap_tick(f.sh, 300);
        if (releasing) {
            saw_release = 1;
            CHECK(rows == 0 && f.sh->mig_from == NULL);
        } else if (!f.sh->mig_finished) {
            CHECKF(rows > 0, "tick %d moved no row", ticks);
        }
        ticks++;
    }
    CHECK(saw_release);
    /* 6000 rows at a few us each do not fit one 300 us slice */
    CHECKF(ticks > 3, "%d ticks: the slices were not bounded", ticks);
    check_same_state(&f);
    hl_mref_release(b);
    fixture_close(&f);
}

/* The batch cap: within its bounds while migrating, shrinking with the
 * budget, and batches of stale users end in the same state as above. */
static void test_batch_cap_follows_cost(void)
{
    fixture f;
    CHECK(fixture_open(&f) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_mref *b = hl_models_acquire(f.ms);
    CHECK(hl_shard_swap_begin(f.sh, b) == 0);
    int big = hl_shard_swap_batch_cap(f.sh, 1000000), small = hl_shard_swap_batch_cap(f.sh, 1);
    CHECK(big == HL_SWAP_BATCH_MAX);
    CHECK(small == HL_SWAP_BATCH_MIN);
    int cap = hl_shard_swap_batch_cap(f.sh, HL_SWAP_BATCH_BUDGET_US);
    CHECK(cap >= HL_SWAP_BATCH_MIN && cap <= HL_SWAP_BATCH_MAX);
    /* batches of users the sweep has not reached: each migrates its rows
     * first, and the cost measured replaces the starting guess */
    double start = f.sh->mig_row_us;
    for (int i = 0; i < 6; i++) {
        int n = hl_shard_swap_batch_cap(f.sh, HL_SWAP_BATCH_BUDGET_US);
        feed(f.sh, b->m, 20 * N_USERS + i * 1000, 20 * N_USERS + i * 1000 + n, n);
    }
    CHECK(f.sh->mig_row_us != start && f.sh->mig_row_us > 0);
    CHECK(f.sh->mig_rows > 0);
    hl_shard_swap_finish(f.sh);
    CHECK(f.sh->mig_from == NULL);
    CHECK(hl_shard_swap_batch_cap(f.sh, HL_SWAP_BATCH_BUDGET_US) == INT_MAX);
    hl_mref_release(b);
    fixture_close(&f);
}

/* A model of another dim, number of heads and half-lives goes live in a
 * running shard: users move into a table of the new shape when a batch
 * touches them (before their event) and by the time-bounded sweep; none is
 * lost or doubled at any point; each ends as hl_migration_row_into of its
 * old row, then the events after the swap under B (the all-at-once
 * hl_migration_table_into and the same events). */
/* After batches touched users 0..n_touch-1 mid-swap: those are in the new
 * table only, the rest in the old only; none lost, none in both. */
static void check_touched_moved(hl_shard *sh, int n_touch)
{
    int lost = 0, doubled = 0, early = 0;
    for (int u = 0; u < N_USERS; u++) {
        int w = where(sh, u);
        lost += w == 0;
        doubled += w == 3;
        early += u < n_touch ? w != 1 : w != 2;
    }
    CHECKF(lost == 0 && doubled == 0 && early == 0, "lost %d doubled %d misplaced %d",
           lost, doubled, early);
}

/* The sweep moves the rest in bounded slices, each moving someone until
 * the old table is released, and never loses or doubles a user. */
static void sweep_checked(hl_shard *sh)
{
    int ticks = 0, lost = 0;
    while (sh->mig_from != NULL && ticks < 100000) {
        int releasing = sh->mig_finished;
        size_t rows = hl_shard_swap_tick(sh, 300);
        if (!releasing && !sh->mig_finished)
            CHECKF(rows > 0, "tick %d moved no user", ticks);
        if (ticks % 7 == 0 && sh->mig_from != NULL)
            for (int u = 0; u < N_USERS; u++)
                if (where(sh, u) == 0 || where(sh, u) == 3) lost++;
        ticks++;
    }
    CHECKF(lost == 0, "%d users lost or doubled during the sweep", lost);
    CHECKF(ticks > 3, "%d ticks: the slices were not bounded", ticks);
}

static void test_reshape_moves_every_user(void)
{
    fixture f;
    CHECK(fixture_open_shape(&f, &SHAPE_R) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_mref *b = hl_models_acquire(f.ms);
    CHECK(b->mi->dim == SHAPE_R.dim && hl_migration_reshapes(b->from_prev));
    char item[16];
    for (int i = 0; i < 12 * N_USERS; i++) {
        hl_event ev = event_at(f.a, i, item);
        hl_table_apply(f.plain, &ev, 1, hl_model_e_in(f.a), N_ITEMS, NULL);
    }
    hl_table *want = new_table_shape(&SHAPE_R);
    CHECK(hl_migration_table_into(b->from_prev, f.plain, want) == N_USERS);
    hl_table *old = f.sh->tbl;

    CHECK(hl_shard_swap_begin(f.sh, b) == 0);
    CHECK(f.sh->old_tbl == old && f.sh->tbl != old);
    CHECK(hl_table_opts_get(f.sh->tbl)->decay.dim == SHAPE_R.dim &&
          hl_table_opts_get(f.sh->tbl)->decay.n_heads == SHAPE_R.n_heads);
    /* batches touch users 0..1999 (events of the stream after the swap) */
    int from = 20 * N_USERS, n_touch = 2000;
    feed(f.sh, b->m, from, from + n_touch, 256);
    for (int i = from; i < from + n_touch; i++) {
        hl_event ev = event_at(b->m, i, item);
        hl_table_apply(want, &ev, 1, hl_model_e_in(b->m), N_ITEMS, NULL);
    }
    CHECKF(f.sh->mig_rows == (uint64_t)n_touch, "%llu moved by touch, want %d",
           (unsigned long long)f.sh->mig_rows, n_touch);
    check_touched_moved(f.sh, n_touch);
    sweep_checked(f.sh);
    CHECK(f.sh->old_tbl == NULL && f.sh->mig_from == NULL);
    CHECKF(hl_counter_get(f.sh->c_migrated) == N_USERS, "migrated counter %llu",
           (unsigned long long)hl_counter_get(f.sh->c_migrated));
    hl_table_stats st;
    hl_table_stats_get(f.sh->tbl, &st);
    CHECKF(st.users == N_USERS, "%zu users in the new table", st.users);
    check_rows_as(f.sh->tbl, want, &SHAPE_R);
    /* events keep flowing into the new shape after the migration */
    feed(f.sh, b->m, from + n_touch, from + n_touch + 100, 100);
    hl_mref_release(b);
    hl_table_destroy(want);
    fixture_close(&f);
}

/* A refused list's user is looked up by key to be refreshed again
 * (hl_publish_again): mid-reshape, a user not moved yet is in the old
 * table, and a lookup of the new one alone took it for a user no longer
 * owned, so its list was dropped. It is found, moved (once) and counted;
 * a user the shard never held is still not. */
static void test_reshape_find_moves_user(void)
{
    fixture f;
    CHECK(fixture_open_shape(&f, &SHAPE_R) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_mref *b = hl_models_acquire(f.ms);
    CHECK(hl_shard_swap_begin(f.sh, b) == 0 && f.sh->old_tbl != NULL);
    const char *user = g_users[7];
    CHECK(where(f.sh, 7) == 2);
    int64_t row = hl_shard_swap_find(f.sh, user, strlen(user));
    CHECKF(row >= 0, "a user not moved yet not found (row %lld)", (long long)row);
    CHECKF(where(f.sh, 7) == 1, "user in tables %d, want the new one only", where(f.sh, 7));
    CHECK(hl_shard_swap_find(f.sh, user, strlen(user)) == row);
    CHECK(f.sh->mig_rows == 1 && hl_counter_get(f.sh->c_migrated) == 1);
    CHECK(hl_shard_swap_find(f.sh, "nobody", 6) == -1);
    hl_shard_swap_finish(f.sh);
    hl_mref_release(b);
    fixture_close(&f);
}

/* A stop (or a snapshot, a revocation) mid-reshape finishes the move: every
 * user in the new table, none in two. */
static void count_evict(void *arg, const char *user, uint32_t user_len)
{
    (void)user; (void)user_len;
    (*(int *)arg)++;
}

static void test_reshape_finish_moves_rest(void)
{
    fixture f;
    CHECK(fixture_open_shape(&f, &SHAPE_R) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_mref *b = hl_models_acquire(f.ms);
    int evicted = 0;            /* the changelog's hook: the new table reports too */
    hl_table_on_evict(f.sh->tbl, count_evict, &evicted);
    CHECK(hl_shard_swap_begin(f.sh, b) == 0);
    void *arg = NULL;
    CHECK(hl_table_evict_hook(f.sh->tbl, &arg) == count_evict && arg == &evicted);
    hl_shard_swap_tick(f.sh, 100);
    CHECK(f.sh->old_tbl != NULL);
    hl_shard_swap_finish(f.sh);
    CHECK(f.sh->old_tbl == NULL && f.sh->mig_from == NULL && f.sh->mref == b);
    CHECKF(evicted == 0, "%d moves reported as evictions (tombstones)", evicted);
    int ok = 0;
    for (int u = 0; u < N_USERS; u++)
        ok += where(f.sh, u) == 1;
    CHECKF(ok == N_USERS, "%d of %d users in the new table", ok, N_USERS);
    CHECK(hl_counter_get(f.sh->c_migrated) == N_USERS);
    hl_mref_release(b);
    fixture_close(&f);
}

/* The row view of user u in the shard's (new) table. */
static uint32_t view_of(const hl_shard *sh, int u, hl_row_view *v)
{
    int64_t r = hl_table_find(sh->tbl, g_users[u], strlen(g_users[u]));
    CHECKF(r >= 0, "user %d not in the table", u);
    if (r >= 0)
        hl_table_view(sh->tbl, (uint32_t)r, v);
    return r >= 0 ? (uint32_t)r : 0;
}

/* recs.min.interval.ms across a reshape: the gate keys users by row id,
 * which a move changes. Users waiting before the swap are due at once
 * after their move (their list goes out from the new model), the offset
 * stays bounded by their wait until that list is taken, and a user
 * refreshed recently keeps its interval. */
static void test_reshape_carries_gate(void)
{
    fixture f;
    CHECK(fixture_open_shape(&f, &SHAPE_R) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_mref *b = hl_models_acquire(f.ms);
    hl_gate *g = hl_gate_create(1000000);
    CHECK(g != NULL && f.sh->gate == NULL);
    f.sh->gate = g;
    hl_row_view v;
    int n_wait = 10, n_recent = 10, waiting = 0;
    for (int u = 0; u < n_wait + n_recent; u++) {
        uint32_t r = view_of(f.sh, u, &v);
        hl_gate_refreshed(g, r, &v);
        if (u < n_wait)             /* an event within the interval: it waits */
            waiting += hl_gate_pass(g, r, &v, v.t_ref_ms + 1, 100 + u) == 0;
    }
    CHECK(waiting == n_wait);
    f.sh->next_offset = 5000;
    CHECK(hl_shard_publishable_offset(f.sh) == 100);
    CHECK(hl_shard_swap_begin(f.sh, b) == 0);
    CHECK(f.sh->old_gate == g && f.sh->gate != NULL && f.sh->gate != g);
    CHECK(hl_gate_interval(f.sh->gate) == 1000000);
    hl_shard_swap_tick(f.sh, 100);
    CHECKF(hl_shard_publishable_offset(f.sh) == 100, "mid-move bound %lld",
           (long long)hl_shard_publishable_offset(f.sh));
    hl_shard_swap_finish(f.sh);
    CHECK(f.sh->old_gate == NULL && f.sh->old_tbl == NULL);
    CHECKF(hl_shard_publishable_offset(f.sh) == 100, "after the move, bound %lld",
           (long long)hl_shard_publishable_offset(f.sh));
    /* due at once, whatever the shard's event time: exactly the waiting users */
    uint32_t rows[64];
    int n = hl_gate_take_due(f.sh->gate, f.sh->tbl, rows, 64, 0), ok = 0;
    for (int i = 0; i < n; i++) {
        hl_table_view(f.sh->tbl, rows[i], &v);
        for (int u = 0; u < n_wait; u++)
            ok += v.user_len == strlen(g_users[u]) && !memcmp(v.user, g_users[u], v.user_len);
    }
    CHECKF(n == n_wait && ok == n_wait, "%d due (%d of them waiting users), want %d", n, ok,
           n_wait);
    CHECK(hl_shard_publishable_offset(f.sh) == 5000);
    /* the recently refreshed keep their interval; a user never refreshed goes at once */
    uint32_t r = view_of(f.sh, n_wait, &v);
    CHECK(hl_gate_pass(f.sh->gate, r, &v, v.t_ref_ms + 1, 6000) == 0);
    r = view_of(f.sh, n_wait + n_recent + 5, &v);
    CHECK(hl_gate_pass(f.sh->gate, r, &v, v.t_ref_ms + 1, 6000) == 1);
    hl_mref_release(b);
    fixture_close(&f);
}

/* A setup that cannot follow a reshape (reshape_refused) refuses such a
 * model, counted, and keeps serving; a model of the same shape still goes
 * live there. */
static void test_reshape_refused_when_asked(void)
{
    char err[512];
    unlink(LIVE);
    CHECK(write_model(PATH_A, 0, "A") == 0 && write_model_shape(PATH_B, 50, "B", &SHAPE_R) == 0);
    hl_model *a = hl_model_open(PATH_A, err, sizeof err);
    CHECK(a != NULL && link(PATH_A, LIVE) == 0);
    if (a == NULL) return;
    hl_metrics *reg = hl_metrics_create();
    hl_models_opts mo = {.path = LIVE, .check_ms = 0, .reg = reg,
                         .reshape_refused = "not in this setup"};
    hl_models *ms = hl_models_create(&mo, a, err, sizeof err);
    CHECK(rename(PATH_B, LIVE) == 0);
    CHECK(hl_models_check(ms, 0, 1) < 0);
    hl_mref *r = hl_models_acquire(ms);
    CHECK(r->gen == 1 && strcmp(r->mi->version, "A") == 0);
    hl_mref_release(r);
    CHECK(write_model(PATH_B, 50, "B2") == 0 && rename(PATH_B, LIVE) == 0);
    CHECK(hl_models_check(ms, 0, 1) == 1);
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_metrics_destroy(reg);
    unlink(PATH_A);
    unlink(LIVE);
}

/* A swap to another shape puts a new table, with its own eviction counts
 * from 0, under the shard: the worker-wide evictions counter must not go
 * down by what the old table counted (it wrapped to a huge delta and
 * Prometheus saw a reset), and the new table's evictions still count. */
static void test_reshape_keeps_eviction_counts(void)
{
    fixture f;
    g_max_users = N_USERS - 500;             /* the first table evicts */
    int rc = fixture_open_shape(&f, &SHAPE_R);
    g_max_users = 0;
    CHECK(rc == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_counter *ev[2] = {
        hl_metrics_counter(f.reg, "halflife_evictions_total", "", "reason=\"mass\""),
        hl_metrics_counter(f.reg, "halflife_evictions_total", "", "reason=\"capacity\"")};
    hl_shard_publish_stats(f.sh, ev);
    uint64_t before = hl_counter_get(ev[1]);
    CHECKF(before >= 500, "the first table evicted %llu", (unsigned long long)before);
    hl_mref *b = hl_models_acquire(f.ms);
    CHECK(hl_shard_swap_begin(f.sh, b) == 0 && f.sh->old_tbl != NULL);
    hl_shard_publish_stats(f.sh, ev);
    CHECKF(hl_counter_get(ev[1]) == before, "capacity evictions %llu after the swap began, "
           "%llu before", (unsigned long long)hl_counter_get(ev[1]), (unsigned long long)before);
    hl_shard_swap_finish(f.sh);
    hl_shard_publish_stats(f.sh, ev);
    CHECK(hl_counter_get(ev[1]) >= before && hl_counter_get(ev[0]) < (1ull << 40));
    hl_mref_release(b);
    fixture_close(&f);
}


/* Once the replaced model is out of use (the shard moved off it) and the
 * set releases it, the map from it goes too: its delta table (the old
 * model's items x dim, in huge pages) must not stay for as long as the
 * new model serves (models.c: "the maps from it go first"). */
static void test_map_from_released_model_dropped(void)
{
    fixture f;
    CHECK(fixture_open(&f) == 0);
    if (t_case_failed) { fixture_close(&f); return; }
    hl_mref *b = hl_models_acquire(f.ms);
    CHECK(b->from_prev != NULL);
    CHECK(hl_shard_swap_begin(f.sh, b) == 0);
    hl_shard_swap_finish(f.sh);
    CHECK(f.sh->mig_from == NULL);
    /* the next main-loop pass releases A: nobody but the set holds it */
    CHECK(hl_models_check(f.ms, 0, 0) == 0);
    CHECKF(b->from_prev == NULL, "the map from the released model A is still held by B");
    hl_mref_release(b);
    fixture_close(&f);
}

/* The gauge line "name value" of reg's /metrics text, as a number; -1 when
 * absent. */
static double gauge_of(hl_metrics *reg, const char *name)
{
    char *text = NULL;
    size_t len = 0;
    double v = -1;
    if (hl_metrics_render(reg, &text, &len) != 0)
        return -1;
    for (char *l = text; l != NULL && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (strncmp(l, name, strlen(name)) == 0 && l[strlen(name)] == ' ')
            v = strtod(l + strlen(name) + 1, NULL);
    free(text);
    return v;
}

/* A model renamed over model.path after the first one was opened and
 * before the set was made (the index build, up to tens of seconds at
 * millions of items) is a change: the first periodic check loads it.
 * halflife_model_file_timestamp_seconds is the served file's own time. */
static void test_rename_before_create_is_seen(void)
{
    char err[512];
    struct stat st;
    unlink(LIVE);
    CHECK(write_model(PATH_A, 0, "A") == 0 && write_model(PATH_B, 50, "B") == 0);
    CHECK(link(PATH_A, LIVE) == 0);
    struct timespec old[2] = {{.tv_sec = 1700000000}, {.tv_sec = 1700000000}};
    CHECK(utimensat(AT_FDCWD, LIVE, old, 0) == 0);
    hl_model *a = hl_model_open(LIVE, err, sizeof err);
    CHECK(a != NULL && rename(PATH_B, LIVE) == 0 && stat(LIVE, &st) == 0);
    if (a == NULL) return;
    hl_metrics *reg = hl_metrics_create();
    hl_models_opts mo = {.path = LIVE, .check_ms = 1000, .reg = reg};
    hl_models *ms = hl_models_create(&mo, a, err, sizeof err);
    CHECKF(gauge_of(reg, "halflife_model_file_timestamp_seconds") == 1700000000.0,
           "file time %.3f before the check", gauge_of(reg, "halflife_model_file_timestamp_seconds"));
    CHECKF(hl_models_check(ms, 2000, 0) == 1, "the model renamed over the path before the "
           "set was made was not loaded at the first check");
    hl_mref *r = hl_models_acquire(ms);
    CHECK(strcmp(r->mi->version, "B") == 0);
    hl_mref_release(r);
    double want = (double)st.st_mtim.tv_sec + (double)st.st_mtim.tv_nsec / 1e9;
    CHECKF(fabs(gauge_of(reg, "halflife_model_file_timestamp_seconds") - want) < 1e-3,
           "file time %.3f, B's mtime %.3f",
           gauge_of(reg, "halflife_model_file_timestamp_seconds"), want);
    CHECK(hl_models_check(ms, 4000, 0) == 0);          /* unchanged since */
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_metrics_destroy(reg);
    unlink(PATH_A);
    unlink(LIVE);
}

int main(void)
{
    hl_log_set_level(HL_LOG_WARN);
    for (int u = 0; u < N_USERS; u++)
        snprintf(g_users[u], sizeof g_users[u], "u%d", u);
    RUN(test_slices_bounded_by_time);
    RUN(test_batch_cap_follows_cost);
    RUN(test_reshape_moves_every_user);
    RUN(test_reshape_finish_moves_rest);
    RUN(test_reshape_find_moves_user);
    RUN(test_reshape_carries_gate);
    RUN(test_reshape_refused_when_asked);
    RUN(test_reshape_keeps_eviction_counts);
    RUN(test_map_from_released_model_dropped);
    RUN(test_rename_before_create_is_seen);
    unlink(PATH_B);
    TEST_EXIT();
}
