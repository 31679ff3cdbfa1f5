/* snapshot_util.h - what the snapshot tests share (test_snapshot.c,
 * test_snapshot_write.c, test_snapshot_cmd.c): the one stream shape they
 * all use, table options, a table after the first k events, snapshot
 * metadata, and reading, writing and poking scratch files.
 *
 * The including file defines T_SUITE, includes test.h, then this; its
 * main() calls make_events(SNAP_SEED, 20) once before its cases so every
 * file sees the same events. */
#ifndef HL_SNAPSHOT_UTIL_H
#define HL_SNAPSHOT_UTIL_H

#include "snapshot.h"

#include <fcntl.h>
#include <stdint.h>
#include <unistd.h>

#define DIM      8
#define N_HEADS  3
#define HISTORY  5
#define N_ITEMS  40
#define N_USERS  300
#define N_EVENTS 6000
#define FP       0x1234abcdULL
#define SCRATCH_NAME "snaptest"
#define SNAP_SEED 88172645463325252ULL

#include "table_util.h"

static inline hl_table_opts opts_with(int dim, int history, size_t max_users)
{
    hl_table_opts o;
    char err[256];
    memset(&o, 0, sizeof o);
    hl_decay_init(&o.decay, N_HEADS, dim, hl_default_half_life_ms, err, sizeof err);
    o.history = history;
    o.max_users = max_users;
    o.evict_mass = 0;
    o.expected_users = 64;
    return o;
}

static inline hl_table_opts opts(void)
{
    return opts_with(DIM, HISTORY, 0);
}

static inline hl_table *table_upto(const hl_table_opts *o, int k)
{
    char err[256];
    hl_table *tbl = hl_table_create(o, err, sizeof err);
    if (tbl) apply_range(tbl, 0, k);
    return tbl;
}

static inline hl_snapshot_meta meta_at(const char *topic, int partition, int64_t next)
{
    hl_snapshot_meta m;
    memset(&m, 0, sizeof m);
    snprintf(m.topic, sizeof m.topic, "%s", topic);
    m.partition = partition;
    m.next_offset = next;
    m.model_fingerprint = FP;
    return m;
}

/* ---- scratch files ------------------------------------------------------ */

static inline unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *b = NULL;
    long n;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    b = malloc((size_t)n + 1);
    if (fread(b, 1, (size_t)n, f) != (size_t)n) { free(b); b = NULL; }
    fclose(f);
    *len = (size_t)n;
    return b;
}

static inline void spit(const char *path, const unsigned char *b, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return;
    if (len) fwrite(b, 1, len, f);
    fclose(f);
}

/* One byte in place: no truncation, which on ext4 forces a writeback. */
static inline void poke(const char *path, size_t pos, unsigned char byte)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0) return;
    if (pwrite(fd, &byte, 1, (off_t)pos) != 1) perror("pwrite");
    close(fd);
}

#endif
