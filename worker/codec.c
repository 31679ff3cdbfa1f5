/* codec.c - Avro bytes <-> BehaviourEvent and RecommendationList.
 *
 * Decoding has two paths that must give identical results:
 *  - the fast path, a hand-checked decoder for the exact layout of our reader
 *    schema. It serves raw framing and every Confluent schema id whose writer
 *    schema is equal to the reader (id 1 as we write it): almost all traffic.
 *  - the resolving path for any other writer schema: the bytes are first
 *    walked against the writer schema by check_value(), which checks every
 *    varint, length, union index and enum index against the payload, and
 *    only then handed to avro-c's resolved writer (avro_resolved_writer_new),
 *    which maps writer fields onto reader fields by name. avro-c trusts its
 *    input (a huge or negative length becomes a huge malloc), so it never
 *    sees bytes the walker has not accepted. Two gaps of avro-c 1.11 are
 *    filled here (see reader_for): it refuses a writer that lacks a reader
 *    field even when the field has a default, and it maps enums by index,
 *    not by symbol.
 * The walker follows at most MAX_DEPTH levels of nesting (a recursive
 * writer schema lets the payload choose the depth) and at most
 * MAX_EMPTY_ITEMS array items that take no bytes (array<null>: a count
 * alone could otherwise make it and avro-c loop 2^63 times), and visits at
 * most MAX_FREE_NODES schema nodes per record beyond one per byte (a 3 KB
 * writer schema of records nested 8 wide and 9 deep names 8^9 null fields
 * that take no bytes: each record of it took avro-c 25 s); beyond any of
 * them, a record is too_complex.
 * Both paths end in check_event(), the semantic checks (id lengths, ids
 * valid UTF-8, enum, timestamp range, weight range). Writer schemas are
 * loaded on first use, from <schemas_dir>/<id>.avsc or, with a Schema
 * Registry, from opts.schema_fn (schema_store.c), and cached per id in the
 * same table whatever their source, failures included (an id schema_fn
 * does not know yet is asked again at each use: HL_CODEC_WAIT);
 * id 1, our own schema, is built in when no such file exists,
 * so a flood of records with a bad id costs one file read.
 *
 * Encoding writes Avro binary directly (no avro-c values): both schemas are
 * fixed and the direct encoder is several times faster than avro-c's. The
 * tests check the bytes against python3-avro, the reference implementation.
 *
 * Not thread-safe: one codec per thread (it holds avro-c values and a
 * reader).
 *
 * This file holds the schemas, the fast path, decode, create and encode.
 * Writer schemas by id and the resolving path are in codec_writer.c; the
 * state and the checked Avro reader both use, in codec_internal.h. */
#include "codec_internal.h"
#include "framing.h"
#include "utf8.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The reader schema, identical to schemas/behaviour_event.avsc (a test
 * checks): embedded so raw framing needs no file. */
static const char reader_json[] =
    "{\"type\":\"record\",\"name\":\"BehaviourEvent\",\"namespace\":\"halflife\","
    "\"fields\":["
    "{\"name\":\"user_id\",\"type\":\"string\"},"
    "{\"name\":\"item_id\",\"type\":\"string\"},"
    "{\"name\":\"event_type\",\"type\":{\"type\":\"enum\",\"name\":\"EventType\","
    "\"symbols\":[\"VIEW\",\"CLICK\",\"FAVORITE\",\"ADD_TO_CART\",\"PURCHASE\",\"RATE\"],"
    "\"default\":\"VIEW\"},\"default\":\"VIEW\"},"
    "{\"name\":\"timestamp\",\"type\":{\"type\":\"long\",\"logicalType\":\"timestamp-millis\"}},"
    "{\"name\":\"weight\",\"type\":[\"null\",\"float\"],\"default\":null},"
    "{\"name\":\"context\",\"type\":[\"null\",{\"type\":\"map\",\"values\":\"string\"}],"
    "\"default\":null}]}";

/* schemas/recommendation_list.avsc without its docs (a test checks they
 * are the same schema): what the worker registers for its lists. */
