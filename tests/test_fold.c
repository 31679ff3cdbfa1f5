/* test_fold.c - fold-in in the worker's batch (worker/fold.c): the query an
 * unknown-item event adds is its user's after the batch, the very one the
 * refresh ranked that user's list with (taken from the ranker, no encoder
 * pass of fold-in's own), and a user no refresh encoded (held back by
 * recs.min.interval.ms, or a worker without recs) gets the same bits from
 * the fill; events that were not applied add nothing.
 *
 * The worker's own parts run: a shard applies the batch, a ranker refreshes
 * some of its users, hl_wfoldin accumulates. The reference is core/foldin
 * fed by hand with each applied event's user query, encoded alone. */
#define T_SUITE "fold"
#include "test.h"
#include "fold.h"
#include "foldin.h"
#include "log.h"

#include <unistd.h>

#define DIM     8
#define HEADS   2
#define N_ITEMS 50
#define USERS   12

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)(rng >> 40) / (float)(1 << 23) - 1.0f;
}

static const double half_lives[HEADS] = {3600e3, 86400e3};

static hl_model *model_open(char *err, size_t errlen)
{
    static float e_in[N_ITEMS * DIM], e_out[N_ITEMS * DIM], bias[N_ITEMS];
    static float w[DIM * HEADS * (DIM + 1)], b[DIM];
    static char names[N_ITEMS][16];
    const char *ids[N_ITEMS];
    uint32_t lens[N_ITEMS];
    hl_model_parts p;
    memset(&p, 0, sizeof p);
    p.info = (hl_model_info){.dim = DIM, .n_heads = HEADS, .n_items = N_ITEMS, .n_layers = 1,
                             .layer_out = {DIM}};
    memcpy(p.info.half_life_ms, half_lives, sizeof half_lives);
    for (int t = 0; t < HL_N_TYPES; t++)
        p.info.type_weight[t] = 1;
    snprintf(p.info.version, sizeof p.info.version, "test-fold");
    for (int i = 0; i < N_ITEMS * DIM; i++) {
        e_in[i] = frand();
        e_out[i] = frand();
    }
    for (int i = 0; i < DIM * HEADS * (DIM + 1); i++)
        w[i] = 0.3f * frand();
    for (int i = 0; i < N_ITEMS; i++) {
        bias[i] = 0.1f * frand();
        lens[i] = (uint32_t)snprintf(names[i], sizeof names[i], "i%d", i);
        ids[i] = names[i];
    }
    p.item_id = ids; p.item_id_len = lens;
    p.e_in = e_in; p.e_out = e_out; p.bias = bias; p.layer_w[0] = w; p.layer_b[0] = b;
    char path[64];
    snprintf(path, sizeof path, "/tmp/test_fold_%d.hlm", (int)getpid());
    hl_model *m = hl_model_write(path, &p, err, errlen) == 0 ?
                  hl_model_open(path, err, errlen) : NULL;
    unlink(path);
    return m;
}

typedef struct fixture {
    hl_model   *m;
    hl_metrics *reg;
    hl_shard   *sh;
    hl_wfoldin *wf;
    hl_ranker  *rk;
    hl_foldin_local loc;
    char        users[USERS][16];
    int64_t     ts, offset[USERS];
    const char *ev_id[256];        /* each pushed event's unknown item, or NULL */
} fixture;

