/* test_codec_malformed.c - worker/codec.c refusing malformed payloads:
 * one named reason per kind (framing, truncated or overlong fields, bad
 * enums, weights and timestamps out of range, bad UTF-8, Avro too complex
 * to walk), on both decode paths, and no crash on any prefix or one-byte
 * corruption of a good payload. Apart from test_codec.c, which checks
 * what the codec accepts, because these cases are the input validation. */
#define T_SUITE "codec_malformed"
#include "codec_test_util.h"

#include <float.h>

static void test_malformed_framing(void)
{
    hl_codec *c = new_codec(HL_FRAMING_CONFLUENT);
    uint8_t b[8] = { 0, 0, 0, 0, 1, 0 };
    CHECK(decode(c, b, 0) == HL_CODEC_TOO_SHORT);
    CHECK(decode(c, b, 4) == HL_CODEC_TOO_SHORT);
    b[0] = 1;
    CHECK(decode(c, b, 6) == HL_CODEC_BAD_MAGIC);
    EXPECT(c, 1, HL_CODEC_OK, GOOD1);
    EXPECT(c, 99, HL_CODEC_UNKNOWN_SCHEMA, GOOD1);
    EXPECT(c, 4, HL_CODEC_UNKNOWN_SCHEMA, GOOD1);
    EXPECT(c, 5, HL_CODEC_UNKNOWN_SCHEMA, GOOD1);
    EXPECT(c, -7, HL_CODEC_UNKNOWN_SCHEMA, GOOD1);
    EXPECT(c, 1, HL_CODEC_TRAILING_BYTES, GOOD1, 0x00);
    hl_codec_destroy(c);
}

static void test_malformed_body_fast_path(void)
{
    hl_codec *c = new_codec(HL_FRAMING_CONFLUENT);
    EXPECT(c, 1, HL_CODEC_TRUNCATED, 0x02, 'u', 0x02);               /* ends in item_id */
    EXPECT(c, 1, HL_CODEC_TRUNCATED, 0x02, 'u', 0x02, 'i', 0x02, 0xd0); /* truncated varint */
    EXPECT(c, 1, HL_CODEC_TRUNCATED, 0x0a, 'u');                     /* length 5, 1 byte */
    EXPECT(c, 1, HL_CODEC_TRUNCATED, 0x02, 'u', 0x02, 'i', 0x02, 0xd0, 0x0f, 0x02, 0, 0);
    EXPECT(c, 1, HL_CODEC_BAD_VARINT, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
           0x80, 0x80, 0x01);
    EXPECT(c, 1, HL_CODEC_NEGATIVE_LENGTH, 0x01, 'u');               /* length -1 */
    EXPECT(c, 1, HL_CODEC_NEGATIVE_LENGTH, 0x02, 'u', 0x02, 'i', 0x02, 0xd0, 0x0f, 0x00,
           0x02, 0x02, 0x01);                                         /* context key -1 */
    EXPECT(c, 1, HL_CODEC_STRING_TOO_LONG, 0x00, 0x02, 'i', 0x02, 0xd0, 0x0f, 0x00, 0x00);
    EXPECT(c, 1, HL_CODEC_BAD_TIMESTAMP, 0x02, 'u', 0x02, 'i', 0x02, 0x01, 0x00, 0x00);
    EXPECT(c, 1, HL_CODEC_BAD_ENUM, 0x02, 'u', 0x02, 'i', 0x0c, 0xd0, 0x0f, 0x00, 0x00);
    EXPECT(c, 1, HL_CODEC_BAD_ENUM, 0x02, 'u', 0x02, 'i', 0x01, 0xd0, 0x0f, 0x00, 0x00);
    EXPECT(c, 1, HL_CODEC_BAD_UNION, 0x02, 'u', 0x02, 'i', 0x02, 0xd0, 0x0f, 0x04, 0x00);
    EXPECT(c, 1, HL_CODEC_BAD_UNION, 0x02, 'u', 0x02, 'i', 0x02, 0xd0, 0x0f, 0x00, 0x01);
    EXPECT(c, 1, HL_CODEC_BAD_WEIGHT, 0x02, 'u', 0x02, 'i', 0x02, 0xd0, 0x0f, 0x02,
           0, 0, 0xc0, 0x7f, 0x00);                                   /* NaN */
    EXPECT(c, 1, HL_CODEC_BAD_WEIGHT, 0x02, 'u', 0x02, 'i', 0x02, 0xd0, 0x0f, 0x02,
           0, 0, 0x80, 0xbf, 0x00);                                   /* -1 */
    EXPECT(c, 1, HL_CODEC_TRUNCATED, 0x02, 'u', 0x02, 'i', 0x02, 0xd0, 0x0f, 0x00,
           0x02, 0xfe, 0xff, 0xff, 0xff, 0x0f);                       /* map of 2^31 entries */
    hl_codec_destroy(c);
}

