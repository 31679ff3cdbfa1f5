/* items.c - the item topic's reader thread and the views it hands to the
 * shard threads (the contract is items.h).
 *
 * Start: the topic's partitions come from a metadata request, each one's
 * end from its high watermark; all are assigned from the beginning. The
 * catalogue counts as loaded once every partition was read to that end (or
 * reported its end of partition: compaction leaves gaps in offsets). A
 * topic that does not exist yet is an empty catalogue: loaded at once,
 * and the metadata is asked again every few seconds, so a topic created
 * later is followed from its beginning. Once read, the topic's partition
 * count is asked again every partitions_check_ms (30 s): partitions an
 * operator adds are assigned next to the others (incrementally: those
 * read keep their positions) and read from their beginning, so the
 * updates sent to them reach a running worker.
 *
 * Views: after each burst of records (at most BURST, or what was queued)
 * that changed the catalogue, one view is built and becomes current. A
 * view is reference-counted: the current slot holds one reference and each
 * shard thread one on the view it ranks with, taken at a batch boundary;
 * the last to let go hands it back as the spare, whose memory the next
 * view is built in (hl_catalogue_view_reuse: no fresh pages to fault in).
 * mu guards the slots and the spare.
 *
 * A view costs time in proportion to the side items (about 3 ms at 100k
 * of dim 16), so a trickle of single updates must not keep the reader
 * busy: after a view that took c, the next is built no sooner than c
 * later, and the updates read meanwhile go into it. The reader spends at
 * most half its time on views, whatever the topic sends, and an update
 * waits at most one view's cost longer to take effect.
 *
 * Model swaps: a view names the rows of one model generation. A swap
 * rebinds the catalogue (hl_items_rebind, on the main thread, before the
 * new model goes live; cat_mu keeps the reader's hands off the catalogue
 * meanwhile) and publishes the first view of the new generation in its
 * own slot; the previous generation's last view stays in its slot, so a
 * thread that has not switched yet ranks with its own model's view, and
 * one that has finds the new view already there. GEN_SLOTS generations
 * are kept: a thread would have to sleep through that many swaps within
 * one batch to find none (it then ranks without the catalogue, logged).
 *
 * Bad records are counted by reason, logged (rate-limited) and copied to
 * the dead-letter topic with the reason in a header (items_dlq.c).
 * Nothing is committed, so a bad record is dead-lettered again at each
 * start.
 *
 * With a Schema Registry (opts.schema_fn) each update's writer schema id
 * is resolved through the worker's schema store, as the events' are; a new
 * id's answer is awaited briefly first (resolve_id_waiting), so a 404 is
 * dead-lettered without a pause. An id the store cannot answer within that
 * (registry unreachable, 5xx) is not a bad record: the record is kept
 * aside and its partition paused, the way
 * park.c holds events (librdkafka drops what it had queued for the
 * partition and fetches again after the kept record on resume, woken by
 * a seek there: seek_resumed), so the
 * partition's order, which compaction and "the newest update wins" rely
 * on, is kept and nothing is dead-lettered because the registry is down.
 * Other partitions go on. A kept partition does not count as read to its
 * end, so a worker starting while the registry is down waits for it. */
#include "items_internal.h"
#include "framing.h"
#include "log.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BURST           10000   /* records applied between two views at most */
#define METADATA_MS      5000
#define RETRY_TOPIC_MS   5000   /* a missing topic is looked for again this often */
#define CHECK_PARTS_MS  30000   /* partitions_check_ms's default: a metadata request */
#define ID_WAIT_MS        250   /* new schema ids' answers are awaited this long per burst */
#define ID_POLL_US       2000

/* ---- views ---- */

/* A view of the catalogue becomes its generation's current one. Under
 * cat_mu. 0, or HL_ENOMEM (logged by the caller). */
static int publish_view(hl_items *it)
{
    hl_catalogue_stats st;
    catref *r = malloc(sizeof *r);
    if (r == NULL)
        return HL_ENOMEM;
    pthread_mutex_lock(&it->mu);
    hl_catview *spare = it->spare;
    it->spare = NULL;
    pthread_mutex_unlock(&it->mu);
    if ((r->v = hl_catalogue_view_reuse(it->cat, spare)) == NULL) {
        free(r);
        return HL_ENOMEM;
    }
    r->gen = it->gen;
    r->owner = it;
    atomic_init(&r->refs, 1);
    pthread_mutex_lock(&it->mu);
    catref *old = it->slot[r->gen % GEN_SLOTS];
    it->slot[r->gen % GEN_SLOTS] = r;
    pthread_mutex_unlock(&it->mu);
    hl_items_ref_release(old);
    it->viewed_version = hl_catalogue_version(it->cat);
    it->published = 1;
    hl_catalogue_stats_get(it->cat, &st);
    hl_gauge_set(it->g_hidden, st.hidden);
    hl_gauge_set(it->g_added, st.added);
    hl_gauge_set(it->g_added_foldin, st.foldin);
    return 0;
}

/* publish_view from the reader thread: a failure keeps the previous view.
 * The next view waits as long as this one took (pacing, above). */
static void publish_or_log(hl_items *it)
{
    int64_t t0 = hl_now_mono_us();
    if (publish_view(it) != 0)
        hl_log(HL_LOG_ERROR, "catalogue_view_failed", "reason=\"out of memory\" "
               "action=\"lists keep the previous catalogue; retried after a pause as long as the "
               "attempt\"");
    int64_t t1 = hl_now_mono_us();
    it->next_view_us = t1 + (t1 - t0);
}

