/* changelog.c - state.store=kafka: flushes of each shard's changed rows to
 * a compacted changelog topic, their effect on the stored input offsets,
 * and the claim a new owner writes before them (the restore of a
 * partition is changelog_restore.c's; the scheme, the record kinds and
 * the fencing rule are in changelog.h; the topic's creation is in
 * changelog_topic.c).
 *
 * A flush is encoded whole on the owner thread between batches (a scan of
 * the row headers and a copy of the changed rows into one buffer), so it
 * is one consistent cut at one input offset, and produced later from that
 * buffer, once the lists of its events are delivered: the table may move
 * on meanwhile; its checkpoint follows once its rows are delivered
 * (produce_checkpoint). One flush per shard is in the air at a time.
 *
 * The checkpoint value, little-endian (CK_BYTES):
 *   0  "HLCK"   4  u32 version (1)   8  i64 input offset
 *   16 u64 model fingerprint   24 i64 newest_ts_ms   32 u64 active_seq
 *   40 u32 sweep cursor        44 i64 epoch
 * An epoch also travels in every record's halflife.epoch header (decimal).
 *
 * The chain: this shard is the partition's only writer while it owns it,
 * and the idempotent producer delivers its records in order, so each
 * flush's records follow the previous flush's (or the claim) with no gap.
 * A local snapshot's cover (hl_changelog_cover) is only ever a flush the
 * chain reaches: a restart from the cache reads everything written after
 * it, and so sees any claim made since. A zombie's late flush, landing
 * after the next owner's claim, leaves a gap: naming it as the cover (as
 * this file did before) let a restart skip the claim, take the late rows,
 * stale for every other reader, as durable, claim the epoch the new owner
 * holds, and its next flushes left those rows out (events lost). */
#include "changelog_internal.h"
#include "log.h"
#include "snapshot.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- bytes -------------------------------------------------------------- */

static unsigned char *put_le(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
    return p + n;
}

static uint64_t get_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

size_t hl_changelog_ck_encode(unsigned char *buf, const hl_changelog_ck *ck)
{
    unsigned char *p = buf;
    memcpy(p, "HLCK", 4);
    p = put_le(p + 4, 1, 4);
    p = put_le(p, (uint64_t)ck->offset, 8);
    p = put_le(p, ck->fingerprint, 8);
    p = put_le(p, (uint64_t)ck->meta.newest_ts_ms, 8);
    p = put_le(p, ck->meta.active_seq, 8);
    p = put_le(p, ck->meta.sweep_cursor, 4);
    p = put_le(p, (uint64_t)ck->epoch, 8);
    return (size_t)(p - buf);
}

int hl_changelog_ck_decode(const unsigned char *p, size_t len, hl_changelog_ck *ck)
{
    if (len != CK_BYTES || memcmp(p, "HLCK", 4) != 0 || get_le(p + 4, 4) != 1)
        return HL_EFORMAT;
    ck->offset = (int64_t)get_le(p + 8, 8);
    ck->fingerprint = get_le(p + 16, 8);
    ck->meta.newest_ts_ms = (int64_t)get_le(p + 24, 8);
    ck->meta.active_seq = get_le(p + 32, 8);
    ck->meta.sweep_cursor = (uint32_t)get_le(p + 40, 4);
    ck->epoch = (int64_t)get_le(p + 44, 8);
    if (ck->offset < -1 || ck->epoch < 0 || ck->epoch > HL_CHANGELOG_EPOCH_MAX)
        return HL_EFORMAT;
    return 0;
}

void hl_changelog_ck_key_init(hl_changelog *cl)
{
    /* 257 bytes: one more than any user_id (HL_MAX_ID_LEN), so no user's
     * row can ever share this key. */
    memset(cl->ck_key, '.', sizeof cl->ck_key);
    memcpy(cl->ck_key, "halflife.checkpoint", 19);
    memset(cl->recreation_key, '.', sizeof cl->recreation_key);
    memcpy(cl->recreation_key, "halflife.input-recreated", 24);
}

/* ---- the claim ------------------------------------------------------------ */

