/*
 * topkey.h - the running top-K shared by the exact ranker and the index: a
 * min-heap of 64-bit keys whose root is the worst entry kept.
 */
#ifndef HL_TOPKEY_H
#define HL_TOPKEY_H

#include <stdint.h>
#include <string.h>

/* An entry is one 64-bit key that orders like (score, -item): the score's
 * bits made to sort as unsigned integers above, the complement of the
 * item below. A larger key is a better entry (higher score, or equal score
 * and lower row), so the heap compares integers, not pairs. */
static inline uint64_t make_key(float score, int32_t item)
{
    uint32_t u;
    if (score == 0.0f)
        score = 0.0f;                         /* -0 and +0 are one score */
    memcpy(&u, &score, sizeof u);
    u = (u & 0x80000000u) ? ~u : u | 0x80000000u;
    return (uint64_t)u << 32 | (uint32_t)~(uint32_t)item;
}

static inline float key_score(uint64_t key)
{
    uint32_t u = (uint32_t)(key >> 32);
    float f;
    u = (u & 0x80000000u) ? u & 0x7fffffffu : ~u;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline int32_t key_item(uint64_t key)
{
    return (int32_t)~(uint32_t)key;
}

static inline void sift_down(uint64_t *h, int n, int i)
{
    uint64_t key = h[i];

    for (;;) {
        int c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && h[c + 1] < h[c])
            c++;
        if (h[c] >= key)
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = key;
}

static inline void sift_up(uint64_t *h, int i)
{
    uint64_t key = h[i];

    while (i > 0) {
        int p = (i - 1) / 2;
        if (h[p] <= key)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = key;
}

/* Keeps the k largest keys in the min-heap h of *n entries. */
static inline void push_best(uint64_t *h, int *n, int k, uint64_t key)
{
    if (*n < k) {
        h[*n] = key;
        sift_up(h, (*n)++);
    } else if (key > h[0]) {
        h[0] = key;
        sift_down(h, *n, 0);
    }
}

/* Sorts a heap in place, best first (heapsort: the worst goes to the end). */
static inline void heap_sort(uint64_t *h, int n)
{
    for (int end = n - 1; end > 0; end--) {
        uint64_t key = h[0];
        h[0] = h[end];
        h[end] = key;
        sift_down(h, end, 0);
    }
}

/* qsort's order for keys: best first. */
static inline int topkey_cmp_desc(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

#endif
