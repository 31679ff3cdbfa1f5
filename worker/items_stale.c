/* items_stale.c - the item reader's side of conditional fold-in
 * tombstones (core/catalogue.h, "A stale tombstone").
 *
 * Sent: an eviction tombstone names the record it evicts and goes to its
 * partition; a purge's resend names it too (the producer keeps the header
 * with the purged key).
 *
 * Where a record was read goes with it into the catalogue, and a
 * tombstone's halflife.evicts.offset header (HL_ITEM_EVICTS_HEADER: the
 * offset of the record the sender's eviction gave up, in the tombstone's
 * own partition) makes it conditional: the catalogue ignores it when the
 * key holds a newer record, so every reader keeps that record. On the
 * topic the tombstone may still be the key's last message, and compaction
 * keeps only that: a worker started after it would not know the item
 * until its next doubling. So a reader that ignored one sends the record
 * it keeps again, to the tombstone's partition, unless a record of the key
 * came after the tombstone: then the key's last message is a record
 * again. A reader loading the topic decides once it has read it to its
 * end, so it sends nothing for a tombstone the running workers answered
 * already. The running workers all read the tombstone at about the same
 * moment, and each sent its copy at once: N workers wrote N records per
 * stale tombstone, each read by all. So a note waits a delay of its own,
 * drawn at random below STALE_SPREAD_MS: the worker whose delay ends first
 * sends, and the others, once they have read its copy (a record of the key
 * after the tombstone), send nothing. Two copies go out only when two
 * delays end within the time a record takes to reach the other readers
 * (tens of ms against seconds); compaction keeps one of them. The delay
 * costs nothing meanwhile: every reader keeps the record, and compaction
 * never touches the active segment; a stop sends the notes still waiting
 * (hl_items_stale_resend_all). The notes awaiting that are one per
 * item (the latest
 * tombstone in its record's partition), so a topic of any number of
 * stale tombstones costs no more than the fold-in items kept. The reader
 * thread's own, under cat_mu. */
#include "items_internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define STALE_SPREAD_MS 5000    /* a note's delay is drawn below this */

/* ---- eviction tombstones ---- */

/* Named, so that a worker holding a newer record ignores it; to the
 * record's partition, where compaction deletes it. A purge's resend names
 * it too: the header's value goes back with the purged key
 * (evict_keys.header), so any number of evictions taken back at once are
 * sent as they were; unnamed, one would delete a record another worker
 * published meanwhile. */
int hl_items_send_tombstone(hl_items *it, const char *key, uint32_t key_len,
                            int32_t partition, const char *at, size_t at_len,
                            char *err, size_t errlen)
{
    hl_header h[2] = {{NULL, NULL, 0}, {NULL, NULL, 0}};
    if (partition >= 0 && at != NULL)
        h[0] = (hl_header){HL_ITEM_EVICTS_HEADER, at, at_len};
    else
        partition = RD_KAFKA_PARTITION_UA;
    return hl_producer_send(it->o.prod, it->topic, partition, key, key_len, NULL, 0, h,
                            &it->evict_ticket, err, errlen);
}

/* ---- stale tombstones ---- */

void hl_items_place(const rd_kafka_message_t *rkm, hl_item_update *u)
{
    rd_kafka_headers_t *hdrs;
    const void *v;
    size_t n;
    char digits[24], *end;
    u->positioned = 1;
    u->partition = rkm->partition;
    u->offset = rkm->offset;
    if (!u->tombstone || rd_kafka_message_headers(rkm, &hdrs) != 0 ||
        rd_kafka_header_get_last(hdrs, HL_ITEM_EVICTS_HEADER, &v, &n) != 0 || v == NULL ||
        n == 0 || n >= sizeof digits)
        return;
    memcpy(digits, v, n);
    digits[n] = '\0';
    errno = 0;
    long long at = strtoll(digits, &end, 10);
    /* unreadable: the tombstone deletes, as an older worker's does */
    if (*end != '\0' || errno != 0 || at < 0 || digits[0] < '0' || digits[0] > '9')
        return;
    u->conditional = 1;
    u->evicts_offset = at;
}

/* The slot of id's note in stale_slot, or the empty one where it goes. */
static uint32_t note_probe(const hl_items *it, const char *id, uint32_t len)
{
    uint32_t mask = it->n_stale_slot - 1, i = (uint32_t)hl_item_key(id, len) & mask;
    for (; it->stale_slot[i] != 0; i = (i + 1) & mask) {
        const stale_note *s = &it->stale[it->stale_slot[i] - 1];
        if (s->len == len && memcmp(s->id, id, len) == 0)
            break;
    }
    return i;
}

/* Room for one more note: the notes and their index (twice as many slots,
 * so probes stay short) grown. 0, or HL_ENOMEM with the notes as they were. */
static int note_room(hl_items *it)
{
    if (it->n_stale < it->cap_stale)
        return 0;
    int cap = it->cap_stale ? 2 * it->cap_stale : 16;
    stale_note *s = realloc(it->stale, (size_t)cap * sizeof *s);
    if (s == NULL)
        return HL_ENOMEM;
    it->stale = s;
    uint32_t *slot = calloc(2 * (size_t)cap, sizeof *slot);
    if (slot == NULL)
        return HL_ENOMEM;
    free(it->stale_slot);
    it->stale_slot = slot;
    it->n_stale_slot = 2 * (uint32_t)cap;
    it->cap_stale = cap;
    for (int i = 0; i < it->n_stale; i++)
        slot[note_probe(it, it->stale[i].id, it->stale[i].len)] = (uint32_t)i + 1;
    return 0;
}