int hl_changelog_claim(hl_changelog *cl, int32_t p, const hl_table *tbl,
                       hl_changelog_restored *out, int input_recreated, char *errbuf,
                       size_t errlen)
{
    unsigned char ck[CK_BYTES];
    char ep[24];
    hl_ticket *t = malloc(sizeof *t);     /* left allocated if never reported */
    if (t == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "changelog claim: out of memory");
    hl_changelog_ck c = {.offset = out->next_offset, .fingerprint = atomic_load(&cl->fp),
                         .epoch = out->epoch};
    hl_table_meta_get(tbl, &c.meta);
    snprintf(ep, sizeof ep, "%lld", (long long)c.epoch);
    char bh[48];
    snprintf(bh, sizeof bh, "%lld:%lld", (long long)out->base_cover,
             (long long)out->base_epoch);
    hl_header h[4] = {{HL_CHANGELOG_EPOCH_HDR, ep, strlen(ep)},
                      {HL_CHANGELOG_GROUP_HDR, cl->group, strlen(cl->group)},
                      {out->recreated ? HL_CHANGELOG_BASE_HDR : NULL, bh, strlen(bh)},
                      {NULL, NULL, 0}};
    const char *key = input_recreated ? cl->recreation_key : cl->ck_key;
    hl_ticket_reset(t);
    t->fail_counter = NULL;
    if (hl_producer_send(cl->o.prod, cl->topic, p, key, sizeof cl->ck_key, ck,
                         hl_changelog_ck_encode(ck, &c), h, t, errbuf, errlen) != 0) {
        free(t);
        return HL_EIO;
    }
    /* Waited for: the claim must be in the log before this owner's first
     * flush can matter. A claim that does not land in time fails the
     * restore; its ticket is then left to the delivery report. */
    int done = hl_producer_wait(cl->o.prod, t, cl->o.timeout_ms, NULL);
    if (!done || atomic_load(&t->failed) > 0) {
        if (done)
            free(t);
        return hl_err(errbuf, errlen, HL_EIO, "changelog %s [%d]: the claim checkpoint "
                      "(epoch %lld) was not delivered within %d ms", cl->topic, (int)p,
                      (long long)c.epoch, cl->o.timeout_ms);
    }
    out->claim_end = atomic_load(&t->last_offset) + 1;
    free(t);
    hl_counter_add(cl->mx.records[KIND_CHECKPOINT], 1);
    return 0;
}

/* ---- the shard's flushes ------------------------------------------------- */

/* ROWS: the flush's tombstones and rows sent, its checkpoint not yet (it
 * goes once they are all delivered: produce_checkpoint). */
enum { IDLE, ENCODED, ROWS, SENT };

#define N_COVERS 64          /* durable flushes remembered for hl_changelog_cover */

typedef struct cover {
    int64_t input_offset, changelog_end, epoch;
} cover;

struct hl_changelog_shard {
    hl_changelog  *cl;
    int32_t        partition;
    int64_t        epoch;
    uint64_t       fp;             /* the model the rows are in (flushes name it) */
    uint64_t       full_want, full_done, full_enc; /* whole-table flushes asked for,
                                      the newest durable one, the one in flight */
    int64_t        durable;        /* input offset of the newest durable flush */
    int64_t        chain_end;      /* changelog offset after our newest delivered
                                      record, -1: unknown (covers no longer
                                      remembered); see the overview */
    int64_t        pos;            /* changelog offset after our newest delivered
                                      record, kept past a gap (chain_end is not):
                                      each later gap is seen too; -1 unknown */
    int64_t        next_due_ms;    /* 0: at the first tick + flush_ms */
    int            state;
    /* the flush in hand */
    int64_t        offset;         /* its input offset */
    uint64_t       enc_fp;         /* the model its rows are in: fp when encoded. A
                                      flush waits for its lists between encode and
                                      produce, and a swap may end meanwhile (fp
                                      then names the new model): its rows, encoded
                                      in the old one's shape, named the new one and
                                      were refused at a restore (EFORMAT, 74 rows
                                      in test_model_reshape's kafka case) */
    hl_table_meta  meta;
    unsigned char *buf;            /* rows: u32 key_len, u32 value_len, key, value */
    size_t         len, cap;
    uint64_t       n_rows;
    int            n_sent;         /* records produced */
    size_t         tomb_cut;       /* tombstone bytes it carries */
    int64_t        t0_ms;
    hl_ticket      t;
    /* users evicted since the last durable flush: u16 len, bytes */
    unsigned char *tomb;
    size_t         tomb_len, tomb_cap;
    int            tomb_lost;      /* an eviction could not be noted */
    int            fenced_seen;    /* the loss at hand was counted (fenced) */
    hl_log_limit   limit;
    hl_log_limit   big_limit;      /* changelog_row_too_large */
    cover          covers[N_COVERS];   /* a ring of the newest durable flushes */
    int            n_covers, next_cover;
};

