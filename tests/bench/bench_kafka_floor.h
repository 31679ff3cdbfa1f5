/* bench_kafka_floor.h - what the broker path costs with no worker in it
 * (issue 14): a bare librdkafka producer sends small records at a fixed
 * rate to `halflife broker`, a bare consumer in the same process reads
 * them back, and each record's send -> acknowledged (the produce round
 * trip, the floor of the worker's "deliver" stage) and send -> fetched
 * (producer linger, broker, fetch: the floor of the "broker" stage) are
 * timed on one monotonic clock. Run at the rate and with the client
 * settings of the live figures, in the same run, it is the ceiling they
 * are read against: a stage can be no faster than this.
 *
 * floor_sustainable() probes the same path's highest sustainable rate
 * with two such streams at once (what a live worker puts through the
 * broker), by the worker probe's criterion: the live rate's ceiling.
 *
 * Included by bench_worker.c, which provides bootstrap, now_s(), die(),
 * cmp_double() and PARTS. */
#ifndef BENCH_KAFKA_FLOOR_H
#define BENCH_KAFKA_FLOOR_H

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>

typedef struct floor_run {
    double    *sent, *acked, *fetched;  /* per record index, seconds; 0 = not yet */
    long       n;                       /* records sent so far */
    long       cap;
    rd_kafka_t *cons;
    atomic_int stop;
} floor_run;

static void floor_on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    floor_run *f = opaque;
    long i;
    if (m->err == 0 && m->len == sizeof i) {
        memcpy(&i, m->payload, sizeof i);
        if (i >= 0 && i < f->cap)
            f->acked[i] = now_s();
    }
}

static void *floor_consume(void *arg)
{
    floor_run *f = arg;
    while (!atomic_load(&f->stop)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(f->cons, 50);
        long i;
        if (m == NULL)
            continue;
        if (m->err == 0 && m->len == sizeof i) {
            memcpy(&i, m->payload, sizeof i);
            if (i >= 0 && i < f->cap)
                f->fetched[i] = now_s();
        }
        rd_kafka_message_destroy(m);
    }
    return NULL;
}

/* A client of type with bootstrap and the NULL-terminated key/value pairs. */
static rd_kafka_t *floor_client(rd_kafka_type_t type, const char *const *kv, void *opaque)
{
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, err, sizeof err);
    if (type == RD_KAFKA_CONSUMER)      /* assign() needs one; nothing is committed */
        rd_kafka_conf_set(conf, "group.id", "floor", err, sizeof err);
    for (int i = 0; kv[i] != NULL; i += 2)
        if (rd_kafka_conf_set(conf, kv[i], kv[i + 1], err, sizeof err) != RD_KAFKA_CONF_OK)
            die(err);
    if (type == RD_KAFKA_PRODUCER) {
        rd_kafka_conf_set_dr_msg_cb(conf, floor_on_delivery);
        rd_kafka_conf_set_opaque(conf, opaque);
    }
    rd_kafka_t *rk = rd_kafka_new(type, conf, err, sizeof err);
    if (rk == NULL)
        die(err);
    return rk;
}

/* Every partition of topic from its end, no group: nothing to wait for. */
static void floor_assign(rd_kafka_t *cons, const char *topic)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(PARTS);
    for (int p = 0; p < PARTS; p++)
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = RD_KAFKA_OFFSET_END;
    if (rd_kafka_assign(cons, l) != 0)
        die("floor: assign failed");
    rd_kafka_topic_partition_list_destroy(l);
}

/* Sends rate records/s for secs seconds (index i as the value, keys spread
 * over the partitions as user ids are), serving delivery reports between
 * sends with a 1 ms wait, then waits up to 2 s for the stragglers. */
static void floor_send(floor_run *f, rd_kafka_t *prod, const char *topic, double rate,
                       double secs)
{
    double t0 = now_s();
    char key[32];
    while (now_s() - t0 < secs) {
        for (; f->n < (long)((now_s() - t0) * rate) && f->n < f->cap; f->n++) {
            int kl = snprintf(key, sizeof key, "u%ld", f->n * 7919);
            f->sent[f->n] = now_s();
            if (rd_kafka_producev(prod, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, (size_t)kl),
                                  RD_KAFKA_V_VALUE(&f->n, sizeof f->n),
                                  RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END))
                die("floor: produce failed");
        }
        rd_kafka_poll(prod, 1);
    }
    for (double end = now_s() + 2; now_s() < end && rd_kafka_outq_len(prod) > 0;)
        rd_kafka_poll(prod, 10);
    usleep(200000);         /* the last fetches */
}

/* p50 and p99 (ms) of b[i] - a[i] over the records after the warm-up
 * (from index from); a record never seen counts as the whole run. */
