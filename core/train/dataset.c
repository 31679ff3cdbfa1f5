/* dataset.c - readers for the event files of DESIGN.md section 7.
 *
 * One reader streams one file line by line through a bounded line reader
 * (lines.h) and its single reusable buffer: nothing is allocated per line,
 * and the events it returns borrow their id strings from that buffer (valid
 * until the next call). A line longer than max_line_bytes is a bad line;
 * one with no end at all (/dev/zero) stops the reading with an error. Each
 * format is one parse function that splits the line in place and either
 * fills an event or names why the line is bad.
 *
 * A bad line is counted, the first few are kept with their line number and
 * reason, and reading goes on: a dataset with a few broken rows is still a
 * dataset. Blank lines (nothing but spaces, tabs and CRs, e.g. a trailing
 * newline; the rules are hl_lines_trim's, shared with `halflife items`)
 * are counted apart, not as bad. A header line is recognised on line 1 of
 * a format that has one (movielens-csv, events-csv) by failing to parse as
 * data at its rating or type column, so a headerless file loses no event
 * and a bad first event is reported like any bad line.
 *
 * The seq format yields several events per line: the line is tokenised once
 * into a reusable array of (offset, length) and the events come out of it one
 * per call. A seq line is checked whole before its first event is returned,
 * so a bad token drops the whole user line rather than half of it. */
#include "dataset.h"
#include "lines.h"
#include "utf8.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_SEQ_STEP_MS 3600000
/* The longest line read: a seq user of a million items fits. */
#define DEFAULT_MAX_LINE    (64u << 20)
/* How far a longer line is read on for its end before the file is taken
 * for something other than text. */
#define MAX_SKIP            (256u << 20)

typedef struct tok { uint32_t off, len; } tok;

struct hl_dataset_reader {
    int               fd;          /* 0 for stdin, else ours */
    char             *path;        /* for messages */
    hl_lines         *lines;
    hl_dataset_opts   o;
    char             *line;        /* the current line, in lines' buffer */
    hl_dataset_stats  st;
    /* seq: the tokens of the current line, the next one to return */
    tok              *toks;
    size_t            toks_cap, n_toks, next_tok;
    int64_t           seq_line;
};

static const struct { const char *name; hl_dataset_format fmt; } formats[] = {
    { "movielens-csv", HL_FMT_MOVIELENS_CSV }, { "movielens-dat", HL_FMT_MOVIELENS_DAT },
    { "seq", HL_FMT_SEQ }, { "taobao", HL_FMT_TAOBAO }, { "events-csv", HL_FMT_EVENTS_CSV },
};
#define N_FORMATS (sizeof formats / sizeof formats[0])

int hl_dataset_format_parse(const char *name, hl_dataset_format *fmt,
                            char *errbuf, size_t errlen)
{
    for (size_t i = 0; i < N_FORMATS; i++)
        if (strcmp(name, formats[i].name) == 0) {
            *fmt = formats[i].fmt;
            return 0;
        }
    return hl_err(errbuf, errlen, HL_EINVAL, "unknown dataset format \"%s\": expected"
                  " movielens-csv, movielens-dat, seq, taobao or events-csv", name);
}

const char *hl_dataset_format_name(hl_dataset_format fmt)
{
    for (size_t i = 0; i < N_FORMATS; i++)
        if (formats[i].fmt == fmt) return formats[i].name;
    return "unknown";
}

/* ---- fields and numbers ---- */

/* Splits s in place at each sep (1 or 2 bytes, e.g. "," or "::") into at
 * most max fields, NUL-terminating each; returns the field count, or max + 1
 * when there are more. */
static int split(char *s, const char *sep, char **field, int max)
{
    size_t sl = strlen(sep);
    int n = 0;
    for (;;) {
        char *e = strstr(s, sep);
        if (n == max) return max + 1;
        field[n++] = s;
        if (e == NULL) return n;
        *e = '\0';
        s = e + sl;
    }
}

static int parse_i64(const char *s, int64_t *v)
{
    char *end;
    long long x;
    if (!(*s == '-' || (*s >= '0' && *s <= '9'))) return -1;
    errno = 0;
    x = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0') return -1;
    *v = x;
    return 0;
}