static void test_string_longer_than_limit(void)
{
    hl_codec *c = new_codec(HL_FRAMING_RAW);
    uint8_t buf[512];
    char user[HL_MAX_ID_LEN + 2];
    memset(user, 'x', sizeof user - 1);
    user[sizeof user - 1] = 0;
    hl_codec_event ev = mk_event(user, "i", HL_VIEW, 5, 0, 0), out;
    int n = hl_codec_encode_event(c, &ev, buf, sizeof buf);
    CHECK(n > 0 && decode(c, buf, (size_t)n) == HL_CODEC_STRING_TOO_LONG);
    user[HL_MAX_ID_LEN] = 0;                         /* exactly the limit: fine */
    ev = mk_event(user, "i", HL_VIEW, 5, 0, 0);
    n = hl_codec_encode_event(c, &ev, buf, sizeof buf);
    CHECK(n > 0 && hl_codec_decode_event(c, buf, (size_t)n, &out, NULL, 0) == HL_CODEC_OK);
    CHECK(out.user_len == HL_MAX_ID_LEN);
    hl_codec_destroy(c);
}

/* The evolved writer (id 3): timestamp, session, item_id, user_id, weight,
 * event_type, context. The walker must refuse what avro-c would trust. */
static void test_malformed_body_resolved_path(void)
{
    hl_codec *c = new_codec(HL_FRAMING_CONFLUENT);
    EXPECT(c, 3, HL_CODEC_OK, 0xd0, 0x0f, 0x00, 0x02, 'i', 0x02, 'u', 0x00, 0x02, 0x00);
    EXPECT(c, 3, HL_CODEC_OK, 0xd0, 0x0f, 0x02, 0x02, 's', 0x02, 'i', 0x02, 'u', 0x00,
           0x02, 0x00);
    EXPECT(c, 3, HL_CODEC_TRUNCATED, 0xd0);
    EXPECT(c, 3, HL_CODEC_TRUNCATED, 0xd0, 0x0f, 0x02, 0xfe, 0xff, 0xff, 0xff, 0x0f);
    EXPECT(c, 3, HL_CODEC_NEGATIVE_LENGTH, 0xd0, 0x0f, 0x02, 0x03, 's');
    EXPECT(c, 3, HL_CODEC_BAD_UNION, 0xd0, 0x0f, 0x04);
    EXPECT(c, 3, HL_CODEC_BAD_UNION, 0xd0, 0x0f, 0x01);
    EXPECT(c, 3, HL_CODEC_BAD_ENUM, 0xd0, 0x0f, 0x00, 0x02, 'i', 0x02, 'u', 0x00, 0x0c, 0x00);
    EXPECT(c, 3, HL_CODEC_BAD_VARINT, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
           0xff, 0xff, 0x01);
    EXPECT(c, 3, HL_CODEC_TRAILING_BYTES, 0xd0, 0x0f, 0x00, 0x02, 'i', 0x02, 'u', 0x00,
           0x02, 0x00, 0x00);
    EXPECT(c, 3, HL_CODEC_STRING_TOO_LONG, 0xd0, 0x0f, 0x00, 0x02, 'i', 0x00, 0x00, 0x02, 0x00);
    EXPECT(c, 3, HL_CODEC_BAD_TIMESTAMP, 0x01, 0x00, 0x02, 'i', 0x02, 'u', 0x00, 0x02, 0x00);
    EXPECT(c, 3, HL_CODEC_BAD_WEIGHT, 0xd0, 0x0f, 0x00, 0x02, 'i', 0x02, 'u', 0x02,
           0, 0, 0x80, 0x7f, 0x02, 0x00);                             /* +inf */
    hl_codec_destroy(c);
}

/* Every prefix and every single-byte corruption of good payloads gives a
 * reason or an event, never a crash (the fuzz target does this at scale). */