/* Microseconds until the next view may be built; 0 when it may now. */
static int64_t view_wait_us(const hl_items *it)
{
    int64_t now = hl_now_mono_us();
    return now < it->next_view_us ? it->next_view_us - now : 0;
}

/* ---- the consumer ---- */

static int is_producer_key(const char *key)
{
    static const char *const producer_only[] = {
        "enable.idempotence", "linger.ms", "queue.buffering.max.ms", "message.max.bytes",
        "queue.buffering.max.messages", "queue.buffering.max.kbytes", "message.timeout.ms",
        "delivery.timeout.ms", "acks", "request.required.acks", "batch.num.messages",
        "batch.size", "compression.type", "compression.codec", "transactional.id",
        "max.in.flight.requests.per.connection", "max.in.flight", "retries",
        "message.send.max.retries", "auto.offset.reset", "enable.auto.commit",
        "enable.auto.offset.store", "group.instance.id", "partition.assignment.strategy",
    };
    for (size_t i = 0; i < sizeof producer_only / sizeof producer_only[0]; i++)
        if (strcmp(key, producer_only[i]) == 0)
            return 1;
    return 0;
}

/* A consumer without a group: assign() only, nothing committed. */
static int make_consumer(hl_items *it, char *errbuf, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char why[512];
    int rc = hl_kafka_conf_set(conf, "bootstrap.servers", it->o.bootstrap, errbuf, errlen);
    for (int i = 0; rc == 0 && i < it->o.n_kafka; i++)
        if (!is_producer_key(it->o.kafka[i].key) &&
            strcmp(it->o.kafka[i].key, "bootstrap.servers") != 0)
            rc = hl_kafka_conf_set(conf, it->o.kafka[i].key, it->o.kafka[i].value,
                                   errbuf, errlen);
    if (rc == 0)
        rc = hl_kafka_conf_set(conf, "enable.partition.eof", "true", errbuf, errlen);
    if (rc == 0)
        rc = hl_kafka_conf_set(conf, "enable.auto.commit", "false", errbuf, errlen);
    /* librdkafka's consumer poll needs a group id even when partitions are
     * assigned by hand; with assign() and nothing committed the reader never
     * joins that group. */
    if (rc == 0)
        rc = hl_kafka_conf_set(conf, "group.id", "halflife-items-reader", errbuf, errlen);
    if (rc != 0) {
        rd_kafka_conf_destroy(conf);
        return rc;
    }
    if ((it->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof why)) == NULL) {
        rd_kafka_conf_destroy(conf);
        return hl_err(errbuf, errlen, HL_EINVAL, "items.topic consumer: %s", why);
    }
    rd_kafka_poll_set_consumer(it->rk);
    return 0;
}

/* A stop (hl_items_destroy) ends a metadata wait while the broker does
 * not answer, so the thread is joined promptly, not METADATA_MS later. */
static int stopping(const void *arg)
{
    return atomic_load(&((const hl_items *)arg)->stop);
}

/* The topic's partition count, from a metadata request, into *n (0 when
 * the cluster says the topic does not exist, or did not answer: err
 * says which). */
static rd_kafka_resp_err_t topic_partitions(hl_items *it, int *n)
{
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(it->rk, it->topic, NULL);
    rd_kafka_resp_err_t err = rkt ? hl_kafka_metadata_wait(it->rk, rkt, &md, METADATA_MS,
                                                           stopping, it)
                                  : RD_KAFKA_RESP_ERR__INVALID_ARG;
    if (err == 0 && md->topic_cnt == 1)
        err = md->topics[0].err;
    *n = err == 0 && md->topic_cnt == 1 ? md->topics[0].partition_cnt : 0;
    if (md)
        rd_kafka_metadata_destroy(md);
    if (rkt)
        rd_kafka_topic_destroy(rkt);
    if (it->o.partitions_seen != NULL)
        *n = it->o.partitions_seen(it->o.partitions_seen_arg, *n);
    return err;
}

/* The per-partition arrays for n partitions, the new ones zeroed. */
static int grow(hl_items *it, int n)
{
    int64_t *end = realloc(it->end, (size_t)n * sizeof *end);
    uint8_t *done = end ? realloc(it->done, (size_t)n) : NULL;
    rd_kafka_message_t **kept = done ? realloc(it->kept, (size_t)n * sizeof *kept) : NULL;
    it->end = end ? end : it->end;
    it->done = done ? done : it->done;
    it->kept = kept ? kept : it->kept;
    if (kept == NULL)
        return HL_ENOMEM;
    size_t from = (size_t)it->n_parts, add = (size_t)n - from;
    memset(it->end + from, 0, add * sizeof *it->end);
    memset(it->done + from, 0, add);
    memset(it->kept + from, 0, add * sizeof *it->kept);
    return 0;
}

/* Partitions n_parts..n-1 (Kafka numbers them 0..n-1): their ends from
 * the high watermarks, then assigned from the beginning next to those
 * already read. 0, or HL_EIO with nothing added (retried later). */
