/* catalogue.c - the live catalogue's table: updates applied, tombstones,
 * the fold-in list, a model swap's rebind (the contract is catalogue.h).
 *
 * The table holds one entry per item the item topic says anything about,
 * found by id through an open-addressing hash of entry numbers (linear
 * probing, rebuilt at twice the size when half full; deletion shifts back,
 * so there are no tombstones). A known item's id points into the model,
 * an unknown one's is a copy. Entries with an embedding own a side slot:
 * a row of side_e_in / side_e_out / side_bias. Slots and entries freed by
 * a tombstone go on free lists, so the arrays never shrink and never move
 * an entry. Memory is bounded by the model's items plus max_new (plus the
 * slack while loading, hl_catalogue_set_slack).
 *
 * Fold-in items (unknown to the model, no operator's record) are also on
 * a list by the order their newest record came, oldest first: a full
 * catalogue gives up the head's slot (catalogue.h, "A full catalogue").
 *
 * The views are built in catalogue_view.c; the struct both files read is
 * catalogue_internal.h. */
#include "catalogue_internal.h"
#include "fnv.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- the id hash ---- */

static uint32_t hash_id(const char *s, size_t len)
{
    return hl_fnv1a32(s, len);
}

static int same_id(const entry *e, const char *id, size_t len)
{
    return e->id_len == len && memcmp(e->id, id, len) == 0;
}

/* The slot holding id's entry, or the empty slot where it would go. */
static uint32_t probe(const hl_catalogue *c, const char *id, size_t len)
{
    uint32_t mask = c->n_slot - 1, i = hash_id(id, len) & mask;
    while (c->slot[i] != 0 && !same_id(&c->ent[c->slot[i] - 1], id, len))
        i = (i + 1) & mask;
    return i;
}

static int rehash(hl_catalogue *c, uint32_t n_slot)
{
    int32_t *old = c->slot;
    uint32_t n_old = c->n_slot;
    if ((c->slot = calloc(n_slot, sizeof *c->slot)) == NULL) {
        c->slot = old;
        return HL_ENOMEM;
    }
    c->n_slot = n_slot;
    for (uint32_t i = 0; i < n_old; i++)
        if (old[i] != 0) {
            const entry *e = &c->ent[old[i] - 1];
            c->slot[probe(c, e->id, e->id_len)] = old[i];
        }
    free(old);
    return 0;
}

/* Removes slot i, shifting later entries of its run back (no tombstones). */
static void slot_del(hl_catalogue *c, uint32_t i)
{
    uint32_t mask = c->n_slot - 1, j = i;
    c->slot[i] = 0;
    for (;;) {
        j = (j + 1) & mask;
        if (c->slot[j] == 0)
            return;
        const entry *e = &c->ent[c->slot[j] - 1];
        uint32_t home = hash_id(e->id, e->id_len) & mask;
        /* j's entry may move to i unless its home lies cyclically in (i, j]. */
        if ((i <= j) ? (i < home && home <= j) : (i < home || home <= j))
            continue;
        c->slot[i] = c->slot[j];
        c->slot[j] = 0;
        i = j;
    }
}

/* ---- create / destroy ---- */

hl_catalogue *hl_catalogue_create(const hl_model *m, int32_t max_new,
                                  char *errbuf, size_t errlen)
{
    if (max_new < 0) {
        hl_err(errbuf, errlen, HL_EINVAL, "catalogue: max_new %d below 0", (int)max_new);
        return NULL;
    }
    hl_catalogue *c = calloc(1, sizeof *c);
    if (c == NULL || rehash(c, 64) != 0) {
        free(c);
        hl_err(errbuf, errlen, HL_ENOMEM, "catalogue: out of memory");
        return NULL;
    }
    c->m = m;
    c->n_model = hl_model_info_get(m)->n_items;
    c->dim = hl_model_info_get(m)->dim;
    c->max_new = max_new;
    c->free_ent = c->free_side = -1;
    c->lru_old = c->lru_new = -1;
    return c;
}

