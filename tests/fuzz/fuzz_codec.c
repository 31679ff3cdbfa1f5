/* fuzz_codec.c - libFuzzer target for the BehaviourEvent decoder.
 *
 * Each input is decoded by two codecs: one in raw framing (always the
 * hand-checked fast path) and one in Confluent framing, whose schemas dir
 * (made once, in a temp dir) holds id 1 = our schema (fast path; the codec's
 * own copy, hl_codec_event_schema, so the two cannot drift), id 3 = a
 * writer with reordered and extra fields and id 6 = a writer lacking
 * optional fields with its enum symbols in another order (both resolved by
 * avro-c after the structural walk). So the fuzzer can reach every path by
 * choosing bytes 1..4. Whatever decodes must re-encode and decode to the
 * same event, with a weight in [0, 1e6] (the default event.max.weight) and
 * ids that are valid UTF-8 by an independent check: a crash, a sanitizer
 * report, a round trip that differs or such an event is a bug.
 *
 * Each input is also read as an event's parts (structured mode): a weight
 * (4 bytes), a user_id and an item_id of any bytes, encoded by the codec
 * and decoded again, whose reason must be what the reference checks below
 * say: so non-finite, huge and negative weights and invalid UTF-8 in
 * either id are reached on every run, not only when the fuzzer happens to
 * build them inside a payload.
 *
 * With HL_FUZZ_SEEDS=DIR (what tests/integration/fuzz.sh sets) or
 * HL_FUZZ_CODEC_SEEDS=DIR set, LLVMFuzzerInitialize writes seed payloads
 * into DIR first: valid ones, and weights of 1e38, NaN, inf and -1 and ids
 * that are not UTF-8. */
#include "codec.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char evolved_json[] =
    "{\"type\":\"record\",\"name\":\"BehaviourEvent\",\"namespace\":\"halflife\",\"fields\":["
    "{\"name\":\"timestamp\",\"type\":\"long\"},"
    "{\"name\":\"tags\",\"type\":{\"type\":\"array\",\"items\":\"string\"}},"
    "{\"name\":\"item_id\",\"type\":\"string\"},{\"name\":\"user_id\",\"type\":\"string\"},"
    "{\"name\":\"weight\",\"type\":[\"null\",\"float\"],\"default\":null},"
    "{\"name\":\"score\",\"type\":[\"null\",\"double\",\"int\",\"boolean\",\"bytes\"]},"
    "{\"name\":\"event_type\",\"type\":{\"type\":\"enum\",\"name\":\"EventType\",\"symbols\":"
    "[\"VIEW\",\"CLICK\",\"FAVORITE\",\"ADD_TO_CART\",\"PURCHASE\",\"RATE\"]}},"
    "{\"name\":\"context\",\"type\":[\"null\",{\"type\":\"map\",\"values\":\"string\"}],\"default\":null}]}";

static const char enum_json[] =
    "{\"type\":\"record\",\"name\":\"BehaviourEvent\",\"namespace\":\"halflife\",\"fields\":["
    "{\"name\":\"user_id\",\"type\":\"string\"},{\"name\":\"item_id\",\"type\":\"string\"},"
    "{\"name\":\"event_type\",\"type\":{\"type\":\"enum\",\"name\":\"EventType\",\"symbols\":"
    "[\"SHARE\",\"RATE\",\"PURCHASE\",\"ADD_TO_CART\",\"FAVORITE\",\"CLICK\",\"VIEW\"]}},"
    "{\"name\":\"timestamp\",\"type\":\"long\"}]}";

static hl_codec *raw_codec, *confluent_codec;

static void write_file(const char *dir, const char *name, const void *data, size_t n)
{
    char path[512];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if ((f = fopen(path, "wb")) == NULL) { perror(path); abort(); }
    fwrite(data, 1, n, f);
    fclose(f);
}

/* Payloads whose values are wrong though the Avro is valid: weights of
 * 1e38, NaN, inf and -1, and ids that are not UTF-8. Also in structured
 * form (weight, user length, user, item: see structured()). */
