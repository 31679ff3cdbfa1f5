/* test_catalogue_full.c - a full catalogue (core/catalogue.c): the
 * stalest fold-in item gives its slot up, a worker loading the item topic
 * ends with what the running worker listed (never more than
 * catalogue.max.new.items), and a lagging worker's eviction tombstone
 * spares a newer fold-in record. The table's other rules are
 * test_catalogue.c. */
#define T_SUITE "catalogue_full"
#include "catalogue_test_util.h"

/* Fold-in records (a worker's, under the fold-in key) are never
 * tombstoned by anyone, so over a shop's churn they held every new-item
 * slot for good: then every new id was refused as catalogue_full, an
 * operator's add included, and fold-in learnt nothing new. A full
 * catalogue now gives up the fold-in item whose newest record is oldest
 * (never an operator's), for an operator's record and a fold-in one
 * alike, and counts it. */
/* A fold-in record of id at events interactions, with vectors e, read
 * under the item's fold-in key. */
static hl_item_update fold_upd(const char *id, const float *e, int64_t events)
{
    hl_item_update u = upd(id);
    u.e_in = u.e_out = e;
    u.foldin_events = events;
    u.foldin_key = 1;
    return u;
}

static void test_full_gives_up_the_stalest_foldin_item(void)
{
    tm t;
    tm_init(&t, N);
    hl_model *m = tm_open(&t, "evict");
    char err[256], id[32];
    float e[DIM] = {1};
    hl_catalogue *c = hl_catalogue_create(m, 3, err, sizeof err);
    hl_catalogue_stats st;
    for (int i = 0; i < 3; i++) {              /* fold-0..2 fill every slot */
        snprintf(id, sizeof id, "fold-%d", i);
        hl_item_update u = fold_upd(id, e, 2);
        CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    }
    hl_item_update u = fold_upd("fold-0", e, 4);   /* written again: fold-1 is stalest */
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("op-a");                           /* an operator's add is never refused */
    u.e_in = u.e_out = e;
    CHECKF(hl_catalogue_apply(c, &u, err, sizeof err) == 0, "%s", err);
    uint32_t len = 0;
    const char *gone = hl_catalogue_evicted(c, &len);   /* the reader tombstones it */
    CHECK(gone != NULL && len == 6 && memcmp(gone, "fold-1", 6) == 0);
    CHECK(hl_catalogue_foldin_state(c, "fold-1", 6) == 0);
    CHECK(hl_catalogue_foldin_state(c, "fold-0", 6) == 4);
    u = fold_upd("fold-new", e, 2);            /* nor is fold-in's: fold-2 goes */
    CHECKF(hl_catalogue_apply(c, &u, err, sizeof err) == 0, "%s", err);
    CHECK(hl_catalogue_foldin_state(c, "fold-2", 6) == 0);
    CHECK(hl_catalogue_foldin_state(c, "fold-new", 8) == 2);
    u = upd("fold-new");                       /* no eviction: nothing named */
    u.available = 0;
    u.foldin_events = 3;
    u.foldin_key = 1;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    CHECK(hl_catalogue_evicted(c, &len) == NULL && len == 0);
    u = upd("fold-0");                         /* an operator takes fold-0 over: not evictable */
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("op-b");                           /* fold-new is the only fold-in item left */
    u.available = 0;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    CHECK(hl_catalogue_foldin_state(c, "fold-new", 8) == 0);
    CHECK(hl_catalogue_evicted(c, &len) != NULL && len == 8);
    hl_catalogue_stats_get(c, &st);
    CHECK(st.foldin == 0 && st.added == 1 && st.foldin_evicted == 3);
    u = upd("op-c");                           /* operators hold every slot: refused */
    u.e_in = u.e_out = e;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == HL_EFULL);
    u.foldin_events = 2;
    u.foldin_key = 1;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == HL_EFULL);
    hl_catview *v = hl_catalogue_view(c);
    CHECK(hl_catview_n_side(v) == 1 && hl_catview_row_find(v, "op-a", 4) == N);
    hl_catview_destroy(v);
    hl_catalogue_destroy(c);
    hl_model_close(m);
    tm_free(&t);
}

