/* eval_preq.c - the prequential protocol of `halflife eval` (test,
 * then learn, in time order).
 *
 * Before an event is applied, is its item in the user's current top K?
 * The worker's exclusion applies: the ring's last --history items (default
 * 32, state.history's default), or with --seen-ring full those of the ring
 * the user would have after every earlier event of the stream, whatever
 * --apply-from left out of the state (eval_seen.c says why). Either way the
 * scored events whose target is in either ring are counted apart, with
 * their hits (targets_in_own_ring, targets_in_full_ring). Lists are computed in batches of --batch
 * events: each event of a batch gets a copy of its user's state just
 * before it (earlier events of the same batch applied), and the copies are
 * refreshed in one call, which is exact and keeps the SGEMM busy. Reported
 * overall and per tenth of the stream (--windows). */
#include "encoder.h"
#include "eval_internal.h"
#include "log.h"
#include "migrate.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_time(const void *pa, const void *pb)
{
    const ev_rec *a = pa, *b = pb;
    if (a->ts_ms != b->ts_ms) return a->ts_ms < b->ts_ms ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

/* A copy of one user's state just before one event. */
typedef struct state_copy {
    float       *s, *m;
    int32_t     *item;
    uint8_t     *type;
    int64_t     *ts;
    uint64_t    *key;       /* hl_item_key per ring entry: names unknown items */
    hl_row_view  v;
} state_copy;

/* What the swap's migration got wrong (swap_diagnose). */
typedef struct swap_diag {
    double err, median, ring_share;
    double err_unknown;     /* the part of err from items only B knows */
    double err_mig, median_mig;     /* the migrated rows' own (swap_measure) */
    double *full;           /* (users, dim) each user's longest head under B */
    int    users, ok;
} swap_diag;

/* The head means the encoder reads, s_h / max(m_h, eps), over every live
 * row: the median and the largest of each row's largest. And the heads
 * whose sum is longer than their mass allows: s_h is a sum of c_i e_in[i]
 * and m_h the sum of the c_i, so ||s_h|| <= m_h max_i ||e_in[i]||; the map
 * M of a migration bends that a little, a mass left behind its heads
 * (stop 31's defect: m_h 0 under a full s_h) breaks it by orders. */
typedef struct head_means {
    double  median, max;
    int64_t inconsistent;       /* ||s_h|| > 2 m_h max ||e_in|| */
} head_means;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct preq_run {
    const eval_args *a;
    const hl_model  *m;
    eval_data       *d;
    hl_table        *tbl;
    hl_ranker       *rk;
    popularity       pop;
    state_copy      *copy;      /* (batch) */
    hl_row_view     *views;     /* (batch) */
    hl_rec          *recs;      /* (batch, k) */
    int             *n_out;     /* (batch) */
    int32_t         *top;       /* (k) */
    metric           model, popm;
    metric           model_unknown;     /* targets the model does not know */
    eval_fold       *fold;              /* --foldin; NULL: frozen catalogue */
    int              rank_k;            /* the ranker's list length: k, or 2k under
                                           --foldin-max-per-list so that the folded
                                           items beyond the cap have lists to leave */
    int64_t          cap_dropped;       /* --foldin-max-per-list: folded items left out */
    int64_t          cap_short;         /* ... lists left shorter than k by it (the
                                           ranker's 2k ran out: then not exact) */
    int64_t          fold_places;       /* --foldin: places in scored lists that
                                           folded-in items took */
    int32_t          n_items;           /* the model's: side rows come after */
    hl_rank_exclude *extra;             /* (batch) --foldin: folded-in items in the ring */
    int32_t         *extra_rows;        /* (batch, history) */
    metric          *win_model, *win_pop;   /* (windows) */
    int              n_heads, dim;
    progress         pg;
    int64_t          t_swap, t_score;   /* INT64_MAX: no swap; INT64_MIN: score all */
    int              use_b;             /* swapped: events name --swap-model's rows */
    int64_t          migrated;
    int              fit_shared;        /* the swap's map: items it was fitted on, */
    double           fit_residual;      /* and its relative residual */
    swap_diag        diag;
    head_means       means_before, means_after;   /* the swap's, under A and B */
    int32_t         *user_n, *user_hits;  /* (users) --per-user: scored, hit */
    FILE            *targets;           /* --per-target, written as scored */
    eval_rings       rings;             /* each user's ring after the full stream */
    int32_t         *ring_ev;           /* (ring_cap) one ring read out */
    int              seen_hist;         /* the full rings' length (--seen-history) */
    int              ring_cap;          /* the larger of it and --history */
    uint8_t         *seen_flag;         /* (batch) SEEN_OWN | SEEN_FULL */
    metric           seen_own, seen_full;   /* scored events whose target was in
                                               the state's ring, the full ring */
} preq_run;

#define SEEN_OWN  1     /* the target's item is in the state's own ring */
#define SEEN_FULL 2     /* ... in the ring after the full stream */

static int copies_alloc(preq_run *pr)
{
    size_t n = (size_t)pr->a->batch, hist = (size_t)pr->a->history;
    pr->copy = calloc(n, sizeof *pr->copy);
    if (pr->copy == NULL)
        return HL_ENOMEM;
    for (size_t b = 0; b < n; b++) {
        state_copy *c = &pr->copy[b];
        c->s = malloc((size_t)pr->n_heads * pr->dim * sizeof *c->s);
        c->m = malloc((size_t)pr->n_heads * sizeof *c->m);
        c->item = malloc(hist * sizeof *c->item);
        c->type = malloc(hist * sizeof *c->type);
        c->ts = malloc(hist * sizeof *c->ts);
        c->key = malloc(hist * sizeof *c->key);
        if (!c->s || !c->m || !c->item || !c->type || !c->ts || !c->key)
            return HL_ENOMEM;
    }
    return 0;
}

static void copies_free(preq_run *pr)
{
    for (int b = 0; pr->copy && b < pr->a->batch; b++) {
        free(pr->copy[b].s);
        free(pr->copy[b].m);
        free(pr->copy[b].item);
        free(pr->copy[b].type);
        free(pr->copy[b].ts);
        free(pr->copy[b].key);
    }
    free(pr->copy);
}

static int preq_alloc(preq_run *pr, char *errbuf, size_t errlen)
{
    const eval_args *a = pr->a;
    pr->n_heads = pr->m ? hl_model_info_get(pr->m)->n_heads : 1;
    pr->dim = pr->m ? hl_model_info_get(pr->m)->dim : 1;
    pr->views = malloc((size_t)a->batch * sizeof *pr->views);
    /* The cap needs the ranker's list past k: a folded item beyond the cap
     * leaves a place the next model item takes. */
    int capped = pr->m && a->foldin > 0 && !a->swap_m && a->foldin_max > 0 &&
                 a->foldin_max < a->k;
    pr->rank_k = capped ? 2 * a->k : a->k;
    pr->recs = malloc((size_t)a->batch * pr->rank_k * sizeof *pr->recs);
    pr->n_out = malloc((size_t)a->batch * sizeof *pr->n_out);
    pr->top = malloc((size_t)a->k * sizeof *pr->top);
    pr->win_model = calloc((size_t)a->windows, sizeof *pr->win_model);
    pr->win_pop = calloc((size_t)a->windows, sizeof *pr->win_pop);
    if (!pr->views || !pr->recs || !pr->n_out || !pr->top || !pr->win_model ||
        !pr->win_pop || copies_alloc(pr) != 0 ||
        (a->baseline && hl_popularity_init(&pr->pop, pr->d->n_rows, a->k + a->history) != 0))
        return hl_err(errbuf, errlen, HL_ENOMEM, "eval: out of memory");
    pr->tbl = hl_eval_table_create(pr->m, a->history, pr->d->users.n, errbuf, errlen);
    if (pr->tbl == NULL)
        return HL_EINVAL;
    /* --seen-ring full: the ranker leaves out the full rings' rows (extra)
     * instead of the state's own ring. */
    hl_rank_opts ro = {.k = pr->rank_k, .exclude_seen = a->exclude_seen && !a->seen_full,
                       .seen_window = a->seen_window, .max_batch = a->batch};
    if (pr->m && (pr->rk = hl_ranker_create(pr->m, &ro, errbuf, errlen)) == NULL)
        return HL_EINVAL;
    pr->n_items = pr->m ? hl_model_info_get(pr->m)->n_items : 0;
    if (pr->m && a->foldin > 0 &&
        hl_eval_fold_create(&pr->fold, pr->m, a, 100000, errbuf, errlen) != 0)
        return HL_EINVAL;
    pr->extra = calloc((size_t)a->batch, sizeof *pr->extra);
    pr->seen_hist = a->seen_history > 0 ? a->seen_history :
                    a->seen_window > 0 ? a->seen_window : a->history;
    pr->ring_cap = pr->seen_hist > a->history ? pr->seen_hist : a->history;
    pr->extra_rows = malloc((size_t)a->batch * pr->ring_cap * sizeof *pr->extra_rows);
    pr->ring_ev = malloc((size_t)pr->ring_cap * sizeof *pr->ring_ev);
    pr->seen_flag = malloc((size_t)a->batch * sizeof *pr->seen_flag);
    if (!pr->extra || !pr->extra_rows || !pr->ring_ev || !pr->seen_flag ||
        hl_eval_rings_init(&pr->rings, pr->d->users.n, pr->seen_hist, pr->d->n_ev) != 0)
        return hl_err(errbuf, errlen, HL_ENOMEM, "eval: out of memory for %d users' "
                      "rings of %d (or over 2^31 events)", pr->d->users.n, pr->seen_hist);
    if (a->per_user) {
        pr->user_n = calloc((size_t)pr->d->users.n + 1, sizeof *pr->user_n);
        pr->user_hits = calloc((size_t)pr->d->users.n + 1, sizeof *pr->user_hits);
        if (!pr->user_n || !pr->user_hits)
            return hl_err(errbuf, errlen, HL_ENOMEM, "eval: out of memory");
    }
    if (a->per_target && (pr->targets = fopen(a->per_target, "w")) == NULL)
        return hl_err(errbuf, errlen, HL_EIO, "eval: --per-target %s: %s", a->per_target,
                      strerror(errno));
    return 0;
}

static void preq_free(preq_run *pr)
{
    hl_eval_fold_destroy(pr->fold);
    hl_ranker_destroy(pr->rk);
    hl_table_destroy(pr->tbl);
    if (pr->a->baseline)
        hl_popularity_free(&pr->pop);
    copies_free(pr);
    free(pr->views); free(pr->recs); free(pr->n_out); free(pr->top);
    free(pr->win_model); free(pr->win_pop);
    free(pr->extra); free(pr->extra_rows);
    free(pr->user_n); free(pr->user_hits);
    free(pr->ring_ev); free(pr->seen_flag);
    hl_eval_rings_free(&pr->rings);
    if (pr->targets)
        fclose(pr->targets);
}

/* Copies the user's current state (zeros for a user not seen yet). */
static void copy_state(preq_run *pr, const ev_rec *e, state_copy *c)
{
    uint32_t len;
    const char *key = strmap_key(&pr->d->users, e->user, &len);
    int64_t row = hl_table_find(pr->tbl, key, len);
    size_t n_s = (size_t)pr->n_heads * pr->dim;
    hl_row_view v = {.history = pr->a->history, .t_ref_ms = INT64_MIN};

    if (row >= 0)
        hl_table_view(pr->tbl, (uint32_t)row, &v);
    if (row >= 0) {
        memcpy(c->s, v.s, n_s * sizeof *c->s);
        memcpy(c->m, v.m, (size_t)pr->n_heads * sizeof *c->m);
        memcpy(c->item, v.hist_item, (size_t)v.history * sizeof *c->item);
        memcpy(c->type, v.hist_type, (size_t)v.history * sizeof *c->type);
        memcpy(c->ts, v.hist_ts_ms, (size_t)v.history * sizeof *c->ts);
        for (int h = 0; h < v.history; h++)
            c->key[h] = v.hist_key ? v.hist_key[h] : 0;
    } else {
        memset(c->s, 0, n_s * sizeof *c->s);
        memset(c->m, 0, (size_t)pr->n_heads * sizeof *c->m);
    }
    c->v = v;
    c->v.user = key;
    c->v.user_len = len;
    c->v.s = c->s;
    c->v.m = c->m;
    c->v.hist_item = c->item;
    c->v.hist_type = c->type;
    c->v.hist_ts_ms = c->ts;
    c->v.hist_key = c->key;
}

/* --foldin with exclude_seen: folded-in items in a user's ring are seen,
 * as model items are (the ring names them by key, not by row). */
static const hl_rank_exclude *seen_folded(preq_run *pr, int n)
{
    if (pr->fold == NULL || !pr->a->exclude_seen)
        return NULL;
    for (int b = 0; b < n; b++) {
        const hl_row_view *v = &pr->copy[b].v;
        int32_t *rows = pr->extra_rows + (size_t)b * pr->ring_cap;
        int k = 0;
        for (int h = hl_row_seen_from(v, pr->a->seen_window); h < v->n_hist; h++) {
            int i = hl_row_hist_index(v, h);
            int32_t row = v->hist_item[i] < 0 ? hl_eval_fold_row(pr->fold, v->hist_key[i]) : -1;
            if (row >= 0)
                rows[k++] = row;
        }
        pr->extra[b] = (hl_rank_exclude){.item = rows, .n = k};
    }
    return pr->extra;
}

/* The row of event s's item in the model ranking now (a fold-in row for
 * an item it does not know, -1 for none). */
static int32_t ranked_row(const preq_run *pr, const ev_rec *s)
{
    int32_t row = pr->use_b ? s->item_b : s->item;
    return row < 0 && pr->fold ? hl_eval_fold_row(pr->fold, s->key) : row;
}

/* Event i, slot b of its batch, its user's state copied and not yet
 * applied: is its item in the state's ring, in the full stream's ring?
 * With --seen-ring full the latter's rows are slot b's exclusions. Then
 * event i joins the full ring. Items are matched by key: the rings name
 * items the ranking model may not know. */
static void seen_capture(preq_run *pr, int b, int64_t i)
{
    const ev_rec *e = &pr->d->ev[i];
    const hl_row_view *v = &pr->copy[b].v;
    int32_t *rows = pr->extra_rows + (size_t)b * pr->ring_cap;
    uint8_t flag = 0;
    for (int h = 0; h < v->n_hist; h++)
        if (v->hist_key[hl_row_hist_index(v, h)] == e->key)
            flag |= SEEN_OWN;
    int n = hl_eval_rings_get(&pr->rings, e->user, pr->ring_ev);
    for (int h = 0; h < n; h++) {
        const ev_rec *s = &pr->d->ev[pr->ring_ev[h]];
        if (s->key == e->key)
            flag |= SEEN_FULL;
        if (pr->a->seen_full)
            rows[h] = ranked_row(pr, s);
    }
    if (pr->a->seen_full)
        pr->extra[b] = (hl_rank_exclude){.item = rows, .n = n};
    pr->seen_flag[b] = flag;
    hl_eval_rings_push(&pr->rings, e->user, i);
}

/* What the ranker leaves out besides its own ring (if it excludes that). */
static const hl_rank_exclude *exclusions(preq_run *pr, int n)
{
    if (!pr->a->exclude_seen)
        return NULL;
    return pr->a->seen_full ? pr->extra : seen_folded(pr, n);
}

static int window_of(const preq_run *pr, int64_t i)
{
    return (int)(i * pr->a->windows / pr->d->n_ev);
}

/* Popularity's list for event i (slot b) from the running counts, then
 * counts it. It leaves out what the model's lists leave out. */
static void preq_popularity(preq_run *pr, int64_t i, int b)
{
    const ev_rec *e = &pr->d->ev[i];
    const hl_row_view *v = &pr->copy[b].v;
    hl_popularity_begin(&pr->pop);
    for (int h = 0; pr->a->exclude_seen && pr->a->seen_full && h < pr->extra[b].n; h++)
        hl_popularity_exclude(&pr->pop, pr->extra[b].item[h]);
    for (int h = hl_row_seen_from(v, pr->a->seen_window);
         pr->a->exclude_seen && !pr->a->seen_full && h < v->n_hist; h++)
        hl_popularity_exclude(&pr->pop, v->hist_item[hl_row_hist_index(v, h)]);
    int n = hl_popularity_top(&pr->pop, pr->a->k, pr->top);
    int rank = rank_in_items(pr->top, n, e->item);
    metric_add(&pr->popm, rank);
    metric_add(&pr->win_pop[window_of(pr, i)], rank);
    hl_popularity_add(&pr->pop, e->item);
}

/* --per-target: one scored event (its line in the input, so two arms'
 * files pair up whatever the tie order), its user, known, rank or -1. */
static void write_target(const preq_run *pr, const ev_rec *e, int rank)
{
    uint32_t len;
    const char *id = strmap_key(&pr->d->users, e->user, &len);
    fprintf(pr->targets, "%lld\t%.*s\t%d\t%d\n", (long long)e->idx, (int)len, id,
            (pr->use_b ? e->item_b : e->item) >= 0, rank);
}

/* --foldin-max-per-list C: each of the n lists of rank_k in recs becomes, in
 * place at stride k, its first k items once folded items beyond the C best
 * are dropped - the top k of model items and the C best folded ones, as
 * long as the ranker's 2k held enough model items (else cap_short). */
static void cap_folded(preq_run *pr, int n)
{
    int k = pr->a->k, kr = pr->rank_k;
    if (kr == k)
        return;
    for (int b = 0; b < n; b++) {
        const hl_rec *src = pr->recs + (size_t)b * kr;
        hl_rec *dst = pr->recs + (size_t)b * k;       /* dst <= src: forward is safe */
        int kept = 0, folded = 0;
        for (int r = 0; r < pr->n_out[b] && kept < k; r++) {
            if (src[r].item >= pr->n_items && folded++ >= pr->a->foldin_max) {
                pr->cap_dropped++;
                continue;
            }
            dst[kept++] = src[r];
        }
        pr->cap_short += kept < k && pr->n_out[b] == kr;
        pr->n_out[b] = kept;
    }
}

/* Counts the lists of events [first, first + n) (refreshed into recs). */
static void preq_score(preq_run *pr, int64_t first, int n)
{
    for (int b = 0; b < n; b++) {
        const ev_rec *e = &pr->d->ev[first + b];
        if (e->ts_ms < pr->t_score)
            continue;           /* --score-from: applied, not scored */
        int32_t target = ranked_row(pr, e);
        int rank = rank_in_recs(pr->recs + (size_t)b * pr->a->k, pr->n_out[b], target);
        for (int r = 0; pr->fold && r < pr->n_out[b]; r++)
            pr->fold_places += pr->recs[(size_t)b * pr->a->k + r].item >= pr->n_items;
        metric_add(&pr->model, rank);
        if (pr->user_n) {
            pr->user_n[e->user]++;
            pr->user_hits[e->user] += rank >= 0;
        }
        if (pr->targets)
            write_target(pr, e, rank);
        if ((pr->use_b ? e->item_b : e->item) < 0)
            metric_add(&pr->model_unknown, rank);
        if (pr->seen_flag[b] & SEEN_OWN)
            metric_add(&pr->seen_own, rank);
        if (pr->seen_flag[b] & SEEN_FULL)
            metric_add(&pr->seen_full, rank);
        metric_add(&pr->win_model[window_of(pr, first + b)], rank);
    }
}

/* Events [first, first + n): copy each user's state just before its event,
 * apply the event, then refresh all the copies at once. */
static int preq_batch(preq_run *pr, int64_t first, int n, char *errbuf, size_t errlen)
{
    int rc;
    for (int b = 0; b < n; b++) {
        const ev_rec *e = &pr->d->ev[first + b];
        copy_state(pr, e, &pr->copy[b]);
        pr->views[b] = pr->copy[b].v;
        seen_capture(pr, b, first + b);
        if (pr->a->baseline)
            preq_popularity(pr, first + b, b);
        hl_event ev = hl_eval_event(pr->d, e, first + b);
        if (pr->use_b)
            ev.item = e->item_b;
        if (pr->fold && pr->a->foldin_e_in > 0 && ev.item < 0 &&
            (ev.x = hl_eval_fold_e_in(pr->fold, e->key)) != NULL) {
            ev.item = HL_ITEM_ADDED;    /* as the worker applies a published item */
            ev.w *= (float)pr->a->foldin_e_in;              /* (worker/batch.c) */
        }
        if ((rc = hl_eval_apply(pr->tbl, pr->m, &ev, errbuf, errlen)) != 0)
            return rc;
    }
    if (pr->rk == NULL)
        return 0;
    if ((rc = hl_ranker_refresh_ex(pr->rk, pr->views, n, exclusions(pr, n), pr->recs,
                                   pr->n_out)) != 0)
        return hl_err(errbuf, errlen, rc, "eval: refresh failed: %s", hl_strerror(rc));
    cap_folded(pr, n);
    preq_score(pr, first, n);
    if (pr->fold)
        hl_eval_fold_batch(pr->fold, &pr->d->ev[first], pr->views, n, pr->rk, pr->use_b);
    return 0;
}

static void preq_print_windows(const preq_run *pr)
{
    printf(",\"windows\":[");
    for (int w = 0; w < pr->a->windows; w++) {
        int64_t lo = (w * pr->d->n_ev + pr->a->windows - 1) / pr->a->windows;
        int64_t hi = ((w + 1) * pr->d->n_ev + pr->a->windows - 1) / pr->a->windows - 1;
        if (hi < lo)
            continue;
        printf("%s{\"from_ts_ms\":%lld,\"to_ts_ms\":%lld,\"events\":%lld",
               w ? "," : "", (long long)pr->d->ev[lo].ts_ms,
               (long long)pr->d->ev[hi].ts_ms, (long long)(hi - lo + 1));
        if (pr->m)
            printf(",\"model_hr\":%.6f", metric_hr(&pr->win_model[w]));
        if (pr->a->baseline)
            printf(",\"popularity_hr\":%.6f", metric_hr(&pr->win_pop[w]));
        printf("}");
    }
    printf("]");
}

static void preq_print(const preq_run *pr, double seconds)
{
    const eval_data *d = pr->d;
    printf("{\"protocol\":\"prequential\",\"k\":%d,\"events\":%lld,\"users\":%d,"
           "\"items\":%d,\"bad_lines\":%lld,\"history\":%d,\"seen_history\":%d,"
           "\"seen_window\":%d,\"exclude_seen\":%s,\"seen_ring\":\"%s\",\"events_item_unknown\":%lld",
           pr->a->k, (long long)d->n_ev, d->users.n, d->n_rows,
           (long long)d->st.bad_lines, pr->a->history, pr->seen_hist, pr->a->seen_window,
           pr->a->exclude_seen ? "true" : "false", pr->a->seen_full ? "full" : "own",
           (long long)d->unknown);
    if (pr->m) {
        hl_eval_print_metric("model", &pr->model, 0);
        hl_eval_print_metric("model_unknown_targets", &pr->model_unknown, 0);
        hl_eval_print_metric("targets_in_own_ring", &pr->seen_own, 0);
        hl_eval_print_metric("targets_in_full_ring", &pr->seen_full, 0);
    }
    if (pr->fold) {
        hl_eval_fold_print(pr->fold);
        printf(",\"foldin_list_places\":%lld,\"foldin_e_in\":%g", (long long)pr->fold_places,
               pr->a->foldin_e_in);
        if (pr->rank_k > pr->a->k)      /* refreshed lists, scored or not */
            printf(",\"foldin_max_per_list\":{\"cap\":%d,\"dropped\":%lld,\"short\":%lld}",
                   pr->a->foldin_max, (long long)pr->cap_dropped, (long long)pr->cap_short);
    }
    if (pr->a->baseline)
        hl_eval_print_metric("popularity", &pr->popm, 0);
    preq_print_windows(pr);
    if (pr->a->swap_m)
        printf(",\"swap\":{\"at_ts_ms\":%lld,\"users_migrated\":%lld,\"fit_shared\":%d,"
               "\"fit_residual\":%.4f}", (long long)pr->t_swap, (long long)pr->migrated,
               pr->fit_shared, pr->fit_residual);
    if (pr->a->swap_m)
        printf(",\"swap_head_means\":{\"before\":{\"median\":%.4g,\"max\":%.4g,"
               "\"inconsistent_heads\":%lld},\"after\":{\"median\":%.4g,\"max\":%.4g,"
               "\"inconsistent_heads\":%lld}}", pr->means_before.median, pr->means_before.max,
               (long long)pr->means_before.inconsistent, pr->means_after.median,
               pr->means_after.max, (long long)pr->means_after.inconsistent);
    if (pr->diag.ok)
        printf(",\"swap_longest_head\":{\"err_vs_full\":%.4f,\"err_vs_full_median_user\":%.4f,"
               "\"ring_share_of_full\":%.4f,\"err_items_only_new\":%.4f,\"users\":%d,"
               "\"err_migrated\":%.4f,\"err_migrated_median_user\":%.4f}",
               pr->diag.err, pr->diag.median, pr->diag.ring_share, pr->diag.err_unknown,
               pr->diag.users, pr->diag.err_mig, pr->diag.median_mig);
    if (pr->t_score != INT64_MIN)
        printf(",\"scored_from_ts_ms\":%lld", (long long)pr->t_score);
    printf(",\"seconds\":%.2f}\n", seconds);
}

/* --per-user: user_id, scored events, hits (TSV), for every user scored. */
static int preq_write_users(const preq_run *pr, char *errbuf, size_t errlen)
{
    FILE *f = fopen(pr->a->per_user, "w");
    if (f == NULL)
        return hl_err(errbuf, errlen, HL_EIO, "eval: --per-user %s: %s", pr->a->per_user,
                      strerror(errno));
    for (int u = 0; u < pr->d->users.n; u++) {
        uint32_t len;
        const char *id = strmap_key(&pr->d->users, u, &len);
        if (pr->user_n[u] > 0)
            fprintf(f, "%.*s\t%d\t%d\n", (int)len, id, pr->user_n[u], pr->user_hits[u]);
    }
    int bad = ferror(f);
    if (fclose(f) != 0 || bad)
        return hl_err(errbuf, errlen, HL_EIO, "eval: --per-user %s: write failed (%s)",
                      pr->a->per_user, strerror(errno));
    return 0;
}

/* --per-target: the file is complete only if every write and the close
 * succeeded. */
static int close_targets(preq_run *pr, char *errbuf, size_t errlen)
{
    int bad = ferror(pr->targets);
    bad |= fclose(pr->targets) != 0;
    pr->targets = NULL;
    if (bad)
        return hl_err(errbuf, errlen, HL_EIO, "eval: --per-target %s: write failed (%s)",
                      pr->a->per_target, strerror(errno));
    return 0;
}

/* The time of the f quantile of the events (in time order): events before
 * it are "the first f of the time", as `halflife train --holdout time:f`. */
static int64_t time_at(const eval_data *d, double f)
{
    int64_t i = (int64_t)(f * (double)d->n_ev);
    return i >= d->n_ev ? INT64_MAX : d->ev[i < 0 ? 0 : i].ts_ms;
}

/* --swap-weights: a weight per item of the serving model, from the events
 * applied before the swap (i_swap is the first after it). */
static float *swap_weights(const preq_run *pr, int64_t first, int64_t i_swap)
{
    const hl_model_info *mi = hl_model_info_get(pr->m);
    const char *how = pr->a->swap_weights;
    float *w = malloc(sizeof *w * ((size_t)mi->n_items + 1));
    int32_t *seen = calloc((size_t)pr->d->users.n + 1, sizeof *seen);
    double lambda = log(2.0) / mi->half_life_ms[mi->n_heads - 1];
    for (int32_t j = 0; w && j < mi->n_items; j++)
        w[j] = strcmp(how, "bias") ? 1.0f : expf(hl_model_bias(pr->m)[j]);
    for (int64_t i = i_swap - 1; w && seen && i >= first && strcmp(how, "bias"); i--) {
        const ev_rec *e = &pr->d->ev[i];
        if (e->item < 0) continue;
        if (!strcmp(how, "count"))
            w[e->item] += 1.0f;
        else if (seen[e->user]++ >= pr->a->history)   /* older than the ring */
            w[e->item] += e->w * (float)exp(-lambda * (double)(pr->t_swap - e->ts_ms));
    }
    free(seen);
    return w;
}

/* Per-user relative errors ||err_u|| / ||full_u|| and their totals: what
 * swap_diagnose and swap_measure report (rel holds one per user). */
typedef struct err_acc {
    double  se, sf, *rel;
    int     n;
} err_acc;

static void err_add(err_acc *a, double ue, double uf)
{
    a->se += ue;
    a->sf += uf;
    if (uf > 0) a->rel[a->n++] = sqrt(ue / uf);
}

/* ||err|| / ||full|| over all users, and the median user's. */
static void err_done(err_acc *a, double *err, double *median)
{
    qsort(a->rel, (size_t)a->n, sizeof *a->rel, cmp_double);
    *err = a->sf > 0 ? sqrt(a->se / a->sf) : 0;
    *median = a->n ? a->rel[a->n / 2] : 0;
}

/* What the swap's migration gets wrong, on the longest head (where most
 * of a head lies beyond the ring), against the head B itself would have
 * built from the same events (B_full's state at the swap):
 *   full_u  = sum_i c_i e_B[i]                 every event before the swap
 *   err_u   = sum_{i older than the ring} c_i (e_A[i] M - e_B[i])
 * (the ring's part is recomputed exactly, model.md), c_i = w_i 2^(-age/hl)
 * at the swap's time. Items only A knows add e_A M; items only B knows add
 * nothing to the migrated state but count in full_u. Reported as
 * ||err|| / ||full|| over all users and its median over users, and the
 * share of ||full||^2 that the ring's events hold. */
static void swap_diagnose(preq_run *pr, const hl_migration *mg, const hl_model *b,
                          int64_t first, int64_t i_swap)
{
    const hl_model_info *mi = hl_model_info_get(pr->m);
    int d = mi->dim, nu = pr->d->users.n;
    double lambda = log(2.0) / mi->half_life_ms[mi->n_heads - 1];
    const float *ea = hl_model_e_in(pr->m), *eb = hl_model_e_in(b), *m = hl_migration_map(mg);
    double *full = calloc((size_t)nu * d, sizeof *full), *err = calloc((size_t)nu * d, sizeof *err);
    double *ring = calloc((size_t)nu * d, sizeof *ring), *rel = malloc(sizeof *rel * (nu + 1));
    double *unk = calloc((size_t)nu * d, sizeof *unk);
    int32_t *seen = calloc((size_t)nu + 1, sizeof *seen);
    if (full && err && ring && rel && seen && unk) {
        for (int64_t i = i_swap - 1; i >= first; i--) {
            const ev_rec *e = &pr->d->ev[i];
            double c = e->w * exp(-lambda * (double)(pr->t_swap - e->ts_ms));
            double *fu = full + (size_t)e->user * d, *eu = err + (size_t)e->user * d;
            int in_ring = seen[e->user]++ < pr->a->history;
            for (int j = 0; j < d && e->item_b >= 0; j++) {
                fu[j] += c * eb[(size_t)e->item_b * d + j];
                if (in_ring) ring[(size_t)e->user * d + j] += c * eb[(size_t)e->item_b * d + j];
                else eu[j] -= c * eb[(size_t)e->item_b * d + j];
                if (!in_ring && e->item < 0)
                    unk[(size_t)e->user * d + j] -= c * eb[(size_t)e->item_b * d + j];
            }
            for (int j = 0; j < d && !in_ring && e->item >= 0; j++)
                for (int k = 0; k < d; k++)
                    eu[j] += c * ea[(size_t)e->item * d + k] * m[(size_t)k * d + j];
        }
        double sr = 0, su = 0;
        err_acc acc = {.rel = rel};
        for (int u = 0; u < nu; u++) {
            double ue = 0, uf = 0;
            for (int j = 0; j < d; j++) {
                size_t x = (size_t)u * d + j;
                ue += err[x] * err[x]; uf += full[x] * full[x]; sr += ring[x] * ring[x];
                su += unk[x] * unk[x];
            }
            err_add(&acc, ue, uf);
        }
        pr->diag = (swap_diag){.ring_share = acc.sf > 0 ? sr / acc.sf : 0, .users = acc.n,
                               .ok = 1, .err_unknown = acc.sf > 0 ? sqrt(su / acc.sf) : 0,
                               .full = full};
        err_done(&acc, &pr->diag.err, &pr->diag.median);
        full = NULL;
    }
    free(full); free(err); free(ring); free(rel); free(seen); free(unk);
}

/* The migrated rows' longest heads against the full history's under B
 * (swap_diagnose's full, brought to the swap's time): what the migration
 * really got wrong, where swap_diagnose's err is what s M alone gets
 * wrong for the events older than the ring. */
static void swap_measure(preq_run *pr, const hl_model *b)
{
    const hl_model_info *mi = hl_model_info_get(b);
    int d = mi->dim, h = mi->n_heads - 1, nu = pr->d->users.n;
    double lambda = log(2.0) / mi->half_life_ms[h];
    err_acc acc = {.rel = pr->diag.full ? malloc(sizeof(double) * (nu + 1)) : NULL};
    for (int u = 0; acc.rel != NULL && u < nu; u++) {
        uint32_t len;
        const char *key = strmap_key(&pr->d->users, u, &len);
        int64_t row = hl_table_find(pr->tbl, key, len);
        const double *fu = pr->diag.full + (size_t)u * d;
        double ue = 0, uf = 0, sc = 0;
        hl_row_view v = {0};
        if (row >= 0) {
            hl_table_view(pr->tbl, (uint32_t)row, &v);
            sc = exp(-lambda * (double)(pr->t_swap - v.t_ref_ms));
        }
        for (int j = 0; j < d; j++) {
            double x = row >= 0 ? sc * v.s[(size_t)h * d + j] : 0;
            ue += (x - fu[j]) * (x - fu[j]);
            uf += fu[j] * fu[j];
        }
        err_add(&acc, ue, uf);
    }
    if (acc.rel != NULL && acc.n > 0) err_done(&acc, &pr->diag.err_mig, &pr->diag.median_mig);
    free(acc.rel);
    free(pr->diag.full);
    pr->diag.full = NULL;
}

static double max_row_norm(const hl_model *m)
{
    const hl_model_info *mi = hl_model_info_get(m);
    const float *e = hl_model_e_in(m);
    double best = 0;
    for (size_t r = 0; r < (size_t)mi->n_items; r++) {
        double ss = 0;
        for (int j = 0; j < mi->dim; j++)
            ss += (double)e[r * mi->dim + j] * e[r * mi->dim + j];
        best = ss > best ? ss : best;
    }
    return sqrt(best);
}

static head_means measure_head_means(const hl_table *tbl, const hl_model *m)
{
    const hl_model_info *mi = hl_model_info_get(m);
    int nh = mi->n_heads, dim = mi->dim;
    double bound = 2 * max_row_norm(m);
    head_means hm = {0};
    size_t n = 0, cap = 1024;
    double *v = malloc(sizeof *v * cap);
    hl_row_view rv;
    for (uint32_t r = hl_table_next_live(tbl, 0); v != NULL && r != UINT32_MAX;
         r = hl_table_next_live(tbl, r + 1)) {
        hl_table_view(tbl, r, &rv);
        double largest = 0;
        for (int h = 0; h < nh; h++) {
            double ss = 0;
            for (int j = 0; j < dim; j++)
                ss += (double)rv.s[(size_t)h * dim + j] * rv.s[(size_t)h * dim + j];
            hm.inconsistent += sqrt(ss) > bound * fmax(rv.m[h], 0) + 1e-30;
            double mean = sqrt(ss) / fmax(rv.m[h], HL_ENCODER_EPS);
            largest = mean > largest ? mean : largest;
        }
        if (n == cap) {
            double *grown = realloc(v, sizeof *v * cap * 2);
            if (grown == NULL) break;
            v = grown; cap *= 2;
        }
        v[n++] = largest;
    }
    if (v != NULL && n > 0) {
        qsort(v, n, sizeof *v, cmp_double);
        hm.median = v[n / 2];
        hm.max = v[n - 1];
    }
    free(v);
    return hm;
}

/* The swap: every user's state into --swap-model (the worker's migration),
 * which ranks from now on. */
static int preq_swap(preq_run *pr, int64_t first, int64_t i_swap, char *errbuf, size_t errlen)
{
    const hl_model *b = pr->a->swap_m;
    float *w = pr->a->swap_weights ? swap_weights(pr, first, i_swap) : NULL;
    if (pr->a->swap_weights && w == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "eval: out of memory weighting the fit");
    hl_migration *mg = hl_migration_create_weighted(pr->m, b,
                                                    hl_model_info_get(pr->m)->type_weight, w,
                                                    errbuf, errlen);
    free(w);
    if (mg == NULL)
        return HL_EINVAL;
    hl_migration_set_local(mg, (float)pr->a->swap_local);
    swap_diagnose(pr, mg, b, first, i_swap);
    pr->means_before = measure_head_means(pr->tbl, pr->m);
    pr->migrated = hl_migration_table(mg, pr->tbl);
    swap_measure(pr, b);
    pr->means_after = measure_head_means(pr->tbl, b);
    pr->fit_residual = hl_migration_residual(mg);
    pr->fit_shared = hl_migration_shared(mg);
    hl_migration_destroy(mg);
    if (pr->migrated < 0)
        return hl_err(errbuf, errlen, HL_ENOMEM, "eval: out of memory migrating");
    hl_rank_opts ro = {.k = pr->a->k, .exclude_seen = pr->a->exclude_seen && !pr->a->seen_full,
                       .seen_window = pr->a->seen_window, .max_batch = pr->a->batch};
    hl_ranker_destroy(pr->rk);
    if ((pr->rk = hl_ranker_create(b, &ro, errbuf, errlen)) == NULL)
        return HL_EINVAL;
    /* --foldin: as the worker's fold-in (worker/fold.h), a new accumulator
     * in B's space; what A's had folded is dropped (B knows every item
     * seen before its cut) */
    hl_eval_fold_destroy(pr->fold);
    pr->fold = NULL;
    if (pr->a->foldin > 0 && hl_eval_fold_create(&pr->fold, b, pr->a, 100000, errbuf, errlen) != 0)
        return HL_EINVAL;
    pr->m = b;
    pr->n_items = hl_model_info_get(b)->n_items;      /* side rows after B's */
    pr->use_b = 1;
    return 0;
}

/* Events [i, i + n) stay on one side of the swap. */
static int batch_len(const preq_run *pr, int64_t i)
{
    int64_t n = pr->d->n_ev - i < pr->a->batch ? pr->d->n_ev - i : pr->a->batch;
    for (int64_t j = 0; j < n && !pr->use_b && pr->a->swap_m; j++)
        if (pr->d->ev[i + j].ts_ms >= pr->t_swap)
            return j > 0 ? (int)j : 1;
    return (int)n;
}

int hl_eval_run_prequential(const eval_args *a, const hl_model *m, eval_data *d,
                            char *errbuf, size_t errlen)
{
    int64_t t0 = hl_now_mono_ms();
    preq_run pr = {.a = a, .m = m, .d = d, .pg = {.quiet = a->quiet, .last_ms = t0}};
    int rc;

    qsort(d->ev, (size_t)d->n_ev, sizeof *d->ev, cmp_time);
    pr.t_swap = a->swap_m ? time_at(d, a->swap_at) : INT64_MAX;
    pr.t_score = a->score_from > 0 ? time_at(d, a->score_from) : INT64_MIN;
    int64_t start = 0, t_apply = a->apply_from > 0 ? time_at(d, a->apply_from) : INT64_MIN;
    while (start < d->n_ev && d->ev[start].ts_ms < t_apply)
        start++;                /* --apply-from: never seen */
    if ((rc = preq_alloc(&pr, errbuf, errlen)) != 0)
        goto out;
    for (int64_t i = 0; i < start; i++)
        hl_eval_rings_push(&pr.rings, d->ev[i].user, i);   /* seen, not applied */
    for (int64_t i = start, n; rc == 0 && i < d->n_ev; i += n) {
        if (!pr.use_b && a->swap_m && d->ev[i].ts_ms >= pr.t_swap &&
            (rc = preq_swap(&pr, start, i, errbuf, errlen)) != 0)
            break;
        n = batch_len(&pr, i);
        rc = preq_batch(&pr, i, (int)n, errbuf, errlen);
        hl_eval_progress(&pr.pg, "prequential events", i + n, d->n_ev,
                         m ? &pr.model : NULL, a->baseline ? &pr.popm : NULL);
    }
    if (rc == 0 && a->per_user)
        rc = preq_write_users(&pr, errbuf, errlen);
    if (rc == 0 && pr.targets && (rc = close_targets(&pr, errbuf, errlen)) != 0)
        goto out;
    if (rc == 0)
        preq_print(&pr, (hl_now_mono_ms() - t0) / 1000.0);
out:
    preq_free(&pr);
    return rc;
}
