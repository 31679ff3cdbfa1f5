/* codec_test_util.h - what test_codec.c (round trips, schema evolution,
 * the list encoder) and test_codec_malformed.c (one named reason per kind
 * of malformed payload) share: the temporary schemas directory with its
 * writer schemas, a codec over it, events, and framing a body by hand. */
#ifndef HL_CODEC_TEST_UTIL_H
#define HL_CODEC_TEST_UTIL_H

#include "test.h"
#include "codec.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIN_TS 0
#define MAX_TS 4102444800000LL       /* 2100-01-01 */

static char dir[256];                 /* the temp schemas dir of this run */

/* A writer schema a newer producer might use: fields reordered and an
 * extra optional field (session). */
static const char evolved_json[] =
    "{\"type\":\"record\",\"name\":\"BehaviourEvent\",\"namespace\":\"halflife\","
    "\"fields\":["
    "{\"name\":\"timestamp\",\"type\":{\"type\":\"long\",\"logicalType\":\"timestamp-millis\"}},"
    "{\"name\":\"session\",\"type\":[\"null\",\"string\"],\"default\":null},"
    "{\"name\":\"item_id\",\"type\":\"string\"},"
    "{\"name\":\"user_id\",\"type\":\"string\"},"
    "{\"name\":\"weight\",\"type\":[\"null\",\"float\"],\"default\":null},"
    "{\"name\":\"event_type\",\"type\":{\"type\":\"enum\",\"name\":\"EventType\","
    "\"symbols\":[\"VIEW\",\"CLICK\",\"FAVORITE\",\"ADD_TO_CART\",\"PURCHASE\",\"RATE\"]}},"
    "{\"name\":\"context\",\"type\":[\"null\",{\"type\":\"map\",\"values\":\"string\"}],"
    "\"default\":null}]}";

/* A writer whose enum lists the symbols in another order, plus one the
 * reader does not know (index 0: SHARE). */
static const char enum_json[] =
    "{\"type\":\"record\",\"name\":\"BehaviourEvent\",\"namespace\":\"halflife\","
    "\"fields\":["
    "{\"name\":\"user_id\",\"type\":\"string\"},"
    "{\"name\":\"item_id\",\"type\":\"string\"},"
    "{\"name\":\"event_type\",\"type\":{\"type\":\"enum\",\"name\":\"EventType\","
    "\"symbols\":[\"SHARE\",\"RATE\",\"PURCHASE\",\"ADD_TO_CART\",\"FAVORITE\",\"CLICK\",\"VIEW\"]}},"
    "{\"name\":\"timestamp\",\"type\":\"long\"}]}";

/* A writer with an extra array<null> field: valid Avro whose items take no
 * bytes, so a count alone says how many there are. */
static const char nulls_json[] =
    "{\"type\":\"record\",\"name\":\"BehaviourEvent\",\"namespace\":\"halflife\","
    "\"fields\":["
    "{\"name\":\"user_id\",\"type\":\"string\"},"
    "{\"name\":\"item_id\",\"type\":\"string\"},"
    "{\"name\":\"timestamp\",\"type\":\"long\"},"
    "{\"name\":\"nulls\",\"type\":{\"type\":\"array\",\"items\":\"null\"}}]}";

/* A writer whose last field nests `levels` records, the innermost holding
 * one int. Valid Avro; the walker follows 32 levels. */
static inline char *deep_json(int levels)
{
    size_t cap = 256 + (size_t)levels * 96;
    char *j = malloc(cap);
    size_t n = (size_t)snprintf(j, cap,
        "{\"type\":\"record\",\"name\":\"BehaviourEvent\",\"namespace\":\"halflife\","
        "\"fields\":[{\"name\":\"user_id\",\"type\":\"string\"},"
        "{\"name\":\"item_id\",\"type\":\"string\"},"
        "{\"name\":\"timestamp\",\"type\":\"long\"},{\"name\":\"deep\",\"type\":");
    for (int i = 0; i < levels; i++)
        n += (size_t)snprintf(j + n, cap - n,
                              "{\"type\":\"record\",\"name\":\"R%d\",\"fields\":[{\"name\":\"f\",\"type\":", i);
    n += (size_t)snprintf(j + n, cap - n, "\"int\"");
    for (int i = 0; i < levels; i++)
        n += (size_t)snprintf(j + n, cap - n, "}]}");
    snprintf(j + n, cap - n, "}]}");
    return j;
}

