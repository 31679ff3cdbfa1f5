/* eval_pop.c - the popularity baseline of `halflife eval`: items
 * ranked by count, under the same protocol and exclusions as the model.
 *
 * In loo the counts are those of every event but the targets (on Beauty
 * HR@10 0.0135, NDCG@10 0.0061; the published 0.0152 / 0.0068 is exactly
 * what counting the targets too gives: --popularity-counts all); in
 * prequential the running counts before the event. Equal counts rank the
 * lower row first, the ranker's tie rule (without a model, rows number the
 * items in order of first appearance in the file).
 *
 * loo's counts are fixed: one sort, then a walk per user. The prequential
 * counts change after every event, so they live in a segment tree whose
 * nodes hold the best item below them: an update is O(log n), and the top
 * k comes from popping the best (taking it out of the tree) until k
 * non-excluded items are out, then putting the popped back. */
#include "eval_internal.h"

#include <stdlib.h>
#include <string.h>

static int pop_better(const popularity *p, int32_t a, int32_t b)
{
    if (a < 0) return 0;
    if (b < 0) return 1;
    return p->count[a] > p->count[b] || (p->count[a] == p->count[b] && a < b);
}

/* Recomputes the leaf of item and its ancestors. */
static void pop_fix(popularity *p, int32_t item)
{
    int32_t i = p->size + item;
    p->tree[i] = p->out[item] ? -1 : item;
    for (i >>= 1; i >= 1; i >>= 1) {
        int32_t l = p->tree[2 * i], r = p->tree[2 * i + 1];
        p->tree[i] = pop_better(p, l, r) ? l : r;
    }
}

static int pop_init_tree(popularity *p, int max_popped)
{
    for (p->size = 1; p->size < p->n; p->size *= 2)
        ;
    p->tree = malloc(2 * (size_t)p->size * sizeof *p->tree);
    p->out = calloc((size_t)p->n, 1);
    p->popped = malloc((size_t)max_popped * sizeof *p->popped);
    p->max_popped = max_popped;
    if (!p->tree || !p->out || !p->popped)
        return HL_ENOMEM;
    for (int32_t i = 0; i < p->size; i++)
        p->tree[p->size + i] = i < p->n ? i : -1;
    for (int32_t i = p->size - 1; i >= 1; i--)   /* all counts 0: lowest row */
        p->tree[i] = pop_better(p, p->tree[2 * i], p->tree[2 * i + 1])
                   ? p->tree[2 * i] : p->tree[2 * i + 1];
    return 0;
}

/* max_popped > 0 makes a prequential (tree) ranking, 0 a loo (sorted) one. */
int hl_popularity_init(popularity *p, int32_t n, int max_popped)
{
    memset(p, 0, sizeof *p);
    p->n = n;
    p->count = calloc((size_t)n, sizeof *p->count);
    p->stamp = calloc((size_t)n, sizeof *p->stamp);
    if (!p->count || !p->stamp)
        return HL_ENOMEM;
    return max_popped > 0 ? pop_init_tree(p, max_popped) : 0;
}

void hl_popularity_free(popularity *p)
{
    free(p->count);
    free(p->stamp);
    free(p->order);
    free(p->tree);
    free(p->out);
    free(p->popped);
}

void hl_popularity_add(popularity *p, int32_t item)
{
    if (item < 0 || item >= p->n)
        return;
    p->count[item]++;
    if (p->tree)
        pop_fix(p, item);
}

static int cmp_by_count(const void *pa, const void *pb, void *ctx)
{
    const popularity *p = ctx;
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    return pop_better(p, a, b) ? -1 : pop_better(p, b, a) ? 1 : 0;
}

/* loo: ranks the items once the counts are final. */
int hl_popularity_sort(popularity *p)
{
    if ((p->order = malloc((size_t)p->n * sizeof *p->order)) == NULL)
        return HL_ENOMEM;
    for (int32_t i = 0; i < p->n; i++)
        p->order[i] = i;
    qsort_r(p->order, (size_t)p->n, sizeof *p->order, cmp_by_count, p);
    return 0;
}

/* Starts a query: the next hl_popularity_exclude marks belong to it. */
void hl_popularity_begin(popularity *p) { p->query++; }

void hl_popularity_exclude(popularity *p, int32_t item)
{
    if (item >= 0 && item < p->n)
        p->stamp[item] = p->query;
}

static int pop_top_tree(popularity *p, int k, int32_t *top)
{
    int n = 0, n_popped = 0;
    while (n < k && n_popped < p->max_popped && p->tree[1] >= 0) {
        int32_t best = p->tree[1];
        p->out[best] = 1;
        pop_fix(p, best);
        p->popped[n_popped++] = best;
        if (p->stamp[best] != p->query)
            top[n++] = best;
    }
    for (int i = 0; i < n_popped; i++) {
        p->out[p->popped[i]] = 0;
        pop_fix(p, p->popped[i]);
    }
    return n;
}

/* The k most popular items not excluded in this query; returns the count. */
int hl_popularity_top(popularity *p, int k, int32_t *top)
{
    int n = 0;
    if (p->tree)
        return pop_top_tree(p, k, top);
    for (int32_t i = 0; i < p->n && n < k; i++)
        if (p->stamp[p->order[i]] != p->query)
            top[n++] = p->order[i];
    return n;
}
