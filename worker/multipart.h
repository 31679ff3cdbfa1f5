/* multipart.h - users seen in two partitions (DESIGN.md section 2: events
 * must be keyed by user_id; a user seen in two partitions is counted and
 * reported, not silently merged).
 *
 * One map per worker, shared by its shard-owning threads: a fixed array of
 * 2^bits slots, each one 64-bit word (32-bit tag of the user id's hash,
 * partition + 1), read and written with relaxed atomics, no lock. A shard
 * notes each user its table inserts (a new row, not every event: the
 * apply path stays as it is); when the slot of that user holds the same
 * tag under another partition, the user is (almost surely) in both.
 *
 * What it promises, for U users inserted into a map of S = 2^bits slots:
 * - a false report needs another user with the same slot and the same
 *   32-bit tag in another partition: at most 2^-32 per insert (one in
 *   four billion new users);
 * - a miss: the other partition's entry must still be in its slot, and
 *   each later insert to that slot replaces it (the newest user wins), so
 *   a user inserted in two partitions within about S inserts of each
 *   other is reported with probability about exp(-(inserts between)/S);
 *   partitions owned by other workers, and rows restored from a snapshot
 *   (not inserted), are not seen.
 * Any thread. */
#ifndef HL_MULTIPART_H
#define HL_MULTIPART_H

#include <stddef.h>
#include <stdint.h>

typedef struct hl_multipart hl_multipart;   /* opaque */

/* 2^bits slots (8 bytes each), bits 10..30. NULL when out of memory. */
hl_multipart *hl_multipart_create(int bits);
void          hl_multipart_destroy(hl_multipart *mp);   /* NULL is a no-op */

/* Notes that partition (0..2^31-2) inserted user. Returns the other
 * partition the user was noted in, or -1. */
int32_t hl_multipart_note(hl_multipart *mp, const char *user, size_t user_len,
                          int32_t partition);

#endif