static void floor_quantiles(const double *a, const double *b, long from, long n,
                            double *p50, double *p99)
{
    long m = n - from;
    double *d = malloc(sizeof *d * (size_t)(m > 0 ? m : 1));
    for (long i = from; i < n; i++)
        d[i - from] = b[i] > 0 ? 1000 * (b[i] - a[i]) : 1e6;
    qsort(d, (size_t)m, sizeof *d, cmp_double);
    *p50 = m > 0 ? d[m / 2] : -1;
    *p99 = m > 0 ? d[(long)(m * 0.99)] : -1;
    free(d);
}

/* One floor measurement: warm_s then secs at rate on topic with the
 * producer's and consumer's settings (NULL-terminated key/value lists).
 * Prints one JSON line named what; returns the fetched p99 (ms), and the
 * acknowledged p99 in *ack99 unless it is NULL. */
static double bench_kafka_floor(const char *what, const char *topic, double rate, double warm_s,
                                double secs, const char *const *pkv, const char *const *ckv,
                                double *ack99)
{
    floor_run f = {.cap = (long)(rate * (warm_s + secs)) + 16};
    f.sent = calloc((size_t)f.cap, sizeof *f.sent);
    f.acked = calloc((size_t)f.cap, sizeof *f.acked);
    f.fetched = calloc((size_t)f.cap, sizeof *f.fetched);
    rd_kafka_t *prod = floor_client(RD_KAFKA_PRODUCER, pkv, &f);
    f.cons = floor_client(RD_KAFKA_CONSUMER, ckv, NULL);
    rd_kafka_poll_set_consumer(f.cons);
    floor_assign(f.cons, topic);
    pthread_t th;
    pthread_create(&th, NULL, floor_consume, &f);
    usleep(500000);         /* connections up, the first fetch at the end offsets */
    floor_send(&f, prod, topic, rate, warm_s + secs);
    atomic_store(&f.stop, 1);
    pthread_join(th, NULL);
    long from = (long)(rate * warm_s);
    double a50, a99, f50, f99;
    floor_quantiles(f.sent, f.acked, from, f.n, &a50, &a99);
    floor_quantiles(f.sent, f.fetched, from, f.n, &f50, &f99);
    printf("{\"bench\":\"%s\",\"rate\":%.0f,\"records\":%ld,\"produce_to_ack_ms\":[%.2f,%.2f],"
           "\"produce_to_fetch_ms\":[%.2f,%.2f],\"unit\":\"ms [p50,p99]\",\"producer\":{",
           what, rate, f.n - from, a50, a99, f50, f99);
    for (int i = 0; pkv[i]; i += 2)
        printf("%s\"%s\":\"%s\"", i ? "," : "", pkv[i], pkv[i + 1]);
    printf("},\"consumer\":{");
    for (int i = 0; ckv[i]; i += 2)
        printf("%s\"%s\":\"%s\"", i ? "," : "", ckv[i], ckv[i + 1]);
    printf("}}\n");
    fflush(stdout);
    rd_kafka_consumer_close(f.cons);
    rd_kafka_destroy(f.cons);
    rd_kafka_destroy(prod);
    free(f.sent);
    free(f.acked);
    free(f.fetched);
    if (ack99)
        *ack99 = a99;
    return f99;
}

/* ---- the broker path's own sustainable rate ---------------------------- */

/* One stream of a probe: a producer and a consumer on a topic of its own. */
typedef struct floor_stream {
    floor_run   f;
    rd_kafka_t *prod;
    pthread_t   th;
} floor_stream;

static void floor_stream_start(floor_stream *s, const char *topic, long cap,
                               const char *const *pkv, const char *const *ckv)
{
    s->f = (floor_run){.cap = cap};
    s->f.sent = calloc((size_t)cap, sizeof *s->f.sent);
    s->f.acked = calloc((size_t)cap, sizeof *s->f.acked);
    s->f.fetched = calloc((size_t)cap, sizeof *s->f.fetched);
    s->prod = floor_client(RD_KAFKA_PRODUCER, pkv, &s->f);
    s->f.cons = floor_client(RD_KAFKA_CONSUMER, ckv, NULL);
    rd_kafka_poll_set_consumer(s->f.cons);
    floor_assign(s->f.cons, topic);
    pthread_create(&s->th, NULL, floor_consume, &s->f);
}