void hl_catalogue_destroy(hl_catalogue *c)
{
    if (c == NULL)
        return;
    for (int32_t i = 0; i < c->n_ent; i++)
        if (c->ent[i].used)
            free((char *)c->ent[i].id);
    free(c->ent);
    free(c->slot);
    free(c->s_in);
    free(c->s_out);
    free(c->s_bias);
    free(c->s_next);
    free(c);
}

uint64_t hl_catalogue_version(const hl_catalogue *c) { return c->version; }

void hl_catalogue_stats_get(const hl_catalogue *c, hl_catalogue_stats *st)
{
    *st = c->st;
}

/* ---- entries and side slots ---- */

static int32_t ent_alloc(hl_catalogue *c)
{
    if (c->free_ent >= 0) {
        int32_t i = c->free_ent;
        c->free_ent = c->ent[i].next_free;
        return i;
    }
    if (c->n_ent == c->cap_ent) {
        int32_t cap = c->cap_ent ? c->cap_ent * 2 : 64;
        entry *e = realloc(c->ent, (size_t)cap * sizeof *e);
        if (e == NULL)
            return HL_ENOMEM;
        c->ent = e;
        c->cap_ent = cap;
    }
    return c->n_ent++;
}

static int32_t side_alloc(hl_catalogue *c)
{
    if (c->free_side >= 0) {
        int32_t s = c->free_side;
        c->free_side = c->s_next[s];
        return s;
    }
    if (c->n_side_hw == c->cap_side) {
        int32_t cap = c->cap_side ? c->cap_side * 2 : 16;
        size_t d = (size_t)c->dim;
        float *a = realloc(c->s_in, (size_t)cap * d * sizeof *a);
        if (a) c->s_in = a;
        float *b = realloc(c->s_out, (size_t)cap * d * sizeof *b);
        if (b) c->s_out = b;
        float *bb = realloc(c->s_bias, (size_t)cap * sizeof *bb);
        if (bb) c->s_bias = bb;
        int32_t *nx = realloc(c->s_next, (size_t)cap * sizeof *nx);
        if (nx) c->s_next = nx;
        if (!a || !b || !bb || !nx)
            return HL_ENOMEM;
        c->cap_side = cap;
    }
    return c->n_side_hw++;
}

static void side_free(hl_catalogue *c, int32_t s)
{
    c->s_next[s] = c->free_side;
    c->free_side = s;
}

/* Takes e's contribution out of (sign -1) or into (+1) the counts: its
 * record in effect's. */
static void count(hl_catalogue *c, const entry *e, int sign)
{
    const rec *r = in_effect(e);
    if (r == NULL)
        return;
    c->st.hidden += sign * !r->available;
    c->st.expiring += sign * (r->expires_at_ms != HL_CATALOGUE_NO_EXPIRY);
    if (r->side >= 0) {
        if (e->model_row < 0 && r->foldin_events > 0)
            c->st.foldin += sign;
        else if (e->model_row < 0)
            c->st.added += sign;
        else
            c->st.overridden += sign;
    }
}

/* ---- the fold-in list ---- */

static void lru_unlink(hl_catalogue *c, int32_t i)
{
    entry *e = &c->ent[i];
    if (!e->in_lru)
        return;
    if (e->lru_prev >= 0) c->ent[e->lru_prev].lru_next = e->lru_next;
    else c->lru_old = e->lru_next;
    if (e->lru_next >= 0) c->ent[e->lru_next].lru_prev = e->lru_prev;
    else c->lru_new = e->lru_prev;
    e->in_lru = 0;
    c->n_lru--;
}

/* Puts entry i on the fold-in list or takes it off, as its records say:
 * on it when it is unknown to the model and its record in effect is a
 * fold-in one (so no operator's record names it). written: a fold-in
 * record of it was just applied, so it goes to the newest end (as does
 * one an operator's tombstone hands back to fold-in: its fold-in record
 * is only now in effect). */
