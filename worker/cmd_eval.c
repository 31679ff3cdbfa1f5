/* cmd_eval.c - `halflife eval`: how good are a model's lists, measured the
 * way they are served.
 *
 * The heads come from core/table.c (hl_table_apply with the model's e_in)
 * and the lists from core/rank.c, the worker's own code, so the figures are
 * those of the running worker, not of a re-implementation.
 *
 * loo (leave-one-out, full ranking; the protocol of the published Beauty
 * table): each user's last event (by time, file order on ties) is the
 * target; the state is built from all the user's earlier events, the
 * second-to-last (validation) one included; every item of the catalogue is
 * ranked with all the user's earlier items excluded. The history ring only
 * holds the last state.history events, so the exclusion is an explicit list
 * of every earlier item (hl_ranker_refresh_ex), not the ring. HR@K is the
 * share of users whose target is in the top K, NDCG@K the mean of
 * 1 / log2(rank + 2) over hits (rank 0-based). Users with a single event
 * have no history and are skipped (counted). A target the model does not
 * know is a miss.
 *
 * prequential (test, then learn, in time order): before an event is
 * applied, is its item in the user's current top K? The worker's exclusion
 * applies: the ring's last --history items (default 32, state.history's
 * default). Lists are computed in batches of --batch events: each event of
 * a batch gets a copy of its user's state just before it (earlier events of
 * the same batch applied), and the copies are refreshed in one call, which
 * is exact and keeps the SGEMM busy. Reported overall and per tenth of the
 * stream (--windows).
 *
 * --baseline popularity ranks by counts under the same protocol and
 * exclusions: in loo the counts of every event but the targets (on Beauty
 * HR@10 0.0135, NDCG@10 0.0061; the published 0.0152 / 0.0068 is exactly
 * what counting the targets too gives: --popularity-counts all); in
 * prequential the running counts before the event. Equal counts rank the
 * lower row first (without a model, rows number the items in order of first
 * appearance in the file). It needs no model: without --model the
 * catalogue is every item of the file. */
#include "cmd.h"
#include "dataset.h"
#include "decay.h"
#include "log.h"
#include "model.h"
#include "rank.h"
#include "table.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_K        10
#define DEFAULT_HISTORY  32
#define DEFAULT_BATCH    256
#define DEFAULT_WINDOWS  10
#define PROGRESS_MS      2000

typedef struct eval_args {
    const char *model, *input, *format, *protocol, *baseline;
    int         k, history, batch, windows, exclude_seen, quiet;
    int         pop_counts_all;   /* loo: popularity also counts the targets */
    int         threads;          /* OpenBLAS threads */
    int64_t     seq_step_ms;
} eval_args;

/* ---- arguments ------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: halflife eval [--model MODEL] --input FILE --format F\n"
        "                     --protocol loo|prequential [options]\n\n"
        "Measures a model's top-K lists, computed by the worker's own code, on an\n"
        "event file, and prints one JSON object on stdout (progress on stderr).\n\n"
        "  --model MODEL        the .hlm file (optional with --baseline popularity:\n"
        "                       the catalogue is then every item of the file)\n"
        "  --input FILE         events; --format movielens-csv|movielens-dat|seq|\n"
        "                       taobao|events-csv\n"
        "  --protocol loo       leave-one-out, full ranking: each user's last event is\n"
        "                       the target, all earlier ones make the state and are\n"
        "                       excluded from the ranking; HR@K and NDCG@K\n"
        "  --protocol prequential\n"
        "                       in time order, before each event is applied: is its\n"
        "                       item in the user's current top K? HR@K overall and\n"
        "                       per window\n"
        "  --k N                list length (default %d)\n"
        "  --baseline popularity  also rank by popularity under the same protocol\n"
        "  --seq-step-ms MS     seq format: event i of a user is at i x MS (default 1 h)\n"
        "  --history N          prequential: ring length, the items excluded as seen\n"
        "                       (default %d, state.history's default)\n"
        "  --exclude-seen yes|no  leave seen items out of the lists (default yes)\n"
        "  --batch N            users (loo) or events (prequential) per refresh (default %d)\n"
        "  --windows N          prequential: report HR per 1/N of the stream (default %d)\n"
        "  --threads N          OpenBLAS threads (default 1: the refresh batches are\n"
        "                       small, and the worker scores on one core per shard too)\n"
        "  --popularity-counts history|all\n"
        "                       loo: count every event but the targets (history, the\n"
        "                       default), or every event, targets included (all: the\n"
        "                       published Beauty popularity row was computed so, and\n"
        "                       this reproduces it exactly; it leaks the targets)\n"
        "  --quiet yes          no progress lines\n",
        DEFAULT_K, DEFAULT_HISTORY, DEFAULT_BATCH, DEFAULT_WINDOWS);
}

static int parse_int(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    *out = strtol(s, &end, 10);
    return (*s == '\0' || *end != '\0' || errno != 0 || *out < lo || *out > hi) ? -1 : 0;
}

static int parse_yes_no(const char *s, int *out)
{
    if (!strcmp(s, "yes") || !strcmp(s, "true") || !strcmp(s, "1")) *out = 1;
    else if (!strcmp(s, "no") || !strcmp(s, "false") || !strcmp(s, "0")) *out = 0;
    else return -1;
    return 0;
}

/* One option with its value; -1 if the option is unknown, -2 if the value
 * is bad. */
