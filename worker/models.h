/* models.h - the model a worker serves and its live replacement (DESIGN.md
 * section 10): model.path is checked every model.check.ms and on SIGHUP; a
 * file with another fingerprint is opened and fully validated beside the
 * serving one (hl_model_open: CRC, shapes, finite values), its migration
 * map from the serving model is fitted, and only then does it become the
 * current model. A file that fails is refused (logged with the reason,
 * halflife_model_swap_failures_total) and the serving model stays; it is
 * looked at again when the file changes or on the next SIGHUP.
 *
 * Every loaded model is an hl_mref with a reference count: the set holds
 * the current one, each shard-owning thread the one it serves with, each
 * shard the one its rows are in (and, while it migrates, the one they come
 * from). The last release closes the model, so a swapped-out mapping goes
 * once nobody uses it. Threads notice a swap by the generation number at
 * the top of a batch (thread.c). */
#ifndef HL_MODELS_H
#define HL_MODELS_H

#include "metrics.h"
#include "migrate.h"
#include "model.h"
#include "qscore.h"
#include "ivf.h"

#include <stdatomic.h>

typedef struct hl_mref {
    hl_model            *m;
    const hl_model_info *mi;
    uint64_t             gen;          /* 1 for the first model, +1 per swap */
    float                tw[HL_N_TYPES]; /* type weights served with it: weight.*
                                          overrides, else the model's */
    hl_migration        *from_prev;    /* the map from the model of generation
                                          gen - 1 (NULL for the first) */
    const hl_qitems     *qitems;       /* two-stage scoring: m's int8 copy, built
                                          before m goes live; NULL: exact */
    const hl_ivf        *ivf;          /* recs.index=ivf: m's index, built before m
                                          goes live; NULL: no index */
    atomic_int           refs;
    int                  owned;        /* the last release closes m */
    int                  qitems_owned; /* the last release destroys qitems */
    int                  ivf_owned;    /* the last release destroys ivf */
} hl_mref;

typedef struct hl_models hl_models;    /* opaque */

typedef struct hl_models_opts {
    const char  *path;                 /* model.path; NULL: no reloads (demo) */
    int64_t      check_ms;             /* model.check.ms; 0: only on SIGHUP */
    const float *tw_override;          /* HL_N_TYPES, NAN keeps the model's; NULL: none */
    hl_metrics  *reg;                  /* never NULL */
    const char  *store_dir;            /* model.dir: every model served is kept
                                          there as <fingerprint>.hlm, so a snapshot
                                          written under it can be migrated after
                                          a restart; NULL: none kept */
    int          store_retain;         /* model.retain: newest files kept there */
    const hl_qitems *first_qitems;     /* two-stage: the first model's table
                                          (borrowed); NULL: exact scoring, and
                                          swapped-in models get none either */
    const hl_ivf    *first_ivf;        /* recs.index=ivf: the first model's index
                                          (borrowed); NULL: none, and swapped-in
                                          models get none either */
    int              ivf_nlist;        /* recs.index.nlist for swapped-in models'
                                          indexes (0: the default for their size) */
    /* Called on the main thread once a new model r is validated and ready,
     * just before it goes live (the live catalogue rebinds to it here).
     * Not 0: the swap is refused (counted) and the serving model stays.
     * NULL: none. */
    int        (*before_live)(void *arg, const hl_mref *r, char *errbuf, size_t errlen);
    void        *before_live_arg;
    /* A model of another state shape (dim, heads, half-lives) goes live
     * too: each shard moves its users into a table of the new shape
     * (worker/swap.c). When the worker's setup cannot follow such a
     * swap, this says why and such a model is refused (counted) with
     * that reason; NULL: accepted. */
    const char  *reshape_refused;
} hl_models_opts;

/* 1 when two models' rows have the same shape (dim, heads, half-lives):
 * a swap between them migrates rows in place. */
int        hl_models_same_shape(const hl_model_info *a, const hl_model_info *b);
/* 1 when tbl's rows are mi's shape (its decay's dim, heads, half-lives). */
int        hl_models_table_fits(const hl_table *tbl, const hl_model_info *mi);

/* first is borrowed: the caller closes it after hl_models_destroy. Strings
 * in o are borrowed too. NULL and a reason on no memory. */
hl_models *hl_models_create(const hl_models_opts *o, hl_model *first,
                            char *errbuf, size_t errlen);
/* Drops the set's reference; models still held elsewhere stay open until
 * their last release. NULL is a no-op. */
void       hl_models_destroy(hl_models *ms);

/* The current model, one reference for the caller. Any thread. */
hl_mref   *hl_models_acquire(hl_models *ms);
/* Generation of the current model (atomic: the batch loop's check). */
uint64_t   hl_models_gen(hl_models *ms);

/* One more reference to a model the caller already holds. */
hl_mref   *hl_mref_get(hl_mref *r);
/* Drops a reference; the last one frees r. NULL is a no-op. Any thread. */
void       hl_mref_release(hl_mref *r);

/* A model served before, from the store by fingerprint (validated, and its
 * fingerprint checked). NULL and a reason when it is not kept there. The
 * caller closes it. */
hl_model  *hl_models_open_kept(hl_models *ms, uint64_t fingerprint,
                               char *errbuf, size_t errlen);

/* Main thread: looks at model.path when the check is due (now_ms is
 * monotonic) or force is set (SIGHUP). 1 when a new model became current,
 * 0 when nothing changed, a negative HL_E* when a changed file was refused
 * (logged and counted here). */
int        hl_models_check(hl_models *ms, int64_t now_ms, int force);

#endif