static void remember(hl_changelog_shard *cs, int64_t input_offset, int64_t changelog_end)
{
    cs->covers[cs->next_cover] = (cover){input_offset, changelog_end, cs->epoch};
    cs->next_cover = (cs->next_cover + 1) % N_COVERS;
    if (cs->n_covers < N_COVERS)
        cs->n_covers++;
}

void hl_changelog_cover(void *arg, int64_t next_offset, int64_t *changelog_offset,
                        int64_t *changelog_epoch)
{
    const hl_changelog_shard *cs = arg;
    const cover *best = NULL;
    for (int i = 0; i < cs->n_covers; i++) {
        const cover *c = &cs->covers[i];
        if (c->input_offset <= next_offset && c->changelog_end > 0 &&
            (best == NULL || c->changelog_end > best->changelog_end))
            best = c;
    }
    *changelog_offset = best ? best->changelog_end : 0;
    *changelog_epoch = best ? best->epoch : 0;
}

static int grow(unsigned char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 1 << 16;
    while (n < need) n *= 2;
    unsigned char *p = realloc(*buf, n);
    if (p == NULL)
        return HL_ENOMEM;
    *buf = p;
    *cap = n;
    return 0;
}

/* hl_table_evict_fn: note the user for a tombstone in the next flush. */
static void on_evict(void *arg, const char *user, uint32_t user_len)
{
    hl_changelog_shard *cs = arg;
    if (grow(&cs->tomb, &cs->tomb_cap, cs->tomb_len + 2 + user_len) != 0) {
        cs->tomb_lost = 1;
        return;
    }
    cs->tomb[cs->tomb_len] = (unsigned char)(user_len & 0xff);
    cs->tomb[cs->tomb_len + 1] = (unsigned char)(user_len >> 8);
    memcpy(cs->tomb + cs->tomb_len + 2, user, user_len);
    cs->tomb_len += 2 + user_len;
}

/* The claim landed after records the restore did not read: the
 * changelog's end moved between the watermarks and the claim (the
 * previous owner's flush still in the air, or a zombie's). Every later
 * reader takes them as that owner's (the claim comes after them), so a
 * tombstone among them deletes a user this owner holds, and a row sets
 * one back, for good unless this owner writes the user again: its first
 * flush writes every row (test_claim_after_foreign_records). */
static void foreign_before_claim(hl_changelog_shard *cs, const hl_changelog_restored *r)
{
    hl_changelog_shard_resave(cs);
    hl_log(HL_LOG_WARN, "changelog_claim_after_foreign_records", "partition=%d read_to=%lld "
           "claim=%lld reason=\"records landed after the restore's high watermark, before "
           "its claim\" action=\"the first flush writes every row\"", (int)cs->partition,
           (long long)r->high, (long long)(r->claim_end - 1));
}

hl_changelog_shard *hl_changelog_shard_create(hl_changelog *cl, int32_t p, hl_table *tbl,
                                              const hl_changelog_restored *r)
{
    hl_changelog_shard *cs = calloc(1, sizeof *cs);
    if (cs == NULL)
        return NULL;
    cs->cl = cl;
    cs->partition = p;
    cs->epoch = r->epoch;
    cs->fp = atomic_load(&cl->fp);     /* restored into the current model */
    cs->durable = r->next_offset;
    cs->chain_end = r->claim_end > 0 ? r->claim_end : -1;
    cs->pos = cs->chain_end;
    cs->limit.interval_ms = 5000;
    cs->big_limit.interval_ms = 5000;
    remember(cs, r->next_offset, r->claim_end);
    hl_table_on_evict(tbl, on_evict, cs);
    if (r->claim_end > 0 && r->claim_end - 1 > r->high)
        foreign_before_claim(cs, r);
    return cs;
}

