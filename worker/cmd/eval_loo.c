/* eval_loo.c - the leave-one-out protocol of `halflife eval` (full
 * ranking; the protocol of the published Beauty table).
 *
 * Each user's last event (by time, file order on ties) is the target; the
 * state is built from all the user's earlier events, the second-to-last
 * (validation) one included; every item of the catalogue is ranked with
 * all the user's earlier items excluded. The history ring only holds the
 * last state.history events, so the exclusion is an explicit list of
 * every earlier item (hl_ranker_refresh_ex), not the ring. HR@K is the
 * share of users whose target is in the top K, NDCG@K the mean of
 * 1 / log2(rank + 2) over hits (rank 0-based). Users with a single event
 * have no history and are skipped (counted). A target the model does not
 * know is a miss. */
#include "eval_internal.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>

static int cmp_user_time(const void *pa, const void *pb)
{
    const ev_rec *a = pa, *b = pb;
    if (a->user != b->user) return a->user < b->user ? -1 : 1;
    if (a->ts_ms != b->ts_ms) return a->ts_ms < b->ts_ms ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

typedef struct loo_run {
    const eval_args *a;
    const hl_model  *m;
    eval_data       *d;
    int64_t         *start;     /* (n_users + 1) each user's events in d->ev */
    metric           model, pop;
    int64_t          users, skipped, target_unknown, target_seen;
    progress         pg;
} loo_run;

static void loo_user_ranges(loo_run *lr)
{
    const eval_data *d = lr->d;
    for (int64_t i = 0, u = 0; u <= d->users.n; u++) {
        while (i < d->n_ev && d->ev[i].user < u)
            i++;
        lr->start[u] = i;
    }
}

static int loo_is_user(const loo_run *lr, int32_t u)
{
    return lr->start[u + 1] - lr->start[u] >= 2;
}

/* Applies every event but each user's last to a new table. */
static hl_table *loo_state(loo_run *lr, char *errbuf, size_t errlen)
{
    const eval_data *d = lr->d;
    hl_table *tbl = hl_eval_table_create(lr->m, DEFAULT_HISTORY, d->users.n, errbuf, errlen);
    for (int32_t u = 0; tbl && u < d->users.n; u++) {
        for (int64_t i = lr->start[u]; i + 1 < lr->start[u + 1]; i++) {
            hl_event ev = hl_eval_event(d, &d->ev[i], i);
            if (hl_eval_apply(tbl, lr->m, &ev, errbuf, errlen) != 0) {
                hl_table_destroy(tbl);
                return NULL;
            }
        }
    }
    return tbl;
}

/* Each user's earlier items, in the sorted event order: item rows of
 * ev[start[u] .. start[u+1]-1). */
static void loo_exclusions(const loo_run *lr, int32_t u, const int32_t *rows,
                           hl_rank_exclude *ex)
{
    ex->item = rows + lr->start[u];
    ex->n = lr->a->exclude_seen ? (int)(lr->start[u + 1] - lr->start[u] - 1) : 0;
}

static int loo_model_batch(loo_run *lr, hl_ranker *rk, hl_table *tbl, const int32_t *us,
                           int n, const int32_t *rows, hl_row_view *views,
                           hl_rank_exclude *ex, hl_rec *recs, int *n_out)
{
    const eval_data *d = lr->d;
    for (int b = 0; b < n; b++) {
        uint32_t len;
        const char *key = strmap_key(&d->users, us[b], &len);
        int64_t row = hl_table_find(tbl, key, len);
        if (row < 0)
            return HL_ENOENT;
        hl_table_view(tbl, (uint32_t)row, &views[b]);
        loo_exclusions(lr, us[b], rows, &ex[b]);
    }
    int rc = hl_ranker_refresh_ex(rk, views, n, ex, recs, n_out);
    for (int b = 0; rc == 0 && b < n; b++) {
        int32_t target = d->ev[lr->start[us[b] + 1] - 1].item;
        metric_add(&lr->model, rank_in_recs(recs + (size_t)b * lr->a->k, n_out[b], target));
    }
    return rc;
}

/* Every user's list from the model, batch by batch. */
static int loo_model(loo_run *lr, const int32_t *rows, char *errbuf, size_t errlen)
{
    const eval_args *a = lr->a;
    hl_rank_opts ro = {.k = a->k, .exclude_seen = 0, .max_batch = a->batch};
    hl_row_view *views = malloc((size_t)a->batch * sizeof *views);
    hl_rank_exclude *ex = malloc((size_t)a->batch * sizeof *ex);
    hl_rec *recs = malloc((size_t)a->batch * a->k * sizeof *recs);
    int *n_out = malloc((size_t)a->batch * sizeof *n_out);
    int32_t *us = malloc((size_t)a->batch * sizeof *us);
    hl_table *tbl = NULL;
    hl_ranker *rk = NULL;
    int rc = HL_ENOMEM, n = 0;

    if (!views || !ex || !recs || !n_out || !us) {
        hl_err(errbuf, errlen, rc, "eval: out of memory");
        goto out;
    }
    rc = HL_EINVAL;
    if ((tbl = loo_state(lr, errbuf, errlen)) == NULL ||
        (rk = hl_ranker_create(lr->m, &ro, errbuf, errlen)) == NULL)
        goto out;
    rc = 0;
    for (int32_t u = 0; rc == 0 && u <= lr->d->users.n; u++) {
        if (u < lr->d->users.n && loo_is_user(lr, u))
            us[n++] = u;
        if (n == a->batch || (u == lr->d->users.n && n > 0)) {
            rc = loo_model_batch(lr, rk, tbl, us, n, rows, views, ex, recs, n_out);
            n = 0;
            hl_eval_progress(&lr->pg, "loo users", lr->model.n, lr->users, &lr->model, NULL);
        }
    }
    if (rc != 0)
        hl_err(errbuf, errlen, rc, "eval: refresh failed: %s", hl_strerror(rc));
out:
    hl_ranker_destroy(rk);
    hl_table_destroy(tbl);
    free(views); free(ex); free(recs); free(n_out); free(us);
    return rc;
}

static int loo_popularity(loo_run *lr, const int32_t *rows)
{
    const eval_data *d = lr->d;
    popularity p;
    int32_t *top = malloc((size_t)lr->a->k * sizeof *top);
    int rc = hl_popularity_init(&p, d->n_rows, 0);

    for (int32_t u = 0; rc == 0 && top && u < d->users.n; u++)
        for (int64_t i = lr->start[u]; i + 1 < lr->start[u + 1] + lr->a->pop_counts_all; i++)
            hl_popularity_add(&p, rows[i]);
    if (rc == 0 && top)
        rc = hl_popularity_sort(&p);
    for (int32_t u = 0; rc == 0 && top && u < d->users.n; u++) {
        if (!loo_is_user(lr, u))
            continue;
        hl_rank_exclude ex;
        loo_exclusions(lr, u, rows, &ex);
        hl_popularity_begin(&p);
        for (int i = 0; i < ex.n; i++)
            hl_popularity_exclude(&p, ex.item[i]);
        int n = hl_popularity_top(&p, lr->a->k, top);
        metric_add(&lr->pop, rank_in_items(top, n, d->ev[lr->start[u + 1] - 1].item));
    }
    hl_popularity_free(&p);
    if (top == NULL)
        rc = HL_ENOMEM;
    free(top);
    return rc;
}

/* Counts users, skipped users, unknown and already-seen targets. */
static void loo_census(loo_run *lr, const int32_t *rows)
{
    for (int32_t u = 0; u < lr->d->users.n; u++) {
        if (!loo_is_user(lr, u)) {
            lr->skipped++;
            continue;
        }
        lr->users++;
        int64_t last = lr->start[u + 1] - 1;
        lr->target_unknown += rows[last] < 0;
        for (int64_t i = lr->start[u]; rows[last] >= 0 && i < last; i++)
            if (rows[i] == rows[last]) {
                lr->target_seen++;
                break;
            }
    }
}

static void loo_print(const loo_run *lr, double seconds)
{
    const eval_data *d = lr->d;
    printf("{\"protocol\":\"loo\",\"k\":%d,\"users\":%lld,\"users_skipped\":%lld,"
           "\"items\":%d,\"events\":%lld,\"bad_lines\":%lld,\"exclude_seen\":%s,"
           "\"targets_unknown\":%lld,\"targets_seen_before\":%lld",
           lr->a->k, (long long)lr->users, (long long)lr->skipped, d->n_rows,
           (long long)d->n_ev, (long long)d->st.bad_lines,
           lr->a->exclude_seen ? "true" : "false", (long long)lr->target_unknown,
           (long long)lr->target_seen);
    if (lr->m)
        hl_eval_print_metric("model", &lr->model, 1);
    if (lr->a->baseline) {
        hl_eval_print_metric("popularity", &lr->pop, 1);
        printf(",\"popularity_counts\":\"%s\"", lr->a->pop_counts_all ? "all" : "history");
    }
    printf(",\"seconds\":%.2f}\n", seconds);
}

int hl_eval_run_loo(const eval_args *a, const hl_model *m, eval_data *d,
                    char *errbuf, size_t errlen)
{
    int64_t t0 = hl_now_mono_ms();
    loo_run lr = {.a = a, .m = m, .d = d, .pg = {.quiet = a->quiet, .last_ms = t0}};
    int32_t *rows = malloc((size_t)d->n_ev * sizeof *rows);
    int rc = HL_ENOMEM;

    lr.start = malloc(((size_t)d->users.n + 1) * sizeof *lr.start);
    if (rows == NULL || lr.start == NULL) {
        hl_err(errbuf, errlen, rc, "eval: out of memory");
        goto out;
    }
    qsort(d->ev, (size_t)d->n_ev, sizeof *d->ev, cmp_user_time);
    for (int64_t i = 0; i < d->n_ev; i++)
        rows[i] = d->ev[i].item;
    loo_user_ranges(&lr);
    loo_census(&lr, rows);
    /* HR 0 over no user read as a measurement; there is none to report. */
    if (lr.users == 0) {
        rc = hl_err(errbuf, errlen, HL_EINVAL, "eval: no user of %s has 2 events: "
                    "leave-one-out needs a history and a target per user (%lld users, "
                    "each with one event; is the user column right?)", a->input,
                    (long long)lr.skipped);
        goto out;
    }
    rc = 0;
    if (m && (rc = loo_model(&lr, rows, errbuf, errlen)) != 0)
        goto out;
    if (a->baseline && (rc = loo_popularity(&lr, rows)) != 0) {
        hl_err(errbuf, errlen, rc, "eval: popularity: out of memory");
        goto out;
    }
    loo_print(&lr, (hl_now_mono_ms() - t0) / 1000.0);
out:
    free(rows);
    free(lr.start);
    return rc;
}
