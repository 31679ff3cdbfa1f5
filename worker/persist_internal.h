/* persist_internal.h - what persist.c (the owner threads' side: restore,
 * begin, step, tick, flush), persist_commit.c (the committer thread and
 * the hand-offs to it) and persist_restart.c (a restart at a recreated
 * topic's offset) share: the two structs, the commit job, and the few
 * calls that cross between them. Private to those three files. */
#ifndef HL_PERSIST_INTERNAL_H
#define HL_PERSIST_INTERNAL_H

#include "persist.h"

#include <pthread.h>
#include <stdatomic.h>

#define DONE_MAX      64          /* completions kept for hl_persist_poll */
#define FLUSH_STEP_X  16          /* flush steps this many times step_rows per call */
#define STEP_BYTES    (256 * 1024) /* default step: about 0.2 ms of copying, so the
                                     tick budget is checked often */
#define RING_FULL_US  3           /* a step this quick wrote nothing */

typedef struct job {
    struct job         *next;
    hl_persist_shard   *ps;
    hl_snapshot_writer *w;
    int64_t             next_offset;
    int64_t             t0_us;      /* when the snapshot began */
} job;

struct hl_persist {
    hl_persist_opts  o;             /* dir and topic point at the copies below */
    char             dir[HL_SNAPSHOT_PATH_MAX];
    char             topic[HL_SNAPSHOT_TOPIC_MAX + 1];
    const hl_io     *io;
    _Atomic uint64_t fp;            /* the model restores check against */

    pthread_t        tid;
    int              started;
    pthread_mutex_t  mu;
    pthread_cond_t   work_cv;       /* the committer waits for jobs */
    pthread_cond_t   done_cv;       /* flushes wait for commits (monotonic clock) */

    /* under mu */
    job             *head, *tail;
    hl_persist_shard *drain_head;   /* shards whose writer has buffers to write */
    int              queued;        /* waiting or running */
    int              quit;
    hl_persist_done  done[DONE_MAX];
    int              done_head, done_n;
    uint64_t         n_ok, n_failed, n_bytes, n_skipped;

    atomic_llong     max_tick_us;
    int              async;         /* steps only fill buffers; the committer writes */

    hl_histogram    *m_duration;
    hl_gauge        *m_restore;
    hl_counter      *m_ok, *m_failed;
    hl_counter      *m_rejected;        /* files refused at restore */
};

struct hl_persist_shard {
    hl_persist         *p;
    int32_t             partition;

    /* owner thread only */
    hl_snapshot_writer *w;
    int64_t             w_offset;
    int64_t             w_t0_us;
    size_t              w_rows;     /* rows per step */
    int                 w_out;      /* every row is out; waiting for delivery */
    int64_t             w_need;     /* commit once delivered_offset reaches this */
    int64_t             due_ms;
    int                 due_set;
    uint64_t            fp;         /* model fingerprint of the rows now */
    int                 fp_changed; /* since the newest snapshot began */
    hl_persist_cover_fn cover;      /* NULL: the changelog fields stay 0 */
    void               *cover_arg;

    /* under p->mu */
    hl_snapshot_writer *drain_w;    /* ps->w while the committer may drain it */
    hl_persist_shard   *drain_next; /* in p's drain list */
    int                 drain_queued, draining;
    int                 refs;
    int                 in_flight;  /* commits queued or running */
    int                 last_rc;
    char                last_err[256];

    atomic_llong        durable;    /* next_offset of the newest durable file */
    char                labels[48];
    hl_gauge           *g_bytes, *g_success;
};

/* persist.c. Under mu: records a completion for hl_persist_poll. */
void hl_persist_push_done(hl_persist *p, const hl_persist_done *d);
/* persist.c. A snapshot that failed on the owner thread (begin or step):
 * logged, counted, reported; returns rc. */
int  hl_persist_owner_failed(hl_persist_shard *ps, int64_t offset, int rc,
                             const char *stage, const char *why);

/* persist_restart.c. Before a restore: finishes a restart at a recreated
 * topic's offset that its intent file shows cut short. */
void hl_persist_finish_restart(hl_persist *p, int32_t partition);

/* persist_commit.c. The committer thread's body; arg is the hl_persist. */
void *hl_persist_committer_main(void *arg);
/* Under mu: drops one reference; *free_it says the caller must now call
 * hl_persist_shard_free (after unlocking). */
void hl_persist_shard_unref_locked(hl_persist_shard *ps, int *free_it);
void hl_persist_shard_free(hl_persist_shard *ps);
/* Owner thread: asks the committer to write what the steps filled. */
void hl_persist_request_drain(hl_persist_shard *ps);
/* Owner thread: abandons the running writer; its temporary file goes. */
void hl_persist_drop_writer(hl_persist_shard *ps);
/* Owner thread: hands the finished writer to the committer; 1 when queued,
 * a negative HL_E* (already reported) when it could not be. */
int  hl_persist_enqueue(hl_persist_shard *ps);

#endif
