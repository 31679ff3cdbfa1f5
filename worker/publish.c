/* publish.c - the refresh half of a batch: every dirty user of a shard is
 * scored once (hl_ranker_refresh, REFRESH_MAX users per SGEMM), its list
 * encoded as a RecommendationList and produced to the output topic with
 * the batch's delivery ticket (flight.c stores the offsets once it reads
 * zero). With recs.min.interval.ms the shard's gate (gate.c) decides which
 * dirty users go now and which wait; revocation and shutdown publish the
 * waiting ones (hl_publish_pending), so no user's last list is held back.
 *
 * A list that cannot be encoded is logged (rate-limited) and not retried:
 * the user's next event refreshes it, and a crash replays it. A list the
 * broker refuses (or the producer cannot take) is refreshed again from its
 * user's newest state, never re-sent as it was, so an older list cannot
 * land over a newer one: flight.c holds the batch's offsets meanwhile and
 * calls hl_publish_again. */
#include "thread_internal.h"

#include <stdlib.h>
#include <string.h>

int hl_publish_alloc(hl_wthread *t, char *errbuf, size_t errlen)
{
    const hl_worker_opts *o = t->ctx->o;
    size_t k = (size_t)o->recs_k;
    if (!o->recs_enabled)
        return 0;               /* state only: no ranker, no buffers */
    t->enc_cap = 1024 + k * (2 * HL_MAX_ID_LEN + 32);
    t->views = calloc(REFRESH_MAX, sizeof *t->views);
    t->recs = calloc(REFRESH_MAX * k, sizeof *t->recs);
    t->n_out = calloc(REFRESH_MAX, sizeof *t->n_out);
    t->crec = calloc(k, sizeof *t->crec);
    t->enc = malloc(t->enc_cap);
    t->seen_added = malloc(REFRESH_MAX * (size_t)(o->state_history > 0 ? o->state_history : 1) *
                           sizeof *t->seen_added);
    t->excl = calloc(REFRESH_MAX, sizeof *t->excl);
    if (!t->views || !t->recs || !t->n_out || !t->crec || !t->enc || !t->seen_added ||
        !t->excl)
        return hl_err(errbuf, errlen, HL_ENOMEM, "thread %d: out of memory", t->id);
    hl_rank_opts ro = {.k = o->recs_k, .exclude_seen = o->recs_exclude_seen,
                       .seen_window = o->recs_exclude_seen_events,
                       .max_batch = REFRESH_MAX, .scoring = o->recs_scoring,
                       .qitems = t->mref->qitems, .ivf = t->mref->ivf,
                       .nprobe = o->recs_index_nprobe,
                       .shadow_every = o->recs_index_shadow_every,
                       .type_weight = t->mref->tw};     /* weight.*, as applied */
    if ((t->ranker = hl_ranker_create(t->mref->m, &ro, errbuf, errlen)) == NULL)
        return HL_ENOMEM;
    return 0;
}

int hl_publish_model(hl_wthread *t, const hl_mref *r, char *errbuf, size_t errlen)
{
    const hl_worker_opts *o = t->ctx->o;
    if (t->ranker == NULL)
        return 0;
    /* r's own int8 table: the thread holds r (and so the table) for as
     * long as this ranker lives. */
    hl_rank_opts ro = {.k = o->recs_k, .exclude_seen = o->recs_exclude_seen,
                       .seen_window = o->recs_exclude_seen_events,
                       .max_batch = REFRESH_MAX, .scoring = o->recs_scoring,
                       .qitems = r->qitems, .ivf = r->ivf,
                       .nprobe = o->recs_index_nprobe,
                       .shadow_every = o->recs_index_shadow_every,
                       .type_weight = r->tw};
    hl_ranker *rk = hl_ranker_create(r->m, &ro, errbuf, errlen);
    if (rk == NULL)
        return HL_ENOMEM;
    hl_ranker_destroy(t->ranker);
    t->ranker = rk;
    /* The new ranker counts from zero: so do the thread's last-added
     * counts, or the next difference would wrap round. */
    t->rank_fallbacks = t->shadow_hits = t->shadow_items = 0;
    return 0;
}