static int fixture_init(fixture *fx)
{
    char err[256];
    memset(fx, 0, sizeof *fx);
    fx->reg = hl_metrics_create();
    if ((fx->m = model_open(err, sizeof err)) == NULL) {
        printf("    %s\n", err);
        return -1;
    }
    hl_table_opts to = {.history = 8, .expected_users = 64};
    hl_decay_init(&to.decay, HEADS, DIM, half_lives, err, sizeof err);
    hl_table *tbl = hl_table_create(&to, err, sizeof err);
    fx->sh = tbl ? hl_shard_create(0, tbl, -1, NULL, 256, 0, fx->reg, err, sizeof err) : NULL;
    hl_wfoldin_opts fo = {.m = fx->m, .min_events = 1, .max_items = 64, .topic = "items",
                          .codec = {.dim = DIM}, .reg = fx->reg};
    fx->wf = fx->sh ? hl_wfoldin_create(&fo, err, sizeof err) : NULL;
    hl_rank_opts ro = {.k = 5, .exclude_seen = 1, .max_batch = 256};
    fx->rk = fx->wf ? hl_ranker_create(fx->m, &ro, err, sizeof err) : NULL;
    if (fx->rk == NULL || hl_foldin_local_init(fx->wf, &fx->loc, err, sizeof err) != 0) {
        printf("    %s\n", err);
        return -1;
    }
    for (int u = 0; u < USERS; u++)
        snprintf(fx->users[u], sizeof fx->users[u], "u%d", u);
    fx->ts = 1700000000000;
    return 0;
}

static void fixture_free(fixture *fx)
{
    hl_foldin_local_reset(&fx->loc);
    hl_ranker_destroy(fx->rk);
    hl_wfoldin_destroy(fx->wf);
    hl_shard_destroy(fx->sh);
    hl_model_close(fx->m);
    hl_metrics_destroy(fx->reg);
}

/* An unknown item's event carries its item_key as decode gives it, so the
 * note takes the id's hash from it; "new-2"'s carry none (0), so the note
 * hashes the id itself: sums found by id (hl_wfoldin_sums) check both. */
static void push(fixture *fx, int u, int32_t item, int64_t offset, int note, const char *id)
{
    hl_event ev = {.user = fx->users[u], .user_len = (uint32_t)strlen(fx->users[u]),
                   .item = item, .type = HL_VIEW, .w = 1.0f + 0.25f * (float)(u % 3),
                   .ts_ms = fx->ts += 1000, .offset = offset};
    if (id != NULL && strcmp(id, "new-2") != 0)
        ev.item_key = hl_item_key(id, strlen(id));
    hl_shard_push(fx->sh, &ev);
    fx->ev_id[fx->sh->n_ev - 1] = note ? id : NULL;
    if (note)
        hl_foldin_local_note(&fx->loc, fx->sh, fx->sh->n_ev - 1, id, (uint32_t)strlen(id),
                             ev.w);
}

/* One batch: two known items per user, then "new-1" by every user and
 * "new-2" by the even ones; user 0's "new-1" again at an old offset (a
 * duplicate: not applied). */
static void batch(fixture *fx)
{
    int dup, failed;
    hl_shard_batch_begin(fx->sh);
    for (int u = 0; u < USERS; u++) {
        push(fx, u, (int32_t)((u * 7) % N_ITEMS), fx->offset[u]++, 0, NULL);
        push(fx, u, (int32_t)((u * 3 + 1) % N_ITEMS), fx->offset[u]++, 0, NULL);
        push(fx, u, -1, fx->offset[u]++, 1, "new-1");
        if (u % 2 == 0)
            push(fx, u, -1, fx->offset[u]++, 1, "new-2");
    }
    push(fx, 0, -1, 0, 1, "new-1");
    hl_shard_apply(fx->sh, fx->m, &dup, &failed);
}

/* One batch folded whole under the fixture's model: noted, filled (from
 * rk's refresh queries, or the encoder's with rk NULL) and flushed. */
static void fold_batch(fixture *fx, hl_ranker *rk)
{
    batch(fx);
    hl_foldin_local_resolve(fx->wf, &fx->loc, fx->m);
    hl_foldin_local_fill(fx->wf, &fx->loc, fx->sh, rk);
    hl_foldin_local_flush(fx->wf, &fx->loc);
}

/* The refresh of the first half of the dirty rows, as publish.c runs it
 * (fold-in takes their queries); the other half waits, as a gated user
 * does. */
