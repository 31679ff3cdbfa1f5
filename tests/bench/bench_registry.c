/* bench_registry.c - what a Schema Registry costs the decoder (DESIGN.md
 * section 13), against tests/integration/registry_standin.py run on the
 * loopback (no registry can be installed here).
 *
 *   registry_decode_fast / _resolved  events/s decoded when the writer
 *       schemas came from the registry (schema_store.c through the codec's
 *       schema_fn); ceiling: the same bytes decoded with the same schemas
 *       read from files, in the same run. Both fill the same per-id cache,
 *       so the ratio should be 1 within noise.
 *   registry_first_id_batch_p99   microseconds to decode a batch of 1000
 *       records one of which names an id never seen (it parks: the decode
 *       returns at once and the fetch runs on the store's thread); ceiling:
 *       the p99 of the same batches without a new id. Lower is better: the
 *       ratio is how much longer the batch that met the new id took.
 *   registry_first_id_wait_p99    milliseconds until such an id decodes
 *       (what its partition waits); ceiling: one GET /schemas/ids/{id}
 *       round trip made directly, p99, same run.
 *
 * Needs /usr/bin/python3 with python3-avro; run from the repository top
 * (make bench does), or set HL_TOP. Figures are medians of 5 repetitions. */
#include "bench_events.h"
#include "bench_args.h"
#include "codec.h"
#include "framing.h"
#include "registry.h"
#include "log.h"
#include "schema_store.h"

#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REPS     5
#define BATCH    1000
#define N_NEW    200            /* batches that meet a new id */

/* Ours, with %s for extra fields a later writer version adds. */
static const char ours_json[] = BENCH_OURS_FIELDS "%s]}";

static void die(const char *what, const char *why)
{
    fprintf(stderr, "bench_registry: %s: %s\n", what, why);
    exit(1);
}

/* ---- the stand-in registry ---------------------------------------------- */

static pid_t standin_pid;

