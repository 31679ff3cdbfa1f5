/* train.c - `halflife train`: read an event file, fit a model with
 * core/train.c, write the .hlm.
 *
 * This file owns what core/ may not do: parsing the command line, mapping
 * string ids to dense rows, reading the clock for events/s, printing
 * progress, and choosing the OpenBLAS thread count (the only parallelism
 * training has, so --threads fixes the result for a given seed). */
#include "cmd.h"
#include "cmd_common.h"
#include "dataset.h"
#include "fnv.h"
#include "log.h"
#include "model.h"
#include "train.h"

#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- string ids to dense rows ---------------------------------------------------- */

/* Open addressing over (hash, row); ids live in one growing arena so the
 * model writer can borrow them afterwards. */
typedef struct idmap {
    int32_t  *slot;        /* row + 1, 0 = empty */
    size_t    cap;         /* power of two */
    int32_t   n;
    char     *arena;
    size_t    arena_len, arena_cap;
    size_t   *off;         /* (n): id i is arena + off[i] */
    uint32_t *len;
    size_t    rows_cap;
} idmap;

static uint64_t id_hash(const char *s, size_t len)
{
    return hl_fnv1a64(HL_FNV64_HLM, s, len);
}

static void idmap_free(idmap *m)
{
    free(m->slot); free(m->arena); free(m->off); free(m->len);
    memset(m, 0, sizeof *m);
}

static int idmap_grow(idmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 1024;
    int32_t *slot = calloc(cap, sizeof *slot);
    if (!slot) return HL_ENOMEM;
    for (int32_t r = 0; r < m->n; r++) {
        size_t i = id_hash(m->arena + m->off[r], m->len[r]) & (cap - 1);
        while (slot[i]) i = (i + 1) & (cap - 1);
        slot[i] = r + 1;
    }
    free(m->slot);
    m->slot = slot;
    m->cap = cap;
    return 0;
}

static int idmap_append(idmap *m, const char *s, uint32_t len)
{
    if (m->arena_len + len > m->arena_cap) {
        size_t cap = (m->arena_cap + len) * 2;
        char *a = realloc(m->arena, cap);
        if (!a) return HL_ENOMEM;
        m->arena = a;
        m->arena_cap = cap;
    }
    if ((size_t)m->n == m->rows_cap) {
        size_t cap = m->rows_cap ? m->rows_cap * 2 : 1024;
        size_t *off = realloc(m->off, cap * sizeof *off);
        if (off) m->off = off;
        uint32_t *ln = realloc(m->len, cap * sizeof *ln);
        if (ln) m->len = ln;
        if (!off || !ln) return HL_ENOMEM;
        m->rows_cap = cap;
    }
    memcpy(m->arena + m->arena_len, s, len);
    m->off[m->n] = m->arena_len;
    m->len[m->n] = len;
    m->arena_len += len;
    return 0;
}

/* Row of id, added if new; negative HL_E* on allocation failure. */
static int32_t idmap_put(idmap *m, const char *s, uint32_t len)
{
    if ((size_t)(m->n + 1) * 2 > m->cap && idmap_grow(m)) return HL_ENOMEM;
    size_t i = id_hash(s, len) & (m->cap - 1);
    for (; m->slot[i]; i = (i + 1) & (m->cap - 1)) {
        int32_t r = m->slot[i] - 1;
        if (m->len[r] == len && memcmp(m->arena + m->off[r], s, len) == 0) return r;
    }
    if (idmap_append(m, s, len)) return HL_ENOMEM;
    m->slot[i] = m->n + 1;
    return m->n++;
}

/* ---- loading ------------------------------------------------------------------------------ */

typedef struct events {
    int64_t  n, cap;
    int32_t *user, *item;
    uint8_t *type;
    int64_t *ts_ms;
    float   *weight;
    idmap    users, items;
} events;

static void events_free(events *e)
{
    free(e->user); free(e->item); free(e->type); free(e->ts_ms); free(e->weight);
    idmap_free(&e->users);
    idmap_free(&e->items);
}