static int parse_opt(eval_args *a, const char *opt, const char *val)
{
    long x = 0;
    int bad = 0;

    if (!strcmp(opt, "--model"))              a->model = val;
    else if (!strcmp(opt, "--input"))         a->input = val;
    else if (!strcmp(opt, "--format"))        a->format = val;
    else if (!strcmp(opt, "--protocol"))      a->protocol = val;
    else if (!strcmp(opt, "--baseline"))      a->baseline = val;
    else if (!strcmp(opt, "--k"))             { bad = parse_int(val, 1, 1000, &x); a->k = (int)x; }
    else if (!strcmp(opt, "--history"))       { bad = parse_int(val, 1, 255, &x); a->history = (int)x; }
    else if (!strcmp(opt, "--batch"))         { bad = parse_int(val, 1, 4096, &x); a->batch = (int)x; }
    else if (!strcmp(opt, "--threads"))       { bad = parse_int(val, 1, 256, &x); a->threads = (int)x; }
    else if (!strcmp(opt, "--windows"))       { bad = parse_int(val, 1, 1000, &x); a->windows = (int)x; }
    else if (!strcmp(opt, "--seq-step-ms"))   { bad = parse_int(val, 1, (long)1e15, &x); a->seq_step_ms = x; }
    else if (!strcmp(opt, "--exclude-seen"))  bad = parse_yes_no(val, &a->exclude_seen);
    else if (!strcmp(opt, "--quiet"))         bad = parse_yes_no(val, &a->quiet);
    else if (!strcmp(opt, "--popularity-counts")) {
        a->pop_counts_all = !strcmp(val, "all");
        bad = !a->pop_counts_all && strcmp(val, "history");
    }
    else return -1;
    return bad ? -2 : 0;
}

static int check_args(const eval_args *a)
{
    if (!a->input || !a->format || !a->protocol) {
        fprintf(stderr, "halflife eval: --input, --format and --protocol are required\n\n");
        return 2;
    }
    if (strcmp(a->protocol, "loo") && strcmp(a->protocol, "prequential")) {
        fprintf(stderr, "halflife eval: --protocol %s: expected loo or prequential\n", a->protocol);
        return 2;
    }
    if (a->baseline && strcmp(a->baseline, "popularity")) {
        fprintf(stderr, "halflife eval: --baseline %s: only popularity exists\n", a->baseline);
        return 2;
    }
    if (!a->model && !a->baseline) {
        fprintf(stderr, "halflife eval: give --model, --baseline popularity, or both\n\n");
        return 2;
    }
    return 0;
}

/* 0, 1 (--help printed) or 2 (usage error, explained on stderr). */
static int parse_args(int argc, char **argv, eval_args *a)
{
    *a = (eval_args){.k = DEFAULT_K, .history = DEFAULT_HISTORY, .batch = DEFAULT_BATCH,
                     .windows = DEFAULT_WINDOWS, .exclude_seen = 1, .threads = 1};
    for (int i = 1; i < argc; i += 2) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "halflife eval: %s needs a value\n", argv[i]);
            return 2;
        }
        int rc = parse_opt(a, argv[i], argv[i + 1]);
        if (rc == -1) {
            fprintf(stderr, "halflife eval: unknown option %s\n\n", argv[i]);
            usage(stderr);
            return 2;
        }
        if (rc == -2) {
            fprintf(stderr, "halflife eval: %s %s: not an allowed value\n", argv[i], argv[i + 1]);
            return 2;
        }
    }
    int rc = check_args(a);
    if (rc != 0)
        usage(stderr);
    return rc;
}

/* ---- string interning: user and item ids to dense ids ---------------------- */

typedef struct strmap {
    char     *arena;       /* every key, back to back */
    size_t    arena_len, arena_cap;
    size_t   *off;         /* (n) key offsets into arena */
    uint32_t *len;         /* (n) key lengths */
    int32_t   n, cap;      /* keys, and room in off/len */
    int32_t  *slot;        /* (n_slots) open addressing: id or -1 */
    uint32_t  n_slots;     /* power of two, > 2 n */
} strmap;

