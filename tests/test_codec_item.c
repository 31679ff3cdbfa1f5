/* test_codec_item.c - ItemUpdate records (worker/codec_item.c): what the
 * encoder writes decodes to the same update in both framings, a tombstone
 * is a null value, and every way a record can be wrong gets its own
 * reason, including every truncation of a valid record (never a crash,
 * never a read past the end: run under SAN=1). Cross-checked against
 * python3-avro in tests/integration/test_items.py. */
#define T_SUITE "codec_item"
#include "test.h"
#include "codec_item.h"
#include "model.h"

#include <math.h>

#define DIM 4

static const hl_item_codec_opts conf = {.framing = HL_FRAMING_CONFLUENT, .schema_id = 3,
                                        .dim = DIM, .min_ts_ms = 0, .max_ts_ms = 4102444800000};

static hl_item_reason dec(const hl_item_codec_opts *o, const char *key, const uint8_t *b,
                          size_t n, hl_item_update *u)
{
    static float vec[2 * DIM];
    char detail[256];
    return hl_item_decode(o, key, key ? strlen(key) : 0, b, n, vec, u, detail, sizeof detail);
}

static void test_round_trip(void)
{
    float ein[DIM] = {1, -2, 3.5f, 0}, eout[DIM] = {0.25f, 8, -1, 2};
    uint8_t buf[512];
    hl_item_update in = {.id = "sku-1", .id_len = 5, .available = 0,
                         .expires_at_ms = 1700000000000, .e_in = ein, .e_out = eout,
                         .bias = 0.5f}, out;
    for (int f = 0; f < 2; f++) {
        hl_item_codec_opts o = conf;
        o.framing = f ? HL_FRAMING_RAW : HL_FRAMING_CONFLUENT;
        int n = hl_item_encode(&o, &in, buf, sizeof buf);
        CHECK(n > 0);
        CHECK(dec(&o, "sku-1", buf, (size_t)n, &out) == HL_ITEM_OK);
        CHECK(out.id_len == 5 && memcmp(out.id, "sku-1", 5) == 0 && !out.tombstone);
        CHECK(out.available == 0 && out.expires_at_ms == 1700000000000 && out.bias == 0.5f);
        CHECK(out.e_in && out.e_out && memcmp(out.e_in, ein, sizeof ein) == 0 &&
              memcmp(out.e_out, eout, sizeof eout) == 0);
    }
    hl_item_update plain = {.id = "x", .id_len = 1, .available = 1,
                            .expires_at_ms = HL_CATALOGUE_NO_EXPIRY};
    int n = hl_item_encode(&conf, &plain, buf, sizeof buf);
    CHECK(n == 5 + 2 + 1 + 1 + 1 + 1);      /* header, id, boolean, three null branches */
    CHECK(dec(&conf, "x", buf, (size_t)n, &out) == HL_ITEM_OK);
    CHECK(out.available == 1 && out.expires_at_ms == HL_CATALOGUE_NO_EXPIRY && !out.e_out);
    CHECK(hl_item_encode(&conf, &in, buf, 20) == HL_EFULL);
}

static void test_tombstone(void)
{
    hl_item_update u;
    CHECK(dec(&conf, "gone", NULL, 0, &u) == HL_ITEM_OK && u.tombstone && u.id_len == 4);
    CHECK(dec(&conf, NULL, NULL, 0, &u) == HL_ITEM_BAD_KEY);
    CHECK(dec(&conf, "\xff\xfe", NULL, 0, &u) == HL_ITEM_BAD_UTF8);
}

/* A record built by hand: header, then the given body bytes. */
static size_t rec(uint8_t *b, const uint8_t *body, size_t n)
{
    memcpy(b, "\0\0\0\0\3", 5);
    memcpy(b + 5, body, n);
    return n + 5;
}