static void write_bad_value_seeds(const char *dir)
{
    static const float w[] = { 1e38f, NAN, INFINITY, -1.0f, 1e6f, 2.5f };
    static const char *const ids[][2] = {
        { "user-1", "item\xff" }, { "us\xc3", "item-1" }, { "u\xed\xa0\x80", "i" },
        { "u", "\xf4\x90\x80\x80" }, { "\xc0\xaf", "i" }, { "u\xc3\xa9", "\xf0\x9f\x98\x80" },
    };
    uint8_t buf[256];
    char name[64];
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) {
        const char *u = ids[i][0], *it = ids[i][1];
        hl_codec_event ev = { "user-1", 6, "item-42", 7, 4, 1700000000000LL, w[i], 1 };
        int n = hl_codec_encode_event(raw_codec, &ev, buf, sizeof buf);
        snprintf(name, sizeof name, "seed_raw_weight_%zu", i);
        write_file(dir, name, buf, (size_t)n);
        ev = (hl_codec_event){ u, (uint32_t)strlen(u), it, (uint32_t)strlen(it), 0,
                               1700000000000LL, 1.0f, 1 };
        n = hl_codec_encode_event(confluent_codec, &ev, buf, sizeof buf);
        snprintf(name, sizeof name, "seed_confluent_id_%zu", i);
        write_file(dir, name, buf, (size_t)n);
        memcpy(buf, &w[i], 4);
        buf[4] = (uint8_t)strlen(u);
        memcpy(buf + 5, u, strlen(u));
        memcpy(buf + 5 + strlen(u), it, strlen(it));
        snprintf(name, sizeof name, "seed_parts_%zu", i);
        write_file(dir, name, buf, 5 + strlen(u) + strlen(it));
    }
}

static void write_seeds(const char *dir)
{
    hl_codec_event ev = { "user-1", 6, "item-42", 7, 4, 1700000000000LL, 2.5f, 1 };
    uint8_t buf[256];
    int n = hl_codec_encode_event(confluent_codec, &ev, buf, sizeof buf);
    write_file(dir, "seed_confluent_1", buf, (size_t)n);
    n = hl_codec_encode_event(raw_codec, &ev, buf, sizeof buf);
    write_file(dir, "seed_raw", buf, (size_t)n);
    write_bad_value_seeds(dir);
    /* ts 1000, tags ["t"], item "i", user "u", weight null, score null,
     * CLICK, context null */
    const uint8_t evolved[] = { 0, 0, 0, 0, 3, 0xd0, 0x0f, 0x02, 0x02, 't', 0x00, 0x02, 'i',
                                0x02, 'u', 0x00, 0x00, 0x02, 0x00 };
    write_file(dir, "seed_confluent_3", evolved, sizeof evolved);
    const uint8_t reordered[] = { 0, 0, 0, 0, 6, 0x02, 'u', 0x02, 'i', 0x0a, 0xd0, 0x0f };
    write_file(dir, "seed_confluent_6", reordered, sizeof reordered);
}

/* At exit, so LeakSanitizer (which checks after) sees only real leaks: a
 * codec's avro-c values hold memory it cannot trace back to the codec. */
static void destroy_codecs(void)
{
    hl_codec_destroy(raw_codec);
    hl_codec_destroy(confluent_codec);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static char dir[] = "/tmp/hl_fuzz_codec_XXXXXX";
    char err[256];
    if (mkdtemp(dir) == NULL) { perror("mkdtemp"); abort(); }
    write_file(dir, "1.avsc", hl_codec_event_schema(), strlen(hl_codec_event_schema()));
    write_file(dir, "3.avsc", evolved_json, strlen(evolved_json));
    write_file(dir, "6.avsc", enum_json, strlen(enum_json));
    hl_codec_opts o = { HL_FRAMING_RAW, HL_FRAMING_RAW, dir, 2, -(1LL << 50), 1LL << 50, 0, NULL, NULL, 0 };
    if ((raw_codec = hl_codec_create(&o, err, sizeof err)) == NULL) { fprintf(stderr, "%s\n", err); abort(); }
    o.input_framing = HL_FRAMING_CONFLUENT;
    if ((confluent_codec = hl_codec_create(&o, err, sizeof err)) == NULL) { fprintf(stderr, "%s\n", err); abort(); }
    /* Load every id now, so the schema files can go at once. */
    if (hl_codec_writer(confluent_codec, 1) != HL_CODEC_WRITER_FAST ||
        hl_codec_writer(confluent_codec, 3) != HL_CODEC_WRITER_RESOLVED ||
        hl_codec_writer(confluent_codec, 6) != HL_CODEC_WRITER_RESOLVED) {
        fprintf(stderr, "fuzz_codec: writer schemas did not load\n");
        abort();
    }
    atexit(destroy_codecs);
    if (getenv("HL_FUZZ_CODEC_SEEDS"))
        write_seeds(getenv("HL_FUZZ_CODEC_SEEDS"));
    else if (getenv("HL_FUZZ_SEEDS"))
        write_seeds(getenv("HL_FUZZ_SEEDS"));
    for (const char *const *f = (const char *const[]){ "1.avsc", "3.avsc", "6.avsc", NULL }; *f; f++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, *f);
        unlink(path);
    }
    rmdir(dir);
    return 0;
}

/* ---- reference checks, written from the definitions -------------------- */

