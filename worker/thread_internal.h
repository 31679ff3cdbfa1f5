/* thread_internal.h - what the files of one shard-owning thread share.
 * Private to them; the contract is thread.h.
 *
 *   thread.c   the thread, its mailbox (shards given and taken back) and
 *              the loop that calls the others between mail checks
 *   batch.c    one batch: consume, decode (bad records to the DLQ), apply,
 *              then hand the dirty users to publish.c; the batch's counters
 *   publish.c  refresh: score each dirty user once, encode the list,
 *              produce it; recs.min.interval.ms through the shard's gate
 *   flight.c   the batches whose lists are in flight: their offsets are
 *              stored only once those lists are delivered, in order; a
 *              flight whose lists were refused has publish.c refresh
 *              those users again (hl_publish_again) before it retires
 *   park.c     records waiting for their writer schema (Schema Registry),
 *              their partitions paused meanwhile
 *
 * The calls run one way: thread.c -> batch.c -> publish.c -> flight.c (and
 * thread.c to each). The struct is one block so each file reads the fields
 * it needs without accessor noise; each field says which file owns it. Everything below
 * "owned by the thread" is touched only by the thread itself (or by the
 * destroying thread after it has exited). */
#ifndef HL_THREAD_INTERNAL_H
#define HL_THREAD_INTERNAL_H

#include "thread.h"
#include "cadence.h"
#include "log.h"
#include "rank.h"
#include "fold.h"

#include <pthread.h>

#define REFRESH_MAX 256     /* users per hl_ranker_refresh: SGEMM runs well from 64 */
#define N_FLIGHTS   8       /* batches whose lists may be in flight at once */

enum { STAGE_DECODE, STAGE_APPLY, STAGE_REFRESH, STAGE_PRODUCE, N_STAGES };

/* The live path of one event, as halflife_event_stage_seconds{stage} sees
 * it: its Kafka timestamp -> fetched (taken from the thread's queue) ->
 * batch start -> applied -> refreshed -> produced -> delivered. */
enum { LIVE_BROKER, LIVE_WAIT, LIVE_APPLY, LIVE_REFRESH, LIVE_PRODUCE, LIVE_DELIVER,
       N_LIVE };

/* A bad record's copy to the DLQ (batch.c sends it, flight.c settles it).
 * The input record is held until the copy is delivered or, when it is not,
 * written to the local dead-letter file: until then its flight does not
 * retire, so no stored offset passes it. */
typedef struct dead_letter {
    hl_ticket            t;          /* this one record's delivery: the producer
                                        holds its address, so it never moves */
    struct dead_letter  *next;
    rd_kafka_message_t  *rkm;        /* the input record, held */
    hl_codec_reason      reason;
    int                  send_failed;/* produce() refused it at once (err says why) */
    char                 err[160];
} dead_letter;

/* One batch's lists on their way (flight.c). */
typedef struct flight {
    hl_ticket t;
    rd_kafka_topic_partition_list_t *offs;   /* next offset per partition */
    int64_t  *ts_ms;                         /* Kafka timestamps of the events */
    int64_t  *fetch_us;                      /* when each was fetched (monotonic) */
    int       n_ts;
    int64_t   start_us, applied_us, refreshed_us, produced_us;   /* the batch's */
    int64_t   wall_off_ms;                   /* wall - monotonic clock, ms */
    dead_letter *dl;                         /* its bad records' DLQ copies, newest first */
    int       hold;                          /* a copy could not be tracked: never retire */
    hl_ticket_keys keys;                     /* users whose list was refused (t.keys) */
    int       attempts;                      /* times they were refreshed again */
    int       backoff_ms;                    /* before the next time; 0: none yet */
    int64_t   retry_at_ms;                   /* monotonic: the next time, not before */
    int       dl_backoff_ms;                 /* a dead letter not kept: before the */
    int64_t   dl_retry_at_ms;                /* next write (monotonic), not every poll */
} flight;

/* A partition paused until schema_id has an answer (park.c). */
typedef struct park_wait {
    int32_t partition, schema_id;
    int64_t since_ms;
    int     ready;                           /* answered, at the last look */
    int64_t resume_at;   /* after the last record handed back: where its fetch resumes */
} park_wait;

/* What one batch counted, added to the registry once at its end (batch.c). */
typedef struct batch_counts {
    uint64_t unknown, lists, applied, duplicates, failed, multipart;
    uint64_t invalid[HL_CODEC_N_REASONS];
    double   stage_s[N_STAGES];
} batch_counts;

