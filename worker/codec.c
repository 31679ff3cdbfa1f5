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
 * alone could otherwise make it and avro-c loop 2^63 times); beyond either,
 * a record is too_complex.
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
 * reader). */
#include "codec.h"
#include "log.h"
#include "utf8.h"

#include <avro.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
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

/* Reader field indexes, in the order above. */
enum { F_USER, F_ITEM, F_TYPE, F_TS, F_WEIGHT, F_CONTEXT };

#define EVENT_WRITER_ID   1         /* the id hl_codec_encode_event writes */
#define MAX_SCHEMA_BYTES  (1 << 20) /* a writer schema file larger is refused */
#define MAX_WRITERS       256       /* cached ids; more are loaded per call */
#define MAX_DEPTH         32        /* nesting the walker follows */
#define MAX_EMPTY_ITEMS   4096      /* zero-byte array items per record */
#define RETRY_MS          5000      /* a refused id is looked up again after */

/* W_WAIT: schema_fn does not know the id yet; asked again on each use. */
typedef enum { W_FAST, W_RESOLVE, W_BAD, W_WAIT } writer_kind;

/* One writer schema id. For W_RESOLVE, resolved wraps dest (a value of
 * rschema, our reader schema minus the fields this writer lacks), so reading
 * into resolved fills dest; field[F_*] is each reader field's index in
 * rschema, -1 for a field the writer lacks (its default applies). */
typedef struct writer {
    int32_t             id;
    writer_kind         kind;
    avro_schema_t       schema;
    avro_schema_t       rschema;
    avro_value_iface_t *riface;
    int                 field[F_CONTEXT + 1];
    int                *type_of;      /* writer enum index -> HL_VIEW.., -1 */
    int                 n_symbols;
    avro_value_iface_t *resolver;
    avro_value_t        resolved, dest;
    int                 has_values;
    char                why[200];     /* W_BAD: why the id is refused */
    int64_t             retry_at_ms;  /* W_BAD: when to look at the file again */
} writer;

struct hl_codec {
    hl_codec_opts       o;
    char               *schemas_dir;
    avro_schema_t       reader;
    avro_value_iface_t *reader_iface;
    avro_reader_t       rd;
    writer            **w;            /* cached ids, n_w of cap_w */
    int                 n_w, cap_w;
    writer             *last;         /* the id seen last: one-entry fast cache */
    writer              scratch;      /* an id loaded when the cache is full */
};

/* A read position in a payload; empty_left is what the walker still
 * accepts of zero-byte array items (the fast path reads no such array). */
typedef struct cur {
    const uint8_t *p, *end;
    int64_t        empty_left;
} cur;

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

