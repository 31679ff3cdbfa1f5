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
#include "codec.h"

#include <avro.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define N_EVENTS 200000
#define REPS     5

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
    "{\"name\":\"session\",\"type\":[\"null\",\"string\"],\"default\":null},"
    "{\"name\":\"item_id\",\"type\":\"string\"},{\"name\":\"user_id\",\"type\":\"string\"},"
    "{\"name\":\"weight\",\"type\":[\"null\",\"float\"],\"default\":null},"
    "{\"name\":\"event_type\",\"type\":{\"type\":\"enum\",\"name\":\"EventType\",\"symbols\":"
    "[\"VIEW\",\"CLICK\",\"FAVORITE\",\"ADD_TO_CART\",\"PURCHASE\",\"RATE\"]}},"
    "{\"name\":\"context\",\"type\":[\"null\",{\"type\":\"map\",\"values\":\"string\"}],\"default\":null}]}";

typedef struct payloads {
    uint8_t *buf;
    size_t   off[N_EVENTS + 1];
} payloads;

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

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
    pl->buf = malloc((size_t)N_EVENTS * 64);
    p = pl->buf;
    rng = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < N_EVENTS; i++) {
        char user[32], item[32];
        int type = (int)(rnd() % HL_N_TYPES), has_w = rnd() & 1;
        int64_t ts = 1700000000000LL + i * 37;
        float w = (float)(rnd() % 50) / 10.0f;
        snprintf(user, sizeof user, "user-%u", rnd() % 1000000);
        snprintf(item, sizeof item, "item-%u", rnd() % 100000);
        pl->off[i] = (size_t)(p - pl->buf);
        if (layout == 1) {
            hl_codec_event ev = { user, (uint32_t)strlen(user), item, (uint32_t)strlen(item),
                                  type, ts, has_w ? w : 1.0f, has_w };
            p += hl_codec_encode_event(c, &ev, p, 64);
            continue;
        }
        *p++ = 0; *p++ = 0; *p++ = 0; *p++ = 0; *p++ = 3;
        put_long(&p, ts);
        put_long(&p, 0);                       /* session: null */
        put_str(&p, item);
        put_str(&p, user);
        put_long(&p, has_w);
        if (has_w) { memcpy(p, &w, 4); p += 4; }
        put_long(&p, type);
        put_long(&p, 0);                       /* context: null */
    }
    pl->off[N_EVENTS] = (size_t)(p - pl->buf);
}

/* Events/s through the codec; checksum keeps the work observable. */
static double time_codec(hl_codec *c, const payloads *pl, uint64_t *sum)
{
    double t0 = now_s();
    for (int i = 0; i < N_EVENTS; i++) {
        hl_codec_event ev;
        if (hl_codec_decode_event(c, pl->buf + pl->off[i], pl->off[i + 1] - pl->off[i],
                                  &ev, NULL, 0) != HL_CODEC_OK) {
            fprintf(stderr, "bench_codec: event %d does not decode\n", i);
            exit(1);
        }
        *sum += (uint64_t)ev.ts_ms + ev.user_len;
    }
    return N_EVENTS / (now_s() - t0);
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
    char names[20][16], because[20][16];
    for (int i = 0; i < 20; i++) {
        snprintf(names[i], 16, "item-%d", 10000 + i * 7);
        snprintf(because[i], 16, "item-%d", 20000 + i);
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

int main(void)
{
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
        fast[r] = time_codec(c, &p1, &sum);
        resolved[r] = time_codec(c, &p3, &sum);
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