static const char list_json[] =
    "{\"type\":\"record\",\"name\":\"RecommendationList\",\"namespace\":\"halflife\","
    "\"fields\":["
    "{\"name\":\"user_id\",\"type\":\"string\"},"
    "{\"name\":\"generated_at\",\"type\":{\"type\":\"long\",\"logicalType\":\"timestamp-millis\"}},"
    "{\"name\":\"model_version\",\"type\":\"string\"},"
    "{\"name\":\"items\",\"type\":{\"type\":\"array\",\"items\":{"
    "\"type\":\"record\",\"name\":\"RecommendedItem\",\"fields\":["
    "{\"name\":\"item_id\",\"type\":\"string\"},"
    "{\"name\":\"score\",\"type\":\"float\"},"
    "{\"name\":\"because_item_id\",\"type\":[\"null\",\"string\"],\"default\":null}]}}},"
    "{\"name\":\"source\",\"type\":{\"type\":\"record\",\"name\":\"Source\",\"fields\":["
    "{\"name\":\"topic\",\"type\":\"string\"},"
    "{\"name\":\"partition\",\"type\":\"int\"},"
    "{\"name\":\"offset\",\"type\":\"long\"}]}}]}";

const char *hl_codec_event_schema(void) { return reader_json; }
const char *hl_codec_list_schema(void) { return list_json; }

/* A write position; full is set (and writing stops) when out of room. */
typedef struct out {
    uint8_t *p, *end;
    int      full;
} out;

static const char *const reason_names[HL_CODEC_N_REASONS] = {
    "ok", "too_short", "bad_magic", "unknown_schema", "truncated",
    "bad_varint", "negative_length", "string_too_long", "bad_timestamp",
    "bad_enum", "bad_union", "bad_weight", "trailing_bytes", "bad_utf8",
    "too_complex",
};

const char *hl_codec_reason_name(hl_codec_reason r)
{
    if (r == HL_CODEC_WAIT)
        return "schema_wait";
    return (r >= 0 && r < HL_CODEC_N_REASONS) ? reason_names[r] : "unknown";
}