static int add_partitions(hl_items *it, int n)
{
    if (grow(it, n) != 0)
        return HL_EIO;
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(n - it->n_parts);
    rd_kafka_resp_err_t wm = RD_KAFKA_RESP_ERR_NO_ERROR;
    for (int p = it->n_parts; p < n && !wm; p++) {
        int64_t lo = 0, hi = 0;
        /* an unanswered query must not read as an empty partition (lo = hi
         * = 0: done at once, the catalogue loaded before it was read) */
        if ((wm = rd_kafka_query_watermark_offsets(it->rk, it->topic, p, &lo, &hi,
                                                   METADATA_MS)) != 0) {
            hl_log(HL_LOG_WARN, "items_metadata_failed", "topic=%s partition=%d err=\"%s\" "
                   "action=retry", it->topic, p, rd_kafka_err2str(wm));
            break;
        }
        it->end[p] = hi;
        it->done[p] = hi <= lo;
        rd_kafka_topic_partition_list_add(parts, it->topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    }
    /* incremental: the partitions already read keep their positions */
    rd_kafka_error_t *e = wm ? NULL : rd_kafka_incremental_assign(it->rk, parts);
    if (e != NULL) {
        hl_log(HL_LOG_WARN, "items_assign_failed", "topic=%s err=\"%s\" action=retry",
               it->topic, rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
    }
    rd_kafka_topic_partition_list_destroy(parts);
    if (wm || e != NULL)
        return HL_EIO;
    it->n_parts = n;
    hl_gauge_set(it->g_parts, n);
    return 0;
}

/* What the reader makes of a count of n partitions, when it already
 * reads some: partitions added (Kafka can only add) are read from their
 * beginning; fewer (the topic deleted and made again) is said once. */
static void follow_count(hl_items *it, int n)
{
    int from = it->n_parts;
    if (n < from && n != it->fewer) {
        hl_log(HL_LOG_WARN, "items_partitions_fewer", "topic=%s partitions=%d reading=%d "
               "action=\"the topic was deleted and made again? restart the worker to read "
               "it afresh\"", it->topic, n, from);
        it->fewer = n;
    }
    if (n <= from || add_partitions(it, n) != 0)
        return;
    hl_counter_add(it->c_parts_added, (uint64_t)(n - from));
    hl_log(HL_LOG_INFO, "items_partitions_added", "topic=%s from=%d to=%d action=\"the new "
           "partitions are read from their beginning\"", it->topic, from, n);
}

/* Asks the topic's partition count and reads what is new: every
 * partition at first, from the beginning; later, partitions added to the
 * topic. n_parts stays 0 when the cluster says the topic does not exist
 * (absent: an empty catalogue, asked again later) or did not answer (not
 * loaded: lists must not go out without the catalogue). Sets when to ask
 * again. */
static void find_partitions(hl_items *it)
{
    int n;
    rd_kafka_resp_err_t err = topic_partitions(it, &n);
    int64_t now = hl_now_mono_ms();
    int check_ms = it->o.partitions_check_ms > 0 ? it->o.partitions_check_ms : CHECK_PARTS_MS;
    if (it->n_parts > 0) {                      /* a failed ask is asked again later */
        if (n > 0)
            follow_count(it, n);
        it->retry_at_ms = now + check_ms;
        return;
    }
    if (n == 0) {
        it->absent = err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || err == 0;
        if (!it->absent && err != RD_KAFKA_RESP_ERR__INTR)     /* __INTR: stopping */
            hl_log(HL_LOG_WARN, "items_metadata_failed", "topic=%s err=\"%s\" action=retry",
                   it->topic, rd_kafka_err2str(err));
    } else {
        it->absent = 0;
        add_partitions(it, n);
    }
    it->retry_at_ms = now + (it->n_parts > 0 ? check_ms : RETRY_TOPIC_MS);
}

/* The catalogue gave a fold-in item's slot up for the update just applied
 * (catalogue.h, "A full catalogue"): counted, and once the topic was read
 * to its end, the item's fold-in key is tombstoned, so that the topic says
 * it too: a worker started later, or one that read the partitions in
 * another order and gave up another item, drops this one as well. Every
 * worker sends the same tombstone; the second changes nothing. While
 * loading, the records read are what running workers decided already. */
static void foldin_evicted(hl_items *it, int live)
{
    uint32_t len;
    const char *id = hl_catalogue_evicted(it->cat, &len);
    if (id == NULL)
        return;
    hl_counter_add(it->c_foldin_evicted, 1);
    if (!live || it->o.prod == NULL)
        return;
    char key[HL_ITEM_KEY_MAX], err[256], q[160];
    uint32_t key_len = hl_item_foldin_key(id, len, key);
    int32_t part;
    int64_t off = -1;
    char at[24];
    if (!hl_catalogue_evicted_at(it->cat, &part, &off))
        part = -1;              /* unnamed: the header goes unsent */
    int at_len = snprintf(at, sizeof at, "%lld", (long long)off);
    if (hl_items_send_tombstone(it, key, key_len, part, at, (size_t)at_len, err,
                                sizeof err) == 0)
        return;
    uint64_t sup = 0;
    if (hl_log_limit_pass(&it->evict_limit, &sup))
        hl_log(HL_LOG_WARN, "foldin_evict_tombstone_failed", "item=\"%s\" topic=%s err=\"%s\" "
               "action=\"this worker dropped it; a worker started later lists it until a "
               "full catalogue gives its slot up again\" suppressed=%llu",
               hl_log_quote(q, sizeof q, id, len < 64 ? len : 64), it->topic, err,
               (unsigned long long)sup);
}

/* Eviction tombstones a purge took back (a release's purge takes every
 * record the producer holds) are sent again, each while the catalogue
 * still holds no record of the item: one that came meanwhile (a worker
 * published the item again) is newer than the eviction, and the tombstone
 * would delete it. Without this, a worker alone (or every worker, purged
 * alike) left the item's record on the topic: a worker started later
 * listed it again. Each names the record it evicts, as the first send
 * did: the producer kept the header and the partition with the key
 * (evict_keys.header). Refused ones are not retried (logged at
 * the send). Under cat_mu. */
static void resend_purged_tombstones(hl_items *it)
{
    hl_failed_key *head = hl_ticket_take_failed(&it->evict_ticket);
    for (const hl_failed_key *k = head; k != NULL; k = k->next) {
        char err[256];
        if (!hl_failed_key_purged(k) || k->len <= HL_ITEM_FOLDIN_KEY_LEN ||
            k->len > HL_ITEM_KEY_MAX ||
            hl_catalogue_foldin_state(it->cat, k->key + HL_ITEM_FOLDIN_KEY_LEN,
                                      (uint32_t)(k->len - HL_ITEM_FOLDIN_KEY_LEN)) != 0)
            continue;
        hl_items_send_tombstone(it, k->key, (uint32_t)k->len, k->partition, k->header[0],
                                k->header_len[0], err, sizeof err);
    }
    hl_failed_keys_free(head);
}

/* The catalogue keeps no more new items than max_new (and the slack while
 * loading): the stalest fold-in items beyond go, as a running worker's
 * decision (tombstoned once loaded). At the end of a load, and after a
 * swap to a model that no longer knows items an operator's record names
 * (they count as new again). Under cat_mu. */
static void trim_to_bound(hl_items *it)
{
    while (hl_catalogue_trim(it->cat))
        foldin_evicted(it, atomic_load(&it->loaded));
}

static void check_loaded(hl_items *it)
{
    if (atomic_load(&it->loaded) || (it->n_parts == 0 && !it->absent))
        return;
    for (int p = 0; p < it->n_parts; p++)
        if (!it->done[p])
            return;
    /* read to its end, the catalogue is what running workers decided:
     * fold-in items beyond max_new (the slack loading had) go now, as a
     * running worker's decision, tombstoned */
    hl_catalogue_set_slack(it->cat, 0);
    trim_to_bound(it);
    if (it->viewed_version != hl_catalogue_version(it->cat) || !it->published)
        publish_or_log(it);
    atomic_store(&it->loaded, 1);
    hl_gauge_set(it->g_loaded, 1);
    hl_catalogue_stats st;
    hl_catalogue_stats_get(it->cat, &st);
    hl_log(HL_LOG_INFO, "catalogue_loaded", "topic=%s partitions=%d hidden=%d expiring=%d "
           "added=%d overridden=%d", it->topic, it->n_parts, (int)st.hidden,
           (int)st.expiring, (int)st.added, (int)st.overridden);
}

/* ---- one record ---- */

static void note_position(hl_items *it, int32_t p, int64_t next, int eof)
{
    if (p >= 0 && p < it->n_parts && it->kept[p] == NULL && (eof || next >= it->end[p]))
        it->done[p] = 1;
}

/* ---- writer schema ids from a registry ---- */

/* Keeps id's verdict. When full, another subject's id gives way: ids are
 * global in a registry and an update may name any of them, so foreign
 * ones would otherwise fill the table for good and leave our schema's id,
 * seen after them, fetched and parsed again for every update. */
static void remember_id(hl_items *it, int32_t id, int ours)
{
    int i = it->n_known;
    if (i == KNOWN_IDS)
        for (i = 0; i < KNOWN_IDS && it->known[i].ours; i++)
            ;
    if (i == it->n_known && i < KNOWN_IDS)
        it->n_known++;
    if (i < KNOWN_IDS)
        it->known[i] = (known_id){id, ours};
}

/* The registry's answer for the writer schema id of an update: 0 our
 * ItemUpdate schema; HL_EAGAIN not known yet (the update waits); anything
 * else unusable (unknown_schema; why says). Ids are immutable in a
 * registry, so a schema checked once is remembered (KNOWN_IDS ids, ours
 * kept first: remember_id). A 404 is not remembered here: the store asks
 * again itself. */
static int resolve_id(hl_items *it, int32_t id, char *why, size_t whylen)
{
    char *text = NULL;
    for (int i = 0; i < it->n_known; i++)
        if (it->known[i].id == id)
            return it->known[i].ours ? 0 : hl_err(why, whylen, HL_EFORMAT, "schema id %d "
                       "is not schemas/item_update.avsc", (int)id);
    int rc = it->o.schema_fn(it->o.schema_arg, id, &text, why, whylen);
    if (rc != 0)
        return rc;
    char what[256];
    if ((rc = hl_item_schema_is_ours(text, what, sizeof what)) != 0)
        hl_err(why, whylen, rc, "schema id %d: %s", (int)id, what);
    free(text);
    remember_id(it, id, rc == 0);
    return rc;
}

/* resolve_id, waiting for a new id's first answer until ID_WAIT_MS after
 * the burst's first such wait, cat_mu released meanwhile (a rebind may go
 * on). The store answers a new id only on its fetch thread, so the first
 * lookup is always "not yet": each update naming an id of its own then
 * paused its partition, and the resume's fetch made the partition drain
 * at about one update a second, even though a registry that is up answers
 * a 404 within milliseconds. Waiting here settles those at the registry's
 * pace; a registry that does not answer within the wait still pauses the
 * partition (handle). The wait is the burst's, not each update's: with
 * ID_WAIT_MS for each, a registry outage held the reader that long for
 * every partition with a new id, and updates of the others behind them. */
static int resolve_id_waiting(hl_items *it, int32_t id, char *why, size_t whylen)
{
    if (it->id_wait_end_ms == 0)
        it->id_wait_end_ms = hl_now_mono_ms() + ID_WAIT_MS;
    int rc;
    while ((rc = resolve_id(it, id, why, whylen)) == HL_EAGAIN &&
           hl_now_mono_ms() < it->id_wait_end_ms && !atomic_load(&it->stop)) {
        pthread_mutex_unlock(&it->cat_mu);
        usleep(ID_POLL_US);
        pthread_mutex_lock(&it->cat_mu);
    }
    return rc;
}

/* The codec options for rkm: with a registry, those of its writer schema
 * id (waited for first when wait is set: resolve_id_waiting). HL_ITEM_OK,
 * HL_ITEM_UNKNOWN_SCHEMA (detail says why), or -1: the id is not known
 * yet. A record without a valid header is left to the decoder, which
 * names its fault. Under cat_mu. */
static int writer_opts(hl_items *it, const rd_kafka_message_t *rkm, hl_item_codec_opts *co,
                       int wait, char *detail, size_t dl)
{
    int32_t id;
    *co = it->o.codec;
    if (it->o.schema_fn == NULL || co->framing != HL_FRAMING_CONFLUENT || rkm->len == 0 ||
        hl_frame_read(rkm->payload, rkm->len, &id, NULL, 0) != HL_FRAME_OK)
        return HL_ITEM_OK;
    int rc = wait ? resolve_id_waiting(it, id, detail, dl) : resolve_id(it, id, detail, dl);
    if (rc == HL_EAGAIN)
        return -1;
    *co = it->o.codec;              /* a rebind during the wait may have changed it */
    co->schema_id = id;
    return rc == 0 ? HL_ITEM_OK : HL_ITEM_UNKNOWN_SCHEMA;
}

static void set_paused(hl_items *it, int32_t p, int paused)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, it->topic, p);
    if (paused)
        rd_kafka_pause_partitions(it->rk, l);
    else
        rd_kafka_resume_partitions(it->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
}

/* After the resume of partition p, a seek to next, the offset its fetch
 * resumes from anyway (the one after the kept record, the last the
 * partition handed out), for its wake-up alone: librdkafka 2.0.2 hears of
 * a resume at its broker thread's next wake-up, up to a second away when
 * every partition of that broker is paused, as in a registry outage
 * (park.c, seek_resumed). Asynchronous. */
static void seek_resumed(hl_items *it, int32_t p, int64_t next)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, it->topic, p)->offset = next;
    rd_kafka_error_destroy(rd_kafka_seek_partitions(it->rk, l, 0));
    rd_kafka_topic_partition_list_destroy(l);
}

