/* consumer.c - configuration and reports of the worker's consumer.
 *
 * Offsets: enable.auto.offset.store=false, so librdkafka commits only what
 * the worker stored with rd_kafka_offsets_store() after a batch's lists were
 * delivered; auto-commit then sends those stored offsets every few seconds
 * and at close. queued.min.messages is raised to 1,000,000 because
 * librdkafka 2.0.2 stalls below it (DESIGN.md section 9).
 *
 * Statistics arrive as JSON every statistics.interval.ms; the only things
 * taken from it are each partition's end and position (its lag, see
 * part_lag), whether any broker is UP, and the group's state and join
 * state (for the log line of a worker still waiting for its first
 * assignment). The scan below is deliberately narrow: it finds the input
 * topic's object and walks its "partition" objects in order. The lag
 * needs where each assignment starts, so the rebalance callback passing
 * through here notes it, and when (a report made before is stale). The
 * end in the statistics is the one librdkafka's last fetch answer carried,
 * and a paused partition is not fetched, so the ends of owned partitions
 * whose end stood still are asked of the broker, off this thread
 * (watermark.c, end_stands_still), and the newer
 * of the two is used.
 *
 * Destroying the handle is skipped in one state, where librdkafka 2.0.2
 * would abort (see destroy_would_abort). */
#include "consumer.h"
#include "kafka_conf.h"
#include "log.h"
#include "watermark.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct hl_consumer {
    rd_kafka_t      *rk;
    hl_consumer_opts o;
    hl_gauge        *broker_up;      /* halflife_broker_up */
    atomic_int       up;
    atomic_int       fatal;
    int              sticky;         /* cooperative-sticky may be the assignor */
    int              read_committed; /* isolation.level: the lag's end offset */
    atomic_int       subscribed;
    atomic_int       synced;         /* an assignment reached the rebalance callback */
    hl_log_limit     err_limit;
    hl_log_limit     unrouted_limit;
    hl_counter      *unrouted;       /* halflife_unrouted_records_total */
    /* From the last statistics, on the thread of hl_consumer_serve: the
     * cgrp object's "state" and "join_state" ("" before the first). */
    char             cgrp_state[24], join_state[24];
    /* Per input partition, where its current assignment starts: the
     * offset the rebalance callback assigned it at (a restore's, or
     * RD_KAFKA_OFFSET_BEGINNING/END for auto.offset.reset), else
     * RD_KAFKA_OFFSET_INVALID. Thread of hl_consumer_serve. */
    int64_t         *start;
    int32_t          n_start;
    /* When the last assignment callback returned (hl_now_mono_us, the
     * clock of the statistics' "ts"). Thread of hl_consumer_serve. */
    int64_t          assigned_us;
    /* The ends asked of the broker (NULL: none, the statistics' alone;
     * it locks its own), and the owned partitions of the last report
     * whose end stood still, the ones it asks about (thread of
     * hl_consumer_serve). */
    hl_watermarks   *wm;
    int32_t         *owned;
    int              n_owned, cap_owned;
    /* Each partition's end in the last report (-1: none), by partition. */
    int64_t         *last_end;
    int32_t          n_last_end;
};

/* Producer-only keys are skipped: librdkafka would warn about each. */
static int consumer_key(const char *key)
{
    static const char *const producer_only[] = {
        "enable.idempotence", "linger.ms", "queue.buffering.max.ms",
        "queue.buffering.max.messages", "queue.buffering.max.kbytes",
        "message.timeout.ms", "delivery.timeout.ms", "acks", "request.required.acks",
        "batch.num.messages", "batch.size", "compression.type", "compression.codec",
        "transactional.id", "max.in.flight.requests.per.connection",
        "max.in.flight", "retries", "message.send.max.retries",
    };
    for (size_t i = 0; i < sizeof producer_only / sizeof producer_only[0]; i++)
        if (strcmp(key, producer_only[i]) == 0)
            return 0;
    return 1;
}

/* Logs each change of state: the error line that caused it may be
 * suppressed by the rate limit, and an operator needs both edges. */
