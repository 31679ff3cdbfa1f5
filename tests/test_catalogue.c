/* test_catalogue.c - the live catalogue (core/catalogue.c): updates replace
 * an item's state, tombstones forget it, the bound on unknown items holds,
 * expiry answers by event time, a swap rebinds by id (and to another dim),
 * fold-in never overrides an operator, and two keys survive compaction.
 * Its hook in the ranker is test_catalogue_rank.c; a full catalogue, loading
 * and stale tombstones are test_catalogue_full.c. */
#define T_SUITE "catalogue"
#include "catalogue_test_util.h"

/* ---- the table ---- */

static void test_updates_replace_and_tombstones_forget(void)
{
    tm t;
    tm_init(&t, N);
    hl_model *m = tm_open(&t, "rep");
    char err[256];
    hl_catalogue *c = hl_catalogue_create(m, 4, err, sizeof err);
    hl_catalogue_stats st;
    hl_item_update u = upd("i7");
    u.available = 0;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("i9");
    u.expires_at_ms = 5000;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    hl_catalogue_stats_get(c, &st);
    CHECK(st.hidden == 1 && st.expiring == 1 && st.added == 0);
    /* The whole state each time: i7 available again, no expiry. */
    u = upd("i7");
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    hl_catalogue_stats_get(c, &st);
    CHECK(st.hidden == 0 && st.expiring == 1);
    u = upd("i9");
    u.tombstone = 1;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    hl_catalogue_stats_get(c, &st);
    CHECK(st.hidden == 0 && st.expiring == 0);
    CHECK(hl_catalogue_version(c) == 4);
    hl_catview *v = hl_catalogue_view(c);
    int32_t out[8];
    int64_t next;
    CHECK(hl_catview_hidden_at(v, INT64_MAX - 1, out, &next) == 0);
    hl_catview_destroy(v);
    hl_catalogue_destroy(c);
    hl_model_close(m);
    tm_free(&t);
}

static void test_new_items_are_bounded(void)
{
    tm t;
    tm_init(&t, N);
    hl_model *m = tm_open(&t, "bound");
    char err[256], id[32];
    float e[DIM] = {0};
    hl_catalogue *c = hl_catalogue_create(m, 3, err, sizeof err);
    for (int i = 0; i < 3; i++) {
        snprintf(id, sizeof id, "new-%d", i);
        hl_item_update u = upd(id);
        u.e_in = u.e_out = e;
        CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    }
    hl_item_update u = upd("new-3");
    u.e_in = u.e_out = e;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == HL_EFULL);
    CHECKF(strstr(err, "catalogue.max.new.items") != NULL, "%s", err);
    u = upd("i3");                        /* a known item is never refused */
    u.e_in = u.e_out = e;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("new-0");                     /* forgetting one makes room */
    u.tombstone = 1;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("new-3");
    u.e_in = u.e_out = e;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    hl_catalogue_stats st;
    hl_catalogue_stats_get(c, &st);
    CHECK(st.added == 3 && st.overridden == 1);
    e[2] = NAN;
    u = upd("new-9");
    u.e_in = u.e_out = e;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == HL_EINVAL);
    e[2] = 3e38f;                         /* finite but beyond the model's bound */
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "beyond +-256") != NULL, "%s", err);
    e[2] = 0.0f;
    u.bias = -1e30f;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == HL_EINVAL);
    u.bias = 0.0f;
    hl_catview *v = hl_catalogue_view(c);
    CHECK(hl_catview_n_side(v) == 4);
    uint32_t len = 0;
    const char *s = hl_catview_item_id(v, hl_catview_row_find(v, "new-3", 5), &len);
    CHECK(s != NULL && len == 5 && memcmp(s, "new-3", 5) == 0);
    CHECK(hl_catview_row_find(v, "i3", 2) >= N);     /* listed under its side row */
    CHECK(hl_catview_row_find(v, "nope", 4) == -1);
    hl_catview_destroy(v);
    hl_catalogue_destroy(c);
    hl_model_close(m);
    tm_free(&t);
}

