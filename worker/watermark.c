/* watermark.c - a thread that asks the broker for the input partitions'
 * ends (watermark.h says why).
 *
 * One round per interval: the wanted partitions are copied under mu, asked
 * for in one rd_kafka_offsets_for_times() call with the logical END as
 * the "time" (a ListOffsets request per leader, answered with the high
 * watermark, or the last stable offset under read_committed), and the
 * answers written back under mu. The call is made without the lock, so
 * the consumer's thread, which reads the ends and names the partitions,
 * never waits for the broker. rd_kafka_query_watermark_offsets() is not
 * used: it asks one partition at a time, and it waits for its answer
 * without a bound (socket.timeout.ms, 60 s by default: its timeout_ms only
 * covers the leader lookup in librdkafka 2.0.2), which a stop would have
 * to wait out; rd_kafka_offsets_for_times() returns at its timeout, and an
 * answer that comes later is dropped by librdkafka.
 *
 * An end is only ever replaced by a newer answer, never aged out: a
 * partition's end does not go down while its topic lives, so an old answer
 * is still a floor. A round the broker does not answer changes nothing. */
#include "watermark.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct hl_watermarks {
    rd_kafka_t     *rk;             /* borrowed */
    char           *topic;
    int             interval_ms;
    int             query_ms;       /* the bound of one round's call */
    pthread_t       tid;
    pthread_mutex_t mu;
    pthread_cond_t  cv;             /* on CLOCK_MONOTONIC; signalled by stop */
    /* Under mu. Indexed by partition, n_slots of each: whether it is
     * wanted, and its end (-1: none known). */
    int             stop;
    int32_t         n_slots;
    unsigned char  *wanted;
    int64_t        *end;
};

/* Room for partition p in wanted[] and end[]; 0, or -1 when out of
 * memory. Under mu. */
static int slot(hl_watermarks *wm, int32_t p)
{
    if (p < wm->n_slots)
        return 0;
    int32_t n = p + 64;
    unsigned char *w = realloc(wm->wanted, (size_t)n);
    if (w == NULL)
        return -1;
    wm->wanted = w;
    int64_t *e = realloc(wm->end, sizeof *e * (size_t)n);
    if (e == NULL)
        return -1;
    wm->end = e;
    for (int32_t i = wm->n_slots; i < n; i++) {
        wm->wanted[i] = 0;
        wm->end[i] = -1;
    }
    wm->n_slots = n;
    return 0;
}

void hl_watermarks_want(hl_watermarks *wm, const int32_t *parts, int n)
{
    if (wm == NULL)
        return;
    pthread_mutex_lock(&wm->mu);
    for (int i = 0; i < n; i++)
        if (parts[i] < 0 || slot(wm, parts[i]) != 0)
            goto out;
    if (wm->n_slots > 0)        /* wanted is NULL before the first slot */
        memset(wm->wanted, 0, (size_t)wm->n_slots);
    for (int i = 0; i < n; i++)
        wm->wanted[parts[i]] = 1;
    for (int32_t p = 0; p < wm->n_slots; p++)
        if (!wm->wanted[p])
            wm->end[p] = -1;
out:
    pthread_mutex_unlock(&wm->mu);
}

int64_t hl_watermarks_end(hl_watermarks *wm, int32_t p)
{
    if (wm == NULL || p < 0)
        return -1;
    pthread_mutex_lock(&wm->mu);
    int64_t e = p < wm->n_slots ? wm->end[p] : -1;
    pthread_mutex_unlock(&wm->mu);
    return e;
}

/* Sleeps one interval under mu, or less when told to stop. */
static void nap(hl_watermarks *wm)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += wm->interval_ms / 1000;
    ts.tv_nsec += (long)(wm->interval_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    while (!wm->stop && pthread_cond_timedwait(&wm->cv, &wm->mu, &ts) == 0)
        ;
}

/* The wanted partitions, each at the logical END; NULL when none is (or
 * out of memory). Under mu. */
static rd_kafka_topic_partition_list_t *wanted_list(hl_watermarks *wm)
{
    int n = 0;
    for (int32_t p = 0; p < wm->n_slots; p++)
        n += wm->wanted[p];
    if (n == 0)
        return NULL;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
    for (int32_t p = 0; l != NULL && p < wm->n_slots; p++)
        if (wm->wanted[p])
            rd_kafka_topic_partition_list_add(l, wm->topic, p)->offset = RD_KAFKA_OFFSET_END;
    return l;
}

/* The answers into end[], for partitions still wanted (one let go of
 * while the call ran stays forgotten). Under mu. */
static void publish(hl_watermarks *wm, const rd_kafka_topic_partition_list_t *l)
{
    for (int i = 0; i < l->cnt; i++) {
        const rd_kafka_topic_partition_t *e = &l->elems[i];
        if (e->err == RD_KAFKA_RESP_ERR_NO_ERROR && e->offset >= 0 &&
            e->partition < wm->n_slots && wm->wanted[e->partition])
            wm->end[e->partition] = e->offset;
    }
}

static void *watermarks_main(void *arg)
{
    hl_watermarks *wm = arg;
    pthread_mutex_lock(&wm->mu);
    while (!wm->stop) {
        nap(wm);
        rd_kafka_topic_partition_list_t *l = wm->stop ? NULL : wanted_list(wm);
        if (l == NULL)
            continue;
        pthread_mutex_unlock(&wm->mu);
        rd_kafka_resp_err_t err = rd_kafka_offsets_for_times(wm->rk, l, wm->query_ms);
        pthread_mutex_lock(&wm->mu);
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
            publish(wm, l);
        rd_kafka_topic_partition_list_destroy(l);
    }
    pthread_mutex_unlock(&wm->mu);
    return NULL;
}

static void free_watermarks(hl_watermarks *wm)
{
    pthread_mutex_destroy(&wm->mu);
    pthread_cond_destroy(&wm->cv);
    free(wm->topic);
    free(wm->wanted);
    free(wm->end);
    free(wm);
}

hl_watermarks *hl_watermarks_start(rd_kafka_t *rk, const char *topic, int interval_ms)
{
    hl_watermarks *wm = calloc(1, sizeof *wm);
    if (wm == NULL)
        return NULL;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&wm->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&wm->mu, NULL);
    wm->rk = rk;
    wm->interval_ms = interval_ms > 0 ? interval_ms : 1;
    wm->query_ms = wm->interval_ms < HL_WATERMARK_QUERY_MS ? wm->interval_ms
                                                           : HL_WATERMARK_QUERY_MS;
    if ((wm->topic = strdup(topic)) == NULL ||
        pthread_create(&wm->tid, NULL, watermarks_main, wm) != 0) {
        free_watermarks(wm);
        return NULL;
    }
    return wm;
}

void hl_watermarks_stop(hl_watermarks *wm)
{
    if (wm == NULL)
        return;
    pthread_mutex_lock(&wm->mu);
    wm->stop = 1;
    pthread_cond_broadcast(&wm->cv);
    pthread_mutex_unlock(&wm->mu);
    pthread_join(wm->tid, NULL);
    free_watermarks(wm);
}