static int events_push(events *e, const hl_dataset_event *ev)
{
    if (e->n == e->cap) {
        int64_t cap = e->cap ? e->cap * 2 : 65536;
        void *p;
#define GROW(a) if ((p = realloc(e->a, (size_t)cap * sizeof *e->a)) == NULL) return HL_ENOMEM; e->a = p
        GROW(user); GROW(item); GROW(type); GROW(ts_ms); GROW(weight);
#undef GROW
        e->cap = cap;
    }
    int32_t u = idmap_put(&e->users, ev->user, ev->user_len);
    int32_t i = idmap_put(&e->items, ev->item, ev->item_len);
    if (u < 0 || i < 0) return HL_ENOMEM;
    e->user[e->n] = u;
    e->item[e->n] = i;
    e->type[e->n] = (uint8_t)ev->type;
    e->ts_ms[e->n] = ev->ts_ms;
    e->weight[e->n] = ev->weight;
    e->n++;
    return 0;
}

static void report_bad_lines(const char *path, const hl_dataset_reader *r)
{
    hl_dataset_stats st;
    hl_dataset_stats_get(r, &st);
    if (st.bad_lines == 0) return;
    fprintf(stderr, "halflife train: %s: %lld bad lines skipped\n", path,
            (long long)st.bad_lines);
    for (int i = 0; i < 8 && i < st.bad_lines; i++)
        fprintf(stderr, "  line %lld: %s\n", (long long)st.first_bad_line[i],
                st.first_bad_why[i]);
}

static int load(const char *path, const hl_dataset_opts *dopt, events *e,
                char *errbuf, size_t errlen)
{
    hl_dataset_reader *r = hl_dataset_open(path, dopt, errbuf, errlen);
    hl_dataset_event ev;
    int rc;

    if (!r) return HL_EIO;
    while ((rc = hl_dataset_next(r, &ev, errbuf, errlen)) == 1)
        if (events_push(e, &ev)) {
            rc = hl_err(errbuf, errlen, HL_ENOMEM, "%s: no memory after %lld events",
                        path, (long long)e->n);
            break;
        }
    report_bad_lines(path, r);
    hl_dataset_close(r);
    if (rc == 0 && e->n == 0)
        rc = hl_err(errbuf, errlen, HL_EINVAL, "%s: no events", path);
    return rc;
}

/* ---- options ------------------------------------------------------------------------------ */

typedef struct train_args {
    const char       *input, *out, *format;
    const char       *init;          /* --init MODEL, or NULL */
    hl_dataset_opts   dopt;
    hl_train_opts     o;
    int               threads, quiet;
    double            progress_s;    /* --progress-interval */
    char              heads_text[64];
} train_args;

static void usage(FILE *f)
{
    fprintf(f,
"usage: halflife train --input FILE --format F --out MODEL [options]\n\n"
"Fits e_in, the encoder MLP, e_out and item biases by next-item prediction\n"
"over each user's events in time order, with the decayed heads the worker\n"
"computes, and writes the .hlm model. Deterministic for a given seed and\n"
"thread count. Progress (epoch, loss, events/s, validation HR@10, elapsed\n"
"and time left) goes to stderr; a JSON summary to stdout.\n\n"
"  --input FILE          event file\n"
"  --format F            movielens-csv | movielens-dat | seq | taobao |\n"
"                        events-csv\n"
"  --out MODEL           the .hlm to write\n"
"  --dim N               embedding and query width (128)\n"
"  --hidden N[,N..]      hidden layer widths of the encoder MLP, 0 for none (256)\n"
"  --half-lives LIST     heads, increasing, e.g. 1h,1d,30d (units ms s m h d)\n"
"                        (15m,1h,4h,1d,30d)\n"
"  --seq-step-ms N       seq format: time between a user's events (3600000)\n"
"  --epochs N            passes over the data (16); 0 only with --init (its rows\n"
"                        copied onto this catalogue, nothing trained)\n"
"  --batch N             examples per Adam step (256)\n"
"  --lr X                Adam step size, cosine-decayed to lr x lr-final (0.003)\n"
"  --lr-final X          (0.1)\n"
"  --l2 X                decoupled weight decay (0)\n"
"  --ema E               train on, but validate and write the running average of\n"
"                        the parameters, avg = E avg + (1 - E) params after each\n"
"                        step (0: off, the last step's)\n"
"  --dropout X           on the encoder input and hidden layers (0.5)\n"
"  --max-history N       newest events per training example's heads (256)\n"
"  --full-softmax-max N  full softmax up to N items, sampled beyond (5000)\n"
"  --negatives N         sampled softmax: shared negatives per batch (2048)\n"
"  --tie, --no-tie       share e_in and e_out during training, or not (tie)\n"
"  --learn-half-lives, --fixed-half-lives\n"
"                        train each head's half-life with the rest, starting\n"
"                        from --half-lives (kept ordered, 1 s .. 10 years;\n"
"                        the model holds the learned ones), or keep them (learn)\n"
"  --holdout loo         keep each user's last two events out of training:\n"
"                        the second to last validates (HR@10 per epoch, best\n"
"                        epoch kept), the last is the test item\n"
"  --holdout time:F      train only on events before the time of the F\n"
"                        quantile (e.g. 0.8): later events stay unseen for\n"
"                        `halflife eval --protocol prequential` (its windows)\n"
"  --init MODEL          warm start (a daily retrain): items MODEL knows start\n"
"                        from its rows, the MLP from its weights when the\n"
"                        shapes match; MODEL's dim must equal --dim. A worker\n"
"                        swapping to the result then migrates users closely;\n"
"                        MODEL's heads and half-lives are kept, not learned\n"
"                        (a same-shape swap migrates closer than a reshape)\n"
"  --seed S              (1)\n"
"  --threads T           OpenBLAS threads (number of cores)\n"
"  --progress-interval S within an epoch, a progress line every S seconds\n"
"                        (10; each line ends with the time left)\n"
"  --quiet               no progress lines\n");
}