/* A tombstone that finds no record under its key (an id never written,
 * or written and deleted already, as compaction's retained tombstones are
 * read again) changes nothing, so the version must not move: each new
 * version makes the reader build a view (a copy of every side vector)
 * and every shard thread take it up. Before the fix each such tombstone
 * cost a full view. */
static void test_tombstone_of_nothing_keeps_the_version(void)
{
    tm t;
    tm_init(&t, N);
    hl_model *m = tm_open(&t, "noop");
    char err[256];
    hl_catalogue *c = hl_catalogue_create(m, 8, err, sizeof err);
    hl_item_update u = upd("i3");
    u.available = 0;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    uint64_t ver = hl_catalogue_version(c);
    u = upd("never-written");
    u.tombstone = 1;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("i3");                        /* i3's fold-in key holds nothing */
    u.tombstone = 1;
    u.foldin_key = 1;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    CHECKF(hl_catalogue_version(c) == ver, "version %llu after two tombstones of nothing, "
           "want %llu", (unsigned long long)hl_catalogue_version(c), (unsigned long long)ver);
    u.foldin_key = 0;                     /* i3's own record: a change */
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    CHECK(hl_catalogue_version(c) == ver + 1);
    hl_catalogue_stats st;
    hl_catalogue_stats_get(c, &st);
    CHECK(st.hidden == 0);
    hl_catalogue_destroy(c);
    hl_model_close(m);
    tm_free(&t);
}

static void test_expiry_by_event_time(void)
{
    tm t;
    tm_init(&t, N);
    hl_model *m = tm_open(&t, "exp");
    char err[256];
    hl_catalogue *c = hl_catalogue_create(m, 0, err, sizeof err);
    const char *ids[] = {"i50", "i10", "i20"};
    int64_t at[] = {3000, 1000, 2000};
    for (int i = 0; i < 3; i++) {
        hl_item_update u = upd(ids[i]);
        u.expires_at_ms = at[i];
        hl_catalogue_apply(c, &u, err, sizeof err);
    }
    hl_item_update u = upd("i5");
    u.available = 0;
    hl_catalogue_apply(c, &u, err, sizeof err);
    hl_catview *v = hl_catalogue_view(c);
    int32_t out[8];
    int64_t next;
    CHECK(hl_catview_hidden_max(v) == 4);
    CHECK(hl_catview_hidden_at(v, 999, out, &next) == 1 && out[0] == 5 && next == 1000);
    CHECK(hl_catview_hidden_at(v, 1000, out, &next) == 2 && out[1] == 10 && next == 2000);
    int32_t n = hl_catview_hidden_at(v, 5000, out, &next);
    CHECK(n == 4 && out[0] == 5 && out[1] == 10 && out[2] == 20 && out[3] == 50);
    CHECK(next == HL_CATALOGUE_NO_EXPIRY);
    hl_catview_destroy(v);
    hl_catalogue_destroy(c);
    hl_model_close(m);
    tm_free(&t);
}

/* ---- swaps, fold-in and compaction ---- */

/* Reverses t's item order (ids and vectors move together): a retrained
 * model whose rows are not the old one's. */
static void tm_reverse(tm *t)
{
    int n = t->p.info.n_items;
    for (int i = 0, j = n - 1; i < j; i++, j--) {
        char *id = t->ids[i]; t->ids[i] = t->ids[j]; t->ids[j] = id;
        uint32_t l = t->lens[i]; t->lens[i] = t->lens[j]; t->lens[j] = l;
        for (int d = 0; d < DIM; d++) {
            float x = t->e_in[i * DIM + d];
            t->e_in[i * DIM + d] = t->e_in[j * DIM + d];
            t->e_in[j * DIM + d] = x;
        }
    }
}

static int32_t row_of(const hl_model *m, const char *id)
{
    return hl_model_item_find(m, id, strlen(id));
}

