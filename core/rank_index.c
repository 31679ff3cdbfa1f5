/* rank_index.c - the ranker's index path (recs.index=ivf): candidates
 * from the approximate inverted-file index (ivf.h) instead of a scan of
 * every item, rescored with det_score like every other path, so each
 * published score is exact and only the set can differ from the exact
 * list (recall: the shadow check).
 *
 * A batch's users share one search (hl_ivf_search_batch: each probed list
 * read once). Each user asks for k + DET_PAD + the items it excludes (its
 * ring, its extra list), drops those, and keeps the best k. The live
 * catalogue's hidden model rows are common to every user, so they are
 * skipped inside the search (r->hmask) and never take a candidate's place.
 * A user left with fewer than k (its exclusions crowded its probed lists,
 * or they hold fewer items than it asked for), or with more exclusions
 * than the batch allows, is searched alone: hl_ivf_search skips every
 * excluded and hidden row itself and probes further lists until it has
 * k + DET_PAD, so a list is short only when the visible catalogue is.
 * The catalogue's side items are not in the index (it is built at model
 * load); they are few, so each user scores every visible one exactly
 * (hl_rank_side_push) into the same heap.
 *
 * Invariant: the index's lists never hold a hidden row, an excluded row or
 * a row twice; with enough visible items a list is k long. */
#include "rank_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IVF_EXTRA 64   /* extra exclusions a user may have and still join the
                          index's batch search (more: searched alone) */

/* The index's scratch; it replaces both candidate scans. */
int hl_rank_index_create(hl_ranker *r, const hl_rank_opts *o, char *errbuf, size_t errlen)
{
    int32_t n_items;
    int dim;
    hl_ivf_shape(o->ivf, &n_items, &dim);
    if (n_items != r->n_items || dim != r->dim)
        return hl_err(errbuf, errlen, HL_EINVAL,
                      "ranker: the index has %d items of dim %d, the model %d of dim %d",
                      (int)n_items, dim, (int)r->n_items, r->dim);
    r->ivf = o->ivf;
    /* 0: this index's own default, so a model swapped in with another
     * catalogue size probes its own share, not the first model's */
    r->nprobe = o->nprobe == 0 ? hl_ivf_default_nprobe(o->ivf)
              : o->nprobe < hl_ivf_nlist(o->ivf) ? o->nprobe : hl_ivf_nlist(o->ivf);
    r->shadow_every = o->shadow_every;
    r->istride = r->kc + MAX_RING + IVF_EXTRA;
    if ((r->is = hl_ivf_scan_create(r->ivf, r->max_batch, r->nprobe, r->istride, errbuf,
                                    errlen)) == NULL)
        return HL_ENOMEM;
    r->icand = malloc((size_t)r->max_batch * r->istride * sizeof(int32_t));
    r->icap = malloc((size_t)r->max_batch * sizeof(int));
    r->ifound = malloc((size_t)r->max_batch * sizeof(int));
    r->shadow = malloc((size_t)r->k * sizeof(int32_t));
    r->hmask = calloc((size_t)r->n_items, 1);
    if (!r->icand || !r->icap || !r->ifound || !r->shadow || !r->hmask)
        return hl_err(errbuf, errlen, HL_ENOMEM, "ranker: out of memory");
    snprintf(r->scoring_name, sizeof r->scoring_name, "ivf/nlist=%d/nprobe=%d",
             hl_ivf_nlist(r->ivf), r->nprobe);
    return 0;
}

void hl_rank_index_free(hl_ranker *r)
{
    hl_ivf_scan_destroy(r->is);
    free(r->icand);
    free(r->icap);
    free(r->ifound);
    free(r->shadow);
    free(r->hmask);
}

/* The previous catalogue's arrays may be gone by now (they are borrowed
 * only until the next hl_ranker_set_catalogue), so the old marks are
 * cleared wholesale: n_items bytes, once per catalogue change. */
void hl_rank_index_catalogue(hl_ranker *r)
{
    if (r->hmask == NULL)
        return;
    if (r->hmask_n > 0)
        memset(r->hmask, 0, (size_t)r->n_items);
    r->hmask_n = 0;
    for (int32_t i = 0; i < r->cat.n_hidden && r->cat.hidden[i] < r->n_items; i++)
        if (r->cat.hidden[i] >= 0) {
            r->hmask[r->cat.hidden[i]] = 1;
            r->hmask_n++;
        }
}

