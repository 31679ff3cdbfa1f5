/* demo.c - `halflife demo`: the whole system on one machine.
 *
 * The worker with its embedded broker (no kafka.bootstrap.servers), a model
 * (trained at start on the synthetic stream of synth.c, or --model), a
 * producer thread replaying a stream into the input topic (synthetic by
 * default, or --input FILE --format F), and a status line each second:
 * events/s, lists/s, p99 event-to-publish latency, users, and the
 * prequential hit rate: before an event is produced, is its item in the
 * list the worker last published for that user (test, then learn)?
 *
 * The worker tells the demo about each list through hl_worker_opts.on_list;
 * the demo keeps each user's newest list in a small hash map under one
 * mutex, which the producer thread reads. Nothing here is on the worker's
 * hot path except that callback. */
#include "cmd.h"
#include "cmd_common.h"
#include "config.h"
#include "http.h"
#include "dataset.h"
#include "decay.h"
#include "fnv.h"
#include "log.h"
#include "pace.h"
#include "synth.h"
#include "train.h"
#include "worker.h"

#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define SEEN_K      10      /* list items remembered per user for the hit rate */
#define SAMPLE_LEN  512

typedef struct entry {
    char    *user;
    char    *items;          /* SEEN_K NUL-separated ids, n_items of them */
    int      n_items;
    uint32_t *recent;        /* hashes of the user's last `history` items, a ring */
    int      n_recent, head;
} entry;

typedef struct demo {
    /* arguments */
    double       duration_s;
    double       rate;               /* events/s; 0 = as fast as possible */
    const char  *model_path, *input, *format;
    /* parts */
    hl_dataset_reader *in;           /* --input, opened before anything starts */
    hl_worker   *w;
    hl_producer *prod;
    hl_codec    *codec;
    const char  *topic;
    char         snapdir[64];
    /* users' newest lists, under mu */
    pthread_mutex_t mu;
    entry       *map;
    size_t       cap, used;
    char         sample[3][SAMPLE_LEN];
    int          n_sample;
    atomic_int   want_sample;
    /* counters */
    atomic_ullong produced, trials, hits, repeats;
    int          history;            /* state.history: what the lists exclude */
    uint64_t     prev_trials, prev_hits;     /* status line's window */
    uint64_t     prev_repeats, prev_produced;
    atomic_int   stop;
    int          input_done;
    int          worker_rc;          /* hl_worker_run's, once it returned */
} demo;

static volatile sig_atomic_t demo_signalled;

/* The demo's scratch files, for a second Ctrl-C: its snapshot directory
 * and, while it trains, the temporary model file. Set before the handler
 * can need them and never freed. */
static char demo_scratch_dir[64], demo_scratch_file[64];

/* Removes dir and the files in it with async-signal-safe calls only
 * (opendir allocates): open, getdents64, unlinkat, rmdir. */
static void remove_dir_now(const char *dir)
{
    char buf[2048];
    ssize_t n;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    while (fd >= 0 && (n = getdents64(fd, buf, sizeof buf)) > 0) {
        for (ssize_t off = 0; off < n;) {
            const struct dirent64 *de = (const struct dirent64 *)(buf + off);
            if (de->d_name[0] != '.')
                unlinkat(fd, de->d_name, 0);
            off += de->d_reclen;
        }
    }
    if (fd >= 0)
        close(fd);
    rmdir(dir);
}

/* A second signal quits at once (the first one's stop may wait up to
 * seconds on the broker), but takes the scratch files along: the demo's
 * data is gone with its embedded broker, and a newcomer who pressed Ctrl-C
 * twice found /tmp/halflife-demo-snap-* directories (snapshots of MBs)
 * piling up. */
static void on_signal(int sig)
{
    if (demo_signalled) {
        if (demo_scratch_file[0])
            unlink(demo_scratch_file);
        if (demo_scratch_dir[0])
            remove_dir_now(demo_scratch_dir);
        _exit(128 + sig);
    }
    demo_signalled = 1;
}

/* ---- users' newest lists ----------------------------------------------- */

static uint64_t hash(const char *s, size_t n)
{
    return hl_fnv1a64(HL_FNV64_HLM, s, n);
}