static int parse_f32(const char *s, float *v)
{
    char *end;
    float x;
    if (*s == '\0' || *s == ' ' || *s == '\t') return -1;
    errno = 0;
    x = strtof(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(x)) return -1;
    *v = x;
    return 0;
}

/* Why an id of len bytes is bad, or NULL; user says which id it is. Ids
 * must be UTF-8 as the worker's are: a model's item id is published in
 * lists whose strings a conforming Avro reader decodes, and the codec
 * refuses live events whose ids are not (bad_utf8), so such an item could
 * be listed but never met. */
static const char *id_bad(const char *id, size_t len, int user)
{
    if (len == 0) return user ? "empty user id" : "empty item id";
    if (len > HL_MAX_ID_LEN)
        return user ? "user id longer than 256 bytes" : "item id longer than 256 bytes";
    if (!hl_utf8_valid(id, len))
        return user ? "user id is not valid UTF-8" : "item id is not valid UTF-8";
    return NULL;
}

/* What the worker's codec accepts of a live event (bad_timestamp and
 * bad_weight there), so that training and evaluation see the events the
 * worker would apply: a time from 1970 to 2100 (beyond, the decay's
 * t_ref - t overflows and training turns to NaN) and a weight in
 * 0..HL_EVENT_MAX_WEIGHT (a negative or huge one made a model of
 * garbage, or a state table that refuses the user). */
static const char *values_bad(const hl_dataset_event *ev)
{
    if (ev->ts_ms < 0 || ev->ts_ms > HL_EVENT_MAX_TS_MS)
        return "timestamp outside 1970..2100";
    if (ev->has_weight && !(ev->weight >= 0 && ev->weight <= HL_EVENT_MAX_WEIGHT))
        return "weight outside 0..1e6";
    return NULL;
}

static const char *set_ids(hl_dataset_event *ev, const char *user, const char *item)
{
    const char *why;
    ev->user = user;
    ev->user_len = (uint32_t)strlen(user);
    ev->item = item;
    ev->item_len = (uint32_t)strlen(item);
    if ((why = id_bad(user, ev->user_len, 1)) != NULL) return why;
    return id_bad(item, ev->item_len, 0);
}

static const char *seconds_to_ms(const char *s, int64_t *ms)
{
    int64_t sec;
    if (parse_i64(s, &sec) != 0) return "timestamp is not an integer";
    if (sec > INT64_MAX / 1000 || sec < INT64_MIN / 1000) return "timestamp out of range";
    *ms = sec * 1000;
    return NULL;
}

/* ---- one parse function per format: NULL and *ev filled, or why ---- */

/* The reasons a header line fails with, compared by address in
 * is_header(): a header's ids parse (they are words), its rating or type
 * column does not. */
static const char WHY_RATING[] = "rating is not a number";
static const char WHY_TYPE[] =
    "unknown event_type: expected VIEW, CLICK, FAVORITE, ADD_TO_CART, PURCHASE or RATE";

/* userId,movieId,rating,timestamp (seconds); sep is "," or "::". */
static const char *parse_movielens(char *s, const char *sep, hl_dataset_event *ev)
{
    char *f[4];
    const char *why;
    int n = split(s, sep, f, 4);

    if (n < 4) return "missing fields: expected user,item,rating,timestamp";
    if (n > 4) return "too many fields: expected user,item,rating,timestamp";
    if ((why = set_ids(ev, f[0], f[1])) != NULL) return why;
    if (parse_f32(f[2], &ev->weight) != 0) return WHY_RATING;
    if ((why = seconds_to_ms(f[3], &ev->ts_ms)) != NULL) return why;
    ev->type = HL_RATE;
    ev->has_weight = 1;
    return NULL;
}

static int taobao_type(const char *b)
{
    if (strcmp(b, "pv") == 0) return HL_VIEW;
    if (strcmp(b, "cart") == 0) return HL_ADD_TO_CART;
    if (strcmp(b, "fav") == 0) return HL_FAVORITE;
    if (strcmp(b, "buy") == 0) return HL_PURCHASE;
    return -1;
}

