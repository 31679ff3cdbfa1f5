/* metrics.c - the registry of counters, gauges and histograms behind
 * /metrics, rendered in the Prometheus text exposition format 0.0.4.
 *
 * Two kinds of access with different costs. Registration and rendering are
 * rare (start, assignment, one scrape every few seconds) and take the
 * registry mutex. Updates are the hot path (every batch, every stage) and
 * take no lock: each value is a relaxed atomic, doubles are stored as their
 * uint64 bit pattern and added with a compare-and-swap loop. A scrape may
 * therefore see a histogram whose _sum is one observation ahead of its
 * buckets; _count is derived from the buckets at render time so that the
 * +Inf bucket and _count always agree, which Prometheus expects.
 *
 * Series are allocated one by one and never move or get freed before
 * hl_metrics_destroy() (or hl_metrics_drop() of that one series), so a
 * pointer returned by registration stays valid for the registry's life,
 * even across hl_metrics_hide().
 * This file does no I/O; http.c serves what hl_metrics_render() produces. */
#include "metrics.h"

#include "hl.h"
#include "utf8.h"

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum kind { K_COUNTER, K_GAUGE, K_HISTOGRAM };
static const char *const kind_names[] = {"counter", "gauge", "histogram"};

struct hl_counter   { _Atomic uint64_t n; };
struct hl_gauge     { _Atomic uint64_t bits; };     /* a double's bit pattern */
struct hl_histogram {
    const double     *bounds;       /* the family's n ascending bounds */
    int               n;
    _Atomic uint64_t *buckets;      /* n+1 counts, NOT cumulative; [n] is +Inf */
    _Atomic uint64_t  sum_bits;     /* a double's bit pattern */
};

typedef struct series {
    char *key;                      /* the labels it was registered with */
    char *labels;                   /* inside of the braces, "" for none; the
                                       same string as key unless quarantined */
    int   hidden;                   /* see hl_metrics_hide() */
    union {
        struct hl_counter   c;
        struct hl_gauge     g;
        struct hl_histogram h;
    } u;
} series;

typedef struct family {
    char    *name;
    char    *help;
    enum kind kind;
    double  *bounds;                /* histograms only */
    int      n_bounds;
    char   (*le)[32];               /* n_bounds+1 rendered bounds, "+Inf" last */
    char    *head;                  /* "# HELP ...\n# TYPE ...\n", escaped */
    series **s;                     /* registration order */
    int      n_s, cap_s;
} family;

struct hl_metrics {
    pthread_mutex_t mu;             /* recursive */
    family  **f;                    /* registration order */
    int       n_f, cap_f;
};

const double hl_latency_bounds_s[] = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};
const int hl_latency_bounds_n = sizeof hl_latency_bounds_s / sizeof hl_latency_bounds_s[0];

const double hl_live_bounds_s[] = {
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.010,
    0.012, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
    0.75, 1, 2, 5, 10, 30, 60,
};
const int hl_live_bounds_n = sizeof hl_live_bounds_s / sizeof hl_live_bounds_s[0];

/* ---- allocation: registration happens at start or on assignment, where
 * running on without the memory for a metric helps nobody. */

static void die_oom(void)
{
    fprintf(stderr, "halflife: out of memory registering a metric\n");
    abort();
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (p == NULL) die_oom();
    return p;
}

static char *xstrdup(const char *s)
{
    size_t len = strlen(s) + 1;
    return memcpy(xcalloc(len, 1), s, len);
}

/* Returns arr (of elem-byte items), grown if needed so index n fits. */
static void *grow(void *arr, int n, int *cap, size_t elem)
{
    if (n < *cap) return arr;
    *cap = *cap ? *cap * 2 : 8;
    if ((arr = realloc(arr, (size_t)*cap * elem)) == NULL) die_oom();
    return arr;
}

/* ---- lifecycle */

hl_metrics *hl_metrics_create(void)
{
    hl_metrics *reg = calloc(1, sizeof *reg);
    pthread_mutexattr_t attr;

    if (reg == NULL) return NULL;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    if (pthread_mutex_init(&reg->mu, &attr) != 0) {
        free(reg);
        reg = NULL;
    }
    pthread_mutexattr_destroy(&attr);
    return reg;
}

static void series_free(series *s, enum kind kind)
{
    if (s == NULL) return;
    if (kind == K_HISTOGRAM) free((void *)s->u.h.buckets);
    if (s->labels != s->key) free(s->labels);
    free(s->key);
    free(s);
}

static void family_free(family *f)
{
    for (int i = 0; i < f->n_s; i++) series_free(f->s[i], f->kind);
    free(f->s);
    free(f->bounds);
    free(f->le);
    free(f->head);
    free(f->help);
    free(f->name);
    free(f);
}