/* Under mu. The entry of user, created if absent (NULL when out of memory). */
static entry *map_get(demo *d, const char *user, size_t n, int create)
{
    if (create && (d->used + 1) * 2 > d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4096;
        entry *m = calloc(cap, sizeof *m);
        if (m == NULL)
            return NULL;
        for (size_t i = 0; i < d->cap; i++) {
            if (!d->map[i].user)
                continue;
            size_t j = hash(d->map[i].user, strlen(d->map[i].user)) & (cap - 1);
            while (m[j].user)
                j = (j + 1) & (cap - 1);
            m[j] = d->map[i];
        }
        free(d->map);
        d->map = m;
        d->cap = cap;
    }
    if (d->cap == 0)
        return NULL;
    for (size_t j = hash(user, n) & (d->cap - 1);; j = (j + 1) & (d->cap - 1)) {
        entry *e = &d->map[j];
        if (e->user == NULL) {
            if (!create)
                return NULL;
            e->user = strndup(user, n);
            d->used++;
            return e;
        }
        if (strlen(e->user) == n && memcmp(e->user, user, n) == 0)
            return e;
    }
}

static void format_sample(demo *d, const hl_codec_list *l)
{
    char *s = d->sample[d->n_sample % 3];
    int n = snprintf(s, SAMPLE_LEN, "  %.*s ->", (int)l->user_len, l->user);
    for (int i = 0; i < l->n_items && i < 4 && n < SAMPLE_LEN; i++) {
        const hl_codec_rec *r = &l->items[i];
        n += snprintf(s + n, SAMPLE_LEN - (size_t)n, " %.*s (%.2f, because %.*s)",
                      (int)r->item_len, r->item, (double)r->score,
                      r->because ? (int)r->because_len : 1, r->because ? r->because : "-");
    }
    d->n_sample++;
}

/* on_list: called by worker threads for every list produced. */
static void on_list(void *arg, const hl_codec_list *l)
{
    demo *d = arg;
    pthread_mutex_lock(&d->mu);
    entry *e = map_get(d, l->user, l->user_len, 1);
    if (e != NULL) {
        size_t need = 0;
        int n = l->n_items < SEEN_K ? l->n_items : SEEN_K;
        for (int i = 0; i < n; i++)
            need += l->items[i].item_len + 1;
        char *buf = realloc(e->items, need ? need : 1);
        if (buf != NULL) {
            e->items = buf;
            for (int i = 0; i < n; i++) {
                memcpy(buf, l->items[i].item, l->items[i].item_len);
                buf[l->items[i].item_len] = '\0';
                buf += l->items[i].item_len + 1;
            }
            e->n_items = n;
        }
    }
    int one = 1;
    if (atomic_compare_exchange_strong(&d->want_sample, &one, 0))
        format_sample(d, l);
    pthread_mutex_unlock(&d->mu);
}

/* Under mu: 1 if the item (hash h) is among the user's last `history`
 * items, then remembers it as the newest. */
static int seen_before(demo *d, entry *e, uint32_t h)
{
    int seen = 0;
    if (e->recent == NULL && (e->recent = calloc((size_t)d->history, sizeof *e->recent)) == NULL)
        return 0;
    for (int i = 0; i < e->n_recent && !seen; i++)
        seen = e->recent[i] == h;
    e->recent[e->head] = h;
    e->head = (e->head + 1) % d->history;
    if (e->n_recent < d->history)
        e->n_recent++;
    return seen;
}

/* Test, then learn: was item in the user's newest list? -1 if no list yet,
 * -2 when the user had the item among its last state.history events: the
 * lists exclude those (recs.exclude.seen), so such a repeat can never be a
 * hit and is counted apart. Without that split the rate fell from 10% to
 * 5% in three minutes as users' histories filled with the popular items of
 * their topics, which they go back to (the synthetic stream is stationary:
 * with recs.exclude.seen=false it stays at 15%). */
static int hit(demo *d, const char *user, size_t ulen, const char *item, size_t ilen)
{
    int r = -1;
    pthread_mutex_lock(&d->mu);
    entry *e = map_get(d, user, ulen, 1);
    int repeat = e != NULL && d->history > 0 && seen_before(d, e, (uint32_t)hash(item, ilen));
    if (repeat)
        r = -2;
    else if (e != NULL && e->n_items > 0) {
        r = 0;
        const char *p = e->items;
        for (int i = 0; i < e->n_items && !r; i++, p += strlen(p) + 1)
            r = strlen(p) == ilen && memcmp(p, item, ilen) == 0;
    }
    pthread_mutex_unlock(&d->mu);
    return r;
}

/* ---- the producer thread ----------------------------------------------- */