void hl_changelog_shard_destroy(hl_changelog_shard *cs)
{
    if (cs == NULL)
        return;
    /* A flush still in the air: its delivery reports will write its
     * ticket, which lives in cs. Wait a little; if they still do not come
     * (the broker is away), cs is left allocated on purpose rather than
     * freed under them (the process is usually stopping then). */
    if ((cs->state == ROWS || cs->state == SENT) &&
        !hl_producer_wait(cs->cl->o.prod, &cs->t, 1000, NULL)) {
        hl_log(HL_LOG_WARN, "changelog_flush_abandoned", "partition=%d offset=%lld "
               "reason=\"undelivered at hand-back; its offsets were not stored\"",
               (int)cs->partition, (long long)cs->offset);
        return;
    }
    free(cs->buf);
    free(cs->tomb);
    free(cs);
}

int64_t hl_changelog_durable(const hl_changelog_shard *cs) { return cs->durable; }

int64_t hl_changelog_storable(const hl_changelog_shard *cs, int64_t off)
{
    return off < cs->durable ? off : cs->durable;
}

/* A row too big for one record (the producer would refuse it at once):
 * left out of the flush, counted and told (rate-limited, with the user).
 * It used to fail the flush, and so every later one, for good: the
 * checkpoint never moved, input offsets were held and each restart
 * replayed more. Leaving it out lets the checkpoint move past the user's
 * events: a restore holds the user's last row that fit, or none (README,
 * "Changelog rows too large"). */
static void row_too_large(hl_changelog_shard *cs, const hl_row_view *v, size_t rec)
{
    uint64_t sup = 0;
    char user[HL_MAX_ID_LEN * 4 + 1];
    hl_counter_add(cs->cl->mx.oversized, 1);
    if (hl_log_limit_pass(&cs->big_limit, &sup))
        hl_log(HL_LOG_ERROR, "changelog_row_too_large", "partition=%d user=\"%s\" "
               "bytes=%zu limit=%zu reason=\"the user's row is above the producer's "
               "message.max.bytes or the state topic's max.message.bytes\" action=\"left out of the changelog: a restore holds "
               "its last row that fit; raise kafka.message.max.bytes and the state topic's "
               "max.message.bytes, or lower state.history\" suppressed=%llu",
               (int)cs->partition, hl_log_quote(user, sizeof user, v->user, v->user_len),
               rec, cs->cl->record_max, (unsigned long long)sup);
}

/* Appends one row record (key user, value the row, in the shape of the
 * table it comes from: sh) to the flush buffer, unless it is too big for
 * one record. */
static int add_row(hl_changelog_shard *cs, const row_shape *sh, uint32_t row,
                   const hl_row_view *v)
{
    size_t need = cs->len + 8 + v->user_len + sh->row_max;
    if (grow(&cs->buf, &cs->cap, need) != 0)
        return HL_ENOMEM;
    unsigned char *p = cs->buf + cs->len;
    size_t vlen = hl_snapshot_row_encode(p + 8 + v->user_len, sh->n_heads, sh->dim, row, v);
    size_t rec = v->user_len + vlen + HL_CHANGELOG_RECORD_ROOM;
    if (rec > cs->cl->record_max) {
        row_too_large(cs, v, rec);
        return 0;
    }
    put_le(p, v->user_len, 4);
    put_le(p + 4, vlen, 4);
    memcpy(p + 8, v->user, v->user_len);
    cs->len += 8 + v->user_len + vlen;
    cs->n_rows++;
    return 0;
}

/* The cut: every row changed since the last durable flush (its last
 * applied offset at or above that flush's input offset). */