/* A swap to a model with other rows in another order: the hide and the
 * expiry follow their items by id; the added item the new model does not
 * know keeps its vectors (listed, found by key); the override of a known
 * item and the embedding of an added item the new model learned are
 * dropped and counted (the model's vectors win). */
static void test_rebind_follows_ids(void)
{
    tm a, b;
    tm_init(&a, N);
    tm_init(&b, N + 10);                  /* knows i300..i309 too */
    tm_reverse(&b);
    hl_model *ma = tm_open(&a, "fa"), *mb = tm_open(&b, "fb");
    char err[256];
    float e[DIM] = {1}, e2[DIM] = {2};
    hl_catalogue *c = hl_catalogue_create(ma, 8, err, sizeof err);
    hl_item_update u = upd("i305");       /* unknown to a, known to b */
    u.e_in = u.e_out = e;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("new-x");                     /* unknown to both */
    u.e_in = u.e_out = e2;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("i7");                        /* an override of a known item */
    u.e_in = u.e_out = e;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("i4");
    u.available = 0;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("i9");
    u.expires_at_ms = 1000;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    hl_catalogue_rebind_stats rs;
    CHECK(hl_catalogue_rebind(c, mb, &rs) == 0);
    CHECK(rs.dropped_known == 2 && rs.dropped_dim == 0);
    hl_model_close(ma);                   /* nothing may point into it now */
    hl_catalogue_stats st;
    hl_catalogue_stats_get(c, &st);
    CHECK(st.added == 1 && st.overridden == 0 && st.hidden == 1 && st.expiring == 1);
    hl_catview *v = hl_catalogue_view(c);
    int32_t out[8], nb = N + 10;
    int64_t next;
    CHECK(hl_catview_hidden_at(v, 999, out, &next) == 1 && out[0] == row_of(mb, "i4"));
    CHECK(next == 1000);
    int32_t n = hl_catview_hidden_at(v, 1000, out, &next);
    CHECK(n == 2 && out[0] == row_of(mb, "i9") && out[1] == row_of(mb, "i4"));
    CHECK(hl_catview_n_side(v) == 1 && hl_catview_side_e_in(v)[0] == 2.0f);
    CHECK(hl_catview_added_row(v, hl_item_key("new-x", 5)) == nb);
    CHECK(hl_catview_added_row(v, hl_item_key("i305", 4)) == -1);
    CHECK(hl_catview_row_find(v, "i305", 4) == row_of(mb, "i305"));
    uint32_t len;
    const char *id = hl_catview_item_id(v, nb, &len);
    CHECK(id != NULL && len == 5 && memcmp(id, "new-x", 5) == 0);
    hl_catview_destroy(v);
    hl_catalogue_destroy(c);
    hl_model_close(mb);
    tm_free(&a);
    tm_free(&b);
}

/* Another dim: embeddings of unknown items are dropped and counted, hides
 * stay, and later embeddings are kept at the new width. */
static void test_rebind_to_other_dim(void)
{
    tm a, c3;
    tm_init(&a, N);
    tm_init_dim(&c3, N, DIM / 2);
    hl_model *ma = tm_open(&a, "da"), *mc = tm_open(&c3, "dc");
    char err[256];
    float e[DIM] = {1};
    hl_catalogue *c = hl_catalogue_create(ma, 8, err, sizeof err);
    hl_item_update u = upd("new-y");
    u.e_in = u.e_out = e;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("i4");
    u.available = 0;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    hl_catalogue_rebind_stats rs;
    CHECK(mc != NULL && hl_catalogue_rebind(c, mc, &rs) == 0);
    CHECK(rs.dropped_dim == 1 && rs.dropped_known == 0);
    hl_catalogue_stats st;
    hl_catalogue_stats_get(c, &st);
    CHECK(st.added == 0 && st.overridden == 0 && st.hidden == 1);
    float e2[DIM / 2] = {2};
    u = upd("brand-new");
    u.e_in = u.e_out = e2;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    hl_catview *v = hl_catalogue_view(c);
    CHECK(hl_catview_n_side(v) == 1 && hl_catview_side_e_out(v)[0] == 2.0f);
    CHECK(hl_catview_added_row(v, hl_item_key("new-y", 5)) == -1);
    CHECK(hl_catview_added_row(v, hl_item_key("brand-new", 9)) == N);
    hl_catview_destroy(v);
    hl_catalogue_destroy(c);
    hl_model_close(ma);
    hl_model_close(mc);
    tm_free(&a);
    tm_free(&c3);
}