void hl_metrics_destroy(hl_metrics *reg)
{
    if (reg == NULL) return;
    for (int i = 0; i < reg->n_f; i++) family_free(reg->f[i]);
    free(reg->f);
    pthread_mutex_destroy(&reg->mu);
    free(reg);
}

/* ---- registration (under reg->mu) */

/* A metric name is fixed by the programmer; a bad one is a bug, caught here
 * so it never reaches a scrape as unparseable text. */
static int valid_name(const char *s)
{
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_' || *s == ':'))
        return 0;
    for (s++; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '_' || *s == ':'))
            return 0;
    return 1;
}

/* labels is `name="value"` pairs joined by commas, values escaped as
 * hl_metrics_escape() does. One malformed series makes Prometheus reject
 * the whole scrape, so a bad string is caught at registration. */
static int valid_labels(const char *s)
{
    if (!hl_utf8_valid(s, strlen(s))) return 0;
    while (*s) {
        const char *start = s;
        while ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_' ||
               (s > start && *s >= '0' && *s <= '9'))
            s++;
        if (s == start || *s++ != '=' || *s++ != '"') return 0;
        for (; *s != '"'; s++) {
            if (*s == '\0' || *s == '\n') return 0;
            if (*s == '\\' && *++s != '\\' && *s != '"' && *s != 'n') return 0;
        }
        s++;
        if (*s == ',' && s[1] != '\0') s++;
        else if (*s != '\0') return 0;
    }
    return 1;
}

static void fmt_double(char *out, size_t outlen, double v);
static char *make_head(const family *f);

static double bits_to_double(uint64_t b) { double d; memcpy(&d, &b, sizeof d); return d; }
static uint64_t double_to_bits(double d) { uint64_t b; memcpy(&b, &d, sizeof b); return b; }

static family *family_find(hl_metrics *reg, const char *name)
{
    for (int i = 0; i < reg->n_f; i++)
        if (strcmp(reg->f[i]->name, name) == 0) return reg->f[i];
    return NULL;
}

static family *family_get(hl_metrics *reg, const char *name, const char *help,
                          enum kind kind, const double *bounds, int n)
{
    family *f = family_find(reg, name);
    if (f != NULL) {
        if (f->kind != kind) {
            fprintf(stderr, "halflife: metric %s registered as %s and %s\n",
                    name, kind_names[f->kind], kind_names[kind]);
            abort();
        }
        if (f->help[0] == '\0' && help != NULL && help[0] != '\0') {
            free(f->help);              /* the first caller passed no help */
            f->help = xstrdup(help);
            free(f->head);
            f->head = make_head(f);
        }
        return f;
    }
    assert(valid_name(name));
    f = xcalloc(1, sizeof *f);
    f->name = xstrdup(name);
    f->help = xstrdup(help ? help : "");
    f->kind = kind;
    if (kind == K_HISTOGRAM) {
        for (int i = 1; i < n; i++) assert(bounds[i] > bounds[i - 1]);
        f->bounds = xcalloc((size_t)n, sizeof *f->bounds);
        if (n > 0) memcpy(f->bounds, bounds, (size_t)n * sizeof *bounds);
        f->n_bounds = n;
        f->le = xcalloc((size_t)n + 1, sizeof *f->le);
        for (int i = 0; i <= n; i++)
            fmt_double(f->le[i], sizeof f->le[i], i < n ? bounds[i] : INFINITY);
    }
    f->head = make_head(f);
    reg->f = grow(reg->f, reg->n_f, &reg->cap_f, sizeof *reg->f);
    reg->f[reg->n_f++] = f;
    return f;
}

static series *series_find(const family *f, const char *labels)
{
    for (int i = 0; i < f->n_s; i++)
        if (strcmp(f->s[i]->key, labels) == 0) return f->s[i];
    return NULL;
}

/* Malformed labels (an unescaped value from a file, say) must not break
 * every scrape, nor stop the worker: the series keeps the whole string,
 * escaped, as the one label invalid_labels, and stderr says so once (a
 * second registration finds the series by its original string). */
static char *quarantine(const char *name, const char *labels)
{
    size_t need = hl_metrics_escape(NULL, 0, labels) + sizeof "invalid_labels=\"\"";
    char *out = xcalloc(need, 1);

    fprintf(stderr, "halflife: metric %s: malformed labels, exported as invalid_labels\n", name);
    memcpy(out, "invalid_labels=\"", 16);
    hl_metrics_escape(out + 16, need - 16, labels);
    strcat(out, "\"");
    return out;
}