static int encode(hl_changelog_shard *cs, const hl_table *tbl, int64_t applied)
{
    uint32_t limit = hl_table_row_limit(tbl);
    /* Every row after a change of model: the changelog's older rows of
     * untouched users are in the old model's space. */
    int full = cs->full_want != cs->full_done;
    int64_t since = cs->durable < 0 || full ? INT64_MIN : cs->durable;
    cs->full_enc = full ? cs->full_want : cs->full_done;
    hl_row_view v;
    row_shape sh = shape_of(tbl);
    cs->len = 0;
    cs->n_rows = 0;
    for (uint32_t r = 0; r < limit; r++) {
        if (!hl_table_row_live(tbl, r))
            continue;
        hl_table_view(tbl, r, &v);
        if (v.last_offset >= since && add_row(cs, &sh, r, &v) != 0)
            return HL_ENOMEM;
    }
    cs->offset = applied;
    cs->enc_fp = cs->fp;
    cs->tomb_cut = cs->tomb_len;
    hl_table_meta_get(tbl, &cs->meta);
    return 0;
}

#define STR_(x) #x
#define STR(x) STR_(x)
#define FORMAT_TEXT STR(HL_CHANGELOG_FORMAT)

static int send_one(hl_changelog_shard *cs, const void *key, size_t key_len,
                const void *value, size_t value_len, int kind)
{
    hl_changelog *cl = cs->cl;
    char ep[24], fp[24], err[256];
    snprintf(ep, sizeof ep, "%" PRId64, cs->epoch);
    snprintf(fp, sizeof fp, "%016" PRIx64, cs->enc_fp);
    hl_header h[4] = {{HL_CHANGELOG_EPOCH_HDR, ep, strlen(ep)}, {NULL, NULL, 0}, {NULL, NULL, 0},
                      {NULL, NULL, 0}};
    if (kind == KIND_ROW) {
        h[1] = (hl_header){HL_CHANGELOG_MODEL_HDR, fp, strlen(fp)};
        /* the heads' meaning (changelog_internal.h); a reader takes none as 2 */
        h[2] = (hl_header){HL_CHANGELOG_FORMAT_HDR, FORMAT_TEXT, sizeof FORMAT_TEXT - 1};
    } else if (kind == KIND_CHECKPOINT)   /* not on rows: no byte added per user */
        h[1] = (hl_header){HL_CHANGELOG_GROUP_HDR, cl->group, strlen(cl->group)};
    cs->n_sent++;
    if (hl_producer_send(cl->o.prod, cl->topic, cs->partition, key, key_len, value, value_len,
                         h, &cs->t, err, sizeof err) != 0) {
        atomic_fetch_add(&cs->t.failed, 1);
        hl_log(HL_LOG_ERROR, "changelog_send_failed", "partition=%d err=\"%s\"",
               (int)cs->partition, err);
        return HL_EIO;
    }
    hl_counter_add(cl->mx.records[kind], 1);
    hl_counter_add(cl->mx.bytes, key_len + value_len);
    return 0;
}

/* Produces the encoded flush's tombstones and rows (ROWS); its checkpoint
 * follows only once every one of them is delivered (produce_checkpoint).
 * A checkpoint tells a restore that its input offset is covered: sent
 * with the rows, it landed even when the broker refused a batch of them
 * (a row above the topic's max.message.bytes), and the restore resumed
 * past the events of users whose rows never landed (lost). A record the
 * producer refuses at once ends the flush there, for the same reason
 * (test_broker_refused_rows; a row too big for the producer never gets
 * here: add_row leaves it out, test_oversized_row_left_out); the rest
 * would fail alike, each with a log line. The next flush takes the same
 * cut again. */
static void produce(hl_changelog_shard *cs)
{
    int rc = 0;
    hl_ticket_reset(&cs->t);
    cs->n_sent = 0;
    cs->state = ROWS;
    for (size_t i = 0; rc == 0 && i < cs->tomb_cut;) {
        size_t n = cs->tomb[i] | (size_t)cs->tomb[i + 1] << 8;
        rc = send_one(cs, cs->tomb + i + 2, n, NULL, 0, KIND_TOMBSTONE);
        i += 2 + n;
    }
    for (size_t i = 0; rc == 0 && i < cs->len;) {
        size_t kl = get_le(cs->buf + i, 4), vl = get_le(cs->buf + i + 4, 4);
        rc = send_one(cs, cs->buf + i + 8, kl, cs->buf + i + 8 + kl, vl, KIND_ROW);
        i += 8 + kl + vl;
    }
    if (rc != 0)
        cs->state = SENT;           /* failed: settled as such once reported */
}

