/* catalogue_view.c - the live catalogue's immutable views (the contract
 * is catalogue.h; the table they are built from is catalogue.c).
 *
 * A view is built from scratch: side rows packed in entry order, their ids
 * in one buffer, the always-hidden rows sorted, the expiring rows with
 * their times. Nothing in a view points into the table, so the table may
 * change (and the reader build the next view) while threads rank with the
 * old one. A view no one reads any more can be built again in place
 * (hl_catalogue_view_reuse): its arrays are kept when they are big enough,
 * so a rebuild is copies into memory already mapped, not fresh pages
 * (with 100k side items, fresh pages were most of the cost). */
#include "catalogue_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct exp_row { int64_t at_ms; int32_t row; } exp_row;
typedef struct key_pend { uint64_t key; int32_t row; } key_pend;
/* A known item whose embedding an update overrides: its model row and the
 * side row listed in its place. */
typedef struct ovr_row { int32_t model, side; } ovr_row;

struct hl_catview {
    uint64_t  version;
    int32_t   n_model, dim, n_side;
    const hl_model *m;
    float    *e_in, *e_out, *bias;           /* (n_side, dim), (n_side) */
    uint8_t  *folded;                        /* (n_side): a fold-in record's row */
    char     *ids;                           /* side row s's id: id_off[s] to */
    uint32_t *id_off;                        /* id_off[s + 1] in ids (copies) */
    int32_t  *always;   int32_t n_always;    /* sorted rows */
    exp_row  *exp;      int32_t n_exp;       /* sorted by time */
    uint64_t *key;      int32_t *key_row;    /* added items by hl_item_key: open
                                                addressing, key 0 empty */
    key_pend *pend;     int32_t n_pend;      /* keys to add (key_add_all) */
    uint32_t  key_mask;
    ovr_row  *ovr;      int32_t n_ovr;       /* overridden items, by model row */
    size_t    cap_side, side_dim;            /* what the arrays hold, for reuse */
    size_t    cap_rows, cap_ids;
    uint32_t  cap_key;
};

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static int cmp_ovr(const void *a, const void *b)
{
    const ovr_row *x = a, *y = b;
    return (x->model > y->model) - (x->model < y->model);
}

static int cmp_exp(const void *a, const void *b)
{
    const exp_row *x = a, *y = b;
    if (x->at_ms != y->at_ms)
        return x->at_ms < y->at_ms ? -1 : 1;
    return (x->row > y->row) - (x->row < y->row);
}

/* free(p), then a fresh block of n elements of size elem (contents not
 * kept: a view is built from scratch). NULL when out of memory. */
static void *renew(void *p, size_t n, size_t elem)
{
    free(p);
    return malloc((n ? n : 1) * elem);
}

/* v's arrays sized for c, keeping those already big enough. Growth has a
 * quarter's headroom, so a view rebuilt in place as the catalogue grows
 * one item at a time is not reallocated every time. */
static int view_alloc(hl_catview *v, const hl_catalogue *c)
{
    size_t ns = (size_t)c->st.added + (size_t)c->st.foldin + (size_t)c->st.overridden;
    size_t d = (size_t)c->dim;
    size_t n_rows = (size_t)c->n_used * 2 + 1;   /* a row each, a model row masked */
    if (ns > v->cap_side || d != v->side_dim) {
        size_t cap = ns + ns / 4 + 16;
        v->e_in = renew(v->e_in, cap * d, sizeof(float));
        v->e_out = renew(v->e_out, cap * d, sizeof(float));
        v->bias = renew(v->bias, cap, sizeof(float));
        v->folded = renew(v->folded, cap, 1);
        v->id_off = renew(v->id_off, cap + 1, sizeof *v->id_off);
        v->ovr = renew(v->ovr, cap, sizeof *v->ovr);
        v->pend = renew(v->pend, cap, sizeof *v->pend);
        int ok = v->e_in && v->e_out && v->bias && v->folded && v->id_off && v->ovr &&
                 v->pend;
        v->cap_side = ok ? cap : 0;
        v->side_dim = ok ? d : 0;
        if (!ok)
            return HL_ENOMEM;
    }
    if (n_rows > v->cap_rows) {
        size_t cap = n_rows + n_rows / 4 + 16;
        v->always = renew(v->always, cap, sizeof *v->always);
        v->exp = renew(v->exp, cap, sizeof *v->exp);
        v->cap_rows = v->always && v->exp ? cap : 0;
        if (v->cap_rows == 0)
            return HL_ENOMEM;
    }
    uint32_t n_key = 16;
    while (n_key < 2 * ns)
        n_key *= 2;
    if (n_key != v->cap_key) {
        free(v->key_row);
        v->key = renew(v->key, n_key, sizeof *v->key);
        v->key_row = malloc(n_key * sizeof *v->key_row);
        v->cap_key = v->key && v->key_row ? n_key : 0;
        if (v->cap_key == 0)
            return HL_ENOMEM;
    }
    memset(v->key, 0, n_key * sizeof *v->key);
    v->key_mask = n_key - 1;
    return 0;
}

