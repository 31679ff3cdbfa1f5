/* table_test_util.h - what test_table.c (the table against its reference model)
 * and test_table_cases.c (its cases one by one) share: the shape, a seeded
 * stream, the items' e_in, user names and the small tables' options. */
#ifndef HL_TABLE_TEST_UTIL_H
#define HL_TABLE_TEST_UTIL_H

#include "test.h"
#include "table.h"

#include <stdint.h>
#include <stdio.h>

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
static inline uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static inline double unit(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }

static float e_in[N_ITEMS * DIM];

static inline void fill_items(void)
{
    for (int i = 0; i < N_ITEMS * DIM; i++) e_in[i] = (float)(unit() * 2 - 1);
}

/* User number -> id string: short ones, and every 97th long enough (120
 * bytes) to take the table's out-of-row key path. */
static inline size_t user_name(int u, char *buf)
{
    if (u % 97 == 0)
        return (size_t)snprintf(buf, 200, "long-user-%0110d", u);
    return (size_t)snprintf(buf, 200, "u%d", u);
}

static inline hl_table_opts small_opts(size_t max_users, float evict_mass)
{
    hl_table_opts o = { .history = HIST, .max_users = max_users,
                        .evict_mass = evict_mass };
    int rc = hl_decay_init(&o.decay, HEADS, DIM, hl_default_half_life_ms, NULL, 0);
    CHECK(rc == 0);
    return o;
}

static inline int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

#endif