/* A writer whose last field is a record of `width` fields of record R(k-1)
 * (named once, referred to by name after), `levels` deep, R0 holding
 * `width` nulls: width^levels null fields in a few KB, none taking a byte. */
static inline char *wide_json(int levels, int width)
{
    size_t cap = 512 + (size_t)levels * (size_t)width * 48, n;
    char *j = malloc(cap);
    n = (size_t)snprintf(j, cap,
        "{\"type\":\"record\",\"name\":\"BehaviourEvent\",\"namespace\":\"halflife\","
        "\"fields\":[{\"name\":\"user_id\",\"type\":\"string\"},"
        "{\"name\":\"item_id\",\"type\":\"string\"},"
        "{\"name\":\"timestamp\",\"type\":\"long\"},{\"name\":\"pad\",\"type\":");
    for (int l = levels; l > 0; l--)
        n += (size_t)snprintf(j + n, cap - n, "{\"type\":\"record\",\"name\":\"W%d\","
                              "\"fields\":[{\"name\":\"f0\",\"type\":", l);
    n += (size_t)snprintf(j + n, cap - n, "{\"type\":\"record\",\"name\":\"W0\",\"fields\":[");
    for (int k = 0; k < width; k++)
        n += (size_t)snprintf(j + n, cap - n, "%s{\"name\":\"n%d\",\"type\":\"null\"}",
                              k ? "," : "", k);
    n += (size_t)snprintf(j + n, cap - n, "]}");
    for (int l = 1; l <= levels; l++) {
        n += (size_t)snprintf(j + n, cap - n, "}");
        for (int k = 1; k < width; k++)
            n += (size_t)snprintf(j + n, cap - n, ",{\"name\":\"f%d\",\"type\":\"W%d\"}",
                                  k, l - 1);
        n += (size_t)snprintf(j + n, cap - n, "]}");
    }
    snprintf(j + n, cap - n, "}]}");
    return j;
}

/* A writer schema that cannot resolve: user_id is an int. */
static const char incompatible_json[] =
    "{\"type\":\"record\",\"name\":\"BehaviourEvent\",\"namespace\":\"halflife\","
    "\"fields\":[{\"name\":\"user_id\",\"type\":\"int\"}]}";

static inline void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) { perror(path); exit(1); }
    fputs(text, f);
    fclose(f);
}

static inline char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *s;
    long n;
    if (f == NULL) return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    s = malloc((size_t)n + 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n) n = 0;
    s[n] = '\0';
    fclose(f);
    return s;
}

static inline const char *top(void)
{
    const char *t = getenv("HL_TOP");
    return t && *t ? t : ".";
}

/* Temp schemas dir: 1 = our schemas/behaviour_event.avsc, 3 = evolved,
 * 4 = not JSON, 5 = incompatible, 6 = enum reordered, 7 = array<null>,
 * 9 = nested 40 records deep, 10 = 30 deep (8 is test_schema_deployed_later's),
 * 11 = 8^9 null fields (wide_json), 12 = 8^4. */