static void send_event(demo *d, const hl_codec_event *ev)
{
    uint8_t buf[1024];
    char err[256];
    int h = hit(d, ev->user, ev->user_len, ev->item, ev->item_len);
    if (h == -2)
        atomic_fetch_add(&d->repeats, 1);
    if (h >= 0) {
        atomic_fetch_add(&d->trials, 1);
        atomic_fetch_add(&d->hits, (uint64_t)h);
    }
    int len = hl_codec_encode_event(d->codec, ev, buf, sizeof buf);
    if (len < 0)
        return;
    if (hl_producer_send(d->prod, d->topic, -1, ev->user, ev->user_len, buf, (size_t)len,
                         NULL, NULL, err, sizeof err) != 0) {
        hl_log(HL_LOG_WARN, "demo_produce_failed", "err=\"%s\"", err);
        return;
    }
    atomic_fetch_add(&d->produced, 1);
}

/* Event n of a replay, sent at the demo's rate; every 256th also serves
 * the producer's delivery reports. */
static void send_paced(demo *d, hl_pace *pc, const hl_codec_event *ev, uint64_t n)
{
    send_event(d, ev);
    hl_pace_sent(pc);
    if ((n & 255) == 0)
        hl_producer_poll(d->prod, 0);
}

static void replay_synthetic(demo *d)
{
    hl_synth_opts so;
    hl_synth_opts_default(&so);
    so.seed = 2;                 /* same items and topics as training, new draws */
    hl_synth *s = hl_synth_create(&so, NULL, 0);
    hl_synth_event se;
    hl_pace pc;
    hl_pace_init(&pc, d->rate);
    for (uint64_t n = 0; s && !atomic_load(&d->stop); n++) {
        hl_synth_next(s, &se);
        hl_codec_event ev = {se.user, se.user_len, se.item, se.item_len, se.type,
                             se.ts_ms, se.weight, se.has_weight};
        send_paced(d, &pc, &ev, n);
    }
    hl_synth_destroy(s);
}

/* --input opened and its --format checked before anything starts: both
 * were first met by the producer thread, so a misspelt format or a missing
 * file left the demo running its whole duration (by default until Ctrl-C)
 * with nothing to replay, and exit 0. 0, or 2 (usage) or 1 said. */
static int open_input(demo *d)
{
    char err[512];
    hl_dataset_opts o = {.seq_step_ms = 3600 * 1000};
    if (hl_dataset_format_parse(d->format, &o.format, err, sizeof err) != 0) {
        fprintf(stderr, "halflife demo: --format: %s\n", err);
        return 2;
    }
    if ((d->in = hl_dataset_open(d->input, &o, err, sizeof err)) == NULL) {
        fprintf(stderr, "halflife demo: --input: %s\n", err);
        return 1;
    }
    return 0;
}

/* The end of the replay, said: how many events, and the bad lines the
 * reader skipped (the first few by number), as `halflife produce` says. */
static void input_done(demo *d, int rc, const char *err)
{
    hl_dataset_stats st;
    hl_dataset_stats_get(d->in, &st);
    if (rc < 0)
        hl_log(HL_LOG_ERROR, "demo_input_failed", "file=%s err=\"%s\"", d->input, err);
    for (int i = 0; i < 8 && i < st.bad_lines; i++)
        hl_log(HL_LOG_WARN, "bad_line", "file=%s line=%lld why=\"%s\"", d->input,
               (long long)st.first_bad_line[i], st.first_bad_why[i]);
    hl_log(HL_LOG_INFO, "demo_input_done", "events=%llu bad_lines=%lld",
           (unsigned long long)atomic_load(&d->produced), (long long)st.bad_lines);
}

static void replay_file(demo *d)
{
    char err[512] = "";
    hl_dataset_event de;
    hl_pace pc;
    int rc = 0;
    hl_pace_init(&pc, d->rate);
    for (uint64_t n = 0; !atomic_load(&d->stop) &&
                         (rc = hl_dataset_next(d->in, &de, err, sizeof err)) == 1; n++) {
        hl_codec_event ev = {de.user, de.user_len, de.item, de.item_len, de.type,
                             de.ts_ms, de.weight, de.has_weight};
        send_paced(d, &pc, &ev, n);
    }
    input_done(d, rc, err);
}

static void *producer_main(void *arg)
{
    demo *d = arg;
    if (d->input)
        replay_file(d);
    else
        replay_synthetic(d);
    d->input_done = 1;
    return NULL;
}

static void *worker_main(void *arg)
{
    demo *d = arg;
    d->worker_rc = hl_worker_run(d->w, NULL);
    return NULL;
}

/* ---- the model --------------------------------------------------------- */