static uint64_t hash_bytes(const char *s, uint32_t len)
{
    uint64_t h = 1469598103934665603ull;          /* FNV-1a */
    for (uint32_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static const char *strmap_key(const strmap *sm, int32_t id, uint32_t *len)
{
    *len = sm->len[id];
    return sm->arena + sm->off[id];
}

static int strmap_rehash(strmap *sm)
{
    uint32_t n_slots = sm->n_slots ? sm->n_slots * 2 : 1024;
    int32_t *slot = malloc((size_t)n_slots * sizeof *slot);
    if (slot == NULL)
        return HL_ENOMEM;
    memset(slot, 0xff, (size_t)n_slots * sizeof *slot);
    for (int32_t id = 0; id < sm->n; id++) {
        uint32_t i = (uint32_t)hash_bytes(sm->arena + sm->off[id], sm->len[id]) & (n_slots - 1);
        while (slot[i] >= 0)
            i = (i + 1) & (n_slots - 1);
        slot[i] = id;
    }
    free(sm->slot);
    sm->slot = slot;
    sm->n_slots = n_slots;
    return 0;
}

static int strmap_grow(strmap *sm, uint32_t len)
{
    if (sm->arena_len + len > sm->arena_cap) {
        size_t cap = sm->arena_cap ? sm->arena_cap * 2 : 65536;
        while (cap < sm->arena_len + len)
            cap *= 2;
        char *a = realloc(sm->arena, cap);
        if (a == NULL) return HL_ENOMEM;
        sm->arena = a;
        sm->arena_cap = cap;
    }
    if (sm->n == sm->cap) {
        int32_t cap = sm->cap ? sm->cap * 2 : 1024;
        size_t *off = realloc(sm->off, (size_t)cap * sizeof *off);
        if (off == NULL) return HL_ENOMEM;
        sm->off = off;
        uint32_t *l = realloc(sm->len, (size_t)cap * sizeof *l);
        if (l == NULL) return HL_ENOMEM;
        sm->len = l;
        sm->cap = cap;
    }
    if ((uint32_t)sm->n * 2 + 2 > sm->n_slots)
        return strmap_rehash(sm);
    return 0;
}

/* Id of s, added if new; negative HL_E* on no memory. */
static int32_t strmap_put(strmap *sm, const char *s, uint32_t len)
{
    if (strmap_grow(sm, len) != 0)
        return HL_ENOMEM;
    uint32_t i = (uint32_t)hash_bytes(s, len) & (sm->n_slots - 1);
    for (; sm->slot[i] >= 0; i = (i + 1) & (sm->n_slots - 1)) {
        int32_t id = sm->slot[i];
        if (sm->len[id] == len && memcmp(sm->arena + sm->off[id], s, len) == 0)
            return id;
    }
    memcpy(sm->arena + sm->arena_len, s, len);
    sm->off[sm->n] = sm->arena_len;
    sm->len[sm->n] = len;
    sm->arena_len += len;
    sm->slot[i] = sm->n;
    return sm->n++;
}

static void strmap_free(strmap *sm)
{
    free(sm->arena);
    free(sm->off);
    free(sm->len);
    free(sm->slot);
}

/* ---- the events ------------------------------------------------------------ */

typedef struct ev_rec {
    int64_t ts_ms, idx;     /* idx: file order, the tie-break */
    int32_t user, item;     /* dense user id; model row (or file item id), -1 unknown */
    float   w;              /* type weight x weight field */
    uint8_t type;
} ev_rec;

typedef struct eval_data {
    strmap           users, items;
    ev_rec          *ev;
    int64_t          n_ev, cap;
    int32_t          n_rows;        /* catalogue size */
    int64_t          unknown;       /* events whose item the model lacks */
    hl_dataset_stats st;
} eval_data;

static int push_event(eval_data *d, const hl_dataset_event *de, const hl_model *m,
                      char *errbuf, size_t errlen)
{
    if (d->n_ev == d->cap) {
        int64_t cap = d->cap ? d->cap * 2 : 65536;
        ev_rec *ev = realloc(d->ev, (size_t)cap * sizeof *ev);
        if (ev == NULL)
            return hl_err(errbuf, errlen, HL_ENOMEM, "eval: out of memory at event %lld",
                          (long long)d->n_ev);
        d->ev = ev;
        d->cap = cap;
    }
    ev_rec *e = &d->ev[d->n_ev];
    int32_t user = strmap_put(&d->users, de->user, de->user_len);
    int32_t item = m ? hl_model_item_find(m, de->item, de->item_len)
                     : strmap_put(&d->items, de->item, de->item_len);
    if (user < 0 || (m == NULL && item < 0))
        return hl_err(errbuf, errlen, HL_ENOMEM, "eval: out of memory interning ids");
    float tw = m ? hl_model_info_get(m)->type_weight[de->type] : 1.0f;
    *e = (ev_rec){.ts_ms = de->ts_ms, .idx = d->n_ev, .user = user, .item = item,
                  .w = tw * de->weight, .type = (uint8_t)de->type};
    d->unknown += item < 0;
    d->n_ev++;
    return 0;
}

static int load_events(const eval_args *a, const hl_model *m, eval_data *d,
                       char *errbuf, size_t errlen)
{
    hl_dataset_opts o = {.seq_step_ms = a->seq_step_ms};
    hl_dataset_event de;
    int rc;

    if ((rc = hl_dataset_format_parse(a->format, &o.format, errbuf, errlen)) != 0)
        return rc;
    hl_dataset_reader *rd = hl_dataset_open(a->input, &o, errbuf, errlen);
    if (rd == NULL)
        return HL_EIO;
    while ((rc = hl_dataset_next(rd, &de, errbuf, errlen)) == 1)
        if ((rc = push_event(d, &de, m, errbuf, errlen)) != 0)
            break;
    hl_dataset_stats_get(rd, &d->st);
    hl_dataset_close(rd);
    if (rc < 0)
        return rc;
    d->n_rows = m ? hl_model_info_get(m)->n_items : d->items.n;
    if (d->n_ev == 0)
        return hl_err(errbuf, errlen, HL_EFORMAT, "eval: %s holds no events", a->input);
    return 0;
}

static int cmp_user_time(const void *pa, const void *pb)
{
    const ev_rec *a = pa, *b = pb;
    if (a->user != b->user) return a->user < b->user ? -1 : 1;
    if (a->ts_ms != b->ts_ms) return a->ts_ms < b->ts_ms ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

static int cmp_time(const void *pa, const void *pb)
{
    const ev_rec *a = pa, *b = pb;
    if (a->ts_ms != b->ts_ms) return a->ts_ms < b->ts_ms ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

static hl_event to_hl_event(const eval_data *d, const ev_rec *e, int64_t offset)
{
    uint32_t len;
    const char *user = strmap_key(&d->users, e->user, &len);
    return (hl_event){.user = user, .user_len = len, .item = e->item, .type = e->type,
                      .w = e->w, .ts_ms = e->ts_ms, .offset = offset};
}

/* ---- metrics and progress ---------------------------------------------------- */

typedef struct metric {
    int64_t n, hits;
    double  ndcg;
} metric;

/* rank: 0-based position of the target in the list, or -1. */
static void metric_add(metric *mt, int rank)
{
    mt->n++;
    if (rank >= 0) {
        mt->hits++;
        mt->ndcg += 1.0 / log2(rank + 2.0);
    }
}

static double metric_hr(const metric *mt)   { return mt->n ? (double)mt->hits / mt->n : 0.0; }
static double metric_ndcg(const metric *mt) { return mt->n ? mt->ndcg / mt->n : 0.0; }

static int rank_in_recs(const hl_rec *recs, int n, int32_t target)
{
    for (int j = 0; target >= 0 && j < n; j++)
        if (recs[j].item == target)
            return j;
    return -1;
}

static int rank_in_items(const int32_t *items, int n, int32_t target)
{
    for (int j = 0; target >= 0 && j < n; j++)
        if (items[j] == target)
            return j;
    return -1;
}

typedef struct progress {
    int     quiet;
    int64_t last_ms;
} progress;

static void progress_line(progress *pg, const char *what, int64_t done, int64_t total,
                          const metric *model, const metric *pop)
{
    int64_t now = hl_now_mono_ms();
    if (pg->quiet || (now - pg->last_ms < PROGRESS_MS && done < total))
        return;
    pg->last_ms = now;
    fprintf(stderr, "eval: %s %lld/%lld (%.0f%%)", what, (long long)done,
            (long long)total, 100.0 * done / (total ? total : 1));
    if (model) fprintf(stderr, " model_hr %.4f", metric_hr(model));
    if (pop)   fprintf(stderr, " popularity_hr %.4f", metric_hr(pop));
    fprintf(stderr, "\n");
}

/* ---- popularity ----------------------------------------------------------- */

/* Items ranked by count, equal counts lower row first (the ranker's tie
 * rule). loo's counts are fixed: one sort, then a walk per user. The
 * prequential counts change after every event, so they live in a segment
 * tree whose nodes hold the best item below them: an update is O(log n),
 * and the top k comes from popping the best (taking it out of the tree)
 * until k non-excluded items are out, then putting the popped back. */
typedef struct popularity {
    int32_t  n;
    int64_t *count;             /* (n) */
    int32_t *stamp;             /* (n) exclusion marks, by query number */
    int32_t  query;
    int32_t *order;             /* (n) loo: items best first, after pop_sort */
    int32_t  size;              /* prequential: leaves, a power of two >= n */
    int32_t *tree;              /* (2 size) best item in each subtree, or -1 */
    uint8_t *out;               /* (n) popped during the current query */
    int32_t *popped;            /* (max_popped) */
    int      max_popped;
} popularity;

static int pop_better(const popularity *p, int32_t a, int32_t b)
{
    if (a < 0) return 0;
    if (b < 0) return 1;
    return p->count[a] > p->count[b] || (p->count[a] == p->count[b] && a < b);
}

/* Recomputes the leaf of item and its ancestors. */
static void pop_fix(popularity *p, int32_t item)
{
    int32_t i = p->size + item;
    p->tree[i] = p->out[item] ? -1 : item;
    for (i >>= 1; i >= 1; i >>= 1) {
        int32_t l = p->tree[2 * i], r = p->tree[2 * i + 1];
        p->tree[i] = pop_better(p, l, r) ? l : r;
    }
}

static int pop_init_tree(popularity *p, int max_popped)
{
    for (p->size = 1; p->size < p->n; p->size *= 2)
        ;
    p->tree = malloc(2 * (size_t)p->size * sizeof *p->tree);
    p->out = calloc((size_t)p->n, 1);
    p->popped = malloc((size_t)max_popped * sizeof *p->popped);
    p->max_popped = max_popped;
    if (!p->tree || !p->out || !p->popped)
        return HL_ENOMEM;
    for (int32_t i = 0; i < p->size; i++)
        p->tree[p->size + i] = i < p->n ? i : -1;
    for (int32_t i = p->size - 1; i >= 1; i--)   /* all counts 0: lowest row */
        p->tree[i] = pop_better(p, p->tree[2 * i], p->tree[2 * i + 1])
                   ? p->tree[2 * i] : p->tree[2 * i + 1];
    return 0;
}

/* max_popped > 0 makes a prequential (tree) ranking, 0 a loo (sorted) one. */
static int pop_init(popularity *p, int32_t n, int max_popped)
{
    memset(p, 0, sizeof *p);
    p->n = n;
    p->count = calloc((size_t)n, sizeof *p->count);
    p->stamp = calloc((size_t)n, sizeof *p->stamp);
    if (!p->count || !p->stamp)
        return HL_ENOMEM;
    return max_popped > 0 ? pop_init_tree(p, max_popped) : 0;
}

static void pop_free(popularity *p)
{
    free(p->count);
    free(p->stamp);
    free(p->order);
    free(p->tree);
    free(p->out);
    free(p->popped);
}

static void pop_add(popularity *p, int32_t item)
{
    if (item < 0 || item >= p->n)
        return;
    p->count[item]++;
    if (p->tree)
        pop_fix(p, item);
}

static int cmp_by_count(const void *pa, const void *pb, void *ctx)
{
    const popularity *p = ctx;
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    return pop_better(p, a, b) ? -1 : pop_better(p, b, a) ? 1 : 0;
}

/* loo: ranks the items once the counts are final. */
static int pop_sort(popularity *p)
{
    if ((p->order = malloc((size_t)p->n * sizeof *p->order)) == NULL)
        return HL_ENOMEM;
    for (int32_t i = 0; i < p->n; i++)
        p->order[i] = i;
    qsort_r(p->order, (size_t)p->n, sizeof *p->order, cmp_by_count, p);
    return 0;
}

/* Starts a query: the next pop_exclude marks belong to it. */
static void pop_begin(popularity *p) { p->query++; }

static void pop_exclude(popularity *p, int32_t item)
{
    if (item >= 0 && item < p->n)
        p->stamp[item] = p->query;
}

static int pop_top_tree(popularity *p, int k, int32_t *top)
{
    int n = 0, n_popped = 0;
    while (n < k && n_popped < p->max_popped && p->tree[1] >= 0) {
        int32_t best = p->tree[1];
        p->out[best] = 1;
        pop_fix(p, best);
        p->popped[n_popped++] = best;
        if (p->stamp[best] != p->query)
            top[n++] = best;
    }
    for (int i = 0; i < n_popped; i++) {
        p->out[p->popped[i]] = 0;
        pop_fix(p, p->popped[i]);
    }
    return n;
}

/* The k most popular items not excluded in this query; returns the count. */
static int pop_top(popularity *p, int k, int32_t *top)
{
    int n = 0;
    if (p->tree)
        return pop_top_tree(p, k, top);
    for (int32_t i = 0; i < p->n && n < k; i++)
        if (p->stamp[p->order[i]] != p->query)
            top[n++] = p->order[i];
    return n;
}

/* ---- the state ----------------------------------------------------------- */

/* A table shaped for the model (or, for popularity alone, a minimal one
 * that only keeps the rings). Nothing is evicted. */
static hl_table *make_table(const hl_model *m, int history, int32_t n_users,
                            char *errbuf, size_t errlen)
{
    hl_table_opts o = {.history = history, .max_users = (size_t)n_users + 1,
                       .evict_mass = 0.0f, .expected_users = (size_t)n_users + 1};
    static const double one_day_ms = 86400e3;
    int rc = m ? hl_decay_init(&o.decay, hl_model_info_get(m)->n_heads,
                               hl_model_info_get(m)->dim,
                               hl_model_info_get(m)->half_life_ms, errbuf, errlen)
               : hl_decay_init(&o.decay, 1, 1, &one_day_ms, errbuf, errlen);
    return rc == 0 ? hl_table_create(&o, errbuf, errlen) : NULL;
}

static int apply_one(hl_table *tbl, const hl_model *m, const hl_event *ev,
                     char *errbuf, size_t errlen)
{
    int8_t status = 0;
    const float *e_in = m ? hl_model_e_in(m) : NULL;
    int32_t n_items = m ? hl_model_info_get(m)->n_items : 0;
    hl_table_apply(tbl, ev, 1, e_in, n_items, &status);
    if (status < 0)
        return hl_err(errbuf, errlen, status, "eval: state table: %s", hl_strerror(status));
    return 0;
}

/* ---- loo ----------------------------------------------------------------- */

typedef struct loo_run {
    const eval_args *a;
    const hl_model  *m;
    eval_data       *d;
    int64_t         *start;     /* (n_users + 1) each user's events in d->ev */
    metric           model, pop;
    int64_t          users, skipped, target_unknown, target_seen;
    progress         pg;
} loo_run;

static void loo_user_ranges(loo_run *lr)
{
    const eval_data *d = lr->d;
    for (int64_t i = 0, u = 0; u <= d->users.n; u++) {
        while (i < d->n_ev && d->ev[i].user < u)
            i++;
        lr->start[u] = i;
    }
}

static int loo_is_user(const loo_run *lr, int32_t u)
{
    return lr->start[u + 1] - lr->start[u] >= 2;
}

/* Applies every event but each user's last to a new table. */
static hl_table *loo_state(loo_run *lr, char *errbuf, size_t errlen)
{
    const eval_data *d = lr->d;
    hl_table *tbl = make_table(lr->m, DEFAULT_HISTORY, d->users.n, errbuf, errlen);
    for (int32_t u = 0; tbl && u < d->users.n; u++) {
        for (int64_t i = lr->start[u]; i + 1 < lr->start[u + 1]; i++) {
            hl_event ev = to_hl_event(d, &d->ev[i], i);
            if (apply_one(tbl, lr->m, &ev, errbuf, errlen) != 0) {
                hl_table_destroy(tbl);
                return NULL;
            }
        }
    }
    return tbl;
}

/* Each user's earlier items, in the sorted event order: item rows of
 * ev[start[u] .. start[u+1]-1). */
static void loo_exclusions(const loo_run *lr, int32_t u, const int32_t *rows,
                           hl_rank_exclude *ex)
{
    ex->item = rows + lr->start[u];
    ex->n = lr->a->exclude_seen ? (int)(lr->start[u + 1] - lr->start[u] - 1) : 0;
}

static int loo_model_batch(loo_run *lr, hl_ranker *rk, hl_table *tbl, const int32_t *us,
                           int n, const int32_t *rows, hl_row_view *views,
                           hl_rank_exclude *ex, hl_rec *recs, int *n_out)
{
    const eval_data *d = lr->d;
    for (int b = 0; b < n; b++) {
        uint32_t len;
        const char *key = strmap_key(&d->users, us[b], &len);
        int64_t row = hl_table_find(tbl, key, len);
        if (row < 0)
            return HL_ENOENT;
        hl_table_view(tbl, (uint32_t)row, &views[b]);
        loo_exclusions(lr, us[b], rows, &ex[b]);
    }
    int rc = hl_ranker_refresh_ex(rk, views, n, ex, recs, n_out);
    for (int b = 0; rc == 0 && b < n; b++) {
        int32_t target = d->ev[lr->start[us[b] + 1] - 1].item;
        metric_add(&lr->model, rank_in_recs(recs + (size_t)b * lr->a->k, n_out[b], target));
    }
    return rc;
}

/* Every user's list from the model, batch by batch. */
static int loo_model(loo_run *lr, const int32_t *rows, char *errbuf, size_t errlen)
{
    const eval_args *a = lr->a;
    hl_rank_opts ro = {.k = a->k, .exclude_seen = 0, .max_batch = a->batch};
    hl_row_view *views = malloc((size_t)a->batch * sizeof *views);
    hl_rank_exclude *ex = malloc((size_t)a->batch * sizeof *ex);
    hl_rec *recs = malloc((size_t)a->batch * a->k * sizeof *recs);
    int *n_out = malloc((size_t)a->batch * sizeof *n_out);
    int32_t *us = malloc((size_t)a->batch * sizeof *us);
    hl_table *tbl = NULL;
    hl_ranker *rk = NULL;
    int rc = HL_ENOMEM, n = 0;

    if (!views || !ex || !recs || !n_out || !us) {
        hl_err(errbuf, errlen, rc, "eval: out of memory");
        goto out;
    }
    rc = HL_EINVAL;
    if ((tbl = loo_state(lr, errbuf, errlen)) == NULL ||
        (rk = hl_ranker_create(lr->m, &ro, errbuf, errlen)) == NULL)
        goto out;
    rc = 0;
    for (int32_t u = 0; rc == 0 && u <= lr->d->users.n; u++) {
        if (u < lr->d->users.n && loo_is_user(lr, u))
            us[n++] = u;
        if (n == a->batch || (u == lr->d->users.n && n > 0)) {
            rc = loo_model_batch(lr, rk, tbl, us, n, rows, views, ex, recs, n_out);
            n = 0;
            progress_line(&lr->pg, "loo users", lr->model.n, lr->users, &lr->model, NULL);
        }
    }
    if (rc != 0)
        hl_err(errbuf, errlen, rc, "eval: refresh failed: %s", hl_strerror(rc));
out:
    hl_ranker_destroy(rk);
    hl_table_destroy(tbl);
    free(views); free(ex); free(recs); free(n_out); free(us);
    return rc;
}

static int loo_popularity(loo_run *lr, const int32_t *rows)
{
    const eval_data *d = lr->d;
    popularity p;
    int32_t *top = malloc((size_t)lr->a->k * sizeof *top);
    int rc = pop_init(&p, d->n_rows, 0);

    for (int32_t u = 0; rc == 0 && top && u < d->users.n; u++)
        for (int64_t i = lr->start[u]; i + 1 < lr->start[u + 1] + lr->a->pop_counts_all; i++)
            pop_add(&p, rows[i]);
    if (rc == 0 && top)
        rc = pop_sort(&p);
    for (int32_t u = 0; rc == 0 && top && u < d->users.n; u++) {
        if (!loo_is_user(lr, u))
            continue;
        hl_rank_exclude ex;
        loo_exclusions(lr, u, rows, &ex);
        pop_begin(&p);
        for (int i = 0; i < ex.n; i++)
            pop_exclude(&p, ex.item[i]);
        int n = pop_top(&p, lr->a->k, top);
        metric_add(&lr->pop, rank_in_items(top, n, d->ev[lr->start[u + 1] - 1].item));
    }
    pop_free(&p);
    if (top == NULL)
        rc = HL_ENOMEM;
    free(top);
    return rc;
}

/* Counts users, skipped users, unknown and already-seen targets. */
static void loo_census(loo_run *lr, const int32_t *rows)
{
    for (int32_t u = 0; u < lr->d->users.n; u++) {
        if (!loo_is_user(lr, u)) {
            lr->skipped++;
            continue;
        }
        lr->users++;
        int64_t last = lr->start[u + 1] - 1;
        lr->target_unknown += rows[last] < 0;
        for (int64_t i = lr->start[u]; rows[last] >= 0 && i < last; i++)
            if (rows[i] == rows[last]) {
                lr->target_seen++;
                break;
            }
    }
}

static void print_metric(const char *name, const metric *mt, int with_ndcg)
{
    printf(",\"%s\":{\"hr\":%.6f", name, metric_hr(mt));
    if (with_ndcg)
        printf(",\"ndcg\":%.6f", metric_ndcg(mt));
    printf(",\"hits\":%lld,\"n\":%lld}", (long long)mt->hits, (long long)mt->n);
}

static void loo_print(const loo_run *lr, double seconds)
{
    const eval_data *d = lr->d;
    printf("{\"protocol\":\"loo\",\"k\":%d,\"users\":%lld,\"users_skipped\":%lld,"
           "\"items\":%d,\"events\":%lld,\"bad_lines\":%lld,\"exclude_seen\":%s,"
           "\"targets_unknown\":%lld,\"targets_seen_before\":%lld",
           lr->a->k, (long long)lr->users, (long long)lr->skipped, d->n_rows,
           (long long)d->n_ev, (long long)d->st.bad_lines,
           lr->a->exclude_seen ? "true" : "false", (long long)lr->target_unknown,
           (long long)lr->target_seen);
    if (lr->m)
        print_metric("model", &lr->model, 1);
    if (lr->a->baseline) {
        print_metric("popularity", &lr->pop, 1);
        printf(",\"popularity_counts\":\"%s\"", lr->a->pop_counts_all ? "all" : "history");
    }
    printf(",\"seconds\":%.2f}\n", seconds);
}

static int run_loo(const eval_args *a, const hl_model *m, eval_data *d,
                   char *errbuf, size_t errlen)
{
    int64_t t0 = hl_now_mono_ms();
    loo_run lr = {.a = a, .m = m, .d = d, .pg = {.quiet = a->quiet, .last_ms = t0}};
    int32_t *rows = malloc((size_t)d->n_ev * sizeof *rows);
    int rc = HL_ENOMEM;

    lr.start = malloc(((size_t)d->users.n + 1) * sizeof *lr.start);
    if (rows == NULL || lr.start == NULL) {
        hl_err(errbuf, errlen, rc, "eval: out of memory");
        goto out;
    }
    qsort(d->ev, (size_t)d->n_ev, sizeof *d->ev, cmp_user_time);
    for (int64_t i = 0; i < d->n_ev; i++)
        rows[i] = d->ev[i].item;
    loo_user_ranges(&lr);
    loo_census(&lr, rows);
    rc = 0;
    if (m && (rc = loo_model(&lr, rows, errbuf, errlen)) != 0)
        goto out;
    if (a->baseline && (rc = loo_popularity(&lr, rows)) != 0) {
        hl_err(errbuf, errlen, rc, "eval: popularity: out of memory");
        goto out;
    }
    loo_print(&lr, (hl_now_mono_ms() - t0) / 1000.0);
out:
    free(rows);
    free(lr.start);
    return rc;
}

/* ---- prequential ----------------------------------------------------------- */

/* A copy of one user's state just before one event. */
typedef struct state_copy {
    float       *s, *m;
    int32_t     *item;
    uint8_t     *type;
    int64_t     *ts;
    hl_row_view  v;
} state_copy;

typedef struct preq_run {
    const eval_args *a;
    const hl_model  *m;
    eval_data       *d;
    hl_table        *tbl;
    hl_ranker       *rk;
    popularity       pop;
    state_copy      *copy;      /* (batch) */
    hl_row_view     *views;     /* (batch) */
    hl_rec          *recs;      /* (batch, k) */
    int             *n_out;     /* (batch) */
    int32_t         *top;       /* (k) */
    metric           model, popm;
    metric          *win_model, *win_pop;   /* (windows) */
    int              n_heads, dim;
    progress         pg;
} preq_run;

static int copies_alloc(preq_run *pr)
{
    size_t n = (size_t)pr->a->batch, hist = (size_t)pr->a->history;
    pr->copy = calloc(n, sizeof *pr->copy);
    if (pr->copy == NULL)
        return HL_ENOMEM;
    for (size_t b = 0; b < n; b++) {
        state_copy *c = &pr->copy[b];
        c->s = malloc((size_t)pr->n_heads * pr->dim * sizeof *c->s);
        c->m = malloc((size_t)pr->n_heads * sizeof *c->m);
        c->item = malloc(hist * sizeof *c->item);
        c->type = malloc(hist * sizeof *c->type);
        c->ts = malloc(hist * sizeof *c->ts);
        if (!c->s || !c->m || !c->item || !c->type || !c->ts)
            return HL_ENOMEM;
    }
    return 0;
}

static void copies_free(preq_run *pr)
{
    for (int b = 0; pr->copy && b < pr->a->batch; b++) {
        free(pr->copy[b].s);
        free(pr->copy[b].m);
        free(pr->copy[b].item);
        free(pr->copy[b].type);
        free(pr->copy[b].ts);
    }
    free(pr->copy);
}

static int preq_alloc(preq_run *pr, char *errbuf, size_t errlen)
{
    const eval_args *a = pr->a;
    pr->n_heads = pr->m ? hl_model_info_get(pr->m)->n_heads : 1;
    pr->dim = pr->m ? hl_model_info_get(pr->m)->dim : 1;
    pr->views = malloc((size_t)a->batch * sizeof *pr->views);
    pr->recs = malloc((size_t)a->batch * a->k * sizeof *pr->recs);
    pr->n_out = malloc((size_t)a->batch * sizeof *pr->n_out);
    pr->top = malloc((size_t)a->k * sizeof *pr->top);
    pr->win_model = calloc((size_t)a->windows, sizeof *pr->win_model);
    pr->win_pop = calloc((size_t)a->windows, sizeof *pr->win_pop);
    if (!pr->views || !pr->recs || !pr->n_out || !pr->top || !pr->win_model ||
        !pr->win_pop || copies_alloc(pr) != 0 ||
        (a->baseline && pop_init(&pr->pop, pr->d->n_rows, a->k + a->history) != 0))
        return hl_err(errbuf, errlen, HL_ENOMEM, "eval: out of memory");
    if ((pr->tbl = make_table(pr->m, a->history, pr->d->users.n, errbuf, errlen)) == NULL)
        return HL_EINVAL;
    hl_rank_opts ro = {.k = a->k, .exclude_seen = a->exclude_seen, .max_batch = a->batch};
    if (pr->m && (pr->rk = hl_ranker_create(pr->m, &ro, errbuf, errlen)) == NULL)
        return HL_EINVAL;
    return 0;
}

static void preq_free(preq_run *pr)
{
    hl_ranker_destroy(pr->rk);
    hl_table_destroy(pr->tbl);
    if (pr->a->baseline)
        pop_free(&pr->pop);
    copies_free(pr);
    free(pr->views); free(pr->recs); free(pr->n_out); free(pr->top);
    free(pr->win_model); free(pr->win_pop);
}

/* Copies the user's current state (zeros for a user not seen yet). */
static void copy_state(preq_run *pr, const ev_rec *e, state_copy *c)
{
    uint32_t len;
    const char *key = strmap_key(&pr->d->users, e->user, &len);
    int64_t row = hl_table_find(pr->tbl, key, len);
    size_t n_s = (size_t)pr->n_heads * pr->dim;
    hl_row_view v = {.history = pr->a->history, .t_ref_ms = INT64_MIN};

    if (row >= 0)
        hl_table_view(pr->tbl, (uint32_t)row, &v);
    if (row >= 0) {
        memcpy(c->s, v.s, n_s * sizeof *c->s);
        memcpy(c->m, v.m, (size_t)pr->n_heads * sizeof *c->m);
        memcpy(c->item, v.hist_item, (size_t)v.history * sizeof *c->item);
        memcpy(c->type, v.hist_type, (size_t)v.history * sizeof *c->type);
        memcpy(c->ts, v.hist_ts_ms, (size_t)v.history * sizeof *c->ts);
    } else {
        memset(c->s, 0, n_s * sizeof *c->s);
        memset(c->m, 0, (size_t)pr->n_heads * sizeof *c->m);
    }
    c->v = v;
    c->v.user = key;
    c->v.user_len = len;
    c->v.s = c->s;
    c->v.m = c->m;
    c->v.hist_item = c->item;
    c->v.hist_type = c->type;
    c->v.hist_ts_ms = c->ts;
}

static int window_of(const preq_run *pr, int64_t i)
{
    return (int)(i * pr->a->windows / pr->d->n_ev);
}

/* Popularity's list for event i from the running counts, then counts it. */
static void preq_popularity(preq_run *pr, int64_t i, const state_copy *c)
{
    const ev_rec *e = &pr->d->ev[i];
    pop_begin(&pr->pop);
    for (int h = 0; pr->a->exclude_seen && h < c->v.n_hist; h++)
        pop_exclude(&pr->pop, c->v.hist_item[hl_row_hist_index(&c->v, h)]);
    int n = pop_top(&pr->pop, pr->a->k, pr->top);
    int rank = rank_in_items(pr->top, n, e->item);
    metric_add(&pr->popm, rank);
    metric_add(&pr->win_pop[window_of(pr, i)], rank);
    pop_add(&pr->pop, e->item);
}

/* Events [first, first + n): copy each user's state just before its event,
 * apply the event, then refresh all the copies at once. */
static int preq_batch(preq_run *pr, int64_t first, int n, char *errbuf, size_t errlen)
{
    int rc;
    for (int b = 0; b < n; b++) {
        const ev_rec *e = &pr->d->ev[first + b];
        copy_state(pr, e, &pr->copy[b]);
        pr->views[b] = pr->copy[b].v;
        if (pr->a->baseline)
            preq_popularity(pr, first + b, &pr->copy[b]);
        hl_event ev = to_hl_event(pr->d, e, first + b);
        if ((rc = apply_one(pr->tbl, pr->m, &ev, errbuf, errlen)) != 0)
            return rc;
    }
    if (pr->rk == NULL)
        return 0;
    if ((rc = hl_ranker_refresh(pr->rk, pr->views, n, pr->recs, pr->n_out)) != 0)
        return hl_err(errbuf, errlen, rc, "eval: refresh failed: %s", hl_strerror(rc));
    for (int b = 0; b < n; b++) {
        int rank = rank_in_recs(pr->recs + (size_t)b * pr->a->k, pr->n_out[b],
                                pr->d->ev[first + b].item);
        metric_add(&pr->model, rank);
        metric_add(&pr->win_model[window_of(pr, first + b)], rank);
    }
    return 0;
}

static void preq_print_windows(const preq_run *pr)
{
    printf(",\"windows\":[");
    for (int w = 0; w < pr->a->windows; w++) {
        int64_t lo = (w * pr->d->n_ev + pr->a->windows - 1) / pr->a->windows;
        int64_t hi = ((w + 1) * pr->d->n_ev + pr->a->windows - 1) / pr->a->windows - 1;
        if (hi < lo)
            continue;
        printf("%s{\"from_ts_ms\":%lld,\"to_ts_ms\":%lld,\"events\":%lld",
               w ? "," : "", (long long)pr->d->ev[lo].ts_ms,
               (long long)pr->d->ev[hi].ts_ms, (long long)(hi - lo + 1));
        if (pr->m)
            printf(",\"model_hr\":%.6f", metric_hr(&pr->win_model[w]));
        if (pr->a->baseline)
            printf(",\"popularity_hr\":%.6f", metric_hr(&pr->win_pop[w]));
        printf("}");
    }
    printf("]");
}

static void preq_print(const preq_run *pr, double seconds)
{
    const eval_data *d = pr->d;
    printf("{\"protocol\":\"prequential\",\"k\":%d,\"events\":%lld,\"users\":%d,"
           "\"items\":%d,\"bad_lines\":%lld,\"history\":%d,\"exclude_seen\":%s,"
           "\"events_item_unknown\":%lld",
           pr->a->k, (long long)d->n_ev, d->users.n, d->n_rows,
           (long long)d->st.bad_lines, pr->a->history,
           pr->a->exclude_seen ? "true" : "false", (long long)d->unknown);
    if (pr->m)
        print_metric("model", &pr->model, 0);
    if (pr->a->baseline)
        print_metric("popularity", &pr->popm, 0);
    preq_print_windows(pr);
    printf(",\"seconds\":%.2f}\n", seconds);
}

static int run_prequential(const eval_args *a, const hl_model *m, eval_data *d,
                           char *errbuf, size_t errlen)
{
    int64_t t0 = hl_now_mono_ms();
    preq_run pr = {.a = a, .m = m, .d = d, .pg = {.quiet = a->quiet, .last_ms = t0}};
    int rc;

    qsort(d->ev, (size_t)d->n_ev, sizeof *d->ev, cmp_time);
    if ((rc = preq_alloc(&pr, errbuf, errlen)) != 0)
        goto out;
    for (int64_t i = 0; rc == 0 && i < d->n_ev; i += a->batch) {
        int n = d->n_ev - i < a->batch ? (int)(d->n_ev - i) : a->batch;
        rc = preq_batch(&pr, i, n, errbuf, errlen);
        progress_line(&pr.pg, "prequential events", i + n, d->n_ev,
                      m ? &pr.model : NULL, a->baseline ? &pr.popm : NULL);
    }
    if (rc == 0)
        preq_print(&pr, (hl_now_mono_ms() - t0) / 1000.0);
out:
    preq_free(&pr);
    return rc;
}

/* ---- the command ------------------------------------------------------------- */

int hl_cmd_eval(int argc, char **argv)
{
    eval_args a;
    eval_data d;
    hl_model *m = NULL;
    char err[512] = "";
    int rc = parse_args(argc, argv, &a);

    if (rc != 0)
        return rc == 1 ? 0 : 2;
    memset(&d, 0, sizeof d);
    openblas_set_num_threads(a.threads);
    if (a.model && (m = hl_model_open(a.model, err, sizeof err)) == NULL) {
        fprintf(stderr, "halflife eval: %s\n", err);
        return 1;
    }
    if ((rc = load_events(&a, m, &d, err, sizeof err)) == 0) {
        if (d.st.bad_lines > 0 && !a.quiet)
            fprintf(stderr, "eval: %lld bad lines skipped (first at line %lld: %s)\n",
                    (long long)d.st.bad_lines, (long long)d.st.first_bad_line[0],
                    d.st.first_bad_why[0]);
        rc = !strcmp(a.protocol, "loo") ? run_loo(&a, m, &d, err, sizeof err)
                                        : run_prequential(&a, m, &d, err, sizeof err);
    }
    if (rc != 0)
        fprintf(stderr, "halflife eval: %s\n", err);
    strmap_free(&d.users);
    strmap_free(&d.items);
    free(d.ev);
    hl_model_close(m);
    return rc == 0 ? 0 : 1;
}