/* user,item,category,behavior,timestamp (seconds); category is not kept. */
static const char *parse_taobao(char *s, hl_dataset_event *ev)
{
    char *f[5];
    const char *why;
    int n = split(s, ",", f, 5);

    if (n < 5) return "missing fields: expected user,item,category,behavior,timestamp";
    if (n > 5) return "too many fields: expected user,item,category,behavior,timestamp";
    if ((why = set_ids(ev, f[0], f[1])) != NULL) return why;
    if ((ev->type = taobao_type(f[3])) < 0) return "unknown behavior: expected pv, cart, fav or buy";
    if ((why = seconds_to_ms(f[4], &ev->ts_ms)) != NULL) return why;
    ev->weight = 1.0f;
    ev->has_weight = 0;
    return NULL;
}

/* user_id,item_id,event_type,timestamp_ms[,weight]; an empty weight is none. */
static const char *parse_events_csv(char *s, hl_dataset_event *ev)
{
    char *f[5];
    const char *why;
    int n = split(s, ",", f, 5);

    if (n < 4) return "missing fields: expected user_id,item_id,event_type,timestamp_ms[,weight]";
    if (n > 5) return "too many fields: expected user_id,item_id,event_type,timestamp_ms[,weight]";
    if ((why = set_ids(ev, f[0], f[1])) != NULL) return why;
    if ((ev->type = hl_type_parse(f[2], strlen(f[2]))) < 0)
        return WHY_TYPE;
    if (parse_i64(f[3], &ev->ts_ms) != 0) return "timestamp_ms is not an integer";
    ev->weight = 1.0f;
    ev->has_weight = 0;
    if (n == 5 && f[4][0] != '\0') {
        if (parse_f32(f[4], &ev->weight) != 0) return "weight is not a number";
        ev->has_weight = 1;
    }
    return NULL;
}

/* ---- seq ---- */

static int is_space(char c) { return c == ' ' || c == '\t'; }

/* Tokenises line into r->toks (grown only when a line has more tokens than
 * any before it). HL_ENOMEM if that growth fails. */
static int seq_tokenise(hl_dataset_reader *r, const char *s, size_t len)
{
    size_t i = 0;
    r->n_toks = 0;
    r->next_tok = 1;                           /* token 0 is the user */
    while (i < len) {
        size_t start;
        while (i < len && is_space(s[i])) i++;
        if (i == len) break;
        start = i;
        while (i < len && !is_space(s[i])) i++;
        if (r->n_toks == r->toks_cap) {
            size_t cap = r->toks_cap ? 2 * r->toks_cap : 256;
            tok *t = realloc(r->toks, cap * sizeof *t);
            if (t == NULL) return HL_ENOMEM;
            r->toks = t;
            r->toks_cap = cap;
        }
        r->toks[r->n_toks++] = (tok){ (uint32_t)start, (uint32_t)(i - start) };
    }
    return 0;
}

/* Why a seq line gives no events, or NULL. Its last item is at (items - 1)
 * x step, the time values_bad() bounds for the other formats: a line
 * whose last one is after 2100 (or beyond int64) is refused whole, as the
 * worker would refuse those events and the decay of the rest overflows. */
static const char *seq_check(const hl_dataset_reader *r)
{
    const char *why;
    int64_t step = r->o.seq_step_ms;
    if (r->n_toks < 2) return "missing fields: expected user item [item ...]";
    if ((why = id_bad(r->line + r->toks[0].off, r->toks[0].len, 1)) != NULL) return why;
    for (size_t i = 1; i < r->n_toks; i++)
        if ((why = id_bad(r->line + r->toks[i].off, r->toks[i].len, 0)) != NULL) return why;
    if ((int64_t)r->n_toks - 2 > HL_EVENT_MAX_TS_MS / step)
        return "last item after 2100 at i x --seq-step-ms: give a smaller step";
    return NULL;
}

/* The next event of the current seq line: item i (0-based) at i x step. */
static void seq_emit(hl_dataset_reader *r, hl_dataset_event *ev)
{
    size_t i = r->next_tok++;
    ev->user = r->line + r->toks[0].off;
    ev->user_len = r->toks[0].len;
    ev->item = r->line + r->toks[i].off;
    ev->item_len = r->toks[i].len;
    ev->type = HL_VIEW;
    ev->ts_ms = (int64_t)(i - 1) * r->o.seq_step_ms;
    ev->weight = 1.0f;
    ev->has_weight = 0;
    ev->line = r->seq_line;
}

