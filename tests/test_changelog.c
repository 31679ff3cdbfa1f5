/* test_changelog.c - the changelog's restore from a local snapshot (the
 * cache, worker/changelog_restore.c) when the snapshot came from an owner
 * that had already lost the partition.
 *
 * Over TCP to librdkafka's mock cluster (in this process, as the benches
 * run it): owner A flushes, owner B restores and claims (epoch 2) and
 * flushes, then A, not yet aware it lost the partition, flushes again: its
 * records land after B's. A local snapshot A writes now covers the
 * changelog up to after its late flush, past B's claim, so a restore from
 * it would skip B's records before that point. B flushes on: the restore
 * sees B's epoch begin with a row, not with B's claim, and must refuse
 * that snapshot (HL_ENOENT: the worker then reads the whole changelog).
 * (A writer now never names that cover: test_zombie_new_owner_quiet; the
 * refusal stays for snapshots older writers left.) The restore must still accept
 * the caches that are right: the rebalance-away-and-back snapshot taken
 * before B's claim, and B's own. The whole-changelog restore has B's user
 * and ignores A's late records (stale). The worker-level cases (SIGSTOP,
 * kill -9, rebalances) are tests/integration/test_changelog.py; rows of
 * a model of another shape, test_changelog_reshape.c. */
#define T_SUITE "test_changelog"
#include "test.h"

#include "changelog.h"
#include "changelog_mock_util.h"
#include "changelog_test_util.h"
#include "changelog_internal.h"
#include "hl.h"
#include "log.h"
#include "snapshot.h"

#include <pthread.h>
#include <unistd.h>

#include <librdkafka/rdkafka_mock.h>

/* The changelog offset after its newest record. */
static int64_t high_watermark(env *e)
{
    int64_t lo = -1, hi = -1;
    rd_kafka_query_watermark_offsets(e->cons, "st", 0, &lo, &hi, 5000);
    return hi;
}

/* A's and B's shards, as the overview tells; *a10 holds A's state at its
 * first flush, base10 that flush's cover. *late is the cover a writer
 * before the chain check (changelog.c) named for A's snapshot at 15: the
 * end of A's late flush; the cover A names now must be the one before
 * B's claim. */
static void two_owners(env *e, hl_table *a, hl_table *a10, hl_changelog_base *base10,
                       hl_changelog_base *late, hl_changelog_base *b20)
{
    char err[512];
    int64_t far = hl_now_mono_ms() + 10000;
    hl_changelog_restored ra, rb;
    CHECKF(hl_changelog_restore(e->cl, 0, a, NULL, &ra, err, sizeof err) == 0, "A: %s", err);
    hl_changelog_shard *csa = hl_changelog_shard_create(e->cl, 0, a, &ra);
    events(a, a10, "ua", 0, 10);
    CHECK(hl_changelog_flush_now(csa, a, 10, far) == 0);
    *base10 = (hl_changelog_base){.next_offset = 10};
    hl_changelog_cover(csa, 10, &base10->changelog_offset, &base10->changelog_epoch);

    hl_table *b = table(e);
    CHECKF(hl_changelog_restore(e->cl, 0, b, NULL, &rb, err, sizeof err) == 0, "B: %s", err);
    CHECKF(rb.epoch == 2, "B claimed epoch %lld", (long long)rb.epoch);
    hl_changelog_shard *csb = hl_changelog_shard_create(e->cl, 0, b, &rb);
    events(b, NULL, "ub", 10, 20);
    CHECK(hl_changelog_flush_now(csb, b, 20, far) == 0);
    *b20 = (hl_changelog_base){.next_offset = 20};
    hl_changelog_cover(csb, 20, &b20->changelog_offset, &b20->changelog_epoch);

    events(a, NULL, "ua-late", 10, 15);          /* the zombie goes on */
    CHECK(hl_changelog_flush_now(csa, a, 15, far) == 0);
    *late = (hl_changelog_base){.next_offset = 15, .changelog_offset = high_watermark(e),
                                .changelog_epoch = 1};
    hl_changelog_base now = {.next_offset = 15};
    hl_changelog_cover(csa, 15, &now.changelog_offset, &now.changelog_epoch);
    CHECKF(late->changelog_offset > b20->changelog_offset && now.changelog_epoch == 1 &&
           now.changelog_offset == base10->changelog_offset, "A's late flush ends at %lld, "
           "B's cover %lld; A names cover %lld epoch %lld for 15, not its first flush's %lld",
           (long long)late->changelog_offset, (long long)b20->changelog_offset,
           (long long)now.changelog_offset, (long long)now.changelog_epoch,
           (long long)base10->changelog_offset);
    events(b, NULL, "ub2", 20, 25);              /* B, the owner, flushes on */
    CHECK(hl_changelog_flush_now(csb, b, 25, far) == 0);
    /* A's late records lie among B's: B's flush at 25 is durable, but no
     * longer a cover (the offsets cannot tell a claim from a zombie). */
    hl_changelog_base b25 = {.next_offset = 25};
    hl_changelog_cover(csb, 25, &b25.changelog_offset, &b25.changelog_epoch);
    CHECKF(hl_changelog_durable(csb) == 25 && b25.changelog_offset == b20->changelog_offset &&
           b25.changelog_epoch == 2, "B's cover for 25: %lld epoch %lld, durable %lld, its "
           "cover for 20 %lld", (long long)b25.changelog_offset,
           (long long)b25.changelog_epoch, (long long)hl_changelog_durable(csb),
           (long long)b20->changelog_offset);
    hl_table_on_evict(a, NULL, NULL);
    hl_table_on_evict(b, NULL, NULL);
    hl_changelog_shard_destroy(csa);
    hl_changelog_shard_destroy(csb);
    hl_table_destroy(b);
}

