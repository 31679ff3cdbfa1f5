/* park.c - records that wait for their writer schema (DESIGN.md section 13).
 *
 * A record whose schema id the registry has not answered for yet is not
 * bad: it waits. Its partition waits with it, so the partition's order is
 * kept: the record and every later record of that partition already taken
 * from the queue are parked here, in arrival order, and the partition is
 * paused (rd_kafka_pause_partitions). librdkafka's pause raises a version
 * barrier at once, so nothing more of the partition comes out of the queue,
 * and on resume it fetches from the offset after the last record handed to
 * us, which is the last one parked: no record is read twice or skipped
 * (librdkafka 2.0.2, rd_kafka_toppar_pause_resume: a pause sets the next
 * fetch offset to the application's). The resume is followed by a seek to
 * that same offset, for its wake-up of the fetcher (seek_resumed). An
 * application pause outlives an
 * unassignment (only the library's own pause is cleared on assign), so a
 * partition let go of while waiting is resumed first (hl_park_drop).
 * Parked records are never "seen" by their shard (hl_shard_saw), so no
 * stored offset passes them (flight.c) and a crash or a revocation re-reads
 * them. Other partitions of the thread go on meanwhile.
 *
 * Before each batch, the parked records of every partition whose id now
 * has an answer (found, or unknown: then the record is bad and goes to the
 * DLQ like any other) are handed back to the batch first, and the
 * partition is resumed once all of its records are handed back.
 *
 * More records may be parked than one batch takes (a partition paused in
 * one batch still had records in the next: librdkafka 2.0.2 hands over
 * some it had queued), so a partition can be handed back over several
 * batches. Meanwhile it drains: its wait is answered but its later records
 * are still parked. A handed-back record is the oldest of its partition,
 * so it is decoded, not parked again behind the later ones (that put the
 * partition's records out of order, and the shard then dropped the
 * earlier ones as re-delivered: lost, not counted, not applied). One that
 * must wait again (another unknown id) goes back in front of its
 * partition's later records: the park keeps each partition in offset
 * order.
 *
 * Owner thread only. Parked records are what librdkafka had fetched
 * anyway (about one batch's worth per partition: the pause stops the
 * rest, but not always at once, see above); the arrays grow on demand,
 * the exception path. */
#include "framing.h"
#include "thread_internal.h"

#include <stdlib.h>
#include <string.h>

/* The Confluent schema id of a payload, -1 if it has none. */
static int32_t schema_id_of(const rd_kafka_message_t *rkm)
{
    int32_t id;
    return hl_frame_read(rkm->payload, rkm->len, &id, NULL, 0) == HL_FRAME_OK ? id : -1;
}

static park_wait *wait_of(hl_wthread *t, int32_t partition)
{
    for (int i = 0; i < t->n_waits; i++)
        if (t->waits[i].partition == partition)
            return &t->waits[i];
    return NULL;
}

/* A draining partition (answered, records still parked) does not wait:
 * its records come from the park, oldest first (see the top). */
int hl_park_waiting(hl_wthread *t, int32_t partition)
{
    park_wait *pw = t->n_waits > 0 ? wait_of(t, partition) : NULL;
    return pw != NULL && !pw->ready;
}

static void pause_resume(hl_wthread *t, int32_t partition, int pause)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, t->ctx->o->input_topic, partition);
    rd_kafka_resp_err_t err = pause ? rd_kafka_pause_partitions(t->ctx->consumer, l)
                                    : rd_kafka_resume_partitions(t->ctx->consumer, l);
    if (err)
        hl_log(HL_LOG_WARN, pause ? "pause_failed" : "resume_failed", "partition=%d err=\"%s\"",
               (int)partition, rd_kafka_err2str(err));
    rd_kafka_topic_partition_list_destroy(l);
}

/* 1 when a wait line for partition may be written now (sup: the lines
 * left out since the last). A record that names a schema id of its own
 * (random bytes after a 0 byte) waits once each: unlimited, a flood of
 * them would log three lines a record at the registry's pace. Limited per
 * partition, so one partition's flood hides no other's wait. */
static int wait_line(hl_wthread *t, int32_t partition, int over, uint64_t *sup)
{
    hl_shard *sh = hl_wthread_shard_of(t, partition);
    if (sh == NULL)
        return 1;
    return hl_log_limit_pass(over ? &sh->wait_over_limit : &sh->wait_limit, sup);
}