/* Keeps rkm (ownership moves here) and pauses its partition. */
static void keep(hl_items *it, rd_kafka_message_t *rkm, const char *why)
{
    set_paused(it, rkm->partition, 1);
    it->kept[rkm->partition] = rkm;
    it->n_kept++;
    /* Limited: updates that each name a schema id of their own each wait */
    uint64_t sup = 0;
    if (hl_log_limit_pass(&it->wait_limit, &sup))
        hl_log(HL_LOG_INFO, "item_update_waits", "topic=%s partition=%d offset=%lld why=\"%s\" "
               "action=\"the partition waits for the schema registry; nothing is "
               "dead-lettered for it\" suppressed=%llu", it->topic, (int)rkm->partition,
               (long long)rkm->offset, why, (unsigned long long)sup);
}

/* Decodes and applies one update whose writer schema is settled. */
static void apply(hl_items *it, const rd_kafka_message_t *rkm, const hl_item_codec_opts *co,
                  hl_item_reason r, char *detail, size_t dl)
{
    hl_item_update u;
    note_position(it, rkm->partition, rkm->offset + 1, 0);
    if (r == HL_ITEM_OK)
        r = hl_item_decode(co, rkm->key, rkm->key_len, rkm->payload, rkm->len, it->vec, &u,
                           detail, dl);
    if (r == HL_ITEM_OK) {
        hl_items_place(rkm, &u);
        int rc = hl_catalogue_apply(it->cat, &u, detail, dl);   /* under cat_mu */
        if (rc == HL_CATALOGUE_STALE) {
            hl_items_stale_note(it, &u);
            return;
        }
        if (rc == HL_CATALOGUE_IGNORED) {   /* fold-in behind an operator: by design */
            hl_counter_add(it->c_ignored, 1);
            return;
        }
        /* the decoder checked ids and values: what is left is a full catalogue
         * (anything else the catalogue refuses is counted as out of range) */
        r = rc == HL_EFULL ? HL_ITEM_CATALOGUE_FULL : rc != 0 ? HL_ITEM_OUT_OF_RANGE : r;
        foldin_evicted(it, atomic_load(&it->loaded));
    }
    if (r != HL_ITEM_OK) {
        hl_items_bad_update(it, rkm, r, detail);
        return;
    }
    atomic_fetch_add(&it->applied, 1);
    it->pending++;
}