static void test_prefixes_and_bit_flips(void)
{
    hl_codec *c = new_codec(HL_FRAMING_CONFLUENT);
    uint8_t buf[64], b2[64];
    const uint8_t body1[] = { GOOD1 };
    const uint8_t body3[] = { 0xd0, 0x0f, 0x02, 0x02, 's', 0x02, 'i', 0x02, 'u', 0x00, 0x02, 0x00 };
    for (int which = 0; which < 2; which++) {
        size_t n = which ? frame(buf, 3, body3, sizeof body3) : frame(buf, 1, body1, sizeof body1);
        for (size_t k = 0; k < n; k++)
            CHECK(decode(c, buf, k) != HL_CODEC_OK);
        for (size_t i = 0; i < n; i++) {
            for (int bit = 0; bit < 8; bit++) {
                hl_codec_event ev;
                memcpy(b2, buf, n);
                b2[i] ^= (uint8_t)(1 << bit);
                (void)hl_codec_decode_event(c, b2, n, &ev, NULL, 0);
            }
        }
    }
    hl_codec_destroy(c);
}

/* Issue 16: a weight of 1e38 is a valid Avro float, and one such event
 * made a user's state inf and NaN. Weights outside [0, event.max.weight]
 * (default 1e6), NaN and infinities are bad_weight, on both paths. */
static void test_weight_range(void)
{
    hl_codec *c = new_codec(HL_FRAMING_CONFLUENT);
#define W(b0, b1, b2, b3) 0x02, 'u', 0x02, 'i', 0x02, 0xd0, 0x0f, 0x02, b0, b1, b2, b3, 0x00
    EXPECT(c, 1, HL_CODEC_BAD_WEIGHT, W(0x99, 0x76, 0x96, 0x7e));    /* 1e38 */
    EXPECT(c, 1, HL_CODEC_BAD_WEIGHT, W(0xff, 0xff, 0x7f, 0x7f));    /* FLT_MAX */
    EXPECT(c, 1, HL_CODEC_BAD_WEIGHT, W(0x00, 0x00, 0x80, 0x7f));    /* +inf */
    EXPECT(c, 1, HL_CODEC_BAD_WEIGHT, W(0x00, 0x00, 0x80, 0xff));    /* -inf */
    EXPECT(c, 1, HL_CODEC_BAD_WEIGHT, W(0x01, 0x00, 0x80, 0x7f));    /* signalling NaN */
    EXPECT(c, 1, HL_CODEC_BAD_WEIGHT, W(0x00, 0x00, 0xc0, 0xff));    /* -NaN */
    EXPECT(c, 1, HL_CODEC_BAD_WEIGHT, W(0x00, 0x00, 0x80, 0xbf));    /* -1 */
    EXPECT(c, 1, HL_CODEC_BAD_WEIGHT, W(0x01, 0x00, 0x00, 0x80));    /* -1e-45 */
    EXPECT(c, 1, HL_CODEC_BAD_WEIGHT, W(0x09, 0x24, 0x74, 0x49));    /* 1000000.5625 */
    EXPECT(c, 1, HL_CODEC_OK, W(0x00, 0x24, 0x74, 0x49));            /* 1e6: the bound */
    EXPECT(c, 1, HL_CODEC_OK, W(0x00, 0x00, 0x00, 0x00));            /* 0 */
    EXPECT(c, 1, HL_CODEC_OK, W(0x00, 0x00, 0x00, 0x80));            /* -0 */
    EXPECT(c, 1, HL_CODEC_OK, W(0x01, 0x00, 0x00, 0x00));            /* 1e-45 */
#undef W
    /* The resolved path (id 3: ts, session, item, user, weight, type, context). */
    EXPECT(c, 3, HL_CODEC_BAD_WEIGHT, 0xd0, 0x0f, 0x00, 0x02, 'i', 0x02, 'u', 0x02,
           0x99, 0x76, 0x96, 0x7e, 0x02, 0x00);                      /* 1e38 */
    EXPECT(c, 3, HL_CODEC_OK, 0xd0, 0x0f, 0x00, 0x02, 'i', 0x02, 'u', 0x02,
           0x00, 0x24, 0x74, 0x49, 0x02, 0x00);                      /* 1e6 */
    hl_codec_destroy(c);
    /* A configured bound. */
    char err[128];
    hl_codec_opts o = { HL_FRAMING_RAW, HL_FRAMING_RAW, dir, 2, MIN_TS, MAX_TS, 10.0, NULL, NULL, 0 };
    c = hl_codec_create(&o, err, sizeof err);
    CHECKF(c != NULL, "%s", err);
    if (c == NULL)
        return;
    hl_codec_event ev = mk_event("u", "i", HL_RATE, 5, 1, 10.0f), out;
    uint8_t buf[64];
    char detail[200] = "";
    int n = hl_codec_encode_event(c, &ev, buf, sizeof buf);
    CHECK(n > 0 && hl_codec_decode_event(c, buf, (size_t)n, &out, NULL, 0) == HL_CODEC_OK);
    ev.weight = 10.5f;
    n = hl_codec_encode_event(c, &ev, buf, sizeof buf);
    CHECK(n > 0 && hl_codec_decode_event(c, buf, (size_t)n, &out, detail, sizeof detail) ==
                   HL_CODEC_BAD_WEIGHT);
    CHECKF(strstr(detail, "10.5") && strstr(detail, "event.max.weight"), "%s", detail);
    hl_codec_destroy(c);
}

