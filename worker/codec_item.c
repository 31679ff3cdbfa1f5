/* codec_item.c - ItemUpdate records of the item topic, read and written by
 * hand for exactly our schema (schemas/item_update.avsc; the contract is
 * codec_item.h).
 *
 * The layout, in Avro binary: item_id (string: zigzag length, bytes),
 * available (one byte, 0 or 1), expires_at (union index 0 null / 1 long),
 * embedding (union index 0 null / 1 record: e_in and e_out as arrays of
 * float in blocks, a count then the items, a negative count followed by the
 * block's byte size, a zero count ending the array; then bias, a float).
 * Every length and count is checked against what is left before anything
 * is read, so no record can make the decoder read past its end or write
 * past vec. */
#include "avsc.h"
#include "codec_item.h"
#include "framing.h"
#include "model.h"
#include "utf8.h"

#include <avro.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const reason_names[HL_ITEM_N_REASONS] = {
    "ok", "too_short", "bad_magic", "unknown_schema", "truncated", "bad_varint",
    "negative_length", "string_too_long", "bad_utf8", "bad_union", "bad_boolean",
    "bad_dim", "not_finite", "bad_timestamp", "trailing_bytes", "bad_key",
    "catalogue_full", "bad_foldin", "out_of_range",
};

const char *hl_item_reason_name(hl_item_reason r)
{
    return (r >= 0 && r < HL_ITEM_N_REASONS) ? reason_names[r] : "unknown";
}

/* schemas/item_update.avsc without its docs (test_codec_item checks the
 * two are the same schema): what `halflife items` registers, and what a
 * registry's writer schema must be for the hand-written decoder below.
 * ITEM_FIELDS_V1 are the fields before foldin. */
#define ITEM_FIELDS_V1 \
    "{\"type\":\"record\",\"name\":\"ItemUpdate\",\"namespace\":\"halflife\",\"fields\":[" \
    "{\"name\":\"item_id\",\"type\":\"string\"}," \
    "{\"name\":\"available\",\"type\":\"boolean\",\"default\":true}," \
    "{\"name\":\"expires_at\",\"type\":[\"null\",{\"type\":\"long\"," \
    "\"logicalType\":\"timestamp-millis\"}],\"default\":null}," \
    "{\"name\":\"embedding\",\"type\":[\"null\",{\"type\":\"record\",\"name\":" \
    "\"ItemEmbedding\",\"fields\":[" \
    "{\"name\":\"e_in\",\"type\":{\"type\":\"array\",\"items\":\"float\"}}," \
    "{\"name\":\"e_out\",\"type\":{\"type\":\"array\",\"items\":\"float\"}}," \
    "{\"name\":\"bias\",\"type\":\"float\"}]}],\"default\":null}"
static const char item_json[] =
    ITEM_FIELDS_V1 ","
    "{\"name\":\"foldin\",\"type\":[\"null\",{\"type\":\"record\",\"name\":"
    "\"ItemFoldin\",\"fields\":[{\"name\":\"events\",\"type\":\"long\"}]}],"
    "\"default\":null}]}";

/* The same before the foldin field: its records end after the embedding
 * and the decoder reads them as an operator's, so a registry id of that
 * version (registered by an older `halflife items`) stays readable. */
static const char item_json_v1[] = ITEM_FIELDS_V1 "]}";

const char *hl_item_schema(void)
{
    return item_json;
}

/* avro_schema_equal compares names, fields, types and symbols, so a
 * registry's copy of our schema (reformatted, docs dropped) passes and
 * any other record does not. */
/* 1 when text parses to the same schema as theirs, 0 when not, -1 when
 * text (built in) does not parse. */
static int same_schema(avro_schema_t theirs, const char *text)
{
    avro_schema_t ours = NULL;
    if (avro_schema_from_json_length(text, strlen(text), &ours) != 0)
        return -1;
    int eq = avro_schema_equal(ours, theirs);
    avro_schema_decref(ours);
    return eq != 0;
}