static void set_up(hl_consumer *c, int up)
{
    if (atomic_exchange(&c->up, up) != up)
        hl_log(up ? HL_LOG_INFO : HL_LOG_WARN, up ? "broker_up" : "broker_down",
               "reachable=%d", up);
    if (c->broker_up)
        hl_gauge_set(c->broker_up, up);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    hl_consumer *c = opaque;
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        set_up(c, 0);
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_fatal_error(rk, why, sizeof why);
        atomic_store(&c->fatal, 1);
        hl_log(HL_LOG_ERROR, "kafka_fatal", "err=\"%s\"", why);
        return;
    }
    uint64_t sup = 0;
    if (hl_log_limit_pass(&c->err_limit, &sup))
        hl_log(HL_LOG_WARN, "kafka_error", "err=%s reason=\"%s\" suppressed=%llu",
               rd_kafka_err2name(err), reason, (unsigned long long)sup);
}

/* Position just after "key": in s, searching from s up to end; NULL if absent. */
static const char *find_key(const char *s, const char *end, const char *key)
{
    size_t n = strlen(key);
    for (const char *p = s; p && p + n <= end; p++) {
        p = memchr(p, key[0], (size_t)(end - p));
        if (p == NULL || p + n > end)
            return NULL;
        if (memcmp(p, key, n) == 0)
            return p + n;
    }
    return NULL;
}

/* The JSON string value starting at p (just after its opening quote) into
 * out, cut at n - 1 bytes; "" when p is NULL. */
static void copy_value(const char *p, const char *end, char *out, size_t n)
{
    size_t i = 0;
    while (p && p + i < end && p[i] != '"' && i + 1 < n) {
        out[i] = p[i];
        i++;
    }
    out[i] = 0;
}

/* librdkafka 2.0.2 writes this object with a space after each colon
 * (rdkafka.c, rd_kafka_stats_emit_all), unlike the brokers' objects. */
static void stats_group(hl_consumer *c, const char *json, const char *end)
{
    const char *g = find_key(json, end, "\"cgrp\": ");
    if (g == NULL)
        return;
    copy_value(find_key(g, end, "\"state\": \""), end, c->cgrp_state, sizeof c->cgrp_state);
    copy_value(find_key(g, end, "\"join_state\": \""), end, c->join_state,
               sizeof c->join_state);
}

/* The integer after key in [p, lim): its value, or -1 when absent (no
 * offset or lag field of interest is ever below -1 but the "unknown"
 * -1001, which callers treat as absent too). */
static long long stat_field(const char *p, const char *lim, const char *key)
{
    const char *at = find_key(p, lim, key);
    return at != NULL ? strtoll(at, NULL, 10) : -1;
}

/* Where partition part's assignment starts, as an offset; -1 while not
 * known. A logical BEGINNING is the log start, which the statistics carry
 * from the first fetch answer on. For END (the worker assigns the end
 * as an explicit offset unless the broker did not answer) and for a
 * partition whose assignment this consumer did not see, librdkafka's own
 * position is the best there is: after the last record handed to a shard
 * thread, else the next to fetch (both ahead of what is applied). */
static long long start_offset(const hl_consumer *c, long part, const char *p,
                              const char *lim)
{
    int64_t s = part >= 0 && part < c->n_start ? c->start[part] : RD_KAFKA_OFFSET_INVALID;
    if (s >= 0)
        return s;
    if (s == RD_KAFKA_OFFSET_BEGINNING)
        return stat_field(p, lim, "\"lo_offset\":");
    long long pos = stat_field(p, lim, "\"app_offset\":");
    return pos >= 0 ? pos : stat_field(p, lim, "\"next_offset\":");
}

/* A partition's lag from its statistics object [p, lim): its end offset
 * (the statistics', or the broker's last answer to watermark.c when that
 * is newer: librdkafka learns the end only from fetching, and a paused
 * partition, or one whose queue is full, is not fetched) minus the next
 * offset to apply. That is the offset the worker stored
 * (every record below it applied and its lists delivered; librdkafka
 * clears it when the partition leaves the assignment, so it is this
 * assignment's), else where the assignment starts: nothing is applied
 * before the first store. librdkafka's consumer_lag (the end minus the
 * last committed offset) is not used: it trails the stored offset by up
 * to auto.commit.interval.ms and may be a previous assignment's. The
 * positions librdkafka knows before a store are not used either: the
 * fetch position runs ahead by the prefetch and the last record handed
 * to a shard thread by the batch being applied, so a partition with a
 * backlog and no snapshot read 0 until its first store (for as long as a
 * registry outage held its records parked). -1: not known yet. */