/* "90s", "1h", "30d", "500ms" or a bare number of ms. */
static int parse_duration_ms(const char *s, size_t len, double *ms)
{
    char buf[32], *end;
    if (len == 0 || len >= sizeof buf) return HL_EINVAL;
    memcpy(buf, s, len);
    buf[len] = 0;
    double v = strtod(buf, &end);
    static const struct { const char *u; double ms; } units[] = {
        {"", 1}, {"ms", 1}, {"s", 1e3}, {"m", 6e4}, {"h", 3.6e6}, {"d", 8.64e7},
    };
    /* The product is checked too: "1e308d" is a finite number of days but
     * an infinite number of ms, which the model file refuses. */
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcmp(end, units[i].u) == 0 && end != buf && isfinite(v * units[i].ms) &&
            v > 0) {
            *ms = v * units[i].ms;
            return 0;
        }
    return HL_EINVAL;
}

static int parse_half_lives(train_args *a, const char *s)
{
    hl_train_opts *o = &a->o;
    o->n_heads = 0;
    snprintf(a->heads_text, sizeof a->heads_text, "%s", s);
    while (*s) {
        size_t len = strcspn(s, ",");
        if (o->n_heads == HL_MAX_HEADS ||
            parse_duration_ms(s, len, &o->half_life_ms[o->n_heads]))
            return HL_EINVAL;
        /* Increasing: learned half-lives are kept ordered by projection
         * (core/train/train.c), which would move "1d,1h"'s second head up
         * to a day in the first step; a repeated one is a head for nothing. */
        if (o->n_heads > 0 && !(o->half_life_ms[o->n_heads] > o->half_life_ms[o->n_heads - 1]))
            return HL_EINVAL;
        o->n_heads++;
        if (s[len] == ',' && s[len + 1] == 0) return HL_EINVAL;  /* "1h,": a head missing */
        s += len + (s[len] == ',');
    }
    return o->n_heads > 0 ? 0 : HL_EINVAL;
}

static int parse_hidden(hl_train_opts *o, const char *s)
{
    o->n_hidden = 0;
    if (strcmp(s, "0") == 0) return 0;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 65536 || o->n_hidden == HL_MAX_LAYERS - 1)
            return HL_EINVAL;
        o->hidden[o->n_hidden++] = (int)v;
        if ((*end && *end != ',') || (*end == ',' && end[1] == 0)) return HL_EINVAL;
        s = end + (*end == ',');
    }
    return 0;
}

static int num_arg(const char *s, double lo, double hi, double *v)
{
    char *end;
    *v = strtod(s, &end);
    return (end != s && *end == 0 && *v >= lo && *v <= hi) ? 0 : HL_EINVAL;
}

/* An integer option: "1.5" or "4.5" was cut to 1 or 4 without a word. */
static int int_arg(const char *s, double lo, double hi, double *v)
{
    return num_arg(s, lo, hi, v) == 0 && *v == floor(*v) ? 0 : HL_EINVAL;
}

/* Digits only, all 64 bits: through a double "1e3" passed the range check
 * and strtoull then read 1, so the run used another seed than asked. */
static int seed_arg(const char *s, uint64_t *seed)
{
    char *end;
    if (*s < '0' || *s > '9') return HL_EINVAL;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno != 0 || *end != 0) return HL_EINVAL;
    *seed = x;
    return 0;
}

