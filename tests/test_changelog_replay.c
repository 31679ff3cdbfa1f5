/* test_changelog_replay.c - the changelog's restore without a broker
 * (hl_changelog_replay over records in memory): hostile epoch headers,
 * records a foreign producer left, a restore into a smaller
 * state.max.users, a local snapshot followed by a flush that never
 * finished, and a recreation claim. The cases over the mock broker are test_changelog.c. */
#define T_SUITE "test_changelog_replay"
#include "test.h"

#include "changelog.h"
#include "changelog_internal.h"
#include "changelog_test_util.h"
#include "hl.h"
#include "log.h"
#include "snapshot.h"

/* An offline changelog over the table options test_changelog.c's env_start
 * uses. */
static hl_changelog *offline(hl_table_opts *o, hl_metrics **reg)
{
    char err[512] = "";
    memset(o, 0, sizeof *o);
    hl_decay_init(&o->decay, 3, DIM, hl_default_half_life_ms, err, sizeof err);
    o->history = 4;
    o->expected_users = 16;
    *reg = hl_metrics_create();
    hl_changelog_opts co = {.topic = "st", .input_topic = "in", .model_fingerprint = FP,
                            .topts = o, .reg = *reg};
    hl_changelog *cl = hl_changelog_create_offline(&co, err, sizeof err);
    CHECKF(cl != NULL, "changelog: %s", err);
    return cl;
}

/* user's row of tbl as a row record of epoch ep (model FP) in buf. */
static hl_changelog_rec row_rec(const hl_table *tbl, const char *user, const char *ep,
                                unsigned char *buf)
{
    static const char fp[] = "0000000000000007";
    hl_row_view v;
    uint32_t r = (uint32_t)hl_table_find(tbl, user, strlen(user));
    hl_table_view(tbl, r, &v);
    hl_changelog_rec rec = {.key = user, .key_len = strlen(user), .value = buf,
                            .epoch = ep, .epoch_len = strlen(ep), .model = fp,
                            .model_len = 16};
    rec.len = hl_snapshot_row_encode(buf, 3, DIM, r, &v);
    return rec;
}

static int64_t last_offset_of(const hl_table *tbl, const char *user)
{
    int64_t r = hl_table_find(tbl, user, strlen(user));
    hl_row_view v;
    if (r < 0)
        return -2;
    hl_table_view(tbl, (uint32_t)r, &v);
    return v.last_offset;
}

/* A record whose epoch header is hostile (the topic is writable by
 * anyone): INT64_MAX, or HL_CHANGELOG_EPOCH_MAX itself, the highest a
 * reader accepts. The next owner's epoch must still be one a reader
 * accepts, and that owner's records must still restore. */
static void epoch_overflow(const char *hostile)
{
    char err[512] = "", ep[32];
    hl_table_opts o;
    hl_metrics *reg;
    hl_changelog *cl = offline(&o, &reg);
    if (cl == NULL)
        return;
    hl_changelog_rec recs[2] = {{.key = "x", .key_len = 1, .epoch = hostile,
                                 .epoch_len = strlen(hostile)}};
    hl_table *t1 = hl_table_create(&o, err, sizeof err), *src = hl_table_create(&o, err, sizeof err);
    hl_changelog_restored out;
    int rc = hl_changelog_replay(cl, t1, NULL, recs, 1, &out, err, sizeof err);
    CHECKF(rc == 0 && out.epoch > 0 && out.epoch <= HL_CHANGELOG_EPOCH_MAX, "after an epoch "
           "header %s the claim's epoch is %lld", hostile, (long long)out.epoch);
    /* The new owner (epoch out.epoch) flushes user u; the next restore. */
    snprintf(ep, sizeof ep, "%lld", (long long)out.epoch);
    events(src, NULL, "u", 0, 5);
    unsigned char *buf = malloc(hl_snapshot_row_max(3, DIM, 4));
    recs[1] = row_rec(src, "u", ep, buf);
    hl_table *t2 = hl_table_create(&o, err, sizeof err);
    rc = hl_changelog_replay(cl, t2, NULL, recs, 2, &out, err, sizeof err);
    CHECKF(rc == 0 && has(t2, "u"), "after a header %s the owner's own row (epoch header "
           "\"%s\") not restored: bad %llu", hostile, ep, (unsigned long long)out.n_bad);
    free(buf);
    hl_table_destroy(t1);
    hl_table_destroy(t2);
    hl_table_destroy(src);
    hl_changelog_destroy(cl);
    hl_metrics_destroy(reg);
}

