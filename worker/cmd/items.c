/* items.c - `halflife items`: publish ItemUpdates (schemas/item_update.avsc)
 * to the item topic from a text file, one item per line:
 *
 *     item_id,available[,expires_at_ms[,bias,e_in x dim,e_out x dim]]
 *
 * available is true/false (or 1/0), or `delete` for a tombstone (a null
 * value: the worker forgets the item); expires_at_ms may be empty. A line
 * with the vectors is a file of embeddings: dim comes from --dim or from
 * the first such line, and every later one must match it. Each record is
 * the item's whole state (the topic is compacted by item_id): hiding an
 * added item means publishing its line again with available=false.
 * A line that starts with '#', or a first line whose second field is not
 * a boolean (a header), is skipped; any other bad line (also one with a NUL
 * byte or a CR other than a CRLF end's, or longer than 1 MiB) is reported with its number and reason,
 * nothing is sent for it, and the exit status is 1. Input with no line end
 * within 256 MiB (/dev/zero) stops the reading with an error; what was
 * sent before it is still waited for.
 *
 * Records are keyed by item_id and go through the worker's producer and
 * configuration, as `halflife produce` does; progress is logged every
 * second and the delivered count at the end. SIGINT or SIGTERM stops the
 * reading: what was sent is waited for, the line reached is said and the
 * exit status is 1 (a second signal gives up the wait). With
 * schema.registry.url the ItemUpdate schema is registered under
 * "<topic>-value" (or only looked up with schema.registry.auto.register=
 * false) and every record carries the registry's id instead of
 * items.schema.id. */
#include "cmd.h"
#include "cmd_common.h"
#include "codec_item.h"
#include "config.h"
#include "lines.h"
#include "log.h"
#include "model.h"
#include "producer.h"
#include "utf8.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

#define MAX_DIM     4096
#define MAX_LINE    (1 << 20)
/* How far a longer line is read on for its end; beyond, the input is no
 * text file (/dev/zero) and reading stops. */
#define MAX_SKIP    (256 << 20)

typedef struct items_args {
    const char *input, *topic;
    int         dim;                    /* 0: from the first embedding line */
    hl_cmd_xs   xs;                     /* -X key=value */
} items_args;

typedef struct items_run {
    hl_producer        *prod;
    const hl_config    *cfg;
    hl_item_codec_opts  co;
    const char         *topic;
    const char         *input;          /* the path, for messages */
    float              *vec;            /* 2 * MAX_DIM */
    char               *f[4 + 2 * MAX_DIM + 1];   /* one line's fields */
    int64_t             sent, bad, line;
    int                 fd;             /* the input; 0 is stdin, or none yet */
    hl_lines           *lines;          /* its lines */
    uint8_t            *buf;
    size_t              cap;
} items_run;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: halflife items --input FILE [--topic T] [--dim D] [-X key=value]...\n\n"
        "Publishes one ItemUpdate per line of FILE to the item topic, keyed by item_id:\n"
        "  item_id,available[,expires_at_ms[,bias,e_in x dim,e_out x dim]]\n"
        "available: true|false|1|0, or delete (a tombstone); expires_at_ms: milliseconds\n"
        "since 1970 (from 1973 on: a time in seconds is refused). With the vectors\n"
        "the item is added (unknown to the model) or its vectors replaced (known).\n"
        "Lines starting with '#', blank lines (spaces, tabs and CRs only) and a first\n"
        "line whose available is not one (a header) are skipped.\n\n"
        "  --input FILE   the file ('-' reads standard input)\n"
        "  --topic T      target topic (default: items.topic, items)\n"
        "  --dim D        floats per vector (default: from the first line with vectors)\n"
        "  -X key=value   configuration; kafka.bootstrap.servers is required; with\n"
        "                 schema.registry.url the schema is registered under\n"
        "                 <topic>-value and records carry its id\n\n"
        "Exit status: 0 every line sent and delivered; 1 a bad line (the others are\n"
        "sent), an update not delivered, the file unreadable or the brokers\n"
        "unreachable; 2 a usage or configuration error.\n");
}