static void test_zombie_snapshot_refused(void)
{
    env e;
    char err[512] = "";
    hl_changelog_restored r;
    hl_changelog_base base10, late, b20;
    if (env_start(&e) != 0) {
        env_stop(&e);
        return;
    }
    hl_table *a = table(&e), *a10 = table(&e);
    two_owners(&e, a, a10, &base10, &late, &b20);

    /* A's late snapshot as an older writer covered it: the cover skips B's
     * claim and B's row of ub. */
    int rc = hl_changelog_restore(e.cl, 0, a, &late, &r, err, sizeof err);
    CHECKF(rc == HL_ENOENT, "restore from the zombie's snapshot: rc %d (%s), has ub %d",
           rc, err, has(a, "ub"));
    CHECKF(strstr(err, "lost the partition") != NULL, "err \"%s\"", err);

    /* The cache taken before B's claim (away and back) is fine. */
    rc = hl_changelog_restore(e.cl, 0, a10, &base10, &r, err, sizeof err);
    CHECKF(rc == 0 && has(a10, "ub") && !has(a10, "ua-late") && r.next_offset == 25,
           "away and back: rc %d (%s), ub %d, ua-late %d, next %lld", rc, err,
           has(a10, "ub"), has(a10, "ua-late"), (long long)r.next_offset);
    CHECK(has(a10, "ub2"));

    /* The whole changelog: B's user, A's late records ignored. */
    hl_table *whole = table(&e);
    rc = hl_changelog_restore(e.cl, 0, whole, NULL, &r, err, sizeof err);
    CHECKF(rc == 0 && has(whole, "ua") && has(whole, "ub") && !has(whole, "ua-late") &&
           r.n_stale > 0, "whole: rc %d (%s), ua %d ub %d ua-late %d stale %llu", rc, err,
           has(whole, "ua"), has(whole, "ub"), has(whole, "ua-late"),
           (unsigned long long)r.n_stale);
    hl_table_destroy(whole);
    hl_table_destroy(a10);
    hl_table_destroy(a);
    env_stop(&e);
}

/* ---- the zombie's late flush, the new owner quiet after it -------------- */

/* One input stream: the user of the event at offset off. */
static const char *input_user(int64_t off)
{
    return off < 10 ? "ua" : off < 15 ? "uz" : "un";
}

/* The input's events at offsets [from, to) applied to tbl, as a shard
 * resuming at from would (per-user applied offsets skip what it holds). */
static void feed(hl_table *tbl, int64_t from, int64_t to)
{
    for (int64_t off = from < 0 ? 0 : from; off < to; off++)
        events(tbl, NULL, input_user(off), off, off + 1);
}

/* 1 when a and b hold the same users with the same rows. */
static int same_state(const hl_table *a, const hl_table *b, const char **why)
{
    static const char *users[] = {"ua", "uz", "un"};
    for (int i = 0; i < 3; i++) {
        int64_t ra = hl_table_find(a, users[i], strlen(users[i]));
        int64_t rb = hl_table_find(b, users[i], strlen(users[i]));
        *why = users[i];
        if ((ra < 0) != (rb < 0))
            return 0;
        if (ra < 0)
            continue;
        hl_row_view va, vb;
        hl_table_view(a, (uint32_t)ra, &va);
        hl_table_view(b, (uint32_t)rb, &vb);
        if (va.last_offset != vb.last_offset || va.t_ref_ms != vb.t_ref_ms ||
            va.n_hist != vb.n_hist || memcmp(va.m, vb.m, 3 * sizeof(float)) != 0 ||
            memcmp(va.s, vb.s, 3 * DIM * sizeof(float)) != 0)
            return 0;
    }
    return 1;
}

/* A owns the partition (epoch 1) and flushes at 10; B is assigned it,
 * restores and claims (epoch 2), applies the input up to b_to, flushes
 * there when it got anywhere, and then writes nothing more. A, a zombie
 * that has not noticed, applies 10..15 and flushes: its records land
 * after B's claim. A then restarts from its own local snapshot (its table
 * at 15, the cover it reports for 15), resumes and flushes at 20. The
 * changelog read whole must then equal the input applied once, and A must
 * never claim the epoch B holds. */