static void test_epoch_overflow(void)
{
    char at_max[32];
    snprintf(at_max, sizeof at_max, "%lld", (long long)HL_CHANGELOG_EPOCH_MAX);
    epoch_overflow("9223372036854775807");
    epoch_overflow(at_max);
}

/* Records a foreign producer left on the changelog (no epoch header, a
 * value that is no row, a key longer than any user id, a checkpoint key
 * with no value) are skipped, and counted where an alert can see them:
 * the restored log line alone (INFO) and three warnings per restore left
 * a restore that dropped users' rows invisible to /metrics. */
static void test_bad_records_counted(void)
{
    char err[512] = "", long_key[300];
    hl_table_opts o;
    hl_metrics *reg;
    hl_changelog *cl = offline(&o, &reg);
    if (cl == NULL)
        return;
    memset(long_key, 'k', sizeof long_key);
    hl_changelog_rec recs[] = {
        {.key = "u", .key_len = 1, .value = "garbage", .len = 7},          /* no epoch */
        {.key = "u", .key_len = 1, .value = "garbage", .len = 7, .epoch = "1", .epoch_len = 1},
        {.key = long_key, .key_len = sizeof long_key, .epoch = "1", .epoch_len = 1},
        {.key = cl->ck_key, .key_len = sizeof cl->ck_key, .epoch = "1", .epoch_len = 1},
    };
    size_t n = sizeof recs / sizeof recs[0];
    hl_table *t = hl_table_create(&o, err, sizeof err);
    hl_changelog_restored out;
    int rc = hl_changelog_replay(cl, t, NULL, recs, n, &out, err, sizeof err);
    hl_counter *bad = hl_metrics_counter(reg, "halflife_changelog_bad_records_total",
        "Changelog records a restore could not use (skipped).", NULL);
    CHECKF(rc == 0 && out.n_bad == n && hl_counter_get(bad) == n, "rc %d, %llu bad of %zu, "
           "halflife_changelog_bad_records_total %llu", rc, (unsigned long long)out.n_bad, n,
           (unsigned long long)hl_counter_get(bad));
    hl_table_destroy(t);
    hl_changelog_destroy(cl);
    hl_metrics_destroy(reg);
}

/* A changelog written under a larger state.max.users (the limit lowered,
 * the partition moved to a smaller pod) restores into the pod's limit: the
 * least recently active users go, counted as capacity evictions. Before,
 * every row stayed and the table sat past the limit it was sized for. */
static void test_replay_into_smaller_limit(void)
{
    static const char *const users[] = {"a", "b", "c", "d", "e"};
    char err[512] = "";
    hl_table_opts o;
    hl_metrics *reg;
    hl_changelog *cl = offline(&o, &reg);
    if (cl == NULL)
        return;
    hl_table *src = hl_table_create(&o, err, sizeof err);
    unsigned char *buf = malloc(5 * hl_snapshot_row_max(3, DIM, 4));
    hl_changelog_rec recs[5];
    for (int i = 0; i < 5; i++)             /* "e" is the most recently active */
        events(src, NULL, users[i], 10 * i, 10 * i + 3);
    for (int i = 0; i < 5; i++)
        recs[i] = row_rec(src, users[i], "1", buf + i * hl_snapshot_row_max(3, DIM, 4));
    o.max_users = 2;                        /* cl reads o: the pod's new limit */
    hl_table *t = hl_table_create(&o, err, sizeof err);
    hl_changelog_restored out;
    int rc = hl_changelog_replay(cl, t, NULL, recs, 5, &out, err, sizeof err);
    hl_table_stats st;
    hl_table_stats_get(t, &st);
    CHECKF(rc == 0 && st.users == 2 && has(t, "d") && has(t, "e") && st.evicted_capacity == 3,
           "rc %d (%s): %zu users restored into state.max.users=2, d %d e %d, evicted %llu",
           rc, err, st.users, has(t, "d"), has(t, "e"), (unsigned long long)st.evicted_capacity);
    free(buf);
    hl_table_destroy(t);
    hl_table_destroy(src);
    hl_changelog_destroy(cl);
    hl_metrics_destroy(reg);
}