/* 0, 1 (--help printed) or 2 (usage error, explained on stderr). */
static int parse_args(int argc, char **argv, items_args *a)
{
    memset(a, 0, sizeof *a);
    const hl_arg opts[] = {
        {"--input", HL_ARG_STR, 0, 0, &a->input},
        {"--topic", HL_ARG_STR, 0, 0, &a->topic},
        {"--dim", HL_ARG_INT, 1, MAX_DIM, &a->dim},
    };
    hl_cmd_args args = {.cmd = "items", .opts = opts, .usage = usage, .xs = &a->xs,
                        .n_opts = (int)(sizeof opts / sizeof opts[0])};
    int rc = hl_cmd_parse_args(&args, argc, argv);
    if (rc == 0 && a->input == NULL) {
        fprintf(stderr, "halflife items: --input is required\n\n");
        usage(stderr);
        return 2;
    }
    return rc;
}

/* ---- one line ---- */

/* Splits s at commas in place (its line end already gone: line_unfit());
 * returns the field count. */
static int split(char *s, char **f, int max)
{
    int n = 0;
    for (char *p = s; n < max; ) {
        f[n++] = p;
        if ((p = strchr(p, ',')) == NULL)
            break;
        *p++ = '\0';
    }
    return n;
}

/* 1 true, 0 false, 2 delete, -1 neither. */
static int parse_available(const char *s)
{
    if (!strcmp(s, "true") || !strcmp(s, "1")) return 1;
    if (!strcmp(s, "false") || !strcmp(s, "0")) return 0;
    if (!strcmp(s, "delete")) return 2;
    return -1;
}

/* A number within the model's bound (model.h): the worker refuses an
 * update with a value beyond it (out_of_range), so it is never sent. */
static int parse_float(const char *s, float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    *out = (float)v;
    return *s != '\0' && *end == '\0' && errno == 0 && fabs(v) <= HL_MODEL_MAX_ABS ? 0 : -1;
}

static const char *parse_vectors(items_run *r, char **f, int n, hl_item_update *u)
{
    int dim = (n - 4) / 2;
    if (n < 6 || (n - 4) % 2 != 0)
        return "vectors: want bias then e_in and e_out of dim floats each";
    if (r->co.dim != 0 && dim != r->co.dim)
        return "vectors of another dim than the first line's (or --dim)";
    if (parse_float(f[3], &u->bias) != 0)
        return "bias is not a number within +-256 (the model's bound)";
    for (int d = 0; d < 2 * dim; d++)
        if (parse_float(f[4 + d], &r->vec[d]) != 0)
            return "a vector value is not a number within +-256 (the model's bound)";
    u->e_in = r->vec;
    u->e_out = r->vec + dim;
    r->co.dim = dim;            /* the first valid line with vectors sets it */
    return NULL;
}

/* 1973-03-03 in ms; as seconds, the year 5138. */
#define ITEMS_MIN_EXPIRY_MS 100000000000LL

/* The update of one line, or a reason it has none. */
static const char *parse_line(items_run *r, char *line, hl_item_update *u)
{
    char **f = r->f;
    int n = split(line, f, (int)(sizeof r->f / sizeof r->f[0]));
    memset(u, 0, sizeof *u);
    u->expires_at_ms = HL_CATALOGUE_NO_EXPIRY;
    u->id = f[0];
    u->id_len = (uint32_t)strlen(f[0]);
    if (u->id_len < 1 || u->id_len > HL_MAX_ID_LEN)
        return "item_id outside 1..256 bytes";
    if (!hl_utf8_valid(u->id, u->id_len))       /* the worker refuses it: bad_utf8 */
        return "item_id is not valid UTF-8";
    if (n < 2 || (u->available = parse_available(f[1])) < 0)
        return "available is not true, false, 1, 0 or delete";
    u->tombstone = u->available == 2;
    if (u->tombstone && n > 2)
        return "delete takes no other fields";
    if (n >= 3 && f[2][0] != '\0') {
        char *end;
        errno = 0;
        u->expires_at_ms = strtoll(f[2], &end, 10);
        if (*end != '\0' || errno != 0)
            return "expires_at_ms is not an integer";
        /* The worker takes any time in its event range (from 1970 by
         * default), so seconds would hide the item at once, silently. */
        if (u->expires_at_ms < ITEMS_MIN_EXPIRY_MS)
            return "expires_at_ms is before 1973: seconds? give milliseconds since 1970";
    }
    if (n > 3)
        return parse_vectors(r, f, n, u);
    return NULL;
}