static float le_float(const uint8_t *p)
{
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- the fast path: the reader schema's exact layout --------------------- */

/* context: union {null, map<string>}; carried, not used, so only walked. */
static hl_codec_reason skip_context(cur *c)
{
    int64_t branch, count;
    const char *s;
    uint32_t len;
    hl_codec_reason r = read_branch(c, 2, &branch);
    if (r != HL_CODEC_OK || branch == 0)
        return r;
    for (;;) {
        if ((r = read_block(c, &count, 0)) != HL_CODEC_OK || count == 0)
            return r;
        for (int64_t i = 0; i < count; i++) {
            if ((r = read_string(c, &s, &len)) != HL_CODEC_OK ||   /* key */
                (r = read_string(c, &s, &len)) != HL_CODEC_OK)     /* value */
                return r;
        }
    }
}

static hl_codec_reason decode_fast(cur *c, hl_codec_event *ev)
{
    int64_t type, branch;
    hl_codec_reason r;

    if ((r = read_string(c, &ev->user, &ev->user_len)) != HL_CODEC_OK ||
        (r = read_string(c, &ev->item, &ev->item_len)) != HL_CODEC_OK ||
        (r = read_long(c, &type)) != HL_CODEC_OK ||
        (r = read_long(c, &ev->ts_ms)) != HL_CODEC_OK ||
        (r = read_branch(c, 2, &branch)) != HL_CODEC_OK)
        return r;
    if (type < 0 || type >= HL_N_TYPES)
        return HL_CODEC_BAD_ENUM;
    ev->type = (int)type;
    ev->has_weight = branch == 1;
    ev->weight = 1.0f;
    if (ev->has_weight) {
        if (c->end - c->p < 4)
            return HL_CODEC_TRUNCATED;
        ev->weight = le_float(c->p);
        c->p += 4;
    }
    if ((r = skip_context(c)) != HL_CODEC_OK)
        return r;
    return c->p == c->end ? HL_CODEC_OK : HL_CODEC_TRAILING_BYTES;
}

/* ---- decode ------------------------------------------------------------- */

/* The checks both paths share, on a structurally valid event. */
static hl_codec_reason check_event(const hl_codec *c, const hl_codec_event *ev,
                                   char *detail, size_t detaillen)
{
    if (ev->user_len < 1 || ev->user_len > HL_MAX_ID_LEN)
        return fail(detail, detaillen, HL_CODEC_STRING_TOO_LONG,
                    "user_id is %u bytes, allowed 1..%d", ev->user_len, HL_MAX_ID_LEN);
    if (ev->item_len < 1 || ev->item_len > HL_MAX_ID_LEN)
        return fail(detail, detaillen, HL_CODEC_STRING_TOO_LONG,
                    "item_id is %u bytes, allowed 1..%d", ev->item_len, HL_MAX_ID_LEN);
    if (!hl_utf8_valid(ev->user, ev->user_len))
        return fail(detail, detaillen, HL_CODEC_BAD_UTF8,
                    "user_id is not valid UTF-8 (byte %zu of %u)",
                    hl_utf8_valid_prefix(ev->user, ev->user_len), ev->user_len);
    if (!hl_utf8_valid(ev->item, ev->item_len))
        return fail(detail, detaillen, HL_CODEC_BAD_UTF8,
                    "item_id is not valid UTF-8 (byte %zu of %u)",
                    hl_utf8_valid_prefix(ev->item, ev->item_len), ev->item_len);
    if (ev->type < 0 || ev->type >= HL_N_TYPES)
        return fail(detail, detaillen, HL_CODEC_BAD_ENUM,
                    "event_type index %d outside 0..%d", ev->type, HL_N_TYPES - 1);
    if (ev->ts_ms < c->o.min_ts_ms || ev->ts_ms > c->o.max_ts_ms)
        return fail(detail, detaillen, HL_CODEC_BAD_TIMESTAMP,
                    "timestamp %lld ms outside [%lld, %lld]", (long long)ev->ts_ms,
                    (long long)c->o.min_ts_ms, (long long)c->o.max_ts_ms);
    if (ev->ts_ms > c->ts_limit_ms)
        return fail(detail, detaillen, HL_CODEC_BAD_TIMESTAMP,
                    "timestamp %lld ms is %lld s ahead of the worker's clock "
                    "(event.max.future.ms=%lld): fix the producer's clock",
                    (long long)ev->ts_ms,
                    (long long)((ev->ts_ms - c->ts_limit_ms + c->max_future_ms) / 1000),
                    (long long)c->max_future_ms);
    /* Written so that NaN fails too. */
    if (!(ev->weight >= 0 && ev->weight <= c->o.max_weight))
        return fail(detail, detaillen, HL_CODEC_BAD_WEIGHT,
                    "weight %g outside [0, %g] (event.max.weight)", (double)ev->weight,
                    c->o.max_weight);
    return HL_CODEC_OK;
}

/* The Confluent header: magic 0 and a big-endian schema id (framing.c,
 * shared with the item updates' codec). */
static hl_codec_reason read_header(cur *in, int32_t *id, char *detail, size_t detaillen)
{
    switch (hl_frame_read(in->p, (size_t)(in->end - in->p), id, detail, detaillen)) {
    case HL_FRAME_TOO_SHORT: return HL_CODEC_TOO_SHORT;
    case HL_FRAME_BAD_MAGIC: return HL_CODEC_BAD_MAGIC;
    default:                 break;
    }
    in->p += HL_FRAME_HEADER_LEN;
    return HL_CODEC_OK;
}

hl_codec_reason hl_codec_decode_event(hl_codec *c, const void *buf, size_t len,
                                      hl_codec_event *ev,
                                      char *detail, size_t detaillen)
{
    cur in = { buf, (const uint8_t *)buf + len, 0, 0 };
    writer *w = NULL;
    int32_t id = 0;
    hl_codec_reason r;

    if (buf == NULL || len == 0)
        return fail(detail, detaillen, HL_CODEC_TOO_SHORT, "empty payload");
    if (c->o.input_framing == HL_FRAMING_CONFLUENT) {
        if ((r = read_header(&in, &id, detail, detaillen)) != HL_CODEC_OK)
            return r;
        w = hl_codec_writer_get(c, id, 0);
        if (w->kind == W_WAIT)
            return fail(detail, detaillen, HL_CODEC_WAIT, "%s", w->why);
        if (w->kind == W_BAD)
            return fail(detail, detaillen, HL_CODEC_UNKNOWN_SCHEMA, "%s", w->why);
    }
    if (w == NULL || w->kind == W_FAST) {
        const uint8_t *body = in.p;
        if ((r = decode_fast(&in, ev)) != HL_CODEC_OK)
            return fail(detail, detaillen, r, "%s at byte %td of the body",
                        hl_codec_reason_name(r), in.p - body);
    } else if ((r = hl_codec_decode_resolved(c, w, &in, ev, detail, detaillen)) != HL_CODEC_OK) {
        return r;
    }
    return check_event(c, ev, detail, detaillen);
}

/* One event dated far ahead (a producer clock, a unit bug, or anyone who
 * can write one record) would otherwise become the stream time: every
 * other user of its shard decays to it and is evicted, and every item
 * with an expires_at before it is hidden from every list, snapshots
 * included. Bounding it by the wall clock leaves replays of the past
 * untouched, since they are behind the clock. */
void hl_codec_set_clock(hl_codec *c, int64_t wall_ms, int64_t max_future_ms)
{
    int64_t lim = c->o.max_ts_ms;
    if (max_future_ms > 0 && wall_ms <= INT64_MAX - max_future_ms &&
        wall_ms + max_future_ms < lim)
        lim = wall_ms + max_future_ms;
    c->ts_limit_ms = lim;
    c->max_future_ms = max_future_ms;
}

/* ---- create / destroy --------------------------------------------------- */

hl_codec *hl_codec_create(const hl_codec_opts *o, char *errbuf, size_t errlen)
{
    hl_codec *c;
    if (o->min_ts_ms > o->max_ts_ms) {
        hl_err(errbuf, errlen, HL_EINVAL, "codec: min timestamp %lld > max %lld",
               (long long)o->min_ts_ms, (long long)o->max_ts_ms);
        return NULL;
    }
    if (!(o->max_weight >= 0) || isinf(o->max_weight)) {
        hl_err(errbuf, errlen, HL_EINVAL, "codec: max weight %g, want a finite number >= 0",
               o->max_weight);
        return NULL;
    }
    if ((c = calloc(1, sizeof *c)) == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "codec: out of memory");
        return NULL;
    }
    c->o = *o;
    c->ts_limit_ms = o->max_ts_ms;
    if (c->o.max_weight == 0)
        c->o.max_weight = HL_CODEC_DEFAULT_MAX_WEIGHT;
    c->schemas_dir = strdup(o->schemas_dir != NULL ? o->schemas_dir : "schemas");
    c->o.schemas_dir = c->schemas_dir;
    if (c->schemas_dir == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "codec: out of memory");
        goto fail;
    }
    if (avro_schema_from_json_length(reader_json, sizeof reader_json - 1, &c->reader) != 0) {
        hl_err(errbuf, errlen, HL_EINVAL, "codec: reader schema: %s", avro_strerror());
        c->reader = NULL;
        goto fail;
    }
    if ((c->reader_iface = avro_generic_class_from_schema(c->reader)) == NULL ||
        (c->rd = avro_reader_memory("", 0)) == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "codec: avro-c: %s", avro_strerror());
        goto fail;
    }
    return c;
