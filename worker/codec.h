/* codec.h - Avro bytes <-> events and lists (DESIGN.md section 3), with avro-c.
 *
 * Decoding never trusts its input: every way a payload can be wrong is a
 * named hl_codec_reason returned to the caller, never a crash. A codec is
 * used by one thread at a time (it holds avro-c readers and scratch space);
 * each worker thread creates its own. */
#ifndef HL_CODEC_H
#define HL_CODEC_H

#include "hl.h"

typedef enum hl_codec_reason {
    HL_CODEC_WAIT = -1,          /* not a bad record: its writer schema is being
                                    fetched (schema_fn said HL_EAGAIN); decode
                                    it again later */
    HL_CODEC_OK = 0,
    HL_CODEC_TOO_SHORT,          /* fewer bytes than the framing needs */
    HL_CODEC_BAD_MAGIC,          /* Confluent framing: byte 0 is not 0 */
    HL_CODEC_UNKNOWN_SCHEMA,     /* no such writer schema id (no schemas.dir/<id>.avsc,
                                    or the registry has none), or it does not resolve */
    HL_CODEC_TRUNCATED,          /* the Avro body ends early (incl. truncated varint) */
    HL_CODEC_BAD_VARINT,         /* a varint longer than 10 bytes */
    HL_CODEC_NEGATIVE_LENGTH,    /* a string/bytes/array/map length below 0 */
    HL_CODEC_STRING_TOO_LONG,    /* an id outside 1..HL_MAX_ID_LEN bytes */
    HL_CODEC_BAD_TIMESTAMP,      /* outside [codec opts min, max] */
    HL_CODEC_BAD_ENUM,           /* event_type index outside the enum */
    HL_CODEC_BAD_UNION,          /* a union branch index out of range */
    HL_CODEC_BAD_WEIGHT,         /* weight NaN, infinite, negative or above max_weight */
    HL_CODEC_TRAILING_BYTES,     /* bytes left after the record */
    HL_CODEC_BAD_UTF8,           /* user_id or item_id is not valid UTF-8 */
    HL_CODEC_TOO_COMPLEX,        /* valid Avro beyond the walker's limits: nested
                                    deeper than 32 levels, or more than 4096
                                    zero-byte array items (array<null>) */
    HL_CODEC_N_REASONS
} hl_codec_reason;

/* snake_case name of a reason ("too_short"), as used in metrics and DLQ
 * headers. */
const char *hl_codec_reason_name(hl_codec_reason r);

typedef enum { HL_FRAMING_CONFLUENT, HL_FRAMING_RAW } hl_framing;

/* Where writer schemas come from when not from schemas_dir (a Schema
 * Registry: schema_store.h). 0 and *text (malloc'd, the codec frees it);
 * HL_EAGAIN: not known yet, the record waits (HL_CODEC_WAIT); any other
 * code: no such id (unknown_schema), why says so. Called from the
 * codec's thread; must not block. */
typedef int (*hl_codec_schema_fn)(void *arg, int32_t id, char **text,
                                  char *why, size_t whylen);

typedef struct hl_codec_opts {
    hl_framing  input_framing;     /* input.format */
    hl_framing  output_framing;    /* output.format */
    const char *schemas_dir;       /* writer schemas by id: <dir>/<id>.avsc */
    int32_t     output_schema_id;  /* output.schema.id, or the registry's id */
    int64_t     min_ts_ms, max_ts_ms; /* accepted event times */
    double      max_weight;        /* event.max.weight: larger weights are
                                      bad_weight; 0 means
                                      HL_CODEC_DEFAULT_MAX_WEIGHT */
    hl_codec_schema_fn schema_fn;  /* set: writer schemas come from it, not
                                      from schemas_dir (and id 1 is not built
                                      in: ids are the registry's) */
    void       *schema_arg;
    int32_t     event_schema_id;   /* the id hl_codec_encode_event writes;
                                      0 means 1 (schemas/1.avsc) */
} hl_codec_opts;

/* event.max.weight's default (hl.h says why that value). */
#define HL_CODEC_DEFAULT_MAX_WEIGHT HL_EVENT_MAX_WEIGHT

typedef struct hl_codec hl_codec;  /* opaque */

/* Fails (NULL, errbuf) on min_ts_ms > max_ts_ms or a max_weight that is
 * not a finite number >= 0. */
hl_codec *hl_codec_create(const hl_codec_opts *o, char *errbuf, size_t errlen);
void      hl_codec_destroy(hl_codec *c);                 /* NULL is a no-op */