/* ---- sending ---- */

static int send_update(items_run *r, const hl_item_update *u, char *errbuf, size_t errlen)
{
    int len = 0;
    /* The cluster is asked at the first valid line, not before: a file of
     * bad lines is reported whole without one. */
    if (r->sent == 0 &&
        hl_cmd_reach(hl_producer_handle(r->prod), r->cfg, HL_CMD_REACH_MS, errbuf, errlen) != 0)
        return HL_EIO;
    if (!u->tombstone && (len = hl_item_encode(&r->co, u, r->buf, r->cap)) < 0)
        return hl_err(errbuf, errlen, len, "%s line %lld: cannot encode", r->input,
                      (long long)r->line);
    return hl_producer_send(r->prod, r->topic, -1, u->id, u->id_len,
                            u->tombstone ? NULL : r->buf, (size_t)len, NULL, NULL,
                            errbuf, errlen);
}

static void progress(items_run *r, const char *event)
{
    hl_producer_stats st;
    hl_producer_stats_get(r->prod, &st);
    hl_log(HL_LOG_INFO, event, "topic=%s lines=%lld sent=%lld delivered=%llu failed=%llu "
           "bad_lines=%lld", r->topic, (long long)r->line, (long long)r->sent,
           (unsigned long long)st.delivered, (unsigned long long)st.failed, (long long)r->bad);
}

/* Why a line read has no update, or NULL to parse it; *skip set for a
 * line that is none (a comment, a blank line, also with CR or spaces in
 * it: a file saved on Windows, a trailing empty line). The line rules are
 * hl_lines_trim's, the dataset readers' too. A line longer than MAX_LINE
 * was read on to its end and dropped: its tail is never taken for a line
 * of its own, since one such as "z,delete" would publish an update the
 * file does not hold. A NUL byte would hide the rest of its line from the
 * parser. The CRs that end a line are dropped (*len shrinks); any other
 * CR is a bad line: the line was cut at its first CR, so "z,delete\rjunk"
 * deleted z and a file of lone-CR line ends (old Mac tools) published its
 * first line alone. */
static const char *line_unfit(int rc, char *line, size_t *len, int *skip)
{
    *skip = 0;
    if (rc == HL_ERANGE) return "longer than 1 MiB (MAX_LINE)";
    if (line[0] == '#') { *skip = 1; return NULL; }
    if (strlen(line) != *len) return "NUL byte in line";
    if (hl_lines_trim(line, len)) *skip = 1;
    else if (memchr(line, '\r', *len) != NULL)
        return HL_LINES_CR_INSIDE;
    return NULL;
}

/* A read that failed: 0 if a stop signal interrupted it (a stop), else
 * an error saying where, since the lines after it were never read. */
static int read_failed(items_run *r, int rc, char *errbuf, size_t errlen)
{
    int read_errno = errno;
    if (rc == HL_EIO && hl_cmd_stops() > 0)
        return 0;
    if (rc == HL_EFORMAT)
        return hl_err(errbuf, errlen, rc, "%s: line %lld has no end within %d MiB: not a "
                      "text file of items", r->input, (long long)r->line + 1, MAX_SKIP >> 20);
    if (rc == HL_ENOMEM)
        return hl_err(errbuf, errlen, rc, "out of memory");
    return hl_err(errbuf, errlen, HL_EIO, "%s: read error after line %lld: %s", r->input,
                  (long long)r->line, strerror(read_errno));
}

