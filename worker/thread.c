/* thread.c - the batch loop of one shard-owning worker thread.
 *
 * Per batch (DESIGN.md section 1): consume up to batch.max.messages or
 * batch.max.ms from the thread's queue, decode each record (bad ones are
 * counted, logged rate-limited and copied to the DLQ), group the events by
 * shard in offset order, apply them, refresh every dirty user once in
 * chunks of REFRESH_MAX, produce each list, and remember the batch's next
 * offsets in a flight. A flight's offsets are stored only when its delivery
 * ticket reads zero, and flights retire in order, so a stored offset never
 * runs ahead of a list that has not reached the broker.
 *
 * Invariants: only this thread touches its shards between a give and a
 * take; all buffers are sized at create time, so the loop does not
 * allocate apart from librdkafka's own records and one partition list per
 * batch. */
#include "thread.h"
#include "log.h"
#include "rank.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REFRESH_MAX 256     /* users per hl_ranker_refresh: SGEMM runs well from 64 */
#define N_FLIGHTS   8       /* batches whose lists may be in flight at once */
#define MAX_PARTS   4096    /* shards one thread can hold */

enum { STAGE_DECODE, STAGE_APPLY, STAGE_REFRESH, STAGE_PRODUCE };

typedef struct flight {
    hl_ticket t;
    rd_kafka_topic_partition_list_t *offs;   /* next offset per partition */
    int64_t  *ts_ms;                         /* Kafka timestamps of the events */
    int       n_ts;
    int       used;
} flight;

struct hl_wthread {
    int          id;
    hl_wshared  *ctx;
    pthread_t    tid;
    int          started;
    rd_kafka_queue_t *q;

    /* mailbox, under mu */
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    hl_shard   **give;    int n_give;
    int32_t     *take;    int n_take;
    int32_t     *take_copy;
    hl_shard   **taken;   int n_taken;
    int          exited;
    atomic_int   mail;

    /* owned by the thread */
    hl_shard   **own;     int n_own;
    hl_shard   **by_part; int cap_part;
    hl_codec    *codec;
    hl_ranker   *ranker;
    rd_kafka_message_t **msgs;
    char        *arena;   size_t arena_used, arena_cap;
    hl_row_view *views;
    hl_rec      *recs;
    int         *n_out;
    hl_codec_rec *crec;
    uint8_t     *enc;     size_t enc_cap;
    flight       fl[N_FLIGHTS];
    int          fl_head, fl_n;
    hl_ticket    dlq_ticket;
    hl_log_limit bad_limit, err_limit;
    uint64_t     b_unknown, b_invalid[HL_CODEC_N_REASONS], b_lists;
    double       stage_s[4];

    /* totals, read by others */
    atomic_int    n_shards;
    atomic_ullong consumed, applied, duplicates, failed, unknown, lists, batches,
                  dlq, users;
    atomic_ullong invalid[HL_CODEC_N_REASONS];
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- creation ---------------------------------------------------------- */

static int alloc_buffers(hl_wthread *t, char *errbuf, size_t errlen)
{
    const hl_worker_opts *o = t->ctx->o;
    size_t bm = (size_t)o->batch_max_messages, k = (size_t)o->recs_k;
    t->arena_cap = bm * HL_MAX_ID_LEN;
    t->enc_cap = 1024 + k * (2 * HL_MAX_ID_LEN + 32);
    t->give = calloc(MAX_PARTS, sizeof *t->give);
    t->take = calloc(MAX_PARTS, sizeof *t->take);
    t->take_copy = calloc(MAX_PARTS, sizeof *t->take_copy);
    t->taken = calloc(MAX_PARTS, sizeof *t->taken);
    t->own = calloc(MAX_PARTS, sizeof *t->own);
    t->msgs = calloc(bm, sizeof *t->msgs);
    t->arena = malloc(t->arena_cap);
    t->views = calloc(REFRESH_MAX, sizeof *t->views);
    t->recs = calloc(REFRESH_MAX * k, sizeof *t->recs);
    t->n_out = calloc(REFRESH_MAX, sizeof *t->n_out);
    t->crec = calloc(k, sizeof *t->crec);
    t->enc = malloc(t->enc_cap);
    int ok = t->give && t->take && t->take_copy && t->taken && t->own && t->msgs && t->arena &&
             t->views && t->recs && t->n_out && t->crec && t->enc;
    for (int i = 0; ok && i < N_FLIGHTS; i++)
        ok = (t->fl[i].ts_ms = malloc(bm * sizeof(int64_t))) != NULL;
    return ok ? 0 : hl_err(errbuf, errlen, HL_ENOMEM, "thread %d: out of memory", t->id);
}

hl_wthread *hl_wthread_create(int id, hl_wshared *ctx, char *errbuf, size_t errlen)
{
    hl_wthread *t = calloc(1, sizeof *t);
    if (t == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "thread %d: out of memory", id);
        return NULL;
    }
    t->id = id;
    t->ctx = ctx;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    t->bad_limit.interval_ms = 1000;
    t->err_limit.interval_ms = 5000;
    t->dlq_ticket.fail_counter = ctx->mx.dlq_errors;
    if (alloc_buffers(t, errbuf, errlen) != 0)
        goto fail;
    if ((t->codec = hl_codec_create(&ctx->o->codec, errbuf, errlen)) == NULL)
        goto fail;
    if (ctx->o->recs_enabled) {
        hl_rank_opts ro = {.k = ctx->o->recs_k, .exclude_seen = ctx->o->recs_exclude_seen,
                           .max_batch = REFRESH_MAX};
        if ((t->ranker = hl_ranker_create(ctx->m, &ro, errbuf, errlen)) == NULL)
            goto fail;
    }
    t->q = rd_kafka_queue_new(ctx->consumer);
    return t;
fail:
    hl_wthread_destroy(t);
    return NULL;
}