static long long part_lag(const hl_consumer *c, long part, const char *p, const char *lim)
{
    long long end = stat_field(p, lim, c->read_committed ? "\"ls_offset\":"
                                                         : "\"hi_offset\":");
    long long asked = part <= INT32_MAX ? hl_watermarks_end(c->wm, (int32_t)part) : -1;
    if (asked > end)
        end = asked;
    long long pos = stat_field(p, lim, "\"stored_offset\":");
    if (pos < 0)
        pos = start_offset(c, part, p, lim);
    if (end < 0 || pos < 0)
        return -1;
    return end > pos ? end - pos : 0;
}

/* README.md's metrics table says the same, word for word. */
static const char lag_help[] =
    "Records behind the partition's end (its high watermark, or its last stable offset "
    "under isolation.level=read_committed): the end minus the next offset to apply, which "
    "is the offset stored for commit (every record below it applied and its lists "
    "delivered) or, before the assignment's first store, where the assignment started "
    "(the restored offset, else auto.offset.reset's). From librdkafka's statistics, every "
    "kafka.statistics.interval.ms (5 s), with the end asked of the broker as often when that "
    "is newer (librdkafka learns it only from fetching, and a partition paused while its "
    "records wait for their schema is not fetched).";

/* Notes p for the next round of watermark.c; out of memory leaves it out
 * (its lag then from the statistics alone). */
static void note_owned(hl_consumer *c, int32_t p)
{
    if (c->n_owned == c->cap_owned) {
        int n = c->cap_owned ? c->cap_owned * 2 : 64;
        int32_t *o = realloc(c->owned, sizeof *o * (size_t)n);
        if (o == NULL)
            return;
        c->owned = o;
        c->cap_owned = n;
    }
    c->owned[c->n_owned++] = p;
}

/* 1 when partition part's end in this report (end) is the one of the last
 * report, which is then end: a partition fetched while records come in
 * shows a new end in every report, so only one that is not fetched
 * (paused, its queue full) or gets nothing is asked of the broker. Asking
 * for every owned partition every 5 s raised bench_worker's event-to-list
 * p99 from 10.1-13.0 to 17.6-24.5 ms (three runs each, 2026-12-07), a
 * cost this keeps off a partition in flow. */
static int end_stands_still(hl_consumer *c, long part, long long end)
{
    if (part >= c->n_last_end) {
        int32_t n = (int32_t)part + 64;
        int64_t *e = realloc(c->last_end, sizeof *e * (size_t)n);
        if (e == NULL)
            return 0;
        for (int32_t i = c->n_last_end; i < n; i++)
            e[i] = -1;
        c->last_end = e;
        c->n_last_end = n;
    }
    int same = end >= 0 && c->last_end[part] == end;
    c->last_end[part] = end;
    return same;
}

static void stats_lag(hl_consumer *c, const char *json, const char *end)
{
    char key[320];
    snprintf(key, sizeof key, "\"topic\":\"%s\"", c->o.topic);
    const char *p = find_key(json, end, key);
    c->n_owned = 0;
    while (p && (p = find_key(p, end, "\"partition\":")) != NULL) {
        long part = strtol(p, NULL, 10);
        const char *next = find_key(p, end, "\"partition\":");
        if (part < 0 || part > INT32_MAX ||
            (c->o.owns != NULL && !c->o.owns(c->o.opaque, (int32_t)part)))
            continue;
        const char *lim = next != NULL ? next : end;
        if (end_stands_still(c, part, stat_field(p, lim, c->read_committed ? "\"ls_offset\":"
                                                                           : "\"hi_offset\":")))
            note_owned(c, (int32_t)part);
        long long lag = part_lag(c, part, p, lim);
        if (lag >= 0) {
            char labels[48];
            snprintf(labels, sizeof labels, "partition=\"%ld\"", part);
            hl_gauge_set(hl_metrics_gauge(c->o.reg, "halflife_consumer_lag", lag_help,
                                          labels), (double)lag);
        }
    }
    hl_watermarks_want(c->wm, c->owned, c->n_owned);
}

