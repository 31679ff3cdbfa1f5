/* gate.h - recs.min.interval.ms for one shard: which dirty users get a
 * list now and which wait (DESIGN.md section 7).
 *
 * A user refreshed at event time r (its t_ref_ms then) is refreshed again
 * only once the shard's newest event time reaches r + interval, or once it
 * has waited interval of the worker's monotonic clock (an event of the
 * user stamped ahead raises r and the shard's time alike, and would
 * otherwise hold its list, and the partition's offsets, for as long as
 * the skew); until then it waits. A row never refreshed through this gate (new user, restored
 * row, reused row id) goes at once. Lists of waiting users are not out yet,
 * so hl_gate_publishable_offset() stays at or below the first offset of the
 * batch that made the oldest of them wait: a snapshot or a stored offset
 * never passes an event whose list was held back.
 *
 * Owner thread of the shard only. Every function accepts a NULL gate (the
 * interval is 0: nothing waits) and then does what no gate would do. */
#ifndef HL_GATE_H
#define HL_GATE_H

#include "table.h"

#include <stddef.h>
#include <stdint.h>

typedef struct hl_gate hl_gate;   /* opaque */

/* interval_ms > 0. NULL when out of memory. */
hl_gate *hl_gate_create(int64_t interval_ms);
void     hl_gate_destroy(hl_gate *g);              /* NULL is a no-op */

/* For a dirty row taken from the table (v is its view), in a batch whose
 * oldest offset is batch_first_off: 1 to refresh it now, 0 when it waits.
 * Grows the gate's arrays; without memory it answers 1 (refresh: never
 * hold a list back for lack of room). */
int hl_gate_pass(hl_gate *g, uint32_t row, const hl_row_view *v, int64_t newest_ms,
                 int64_t batch_first_off);

/* Moves up to max waiting rows whose time has come (due <= newest_ms, or
 * waiting for interval_ms of the monotonic clock; every waiting row when
 * newest_ms is INT64_MAX: revocation, shutdown) into rows,
 * live rows of tbl still held by their own users only. Call again while it
 * returns max. */
int hl_gate_take_due(hl_gate *g, const hl_table *tbl, uint32_t *rows, int max,
                     int64_t newest_ms);

/* 1 when a waiting row has waited interval_ms of the monotonic clock
 * (hl_gate_take_due would take it whatever the event time). */
int hl_gate_overdue(hl_gate *g);

/* Records that the row's list was produced from a view with t_ref_ms. */
void hl_gate_refreshed(hl_gate *g, uint32_t row, const hl_row_view *v);

/* A live swap to a model of another shape moves users into a new table
 * (worker/swap.c), with new row ids, and the shard a new gate (to) for
 * it. Called for each user as it moves, before its row leaves from's
 * table (v is its view there): its schedule goes with it. A user that
 * was waiting is due at once in to (its list goes out at the next
 * publish, from the new model), and to keeps the offset its wait began
 * at as a bound on hl_gate_publishable_offset until that list is taken.
 * from keeps bounding the users not moved yet until it is destroyed
 * (after the last move). HL_ENOMEM when to cannot grow: the user is not
 * waiting there then (its list goes out at its next event). */
int hl_gate_carry(const hl_gate *from, uint32_t old_row, hl_gate *to, uint32_t row,
                  const hl_row_view *v);

/* recs.min.interval.ms of g (0 for NULL). */
int64_t hl_gate_interval(const hl_gate *g);

/* Users waiting (an upper bound: entries are dropped lazily). */
size_t hl_gate_waiting(const hl_gate *g);

/* min(next_offset, first offset of the oldest waiting user's batch): the
 * offset below which every applied event has its list produced. */
int64_t hl_gate_publishable_offset(hl_gate *g, int64_t next_offset);

#endif