/* Returns the family's series for labels, created (and un-hidden) as needed. */
static series *series_get(hl_metrics *reg, const char *name, const char *help,
                          const char *labels, enum kind kind,
                          const double *bounds, int n)
{
    family *f;
    series *s;

    pthread_mutex_lock(&reg->mu);
    f = family_get(reg, name, help, kind, bounds, n);
    if (labels == NULL) labels = "";
    if ((s = series_find(f, labels)) == NULL) {
        s = xcalloc(1, sizeof *s);
        s->key = xstrdup(labels);
        s->labels = valid_labels(labels) ? s->key : quarantine(name, labels);
        if (kind == K_HISTOGRAM) {
            s->u.h.bounds = f->bounds;
            s->u.h.n = f->n_bounds;
            s->u.h.buckets = xcalloc((size_t)f->n_bounds + 1, sizeof *s->u.h.buckets);
        }
        f->s = grow(f->s, f->n_s, &f->cap_s, sizeof *f->s);
        f->s[f->n_s++] = s;
    }
    s->hidden = 0;
    pthread_mutex_unlock(&reg->mu);
    return s;
}

hl_counter *hl_metrics_counter(hl_metrics *reg, const char *name,
                               const char *help, const char *labels)
{
    return &series_get(reg, name, help, labels, K_COUNTER, NULL, 0)->u.c;
}

hl_gauge *hl_metrics_gauge(hl_metrics *reg, const char *name,
                           const char *help, const char *labels)
{
    return &series_get(reg, name, help, labels, K_GAUGE, NULL, 0)->u.g;
}

hl_histogram *hl_metrics_histogram(hl_metrics *reg, const char *name,
                                   const char *help, const char *labels,
                                   const double *bounds, int n)
{
    return &series_get(reg, name, help, labels, K_HISTOGRAM, bounds, n)->u.h;
}

void hl_metrics_hide(hl_metrics *reg, const char *name, const char *labels)
{
    family *f;
    series *s;

    pthread_mutex_lock(&reg->mu);
    if ((f = family_find(reg, name)) != NULL &&
        (s = series_find(f, labels ? labels : "")) != NULL)
        s->hidden = 1;
    pthread_mutex_unlock(&reg->mu);
}

void hl_metrics_drop(hl_metrics *reg, const char *name, const char *labels)
{
    family *f;

    pthread_mutex_lock(&reg->mu);
    if ((f = family_find(reg, name)) != NULL) {
        for (int i = 0; i < f->n_s; i++) {
            if (strcmp(f->s[i]->key, labels ? labels : "") != 0) continue;
            series_free(f->s[i], f->kind);
            /* keep registration order: it is the rendering order */
            memmove(&f->s[i], &f->s[i + 1], (size_t)(f->n_s - i - 1) * sizeof *f->s);
            f->n_s--;
            break;
        }
    }
    pthread_mutex_unlock(&reg->mu);
}

int hl_metrics_series_count(hl_metrics *reg, const char *name)
{
    family *f;
    int n;
    pthread_mutex_lock(&reg->mu);
    n = (f = family_find(reg, name)) != NULL ? f->n_s : 0;
    pthread_mutex_unlock(&reg->mu);
    return n;
}

uint64_t hl_metrics_counter_sum(hl_metrics *reg, const char *name)
{
    uint64_t sum = 0;
    family *f;
    pthread_mutex_lock(&reg->mu);
    if ((f = family_find(reg, name)) != NULL && f->kind == K_COUNTER)
        for (int i = 0; i < f->n_s; i++)
            sum += hl_counter_get(&f->s[i]->u.c);
    pthread_mutex_unlock(&reg->mu);
    return sum;
}

double hl_metrics_gauge_sum(hl_metrics *reg, const char *name)
{
    double sum = 0;
    family *f;
    pthread_mutex_lock(&reg->mu);
    if ((f = family_find(reg, name)) != NULL && f->kind == K_GAUGE)
        for (int i = 0; i < f->n_s; i++)
            if (!f->s[i]->hidden)
                sum += bits_to_double(atomic_load_explicit(&f->s[i]->u.g.bits,
                                                           memory_order_relaxed));
    pthread_mutex_unlock(&reg->mu);
    return sum;
}

/* A byte that does not belong to a valid UTF-8 character becomes '?':
 * Prometheus refuses a whole scrape over one such label value, and '?'
 * keeps the escaped value within twice the input, as callers size it. */
