/* test_codec.c - worker/codec.c: round trips, both decode paths agreeing,
 * schema evolution through avro-c resolution and the list encoder. One
 * named reason per kind of malformed payload is test_codec_malformed.c.
 *
 * It also serves tests/integration/test_codec_python.py, which checks the
 * codec against python3-avro (the reference implementation) and needs a C
 * program to drive it. With HL_CODEC_DECODE_FILE=path set, instead of
 * running the cases it decodes each payload of path (a sequence of 4-byte
 * big-endian length + payload) and prints one JSON line per payload; with
 * HL_CODEC_ENCODE_LISTS=path it encodes the lists described in path (one per
 * line, tab-separated, see encode_lists_mode) into HL_CODEC_OUT in the same
 * length-prefixed form. HL_CODEC_SCHEMAS_DIR, HL_CODEC_INPUT_FORMAT and
 * HL_CODEC_OUTPUT_FORMAT (confluent|raw) configure the codec for both. */
#define T_SUITE "codec"
#include "codec_test_util.h"

#include <avro.h>
#include <float.h>
#include <malloc.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- writing with avro-c, to check against an independent encoder ------- */

/* Encodes ev with avro-c's generic writer under the schema json, in Confluent
 * framing with the given id (0 length on failure). */
static size_t avro_c_encode(const char *json, int32_t id, const hl_codec_event *ev,
                            const char *ctx_key, uint8_t *buf, size_t cap)
{
    avro_schema_t s;
    avro_value_iface_t *iface;
    avro_value_t v, f, br, e;
    avro_writer_t wr;
    size_t n = 0;
    char user[300], item[300];

    memcpy(user, ev->user, ev->user_len); user[ev->user_len] = 0;
    memcpy(item, ev->item, ev->item_len); item[ev->item_len] = 0;
    if (avro_schema_from_json_length(json, strlen(json), &s)) return 0;
    iface = avro_generic_class_from_schema(s);
    avro_generic_value_new(iface, &v);
    avro_value_get_by_name(&v, "user_id", &f, NULL);    avro_value_set_string(&f, user);
    avro_value_get_by_name(&v, "item_id", &f, NULL);    avro_value_set_string(&f, item);
    avro_value_get_by_name(&v, "event_type", &f, NULL); avro_value_set_enum(&f, ev->type);
    avro_value_get_by_name(&v, "timestamp", &f, NULL);  avro_value_set_long(&f, ev->ts_ms);
    avro_value_get_by_name(&v, "weight", &f, NULL);
    avro_value_set_branch(&f, ev->has_weight, &br);
    if (ev->has_weight) avro_value_set_float(&br, ev->weight);
    else avro_value_set_null(&br);
    avro_value_get_by_name(&v, "context", &f, NULL);
    avro_value_set_branch(&f, ctx_key != NULL, &br);
    if (ctx_key != NULL) {
        avro_value_add(&br, ctx_key, &e, NULL, NULL);
        avro_value_set_string(&e, "some value");
    } else {
        avro_value_set_null(&br);
    }
    if (avro_value_get_by_name(&v, "session", &f, NULL) == 0) {
        avro_value_set_branch(&f, 1, &br);
        avro_value_set_string(&br, "session-42");
    }
    buf[0] = 0;
    buf[1] = (uint8_t)(id >> 24); buf[2] = (uint8_t)(id >> 16);
    buf[3] = (uint8_t)(id >> 8);  buf[4] = (uint8_t)id;
    wr = avro_writer_memory((char *)buf + 5, (int64_t)cap - 5);
    if (avro_value_write(wr, &v) == 0)
        n = 5 + (size_t)avro_writer_tell(wr);
    avro_writer_free(wr);
    avro_value_decref(&v);
    avro_value_iface_decref(iface);
    avro_schema_decref(s);
    return n;
}

/* ---- cases -------------------------------------------------------------- */

static void test_reason_names(void)
{
    CHECK(!strcmp(hl_codec_reason_name(HL_CODEC_OK), "ok"));
    CHECK(!strcmp(hl_codec_reason_name(HL_CODEC_TOO_SHORT), "too_short"));
    CHECK(!strcmp(hl_codec_reason_name(HL_CODEC_TRAILING_BYTES), "trailing_bytes"));
    CHECK(!strcmp(hl_codec_reason_name(HL_CODEC_N_REASONS), "unknown"));
    for (int r = 0; r < HL_CODEC_N_REASONS; r++)
        CHECK(strchr(hl_codec_reason_name(r), ' ') == NULL);
    CHECK(!strcmp(hl_codec_reason_name(HL_CODEC_BAD_UTF8), "bad_utf8"));
    CHECK(!strcmp(hl_codec_reason_name(HL_CODEC_TOO_COMPLEX), "too_complex"));
}