/* A local snapshot at input offset 20 whose cover is the flush before
 * one still in flight when the snapshot began (flush F2, cut at 15); F2's
 * rows landed but not its checkpoint (a crash between, or the checkpoint
 * failed and the stop's flush_now gave up). The restart from the cache
 * reads F2's rows after the cover: the input replayed from where the
 * restore says must give the input applied once. */
static void test_cache_then_unfinished_flush(void)
{
    char err[512] = "";
    hl_table_opts o;
    hl_metrics *reg;
    hl_changelog *cl = offline(&o, &reg);
    if (cl == NULL)
        return;
    hl_table *ref = hl_table_create(&o, err, sizeof err);
    hl_table *f2 = hl_table_create(&o, err, sizeof err);
    hl_table *cache = hl_table_create(&o, err, sizeof err);
    events(ref, cache, "u", 0, 20);     /* the cache: the table at 20 */
    events(f2, NULL, "u", 0, 15);       /* F2's cut: at 15 */
    unsigned char *buf = malloc(hl_snapshot_row_max(3, DIM, 4));
    hl_changelog_rec rec = row_rec(f2, "u", "1", buf);
    hl_changelog_base base = {.next_offset = 20, .changelog_offset = 7, .changelog_epoch = 1};
    hl_changelog_restored out;
    int rc = hl_changelog_replay(cl, cache, &base, &rec, 1, &out, err, sizeof err);
    if (rc == HL_ENOENT) {
        /* refused: the whole changelog, as the worker then reads it: F1
         * (u at 10, its checkpoint), then F2's row */
        hl_table *f1 = hl_table_create(&o, err, sizeof err);
        events(f1, NULL, "u", 0, 10);
        unsigned char *b1 = malloc(hl_snapshot_row_max(3, DIM, 4)), ck[CK_BYTES];
        hl_changelog_ck c = {.offset = 10, .fingerprint = FP, .epoch = 1};
        hl_changelog_rec all[3] = {row_rec(f1, "u", "1", b1),
            {.key = cl->ck_key, .key_len = sizeof cl->ck_key, .value = ck,
             .len = hl_changelog_ck_encode(ck, &c), .epoch = "1", .epoch_len = 1}, rec};
        hl_table_destroy(cache);
        cache = hl_table_create(&o, err, sizeof err);
        rc = hl_changelog_replay(cl, cache, NULL, all, 3, &out, err, sizeof err);
        free(b1);
        hl_table_destroy(f1);
    }
    CHECKF(rc == 0, "replay: %s", err);
    int64_t resume = out.next_offset;
    events(cache, NULL, "u", resume < 0 ? 0 : resume, 20);  /* the input from there */
    CHECKF(last_offset_of(cache, "u") == last_offset_of(ref, "u"),
           "restored from the cache, resumed at %lld: u applied up to %lld, the input "
           "up to %lld (events lost)", (long long)resume,
           (long long)last_offset_of(cache, "u"), (long long)last_offset_of(ref, "u"));
    free(buf);
    hl_table_destroy(ref);
    hl_table_destroy(f2);
    hl_table_destroy(cache);
    hl_changelog_destroy(cl);
    hl_metrics_destroy(reg);
}

/* A checkpoint record of epoch ep under key (the checkpoints' or the
 * recreation claims') at input offset off, its value in buf. */
static hl_changelog_rec ck_rec(const char *key, int64_t off, const char *ep, unsigned char *buf)
{
    hl_changelog_ck c = {.offset = off, .fingerprint = FP, .epoch = atoll(ep)};
    return (hl_changelog_rec){.key = key, .key_len = HL_MAX_ID_LEN + 1, .value = buf,
                              .len = hl_changelog_ck_encode(buf, &c), .epoch = ep,
                              .epoch_len = strlen(ep)};
}