void hl_wthread_destroy(hl_wthread *t)
{
    if (t == NULL)
        return;
    hl_wthread_join(t);
    for (int i = 0; i < t->n_own; i++)
        hl_shard_destroy(t->own[i]);
    for (int i = 0; i < t->n_give; i++)
        hl_shard_destroy(t->give[i]);
    for (int i = 0; i < t->n_taken; i++)
        hl_shard_destroy(t->taken[i]);
    for (int i = 0; i < N_FLIGHTS; i++) {
        free(t->fl[i].ts_ms);
        if (t->fl[i].offs)
            rd_kafka_topic_partition_list_destroy(t->fl[i].offs);
    }
    if (t->q)
        rd_kafka_queue_destroy(t->q);
    hl_ranker_destroy(t->ranker);
    hl_codec_destroy(t->codec);
    free(t->give); free(t->take); free(t->take_copy); free(t->taken); free(t->own); free(t->by_part);
    free(t->msgs); free(t->arena); free(t->views); free(t->recs); free(t->n_out);
    free(t->crec); free(t->enc);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    free(t);
}

rd_kafka_queue_t *hl_wthread_queue(hl_wthread *t) { return t->q; }
int hl_wthread_n_shards(hl_wthread *t) { return atomic_load(&t->n_shards); }

/* ---- ownership --------------------------------------------------------- */

static void own_add(hl_wthread *t, hl_shard *sh)
{
    int p = sh->partition;
    if (p >= t->cap_part) {
        int cap = p + 64;
        hl_shard **bp = realloc(t->by_part, sizeof *bp * (size_t)cap);
        if (bp == NULL)
            abort();            /* a few KB at assignment time */
        memset(bp + t->cap_part, 0, sizeof *bp * (size_t)(cap - t->cap_part));
        t->by_part = bp;
        t->cap_part = cap;
    }
    t->by_part[p] = sh;
    t->own[t->n_own++] = sh;
    atomic_store(&t->n_shards, t->n_own);
}

static hl_shard *own_remove(hl_wthread *t, int32_t p)
{
    for (int i = 0; i < t->n_own; i++) {
        if (t->own[i]->partition != p)
            continue;
        hl_shard *sh = t->own[i];
        t->own[i] = t->own[--t->n_own];
        t->by_part[p] = NULL;
        atomic_store(&t->n_shards, t->n_own);
        return sh;
    }
    return NULL;
}

static hl_shard *shard_of(hl_wthread *t, int32_t p)
{
    return p >= 0 && p < t->cap_part ? t->by_part[p] : NULL;
}

void hl_wthread_give(hl_wthread *t, hl_shard *sh)
{
    pthread_mutex_lock(&t->mu);
    t->give[t->n_give++] = sh;
    atomic_store(&t->mail, 1);
    pthread_mutex_unlock(&t->mu);
}

void hl_wthread_post_take(hl_wthread *t, int32_t partition)
{
    pthread_mutex_lock(&t->mu);
    t->take[t->n_take++] = partition;
    atomic_store(&t->mail, 1);
    pthread_mutex_unlock(&t->mu);
}