static void lru_set(hl_catalogue *c, int32_t i, int written)
{
    entry *e = &c->ent[i];
    const rec *r = in_effect(e);
    int want = e->model_row < 0 && r != NULL && r->foldin_events > 0;
    if (e->in_lru && (!want || written))
        lru_unlink(c, i);
    if (!want || e->in_lru)
        return;
    e->lru_prev = c->lru_new;
    e->lru_next = -1;
    if (c->lru_new >= 0) c->ent[c->lru_new].lru_next = i;
    else c->lru_old = i;
    c->lru_new = i;
    e->in_lru = 1;
    c->n_lru++;
}

/* Drops slot's entry (no record left under either key: it counts for
 * nothing). */
static void forget(hl_catalogue *c, uint32_t slot)
{
    int32_t i = c->slot[slot] - 1;
    entry *e = &c->ent[i];
    lru_unlink(c, i);
    slot_del(c, slot);
    free((char *)e->id);
    if (e->model_row < 0)
        c->n_new--;
    e->used = 0;
    e->next_free = c->free_ent;
    c->free_ent = i;
    c->n_used--;
}

static int set_embedding(hl_catalogue *c, rec *r, const hl_item_update *u,
                         char *errbuf, size_t errlen);

/* Gives up the slot of the fold-in item whose newest record is oldest
 * (its records under both keys go, as if tombstoned). 0, or HL_EFULL when
 * no fold-in item is kept (operators' records hold every slot). */
static int evict_foldin(hl_catalogue *c)
{
    if (c->lru_old < 0)
        return HL_EFULL;
    entry *e = &c->ent[c->lru_old];
    const rec *f = &e->key[KEY_FOLDIN];
    c->evicted_part = f->present ? f->partition : -1;
    c->evicted_off = f->offset;
    count(c, e, -1);
    for (int k = 0; k < 2; k++) {
        set_embedding(c, &e->key[k], NULL, NULL, 0);
        e->key[k].present = 0;
    }
    c->st.foldin_evicted++;
    memcpy(c->evicted, e->id, e->id_len);    /* before forget frees it */
    c->evicted_len = e->id_len;
    forget(c, probe(c, e->id, e->id_len));
    return 0;
}

/* HL_EFULL for u, saying what counts and what to do. */
static int full(const hl_catalogue *c, const hl_item_update *u, char *errbuf, size_t errlen)
{
    return hl_err(errbuf, errlen, HL_EFULL, "catalogue full: item \"%.*s\" is new to "
                  "the model and catalogue.max.new.items=%d new ids are kept, all "
                  "an operator's (added, only hidden, or only named): tombstone unused "
                  "ones or raise catalogue.max.new.items",
                  (int)(u->id_len < 64 ? u->id_len : 64), u->id, (int)c->max_new);
}

/* Unknown items an operator's record names: no fold-in item's eviction
 * frees their slots. */
static int32_t held_by_operators(const hl_catalogue *c)
{
    return c->n_new - c->n_lru;
}

/* Room for one more new id when max_new or more are kept: 0, or HL_EFULL.
 * Running, the stalest fold-in item gives its slot up (none kept: full).
 * Loading, the records read are the ones a running worker read, but the
 * tombstone of each fold-in item it gave up comes later, so the fold-in
 * items kept here are its own plus those: the operators' are the same.
 * So the running worker refused exactly when operators held max_new, and
 * this refuses then too, even with fold-in items kept (their tombstones
 * are coming): taking the id into the slack would keep more than max_new
 * after them, and more than any running worker lists. Otherwise the id
 * takes the slack while there is some, else the stalest fold-in slot. */
static int make_room(hl_catalogue *c)
{
    if (c->slack > 0 && held_by_operators(c) >= c->max_new)
        return HL_EFULL;
    if (c->n_new < c->max_new + c->slack)
        return 0;
    return evict_foldin(c);
}

/* A new entry for id under slot (empty); a full catalogue gives a fold-in
 * item's slot up for it (*slot is found again: forgetting moves slots). */