/* Writes a sentence into detail (if any) and returns r, like hl_err(). */
static hl_codec_reason fail(char *detail, size_t detaillen, hl_codec_reason r,
                            const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static hl_codec_reason fail(char *detail, size_t detaillen, hl_codec_reason r,
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

/* ---- reading Avro binary, every step checked ---------------------------- */

/* A zigzag varint of at most 10 bytes (Avro long). */
static inline hl_codec_reason read_long(cur *c, int64_t *v)
{
    uint64_t u = 0;
    for (int i = 0; ; i++) {
        if (i == 10)
            return HL_CODEC_BAD_VARINT;
        if (c->p == c->end)
            return HL_CODEC_TRUNCATED;
        uint8_t b = *c->p++;
        u |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80))
            break;
    }
    *v = (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
    return HL_CODEC_OK;
}

/* A string/bytes length: not negative, and no longer than what is left. */
static inline hl_codec_reason read_len(cur *c, int64_t *n)
{
    hl_codec_reason r = read_long(c, n);
    if (r != HL_CODEC_OK)
        return r;
    if (*n < 0)
        return HL_CODEC_NEGATIVE_LENGTH;
    if (*n > c->end - c->p)
        return HL_CODEC_TRUNCATED;
    return HL_CODEC_OK;
}

static inline hl_codec_reason read_string(cur *c, const char **s, uint32_t *len)
{
    int64_t n;
    hl_codec_reason r = read_len(c, &n);
    if (r != HL_CODEC_OK)
        return r;
    /* Beyond UINT32_MAX the length could not be returned; an id that long is
     * refused by check_event anyway. */
    if (n > UINT32_MAX)
        return HL_CODEC_STRING_TOO_LONG;
    *s = (const char *)c->p;
    *len = (uint32_t)n;
    c->p += n;
    return HL_CODEC_OK;
}

static inline hl_codec_reason skip_bytes(cur *c, int64_t n)
{
    if (n > c->end - c->p)
        return HL_CODEC_TRUNCATED;
    c->p += n;
    return HL_CODEC_OK;
}

/* A union branch index in 0..n-1. */
static inline hl_codec_reason read_branch(cur *c, int64_t n, int64_t *branch)
{
    hl_codec_reason r = read_long(c, branch);
    if (r != HL_CODEC_OK)
        return r;
    return (*branch < 0 || *branch >= n) ? HL_CODEC_BAD_UNION : HL_CODEC_OK;
}

/* The count of one array/map block; a negative count is followed by the
 * block's byte size (Avro spec). 0 ends the array. An item that takes at
 * least one byte makes a count beyond the bytes left a truncation, caught
 * here before anyone loops over it. Items of no bytes (empty_items: null,
 * fixed(0), a record of those) are valid Avro in any number, so they are
 * counted against c->empty_left instead. */
static hl_codec_reason read_block(cur *c, int64_t *count, int empty_items)
{
    int64_t size;
    hl_codec_reason r = read_long(c, count);
    if (r != HL_CODEC_OK)
        return r;
    if (*count < 0) {
        if (*count == INT64_MIN)
            return HL_CODEC_NEGATIVE_LENGTH;
        *count = -*count;
        if ((r = read_long(c, &size)) != HL_CODEC_OK)
            return r;
        if (size < 0)
            return HL_CODEC_NEGATIVE_LENGTH;
    }
    if (empty_items) {
        if (*count > c->empty_left)
            return HL_CODEC_TOO_COMPLEX;
        c->empty_left -= *count;
        return HL_CODEC_OK;
    }
    return *count > c->end - c->p ? HL_CODEC_TRUNCATED : HL_CODEC_OK;
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

/* ---- the resolving path ------------------------------------------------- */

static hl_codec_reason check_value(avro_schema_t s, cur *c, int depth);

/* Does every value of s take zero bytes (null, fixed(0), a record of
 * those)? A schema nested beyond MAX_DEPTH says no, so the walk over its
 * items refuses it by depth. */
static int zero_width(avro_schema_t s, int depth)
{
    if (depth > MAX_DEPTH)
        return 0;
    switch (avro_typeof(s)) {
    case AVRO_NULL:
        return 1;
    case AVRO_FIXED:
        return avro_schema_fixed_size(s) == 0;
    case AVRO_RECORD:
        for (size_t i = 0; i < avro_schema_record_size(s); i++)
            if (!zero_width(avro_schema_record_field_get_by_index(s, (int)i), depth + 1))
                return 0;
        return 1;
    case AVRO_LINK:
        return zero_width(avro_schema_link_target(s), depth + 1);
    default:
        return 0;
    }
}

static hl_codec_reason check_blocks(avro_schema_t items, int is_map, cur *c,
                                    int depth)
{
    int64_t count, n;
    hl_codec_reason r;
    /* A map entry has its key's bytes; zero-byte items have nothing to
     * walk once counted. */
    int empty = !is_map && zero_width(items, depth + 1);
    for (;;) {
        if ((r = read_block(c, &count, empty)) != HL_CODEC_OK || count == 0)
            return r;
        for (int64_t i = 0; i < count && !empty; i++) {
            if (is_map && ((r = read_len(c, &n)) != HL_CODEC_OK ||
                           (r = skip_bytes(c, n)) != HL_CODEC_OK))
                return r;
            if ((r = check_value(items, c, depth + 1)) != HL_CODEC_OK)
                return r;
        }
    }
}

static hl_codec_reason check_record(avro_schema_t s, cur *c, int depth)
{
    size_t n = avro_schema_record_size(s);
    for (size_t i = 0; i < n; i++) {
        avro_schema_t f = avro_schema_record_field_get_by_index(s, (int)i);
        hl_codec_reason r = check_value(f, c, depth + 1);
        if (r != HL_CODEC_OK)
            return r;
    }
    return HL_CODEC_OK;
}

/* Walks one value of writer schema s, checking every varint, length, enum
 * and union index against the bytes left, so that avro-c, which does not
 * check them, only ever reads well-formed data. */
static hl_codec_reason check_value(avro_schema_t s, cur *c, int depth)
{
    int64_t v;
    hl_codec_reason r;

    if (depth > MAX_DEPTH)
        return HL_CODEC_TOO_COMPLEX;
    switch (avro_typeof(s)) {
    case AVRO_NULL:
        return HL_CODEC_OK;
    case AVRO_BOOLEAN:
        return skip_bytes(c, 1);
    case AVRO_INT32:
        if ((r = read_long(c, &v)) != HL_CODEC_OK)
            return r;
        return (v < INT32_MIN || v > INT32_MAX) ? HL_CODEC_BAD_VARINT : HL_CODEC_OK;
    case AVRO_INT64:
        return read_long(c, &v);
    case AVRO_FLOAT:
        return skip_bytes(c, 4);
    case AVRO_DOUBLE:
        return skip_bytes(c, 8);
    case AVRO_STRING:
    case AVRO_BYTES:
        if ((r = read_len(c, &v)) != HL_CODEC_OK)
            return r;
        return skip_bytes(c, v);
    case AVRO_FIXED:
        return skip_bytes(c, avro_schema_fixed_size(s));
    case AVRO_ENUM:
        if ((r = read_long(c, &v)) != HL_CODEC_OK)
            return r;
        return (v < 0 || v >= avro_schema_enum_number_of_symbols(s))
                   ? HL_CODEC_BAD_ENUM : HL_CODEC_OK;
    case AVRO_UNION:
        if ((r = read_branch(c, (int64_t)avro_schema_union_size(s), &v)) != HL_CODEC_OK)
            return r;
        return check_value(avro_schema_union_branch(s, (int)v), c, depth + 1);
    case AVRO_RECORD:
        return check_record(s, c, depth);
    case AVRO_ARRAY:
        return check_blocks(avro_schema_array_items(s), 0, c, depth);
    case AVRO_MAP:
        return check_blocks(avro_schema_map_values(s), 1, c, depth);
    case AVRO_LINK:
        return check_value(avro_schema_link_target(s), c, depth + 1);
    default:
        return HL_CODEC_UNKNOWN_SCHEMA;
    }
}

/* Field F_* of dest, or -1 when the writer lacks it. */
static int get_field(writer *w, int f, avro_value_t *v)
{
    if (w->field[f] < 0)
        return -1;
    return avro_value_get_by_index(&w->dest, (size_t)w->field[f], v, NULL) ? -2 : 0;
}

static int get_id(writer *w, int f, const char **s, uint32_t *len)
{
    avro_value_t v;
    size_t size;
    if (get_field(w, f, &v) != 0 || avro_value_get_string(&v, s, &size))
        return -1;
    *len = size ? (uint32_t)(size - 1) : 0;   /* avro-c counts the NUL */
    return 0;
}

/* Reads dest into ev, with the reader's defaults (VIEW, no weight) for
 * fields the writer lacks. Strings borrow from dest. */
static int extract_event(writer *w, hl_codec_event *ev)
{
    avro_value_t v, branch;
    int type = HL_VIEW, disc = 0, rc;

    if (get_id(w, F_USER, &ev->user, &ev->user_len) ||
        get_id(w, F_ITEM, &ev->item, &ev->item_len) ||
        get_field(w, F_TS, &v) || avro_value_get_long(&v, &ev->ts_ms))
        return -1;
    if ((rc = get_field(w, F_TYPE, &v)) == -2 || (rc == 0 && avro_value_get_enum(&v, &type)))
        return -1;
    if (rc == 0)                  /* the walker checked 0 <= type < n_symbols */
        type = w->type_of[type];
    ev->type = type;
    if ((rc = get_field(w, F_WEIGHT, &v)) == -2 ||
        (rc == 0 && avro_value_get_discriminant(&v, &disc)))
        return -1;
    ev->has_weight = disc == 1;
    ev->weight = 1.0f;
    if (ev->has_weight &&
        (avro_value_get_current_branch(&v, &branch) ||
         avro_value_get_float(&branch, &ev->weight)))
        return -1;
    return 0;
}

static hl_codec_reason decode_resolved(hl_codec *c, writer *w, cur *in,
                                       hl_codec_event *ev, char *detail,
                                       size_t detaillen)
{
    const uint8_t *body = in->p;
    in->empty_left = MAX_EMPTY_ITEMS;
    hl_codec_reason r = check_value(w->schema, in, 0);
    if (r != HL_CODEC_OK)
        return fail(detail, detaillen, r, "%s at byte %td of the body (writer schema id %d)",
                    hl_codec_reason_name(r), in->p - body, (int)w->id);
    if (in->p != in->end)
        return fail(detail, detaillen, HL_CODEC_TRAILING_BYTES,
                    "%td bytes after the record", in->end - in->p);
    avro_value_reset(&w->dest);
    avro_reader_memory_set_source(c->rd, (const char *)body, in->end - body);
    if (avro_value_read(c->rd, &w->resolved) != 0)
        return fail(detail, detaillen, HL_CODEC_UNKNOWN_SCHEMA,
                    "writer schema id %d does not resolve: %s", (int)w->id,
                    avro_strerror());
    if (extract_event(w, ev) != 0)
        return fail(detail, detaillen, HL_CODEC_UNKNOWN_SCHEMA,
                    "writer schema id %d: reading the resolved value: %s",
                    (int)w->id, avro_strerror());
    return HL_CODEC_OK;
}

/* ---- writer schemas by id ----------------------------------------------- */

static void writer_clear(writer *w)
{
    if (w->has_values) {
        avro_value_decref(&w->resolved);
        avro_value_decref(&w->dest);
    }
    if (w->resolver != NULL)
        avro_value_iface_decref(w->resolver);
    if (w->riface != NULL)
        avro_value_iface_decref(w->riface);
    free(w->type_of);
    if (w->rschema != NULL)
        avro_schema_decref(w->rschema);
    if (w->schema != NULL)
        avro_schema_decref(w->schema);
    memset(w, 0, sizeof *w);
}

/* Reads <dir>/<id>.avsc into a malloc'd NUL-terminated string. */
static char *read_schema_file(const char *dir, int32_t id, char *why, size_t whylen)
{
    char path[PATH_MAX];
    char *text = NULL;
    long n;
    FILE *f;

    snprintf(path, sizeof path, "%s/%d.avsc", dir, (int)id);
    if ((f = fopen(path, "rb")) == NULL) {
        hl_err(why, whylen, HL_ENOENT, "no writer schema %s", path);
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || n > MAX_SCHEMA_BYTES ||
        fseek(f, 0, SEEK_SET) != 0 || (text = malloc((size_t)n + 1)) == NULL ||
        fread(text, 1, (size_t)n, f) != (size_t)n) {
        hl_err(why, whylen, HL_ENOENT, "cannot read writer schema %s", path);
        free(text);
        fclose(f);
        return NULL;
    }
    text[n] = '\0';
    fclose(f);
    return text;
}

/* avro-c 1.11 resolves an enum by index, not by symbol, so the writer's own
 * enum stands in for ours in the schema w resolves against, and type_of
 * maps its indexes to our types by symbol name (-1: a symbol we lack). */
static avro_schema_t writer_enum(writer *w)
{
    avro_schema_t e = avro_schema_record_field_get(w->schema, "event_type");
    if (e == NULL || !is_avro_enum(e)) {
        hl_err(w->why, sizeof w->why, HL_EINVAL,
               "writer schema id %d: event_type is not an enum", (int)w->id);
        return NULL;
    }
    w->n_symbols = avro_schema_enum_number_of_symbols(e);
    if ((w->type_of = malloc(sizeof *w->type_of * (size_t)(w->n_symbols + 1))) == NULL) {
        hl_err(w->why, sizeof w->why, HL_ENOMEM, "writer schema id %d: out of memory", (int)w->id);
        return NULL;
    }
    for (int i = 0; i < w->n_symbols; i++) {
        const char *sym = avro_schema_enum_get(e, i);
        w->type_of[i] = sym != NULL ? hl_type_parse(sym, strlen(sym)) : -1;
    }
    return e;
}

/* avro-c 1.11's resolved writer refuses a reader field that the writer
 * lacks, even one with a default. So w resolves against our reader schema
 * minus the fields its writer lacks, and extract_event() fills their
 * defaults. A writer lacking a field without default is refused. */
static int reader_for(hl_codec *c, writer *w)
{
    if (!is_avro_record(w->schema)) {
        hl_err(w->why, sizeof w->why, HL_EINVAL, "writer schema id %d is a %s, not a record",
               (int)w->id, avro_schema_type_name(w->schema));
        return -1;
    }
    w->rschema = avro_schema_record("BehaviourEvent", "halflife");
    if (w->rschema == NULL) {
        hl_err(w->why, sizeof w->why, HL_ENOMEM, "writer schema id %d: %s", (int)w->id,
               avro_strerror());
        return -1;
    }
    for (int f = 0, n = 0; f <= F_CONTEXT; f++) {
        const char *name = avro_schema_record_field_name(c->reader, f);
        w->field[f] = -1;
        if (avro_schema_record_field_get_index(w->schema, name) < 0) {
            if (f == F_USER || f == F_ITEM || f == F_TS) {
                hl_err(w->why, sizeof w->why, HL_EINVAL,
                       "writer schema id %d has no field %s", (int)w->id, name);
                return -1;
            }
            continue;
        }
        avro_schema_t type = avro_schema_record_field_get_by_index(c->reader, f);
        if (f == F_TYPE && (type = writer_enum(w)) == NULL)
            return -1;
        avro_schema_record_field_append(w->rschema, name, type);
        w->field[f] = n++;
    }
    return 0;
}

static void writer_load_once(hl_codec *c, writer *w, int32_t id);

/* writer_load_once, and for a refused id the time to look again: a schema
 * file may be deployed after the first record that needs it, and the
 * worker should not need a restart to see it. */
static void writer_load(hl_codec *c, writer *w, int32_t id)
{
    writer_load_once(c, w, id);
    if (w->kind == W_BAD)
        w->retry_at_ms = hl_now_mono_ms() + RETRY_MS;
}

/* Fills w for id: W_FAST if the writer schema is the reader's, W_RESOLVE if
 * avro-c can resolve it, W_BAD (with w->why) otherwise. */
static void writer_load_once(hl_codec *c, writer *w, int32_t id)
{
    char *text;
    memset(w, 0, sizeof *w);
    w->id = id;
    w->kind = W_BAD;
    if (id < 0) {
        hl_err(w->why, sizeof w->why, HL_EINVAL, "schema id %d is negative", (int)id);
        return;
    }
    if (c->o.schema_fn != NULL) {
        int rc = c->o.schema_fn(c->o.schema_arg, id, &text, w->why, sizeof w->why);
        if (rc == HL_EAGAIN)
            w->kind = W_WAIT;
        if (rc != 0)
            return;
    } else if ((text = read_schema_file(c->schemas_dir, id, w->why, sizeof w->why)) == NULL) {
        /* Id 1 is the schema halflife itself writes (hl_codec_encode_event,
         * halflife produce): built in, so a worker started outside the
         * source tree still reads it. A file of that id overrides it. */
        if (id != EVENT_WRITER_ID || (text = strdup(reader_json)) == NULL)
            return;
    }
    if (avro_schema_from_json_length(text, strlen(text), &w->schema) != 0) {
        hl_err(w->why, sizeof w->why, HL_EINVAL, "writer schema id %d: %s", (int)id, avro_strerror());
        w->schema = NULL;
        free(text);
        return;
    }
    free(text);
    if (avro_schema_equal(w->schema, c->reader)) {
        w->kind = W_FAST;
        return;
    }
    if (reader_for(c, w) != 0)
        return;
    if ((w->resolver = avro_resolved_writer_new(w->schema, w->rschema)) == NULL) {
        hl_err(w->why, sizeof w->why, HL_EINVAL, "writer schema id %d does not resolve: %s",
                 (int)id, avro_strerror());
        return;
    }
    if ((w->riface = avro_generic_class_from_schema(w->rschema)) == NULL ||
        avro_resolved_writer_new_value(w->resolver, &w->resolved) != 0) {
        hl_err(w->why, sizeof w->why, HL_EINVAL, "writer schema id %d: %s", (int)id, avro_strerror());
        return;
    }
    if (avro_generic_value_new(w->riface, &w->dest) != 0) {
        hl_err(w->why, sizeof w->why, HL_EINVAL, "writer schema id %d: %s", (int)id, avro_strerror());
        avro_value_decref(&w->resolved);
        return;
    }
    w->has_values = 1;
    avro_resolved_writer_set_dest(&w->resolved, &w->dest);
    w->kind = W_RESOLVE;
}

/* The cached writer for id, loading it on first use; never NULL. Entries are allocated one by one so a pointer to one (c->last,
 * and avro-c's resolved value pointing at its dest) never moves. Beyond
 * MAX_WRITERS ids, one scratch entry is reloaded per call. */
static writer *writer_find(hl_codec *c, int32_t id)
{
    writer *w;
    if (c->last != NULL && c->last->id == id)
        return c->last;
    for (int i = 0; i < c->n_w; i++)
        if (c->w[i]->id == id)
            return c->last = c->w[i];
    if (c->n_w == c->cap_w && c->cap_w < MAX_WRITERS) {
        int cap = c->cap_w ? c->cap_w * 2 : 8;
        writer **nw = realloc(c->w, (size_t)cap * sizeof *nw);
        if (nw != NULL) {
            c->w = nw;
            c->cap_w = cap;
        }
    }
    if (c->n_w < c->cap_w && (w = malloc(sizeof *w)) != NULL) {
        writer_load(c, w, id);
        c->w[c->n_w++] = w;
        return c->last = w;
    }
    writer_clear(&c->scratch);
    writer_load(c, &c->scratch, id);
    return c->last = &c->scratch;
}

/* writer_find, looking again at a refused id once its retry time has come
 * (or at once with force). */
static writer *writer_get(hl_codec *c, int32_t id, int force)
{
    writer *w = writer_find(c, id);
    if (w->kind == W_WAIT ||
        (w->kind == W_BAD && (force || hl_now_mono_ms() >= w->retry_at_ms))) {
        writer_clear(w);
        writer_load(c, w, id);
    }
    return w;
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
    /* Written so that NaN fails too. */
    if (!(ev->weight >= 0 && ev->weight <= c->o.max_weight))
        return fail(detail, detaillen, HL_CODEC_BAD_WEIGHT,
                    "weight %g outside [0, %g] (event.max.weight)", (double)ev->weight,
                    c->o.max_weight);
    return HL_CODEC_OK;
}

/* The Confluent header: magic 0 and a big-endian schema id. */
static hl_codec_reason read_header(cur *in, int32_t *id, char *detail, size_t detaillen)
{
    if (in->end - in->p < 5)
        return fail(detail, detaillen, HL_CODEC_TOO_SHORT,
                    "%td bytes, Confluent framing needs at least 5", in->end - in->p);
    if (in->p[0] != 0)
        return fail(detail, detaillen, HL_CODEC_BAD_MAGIC,
                    "magic byte is %u, not 0", (unsigned)in->p[0]);
    *id = (int32_t)((uint32_t)in->p[1] << 24 | (uint32_t)in->p[2] << 16 |
                    (uint32_t)in->p[3] << 8 | (uint32_t)in->p[4]);
    in->p += 5;
    return HL_CODEC_OK;
}

hl_codec_reason hl_codec_decode_event(hl_codec *c, const void *buf, size_t len,
                                      hl_codec_event *ev,
                                      char *detail, size_t detaillen)
{
    cur in = { buf, (const uint8_t *)buf + len, 0 };
    writer *w = NULL;
    int32_t id = 0;
    hl_codec_reason r;

    if (buf == NULL || len == 0)
        return fail(detail, detaillen, HL_CODEC_TOO_SHORT, "empty payload");
    if (c->o.input_framing == HL_FRAMING_CONFLUENT) {
        if ((r = read_header(&in, &id, detail, detaillen)) != HL_CODEC_OK)
            return r;
        w = writer_get(c, id, 0);
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
    } else if ((r = decode_resolved(c, w, &in, ev, detail, detaillen)) != HL_CODEC_OK) {
        return r;
    }
    return check_event(c, ev, detail, detaillen);
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
        writer_clear(c->w[i]);
        free(c->w[i]);
    }
    free(c->w);
    writer_clear(&c->scratch);
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
    uint8_t h[5] = { 0, (uint8_t)((uint32_t)id >> 24), (uint8_t)((uint32_t)id >> 16),
                     (uint8_t)((uint32_t)id >> 8), (uint8_t)id };
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

hl_codec_writer_kind hl_codec_writer(hl_codec *c, int32_t id)
{
    writer *w = writer_get(c, id, 1);
    if (w->kind == W_WAIT)
        return HL_CODEC_WRITER_WAIT;
    if (w->kind == W_BAD)
        return HL_CODEC_WRITER_UNKNOWN;
    return w->kind == W_FAST ? HL_CODEC_WRITER_FAST : HL_CODEC_WRITER_RESOLVED;
}
