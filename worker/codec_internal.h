/* codec_internal.h - the codec's state and its checked Avro reader,
 * shared by codec.c (the fast path, decode, encode) and codec_writer.c
 * (writer schemas by id and the resolving path) and by nothing else
 * (STYLE.md section 2: private to the codec). Not codec_item.c: it reads
 * its own schema with its own reasons.
 *
 * The readers are static inline: the fast path calls them per field, as it
 * did when they were file-local. */
#ifndef HL_CODEC_INTERNAL_H
#define HL_CODEC_INTERNAL_H

#include "codec.h"
#include "framing.h"

#include <avro.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

/* Reader field indexes, in the order above. */
enum { F_USER, F_ITEM, F_TYPE, F_TS, F_WEIGHT, F_CONTEXT };

#define EVENT_WRITER_ID   1         /* the id hl_codec_encode_event writes */
#define MAX_WRITERS       256       /* cached ids; more are loaded per call */
#define MAX_WRITER_TEXT   (2 << 20) /* schema text behind the cached writers
                                       (codec_writer.c's fit() says why) */
#define MAX_DEPTH         32        /* nesting the walker follows */
#define MAX_EMPTY_ITEMS   4096      /* zero-byte array items per record */
#define MAX_FREE_NODES    65536     /* schema nodes per record beyond its bytes */
#define RETRY_MS          5000      /* a refused id is looked up again after */
#define TEXT_RETRY_MS     30000     /* a registry's text refused (codec_writer.c's */
#define TEXT_RETRY_MAX_MS 300000    /* writer_load): looked at again after, doubling */

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
    int64_t             retry_wait_ms;/* W_BAD: the wait that set retry_at_ms */
    int                 text_refused; /* W_BAD: schema_fn gave a text, refused */
    size_t              text_bytes;   /* W_FAST, W_RESOLVE: the text schema was
                                         parsed from, its share of MAX_WRITER_TEXT */
    uint64_t            used;         /* c->uses when it last became c->last */
} writer;

struct hl_codec {
    hl_codec_opts       o;
    int64_t             ts_limit_ms;  /* newest accepted event time: max_ts_ms,
                                         or the clock + max_future_ms if less */
    int64_t             max_future_ms;/* hl_codec_set_clock's, for the detail */
    char               *schemas_dir;
    avro_schema_t       reader;
    avro_value_iface_t *reader_iface;
    avro_reader_t       rd;
    writer            **w;            /* cached ids, n_w of cap_w */
    int                 n_w, cap_w;
    writer             *last;         /* the id seen last: one-entry fast cache */
    uint64_t            uses;         /* times c->last changed: writer.used's clock */
    writer              scratch;      /* an id loaded when the cache is full */
};

/* A read position in a payload; empty_left is what the walker still
 * accepts of zero-byte array items (the fast path reads no such array),
 * nodes_left how many more schema nodes it visits for this record. */
typedef struct cur {
    const uint8_t *p, *end;
    int64_t        empty_left, nodes_left;
} cur;

/* Writes a sentence into detail (if any) and returns r, like hl_err(). */
static inline hl_codec_reason fail(char *detail, size_t detaillen, hl_codec_reason r,
                            const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static inline hl_codec_reason fail(char *detail, size_t detaillen, hl_codec_reason r,
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
    hl_varint_result r = hl_avro_read_long(&c->p, c->end, v);
    return r == HL_VARINT_OK ? HL_CODEC_OK
         : r == HL_VARINT_TRUNCATED ? HL_CODEC_TRUNCATED : HL_CODEC_BAD_VARINT;
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
static inline hl_codec_reason read_block(cur *c, int64_t *count, int empty_items)
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

/* ---- writer schemas (codec_writer.c) ------------------------------------ */

/* The cached writer for id, loading it on first use and looking again at a
 * refused id once its retry time has come (or at once with force); never
 * NULL. The pointer stays valid until the next call. */
writer *hl_codec_writer_get(hl_codec *c, int32_t id, int force);
/* Frees what w holds and zeroes it (the codec frees w itself). */
void    hl_codec_writer_clear(writer *w);
/* Decodes the body at in (a W_RESOLVE writer's record) into ev, the
 * semantic checks aside (check_event). */
hl_codec_reason hl_codec_decode_resolved(hl_codec *c, writer *w, cur *in,
                                         hl_codec_event *ev, char *detail,
                                         size_t detaillen);

#endif