static int insert(hl_catalogue *c, const hl_item_update *u, uint32_t *slot,
                  char *errbuf, size_t errlen)
{
    int32_t row = hl_model_item_find(c->m, u->id, u->id_len);
    if (row < 0 && c->n_new >= c->max_new && make_room(c) != 0)
        return full(c, u, errbuf, errlen);
    if (row < 0)
        *slot = probe(c, u->id, u->id_len);
    if ((uint32_t)(c->n_used + 1) * 2 > c->n_slot) {
        if (rehash(c, c->n_slot * 2) != 0)
            return hl_err(errbuf, errlen, HL_ENOMEM, "catalogue: out of memory");
        *slot = probe(c, u->id, u->id_len);
    }
    int32_t i = ent_alloc(c);
    char *own = malloc(u->id_len);
    if (i < 0 || own == NULL) {
        free(own);
        if (i >= 0) { c->ent[i].next_free = c->free_ent; c->free_ent = i; }
        return hl_err(errbuf, errlen, HL_ENOMEM, "catalogue: out of memory");
    }
    entry *e = &c->ent[i];
    memset(e, 0, sizeof *e);
    memcpy(own, u->id, u->id_len);
    c->n_new += row < 0;
    e->id = own;
    e->id_len = u->id_len;
    e->ikey = hl_item_key(own, u->id_len);
    e->model_row = row;
    e->used = 1;
    for (int k = 0; k < 2; k++)
        e->key[k] = (rec){.side = -1, .available = 1, .expires_at_ms = HL_CATALOGUE_NO_EXPIRY,
                          .partition = -1};
    c->slot[*slot] = i + 1;
    c->n_used++;
    return 0;
}

static int check_update(const hl_catalogue *c, const hl_item_update *u,
                        char *errbuf, size_t errlen)
{
    if (u->id_len < 1 || u->id_len > HL_MAX_ID_LEN)
        return hl_err(errbuf, errlen, HL_EINVAL, "catalogue: item_id of %u bytes "
                      "(1..%d)", u->id_len, HL_MAX_ID_LEN);
    if (u->tombstone || u->e_out == NULL)
        return 0;
    /* The model's bound (model.h): an item's vectors score beside the
     * model's, so a larger value could overflow a list's scores. */
    int bad = !(fabsf(u->bias) <= HL_MODEL_MAX_ABS);
    for (int d = 0; d < c->dim && !bad; d++)
        bad = !(fabsf(u->e_in[d]) <= HL_MODEL_MAX_ABS) || !(fabsf(u->e_out[d]) <= HL_MODEL_MAX_ABS);
    if (bad)
        return hl_err(errbuf, errlen, HL_EINVAL, "catalogue: item \"%.*s\": embedding "
                      "holds NaN, infinity or a value beyond +-%g", (int)(u->id_len < 64 ? u->id_len : 64),
                      u->id, (double)HL_MODEL_MAX_ABS);
    return 0;
}

/* Sets r's vectors from u (a slot taken if needed) or drops them (u NULL
 * or without an embedding). */
static int set_embedding(hl_catalogue *c, rec *r, const hl_item_update *u,
                         char *errbuf, size_t errlen)
{
    if (u == NULL || u->e_out == NULL) {
        if (r->side >= 0)
            side_free(c, r->side);
        r->side = -1;
        return 0;
    }
    if (r->side < 0 && (r->side = side_alloc(c)) < 0) {
        r->side = -1;
        return hl_err(errbuf, errlen, HL_ENOMEM, "catalogue: out of memory");
    }
    size_t d = (size_t)c->dim, off = (size_t)r->side * d;
    memcpy(c->s_in + off, u->e_in, d * sizeof(float));
    memcpy(c->s_out + off, u->e_out, d * sizeof(float));
    c->s_bias[r->side] = u->bias;
    return 0;
}

/* A tombstone under one key: that key's record goes; the entry with it
 * when the other key holds none either. 1 when there was a record. */
static int tombstone(hl_catalogue *c, uint32_t slot, int k)
{
    entry *e = &c->ent[c->slot[slot] - 1];
    if (!e->key[k].present)
        return 0;
    count(c, e, -1);
    set_embedding(c, &e->key[k], NULL, NULL, 0);
    e->key[k].present = 0;
    if (!e->key[KEY_ITEM].present && !e->key[KEY_FOLDIN].present) {
        forget(c, slot);
    } else {
        count(c, e, +1);
        lru_set(c, c->slot[slot] - 1, 0);
    }
    return 1;
}