/* Starts partition's wait for id: pauses it. 0, or HL_ENOMEM. */
static int wait_begin(hl_wthread *t, const rd_kafka_message_t *rkm, const char *why)
{
    if (t->n_waits == t->cap_waits) {
        int cap = t->cap_waits ? t->cap_waits * 2 : 8;
        park_wait *nw = realloc(t->waits, sizeof *nw * (size_t)cap);
        if (nw == NULL)
            return HL_ENOMEM;
        t->waits = nw;
        t->cap_waits = cap;
    }
    park_wait *pw = &t->waits[t->n_waits++];
    *pw = (park_wait){rkm->partition, schema_id_of(rkm), hl_now_mono_ms(), 0,
                      RD_KAFKA_OFFSET_INVALID};
    pause_resume(t, rkm->partition, 1);
    hl_gauge_add(t->ctx->mx.schema_waiting, 1);
    uint64_t sup = 0;
    if (wait_line(t, rkm->partition, 0, &sup))
        hl_log(HL_LOG_INFO, "schema_wait", "partition=%d offset=%lld schema_id=%d why=\"%s\" "
               "action=\"partition paused until the registry answers\" suppressed=%llu",
               (int)rkm->partition, (long long)rkm->offset, (int)pw->schema_id, why,
               (unsigned long long)sup);
    return 0;
}

/* After the resume of an answered wait, a seek to the offset the fetch
 * resumes from anyway (the one after the last record handed back, which
 * the pause saved), for its wake-up alone. librdkafka 2.0.2's resume only
 * clears the pause flag, on its main thread (rd_kafka_toppar_pause_resume);
 * the broker thread sees that at its next wake-up, up to
 * rd_kafka_max_block_ms (1 s) away when it fetches nothing else, so each
 * wait cost its partition up to a second more than the registry took
 * (test_schema_id_flood counted one record a second). A seek wakes it
 * (rd_kafka_toppar_seek, "seek done"). Its version barrier drops whatever
 * the resume alone fetched before it, from the same offset; a seek that
 * comes too late (a rebalance's pause first) is dropped as outdated, and
 * the resume works as before. Asynchronous: nothing waits for it. */
static void seek_resumed(hl_wthread *t, const park_wait *pw)
{
    if (pw->resume_at < 0)
        return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, t->ctx->o->input_topic, pw->partition)->offset =
        pw->resume_at;
    rd_kafka_error_t *e = rd_kafka_seek_partitions(t->ctx->consumer, l, 0);
    rd_kafka_resp_err_t err = e ? rd_kafka_error_code(e) : l->elems[0].err;
    if (err && err != RD_KAFKA_RESP_ERR__IN_PROGRESS)
        hl_log(HL_LOG_WARN, "resume_seek_failed", "partition=%d offset=%lld err=\"%s\" "
               "action=\"fetched at librdkafka's next wake-up, within a second\"",
               (int)pw->partition, (long long)pw->resume_at, rd_kafka_err2str(err));
    rd_kafka_error_destroy(e);
    rd_kafka_topic_partition_list_destroy(l);
}

static void wait_end(hl_wthread *t, park_wait *pw, const char *how)
{
    pause_resume(t, pw->partition, 0);
    if (strcmp(how, "answered") == 0)   /* a revoked one is not fetched here again */
        seek_resumed(t, pw);
    hl_gauge_add(t->ctx->mx.schema_waiting, -1);
    /* an end other than an answer (a revocation) comes once a rebalance */
    uint64_t sup = 0;
    if (strcmp(how, "answered") != 0 || wait_line(t, pw->partition, 1, &sup))
        hl_log(HL_LOG_INFO, "schema_wait_over", "partition=%d schema_id=%d waited_ms=%lld "
               "how=%s suppressed=%llu", (int)pw->partition, (int)pw->schema_id,
               (long long)(hl_now_mono_ms() - pw->since_ms), how, (unsigned long long)sup);
    *pw = t->waits[--t->n_waits];
}

/* A draining partition's handed-back record must wait after all (another
 * unknown id): the partition, still paused, waits for that id now. */
static void wait_again(hl_wthread *t, park_wait *pw, const rd_kafka_message_t *rkm,
                       const char *why)
{
    uint64_t sup = 0;
    pw->schema_id = schema_id_of(rkm);
    pw->since_ms = hl_now_mono_ms();
    pw->ready = 0;
    if (wait_line(t, rkm->partition, 0, &sup))
        hl_log(HL_LOG_INFO, "schema_wait", "partition=%d offset=%lld schema_id=%d why=\"%s\" "
               "action=\"partition stays paused until the registry answers\" suppressed=%llu",
               (int)rkm->partition, (long long)rkm->offset, (int)pw->schema_id, why,
               (unsigned long long)sup);
}

