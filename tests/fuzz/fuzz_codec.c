/* fuzz_codec.c - libFuzzer target for the BehaviourEvent decoder.
 *
 * Each input is decoded by two codecs: one in raw framing (always the
 * hand-checked fast path) and one in Confluent framing, whose schemas dir
 * (made once, in a temp dir) holds id 1 = our schema (fast path), id 3 = a
 * writer with reordered and extra fields and id 6 = a writer lacking
 * optional fields with its enum symbols in another order (both resolved by
 * avro-c after the structural walk). So the fuzzer can reach every path by
 * choosing bytes 1..4. Whatever decodes must re-encode and decode to the
 * same event: a crash, a sanitizer report or a round trip that differs is
 * a bug.
 *
 * With HL_FUZZ_CODEC_SEEDS=DIR set, LLVMFuzzerInitialize writes a few valid
 * payloads into DIR first (a seed corpus). */
#include "codec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char ours_json[] =
    "{\"type\":\"record\",\"name\":\"BehaviourEvent\",\"namespace\":\"halflife\",\"fields\":["
    "{\"name\":\"user_id\",\"type\":\"string\"},{\"name\":\"item_id\",\"type\":\"string\"},"
    "{\"name\":\"event_type\",\"type\":{\"type\":\"enum\",\"name\":\"EventType\",\"symbols\":"
    "[\"VIEW\",\"CLICK\",\"FAVORITE\",\"ADD_TO_CART\",\"PURCHASE\",\"RATE\"],\"default\":\"VIEW\"},"
    "\"default\":\"VIEW\"},"
    "{\"name\":\"timestamp\",\"type\":{\"type\":\"long\",\"logicalType\":\"timestamp-millis\"}},"
    "{\"name\":\"weight\",\"type\":[\"null\",\"float\"],\"default\":null},"
    "{\"name\":\"context\",\"type\":[\"null\",{\"type\":\"map\",\"values\":\"string\"}],\"default\":null}]}";

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

static void write_seeds(const char *dir)
{
    hl_codec_event ev = { "user-1", 6, "item-42", 7, 4, 1700000000000LL, 2.5f, 1 };
    uint8_t buf[256];
    int n = hl_codec_encode_event(confluent_codec, &ev, buf, sizeof buf);
    write_file(dir, "seed_confluent_1", buf, (size_t)n);
    n = hl_codec_encode_event(raw_codec, &ev, buf, sizeof buf);
    write_file(dir, "seed_raw", buf, (size_t)n);
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
    write_file(dir, "1.avsc", ours_json, strlen(ours_json));
    write_file(dir, "3.avsc", evolved_json, strlen(evolved_json));
    write_file(dir, "6.avsc", enum_json, strlen(enum_json));
    hl_codec_opts o = { HL_FRAMING_RAW, HL_FRAMING_RAW, dir, 2, -(1LL << 50), 1LL << 50 };
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
    for (const char *const *f = (const char *const[]){ "1.avsc", "3.avsc", "6.avsc", NULL }; *f; f++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, *f);
        unlink(path);
    }
    rmdir(dir);
    return 0;
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
    return 0;
}