static void refresh_half(fixture *fx)
{
    uint32_t rows[256];
    hl_row_view v[256];
    hl_rec recs[256 * 5];
    int n_out[256];
    int n = hl_table_take_dirty(fx->sh->tbl, rows, 256) / 2;
    for (int i = 0; i < n; i++)
        hl_table_view(fx->sh->tbl, rows[i], &v[i]);
    CHECK(hl_ranker_refresh(fx->rk, v, n, recs, n_out) == 0);
    hl_foldin_local_take(&fx->loc, fx->sh, rows, n, fx->rk);
    int took = 0, want = 0;         /* the take found each noted user refreshed, no other */
    for (int u = 0; u < fx->loc.n_user; u++) {
        int refreshed = 0;
        for (int i = 0; i < n; i++)
            refreshed |= rows[i] == fx->loc.user[u].row;
        want += refreshed;
        took += refreshed && fx->loc.user[u].has_q;
        CHECK(refreshed || !fx->loc.user[u].has_q);
    }
    CHECKF(want > 0 && took == want, "took %d of %d refreshed noted users", took, want);
}

/* What the batch's applied unknown-item events add, by hand: each user's
 * query after the batch, encoded alone. */
static hl_foldin *reference(fixture *fx)
{
    char err[256];
    hl_foldin_opts o = {.dim = DIM, .max_items = 64, .min_events = 1,
                        .half_life_ms = half_lives[HEADS - 1]};
    hl_foldin *ref = hl_foldin_create(&o, hl_model_e_in(fx->m), hl_model_e_out(fx->m),
                                      hl_model_bias(fx->m), N_ITEMS, err, sizeof err);
    for (int i = 0; ref != NULL && i < fx->sh->n_ev; i++) {
        const hl_event *e = &fx->sh->ev[i];
        hl_row_view v;
        if (fx->ev_id[i] == NULL || fx->sh->status[i] <= 0)
            continue;
        hl_table_view(fx->sh->tbl, (uint32_t)hl_table_find(fx->sh->tbl, e->user, e->user_len),
                      &v);
        hl_ranker_encode(fx->rk, &v, 1);
        hl_foldin_add(ref, fx->ev_id[i], (uint32_t)strlen(fx->ev_id[i]),
                      hl_ranker_query(fx->rk, 0), e->w, e->ts_ms);
    }
    return ref;
}

/* The value of one series in the rendered /metrics text, -1 if absent. */
static double scraped(hl_metrics *reg, const char *series)
{
    char *text = NULL, *at;
    size_t len;
    double v = -1;
    if (hl_metrics_render(reg, &text, &len) != 0)
        return -1;
    for (at = text; (at = strstr(at, series)) != NULL; at++)
        if ((at == text || at[-1] == '\n') && at[strlen(series)] == ' ') {
            v = strtod(at + strlen(series) + 1, NULL);
            break;
        }
    free(text);
    return v;
}

static void test_queries_are_the_refreshs(void)
{
    static fixture fx;
    CHECK(fixture_init(&fx) == 0);
    if (fx.rk == NULL)
        return;
    batch(&fx);
    CHECK(fx.sh->status[fx.sh->n_ev - 1] == 0);       /* the duplicate */
    hl_foldin_local_resolve(fx.wf, &fx.loc, fx.m);
    refresh_half(&fx);
    hl_foldin_local_fill(fx.wf, &fx.loc, fx.sh, fx.rk);
    hl_foldin_local_flush(fx.wf, &fx.loc);
    hl_foldin *ref = reference(&fx);
    CHECK(ref != NULL);
    for (int k = 0; ref != NULL && k < 2; k++) {
        const char *id = k ? "new-2" : "new-1";
        float got[DIM], want[DIM];
        double m_got = -1, m_want = -2;
        CHECK(hl_wfoldin_sums(fx.wf, id, 5, got, &m_got) == 0);
        CHECK(hl_foldin_sums(ref, id, 5, want, &m_want) == 0);
        CHECKF(memcmp(got, want, sizeof got) == 0 && m_got == m_want,
               "%s: sums differ from the refresh's queries (mass %g, want %g)", id, m_got,
               m_want);
    }
    hl_foldin_destroy(ref);
    fixture_free(&fx);
}