static void test_each_reason(void)
{
    uint8_t b[256];
    hl_item_update u;
    CHECK(dec(&conf, "a", (const uint8_t *)"\0\0", 2, &u) == HL_ITEM_TOO_SHORT);
    CHECK(dec(&conf, "a", (const uint8_t *)"\1\0\0\0\3\2a\1\0\0", 10, &u) == HL_ITEM_BAD_MAGIC);
    CHECK(dec(&conf, "a", (const uint8_t *)"\0\0\0\0\4\2a\1\0\0", 10, &u) == HL_ITEM_UNKNOWN_SCHEMA);
    CHECK(dec(&conf, "a", b, rec(b, (const uint8_t *)"\2a\1\0\0", 5), &u) == HL_ITEM_OK);
    CHECK(dec(&conf, "b", b, rec(b, (const uint8_t *)"\2a\1\0\0", 5), &u) == HL_ITEM_BAD_KEY);
    CHECK(dec(&conf, "a", b, rec(b, (const uint8_t *)"\2a\1\0\0\0", 6), &u) == HL_ITEM_OK);
    CHECK(dec(&conf, "a", b, rec(b, (const uint8_t *)"\2a\1\0\0\0\0", 7), &u) == HL_ITEM_TRAILING_BYTES);
    CHECK(dec(&conf, "a", b, rec(b, (const uint8_t *)"\2a\1\0\0\4", 6), &u) == HL_ITEM_BAD_UNION);
    CHECK(dec(&conf, "a", b, rec(b, (const uint8_t *)"\2a\1\0\0\2\2", 7), &u) == HL_ITEM_BAD_FOLDIN);
    CHECK(dec(&conf, "a", b, rec(b, (const uint8_t *)"\1a", 2), &u) == HL_ITEM_NEGATIVE_LENGTH);
    CHECK(dec(&conf, "a", b, rec(b, (const uint8_t *)"\0", 1), &u) == HL_ITEM_STRING_TOO_LONG);
    CHECK(dec(&conf, "a", b, rec(b, (const uint8_t *)"\2\xff\1\0\0", 5), &u) == HL_ITEM_BAD_UTF8);
    CHECK(dec(&conf, "a", b, rec(b, (const uint8_t *)"\2a\2\0\0", 5), &u) == HL_ITEM_BAD_BOOLEAN);
    CHECK(dec(&conf, "a", b, rec(b, (const uint8_t *)"\2a\1\4\0", 5), &u) == HL_ITEM_BAD_UNION);
    CHECK(dec(&conf, "a", b, rec(b, (const uint8_t *)"\2a\1\0\3", 5), &u) == HL_ITEM_BAD_UNION);
    CHECK(dec(&conf, "a", b, rec(b, (const uint8_t *)"\2a\1\2\1\0", 6), &u) == HL_ITEM_BAD_TIMESTAMP);
    CHECK(dec(&conf, "a", b, rec(b, (const uint8_t *)"\2a\1\2\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
                                 15), &u) == HL_ITEM_BAD_VARINT);
    /* embedding: e_in with 3 floats (dim 4) */
    uint8_t body[128] = {2, 'a', 1, 0, 2, 6};
    size_t n = 6;
    memset(body + n, 0, 12);
    n += 12;
    body[n++] = 0;
    CHECK(dec(&conf, "a", b, rec(b, body, n), &u) == HL_ITEM_BAD_DIM);
    body[5] = 10;                                        /* 5 floats in one block */
    CHECK(dec(&conf, "a", b, rec(b, body, n), &u) == HL_ITEM_BAD_DIM);
    body[5] = 0x01;                                      /* count -1: byte size follows */
    CHECK(dec(&conf, "a", b, rec(b, body, 6), &u) == HL_ITEM_TRUNCATED);
    uint8_t huge[] = {2, 'a', 1, 0, 2, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    CHECK(dec(&conf, "a", b, rec(b, huge, sizeof huge), &u) == HL_ITEM_BAD_DIM);
    uint8_t huge_neg[] = {2, 'a', 1, 0, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    CHECK(dec(&conf, "a", b, rec(b, huge_neg, sizeof huge_neg), &u) == HL_ITEM_BAD_DIM);
}

static void test_not_finite_and_truncations(void)
{
    float ein[DIM] = {1, 2, 3, 4}, eout[DIM] = {1, 2, NAN, 4};
    uint8_t buf[256];
    hl_item_update in = {.id = "n", .id_len = 1, .available = 1,
                         .expires_at_ms = 5, .e_in = ein, .e_out = eout, .bias = 0}, u;
    int n = hl_item_encode(&conf, &in, buf, sizeof buf);
    CHECK(dec(&conf, "n", buf, (size_t)n, &u) == HL_ITEM_NOT_FINITE);
    eout[2] = 3;
    in.bias = INFINITY;
    n = hl_item_encode(&conf, &in, buf, sizeof buf);
    CHECK(dec(&conf, "n", buf, (size_t)n, &u) == HL_ITEM_NOT_FINITE);
    in.bias = -257;                          /* finite, past the model's bound */
    n = hl_item_encode(&conf, &in, buf, sizeof buf);
    CHECK(dec(&conf, "n", buf, (size_t)n, &u) == HL_ITEM_OUT_OF_RANGE);
    in.bias = 1;
    ein[1] = nextafterf(HL_MODEL_MAX_ABS, INFINITY);
    n = hl_item_encode(&conf, &in, buf, sizeof buf);
    CHECK(dec(&conf, "n", buf, (size_t)n, &u) == HL_ITEM_OUT_OF_RANGE);
    ein[1] = -HL_MODEL_MAX_ABS;              /* at the bound: accepted */
    n = hl_item_encode(&conf, &in, buf, sizeof buf);
    CHECK(dec(&conf, "n", buf, (size_t)n, &u) == HL_ITEM_OK);
    ein[1] = 2;
    n = hl_item_encode(&conf, &in, buf, sizeof buf);
    CHECK(dec(&conf, "n", buf, (size_t)n, &u) == HL_ITEM_OK);
    for (int cut = 1; cut < n; cut++) {
        uint8_t *copy = malloc((size_t)cut);     /* exact size: SAN sees any overread */
        memcpy(copy, buf, (size_t)cut);
        hl_item_reason r = dec(&conf, "n", copy, (size_t)cut, &u);
        if (cut == n - 1)           /* without the foldin branch: a record of the schema
                                       before that field, read as an operator's */
            CHECK(r == HL_ITEM_OK && u.foldin_events == 0);
        else
            CHECKF(r == HL_ITEM_TRUNCATED || r == HL_ITEM_TOO_SHORT || r == HL_ITEM_BAD_DIM,
                   "cut at %d: %s", cut, hl_item_reason_name(r));
        free(copy);
    }
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    static char buf[8192];
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    return n > 0 ? buf : NULL;
}

/* The built-in schema (what `halflife items` registers and what a
 * registry's writer schema is compared with) is schemas/item_update.avsc,
 * and the comparison refuses any other schema and anything not a schema. */
static void test_schema_is_ours(void)
{
    char path[512], why[256];
    const char *t = getenv("HL_TOP");
    snprintf(path, sizeof path, "%s/schemas/item_update.avsc", t && *t ? t : ".");
    char *file = slurp(path);
    CHECKF(file != NULL, "cannot read %s (run from the repository top or set HL_TOP)", path);
    if (file != NULL)
        CHECKF(hl_item_schema_is_ours(file, why, sizeof why) == 0, "%s", why);
    CHECK(hl_item_schema_is_ours(hl_item_schema(), why, sizeof why) == 0);
    /* the same name with fewer fields: another layout */
    const char *other = "{\"type\":\"record\",\"name\":\"ItemUpdate\",\"namespace\":"
        "\"halflife\",\"fields\":[{\"name\":\"item_id\",\"type\":\"string\"},"
        "{\"name\":\"available\",\"type\":\"boolean\"}]}";
    CHECK(hl_item_schema_is_ours(other, why, sizeof why) == HL_EFORMAT);
    CHECK(strstr(why, "item_update.avsc") != NULL);
    CHECK(hl_item_schema_is_ours("{not json", why, sizeof why) == HL_EFORMAT);
    CHECK(strstr(why, "not an Avro schema") != NULL);
}

/* The foldin field (added with a default: records written before it end
 * after the embedding and read as an operator's). */
static void test_foldin_field(void)
{
    float ein[DIM] = {1, 2, 3, 4}, eout[DIM] = {4, 3, 2, 1};
    uint8_t buf[256];
    hl_item_update in = {.id = "new", .id_len = 3, .available = 1,
                         .expires_at_ms = HL_CATALOGUE_NO_EXPIRY, .e_in = ein, .e_out = eout,
                         .bias = 0.25f, .foldin_events = 300}, u;
    for (int f = 0; f < 2; f++) {
        hl_item_codec_opts o = conf;
        o.framing = f ? HL_FRAMING_RAW : HL_FRAMING_CONFLUENT;
        int n = hl_item_encode(&o, &in, buf, sizeof buf);
        CHECK(n > 0 && dec(&o, "new", buf, (size_t)n, &u) == HL_ITEM_OK);
        CHECK(u.foldin_events == 300 && u.e_out && u.bias == 0.25f);
    }
    in.e_in = in.e_out = NULL;       /* fold-in without an embedding: refused */
    int n = hl_item_encode(&conf, &in, buf, sizeof buf);
    CHECK(n > 0 && dec(&conf, "new", buf, (size_t)n, &u) == HL_ITEM_BAD_FOLDIN);
    uint8_t old[] = {2, 'a', 1, 0, 0};   /* the schema before the field */
    CHECK(dec(&conf, "a", buf, rec(buf, old, sizeof old), &u) == HL_ITEM_OK &&
          u.foldin_events == 0);
}

/* A fold-in record goes under the item's fold-in key (0xFF "foldin:" id):
 * it decodes with foldin_key set and the id after the prefix; an
 * operator's record may not use that key; a tombstone under it names the
 * item; a fold-in record under the item_id (older workers) still reads. */
static void test_foldin_key(void)
{
    float ein[DIM] = {1, 2, 3, 4}, eout[DIM] = {4, 3, 2, 1};
    uint8_t buf[256];
    char key[HL_ITEM_KEY_MAX + 1] = {0};
    hl_item_update in = {.id = "new", .id_len = 3, .available = 1,
                         .expires_at_ms = HL_CATALOGUE_NO_EXPIRY, .e_in = ein, .e_out = eout,
                         .bias = 0.5f, .foldin_events = 7}, u;
    uint32_t kl = hl_item_foldin_key("new", 3, key);
    CHECK(kl == 11 && (uint8_t)key[0] == 0xFF && memcmp(key + 1, "foldin:new", 10) == 0);
    int n = hl_item_encode(&conf, &in, buf, sizeof buf);
    CHECK(n > 0 && dec(&conf, key, buf, (size_t)n, &u) == HL_ITEM_OK);
    CHECK(u.foldin_key == 1 && u.id_len == 3 && memcmp(u.id, "new", 3) == 0 &&
          u.foldin_events == 7);
    CHECK(dec(&conf, "new", buf, (size_t)n, &u) == HL_ITEM_OK && u.foldin_key == 0 &&
          u.foldin_events == 7);                          /* an older worker's */
    in.foldin_events = 0;                                 /* an operator's: not there */
    n = hl_item_encode(&conf, &in, buf, sizeof buf);
    CHECK(n > 0 && dec(&conf, key, buf, (size_t)n, &u) == HL_ITEM_BAD_KEY);
    CHECK(dec(&conf, key, NULL, 0, &u) == HL_ITEM_OK && u.tombstone && u.foldin_key == 1 &&
          u.id_len == 3 && memcmp(u.id, "new", 3) == 0);
    CHECK(dec(&conf, "new", NULL, 0, &u) == HL_ITEM_OK && u.tombstone && u.foldin_key == 0);
    key[kl - 1] = 'x';                                    /* the id must be the key's */
    in.foldin_events = 7;
    n = hl_item_encode(&conf, &in, buf, sizeof buf);
    CHECK(dec(&conf, key, buf, (size_t)n, &u) == HL_ITEM_BAD_KEY);
}

int main(void)
{
    RUN(test_foldin_field);
    RUN(test_foldin_key);
    RUN(test_round_trip);
    RUN(test_tombstone);
    RUN(test_each_reason);
    RUN(test_not_finite_and_truncations);
    RUN(test_schema_is_ours);
    TEST_EXIT();
}
