/* bench_codec.c - events decoded per second on one core: the checked fast
 * path (writer schema id 1 = ours), the avro-c resolving path (an evolved
 * writer: reordered fields, an extra optional one), and avro-c's plain
 * generic decoder on the same bytes (the 0.35 us/event of DESIGN.md section
 * 9, for comparison); then RecommendationLists (20 items) encoded per second.
 *
 * The ceiling of each figure is the rate at which the same bytes can merely
 * be copied (memcpy of the whole payload set, in the same run): a decoder
 * must read every byte, an encoder write every byte. Figures are medians of
 * 5 repetitions over 200,000 realistic events (ids like "user-123456"). */
#include "bench_events.h"
#include "bench_args.h"
#include "codec.h"

#include <avro.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define REPS     5

static const char ours_json[] = BENCH_OURS_FIELDS "]}";

static const char evolved_json[] =
    "{\"type\":\"record\",\"name\":\"BehaviourEvent\",\"namespace\":\"halflife\",\"fields\":["
    "{\"name\":\"timestamp\",\"type\":\"long\"},"
    "{\"name\":\"session\",\"type\":[\"null\",\"string\"],\"default\":null},"
    "{\"name\":\"item_id\",\"type\":\"string\"},{\"name\":\"user_id\",\"type\":\"string\"},"
    "{\"name\":\"weight\",\"type\":[\"null\",\"float\"],\"default\":null},"
    "{\"name\":\"event_type\",\"type\":{\"type\":\"enum\",\"name\":\"EventType\",\"symbols\":"
    "[\"VIEW\",\"CLICK\",\"FAVORITE\",\"ADD_TO_CART\",\"PURCHASE\",\"RATE\"]}},"
    "{\"name\":\"context\",\"type\":[\"null\",{\"type\":\"map\",\"values\":\"string\"}],\"default\":null}]}";

static double median(double *v)
{
    qsort(v, REPS, sizeof *v, cmp_double);
    return v[REPS / 2];
}

static void put_long(uint8_t **p, int64_t v)
{
    uint64_t u = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    while (u >= 0x80) { *(*p)++ = (uint8_t)(u | 0x80); u >>= 7; }
    *(*p)++ = (uint8_t)u;
}

static void put_str(uint8_t **p, const char *s)
{
    size_t n = strlen(s);
    put_long(p, (int64_t)n);
    memcpy(*p, s, n);
    *p += n;
}

/* Event i in writer layout 1 (ours, via the codec) or 3 (evolved, by hand). */
static void make_payloads(hl_codec *c, payloads *pl, int layout)
{
    uint8_t *p;
    if (layout == 1) {
        bench_make_payloads(c, pl, NULL, 0);
        return;
    }
    pl->buf = malloc((size_t)N_EVENTS * 64);
    p = pl->buf;
    rng = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < N_EVENTS; i++) {
        char user[32], item[32];
        hl_codec_event ev = bench_event(i, user, item);
        pl->off[i] = (size_t)(p - pl->buf);
        *p++ = 0; *p++ = 0; *p++ = 0; *p++ = 0; *p++ = 3;
        put_long(&p, ev.ts_ms);
        put_long(&p, 0);                       /* session: null */
        put_str(&p, item);
        put_str(&p, user);
        put_long(&p, ev.has_weight);
        if (ev.has_weight) { memcpy(p, &ev.weight, 4); p += 4; }
        put_long(&p, ev.type);
        put_long(&p, 0);                       /* context: null */
    }
    pl->off[N_EVENTS] = (size_t)(p - pl->buf);
}

/* avro-c's generic decoder alone, reader = writer, no checks. */
static double time_avro_generic(const payloads *pl, uint64_t *sum)
{
    avro_schema_t s;
    avro_value_iface_t *iface;
    avro_value_t v, f;
    avro_reader_t rd = avro_reader_memory("", 0);
    double t0, rate;
    avro_schema_from_json_length(ours_json, sizeof ours_json - 1, &s);
    iface = avro_generic_class_from_schema(s);
    avro_generic_value_new(iface, &v);
    t0 = now_s();
    for (int i = 0; i < N_EVENTS; i++) {
        int64_t ts = 0;
        avro_reader_memory_set_source(rd, (const char *)pl->buf + pl->off[i] + 5,
                                      (int64_t)(pl->off[i + 1] - pl->off[i] - 5));
        avro_value_reset(&v);
        if (avro_value_read(rd, &v) != 0) {
            fprintf(stderr, "bench_codec: avro-c: %s\n", avro_strerror());
            exit(1);
        }
        avro_value_get_by_index(&v, 3, &f, NULL);
        avro_value_get_long(&f, &ts);
        *sum += (uint64_t)ts;
    }
    rate = N_EVENTS / (now_s() - t0);
    avro_value_decref(&v);
    avro_value_iface_decref(iface);
    avro_schema_decref(s);
    avro_reader_free(rd);
    return rate;
}