enum { O_INPUT = 256, O_FORMAT, O_OUT, O_DIM, O_HIDDEN, O_HL, O_STEP, O_EPOCHS, O_BATCH,
       O_LR, O_LRF, O_L2, O_EMA, O_DROP, O_HIST, O_FULLMAX, O_NEG, O_TIE, O_HOLDOUT,
       O_SEED, O_THREADS, O_QUIET, O_INIT, O_LEARN_HL, O_FIXED_HL, O_NO_TIE, O_PROGRESS };

/* Names are matched whole, as every subcommand's (cmd_common.c): getopt's
 * abbreviations took "--inp" for --input, and a new option could turn a
 * working abbreviation into an ambiguous one. */
static const struct train_opt {
    const char *name;
    int         id;
    int         has_value;
} train_opts[] = {
    {"--input", O_INPUT, 1}, {"--format", O_FORMAT, 1}, {"--out", O_OUT, 1},
    {"--dim", O_DIM, 1}, {"--hidden", O_HIDDEN, 1}, {"--half-lives", O_HL, 1},
    {"--seq-step-ms", O_STEP, 1}, {"--epochs", O_EPOCHS, 1}, {"--batch", O_BATCH, 1},
    {"--lr", O_LR, 1}, {"--lr-final", O_LRF, 1}, {"--l2", O_L2, 1}, {"--ema", O_EMA, 1},
    {"--dropout", O_DROP, 1}, {"--max-history", O_HIST, 1},
    {"--full-softmax-max", O_FULLMAX, 1}, {"--negatives", O_NEG, 1}, {"--tie", O_TIE, 0},
    {"--holdout", O_HOLDOUT, 1}, {"--seed", O_SEED, 1}, {"--threads", O_THREADS, 1},
    {"--quiet", O_QUIET, 0}, {"--init", O_INIT, 1}, {"--learn-half-lives", O_LEARN_HL, 0},
    {"--fixed-half-lives", O_FIXED_HL, 0}, {"--no-tie", O_NO_TIE, 0},
    {"--progress-interval", O_PROGRESS, 1},
};
#define N_TRAIN_OPTS (sizeof train_opts / sizeof train_opts[0])

/* The numeric options' ranges: both the check and what a bad value is told. */
static const struct num_range {
    int    id, integer;
    double lo, hi;
} num_ranges[] = {
    {O_DIM, 1, 1, 4096}, {O_STEP, 1, 1, HL_EVENT_MAX_TS_MS}, {O_EPOCHS, 1, 0, 1e6},
    {O_BATCH, 1, 1, 65536}, {O_LR, 0, 1e-9, 10}, {O_LRF, 0, 0, 1}, {O_L2, 0, 0, 10},
    {O_EMA, 0, 0, 0.99999}, {O_DROP, 0, 0, 0.95}, {O_HIST, 1, 1, 1e6},
    {O_FULLMAX, 1, 1, 1e9}, {O_NEG, 1, 1, 1e6}, {O_PROGRESS, 0, 0, 86400},
    {O_THREADS, 1, 1, 256},
};

static const struct num_range *num_range(int opt)
{
    for (size_t i = 0; i < sizeof num_ranges / sizeof num_ranges[0]; i++)
        if (num_ranges[i].id == opt) return &num_ranges[i];
    return NULL;
}

/* One numeric option into its field; HL_EINVAL if out of its range. */
static int set_number(train_args *a, int opt, const char *s)
{
    hl_train_opts *o = &a->o;
    const struct num_range *r = num_range(opt);
    double v;
    if (r == NULL) return HL_EINVAL;
    if (r->integer ? int_arg(s, r->lo, r->hi, &v) : num_arg(s, r->lo, r->hi, &v))
        return HL_EINVAL;
    switch (opt) {
    case O_DIM:      o->dim = (int)v; break;
    case O_STEP:     a->dopt.seq_step_ms = (int64_t)v; break;
    case O_EPOCHS:   o->epochs = (int)v; break;
    case O_BATCH:    o->batch = (int)v; break;
    case O_LR:       o->lr = (float)v; break;
    case O_LRF:      o->lr_final = (float)v; break;
    case O_L2:       o->l2 = (float)v; break;
    case O_EMA:      o->ema = (float)v; break;
    case O_DROP:     o->dropout = (float)v; break;
    case O_HIST:     o->max_history = (int)v; break;
    case O_FULLMAX:  o->full_softmax_max_items = (int)v; break;
    case O_NEG:      o->n_negatives = (int)v; break;
    case O_PROGRESS: a->progress_s = v; break;
    case O_THREADS:  a->threads = (int)v; break;
    }
    return 0;
}

