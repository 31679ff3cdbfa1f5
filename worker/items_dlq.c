/* items_dlq.c - the item reader's bad updates: counted by reason, logged
 * (rate-limited) and copied to the dead-letter topic with the reason in a
 * header; a copy counted in halflife_item_updates_dlq_total once the
 * broker acknowledged it, and one that did not get there counted in
 * halflife_dlq_errors_total and said (event=item_dlq_failed, naming the
 * update's partition, offset and reason).
 *
 * A copy goes out on dlq_ticket, never waited for: nothing holds an
 * offset for it (the item topic still holds the update, and the next start
 * reads it and dead-letters it again), but its failure must reach the
 * dead-letter series, and only it: the ticket is a dead-letter one
 * (producer.h), so the producer neither counts a refused copy in
 * halflife_delivery_errors_total (the lists' alert) nor says it. It is
 * said here whichever way it failed: refused at once by the producer,
 * refused by the broker, or purged undelivered by a release or a stop.
 * The ticket keeps each failed copy's key with its source offset,
 * partition and reason headers, and the reader takes them after each
 * burst (hl_items_dlq_failed), and once more after the producer was
 * settled (hl_items_destroy). The reader thread's own, but for the
 * reports, which the producer serves into the ticket from any thread. */
#include "items_internal.h"

#include <stdio.h>
#include <string.h>

void hl_items_bad_update(hl_items *it, const rd_kafka_message_t *rkm, hl_item_reason r,
                         const char *detail)
{
    char part[16], off[24], err[256], q[2 * HL_ITEM_DETAIL_LEN + 1]; /* each byte escaped */
    const char *rn = hl_item_reason_name(r);
    uint64_t sup = 0;
    hl_counter_add(it->c_invalid[r], 1);
    /* detail may name the item (catalogue_full), and an id may hold '"':
     * quoted, it stays inside its value instead of forging fields */
    if (hl_log_limit_pass(&it->bad_limit, &sup))
        hl_log(HL_LOG_WARN, "bad_item_update", "topic=%s partition=%d offset=%lld reason=%s "
               "detail=\"%s\" dlq=%s suppressed=%llu", it->topic, (int)rkm->partition,
               (long long)rkm->offset, rn, hl_log_quote(q, sizeof q, detail, strlen(detail)),
               it->o.dlq_topic ? it->o.dlq_topic : "off", (unsigned long long)sup);
    if (it->o.dlq_topic == NULL || it->o.prod == NULL)
        return;
    snprintf(part, sizeof part, "%d", (int)rkm->partition);
    snprintf(off, sizeof off, "%lld", (long long)rkm->offset);
    hl_header h[5] = {
        {HL_ITEM_DLQ_REASON_HEADER, rn, strlen(rn)},
        {"halflife.source.topic", it->topic, strlen(it->topic)},
        {HL_ITEM_DLQ_PARTITION_HEADER, part, strlen(part)},
        {HL_ITEM_DLQ_OFFSET_HEADER, off, strlen(off)},
        {NULL, NULL, 0},
    };
    /* a refusal at once (a full queue while the broker is away, a copy over
     * kafka.message.max.bytes) puts the key on the ticket as a report does:
     * said with the others, after the burst. A copy is counted in
     * halflife_item_updates_dlq_total by its delivery report (the ticket's
     * ok_counter), not here: counted when queued, a copy the broker then
     * refused counted as dead-lettered and as failed. */
    (void)hl_producer_send(it->o.prod, it->o.dlq_topic, RD_KAFKA_PARTITION_UA, rkm->key,
                           rkm->key_len, rkm->payload, rkm->len, h, &it->dlq_ticket, err,
                           sizeof err);
}

/* Header i of a failed copy's key into buf (cap bytes), "?" when it had
 * none or not one the worker writes (a number, a reason's snake_case
 * name): it is said unquoted, so nothing else may pass. */
static const char *kept_header(const hl_failed_key *k, int i, char *buf, size_t cap)
{
    size_t n = k->header_len[i];
    if (k->header[i] == NULL || n == 0 || n >= cap)
        return "?";
    for (size_t j = 0; j < n; j++) {
        char c = k->header[i][j];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return "?";
    }
    memcpy(buf, k->header[i], n);
    buf[n] = '\0';
    return buf;
}

/* One copy that failed: said (rate-limited), then counted, so whoever sees
 * the count finds the line. */
static void said_failed(hl_items *it, const hl_failed_key *k)
{
    char q[160], off[24], part[16], reason[48];
    uint64_t sup = 0;
    int purged = hl_failed_key_purged(k);
    if (hl_log_limit_pass(&it->dlq_limit, &sup))
        hl_log(HL_LOG_WARN, "item_dlq_failed", "topic=%s partition=%s offset=%s "
               "reason=%s key=\"%s\" err=\"%s\" action=\"%s; not copied to %s, the "
               "update stays in %s at that offset (the next start dead-letters it again)\" "
               "suppressed=%llu", it->topic, kept_header(k, 1, part, sizeof part),
               kept_header(k, 0, off, sizeof off), kept_header(k, 2, reason, sizeof reason),
               hl_log_quote(q, sizeof q, k->key, k->len < 64 ? k->len : 64),
               rd_kafka_err2str(k->err),
               purged ? "purged undelivered: a revocation or a stop let go of what the "
                        "producer held" : "refused",
               it->o.dlq_topic, it->topic, (unsigned long long)sup);
    hl_counter_add(it->c_dlq_errors, 1);
}

void hl_items_dlq_failed(hl_items *it)
{
    hl_failed_key *head = hl_ticket_take_failed(&it->dlq_ticket), *in_order = NULL;
    while (head != NULL) {      /* newest first as taken: said in the order they failed */
        hl_failed_key *next = head->next;
        head->next = in_order;
        in_order = head;
        head = next;
    }
    for (const hl_failed_key *k = in_order; k != NULL; k = k->next)
        said_failed(it, k);
    hl_failed_keys_free(in_order);
}