/* A fold-in record whose embedding a swap to another dim dropped serves
 * nothing: the item is in no list. Fold-in must start over for it, at
 * catalogue.foldin.min.events, not wait for twice the count the dropped
 * vectors were built from (before the fix hl_catalogue_foldin_state said
 * 40 here, so a folded item with 40 interactions left every list until a
 * worker saw 80 more under the new model). */
static void test_foldin_dropped_at_dim_swap_starts_afresh(void)
{
    tm a, c3;
    tm_init(&a, N);
    tm_init_dim(&c3, N, DIM / 2);
    hl_model *ma = tm_open(&a, "fa"), *mc = tm_open(&c3, "fc");
    char err[256];
    float e[DIM] = {1};
    hl_catalogue *c = hl_catalogue_create(ma, 8, err, sizeof err);
    hl_item_update u = upd("new-f");
    u.e_in = u.e_out = e;
    u.foldin_events = 40;
    u.foldin_key = 1;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    CHECK(hl_catalogue_foldin_state(c, "new-f", 5) == 40);
    hl_catalogue_rebind_stats rs;
    CHECK(mc != NULL && hl_catalogue_rebind(c, mc, &rs) == 0 && rs.dropped_dim == 1);
    int64_t n = hl_catalogue_foldin_state(c, "new-f", 5);
    CHECKF(n == 0, "foldin state %lld after its vectors were dropped, want 0", (long long)n);
    float e2[DIM / 2] = {2};                  /* the new dim's publication serves again */
    u.e_in = u.e_out = e2;
    u.foldin_events = 3;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    CHECK(hl_catalogue_foldin_state(c, "new-f", 5) == 3);
    hl_catalogue_destroy(c);
    hl_model_close(ma);
    hl_model_close(mc);
    tm_free(&a);
    tm_free(&c3);
}

/* Fold-in records (foldin_events > 0) add unknown items and replace one
 * another, but never an operator's record nor a model item; an operator's
 * record replaces a fold-in one. hl_catalogue_foldin_state says which. */
static void test_foldin_never_overrides_an_operator(void)
{
    tm t;
    tm_init(&t, N);
    hl_model *m = tm_open(&t, "fold");
    char err[256];
    float e[DIM] = {1};
    hl_catalogue *c = hl_catalogue_create(m, 8, err, sizeof err);
    hl_catalogue_stats st;
    hl_item_update u = upd("new-f");
    u.e_in = u.e_out = e;
    u.foldin_events = 5;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    CHECK(hl_catalogue_foldin_state(c, "new-f", 5) == 5);
    u.foldin_events = 10;                         /* a later publication replaces it */
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    CHECK(hl_catalogue_foldin_state(c, "new-f", 5) == 10);
    hl_catalogue_stats_get(c, &st);
    CHECK(st.foldin == 1 && st.added == 0);
    u = upd("i4");                                /* the model knows it */
    u.e_in = u.e_out = e;
    u.foldin_events = 5;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == HL_CATALOGUE_IGNORED);
    CHECK(hl_catalogue_foldin_state(c, "i4", 2) == -1);
    u = upd("new-o");                             /* an operator hid it first */
    u.available = 0;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("new-o");
    u.e_in = u.e_out = e;
    u.foldin_events = 50;
    uint64_t ver = hl_catalogue_version(c);
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == HL_CATALOGUE_IGNORED);
    CHECK(hl_catalogue_version(c) == ver && hl_catalogue_foldin_state(c, "new-o", 5) == -1);
    u = upd("new-f");                             /* an operator takes over new-f */
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    CHECK(hl_catalogue_foldin_state(c, "new-f", 5) == -1);
    CHECK(hl_catalogue_foldin_state(c, "never", 5) == 0);
    hl_catalogue_stats_get(c, &st);
    CHECK(st.foldin == 0 && st.added == 0 && st.hidden == 1);
    hl_catalogue_destroy(c);
    hl_model_close(m);
    tm_free(&t);
}