static void test_schema_files_match_reader(void)
{
    hl_codec *c = new_codec(HL_FRAMING_CONFLUENT);
    CHECK(hl_codec_writer(c, 1) == HL_CODEC_WRITER_FAST);
    CHECK(hl_codec_writer(c, 3) == HL_CODEC_WRITER_RESOLVED);
    CHECK(hl_codec_writer(c, 4) == HL_CODEC_WRITER_UNKNOWN);
    CHECK(hl_codec_writer(c, 5) == HL_CODEC_WRITER_UNKNOWN);
    CHECK(hl_codec_writer(c, 99) == HL_CODEC_WRITER_UNKNOWN);
    CHECK(hl_codec_writer(c, -1) == HL_CODEC_WRITER_UNKNOWN);
    hl_codec_destroy(c);
}

static void roundtrip(hl_framing framing)
{
    hl_codec *c = new_codec(framing);
    hl_codec_event in[3] = {
        mk_event("u1", "item-9", HL_PURCHASE, 1700000000123LL, 0, 0),
        mk_event("user \xc3\xa9\"x", "i", HL_RATE, 0, 1, 4.5f),
        mk_event("u3", "i3", HL_VIEW, MAX_TS, 1, 0.0f),
    };
    uint8_t buf[1024];
    for (int i = 0; i < 3; i++) {
        hl_codec_event out;
        char detail[200] = "";
        int n = hl_codec_encode_event(c, &in[i], buf, sizeof buf);
        CHECKF(n > 0, "encode %d: %d", i, n);
        if (n <= 0) continue;
        hl_codec_reason r = hl_codec_decode_event(c, buf, (size_t)n, &out, detail, sizeof detail);
        CHECKF(r == HL_CODEC_OK, "event %d: %s: %s", i, hl_codec_reason_name(r), detail);
        CHECKF(r != HL_CODEC_OK || same_event(&in[i], &out), "event %d differs", i);
    }
    CHECK(hl_codec_encode_event(c, &in[0], buf, 4) == HL_EFULL);
    hl_codec_destroy(c);
}

static void test_roundtrip_confluent(void) { roundtrip(HL_FRAMING_CONFLUENT); }
static void test_roundtrip_raw(void)       { roundtrip(HL_FRAMING_RAW); }

/* Our encoder writes the same bytes as avro-c's generic writer. */
static void test_encoder_matches_avro_c(void)
{
    hl_codec *c = new_codec(HL_FRAMING_CONFLUENT);
    char *json, path[512];
    uint8_t a[512], b[512];
    hl_codec_event ev = mk_event("alice", "book-7", HL_ADD_TO_CART, 1234567890123LL, 1, 2.5f);
    snprintf(path, sizeof path, "%s/1.avsc", dir);
    json = slurp(path);
    size_t na = avro_c_encode(json, 1, &ev, NULL, a, sizeof a);
    int nb = hl_codec_encode_event(c, &ev, b, sizeof b);
    CHECKF(na > 0 && (int)na == nb && !memcmp(a, b, na), "avro-c %zu bytes, ours %d", na, nb);
    free(json);
    hl_codec_destroy(c);
}

/* The same events through the fast path (id 1) and through avro-c
 * resolution (id 3, evolved: reordered, extra field) decode alike. */
