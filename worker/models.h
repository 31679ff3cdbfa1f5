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
 * the top of a batch (thread.c).
 *
 * A thread whose shards still move keeps its model until they are done,
 * so it can skip models (A -> B under way, C and D arrive: it goes B -> D).
 * The map for such a jump is fitted here, on the main thread, when the
 * new model goes live: from every older model some thread or shard still
 * serves (the set holds each replaced model while anyone else does, and
 * knows it from the reference count), kept in the new model's skip[] and
 * dropped once that older model is no longer in use. A shard thread then
 * never fits one (a fit is 0.7 s and more at 100k items: a stall of the
 * batch loop); one it still has to fit is logged and counted. */
#ifndef HL_MODELS_H
#define HL_MODELS_H

#include "metrics.h"
#include "migrate.h"
#include "model.h"
#include "qscore.h"
#include "ivf.h"

#include <signal.h>
#include <stdatomic.h>

#define HL_MREF_SKIPS 4                /* older models a new one keeps a map from */

struct hl_mref;

/* A map into a model from an older one than the model it replaced. */
typedef struct hl_mref_skip {
    const struct hl_mref    *from;     /* not a reference: the set holds it while
                                          the map lives; never changes */
    uint64_t                 gen;      /* from's (an address alone may be reused) */
    _Atomic(hl_migration *)  mig;      /* from's rows into this model's; NULL once
                                          from is out of use (dropped) */
} hl_mref_skip;

typedef struct hl_mref {
    hl_model            *m;
    const hl_model_info *mi;
    uint64_t             gen;          /* 1 for the first model, +1 per swap */
    float                tw[HL_N_TYPES]; /* type weights served with it: weight.*
                                          overrides, else the model's */
    hl_migration        *from_prev;    /* the map from the model of generation
                                          gen - 1 (NULL for the first) */
    const struct hl_mref *prev;        /* that model (not a reference: compared
                                          only, with gen - 1, by hl_mref_migration) */
    hl_mref_skip         skip[HL_MREF_SKIPS]; /* maps from older models still
                                          served when this one went live */
    int                  n_skip;       /* set before it goes live, then fixed */
    atomic_int           moving_out;   /* shards whose users move out of it (their
                                          mig_from): a reference that serves not */
    struct hl_mref      *held_next;    /* the set's list of replaced models
                                          (main thread) */
    const hl_qitems     *qitems;       /* two-stage scoring: m's int8 copy, built
                                          before m goes live; NULL: exact */
    const hl_ivf        *ivf;          /* recs.index=ivf: m's index, built before m
                                          goes live; NULL: no index */
    atomic_int           refs;
    int                  owned;        /* the last release closes m */
    int                  qitems_owned; /* the last release destroys qitems */
    int                  ivf_owned;    /* the last release destroys ivf */
    double               ivf_recall;   /* swapped in: ivf's recall at load, for
                                          the gauge once m is live */
    atomic_ullong        shadow_hits;  /* the shadow check's counts while m was */
    atomic_ullong        shadow_items; /* served: its recall gauge (publish.c) */
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
    int          store_retain;         /* model.retain: newest files kept there,
                                          and any a worker sharing the directory
                                          served in the last 10 minutes (its
                                          lease: models.c) */
    int64_t      temp_stale_s;         /* a crashed worker's keep() temporary there
                                          is removed once unchanged this long;
                                          0: 3600, < 0: at once (tests) */
    uint64_t     host_tag;             /* names keep()'s temporaries and proves
                                          them abandoned (tempname.h); 0: this
                                          process's (tests set two to stand for
                                          two hosts) */
    const hl_qitems *first_qitems;     /* two-stage: the first model's table,
                                          taken over by a set created (as
                                          first_ivf); NULL: exact scoring, and
                                          swapped-in models get none either */
    const hl_ivf    *first_ivf;        /* recs.index=ivf: the first model's index,
                                          taken over by a set created (the first
                                          model's last release destroys it; only
                                          tested for NULL after); NULL: none, and
                                          swapped-in models get none either */
    int              ivf_nlist;        /* recs.index.nlist for swapped-in models'
                                          indexes (0: the default for their size) */
    int              ivf_nprobe;       /* recs.index.nprobe (0: each index's
                                          nlist / 16) and recs.k: their recall at */
    int              ivf_k;            /* load, logged and exported like the first's */
    /* Set by SIGTERM: a swap under way gives up its index build and recall
     * check (seconds at 1M items, with the main loop waiting), so the stop
     * starts at once. NULL: a swap always finishes. */
    const volatile sig_atomic_t *stop;
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

#define HL_INDEX_SAMPLE 200  /* queries of the index's recall check at load */

/* Recall@k of ix (m's index) with nprobe, on HL_INDEX_SAMPLE queries: the
 * e_out rows of items spread over the catalogue (users' real queries are
 * not known at load; the shadow check measures those). Costs that many
 * exact scans (seconds at 1M items); -1 when out of memory, or when stop
 * (NULL: none) is set before it is done. */
double hl_models_index_recall(const hl_model *m, const hl_ivf *ix, int k, int nprobe,
                              const volatile sig_atomic_t *stop);

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

/* The map fitted when `to` went live from the rows of `from` (to's
 * from_prev when `from` is the model it replaced, else a skip); NULL when
 * none was (a model nobody served then, or a fit that failed there): the
 * caller fits its own. Any thread; the caller holds both. */
hl_migration *hl_mref_migration(const hl_mref *to, const hl_mref *from);
/* A shard's users start moving out of r (+1), or are done (-1; before the
 * shard releases r): such a reference alone needs no map from r. */
void       hl_mref_moving_out(hl_mref *r, int delta);

/* A model served before, from the store by fingerprint (validated, and its
 * fingerprint checked). NULL and a reason when it is not kept there. The
 * caller closes it. */
hl_model  *hl_models_open_kept(hl_models *ms, uint64_t fingerprint,
                               char *errbuf, size_t errlen);

/* Shows how well a migration from a model of old_items items carried
 * users' older history (halflife_model_migration_*): a live swap's map,
 * or a restore's from a kept model; mg NULL: a rebuild from the rings
 * alone (residual 1, nothing shared). Any thread: the gauges are atomic. */
void       hl_models_note_migration(hl_models *ms, const hl_migration *mg, int old_items);

/* Main thread: looks at model.path when the check is due (now_ms is
 * monotonic) or force is set (SIGHUP). 1 when a new model became current,
 * 0 when nothing changed, a negative HL_E* when a changed file was refused
 * (logged and counted here). */
int        hl_models_check(hl_models *ms, int64_t now_ms, int force);

#endif
