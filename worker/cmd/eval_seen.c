/* eval_seen.c - prequential: the ring each user would have after every
 * earlier event of the stream, whatever the state applied.
 *
 * Why it exists: the arms of a swap comparison (tests/quality/
 * swap_quality.sh) build their states from different events (--apply-from
 * skips the older ones), so their own rings differ, and with exclusion of
 * seen items they leave out different items. That mixes two questions:
 * how good a state is, and what a list leaves out. --seen-ring full
 * excludes these rings' items in every arm instead, so the arms differ in
 * their heads alone; the counts of targets found in either ring
 * (seen_targets in the output) measure how much the exclusion decides.
 *
 * The rings hold event numbers (into the time-sorted events), not item
 * rows, so that the rows are read in whichever model ranks at the time
 * (a swap changes them) and an item is matched by its key. */
#include "eval_internal.h"

#include <stdlib.h>

int hl_eval_rings_init(eval_rings *r, int32_t n_users, int history, int64_t n_ev)
{
    *r = (eval_rings){.history = history};
    if (n_ev > INT32_MAX)
        return HL_EINVAL;       /* event numbers are int32: see eval_rings */
    r->ev = malloc((size_t)n_users * history * sizeof *r->ev + 1);
    r->n = calloc((size_t)n_users + 1, sizeof *r->n);
    r->head = calloc((size_t)n_users + 1, sizeof *r->head);
    return r->ev && r->n && r->head ? 0 : HL_ENOMEM;
}

void hl_eval_rings_free(eval_rings *r)
{
    free(r->ev);
    free(r->n);
    free(r->head);
    *r = (eval_rings){0};
}

void hl_eval_rings_push(eval_rings *r, int32_t user, int64_t i)
{
    int32_t *slot = r->ev + (size_t)user * r->history;
    if (r->n[user] < r->history) {
        slot[r->n[user]++] = (int32_t)i;
        return;
    }
    /* Full: the oldest entry (at head) gives way, as the table's ring does. */
    slot[r->head[user]] = (int32_t)i;
    r->head[user] = (uint8_t)((r->head[user] + 1) % r->history);
}

int hl_eval_rings_get(const eval_rings *r, int32_t user, int32_t *out)
{
    const int32_t *slot = r->ev + (size_t)user * r->history;
    for (int h = 0; h < r->n[user]; h++)
        out[h] = slot[(r->head[user] + h) % r->history];
    return r->n[user];
}