static void train_progress(void *ctx, const hl_train_progress *p)
{
    if (p->in_epoch)            /* the demo's training takes seconds: epoch ends suffice */
        return;
    hl_log(HL_LOG_INFO, "demo_train_epoch", "epoch=%d/%d loss=%.4f examples=%lld",
           p->epoch, p->epochs, p->loss, (long long)p->examples);
}

/* Fills arrays with n synthetic events for training. */
static int synth_data(hl_train_data *td, int64_t n, hl_synth_opts *so)
{
    int32_t *user = malloc(sizeof *user * (size_t)n), *item = malloc(sizeof *item * (size_t)n);
    uint8_t *type = malloc((size_t)n);
    int64_t *ts = malloc(sizeof *ts * (size_t)n);
    float *wt = malloc(sizeof *wt * (size_t)n);
    hl_synth *s = hl_synth_create(so, NULL, 0);
    if (!user || !item || !type || !ts || !wt || !s) {
        free(user); free(item); free(type); free(ts); free(wt);
        hl_synth_destroy(s);
        return HL_ENOMEM;
    }
    hl_synth_event ev;
    for (int64_t i = 0; i < n; i++) {
        hl_synth_next(s, &ev);
        user[i] = ev.user_row;
        item[i] = ev.item_row;
        type[i] = (uint8_t)ev.type;
        ts[i] = ev.ts_ms;
        wt[i] = ev.weight;
    }
    hl_synth_destroy(s);
    *td = (hl_train_data){n, so->n_users, so->n_items, user, item, type, ts, wt};
    return 0;
}

static void free_data(hl_train_data *td)
{
    free((void *)td->user); free((void *)td->item); free((void *)td->type);
    free((void *)td->ts_ms); free((void *)td->weight);
}

static int write_trained(const hl_train_result *res, int32_t n_items, const char *path,
                         char *err, size_t errlen)
{
    char **ids = calloc((size_t)n_items, sizeof *ids);
    uint32_t *lens = calloc((size_t)n_items, sizeof *lens);
    int rc = HL_ENOMEM;
    if (ids && lens) {
        rc = 0;
        for (int32_t i = 0; i < n_items && rc == 0; i++) {
            if ((ids[i] = malloc(16)) == NULL)
                rc = HL_ENOMEM;
            else
                lens[i] = (uint32_t)hl_synth_item_id(i, ids[i]);
        }
    }
    if (rc == 0) {
        hl_model_parts p;
        hl_train_result_parts(res, (const char *const *)ids, lens, &p);
        snprintf(p.info.version, sizeof p.info.version, "demo-synthetic");
        rc = hl_model_write(path, &p, err, errlen);
    }
    for (int32_t i = 0; ids && i < n_items; i++)
        free(ids[i]);
    free(ids);
    free(lens);
    return rc;
}

/* Trains a small model on the synthetic stream into a temporary file and
 * opens it (the mapping outlives the unlinked file). */
static hl_model *train_model(char *err, size_t errlen)
{
    hl_synth_opts so;
    hl_synth_opts_default(&so);
    hl_train_data td;
    hl_train_opts to;
    hl_train_result res;
    hl_model *m = NULL;
    char *path = demo_scratch_file;
    snprintf(path, sizeof demo_scratch_file, "/tmp/halflife-demo-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) {
        hl_err(err, errlen, HL_EIO, "demo: temporary model file: %s", strerror(errno));
        path[0] = '\0';
        return NULL;
    }
    close(fd);
    if (synth_data(&td, 60000, &so) != 0) {
        hl_err(err, errlen, HL_ENOMEM, "demo: out of memory");
        unlink(path);
        path[0] = '\0';
        return NULL;
    }
    hl_train_opts_default(&to);
    /* A small fixed recipe, quick on a laptop. Its heads fit the stream it
     * serves: a user's events are about 2,000 s of stream time apart and
     * its topics change every ~50 of them, and training sees the first
     * 60,000 s only, so heads up to a few hours are at their steady mass
     * there as in the replay. With 1h/1d/30d the 1d and 30d heads grew for
     * days of replay beyond any mass training had seen, and hit@10 fell
     * from 7.4% to 5.7% within ten minutes (README, "Two commands"). */
    static const double demo_heads_ms[] = {15 * 60e3, 3600e3, 4 * 3600e3};
    to.dim = 32;
    to.hidden[0] = 64;
    to.epochs = 3;
    to.max_history = 64;
    to.n_heads = (int)(sizeof demo_heads_ms / sizeof demo_heads_ms[0]);
    for (int h = 0; h < to.n_heads; h++)
        to.half_life_ms[h] = demo_heads_ms[h];
    to.learn_half_lives = 0;
    to.tie = 0;
    to.dropout = 0.3f;
    to.progress = train_progress;
    double t0 = hl_now_mono_s();
    hl_log(HL_LOG_INFO, "demo_train", "events=%lld users=%d items=%d dim=%d epochs=%d",
           (long long)td.n_events, td.n_users, td.n_items, to.dim, to.epochs);
    openblas_set_num_threads(2);
    if (hl_train_run(&to, &td, &res, err, errlen) == 0) {
        if (write_trained(&res, td.n_items, path, err, errlen) == 0)
            m = hl_model_open(path, err, errlen);
        hl_train_result_reset(&res);
    }
    hl_log(HL_LOG_INFO, "demo_trained", "seconds=%.1f ok=%d", hl_now_mono_s() - t0, m != NULL);
    free_data(&td);
    unlink(path);
    path[0] = '\0';
    return m;
}