static void test_fast_and_resolved_paths_agree(void)
{
    hl_codec *c = new_codec(HL_FRAMING_CONFLUENT);
    char *json, path[512], user[32], item[32];
    uint8_t a[512], b[512];
    snprintf(path, sizeof path, "%s/1.avsc", dir);
    json = slurp(path);
    srand(7);
    for (int i = 0; i < 500; i++) {
        hl_codec_event ev, da, db;
        snprintf(user, sizeof user, "user-%d", rand() % 1000);
        snprintf(item, sizeof item, "item-%d", rand());
        ev = mk_event(user, item, rand() % HL_N_TYPES, (int64_t)rand() * 1000,
                      rand() & 1, (float)(rand() % 100) / 7.0f);
        const char *ctx = (i % 3 == 0) ? "page" : NULL;
        size_t na = avro_c_encode(json, 1, &ev, ctx, a, sizeof a);
        size_t nb = avro_c_encode(evolved_json, 3, &ev, ctx, b, sizeof b);
        hl_codec_reason ra = hl_codec_decode_event(c, a, na, &da, NULL, 0);
        hl_codec_reason rb = hl_codec_decode_event(c, b, nb, &db, NULL, 0);
        CHECKF(ra == HL_CODEC_OK && rb == HL_CODEC_OK, "event %d: %s / %s", i,
               hl_codec_reason_name(ra), hl_codec_reason_name(rb));
        /* da borrows from a, db from the codec: both still valid here. */
        CHECKF(ra != HL_CODEC_OK || same_event(&ev, &da), "event %d: fast path differs", i);
        CHECKF(rb != HL_CODEC_OK || same_event(&ev, &db), "event %d: resolved path differs", i);
        if (t_case_failed) break;
    }
    free(json);
    hl_codec_destroy(c);
}

/* Enum symbols resolve by name, not by index; a writer symbol the reader
 * does not know is a bad enum. Fields missing in the writer take the
 * reader's defaults (weight, context: null). */
static void test_enum_resolves_by_symbol(void)
{
    hl_codec *c = new_codec(HL_FRAMING_CONFLUENT);
    hl_codec_event ev;
    uint8_t buf[64];
    const uint8_t click[] = { 0x02, 'u', 0x02, 'i', 0x0a, 0xd0, 0x0f };  /* index 5: CLICK */
    const uint8_t rate[]  = { 0x02, 'u', 0x02, 'i', 0x02, 0xd0, 0x0f };  /* index 1: RATE */
    const uint8_t share[] = { 0x02, 'u', 0x02, 'i', 0x00, 0xd0, 0x0f };  /* index 0: SHARE */
    CHECK(hl_codec_writer(c, 6) == HL_CODEC_WRITER_RESOLVED);
    size_t n = frame(buf, 6, click, sizeof click);
    hl_codec_reason r = hl_codec_decode_event(c, buf, n, &ev, NULL, 0);
    CHECKF(r == HL_CODEC_OK && ev.type == HL_CLICK, "%s, type %d", hl_codec_reason_name(r), ev.type);
    CHECK(r == HL_CODEC_OK && !ev.has_weight && ev.weight == 1.0f);
    n = frame(buf, 6, rate, sizeof rate);
    r = hl_codec_decode_event(c, buf, n, &ev, NULL, 0);
    CHECKF(r == HL_CODEC_OK && ev.type == HL_RATE, "%s, type %d", hl_codec_reason_name(r), ev.type);
    n = frame(buf, 6, share, sizeof share);
    CHECK(decode(c, buf, n) == HL_CODEC_BAD_ENUM);
    hl_codec_destroy(c);
}

/* A schema file deployed after the first record that needs it is picked up
 * without a restart (hl_codec_writer looks again at once; the decoder
 * within 5 s). */
static void test_schema_deployed_later(void)
{
    hl_codec *c = new_codec(HL_FRAMING_CONFLUENT);
    char path[512];
    EXPECT(c, 8, HL_CODEC_UNKNOWN_SCHEMA, 0xd0, 0x0f, 0x00, 0x02, 'i', 0x02, 'u', 0x00, 0x02, 0x00);
    snprintf(path, sizeof path, "%s/8.avsc", dir);
    write_file(path, evolved_json);
    CHECK(hl_codec_writer(c, 8) == HL_CODEC_WRITER_RESOLVED);
    EXPECT(c, 8, HL_CODEC_OK, 0xd0, 0x0f, 0x00, 0x02, 'i', 0x02, 'u', 0x00, 0x02, 0x00);
    hl_codec_destroy(c);
}

/* Id 1 is our own schema: a worker started where no schemas/ directory
 * exists (outside the source tree) must still read what halflife writes,
 * while other ids still need their file. */
static void test_own_schema_built_in(void)
{
    char err[256];
    hl_codec_opts o = { HL_FRAMING_CONFLUENT, HL_FRAMING_CONFLUENT,
                        "/nonexistent/halflife-schemas", 2, MIN_TS, MAX_TS, 0, NULL, NULL, 0 };
    hl_codec *c = hl_codec_create(&o, err, sizeof err);
    CHECKF(c != NULL, "%s", err);
    if (c == NULL)
        return;
    CHECK(hl_codec_writer(c, 1) == HL_CODEC_WRITER_FAST);
    EXPECT(c, 1, HL_CODEC_OK, GOOD1);
    EXPECT(c, 3, HL_CODEC_UNKNOWN_SCHEMA, GOOD1);
    hl_codec_destroy(c);
}