/* 1 when this process may no longer write the partition: its consumer
 * says the assignment was lost (session expired while it was cut off), or
 * its member id changed since the partitions were assigned (opts.
 * member_gone): a session that ran out inside a revocation callback resets
 * the id, and librdkafka 2.0.2 does not mark the assignment lost then
 * (rd_kafka_cgrp_revoke_all_rejoin_maybe does nothing while rebalancing),
 * so a release's flush looking at the mark alone sent its checkpoint
 * after the next owner's claim (test_changelog_fence,
 * test_no_checkpoint_after_member_reset). The id is a round trip to
 * librdkafka's thread, looked at only where a write is decided (a few
 * times per flush) and every GONE_LOOK_MS of flush_now's wait.
 * Counted and logged once per loss: the flush it refuses is looked at
 * again until the shard goes (the refused checkpoint, then flush_now
 * starting it anew, then each tick's interval), and each look counted
 * one more refused flush. */
static int fenced(hl_changelog_shard *cs)
{
    const hl_changelog_opts *o = &cs->cl->o;
    int lost = rd_kafka_assignment_lost(o->consumer);
    if (!lost && (o->member_gone == NULL || !o->member_gone(o->member_arg))) {
        cs->fenced_seen = 0;
        return 0;
    }
    if (cs->fenced_seen)
        return 1;
    cs->fenced_seen = 1;
    uint64_t sup = 0;
    hl_counter_add(cs->cl->mx.fenced, 1);
    if (hl_log_limit_pass(&cs->limit, &sup))
        hl_log(HL_LOG_WARN, "changelog_write_fenced", "partition=%d reason=\"%s\" "
               "action=\"flush refused\" suppressed=%llu", (int)cs->partition,
               lost ? "assignment lost" : "member id changed since the assignment",
               (unsigned long long)sup);
    return 1;
}

/* The rows delivered (ROWS, the ticket done): the checkpoint, under the
 * same ticket, unless one failed (then the flush settles as failed). Not
 * once fenced: the assignment may have been lost while the rows were in
 * the air, and the next owner's claim may be in already. All checkpoints
 * share one key, so a compacted topic would keep ours, a zombie's, and
 * drop the claim (test_changelog_fence). The flush is then dropped, not
 * settled: nothing is durable, and the shard is about to go. */
static void produce_checkpoint(hl_changelog_shard *cs)
{
    unsigned char ck[CK_BYTES];
    cs->state = SENT;
    if (atomic_load(&cs->t.failed) > 0)
        return;
    if (fenced(cs)) {
        cs->state = IDLE;
        return;
    }
    hl_changelog_ck c = {.offset = cs->offset, .fingerprint = cs->enc_fp,
                         .meta = cs->meta, .epoch = cs->epoch};
    send_one(cs, cs->cl->ck_key, sizeof cs->cl->ck_key, ck, hl_changelog_ck_encode(ck, &c),
         KIND_CHECKPOINT);
}

void hl_changelog_set_model(hl_changelog *cl, uint64_t fingerprint)
{
    atomic_store(&cl->fp, fingerprint);
}

void hl_changelog_shard_set_model(hl_changelog_shard *cs, uint64_t fingerprint)
{
    if (cs == NULL || cs->fp == fingerprint)
        return;
    cs->fp = fingerprint;
    hl_changelog_shard_resave(cs);
}

void hl_changelog_shard_resave(hl_changelog_shard *cs)
{
    if (cs != NULL)
        cs->full_want++;
}

/* Stores the input offset the flush made durable (capped by the lists'). */
static void store_offset(hl_changelog_shard *cs, int64_t delivered)
{
    int64_t off = hl_changelog_storable(cs, delivered);
    if (off < 0)
        return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, cs->cl->input_topic, cs->partition)->offset = off;
    rd_kafka_offsets_store(cs->cl->o.consumer, l);     /* revoked meanwhile: harmless */
    rd_kafka_topic_partition_list_destroy(l);
}