fail:
    hl_codec_destroy(c);
    return NULL;
}

void hl_codec_destroy(hl_codec *c)
{
    if (c == NULL)
        return;
    for (int i = 0; i < c->n_w; i++) {
        hl_codec_writer_clear(c->w[i]);
        free(c->w[i]);
    }
    free(c->w);
    hl_codec_writer_clear(&c->scratch);
    if (c->rd != NULL)
        avro_reader_free(c->rd);
    if (c->reader_iface != NULL)
        avro_value_iface_decref(c->reader_iface);
    if (c->reader != NULL)
        avro_schema_decref(c->reader);
    free(c->schemas_dir);
    free(c);
}

/* ---- encode ------------------------------------------------------------- */

static inline void put_raw(out *o, const void *p, size_t n)
{
    if (o->full || (size_t)(o->end - o->p) < n) {
        o->full = 1;
        return;
    }
    memcpy(o->p, p, n);
    o->p += n;
}

/* A zigzag varint, written in place when 10 bytes are free (the common
 * case), through a scratch buffer near the end. */
static inline void put_long(out *o, int64_t v)
{
    uint8_t b[10], *d = (o->end - o->p >= 10) ? o->p : b;
    uint64_t u = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);   /* zigzag */
    size_t n = 0;
    while (u >= 0x80) {
        d[n++] = (uint8_t)(u | 0x80);
        u >>= 7;
    }
    d[n++] = (uint8_t)u;
    if (d == o->p && !o->full)
        o->p += n;
    else if (d == b)
        put_raw(o, b, n);
}

