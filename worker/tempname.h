/* tempname.h - names of the temporary files the worker writes beside a
 * final name in a directory that may be a shared volume (model.dir,
 * snapshot.dir/dead-letters), and which of them are provably abandoned.
 *
 * A temporary is "<final>.<host, 16 hex>.<pid>.tmp". The pid alone is not
 * unique on a shared volume: containers run the worker as pid 1, so two
 * pods sharing the volume wrote one name and one's cleanup or rename
 * removed or replaced the other's copy in flight. The host tag names
 * where the pid means something (one boot of one machine, one pid
 * namespace): two live processes never share host and pid, and a pid's
 * liveness can be checked only under this process's own host tag. */
#ifndef HL_TEMPNAME_H
#define HL_TEMPNAME_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* This process's host tag: a hash of the boot id and the pid namespace,
 * never 0. When either cannot be read, a random value: unique, but no
 * other process's temporaries can be proved dead then (only aged out). */
uint64_t hl_tempname_host(void);

/* "<final>.<host>.<pid>.tmp" into out: 0, or -1 when it does not fit. */
int hl_tempname_make(char *out, size_t len, const char *final, uint64_t host, long pid);

/* Parses the tail "<host, 16 hex>.<pid>.tmp" of a temporary (what follows
 * "<final>."): 0 and *host, *pid, or -1 when tail is not one. */
int hl_tempname_parse(const char *tail, uint64_t *host, long *pid);

/* 1 when the temporary at path (of host and pid, from its name; host 0:
 * an old-format name with no host) is abandoned and may be removed:
 * under own_host, one of a process that is gone, or this process's own
 * when self_idle (the caller knows none of its own is in flight); and
 * anyone's once unchanged (ctime) for bound_s seconds (< 0: at once),
 * since a pid elsewhere says nothing here and a write takes seconds.
 * Only regular files. */
int hl_tempname_abandoned(const char *path, uint64_t host, long pid, uint64_t own_host,
                          int self_idle, int64_t bound_s, time_t now);

#endif