void hl_items_stale_seed(hl_items *it)
{
    /* workers started together on one host still differ in pid and in
     * the microsecond they start at */
    it->stale_rng = (uint64_t)hl_now_wall_ms() * 1000003u ^ (uint64_t)hl_now_mono_us() ^
                    ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)it;
}

/* A delay in [0, STALE_SPREAD_MS): splitmix64's next draw. */
static int64_t stale_delay_ms(hl_items *it)
{
    uint64_t z = (it->stale_rng += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return (int64_t)((z ^ (z >> 31)) % STALE_SPREAD_MS);
}

/* One note per item, the latest tombstone in its record's partition: only
 * that one decides whether the record is the key's last message there
 * (compaction works per partition; one elsewhere deletes nothing of it).
 * So the notes are bounded by the fold-in records kept, however many
 * stale tombstones the topic holds, and each record goes out once. */
void hl_items_stale_note(hl_items *it, const hl_item_update *u)
{
    hl_item_update kept;
    hl_counter_add(it->c_stale, 1);
    /* an item-id key's record is never sent again (an operator's) */
    if (it->o.prod == NULL || !u->foldin_key ||
        hl_catalogue_foldin_record(it->cat, u->id, u->id_len, &kept, it->vec) != 0 ||
        !kept.positioned || kept.partition != u->partition)
        return;
    uint32_t i = it->stale_slot != NULL ? note_probe(it, u->id, u->id_len) : 0;
    int fresh = it->stale_slot == NULL || it->stale_slot[i] == 0;
    if (fresh) {
        if (note_room(it) != 0)
            return;             /* the record stays until compaction: as if not sent */
        i = note_probe(it, u->id, u->id_len);
        it->stale_slot[i] = (uint32_t)++it->n_stale;
    }
    stale_note *s = &it->stale[it->stale_slot[i] - 1];
    if (fresh) {                /* a later tombstone keeps the note's delay */
        s->due_ms = hl_now_mono_ms() + stale_delay_ms(it);
        if (it->n_stale == 1 || s->due_ms < it->stale_due_ms)
            it->stale_due_ms = s->due_ms;
    }
    s->partition = u->partition;
    s->offset = u->offset;
    s->len = u->id_len;
    memcpy(s->id, u->id, u->id_len);
}

/* Sends the kept record of s's item again, to s's partition, when it still
 * is the last the reader read of its key before the tombstone. */
static void resend(hl_items *it, const stale_note *s, void *enc, size_t cap)
{
    hl_item_update u;
    char key[HL_ITEM_KEY_MAX], err[256] = "", q[160];
    if (hl_catalogue_foldin_record(it->cat, s->id, s->len, &u, it->vec) != 0 ||
        !u.positioned || u.partition != s->partition || u.offset > s->offset)
        return;
    uint32_t key_len = hl_item_foldin_key(s->id, s->len, key);
    int len = hl_item_encode(&it->o.codec, &u, enc, cap);
    if (len < 0)
        snprintf(err, sizeof err, "cannot encode (%zu bytes of room)", cap);
    else if (hl_producer_send(it->o.prod, it->topic, s->partition, key, key_len, enc,
                              (size_t)len, NULL, NULL, err, sizeof err) == 0)
        err[0] = '\0';
    uint64_t sup = 0;
    if (hl_log_limit_pass(&it->stale_limit, &sup))
        hl_log(err[0] ? HL_LOG_WARN : HL_LOG_INFO, "foldin_stale_tombstone",
               "item=\"%s\" topic=%s partition=%d tombstone_offset=%lld record_offset=%lld "
               "action=\"%s\" err=\"%s\" suppressed=%llu",
               hl_log_quote(q, sizeof q, s->id, s->len < 64 ? s->len : 64), it->topic,
               (int)s->partition, (long long)s->offset, (long long)u.offset,
               err[0] ? "kept here; compaction may delete it, the item waits for its next "
                        "doubling" : "kept, and sent again after the tombstone",
               err, (unsigned long long)sup);
}

void hl_items_stale_resend(hl_items *it)
{
    int64_t now = hl_now_mono_ms(), next = INT64_MAX;
    if (it->n_stale == 0 || !atomic_load(&it->loaded) || now < it->stale_due_ms)
        return;
    size_t cap = 64 + 2 * (HL_MAX_ID_LEN + 10 * 2 + 5 * 2 * (size_t)it->o.codec.dim + 32);
    void *enc = malloc(cap);
    if (enc == NULL)
        return;                 /* tried again after the next burst */
    int kept = 0;
    for (int i = 0; i < it->n_stale; i++) {
        if (it->stale[i].due_ms <= now) {
            resend(it, &it->stale[i], enc, cap);
            continue;
        }
        next = it->stale[i].due_ms < next ? it->stale[i].due_ms : next;
        it->stale[kept++] = it->stale[i];
    }
    free(enc);
    it->n_stale = kept;
    it->stale_due_ms = next;
    memset(it->stale_slot, 0, it->n_stale_slot * sizeof *it->stale_slot);
    for (int i = 0; i < kept; i++)
        it->stale_slot[note_probe(it, it->stale[i].id, it->stale[i].len)] = (uint32_t)i + 1;
}

/* A note dropped at a stop is a record compaction may delete when no other
 * worker answers its tombstone (the last one of the group to stop, or the
 * only one): the item is then unknown to the next start until its next
 * doubling. Sent now instead, its delay cut short: at worst one copy more
 * than the other workers send, and compaction keeps one. The producer is
 * settled after (worker.c), so it gets the stop's time left to land. */
void hl_items_stale_resend_all(hl_items *it)
{
    int64_t now = hl_now_mono_ms();
    for (int i = 0; i < it->n_stale; i++)
        it->stale[i].due_ms = now;
    it->stale_due_ms = now;
    hl_items_stale_resend(it);
}
