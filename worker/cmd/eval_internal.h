/* eval_internal.h - what the files of `halflife eval` share. Private to them;
 * the command's contract is hl_cmd_eval() in cmd.h.
 *
 *   eval.c       the command line, the events read into memory, and
 *                    the state table and metrics both protocols use
 *   eval_loo.c   the leave-one-out protocol
 *   eval_preq.c  the prequential protocol
 *   eval_pop.c   the popularity baseline's ranking
 *   eval_fold.c  prequential: fold-in of items the model does not know
 *   eval_seen.c  prequential: each user's ring after the full stream
 *
 * The small helpers (string keys, metric counting, a target's rank in a
 * list) are inline here; the rest are declared with their contract. */
#ifndef HL_CMD_EVAL_H
#define HL_CMD_EVAL_H

#include "dataset.h"
#include "model.h"
#include "rank.h"
#include "table.h"

#include <math.h>

#define DEFAULT_K        10
#define DEFAULT_HISTORY  32
#define DEFAULT_BATCH    256
#define HL_EVAL_MAX_BATCH 4096    /* --batch at most */
#define DEFAULT_WINDOWS  10
#define PROGRESS_MS      2000

typedef struct eval_args {
    const char *model, *input, *format, *protocol, *baseline;
    int         k, history, batch, windows, exclude_seen, quiet;
    int         seen_history;   /* --seen-history: the full ring's length (0: history) */
    int         seen_window;    /* --seen-window: the own ring's last N events are
                                   seen (hl_rank_opts.seen_window); 0: all */
    int         pop_counts_all;   /* loo: popularity also counts the targets */
    int         threads;          /* OpenBLAS threads */
    int64_t     seq_step_ms;
    /* Prequential, a model swap (DESIGN.md section 10): --swap-model B,
     * --swap-at F: at the time of the F quantile of the events the state
     * migrates into B (core/migrate.c) and B ranks from there; --score-from
     * F: only events from that time are scored; --apply-from F: earlier
     * events are not applied at all (a state rebuilt from a short topic). */
    const char *swap_model;
    const hl_model *swap_m;        /* opened by hl_cmd_eval */
    double      swap_at, score_from, apply_from;   /* 0..1; swap_at < 0: none */
    int         foldin;            /* prequential: fold-in's min.events; 0 off */
    int         foldin_bias;       /* hl_foldin_opts.bias; 0 the default */
    double      foldin_shrink;     /* hl_foldin_opts.shrink; 0 the default */
    double      foldin_lift;       /* hl_foldin_opts.lift; 0 none */
    double      foldin_distinct;   /* hl_foldin_opts.distinct; 0 none */
    int         foldin_lift_all;   /* the baseline from every event's user */
    int         foldin_count;      /* --foldin-bias count (core/foldin_count.h) */
    double      foldin_cap;        /* its margin over the model's mean bias; < 0 none */
    int         foldin_stride;     /* its sample of known items; 1 all */
    double      foldin_conf;       /* e_out x M / (M + C), the bias untouched; 0 none */
    double      foldin_gate;       /* list only at this x the median item's count; 0 none */
    int         foldin_max;        /* at most this many folded items in a list; 0 no cap */
    double      foldin_e_in;       /* weight share with which a folded item's e_in
                                      enters its users' states (the worker's
                                      catalogue.foldin.e_in.scale); 0: none */
    double      swap_local;        /* the migration's local correction (kappa) */
    const char *swap_weights;      /* the fit's item weights: none (NULL), count,
                                      remainder or bias (core/migrate.h) */
    const char *per_user;          /* prequential: the model's scored events and
                                      hits per user, as TSV (a bootstrap over
                                      users needs them); NULL: not written */
    const char *per_target;        /* prequential: one TSV line per scored event
                                      (a paired comparison of two arms needs
                                      them); NULL: not written */
    int         seen_full;         /* --seen-ring full: exclude the items of the
                                      ring after the full stream (eval_seen.c),
                                      not the state's own ring */
} eval_args;