int hl_item_schema_is_ours(const char *text, char *why, size_t whylen)
{
    avro_schema_t theirs = NULL;
    int rc = HL_EFORMAT;
    char reason[160];
    if (hl_avsc_parse(text, strlen(text), &theirs, reason, sizeof reason) != 0) {
        hl_err(why, whylen, rc, "not an Avro schema: %s", reason);
        return rc;
    }
    int now = same_schema(theirs, item_json), before = same_schema(theirs, item_json_v1);
    if (now < 0 || before < 0)
        hl_err(why, whylen, rc, "built-in ItemUpdate schema: %s", avro_strerror());
    else if (now == 0 && before == 0)
        hl_err(why, whylen, rc, "not schemas/item_update.avsc (or its version before the "
               "foldin field): item updates are decoded for exactly those schemas (no "
               "resolution of other writer schemas)");
    else
        rc = 0;
    avro_schema_decref(theirs);
    return rc;
}

typedef struct cur { const uint8_t *p, *end; } cur;

static hl_item_reason fail(char *detail, size_t detaillen, hl_item_reason r,
                           const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static hl_item_reason fail(char *detail, size_t detaillen, hl_item_reason r,
                           const char *fmt, ...)
{
    if (detail != NULL && detaillen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, detaillen, fmt, ap);
        va_end(ap);
    }
    return r;
}

static hl_item_reason read_long(cur *c, int64_t *v)
{
    hl_varint_result r = hl_avro_read_long(&c->p, c->end, v);
    return r == HL_VARINT_OK ? HL_ITEM_OK
         : r == HL_VARINT_TRUNCATED ? HL_ITEM_TRUNCATED : HL_ITEM_BAD_VARINT;
}

static hl_item_reason read_float(cur *c, float *f)
{
    if (c->end - c->p < 4)
        return HL_ITEM_TRUNCATED;
    uint32_t u = (uint32_t)c->p[0] | (uint32_t)c->p[1] << 8 | (uint32_t)c->p[2] << 16 |
                 (uint32_t)c->p[3] << 24;
    memcpy(f, &u, sizeof *f);
    c->p += 4;
    return HL_ITEM_OK;
}

static hl_item_reason read_id(cur *c, hl_item_update *u, char *detail, size_t dl)
{
    int64_t n;
    hl_item_reason r = read_long(c, &n);
    if (r != HL_ITEM_OK)
        return r;
    if (n < 0)
        return fail(detail, dl, HL_ITEM_NEGATIVE_LENGTH, "item_id length %lld", (long long)n);
    if (n < 1 || n > HL_MAX_ID_LEN)
        return fail(detail, dl, HL_ITEM_STRING_TOO_LONG, "item_id of %lld bytes (1..%d)",
                    (long long)n, HL_MAX_ID_LEN);
    if (c->end - c->p < n)
        return HL_ITEM_TRUNCATED;
    u->id = (const char *)c->p;
    u->id_len = (uint32_t)n;
    c->p += n;
    if (!hl_utf8_valid(u->id, u->id_len))
        return fail(detail, dl, HL_ITEM_BAD_UTF8, "item_id is not UTF-8");
    return HL_ITEM_OK;
}

static hl_item_reason read_branch(cur *c, int64_t *b, const char *field, char *detail,
                                  size_t dl)
{
    hl_item_reason r = read_long(c, b);
    if (r == HL_ITEM_OK && *b != 0 && *b != 1)
        return fail(detail, dl, HL_ITEM_BAD_UNION, "%s: union branch %lld (0..1)", field,
                    (long long)*b);
    return r;
}

/* One value of an embedding: finite and within the model's bound
 * (model.h), since it scores beside the model's own vectors and a larger
 * one could overflow a list's scores. i < 0: a scalar (bias). */