/* A decoded BehaviourEvent. Strings point into the payload or the codec's
 * scratch space: valid until the next decode on this codec. */
typedef struct hl_codec_event {
    const char *user;  uint32_t user_len;
    const char *item;  uint32_t item_len;
    int         type;          /* HL_VIEW.. */
    int64_t     ts_ms;
    float       weight;        /* 1 when the field is null */
    int         has_weight;
} hl_codec_event;

/* Events dated more than max_future_ms (event.max.future.ms; 0: no
 * bound) after wall_ms (ms since 1970) are bad_timestamp from now on.
 * The caller reads the clock once per batch so the decoder reads none.
 * Until the first call only min_ts_ms and max_ts_ms bound event times. */
void hl_codec_set_clock(hl_codec *c, int64_t wall_ms, int64_t max_future_ms);

/* Decodes one Kafka message value. HL_CODEC_OK and *ev filled, or a reason;
 * detail (may be NULL) gets a human sentence for logs. */
hl_codec_reason hl_codec_decode_event(hl_codec *c, const void *buf, size_t len,
                                      hl_codec_event *ev,
                                      char *detail, size_t detaillen);

/* How payloads with Confluent schema id `id` are decoded (loading the writer
 * schema if it is not cached yet): HL_CODEC_WRITER_FAST when the writer
 * schema equals our reader schema (the hand-checked decoder),
 * HL_CODEC_WRITER_RESOLVED when avro-c resolves it, HL_CODEC_WRITER_UNKNOWN
 * when it is missing or does not resolve (payloads get
 * HL_CODEC_UNKNOWN_SCHEMA). For logs and tests. Writer schemas are cached
 * per id, up to 256 ids and 2 MiB of the schema text they were parsed
 * from (the ids used least lately give way, loaded again when used); an
 * id found missing or broken is looked up again by the decoder
 * at most every 5 s (a schema file deployed late is picked up without a
 * restart; a schema_fn's text that the codec refuses, after 30 s doubling
 * to 5 min: the text does not change), and by this call every time. */
typedef enum {
    HL_CODEC_WRITER_UNKNOWN, HL_CODEC_WRITER_FAST, HL_CODEC_WRITER_RESOLVED,
    HL_CODEC_WRITER_WAIT        /* schema_fn does not know yet (HL_EAGAIN) */
} hl_codec_writer_kind;
hl_codec_writer_kind hl_codec_writer(hl_codec *c, int32_t id);

/* The longest writer schema text taken, from a file or a registry: a
 * schema's parsed form is many times its text (avro-c: up to about 40
 * times, for a record of small unions), and each codec keeps up to 256. */
#define HL_CODEC_MAX_SCHEMA_BYTES (1 << 20)

/* <dir>/<id>.avsc, a writer schema file, as a malloc'd NUL-terminated
 * string (the caller frees it); NULL, with why saying so, when it is
 * absent, unreadable or over HL_CODEC_MAX_SCHEMA_BYTES. Shared with
 * schema_store.c's fallback directory, so both read a schema file alike. */
char *hl_codec_schema_file(const char *dir, int32_t id, char *why, size_t whylen);

/* The reader schema's JSON (schemas/behaviour_event.avsc): what
 * `halflife produce` registers. */
const char *hl_codec_event_schema(void);
/* schemas/recommendation_list.avsc's JSON: what the worker registers. */
const char *hl_codec_list_schema(void);

/* Encodes one BehaviourEvent (for `halflife produce` and tests) in the input
 * framing with writer schema id event_schema_id (1 by default). Returns bytes written into out, or a
 * negative HL_E* (HL_EFULL if cap is too small). */
int hl_codec_encode_event(hl_codec *c, const hl_codec_event *ev,
                          void *out, size_t cap);

/* One item of a RecommendationList. */
typedef struct hl_codec_rec {
    const char *item;     uint32_t item_len;
    float       score;
    const char *because;  uint32_t because_len;   /* NULL: null */
} hl_codec_rec;

typedef struct hl_codec_list {
    const char *user;  uint32_t user_len;
    int64_t     generated_at_ms;   /* the event time the list reflects */
    const char *model_version;
    const hl_codec_rec *items;  int n_items;
    const char *src_topic;  int32_t src_partition;  int64_t src_offset;
} hl_codec_list;

/* Encodes a RecommendationList in the output framing. Returns bytes written
 * into out, or a negative HL_E* (HL_EFULL if cap is too small). */
int hl_codec_encode_list(hl_codec *c, const hl_codec_list *l,
                         void *out, size_t cap);

#endif