/* A worker without recs: no refresh, every query from the model's encoder
 * (SGEMM): the same numbers but for the last bits. */
static void test_without_refresh_the_encoder_fills(void)
{
    static fixture fx;
    CHECK(fixture_init(&fx) == 0);
    if (fx.rk == NULL)
        return;
    fold_batch(&fx, NULL);
    hl_foldin *ref = reference(&fx);
    float got[DIM], want[DIM];
    double m_got = -1, m_want = -2;
    CHECK(ref != NULL && hl_wfoldin_sums(fx.wf, "new-1", 5, got, &m_got) == 0 &&
          hl_foldin_sums(ref, "new-1", 5, want, &m_want) == 0);
    CHECK_CLOSE(got, want, DIM, 1e-5);
    CHECK(m_got == m_want);
    hl_foldin_destroy(ref);
    fixture_free(&fx);
}

/* A thread serving another model than the newest one (here: one never
 * rebound to) folds nothing in: its notes are counted as skipped and
 * forgotten. */
static void test_other_model_folds_nothing(void)
{
    static fixture fx;
    CHECK(fixture_init(&fx) == 0);
    if (fx.rk == NULL)
        return;
    batch(&fx);
    hl_foldin_local_resolve(fx.wf, &fx.loc, (const hl_model *)&fx);
    CHECK(fx.loc.n == 0 && fx.loc.n_user == 0);
    hl_foldin_local_fill(fx.wf, &fx.loc, fx.sh, fx.rk);
    hl_foldin_local_flush(fx.wf, &fx.loc);
    float S[DIM];
    double M;
    CHECK(hl_wfoldin_sums(fx.wf, "new-1", 5, S, &M) == HL_ENOENT);
    fixture_free(&fx);
}

/* A model swap (hl_wfoldin_rebind): fold-in starts again in the new model's
 * space. The old accumulator's sums are gone, a thread still serving the
 * old model folds nothing, and one serving the new model adds what the
 * new model's queries give, exactly as a worker that started with it. */
static void test_rebind_follows_the_swap(void)
{
    static fixture fx;
    char err[256];
    CHECK(fixture_init(&fx) == 0);
    if (fx.rk == NULL)
        return;
    fold_batch(&fx, fx.rk);
    float S[DIM];
    double M;
    CHECK(hl_wfoldin_sums(fx.wf, "new-1", 5, S, &M) == 0);
    hl_model *m1 = fx.m, *m2 = model_open(err, sizeof err);
    CHECK(m2 != NULL);
    if (m2 == NULL)
        return;
    CHECK(hl_wfoldin_rebind(fx.wf, m2, err, sizeof err) == 0);
    CHECK(hl_wfoldin_sums(fx.wf, "new-1", 5, S, &M) == HL_ENOENT);
    batch(&fx);                                   /* a thread still on m1 */
    hl_foldin_local_resolve(fx.wf, &fx.loc, m1);
    CHECK(fx.loc.n == 0 && fx.loc.gen == NULL);
    hl_foldin_local_flush(fx.wf, &fx.loc);
    CHECK(hl_wfoldin_sums(fx.wf, "new-1", 5, S, &M) == HL_ENOENT);
    hl_rank_opts ro = {.k = 5, .exclude_seen = 1, .max_batch = 256};
    hl_ranker_destroy(fx.rk);                     /* the thread moves to m2 */
    fx.m = m2;
    fx.rk = hl_ranker_create(m2, &ro, err, sizeof err);
    CHECK(fx.rk != NULL && hl_wfoldin_rebind(fx.wf, m2, err, sizeof err) == 0);
    if (fx.rk == NULL)
        return;
    batch(&fx);
    hl_foldin_local_resolve(fx.wf, &fx.loc, m2);
    CHECK(fx.loc.gen != NULL);
    refresh_half(&fx);
    hl_foldin_local_fill(fx.wf, &fx.loc, fx.sh, fx.rk);
    hl_foldin_local_flush(fx.wf, &fx.loc);
    CHECK(fx.loc.gen == NULL);
    hl_foldin *ref = reference(&fx);              /* m2's queries and map alone */
    float want[DIM];
    double m_want = -2;
    M = -1;
    CHECK(ref != NULL && hl_wfoldin_sums(fx.wf, "new-1", 5, S, &M) == 0 &&
          hl_foldin_sums(ref, "new-1", 5, want, &m_want) == 0);
    CHECKF(memcmp(S, want, sizeof S) == 0 && M == m_want,
           "after the swap: sums differ from m2's queries (mass %g, want %g)", M, m_want);
    hl_foldin_destroy(ref);
    fixture_free(&fx);
    hl_model_close(m1);
}