/* 1 when the report was made before the last assignment was in place. A
 * report waits in the consumer queue while an assignment callback runs
 * (a restore can take seconds) and is served right after it, so it
 * reaches partitions that callback assigned with what librdkafka knew
 * before: an end left from an earlier ownership of the partition by
 * this member (librdkafka keeps a partition's high
 * watermark after it leaves the assignment), so a lag below the real
 * one, 0 at the clamp, for one statistics interval (test_consumer). Its
 * lag is skipped; the next report, made after the assignment, has it.
 * Not caught: a report made in the moment between the assignment and
 * the partition's first fetch answer still carries that old end. Nor
 * needed for revoked partitions: owns() leaves them out, and a report
 * never waits behind a rebalance (librdkafka queues it ahead of those). */
static int stale_report(const hl_consumer *c, const char *json, const char *end)
{
    long long ts = stat_field(json, end, "\"ts\":");    /* the top level's is first */
    return ts >= 0 && ts < c->assigned_us;
}

static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    hl_consumer *c = opaque;
    const char *end = json + len;
    /* A broker reads "UP" only once its ApiVersion exchange is done, so a
     * report with none UP means none is reachable. ALL_BROKERS_DOWN alone
     * misses that when a broker never contacted sits in INIT: it is not
     * counted as down, and the error never comes. */
    set_up(c, find_key(json, end, "\"state\":\"UP\"") != NULL);
    const char *topics = find_key(json, end, "\"topics\":");
    if (topics && c->o.reg && c->o.topic && !stale_report(c, json, end))
        stats_lag(c, topics, end);
    stats_group(c, json, end);
    return 0;                   /* librdkafka frees json */
}

/* Room in c->start for partition p; 0, or -1 when out of memory (its
 * start is then unknown and its lag read from librdkafka's position). */
static int start_slot(hl_consumer *c, int32_t p)
{
    if (p < c->n_start)
        return 0;
    int32_t n = p + 64;
    int64_t *s = realloc(c->start, sizeof *s * (size_t)n);
    if (s == NULL)
        return -1;
    for (int32_t i = c->n_start; i < n; i++)
        s[i] = RD_KAFKA_OFFSET_INVALID;
    c->start = s;
    c->n_start = n;
    return 0;
}

/* After the worker's callback: an assigned input partition starts at the
 * offset that callback left in the list, the one it was assigned at; a
 * revoked one has no start. */
static void note_starts(hl_consumer *c, rd_kafka_resp_err_t err,
                        const rd_kafka_topic_partition_list_t *parts)
{
    for (int i = 0; c->o.topic != NULL && i < parts->cnt; i++) {
        const rd_kafka_topic_partition_t *e = &parts->elems[i];
        if (e->partition >= 0 && strcmp(e->topic, c->o.topic) == 0 &&
            start_slot(c, e->partition) == 0)
            c->start[e->partition] = err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS
                                         ? e->offset : RD_KAFKA_OFFSET_INVALID;
    }
}

/* The conf's opaque is this struct (the error and stats callbacks need it);
 * the worker's own opaque travels in o.opaque. */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    hl_consumer *c = opaque;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
        atomic_store(&c->synced, 1);
    c->o.rebalance(rk, err, parts, c->o.opaque);
    note_starts(c, err, parts);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
        c->assigned_us = hl_now_mono_us();
}

/* conf's value of key into s (cap bytes): 0, or -1 when it has none or
 * it does not fit (librdkafka then leaves s as it was). */
static int conf_value(const rd_kafka_conf_t *conf, const char *key, char *s, size_t cap)
{
    size_t n = cap;
    return rd_kafka_conf_get(conf, key, s, &n) == RD_KAFKA_CONF_OK && n <= cap ? 0 : -1;
}

/* 1 unless the configured strategies surely leave cooperative-sticky out
 * (librdkafka refuses to mix it with the eager ones, so it is then alone). */
static int maybe_sticky(const rd_kafka_conf_t *conf)
{
    char s[256] = "";
    if (conf_value(conf, "partition.assignment.strategy", s, sizeof s) != 0)
        return 1;
    return strstr(s, "cooperative-sticky") != NULL;
}

/* statistics.interval.ms as configured (0: none). */
static int stats_interval_ms(const rd_kafka_conf_t *conf)
{
    char s[32] = "";
    if (conf_value(conf, "statistics.interval.ms", s, sizeof s) != 0)
        return 0;
    return atoi(s);
}