/* The input topic recreated: the old owner's rows (a up to old offset
 * 299, b up to 199) and checkpoint at 300, the new owner's recreation
 * claim at the new topic's start (0), its flush of b at new offset 4 cut
 * by a crash, then the next owner's plain claim (which, on a compacted
 * topic, makes the old checkpoint go). Read back: the input resumes at 0,
 * a's old offset is forgotten (the new topic's events of a apply; kept,
 * they were dropped as applied up to 299), b keeps its new one. */
static void test_recreation_claim(void)
{
    char err[512] = "";
    hl_table_opts o;
    hl_metrics *reg;
    hl_changelog *cl = offline(&o, &reg);
    if (cl == NULL)
        return;
    hl_table *old = hl_table_create(&o, err, sizeof err);
    hl_table *cur = hl_table_create(&o, err, sizeof err);
    hl_table *t = hl_table_create(&o, err, sizeof err);
    events(old, NULL, "a", 0, 300);
    events(old, NULL, "b", 0, 200);
    events(cur, NULL, "b", 0, 5);
    size_t row_max = hl_snapshot_row_max(3, DIM, 4);
    unsigned char *ba = malloc(row_max), *bb = malloc(row_max), *bn = malloc(row_max);
    unsigned char c1[CK_BYTES], c2[CK_BYTES], c3[CK_BYTES];
    hl_changelog_rec recs[] = {row_rec(old, "a", "1", ba), row_rec(old, "b", "1", bb),
                               ck_rec(cl->ck_key, 300, "1", c1),
                               ck_rec(cl->recreation_key, 0, "2", c2),
                               row_rec(cur, "b", "2", bn), ck_rec(cl->ck_key, 0, "3", c3)};
    hl_changelog_restored out;
    /* all of it, then as compaction leaves it (the old checkpoint gone) */
    for (int compacted = 0; compacted < 2; compacted++) {
        hl_table_destroy(t);
        t = hl_table_create(&o, err, sizeof err);
        hl_changelog_rec *r = recs;
        if (compacted) {
            recs[2] = recs[1];
            recs[1] = recs[0];
            r = recs + 1;
        }
        int rc = hl_changelog_replay(cl, t, NULL, r, 6 - (size_t)compacted, &out, err,
                                     sizeof err);
        int64_t b_at = last_offset_of(t, "b");
        int held = has(t, "a");
        events(t, NULL, "a", 0, 5);
        CHECKF(rc == 0 && held && out.next_offset == 0 && out.input_recreated &&
               last_offset_of(t, "a") == 4 && b_at == 4,
               "compacted %d: rc %d (%s), resumed at %lld, the new topic's events of a "
               "applied up to %lld (want 4), b at %lld (want 4)", compacted, rc, err,
               (long long)out.next_offset, (long long)last_offset_of(t, "a"),
               (long long)b_at);
    }
    free(ba);
    free(bb);
    free(bn);
    hl_table_destroy(old);
    hl_table_destroy(cur);
    hl_table_destroy(t);
    hl_changelog_destroy(cl);
    hl_metrics_destroy(reg);
}

/* Records that fail validation (a value that is no row, a truncated
 * checkpoint, a key longer than any user id, a row naming another user
 * than its key) but name a high epoch, between an honest owner's rows of
 * epoch 1. Anyone may write the topic: such a record must not move the
 * fence, or the owner's later rows are ignored as stale (lost), nor make
 * a base look usurped. */
