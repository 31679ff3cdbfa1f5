/* bench_worker_live.h - the live stream of bench_worker's latency and
 * live-rate figures: events sent at a fixed rate into a running worker,
 * its lists read back and timed (arrival at a reader minus generated_at), and
 * the probes that find the highest rate the worker keeps up with.
 * Included by bench_worker.c, which provides bootstrap, fetch_wait,
 * now_s(), wall_ms(), cmp_double(), metric() and send_synth(). */
#ifndef BENCH_WORKER_LIVE_H
#define BENCH_WORKER_LIVE_H

/* Avro long (zigzag varint) at p[*i..len); 0 or -1 if truncated. */
static int read_long(const uint8_t *p, size_t len, size_t *i, int64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; *i < len && shift < 64; shift += 7) {
        uint8_t b = p[(*i)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
            return 0;
        }
    }
    return -1;
}

/* The wall clock in ms with its fraction. generated_at is not: it is the
 * send time cut to whole ms (wall_ms), so a latency taken against it is
 * read_latencies' job to centre (GEN_TRUNC_MS). */
static double wall_ms_f(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec * 1000 + ts.tv_nsec / 1e6;
}

/* An event stamped t (whole ms, truncated) was sent at t + U[0, 1) ms:
 * without this, every end-to-end latency read 0.5 ms long on average
 * (p50 6.5 ms by 8%, and a p99 of 24.9 against the 25 ms target by 2%). */
#define GEN_TRUNC_MS 0.5

/* Reads a worker's lists: for each, when this reader got it minus its
 * generated_at (the newest event's send time) into lat, the end to end a
 * downstream consumer sees; and its Kafka timestamp (the worker's produce
 * call) minus generated_at into prod, when not NULL. The list is
 * Confluent-framed: 5 header bytes, user_id, generated_at. */
static int read_latencies(rd_kafka_t *rk, double *lat, double *prod, int cap, double until)
{
    int n = 0;
    while (now_s() < until && n < cap) {
        /* Rounded up: truncated, the last millisecond before until was a
         * loop of zero-timeout polls, 37% of this process's samples in
         * clock_gettime at 2,500 events/s (perf), on the cores the worker
         * and the broker need. */
        int wait_ms = (int)((until - now_s()) * 1000) + 1;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, wait_ms);
        if (m == NULL)
            continue;
        size_t i = 5;
        int64_t ulen, gen;
        if (!m->err && m->len > 5 && read_long(m->payload, m->len, &i, &ulen) == 0) {
            i += (size_t)ulen;
            if (read_long(m->payload, m->len, &i, &gen) == 0) {
                if (prod)
                    prod[n] = (double)(rd_kafka_message_timestamp(m, NULL) - gen);
                lat[n++] = wall_ms_f() - ((double)gen + GEN_TRUNC_MS);
            }
        }
        rd_kafka_message_destroy(m);
    }
    return n;
}

/* A reader of recs_topic's lists, in a group of its own. */
static rd_kafka_t *latency_reader(const char *recs_topic)
{
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, err, sizeof err);
    rd_kafka_conf_set(conf, "group.id", recs_topic, err, sizeof err);
    rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", err, sizeof err);
    rd_kafka_conf_set(conf, "fetch.wait.max.ms", fetch_wait, err, sizeof err);
    rd_kafka_conf_set(conf, "socket.nagle.disable", "true", err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, recs_topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    return rk;
}

/* A live stream at a fixed rate into a running worker, its lists read
 * back: the producer, the codec, the synthetic users and the reader. */
typedef struct live {
    hl_producer *p;
    hl_codec    *c;
    hl_synth    *s;
    rd_kafka_t  *reader;
    const char  *topic;        /* the events' topic; the lists go to <topic>-recs */
    int          port;
    long         total;        /* events sent so far */
} live;

static double lat[1 << 20], lat_prod[1 << 20];

/* Sends rate events/s for warm_s + secs seconds; the latencies of the lists
 * read during the last secs seconds go to lat. Returns how many; *sent is
 * the number of events sent in that window, L->total counts them all. */
static int live_run(live *L, double rate, double warm_s, double secs, long *sent)
{
    double t0 = now_s();
    long n = 0, n_warm = -1;
    int n_lat = 0;
    while (now_s() - t0 < warm_s + secs) {
        int warm = now_s() - t0 < warm_s;
        for (; n < (long)((now_s() - t0) * rate); n++)
            send_synth(L->p, L->c, L->topic, L->s, wall_ms());
        hl_producer_poll(L->p, 0);
        /* Blocking reads between sends, so this process does not spin on
         * a core the worker needs. */
        n_lat += read_latencies(L->reader, lat + n_lat, lat_prod + n_lat, (1 << 20) - n_lat,
                                now_s() + 0.004);
        if (warm)
            n_lat = 0;
        else if (n_warm < 0)
            n_warm = n;
    }
    *sent = n - (n_warm < 0 ? 0 : n_warm);
    L->total += n;
    return n_lat;
}

/* Waits until the worker consumed everything sent and no list arrived for
 * a second: the backlog of a probe that fell behind is gone. */
static void live_drain(live *L)
{
    double deadline = now_s() + 90;
    while (metric(L->port, "halflife_events_consumed_total") < L->total && now_s() < deadline)
        read_latencies(L->reader, lat, NULL, 1 << 20, now_s() + 0.1);
    while (now_s() < deadline && read_latencies(L->reader, lat, NULL, 1 << 20, now_s() + 1.0) > 0)
        ;
}

/* The highest rate the worker keeps up with live (not catching up, where
 * batches are large and SGEMM efficient): ascending probes of 1 + 3 s from
 * a fraction of the catch-up lists/s; a probe passes when at its end the
 * worker is at most a quarter second of events behind and the lists read
 * in its window have a p50 under 100 ms (no queue building up). After the
 * first probe that fails, one more halfway between it and the last that
 * passed (the backlog drained first): the grid's steps are 1.4-1.5x, so
 * without it the ratio could only read 0.18, 0.25 or 0.35. */
static const double live_frac[] = {0.08, 0.12, 0.18, 0.25, 0.35, 0.5, 0.7, 1.0};
#define N_LIVE_FRAC ((int)(sizeof live_frac / sizeof live_frac[0]))

/* One probe at r events/s; 1 if the worker kept up. */
static int live_probe(live *L, double r)
{
    long sent;
    int n = live_run(L, r, 1.0, 3.0, &sent);
    double behind = (double)L->total - metric(L->port, "halflife_events_consumed_total");
    qsort(lat, (size_t)n, sizeof *lat, cmp_double);
    int ok = n > 0 && lat[n / 2] < 100 && behind <= (r * 0.25 > 50 ? r * 0.25 : 50);
    fprintf(stderr, "bench_worker: live probe %.0f events/s: %d lists for %ld events, "
            "%.0f events behind, p50 %.0f ms: %s\n", r, n, sent, behind,
            n ? lat[n / 2] : -1.0, ok ? "kept up" : "fell behind");
    return ok;
}

static double live_sustainable(live *L, double catchup)
{
    double best = 0;
    int i = 0;
    for (; i < N_LIVE_FRAC && live_probe(L, catchup * live_frac[i]); i++)
        best = catchup * live_frac[i];
    live_drain(L);
    if (i > 0 && i < N_LIVE_FRAC) {
        double mid = catchup * (live_frac[i - 1] + live_frac[i]) / 2;
        if (live_probe(L, mid))
            best = mid;
        live_drain(L);
    }
    return best;
}

#endif