/* 1 unless isolation.level is read_uncommitted (librdkafka's default is
 * read_committed): the lag then ends at the last stable offset. */
static int read_committed(const rd_kafka_conf_t *conf)
{
    char s[32] = "";
    if (conf_value(conf, "isolation.level", s, sizeof s) != 0)
        return 1;
    return strcmp(s, "read_uncommitted") != 0;
}

static int set_defaults(hl_consumer *c, rd_kafka_conf_t *conf, char *errbuf, size_t errlen)
{
    const hl_kafka_prop defaults[] = {
        {"bootstrap.servers", c->o.bootstrap},
        {"group.id", c->o.group_id},
        {"partition.assignment.strategy", "cooperative-sticky"},
        {"enable.auto.offset.store", "false"},
        {"enable.auto.commit", "true"},
        {"auto.offset.reset", "earliest"},
        {"queued.min.messages", "1000000"},
        {"socket.nagle.disable", "true"},   /* see hl_producer_create() */
        {"statistics.interval.ms", c->o.reg ? "5000" : "0"},
    };
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++)
        if (hl_kafka_conf_set(conf, defaults[i].key, defaults[i].value, errbuf, errlen) != 0)
            return HL_EINVAL;
    for (int i = 0; i < c->o.n_kafka; i++)
        if (consumer_key(c->o.kafka[i].key) &&
            hl_kafka_conf_set(conf, c->o.kafka[i].key, c->o.kafka[i].value, errbuf, errlen) != 0)
            return HL_EINVAL;
    return 0;
}

hl_consumer *hl_consumer_create(const hl_consumer_opts *o, char *errbuf, size_t errlen)
{
    char why[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    hl_consumer *c = calloc(1, sizeof *c);
    if (c == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "consumer: out of memory");
        goto fail;
    }
    c->o = *o;
    c->err_limit.interval_ms = 5000;
    c->unrouted_limit.interval_ms = 5000;
    atomic_init(&c->up, 1);
    if (o->reg)
        c->unrouted = hl_metrics_counter(o->reg, "halflife_unrouted_records_total",
            "Records the consumer returned from a partition not routed to a shard thread; "
            "not applied by this worker.", NULL);
    if (o->reg)
        c->broker_up = hl_metrics_gauge(o->reg, "halflife_broker_up",
            "1 while a Kafka broker is reachable, else 0.", NULL);
    set_up(c, 1);
    if (set_defaults(c, conf, errbuf, errlen) != 0)
        goto fail;
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_stats_cb(conf, on_stats);
    rd_kafka_conf_set_opaque(conf, c);
    c->sticky = maybe_sticky(conf);
    c->read_committed = read_committed(conf);
    int stats_ms = stats_interval_ms(conf);
    if ((c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof why)) == NULL) {
        hl_err(errbuf, errlen, HL_EINVAL, "consumer: %s", why);
        goto fail;
    }
    conf = NULL;                /* owned and freed by the handle now */
    rd_kafka_poll_set_consumer(c->rk);
    /* The lag's ends, as often as the statistics that export it. */
    if (o->reg && o->topic && stats_ms > 0 &&
        (c->wm = hl_watermarks_start(c->rk, o->topic, stats_ms)) == NULL)
        hl_log(HL_LOG_WARN, "watermarks_not_started", "action=\"the lag of a partition "
               "not fetched (paused) stands still\"");
    return c;
fail:
    if (conf)
        rd_kafka_conf_destroy(conf);
    free(c);
    return NULL;
}

/* librdkafka 2.0.2 aborts in rd_kafka_destroy() when a JoinGroup answer
 * chose the cooperative-sticky assignor (rdkafka_cgrp.c:1939 sets
 * rkcg_assignor) but no SyncGroup assignment followed: only that gives the
 * assignor its state (on_assignment_cb, rdkafka_cgrp.c:1525), and
 * rd_kafka_cgrp_destroy_final() (rdkafka_cgrp.c:372) passes the NULL state
 * to rd_kafka_sticky_assignor_state_destroy(), which asserts it is not
 * (rdkafka_sticky_assignor.c:1896; librdkafka issue 4312, fixed in 2.3.0).
 * A new member of a group that waits for dead members stays there long:
 * a dead leader never syncs, the sync fails when they time out, and the
 * member joins again (test_shutdown_rebalance.py). Closing first does not
 * help: once terminating, librdkafka drops a SyncGroup answer
 * (rdkafka_cgrp.c:1484). Line numbers are those of the v2.0.2 sources.
 * From outside the state cannot be seen, but every SyncGroup answer that
 * is taken ends in an assign callback (empty or not), so a consumer that
 * served one is safe to destroy; one that did not may not be. */