static void quiet_usurper(int64_t b_to)
{
    env e;
    char err[512] = "";
    int64_t far = hl_now_mono_ms() + 10000;
    hl_changelog_restored ra, rb, r2, rw;
    if (env_start(&e) != 0) {
        env_stop(&e);
        return;
    }
    hl_table *a = table(&e), *b = table(&e), *ref = table(&e), *whole = table(&e);
    CHECKF(hl_changelog_restore(e.cl, 0, a, NULL, &ra, err, sizeof err) == 0, "A: %s", err);
    hl_changelog_shard *csa = hl_changelog_shard_create(e.cl, 0, a, &ra);
    feed(a, 0, 10);
    CHECK(hl_changelog_flush_now(csa, a, 10, far) == 0);

    CHECKF(hl_changelog_restore(e.cl, 0, b, NULL, &rb, err, sizeof err) == 0 &&
           rb.epoch == 2, "B: %s, epoch %lld", err, (long long)rb.epoch);
    hl_changelog_shard *csb = hl_changelog_shard_create(e.cl, 0, b, &rb);
    feed(b, rb.next_offset, b_to);
    if (b_to > 10)
        CHECK(hl_changelog_flush_now(csb, b, b_to, far) == 0);

    feed(a, 10, 15);                            /* the zombie goes on */
    hl_changelog_flush_now(csa, a, 15, far);    /* lands after B's claim */
    hl_changelog_base cache = {.next_offset = 15};
    hl_changelog_cover(csa, 15, &cache.changelog_offset, &cache.changelog_epoch);
    hl_table_on_evict(a, NULL, NULL);
    hl_changelog_shard_destroy(csa);

    /* A restarts from its snapshot: its table at 15, with that cover. */
    int rc = hl_changelog_restore(e.cl, 0, a, &cache, &r2, err, sizeof err);
    if (rc == HL_ENOENT) {                      /* refused: the whole changelog */
        hl_table_destroy(a);
        a = table(&e);
        rc = hl_changelog_restore(e.cl, 0, a, NULL, &r2, err, sizeof err);
    }
    CHECKF(rc == 0 && r2.epoch > rb.epoch, "B quiet after %lld: A's restart: rc %d (%s), "
           "claimed epoch %lld, B holds %lld", (long long)b_to, rc, err,
           (long long)r2.epoch, (long long)rb.epoch);
    csa = hl_changelog_shard_create(e.cl, 0, a, &r2);
    feed(a, r2.next_offset, 20);
    CHECK(hl_changelog_flush_now(csa, a, 20, far) == 0);

    feed(ref, 0, 20);
    const char *why = "";
    rc = hl_changelog_restore(e.cl, 0, whole, NULL, &rw, err, sizeof err);
    CHECKF(rc == 0 && rw.next_offset == 20 && same_state(whole, ref, &why),
           "B quiet after %lld: the whole changelog: rc %d (%s), next %lld, user %s differs "
           "from the input applied once", (long long)b_to, rc, err,
           (long long)rw.next_offset, why);
    hl_table_on_evict(a, NULL, NULL);
    hl_table_on_evict(b, NULL, NULL);
    hl_changelog_shard_destroy(csa);
    hl_changelog_shard_destroy(csb);
    hl_table_destroy(whole);
    hl_table_destroy(ref);
    hl_table_destroy(b);
    hl_table_destroy(a);
    env_stop(&e);
}

static void test_zombie_new_owner_quiet(void)
{
    quiet_usurper(10);      /* B wrote nothing but its claim */
    quiet_usurper(12);      /* B flushed once, before A's late flush */
}

/* The model header of the first row record of user in "st" partition 0
 * into fp (NUL-terminated); 0 when found. */
