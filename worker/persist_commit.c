/* persist_commit.c - the committer thread of worker/persist.c and the
 * hand-offs between a shard's owner thread and it.
 *
 * The owner fills a snapshot writer between batches; this thread does the
 * slow, table-free part: it drains the writer's buffers while the owner
 * steps, and commits a finished writer (fsync, rename, directory fsync,
 * retention), then folds the outcome into the shard under p->mu. Commits
 * go first (they make files durable), then drains; one thread does both,
 * so a writer is never drained and committed at once.
 *
 * It is apart from persist.c because it is the other thread's code: what
 * runs here never touches the table, and everything here that the owner
 * calls takes p->mu. */
#include "persist_internal.h"
#include "log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the committer thread ------------------------------------------------ */

void hl_persist_shard_unref_locked(hl_persist_shard *ps, int *free_it)
{
    *free_it = --ps->refs == 0;
}

void hl_persist_shard_free(hl_persist_shard *ps)
{
    free(ps);
}

/* Commits j's writer (no lock held) and describes the outcome in d. */
static void run_job(hl_persist *p, job *j, hl_persist_done *d)
{
    hl_snapshot_result res;
    int64_t t = hl_now_mono_us();
    memset(d, 0, sizeof *d);
    d->partition = j->ps->partition;
    d->next_offset = j->next_offset;
    d->rc = hl_snapshot_commit(j->w, p->o.retain, &res, d->err, sizeof d->err);
    j->w = NULL;                            /* commit always consumes it */
    int64_t end = hl_now_mono_us();
    d->commit_s = (double)(end - t) / 1e6;
    d->duration_s = (double)(end - j->t0_us) / 1e6;
    d->wall_ms = hl_now_wall_ms();
    if (d->rc == 0) {
        d->bytes = res.bytes;
        d->n_rows = res.n_rows;
        if (res.n_delete_failed)
            hl_log(HL_LOG_WARN, "snapshot_retention", "partition=%d delete_failed=%d",
                   (int)d->partition, res.n_delete_failed);
    }
}

static void job_metrics(hl_persist *p, hl_persist_shard *ps, const hl_persist_done *d)
{
    if (d->rc != 0) {
        if (p->m_failed)
            hl_counter_add(p->m_failed, 1);
        hl_log(HL_LOG_WARN, "snapshot_failed", "partition=%d next_offset=%lld stage=commit "
               "err=\"%s\"", (int)d->partition, (long long)d->next_offset, d->err);
        return;
    }
    if (p->m_ok) {
        hl_counter_add(p->m_ok, 1);
        hl_histogram_observe(p->m_duration, d->duration_s);
    }
    if (ps->g_bytes) {
        hl_gauge_set(ps->g_bytes, (double)d->bytes);
        hl_gauge_set(ps->g_success, (double)d->wall_ms / 1000.0);
    }
    hl_log(HL_LOG_INFO, "snapshot_written", "partition=%d next_offset=%lld rows=%llu "
           "bytes=%llu duration_s=%.3f commit_s=%.3f", (int)d->partition,
           (long long)d->next_offset, (unsigned long long)d->n_rows,
           (unsigned long long)d->bytes, d->duration_s, d->commit_s);
}

/* Under mu: fold the outcome into the shard and wake flushes. */
static void finish_job(hl_persist *p, job *j, const hl_persist_done *d, int *free_it)
{
    hl_persist_shard *ps = j->ps;
    hl_persist_push_done(p, d);
    ps->in_flight--;
    ps->last_rc = d->rc;
    snprintf(ps->last_err, sizeof ps->last_err, "%s", d->rc ? d->err : "");
    if (d->rc == 0 && d->next_offset > atomic_load(&ps->durable))
        atomic_store(&ps->durable, d->next_offset);
    p->queued--;
    pthread_cond_broadcast(&p->done_cv);
    hl_persist_shard_unref_locked(ps, free_it);
}

/* Under mu: the next shard whose writer has buffers to write, marked as
 * being drained, with that writer in *w; or NULL. */
static hl_persist_shard *take_drain(hl_persist *p, hl_snapshot_writer **w)
{
    hl_persist_shard *ps = p->drain_head;
    if (ps == NULL)
        return NULL;
    p->drain_head = ps->drain_next;
    ps->drain_next = NULL;
    ps->drain_queued = 0;
    ps->draining = 1;
    *w = ps->drain_w;
    return ps;
}