/* 1 when rkm was kept (its id is being fetched): the caller must not
 * destroy it. */
static int handle(hl_items *it, rd_kafka_message_t *rkm)
{
    char detail[HL_ITEM_DETAIL_LEN] = "";
    hl_item_codec_opts co;
    if (rkm->err) {
        uint64_t sup = 0;
        if (rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
            note_position(it, rkm->partition, rkm->offset, 1);
        else if (hl_log_limit_pass(&it->bad_limit, &sup))
            hl_log(HL_LOG_WARN, "items_consume_error", "topic=%s err=\"%s\"", it->topic,
                   rd_kafka_message_errstr(rkm));
        return 0;
    }
    int r = writer_opts(it, rkm, &co, 1, detail, sizeof detail);
    /* A paused partition yields nothing more (librdkafka's pause drops what
     * it had queued), so a second record of a kept partition cannot come;
     * if it did, it is dead-lettered (its bytes kept) rather than applied
     * out of order, and said. */
    if (r < 0 && rkm->partition >= 0 && rkm->partition < it->n_parts &&
        it->kept[rkm->partition] == NULL) {
        keep(it, rkm, detail);
        return 1;
    }
    if (r < 0)
        snprintf(detail, sizeof detail, "a second record of a partition already waiting for "
                 "a schema id (librdkafka delivered past a pause)");
    apply(it, rkm, &co, r < 0 ? HL_ITEM_UNKNOWN_SCHEMA : (hl_item_reason)r, detail,
          sizeof detail);
    return 0;
}

/* Each kept update whose id has an answer now is applied (or
 * dead-lettered: a 404) and its partition resumed. */
static void retry_kept(hl_items *it)
{
    for (int p = 0; it->n_kept > 0 && p < it->n_parts; p++) {
        char detail[HL_ITEM_DETAIL_LEN] = "";
        hl_item_codec_opts co;
        rd_kafka_message_t *rkm = it->kept[p];
        int r;
        if (rkm == NULL || (r = writer_opts(it, rkm, &co, 0, detail, sizeof detail)) < 0)
            continue;
        it->kept[p] = NULL;
        it->n_kept--;
        apply(it, rkm, &co, (hl_item_reason)r, detail, sizeof detail);
        set_paused(it, p, 0);
        seek_resumed(it, p, rkm->offset + 1);
        rd_kafka_message_destroy(rkm);
    }
}

/* halflife_item_updates_total counts an update once a view holding it is
 * current, so a reader that sees the count knows every batch started
 * afterwards ranks with it (the integration test relies on that). */
static void count_updates(hl_items *it)
{
    if (it->pending > 0 && (it->viewed_version == hl_catalogue_version(it->cat) ||
                            !atomic_load(&it->loaded))) {
        hl_counter_add(it->c_updates, it->pending);
        it->pending = 0;
    }
}

/* ---- the thread ---- */

/* The catalogue changed since the current view (once loaded: check_loaded
 * publishes the first). */
static int view_due(const hl_items *it)
{
    return hl_catalogue_version(it->cat) != it->viewed_version && atomic_load(&it->loaded);
}

/* How long the reader may wait for records: until a paced view is due. */
static int poll_ms(const hl_items *it)
{
    if (!view_due(it))
        return 100;
    int64_t us = view_wait_us(it);
    return us >= 100000 ? 100 : (int)((us + 999) / 1000);
}

/* rkm and what is queued behind it (BURST at most) into the catalogue,
 * then a view when it changed. Under cat_mu; the wait for rkm was not. */
static void apply_burst(hl_items *it, rd_kafka_message_t *rkm)
{
    it->id_wait_end_ms = 0;
    for (int n = 0; rkm != NULL; n++) {
        if (!handle(it, rkm))
            rd_kafka_message_destroy(rkm);
        rkm = n + 1 < BURST ? rd_kafka_consumer_poll(it->rk, 0) : NULL;
    }
    if (view_due(it) && view_wait_us(it) == 0)
        publish_or_log(it);
    check_loaded(it);
    hl_items_stale_resend(it);
    count_updates(it);
}

static void *items_main(void *arg)
{
    hl_items *it = arg;
    while (!atomic_load(&it->stop)) {
        /* not under cat_mu: a metadata request may wait METADATA_MS */
        if (hl_now_mono_ms() >= it->retry_at_ms) {
            find_partitions(it);
            pthread_mutex_lock(&it->cat_mu);
            check_loaded(it);
            pthread_mutex_unlock(&it->cat_mu);
        }
        if (it->n_parts == 0) {
            rd_kafka_poll(it->rk, 100);
            continue;
        }
        pthread_mutex_lock(&it->cat_mu);
        int wait_ms = poll_ms(it);
        pthread_mutex_unlock(&it->cat_mu);
        rd_kafka_message_t *rkm = rd_kafka_consumer_poll(it->rk, wait_ms);
        pthread_mutex_lock(&it->cat_mu);
        retry_kept(it);
        apply_burst(it, rkm);
        resend_purged_tombstones(it);
        hl_items_dlq_failed(it);
        pthread_mutex_unlock(&it->cat_mu);
    }
    pthread_mutex_lock(&it->cat_mu);
    hl_items_stale_resend_all(it);      /* a note waiting for its delay is not dropped */
    pthread_mutex_unlock(&it->cat_mu);
    return NULL;
}

/* ---- model swaps ---- */

/* Records decode at the catalogue's dim: a swap to another dim resizes the
 * decode buffer with it, or an embedding of the old dim would be read as
 * the new one (past the buffer's end) and a correct one refused. Under
 * cat_mu, which every decode holds. 0 or HL_ENOMEM (nothing changed). */
static int decode_dim(hl_items *it, int dim)
{
    if (dim == it->o.codec.dim)
        return 0;
    if (dim > it->vec_dim) {
        float *v = realloc(it->vec, 2 * (size_t)dim * sizeof(float));
        if (v == NULL)
            return HL_ENOMEM;
        it->vec = v;
        it->vec_dim = dim;
    }
    it->o.codec.dim = dim;
    return 0;
}

int hl_items_rebind(hl_items *it, const hl_model *m, uint64_t gen)
{
    hl_catalogue_rebind_stats rs, back;
    pthread_mutex_lock(&it->cat_mu);
    const hl_model *was = it->m;
    uint64_t was_gen = it->gen;
    int was_dim = it->o.codec.dim;
    if (decode_dim(it, hl_model_info_get(m)->dim) != 0) {
        pthread_mutex_unlock(&it->cat_mu);
        return HL_ENOMEM;
    }
    /* Updates read but not in a view yet (pacing) go into the old
     * generation's view first: threads still on the old model rank with
     * them until they switch. */
    if (hl_catalogue_version(it->cat) != it->viewed_version && atomic_load(&it->loaded))
        publish_view(it);               /* a failure: they show with the new model */
    hl_catalogue_rebind(it->cat, m, &rs);
    it->m = m;
    it->gen = gen;
    /* before the first view of gen, so no list holds more than the bound;
     * a refused swap does not bring the items given up back */
    trim_to_bound(it);
    int rc = publish_view(it);
    if (rc != 0) {              /* bound as before: the old model keeps serving */
        hl_catalogue_rebind(it->cat, was, &back);
        it->m = was;
        it->gen = was_gen;
        it->o.codec.dim = was_dim;      /* the buffer only grew */
    }
    hl_catalogue_stats st;
    hl_catalogue_stats_get(it->cat, &st);
    pthread_mutex_unlock(&it->cat_mu);
    if (rc != 0)
        return rc;
    hl_counter_add(it->c_drop_known, (uint64_t)rs.dropped_known);
    hl_counter_add(it->c_drop_dim, (uint64_t)rs.dropped_dim);
    hl_log(HL_LOG_INFO, "catalogue_rebound", "generation=%llu hidden=%d expiring=%d "
           "added=%d embeddings_dropped_known=%d embeddings_dropped_dim=%d",
           (unsigned long long)gen, (int)st.hidden, (int)st.expiring, (int)st.added,
           (int)rs.dropped_known, (int)rs.dropped_dim);
    return 0;
}

/* ---- create / start / destroy ---- */

static void register_metrics(hl_items *it)
{
    hl_metrics *reg = it->o.reg;
    char lab[64];
    it->g_hidden = hl_metrics_gauge(reg, "halflife_items_hidden",
        "Items the item topic hides (available=false; items past expires_at not included).", NULL);
    it->g_added = hl_metrics_gauge(reg, "halflife_items_added",
        "Items unknown to the model that lists may hold, by where their vectors came from.",
        "source=\"topic\"");
    it->g_added_foldin = hl_metrics_gauge(reg, "halflife_items_added",
        "Items unknown to the model that lists may hold, by where their vectors came from.",
        "source=\"foldin\"");
    it->c_ignored = hl_metrics_counter(reg, "halflife_item_updates_ignored_total",
        "Fold-in ItemUpdates not applied: the model or an operator's record names the item.",
        NULL);
    it->g_loaded = hl_metrics_gauge(reg, "halflife_items_loaded",
        "1 once the whole item topic was read at start.", NULL);
    it->g_parts = hl_metrics_gauge(reg, "halflife_items_partitions",
        "Partitions of the item topic the worker reads.", NULL);
    it->c_parts_added = hl_metrics_counter(reg, "halflife_items_partitions_added_total",
        "Item topic partitions found added while running, read from their beginning.", NULL);
    it->c_foldin_evicted = hl_metrics_counter(reg, "halflife_items_foldin_evicted_total",
        "Fold-in items that gave their slot up to a new item (catalogue.max.new.items "
        "reached; the least recently published goes, its fold-in key tombstoned).", NULL);
    it->c_stale = hl_metrics_counter(reg, "halflife_items_foldin_stale_tombstones_total",
        "Fold-in tombstones not applied: they name an older record than the one kept (a "
        "lagging worker's eviction), which is sent again after them.", NULL);
    it->c_updates = hl_metrics_counter(reg, "halflife_item_updates_total",
        "ItemUpdates applied to the catalogue.", NULL);
    it->c_dlq = hl_metrics_counter(reg, "halflife_item_updates_dlq_total",
        "Bad ItemUpdates whose copy the dead-letter topic acknowledged (a copy that did not "
        "get there is in halflife_dlq_errors_total instead).", NULL);
    it->c_dlq_errors = hl_metrics_counter(reg, "halflife_dlq_errors_total",
        "Dead-letter copies that did not reach the DLQ topic: a bad input record's "
        "refused by the producer or the broker (the record is then kept in "
        "snapshot.dir/dead-letters: halflife_dead_letters_kept_total), a bad ItemUpdate's "
        "refused by the producer or the broker or purged undelivered (not kept: the item "
        "topic still holds it).",
        NULL);   /* the worker's series */
    it->c_drop_known = hl_metrics_counter(reg, "halflife_item_embeddings_dropped_total",
        "Item topic embeddings dropped at a model swap, by reason: the new model knows the "
        "item (its vectors win), or the embedding's dim is not the new model's.",
        "reason=\"known_to_model\"");
    it->c_drop_dim = hl_metrics_counter(reg, "halflife_item_embeddings_dropped_total",
        "Item topic embeddings dropped at a model swap, by reason: the new model knows the "
        "item (its vectors win), or the embedding's dim is not the new model's.",
        "reason=\"dim\"");
    for (int r = 1; r < HL_ITEM_N_REASONS; r++) {
        snprintf(lab, sizeof lab, "reason=\"%s\"", hl_item_reason_name((hl_item_reason)r));
        it->c_invalid[r] = hl_metrics_counter(reg, "halflife_item_updates_invalid_total",
            "ItemUpdates refused, by reason (dead-lettered).", lab);
    }
}

hl_items *hl_items_create(const hl_items_opts *o, char *errbuf, size_t errlen)
{
    hl_items *it = calloc(1, sizeof *it);
    if (it == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "items: out of memory");
        return NULL;
    }
    it->o = *o;
    it->m = o->m;
    it->gen = 1;                /* the first model's (models.h) */
    pthread_mutex_init(&it->mu, NULL);
    pthread_mutex_init(&it->cat_mu, NULL);
    atomic_init(&it->stream_ts_ms, INT64_MIN);
    it->bad_limit.interval_ms = 1000;
    it->wait_limit.interval_ms = 5000;
    it->dlq_limit.interval_ms = 5000;
    it->evict_limit.interval_ms = 5000;
    it->stale_limit.interval_ms = 5000;
    hl_items_stale_seed(it);
    pthread_mutex_init(&it->evict_keys.mu, NULL);
    hl_ticket_reset(&it->evict_ticket);
    it->evict_keys.header[0] = HL_ITEM_EVICTS_HEADER;  /* a resend names its record */
    it->evict_ticket.keys = &it->evict_keys;
    pthread_mutex_init(&it->dlq_keys.mu, NULL);
    hl_ticket_reset(&it->dlq_ticket);
    it->dlq_keys.header[0] = HL_ITEM_DLQ_OFFSET_HEADER;     /* which update failed, */
    it->dlq_keys.header[1] = HL_ITEM_DLQ_PARTITION_HEADER;  /* said */
    it->dlq_keys.header[2] = HL_ITEM_DLQ_REASON_HEADER;
    it->dlq_ticket.keys = &it->dlq_keys;
    it->dlq_ticket.dead_letter = 1;     /* counted and said here, not as a list */
    it->topic = strdup(o->topic);
    it->vec = malloc(2 * (size_t)o->codec.dim * sizeof(float));
    it->vec_dim = o->codec.dim;
    if (it->topic == NULL || it->vec == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "items: out of memory");
        goto fail;
    }
    if ((it->cat = hl_catalogue_create(o->m, o->max_new, errbuf, errlen)) != NULL)
        hl_catalogue_set_slack(it->cat, o->max_new);   /* until loaded (catalogue.h) */
    if (it->cat == NULL || make_consumer(it, errbuf, errlen) != 0)
        goto fail;
    register_metrics(it);
    it->dlq_ticket.ok_counter = it->c_dlq;      /* a copy counts once delivered */
    return it;