size_t hl_metrics_escape(char *dst, size_t dstlen, const char *value)
{
    size_t need = 0, left = strlen(value), run = 0;
    for (const char *p = value; *p; p++, left--) {
        const char *rep = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
        char one[2] = {*p, 0};
        if (run == 0 && (run = hl_utf8_char_len(p, left)) == 0) one[0] = '?';
        else run--;
        for (const char *r = rep ? rep : one; *r; r++, need++)
            if (need + 1 < dstlen) dst[need] = *r;
    }
    if (dstlen > 0) dst[need < dstlen ? need : dstlen - 1] = '\0';
    return need;
}

/* ---- updates: lock-free, relaxed (a scrape needs no ordering with the
 * data it describes, only values that are not torn) */


static void atomic_add_double(_Atomic uint64_t *bits, double v)
{
    uint64_t old = atomic_load_explicit(bits, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(bits, &old,
                double_to_bits(bits_to_double(old) + v),
                memory_order_relaxed, memory_order_relaxed))
        ;   /* old was reloaded by the failed exchange */
}

void hl_counter_add(hl_counter *c, uint64_t n)
{
    atomic_fetch_add_explicit(&c->n, n, memory_order_relaxed);
}

uint64_t hl_counter_get(const hl_counter *c)
{
    return atomic_load_explicit(&((hl_counter *)c)->n, memory_order_relaxed);
}

void hl_gauge_set(hl_gauge *g, double v)
{
    atomic_store_explicit(&g->bits, double_to_bits(v), memory_order_relaxed);
}

void hl_gauge_add(hl_gauge *g, double v)
{
    atomic_add_double(&g->bits, v);
}

/* NaN is dropped: it has no bucket, and added to _sum it would poison the
 * series for the rest of the process's life. */
void hl_histogram_observe_n(hl_histogram *h, double v, uint64_t n)
{
    int lo = 0, hi = h->n;          /* first bound >= v, or n for +Inf */

    if (isnan(v) || n == 0) return;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (h->bounds[mid] >= v) hi = mid; else lo = mid + 1;
    }
    atomic_fetch_add_explicit(&h->buckets[lo], n, memory_order_relaxed);
    atomic_add_double(&h->sum_bits, v * (double)n);
}

void hl_histogram_observe(hl_histogram *h, double v)
{
    hl_histogram_observe_n(h, v, 1);
}

int hl_histogram_counts(const hl_histogram *h, uint64_t *out, int max)
{
    int n = h->n + 1 < max ? h->n + 1 : max;
    for (int i = 0; i < n; i++)
        out[i] = atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
    return n;
}

const double *hl_histogram_bounds(const hl_histogram *h, int *n)
{
    *n = h->n;
    return h->bounds;
}

/* ---- rendering
 *
 * A scrape renders a few hundred lines. Everything fixed at registration
 * (the HELP/TYPE lines, a histogram's "le" strings) is formatted once then,
 * and a sample line is appended piece by piece, not through vsnprintf:
 * printf-style rendering of every help character and bound made one scrape
 * cost about 2 ms, which a tight scrape loop (bench_worker polls every
 * 10 ms) takes straight from the shard threads on a small machine. */

typedef struct buf {
    char  *p;
    size_t len, cap;
    int    oom;
} buf;

/* Room for n more bytes and a terminating NUL; 0, or -1 once out of memory. */
static int buf_room(buf *b, size_t n)
{
    if (b->oom) return -1;
    if (b->len + n < b->cap) return 0;
    size_t cap = (b->cap + n + 1) * 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) { b->oom = 1; return -1; }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void buf_put(buf *b, const char *s, size_t n)
{
    if (buf_room(b, n) != 0) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void buf_str(buf *b, const char *s) { buf_put(b, s, strlen(s)); }

static void buf_u64(buf *b, uint64_t v)
{
    char tmp[24];
    int i = sizeof tmp;
    do tmp[--i] = (char)('0' + v % 10); while ((v /= 10) != 0);
    buf_put(b, tmp + i, sizeof tmp - (size_t)i);
}

/* The shortest of %.15g..%.17g that reads back as v, so bounds print as
 * "0.00025", not "0.00025000000000000001"; Go's spelling of the specials.
 * An integer below 1e15 prints as its digits, which is what %.15g gives. */
static void fmt_double(char *out, size_t outlen, double v)
{
    if (isnan(v)) { snprintf(out, outlen, "NaN"); return; }
    if (isinf(v)) { snprintf(out, outlen, v > 0 ? "+Inf" : "-Inf"); return; }
    if (fabs(v) < 1e15 && v == (double)(int64_t)v && !(v == 0 && signbit(v))) {
        snprintf(out, outlen, "%lld", (long long)v);
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, outlen, "%.*g", prec, v);
        if (strtod(out, NULL) == v) return;
    }
}