/* Two keys: a compacted topic keeps the newest record per key, and after
 * delete.retention.ms not even the tombstones. The catalogue's state must
 * be the same whether it read every record or only what compaction left:
 * random logs over three new items, operator records (with vectors, hidden,
 * or plain) under the item_id, fold-in records under the fold-in key, and
 * tombstones under either, read whole, compacted, and compacted without
 * tombstones. The race of issue 11 (an operator's record and a fold-in one
 * written at the same moment, the fold-in one landing later) is one of
 * the logs: the operator's stays in effect in all three. */
typedef struct logrec { int item, key, kind; float v; } logrec;  /* kind 0 tombstone */

static void apply_log(hl_catalogue *c, const logrec *lg, int n, int skip_tombstones)
{
    static const char *ids[3] = {"new-a", "new-b", "new-c"};
    char err[256];
    for (int i = 0; i < n; i++) {
        float e[DIM] = {0};
        e[0] = lg[i].v;
        e[1] = 1.0f;
        hl_item_update u = upd(ids[lg[i].item]);
        u.foldin_key = lg[i].key;
        if (lg[i].kind == 0 && skip_tombstones)
            continue;
        u.tombstone = lg[i].kind == 0;
        if (lg[i].kind == 2 || lg[i].key == 1)
            u.e_in = u.e_out = e;
        u.available = lg[i].kind != 3;
        u.foldin_events = lg[i].key == 1 ? 5 + (int64_t)lg[i].v : 0;
        int rc = hl_catalogue_apply(c, &u, err, sizeof err);
        CHECKF(rc == 0 || rc == HL_CATALOGUE_IGNORED, "record %d: %s", i, err);
    }
}

/* One line per item: its row kind, e_out[0], hidden, fold-in state. */
static void describe(const hl_catalogue *c, char *out, size_t cap)
{
    static const char *ids[3] = {"new-a", "new-b", "new-c"};
    hl_catview *v = hl_catalogue_view(c);
    int32_t hid[64], nh = 0;
    int64_t next;
    size_t used = 0;
    if (v != NULL)
        nh = hl_catview_hidden_at(v, 0, hid, &next);
    for (int i = 0; v != NULL && i < 3; i++) {
        int32_t row = hl_catview_row_find(v, ids[i], 5);
        int hidden = 0;
        for (int k = 0; k < nh; k++)
            hidden |= hid[k] == row;
        float e0 = row >= hl_catview_n_model(v) ?
                   hl_catview_side_e_out(v)[(size_t)(row - hl_catview_n_model(v)) * DIM] : 0;
        used += (size_t)snprintf(out + used, cap - used, "%s row %d e0 %g hidden %d fold %lld; ",
                                 ids[i], row >= 0, (double)e0, hidden,
                                 (long long)hl_catalogue_foldin_state(c, ids[i], 5));
    }
    hl_catview_destroy(v);
}