/* ---- status ------------------------------------------------------------ */

/* The hit rate of the last second (not since start, which hides a trend). */
static double window_hit_rate(demo *d)
{
    uint64_t trials = atomic_load(&d->trials), hits = atomic_load(&d->hits);
    uint64_t dt = trials - d->prev_trials, dh = hits - d->prev_hits;
    d->prev_trials = trials;
    d->prev_hits = hits;
    return dt ? 100.0 * (double)dh / (double)dt : 0.0;
}

/* Of the last second's events, the share on items the user had among its
 * last state.history events (excluded from lists, so never hits). */
static double repeat_share(demo *d)
{
    uint64_t rep = atomic_load(&d->repeats), all = atomic_load(&d->produced);
    uint64_t dr = rep - d->prev_repeats, da = all - d->prev_produced;
    d->prev_repeats = rep;
    d->prev_produced = all;
    return da ? 100.0 * (double)dr / (double)da : 0.0;
}

static void status_line(demo *d, hl_worker_stats *prev, double dt, int show_stages)
{
    hl_worker_stats st;
    hl_worker_stats_get(d->w, &st);
    uint64_t produced = atomic_load(&d->produced);
    double ev_s = (double)(st.consumed - prev->consumed) / dt;
    double lag_s = d->rate > 0 && produced > st.consumed
                   ? (double)(produced - st.consumed) / d->rate : 0.0;
    printf("events/s %6.0f | lists/s %6.0f | publish p50 %5.1f p99 %6.1f ms (worker p99 %5.1f) | "
           "lag %5.2f s | "
           "users %6llu | hit@%d %4.1f%% (repeats %2.0f%%) | produced %llu consumed %llu invalid %llu skipped %llu\n",
           ev_s, (double)(st.lists - prev->lists) / dt, st.lat_p50_s * 1000.0,
           st.lat_p99_s * 1000.0, st.worker_p99_s * 1000.0, lag_s, (unsigned long long)st.users, SEEN_K,
           window_hit_rate(d), repeat_share(d), (unsigned long long)produced, (unsigned long long)st.consumed,
           (unsigned long long)st.invalid, (unsigned long long)st.skipped);
    /* Until the group gives the worker its partition (the embedded broker
     * holds a new group's first join about 3 s) and it reads, events wait
     * in the topic: no slowness, and the stage histograms show nothing. */
    char why[160] = "its partition was just assigned";
    if (lag_s > 1.0 && (!hl_worker_ready(d->w, why, sizeof why) || st.consumed == 0))
        printf("  the worker has not started reading yet (%s): the events wait in the "
               "topic until then, a few seconds after start\n", why);
    else if (lag_s > 1.0)
        printf("  the worker is %.1f s behind the producer: see halflife_stage_seconds on "
               "/metrics for where the time goes\n", lag_s);
    if (show_stages)
        printf("  event to publish by stage, p50/p99 ms: broker %.1f/%.1f | wait %.1f/%.1f | "
               "apply %.1f/%.1f | refresh %.1f/%.1f | produce %.1f/%.1f | deliver %.1f/%.1f\n",
               st.stage_p50_s[0] * 1e3, st.stage_p99_s[0] * 1e3, st.stage_p50_s[1] * 1e3,
               st.stage_p99_s[1] * 1e3, st.stage_p50_s[2] * 1e3, st.stage_p99_s[2] * 1e3,
               st.stage_p50_s[3] * 1e3, st.stage_p99_s[3] * 1e3, st.stage_p50_s[4] * 1e3,
               st.stage_p99_s[4] * 1e3, st.stage_p50_s[5] * 1e3, st.stage_p99_s[5] * 1e3);
    if (st.skipped > prev->skipped)
        printf("  %llu input records were deleted by the embedded broker before the worker "
               "read them (it keeps 5 MiB per partition)\n",
               (unsigned long long)(st.skipped - prev->skipped));
    *prev = st;
}