static int set_option(train_args *a, int opt, const char *s)
{
    switch (opt) {
    case O_INPUT:   a->input = s; return 0;
    case O_FORMAT:  a->format = s; return 0;
    case O_OUT:     a->out = s; return 0;
    case O_HIDDEN:  return parse_hidden(&a->o, s);
    case O_HL:      return parse_half_lives(a, s);
    case O_TIE:     a->o.tie = 1; return 0;
    case O_NO_TIE:  a->o.tie = 0; return 0;
    case O_LEARN_HL: a->o.learn_half_lives = 1; return 0;
    case O_FIXED_HL: a->o.learn_half_lives = 0; return 0;
    case O_QUIET:   a->quiet = 1; return 0;
    case O_INIT:    a->init = s; return 0;
    case O_SEED:    return seed_arg(s, &a->o.seed);
    case O_HOLDOUT:
        if (strcmp(s, "loo") == 0) a->o.holdout_loo = 1;
        else if (strcmp(s, "none") == 0) a->o.holdout_loo = 0;
        else if (strncmp(s, "time:", 5) == 0) {
            double v;
            if (num_arg(s + 5, 0.01, 1, &v)) return HL_EINVAL;
            a->o.train_fraction = (float)v;
        } else return HL_EINVAL;
        return 0;
    default:        return set_number(a, opt, s);
    }
}

/* Says what a bad value of opt should have been; returns 2. */
static int bad_value(int opt, const char *name, const char *val)
{
    const struct num_range *r = num_range(opt);
    char want[256] = "";
    if (r != NULL)
        hl_cmd_range_text(want, sizeof want, r->integer, r->lo, r->hi);
    if (opt == O_STEP)      /* beyond, a user's second event is after 2100 */
        snprintf(want + strlen(want), sizeof want - strlen(want), " (event i of a user is "
                 "at i x N, and an event after 2100 is refused by the worker)");
    else if (opt == O_HL)
        snprintf(want, sizeof want, "up to %d increasing durations with units ms s m h d, "
                 "e.g. 1h,1d,30d", HL_MAX_HEADS);
    else if (opt == O_HIDDEN)
        snprintf(want, sizeof want, "0, or up to %d widths 1..65536 separated by commas, "
                 "e.g. 256,128", HL_MAX_LAYERS - 1);
    else if (opt == O_HOLDOUT)
        snprintf(want, sizeof want, "loo, none or time:F with F in 0.01..1");
    else if (opt == O_SEED)
        snprintf(want, sizeof want, "an integer in 0..%llu", (unsigned long long)UINT64_MAX);
    return hl_cmd_bad_value("train", name, val, want);
}

static const struct train_opt *find_opt(const char *name)
{
    for (size_t i = 0; i < N_TRAIN_OPTS; i++)
        if (strcmp(train_opts[i].name, name) == 0) return &train_opts[i];
    return NULL;
}

/* The options into a: 0, 1 after --help (exit 0), or 2 on a usage error
 * (already reported). */
static int parse_options(train_args *a, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const struct train_opt *t = find_opt(argv[i]);
        const char *val = t && t->has_value && i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 1;
        }
        if (t == NULL && argv[i][0] != '-') {
            fprintf(stderr, "halflife train: unexpected argument \"%s\": every value "
                    "follows its option (e.g. --epochs 20)\n", argv[i]);
            return 2;
        }
        if (t == NULL) return hl_cmd_unknown_option("train", argv[i]);
        if (t->has_value && hl_cmd_need_value("train", t->name, val)) return 2;
        i += t->has_value;
        if (set_option(a, t->id, val)) return bad_value(t->id, t->name, val);
    }
    return 0;
}

/* 0, 1 after --help (exit 0), or 2 on a usage error (already reported). */
static int parse_args(train_args *a, int argc, char **argv)
{
    char err[256];
    int rc;

    memset(a, 0, sizeof *a);
    hl_train_opts_default(&a->o);
    a->threads = openblas_get_num_procs();
    a->progress_s = 10;
    snprintf(a->heads_text, sizeof a->heads_text, "15m,1h,4h,1d,30d");
    if ((rc = parse_options(a, argc, argv)) != 0) return rc;
    if (!a->input || !a->format || !a->out) {
        /* The synopsis, not the 50 lines of usage that scroll this one away. */
        fprintf(stderr, "halflife train: --input, --format and --out are required\n"
                "usage: halflife train --input FILE --format F --out MODEL [options]\n"
                "('halflife train --help' lists the options)\n");
        return 2;
    }
    if (a->o.epochs == 0 && !a->init) {
        fprintf(stderr, "halflife train: --epochs 0 trains nothing: the model would be its "
                "random start; give --epochs 1 or more, or --init MODEL to copy a model's "
                "rows onto this catalogue\n");
        return 2;
    }
    if (hl_dataset_format_parse(a->format, &a->dopt.format, err, sizeof err)) {
        fprintf(stderr, "halflife train: %s\n", err);
        return 2;
    }
    return 0;
}