/* A registry stand-in: ids 1 (ours) and 5 (evolved_json) exist, every
 * other id is unknown; calls counts the requests for id 5. */
static int calls5;
static int two_ids_fn(void *arg, int32_t id, char **text, char *why, size_t whylen)
{
    if (id == 5)
        calls5++;
    if (id != 1 && id != 5) {
        snprintf(why, whylen, "schema id %d: no such id", (int)id);
        return HL_ENOENT;
    }
    *text = strdup(id == 1 ? hl_codec_event_schema() : evolved_json);
    return 0;
}

/* Records naming 300 ids that do not exist (anyone who can write to the
 * input topic can send them) must not fill the writer cache for good:
 * an id that really exists, seen after them, is loaded once, not
 * re-parsed and re-resolved for every record (before the fix: once per
 * record while ids alternated, all through the scratch entry). */
static void test_bogus_ids_do_not_fill_cache(void)
{
    char err[256];
    hl_codec_opts o = { .input_framing = HL_FRAMING_CONFLUENT,
                        .output_framing = HL_FRAMING_CONFLUENT, .output_schema_id = 2,
                        .min_ts_ms = MIN_TS, .max_ts_ms = MAX_TS, .schema_fn = two_ids_fn };
    hl_codec *c = hl_codec_create(&o, err, sizeof err);
    CHECKF(c != NULL, "%s", err);
    if (c == NULL)
        return;
    calls5 = 0;
    CHECK(hl_codec_writer(c, 1) == HL_CODEC_WRITER_FAST);
    for (int32_t id = 1000; id < 1300; id++)
        CHECK(hl_codec_writer(c, id) == HL_CODEC_WRITER_UNKNOWN);
    for (int i = 0; i < 10; i++) {
        CHECK(hl_codec_writer(c, 1) == HL_CODEC_WRITER_FAST);
        CHECK(hl_codec_writer(c, 5) == HL_CODEC_WRITER_RESOLVED);
    }
    CHECKF(calls5 == 1, "id 5 was loaded %d times for 10 uses, want once", calls5);
    EXPECT(c, 5, HL_CODEC_OK, 0xd0, 0x0f, 0x00, 0x02, 'i', 0x02, 'u', 0x00, 0x02, 0x00);
    hl_codec_destroy(c);
}

/* Bytes malloc has handed out and not had back (small and large blocks). */
static size_t heap_used(void)
{
    struct mallinfo2 m = mallinfo2();
    return m.uordblks + m.hblkhd;
}

/* A writer schema of about text_bytes: user_id, item_id and timestamp,
 * then fields of small unions, the shape avro-c parses into the most
 * memory per byte of text (about 40 times); without user_id when bad, so
 * that it parses but is refused. malloc'd. */
static char *union_schema(size_t text_bytes, int bad)
{
    char *t = malloc(text_bytes + 256);
    size_t n = 0;
    if (t == NULL)
        return NULL;
    n += (size_t)sprintf(t, "{\"type\":\"record\",\"name\":\"BehaviourEvent\",\"namespace\":"
                         "\"halflife\",\"fields\":[%s{\"name\":\"item_id\",\"type\":\"string\"},"
                         "{\"name\":\"timestamp\",\"type\":\"long\"}",
                         bad ? "" : "{\"name\":\"user_id\",\"type\":\"string\"},");
    for (int i = 0; n < text_bytes; i++)
        n += (size_t)sprintf(t + n, ",{\"name\":\"f%d\",\"type\":[\"null\",\"int\"]}", i);
    strcpy(t + n, "]}");
    return t;
}

/* Ids from 100 on are union_schema()s of UNION_TEXT bytes, bad from 200. */
#define UNION_TEXT ((size_t)256 << 10)
static int union_fn(void *arg, int32_t id, char **text, char *why, size_t whylen)
{
    if (id < 100) {
        *text = strdup(hl_codec_event_schema());
        return *text ? 0 : HL_EAGAIN;
    }
    *text = union_schema(UNION_TEXT, id >= 200);
    return *text ? 0 : HL_EAGAIN;
}