/* A thread that resolved its notes under m1 flushes them after the
 * rebind to m2: m1's generation no longer serves, so they are skipped
 * (reason model_swapped), as a thread that resolved after the rebind
 * skips them, and halflife_foldin_items stays m2's count (0), not m1's.
 * They used to be added to m1's sums, which the rebind had dropped
 * (items_dropped), and counted as folded in. */
static void test_items_gauge_is_the_serving_models(void)
{
    static fixture fx;
    char err[256];
    CHECK(fixture_init(&fx) == 0);
    if (fx.rk == NULL)
        return;
    fold_batch(&fx, fx.rk);
    double before = hl_metrics_gauge_sum(fx.reg, "halflife_foldin_items");
    CHECKF(before > 0, "no folded item before the swap (%g)", before);
    hl_model *m2 = model_open(err, sizeof err);
    CHECK(m2 != NULL);
    if (m2 == NULL)
        return;
    batch(&fx);
    hl_foldin_local_resolve(fx.wf, &fx.loc, fx.m);  /* resolved under m1 ... */
    CHECK(fx.loc.gen != NULL);
    CHECK(hl_wfoldin_rebind(fx.wf, m2, err, sizeof err) == 0);
    CHECK(hl_metrics_gauge_sum(fx.reg, "halflife_foldin_items") == 0);
    hl_foldin_local_fill(fx.wf, &fx.loc, fx.sh, fx.rk);
    uint64_t events = hl_metrics_counter_sum(fx.reg, "halflife_foldin_events_total");
    hl_foldin_local_flush(fx.wf, &fx.loc);          /* ... flushed after the swap */
    double after = hl_metrics_gauge_sum(fx.reg, "halflife_foldin_items");
    CHECKF(after == 0, "halflife_foldin_items %g after the swap: the old model's count", after);
    uint64_t added = hl_metrics_counter_sum(fx.reg, "halflife_foldin_events_total") - events;
    double swapped = scraped(fx.reg,
                             "halflife_foldin_skipped_total{reason=\"model_swapped\"}");
    CHECKF(added == 0 && swapped == 18, "flushed after the swap: %llu folded in (want 0), "
           "skipped{reason=\"model_swapped\"} %g (want 18)", (unsigned long long)added,
           swapped);
    fixture_free(&fx);
    hl_model_close(m2);
}

/* The skip counts by reason, summed. */
static uint64_t skipped_total(fixture *fx)
{
    return hl_metrics_counter_sum(fx->reg, "halflife_foldin_skipped_total");
}

/* An event on an unknown item (known row 0 for the table) whose note
 * carries weight w, not the event's. */
static void push_weighted(fixture *fx, int u, const char *id, float w)
{
    push(fx, u, -1, fx->offset[u]++, 0, NULL);
    fx->ev_id[fx->sh->n_ev - 1] = id;
    hl_foldin_local_note(&fx->loc, fx->sh, fx->sh->n_ev - 1, id, (uint32_t)strlen(id), w);
}