static void test_two_keys_survive_compaction(void)
{
    tm t;
    tm_init(&t, N);
    hl_model *m = tm_open(&t, "keys");
    char err[256], full[512], comp[512], bare[512];
    int bad = 0;
    for (int run = 0; run < 300; run++) {
        logrec lg[24], kept[24];
        int n = run == 0 ? 2 : 6 + (int)(frand() * 8 + 8), nk = 0;
        for (int i = 0; i < n; i++) {
            int r = (int)((frand() + 1.0f) * 50.0f);
            lg[i] = (logrec){r % 3, (r / 3) % 2, (r / 6) % 4, (float)(i + 1)};
            if (lg[i].key == 1 && lg[i].kind != 0)
                lg[i].kind = 2;                   /* fold-in: vectors, available */
        }
        if (run == 0) {                           /* the race: operator's, then fold-in's */
            lg[0] = (logrec){0, 0, 2, 7.0f};
            lg[1] = (logrec){0, 1, 2, 9.0f};
        }
        for (int i = 0; i < n; i++) {             /* compaction: the newest per key */
            int newest = 1;
            for (int j = i + 1; j < n; j++)
                newest &= !(lg[j].item == lg[i].item && lg[j].key == lg[i].key);
            if (newest)
                kept[nk++] = lg[i];
        }
        hl_catalogue *a = hl_catalogue_create(m, 8, err, sizeof err);
        hl_catalogue *b = hl_catalogue_create(m, 8, err, sizeof err);
        hl_catalogue *c = hl_catalogue_create(m, 8, err, sizeof err);
        apply_log(a, lg, n, 0);
        apply_log(b, kept, nk, 0);
        apply_log(c, kept, nk, 1);
        describe(a, full, sizeof full);
        describe(b, comp, sizeof comp);
        describe(c, bare, sizeof bare);
        if (strcmp(full, comp) != 0 || strcmp(full, bare) != 0) {
            if (bad++ == 0)
                printf("    run %d:\n    read whole: %s\n    compacted:  %s\n    no "
                       "tombstones: %s\n", run, full, comp, bare);
        }
        if (run == 0)
            CHECKF(strstr(full, "new-a row 1 e0 7 hidden 0 fold -1") != NULL,
                   "the operator's record lost the race: %s", full);
        hl_catalogue_destroy(a);
        hl_catalogue_destroy(b);
        hl_catalogue_destroy(c);
    }
    CHECKF(bad == 0, "%d of 300 logs read differently once compacted", bad);
    hl_model_close(m);
    tm_free(&t);
}

/* An overridden known item's side row is found from its model row (the
 * worker leaves it out of the lists of users whose ring names that row). */
static void test_override_row_of_model_row(void)
{
    tm a;
    tm_init(&a, N);
    hl_model *m = tm_open(&a, "ovr");
    char err[256];
    hl_catalogue *c = hl_catalogue_create(m, 8, err, sizeof err);
    float e[DIM] = {0};
    const char *ids[] = {"i5", "i2", "brand-new"};
    for (int i = 0; i < 3; i++) {
        hl_item_update u = upd(ids[i]);
        u.e_in = u.e_out = e;
        CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    }
    hl_catview *v = hl_catalogue_view(c);
    uint32_t len;
    int32_t r5 = hl_catview_override_row(v, 5), r2 = hl_catview_override_row(v, 2);
    CHECK(r5 >= N && r2 >= N && r5 != r2);
    CHECK(hl_catview_item_id(v, r5, &len) && len == 2 && !memcmp(hl_catview_item_id(v, r5, &len), "i5", 2));
    CHECK(hl_catview_item_id(v, r2, &len) && len == 2 && !memcmp(hl_catview_item_id(v, r2, &len), "i2", 2));
    CHECK(hl_catview_override_row(v, 3) == -1 && hl_catview_override_row(v, -1) == -1);
    hl_catview_destroy(v);
    hl_catalogue_destroy(c);
    hl_model_close(m);
    tm_free(&a);
}

/* ---- views rebuilt in place ---- */