static int first_row_model(env *e, const char *user, char *fp, size_t cap)
{
    rd_kafka_topic_partition_list_t *tp = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(tp, "st", 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(e->cons, tp);
    rd_kafka_topic_partition_list_destroy(tp);
    int found = -1;
    for (int64_t end = hl_now_mono_ms() + 10000; found != 0 && hl_now_mono_ms() < end;) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(e->cons, 100);
        if (m == NULL)
            continue;
        rd_kafka_headers_t *h = NULL;
        const void *v = NULL;
        size_t n = 0;
        if (!m->err && m->key_len == strlen(user) && memcmp(m->key, user, m->key_len) == 0 &&
            rd_kafka_message_headers(m, &h) == 0 &&
            rd_kafka_header_get_last(h, HL_CHANGELOG_MODEL_HDR, &v, &n) == 0 && n < cap) {
            memcpy(fp, v, n);
            fp[n] = '\0';
            found = 0;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_assign(e->cons, NULL);
    return found;
}

/* A flush is encoded, then waits for its lists to be delivered before its
 * records are produced; a swap can end in between. Its rows must name
 * the model they were encoded in: they named the one served at produce
 * time, and rows of the old shape labelled with the new model were
 * refused at a restore (test_model_reshape's kafka case, 74 rows). */
static void test_flush_names_encoded_model(void)
{
    env e;
    char err[512], fp[32] = "", want[24];
    if (env_start(&e) != 0) {
        env_stop(&e);
        return;
    }
    hl_table *a = table(&e);
    hl_changelog_restored ra;
    CHECKF(hl_changelog_restore(e.cl, 0, a, NULL, &ra, err, sizeof err) == 0, "%s", err);
    hl_changelog_shard *cs = hl_changelog_shard_create(e.cl, 0, a, &ra);
    events(a, NULL, "u", 0, 10);
    int64_t now = hl_now_mono_ms();
    hl_changelog_tick(cs, a, 10, -1, now);                  /* the first due time */
    CHECKF(hl_changelog_tick(cs, a, 10, -1, now + 2000) == 1,
           "no flush encoded at its due time");             /* lists not out yet */
    hl_changelog_shard_set_model(cs, FP + 1);               /* a swap ends */
    CHECKF(hl_changelog_tick(cs, a, 10, 10, now + 2000) == 1, "the flush not produced");
    hl_producer_flush(e.prod, 5000);
    snprintf(want, sizeof want, "%016llx", (unsigned long long)FP);
    CHECKF(first_row_model(&e, "u", fp, sizeof fp) == 0 && strcmp(fp, want) == 0,
           "the row encoded under model %s names model \"%s\"", want, fp);
    hl_table_on_evict(a, NULL, NULL);
    hl_changelog_shard_destroy(cs);
    hl_table_destroy(a);
    env_stop(&e);
}

/* A stop (SIGTERM) during a restore's read ends it at the next poll: the
 * read waits out a broker outage for as long as it lasts, so the stop is
 * looked at inside it, not only between partitions. The restore fails
 * saying so, with nothing of the partition read; without the stop the
 * same read restores the user. */
static void test_restore_read_stops(void)
{
    env e;
    char err[512] = "";
    if (env_start(&e) != 0) {
        env_stop(&e);
        return;
    }
    hl_table *a = table(&e), *b = table(&e), *c = table(&e);
    hl_changelog_restored ra, rb, rc_;
    CHECKF(hl_changelog_restore(e.cl, 0, a, NULL, &ra, err, sizeof err) == 0, "%s", err);
    hl_changelog_shard *cs = hl_changelog_shard_create(e.cl, 0, a, &ra);
    events(a, NULL, "u", 0, 10);
    CHECK(hl_changelog_flush_now(cs, a, 10, hl_now_mono_ms() + 10000) == 0);
    hl_table_on_evict(a, NULL, NULL);
    hl_changelog_shard_destroy(cs);
    stop_flag = 1;
    int rc = hl_changelog_restore(e.cl, 0, b, NULL, &rb, err, sizeof err);
    stop_flag = 0;
    CHECKF(rc != 0 && strstr(err, "the worker is stopping") != NULL && !has(b, "u"),
           "a restore asked to stop: rc %d, user read %d, err \"%s\"", rc, has(b, "u"), err);
    rc = hl_changelog_restore(e.cl, 0, c, NULL, &rc_, err, sizeof err);
    CHECKF(rc == 0 && has(c, "u"), "the restore after: rc %d, user read %d, err \"%s\"", rc,
           has(c, "u"), err);
    hl_table_destroy(a);
    hl_table_destroy(b);
    hl_table_destroy(c);
    env_stop(&e);
}

/* A user whose row is above the producer's message.max.bytes (as an
 * operator's lower kafka.message.max.bytes, or a big dim and history,
 * makes it). The flush used to fail at every interval, for good: its
 * checkpoint never landed, the input offsets were held (every restart
 * replayed more), and only halflife_changelog_flush_failures_total moved.
 * Now the row is left out, counted, and the flush's checkpoint lands; the
 * user keeps its last row that fit (here none), the others are durable. */
static void test_oversized_row_left_out(void)
{
    env e;
    char err[512] = "";
    if (env_start_with(&e, (hl_kafka_prop){"message.max.bytes", "1000"}) != 0) {
        env_stop(&e);
        return;
    }
    /* u2's 40 events make a row of 1 KB+; the restore reads rows into
     * the configured history (the changelog's copy of it too) */
    e.o.history = 64;
    e.cl->history = 64;
    e.cl->row_max = hl_snapshot_row_max(3, DIM, 64);
    hl_table *a = table(&e), *b = table(&e);
    hl_changelog_restored ra, rb;
    CHECKF(hl_changelog_restore(e.cl, 0, a, NULL, &ra, err, sizeof err) == 0, "%s", err);
    hl_changelog_shard *cs = hl_changelog_shard_create(e.cl, 0, a, &ra);
    int64_t far = hl_now_mono_ms() + 10000;
    events(a, NULL, "u1", 0, 3);
    CHECK(hl_changelog_flush_now(cs, a, 3, far) == 0);
    events(a, NULL, "u2", 3, 43);
    events(a, NULL, "u3", 43, 45);
    int rc = hl_changelog_flush_now(cs, a, 45, far);
    hl_counter *big = hl_metrics_counter(e.reg, "halflife_changelog_oversized_rows_total",
                                         "x", NULL);
    CHECKF(rc == 0 && hl_changelog_durable(cs) == 45 && hl_counter_get(big) == 1,
           "the flush with a row above message.max.bytes: rc %d, durable %lld (want 45), "
           "halflife_changelog_oversized_rows_total %llu (want 1)", rc,
           (long long)hl_changelog_durable(cs), (unsigned long long)hl_counter_get(big));
    CHECKF(hl_changelog_restore(e.cl, 0, b, NULL, &rb, err, sizeof err) == 0, "%s", err);
    CHECKF(rb.next_offset == 45 && has(b, "u1") && has(b, "u3") && !has(b, "u2"),
           "the restore resumes at %lld (want 45): u1 %d u3 %d u2 %d (want 1 1 0)",
           (long long)rb.next_offset, has(b, "u1"), has(b, "u3"), has(b, "u2"));
    hl_table_on_evict(a, NULL, NULL);
    hl_changelog_shard_destroy(cs);
    hl_table_destroy(a);
    hl_table_destroy(b);
    env_stop(&e);
}

/* A foreign record on the state topic (any producer, over the wire):
 * headers and bytes as librdkafka hands them to the restore. */
static void foreign(env *e, const char *key, const void *value, size_t len, const char *epoch,
                    const char *format)
{
    char err[256];
    hl_ticket t;
    hl_header h[3] = {{HL_CHANGELOG_EPOCH_HDR, epoch, strlen(epoch)}, {NULL, NULL, 0},
                      {NULL, NULL, 0}};
    if (format != NULL)
        h[1] = (hl_header){HL_CHANGELOG_FORMAT_HDR, format, strlen(format)};
    hl_ticket_reset(&t);
    CHECKF(hl_producer_send(e->prod, "st", 0, key, strlen(key), value, len, h, &t, err,
                            sizeof err) == 0, "produce: %s", err);
    CHECK(hl_producer_wait(e->prod, &t, 10000, NULL) && atomic_load(&t.failed) == 0);
}

/* Written into the topic between an owner's flushes (epoch 1): a record
 * that is no row naming epoch 1000, and a good row of u2 naming format 4
 * (a newer writer's layout). The restore must skip both (bad), neither
 * raising the fence (the owner's later flush, u3 and its checkpoint at 6,
 * would be stale) nor reading u2 as today's layout. */
static void test_foreign_records_on_topic(void)
{
    env e;
    char err[512] = "";
    if (env_start(&e) != 0) {
        env_stop(&e);
        return;
    }
    hl_table *a = table(&e), *b = table(&e), *src = table(&e);
    hl_changelog_restored ra, rb;
    CHECKF(hl_changelog_restore(e.cl, 0, a, NULL, &ra, err, sizeof err) == 0, "%s", err);
    hl_changelog_shard *cs = hl_changelog_shard_create(e.cl, 0, a, &ra);
    int64_t far = hl_now_mono_ms() + 10000;
    events(a, NULL, "u1", 0, 3);
    CHECK(hl_changelog_flush_now(cs, a, 3, far) == 0);
    events(src, NULL, "u2", 0, 3);
    unsigned char *row = malloc(hl_snapshot_row_max(3, DIM, 4));
    hl_row_view v;
    uint32_t r = (uint32_t)hl_table_find(src, "u2", 2);
    hl_table_view(src, r, &v);
    size_t len = hl_snapshot_row_encode(row, 3, DIM, r, &v);
    foreign(&e, "x", "garbage", 7, "1000", NULL);
    foreign(&e, "u2", row, len, "1", "4");
    events(a, NULL, "u3", 3, 6);
    CHECK(hl_changelog_flush_now(cs, a, 6, far) == 0);
    CHECKF(hl_changelog_restore(e.cl, 0, b, NULL, &rb, err, sizeof err) == 0, "%s", err);
    CHECKF(has(b, "u1") && has(b, "u3") && !has(b, "u2") && rb.next_offset == 6 &&
           rb.n_bad == 2 && rb.n_stale == 0 && rb.epoch == 2, "u1 %d u3 %d u2 (format 4) "
           "%d, resumes at %lld, bad %llu stale %llu, claim epoch %lld (want 1 1 0, 6, "
           "2 0, 2)", has(b, "u1"), has(b, "u3"), has(b, "u2"), (long long)rb.next_offset,
           (unsigned long long)rb.n_bad, (unsigned long long)rb.n_stale, (long long)rb.epoch);
    free(row);
    hl_table_on_evict(a, NULL, NULL);
    hl_changelog_shard_destroy(cs);
    hl_table_destroy(a);
    hl_table_destroy(b);
    hl_table_destroy(src);
    env_stop(&e);
}

/* A flush the broker refuses part of (its first Produce request; as a
 * topic whose max.message.bytes is below a row refuses that row's batch):
 * the flush fails, and its checkpoint must not land after the rest, or a
 * restore resumes the input past the events of the users whose rows were
 * refused (lost). */
static void test_broker_refused_rows(void)
{
    env e;
    char err[512] = "", user[32];
    if (env_start(&e) != 0) {
        env_stop(&e);
        return;
    }
    hl_table *a = table(&e), *b = table(&e);
    hl_changelog_restored ra, rb;
    CHECKF(hl_changelog_restore(e.cl, 0, a, NULL, &ra, err, sizeof err) == 0, "%s", err);
    hl_changelog_shard *cs = hl_changelog_shard_create(e.cl, 0, a, &ra);
    int64_t far = hl_now_mono_ms() + 20000;
    events(a, NULL, "u1", 0, 3);
    CHECK(hl_changelog_flush_now(cs, a, 3, far) == 0);
    enum { USERS = 20000 };                 /* rows of several Produce requests */
    for (int i = 0; i < USERS; i++) {
        snprintf(user, sizeof user, "user-%d", i);
        events(a, NULL, user, 3 + i, 4 + i);
    }
    rd_kafka_resp_err_t refused[1] = {RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE};
    rd_kafka_mock_push_request_errors_array(e.mock, 0 /* Produce */, 1, refused);
    int rc = hl_changelog_flush_now(cs, a, 3 + USERS, far);
    CHECKF(rc != 0 && hl_changelog_durable(cs) == 3, "the flush the broker refused part of: "
           "rc %d, durable %lld", rc, (long long)hl_changelog_durable(cs));
    CHECKF(hl_changelog_restore(e.cl, 0, b, NULL, &rb, err, sizeof err) == 0, "%s", err);
    int held = 0;
    for (int i = 0; i < USERS; i++) {
        snprintf(user, sizeof user, "user-%d", i);
        held += has(b, user);
    }
    CHECKF(rb.next_offset == 3 || held == USERS, "the restore resumes the input at %lld "
           "holding %d of the %d users whose events are before it: a checkpoint landed "
           "after refused rows", (long long)rb.next_offset, held, USERS);
    hl_table_on_evict(a, NULL, NULL);
    hl_changelog_shard_destroy(cs);
    hl_table_destroy(a);
    hl_table_destroy(b);
    env_stop(&e);
}

/* The zombie of test_claim_after_foreign_records: A, still holding the
 * partition as it believes, flushes once B's restorer has taken the
 * watermarks (its assignment shows it), while B's read is held up by the
 * broker (Fetch errors pushed); then the read may go on. */
typedef struct late_flush {
    env             *e;
    hl_table        *a;
    hl_changelog_shard *cs;
    int              rc;
} late_flush;

static void *late_flush_run(void *arg)
{
    late_flush *lf = arg;
    int64_t until = hl_now_mono_ms() + 20000;
    rd_kafka_topic_partition_list_t *l = NULL;
    lf->rc = -1;
    while (hl_now_mono_ms() < until) {
        if (rd_kafka_assignment(lf->e->cl->rk, &l) == 0 && l->cnt == 1)
            break;
        if (l) rd_kafka_topic_partition_list_destroy(l);
        l = NULL;
        usleep(2000);
    }
    if (l != NULL) {
        rd_kafka_topic_partition_list_destroy(l);
        events(lf->a, NULL, "k", 5, 10);            /* evicts w: a tombstone */
        lf->rc = hl_changelog_flush_now(lf->cs, lf->a, 10, hl_now_mono_ms() + 10000);
    }
    rd_kafka_mock_clear_request_errors(lf->e->mock, 1 /* Fetch */);
    return NULL;
}

/* The changelog's end moves during a restore: A's late flush (a
 * tombstone of w) lands after the watermarks B reads to and before B's
 * claim. The next reader takes it as A's (its epoch is not yet fenced),
 * so B, the owner, must write w again, or the next restore loses w
 * (B never changes w, so none of its flushes has it). */
static void test_claim_after_foreign_records(void)
{
    env e;
    char err[512] = "";
    if (env_start(&e) != 0) {
        env_stop(&e);
        return;
    }
    hl_table_opts one = e.o;
    one.max_users = 1;                      /* A evicts w when k arrives */
    hl_table *a = hl_table_create(&one, err, sizeof err), *b = table(&e), *c = table(&e);
    hl_changelog_restored ra, rb, rc_;
    CHECKF(hl_changelog_restore(e.cl, 0, a, NULL, &ra, err, sizeof err) == 0, "%s", err);
    late_flush lf = {.e = &e, .a = a, .cs = hl_changelog_shard_create(e.cl, 0, a, &ra)};
    int64_t far = hl_now_mono_ms() + 10000;
    events(a, NULL, "w", 0, 5);
    CHECK(hl_changelog_flush_now(lf.cs, a, 5, far) == 0);
    rd_kafka_resp_err_t held[1000];          /* B's read waits until they are cleared */
    for (int i = 0; i < 1000; i++)
        held[i] = RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION;
    rd_kafka_mock_push_request_errors_array(e.mock, 1 /* Fetch */, 1000, held);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, late_flush_run, &lf) == 0);
    int rc = hl_changelog_restore(e.cl, 0, b, NULL, &rb, err, sizeof err);
    pthread_join(th, NULL);
    CHECKF(rc == 0 && lf.rc == 0 && rb.claim_end - 1 > rb.high, "B's restore rc %d (%s), "
           "A's late flush rc %d, B read to %lld and claimed at %lld", rc, err, lf.rc,
           (long long)rb.high, (long long)rb.claim_end - 1);
    hl_changelog_shard *csb = hl_changelog_shard_create(e.cl, 0, b, &rb);
    events(b, NULL, "k", 5, 10);                /* B replays from A's checkpoint at 5 */
    CHECK(hl_changelog_flush_now(csb, b, 10, hl_now_mono_ms() + 10000) == 0);
    CHECKF(hl_changelog_restore(e.cl, 0, c, NULL, &rc_, err, sizeof err) == 0, "%s", err);
    CHECKF(has(b, "w") && has(c, "w") && has(c, "k"), "the owner B holds w %d; the next "
           "restore: w %d k %d (A's tombstone before B's claim is the last word on w)",
           has(b, "w"), has(c, "w"), has(c, "k"));
    hl_table_on_evict(a, NULL, NULL);
    hl_table_on_evict(b, NULL, NULL);
    hl_changelog_shard_destroy(lf.cs);
    hl_changelog_shard_destroy(csb);
    hl_table_destroy(a);
    hl_table_destroy(b);
    hl_table_destroy(c);
    env_stop(&e);
}