void hl_publish_free(hl_wthread *t)
{
    hl_items_local_reset(t->ctx->items, &t->cat);
    hl_ranker_destroy(t->ranker);
    free(t->views);
    free(t->recs);
    free(t->n_out);
    free(t->crec);
    free(t->enc);
    free(t->seen_added);
    free(t->excl);
}

/* The list's items as the codec wants them: ids borrowed from the model. */
static void fill_items(hl_wthread *t, const hl_rec *recs, int n)
{
    const hl_model *m = t->mref->m;
    for (int j = 0; j < n; j++) {
        hl_codec_rec *cr = &t->crec[j];
        cr->item = hl_items_local_id(&t->cat, m, recs[j].item, &cr->item_len);
        cr->score = recs[j].score;
        cr->because = recs[j].because >= 0
            ? hl_model_item_id(m, recs[j].because, &cr->because_len) : NULL;
        if (cr->because == NULL)
            cr->because_len = 0;
    }
}

static void send_list(hl_wthread *t, const hl_row_view *v, const hl_rec *recs, int n,
                      int32_t partition, flight *f)
{
    hl_wshared *ctx = t->ctx;
    char err[256];
    fill_items(t, recs, n);
    hl_codec_list l = {
        .user = v->user, .user_len = v->user_len, .generated_at_ms = v->t_ref_ms,
        .model_version = t->mref->mi->version, .items = t->crec, .n_items = n,
        .src_topic = ctx->o->input_topic, .src_partition = partition,
        .src_offset = v->last_offset,
    };
    int len = hl_codec_encode_list(t->codec, &l, t->enc, t->enc_cap);
    if (len < 0 || hl_producer_send(ctx->prod, ctx->o->output_topic, RD_KAFKA_PARTITION_UA,
                                    v->user, v->user_len, t->enc, (size_t)len, NULL,
                                    &f->t, err, sizeof err) != 0) {
        uint64_t sup;
        if (hl_log_limit_pass(&t->err_limit, &sup))
            hl_log(HL_LOG_WARN, "list_not_sent", "len=%d err=\"%s\"", len,
                   len < 0 ? hl_strerror(len) : err);
        return;
    }
    t->b.lists++;
    if (ctx->o->on_list)
        ctx->o->on_list(ctx->o->on_list_arg, &l);
}

/* The index's shadow check: this ranker's new counts into the shared
 * counters and into its model's, and the recall gauge from the model's
 * (every thread's): the served index's recall, where the counters' totals
 * would mix in the models served before it. A thread still on an older
 * model during a swap leaves the gauge alone. The gauge's series is
 * registered here, at the first check, so it never shows a recall no
 * check measured (registration locks: 1 in recs.index.shadow.every users
 * gets here). */
static void shadow_report(hl_wthread *t)
{
    uint64_t hits, items;
    hl_ranker_index_recall(t->ranker, &hits, &items);
    if (items == t->shadow_items)
        return;
    uint64_t dh = hits - t->shadow_hits, di = items - t->shadow_items;
    hl_counter_add(t->ctx->shadow_hits, dh);
    hl_counter_add(t->ctx->shadow_items, di);
    t->shadow_hits = hits;
    t->shadow_items = items;
    uint64_t mh = atomic_fetch_add(&t->mref->shadow_hits, dh) + dh;
    uint64_t mi = atomic_fetch_add(&t->mref->shadow_items, di) + di;
    if (mi > 0 && t->mref->gen == hl_models_gen(t->ctx->models))
        hl_gauge_set(hl_metrics_gauge(t->ctx->reg, "halflife_index_recall", NULL,
                                      "check=\"shadow\""), (double)mh / (double)mi);
}

/* Seen items the ranker's ring exclusion cannot see: the ring names model
 * rows, and an item the live catalogue added is in it by key only; a known
 * item whose embedding is overridden is listed under its side row, which
 * the ring's model row does not name. Each
 * view's such items become its explicit exclusions; NULL when none of
 * the n users has one (the common case costs a pass over their rings
 * only while the catalogue lists added items). */