/* The last consumer left to the process's end; volatile: a store the
 * compiler may not drop although nothing reads it. */
static hl_consumer *volatile abandoned;

static int destroy_would_abort(hl_consumer *c)
{
    return c->sticky && atomic_load(&c->subscribed) && !atomic_load(&c->synced);
}

void hl_consumer_destroy(hl_consumer *c)
{
    if (c == NULL)
        return;
    hl_watermarks_stop(c->wm);  /* before the handle it asks through goes */
    c->wm = NULL;
    if (c->rk && destroy_would_abort(c)) {
        /* Closed by now, its threads only idle until the process ends.
         * abandoned keeps it reachable, and LeakSanitizer from counting
         * it: its threads alone did not when the broker was never reached
         * (a stop while waiting for it, test_start_stop.py under SAN).
         * What they log from here on (connection refused once an embedded
         * broker is gone) is noise. */
        hl_log(HL_LOG_INFO, "consumer_not_destroyed", "reason=\"no assignment received; "
               "librdkafka 2.0.2 would abort (issue 4312)\"");
        rd_kafka_set_log_level(c->rk, 0);
        abandoned = c;
        return;
    }
    if (c->rk)
        rd_kafka_destroy(c->rk);
    free(c->start);
    free(c->owned);
    free(c->last_end);
    free(c);
}

rd_kafka_t *hl_consumer_handle(hl_consumer *c) { return c->rk; }

int hl_consumer_broker_up(const hl_consumer *c) { return atomic_load(&c->up); }

const char *hl_consumer_group_state(const hl_consumer *c, int join)
{
    const char *s = join ? c->join_state : c->cgrp_state;
    return s[0] ? s : "unknown";
}

int hl_consumer_subscribe(hl_consumer *c, const char *topic, char *errbuf, size_t errlen)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(c->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (err)
        return hl_err(errbuf, errlen, HL_EIO, "subscribe %s: %s", topic, rd_kafka_err2str(err));
    atomic_store(&c->subscribed, 1);
    return 0;
}

/* A record of a partition whose queue is not forwarded to a shard thread.
 * One line each flooded the log with every record of such a partition;
 * the counter keeps the exact number, the line is rate-limited. */
static void unrouted(hl_consumer *c, const rd_kafka_message_t *rkm)
{
    uint64_t sup = 0;
    if (c->unrouted)
        hl_counter_add(c->unrouted, 1);
    if (hl_log_limit_pass(&c->unrouted_limit, &sup))
        hl_log(HL_LOG_WARN, "unrouted_record", "partition=%d offset=%lld suppressed=%llu",
               (int)rkm->partition, (long long)rkm->offset, (unsigned long long)sup);
}

int hl_consumer_serve(hl_consumer *c, int timeout_ms)
{
    rd_kafka_message_t *rkm = rd_kafka_consumer_poll(c->rk, timeout_ms);
    if (rkm != NULL) {
        if (rkm->err == RD_KAFKA_RESP_ERR__FATAL)
            atomic_store(&c->fatal, 1);
        else if (rkm->err)
            on_error(c->rk, rkm->err, rd_kafka_message_errstr(rkm), c);
        else
            unrouted(c, rkm);
        rd_kafka_message_destroy(rkm);
    }
    return atomic_load(&c->fatal);
}

void hl_consumer_close(hl_consumer *c)
{
    /* A query under way ends within HL_WATERMARK_QUERY_MS: no longer
     * than that is added to the stop. */
    hl_watermarks_stop(c->wm);
    c->wm = NULL;
    rd_kafka_resp_err_t err = rd_kafka_commit(c->rk, NULL, 0);
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
        hl_log(HL_LOG_WARN, "commit_failed", "err=\"%s\"", rd_kafka_err2str(err));
    err = rd_kafka_consumer_close(c->rk);
    if (err)
        hl_log(HL_LOG_WARN, "consumer_close_failed", "err=\"%s\"", rd_kafka_err2str(err));
}