/* A tombstone that names an older record than the one kept under its key,
 * or one read from another partition (catalogue.h, "A stale tombstone").
 * Offsets order records only within a partition, as compaction does. */
static int stale(const hl_catalogue *c, uint32_t slot, int k, const hl_item_update *u)
{
    const rec *r = &c->ent[c->slot[slot] - 1].key[k];
    if (!u->conditional || !u->positioned || !r->present || r->partition < 0)
        return 0;
    return r->partition != u->partition || r->offset > u->evicts_offset;
}

/* A fold-in record that must not be stored: one for an item the model
 * knows, or an older worker's (under the item_id key) for an item an
 * operator's record names, which it would replace. */
static int foldin_refused(const hl_catalogue *c, const hl_item_update *u, uint32_t slot)
{
    if (hl_model_item_find(c->m, u->id, u->id_len) >= 0)
        return 1;
    if (u->foldin_key || c->slot[slot] == 0)
        return 0;
    const rec *r = &c->ent[c->slot[slot] - 1].key[KEY_ITEM];
    return r->present && r->foldin_events == 0;
}

/* An operator's record for a kept fold-in item, while loading, with
 * operators holding max_new already (see make_room): the fold-in item is
 * one a running worker gave up (it could not have kept it beside them),
 * so to it the record named a new id, and it refused it. Kept, the record
 * would hold the slot after the fold-in key's tombstone. */
static int takeover_refused(const hl_catalogue *c, uint32_t slot)
{
    return c->slack > 0 && c->slot[slot] != 0 && c->ent[c->slot[slot] - 1].in_lru &&
           held_by_operators(c) >= c->max_new;
}

int hl_catalogue_apply(hl_catalogue *c, const hl_item_update *u,
                       char *errbuf, size_t errlen)
{
    int rc = check_update(c, u, errbuf, errlen);
    c->evicted_len = 0;
    if (rc != 0)
        return rc;
    int k = u->foldin_key ? KEY_FOLDIN : KEY_ITEM;
    uint32_t slot = probe(c, u->id, u->id_len);
    if (u->tombstone) {
        /* one of nothing (compaction keeps tombstones a while, and they
         * are read again) changes no view, so it builds none */
        if (c->slot[slot] != 0 && stale(c, slot, k, u))
            return HL_CATALOGUE_STALE;
        if (c->slot[slot] != 0 && tombstone(c, slot, k))
            c->version++;
        return 0;
    }
    if (k == KEY_FOLDIN && u->foldin_events < 1)
        return hl_err(errbuf, errlen, HL_EINVAL, "catalogue: item \"%.*s\": an operator's "
                      "record under the fold-in key", (int)(u->id_len < 64 ? u->id_len : 64),
                      u->id);
    if (u->foldin_events > 0 && foldin_refused(c, u, slot))
        return HL_CATALOGUE_IGNORED;
    if (u->foldin_events == 0 && takeover_refused(c, slot))
        return full(c, u, errbuf, errlen);
    if (c->slot[slot] == 0 && (rc = insert(c, u, &slot, errbuf, errlen)) != 0)
        return rc;
    entry *e = &c->ent[c->slot[slot] - 1];
    rec *r = &e->key[k];
    count(c, e, -1);
    rc = set_embedding(c, r, u, errbuf, errlen);
    r->present = 1;
    r->available = u->available != 0;
    r->expires_at_ms = u->expires_at_ms;
    r->foldin_events = u->foldin_events;
    r->partition = u->positioned ? u->partition : -1;
    r->offset = u->offset;
    count(c, e, +1);
    lru_set(c, c->slot[slot] - 1, u->foldin_events > 0);
    if (in_effect(e) != r)
        return rc != 0 ? rc : HL_CATALOGUE_IGNORED;   /* kept behind the operator's */
    c->version++;
    return rc;
}

void hl_catalogue_set_slack(hl_catalogue *c, int32_t extra)
{
    c->slack = extra > 0 ? extra : 0;
}

