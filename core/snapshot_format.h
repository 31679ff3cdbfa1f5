/* snapshot_format.h - what snapshot.c (writing) and snapshot_load.c
 * (reading) share: the byte layout of schemas/snapshot.md as constants and
 * little-endian helpers, and the file names of a shard. Private to those
 * two files; the contract is snapshot.h. */
#ifndef HL_SNAPSHOT_FORMAT_H
#define HL_SNAPSHOT_FORMAT_H

#include "snapshot.h"

#include <string.h>

static const unsigned char hl_snapshot_magic[8] = {'H', 'L', 'S', 'N', 'A', 'P', '\r', '\n'};

#define BUF_MIN     (1u << 20)    /* I/O buffer: big writes, few syscalls */
#define TRAILER_LEN (2 + 8 + 8 + 8 + 4 + 4)
#define ROW_FIXED   (2 + 4 + 8 + 8 + 8 + 2)  /* user_len, row id, t_ref, offset, seq, n_hist */
#define HIST_BYTES_V1 (4 + 8 + 1)         /* item, ts_ms, type */
#define HIST_BYTES  (4 + 8 + 1 + 8 + 4)   /* + item key, weight (format 2) */
#define TMP_TOKEN_LEN 16                  /* hex digits naming a writer's .tmp file */

/* ---- little-endian encoding ------------------------------------------- */

static inline unsigned char *put_u16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    return p + 2;
}

static inline unsigned char *put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
    return p + 4;
}

static inline unsigned char *put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
    return p + 8;
}

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define NATIVE_LE 1     /* the file's byte order: fields are plain copies */
#endif

static inline uint16_t get_u16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t get_u32(const unsigned char *p)
{
#ifdef NATIVE_LE
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
#else
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
#endif
}

static inline uint64_t get_u64(const unsigned char *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static inline unsigned char *put_f64(unsigned char *p, double d)
{
    uint64_t u;
    memcpy(&u, &d, 8);
    return put_u64(p, u);
}

static inline double get_f64(const unsigned char *p)
{
    uint64_t u = get_u64(p);
    double d;
    memcpy(&d, &u, 8);
    return d;
}

/* n floats, bit for bit: a plain copy on little-endian hosts. */
static inline unsigned char *put_f32s(unsigned char *p, const float *x, size_t n)
{
#ifdef NATIVE_LE
    memcpy(p, x, n * 4);
#else
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        put_u32(p + 4 * i, u);
    }
#endif
    return p + n * 4;
}

static inline void get_f32s(float *x, const unsigned char *p, size_t n)
{
#ifdef NATIVE_LE
    memcpy(x, p, n * 4);
#else
    for (size_t i = 0; i < n; i++) {
        uint32_t u = get_u32(p + 4 * i);
        memcpy(&x[i], &u, 4);
    }
#endif
}

static inline const hl_io *io_or_posix(const hl_io *io)
{
    return io != NULL ? io : hl_io_posix();
}

/* Largest row a table of this shape can produce: sizes the I/O buffers. */
static inline size_t row_max(int n_heads, int dim, int history)
{
    return ROW_FIXED + HL_MAX_ID_LEN + 4 * (size_t)n_heads * ((size_t)dim + 1) +
           HIST_BYTES * (size_t)history;
}

/* 1 if t is 1..249 bytes of [A-Za-z0-9._-] and not "." or "..": safe as
 * the first part of a file name. */
int hl_snapshot_topic_ok(const char *t);

/* A file of one shard: its offset and whether it is a leftover .tmp. */
typedef struct hl_snapshot_file {
    int64_t offset;
    int     tmp;
    char    name[HL_SNAPSHOT_TOPIC_MAX + 48 + 1 + TMP_TOKEN_LEN];
} hl_snapshot_file;

/* dir's files of topic/partition, newest first, into a malloc'd array
 * (*files, free it) of *n. HL_ENOENT if dir does not exist. */
int hl_snapshot_list(const hl_io *io, const char *dir, const char *topic,
                     int32_t partition, hl_snapshot_file **files, size_t *n,
                     char *errbuf, size_t errlen);

/* dir + "/" + name into out; -1 if it does not fit. */
int hl_snapshot_join(char *out, size_t len, const char *dir, const char *name);

#endif