/* Where the delivered flush's records lie against the chain (the
 * overview). Our n records have distinct offsets from chain_end on, so the
 * last is chain_end + n - 1 exactly when nothing else came between them.
 * Above it, another writer's records did: a claim (this process is a
 * zombie) or a zombie's late flush (this process is the owner); the
 * offsets cannot tell which, so neither is fenced, but from here on no
 * cover is remembered: a snapshot names the last cover before the gap and
 * a restart from it reads the changelog from there, so it meets the claim
 * if there was one. Below it (an offset not reported), or after failed
 * records (a failure may still have been written), the chain cannot be
 * checked either: the same. Reading more is the price, never state. */
static void chain_check(hl_changelog_shard *cs)
{
    int64_t last = atomic_load(&cs->t.last_offset), want = cs->chain_end + cs->n_sent - 1;
    /* Another writer's records among or before ours: when they are a
     * fenced owner's late rows, each is now its user's newest record, and
     * a compacted topic keeps it and drops ours; a restore then ignores
     * it (stale) and the user is lost (test_zombie_then_compaction). A
     * whole-table flush makes ours the newest again. Checked at every
     * flush of the ownership, not only until the first gap: a zombie can
     * flush more than once before it learns it lost the partition. */
    if (cs->pos >= 0 && last > cs->pos + cs->n_sent - 1)
        hl_changelog_shard_resave(cs);
    cs->pos = last >= 0 ? last + 1 : -1;
    if (cs->chain_end < 0)
        return;
    if (last == want && atomic_load(&cs->t.failed) == 0) {
        cs->chain_end = last + 1;
        return;
    }
    cs->chain_end = -1;
    if (last > want)
        hl_counter_add(cs->cl->mx.chain_gaps, 1);
    hl_log(HL_LOG_WARN, "changelog_chain_broken", "partition=%d offset=%lld "
           "reason=\"%s\" action=\"local snapshots keep the cover before it: a restart "
           "from them reads the changelog from there\"", (int)cs->partition,
           (long long)cs->offset, last > want ? "another writer's records among this "
           "flush's (a claim, or a fenced owner's late flush)" : "delivery not fully "
           "reported");
}

/* A flush some of whose records did not land. Taken back by a purge only
 * (a release let go of undelivered records, event=release_undelivered or
 * release_lost_purged),
 * it failed nowhere: logged so, not counted as a failure (an operator's
 * alert on flush failures means the broker refused). */
static void log_undone(hl_changelog_shard *cs)
{
    int failed = atomic_load(&cs->t.failed), purged = atomic_load(&cs->t.purged);
    if (purged == failed) {
        hl_log(HL_LOG_INFO, "changelog_flush_purged", "partition=%d offset=%lld records=%d "
               "action=\"offsets held; retried next interval\"", (int)cs->partition,
               (long long)cs->offset, purged);
        return;
    }
    hl_counter_add(cs->cl->mx.flush_failed, 1);
    hl_log(HL_LOG_ERROR, "changelog_flush_failed", "partition=%d offset=%lld failed=%d "
           "action=\"offsets held; retried next interval\"", (int)cs->partition,
           (long long)cs->offset, failed - purged);
}

/* A delivered flush: durable, its tombstones dropped. A failed one stays
 * undone (the next flush covers its rows again: the cut is taken from the
 * last durable one). */
static int settle(hl_changelog_shard *cs, int64_t delivered, int64_t now_ms)
{
    hl_changelog *cl = cs->cl;
    cs->state = IDLE;
    chain_check(cs);
    if (atomic_load(&cs->t.failed) > 0) {
        log_undone(cs);
        return HL_EIO;
    }
    cs->durable = cs->offset;
    cs->full_done = cs->full_enc;
    if (cs->chain_end > 0)
        remember(cs, cs->offset, cs->chain_end);
    if (cs->tomb_cut > 0) {             /* tomb is NULL until the first eviction */
        memmove(cs->tomb, cs->tomb + cs->tomb_cut, cs->tomb_len - cs->tomb_cut);
        cs->tomb_len -= cs->tomb_cut;
    }
    hl_histogram_observe(cl->mx.flush_s, (double)(now_ms - cs->t0_ms) / 1000.0);
    store_offset(cs, delivered);
    hl_log(HL_LOG_DEBUG, "changelog_flushed", "partition=%d offset=%lld rows=%llu",
           (int)cs->partition, (long long)cs->offset, (unsigned long long)cs->n_rows);
    return 0;
}

