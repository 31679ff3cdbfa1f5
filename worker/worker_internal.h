/* worker_internal.h - the worker's state, shared by the four files that
 * make up the worker: worker.c (create, run, stop, stats, metrics),
 * worker_start.c (the embedded broker and each part started in turn),
 * worker_rebalance.c (partitions handed to threads and taken back) and
 * worker_restore.c (their state restored). Not part of any interface:
 * worker.h is. */
#ifndef HL_WORKER_INTERNAL_H
#define HL_WORKER_INTERNAL_H

#include "worker.h"
#include "config.h"
#include "consumer.h"
#include "log.h"
#include "persist.h"
#include "schema_store.h"
#include "changelog.h"
#include "thread.h"
#include "fold.h"
#include "recreated.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Registered by worker.c and fetched by worker_start.c: one text. */
#define HL_DELIVERY_ERRORS_HELP "Records the producer failed to deliver: the broker or " \
    "librdkafka refused them (purged ones are in halflife_delivery_purged_total, " \
    "dead-letter copies in halflife_dlq_errors_total)."
#define HL_DELIVERY_PURGED_HELP "Records the worker took back from its producer undelivered: " \
    "a revocation that let go of undelivered lists purges every record the producer holds, " \
    "a stop what it could not deliver in time. Not refused by the broker; the lists of " \
    "partitions still owned are refreshed and sent again."

#define WIN_BUCKETS 64      /* >= hl_live_bounds_n + 1 */
#define N_WIN (2 + 6)      /* e2p, fetch to delivery, the six live stages */
#define MULTIPART_BITS 20   /* 2^20 slots, 8 MB: see multipart.h for the odds */

struct hl_worker {
    hl_worker_opts    o;
    char              dlq[320];
    char              bootstrap[HL_BOOTSTRAP_MAX + 1];
    char              model_dir[4096]; /* <snapshot.dir>/models when model.dir is unset */
    const hl_model   *m;              /* the model given at start (its shape is every model's) */
    hl_models        *models;         /* the one served now, and its reloads */
    hl_metrics       *reg;
    rd_kafka_t       *mock_rk;        /* hosts the embedded broker */
    rd_kafka_mock_cluster_t *mock;
    hl_consumer      *cons;
    hl_producer      *prod;
    hl_items         *items;          /* NULL: items.topic empty */
    hl_wfoldin       *foldin;         /* NULL: catalogue.foldin off or no items.topic */
    hl_wshared        ctx;
    hl_wthread      **th;
    int               n_th;
    hl_qitems        *qitems;         /* two-stage scoring: the first model's table;
                                         models borrow it (the first mref's) */
    hl_ivf           *ivf;            /* recs.index=ivf: the first model's index;
                                         models borrow it (the first mref's) */
    int              *th_load;        /* shards per thread, main thread's view */
    hl_wthread      **owner;          /* by partition; main thread only */
    int               cap_owner;
    atomic_int        stop;
    volatile sig_atomic_t *sig;       /* hl_worker_run's: read while a revocation waits */
    atomic_int        assigned;
    atomic_int        have_assignment;
    atomic_int        failed;         /* a partition could not be served, or the
                                         producer failed fatally: run fails */
    int               prod_fatal;     /* producer_fatal seen (main thread only) */
    hl_counter       *prod_fatal_c;   /* halflife_producer_fatal_total */
    /* What /readyz reports (hl_worker_ready, read by the HTTP thread):
     * the partitions of the assignment in hand (0: none in hand) and how
     * many of them are set up; awaiting: a revocation took every partition
     * and the next assignment has not come yet. */
    atomic_int        restoring;
    atomic_int        restored;
    atomic_int        awaiting;
    hl_gauge         *assigned_g;
    hl_gauge         *queued_g;       /* halflife_consumer_queued_records */
    int64_t           queued_next_ms; /* its next reading (main thread only) */
    hl_persist       *persist;        /* NULL without snapshot.dir */
    hl_schema_store  *schemas;        /* NULL without schema.registry.url */
    hl_changelog     *changelog;      /* state.store=kafka; else NULL */
    char              state_topic[256];
    hl_counter       *rebalances;
    hl_counter       *recreated;      /* halflife_input_topic_recreated_total */
    hl_recreated_check wm;            /* the recreated-topic checks (rebalance thread) */
    pthread_mutex_t   lat_mu;         /* also guards closed */
    pthread_cond_t    closed_cv;
    int               closed;         /* the consumer has left the group */
    int               abandoned;      /* close timed out: handles leaked on purpose */
    uint64_t          win_prev[N_WIN][WIN_BUCKETS]; /* live counts at the last stats read */
    hl_metrics       *own_reg;        /* the registry when the caller gave none */
};

/* worker_start.c */
int  hl_worker_check_opts(const hl_worker_opts *o, char *errbuf, size_t errlen);
/* Every part after the metrics, in order (the registry before Kafka: the
 * item reader reads through its schema store; the models after scoring:
 * the first model's int8 table is theirs). */
int  hl_worker_start_parts(hl_worker *w, char *errbuf, size_t errlen);
void hl_worker_embedded_stop(hl_worker *w);

/* worker.c: once the producer has failed fatally, logs it, counts it and
 * stops the worker as a failed partition does (graceful, then exit 1).
 * Main thread; also called while a rebalance callback waits. */
void hl_worker_watch_producer(hl_worker *w);

/* worker_rebalance.c: the consumer's rebalance callback and its owns
 * hook (hl_consumer_opts), main thread. */
void hl_worker_on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                            rd_kafka_topic_partition_list_t *parts, void *opaque);
int  hl_worker_owns_partition(void *opaque, int32_t p);

/* worker_restore.c, for worker_rebalance.c: partition p's table, restored
 * (a snapshot, the changelog, or both), with the offset to start from;
 * NULL when that failed (logged). hl_worker_state_fits: 1 when tbl is
 * in mi's state shape, else 0 (logged). hl_worker_restore_hide: p's
 * restore-source series leave /metrics (its revocation). */
hl_table *hl_worker_restore(hl_worker *w, int32_t p, int64_t *restored, int64_t *offset,
                            int64_t *on_disk, hl_changelog_restored *cr, int *moved);
int  hl_worker_state_fits(const hl_table *tbl, const hl_model_info *mi, int32_t p);
void hl_worker_restore_hide(hl_worker *w, int32_t p);
/* hl_changelog_opts.reshape: how a restore reads changelog rows of a
 * model of another shape (worker_restore.c). */
int  hl_worker_changelog_reshape(void *arg, uint64_t fp, hl_changelog_reshape *out);

#endif