/* Bytes/s of copying the payload set, as events/s of the same mean size. */
static double time_copy(const payloads *pl, uint8_t *dst)
{
    size_t n = pl->off[N_EVENTS];
    double t0 = now_s();
    for (int r = 0; r < 4; r++) {
        memcpy(dst, pl->buf, n);
        __asm__ volatile("" : : "r"(dst) : "memory");
    }
    return 4.0 * N_EVENTS / (now_s() - t0);
}

static double time_encode_lists(hl_codec *c, uint8_t *out, size_t *bytes)
{
    hl_codec_rec items[20];
    char names[20][24], because[20][24];
    for (int i = 0; i < 20; i++) {
        snprintf(names[i], sizeof names[i], "item-%d", 10000 + i * 7);
        snprintf(because[i], sizeof because[i], "item-%d", 20000 + i);
        items[i] = (hl_codec_rec){ names[i], (uint32_t)strlen(names[i]), 1.0f / (float)(i + 1),
                                   (i % 3) ? because[i] : NULL, (uint32_t)strlen(because[i]) };
    }
    hl_codec_list l = { "user-123456", 11, 1700000000000LL, "model-v1", items, 20,
                        "behaviour-events", 3, 0 };
    size_t pos = 0;
    double t0 = now_s();
    for (int i = 0; i < N_EVENTS / 4; i++) {
        l.src_offset = i;
        if (pos > (size_t)1 << 20) pos = 0;    /* stay in cache: time the encoder */
        int n = hl_codec_encode_list(c, &l, out + pos, 1024);
        if (n < 0) { fprintf(stderr, "bench_codec: encode failed\n"); exit(1); }
        pos += (size_t)n;
        *bytes = (size_t)n;
    }
    return (N_EVENTS / 4) / (now_s() - t0);
}

static void write_schema(const char *dir, int id, const char *json)
{
    char path[256];
    FILE *f;
    snprintf(path, sizeof path, "%s/%d.avsc", dir, id);
    f = fopen(path, "w");
    fputs(json, f);
    fclose(f);
}

static void print(const char *bench, double value, const char *unit, double ceiling)
{
    printf("{\"bench\":\"%s\",\"events\":%d,\"value\":%.4g,\"unit\":\"%s\","
           "\"ceiling\":%.4g,\"ratio\":%.3f,\"ns_per_item\":%.1f}\n",
           bench, N_EVENTS, value, unit, ceiling, value / ceiling, 1e9 / value);
}

static const char usage[] =
    "usage: bench_codec\n"
    "Prints JSON lines: events decoded per second (fast, resolving, avro-c generic)\n"
    "and lists encoded per second. It takes no arguments.\n";

int main(int argc, char **argv)
{
    bench_args("bench_codec", argc, argv, usage, argc > 1 ? argv[1] : NULL);
    char dir[] = "/tmp/hl_bench_codec_XXXXXX", err[256], path[256];
    static payloads p1, p3;
    double fast[REPS], resolved[REPS], generic[REPS], copy1[REPS], copy3[REPS], enc[REPS];
    uint64_t sum = 0;
    size_t list_bytes = 0;

    if (mkdtemp(dir) == NULL) { perror("mkdtemp"); return 1; }
    write_schema(dir, 1, ours_json);
    write_schema(dir, 3, evolved_json);
    hl_codec_opts o = { HL_FRAMING_CONFLUENT, HL_FRAMING_CONFLUENT, dir, 2, 0, 1LL << 50, 0, NULL, NULL, 0 };
    hl_codec *c = hl_codec_create(&o, err, sizeof err);
    if (c == NULL) { fprintf(stderr, "bench_codec: %s\n", err); return 1; }
    make_payloads(c, &p1, 1);
    make_payloads(c, &p3, 3);
    uint8_t *dst = malloc((size_t)N_EVENTS * 512);
    for (int r = 0; r < REPS; r++) {
        fast[r] = bench_time_decode(c, &p1, &sum);
        resolved[r] = bench_time_decode(c, &p3, &sum);
        generic[r] = time_avro_generic(&p1, &sum);
        copy1[r] = time_copy(&p1, dst);
        copy3[r] = time_copy(&p3, dst);
        enc[r] = time_encode_lists(c, dst, &list_bytes);
    }
    double copy_lists = median(copy1) * (double)p1.off[N_EVENTS] / N_EVENTS / (double)list_bytes;
    print("codec_decode_fast", median(fast), "events/s", median(copy1));
    print("codec_decode_resolved", median(resolved), "events/s", median(copy3));
    print("codec_decode_avro_c_generic", median(generic), "events/s", median(copy1));
    print("codec_encode_list20", median(enc), "lists/s", copy_lists);
    fprintf(stderr, "bench_codec: checksum %llu, %.1f bytes/event, %zu bytes/list\n",
            (unsigned long long)sum, (double)p1.off[N_EVENTS] / N_EVENTS, list_bytes);
    hl_codec_destroy(c);
    snprintf(path, sizeof path, "%s/1.avsc", dir); unlink(path);
    snprintf(path, sizeof path, "%s/3.avsc", dir); unlink(path);
    rmdir(dir);
    free(p1.buf);
    free(p3.buf);
    free(dst);
    return 0;
}
