/* catalogue_internal.h - the live catalogue's table: its entries, the two
 * records each keeps, and the struct, shared by catalogue.c (the table and
 * its updates) and catalogue_view.c (the immutable views built from it)
 * and by nothing else (STYLE.md section 2: private to the catalogue). */
#ifndef HL_CATALOGUE_INTERNAL_H
#define HL_CATALOGUE_INTERNAL_H

#include "catalogue.h"

#include <stdint.h>

/* The newest record under one of an item's two keys. */
typedef struct rec {
    int32_t     side;          /* side slot, -1: none */
    uint8_t     present;
    uint8_t     available;
    int64_t     expires_at_ms;
    int64_t     foldin_events; /* 0: an operator's record; n: a fold-in one */
    int32_t     partition;     /* where it was read, -1: unknown */
    int64_t     offset;
} rec;

enum { KEY_ITEM = 0, KEY_FOLDIN = 1 };

typedef struct entry {
    const char *id;            /* own copy (a model swap must not leave it dangling) */
    uint32_t    id_len;
    uint64_t    ikey;          /* hl_item_key(id): a view's added-item key */
    int32_t     model_row;     /* -1: unknown to the model */
    int32_t     next_free;     /* free list link while unused */
    uint8_t     used;
    uint8_t     in_lru;        /* on the fold-in list (evictable) */
    int32_t     lru_prev, lru_next;  /* toward older / newer records, -1: end */
    rec         key[2];        /* under the item_id key, under the fold-in key */
} entry;

/* The record in effect (catalogue.h, "Two keys"): an operator's, else the
 * fold-in key's, else an older worker's fold-in record under the item_id
 * key; NULL when neither key holds one. */
static inline const rec *in_effect(const entry *e)
{
    if (e->key[KEY_ITEM].present && e->key[KEY_ITEM].foldin_events == 0)
        return &e->key[KEY_ITEM];
    if (e->key[KEY_FOLDIN].present)
        return &e->key[KEY_FOLDIN];
    return e->key[KEY_ITEM].present ? &e->key[KEY_ITEM] : NULL;
}

struct hl_catalogue {
    const hl_model *m;
    int32_t   n_model, dim, max_new, slack;   /* slack: hl_catalogue_set_slack, > 0 loading */
    entry    *ent;     int32_t n_ent, cap_ent, free_ent;
    int32_t  *slot;    uint32_t n_slot;      /* entry + 1 per slot, 0 empty */
    int32_t   n_used, n_new;                 /* live entries; unknown ones */
    int32_t   lru_old, lru_new, n_lru;       /* the fold-in list's ends (-1: empty), length */
    char      evicted[HL_MAX_ID_LEN];        /* what the last apply evicted */
    uint32_t  evicted_len;                   /* 0: nothing */
    int32_t   evicted_part;                  /* its fold-in record's place, */
    int64_t   evicted_off;                   /* -1: none known */
    float    *s_in, *s_out, *s_bias;         /* (cap_side, dim) ... */
    int32_t  *s_next;                        /* free list of slots */
    int32_t   cap_side, n_side_hw, free_side;/* high water: slots ever handed out */
    uint64_t  version;
    hl_catalogue_stats st;
};

#endif