static int send_all(items_run *r, char *errbuf, size_t errlen)
{
    int64_t last_ms = hl_now_mono_ms();
    hl_item_update u;
    char *line;
    size_t len;
    int rc, skip;
    while (hl_cmd_stops() == 0 && (rc = hl_lines_next(r->lines, &line, &len)) != 0) {
        if (rc < 0 && rc != HL_ERANGE)
            return read_failed(r, rc, errbuf, errlen);
        r->line++;
        const char *why = line_unfit(rc, line, &len, &skip);
        if (skip)
            continue;
        if (why == NULL)
            why = parse_line(r, line, &u);
        if (why != NULL && r->line == 1 && strstr(why, "available") != NULL)
            continue;                                   /* a header */
        if (why != NULL) {
            if (r->bad++ < 20)
                hl_log(HL_LOG_WARN, "bad_line", "file=%s line=%lld why=\"%s\"", r->input,
                       (long long)r->line, why);
            continue;
        }
        if (send_update(r, &u, errbuf, errlen) != 0)
            return HL_EIO;
        r->sent++;
        hl_producer_poll(r->prod, 0);
        if (hl_now_mono_ms() - last_ms >= 1000) {
            last_ms = hl_now_mono_ms();
            progress(r, "items_progress");
        }
    }
    return 0;
}

/* open() takes a directory, and its first read fails (EISDIR) as if
 * the file were empty: the run would publish nothing and exit 0. A FIFO
 * or '-' is read as a stream. */
static int open_input(items_run *r, const char *path, char *errbuf, size_t errlen)
{
    struct stat st;
    r->fd = strcmp(path, "-") ? open(path, O_RDONLY | O_CLOEXEC) : 0;
    if (r->fd < 0) {
        r->fd = 0;
        return hl_err(errbuf, errlen, HL_EIO, "%s: %s", path, strerror(errno));
    }
    if (fstat(r->fd, &st) == 0 && S_ISDIR(st.st_mode))
        return hl_err(errbuf, errlen, HL_EINVAL, "%s: is a directory: give the items file "
                      "itself", path);
    if ((r->lines = hl_lines_create(r->fd, MAX_LINE, MAX_SKIP)) == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "out of memory");
    return 0;
}

static int open_run(items_run *r, const items_args *a, const hl_config *cfg,
                    char *errbuf, size_t errlen)
{
    hl_worker_opts wo;
    hl_config_worker_opts(cfg, &wo);
    r->input = a->input;
    r->topic = a->topic != NULL ? a->topic : wo.items_topic;
    if (r->topic == NULL || r->topic[0] == '\0')
        return hl_err(errbuf, errlen, HL_EINVAL, "no topic: items.topic is empty and no --topic");
    r->co = (hl_item_codec_opts){.framing = wo.codec.input_framing,
                                 .schema_id = wo.items_schema_id, .dim = a->dim};
    int32_t id = 0;
    int rc = hl_cmd_schema_id(&wo, r->topic, hl_item_schema(), "item_schema", &id, errbuf,
                              errlen);
    if (rc != 0)
        return rc;
    if (id != 0)                /* with a registry its id, not items.schema.id */
        r->co.schema_id = id;
    r->cap = 64 + HL_MAX_ID_LEN + 2 * (size_t)MAX_DIM * 4 + 64;
    r->buf = malloc(r->cap);
    r->vec = malloc(2 * MAX_DIM * sizeof(float));
    if (r->buf == NULL || r->vec == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "out of memory");
    /* As `halflife produce`: librdkafka's own message.timeout.ms (5 min)
     * before the kafka.* keys, so a broker that never answers ends the run
     * with an error instead of a wait for ever. */
    int n_user;
    const hl_kafka_prop *user = hl_config_kafka(cfg, &n_user);
    hl_kafka_prop *props = malloc((size_t)(n_user + 1) * sizeof *props);
    if (props == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "out of memory");
    props[0] = (hl_kafka_prop){"message.timeout.ms", "300000"};
    if (n_user > 0)
        memcpy(props + 1, user, (size_t)n_user * sizeof *props);
    r->prod = hl_producer_create(props, n_user + 1, NULL, errbuf, errlen);
    free(props);
    r->cfg = cfg;
    return r->prod == NULL ? HL_EINVAL : 0;
}