static void print_samples(demo *d)
{
    pthread_mutex_lock(&d->mu);
    int n = d->n_sample < 3 ? d->n_sample : 3;
    if (n > 0)
        printf("sample lists (item, score, because):\n");
    for (int i = 0; i < n; i++)
        printf("%s\n", d->sample[i]);
    pthread_mutex_unlock(&d->mu);
    fflush(stdout);
}

static void watch(demo *d)
{
    hl_worker_stats prev;
    memset(&prev, 0, sizeof prev);
    double t0 = hl_now_mono_s(), last = t0;
    for (int tick = 1; !demo_signalled; tick++) {
        struct timespec ts = {0, 100 * 1000000L};
        while (!demo_signalled && hl_now_mono_s() < t0 + tick)
            nanosleep(&ts, NULL);
        double now = hl_now_mono_s();
        status_line(d, &prev, now - last, tick % 5 == 0);
        last = now;
        if (tick % 5 == 0)
            print_samples(d);
        atomic_store(&d->want_sample, 1);
        fflush(stdout);
        if (d->duration_s > 0 && now - t0 >= d->duration_s)
            break;
    }
}

/* After the producer stopped: waits (at most 10 s, or until a second
 * signal) for the worker to consume what was produced, so a stop leaves
 * nothing unread, and logs both counts. */
static void drain(demo *d)
{
    hl_worker_stats st;
    uint64_t produced = atomic_load(&d->produced);
    double until = hl_now_mono_s() + 10;
    struct timespec ts = {0, 20 * 1000000L};
    hl_worker_stats_get(d->w, &st);
    while (st.consumed + st.skipped < produced && hl_now_mono_s() < until) {
        nanosleep(&ts, NULL);
        hl_worker_stats_get(d->w, &st);
    }
    hl_log(HL_LOG_INFO, "demo_stopped", "produced=%llu consumed=%llu skipped=%llu",
           (unsigned long long)produced, (unsigned long long)st.consumed,
           (unsigned long long)st.skipped);
}

/* ---- arguments and lifecycle ------------------------------------------- */

static void demo_usage(FILE *f)
{
    fprintf(f, "usage: halflife demo [--duration S] [--model M] [--input FILE --format F]\n"
               "                     [--rate N] [-X key=value]...\n\n"
               "Runs the worker with an embedded broker, a model (trained now on a\n"
               "synthetic stream whose users' interests drift, unless --model), and a\n"
               "producer replaying a stream (synthetic unless --input), printing a status\n"
               "line each second. Ctrl-C stops it (default: runs until then).\n\n"
               "  --duration S   stop after S seconds (0: until Ctrl-C)\n"
               "  --model M      use this .hlm instead of training one\n"
               "  --input FILE   replay a dataset; --format movielens-csv|movielens-dat|seq|\n"
               "                 taobao|events-csv\n"
               "  --rate N       events per second (default 5000; 0: as fast as possible)\n"
               "  -X key=value   any key of 'halflife run --help'; HALFLIFE_<KEY> variables\n"
               "                 apply too, as for run (-X wins)\n");
}

/* -1 to go on, else the exit status. The options go through the parser
 * broker, produce and items share, so a number is refused whole: atof()
 * read "--duration ten" as 0 (run until Ctrl-C), "--duration 1m" as one
 * second and "--rate -100" as no pacing at all, without a word. */