/* UTF-8 by decoding each code point the long way (not utf8.c's method). */
static int ref_utf8(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t len = s[i] < 0x80 ? 1 : (s[i] & 0xE0) == 0xC0 ? 2 : (s[i] & 0xF0) == 0xE0 ? 3
                   : (s[i] & 0xF8) == 0xF0 ? 4 : 0;
        static const uint32_t min[5] = { 0, 0, 0x80, 0x800, 0x10000 };
        if (len == 0 || n - i < len) return 0;
        uint32_t cp = len == 1 ? s[i] : s[i] & (0x7Fu >> len);
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if (cp < min[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += len;
    }
    return 1;
}

static int ref_weight_ok(float w) { return isfinite(w) && w >= 0 && w <= 1e6f; }

/* What check_event must say of an event with these parts. */
static hl_codec_reason ref_reason(const hl_codec_event *ev)
{
    if (ev->user_len < 1 || ev->user_len > HL_MAX_ID_LEN ||
        ev->item_len < 1 || ev->item_len > HL_MAX_ID_LEN)
        return HL_CODEC_STRING_TOO_LONG;
    if (!ref_utf8((const uint8_t *)ev->user, ev->user_len) ||
        !ref_utf8((const uint8_t *)ev->item, ev->item_len))
        return HL_CODEC_BAD_UTF8;
    return ref_weight_ok(ev->weight) ? HL_CODEC_OK : HL_CODEC_BAD_WEIGHT;
}

/* Structured mode: bytes 0..3 a weight, byte 4 the user_id's length, then
 * the user_id and the item_id (the rest, at most 300 bytes). */
static void structured(const uint8_t *data, size_t size)
{
    uint8_t buf[1024];
    hl_codec_event ev, out;
    if (size < 5)
        return;
    size_t ulen = data[4] < size - 5 ? data[4] : size - 5, ilen = size - 5 - ulen;
    if (ilen > 300)
        ilen = 300;
    memcpy(&ev.weight, data, 4);
    ev.has_weight = 1;
    ev.user = (const char *)data + 5;
    ev.user_len = (uint32_t)ulen;
    ev.item = ev.user + ulen;
    ev.item_len = (uint32_t)ilen;
    ev.type = 0;
    ev.ts_ms = 1700000000000LL;
    int n = hl_codec_encode_event(raw_codec, &ev, buf, sizeof buf);
    if (n < 0)
        abort();
    hl_codec_reason want = ref_reason(&ev);
    hl_codec_reason got = hl_codec_decode_event(raw_codec, buf, (size_t)n, &out, NULL, 0);
    if (got != want) {
        fprintf(stderr, "structured: got %s, want %s\n", hl_codec_reason_name(got),
                hl_codec_reason_name(want));
        abort();
    }
}

/* A decoded event must survive encode + decode (raw framing: fast path). */
static void check_round_trip(const hl_codec_event *ev)
{
    uint8_t buf[1024];
    hl_codec_event again;
    int n = hl_codec_encode_event(raw_codec, ev, buf, sizeof buf);
    if (n < 0)
        abort();
    if (hl_codec_decode_event(raw_codec, buf, (size_t)n, &again, NULL, 0) != HL_CODEC_OK ||
        again.user_len != ev->user_len || memcmp(again.user, ev->user, ev->user_len) ||
        again.item_len != ev->item_len || memcmp(again.item, ev->item, ev->item_len) ||
        again.type != ev->type || again.ts_ms != ev->ts_ms ||
        again.has_weight != ev->has_weight || again.weight != ev->weight)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    hl_codec_event ev;
    char detail[256];
    hl_codec *codecs[2] = { raw_codec, confluent_codec };
    for (int i = 0; i < 2; i++) {
        /* Copy into an exact-size buffer so ASan sees any overread. */
        uint8_t *copy = malloc(size ? size : 1);
        memcpy(copy, data, size);
        hl_codec_reason r = hl_codec_decode_event(codecs[i], copy, size, &ev, detail, sizeof detail);
        if (r < 0 || r >= HL_CODEC_N_REASONS)
            abort();
        if (r == HL_CODEC_OK) {
            /* Nothing the state or a list could choke on gets through. */
            if (ref_reason(&ev) != HL_CODEC_OK)
                abort();
            /* ev may borrow from copy (fast path) or the codec (resolved). */
            char user[HL_MAX_ID_LEN], item[HL_MAX_ID_LEN];
            memcpy(user, ev.user, ev.user_len);
            memcpy(item, ev.item, ev.item_len);
            ev.user = user;
            ev.item = item;
            free(copy);
            check_round_trip(&ev);
        } else {
            free(copy);
        }
    }
    structured(data, size);
    return 0;
}
