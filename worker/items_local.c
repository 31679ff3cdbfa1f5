/* items_local.c - the shard threads' side of the item topic's views
 * (items.h): a thread takes a reference to the newest view of the model
 * generation it serves, derives its ranker's catalogue (hidden rows, side
 * rows) from it, and gives the view back to the reader (items.c) as a
 * spare when its last reader lets go. */
#include "items_internal.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

/* ---- references ---- */

void hl_items_ref_release(catref *r)
{
    if (r == NULL || atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    hl_items *it = r->owner;
    pthread_mutex_lock(&it->mu);
    hl_catview *drop = it->spare;       /* one spare is enough */
    it->spare = r->v;
    pthread_mutex_unlock(&it->mu);
    hl_catview_destroy(drop);
    free(r);
}

catref *hl_items_ref_acquire(hl_items *it, uint64_t gen)
{
    pthread_mutex_lock(&it->mu);
    catref *r = it->slot[gen % GEN_SLOTS];
    if (r != NULL && r->gen == gen)
        atomic_fetch_add(&r->refs, 1);
    else
        r = NULL;
    pthread_mutex_unlock(&it->mu);
    return r;
}

/* ---- a shard thread's side ---- */

static int recompute(hl_items_local *loc, int64_t now_ms)
{
    const hl_catview *v = loc->ref->v;
    int32_t need = hl_catview_hidden_max(v);
    if (need > loc->cap_hidden) {
        int32_t *h = realloc(loc->hidden, (size_t)need * sizeof *h);
        if (h == NULL)
            return HL_ENOMEM;
        loc->hidden = h;
        loc->cap_hidden = need;
    }
    loc->rc = (hl_rank_catalogue){
        .hidden = loc->hidden, .n_hidden = hl_catview_hidden_at(v, now_ms, loc->hidden,
                                                                 &loc->next_ms),
        .e_in = hl_catview_side_e_in(v), .e_out = hl_catview_side_e_out(v),
        .bias = hl_catview_side_bias(v), .n_side = hl_catview_n_side(v),
    };
    return 0;
}

/* The thread serves generation gen from now on: a view of another
 * generation must not name its rows, and its new ranker has no catalogue
 * yet. */
static void change_gen(hl_items_local *loc, hl_ranker *r, uint64_t gen)
{
    hl_items_ref_release(loc->ref);
    loc->ref = NULL;
    loc->gen = gen;
    memset(&loc->rc, 0, sizeof loc->rc);
    if (r != NULL)
        hl_ranker_set_catalogue(r, NULL);
}

void hl_items_local_update(hl_items *it, hl_items_local *loc, hl_ranker *r, uint64_t gen)
{
    if (it == NULL)
        return;
    if (loc->gen != gen)
        change_gen(loc, r, gen);
    catref *ref = hl_items_ref_acquire(it, gen), *old = loc->ref;
    int64_t now = atomic_load_explicit(&it->stream_ts_ms, memory_order_relaxed);
    if (ref == NULL && atomic_load(&it->loaded) && !loc->missing) {
        loc->missing = 1;               /* said once per stretch without one */
        hl_log(HL_LOG_ERROR, "catalogue_view_missing", "generation=%llu reason=\"the "
                   "thread serves a model %d swaps behind\" action=\"ranks without the "
                   "catalogue until its next batch\"", (unsigned long long)gen, GEN_SLOTS);
    }
    if (ref == NULL || (ref == old && now < loc->next_ms)) {
        hl_items_ref_release(ref);
        return;
    }
    loc->missing = 0;
    loc->ref = ref;
    if (recompute(loc, now) != 0) {
        loc->ref = old;                 /* keep ranking with the previous view */
        hl_items_ref_release(ref);
        hl_log(HL_LOG_ERROR, "catalogue_update_failed", "reason=\"out of memory\"");
        return;
    }
    if (ref != old)
        hl_items_ref_release(old);
    else
        hl_items_ref_release(ref);               /* the second reference to the same view */
    if (r != NULL)
        hl_ranker_set_catalogue(r, &loc->rc);
}

const char *hl_items_local_id(const hl_items_local *loc, const hl_model *m, int32_t row,
                              uint32_t *len)
{
    if (loc->ref != NULL)
        return hl_catview_item_id(loc->ref->v, row, len);
    return hl_model_item_id(m, row, len);
}

int32_t hl_items_local_added(const hl_items_local *loc, uint64_t key, const float **e_in)
{
    const hl_catview *v = loc->ref ? loc->ref->v : NULL;
    int32_t row = v ? hl_catview_added_row(v, key) : -1;
    *e_in = NULL;
    if (row >= 0) {
        int32_t s = row - hl_catview_n_model(v);
        *e_in = hl_catview_side_e_in(v) + (size_t)s * (size_t)hl_catview_dim(v);
    }
    return row;
}

int hl_items_local_folded(const hl_items_local *loc, int32_t row)
{
    const hl_catview *v = loc->ref->v;
    return hl_catview_side_folded(v, row - hl_catview_n_model(v));
}

int32_t hl_items_local_override(const hl_items_local *loc, int32_t row)
{
    return loc->ref != NULL ? hl_catview_override_row(loc->ref->v, row) : -1;
}

void hl_items_local_reset(hl_items *it, hl_items_local *loc)
{
    (void)it;
    hl_items_ref_release(loc->ref);
    free(loc->hidden);
    memset(loc, 0, sizeof *loc);
}