/* Issue 16: an item_id that is not UTF-8 was applied and published in a
 * list python3-avro could not decode (Avro strings are UTF-8). Both ids
 * are checked, on both paths; valid multi-byte UTF-8 passes. */
static void test_bad_utf8(void)
{
    hl_codec *c = new_codec(HL_FRAMING_CONFLUENT);
#define ID(...) 0x02, 'u', 0x08, __VA_ARGS__, 0x02, 0xd0, 0x0f, 0x00, 0x00  /* item: 4 bytes */
    EXPECT(c, 1, HL_CODEC_BAD_UTF8, ID('a', 'b', 'c', 0xff));               /* never valid */
    EXPECT(c, 1, HL_CODEC_BAD_UTF8, ID('a', 'b', 0x80, 'c'));               /* lone continuation */
    EXPECT(c, 1, HL_CODEC_BAD_UTF8, ID('a', 'b', 'c', 0xc3));               /* cut short */
    EXPECT(c, 1, HL_CODEC_BAD_UTF8, ID('a', 0xc3, 'b', 'c'));               /* no continuation */
    EXPECT(c, 1, HL_CODEC_BAD_UTF8, ID('a', 'b', 0xc0, 0xaf));              /* overlong '/' */
    EXPECT(c, 1, HL_CODEC_BAD_UTF8, ID('a', 0xe0, 0x80, 0xaf));             /* overlong, 3 bytes */
    EXPECT(c, 1, HL_CODEC_BAD_UTF8, ID('a', 0xed, 0xa0, 0x80));             /* surrogate D800 */
    EXPECT(c, 1, HL_CODEC_BAD_UTF8, ID(0xf4, 0x90, 0x80, 0x80));            /* U+110000 */
    EXPECT(c, 1, HL_CODEC_BAD_UTF8, ID(0xf0, 0x80, 0x80, 0xaf));            /* overlong, 4 bytes */
    EXPECT(c, 1, HL_CODEC_BAD_UTF8, ID(0xf8, 0x88, 0x80, 0x80));            /* 5-byte form */
    EXPECT(c, 1, HL_CODEC_OK, ID('a', 'b', 0xc3, 0xa9));                    /* e-acute */
    EXPECT(c, 1, HL_CODEC_OK, ID('a', 0xe2, 0x82, 0xac));                   /* euro sign */
    EXPECT(c, 1, HL_CODEC_OK, ID(0xf0, 0x9f, 0x98, 0x80));                  /* emoji */
    EXPECT(c, 1, HL_CODEC_OK, ID(0xf4, 0x8f, 0xbf, 0xbf));                  /* U+10FFFF */
    EXPECT(c, 1, HL_CODEC_OK, ID('a', 0xed, 0x9f, 0xbf));                   /* U+D7FF */
#undef ID
    /* user_id; and a long ASCII id whose bad byte comes after the 8-byte
     * fast path's words. */
    EXPECT(c, 1, HL_CODEC_BAD_UTF8, 0x04, 'u', 0xfe, 0x02, 'i', 0x02, 0xd0, 0x0f, 0x00, 0x00);
    EXPECT(c, 1, HL_CODEC_BAD_UTF8, 0x22, '0', '1', '2', '3', '4', '5', '6', '7', '8', '9',
           'a', 'b', 'c', 'd', 'e', 'f', 0x9f, 0x02, 'i', 0x02, 0xd0, 0x0f, 0x00, 0x00);
    /* The resolved path (id 3). */
    EXPECT(c, 3, HL_CODEC_BAD_UTF8, 0xd0, 0x0f, 0x00, 0x02, 0xff, 0x02, 'u', 0x00, 0x02, 0x00);
    EXPECT(c, 3, HL_CODEC_BAD_UTF8, 0xd0, 0x0f, 0x00, 0x02, 'i', 0x02, 0xc3, 0x00, 0x02, 0x00);
    hl_codec_destroy(c);
}