/* ---- the events (eval.c) --------------------------------------------- */

/* String interning: user and item ids to dense ids. */
typedef struct strmap {
    char     *arena;       /* every key, back to back */
    size_t    arena_len, arena_cap;
    size_t   *off;         /* (n) key offsets into arena */
    uint32_t *len;         /* (n) key lengths */
    int32_t   n, cap;      /* keys, and room in off/len */
    int32_t  *slot;        /* (n_slots) open addressing: id or -1 */
    uint32_t  n_slots;     /* power of two, > 2 n */
} strmap;

static inline const char *strmap_key(const strmap *sm, int32_t id, uint32_t *len)
{
    *len = sm->len[id];
    return sm->arena + sm->off[id];
}

typedef struct ev_rec {
    int64_t ts_ms, idx;     /* idx: file order, the tie-break */
    int32_t user, item;     /* dense user id; model row (or file item id), -1 unknown */
    int32_t item_b;         /* its row in --swap-model, -1 unknown or none */
    uint64_t key;           /* hl_item_key of its id */
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

/* Event e of d as the table takes it; borrows the user key from d. */
hl_event hl_eval_event(const eval_data *d, const ev_rec *e, int64_t offset);

/* ---- the state (eval.c) ---------------------------------------------- */

/* A table shaped for the model (or, for popularity alone, a minimal one
 * that only keeps the rings). Nothing is evicted. NULL with errbuf set on
 * failure. */
hl_table *hl_eval_table_create(const hl_model *m, int history, int32_t n_users,
                               char *errbuf, size_t errlen);

/* Applies one event with the model's e_in (m may be NULL). */
int hl_eval_apply(hl_table *tbl, const hl_model *m, const hl_event *ev,
                  char *errbuf, size_t errlen);

/* ---- metrics and progress (eval.c) ----------------------------------- */

typedef struct metric {
    int64_t n, hits;
    double  ndcg;
} metric;

/* rank: 0-based position of the target in the list, or -1. */
static inline void metric_add(metric *mt, int rank)
{
    mt->n++;
    if (rank >= 0) {
        mt->hits++;
        mt->ndcg += 1.0 / log2(rank + 2.0);
    }
}

static inline double metric_hr(const metric *mt)
{
    return mt->n ? (double)mt->hits / mt->n : 0.0;
}

static inline double metric_ndcg(const metric *mt)
{
    return mt->n ? mt->ndcg / mt->n : 0.0;
}

static inline int rank_in_recs(const hl_rec *recs, int n, int32_t target)
{
    for (int j = 0; target >= 0 && j < n; j++)
        if (recs[j].item == target)
            return j;
    return -1;
}

static inline int rank_in_items(const int32_t *items, int n, int32_t target)
{
    for (int j = 0; target >= 0 && j < n; j++)
        if (items[j] == target)
            return j;
    return -1;
}

/* Prints `,"name":{"hr":..,["ndcg":..,]"hits":..,"n":..}` on stdout. */
void hl_eval_print_metric(const char *name, const metric *mt, int with_ndcg);

typedef struct progress {
    int     quiet;
    int64_t last_ms;
} progress;

/* A progress line on stderr at most every PROGRESS_MS, and at the end;
 * model and pop may be NULL. */
void hl_eval_progress(progress *pg, const char *what, int64_t done, int64_t total,
                      const metric *model, const metric *pop);

/* ---- the popularity baseline (eval_pop.c) ---------------------------- */

/* Items ranked by count, equal counts lower row first (the ranker's tie
 * rule); see eval_pop.c for the two ways it keeps them ranked. */
typedef struct popularity {
    int32_t  n;
    int64_t *count;             /* (n) */
    int32_t *stamp;             /* (n) exclusion marks, by query number */
    int32_t  query;
    int32_t *order;             /* (n) loo: items best first, once sorted */
    int32_t  size;              /* prequential: leaves, a power of two >= n */
    int32_t *tree;              /* (2 size) best item in each subtree, or -1 */
    uint8_t *out;               /* (n) popped during the current query */
    int32_t *popped;            /* (max_popped) */
    int      max_popped;
} popularity;

/* max_popped > 0 makes a prequential (tree) ranking, 0 a loo (sorted) one.
 * 0 or HL_ENOMEM; hl_popularity_free releases p either way. */
int  hl_popularity_init(popularity *p, int32_t n, int max_popped);
void hl_popularity_free(popularity *p);
/* Counts one event of item (out of range: ignored). */
void hl_popularity_add(popularity *p, int32_t item);
/* loo: ranks the items once the counts are final. 0 or HL_ENOMEM. */
int  hl_popularity_sort(popularity *p);
/* Starts a query: the next hl_popularity_exclude marks belong to it. */
void hl_popularity_begin(popularity *p);
void hl_popularity_exclude(popularity *p, int32_t item);
/* The k most popular items not excluded in this query; returns the count. */
int  hl_popularity_top(popularity *p, int k, int32_t *top);

/* ---- the protocols ------------------------------------------------------- */

/* Each sorts d->ev its own way, prints one JSON object on stdout and
 * returns 0, or a negative HL_E* with errbuf set. */
int hl_eval_run_loo(const eval_args *a, const hl_model *m, eval_data *d,
                    char *errbuf, size_t errlen);            /* eval_loo.c  */
int hl_eval_run_prequential(const eval_args *a, const hl_model *m, eval_data *d,
                            char *errbuf, size_t errlen);    /* eval_preq.c */

/* ---- the full-stream rings (eval_seen.c) ----------------------------- */

/* Per user, the numbers (into the time-sorted d->ev) of its last `history`
 * events of the stream, whatever the state skipped (--apply-from). int32
 * numbers: an in-memory event file never holds 2^31 events (init refuses). */
typedef struct eval_rings {
    int32_t *ev;            /* (users, history) */
    uint8_t *n, *head;      /* (users) entries in use; index of the oldest */
    int      history;
} eval_rings;

/* 0, HL_ENOMEM, or HL_EINVAL when n_ev is above INT32_MAX; hl_eval_rings_free
 * releases r either way. */
int  hl_eval_rings_init(eval_rings *r, int32_t n_users, int history, int64_t n_ev);
void hl_eval_rings_free(eval_rings *r);
/* Event i (of user) joins its ring, the oldest leaving when it is full. */
void hl_eval_rings_push(eval_rings *r, int32_t user, int64_t i);
/* The user's ring, oldest first, into out (history entries); the count. */
int  hl_eval_rings_get(const eval_rings *r, int32_t user, int32_t *out);

/* ---- fold-in (eval_fold.c) ------------------------------------------ */

typedef struct eval_fold eval_fold;
/* *out is set even on failure (then hl_eval_fold_destroy it). */
int     hl_eval_fold_create(eval_fold **out, const hl_model *m, const eval_args *a,
                            int32_t max_items, char *errbuf, size_t errlen);
void    hl_eval_fold_destroy(eval_fold *ef);                /* NULL is a no-op */
/* The ranker row of the unknown item with key, or -1 (no vectors yet). */
int32_t hl_eval_fold_row(const eval_fold *ef, uint64_t key);
const float *hl_eval_fold_e_in(const eval_fold *ef, uint64_t key);   /* NULL: none */
/* After a batch ev[0..n) was scored with views (each user's state just
 * before its event): folds its unknown-item events in, and gives rk the
 * side rows when they changed. use_b: the fold's model is --swap-model's,
 * whose rows the events name in item_b. */
void    hl_eval_fold_batch(eval_fold *ef, const ev_rec *ev, const hl_row_view *views,
                           int n, hl_ranker *rk, int use_b);
/* Prints `,"foldin":{...}` on stdout. */
void    hl_eval_fold_print(const eval_fold *ef);

#endif
