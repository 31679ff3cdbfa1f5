/* deadletter.h - the local dead-letter file: where a bad input record is
 * kept when its copy to the dead-letter topic could not be delivered
 * (DESIGN.md section 2: bad input is never silently lost; issue 16 item 5).
 *
 * One file per record, <dir>/<topic>.<partition>.<offset, 20 digits>.dead,
 * written to a temporary name of this process's own (tempname.h),
 * fsynced, renamed and the directory fsynced,
 * so once hl_deadletter_write() returns 0 the record survives a crash and
 * the input offset may move past it. The file is the DLQ record as it
 * would have been produced, readable with head(1):
 *
 *   halflife dead letter 1
 *   <header name>: <value>        one line per DLQ header (halflife.reason,
 *   ...                           halflife.source.topic/partition/offset),
 *                                 then halflife.dlq.topic and
 *                                 halflife.dlq.error (why the copy failed)
 *   key.bytes: <n>
 *   value.bytes: <n>
 *   <empty line>
 *   <the key's n bytes><the value's n bytes, the original record>
 *
 * Header values are written as they are; the worker's (reason names,
 * topic names, numbers, error texts) hold no newline. Any thread. */
#ifndef HL_DEADLETTER_H
#define HL_DEADLETTER_H

#include "producer.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define HL_DEADLETTER_SUBDIR "dead-letters"

/* Writes one record durably into dir (created if missing, one level).
 * headers ends with a NULL name. The file's path goes to path (may be
 * NULL), its size to *bytes (may be NULL). 0, or HL_EIO / HL_EINVAL with
 * a reason naming the file. */
int hl_deadletter_write(const char *dir, const char *topic, int32_t partition,
                        int64_t offset, const hl_header *headers,
                        const void *key, size_t key_len,
                        const void *value, size_t value_len,
                        char *path, size_t path_len, int64_t *bytes,
                        char *errbuf, size_t errlen);

/* The bytes of the regular files in dir (0 when it does not exist yet),
 * -1 when it cannot be read. One stat per file: for a count made once
 * and again only when a cap seems reached, not for each record. The
 * temporaries of writers killed mid-write go on the way, uncounted: at
 * once those of this host whose pid is gone, anyone's once unchanged
 * for an hour (tempname.h). */
int64_t hl_deadletter_dir_bytes(const char *dir);

/* What a directory of dead letters holds against its cap
 * (deadletter.max.bytes), one count shared by every thread writing it. */
typedef struct hl_dlcount {
    atomic_llong files;     /* bytes of its files as last counted, plus those
                               written since; -1: not counted yet */
    atomic_llong pending;   /* reserved by writes not settled yet */
} hl_dlcount;

void hl_deadletter_count_init(hl_dlcount *c);        /* counted at first use */

/* Before writing a record of n bytes into dir: 0 when it may be written
 * (cap <= 0: no cap), its n bytes then reserved; HL_EFULL with a reason
 * when dir holds cap bytes or more, writes in progress included. A record
 * is let in while dir is below the cap, so the last one may pass it by
 * its own size (and the files' heads), whatever the number of threads
 * writing at once. Seemingly at the cap, dir is counted again, so files
 * an operator moved out make room. Any thread; no lock. Every 0 is
 * followed by one hl_deadletter_settle for the same n. */
int  hl_deadletter_reserve(hl_dlcount *c, const char *dir, int64_t cap, int64_t n,
                           char *errbuf, size_t errlen);

/* The write of a record reserved with n ended: written its file's bytes
 * (hl_deadletter_write's *bytes), or -1 when it failed (the reservation
 * is given back). */
void hl_deadletter_settle(hl_dlcount *c, int64_t n, int64_t written);

#endif