/* ---- compaction after a zombie's late flush ----------------------------- */

/* The changelog partition as the log cleaner leaves it: each key's newest
 * record only, in offset order, as hl_changelog_restore reads them. *keep
 * holds the messages recs point into (destroyed by the caller). */
static size_t compacted(env *e, hl_changelog_rec *recs, rd_kafka_message_t **keep, size_t max)
{
    int64_t hi = high_watermark(e);
    size_t n = 0;
    rd_kafka_topic_partition_list_t *tp = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(tp, "st", 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(e->cons, tp);
    rd_kafka_topic_partition_list_destroy(tp);
    for (int64_t end = hl_now_mono_ms() + 10000, next = 0; next < hi && n < max &&
         hl_now_mono_ms() < end;) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(e->cons, 100);
        if (m == NULL)
            continue;
        if (m->err) {
            rd_kafka_message_destroy(m);
            continue;
        }
        next = m->offset + 1;
        for (size_t i = 0; i < n; i++)      /* a newer record of the key: the older goes */
            if (keep[i] && keep[i]->key_len == m->key_len &&
                memcmp(keep[i]->key, m->key, m->key_len) == 0) {
                rd_kafka_message_destroy(keep[i]);
                keep[i] = NULL;
            }
        keep[n++] = m;
    }
    rd_kafka_assign(e->cons, NULL);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (keep[i] == NULL)
            continue;
        rd_kafka_message_t *m = keep[i];
        rd_kafka_headers_t *h = NULL;
        recs[k] = (hl_changelog_rec){.key = m->key, .key_len = m->key_len, .value = m->payload,
                                     .len = m->len, .offset = m->offset};
        if (rd_kafka_message_headers(m, &h) == 0) {
            if (rd_kafka_header_get_last(h, HL_CHANGELOG_EPOCH_HDR, &recs[k].epoch,
                                         &recs[k].epoch_len) != 0)
                recs[k].epoch = NULL;
            if (rd_kafka_header_get_last(h, HL_CHANGELOG_MODEL_HDR, &recs[k].model,
                                         &recs[k].model_len) != 0)
                recs[k].model = NULL;
        }
        keep[k++] = m;
    }
    return k;
}