/* Under mu: move given shards into the thread's own set. */
static void accept_gives(hl_wthread *t)
{
    for (int i = 0; i < t->n_give; i++)
        own_add(t, t->give[i]);
    t->n_give = 0;
}

/* Under mu: answer every posted take. The caller has drained the flights. */
static void answer_takes(hl_wthread *t)
{
    accept_gives(t);
    for (int i = 0; i < t->n_take; i++) {
        hl_shard *sh = own_remove(t, t->take[i]);
        if (sh)
            t->taken[t->n_taken++] = sh;
    }
    t->n_take = 0;
    pthread_cond_broadcast(&t->cv);
}

int hl_wthread_wait_taken(hl_wthread *t, hl_shard **out, int max)
{
    pthread_mutex_lock(&t->mu);
    while (t->n_take > 0 && !t->exited)
        pthread_cond_wait(&t->cv, &t->mu);
    if (t->n_take > 0)
        answer_takes(t);        /* the thread is gone: nobody else owns them */
    int n = 0;
    while (t->n_taken > 0 && n < max)
        out[n++] = t->taken[--t->n_taken];
    pthread_mutex_unlock(&t->mu);
    return n;
}

/* ---- flights: offsets stored once the lists are delivered -------------- */

static void retire_one(hl_wthread *t, flight *f)
{
    hl_wshared *ctx = t->ctx;
    for (int i = 0; i < f->offs->cnt; i++) {
        hl_shard *sh = shard_of(t, f->offs->elems[i].partition);
        if (sh != NULL)
            sh->delivered_offset = f->offs->elems[i].offset;
    }
    if (f->offs->cnt > 0) {
        rd_kafka_resp_err_t err = rd_kafka_offsets_store(ctx->consumer, f->offs);
        uint64_t sup;
        /* A partition revoked meanwhile cannot store: its next owner
         * re-reads from the last stored offset, which is safe. */
        if (err && hl_log_limit_pass(&t->err_limit, &sup))
            hl_log(HL_LOG_DEBUG, "offsets_store", "err=\"%s\"", rd_kafka_err2str(err));
    }
    if (ctx->o->recs_enabled && f->n_ts > 0) {
        int64_t now = wall_ms();
        for (int i = 0; i < f->n_ts; i++) {
            double d = (double)(now - f->ts_ms[i]);
            if (d < 0)
                d = 0;
            if (ctx->mx.e2p)
                hl_histogram_observe(ctx->mx.e2p, d / 1000.0);
            int b = d < 1 ? 0 : (int)(4.0 * log2(d)) + 1;
            atomic_fetch_add_explicit(&ctx->lat[b < HL_LAT_BUCKETS ? b : HL_LAT_BUCKETS - 1],
                                      1, memory_order_relaxed);
        }
    }
    rd_kafka_topic_partition_list_destroy(f->offs);
    f->offs = NULL;
    f->used = 0;
}

/* Retires finished flights from the head, in order. */
static void retire(hl_wthread *t)
{
    while (t->fl_n > 0 && hl_ticket_done(&t->fl[t->fl_head].t)) {
        retire_one(t, &t->fl[t->fl_head]);
        t->fl_head = (t->fl_head + 1) % N_FLIGHTS;
        t->fl_n--;
    }
}

/* Waits for every flight (polling the producer). 0 if told to stop now, or
 * when stopping and shutdown.timeout.ms has run out (the broker is away):
 * the undelivered batches' offsets are then not stored, so they are read
 * and published again after a restart. */
static int drain(hl_wthread *t)
{
    while (t->fl_n > 0) {
        int stop = atomic_load(t->ctx->stop);
        if (stop >= 2 || (stop == 1 && mono_ms() > atomic_load(&t->ctx->stop_deadline_ms))) {
            hl_log(HL_LOG_WARN, "drain_abandoned", "thread=%d batches_in_flight=%d",
                   t->id, t->fl_n);
            return 0;
        }
        hl_producer_poll(t->ctx->prod, 1);
        retire(t);
    }
    return 1;
}

static flight *flight_begin(hl_wthread *t)
{
    while (t->fl_n == N_FLIGHTS && atomic_load(t->ctx->stop) < 2) {
        hl_producer_poll(t->ctx->prod, 1);
        retire(t);
    }
    flight *f = &t->fl[(t->fl_head + t->fl_n) % N_FLIGHTS];
    hl_ticket_reset(&f->t);
    f->offs = rd_kafka_topic_partition_list_new(t->n_own > 0 ? t->n_own : 1);
    f->n_ts = 0;
    f->used = 1;
    t->fl_n++;
    return f;
}

