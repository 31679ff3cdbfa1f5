/* lru.c - the k smallest (seq, row) pairs offered by a scan, then handed
 * out smallest first. See lru.h for why table.c's eviction stays exact when
 * the scan is spread over many apply calls.
 *
 * The scan keeps a max-heap of k entries, so an offer is one comparison with
 * the top in the common case. Finishing turns that array into a min-heap in
 * place (Floyd's bottom-up heapify, O(k)); pops are O(log k). */
#include "lru.h"

#include <stdlib.h>

static int before(hl_lru_ent a, hl_lru_ent b, int max_heap)
{
    return max_heap ? a.seq > b.seq : a.seq < b.seq;
}

static void sift_down(hl_lru_ent *h, size_t n, size_t i, int max_heap)
{
    for (;;) {
        size_t l = 2 * i + 1, top = i;
        if (l < n && before(h[l], h[top], max_heap)) top = l;
        if (l + 1 < n && before(h[l + 1], h[top], max_heap)) top = l + 1;
        if (top == i) return;
        hl_lru_ent t = h[i]; h[i] = h[top]; h[top] = t;
        i = top;
    }
}

static void sift_up(hl_lru_ent *h, size_t i)
{
    while (i > 0 && h[(i - 1) / 2].seq < h[i].seq) {
        hl_lru_ent t = h[i]; h[i] = h[(i - 1) / 2]; h[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
}

void hl_lru_init(hl_lru *l, size_t k)
{
    *l = (hl_lru){ .k = k > 0 ? k : 1 };
}

void hl_lru_free(hl_lru *l)
{
    free(l->pool);
    free(l->scan);
    hl_lru_init(l, l->k);
}

int hl_lru_begin(hl_lru *l, uint64_t s0)
{
    if (l->scan == NULL && (l->scan = malloc(l->k * sizeof *l->scan)) == NULL)
        return HL_ENOMEM;
    if (l->pool == NULL && (l->pool = malloc(l->k * sizeof *l->pool)) == NULL)
        return HL_ENOMEM;
    l->scan_n = 0;
    l->s0 = s0;
    l->pos = 0;
    l->scanning = 1;
    return 0;
}

void hl_lru_offer(hl_lru *l, uint32_t row, uint64_t seq)
{
    if (seq >= l->s0) return;                 /* touched since the scan began */
    hl_lru_ent e = { seq, row };
    if (l->scan_n < l->k) {
        l->scan[l->scan_n] = e;
        sift_up(l->scan, l->scan_n++);
    } else if (seq < l->scan[0].seq) {
        l->scan[0] = e;
        sift_down(l->scan, l->scan_n, 0, 1);
    }
}

void hl_lru_finish(hl_lru *l)
{
    hl_lru_ent *t = l->pool;
    l->pool = l->scan;
    l->pool_n = l->scan_n;
    l->scan = t;
    l->scan_n = 0;
    l->scanning = 0;
    for (size_t i = l->pool_n / 2; i-- > 0;)
        sift_down(l->pool, l->pool_n, i, 0);
}

int hl_lru_pop(hl_lru *l, hl_lru_ent *out)
{
    if (l->pool_n == 0) return 0;
    *out = l->pool[0];
    l->pool[0] = l->pool[--l->pool_n];
    sift_down(l->pool, l->pool_n, 0, 0);
    return 1;
}

size_t hl_lru_bytes(const hl_lru *l)
{
    return (l->pool != NULL) * l->k * sizeof *l->pool
         + (l->scan != NULL) * l->k * sizeof *l->scan;
}