/* A owns the partition and flushes ua at 10. B takes it over (epoch 2),
 * applies 10..12 (ua, ub) and flushes. A, a zombie, applies 10..11 (ua)
 * and flushes late: its ua row (epoch 1) is now ua's newest record. B
 * flushes on (uc). Compacted, the changelog keeps A's stale ua row and
 * drops B's: a restore ignores the stale one (B's ub row, epoch 2, is
 * before it) and ua is lost, though B owned it all along. */
static void test_zombie_then_compaction(void)
{
    env e;
    char err[512] = "";
    int64_t far = hl_now_mono_ms() + 10000;
    hl_changelog_restored ra, rb, rc_;
    if (env_start(&e) != 0) {
        env_stop(&e);
        return;
    }
    hl_table *a = table(&e), *b = table(&e), *after = table(&e);
    CHECKF(hl_changelog_restore(e.cl, 0, a, NULL, &ra, err, sizeof err) == 0, "A: %s", err);
    hl_changelog_shard *csa = hl_changelog_shard_create(e.cl, 0, a, &ra);
    events(a, NULL, "ua", 0, 10);
    CHECK(hl_changelog_flush_now(csa, a, 10, far) == 0);

    CHECKF(hl_changelog_restore(e.cl, 0, b, NULL, &rb, err, sizeof err) == 0 &&
           rb.epoch == 2, "B: %s", err);
    hl_changelog_shard *csb = hl_changelog_shard_create(e.cl, 0, b, &rb);
    events(b, NULL, "ua", 10, 11);
    events(b, NULL, "ub", 11, 12);
    CHECK(hl_changelog_flush_now(csb, b, 12, far) == 0);

    events(a, NULL, "ua", 10, 11);              /* the zombie, a little behind */
    hl_changelog_flush_now(csa, a, 11, far);    /* lands after B's flush */

    for (int64_t off = 12; off < 16; off++) {   /* B, the owner, goes on */
        events(b, NULL, "uc", off, off + 1);
        CHECK(hl_changelog_flush_now(csb, b, off + 1, far) == 0);
    }
    hl_changelog_rec recs[256];
    rd_kafka_message_t *keep[256];
    size_t n = compacted(&e, recs, keep, 256);
    int rc = hl_changelog_replay(e.cl, after, NULL, recs, n, &rc_, err, sizeof err);
    CHECKF(rc == 0 && has(after, "ub") && has(after, "uc") && has(after, "ua") &&
           rc_.next_offset == 16, "the compacted changelog (%zu records): rc %d (%s), ua %d "
           "ub %d uc %d, next %lld, stale %llu", n, rc, err, has(after, "ua"),
           has(after, "ub"), has(after, "uc"), (long long)rc_.next_offset,
           (unsigned long long)rc_.n_stale);
    for (size_t i = 0; i < n; i++)
        rd_kafka_message_destroy(keep[i]);
    hl_table_on_evict(a, NULL, NULL);
    hl_table_on_evict(b, NULL, NULL);
    hl_changelog_shard_destroy(csa);
    hl_changelog_shard_destroy(csb);
    hl_table_destroy(after);
    hl_table_destroy(b);
    hl_table_destroy(a);
    env_stop(&e);
}