/* A codec keeps up to 256 writer schemas, parsed; avro-c's form of one is
 * up to about 40 times its text, and a schema may be 1 MiB: 256 of them
 * held 10 GB in each shard's codec. The ids used least lately now give
 * way past a budget of text (fetched and parsed again when used), and a
 * refused schema is not kept parsed at all. Here 32 schemas of 256 KB
 * (8 MB of text, about 320 MB parsed) and 8 refused ones. */
static void test_writer_schemas_stay_within_a_byte_budget(void)
{
    char err[256];
    hl_codec_opts o = { .input_framing = HL_FRAMING_CONFLUENT,
                        .output_framing = HL_FRAMING_CONFLUENT, .output_schema_id = 2,
                        .min_ts_ms = MIN_TS, .max_ts_ms = MAX_TS, .schema_fn = union_fn };
    hl_codec *c = hl_codec_create(&o, err, sizeof err);
    CHECKF(c != NULL, "%s", err);
    if (c == NULL)
        return;
    size_t before = heap_used();
    for (int32_t id = 100; id < 132; id++)
        CHECK(hl_codec_writer(c, id) == HL_CODEC_WRITER_RESOLVED);
    size_t held = heap_used() - before;
    CHECKF(held < ((size_t)120 << 20), "32 writer schemas of %zu KB hold %zu MB",
           UNION_TEXT >> 10, held >> 20);
    for (int32_t id = 200; id < 208; id++)
        CHECK(hl_codec_writer(c, id) == HL_CODEC_WRITER_UNKNOWN);
    size_t refused = heap_used() - before - held;
    CHECKF(refused < ((size_t)16 << 20), "8 refused writer schemas of %zu KB hold %zu MB",
           UNION_TEXT >> 10, refused >> 20);
    /* The first, given way long ago, and the last, still held, both
     * decode: user "u", item "i", ts 1000, then a null for each union. */
    static uint8_t body[UNION_TEXT / 16], buf[sizeof body + 5];
    const uint8_t head[] = {0x02, 'u', 0x02, 'i', 0xd0, 0x0f};
    size_t n = sizeof head;
    char *text = union_schema(UNION_TEXT, 0);
    for (const char *p = text; p && (p = strstr(p, "[\"null\"")) != NULL && n < sizeof body; p++)
        body[n++] = 0;                      /* union branch 0: null */
    memcpy(body, head, sizeof head);
    free(text);
    for (int32_t id = 100; id < 132; id += 31) {
        hl_codec_reason r = decode(c, buf, frame(buf, id, body, n));
        CHECKF(r == HL_CODEC_OK, "id %d: %s", (int)id, hl_codec_reason_name(r));
    }
    hl_codec_destroy(c);
}

static void test_raw_framing(void)
{
    hl_codec *c = new_codec(HL_FRAMING_RAW);
    const uint8_t good[] = { GOOD1 };
    hl_codec_event ev;
    CHECK(hl_codec_decode_event(c, good, sizeof good, &ev, NULL, 0) == HL_CODEC_OK);
    CHECK(ev.type == HL_CLICK && ev.ts_ms == 1000 && ev.has_weight && ev.weight == 2.0f);
    CHECK(ev.user_len == 1 && ev.user[0] == 'u' && ev.item_len == 1 && ev.item[0] == 'i');
    CHECK(decode(c, good, 0) == HL_CODEC_TOO_SHORT);
    CHECK(decode(c, good, 3) == HL_CODEC_TRUNCATED);
    hl_codec_destroy(c);
}

/* event.max.future.ms: an event up to max_future_ms ahead of the clock
 * given once per batch decodes; one ms more is bad_timestamp and says
 * how far ahead it was; event.max.ts.ms still bounds it; 0 is no bound. */