/* Into the park before the first parked record of its partition with a
 * higher offset, else at the end: a handed-back record that waits again
 * goes in front of its partition's later records. Room is there. */
static void insert_in_order(hl_wthread *t, rd_kafka_message_t *rkm)
{
    int at = t->n_park;
    for (int i = 0; i < t->n_park; i++)
        if (t->park[i]->partition == rkm->partition && t->park[i]->offset > rkm->offset) {
            at = i;
            break;
        }
    memmove(&t->park[at + 1], &t->park[at], sizeof *t->park * (size_t)(t->n_park - at));
    t->park[at] = rkm;
    t->n_park++;
}

void hl_park_add(hl_wthread *t, rd_kafka_message_t **rkmp, const char *why, flight *f)
{
    rd_kafka_message_t *rkm = *rkmp;
    if (t->n_park == t->cap_park) {
        int cap = t->cap_park ? t->cap_park * 2 : 256;
        rd_kafka_message_t **np = realloc(t->park, sizeof *np * (size_t)cap);
        if (np != NULL) {
            t->park = np;
            t->cap_park = cap;
        }
    }
    park_wait *pw = wait_of(t, rkm->partition);
    if (pw != NULL && pw->ready)
        wait_again(t, pw, rkm, why);
    if (t->n_park == t->cap_park || (pw == NULL && wait_begin(t, rkm, why) != 0)) {
        /* Not kept, not seen; later records of its partition in this batch
         * may be, so the batch's flight is held (it never retires: no
         * stored offset passes this record, as for a dead letter without
         * memory) and the worker stops; a restart reads it again. */
        int zero = 0;
        f->hold = 1;
        atomic_compare_exchange_strong(t->ctx->stop, &zero, 1);
        hl_log(HL_LOG_ERROR, "park_out_of_memory", "partition=%d offset=%lld "
               "action=\"offsets held; stopping\"", (int)rkm->partition, (long long)rkm->offset);
        return;
    }
    insert_in_order(t, rkm);
    *rkmp = NULL;
}

/* 1 when the id partition waits for has an answer now. */
static int wait_over(hl_wthread *t, const park_wait *pw)
{
    return hl_codec_writer(t->codec, pw->schema_id) != HL_CODEC_WRITER_WAIT;
}

/* Moves the parked records of ready partitions to out (at most max), in
 * order; the rest stay, in order. */
static int move_ready(hl_wthread *t, rd_kafka_message_t **out, int max)
{
    int n = 0, kept = 0;
    for (int i = 0; i < t->n_park; i++) {
        rd_kafka_message_t *m = t->park[i];
        park_wait *pw = wait_of(t, m->partition);
        if (n < max && pw != NULL && pw->ready) {
            out[n++] = m;
            pw->resume_at = m->offset + 1;  /* each partition's in offset order */
        } else
            t->park[kept++] = m;
    }
    t->n_park = kept;
    return n;
}

static int parked_count(const hl_wthread *t, int32_t partition)
{
    int n = 0;
    for (int i = 0; i < t->n_park; i++)
        n += t->park[i]->partition == partition;
    return n;
}

int hl_park_take_ready(hl_wthread *t, rd_kafka_message_t **out, int max)
{
    int any = 0, n;
    for (int i = 0; i < t->n_waits; i++)
        any |= t->waits[i].ready = wait_over(t, &t->waits[i]);
    if (!any)
        return 0;
    n = move_ready(t, out, max);
    /* Downwards: wait_end moves the last entry into the one it ends. */
    for (int i = t->n_waits - 1; i >= 0; i--)
        if (t->waits[i].ready && parked_count(t, t->waits[i].partition) == 0)
            wait_end(t, &t->waits[i], "answered");
    return n;
}

void hl_park_drop(hl_wthread *t, int32_t partition)
{
    park_wait *pw = wait_of(t, partition);
    int kept = 0;
    for (int i = 0; i < t->n_park; i++) {
        if (t->park[i]->partition == partition)
            rd_kafka_message_destroy(t->park[i]);
        else
            t->park[kept++] = t->park[i];
    }
    t->n_park = kept;
    /* Resumed before it goes: librdkafka keeps an application pause on the
     * partition object, and a later assignment here would never fetch. */
    if (pw != NULL)
        wait_end(t, pw, "revoked");
}

void hl_park_free(hl_wthread *t)
{
    for (int i = 0; i < t->n_park; i++)
        rd_kafka_message_destroy(t->park[i]);
    free(t->park);
    free(t->waits);
}