static void standin_start(char *url, size_t len)
{
    int fd[2];
    char path[512], line[64] = "";
    const char *top = getenv("HL_TOP");
    snprintf(path, sizeof path, "%s/tests/integration/registry_standin.py", top && *top ? top : ".");
    if (access(path, R_OK) != 0 || access("/usr/bin/python3", X_OK) != 0 || pipe(fd) != 0)
        die(path, "not found (run from the repository top, or set HL_TOP)");
    if ((standin_pid = fork()) == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(fd[1], 1);
        dup2(null, 2);                  /* its request log */
        close(fd[0]);
        execl("/usr/bin/python3", "python3", path, "--port", "0", (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    FILE *f = fdopen(fd[0], "r");
    if (f == NULL || fgets(line, sizeof line, f) == NULL || strncmp(line, "port=", 5) != 0)
        die("registry_standin.py", "printed no port");
    snprintf(url, len, "http://127.0.0.1:%d", atoi(line + 5));
}

static void standin_stop(void)
{
    kill(standin_pid, SIGTERM);
    waitpid(standin_pid, NULL, 0);
}

/* Registers ours plus `extra` fields under a subject; the registry's id. */
static int32_t register_schema(hl_registry *r, const char *extra)
{
    char text[4096], err[512];
    int32_t id;
    snprintf(text, sizeof text, ours_json, extra);
    if (hl_registry_register(r, "bench-value", text, &id, err, sizeof err) != 0)
        die("register", err);
    return id;
}

/* ---- payloads ----------------------------------------------------------- */

static void set_id(uint8_t *payload, int32_t id)
{
    hl_frame_write(payload, id);
}

/* ---- codecs ------------------------------------------------------------- */

static hl_codec *codec_files(const char *dir)
{
    char err[256];
    hl_codec_opts o = { HL_FRAMING_CONFLUENT, HL_FRAMING_CONFLUENT, dir, 2, 0, 1LL << 50, 0,
                        NULL, NULL, 0 };
    hl_codec *c = hl_codec_create(&o, err, sizeof err);
    if (c == NULL)
        die("codec", err);
    return c;
}

static hl_codec *codec_store(hl_schema_store *s)
{
    char err[256];
    hl_codec_opts o = { HL_FRAMING_CONFLUENT, HL_FRAMING_CONFLUENT, "/nonexistent", 2, 0,
                        1LL << 50, 0, hl_schema_store_get, s, 0 };
    hl_codec *c = hl_codec_create(&o, err, sizeof err);
    if (c == NULL)
        die("codec", err);
    return c;
}

/* Waits for the store's answer for id (the first use asks for it). */
static void warm(hl_codec *c, int32_t id)
{
    for (int i = 0; i < 2000 && hl_codec_writer(c, id) == HL_CODEC_WRITER_WAIT; i++)
        usleep(1000);
    if (hl_codec_writer(c, id) == HL_CODEC_WRITER_WAIT)
        die("store", "the registry did not answer within 2 s");
}

static void write_file(const char *dir, int32_t id, const char *extra)
{
    char path[256], text[4096];
    snprintf(path, sizeof path, "%s/%d.avsc", dir, (int)id);
    snprintf(text, sizeof text, ours_json, extra);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        die(path, "cannot write");
    fputs(text, f);
    fclose(f);
}

/* ---- the first-seen id -------------------------------------------------- */

typedef struct stall {
    double batch_new_us[N_NEW], batch_known_us[N_NEW], wait_ms[N_NEW], rtt_ms[N_NEW];
    double call_us[N_NEW];       /* the one decode call that met the new id */
} stall;

static double odd_call_us;

static double time_batch(hl_codec *c, const payloads *pl, int start, const uint8_t *odd,
                         size_t odd_len)
{
    hl_codec_event ev;
    double t0 = now_s();
    for (int i = start; i < start + BATCH; i++) {
        if (odd != NULL && i == start + BATCH / 2) {
            double t1 = now_s();
            (void)hl_codec_decode_event(c, odd, odd_len, &ev, NULL, 0);   /* parks */
            odd_call_us = (now_s() - t1) * 1e6;
        } else
            (void)hl_codec_decode_event(c, pl->buf + pl->off[i], pl->off[i + 1] - pl->off[i],
                                        &ev, NULL, 0);
    }
    return (now_s() - t0) * 1e6;
}

/* N_NEW ids registered now, each met once by a batch of known ids. */
static void first_ids(hl_registry *r, hl_codec *c, const payloads *pl, stall *st)
{
    char extra[128], err[512], *text;
    uint8_t odd[128];
    for (int k = 0; k < N_NEW; k++) {
        snprintf(extra, sizeof extra, ",{\"name\":\"f%d\",\"type\":[\"null\",\"string\"],"
                 "\"default\":null}", k);
        int32_t id = register_schema(r, extra);
        size_t n = pl->off[k + 1] - pl->off[k];
        memcpy(odd, pl->buf + pl->off[k], n);
        odd[n] = 0;                                     /* f<k>: null */
        set_id(odd, id);
        int start = (k * BATCH) % (N_EVENTS - BATCH);
        st->batch_known_us[k] = time_batch(c, pl, start, NULL, 0);
        double t0 = now_s();
        st->batch_new_us[k] = time_batch(c, pl, start, odd, n + 1);
        st->call_us[k] = odd_call_us;
        while (hl_codec_writer(c, id) == HL_CODEC_WRITER_WAIT)
            usleep(100);
        st->wait_ms[k] = (now_s() - t0) * 1e3;
        t0 = now_s();
        if (hl_registry_schema_by_id(r, id, &text, err, sizeof err) != 0)
            die("get", err);
        st->rtt_ms[k] = (now_s() - t0) * 1e3;
        free(text);
    }
}

static void line(const char *bench, double value, const char *unit, double ceiling,
                 const char *extra)
{
    printf("{\"bench\":\"%s\",\"value\":%.4g,\"unit\":\"%s\",\"ceiling\":%.4g,\"ratio\":%.3f%s}\n",
           bench, value, unit, ceiling, value / ceiling, extra);
}

/* registry_decode_fast and _resolved: the store's codec against files'
 * on our schema and on a later writer's (v2), REPS rounds interleaved. */
static void decode_rates(hl_codec *cf, hl_codec *cs, const payloads *p_ours,
                         const payloads *p_v2, uint64_t *sum)
{
    double ff[REPS], fr[REPS], rf[REPS], rr[REPS];
    for (int k = 0; k < REPS; k++) {
        ff[k] = bench_time_decode(cf, p_ours, sum);
        rf[k] = bench_time_decode(cs, p_ours, sum);
        fr[k] = bench_time_decode(cf, p_v2, sum);
        rr[k] = bench_time_decode(cs, p_v2, sum);
    }
    line("registry_decode_fast", quantile(rf, REPS, 0.5), "events/s", quantile(ff, REPS, 0.5), "");
    line("registry_decode_resolved", quantile(rr, REPS, 0.5), "events/s", quantile(fr, REPS, 0.5),
         "");
}

/* The first-id stalls (first_ids): a batch's time and a worker's wait. */
static void print_first_ids(stall *st)
{
    char extra[128];
    snprintf(extra, sizeof extra, ",\"p50\":%.4g,\"ceiling_p50\":%.4g,\"batch\":%d,"
             "\"new_id_call_p99_us\":%.4g", quantile(st->batch_new_us, N_NEW, 0.5),
             quantile(st->batch_known_us, N_NEW, 0.5), BATCH, quantile(st->call_us, N_NEW, 0.99));
    line("registry_first_id_batch_p99", quantile(st->batch_new_us, N_NEW, 0.99), "us",
         quantile(st->batch_known_us, N_NEW, 0.99), extra);
    snprintf(extra, sizeof extra, ",\"p50\":%.4g,\"ceiling_p50\":%.4g",
             quantile(st->wait_ms, N_NEW, 0.5), quantile(st->rtt_ms, N_NEW, 0.5));
    line("registry_first_id_wait_p99", quantile(st->wait_ms, N_NEW, 0.99), "ms",
         quantile(st->rtt_ms, N_NEW, 0.99), extra);
}

static const char usage[] =
    "usage: bench_registry\n"
    "Prints JSON lines: what a Schema Registry costs the decoder. It takes no arguments.\n";

int main(int argc, char **argv)
{
    bench_args("bench_registry", argc, argv, usage, argc > 1 ? argv[1] : NULL);
    char url[64], err[512], dir[] = "/tmp/hl_bench_registry_XXXXXX", path[256];
    static payloads p_ours, p_v2;
    static stall st;
    uint64_t sum = 0;
    const char *v2 = ",{\"name\":\"session_id\",\"type\":[\"null\",\"string\"],\"default\":null}";
    const uint8_t v2_tail[] = {2, 4, 's', '1'};          /* session_id: "s1" */

    if (mkdtemp(dir) == NULL)
        die("mkdtemp", "failed");
    hl_log_set_level(HL_LOG_WARN);      /* not a line per schema fetched */
    standin_start(url, sizeof url);
    hl_registry_opts ro = {.urls = url, .timeout_ms = 5000};
    hl_registry *r = hl_registry_create(&ro, err, sizeof err);
    if (r == NULL)
        die("registry", err);
    int32_t id_ours = register_schema(r, ""), id_v2 = register_schema(r, v2);
    write_file(dir, id_ours, "");
    write_file(dir, id_v2, v2);
    hl_schema_store *s = hl_schema_store_create(hl_registry_create(&ro, err, sizeof err), NULL,
                                                NULL, err, sizeof err);
    if (s == NULL)
        die("store", err);
    hl_codec *cf = codec_files(dir), *cs = codec_store(s);
    bench_make_payloads(cf, &p_ours, NULL, 0);
    bench_make_payloads(cf, &p_v2, v2_tail, sizeof v2_tail);
    for (int i = 0; i < N_EVENTS; i++) {
        set_id(p_ours.buf + p_ours.off[i], id_ours);
        set_id(p_v2.buf + p_v2.off[i], id_v2);
    }
    warm(cs, id_ours);
    warm(cs, id_v2);
    decode_rates(cf, cs, &p_ours, &p_v2, &sum);
    first_ids(r, cs, &p_ours, &st);
    print_first_ids(&st);
    fprintf(stderr, "bench_registry: checksum %llu\n", (unsigned long long)sum);
    hl_codec_destroy(cf);
    hl_codec_destroy(cs);
    hl_schema_store_destroy(s);
    hl_registry_destroy(r);
    standin_stop();
    snprintf(path, sizeof path, "%s/%d.avsc", dir, (int)id_ours); unlink(path);
    snprintf(path, sizeof path, "%s/%d.avsc", dir, (int)id_v2); unlink(path);
    rmdir(dir);
    free(p_ours.buf);
    free(p_v2.buf);
    return 0;
}
