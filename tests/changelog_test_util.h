/* changelog_test_util.h - what test_changelog.c (over the mock broker)
 * and test_changelog_replay.c (offline replays) share: the model's shape,
 * its e_in, and a user's events applied to a table. Header-only, static
 * inline: each test is one translation unit. */
#ifndef HL_CHANGELOG_TEST_UTIL_H
#define HL_CHANGELOG_TEST_UTIL_H

#include "table.h"

#include <string.h>

#define DIM     4
#define N_ITEMS 8
#define FP      7

static float e_in[N_ITEMS * DIM];

static inline void ct_init_e_in(void)
{
    for (int i = 0; i < N_ITEMS * DIM; i++)
        e_in[i] = (float)((i * 37) % 17) / 17.0f - 0.5f;
}

/* Events at offsets [from, to) of user to tbl (and to copy, if given). */
static inline void events(hl_table *tbl, hl_table *copy, const char *user, int64_t from,
                          int64_t to)
{
    for (int64_t off = from; off < to; off++) {
        hl_event ev = {.user = user, .user_len = (uint32_t)strlen(user),
                       .item = (int32_t)(off % N_ITEMS), .w = 1.0f,
                       .ts_ms = 1700000000000LL + off * 1000, .offset = off};
        hl_table_apply(tbl, &ev, 1, e_in, N_ITEMS, NULL);
        if (copy) hl_table_apply(copy, &ev, 1, e_in, N_ITEMS, NULL);
    }
}

static inline int has(const hl_table *tbl, const char *user)
{
    return hl_table_find(tbl, user, strlen(user)) >= 0;
}

#endif