/* The id bytes of side row s (the row v->n_side is being added): appended
 * to v->ids, which doubles when full. */
static int id_add(hl_catview *v, const char *id, uint32_t len)
{
    size_t at = v->id_off[v->n_side];
    if (at + len > v->cap_ids) {
        size_t cap = 2 * (at + len) + 64;
        char *p = realloc(v->ids, cap);
        if (p == NULL)
            return HL_ENOMEM;
        v->ids = p;
        v->cap_ids = cap;
    }
    memcpy(v->ids + at, id, len);
    v->id_off[v->n_side + 1] = (uint32_t)(at + len);
    return 0;
}

static uint32_t key_home(const hl_catview *v, uint64_t k)
{
    return (uint32_t)(k * 0x9E3779B97F4A7C15ull >> 32) & v->key_mask;
}

/* Two ids of one key (1 in 10^7 at 10^6 items, hl.h): the first wins. */
static void key_add(hl_catview *v, uint64_t k, int32_t row)
{
    uint32_t i = key_home(v, k);
    while (v->key[i] != 0 && v->key[i] != k)
        i = (i + 1) & v->key_mask;
    if (v->key[i] == 0) {
        v->key[i] = k;
        v->key_row[i] = row;
    }
}

/* The keys view_add put aside, into the table. The table is bigger than
 * the caches and the keys random, so each insert would wait on memory:
 * the home slot PREFETCH_AHEAD inserts ahead is fetched meanwhile. */
#define PREFETCH_AHEAD 16
static void key_add_all(hl_catview *v)
{
    for (int32_t i = 0; i < v->n_pend; i++) {
        if (i + PREFETCH_AHEAD < v->n_pend) {
            uint32_t h = key_home(v, v->pend[i + PREFETCH_AHEAD].key);
            __builtin_prefetch(&v->key[h], 1);
            __builtin_prefetch(&v->key_row[h], 1);
        }
        key_add(v, v->pend[i].key, v->pend[i].row);
    }
}

int32_t hl_catview_added_row(const hl_catview *v, uint64_t key)
{
    if (key == 0)
        return -1;
    for (uint32_t i = key_home(v, key); v->key[i] != 0; i = (i + 1) & v->key_mask)
        if (v->key[i] == key)
            return v->key_row[i];
    return -1;
}

/* Entry e into v: its side row, its hidden rows and its expiry. */
static int view_add(hl_catview *v, const hl_catalogue *c, const entry *e)
{
    int32_t row = e->model_row;
    const rec *r = in_effect(e);
    if (r == NULL)
        return 0;
    if (r->side >= 0) {
        size_t d = (size_t)c->dim, s = (size_t)v->n_side;
        memcpy(v->e_in + s * d, c->s_in + (size_t)r->side * d, d * sizeof(float));
        memcpy(v->e_out + s * d, c->s_out + (size_t)r->side * d, d * sizeof(float));
        v->bias[s] = c->s_bias[r->side];
        v->folded[s] = r->foldin_events > 0;
        if (id_add(v, e->id, e->id_len) != 0)
            return HL_ENOMEM;
        if (row >= 0) {
            v->always[v->n_always++] = row;     /* the side row replaces it */
            v->ovr[v->n_ovr++] = (ovr_row){row, v->n_model + v->n_side};
        } else
            v->pend[v->n_pend++] = (key_pend){e->ikey, v->n_model + v->n_side};
        row = v->n_model + v->n_side++;
    }
    if (row < 0)
        return 0;                               /* nothing to list or hide */
    if (!r->available)
        v->always[v->n_always++] = row;
    else if (r->expires_at_ms != HL_CATALOGUE_NO_EXPIRY)
        v->exp[v->n_exp++] = (exp_row){r->expires_at_ms, row};
    return 0;
}

