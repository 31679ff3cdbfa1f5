/* fuzz_dataset.c - libFuzzer target for the event-file readers of
 * `halflife train`, `eval`, `produce` and `demo` (core/train/dataset.c) and
 * the bounded line reader under them (core/train/lines.c).
 *
 * The first byte picks the format (five) and the longest line read, 1..64
 * bytes (so over-long lines, and lines split across the reader's buffer
 * refills, are everyday cases); the rest is the file. It is written to a
 * memfd and read by path, as the commands read theirs. Every line must be
 * counted exactly once (the file's LFs, plus a last line without one),
 * every event well formed (ids of 1..256 bytes of UTF-8 with no NUL, a
 * known type, a finite weight, a time the worker accepts, its line among
 * those read), and the reading must end at the end of the file: a crash,
 * a sanitizer report or any other outcome is a bug.
 *
 * With HL_FUZZ_SEEDS=DIR set (tests/integration/fuzz.sh), LLVMFuzzerInitialize
 * writes a valid file of each format there first, with CRLF ends, a header
 * and a blank line. */
#include "dataset.h"
#include "utf8.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int memfd = -1;
static char path[64];

static void check_id(const char *id, uint32_t len)
{
    if (len < 1 || len > HL_MAX_ID_LEN || memchr(id, '\0', len) != NULL ||
        !hl_utf8_valid(id, len))
        abort();
}

static void check_event(const hl_dataset_event *ev, hl_dataset_format fmt, int64_t lines)
{
    check_id(ev->user, ev->user_len);
    check_id(ev->item, ev->item_len);
    if (ev->type < 0 || ev->type >= HL_N_TYPES || !isfinite(ev->weight) ||
        ev->line < 1 || ev->line > lines)
        abort();
    if (fmt != HL_FMT_SEQ && (ev->ts_ms < 0 || ev->ts_ms > HL_EVENT_MAX_TS_MS ||
                              ev->weight < 0 || ev->weight > HL_EVENT_MAX_WEIGHT))
        abort();
}

/* Lines in the file: its LFs, and a last line that has none. */
static int64_t count_lines(const uint8_t *p, size_t n)
{
    int64_t lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += p[i] == '\n';
    return lines + (n > 0 && p[n - 1] != '\n');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || memfd < 0)
        return 0;
    hl_dataset_opts o = {.format = (hl_dataset_format)(data[0] % 5),
                         .max_line_bytes = 1 + (data[0] / 5) % 64};
    char err[256];
    if (ftruncate(memfd, 0) != 0 ||
        pwrite(memfd, data + 1, size - 1, 0) != (ssize_t)(size - 1))
        abort();
    hl_dataset_reader *r = hl_dataset_open(path, &o, err, sizeof err);
    if (r == NULL)
        abort();
    hl_dataset_event ev;
    hl_dataset_stats st;
    int64_t n = 0;
    int rc;
    while ((rc = hl_dataset_next(r, &ev, err, sizeof err)) == 1) {
        hl_dataset_stats_get(r, &st);
        check_event(&ev, o.format, st.lines);
        n++;
    }
    hl_dataset_stats_get(r, &st);
    if (rc != 0 || st.events != n || st.lines != count_lines(data + 1, size - 1) ||
        st.bad_lines + st.blank_lines > st.lines)
        abort();
    hl_dataset_close(r);
    return 0;
}

static void write_seed(const char *dir, int fmt, const char *text)
{
    char file[4096];
    unsigned char head = (unsigned char)(fmt + 5 * 63);     /* the longest lines */
    snprintf(file, sizeof file, "%s/seed-dataset-%d", dir, fmt);
    FILE *fp = fopen(file, "wb");
    if (fp == NULL || fwrite(&head, 1, 1, fp) != 1 || fputs(text, fp) == EOF) {
        fprintf(stderr, "fuzz_dataset: cannot write seed %s\n", file);
        abort();
    }
    fclose(fp);
}

static void write_seeds(const char *dir)
{
    write_seed(dir, HL_FMT_MOVIELENS_CSV,
               "userId,movieId,rating,timestamp\r\n1,31,2.5,1260759144\r\n\r\n1,1029,3.0,1260759179\n");
    write_seed(dir, HL_FMT_MOVIELENS_DAT, "1::1193::5::978300760\n1::661::3::978302109");
    write_seed(dir, HL_FMT_SEQ, "u1 i1 i2 i3\r\n\nu2\ti3 i1\n");
    write_seed(dir, HL_FMT_TAOBAO, "1,2268318,2520377,pv,1511544070\n1,2333346,2520771,buy,1511561733\n");
    write_seed(dir, HL_FMT_EVENTS_CSV,
               "user_id,item_id,event_type,timestamp_ms,weight\nu1,i1,VIEW,1700000000000\n"
               "u1,i2,RATE,1700000001000,4.5\r\nu2,\xc3\xa9t\xc3\xa9,PURCHASE,1700000002000,\n");
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = getenv("HL_FUZZ_SEEDS");
    /* One memfd for every input, opened again by path as a command opens
     * its --input: no file system writes. */
    if ((memfd = memfd_create("fuzz_dataset", 0)) < 0)
        abort();
    snprintf(path, sizeof path, "/proc/self/fd/%d", memfd);
    if (dir && *dir)
        write_seeds(dir);
    return 0;
}
