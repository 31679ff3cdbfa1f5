/* test_avsc.c - worker/avsc.c: writer schemas that define a name twice are
 * refused before avro-c parses them (avro-c leaks the type it was building
 * on that refusal: about 1.2 KB a parse, and the codec parses a refused id
 * again every 5 s; fuzz_registry found it), and every valid schema still
 * parses. */
#define T_SUITE "test_avsc"
#include "test.h"

#include "avsc.h"
#include "codec.h"

#include <malloc.h>
#include <stdlib.h>
#include <string.h>

/* fuzz_registry's input, as the registry's "schema" string: a record named
 * EventType (the second "name" wins) holding an enum named EventType. */
static const char dup_enum[] =
    "{\"type\":\"record\",\"name\":\"BehaviourEvent\",\"name\":\"EventType\",\"fields\":["
    "{\"name\":\"user_id\",\"type\":\"string\"},{\"name\":\"item_id\",\"type\":\"string\"},"
    "{\"name\":\"event_type\",\"type\":{\"type\":\"enum\",\"name\":\"EventType\","
    "\"symbols\":[\"VIEW\",\"CLICK\"]}},{\"name\":\"timestamp\",\"type\":\"long\"}]}";

static int parses(const char *text, char *why, size_t whylen)
{
    avro_schema_t s = NULL;
    int rc = hl_avsc_parse(text, strlen(text), &s, why, whylen);
    CHECK((rc == 0) == (s != NULL));
    avro_schema_decref(s);
    return rc == 0;
}

static void test_duplicates_refused(void)
{
    static const char *const dups[] = {
        dup_enum,
        /* the same full name by a dotted name and by a namespace */
        "{\"type\":\"record\",\"name\":\"a.b.R\",\"fields\":[{\"name\":\"f\",\"type\":"
        "{\"type\":\"fixed\",\"name\":\"R\",\"size\":2}}]}",
        /* in a union, an array and a map */
        "[{\"type\":\"enum\",\"name\":\"E\",\"symbols\":[\"A\"]},{\"type\":\"array\",\"items\":"
        "{\"type\":\"map\",\"values\":{\"type\":\"enum\",\"name\":\"E\",\"symbols\":[\"B\"]}}}]",
        "{\"type\":\"record\",\"name\":\"R\",\"namespace\":\"n\",\"fields\":[{\"name\":\"x\","
        "\"type\":{\"type\":\"record\",\"name\":\"n.R\",\"fields\":[]}}]}",
    };
    char why[256];
    for (size_t i = 0; i < sizeof dups / sizeof dups[0]; i++) {
        why[0] = '\0';
        CHECKF(!parses(dups[i], why, sizeof why), "schema %zu parsed", i);
        CHECKF(strstr(why, "twice") != NULL, "schema %zu: %s", i, why);
    }
}

static void test_valid_accepted(void)
{
    static const char *const ok[] = {
        "\"string\"",
        /* one simple name in two namespaces, and a reference to a name */
        "{\"type\":\"record\",\"name\":\"R\",\"namespace\":\"a\",\"fields\":["
        "{\"name\":\"x\",\"type\":{\"type\":\"enum\",\"name\":\"E\",\"symbols\":[\"A\"]}},"
        "{\"name\":\"y\",\"type\":{\"type\":\"enum\",\"name\":\"E\",\"namespace\":\"b\",\"symbols\":[\"B\"]}},"
        "{\"name\":\"z\",\"type\":\"E\"},{\"name\":\"w\",\"type\":[\"null\",\"R\"]}]}",
    };
    char why[256];
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        CHECKF(parses(ok[i], why, sizeof why), "schema %zu: %s", i, why);
    CHECKF(parses(hl_codec_event_schema(), why, sizeof why), "%s", why);
    CHECKF(parses(hl_codec_list_schema(), why, sizeof why), "%s", why);
}

static int dup_schema_fn(void *arg, int32_t id, char **text, char *why, size_t whylen)
{
    *text = strdup(dup_enum);
    return 0;
}

/* The codec looks a refused id up on every hl_codec_writer call: 300
 * refusals must not grow the heap (before the fix: about 360 KB; under
 * ASan mallinfo2 does not see ASan's heap, and LeakSanitizer checks). */
static void test_refusal_does_not_leak(void)
{
    char err[256];
    hl_codec_opts o = {HL_FRAMING_CONFLUENT, HL_FRAMING_CONFLUENT, NULL, 2, 0, 1LL << 50, 0,
                       dup_schema_fn, NULL, 0};
    hl_codec *c = hl_codec_create(&o, err, sizeof err);
    CHECKF(c != NULL, "%s", err);
    CHECK(hl_codec_writer(c, 7) == HL_CODEC_WRITER_UNKNOWN);
    size_t before = mallinfo2().uordblks;
    for (int i = 0; i < 300; i++)
        hl_codec_writer(c, 7);
    size_t after = mallinfo2().uordblks;
    CHECKF(after < before + 64 * 1024, "heap grew by %zu bytes over 300 refusals",
           after - before);
    hl_codec_destroy(c);
}

int main(void)
{
    RUN(test_duplicates_refused);
    RUN(test_valid_accepted);
    RUN(test_refusal_does_not_leak);
    TEST_EXIT();
}