/* A sample value: integers (counts, bytes, users, lag) without printf. */
static void buf_double(buf *b, double v)
{
    char num[40];
    if (fabs(v) < 1e15 && v == (double)(int64_t)v && !(v == 0 && signbit(v))) {
        if (v < 0) { buf_put(b, "-", 1); v = -v; }
        buf_u64(b, (uint64_t)v);
        return;
    }
    fmt_double(num, sizeof num, v);
    buf_str(b, num);
}

/* HELP text escapes only backslash and newline (format 0.0.4). Formatted
 * once per family, at registration. */
static char *make_head(const family *f)
{
    buf b = {0};
    buf_str(&b, "# HELP ");
    buf_str(&b, f->name);
    buf_put(&b, " ", 1);
    for (const char *p = f->help; *p; p++) {
        if (*p == '\\') buf_put(&b, "\\\\", 2);
        else if (*p == '\n') buf_put(&b, "\\n", 2);
        else buf_put(&b, p, 1);
    }
    buf_str(&b, "\n# TYPE ");
    buf_str(&b, f->name);
    buf_put(&b, " ", 1);
    buf_str(&b, kind_names[f->kind]);
    buf_put(&b, "\n", 1);
    if (b.oom) die_oom();
    b.p[b.len] = '\0';
    return b.p;
}

/* name suffix{labels[,le="le"]} -- a sample line up to its value. */
static void put_key(buf *b, const char *name, const char *suffix, const char *labels,
                    const char *le)
{
    buf_str(b, name);
    buf_str(b, suffix);
    if (labels[0] || le) {
        buf_put(b, "{", 1);
        buf_str(b, labels);
        if (le) {
            buf_str(b, labels[0] ? ",le=\"" : "le=\"");
            buf_str(b, le);
            buf_put(b, "\"", 1);
        }
        buf_put(b, "}", 1);
    }
    buf_put(b, " ", 1);
}

/* Buckets are stored per interval and rendered cumulative, as the format
 * requires; _count is the +Inf bucket so the two always agree. */
static void render_histogram(buf *b, const family *f, const series *s)
{
    const struct hl_histogram *h = &s->u.h;
    uint64_t cum = 0;

    for (int i = 0; i <= h->n; i++) {
        cum += atomic_load_explicit(&((struct hl_histogram *)h)->buckets[i], memory_order_relaxed);
        put_key(b, f->name, "_bucket", s->labels, f->le[i]);
        buf_u64(b, cum);
        buf_put(b, "\n", 1);
    }
    put_key(b, f->name, "_sum", s->labels, NULL);
    buf_double(b, bits_to_double(atomic_load_explicit(&((struct hl_histogram *)h)->sum_bits,
                                                      memory_order_relaxed)));
    buf_put(b, "\n", 1);
    put_key(b, f->name, "_count", s->labels, NULL);
    buf_u64(b, cum);
    buf_put(b, "\n", 1);
}

static void render_series(buf *b, const family *f, series *s)
{
    switch (f->kind) {
    case K_COUNTER:
        put_key(b, f->name, "", s->labels, NULL);
        buf_u64(b, hl_counter_get(&s->u.c));
        buf_put(b, "\n", 1);
        break;
    case K_GAUGE:
        put_key(b, f->name, "", s->labels, NULL);
        buf_double(b, bits_to_double(atomic_load_explicit(&s->u.g.bits, memory_order_relaxed)));
        buf_put(b, "\n", 1);
        break;
    case K_HISTOGRAM:
        render_histogram(b, f, s);
        break;
    }
}

/* A family whose every series is hidden is left out whole: a HELP/TYPE
 * pair with no samples is legal but only confuses a reader. */
static void render_family(buf *b, const family *f)
{
    int shown = 0;
    for (int i = 0; i < f->n_s; i++) shown += !f->s[i]->hidden;
    if (shown == 0) return;
    buf_str(b, f->head);
    for (int i = 0; i < f->n_s; i++)
        if (!f->s[i]->hidden) render_series(b, f, f->s[i]);
}

int hl_metrics_render(hl_metrics *reg, char **out, size_t *len)
{
    buf b = {0};

    pthread_mutex_lock(&reg->mu);
    b.cap = 4096;
    if ((b.p = malloc(b.cap)) == NULL) b.oom = 1;
    for (int i = 0; i < reg->n_f && !b.oom; i++) render_family(&b, reg->f[i]);
    pthread_mutex_unlock(&reg->mu);
    if (b.oom) {
        free(b.p);
        return HL_ENOMEM;
    }
    b.p[b.len] = '\0';
    *out = b.p;
    *len = b.len;
    return 0;
}