static void test_bad_record_moves_nothing(void)
{
    char err[512] = "", long_key[300];
    hl_table_opts o;
    hl_metrics *reg;
    hl_changelog *cl = offline(&o, &reg);
    if (cl == NULL)
        return;
    hl_table *src = hl_table_create(&o, err, sizeof err);
    events(src, NULL, "u1", 0, 5);
    events(src, NULL, "u2", 5, 10);
    size_t rm = hl_snapshot_row_max(3, DIM, 4);
    unsigned char *buf = malloc(3 * rm), ck[CK_BYTES], ck1[CK_BYTES];
    hl_changelog_ck c = {.offset = 5, .fingerprint = FP, .epoch = 1000};
    hl_changelog_ck_encode(ck, &c);
    c = (hl_changelog_ck){.offset = 10, .fingerprint = FP, .epoch = 1};
    memset(long_key, 'k', sizeof long_key);
    hl_changelog_rec recs[] = {
        row_rec(src, "u1", "1", buf),
        {.key = "x", .key_len = 1, .value = "garbage", .len = 7, .epoch = "1000", .epoch_len = 4},
        {.key = cl->ck_key, .key_len = sizeof cl->ck_key, .value = ck, .len = CK_BYTES - 8,
         .epoch = "1000", .epoch_len = 4},
        {.key = long_key, .key_len = sizeof long_key, .epoch = "1000", .epoch_len = 4},
        row_rec(src, "u1", "1000", buf + 2 * rm),       /* named u1, keyed u3 */
        row_rec(src, "u2", "1", buf + rm),
        {.key = cl->ck_key, .key_len = sizeof cl->ck_key, .value = ck1,
         .len = hl_changelog_ck_encode(ck1, &c), .epoch = "1", .epoch_len = 1},
    };
    recs[4].key = "u3";
    size_t n = sizeof recs / sizeof recs[0];
    hl_table *t = hl_table_create(&o, err, sizeof err);
    hl_changelog_restored out;
    int rc = hl_changelog_replay(cl, t, NULL, recs, n, &out, err, sizeof err);
    CHECKF(rc == 0 && has(t, "u1") && has(t, "u2") && out.n_bad == 4 && out.n_stale == 0 &&
           out.epoch == 2 && out.next_offset == 10, "rc %d: u1 %d u2 %d, bad %llu stale %llu, claim epoch %lld, "
           "resumes at %lld (want u2 held, 4 bad, 0 stale, epoch 2, at 10)", rc, has(t, "u1"), has(t, "u2"),
           (unsigned long long)out.n_bad, (unsigned long long)out.n_stale,
           (long long)out.epoch, (long long)out.next_offset);
    /* After a base of epoch 1: a bad row of epoch 1000 is no usurper. */
    hl_table *cache = hl_table_create(&o, err, sizeof err);
    events(cache, NULL, "u1", 0, 5);
    hl_changelog_base base = {.next_offset = 5, .changelog_offset = 1, .changelog_epoch = 1};
    rc = hl_changelog_replay(cl, cache, &base, recs + 1, n - 1, &out, err, sizeof err);
    CHECKF(rc == 0 && out.used_base && has(cache, "u2") && out.next_offset == 10,
           "from a base: rc %d (%s), u2 %d, resumes at %lld", rc, err, has(cache, "u2"),
           (long long)out.next_offset);
    free(buf);
    hl_table_destroy(cache);
    hl_table_destroy(t);
    hl_table_destroy(src);
    hl_changelog_destroy(cl);
    hl_metrics_destroy(reg);
}

/* Rows naming their layout (halflife.format): none, "2" and "3" restore;
 * "4" (a newer worker's, here today's bytes, so a misread would go
 * unseen) and "x" are refused, counted bad, and move nothing. */
static void test_unknown_format_refused(void)
{
    char err[512] = "";
    hl_table_opts o;
    hl_metrics *reg;
    hl_changelog *cl = offline(&o, &reg);
    if (cl == NULL)
        return;
    hl_table *src = hl_table_create(&o, err, sizeof err);
    static const char *const users[] = {"u1", "u2", "u3", "u4"};
    static const char *const formats[] = {NULL, "2", "4", "x"};
    static const char *const epochs[] = {"1", "1", "9", "9"};
    size_t rm = hl_snapshot_row_max(3, DIM, 4);
    unsigned char *buf = malloc(4 * rm);
    hl_changelog_rec recs[5];
    for (int i = 0; i < 4; i++) {
        events(src, NULL, users[i], 5 * i, 5 * i + 5);
        recs[i] = row_rec(src, users[i], epochs[i], buf + i * rm);
        recs[i].format = formats[i];
        recs[i].format_len = formats[i] ? strlen(formats[i]) : 0;
    }
    recs[4] = row_rec(src, "u1", "1", buf);         /* the owner goes on */
    hl_table *t = hl_table_create(&o, err, sizeof err);
    hl_changelog_restored out;
    int rc = hl_changelog_replay(cl, t, NULL, recs, 5, &out, err, sizeof err);
    hl_counter *bad = hl_metrics_counter(reg, "halflife_changelog_bad_records_total",
        "Changelog records a restore could not use (skipped).", NULL);
    CHECKF(rc == 0 && has(t, "u1") && has(t, "u2") && !has(t, "u3") && !has(t, "u4") &&
           out.n_bad == 2 && hl_counter_get(bad) == 2 && out.n_stale == 0 && out.epoch == 2,
           "rc %d: u1 %d u2 %d u3 (format 4) %d u4 (format x) %d, bad %llu (counter %llu), "
           "stale %llu, claim epoch %lld", rc, has(t, "u1"), has(t, "u2"), has(t, "u3"),
           has(t, "u4"), (unsigned long long)out.n_bad, (unsigned long long)hl_counter_get(bad),
           (unsigned long long)out.n_stale, (long long)out.epoch);
    free(buf);
    hl_table_destroy(t);
    hl_table_destroy(src);
    hl_changelog_destroy(cl);
    hl_metrics_destroy(reg);
}