/* ---- the reader ---- */

/* Opens path ("-": stdin) into r->fd; 0 or why not, naming the path. */
static int open_fd(hl_dataset_reader *r, const char *path, char *errbuf, size_t errlen)
{
    struct stat st;
    if (strcmp(path, "-") == 0) r->fd = 0;
    else if ((r->fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return hl_err(errbuf, errlen, errno == ENOENT ? HL_ENOENT : HL_EIO,
                      "dataset %s: open: %s", path, strerror(errno));
    /* open() takes a directory and its first read fails with EISDIR:
     * refused here, in words. A FIFO or a device is read as a stream, as
     * stdin is. */
    if (fstat(r->fd, &st) == 0 && S_ISDIR(st.st_mode))
        return hl_err(errbuf, errlen, HL_EINVAL, "dataset %s: is a directory: give the "
                      "event file itself", path);
    return 0;
}

hl_dataset_reader *hl_dataset_open(const char *path, const hl_dataset_opts *o,
                                   char *errbuf, size_t errlen)
{
    hl_dataset_reader *r = calloc(1, sizeof *r);

    if (r == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "dataset %s: no memory", path);
        return NULL;
    }
    r->fd = -1;
    r->o = *o;
    if (r->o.seq_step_ms <= 0) r->o.seq_step_ms = DEFAULT_SEQ_STEP_MS;
    if (r->o.max_line_bytes <= 0) r->o.max_line_bytes = DEFAULT_MAX_LINE;
    if (open_fd(r, path, errbuf, errlen) != 0) {
        hl_dataset_close(r);
        return NULL;
    }
    if ((r->path = strdup(path)) == NULL ||
        (r->lines = hl_lines_create(r->fd, (size_t)r->o.max_line_bytes, MAX_SKIP)) == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "dataset %s: no memory", path);
        hl_dataset_close(r);
        return NULL;
    }
    return r;
}

void hl_dataset_close(hl_dataset_reader *r)
{
    if (r == NULL) return;
    if (r->fd > 0) close(r->fd);
    hl_lines_destroy(r->lines);
    free(r->path);
    free(r->toks);
    free(r);
}

void hl_dataset_stats_get(const hl_dataset_reader *r, hl_dataset_stats *st)
{
    *st = r->st;
}

void hl_dataset_progress(const hl_dataset_reader *r, int64_t *done, int64_t *total)
{
    struct stat st;
    *done = *total = -1;
    if (fstat(r->fd, &st) != 0 || !S_ISREG(st.st_mode))
        return;                         /* a stream has no size to be a fraction of */
    *total = (int64_t)st.st_size;
    *done = hl_lines_offset(r->lines);
}

/* Every reason is a fixed sentence, or "line longer than N bytes" (at
 * most 65), so none is cut; the shared one is the longest, 94 bytes. */
_Static_assert(sizeof HL_LINES_CR_INSIDE <= sizeof ((hl_dataset_stats *)0)->first_bad_why[0],
               "HL_LINES_CR_INSIDE would be cut in first_bad_why");

static void bad_line(hl_dataset_reader *r, const char *why)
{
    hl_dataset_stats *st = &r->st;
    if (st->bad_lines < 8) {
        st->first_bad_line[st->bad_lines] = st->lines;
        snprintf(st->first_bad_why[st->bad_lines], sizeof st->first_bad_why[0], "%s", why);
    }
    st->bad_lines++;
}

/* Line 1 of a format with a header, failing as data with why: a header
 * only if it failed at the rating or type column ("rating", "event_type").
 * Any failing line 1 used to be one, so a headerless file's first event
 * with a bad timestamp or a 10 MB id was dropped without a word. */
static int is_header(const hl_dataset_reader *r, const char *why)
{
    if (r->st.lines != 1) return 0;
    if (r->o.format == HL_FMT_MOVIELENS_CSV) return why == WHY_RATING;
    if (r->o.format == HL_FMT_EVENTS_CSV) return why == WHY_TYPE;
    return 0;
}