void hl_rank_index_batch(hl_ranker *r, int n, const hl_rank_exclude *extra)
{
    for (int u = 0; u < n; u++) {
        int want = r->kc + (r->exclude_seen ? r->seen_n[u] : 0) +
                   (extra != NULL ? extra[u].n : 0);
        r->icap[u] = want <= r->istride ? want : 0;
    }
    if (hl_ivf_search_batch(r->ivf, r->is, r->Q, n, r->nprobe, r->icap,
                            r->hmask_n > 0 ? r->hmask : NULL, r->icand, r->istride,
                            r->ifound) != 0)
        for (int u = 0; u < n; u++)
            r->icap[u] = 0;            /* cannot happen (sizes are checked at create) */
}

/* The shadow check: how many of the exact list's n_exact items (r->shadow)
 * the index's list h[0..n) holds. */
static void shadow_count(hl_ranker *r, const uint64_t *h, int n, int n_exact)
{
    for (int i = 0; i < n_exact; i++)
        for (int j = 0; j < n; j++)
            if (key_item(h[j]) == r->shadow[i]) {
                r->shadow_hits++;
                break;
            }
    r->shadow_total += (uint64_t)n_exact;
}

static void push_row(hl_ranker *r, uint64_t *h, int *n, const float *q, int32_t j)
{
    push_best(h, n, r->k, make_key(det_score(q, r->e_out + (size_t)j * r->dim, r->dim,
                                             r->bias[j]), j));
}

/* User u's candidates from the batch search, its own exclusions dropped
 * (the search skipped the hidden rows), rescored with det_score into its
 * heap (best k); returns how many were kept. */
static int rescore_batch(hl_ranker *r, int u, const hl_rank_exclude *ex, int *n)
{
    uint64_t *h = r->top + (size_t)u * r->kc;
    const float *q = r->Q + (size_t)u * r->dim;
    const int32_t *cand = r->icand + (size_t)u * r->istride;
    int kept = 0;
    hl_rank_mark_own(r, u, ex, 1);   /* the hidden rows are in r->hmask */
    for (int i = 0; i < r->ifound[u]; i++)
        if (!r->excl[cand[i]]) {
            kept++;
            push_row(r, h, n, q, cand[i]);
        }
    hl_rank_mark_own(r, u, ex, 0);
    return kept;
}

/* User u searched alone: excluded and hidden rows skipped inside the
 * search, which probes further lists until it has k + DET_PAD or none is
 * left; rescored with det_score into its emptied heap. */
static void search_alone(hl_ranker *r, int u, const hl_rank_exclude *ex, int *n)
{
    uint64_t *h = r->top + (size_t)u * r->kc;
    const float *q = r->Q + (size_t)u * r->dim;
    int32_t *cand = r->icand + (size_t)u * r->istride;
    *n = 0;
    hl_rank_mark_excl(r, u, ex, 1);
    int nc = hl_ivf_search(r->ivf, r->is, q, r->nprobe, r->kc, r->excl, cand, NULL);
    hl_rank_mark_excl(r, u, ex, 0);
    for (int i = 0; i < nc; i++)
        push_row(r, h, n, q, cand[i]);
}

/* User u's list: its batch candidates, or a search of its own when they
 * leave fewer than k, then its visible side items, the best k sorted best
 * first in its heap. Every shadow_every-th user is first scored over every
 * item too (the shadow check), at the cost of one exact refresh. Returns
 * the list's length: k unless the visible catalogue runs out. */
int hl_rank_select_index(hl_ranker *r, int u, const hl_rank_exclude *ex)
{
    uint64_t *h = r->top + (size_t)u * r->kc;
    int n = 0, n_exact = -1;

    if (r->shadow_every > 0 && r->refreshed % (uint64_t)r->shadow_every == 0) {
        n_exact = hl_rank_rescan_exact(r, u, ex);
        for (int i = 0; i < n_exact; i++)
            r->shadow[i] = key_item(h[i]);
    }
    r->refreshed++;
    if (r->icap[u] == 0 || rescore_batch(r, u, ex, &n) < r->k)
        search_alone(r, u, ex, &n);
    hl_rank_side_push(r, u, ex, &n);
    heap_sort(h, n);
    if (n_exact >= 0)
        shadow_count(r, h, n, n_exact);
    return n;
}

void hl_ranker_index_recall(const hl_ranker *r, uint64_t *hits, uint64_t *total)
{
    *hits = r->shadow_hits;
    *total = r->shadow_total;
}

uint64_t hl_ranker_index_scored(const hl_ranker *r)
{
    return r->is != NULL ? hl_ivf_scan_scored(r->is) : 0;
}