static void test_future_bound(void)
{
    char detail[160];
    const int64_t now = 1796000000000LL, ahead = 3600000;
    hl_codec *c = new_codec(HL_FRAMING_RAW);
    uint8_t buf[64];
    hl_codec_event ev;
    hl_codec_event at = mk_event("u", "i", HL_VIEW, now + ahead, 0, 0);
    hl_codec_event past = mk_event("u", "i", HL_VIEW, now + ahead + 1, 0, 0);
    int n_at = hl_codec_encode_event(c, &at, buf, sizeof buf);
    CHECK(n_at > 0);
    /* No clock yet: only event.max.ts.ms bounds. */
    CHECK(hl_codec_decode_event(c, buf, (size_t)n_at, &ev, NULL, 0) == HL_CODEC_OK);
    hl_codec_set_clock(c, now, ahead);
    CHECK(hl_codec_decode_event(c, buf, (size_t)n_at, &ev, NULL, 0) == HL_CODEC_OK);
    int n_past = hl_codec_encode_event(c, &past, buf, sizeof buf);
    CHECK(n_past > 0);
    CHECK(hl_codec_decode_event(c, buf, (size_t)n_past, &ev, detail, sizeof detail) ==
          HL_CODEC_BAD_TIMESTAMP);
    CHECK(strstr(detail, "3600 s ahead") && strstr(detail, "event.max.future.ms=3600000"));
    hl_codec_set_clock(c, now, 0);        /* no bound */
    CHECK(hl_codec_decode_event(c, buf, (size_t)n_past, &ev, NULL, 0) == HL_CODEC_OK);
    hl_codec_set_clock(c, MAX_TS, ahead); /* the clock past event.max.ts.ms */
    hl_codec_event late = mk_event("u", "i", HL_VIEW, MAX_TS + 1, 0, 0);
    int n_late = hl_codec_encode_event(c, &late, buf, sizeof buf);
    CHECK(hl_codec_decode_event(c, buf, (size_t)n_late, &ev, detail, sizeof detail) ==
          HL_CODEC_BAD_TIMESTAMP && strstr(detail, "outside"));
    hl_codec_set_clock(c, INT64_MAX, ahead);  /* no overflow */
    CHECK(hl_codec_decode_event(c, buf, (size_t)n_late, &ev, NULL, 0) == HL_CODEC_BAD_TIMESTAMP);
    hl_codec_destroy(c);
}

static void test_bad_options(void)
{
    char err[128] = "";
    hl_codec_opts o = { HL_FRAMING_RAW, HL_FRAMING_RAW, NULL, 2, 10, 5, 0, NULL, NULL, 0 };
    CHECK(hl_codec_create(&o, err, sizeof err) == NULL && strstr(err, "timestamp"));
    o.min_ts_ms = 0;
    o.max_weight = NAN;
    CHECK(hl_codec_create(&o, err, sizeof err) == NULL && strstr(err, "weight"));
    o.max_weight = INFINITY;
    CHECK(hl_codec_create(&o, err, sizeof err) == NULL && strstr(err, "weight"));
    o.max_weight = -1;
    CHECK(hl_codec_create(&o, err, sizeof err) == NULL && strstr(err, "weight"));
    hl_codec_destroy(NULL);
}

/* The items array of test_encode_list's list, as avro-c's generic reader
 * decoded it: a (0.5, because h) and bb (-1.25, because null). */
static void check_list_items(avro_value_t *items)
{
    avro_value_t e, g, br;
    const char *str;
    size_t sz, n_items;
    float fv;
    int disc = -1;
    CHECK(avro_value_get_size(items, &n_items) == 0 && n_items == 2);
    avro_value_get_by_index(items, 0, &e, NULL);
    avro_value_get_by_name(&e, "item_id", &g, NULL);
    CHECK(avro_value_get_string(&g, &str, &sz) == 0 && !strcmp(str, "a"));
    avro_value_get_by_name(&e, "score", &g, NULL);
    CHECK(avro_value_get_float(&g, &fv) == 0 && fv == 0.5f);
    avro_value_get_by_name(&e, "because_item_id", &g, NULL);
    avro_value_get_discriminant(&g, &disc);
    avro_value_get_current_branch(&g, &br);
    CHECK(disc == 1 && avro_value_get_string(&br, &str, &sz) == 0 && !strcmp(str, "h"));
    avro_value_get_by_index(items, 1, &e, NULL);
    avro_value_get_by_name(&e, "item_id", &g, NULL);
    CHECK(avro_value_get_string(&g, &str, &sz) == 0 && !strcmp(str, "bb"));
    avro_value_get_by_name(&e, "because_item_id", &g, NULL);
    avro_value_get_discriminant(&g, &disc);
    CHECK(disc == 0);
}

/* Decodes the list bytes with avro-c's generic reader under
 * schemas/recommendation_list.avsc and checks every field. */