static int start_flush(hl_changelog_shard *cs, hl_table *tbl, int64_t applied, int64_t now_ms)
{
    if (cs->tomb_lost) {
        /* A tombstone could not be noted: write every row, so the cut
         * still holds the whole state (a stale row of the evicted user
         * remains; its events are in the input before this cut). */
        cs->durable = HL_CHANGELOG_NO_OFFSET;
        cs->tomb_lost = 0;
    }
    if (encode(cs, tbl, applied) != 0) {
        hl_log(HL_LOG_ERROR, "changelog_flush_failed", "partition=%d err=\"out of memory\"",
               (int)cs->partition);
        return 0;
    }
    cs->t0_ms = now_ms;
    cs->state = ENCODED;
    return 1;
}

int hl_changelog_tick(hl_changelog_shard *cs, hl_table *tbl, int64_t applied_offset,
                      int64_t delivered_offset, int64_t now_ms)
{
    if (cs->state == ROWS && hl_ticket_done(&cs->t))
        produce_checkpoint(cs);
    if (cs->state == SENT && hl_ticket_done(&cs->t))
        settle(cs, delivered_offset, now_ms);
    if (cs->state == ENCODED && delivered_offset >= cs->offset) {
        if (fenced(cs)) {
            cs->state = IDLE;
            return 0;
        }
        produce(cs);
        return 1;
    }
    if (cs->state != IDLE)
        return 0;
    if (cs->next_due_ms == 0)
        cs->next_due_ms = now_ms + cs->cl->o.flush_ms;
    if (now_ms < cs->next_due_ms || applied_offset < 0 ||
        (applied_offset <= cs->durable && cs->tomb_len == 0 &&
         cs->full_want == cs->full_done))
        return 0;
    cs->next_due_ms = now_ms + cs->cl->o.flush_ms;
    if (fenced(cs))
        return 0;
    return start_flush(cs, tbl, applied_offset, now_ms);
}

#define GONE_LOOK_MS 10      /* flush_now's wait: how often it looks for a fence */

int hl_changelog_flush_now(hl_changelog_shard *cs, hl_table *tbl, int64_t next_offset,
                           int64_t deadline_ms)
{
    hl_changelog *cl = cs->cl;
    int64_t looked = hl_now_mono_ms();
    for (;;) {
        int64_t now = hl_now_mono_ms();
        if (cs->state == ROWS && hl_ticket_done(&cs->t))
            produce_checkpoint(cs);
        if (cs->state == SENT && hl_ticket_done(&cs->t) && settle(cs, next_offset, now) != 0)
            return HL_EIO;
        if (cs->state == ENCODED) {
            if (fenced(cs)) {       /* encoded before the loss: dropped as tick drops it */
                cs->state = IDLE;
                return HL_EIO;
            }
            produce(cs);
        }
        if (cs->state == IDLE) {
            if (next_offset < 0 || (next_offset <= cs->durable && cs->tomb_len == 0 &&
                                    cs->full_want == cs->full_done))
                return 0;
            if (fenced(cs))
                return HL_EIO;
            if (!start_flush(cs, tbl, next_offset, now))
                return HL_ENOMEM;
            produce(cs);
        }
        if (now >= deadline_ms) {
            hl_log(HL_LOG_WARN, "changelog_flush_timeout", "partition=%d offset=%lld "
                   "durable=%lld", (int)cs->partition, (long long)cs->offset,
                   (long long)cs->durable);
            return HL_EIO;
        }
        /* lost while its records wait: the caller lets them go */
        if (now - looked >= GONE_LOOK_MS) {
            looked = now;
            if (fenced(cs))
                return HL_EIO;
        }
        hl_producer_poll(cl->o.prod, 1);
    }
}
