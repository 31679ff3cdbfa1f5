/* table_util.h - what the tests of table state on disk share (test_persist.c,
 * and test_snapshot*.c through snapshot_util.h): a synthetic event stream,
 * applying it to a table, comparing two tables row by row, and a scratch
 * directory.
 *
 * The including file first defines DIM, N_HEADS, N_ITEMS, N_USERS and
 * N_EVENTS (the stream's shape) and SCRATCH_NAME (the scratch directory's
 * prefix), includes test.h, then calls make_events() once before its
 * cases. rnd() goes on from where make_events() left it. */
#ifndef HL_TABLE_UTIL_H
#define HL_TABLE_UTIL_H

#include "table.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float    e_in[N_ITEMS * DIM];
static hl_event events[N_EVENTS];
static char     user_names[N_USERS][24];

static uint64_t rng_state;

static inline uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Fills e_in and events from seed: skewed users (every other event goes
 * to one of the first n_hot), times mostly rising with late events mixed
 * in, some items outside the model; offsets 0..N_EVENTS-1. */
static inline void make_events(uint64_t seed, int n_hot)
{
    int64_t t = 1700000000000LL;
    rng_state = seed;
    for (int i = 0; i < N_ITEMS * DIM; i++)
        e_in[i] = (float)((double)(rnd() % 2000) / 1000.0 - 1.0);
    for (int u = 0; u < N_USERS; u++)
        snprintf(user_names[u], sizeof user_names[u], "user-%d", u);
    for (int i = 0; i < N_EVENTS; i++) {
        int u = (int)(rnd() % N_USERS);
        if (rnd() % 2) u = u % n_hot;
        t += (int64_t)(rnd() % 60000);
        hl_event *e = &events[i];
        e->user = user_names[u];
        e->user_len = (uint32_t)strlen(user_names[u]);
        e->item = rnd() % 10 == 0 ? -1 : (int32_t)(rnd() % N_ITEMS);
        e->type = (uint8_t)(rnd() % HL_N_TYPES);
        e->item_key = rnd() | 1;     /* any id, also one the model lacks */
        e->w = 0.5f + (float)(rnd() % 100) / 50.0f;
        e->ts_ms = rnd() % 8 == 0 ? t - (int64_t)(rnd() % 7200000) : t;
        e->offset = i;
    }
}

/* Applies events [from, to) in batches of 97. */
static inline void apply_range(hl_table *tbl, int from, int to)
{
    for (int i = from; i < to; i += 97) {
        int n = to - i < 97 ? to - i : 97;
        hl_table_apply(tbl, events + i, n, e_in, N_ITEMS, NULL);
    }
}

/* Same users with bit-identical state; active_seq too if with_seq. */
static inline int rows_equal(const hl_row_view *a, const hl_row_view *b, int with_seq)
{
    if (a->t_ref_ms != b->t_ref_ms || a->last_offset != b->last_offset ||
        a->n_hist != b->n_hist || (with_seq && a->active_seq != b->active_seq) ||
        memcmp(a->m, b->m, N_HEADS * sizeof(float)) != 0 ||
        memcmp(a->s, b->s, (size_t)N_HEADS * DIM * sizeof(float)) != 0)
        return 0;
    for (int i = 0; i < a->n_hist; i++) {
        int x = hl_row_hist_index(a, i), y = hl_row_hist_index(b, i);
        if (a->hist_item[x] != b->hist_item[y] || a->hist_type[x] != b->hist_type[y] ||
            a->hist_ts_ms[x] != b->hist_ts_ms[y])
            return 0;
        /* Keys and weights (format 2): bit for bit, NAN (unknown) included. */
        if (a->hist_key && b->hist_key && (a->hist_key[x] != b->hist_key[y] ||
            memcmp(&a->hist_w[x], &b->hist_w[y], sizeof(float)) != 0))
            return 0;
    }
    return 1;
}

/* The same users, each with equal rows (rows_equal); says which differs. */
static inline int tables_equal(const hl_table *a, const hl_table *b, int with_seq)
{
    hl_table_stats sa, sb;
    hl_table_stats_get(a, &sa);
    hl_table_stats_get(b, &sb);
    if (sa.users != sb.users) {
        printf("    users %zu vs %zu\n", sa.users, sb.users);
        return 0;
    }
    for (uint32_t r = 0; r < hl_table_row_limit(a); r++) {
        if (!hl_table_row_live(a, r)) continue;
        hl_row_view va, vb;
        hl_table_view(a, r, &va);
        int64_t rb = hl_table_find(b, va.user, va.user_len);
        if (rb < 0) return 0;
        hl_table_view(b, (uint32_t)rb, &vb);
        if (!rows_equal(&va, &vb, with_seq)) {
            printf("    user %.*s differs\n", (int)va.user_len, va.user);
            return 0;
        }
    }
    return 1;
}

/* ---- scratch directory -------------------------------------------------- */

static char dir[512];

/* Removes the scratch directory, if there is one: the end of main(). */
static inline void remove_dir(void)
{
    char cmd[600];
    if (!dir[0]) return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) perror("rm");
}

/* Removes the previous scratch directory and makes a new one under
 * $HL_BUILD (else /tmp). */
static inline void fresh_dir(void)
{
    const char *b = getenv("HL_BUILD");
    remove_dir();
    snprintf(dir, sizeof dir, "%s/" SCRATCH_NAME ".XXXXXX", b && *b ? b : "/tmp");
    if (mkdtemp(dir) == NULL) perror("mkdtemp");
}

/* Files in the scratch directory whose name ends with suffix. */
static inline long count_files(const char *suffix)
{
    char cmd[700], buf[64];
    snprintf(cmd, sizeof cmd, "ls '%s' | grep -c '%s$'", dir, suffix);
    FILE *f = popen(cmd, "r");
    long n = -1;
    if (f && fgets(buf, sizeof buf, f)) n = atol(buf);
    if (f) pclose(f);
    return n;
}

#endif