/* Everything a reader can ask of v and f agrees. */
static void same_view(const hl_catview *v, const hl_catview *f, int n_new)
{
    int32_t ns = hl_catview_n_side(f), d = hl_catview_dim(f), hv[4 * N], hf[4 * N];
    CHECK(hl_catview_n_side(v) == ns && hl_catview_dim(v) == d &&
          hl_catview_version(v) == hl_catview_version(f) &&
          hl_catview_hidden_max(v) == hl_catview_hidden_max(f));
    CHECK(!memcmp(hl_catview_side_e_in(v), hl_catview_side_e_in(f), (size_t)ns * d * 4) &&
          !memcmp(hl_catview_side_e_out(v), hl_catview_side_e_out(f), (size_t)ns * d * 4) &&
          !memcmp(hl_catview_side_bias(v), hl_catview_side_bias(f), (size_t)ns * 4));
    for (int32_t row = 0; row < N + ns; row++) {
        uint32_t lv = 0, lf = 0;
        const char *iv = hl_catview_item_id(v, row, &lv), *jf = hl_catview_item_id(f, row, &lf);
        CHECK(lv == lf && !memcmp(iv, jf, lf));
        CHECK(hl_catview_override_row(v, row) == hl_catview_override_row(f, row));
        if (row >= N)
            CHECK(hl_catview_side_folded(v, row - N) == hl_catview_side_folded(f, row - N));
    }
    for (int k = 0; k < n_new; k++) {
        char id[32];
        int len = snprintf(id, sizeof id, "new-%d", k);
        uint64_t key = hl_item_key(id, (uint32_t)len);
        CHECK(hl_catview_added_row(v, key) == hl_catview_added_row(f, key));
    }
    for (int64_t at = 0; at <= 4000; at += 1000) {
        int64_t nv, nf;
        int32_t n = hl_catview_hidden_at(f, at, hf, &nf);
        CHECK(hl_catview_hidden_at(v, at, hv, &nv) == n && nv == nf &&
              !memcmp(hv, hf, (size_t)n * sizeof *hf));
    }
}

/* One random update of dim d: a hide, an expiry, an embedding (an
 * operator's or a fold-in record), or a tombstone, of a known or new id. */
static void random_update(hl_catalogue *c, int d, int n_new)
{
    char id[32], err[256];
    float e_in[DIM], e_out[DIM];
    int which = (int)((frand() + 1.0f) * 50.0f), kind = which % 5;
    if (which % 2)
        snprintf(id, sizeof id, "i%d", which % N);
    else
        snprintf(id, sizeof id, "new-%d", (int)((frand() + 1.0f) * 0.5f * (float)n_new));
    hl_item_update u = upd(id);
    for (int i = 0; i < d; i++) {
        e_in[i] = frand();
        e_out[i] = frand();
    }
    if (kind == 0)
        u.available = 0;
    else if (kind == 1)
        u.expires_at_ms = 1000 * (int64_t)(which % 4);
    else if (kind == 4)
        u.tombstone = 1;
    else {
        u.e_in = e_in;
        u.e_out = e_out;
        u.bias = frand();
        u.foldin_events = kind == 3 ? 1 + which % 9 : 0;
        u.foldin_key = kind == 3;
    }
    int rc = hl_catalogue_apply(c, &u, err, sizeof err);
    CHECK(rc == 0 || rc == HL_CATALOGUE_IGNORED || rc == HL_EFULL);
}

/* A view built in the memory of an older one (hl_catalogue_view_reuse)
 * equals a fresh view of the same catalogue, as the catalogue grows,
 * shrinks and changes dim under a model swap. */
static void test_view_rebuilt_in_place_equals_fresh(void)
{
    tm a, b;
    tm_init(&a, N);
    tm_init_dim(&b, N, DIM / 2);
    hl_model *ma = tm_open(&a, "ra"), *mb = tm_open(&b, "rb");
    char err[256];
    enum { N_NEW = 120 };
    hl_catalogue *c = hl_catalogue_create(ma, N_NEW, err, sizeof err);
    hl_catview *w = NULL;
    int d = DIM;
    for (int round = 0; round < 12; round++) {
        if (round == 6) {                 /* a swap to half the dim */
            hl_catalogue_rebind_stats rs;
            CHECK(mb != NULL && hl_catalogue_rebind(c, mb, &rs) == 0);
            d = DIM / 2;
        }
        int n = round == 3 ? 400 : 40;   /* one round grows the side rows a lot */
        for (int i = 0; i < n; i++)
            random_update(c, d, N_NEW);
        w = hl_catalogue_view_reuse(c, w);
        hl_catview *f = hl_catalogue_view(c);
        CHECK(w != NULL && f != NULL);
        same_view(w, f, N_NEW);
        hl_catview_destroy(f);
    }
    hl_catview_destroy(w);
    hl_catalogue_destroy(c);
    hl_model_close(ma);
    hl_model_close(mb);
    tm_free(&a);
    tm_free(&b);
}