/* A worker reading the topic from the start may read fold-in records
 * before the tombstones (in other partitions) of the items they took the
 * slots of: while loading, new ids take the slack (an operator's record
 * too, while operators name fewer than max_new new ids), and the trim at
 * the end gives up the stalest fold-in items beyond max_new, one a call,
 * naming each. */
static void test_loading_slack_then_trim(void)
{
    tm t;
    tm_init(&t, N);
    hl_model *m = tm_open(&t, "slack");
    char err[256], id[32];
    float e[DIM] = {1};
    hl_catalogue *c = hl_catalogue_create(m, 2, err, sizeof err);
    hl_catalogue_set_slack(c, 2);
    hl_catalogue_stats st;
    uint32_t len = 0;
    for (int i = 0; i < 4; i++) {              /* 4 fold-in items into 2 + 2 slots */
        snprintf(id, sizeof id, "fold-%d", i);
        hl_item_update u = upd(id);
        u.e_in = u.e_out = e;
        u.foldin_events = 2;
        u.foldin_key = 1;
        CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
        CHECK(hl_catalogue_evicted(c, &len) == NULL);
    }
    hl_item_update u = upd("fold-4");          /* the slack is used up: fold-0 goes */
    u.e_in = u.e_out = e;
    u.foldin_events = 2;
    u.foldin_key = 1;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    const char *gone = hl_catalogue_evicted(c, &len);
    CHECK(gone != NULL && len == 6 && memcmp(gone, "fold-0", 6) == 0);
    u = upd("fold-1");                         /* its tombstone, read late */
    u.tombstone = 1;
    u.foldin_key = 1;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = upd("op-a");                           /* an operator's takes the slack too */
    u.available = 0;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    CHECK(hl_catalogue_evicted(c, &len) == NULL);
    hl_catalogue_set_slack(c, 0);
    uint64_t ver = hl_catalogue_version(c);
    CHECK(hl_catalogue_trim(c) == 1);          /* 4 kept: 2 beyond max_new go */
    gone = hl_catalogue_evicted(c, &len);
    CHECK(gone != NULL && len == 6 && memcmp(gone, "fold-2", 6) == 0);
    CHECK(hl_catalogue_trim(c) == 1);
    gone = hl_catalogue_evicted(c, &len);
    CHECK(gone != NULL && len == 6 && memcmp(gone, "fold-3", 6) == 0);
    CHECK(hl_catalogue_trim(c) == 0 && hl_catalogue_evicted(c, &len) == NULL);
    CHECK(hl_catalogue_version(c) == ver + 2);
    CHECK(hl_catalogue_foldin_state(c, "fold-4", 6) == 2);
    hl_catalogue_stats_get(c, &st);
    CHECK(st.foldin == 1 && st.hidden == 1 && st.foldin_evicted == 3);
    u = upd("op-b");                           /* no fold-in item left to give up */
    u.available = 0;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    hl_catalogue_set_slack(c, 2);              /* operators hold every slot: no slack */
    u = upd("op-c");
    u.available = 0;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == HL_EFULL);
    hl_catalogue_destroy(c);
    hl_model_close(m);
    tm_free(&t);
}

/* One record of a load sequence: "f:id" a fold-in record, "o:id" an
 * operator's add (an embedding), "t:id" a tombstone of id's fold-in key,
 * "x:id" one of its item_id key (an operator's). */
static int apply_step(hl_catalogue *c, const char *step, const float *e)
{
    char err[256];
    hl_item_update u = step[0] == 'f' ? fold_upd(step + 2, e, 2) : upd(step + 2);
    if (step[0] == 'o')
        u.e_in = u.e_out = e;
    u.tombstone = step[0] == 't' || step[0] == 'x';
    u.foldin_key |= step[0] == 't';
    return hl_catalogue_apply(c, &u, err, sizeof err);
}