static hl_item_reason check_value(float v, const char *field, int i, char *detail, size_t dl)
{
    char at[16] = "";
    if (fabsf(v) <= HL_MODEL_MAX_ABS)
        return HL_ITEM_OK;
    if (i >= 0)
        snprintf(at, sizeof at, "[%d]", i);
    if (!isfinite(v))
        return fail(detail, dl, HL_ITEM_NOT_FINITE, "%s%s is %g", field, at, (double)v);
    return fail(detail, dl, HL_ITEM_OUT_OF_RANGE, "%s%s is %g, beyond the model's bound "
                "+-%g", field, at, (double)v, (double)HL_MODEL_MAX_ABS);
}

/* An array<float> of exactly dim items into out. */
static hl_item_reason read_vec(cur *c, int dim, float *out, const char *field,
                               char *detail, size_t dl)
{
    int64_t got = 0, n, size;
    hl_item_reason r;
    for (;;) {
        if ((r = read_long(c, &n)) != HL_ITEM_OK)
            return r;
        if (n == 0)
            break;
        if (n > dim - got || n < -(dim - got))     /* checked before negating */
            return fail(detail, dl, HL_ITEM_BAD_DIM, "%s holds more than the model's "
                        "%d floats", field, dim);
        if (n < 0 && (r = read_long(c, &size)) != HL_ITEM_OK)   /* block byte size */
            return r;
        n = n < 0 ? -n : n;
        if (c->end - c->p < 4 * n)
            return HL_ITEM_TRUNCATED;
        for (int64_t i = 0; i < n; i++)
            read_float(c, &out[got++]);
    }
    if (got != dim)
        return fail(detail, dl, HL_ITEM_BAD_DIM, "%s holds %lld floats, the model's dim "
                    "is %d", field, (long long)got, dim);
    for (int d = 0; d < dim; d++)
        if ((r = check_value(out[d], field, d, detail, dl)) != HL_ITEM_OK)
            return r;
    return HL_ITEM_OK;
}

static hl_item_reason read_embedding(const hl_item_codec_opts *o, cur *c, float *vec,
                                     hl_item_update *u, char *detail, size_t dl)
{
    hl_item_reason r;
    if ((r = read_vec(c, o->dim, vec, "e_in", detail, dl)) != HL_ITEM_OK ||
        (r = read_vec(c, o->dim, vec + o->dim, "e_out", detail, dl)) != HL_ITEM_OK ||
        (r = read_float(c, &u->bias)) != HL_ITEM_OK)
        return r;
    if ((r = check_value(u->bias, "bias", -1, detail, dl)) != HL_ITEM_OK)
        return r;
    u->e_in = vec;
    u->e_out = vec + o->dim;
    return HL_ITEM_OK;
}

/* The optional foldin field. A record that ends before it was written
 * with the schema before the field existed: an operator's (null). */
static hl_item_reason read_foldin(cur *c, hl_item_update *u, char *detail, size_t dl)
{
    hl_item_reason r;
    int64_t b;
    if (c->p == c->end)
        return HL_ITEM_OK;
    if ((r = read_branch(c, &b, "foldin", detail, dl)) != HL_ITEM_OK || b == 0)
        return r;
    if ((r = read_long(c, &u->foldin_events)) != HL_ITEM_OK)
        return r;
    if (u->foldin_events < 1 || u->e_out == NULL)
        return fail(detail, dl, HL_ITEM_BAD_FOLDIN, "foldin.events %lld%s: want >= 1 and "
                    "an embedding", (long long)u->foldin_events,
                    u->e_out == NULL ? " without an embedding" : "");
    return HL_ITEM_OK;
}