struct hl_wthread {
    int          id;
    hl_wshared  *ctx;
    pthread_t    tid;
    int          started;
    rd_kafka_queue_t *q;
    atomic_int   queued;        /* records left in q when the last batch was taken
                                   (batch.c; read by the main thread for /metrics) */

    /* mailbox, under mu (thread.c); every array grows on demand */
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    hl_shard   **give;    int n_give, cap_give;
    int32_t     *take;    int n_take, cap_take;
    hl_shard   **taken;   int n_taken, cap_taken;   /* room for n_taken + n_take */
    int          exited;
    atomic_int   mail;
    atomic_int   n_shards;

    /* ---- owned by the thread ---- */
    hl_mref     *mref;                              /* thread.c: the model served */
    int          migrating;                         /* thread.c: a shard migrates */
    int          swap_cap;                          /* thread.c: records per batch
                                                       meanwhile (swap.c sizes it) */
    int32_t     *take_copy; int cap_take_copy;      /* thread.c */
    void        *rel_member; size_t rel_member_len; /* thread.c: the group membership
                                                       a release began under (NULL
                                                       outside one), serialized */
    int64_t      rel_checked_ms;                    /* when it was last compared */
    int          rel_moved;                         /* it changed meanwhile */
    int64_t      rel_seen_ms, rel_seen_cpu_ms;      /* thread.c: the release's last
                                                       look, or the end of its last
                                                       work, and the thread's CPU
                                                       time then (a stall is a gap
                                                       between them) */
    int64_t      stall_ms, verdict_ms;              /* thread.c: session.timeout.ms,
                                                       heartbeat.interval.ms */
    hl_shard   **own;     int n_own, cap_own;       /* thread.c */
    hl_shard   **by_part; int cap_part;             /* thread.c: by partition */

    hl_codec    *codec;                             /* batch.c */
    rd_kafka_message_t **msgs;
    int64_t     *fetch_us;                          /* per record: when taken */
    hl_cadence_fit  cad_fit;                        /* batch work ms = a + b records */
    hl_cadence_rate cad_rate;                       /* records per ms arriving */
    int64_t      cad_last_us;                       /* the previous batch's start */
    char        *arena;   size_t arena_used, arena_cap;  /* user ids of the batch */
    hl_log_limit bad_limit, err_limit, multi_limit;
    batch_counts b;

    hl_ranker   *ranker;                            /* publish.c; NULL: state only */
    uint64_t     shadow_hits, shadow_items;         /* the ranker's shadow counts, last
                                                       added to ctx's counters */
    uint64_t     rank_fallbacks;                    /* the ranker's count, last added to
                                                       ctx->rank_fallbacks */
    hl_row_view *views;
    hl_rec      *recs;
    int         *n_out;
    hl_codec_rec *crec;
    uint8_t     *enc;     size_t enc_cap;
    hl_items_local cat;                             /* the catalogue view in use */
    hl_foldin_local fold;                           /* batch.c: unknown-item events
                                                       (ctx->foldin set) */
    int32_t     *seen_added;                        /* publish.c: (REFRESH_MAX, history)
                                                       rows of added items seen */
    hl_rank_exclude *excl;                          /* (REFRESH_MAX) over seen_added */

    rd_kafka_message_t **park; int n_park, cap_park;/* park.c: each partition's in offset order */
    park_wait   *waits;   int n_waits, cap_waits;

    flight       fl[N_FLIGHTS];                     /* flight.c: a ring */
    int          fl_head, fl_n;
    char        *dl_dir;                            /* local dead letters */
    hl_log_limit dl_limit;                          /* dead letters not kept */
    hl_log_limit dl_kept_limit, dlq_failed_limit;   /* one per bad record otherwise */
    hl_log_limit refused_limit;                     /* flight.c: lists refused */
    hl_log_limit given_up_limit;                    /* flight.c: lists given up on */
};

/* thread.c: 1 once the group membership differs from the one the running
 * release began under (0 outside a release); the waits of a release end
 * on it (flight.c). */
int  hl_wthread_moved(hl_wthread *t);

/* The shard of partition, NULL when not this thread's (any of the files). */
static inline hl_shard *hl_wthread_shard_of(hl_wthread *t, int32_t p)
{
    return p >= 0 && p < t->cap_part ? t->by_part[p] : NULL;
}