/* Long id k (up to HL_MAX_ID_LEN bytes): "L<k>-" padded with letters. */
static uint32_t long_id(char *id, int k)
{
    int n = snprintf(id, HL_MAX_ID_LEN + 1, "L%d-", k);
    while (n < 40 + (k * 37) % (HL_MAX_ID_LEN - 40))
        id[n++] = (char)('a' + k % 26);
    id[n] = '\0';
    return (uint32_t)n;
}

/* An embedding of dim d for long id k. */
static void long_update(hl_catalogue *c, int d, int k)
{
    char id[HL_MAX_ID_LEN + 1], err[256];
    float e[DIM];
    for (int i = 0; i < d; i++)
        e[i] = frand();
    uint32_t len = long_id(id, k);
    hl_item_update u = upd(id);
    u.id_len = len;
    u.e_in = u.e_out = e;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
}

/* One view rebuilt in place through what grows its arrays past their
 * first size: from no side rows to N_LONG long ids (the id buffer), then
 * a swap to twice the dim with as many rows (the vectors: a row count the
 * arrays hold at the old dim but not at the new). Each rebuild equals a
 * fresh view. */
static void test_view_reused_through_growth(void)
{
    tm a, b;
    tm_init(&a, N);
    tm_init_dim(&b, N, DIM / 2);
    hl_model *ma = tm_open(&a, "growa"), *mb = tm_open(&b, "growb");
    char err[256];
    enum { N_LONG = 100 };
    hl_catalogue *c = mb ? hl_catalogue_create(mb, N_LONG, err, sizeof err) : NULL;
    hl_catview *v = c ? hl_catalogue_view_reuse(c, NULL) : NULL;     /* no side rows */
    CHECK(v != NULL && hl_catview_n_side(v) == 0);
    for (int step = 0; step < 3 && v != NULL; step++) {
        hl_catalogue_rebind_stats rs;
        if (step == 2)                  /* every embedding dropped, then back */
            CHECK(hl_catalogue_rebind(c, ma, &rs) == 0 && rs.dropped_dim == N_LONG);
        for (int k = 0; k < N_LONG; k++)
            long_update(c, step == 2 ? DIM : DIM / 2, k);
        v = hl_catalogue_view_reuse(c, v);
        hl_catview *f = hl_catalogue_view(c);
        CHECK(v != NULL && f != NULL && hl_catview_n_side(f) == N_LONG);
        if (v == NULL || f == NULL)
            break;
        same_view(v, f, 0);
        for (int k = 0; k < N_LONG; k++) {
            char id[HL_MAX_ID_LEN + 1];
            uint64_t key = hl_item_key(id, long_id(id, k));
            CHECK(hl_catview_added_row(v, key) == hl_catview_added_row(f, key));
        }
        hl_catview_destroy(f);
    }
    hl_catview_destroy(v);
    hl_catalogue_destroy(c);
    hl_model_close(ma);
    hl_model_close(mb);
    tm_free(&a);
    tm_free(&b);
}
int main(void)
{
    RUN(test_view_rebuilt_in_place_equals_fresh);
    RUN(test_view_reused_through_growth);
    RUN(test_override_row_of_model_row);
    RUN(test_foldin_never_overrides_an_operator);
    RUN(test_two_keys_survive_compaction);
    RUN(test_updates_replace_and_tombstones_forget);
    RUN(test_tombstone_of_nothing_keeps_the_version);
    RUN(test_new_items_are_bounded);
    RUN(test_expiry_by_event_time);
    RUN(test_rebind_follows_ids);
    RUN(test_rebind_to_other_dim);
    RUN(test_foldin_dropped_at_dim_swap_starts_afresh);
    TEST_EXIT();
}