static inline void make_schemas_dir(void)
{
    char path[512], *be;
    snprintf(dir, sizeof dir, "/tmp/hl_test_codec_XXXXXX");
    if (mkdtemp(dir) == NULL) { perror("mkdtemp"); exit(1); }
    snprintf(path, sizeof path, "%s/schemas/behaviour_event.avsc", top());
    if ((be = slurp(path)) == NULL) { perror(path); exit(1); }
    snprintf(path, sizeof path, "%s/1.avsc", dir);  write_file(path, be);
    snprintf(path, sizeof path, "%s/3.avsc", dir);  write_file(path, evolved_json);
    snprintf(path, sizeof path, "%s/4.avsc", dir);  write_file(path, "{not json");
    snprintf(path, sizeof path, "%s/5.avsc", dir);  write_file(path, incompatible_json);
    snprintf(path, sizeof path, "%s/6.avsc", dir);  write_file(path, enum_json);
    snprintf(path, sizeof path, "%s/7.avsc", dir);  write_file(path, nulls_json);
    char *deep = deep_json(40), *deep_ok = deep_json(30);
    snprintf(path, sizeof path, "%s/9.avsc", dir);  write_file(path, deep);
    snprintf(path, sizeof path, "%s/10.avsc", dir); write_file(path, deep_ok);
    free(deep);
    free(deep_ok);
    char *wide = wide_json(9, 8), *wide_ok = wide_json(4, 8);
    snprintf(path, sizeof path, "%s/11.avsc", dir); write_file(path, wide);
    snprintf(path, sizeof path, "%s/12.avsc", dir); write_file(path, wide_ok);
    free(wide);
    free(wide_ok);
    free(be);
}

static inline void remove_schemas_dir(void)
{
    char path[512];
    for (int id = 1; id <= 12; id++) {
        snprintf(path, sizeof path, "%s/%d.avsc", dir, id);
        unlink(path);
    }
    rmdir(dir);
}

static inline hl_codec *new_codec(hl_framing in)
{
    char err[256];
    hl_codec_opts o = { in, HL_FRAMING_CONFLUENT, dir, 2, MIN_TS, MAX_TS, 0, NULL, NULL, 0 };
    hl_codec *c = hl_codec_create(&o, err, sizeof err);
    if (c == NULL) { printf("codec: %s\n", err); exit(1); }
    return c;
}

static inline hl_codec_event mk_event(const char *user, const char *item, int type,
                               int64_t ts, int has_weight, float weight)
{
    hl_codec_event ev = { user, (uint32_t)strlen(user), item, (uint32_t)strlen(item),
                          type, ts, has_weight ? weight : 1.0f, has_weight };
    return ev;
}

static inline int same_event(const hl_codec_event *a, const hl_codec_event *b)
{
    return a->user_len == b->user_len && !memcmp(a->user, b->user, a->user_len) &&
           a->item_len == b->item_len && !memcmp(a->item, b->item, a->item_len) &&
           a->type == b->type && a->ts_ms == b->ts_ms &&
           a->has_weight == b->has_weight && a->weight == b->weight;
}

/* ---- payloads by hand ---------------------------------------------------- */

/* Builds a Confluent payload: header with id, then body bytes. */
static inline size_t frame(uint8_t *buf, int32_t id, const uint8_t *body, size_t n)
{
    buf[0] = 0;
    buf[1] = (uint8_t)(id >> 24); buf[2] = (uint8_t)(id >> 16);
    buf[3] = (uint8_t)(id >> 8);  buf[4] = (uint8_t)id;
    memcpy(buf + 5, body, n);
    return n + 5;
}

static inline hl_codec_reason decode(hl_codec *c, const uint8_t *buf, size_t n)
{
    hl_codec_event ev;
    char detail[256] = "";
    hl_codec_reason r = hl_codec_decode_event(c, buf, n, &ev, detail, sizeof detail);
    if (r != HL_CODEC_OK && detail[0] == '\0')
        printf("    (no detail for %s)\n", hl_codec_reason_name(r));
    return r;
}

/* Expect reason want for body under writer id. */
#define EXPECT(c, id, want, ...) do {                                        \
    const uint8_t body_[] = { __VA_ARGS__ };                                 \
    uint8_t buf_[512];                                                       \
    size_t n_ = frame(buf_, (id), body_, sizeof body_);                      \
    hl_codec_reason got_ = decode((c), buf_, n_);                            \
    CHECKF(got_ == (want), "id %d: got %s, want %s", (int)(id),              \
           hl_codec_reason_name(got_), hl_codec_reason_name(want));          \
} while (0)

/* A good body under id 1: user "u", item "i", CLICK, ts 1000, weight 2.0, no context. */
#define GOOD1 0x02,'u', 0x02,'i', 0x02, 0xd0,0x0f, 0x02, 0,0,0,0x40, 0x00

#endif
