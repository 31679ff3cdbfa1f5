/* rank_naive.c - the ranker's plain-loop twin (hl_ranker_refresh_naive):
 * every item scored with plain loops in double, all of them sorted, the
 * same exclusions (the live catalogue's hidden rows and side items too)
 * and `because` as rank.c, for tests to compare the
 * blocked and two-stage paths with. It allocates: never on the hot path. */
#include "rank_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct naive_cand {
    float   score;
    int32_t item;
} naive_cand;

static int cand_cmp(const void *pa, const void *pb)
{
    const naive_cand *a = pa, *b = pb;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    return (a->item > b->item) - (a->item < b->item);
}

static void because_naive(const hl_ranker *r, const hl_row_view *v,
                          hl_rec *recs, int n_rec, int32_t *item, float *a)
{
    int n_hist = hl_rank_history_weights(r, v, item, a);

    for (int j = 0; j < n_rec; j++) {
        double best = 0.0;
        recs[j].because = -1;
        for (int e = 0; e < n_hist; e++) {
            double dot = 0.0;
            for (int d = 0; d < r->dim; d++)
                dot += (double)r->e_in[(size_t)item[e] * r->dim + d] *
                       out_row(r, recs[j].item)[d];
            double c = (double)a[e] * dot;
            if (c > best) {
                best = c;
                recs[j].because = item[e];
            }
        }
    }
}

/* Marks user u's excluded items in excl (n_items + n_side bytes, zeroed). */
static void naive_mark(const hl_ranker *r, const hl_row_view *v,
                       const hl_rank_exclude *ex, uint8_t *excl)
{
    if (r->exclude_seen)
        for (int i = hl_row_seen_from(v, r->seen_window); i < v->n_hist; i++) {
            int32_t it = v->hist_item[hl_row_hist_index(v, i)];
            if (it >= 0 && it < r->n_items)
                excl[it] = 1;
        }
    if (ex != NULL)
        for (int i = 0; i < ex->n; i++)
            if (ex->item[i] >= 0 && ex->item[i] < r->n_items + r->cat.n_side)
                excl[ex->item[i]] = 1;
    for (int32_t i = 0; i < r->cat.n_hidden; i++)      /* one flag per hidden row */
        if (r->cat.hidden[i] >= 0 && r->cat.hidden[i] < r->n_items + r->cat.n_side)
            excl[r->cat.hidden[i]] = 1;
}

static int naive_user(const hl_ranker *r, const hl_row_view *v, const float *q,
                      const hl_rank_exclude *ex, naive_cand *cand,
                      uint8_t *excl, hl_rec *out)
{
    int n_cand = 0;

    int32_t n_all = r->n_items + r->cat.n_side;
    memset(excl, 0, (size_t)n_all);
    naive_mark(r, v, ex, excl);
    for (int32_t j = 0; j < n_all; j++) {
        if (excl[j])
            continue;
        const float *e = out_row(r, j);
        double s = bias_of(r, j);
        for (int d = 0; d < r->dim; d++)
            s += (double)q[d] * e[d];
        cand[n_cand].score = (float)s;
        cand[n_cand++].item = j;
    }
    qsort(cand, (size_t)n_cand, sizeof *cand, cand_cmp);
    int n_out = n_cand < r->k ? n_cand : r->k;
    for (int j = 0; j < n_out; j++) {
        out[j].item = cand[j].item;
        out[j].score = cand[j].score;
    }
    return n_out;
}

int hl_ranker_refresh_naive(hl_ranker *r, const hl_row_view *users, int n,
                            const hl_rank_exclude *extra, hl_rec *out,
                            int *n_out)
{
    int in_dim = hl_encoder_in_dim(&r->net), rc = HL_ENOMEM;
    float *x = malloc((size_t)in_dim * sizeof(float));
    float *act = malloc(hl_encoder_act_floats(&r->net, 1) * sizeof(float));
    size_t n_all = (size_t)r->n_items + (size_t)r->cat.n_side;
    naive_cand *cand = malloc(n_all * sizeof *cand);
    uint8_t *excl = malloc(n_all);
    int32_t item[MAX_RING];
    float a[MAX_RING];

    if (n < 0 || n > r->max_batch) {
        rc = HL_EINVAL;
        goto out;
    }
    if (!x || !act || !cand || !excl)
        goto out;
    for (int u = 0; u < n; u++) {
        hl_encoder_features(r->n_heads, r->dim, users[u].s, users[u].m, x);
        float *q = hl_encoder_forward_naive(&r->net, x, 1, act);
        hl_encoder_query_bound(q, r->dim);
        hl_rec *o = out + (size_t)u * r->k;
        n_out[u] = naive_user(r, &users[u], q, extra ? &extra[u] : NULL,
                              cand, excl, o);
        because_naive(r, &users[u], o, n_out[u], item, a);
    }
    rc = 0;
out:
    free(x);
    free(act);
    free(cand);
    free(excl);
    return rc;
}