static hl_item_reason read_body(const hl_item_codec_opts *o, cur *c, float *vec,
                                hl_item_update *u, char *detail, size_t dl)
{
    hl_item_reason r;
    int64_t b;
    if ((r = read_id(c, u, detail, dl)) != HL_ITEM_OK)
        return r;
    if (c->p == c->end)
        return HL_ITEM_TRUNCATED;
    if (*c->p > 1)
        return fail(detail, dl, HL_ITEM_BAD_BOOLEAN, "available is byte %u", *c->p);
    u->available = *c->p++;
    if ((r = read_branch(c, &b, "expires_at", detail, dl)) != HL_ITEM_OK)
        return r;
    if (b == 1) {
        if ((r = read_long(c, &u->expires_at_ms)) != HL_ITEM_OK)
            return r;
        if (u->expires_at_ms < o->min_ts_ms || u->expires_at_ms > o->max_ts_ms)
            return fail(detail, dl, HL_ITEM_BAD_TIMESTAMP, "expires_at %lld outside "
                        "%lld..%lld", (long long)u->expires_at_ms, (long long)o->min_ts_ms,
                        (long long)o->max_ts_ms);
    }
    if ((r = read_branch(c, &b, "embedding", detail, dl)) != HL_ITEM_OK)
        return r;
    if (b == 1 && (r = read_embedding(o, c, vec, u, detail, dl)) != HL_ITEM_OK)
        return r;
    if ((r = read_foldin(c, u, detail, dl)) != HL_ITEM_OK)
        return r;
    if (c->p != c->end)
        return fail(detail, dl, HL_ITEM_TRAILING_BYTES, "%zu bytes after the record",
                    (size_t)(c->end - c->p));
    return HL_ITEM_OK;
}

static hl_item_reason read_header(const hl_item_codec_opts *o, cur *c, char *detail,
                                  size_t dl)
{
    int32_t id;
    if (o->framing != HL_FRAMING_CONFLUENT)
        return HL_ITEM_OK;
    switch (hl_frame_read(c->p, (size_t)(c->end - c->p), &id, detail, dl)) {
    case HL_FRAME_TOO_SHORT: return HL_ITEM_TOO_SHORT;
    case HL_FRAME_BAD_MAGIC: return HL_ITEM_BAD_MAGIC;
    default:                 break;
    }
    c->p += HL_FRAME_HEADER_LEN;
    if (id != o->schema_id)
        return fail(detail, dl, HL_ITEM_UNKNOWN_SCHEMA, "schema id %d; item updates are "
                    "read with id %d (items.schema.id)", (int)id, (int)o->schema_id);
    return HL_ITEM_OK;
}

uint32_t hl_item_foldin_key(const char *id, uint32_t len, char *out)
{
    memcpy(out, HL_ITEM_FOLDIN_KEY, HL_ITEM_FOLDIN_KEY_LEN);
    memcpy(out + HL_ITEM_FOLDIN_KEY_LEN, id, len);
    return HL_ITEM_FOLDIN_KEY_LEN + len;
}

/* Strips a fold-in key's prefix (*foldin = 1); a fold-in key may carry a
 * fold-in record or a tombstone only, never an operator's record. */
static hl_item_reason foldin_key(const void **key, size_t *key_len, hl_item_update *u,
                                 char *detail, size_t dl)
{
    if (*key == NULL || *key_len <= HL_ITEM_FOLDIN_KEY_LEN ||
        memcmp(*key, HL_ITEM_FOLDIN_KEY, HL_ITEM_FOLDIN_KEY_LEN) != 0)
        return HL_ITEM_OK;
    *key = (const char *)*key + HL_ITEM_FOLDIN_KEY_LEN;
    *key_len -= HL_ITEM_FOLDIN_KEY_LEN;
    u->foldin_key = 1;
    if (!u->tombstone && u->foldin_events < 1)
        return fail(detail, dl, HL_ITEM_BAD_KEY, "an operator's record (no foldin) under a "
                    "fold-in key: write it under the item_id");
    return HL_ITEM_OK;
}

static hl_item_reason check_key(const void *key, size_t key_len, const hl_item_update *u,
                                char *detail, size_t dl)
{
    if (key == NULL || key_len < 1 || key_len > HL_MAX_ID_LEN)
        return fail(detail, dl, HL_ITEM_BAD_KEY, "key of %zu bytes: want the item_id "
                    "(1..%d bytes)", key_len, HL_MAX_ID_LEN);
    if (!hl_utf8_valid(key, key_len))
        return fail(detail, dl, HL_ITEM_BAD_UTF8, "key is not UTF-8");
    if (u != NULL && (key_len != u->id_len || memcmp(key, u->id, key_len) != 0))
        return fail(detail, dl, HL_ITEM_BAD_KEY, "key is not the item_id: compaction "
                    "keeps the newest record per key");
    return HL_ITEM_OK;
}