/* ---- running ------------------------------------------------------------------------------- */

/* Progress: a line at each epoch's end, and within an epoch one every
 * interval_s (an epoch of a few million events takes minutes), each with
 * the time left, extrapolated from the training's rate so far. */
typedef struct progress_ctx {
    double t_train, t_epoch, t_line;   /* training start, epoch start, last line */
    double interval_s;
    int    quiet;
} progress_ctx;

static void fmt_secs(char *buf, size_t len, double s)
{
    long v = (long)(s + 0.5);
    if (s < 59.95) snprintf(buf, len, "%.1fs", s);
    else if (v < 3600) snprintf(buf, len, "%ldm%02lds", v / 60, v % 60);
    else snprintf(buf, len, "%ldh%02ldm", v / 3600, v / 60 % 60);
}

/* " elapsed E left ~L" for the training's share done so far, frac. */
static void print_times(double elapsed, double frac)
{
    char e[32], l[32];
    fmt_secs(e, sizeof e, elapsed);
    fprintf(stderr, " elapsed %s", e);
    if (frac > 0 && frac < 1) {
        fmt_secs(l, sizeof l, elapsed * (1 - frac) / frac);
        fprintf(stderr, " left ~%s", l);
    }
    fputc('\n', stderr);
}

static void on_progress(void *ctx, const hl_train_progress *p)
{
    progress_ctx *c = ctx;
    double t = hl_now_mono_s(), dt = t - c->t_epoch;
    double frac = p->examples > 0 ? ((p->epoch - 1) + (double)p->done / (double)p->examples)
                                    / p->epochs : (double)p->epoch / p->epochs;
    if (c->quiet || (p->in_epoch && (t - c->t_line < c->interval_s || p->done == p->examples)))
        return;                       /* the epoch's own line follows at once */
    c->t_line = t;
    fprintf(stderr, "train: epoch %d/%d", p->epoch, p->epochs);
    if (p->in_epoch && p->examples > 0)
        fprintf(stderr, " %.0f%%", 100.0 * (double)p->done / (double)p->examples);
    fprintf(stderr, " loss %.4f events/s %.0f", p->loss, dt > 0 ? (double)p->done / dt : 0.0);
    if (p->valid_hr10 >= 0) fprintf(stderr, " valid_hr@10 %.4f", p->valid_hr10);
    print_times(t - c->t_train, frac);
    if (!p->in_epoch) c->t_epoch = t;
}

static void version_string(char *v, size_t len, const train_args *a)
{
    const hl_train_opts *o = &a->o;
    char hid[48] = "0";
    for (int l = 0, n = 0; l < o->n_hidden; l++)
        n += snprintf(hid + n, sizeof hid - (size_t)n, "%s%d", l ? "," : "", o->hidden[l]);
    /* A long --half-lives list is cut; the file's header holds the real ones. */
    if (snprintf(v, len, "halflife-train d%d h%s l%s e%d seed=%llu", o->dim, a->heads_text,
                 hid, o->epochs, (unsigned long long)o->seed) >= (int)len)
        v[len - 1] = 0;
}

static int write_model(const train_args *a, const events *e, hl_train_result *res,
                       char *errbuf, size_t errlen)
{
    const idmap *im = &e->items;
    const char **ids = malloc((size_t)im->n * sizeof *ids);
    hl_model_parts p;
    int rc;

    if (!ids) return hl_err(errbuf, errlen, HL_ENOMEM, "no memory for %d item ids", im->n);
    for (int32_t i = 0; i < im->n; i++) ids[i] = im->arena + im->off[i];
    version_string(res->info.version, sizeof res->info.version, a);
    hl_train_result_parts(res, ids, im->len, &p);
    rc = hl_model_write(a->out, &p, errbuf, errlen);
    free(ids);
    return rc;
}