/* ---- decode ------------------------------------------------------------ */

static void send_dlq(hl_wthread *t, const rd_kafka_message_t *rkm, hl_codec_reason r)
{
    hl_wshared *ctx = t->ctx;
    char part[16], off[24], err[256];
    const char *rn = hl_codec_reason_name(r);
    const char *topic = rd_kafka_topic_name(rkm->rkt);
    snprintf(part, sizeof part, "%d", (int)rkm->partition);
    snprintf(off, sizeof off, "%lld", (long long)rkm->offset);
    hl_header h[] = {
        {"halflife.reason", rn, strlen(rn)},
        {"halflife.source.topic", topic, strlen(topic)},
        {"halflife.source.partition", part, strlen(part)},
        {"halflife.source.offset", off, strlen(off)},
        {NULL, NULL, 0},
    };
    if (hl_producer_send(ctx->prod, ctx->dlq_topic, RD_KAFKA_PARTITION_UA,
                         rkm->key, rkm->key_len, rkm->payload, rkm->len, h,
                         &t->dlq_ticket, err, sizeof err) != 0) {
        if (ctx->mx.dlq_errors)
            hl_counter_add(ctx->mx.dlq_errors, 1);
        hl_log(HL_LOG_WARN, "dlq_failed", "err=\"%s\"", err);
        return;
    }
    atomic_fetch_add_explicit(&t->dlq, 1, memory_order_relaxed);
    if (ctx->mx.dlq[r])
        hl_counter_add(ctx->mx.dlq[r], 1);
}

static void bad_record(hl_wthread *t, hl_shard *sh, const rd_kafka_message_t *rkm,
                       hl_codec_reason r, const char *detail)
{
    uint64_t sup = 0;
    t->b_invalid[r]++;
    atomic_fetch_add_explicit(&sh->invalid, 1, memory_order_relaxed);
    if (hl_log_limit_pass(&t->bad_limit, &sup))
        hl_log(HL_LOG_WARN, "bad_record",
               "partition=%d offset=%lld reason=%s detail=\"%s\" dlq=%s suppressed=%llu",
               (int)rkm->partition, (long long)rkm->offset, hl_codec_reason_name(r),
               detail, t->ctx->dlq_topic ? t->ctx->dlq_topic : "off",
               (unsigned long long)sup);
    if (t->ctx->dlq_topic)
        send_dlq(t, rkm, r);
}