int hl_catalogue_trim(hl_catalogue *c)
{
    c->evicted_len = 0;
    if (c->n_new <= c->max_new + c->slack || evict_foldin(c) != 0)
        return 0;
    c->version++;
    return 1;
}

const char *hl_catalogue_evicted(const hl_catalogue *c, uint32_t *len)
{
    *len = c->evicted_len;
    return c->evicted_len > 0 ? c->evicted : NULL;
}

int hl_catalogue_evicted_at(const hl_catalogue *c, int32_t *partition, int64_t *offset)
{
    *partition = c->evicted_part;
    *offset = c->evicted_off;
    return c->evicted_len > 0 && c->evicted_part >= 0;
}

int hl_catalogue_foldin_record(const hl_catalogue *c, const char *id, uint32_t len,
                               hl_item_update *u, float *vec)
{
    uint32_t slot = probe(c, id, len);
    if (c->slot[slot] == 0)
        return HL_ENOENT;
    const rec *r = &c->ent[c->slot[slot] - 1].key[KEY_FOLDIN];
    if (!r->present || r->side < 0)
        return HL_ENOENT;
    size_t d = (size_t)c->dim, off = (size_t)r->side * d;
    memcpy(vec, c->s_in + off, d * sizeof(float));
    memcpy(vec + d, c->s_out + off, d * sizeof(float));
    *u = (hl_item_update){
        .id = id, .id_len = len, .available = r->available, .expires_at_ms = r->expires_at_ms,
        .e_in = vec, .e_out = vec + d, .bias = c->s_bias[r->side],
        .foldin_events = r->foldin_events, .foldin_key = 1,
        .positioned = r->partition >= 0, .partition = r->partition, .offset = r->offset,
    };
    return 0;
}

int64_t hl_catalogue_foldin_state(const hl_catalogue *c, const char *id, uint32_t len)
{
    if (hl_model_item_find(c->m, id, len) >= 0)
        return -1;
    uint32_t slot = probe(c, id, len);
    if (c->slot[slot] == 0)
        return 0;
    const rec *r = in_effect(&c->ent[c->slot[slot] - 1]);
    if (r == NULL)
        return 0;
    /* A fold-in record whose vectors a swap to another dim dropped lists
     * the item nowhere: nothing to keep a poorer estimate from replacing,
     * so fold-in starts over rather than wait for twice its count. */
    if (r->foldin_events > 0)
        return r->side >= 0 ? r->foldin_events : 0;
    return -1;
}

/* Side slots are (cap_side, dim): another dim starts them afresh (every
 * embedding was dropped by then). */
static void reshape_side(hl_catalogue *c, int dim)
{
    free(c->s_in);               /* side_alloc grows them anew at the new width */
    free(c->s_out);
    c->s_in = c->s_out = NULL;
    c->cap_side = c->n_side_hw = 0;
    c->free_side = -1;
    c->dim = dim;
}

int hl_catalogue_rebind(hl_catalogue *c, const hl_model *m, hl_catalogue_rebind_stats *st)
{
    int dim = hl_model_info_get(m)->dim;
    memset(st, 0, sizeof *st);
    c->m = m;
    c->n_model = hl_model_info_get(m)->n_items;
    c->n_new = 0;
    for (int32_t i = 0; i < c->n_ent; i++) {
        entry *e = &c->ent[i];
        if (!e->used)
            continue;
        count(c, e, -1);
        e->model_row = hl_model_item_find(m, e->id, e->id_len);
        for (int k = 0; k < 2; k++) {
            rec *r = &e->key[k];
            if (r->side >= 0 && (e->model_row >= 0 || dim != c->dim)) {
                st->dropped_known += e->model_row >= 0;
                st->dropped_dim += e->model_row < 0;
                side_free(c, r->side);
                r->side = -1;
            }
        }
        c->n_new += e->model_row < 0;
        count(c, e, +1);
        lru_set(c, i, 0);
    }
    if (dim != c->dim)
        reshape_side(c, dim);
    c->version++;
    return 0;
}
