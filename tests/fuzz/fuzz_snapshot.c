/* fuzz_snapshot.c - libFuzzer target for the snapshot loader.
 *
 * The input is served as a file through a memory-backed hl_io, so the
 * loader's real code path runs: hl_snapshot_read() with any shape, then
 * hl_snapshot_load() into a small table (dim 4, three default heads,
 * history 3) that matches the seeds. Each input is tried twice, the second
 * time with its last four bytes replaced by the CRC32C of the rest, so the
 * fuzzer also reaches what happens after a CRC passes. A crash, a leak, a
 * sanitizer report or a table that loads from bytes the reader rejected is
 * a bug. The same bytes are also picked by name, as the worker picks them
 * (hl_snapshot_load_newest over a directory holding them as
 * fuzz.0.<offset 0>.hls): a file loaded that way whose header is not that
 * topic, partition and offset (a renamed file) is a bug too.
 *
 * With HL_FUZZ_SEEDS=DIR set, LLVMFuzzerInitialize writes a few
 * valid snapshots of that shape into DIR first (tests/integration/fuzz.sh
 * uses it to make the seed corpus). */
#include "crc32c.h"
#include "snapshot.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIM     4
#define HISTORY 3
#define FP      7

typedef struct mem_file {
    const uint8_t *data;
    size_t         size, pos;
    int            open;
} mem_file;

static int m_open(void *ctx, const char *path, int flags, int mode)
{
    mem_file *m = ctx;
    if (m->open) { errno = EMFILE; return -1; }
    m->open = 1;
    m->pos = 0;
    return 3;
}

static ssize_t m_read(void *ctx, int fd, void *buf, size_t len)
{
    mem_file *m = ctx;
    size_t n = m->size - m->pos < len ? m->size - m->pos : len;
    if (n > 4096) n = 4096;            /* short reads, like a pipe */
    memcpy(buf, m->data + m->pos, n);
    m->pos += n;
    return (ssize_t)n;
}

static int m_close(void *ctx, int fd)
{
    ((mem_file *)ctx)->open = 0;
    return 0;
}

static ssize_t m_write(void *ctx, int fd, const void *buf, size_t len) { errno = EBADF; return -1; }
static int m_fail(void *ctx, int fd) { errno = EBADF; return -1; }
static int m_fail2(void *ctx, const char *a, const char *b) { errno = EROFS; return -1; }
static int m_fail1(void *ctx, const char *a) { errno = EROFS; return -1; }
/* The directory holds the one file, under partition 0's name at offset 0
 * (the seeds of partition 0 are at offset 0). */
#define FUZZ_NAME "fuzz.0.00000000000000000000.hls"
static int m_list(void *ctx, const char *d, hl_io_entry_fn fn, void *arg)
{
    return fn(arg, FUZZ_NAME);
}

static hl_table_opts fuzz_opts(void)
{
    hl_table_opts o;
    char err[128];
    memset(&o, 0, sizeof o);
    hl_decay_init(&o.decay, HL_DEFAULT_HEADS, DIM, hl_default_half_life_ms, err, sizeof err);
    o.history = HISTORY;
    o.max_users = 64;
    o.expected_users = 8;
    return o;
}

static void try_load(const uint8_t *data, size_t size)
{
    mem_file m = {.data = data, .size = size};
    hl_io io = {.ctx = &m, .open = m_open, .write = m_write, .read = m_read,
                .fsync = m_fail, .close = m_close, .rename = m_fail2, .unlink = m_fail1,
                .list = m_list, .fsync_dir = m_fail1};
    hl_table_opts o = fuzz_opts();
    hl_snapshot_info info;
    hl_table *tbl = NULL;
    char err[512];

    int rc_read = hl_snapshot_read(&io, "mem.hls", &info, NULL, NULL, err, sizeof err);
    int rc_load = hl_snapshot_load(&io, "mem.hls", &o, FP, &tbl, &info, err, sizeof err);
    if (m.open) abort();                          /* the file was not closed */
    if ((rc_load == 0) != (tbl != NULL)) abort();
    if (rc_load == 0 && rc_read != 0) abort();    /* loaded what the reader refused */
    if (tbl != NULL) {
        hl_table_stats st;
        hl_table_stats_get(tbl, &st);
        if (st.users + info.n_dup_rows != info.n_rows) abort();
    }
    hl_table_destroy(tbl);
    tbl = NULL;
    char path[64], report[1024];
    int rc_newest = hl_snapshot_load_newest(&io, "mem", "fuzz", 0, &o, FP, &tbl, &info,
                                            path, sizeof path, report, sizeof report,
                                            err, sizeof err);
    if (m.open) abort();
    if ((rc_newest == 0) != (tbl != NULL)) abort();
    if (rc_newest == 0 && (rc_load != 0 || info.meta.partition != 0 ||
                           info.meta.next_offset != 0 || strcmp(info.meta.topic, "fuzz") != 0))
        abort();                                  /* picked a file its name does not describe */
    hl_table_destroy(tbl);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    try_load(data, size);
    if (size > 4 && size < (1u << 20)) {
        uint8_t *fixed = malloc(size);
        memcpy(fixed, data, size);
        uint32_t crc = hl_crc32c(0, fixed, size - 4);
        for (int i = 0; i < 4; i++) fixed[size - 4 + i] = (uint8_t)(crc >> (8 * i));
        try_load(fixed, size);
        free(fixed);
    }
    return 0;
}

/* A few users with events, one with none of the model's items. */
static void write_seeds(const char *dir)
{
    hl_table_opts o = fuzz_opts();
    char err[256];
    float e_in[8 * DIM];
    for (int i = 0; i < 8 * DIM; i++) e_in[i] = (float)(i % 7) - 3.0f;
    for (int n_users = 0; n_users <= 5; n_users += 5) {
        hl_table *tbl = hl_table_create(&o, err, sizeof err);
        for (int i = 0; i < 4 * n_users; i++) {
            char user[8];
            snprintf(user, sizeof user, "u%d", i % n_users);
            hl_event ev = {.user = user, .user_len = (uint32_t)strlen(user),
                           .item = i % 9 == 8 ? -1 : i % 8, .type = (uint8_t)(i % HL_N_TYPES),
                           .w = 1.0f + (float)i, .ts_ms = 1000 * i - (i % 3) * 1500,
                           .offset = i};
            hl_table_apply(tbl, &ev, 1, e_in, 8, NULL);
        }
        hl_snapshot_meta meta = {.topic = "fuzz", .partition = n_users, .next_offset = 4 * n_users,
                                 .model_fingerprint = FP};
        if (hl_snapshot_write(NULL, dir, &meta, tbl, 2, NULL, err, sizeof err) != 0)
            fprintf(stderr, "fuzz_snapshot: seed: %s\n", err);
        hl_table_destroy(tbl);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = getenv("HL_FUZZ_SEEDS");
    if (dir && *dir)
        write_seeds(dir);
    return 0;
}