static void record_error(hl_wthread *t, const rd_kafka_message_t *rkm)
{
    uint64_t sup = 0;
    if (rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
        return;
    if (rkm->err == RD_KAFKA_RESP_ERR__FATAL) {
        atomic_store(t->ctx->stop, 2);
        hl_log(HL_LOG_ERROR, "kafka_fatal", "err=\"%s\"", rd_kafka_message_errstr(rkm));
        return;
    }
    if (hl_log_limit_pass(&t->err_limit, &sup))
        hl_log(HL_LOG_WARN, "consume_error", "err=\"%s\" suppressed=%llu",
               rd_kafka_message_errstr(rkm), (unsigned long long)sup);
}

static void decode_one(hl_wthread *t, rd_kafka_message_t *rkm, flight *f)
{
    char detail[160];
    hl_codec_event cev;
    if (rkm->err) {
        record_error(t, rkm);
        return;
    }
    hl_shard *sh = shard_of(t, rkm->partition);
    if (sh == NULL)
        return;                 /* a partition this thread let go of */
    hl_shard_saw(sh, rkm->offset);
    hl_codec_reason r = hl_codec_decode_event(t->codec, rkm->payload ? rkm->payload : "",
                                              rkm->len, &cev, detail, sizeof detail);
    if (r != HL_CODEC_OK) {
        bad_record(t, sh, rkm, r, detail);
        return;
    }
    hl_event ev = {
        .user = t->arena + t->arena_used, .user_len = cev.user_len,
        .item = hl_model_item_find(t->ctx->m, cev.item, cev.item_len),
        .type = (uint8_t)cev.type, .w = t->ctx->type_weight[cev.type] * cev.weight,
        .ts_ms = cev.ts_ms, .offset = rkm->offset,
    };
    memcpy(t->arena + t->arena_used, cev.user, cev.user_len);
    t->arena_used += cev.user_len;
    t->b_unknown += ev.item < 0;
    hl_shard_push(sh, &ev);
    f->ts_ms[f->n_ts++] = rd_kafka_message_timestamp(rkm, NULL);
}

/* ---- refresh and produce ----------------------------------------------- */

static void publish_list(hl_wthread *t, const hl_row_view *v, const hl_rec *recs,
                         int n, int32_t partition, flight *f)
{
    hl_wshared *ctx = t->ctx;
    const hl_model_info *mi = hl_model_info_get(ctx->m);
    char err[256];
    for (int j = 0; j < n; j++) {
        hl_codec_rec *cr = &t->crec[j];
        cr->item = hl_model_item_id(ctx->m, recs[j].item, &cr->item_len);
        cr->score = recs[j].score;
        cr->because = recs[j].because >= 0
            ? hl_model_item_id(ctx->m, recs[j].because, &cr->because_len) : NULL;
        if (cr->because == NULL)
            cr->because_len = 0;
    }
    hl_codec_list l = {
        .user = v->user, .user_len = v->user_len, .generated_at_ms = v->t_ref_ms,
        .model_version = mi->version, .items = t->crec, .n_items = n,
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
    t->b_lists++;
    if (ctx->o->on_list)
        ctx->o->on_list(ctx->o->on_list_arg, &l);
}

/* Refreshes rows[0..n) of sh (live rows, each once) and produces their
 * lists into flight f. */
static void refresh_chunk(hl_wthread *t, hl_shard *sh, const uint32_t *rows, int n,
                          flight *f)
{
    int k = t->ctx->o->recs_k;
    for (int i = 0; i < n; i++)
        hl_table_view(sh->tbl, rows[i], &t->views[i]);
    double a = now_s();
    int rc = hl_ranker_refresh(t->ranker, t->views, n, t->recs, t->n_out);
    double b = now_s();
    t->stage_s[STAGE_REFRESH] += b - a;
    if (rc != 0) {
        uint64_t sup;
        if (hl_log_limit_pass(&t->err_limit, &sup))
            hl_log(HL_LOG_ERROR, "refresh_failed", "partition=%d err=%s",
                   (int)sh->partition, hl_strerror(rc));
        return;
    }
    for (int i = 0; i < n; i++) {
        publish_list(t, &t->views[i], t->recs + (size_t)i * k, t->n_out[i],
                     sh->partition, f);
        hl_shard_refreshed(sh, rows[i], &t->views[i]);
    }
    t->stage_s[STAGE_PRODUCE] += now_s() - b;
}

/* With recs.min.interval.ms: the dirty rows whose time has come, then the
 * pending rows whose time has come, in chunks of REFRESH_MAX. */
static void refresh_gated(hl_wthread *t, hl_shard *sh, flight *f, int64_t newest_ms)
{
    uint32_t dirty[REFRESH_MAX], rows[REFRESH_MAX];
    int n_rows = 0, n;
    hl_row_view v;
    do {
        n = hl_table_take_dirty(sh->tbl, dirty, REFRESH_MAX);
        for (int i = 0; i < n; i++) {
            hl_table_view(sh->tbl, dirty[i], &v);
            if (!hl_shard_gate(sh, dirty[i], &v, newest_ms))
                continue;
            rows[n_rows++] = dirty[i];
            if (n_rows == REFRESH_MAX) {
                refresh_chunk(t, sh, rows, n_rows, f);
                n_rows = 0;
            }
        }
    } while (n == REFRESH_MAX);
    do {
        n = hl_shard_take_due(sh, rows + n_rows, REFRESH_MAX - n_rows, newest_ms);
        n_rows += n;
        if (n_rows == REFRESH_MAX || (n_rows > 0 && n == 0)) {
            refresh_chunk(t, sh, rows, n_rows, f);
            n_rows = 0;
            n = 1;
        }
    } while (n > 0);
}

static void refresh_shard(hl_wthread *t, hl_shard *sh, flight *f)
{
    uint32_t rows[REFRESH_MAX];
    int n;
    /* State only (recs.enabled=false): the dirty list is left alone. It
     * threads through the rows themselves, holds each user at most once,
     * and walking it would cost a cache miss per user per batch. */
    if (t->ranker == NULL)
        return;
    if (sh->min_interval_ms > 0) {
        hl_table_meta meta;
        hl_table_meta_get(sh->tbl, &meta);
        refresh_gated(t, sh, f, meta.newest_ts_ms);
        return;
    }
    do {
        n = hl_table_take_dirty(sh->tbl, rows, REFRESH_MAX);
        if (n > 0)
            refresh_chunk(t, sh, rows, n, f);
    } while (n == REFRESH_MAX);
}

/* ---- one batch --------------------------------------------------------- */

/* Puts each shard's publishable offset (hl_shard_publishable_offset: every
 * event below it applied and its list produced, in this flight or an
 * earlier one) into flight f when it moved; it becomes the delivered and
 * stored offset once f and the flights before it are delivered. */
static void note_offsets(hl_wthread *t, flight *f)
{
    for (int i = 0; i < t->n_own; i++) {
        hl_shard *sh = t->own[i];
        if (sh->batch_next_offset >= 0)
            sh->next_offset = sh->batch_next_offset;
        int64_t off = hl_shard_publishable_offset(sh);
        if (off <= sh->noted_offset)
            continue;
        rd_kafka_topic_partition_list_add(f->offs, t->ctx->o->input_topic,
                                          sh->partition)->offset = off;
        sh->noted_offset = off;
    }
}

static void batch_metrics(hl_wthread *t, int n_msgs)
{
    hl_wshared *ctx = t->ctx;
    uint64_t users = 0;
    for (int i = 0; i < t->n_own; i++) {
        hl_shard *sh = t->own[i];
        atomic_fetch_add_explicit(&sh->consumed, (uint64_t)sh->n_seen, memory_order_relaxed);
        atomic_fetch_add_explicit(&t->consumed, (uint64_t)sh->n_seen, memory_order_relaxed);
        if (sh->series.consumed && sh->n_seen)
            hl_counter_add(sh->series.consumed, (uint64_t)sh->n_seen);
        hl_shard_publish_stats(sh, ctx->mx.evictions[0] ? ctx->mx.evictions : NULL);
        hl_table_stats st;
        hl_table_stats_get(sh->tbl, &st);
        users += st.users;
    }
    atomic_store(&t->users, users);
    for (int r = 1; r < HL_CODEC_N_REASONS; r++) {
        if (!t->b_invalid[r])
            continue;
        atomic_fetch_add_explicit(&t->invalid[r], t->b_invalid[r], memory_order_relaxed);
        if (ctx->mx.invalid[r])
            hl_counter_add(ctx->mx.invalid[r], t->b_invalid[r]);
    }
    atomic_fetch_add_explicit(&t->unknown, t->b_unknown, memory_order_relaxed);
    atomic_fetch_add_explicit(&t->lists, t->b_lists, memory_order_relaxed);
    atomic_fetch_add_explicit(&t->batches, 1, memory_order_relaxed);
    if (ctx->reg) {
        hl_counter_add(ctx->mx.unknown, t->b_unknown);
        hl_counter_add(ctx->mx.lists, t->b_lists);
        hl_counter_add(ctx->mx.batches, 1);
        hl_histogram_observe(ctx->mx.batch_size, n_msgs);
        for (int s = 0; s < 4; s++)
            hl_histogram_observe(ctx->mx.stage[s], t->stage_s[s]);
    }
}

static void batch_begin(hl_wthread *t)
{
    for (int i = 0; i < t->n_own; i++)
        hl_shard_batch_begin(t->own[i]);
    t->arena_used = 0;
    t->b_unknown = t->b_lists = 0;
    memset(t->b_invalid, 0, sizeof t->b_invalid);
    memset(t->stage_s, 0, sizeof t->stage_s);
}

static void run_batch(hl_wthread *t, int n)
{
    flight *f = flight_begin(t);
    batch_begin(t);
    double a = now_s();
    for (int i = 0; i < n; i++)
        decode_one(t, t->msgs[i], f);
    for (int i = 0; i < n; i++)
        rd_kafka_message_destroy(t->msgs[i]);
    double b = now_s();
    uint64_t applied = 0, dup = 0, failed = 0;
    for (int i = 0; i < t->n_own; i++) {
        int d = 0, fl = 0;
        applied += (uint64_t)hl_shard_apply(t->own[i], t->ctx->m, &d, &fl);
        dup += (uint64_t)d;
        failed += (uint64_t)fl;
    }
    atomic_fetch_add_explicit(&t->applied, applied, memory_order_relaxed);
    atomic_fetch_add_explicit(&t->duplicates, dup, memory_order_relaxed);
    atomic_fetch_add_explicit(&t->failed, failed, memory_order_relaxed);
    double c = now_s();
    t->stage_s[STAGE_DECODE] = b - a;
    t->stage_s[STAGE_APPLY] = c - b;
    for (int i = 0; i < t->n_own; i++)
        refresh_shard(t, t->own[i], f);
    note_offsets(t, f);
    batch_metrics(t, n);
}

/* ---- snapshots (persist.h) -------------------------------------------- */

/* Revocation and shutdown: refreshes every user recs.min.interval.ms still
 * holds back, into one flight with the shards' publishable offsets, so no
 * user's last list goes unpublished and drain() then delivers them. */
static void flush_pending(hl_wthread *t, hl_shard **shs, int n_sh)
{
    uint32_t rows[REFRESH_MAX];
    int any = 0;
    for (int i = 0; i < n_sh && !any; i++)
        any = shs[i] != NULL && shs[i]->n_heap > 0;
    if (!any || t->ranker == NULL || atomic_load(t->ctx->stop) >= 2)
        return;
    flight *f = flight_begin(t);
    memset(t->stage_s, 0, sizeof t->stage_s);
    t->b_lists = 0;
    for (int i = 0; i < n_sh; i++) {
        int n;
        if (shs[i] == NULL)
            continue;
        while ((n = hl_shard_take_due(shs[i], rows, REFRESH_MAX, INT64_MAX)) > 0)
            refresh_chunk(t, shs[i], rows, n, f);
    }
    note_offsets(t, f);
    atomic_fetch_add_explicit(&t->lists, t->b_lists, memory_order_relaxed);
    if (t->ctx->mx.lists)
        hl_counter_add(t->ctx->mx.lists, t->b_lists);
}

/* A durable snapshot now (revocation, shutdown), before deadline_ms
 * (monotonic). Only when every list of the shard's applied events is
 * delivered (the flights drained): a snapshot's rows may hold events up to
 * next_offset, and an event the restart would read as already applied
 * would never see its list published again. Otherwise the previous
 * snapshot stays, and a restart replays from there. */
static void snap_now(hl_wthread *t, hl_shard *sh, int64_t deadline_ms)
{
    char err[512];
    if (sh->ps == NULL)
        return;
    if (sh->delivered_offset != sh->next_offset) {
        hl_log(HL_LOG_WARN, "snapshot_flush_skipped", "partition=%d next_offset=%lld "
               "delivered_offset=%lld reason=\"lists not delivered; the previous snapshot "
               "stays\"", (int)sh->partition, (long long)sh->next_offset,
               (long long)sh->delivered_offset);
        return;
    }
    if (hl_persist_flush(sh->ps, sh->tbl, sh->delivered_offset, deadline_ms,
                         err, sizeof err) != 0)
        hl_log(HL_LOG_ERROR, "snapshot_flush_failed", "partition=%d err=\"%s\"",
               (int)sh->partition, err);
}

/* Between batches: lets each shard's snapshot advance within its time
 * budget; one shard that wrote rows ends the round, so the batch loop is
 * held up by at most one tick. */
static void snap_tick(hl_wthread *t)
{
    int64_t now = mono_ms();
    for (int i = 0; i < t->n_own; i++) {
        hl_shard *sh = t->own[i];
        if (sh->ps && hl_persist_tick(sh->ps, sh->tbl, sh->next_offset,
                                      sh->delivered_offset, now) == 1)
            return;
    }
}

/* ---- the loop ---------------------------------------------------------- */

static void serve_mail(hl_wthread *t, int with_takes)
{
    if (!atomic_load(&t->mail))
        return;
    pthread_mutex_lock(&t->mu);
    accept_gives(t);
    int n_take = t->n_take;
    memcpy(t->take_copy, t->take, sizeof *t->take * (size_t)n_take);
    pthread_mutex_unlock(&t->mu);
    if (!with_takes || !n_take)
        return;
    for (int i = 0; i < n_take; i += 64) {
        hl_shard *shs[64];
        int n_sh = 0;
        for (int j = i; j < n_take && n_sh < 64; j++)
            shs[n_sh++] = shard_of(t, t->take_copy[j]);
        flush_pending(t, shs, n_sh);
    }
    drain(t);                   /* the batch's lists delivered, offsets stored */
    /* One deadline for all: a stop's, or shutdown.timeout.ms from now. */
    int64_t deadline = atomic_load(t->ctx->stop) ? atomic_load(&t->ctx->stop_deadline_ms)
                                                 : mono_ms() + t->ctx->o->shutdown_timeout_ms;
    for (int i = 0; i < n_take; i++) {
        hl_shard *sh = shard_of(t, t->take_copy[i]);
        if (sh != NULL)
            snap_now(t, sh, deadline);    /* the next owner starts from here */
    }
    pthread_mutex_lock(&t->mu);
    answer_takes(t);
    atomic_store(&t->mail, t->n_give > 0 || t->n_take > 0);
    pthread_mutex_unlock(&t->mu);
}

/* Up to bm records within batch.max.ms, one rd_kafka_consume_queue() at a
 * time. Not rd_kafka_consume_batch_queue(): librdkafka 2.0.x lists it as a
 * known issue (CHANGELOG, v2.0.0) that with more than one message per call
 * and a seek, pause, resume or rebalance in parallel, messages may be lost.
 * The rebalance callback on the main thread pauses the assignment while a
 * shard thread is inside that call; the call moves a partition's
 * application position past records it then purges, and the resume fetches
 * from there. tests/integration/test_rebalance.py lost such records on the
 * partitions a worker kept while it was given another. A single consume
 * moves the position only for the record it returns.
 * rd_kafka_consume_callback_queue() (one lock and clock read per call,
 * each record version-checked as here) was tried and measured: no gain in
 * events/s or worker CPU against this loop (bench_worker, A/B pairs in one
 * run), on a deprecated API, so this loop stays. */
static int consume_batch(hl_wthread *t, int bm)
{
    int64_t end = mono_ms() + t->ctx->o->batch_max_ms;
    int n = 0;
    /* batch.max.ms bounds the wait, not the take: while records are queued
     * they are taken without a timeout, so no clock is read per record
     * (a clock read per record showed as 9% of a state-only profile). */
    while (n < bm) {
        rd_kafka_message_t *m = rd_kafka_consume_queue(t->q, 0);
        if (m == NULL) {
            int64_t left = end - mono_ms();
            if (left <= 0 || (m = rd_kafka_consume_queue(t->q, (int)left)) == NULL)
                break;
        }
        t->msgs[n++] = m;
    }
    return n;
}

static void *thread_main(void *arg)
{
    hl_wthread *t = arg;
    hl_wshared *ctx = t->ctx;
    int bm = ctx->o->batch_max_messages;
    while (atomic_load(ctx->stop) == 0) {
        serve_mail(t, 1);
        int n = consume_batch(t, bm);
        serve_mail(t, 0);       /* shards given during the wait own these records */
        if (n > 0)
            run_batch(t, (int)n);
        hl_producer_poll(ctx->prod, 0);
        retire(t);
        snap_tick(t);
    }
    if (atomic_load(ctx->stop) == 1) {
        flush_pending(t, t->own, t->n_own);
        if (drain(t)) {
            /* One deadline for every shard: N shards never take N times
             * shutdown.timeout.ms. */
            int64_t deadline = atomic_load(&ctx->stop_deadline_ms);
            for (int i = 0; i < t->n_own; i++)
                snap_now(t, t->own[i], deadline);
        }
    }
    pthread_mutex_lock(&t->mu);
    t->exited = 1;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

int hl_wthread_start(hl_wthread *t, char *errbuf, size_t errlen)
{
    if (pthread_create(&t->tid, NULL, thread_main, t) != 0)
        return hl_err(errbuf, errlen, HL_EIO, "thread %d: pthread_create failed", t->id);
    t->started = 1;
    return 0;
}

void hl_wthread_join(hl_wthread *t)
{
    if (t->started) {
        pthread_join(t->tid, NULL);
        t->started = 0;
    }
}

void hl_wthread_stats_add(hl_wthread *t, hl_worker_stats *st)
{
    st->consumed += atomic_load(&t->consumed);
    st->applied += atomic_load(&t->applied);
    st->duplicates += atomic_load(&t->duplicates);
    st->failed += atomic_load(&t->failed);
    st->unknown_items += atomic_load(&t->unknown);
    st->lists += atomic_load(&t->lists);
    st->batches += atomic_load(&t->batches);
    st->dlq_records += atomic_load(&t->dlq);
    st->users += atomic_load(&t->users);
    for (int r = 0; r < HL_CODEC_N_REASONS; r++) {
        uint64_t v = atomic_load(&t->invalid[r]);
        st->invalid_by_reason[r] += v;
        st->invalid += v;
    }
}