static void print_summary(const train_args *a, const events *e,
                          const hl_train_result *res, double secs)
{
    fputs("{\"model\":", stdout);
    hl_cmd_json_str(stdout, a->out, strlen(a->out));   /* a path may hold a quote */
    printf(",\"events\":%lld,\"users\":%d,\"items\":%d,"
           "\"examples_per_epoch\":%lld,\"epochs\":%d,\"threads\":%d,"
           "\"train_seconds\":%.1f,\"final_loss\":%.4f", (long long)e->n,
           e->users.n, e->items.n, (long long)res->examples_per_epoch, a->o.epochs,
           a->threads, secs, res->final_loss);
    printf(",\"events_per_second_per_core\":%.0f,\"half_lives_s\":[",
           secs > 0 ? (double)res->examples_per_epoch * a->o.epochs / secs / a->threads : 0.0);
    for (int h = 0; h < res->info.n_heads; h++)
        printf("%s%.6g", h ? "," : "", res->info.half_life_ms[h] / 1000.0);
    printf("]");
    if (a->o.holdout_loo)
        printf(",\"valid_hr10\":%.4f,\"test_hr10\":%.4f,\"test_ndcg10\":%.4f",
               res->valid_hr10, res->test_hr10, res->test_ndcg10);
    printf("}\n");
}

/* The model is written (beside out, then renamed over it) only after the
 * whole training, minutes with the defaults: a path that cannot take it is
 * refused before the input is read, by creating a temporary file there as
 * the writer will (model_write.c) and removing it, and so is the input
 * file itself. */
static int check_out(const char *out, const char *input, char *errbuf, size_t errlen)
{
    char tmp[PATH_MAX];
    struct stat st, in;
    if (stat(out, &st) == 0 && S_ISDIR(st.st_mode))
        return hl_err(errbuf, errlen, HL_EINVAL, "--out %s is a directory: give the path "
                      "of the model file to write, e.g. %s/model.hlm", out, out);
    /* The rename would replace the dataset with the model. */
    if (stat(out, &st) == 0 && stat(input, &in) == 0 && st.st_dev == in.st_dev &&
        st.st_ino == in.st_ino)
        return hl_err(errbuf, errlen, HL_EINVAL, "--out %s is the input file: the model "
                      "would replace the dataset; give another path", out);
    if (snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", out) >= (int)sizeof tmp)
        return hl_err(errbuf, errlen, HL_EINVAL, "--out %s: path too long", out);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd >= 0)
        unlink(tmp);
    if (fd < 0)
        return hl_err(errbuf, errlen, HL_EIO, "--out %s: cannot create %s: %s (does its "
                      "directory exist, and may this user write there?)", out, tmp,
                      strerror(errno));
    close(fd);
    return 0;
}

/* A warm start is a daily retrain: the result goes live by a swap, which
 * needs the serving model's state shape (its heads and half-lives: a worker
 * refuses another, models.h). So the heads are MODEL's and not learned,
 * whatever --half-lives and --learn-half-lives said. */
static void keep_init_heads(train_args *a, const hl_model_info *mi)
{
    if (!a->quiet && (a->o.learn_half_lives || a->o.n_heads != mi->n_heads))
        fprintf(stderr, "train: --init %s: its %d heads and half-lives are kept, not "
                "learned (a worker swaps only to a model with the same ones)\n", a->init,
                mi->n_heads);
    a->o.n_heads = mi->n_heads;
    memcpy(a->o.half_life_ms, mi->half_life_ms, sizeof a->o.half_life_ms);
    a->o.learn_half_lives = 0;
}

/* The MLP starts from MODEL's only when every layer has the shape --hidden
 * gives (core's warm_layers); otherwise from random weights, which moves
 * the query space and so users' lists at the swap: said, not silent. */
static void say_init_mlp(const train_args *a, const hl_model_info *mi)
{
    int same = mi->n_layers == a->o.n_hidden + 1;
    for (int l = 0; same && l < a->o.n_hidden; l++)
        same = mi->layer_out[l] == a->o.hidden[l];
    if (same || a->quiet)
        return;
    fprintf(stderr, "train: --init %s: its MLP has %d hidden layer(s)", a->init,
            mi->n_layers - 1);
    for (int l = 0; l + 1 < mi->n_layers; l++)
        fprintf(stderr, "%s%d", l ? "," : " of ", mi->layer_out[l]);
    fprintf(stderr, ", not --hidden's: the MLP starts from random weights (give "
            "--hidden as the model's to start from them)\n");
}