hl_item_reason hl_item_decode(const hl_item_codec_opts *o, const void *key, size_t key_len,
                              const void *buf, size_t len, float *vec,
                              hl_item_update *u, char *detail, size_t detaillen)
{
    memset(u, 0, sizeof *u);
    u->available = 1;
    u->expires_at_ms = HL_CATALOGUE_NO_EXPIRY;
    if (buf == NULL || len == 0) {                 /* tombstone */
        u->tombstone = 1;
        foldin_key(&key, &key_len, u, detail, detaillen);
        hl_item_reason r = check_key(key, key_len, NULL, detail, detaillen);
        u->id = key;
        u->id_len = (uint32_t)key_len;
        return r;
    }
    cur c = {buf, (const uint8_t *)buf + len};
    hl_item_reason r = read_header(o, &c, detail, detaillen);
    if (r == HL_ITEM_OK)
        r = read_body(o, &c, vec, u, detail, detaillen);
    if (r == HL_ITEM_TRUNCATED)
        return fail(detail, detaillen, r, "the record ends early (%zu bytes)", len);
    if (r == HL_ITEM_BAD_VARINT)
        return fail(detail, detaillen, r, "a varint longer than 10 bytes");
    if (r != HL_ITEM_OK || (r = foldin_key(&key, &key_len, u, detail, detaillen)) != HL_ITEM_OK)
        return r;
    return check_key(key, key_len, u, detail, detaillen);
}

/* ---- encoding ---- */

typedef struct out { uint8_t *p, *end; int full; } out;

static void put(out *w, const void *b, size_t n)
{
    if (w->full || (size_t)(w->end - w->p) < n) {
        w->full = 1;
        return;
    }
    memcpy(w->p, b, n);
    w->p += n;
}

static void put_long(out *w, int64_t v)
{
    uint64_t u = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    uint8_t b[10];
    int n = 0;
    do {
        b[n] = (uint8_t)(u & 0x7f);
        u >>= 7;
        if (u)
            b[n] |= 0x80;
        n++;
    } while (u);
    put(w, b, (size_t)n);
}

static void put_float(out *w, float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint8_t b[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
    put(w, b, 4);
}

static void put_vec(out *w, const float *v, int dim)
{
    put_long(w, dim);
    for (int d = 0; d < dim; d++)
        put_float(w, v[d]);
    put_long(w, 0);
}

int hl_item_encode(const hl_item_codec_opts *o, const hl_item_update *u,
                   void *buf, size_t cap)
{
    out w = {buf, (uint8_t *)buf + cap, 0};
    if (o->framing == HL_FRAMING_CONFLUENT) {
        uint8_t h[HL_FRAME_HEADER_LEN];
        hl_frame_write(h, o->schema_id);
        put(&w, h, sizeof h);
    }
    put_long(&w, u->id_len);
    put(&w, u->id, u->id_len);
    uint8_t av = u->available ? 1 : 0;
    put(&w, &av, 1);
    put_long(&w, u->expires_at_ms != HL_CATALOGUE_NO_EXPIRY);
    if (u->expires_at_ms != HL_CATALOGUE_NO_EXPIRY)
        put_long(&w, u->expires_at_ms);
    put_long(&w, u->e_out != NULL);
    if (u->e_out != NULL) {
        put_vec(&w, u->e_in, o->dim);
        put_vec(&w, u->e_out, o->dim);
        put_float(&w, u->bias);
    }
    put_long(&w, u->foldin_events > 0);
    if (u->foldin_events > 0)
        put_long(&w, u->foldin_events);
    return w.full ? HL_EFULL : (int)(w.p - (uint8_t *)buf);
}