/* batch.c */
int  hl_batch_alloc(hl_wthread *t, char *errbuf, size_t errlen);
void hl_batch_free(hl_wthread *t);
int  hl_batch_consume(hl_wthread *t);               /* records taken into t->msgs */
void hl_batch_run(hl_wthread *t, int n);

/* publish.c */
int  hl_publish_alloc(hl_wthread *t, char *errbuf, size_t errlen);
void hl_publish_free(hl_wthread *t);
/* A ranker for m in place of the current one (thread.c on a swap); the
 * old one stays on failure. */
int  hl_publish_model(hl_wthread *t, const hl_mref *r, char *errbuf, size_t errlen);
void hl_publish_shard(hl_wthread *t, hl_shard *sh, flight *f);
/* Refreshes again, into f, the users of keys this thread owns (a user
 * revoked or evicted meanwhile needs none: its next owner replays from the
 * committed offset, its next event makes a list). Returns how many lists
 * were produced. */
int  hl_publish_again(hl_wthread *t, flight *f, const hl_failed_key *keys);
/* Revocation and shutdown: refreshes every user recs.min.interval.ms holds
 * back in shs[0..n_sh) (NULL entries skipped) into one flight, waiting for
 * a free one until until_ms at most (monotonic; 0: until a stop is due). */
void hl_publish_pending(hl_wthread *t, hl_shard **shs, int n_sh, int64_t until_ms);
/* Between batches, when none came: the held-back users whose wait ran
 * recs.min.interval.ms of the clock (gate.h), into one flight, so a quiet
 * thread does not hold them (and its partitions' offsets) until the next
 * record. */
void hl_publish_overdue(hl_wthread *t);

/* park.c */
int  hl_park_waiting(hl_wthread *t, int32_t partition);
/* Parks *rkmp (taken: *rkmp becomes NULL) behind its partition's earlier
 * parked records, pausing the partition if it was not waiting; why is the
 * codec's sentence. Out of memory: the record is left to the caller (not
 * seen), the batch's flight f is held (no stored offset passes it) and the
 * worker stops. */
void hl_park_add(hl_wthread *t, rd_kafka_message_t **rkmp, const char *why, flight *f);
/* Before a batch: the parked records of partitions whose schema has an
 * answer now, in order, into out (at most max); such a partition resumes
 * once none of its records is left parked. */
int  hl_park_take_ready(hl_wthread *t, rd_kafka_message_t **out, int max);
/* A partition let go of: its parked records dropped, the partition resumed. */
void hl_park_drop(hl_wthread *t, int32_t partition);
void hl_park_free(hl_wthread *t);

/* flight.c */
int     hl_flight_alloc(hl_wthread *t, char *errbuf, size_t errlen);
void    hl_flight_free(hl_wthread *t);
/* 1 when a flight is free, after polling for one at most max_ms (less
 * when mail is posted or a stop comes): the loop reads a batch only then. */
int     hl_flight_slot_free(hl_wthread *t, int max_ms);
/* A new flight, waiting while all N_FLIGHTS are undelivered; NULL when a
 * stop ends that wait (told to stop now, or shutdown.timeout.ms passed) or
 * until_ms (monotonic; 0: none) passes: the caller must then publish
 * nothing and note no offsets. */
flight *hl_flight_begin(hl_wthread *t, int64_t until_ms);
void    hl_flight_note_offsets(hl_wthread *t, flight *f);
/* A new DLQ copy in f (ticket reset, fail_counter set), or NULL when out
 * of memory: then f is held (never retires, so its offsets are never
 * stored) and the worker stops. */
dead_letter *hl_flight_dead_letter(hl_wthread *t, flight *f);
/* The DLQ headers of a bad record: h (6 entries, NULL-terminated) points
 * into buf's strings. */
typedef struct dlq_hdr_buf { char part[16], off[24]; } dlq_hdr_buf;
void    hl_flight_dlq_headers(const rd_kafka_message_t *rkm, hl_codec_reason r,
                              dlq_hdr_buf *buf, hl_header h[6]);
void    hl_flight_retire(hl_wthread *t);
int     hl_flight_drain(hl_wthread *t, int64_t until_ms);
/* Drops partition's offsets from the flights in the air: it was let go
 * with them undelivered, and a flight retiring later must not store an
 * offset for it (it may have come back by then, read from further on). */
void    hl_flight_forget(hl_wthread *t, int32_t partition);

#endif