static const hl_rank_exclude *added_seen(hl_wthread *t, int n)
{
    const hl_worker_opts *o = t->ctx->o;
    int any = 0, per = o->state_history;
    if (t->cat.rc.n_side == 0 || !o->recs_exclude_seen)
        return NULL;
    for (int i = 0; i < n; i++) {
        const hl_row_view *v = &t->views[i];
        int32_t *rows = t->seen_added + (size_t)i * (size_t)per;
        int m = 0;
        /* the same entries as the ranker's ring exclusion (hl_rank_load_seen) */
        for (int j = hl_row_seen_from(v, o->recs_exclude_seen_events);
             j < v->n_hist && m < per; j++) {
            int k = hl_row_hist_index(v, j);
            const float *x;
            /* an added item by its key; a known item whose embedding is
             * overridden by its model row: its side row is the one listed */
            if (v->hist_item[k] < 0
                    ? v->hist_key != NULL &&
                      (rows[m] = hl_items_local_added(&t->cat, v->hist_key[k], &x)) >= 0
                    : (rows[m] = hl_items_local_override(&t->cat, v->hist_item[k])) >= 0)
                m++;
        }
        t->excl[i] = (hl_rank_exclude){.item = rows, .n = m};
        any |= m > 0;
    }
    return any ? t->excl : NULL;
}

/* Refreshes rows[0..n) of sh (live rows, each once) and produces their
 * lists into flight f. */
static void refresh_chunk(hl_wthread *t, hl_shard *sh, const uint32_t *rows, int n,
                          flight *f)
{
    int k = t->ctx->o->recs_k;
    for (int i = 0; i < n; i++) {
        hl_shard_swap_touch(sh, rows[i]);   /* a row held back by the gate */
        hl_table_view(sh->tbl, rows[i], &t->views[i]);
    }
    double a = hl_now_mono_s();
    const hl_rank_exclude *ex = added_seen(t, n);
    int rc = hl_ranker_refresh_ex(t->ranker, t->views, n, ex, t->recs, t->n_out);
    double b = hl_now_mono_s();
    t->b.stage_s[STAGE_REFRESH] += b - a;
    uint64_t fb = hl_ranker_fallbacks(t->ranker);
    hl_counter_add(t->ctx->rank_fallbacks, fb - t->rank_fallbacks);
    t->rank_fallbacks = fb;
    if (t->mref->ivf != NULL)
        shadow_report(t);
    if (rc != 0) {
        uint64_t sup;
        if (hl_log_limit_pass(&t->err_limit, &sup))
            hl_log(HL_LOG_ERROR, "refresh_failed", "partition=%d err=%s",
                   (int)sh->partition, hl_strerror(rc));
        return;
    }
    if (t->ctx->foldin != NULL)     /* the queries fold-in needs, before the next chunk */
        hl_foldin_local_take(&t->fold, sh, rows, n, t->ranker);
    for (int i = 0; i < n; i++) {
        send_list(t, &t->views[i], t->recs + (size_t)i * k, t->n_out[i], sh->partition, f);
        hl_gate_refreshed(sh->gate, rows[i], &t->views[i]);
    }
    t->b.stage_s[STAGE_PRODUCE] += hl_now_mono_s() - b;
}

/* Collects rows into chunks of REFRESH_MAX; refresh_chunk runs on each. */
typedef struct chunk {
    uint32_t rows[REFRESH_MAX];
    int      n;
} chunk;

static void chunk_add(hl_wthread *t, hl_shard *sh, chunk *c, uint32_t row, flight *f)
{
    c->rows[c->n++] = row;
    if (c->n == REFRESH_MAX) {
        refresh_chunk(t, sh, c->rows, c->n, f);
        c->n = 0;
    }
}

/* With recs.min.interval.ms: the dirty rows the gate lets through, then the
 * waiting rows whose time has come. */
static void publish_gated(hl_wthread *t, hl_shard *sh, flight *f)
{
    uint32_t dirty[REFRESH_MAX], due[REFRESH_MAX];
    chunk c = {.n = 0};
    hl_row_view v;
    hl_table_meta meta;
    int n;
    hl_table_meta_get(sh->tbl, &meta);
    do {
        n = hl_table_take_dirty(sh->tbl, dirty, REFRESH_MAX);
        for (int i = 0; i < n; i++) {
            hl_table_view(sh->tbl, dirty[i], &v);
            if (hl_gate_pass(sh->gate, dirty[i], &v, meta.newest_ts_ms, sh->batch_first_off))
                chunk_add(t, sh, &c, dirty[i], f);
        }
    } while (n == REFRESH_MAX);
    while ((n = hl_gate_take_due(sh->gate, sh->tbl, due, REFRESH_MAX, meta.newest_ts_ms)) > 0)
        for (int i = 0; i < n; i++)
            chunk_add(t, sh, &c, due[i], f);
    if (c.n > 0)
        refresh_chunk(t, sh, c.rows, c.n, f);
}

