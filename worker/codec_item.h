/* codec_item.h - Avro bytes <-> ItemUpdate (schemas/item_update.avsc), the
 * records of the item topic (DESIGN.md section 11), in the same framings
 * as the events (input.format).
 *
 * Decoding never trusts its input: every way a record can be wrong is a
 * named reason, counted and dead-lettered by the caller. The writer schema
 * must be ours: Confluent framing with items.schema.id (schemas/3.avsc), or
 * raw; with a Schema Registry the reader (items.c) checks the id's schema
 * with hl_item_schema_is_ours and then decodes with that id. Schema
 * resolution of other writer schemas is not done for item updates (such
 * records are unknown_schema). No state: any thread. */
#ifndef HL_CODEC_ITEM_H
#define HL_CODEC_ITEM_H

#include "catalogue.h"
#include "codec.h"

typedef enum hl_item_reason {
    HL_ITEM_OK = 0,
    HL_ITEM_TOO_SHORT,          /* fewer bytes than the framing needs */
    HL_ITEM_BAD_MAGIC,          /* Confluent framing: byte 0 is not 0 */
    HL_ITEM_UNKNOWN_SCHEMA,     /* a schema id other than items.schema.id */
    HL_ITEM_TRUNCATED,          /* the Avro body ends early */
    HL_ITEM_BAD_VARINT,         /* a varint longer than 10 bytes */
    HL_ITEM_NEGATIVE_LENGTH,    /* a string length below 0 */
    HL_ITEM_STRING_TOO_LONG,    /* item_id outside 1..HL_MAX_ID_LEN bytes */
    HL_ITEM_BAD_UTF8,           /* item_id (or the key) is not UTF-8 */
    HL_ITEM_BAD_UNION,          /* a union branch index out of range */
    HL_ITEM_BAD_BOOLEAN,        /* available is neither 0 nor 1 */
    HL_ITEM_BAD_DIM,            /* e_in or e_out does not hold the model's dim floats */
    HL_ITEM_NOT_FINITE,         /* NaN or infinity in e_in, e_out or bias */
    HL_ITEM_BAD_TIMESTAMP,      /* expires_at outside event.min.ts.ms..event.max.ts.ms */
    HL_ITEM_TRAILING_BYTES,     /* bytes left after the record */
    HL_ITEM_BAD_KEY,            /* the key is missing or is not the item_id
                                   (compaction would keep the wrong record) */
    HL_ITEM_CATALOGUE_FULL,     /* valid, but catalogue.max.new.items is reached */
    HL_ITEM_BAD_FOLDIN,         /* foldin.events below 1, or foldin without an embedding */
    HL_ITEM_OUT_OF_RANGE,       /* a finite value beyond +-HL_MODEL_MAX_ABS (model.h)
                                   in e_in, e_out or bias */
    HL_ITEM_N_REASONS
} hl_item_reason;

/* snake_case name of a reason, as used in metrics and DLQ headers. */
const char *hl_item_reason_name(hl_item_reason r);

typedef struct hl_item_codec_opts {
    hl_framing framing;             /* input.format */
    int32_t    schema_id;           /* items.schema.id (Confluent framing) */
    int        dim;                 /* the model's */
    int64_t    min_ts_ms, max_ts_ms;/* accepted expires_at */
} hl_item_codec_opts;

/* The fold-in key of an item: the byte 0xFF, "foldin:", then the item_id.
 * A worker's fold-in records go under it, an operator's under the item_id,
 * so compaction keeps the newest of each and the catalogue decides which
 * is in effect (catalogue.h, "Two keys"). No item_id can be one: 0xFF is
 * never in UTF-8. */
#define HL_ITEM_FOLDIN_KEY     "\xff" "foldin:"
#define HL_ITEM_FOLDIN_KEY_LEN 8
#define HL_ITEM_KEY_MAX        (HL_ITEM_FOLDIN_KEY_LEN + HL_MAX_ID_LEN)

/* The header of a worker's eviction tombstone under a fold-in key: the
 * offset, in decimal, of the record it evicts, in the tombstone's own
 * partition. A reader ignores the tombstone when it holds a newer record
 * of the key (core/catalogue.h, "A stale tombstone"). */
#define HL_ITEM_EVICTS_HEADER  "halflife.evicts.offset"

/* Writes id's fold-in key into out (room for HL_ITEM_KEY_MAX bytes);
 * returns its length. */
uint32_t hl_item_foldin_key(const char *id, uint32_t len, char *out);

/* Decodes one record of the item topic: key (the item id, or its fold-in
 * key, which only a fold-in record or a tombstone may have) and value
 * (NULL or empty: a tombstone). HL_ITEM_OK and *u filled (foldin_key
 * says which key), or a reason and a sentence in detail (may be NULL).
 * u's id points into key or buf; its vectors into vec, room for 2 * dim
 * floats. A fold-in record under the item_id (what workers wrote before
 * the fold-in key) still reads, as such. */
hl_item_reason hl_item_decode(const hl_item_codec_opts *o, const void *key, size_t key_len,
                              const void *buf, size_t len, float *vec,
                              hl_item_update *u, char *detail, size_t detaillen);

/* schemas/item_update.avsc's JSON: what `halflife items` registers. */
const char *hl_item_schema(void);

/* 0 when text (a writer schema's JSON, e.g. from a registry) is our
 * ItemUpdate schema, so hl_item_decode reads its records; HL_EFORMAT and a
 * sentence in why when it is not, or is not an Avro schema. */
int hl_item_schema_is_ours(const char *text, char *why, size_t whylen);

/* Encodes u (not a tombstone: that is a null value) in o's framing.
 * Returns bytes written into out, or HL_EFULL when cap is too small. */
int hl_item_encode(const hl_item_codec_opts *o, const hl_item_update *u,
                   void *out, size_t cap);

#endif