static void floor_stream_stop(floor_stream *s)
{
    atomic_store(&s->f.stop, 1);
    pthread_join(s->th, NULL);
    rd_kafka_consumer_close(s->f.cons);
    rd_kafka_destroy(s->f.cons);
    /* A probe that fell behind leaves records queued: dropped, not waited
     * for (they are counted already), and without librdkafka's warning. */
    rd_kafka_purge(s->prod, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(s->prod, 0);
    rd_kafka_destroy(s->prod);
    free(s->f.sent);
    free(s->f.acked);
    free(s->f.fetched);
}

/* Records of s not fetched yet. */
static long floor_unfetched(const floor_stream *s)
{
    long n = 0;
    for (long i = 0; i < s->f.n; i++)
        n += s->f.fetched[i] == 0;
    return n;
}

/* One probe of floor_sustainable: both streams at rate for warm_s + secs;
 * 1 when, as the worker's probe asks (live_sustainable), the records sent
 * after the warm-up have a send -> fetched p50 under 100 ms and at the end
 * neither stream has more than a quarter second of records (or 50) not
 * fetched. */
static int floor_probe(const char *const topics[2], double rate, double warm_s, double secs,
                       const char *const *pkv, const char *const *ckv)
{
    floor_stream s[2];
    char key[32];
    long cap = (long)(rate * (warm_s + secs)) + 16;
    for (int k = 0; k < 2; k++)
        floor_stream_start(&s[k], topics[k], cap, pkv, ckv);
    usleep(500000);         /* connections up, the first fetch at the end offsets */
    double t0 = now_s();
    while (now_s() - t0 < warm_s + secs) {
        long due = (long)((now_s() - t0) * rate);
        for (int k = 0; k < 2; k++) {
            floor_run *f = &s[k].f;
            for (; f->n < due && f->n < f->cap; f->n++) {
                int kl = snprintf(key, sizeof key, "u%ld", f->n * 7919);
                f->sent[f->n] = now_s();
                if (rd_kafka_producev(s[k].prod, RD_KAFKA_V_TOPIC(topics[k]),
                                      RD_KAFKA_V_KEY(key, (size_t)kl),
                                      RD_KAFKA_V_VALUE(&f->n, sizeof f->n),
                                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END))
                    die("floor: produce failed");
            }
            rd_kafka_poll(s[k].prod, k);        /* the 1 ms wait is the second's */
        }
    }
    long behind = 0, from = (long)(rate * warm_s), m = 0;
    for (int k = 0; k < 2; k++) {
        long u = floor_unfetched(&s[k]);
        behind = u > behind ? u : behind;
    }
    double *d = malloc(sizeof *d * (size_t)(2 * cap));
    for (int k = 0; k < 2; k++)
        for (long i = from; i < s[k].f.n; i++)
            d[m++] = s[k].f.fetched[i] > 0 ? 1000 * (s[k].f.fetched[i] - s[k].f.sent[i]) : 1e6;
    qsort(d, (size_t)m, sizeof *d, cmp_double);
    double p50 = m > 0 ? d[m / 2] : 1e6;
    free(d);
    for (int k = 0; k < 2; k++)
        floor_stream_stop(&s[k]);
    int ok = p50 < 100 && behind <= (rate * 0.25 > 50 ? rate * 0.25 : 50);
    fprintf(stderr, "bench_worker: floor probe %.0f events/s x 2 streams: %ld records behind, "
            "p50 %.1f ms: %s\n", rate, behind, p50, ok ? "kept up" : "fell behind");
    return ok;
}

/* The broker path's own sustainable rate, the ceiling of the worker's live
 * rate: librdkafka's mock broker runs on one thread in the same 2 cores,
 * and a live worker makes it carry every event twice (the events in, the
 * lists out, each produced and fetched by a client of its own), so this
 * probes two bare producer -> consumer streams (topics[0], topics[1]) at
 * the worker probe's rates (fractions frac[0..n) of base, then halfway
 * between the first that failed and the last that passed), with its
 * criterion, no worker. Returns the highest rate that passed. */
static double floor_sustainable(const char *const topics[2], double base, const double *frac,
                                int n, const char *const *pkv, const char *const *ckv)
{
    double best = 0;
    int i = 0;
    for (; i < n && floor_probe(topics, base * frac[i], 1.0, 3.0, pkv, ckv); i++)
        best = base * frac[i];
    if (i > 0 && i < n && floor_probe(topics, base * (frac[i - 1] + frac[i]) / 2, 1.0, 3.0,
                                      pkv, ckv))
        best = base * (frac[i - 1] + frac[i]) / 2;
    return best;
}

/* "k=v,k=v" into kv as k, v, ..., NULL (in buf). */
static void floor_kv(const char *s, char *buf, size_t len, const char **kv, int cap)
{
    int n = 0;
    snprintf(buf, len, "%s", s ? s : "");
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t && n + 3 < cap;
         t = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(t, '=');
        if (eq == NULL)
            die("HL_FLOOR_P/C: key=value pairs, comma-separated");
        *eq = '\0';
        kv[n++] = t;
        kv[n++] = eq + 1;
    }
    kv[n] = NULL;
}

#endif