/* Until every update sent is reported (message.timeout.ms bounds it); a
 * second stop signal fails the rest instead. */
static void wait_reported(items_run *r, hl_producer_stats *ps)
{
    for (;;) {
        hl_producer_stats_get(r->prod, ps);
        if (ps->delivered + ps->failed >= (uint64_t)r->sent)
            break;
        if (hl_cmd_stops() > 1)
            hl_producer_settle(r->prod, 0);
        hl_producer_flush(r->prod, 1000);
        progress(r, "items_waiting");
    }
    progress(r, "items_done");
}

/* The exit status of a run that read to its end or to a stop, and the
 * sentence for anything short of every line delivered. */
static int outcome(const items_run *r, const hl_producer_stats *ps, char *err, size_t errlen)
{
    int rc = ps->failed == 0 && ps->delivered == (uint64_t)r->sent && r->bad == 0 &&
             hl_cmd_stops() == 0 ? 0 : 1;
    if (hl_cmd_stops() > 0)
        snprintf(err, errlen, "stopped by %s after line %lld of %s: %llu of %lld "
                 "updates delivered; the lines after it were not sent",
                 hl_cmd_stop_signal() == SIGINT ? "SIGINT" : "SIGTERM", (long long)r->line,
                 r->input, (unsigned long long)ps->delivered, (long long)r->sent);
    else if (rc != 0)
        snprintf(err, errlen, "%s: %lld bad lines (the bad_line warnings name them), "
                 "%llu of %lld updates not delivered", r->input, (long long)r->bad,
                 (unsigned long long)(r->sent - (int64_t)ps->delivered), (long long)r->sent);
    return rc;
}

int hl_cmd_items(int argc, char **argv)
{
    items_args a;
    items_run r;
    char err[512] = "";
    hl_config *cfg = NULL;
    hl_producer_stats ps;
    int rc = parse_args(argc, argv, &a);
    if (rc != 0)
        return rc == 1 ? 0 : 2;
    memset(&r, 0, sizeof r);
    rc = 1;
    if ((cfg = hl_config_create()) == NULL)
        goto out;
    rc = 2;                     /* a wrong configuration is a usage error, as for run */
    if (hl_config_load(cfg, NULL, environ, a.xs.v, a.xs.n, err, sizeof err) != 0)
        goto out;
    const char *servers = hl_config_kafka_get(cfg, "bootstrap.servers");
    if (servers == NULL || servers[0] == '\0') {     /* "" would wait 15 s for nothing */
        snprintf(err, sizeof err, "-X kafka.bootstrap.servers=HOST:PORT is required");
        goto out;
    }
    rc = 1;
    r.input = a.input;
    if (open_input(&r, a.input, err, sizeof err) != 0 ||
        open_run(&r, &a, cfg, err, sizeof err) != 0)
        goto out;
    hl_cmd_catch_stops();       /* as produce: a stop flushes and says how far */
    if (send_all(&r, err, sizeof err) != 0) {
        /* What was sent before the failure is still waited for: exit 1
         * must not also mean that lines before it were lost. */
        if (r.sent > 0)
            wait_reported(&r, &ps);
        goto out;
    }
    hl_cmd_log_stopping("items_stopping");
    wait_reported(&r, &ps);
    rc = outcome(&r, &ps, err, sizeof err);
out:
    if (rc != 0)
        fprintf(stderr, "halflife items: %s\n", err[0] ? err : "out of memory");
    hl_lines_destroy(r.lines);
    if (r.fd > 0)
        close(r.fd);
    hl_producer_destroy(r.prod, 0);
    free(r.buf);
    free(r.vec);
    hl_config_destroy(cfg);
    return rc;
}