/* --init MODEL, opened before the input is read (loading a large file
 * takes a while): a damaged file or another dim is refused at once. */
static int open_init(train_args *a, hl_model **init, char *errbuf, size_t errlen)
{
    if ((*init = hl_model_open(a->init, errbuf, errlen)) == NULL)
        return HL_EINVAL;
    const hl_model_info *mi = hl_model_info_get(*init);
    if (mi->dim != a->o.dim)
        return hl_err(errbuf, errlen, HL_EINVAL, "--init %s has dim %d, training dim is "
                      "%d (pass --dim %d)", a->init, mi->dim, a->o.dim, mi->dim);
    keep_init_heads(a, mi);
    say_init_mlp(a, mi);
    a->o.init = *init;
    return 0;
}

/* Per training item, its row in the --init model (-1 for an item it does
 * not know). */
static int map_init_rows(train_args *a, const events *e, int32_t **rows,
                         char *errbuf, size_t errlen)
{
    const idmap *im = &e->items;
    if ((*rows = malloc(sizeof **rows * ((size_t)im->n + 1))) == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "no memory for %d item rows", im->n);
    int32_t known = 0;
    for (int32_t i = 0; i < im->n; i++) {
        (*rows)[i] = hl_model_item_find(a->o.init, im->arena + im->off[i], im->len[i]);
        known += (*rows)[i] >= 0;
    }
    a->o.init_row = *rows;
    if (!a->quiet)
        fprintf(stderr, "train: --init %s: %d of %d items start from its rows\n", a->init,
                known, im->n);
    return 0;
}

/* What is about to be trained, and the memory it takes: allocated up
 * front, so a machine without it fails at once or (overcommit) is killed
 * by the kernel without a word from us; the line says what to expect. */
static size_t idmap_bytes(const idmap *m)
{
    return m->cap * sizeof *m->slot + m->rows_cap * (sizeof *m->off + sizeof *m->len) +
           m->arena_cap;
}

static void print_size(const train_args *a, const events *e)
{
    size_t n_params, bytes = hl_train_memory_bytes(&a->o, e->items.n, e->n, &n_params);
    bytes += (size_t)e->cap * (2 * sizeof(int32_t) + 1 + sizeof(int64_t) + sizeof(float)) +
             idmap_bytes(&e->users) + idmap_bytes(&e->items);     /* the events, loaded */
    fprintf(stderr, "train: %lld events, %d users, %d items; %.1fM parameters, about "
            "%.0f MB to train\n", (long long)e->n, e->users.n, e->items.n,
            (double)n_params / 1e6, (double)bytes / (1 << 20));
}

int hl_cmd_train(int argc, char **argv)
{
    train_args a;
    events e;
    hl_train_result res;
    hl_model *init = NULL;
    int32_t *init_row = NULL;
    char err[512];
    int rc;

    if ((rc = parse_args(&a, argc, argv)) != 0) return rc == 1 ? 0 : rc;
    memset(&e, 0, sizeof e);
    memset(&res, 0, sizeof res);
    openblas_set_num_threads(a.threads);
    progress_ctx pc = {0, 0, 0, a.progress_s, a.quiet};
    a.o.progress = on_progress;
    a.o.progress_ctx = &pc;
    rc = 1;
    if (check_out(a.out, a.input, err, sizeof err)) goto fail;
    if (a.init && open_init(&a, &init, err, sizeof err)) goto fail;
    if (load(a.input, &a.dopt, &e, err, sizeof err)) goto fail;
    hl_train_data d = {e.n, e.users.n, e.items.n, e.user, e.item, e.type, e.ts_ms, e.weight};
    if (!a.quiet)
        print_size(&a, &e);
    if (a.init && map_init_rows(&a, &e, &init_row, err, sizeof err)) goto fail;
    double t0 = hl_now_mono_s();
    pc.t_train = pc.t_epoch = pc.t_line = t0;
    if (hl_train_run(&a.o, &d, &res, err, sizeof err)) goto fail;
    double secs = hl_now_mono_s() - t0;
    if (write_model(&a, &e, &res, err, sizeof err)) goto fail;
    print_summary(&a, &e, &res, secs);
    rc = 0;
    goto out;
fail:       /* core's messages begin "train: ", which this line's prefix already says */
    fprintf(stderr, "halflife train: %s\n", strncmp(err, "train: ", 7) ? err : err + 7);
out:
    hl_train_result_reset(&res);
    events_free(&e);
    hl_model_close(init);
    free(init_row);
    return rc;
}