/* A worker started later reads what a running worker read, in the same
 * order, but the tombstone of each fold-in item the running worker gave up
 * comes after the records that took its slot. Both must refuse the same
 * records and list the same items, never more than max_new (2). Before
 * the fix the loading worker took "o3" (and in the second sequence the
 * operator's "f1") into the slack while "f1" waited for its tombstone,
 * and kept 3 items for good. */
static void check_load_like_running(const char *name, const char *const *steps, int n)
{
    tm t;
    tm_init(&t, N);
    hl_model *m = tm_open(&t, "loadrun");
    char err[256];
    float e[DIM] = {1};
    hl_catalogue *run = hl_catalogue_create(m, 2, err, sizeof err);
    hl_catalogue *load = hl_catalogue_create(m, 2, err, sizeof err);
    hl_catalogue_set_slack(load, 2);
    for (int i = 0; i < n; i++) {
        int rc_run = apply_step(run, steps[i], e), rc_load = apply_step(load, steps[i], e);
        CHECKF(rc_run == rc_load, "%s: %s: running %d, loading %d", name, steps[i], rc_run,
               rc_load);
    }
    hl_catalogue_set_slack(load, 0);
    while (hl_catalogue_trim(load))
        ;
    hl_catview *vr = hl_catalogue_view(run), *vl = hl_catalogue_view(load);
    CHECKF(hl_catview_n_side(vl) == hl_catview_n_side(vr), "%s: loading lists %d, running %d",
           name, (int)hl_catview_n_side(vl), (int)hl_catview_n_side(vr));
    for (int32_t s = 0; s < hl_catview_n_side(vr); s++) {
        uint32_t len;
        const char *id = hl_catview_item_id(vr, N + s, &len);
        CHECKF(hl_catview_row_find(vl, id, len) >= 0, "%s: %.*s not listed", name, (int)len,
               id);
    }
    hl_catview_destroy(vr);
    hl_catview_destroy(vl);
    hl_catalogue_destroy(run);
    hl_catalogue_destroy(load);
    hl_model_close(m);
    tm_free(&t);
}

static void test_loading_ends_as_running(void)
{
    static const char *const added[] = {"f:f1", "o:o1", "o:o2", "o:o3", "t:f1"};
    static const char *const named[] = {"f:f1", "o:o1", "o:o2", "o:f1", "t:f1"};
    static const char *const two[] = {"f:f1", "f:f2", "o:o1", "o:o2", "o:o3", "t:f1",
                                      "t:f2"};
    static const char *const freed[] = {"f:f1", "f:f2", "o:o1", "o:o2", "x:o1", "o:o3",
                                        "o:o4", "t:f1", "t:f2"};
    check_load_like_running("added", added, 5);
    check_load_like_running("named", named, 5);
    check_load_like_running("two", two, 7);
    check_load_like_running("freed", freed, 9);
}
/* Ids the model does not know that a record only hides (or names with
 * no embedding) count against catalogue.max.new.items as added ones do
 * (each is an entry kept): the
 * refusal must say so and what to do, since an operator who hid unknown
 * ids sees no added item and a full catalogue (before the fix: "...
 * such items are kept already", no cause, no action). */
static void test_full_says_what_counts_and_what_to_do(void)
{
    tm t;
    tm_init(&t, N);
    hl_model *m = tm_open(&t, "full");
    char err[256], id[32];
    float e[DIM] = {0};
    hl_catalogue *c = hl_catalogue_create(m, 2, err, sizeof err);
    for (int i = 0; i < 2; i++) {
        snprintf(id, sizeof id, "gone-%d", i);
        hl_item_update u = upd(id);
        u.available = 0;
        CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    }
    hl_item_update u = upd("new-a");
    u.e_in = u.e_out = e;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == HL_EFULL);
    CHECKF(strstr(err, "only hidden") != NULL && strstr(err, "tombstone") != NULL &&
           strstr(err, "raise catalogue.max.new.items") != NULL, "%s", err);
    hl_catalogue_destroy(c);
    hl_model_close(m);
    tm_free(&t);
}