static int demo_parse(demo *d, hl_config *cfg, int argc, char **argv)
{
    hl_cmd_xs xs;
    char err[512];
    int rc = -1;
    d->rate = 5000;
    const hl_arg opts[] = {
        {"--duration", HL_ARG_NUM, 0, 1e9, &d->duration_s},
        {"--rate", HL_ARG_NUM, 0, 1e9, &d->rate},
        {"--model", HL_ARG_STR, 0, 0, &d->model_path},
        {"--input", HL_ARG_STR, 0, 0, &d->input},
        {"--format", HL_ARG_STR, 0, 0, &d->format},
    };
    hl_cmd_args args = {.cmd = "demo", .opts = opts, .usage = demo_usage, .xs = &xs,
                        .n_opts = (int)(sizeof opts / sizeof opts[0])};
    int prc = hl_cmd_parse_args(&args, argc, argv);
    if (prc != 0)
        return prc == 1 ? 0 : 2;
    if (d->input && !d->format) {
        fprintf(stderr, "halflife demo: --input needs --format\n");
        rc = 2;
    } else if (d->input) {
        int irc = open_input(d);
        rc = irc ? irc : rc;
    }
    /* The same layers as run's, bar the file: HALFLIFE_* variables, then -X. */
    if (rc < 0 && hl_config_load(cfg, NULL, environ, xs.v, xs.n, err, sizeof err) != 0) {
        fprintf(stderr, "halflife demo: %s\n", err);
        rc = 2;
    }
    /* The demo's own producer writes schema id 1, which means our schema
     * only without a registry: the demo stays registry-free. */
    if (rc < 0 && hl_config_str(cfg, "schema.registry.url") != NULL) {
        fprintf(stderr, "halflife demo: runs without a Schema Registry (its producer writes "
                "schema id 1); use schema.registry.url with halflife run and halflife produce\n");
        rc = 2;
    }
    if (rc < 0 && hl_config_bool(cfg, "recs.exclude.seen"))
        d->history = (int)hl_config_int(cfg, "state.history");
    if (rc < 0 && !d->model_path)
        d->model_path = hl_config_str(cfg, "model.path");
    return rc;
}

/* The embedded broker (librdkafka 2.0.2's mock cluster) finds the message
 * set a fetch asks for by walking the partition's retained sets from the
 * oldest (rd_kafka_mock_msgset_find, "FIXME: Maintain an index"), keeps up
 * to 5 MiB of them per partition, and answers each fetch with one set. So
 * every set the worker reads costs a walk over all those retained: with
 * tiny sets (linger.ms=5 at 5,000 events/s over 4 partitions: 6 events, some
 * 9,000 sets per partition once the log is full) its one thread spent a
 * whole core walking after a minute and the worker fell behind for good.
 * The cost per second grows with (sets per second) x (sets retained), both
 * inversely with the events per set, so the producer lingers long enough
 * for about 25 events per set and partition, at most 50 ms (at low rates
 * the log then holds few, larger sets; tests/integration/test_live.py runs
 * the demo's rate for minutes and checks the lag and the watermarks). */
static int demo_linger_ms(double rate, int partitions)
{
    if (rate <= 0)
        return 5;               /* as fast as possible: sets fill anyway */
    double ms = 25.0 * 1000.0 * partitions / rate;
    return ms < 5 ? 5 : ms > 50 ? 50 : (int)ms;
}

static int demo_start(demo *d, hl_config *cfg, hl_model *m, hl_metrics *reg,
                      char *err, size_t errlen)
{
    hl_worker_opts o;
    hl_log_set_level(hl_config_log_level(cfg));
    hl_config_worker_opts(cfg, &o);
    if (!hl_config_is_set(cfg, "snapshot.dir"))
        o.snapshot_dir = d->snapdir;    /* the embedded broker's data is gone after */
    if (!hl_config_is_set(cfg, "worker.threads"))
        o.threads = 1;          /* leave a core for the producer and the broker */
    /* One thread reads every partition anyway; each partition more makes
     * the embedded broker's message sets smaller and its scans longer
     * (see demo_linger). */
    if (!hl_config_is_set(cfg, "embedded.partitions"))
        o.embedded_partitions = 1;
    o.on_list = on_list;
    o.on_list_arg = d;
    if ((d->w = hl_worker_create(&o, m, reg, err, errlen)) == NULL)
        return HL_EINVAL;
    char linger[16];
    snprintf(linger, sizeof linger, "%d", demo_linger_ms(d->rate, o.embedded_partitions));
    hl_kafka_prop props[] = {{"bootstrap.servers", hl_worker_bootstrap(d->w)},
                             {"enable.idempotence", "false"}, {"linger.ms", linger}};
    if ((d->prod = hl_producer_create(props, 3, NULL, err, errlen)) == NULL)
        return HL_EINVAL;
    hl_codec_opts co = o.codec;
    co.input_framing = HL_FRAMING_CONFLUENT;
    if ((d->codec = hl_codec_create(&co, err, errlen)) == NULL)
        return HL_EINVAL;
    d->topic = o.input_topic;
    return 0;
}