static void test_encode_list(void)
{
    hl_codec *c = new_codec(HL_FRAMING_CONFLUENT);
    hl_codec_rec items[2] = { { "a", 1, 0.5f, "h", 1 }, { "bb", 2, -1.25f, NULL, 0 } };
    hl_codec_list l = { "u1", 2, 1700000000000LL, "v7", items, 2, "behaviour-events", 3, 42 };
    uint8_t buf[512];
    char path[512], *json;
    avro_schema_t s;
    avro_value_iface_t *iface;
    avro_value_t v, f, g;
    avro_reader_t rd;
    const char *str;
    size_t sz;
    int64_t lv;
    int32_t iv;

    int n = hl_codec_encode_list(c, &l, buf, sizeof buf);
    CHECK(n > 5 && buf[0] == 0 && buf[4] == 2);
    CHECK(hl_codec_encode_list(c, &l, buf, 10) == HL_EFULL);
    n = hl_codec_encode_list(c, &l, buf, sizeof buf);
    snprintf(path, sizeof path, "%s/schemas/recommendation_list.avsc", top());
    json = slurp(path);
    CHECK(json != NULL && avro_schema_from_json_length(json, strlen(json), &s) == 0);
    if (json == NULL) { hl_codec_destroy(c); return; }
    iface = avro_generic_class_from_schema(s);
    avro_generic_value_new(iface, &v);
    rd = avro_reader_memory((const char *)buf + 5, n - 5);
    CHECK(avro_value_read(rd, &v) == 0);
    avro_value_get_by_name(&v, "user_id", &f, NULL);
    CHECK(avro_value_get_string(&f, &str, &sz) == 0 && !strcmp(str, "u1"));
    avro_value_get_by_name(&v, "generated_at", &f, NULL);
    CHECK(avro_value_get_long(&f, &lv) == 0 && lv == 1700000000000LL);
    avro_value_get_by_name(&v, "model_version", &f, NULL);
    CHECK(avro_value_get_string(&f, &str, &sz) == 0 && !strcmp(str, "v7"));
    avro_value_get_by_name(&v, "items", &f, NULL);
    check_list_items(&f);
    avro_value_get_by_name(&v, "source", &f, NULL);
    avro_value_get_by_name(&f, "partition", &g, NULL);
    CHECK(avro_value_get_int(&g, &iv) == 0 && iv == 3);
    avro_value_get_by_name(&f, "offset", &g, NULL);
    CHECK(avro_value_get_long(&g, &lv) == 0 && lv == 42);
    avro_reader_free(rd);
    avro_value_decref(&v);
    avro_value_iface_decref(iface);
    avro_schema_decref(s);
    free(json);
    hl_codec_destroy(c);
}

/* ---- modes for tests/integration/test_codec_python.py --------------------- */

static hl_codec *env_codec(void)
{
    const char *d = getenv("HL_CODEC_SCHEMAS_DIR"), *in = getenv("HL_CODEC_INPUT_FORMAT"),
               *outf = getenv("HL_CODEC_OUTPUT_FORMAT");
    char err[256];
    hl_codec_opts o = { in && !strcmp(in, "raw") ? HL_FRAMING_RAW : HL_FRAMING_CONFLUENT,
                        outf && !strcmp(outf, "raw") ? HL_FRAMING_RAW : HL_FRAMING_CONFLUENT,
                        d ? d : "schemas", 2, MIN_TS, MAX_TS, 0, NULL, NULL, 0 };
    hl_codec *c = hl_codec_create(&o, err, sizeof err);
    if (c == NULL) { fprintf(stderr, "codec: %s\n", err); exit(1); }
    return c;
}

static void print_json_string(const char *s, size_t n)
{
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch < 0x20) printf("\\u%04x", ch);
        else putchar(ch);
    }
    putchar('"');
}

static int decode_file_mode(const char *path)
{
    hl_codec *c = env_codec();
    FILE *f = fopen(path, "rb");
    uint8_t hdr[4], *buf = malloc(1 << 20);
    if (f == NULL) { perror(path); return 1; }
    while (fread(hdr, 1, 4, f) == 4) {
        size_t n = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
        hl_codec_event ev;
        char detail[256];
        if (n > (1 << 20) || fread(buf, 1, n, f) != n) { fprintf(stderr, "bad file\n"); return 1; }
        hl_codec_reason r = hl_codec_decode_event(c, buf, n, &ev, detail, sizeof detail);
        if (r != HL_CODEC_OK) {
            printf("{\"ok\":false,\"reason\":\"%s\"}\n", hl_codec_reason_name(r));
            continue;
        }
        printf("{\"ok\":true,\"user\":");
        print_json_string(ev.user, ev.user_len);
        printf(",\"item\":");
        print_json_string(ev.item, ev.item_len);
        printf(",\"type\":\"%s\",\"ts\":%lld,\"weight\":", hl_type_name(ev.type), (long long)ev.ts_ms);
        if (ev.has_weight) printf("%.9g}\n", (double)ev.weight);
        else printf("null}\n");
    }
    free(buf);
    fclose(f);
    hl_codec_destroy(c);
    return 0;
}

