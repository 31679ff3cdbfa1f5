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
 * hl_metrics_destroy(), so a pointer returned by registration stays valid
 * for the registry's life, even across hl_metrics_hide().
 * This file does no I/O; http.c serves what hl_metrics_render() produces. */
#include "metrics.h"

#include "hl.h"

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
    series **s;                     /* registration order */
    int      n_s, cap_s;
} family;

typedef struct render_cb {
    void (*fn)(void *arg);
    void  *arg;
} render_cb;

struct hl_metrics {
    pthread_mutex_t mu;             /* recursive: callbacks may register */
    family  **f;                    /* registration order */
    int       n_f, cap_f;
    render_cb *cb;
    int       n_cb, cap_cb;
};

const double hl_latency_bounds_s[] = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};
const int hl_latency_bounds_n = sizeof hl_latency_bounds_s / sizeof hl_latency_bounds_s[0];

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
    free(f->help);
    free(f->name);
    free(f);
}

void hl_metrics_destroy(hl_metrics *reg)
{
    if (reg == NULL) return;
    for (int i = 0; i < reg->n_f; i++) family_free(reg->f[i]);
    free(reg->f);
    free(reg->cb);
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
    }
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

void hl_metrics_on_render(hl_metrics *reg, void (*fn)(void *arg), void *arg)
{
    pthread_mutex_lock(&reg->mu);
    reg->cb = grow(reg->cb, reg->n_cb, &reg->cap_cb, sizeof *reg->cb);
    reg->cb[reg->n_cb].fn = fn;
    reg->cb[reg->n_cb].arg = arg;
    reg->n_cb++;
    pthread_mutex_unlock(&reg->mu);
}

size_t hl_metrics_escape(char *dst, size_t dstlen, const char *value)
{
    size_t need = 0;
    for (const char *p = value; *p; p++) {
        const char *rep = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
        char one[2] = {*p, 0};
        for (const char *r = rep ? rep : one; *r; r++, need++)
            if (need + 1 < dstlen) dst[need] = *r;
    }
    if (dstlen > 0) dst[need < dstlen ? need : dstlen - 1] = '\0';
    return need;
}

/* ---- updates: lock-free, relaxed (a scrape needs no ordering with the
 * data it describes, only values that are not torn) */

static double bits_to_double(uint64_t b) { double d; memcpy(&d, &b, sizeof d); return d; }
static uint64_t double_to_bits(double d) { uint64_t b; memcpy(&b, &d, sizeof b); return b; }

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
void hl_histogram_observe(hl_histogram *h, double v)
{
    int lo = 0, hi = h->n;          /* first bound >= v, or n for +Inf */

    if (isnan(v)) return;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (h->bounds[mid] >= v) hi = mid; else lo = mid + 1;
    }
    atomic_fetch_add_explicit(&h->buckets[lo], 1, memory_order_relaxed);
    atomic_add_double(&h->sum_bits, v);
}

/* ---- rendering */

typedef struct buf {
    char  *p;
    size_t len, cap;
    int    oom;
} buf;

static void buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void buf_printf(buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (b->oom) return;
    va_start(ap, fmt);
    n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) { b->oom = 1; return; }
    if ((size_t)n >= b->cap - b->len) {
        size_t cap = (b->cap + (size_t)n + 1) * 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
        va_start(ap, fmt);
        vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

/* The shortest of %.15g..%.17g that reads back as v, so bounds print as
 * "0.00025", not "0.00025000000000000001"; Go's spelling of the specials. */
static void fmt_double(char *out, size_t outlen, double v)
{
    if (isnan(v)) { snprintf(out, outlen, "NaN"); return; }
    if (isinf(v)) { snprintf(out, outlen, v > 0 ? "+Inf" : "-Inf"); return; }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, outlen, "%.*g", prec, v);
        if (strtod(out, NULL) == v) return;
    }
}

/* HELP text escapes only backslash and newline (format 0.0.4). */
static void render_help(buf *b, const family *f)
{
    buf_printf(b, "# HELP %s ", f->name);
    for (const char *p = f->help; *p; p++) {
        if (*p == '\\') buf_printf(b, "\\\\");
        else if (*p == '\n') buf_printf(b, "\\n");
        else buf_printf(b, "%c", *p);
    }
    buf_printf(b, "\n# TYPE %s %s\n", f->name, kind_names[f->kind]);
}

static void render_value(buf *b, const char *name, const char *suffix,
                         const char *labels, double v)
{
    char num[32];
    fmt_double(num, sizeof num, v);
    if (labels[0]) buf_printf(b, "%s%s{%s} %s\n", name, suffix, labels, num);
    else buf_printf(b, "%s%s %s\n", name, suffix, num);
}

/* Buckets are stored per interval and rendered cumulative, as the format
 * requires; _count is the +Inf bucket so the two always agree. */
static void render_histogram(buf *b, const family *f, const series *s)
{
    const struct hl_histogram *h = &s->u.h;
    const char *sep = s->labels[0] ? "," : "";
    char le[32];
    uint64_t cum = 0;

    for (int i = 0; i <= h->n; i++) {
        cum += atomic_load_explicit(&((struct hl_histogram *)h)->buckets[i], memory_order_relaxed);
        fmt_double(le, sizeof le, i < h->n ? h->bounds[i] : INFINITY);
        buf_printf(b, "%s_bucket{%s%sle=\"%s\"} %llu\n", f->name, s->labels, sep, le,
                   (unsigned long long)cum);
    }
    render_value(b, f->name, "_sum", s->labels,
                 bits_to_double(atomic_load_explicit(&((struct hl_histogram *)h)->sum_bits,
                                                     memory_order_relaxed)));
    buf_printf(b, "%s_count%s%s%s %llu\n", f->name, s->labels[0] ? "{" : "", s->labels,
               s->labels[0] ? "}" : "", (unsigned long long)cum);
}

static void render_series(buf *b, const family *f, series *s)
{
    switch (f->kind) {
    case K_COUNTER:
        if (s->labels[0]) buf_printf(b, "%s{%s} %llu\n", f->name, s->labels,
                                     (unsigned long long)hl_counter_get(&s->u.c));
        else buf_printf(b, "%s %llu\n", f->name, (unsigned long long)hl_counter_get(&s->u.c));
        break;
    case K_GAUGE:
        render_value(b, f->name, "", s->labels,
                     bits_to_double(atomic_load_explicit(&s->u.g.bits, memory_order_relaxed)));
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
    render_help(b, f);
    for (int i = 0; i < f->n_s; i++)
        if (!f->s[i]->hidden) render_series(b, f, f->s[i]);
}

int hl_metrics_render(hl_metrics *reg, char **out, size_t *len)
{
    buf b = {0};

    pthread_mutex_lock(&reg->mu);
    for (int i = 0; i < reg->n_cb; i++) reg->cb[i].fn(reg->cb[i].arg);
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