hl_catview *hl_catalogue_view_reuse(const hl_catalogue *c, hl_catview *old)
{
    hl_catview *v = old != NULL ? old : calloc(1, sizeof *v);
    if (v == NULL)
        return NULL;
    v->version = c->version;
    v->n_model = c->n_model;
    v->m = c->m;
    v->n_side = v->n_always = v->n_exp = v->n_ovr = v->n_pend = 0;
    if (view_alloc(v, c) != 0)
        goto fail;
    v->dim = c->dim;
    v->id_off[0] = 0;
    for (int32_t i = 0; i < c->n_ent; i++)
        if (c->ent[i].used && view_add(v, c, &c->ent[i]) != 0)
            goto fail;
    key_add_all(v);
    qsort(v->always, (size_t)v->n_always, sizeof *v->always, cmp_i32);
    qsort(v->exp, (size_t)v->n_exp, sizeof *v->exp, cmp_exp);
    qsort(v->ovr, (size_t)v->n_ovr, sizeof *v->ovr, cmp_ovr);
    return v;
fail:
    hl_catview_destroy(v);
    return NULL;
}

hl_catview *hl_catalogue_view(const hl_catalogue *c)
{
    return hl_catalogue_view_reuse(c, NULL);
}

void hl_catview_destroy(hl_catview *v)
{
    if (v == NULL)
        return;
    free(v->ids);
    free(v->id_off);
    free(v->e_in);
    free(v->e_out);
    free(v->bias);
    free(v->folded);
    free(v->always);
    free(v->exp);
    free(v->key);
    free(v->key_row);
    free(v->ovr);
    free(v->pend);
    free(v);
}

uint64_t     hl_catview_version(const hl_catview *v) { return v->version; }
int32_t      hl_catview_n_side(const hl_catview *v) { return v->n_side; }
int32_t      hl_catview_n_model(const hl_catview *v) { return v->n_model; }
int          hl_catview_dim(const hl_catview *v) { return v->dim; }
const float *hl_catview_side_e_in(const hl_catview *v) { return v->e_in; }
const float *hl_catview_side_e_out(const hl_catview *v) { return v->e_out; }
const float *hl_catview_side_bias(const hl_catview *v) { return v->bias; }
int          hl_catview_side_folded(const hl_catview *v, int32_t s) { return v->folded[s]; }
int32_t      hl_catview_hidden_max(const hl_catview *v) { return v->n_always + v->n_exp; }

const char *hl_catview_item_id(const hl_catview *v, int32_t row, uint32_t *len)
{
    if (row >= 0 && row < v->n_model)
        return hl_model_item_id(v->m, row, len);
    if (row < v->n_model || row - v->n_model >= v->n_side)
        return NULL;
    int32_t s = row - v->n_model;
    *len = v->id_off[s + 1] - v->id_off[s];
    return v->ids + v->id_off[s];
}

int32_t hl_catview_row_find(const hl_catview *v, const char *id, size_t len)
{
    for (int32_t s = 0; s < v->n_side; s++)      /* O(n_side): tools and tests */
        if (v->id_off[s + 1] - v->id_off[s] == len &&
            memcmp(v->ids + v->id_off[s], id, len) == 0)
            return v->n_model + s;
    return hl_model_item_find(v->m, id, len);
}

int32_t hl_catview_override_row(const hl_catview *v, int32_t row)
{
    int32_t lo = 0, hi = v->n_ovr;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (v->ovr[mid].model < row)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < v->n_ovr && v->ovr[lo].model == row ? v->ovr[lo].side : -1;
}

int32_t hl_catview_hidden_at(const hl_catview *v, int64_t now_ms, int32_t *out,
                             int64_t *next_ms)
{
    int32_t n = v->n_always, i = 0;
    if (n > 0)                  /* out may be NULL when nothing can be hidden */
        memcpy(out, v->always, (size_t)n * sizeof *out);
    for (; i < v->n_exp && v->exp[i].at_ms <= now_ms; i++)
        out[n++] = v->exp[i].row;
    *next_ms = i < v->n_exp ? v->exp[i].at_ms : HL_CATALOGUE_NO_EXPIRY;
    if (i > 0)
        qsort(out, (size_t)n, sizeof *out, cmp_i32);
    return n;
}