fail:
    hl_items_destroy(it);
    return NULL;
}

int hl_items_start(hl_items *it, char *errbuf, size_t errlen)
{
    if (pthread_create(&it->tid, NULL, items_main, it) != 0)
        return hl_err(errbuf, errlen, HL_EIO, "items: cannot start the reader thread");
    it->started = 1;
    return 0;
}

void hl_items_stop(hl_items *it)
{
    if (it == NULL)
        return;
    atomic_store(&it->stop, 1);
    if (it->started)
        pthread_join(it->tid, NULL);
    it->started = 0;
}

void hl_items_destroy(hl_items *it)
{
    if (it == NULL)
        return;
    hl_items_stop(it);
    for (int p = 0; it->kept != NULL && p < it->n_parts; p++)
        if (it->kept[p] != NULL)        /* before the handle they refer to */
            rd_kafka_message_destroy(it->kept[p]);
    if (it->rk != NULL) {
        rd_kafka_consumer_close(it->rk);
        rd_kafka_destroy(it->rk);
    }
    for (int g = 0; g < GEN_SLOTS; g++)
        hl_items_ref_release(it->slot[g]);
    hl_catview_destroy(it->spare);
    hl_catalogue_destroy(it->cat);
    hl_failed_keys_free(it->evict_keys.head);   /* the producer is settled by now */
    pthread_mutex_destroy(&it->evict_keys.mu);
    if (it->c_dlq_errors != NULL)
        hl_items_dlq_failed(it);        /* copies the settle purged: said at last */
    pthread_mutex_destroy(&it->dlq_keys.mu);
    pthread_mutex_destroy(&it->mu);
    free(it->kept);
    free(it->stale);
    free(it->stale_slot);
    pthread_mutex_destroy(&it->cat_mu);
    free(it->end);
    free(it->done);
    free(it->vec);
    free(it->topic);
    free(it);
}

int hl_items_loaded(const hl_items *it)
{
    return it == NULL || atomic_load(&((hl_items *)it)->loaded);
}

void hl_items_saw_ts(hl_items *it, int64_t ts_ms)
{
    if (it == NULL)
        return;
    long long cur = atomic_load_explicit(&it->stream_ts_ms, memory_order_relaxed);
    while (ts_ms > cur && !atomic_compare_exchange_weak(&it->stream_ts_ms, &cur, ts_ms))
        ;
}

long long hl_items_applied(const hl_items *it)
{
    return atomic_load(&((hl_items *)it)->applied);
}

int64_t hl_items_foldin_state(hl_items *it, const char *id, uint32_t len)
{
    pthread_mutex_lock(&it->cat_mu);
    int64_t n = hl_catalogue_foldin_state(it->cat, id, len);
    pthread_mutex_unlock(&it->cat_mu);
    return n;
}

const hl_model *hl_items_model(const hl_items *it)
{
    pthread_mutex_lock(&((hl_items *)it)->cat_mu);
    const hl_model *m = it->m;
    pthread_mutex_unlock(&((hl_items *)it)->cat_mu);
    return m;
}