/* Writes what w has filled (no lock held: an abort waits for it, and a
 * commit of w runs later on this thread). A failure stays in the writer:
 * the owner's next step returns it and reports it. */
static void run_drain(hl_persist *p, hl_persist_shard *ps, hl_snapshot_writer *w)
{
    char err[256];
    hl_snapshot_drain(w, err, sizeof err);
    pthread_mutex_lock(&p->mu);
    ps->draining = 0;
    pthread_cond_broadcast(&p->done_cv);
    pthread_mutex_unlock(&p->mu);
}

static void run_commit(hl_persist *p, job *j)
{
    hl_persist_done d;
    int free_it;
    run_job(p, j, &d);
    job_metrics(p, j->ps, &d);
    pthread_mutex_lock(&p->mu);
    finish_job(p, j, &d, &free_it);
    pthread_mutex_unlock(&p->mu);
    if (free_it)
        hl_persist_shard_free(j->ps);
    free(j);
}

/* Commits first (they make files durable), then drains. */
void *hl_persist_committer_main(void *arg)
{
    hl_persist *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->head == NULL && p->drain_head == NULL && !p->quit)
            pthread_cond_wait(&p->work_cv, &p->mu);
        job *j = p->head;
        hl_snapshot_writer *w = NULL;
        hl_persist_shard *ps = j ? NULL : take_drain(p, &w);
        if (j == NULL && ps == NULL)
            break;                              /* quit, and nothing left */
        if (j != NULL && (p->head = j->next) == NULL)
            p->tail = NULL;
        pthread_mutex_unlock(&p->mu);
        if (j != NULL)
            run_commit(p, j);
        else
            run_drain(p, ps, w);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Owner thread: asks the committer to write what the steps filled. */
void hl_persist_request_drain(hl_persist_shard *ps)
{
    hl_persist *p = ps->p;
    pthread_mutex_lock(&p->mu);
    if (ps->drain_w != NULL && !ps->drain_queued) {
        ps->drain_queued = 1;
        ps->drain_next = p->drain_head;
        p->drain_head = ps;
        pthread_cond_signal(&p->work_cv);
    }
    pthread_mutex_unlock(&p->mu);
}

/* Under mu: takes ps out of the drain list. */
static void unlist_drain(hl_persist_shard *ps)
{
    hl_persist_shard **pp = &ps->p->drain_head;
    while (*pp != NULL && *pp != ps)
        pp = &(*pp)->drain_next;
    if (*pp == ps)
        *pp = ps->drain_next;
    ps->drain_next = NULL;
    ps->drain_queued = 0;
}

/* Owner thread, before an abort frees the writer: no more drains of it,
 * and none running. */
static void detach_drain(hl_persist_shard *ps)
{
    hl_persist *p = ps->p;
    pthread_mutex_lock(&p->mu);
    unlist_drain(ps);
    while (ps->draining)
        pthread_cond_wait(&p->done_cv, &p->mu);
    ps->drain_w = NULL;
    pthread_mutex_unlock(&p->mu);
}

/* Owner thread: abandons the running writer; its temporary file goes. */
void hl_persist_drop_writer(hl_persist_shard *ps)
{
    if (ps->w == NULL)
        return;
    detach_drain(ps);
    hl_snapshot_abort(ps->w);
    ps->w = NULL;
    ps->w_out = 0;
}

/* Owner thread: hands the finished writer to the committer. */
int hl_persist_enqueue(hl_persist_shard *ps)
{
    hl_persist *p = ps->p;
    job *j = malloc(sizeof *j);
    if (j == NULL) {
        hl_persist_drop_writer(ps);
        return hl_persist_owner_failed(ps, ps->w_offset, HL_ENOMEM, "queue", "out of memory");
    }
    *j = (job){.ps = ps, .w = ps->w, .next_offset = ps->w_offset, .t0_us = ps->w_t0_us};
    ps->w = NULL;
    ps->w_out = 0;
    pthread_mutex_lock(&p->mu);
    /* No wait for a drain still running: it ends before this job runs, on
     * the same thread. The job's commit writes what is left. */
    unlist_drain(ps);
    ps->drain_w = NULL;
    ps->in_flight++;
    ps->refs++;
    p->queued++;
    if (p->tail)
        p->tail->next = j;
    else
        p->head = j;
    p->tail = j;
    pthread_cond_signal(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    return 1;
}