/* One list per line: user TAB generated_at TAB model_version TAB topic TAB
 * partition TAB offset TAB items, items being item:score:because separated
 * by ',' with because '-' for null (ids must not hold ':' ',' or TAB). */
static int encode_line(hl_codec *c, char *line, FILE *out)
{
    char *field[7], *save = NULL, *tok;
    hl_codec_rec items[64];
    hl_codec_list l;
    uint8_t buf[65536], hdr[4];
    int nf = 0, n;
    for (tok = strtok_r(line, "\t\n", &save); tok && nf < 7; tok = strtok_r(NULL, "\t\n", &save))
        field[nf++] = tok;
    if (nf < 6) return -1;
    memset(&l, 0, sizeof l);
    l.user = field[0]; l.user_len = (uint32_t)strlen(field[0]);
    l.generated_at_ms = atoll(field[1]);
    l.model_version = field[2]; l.src_topic = field[3];
    l.src_partition = atoi(field[4]); l.src_offset = atoll(field[5]);
    l.items = items;
    for (tok = nf == 7 ? strtok_r(field[6], ",", &save) : NULL; tok && l.n_items < 64;
         tok = strtok_r(NULL, ",", &save)) {
        char *s1 = strchr(tok, ':'), *s2 = s1 ? strchr(s1 + 1, ':') : NULL;
        if (!s2) return -1;
        *s1 = *s2 = 0;
        hl_codec_rec *it = &items[l.n_items++];
        it->item = tok; it->item_len = (uint32_t)strlen(tok);
        it->score = strtof(s1 + 1, NULL);
        it->because = strcmp(s2 + 1, "-") ? s2 + 1 : NULL;
        it->because_len = it->because ? (uint32_t)strlen(it->because) : 0;
    }
    if ((n = hl_codec_encode_list(c, &l, buf, sizeof buf)) < 0) return -1;
    hdr[0] = (uint8_t)(n >> 24); hdr[1] = (uint8_t)(n >> 16);
    hdr[2] = (uint8_t)(n >> 8);  hdr[3] = (uint8_t)n;
    fwrite(hdr, 1, 4, out);
    fwrite(buf, 1, (size_t)n, out);
    return 0;
}

static int encode_lists_mode(const char *path)
{
    hl_codec *c = env_codec();
    const char *outp = getenv("HL_CODEC_OUT");
    FILE *in = fopen(path, "r"), *out = outp ? fopen(outp, "wb") : NULL;
    char line[65536];
    int rc = 0;
    if (in == NULL || out == NULL) { fprintf(stderr, "cannot open %s or HL_CODEC_OUT\n", path); return 1; }
    while (rc == 0 && fgets(line, sizeof line, in))
        if (encode_line(c, line, out) != 0) { fprintf(stderr, "bad line: %s", line); rc = 1; }
    fclose(in);
    fclose(out);
    hl_codec_destroy(c);
    return rc;
}

int main(void)
{
    if (getenv("HL_CODEC_DECODE_FILE"))
        return decode_file_mode(getenv("HL_CODEC_DECODE_FILE"));
    if (getenv("HL_CODEC_ENCODE_LISTS"))
        return encode_lists_mode(getenv("HL_CODEC_ENCODE_LISTS"));
    make_schemas_dir();
    RUN(test_reason_names);
    RUN(test_schema_files_match_reader);
    RUN(test_roundtrip_confluent);
    RUN(test_roundtrip_raw);
    RUN(test_encoder_matches_avro_c);
    RUN(test_fast_and_resolved_paths_agree);
    RUN(test_enum_resolves_by_symbol);
    RUN(test_schema_deployed_later);
    RUN(test_own_schema_built_in);
    RUN(test_bogus_ids_do_not_fill_cache);
    RUN(test_writer_schemas_stay_within_a_byte_budget);
    RUN(test_raw_framing);
    RUN(test_future_bound);
    RUN(test_bad_options);
    RUN(test_encode_list);
    remove_schemas_dir();
    TEST_EXIT();
}