/* Parses one trimmed line of a one-event-per-line format. */
static const char *parse_line(hl_dataset_reader *r, char *s, hl_dataset_event *ev)
{
    switch (r->o.format) {
    case HL_FMT_MOVIELENS_CSV: return parse_movielens(s, ",", ev);
    case HL_FMT_MOVIELENS_DAT: return parse_movielens(s, "::", ev);
    case HL_FMT_TAOBAO:        return parse_taobao(s, ev);
    case HL_FMT_EVENTS_CSV:    return parse_events_csv(s, ev);
    case HL_FMT_SEQ:           break;
    }
    return "unknown format";
}

/* Handles one line read into r->line: 1 if *ev is an event, 0 if the line
 * gave none (blank, header, bad, or a seq line queued in r->toks). */
static int line_handle(hl_dataset_reader *r, size_t len, hl_dataset_event *ev,
                       char *errbuf, size_t errlen)
{
    const char *why;

    if (hl_lines_trim(r->line, &len)) { r->st.blank_lines++; return 0; }
    if (strlen(r->line) != len) { bad_line(r, "NUL byte in line"); return 0; }
    /* A CR left after the trim is inside the line: lone-CR line ends (old
     * Mac tools) made the file one line, and seq took "b<CR>u2" for an
     * item, a CR for part of an id, silently. */
    if (memchr(r->line, '\r', len) != NULL) {
        bad_line(r, HL_LINES_CR_INSIDE);
        return 0;
    }
    if (r->o.format == HL_FMT_SEQ) {
        if (seq_tokenise(r, r->line, len) != 0)
            return hl_err(errbuf, errlen, HL_ENOMEM, "dataset: no memory for line %lld",
                          (long long)r->st.lines);
        if ((why = seq_check(r)) != NULL) { r->n_toks = 0; bad_line(r, why); }
        r->seq_line = r->st.lines;
        return 0;
    }
    if ((why = parse_line(r, r->line, ev)) != NULL) {
        if (is_header(r, why)) return 0;
        bad_line(r, why);
        return 0;
    }
    if ((why = values_bad(ev)) != NULL) {      /* data, not a header: a bad line */
        bad_line(r, why);
        return 0;
    }
    ev->line = r->st.lines;
    return 1;
}

/* The next line into r->line: 1, 0 at the end, or an error naming the
 * file. A line over the bound is a bad line here, and reading goes on. */
static int next_line(hl_dataset_reader *r, size_t *len, char *errbuf, size_t errlen)
{
    for (;;) {
        int rc = hl_lines_next(r->lines, &r->line, len);
        if (rc >= 0 && rc != 1) return rc;
        if (rc == 1 || rc == HL_ERANGE) r->st.lines++;
        if (rc == 1) return 1;
        if (rc == HL_ERANGE) {
            char why[96];
            snprintf(why, sizeof why, "line longer than %lld bytes: not an event line",
                     (long long)r->o.max_line_bytes);
            bad_line(r, why);
            continue;
        }
        if (rc == HL_EFORMAT)
            return hl_err(errbuf, errlen, rc, "dataset %s: line %lld has no end within "
                          "%u MiB: not a text file of events", r->path,
                          (long long)r->st.lines + 1, (unsigned)(MAX_SKIP >> 20));
        if (rc == HL_ENOMEM)
            return hl_err(errbuf, errlen, rc, "dataset %s: no memory for line %lld",
                          r->path, (long long)r->st.lines + 1);
        return hl_err(errbuf, errlen, HL_EIO, "dataset %s: read after line %lld: %s",
                      r->path, (long long)r->st.lines, strerror(errno));
    }
}

int hl_dataset_next(hl_dataset_reader *r, hl_dataset_event *ev,
                    char *errbuf, size_t errlen)
{
    for (;;) {
        size_t len;
        int rc;
        if (r->next_tok < r->n_toks) {
            seq_emit(r, ev);
            r->st.events++;
            return 1;
        }
        r->n_toks = r->next_tok = 0;
        if ((rc = next_line(r, &len, errbuf, errlen)) != 1) return rc;
        if ((rc = line_handle(r, len, ev, errbuf, errlen)) < 0) return rc;
        if (rc == 1) {
            r->st.events++;
            return 1;
        }
    }
}