static inline void put_string(out *o, const char *s, size_t len)
{
    put_long(o, (int64_t)len);
    put_raw(o, s, len);
}

static inline void put_float(out *o, float f)
{
    uint32_t u;
    uint8_t b[4];
    memcpy(&u, &f, sizeof u);
    b[0] = (uint8_t)u; b[1] = (uint8_t)(u >> 8);
    b[2] = (uint8_t)(u >> 16); b[3] = (uint8_t)(u >> 24);
    put_raw(o, b, 4);
}

static void put_header(out *o, hl_framing framing, int32_t id)
{
    uint8_t h[HL_FRAME_HEADER_LEN];
    hl_frame_write(h, id);
    if (framing == HL_FRAMING_CONFLUENT)
        put_raw(o, h, sizeof h);
}

static int finish(const out *o, const void *start)
{
    return o->full ? HL_EFULL : (int)(o->p - (const uint8_t *)start);
}

int hl_codec_encode_event(hl_codec *c, const hl_codec_event *ev,
                          void *buf, size_t cap)
{
    out o = { buf, (uint8_t *)buf + cap, 0 };
    if (ev->type < 0 || ev->type >= HL_N_TYPES || cap > INT_MAX)
        return HL_EINVAL;
    put_header(&o, c->o.input_framing, c->o.event_schema_id > 0 ? c->o.event_schema_id
                                                                 : EVENT_WRITER_ID);
    put_string(&o, ev->user, ev->user_len);
    put_string(&o, ev->item, ev->item_len);
    put_long(&o, ev->type);
    put_long(&o, ev->ts_ms);
    put_long(&o, ev->has_weight ? 1 : 0);              /* weight: union branch */
    if (ev->has_weight)
        put_float(&o, ev->weight);
    put_long(&o, 0);                                   /* context: null */
    return finish(&o, buf);
}

static void put_rec(out *o, const hl_codec_rec *it)
{
    put_string(o, it->item, it->item_len);
    put_float(o, it->score);
    if (it->because == NULL) {
        put_long(o, 0);                                /* because_item_id: null */
    } else {
        put_long(o, 1);
        put_string(o, it->because, it->because_len);
    }
}

int hl_codec_encode_list(hl_codec *c, const hl_codec_list *l,
                         void *buf, size_t cap)
{
    out o = { buf, (uint8_t *)buf + cap, 0 };
    const char *mv = l->model_version != NULL ? l->model_version : "";
    const char *topic = l->src_topic != NULL ? l->src_topic : "";
    if (l->n_items < 0 || cap > INT_MAX)
        return HL_EINVAL;
    put_header(&o, c->o.output_framing, c->o.output_schema_id);
    put_string(&o, l->user, l->user_len);
    put_long(&o, l->generated_at_ms);
    put_string(&o, mv, strlen(mv));
    if (l->n_items > 0) {                              /* items: one block */
        put_long(&o, l->n_items);
        for (int i = 0; i < l->n_items; i++)
            put_rec(&o, &l->items[i]);
    }
    put_long(&o, 0);
    put_string(&o, topic, strlen(topic));
    put_long(&o, l->src_partition);
    put_long(&o, l->src_offset);
    return finish(&o, buf);
}