/* A format 2 row (no halflife.format: every writer before format 3) holds
 * its heads at t_ref; it restores with them moved to their bases (decay.h),
 * which a format 3 row already holds: the same bytes restore as the
 * source's row times exp(lambda_h (t_ref - B_h)) and as the source's row. */
static void test_format2_rows_rebased(void)
{
    char err[512] = "";
    hl_table_opts o;
    hl_metrics *reg;
    hl_changelog *cl = offline(&o, &reg);
    if (cl == NULL)
        return;
    hl_table *src = hl_table_create(&o, err, sizeof err);
    events(src, NULL, "u1", 0, 7);
    size_t rm = hl_snapshot_row_max(3, DIM, 4);
    unsigned char *buf = malloc(rm);
    hl_row_view sv, rv;
    hl_table_view(src, (uint32_t)hl_table_find(src, "u1", 2), &sv);
    for (int format = 2; format <= 3; format++) {
        hl_changelog_rec rec = row_rec(src, "u1", "1", buf);
        rec.format = format == 3 ? "3" : NULL;
        rec.format_len = format == 3 ? 1 : 0;
        hl_table *t = hl_table_create(&o, err, sizeof err);
        hl_changelog_restored out;
        int rc = hl_changelog_replay(cl, t, NULL, &rec, 1, &out, err, sizeof err);
        CHECKF(rc == 0 && has(t, "u1"), "format %d: rc %d %s", format, rc, err);
        if (rc != 0 || !has(t, "u1")) {
            hl_table_destroy(t);
            continue;
        }
        hl_table_view(t, (uint32_t)hl_table_find(t, "u1", 2), &rv);
        int moved = 0;
        for (int h = 0; h < 3; h++) {
            int64_t base = hl_decay_base_ms(&o.decay, h, sv.t_ref_ms);
            double g = format == 3 ? 1.0
                     : exp(o.decay.lambda_per_ms[h] * (double)(sv.t_ref_ms - base));
            double want = sv.m[h] * g;
            moved += base != sv.t_ref_ms;
            CHECKF(fabs(rv.m[h] - want) <= 1e-6 * want, "format %d head %d: mass %.9g want "
                   "%.9g", format, h, (double)rv.m[h], want);
            CHECKF(fabs(rv.s[h * DIM] - sv.s[h * DIM] * g) <= 1e-6 * fabs(sv.s[h * DIM] * g),
                   "format %d head %d: s[0] %.9g", format, h, (double)rv.s[h * DIM]);
        }
        CHECK(moved > 0);       /* else the row says nothing */
        hl_table_destroy(t);
    }
    free(buf);
    hl_table_destroy(src);
    hl_changelog_destroy(cl);
    hl_metrics_destroy(reg);
}

int main(void)
{
    hl_log_set_level(HL_LOG_ERROR);
    ct_init_e_in();
    RUN(test_epoch_overflow);
    RUN(test_bad_records_counted);
    RUN(test_replay_into_smaller_limit);
    RUN(test_cache_then_unfinished_flush);
    RUN(test_bad_record_moves_nothing);
    RUN(test_unknown_format_refused);
    RUN(test_format2_rows_rebased);
    RUN(test_recreation_claim);
    TEST_EXIT();
}