void hl_publish_shard(hl_wthread *t, hl_shard *sh, flight *f)
{
    uint32_t rows[REFRESH_MAX];
    int n;
    /* State only (recs.enabled=false): the dirty list is left alone. It
     * threads through the rows themselves, holds each user at most once,
     * and walking it would cost a cache miss per user per batch. */
    if (t->ranker == NULL)
        return;
    if (sh->gate != NULL) {
        publish_gated(t, sh, f);
        return;
    }
    do {
        n = hl_table_take_dirty(sh->tbl, rows, REFRESH_MAX);
        if (n > 0)
            refresh_chunk(t, sh, rows, n, f);
    } while (n == REFRESH_MAX);
}

/* Into a new flight: the users the gates of shs[0..n_sh) (NULL entries
 * skipped) let go, at each shard's newest event time, or every waiting
 * one (all). */
static void publish_due(hl_wthread *t, hl_shard **shs, int n_sh, int all, int64_t until_ms)
{
    uint32_t rows[REFRESH_MAX];
    flight *f = hl_flight_begin(t, until_ms);
    if (f == NULL)      /* stopping, deliveries too late: the users stay held back */
        return;
    memset(&t->b, 0, sizeof t->b);
    for (int i = 0; i < n_sh; i++) {
        hl_shard *sh = shs[i];
        hl_table_meta meta;
        int n;
        if (sh == NULL || sh->gate == NULL)
            continue;
        hl_table_meta_get(sh->tbl, &meta);
        while ((n = hl_gate_take_due(sh->gate, sh->tbl, rows, REFRESH_MAX,
                                     all ? INT64_MAX : meta.newest_ts_ms)) > 0)
            refresh_chunk(t, sh, rows, n, f);
    }
    hl_flight_note_offsets(t, f);
    hl_counter_add(t->ctx->mx.lists, t->b.lists);
}

void hl_publish_overdue(hl_wthread *t)
{
    int any = 0;
    for (int i = 0; i < t->n_own && !any; i++)
        any = hl_gate_overdue(t->own[i]->gate);
    /* Every flight in the air: they wait for the loop's next look, which
     * reads no batch before a flight is free either (hl_flight_slot_free). */
    if (any && t->ranker != NULL && t->fl_n < N_FLIGHTS)
        publish_due(t, t->own, t->n_own, 0, 0);
}

int hl_publish_again(hl_wthread *t, flight *f, const hl_failed_key *keys)
{
    chunk c;
    uint64_t before = t->b.lists;
    if (t->ranker == NULL)
        return 0;
    for (int i = 0; i < t->n_own; i++) {
        hl_shard *sh = t->own[i];
        c.n = 0;
        for (const hl_failed_key *k = keys; k != NULL; k = k->next) {
            int64_t row = hl_shard_swap_find(sh, k->key, k->len);
            int dup = 0;
            for (int j = 0; j < c.n && row >= 0 && !dup; j++)
                dup = c.rows[j] == (uint32_t)row;
            if (row >= 0 && !dup)
                chunk_add(t, sh, &c, (uint32_t)row, f);
        }
        if (c.n > 0)
            refresh_chunk(t, sh, c.rows, c.n, f);
    }
    int sent = (int)(t->b.lists - before);
    t->b.lists = before;        /* counted as retries (the caller), not as new lists */
    return sent;
}

void hl_publish_pending(hl_wthread *t, hl_shard **shs, int n_sh, int64_t until_ms)
{
    int any = 0;
    for (int i = 0; i < n_sh; i++)      /* waiting users not moved yet by a reshape */
        if (shs[i] != NULL && shs[i]->old_gate != NULL)
            hl_shard_swap_finish(shs[i]);
    for (int i = 0; i < n_sh && !any; i++)
        any = shs[i] != NULL && hl_gate_waiting(shs[i]->gate) > 0;
    if (any && t->ranker != NULL && atomic_load(t->ctx->stop) < 2)
        publish_due(t, shs, n_sh, 1, until_ms);
}
