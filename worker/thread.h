/* thread.h - a shard-owning worker thread: it reads only its own
 * partitions (their queues are forwarded to its queue) and runs the batch
 * loop of DESIGN.md section 1 on them: decode, apply, refresh each dirty
 * user once, produce the lists, store the offsets once they are delivered.
 *
 * Shards enter and leave a thread through its mailbox, which it reads
 * between batches: hl_wthread_give() hands one over; hl_wthread_post_take()
 * asks for one back and hl_wthread_wait_taken() waits for the answer, which
 * the thread gives after finishing its batch, waiting for that batch's
 * lists to be delivered and its offsets stored, and snapshotting the shard.
 * The thread stops when *ctx->stop becomes non-zero. */
#ifndef HL_THREAD_H
#define HL_THREAD_H

#include "codec.h"
#include "deadletter.h"
#include "metrics.h"
#include "model.h"
#include "items.h"
#include "models.h"
#include "rank.h"
#include "multipart.h"
#include "producer.h"
#include "shard.h"
#include "worker.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>

#define HL_UNSAVED_MAX 64    /* partitions named by a stop that could not save */

/* What every thread shares: read-only after start, apart from atomics and
 * metric series (which are atomics inside). */
typedef struct hl_wshared {
    const hl_worker_opts *o;
    hl_models            *models;         /* the served model; threads switch at a batch's top */
    hl_counter           *rank_fallbacks;  /* two-stage users scored over every item */
    hl_counter           *shadow_hits, *shadow_items; /* the index's shadow check */
    rd_kafka_t           *consumer;
    hl_producer          *prod;
    const char           *dlq_topic;      /* NULL: no DLQ */
    hl_dlcount            dl_count;       /* snapshot.dir/dead-letters' bytes against
                                             deadletter.max.bytes (flight.c) */
    atomic_int           *stop;           /* 0 run, 1 drain and stop, 2 stop now */
    atomic_llong          stop_deadline_ms; /* monotonic: a drain for stop gives up then */
    /* This member's id at the last assignment callback, as hl_member_mark
     * makes it (0: unknown); the main thread writes it, any thread reads
     * it (hl_member_gone). */
    atomic_ullong         member_mark;
    /* The revocation being served came after this member's id changed
     * since the partitions were last assigned: the group may have given
     * them to another member already; released as lost partitions are
     * (thread.c, release). Set by the main thread before it posts the
     * takes, read by the threads under their mailbox's lock or after. */
    atomic_int            revoke_gone;
    hl_table_opts         topts;
    hl_persist           *persist;        /* NULL: no snapshots */
    hl_multipart         *multipart;      /* users seen in two partitions; never NULL */
    hl_items             *items;          /* the live catalogue; NULL: no item topic */
    struct hl_wfoldin    *foldin;         /* fold-in of new items; NULL: off */
    hl_metrics           *reg;            /* never NULL */
    /* Shards a graceful stop could not save (final snapshot failed, or
     * skipped because lists were undelivered): threads add them as they
     * stop, hl_worker_run reads them once every thread has joined and
     * fails the run naming them. The partitions of the first
     * HL_UNSAVED_MAX are kept. */
    atomic_int            n_unsaved;
    atomic_int            unsaved[HL_UNSAVED_MAX];
    /* The worker's counters: one series per fact, in reg (hl_worker_stats
     * reads them back from there). */
    struct {
        hl_counter   *invalid[HL_CODEC_N_REASONS];
        hl_counter   *dlq[HL_CODEC_N_REASONS];
        hl_counter   *dlq_errors, *unknown, *batches, *lists;
        hl_counter   *applied, *duplicates, *failed, *non_finite;
        hl_counter   *evictions[2];       /* mass, capacity */
        hl_counter   *dl_kept, *dl_not_kept;
        hl_counter   *retries, *given_up; /* lists refreshed again after a refusal;
                                             lists given up on (flight.c) */
        hl_counter   *multipart;          /* users seen in two partitions */
        hl_counter   *migrated, *rebuilt; /* users moved into a new model / rebuilt from the ring */
        hl_counter   *fits_on_thread;     /* migrations a shard thread had to fit */
        hl_counter   *skipped;            /* input offsets never received */
        hl_counter   *redelivered;        /* input records received twice, dropped */
        hl_gauge     *schema_waiting;     /* partitions paused for a writer schema */
        hl_histogram *batch_size, *stage[4], *e2p;
        hl_histogram *live[6];            /* halflife_event_stage_seconds, LIVE_* */
        hl_histogram *worker_share;       /* fetched -> delivered */
    } mx;
} hl_wshared;

typedef struct hl_wthread hl_wthread;   /* opaque */

/* A member id (rd_kafka_memberid's) as a number: 0 for NULL (unknown), 1
 * for "" (reset after the session ran out, not joined again), else a
 * 64-bit hash of it above 1. */
uint64_t    hl_member_mark(const char *member_id);
/* 1 when this member's id now is not ctx->member_mark's, the one its
 * partitions were last assigned under, or is reset: the coordinator forgot
 * this member meanwhile and may have given them to another. Unknown (0
 * or NULL) either side is no change. Any thread; a round trip to
 * librdkafka's thread. */
int         hl_member_gone(hl_wshared *ctx);

hl_wthread *hl_wthread_create(int id, hl_wshared *ctx, char *errbuf, size_t errlen);
/* Joins the thread if it runs (set *ctx->stop first), frees. */
void        hl_wthread_destroy(hl_wthread *t);
int         hl_wthread_start(hl_wthread *t, char *errbuf, size_t errlen);
/* Waits for the thread to exit after ctx->stop was set. */
void        hl_wthread_join(hl_wthread *t);

rd_kafka_queue_t *hl_wthread_queue(hl_wthread *t);
/* Records the thread's queue held behind its last batch: its backlog in
 * memory while it lags, 0 once it has caught up. Any thread. */
int         hl_wthread_queued(hl_wthread *t);
int         hl_wthread_n_shards(hl_wthread *t);

/* Hands sh to the thread (ownership moves on success). Main thread, any
 * time. HL_ENOMEM when the mailbox cannot grow: sh stays the caller's. */
int         hl_wthread_give(hl_wthread *t, hl_shard *sh);
/* Asks the thread to let go of partition; returns at once. HL_ENOMEM when
 * the mailbox cannot grow (nothing was posted). */
int         hl_wthread_post_take(hl_wthread *t, int32_t partition);
/* Waits until every posted take is answered (or the thread has exited,
 * in which case the caller's thread does the hand-back itself) and returns
 * the shards released, ownership to the caller: up to max into out.
 * waiting (may be NULL) is called with arg every 100 ms of the wait, under
 * the thread's lock: it may only ask for a stop (hl_worker_stop). */
int         hl_wthread_wait_taken(hl_wthread *t, hl_shard **out, int max,
                                  void (*waiting)(void *), void *arg);

#endif