/* Every noted event lands in exactly one counter: folded in
 * (halflife_foldin_events_total) or skipped under one reason. The batch's
 * duplicate (not applied) used to land in none; an add past the sums'
 * bound (HL_FOLDIN_MAX_SUM: an extreme weight) landed among the other
 * skips, with nothing to tell it from a lost note. */
static void test_every_note_counted_once(void)
{
    static fixture fx;
    CHECK(fixture_init(&fx) == 0);
    if (fx.rk == NULL)
        return;
    fold_batch(&fx, fx.rk);                 /* 19 notes, one a duplicate */
    uint64_t events = hl_metrics_counter_sum(fx.reg, "halflife_foldin_events_total");
    CHECKF(events == 18 && skipped_total(&fx) == 1,
           "19 notes: %llu folded in, %llu skipped (want 18 and 1)",
           (unsigned long long)events, (unsigned long long)skipped_total(&fx));
    double dup = scraped(fx.reg, "halflife_foldin_skipped_total{reason=\"not_applied\"}");
    CHECKF(dup == 1, "the duplicate: skipped{reason=\"not_applied\"} %g on /metrics", dup);
    hl_shard_batch_begin(fx.sh);
    push_weighted(&fx, 1, "hot", 1e38f);    /* M alone is past the bound */
    push_weighted(&fx, 2, "new-1", 1.0f);
    int d, fl;
    hl_shard_apply(fx.sh, fx.m, &d, &fl);
    hl_foldin_local_resolve(fx.wf, &fx.loc, fx.m);
    hl_foldin_local_fill(fx.wf, &fx.loc, fx.sh, fx.rk);
    hl_foldin_local_flush(fx.wf, &fx.loc);
    double refused = scraped(fx.reg, "halflife_foldin_skipped_total{reason=\"refused\"}");
    CHECKF(refused == 1, "an add past the sums' bound: skipped{reason=\"refused\"} %g on "
           "/metrics, want 1", refused);
    CHECK(hl_metrics_counter_sum(fx.reg, "halflife_foldin_events_total") == events + 1);
    CHECK(skipped_total(&fx) == 2);
    fixture_free(&fx);
}

/* With the lift, an add its item takes but the lift's baseline leaves out
 * (their sum past the bound) is folded in, and counted apart: eight items,
 * each noted once at 0.15 of the bound, so the baseline's mass passes it
 * at the seventh. */
static void test_baseline_refusal_is_counted_apart(void)
{
    static fixture fx;
    char err[256];
    CHECK(fixture_init(&fx) == 0);
    if (fx.rk == NULL)
        return;
    hl_foldin_local_reset(&fx.loc);
    hl_wfoldin_destroy(fx.wf);
    hl_wfoldin_opts fo = {.m = fx.m, .min_events = 1, .max_items = 64, .lift = 1.0f,
                          .topic = "items", .codec = {.dim = DIM}, .reg = fx.reg};
    fx.wf = hl_wfoldin_create(&fo, err, sizeof err);
    CHECK(fx.wf != NULL && hl_foldin_local_init(fx.wf, &fx.loc, err, sizeof err) == 0);
    if (fx.wf == NULL)
        return;
    static const char *ids[8] = {"b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"};
    hl_shard_batch_begin(fx.sh);
    for (int i = 0; i < 8; i++)
        push_weighted(&fx, i, ids[i], 0.15f * HL_FOLDIN_MAX_SUM);
    int d, fl;
    hl_shard_apply(fx.sh, fx.m, &d, &fl);
    hl_foldin_local_resolve(fx.wf, &fx.loc, fx.m);
    hl_foldin_local_fill(fx.wf, &fx.loc, fx.sh, fx.rk);
    hl_foldin_local_flush(fx.wf, &fx.loc);
    uint64_t events = hl_metrics_counter_sum(fx.reg, "halflife_foldin_events_total");
    double left = scraped(fx.reg, "halflife_foldin_baseline_refused_total");
    CHECKF(events == 8 && skipped_total(&fx) == 0 && left >= 2,
           "8 notes: %llu folded in, %llu skipped, %g left out of the baseline on /metrics "
           "(want 8, 0, >= 2)", (unsigned long long)events,
           (unsigned long long)skipped_total(&fx), left);
    fixture_free(&fx);
}