/* Issue 16: valid Avro the walker cannot follow was refused as truncated.
 * array<null> items take no bytes, so any count is valid: up to 4096 per
 * record decode (avro-c skips them), more are too_complex (a count alone
 * must not make anyone loop 2^63 times). Nesting deeper than 32 levels is
 * too_complex; 30 levels decode. */
static void test_too_complex(void)
{
    hl_codec *c = new_codec(HL_FRAMING_CONFLUENT);
    CHECK(hl_codec_writer(c, 7) == HL_CODEC_WRITER_RESOLVED);
    EXPECT(c, 7, HL_CODEC_OK, 0x02, 'u', 0x02, 'i', 0xd0, 0x0f, 0x00);          /* [] */
    EXPECT(c, 7, HL_CODEC_OK, 0x02, 'u', 0x02, 'i', 0xd0, 0x0f, 0x06, 0x00);    /* 3 nulls */
    EXPECT(c, 7, HL_CODEC_OK, 0x02, 'u', 0x02, 'i', 0xd0, 0x0f, 0x05, 0x00, 0x00); /* -3, 0 bytes */
    EXPECT(c, 7, HL_CODEC_OK, 0x02, 'u', 0x02, 'i', 0xd0, 0x0f, 0x80, 0x40, 0x00); /* 4096 */
    EXPECT(c, 7, HL_CODEC_TOO_COMPLEX, 0x02, 'u', 0x02, 'i', 0xd0, 0x0f, 0x82, 0x40, 0x00);
    EXPECT(c, 7, HL_CODEC_TOO_COMPLEX, 0x02, 'u', 0x02, 'i', 0xd0, 0x0f,
           0xf0, 0x2e, 0xf0, 0x2e, 0x00);                                      /* 3000 + 3000 */
    EXPECT(c, 7, HL_CODEC_TOO_COMPLEX, 0x02, 'u', 0x02, 'i', 0xd0, 0x0f,
           0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00);  /* 2^63 - 1 */
    EXPECT(c, 7, HL_CODEC_TRUNCATED, 0x02, 'u', 0x02, 'i', 0xd0, 0x0f, 0x06);   /* no end */
    CHECK(hl_codec_writer(c, 9) == HL_CODEC_WRITER_RESOLVED);
    EXPECT(c, 9, HL_CODEC_TOO_COMPLEX, 0x02, 'u', 0x02, 'i', 0xd0, 0x0f, 0x02);
    CHECK(hl_codec_writer(c, 10) == HL_CODEC_WRITER_RESOLVED);
    EXPECT(c, 10, HL_CODEC_OK, 0x02, 'u', 0x02, 'i', 0xd0, 0x0f, 0x02);
    EXPECT(c, 10, HL_CODEC_TRUNCATED, 0x02, 'u', 0x02, 'i', 0xd0, 0x0f);
    /* 8^9 null fields in a 3 KB schema: each record of it took avro-c 25 s;
     * refused after MAX_FREE_NODES nodes. 8^4 of them decode. */
    CHECK(hl_codec_writer(c, 11) == HL_CODEC_WRITER_RESOLVED);
    EXPECT(c, 11, HL_CODEC_TOO_COMPLEX, 0x02, 'u', 0x02, 'i', 0xd0, 0x0f);
    CHECK(hl_codec_writer(c, 12) == HL_CODEC_WRITER_RESOLVED);
    EXPECT(c, 12, HL_CODEC_OK, 0x02, 'u', 0x02, 'i', 0xd0, 0x0f);
    hl_codec_destroy(c);
}
int main(void)
{
    make_schemas_dir();
    RUN(test_malformed_framing);
    RUN(test_malformed_body_fast_path);
    RUN(test_string_longer_than_limit);
    RUN(test_malformed_body_resolved_path);
    RUN(test_prefixes_and_bit_flips);
    RUN(test_weight_range);
    RUN(test_bad_utf8);
    RUN(test_too_complex);
    remove_schemas_dir();
    TEST_EXIT();
}