/* Removes the demo's snapshot directory and the files in it. */
static void remove_dir(const char *dir)
{
    DIR *dp = opendir(dir);
    struct dirent *de;
    char path[512];
    while (dp && (de = readdir(dp)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        unlink(path);
    }
    if (dp)
        closedir(dp);
    rmdir(dir);
}

static void demo_free(demo *d)
{
    if (d->snapdir[0])
        remove_dir(d->snapdir);
    for (size_t i = 0; i < d->cap; i++) {
        free(d->map[i].user);
        free(d->map[i].items);
        free(d->map[i].recent);
    }
    free(d->map);
    hl_codec_destroy(d->codec);
    hl_dataset_close(d->in);
    pthread_mutex_destroy(&d->mu);
}

/* SIGINT and SIGTERM end the demo; a scratch directory holds its snapshots
 * (the embedded broker's data is gone after, so they would be stale).
 * 0, or -1 logged. */
static int demo_prepare(demo *d)
{
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    snprintf(d->snapdir, sizeof d->snapdir, "/tmp/halflife-demo-snap-XXXXXX");
    if (mkdtemp(d->snapdir) == NULL) {
        hl_log(HL_LOG_ERROR, "demo_snapshot_dir", "err=\"%s\"", strerror(errno));
        d->snapdir[0] = '\0';
        return -1;
    }
    memcpy(demo_scratch_dir, d->snapdir, sizeof demo_scratch_dir);
    return 0;
}

/* /metrics on metrics.port, if set; a port that cannot be bound is a
 * warning, not the end of the demo. NULL when not serving. */
static hl_http *demo_metrics(demo *d, hl_config *cfg, hl_metrics *reg)
{
    char err[512];
    hl_http *http = NULL;
    int port = (int)hl_config_int(cfg, "metrics.port");
    if (port > 0 && (http = hl_http_start(hl_config_str(cfg, "metrics.bind"), port, reg,
                                          hl_worker_ready, hl_worker_live, d->w, err,
                                          sizeof err)) == NULL)
        hl_log(HL_LOG_WARN, "demo_no_metrics", "port=%d err=\"%s\"", port, err);
    else if (http)
        hl_log(HL_LOG_INFO, "metrics_listening", "url=http://localhost:%d/metrics", hl_http_port(http));
    return http;
}

/* Runs the worker and the producer until watch() returns, then stops the
 * producer first (its queued events delivered), lets the worker drain
 * them, and stops it. Returns hl_worker_run's status. */
static int demo_run(demo *d)
{
    pthread_t wt, pt;
    pthread_create(&wt, NULL, worker_main, d);
    pthread_create(&pt, NULL, producer_main, d);
    watch(d);
    atomic_store(&d->stop, 1);
    pthread_join(pt, NULL);
    hl_producer_destroy(d->prod, 5000);
    d->prod = NULL;
    drain(d);
    hl_worker_stop(d->w);
    pthread_join(wt, NULL);
    return d->worker_rc;
}

int hl_cmd_demo(int argc, char **argv)
{
    demo d;
    char err[512];
    int rc = 1;
    memset(&d, 0, sizeof d);
    pthread_mutex_init(&d.mu, NULL);
    hl_config *cfg = hl_config_create();
    hl_model *m = NULL;
    hl_metrics *reg = hl_metrics_create();
    hl_http *http = NULL;
    int prc = cfg ? demo_parse(&d, cfg, argc, argv) : 1;
    if (prc >= 0) {
        rc = prc;
        goto out;
    }
    if (demo_prepare(&d) != 0)
        goto out;
    m = d.model_path ? hl_model_open(d.model_path, err, sizeof err) : train_model(err, sizeof err);
    if (m == NULL) {
        hl_log(HL_LOG_ERROR, "demo_model", "err=\"%s\"", err);
        goto out;
    }
    if (demo_start(&d, cfg, m, reg, err, sizeof err) != 0) {
        hl_log(HL_LOG_ERROR, "demo_start_failed", "err=\"%s\"", err);
        goto out;
    }
    http = demo_metrics(&d, cfg, reg);
    if (demo_run(&d) != 0) {
        /* As in run.c: a failed run (a final snapshot unsaved, the group
         * not left in time) exits 1, and the worker may have abandoned
         * librdkafka handles whose threads still run, so nothing they use
         * is freed. */
        hl_http_stop(http);
        if (d.snapdir[0])
            remove_dir(d.snapdir);
        _exit(1);
    }
    rc = 0;
out:
    hl_http_stop(http);
    hl_producer_destroy(d.prod, 0);
    hl_worker_destroy(d.w);
    hl_metrics_destroy(reg);
    hl_model_close(m);
    hl_config_destroy(cfg);
    demo_free(&d);
    return rc;
}