/* A tombstone under a fold-in key names the record its eviction gave up
 * (catalogue.h, "A stale tombstone"): a lagging worker's tombstone sent
 * after a newer record of the item must not delete that record, while one
 * that names the record kept, or names none (an older worker's), does. */
static hl_item_update placed(hl_item_update u, int32_t partition, int64_t offset)
{
    u.positioned = 1;
    u.partition = partition;
    u.offset = offset;
    return u;
}

static hl_item_update evicts(const char *id, int32_t partition, int64_t offset, int64_t named)
{
    hl_item_update u = placed(fold_upd(id, NULL, 0), partition, offset);
    u.e_in = u.e_out = NULL;
    u.tombstone = 1;
    u.conditional = 1;
    u.evicts_offset = named;
    return u;
}

static void test_stale_tombstone_keeps_the_newer_record(void)
{
    tm t;
    tm_init(&t, N);
    hl_model *m = tm_open(&t, "stale");
    char err[256];
    float e[DIM] = {1, 2}, vec[2 * DIM];
    int32_t part;
    int64_t off;
    hl_catalogue *c = hl_catalogue_create(m, 2, err, sizeof err);
    hl_item_update u = placed(fold_upd("fold-x", e, 2), 0, 3);
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = placed(fold_upd("fold-y", e, 2), 1, 4);
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = placed(fold_upd("fold-x", e, 4), 0, 5);     /* the newer record */
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    uint64_t version = hl_catalogue_version(c);
    u = evicts("fold-x", 0, 7, 3);                  /* evicted at offset 3: stale */
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == HL_CATALOGUE_STALE);
    CHECK(hl_catalogue_foldin_state(c, "fold-x", 6) == 4);
    CHECK(hl_catalogue_version(c) == version);
    CHECK(hl_catalogue_foldin_record(c, "fold-x", 6, &u, vec) == 0);
    CHECK(u.foldin_events == 4 && u.foldin_key == 1 && u.positioned && u.partition == 0 &&
          u.offset == 5 && u.e_out[1] == 2 && u.e_in[0] == 1 && u.available == 1);
    u = evicts("fold-y", 0, 8, 9);                  /* fold-y's record is in partition 1 */
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == HL_CATALOGUE_STALE);
    u = evicts("fold-x", 0, 9, 5);                  /* names the record kept: deletes it */
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    CHECK(hl_catalogue_foldin_state(c, "fold-x", 6) == 0);
    CHECK(hl_catalogue_foldin_record(c, "fold-x", 6, &u, vec) == HL_ENOENT);
    u = evicts("fold-y", 1, 9, 0);                  /* names nothing: deletes as before */
    u.conditional = 0;
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    CHECK(hl_catalogue_foldin_state(c, "fold-y", 6) == 0);
    u = placed(fold_upd("fold-a", e, 2), 1, 10);    /* full again: the stalest goes, */
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = placed(fold_upd("fold-b", e, 2), 0, 11);
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    u = placed(upd("op-c"), 1, 12);
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    CHECK(hl_catalogue_evicted_at(c, &part, &off) == 1 && part == 1 && off == 10);
    u = upd("op-d");                                /* named by where it was read */
    CHECK(hl_catalogue_apply(c, &u, err, sizeof err) == 0);
    CHECK(hl_catalogue_evicted_at(c, &part, &off) == 1 && part == 0 && off == 11);
    hl_catalogue_destroy(c);
    hl_model_close(m);
    tm_free(&t);
}


int main(void)
{
    RUN(test_full_gives_up_the_stalest_foldin_item);
    RUN(test_loading_slack_then_trim);
    RUN(test_loading_ends_as_running);
    RUN(test_full_says_what_counts_and_what_to_do);
    RUN(test_stale_tombstone_keeps_the_newer_record);
    TEST_EXIT();
}