/* A flush a purge took back (a release letting go of undelivered records
 * purges the whole producer, so the flushes of partitions still owned
 * too): no flush failure (only a broker's refusal is one), and the next
 * flush covers it. Before, it counted in flush_failures_total and logged
 * changelog_flush_failed. Retriable refusals keep the rows queued. */
static void test_purged_flush_not_failed(void)
{
    env e;
    char err[512] = "";
    hl_changelog_restored ra;
    if (env_start(&e) != 0) {
        env_stop(&e);
        return;
    }
    hl_table *a = table(&e);
    CHECKF(hl_changelog_restore(e.cl, 0, a, NULL, &ra, err, sizeof err) == 0, "%s", err);
    hl_changelog_shard *cs = hl_changelog_shard_create(e.cl, 0, a, &ra);
    events(a, NULL, "ua", 0, 3);
    rd_kafka_resp_err_t busy[40];
    for (int i = 0; i < 40; i++)
        busy[i] = RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS;
    rd_kafka_mock_push_request_errors_array(e.mock, 0 /* Produce */, 40, busy);
    CHECK(hl_changelog_flush_now(cs, a, 3, hl_now_mono_ms() + 300) != 0);  /* queued */
    hl_producer_purge(e.prod);
    rd_kafka_mock_clear_request_errors(e.mock, 0);
    int rc = hl_changelog_flush_now(cs, a, 3, hl_now_mono_ms() + 10000);  /* settles it */
    uint64_t failed = hl_metrics_counter_sum(e.reg, "halflife_changelog_flush_failures_total");
    CHECKF(rc != 0 && hl_changelog_durable(cs) < 3 && failed == 0, "the purged flush: rc %d, "
           "durable %lld, halflife_changelog_flush_failures_total %llu", rc,
           (long long)hl_changelog_durable(cs), (unsigned long long)failed);
    CHECKF(hl_changelog_flush_now(cs, a, 3, hl_now_mono_ms() + 10000) == 0 &&
           hl_changelog_durable(cs) == 3, "the next flush: durable %lld",
           (long long)hl_changelog_durable(cs));
    hl_table_on_evict(a, NULL, NULL);
    hl_changelog_shard_destroy(cs);
    hl_table_destroy(a);
    env_stop(&e);
}

int main(void)
{
    hl_log_set_level(HL_LOG_ERROR);
    ct_init_e_in();
    RUN(test_zombie_snapshot_refused);
    RUN(test_zombie_new_owner_quiet);
    RUN(test_restore_read_stops);
    RUN(test_oversized_row_left_out);
    RUN(test_foreign_records_on_topic);
    RUN(test_broker_refused_rows);
    RUN(test_claim_after_foreign_records);
    RUN(test_flush_names_encoded_model);
    RUN(test_zombie_then_compaction);
    RUN(test_purged_flush_not_failed);
    TEST_EXIT();
}