/* A release's purge (a lost assignment) takes back every record the
 * producer holds, fold-in's publications too. Those used to count as
 * published: the item waited for twice its count, for good on a worker
 * whose partitions, and so the item's buyers, had just moved away. Now the
 * next flush sends each such item again, once, even a flush without a
 * note. The producer points at no broker, so nothing leaves it unless
 * purged; the item reader is not started (its catalogue stays empty). */
static void test_purged_publication_is_sent_again(void)
{
    static fixture fx;
    char err[256];
    CHECK(fixture_init(&fx) == 0);
    hl_kafka_prop kp[] = {{"bootstrap.servers", "127.0.0.1:1"}, {"log_level", "0"}};
    hl_producer *prod = hl_producer_create(kp, 2, NULL, err, sizeof err);
    hl_metrics *reg = hl_metrics_create();
    hl_items_opts io = {.bootstrap = "127.0.0.1:1", .topic = "items", .codec = {.dim = DIM},
                        .m = fx.m, .max_new = 64, .reg = reg, .kafka = kp + 1, .n_kafka = 1};
    hl_items *items = prod != NULL ? hl_items_create(&io, err, sizeof err) : NULL;
    CHECKF(items != NULL, "%s", err);
    if (items == NULL)
        return;
    hl_foldin_local_reset(&fx.loc);
    hl_wfoldin_destroy(fx.wf);
    hl_wfoldin_opts fo = {.items = items, .m = fx.m, .min_events = 1, .max_items = 64,
                          .prod = prod, .topic = "items", .codec = {.dim = DIM}, .reg = reg};
    fx.wf = hl_wfoldin_create(&fo, err, sizeof err);
    CHECK(fx.wf != NULL && hl_foldin_local_init(fx.wf, &fx.loc, err, sizeof err) == 0);
    fold_batch(&fx, fx.rk);
    uint64_t sent = hl_metrics_counter_sum(reg, "halflife_foldin_published_total");
    CHECKF(sent >= 2, "%llu publications before the purge", (unsigned long long)sent);
    uint64_t purged = hl_producer_purge(prod);
    CHECKF(purged == sent, "%llu purged of %llu", (unsigned long long)purged,
           (unsigned long long)sent);
    hl_foldin_local_flush(fx.wf, &fx.loc);          /* no note: the purged ones alone */
    uint64_t again = hl_metrics_counter_sum(reg, "halflife_foldin_published_total") - sent;
    CHECKF(again == 2, "%llu publications after the purge, want 2 (new-1, new-2 once each)",
           (unsigned long long)again);
    hl_foldin_local_flush(fx.wf, &fx.loc);          /* and only once */
    CHECK(hl_metrics_counter_sum(reg, "halflife_foldin_published_total") == sent + again);
    hl_producer_settle(prod, 0);    /* reports into the ticket: before it goes */
    hl_items_destroy(items);        /* before the model it names */
    fixture_free(&fx);
    hl_producer_destroy(prod, 0);
    hl_metrics_destroy(reg);
}

int main(void)
{
    hl_log_set_level(HL_LOG_ERROR);
    RUN(test_queries_are_the_refreshs);
    RUN(test_without_refresh_the_encoder_fills);
    RUN(test_other_model_folds_nothing);
    RUN(test_rebind_follows_the_swap);
    RUN(test_items_gauge_is_the_serving_models);
    RUN(test_purged_publication_is_sent_again);
    RUN(test_every_note_counted_once);
    RUN(test_baseline_refusal_is_counted_apart);
    return t_n_failed ? 1 : 0;
}
