/* cmd_common.c - what broker, demo, produce and items share (the contract is
 * cmd_common.h). Every option takes exactly one value, so the loop steps
 * by two; a number is refused whole (trailing text, out of range) rather
 * than read as far as it parses. */
#include "cmd_common.h"
#include "log.h"
#include "registry.h"
#include "utf8.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

static int parse_num(const char *s, double lo, double hi, int integer, double *out)
{
    char *end;
    errno = 0;
    *out = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || errno != 0 || !(*out >= lo && *out <= hi))
        return -1;
    return integer && *out != floor(*out) ? -1 : 0;
}

static int set_value(const hl_arg *o, const char *val)
{
    double x;
    if (o->kind == HL_ARG_STR) {
        *(const char **)o->dst = val;
        return 0;
    }
    if (parse_num(val, o->lo, o->hi, o->kind != HL_ARG_NUM, &x) != 0)
        return -1;
    if (o->kind == HL_ARG_INT)
        *(int *)o->dst = (int)x;
    else if (o->kind == HL_ARG_I64)
        *(int64_t *)o->dst = (int64_t)x;
    else
        *(double *)o->dst = x;
    return 0;
}

static const hl_arg *find(const hl_cmd_args *a, const char *name)
{
    for (int i = 0; i < a->n_opts; i++)
        if (strcmp(a->opts[i].name, name) == 0)
            return &a->opts[i];
    return NULL;
}

/* One line, not the whole usage after it: the usage runs to dozens of
 * lines and scrolls the one that says what was wrong out of sight. */
int hl_cmd_unknown_option(const char *cmd, const char *opt)
{
    fprintf(stderr, "halflife %s: unknown option %s ('halflife %s --help' lists the "
            "options)\n", cmd, opt, cmd);
    return 2;
}

int hl_cmd_need_value(const char *cmd, const char *opt, const char *val)
{
    if (val == NULL) {
        fprintf(stderr, "halflife %s: %s needs a value\n", cmd, opt);
        return 2;
    }
    int is_option = strncmp(val, "--", 2) == 0 ||
                    (val[0] == '-' && isalpha((unsigned char)val[1]) && val[2] == '\0');
    if (!is_option)
        return 0;
    fprintf(stderr, "halflife %s: %s needs a value; got the option %s\n", cmd, opt, val);
    return 2;
}

/* A whole number in full ("4102444800000", not "4.1024e+12"), any other
 * with the fewest significant digits that read back as x ("1e-09", not
 * "1.0000000000000001e-09"). */
static void shortest(char *buf, size_t len, double x)
{
    if (x == floor(x) && fabs(x) < 1e17) {
        snprintf(buf, len, "%.0f", x);
        return;
    }
    for (int digits = 1; digits <= 17; digits++) {
        snprintf(buf, len, "%.*g", digits, x);
        if (strtod(buf, NULL) == x)
            return;
    }
}

void hl_cmd_range_text(char *buf, size_t len, int integer, double lo, double hi)
{
    char l[32], h[32];
    shortest(l, sizeof l, lo);
    shortest(h, sizeof h, hi);
    snprintf(buf, len, "%s in %s..%s", integer ? "an integer" : "a number", l, h);
}

int hl_cmd_bad_value(const char *cmd, const char *opt, const char *val, const char *want)
{
    fprintf(stderr, "halflife %s: %s %s: want %s\n", cmd, opt, val, want);
    return 2;
}

static int bad_number(const hl_cmd_args *a, const hl_arg *o, const char *val)
{
    char want[96];
    hl_cmd_range_text(want, sizeof want, o->kind != HL_ARG_NUM, o->lo, o->hi);
    return hl_cmd_bad_value(a->cmd, o->name, val, want);
}

int hl_cmd_parse_args(hl_cmd_args *a, int argc, char **argv)
{
    if (a->xs != NULL)
        a->xs->n = 0;
    for (int i = 1; i < argc; i += 2) {
        const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        const hl_arg *o = find(a, opt);
        if (!strcmp(opt, "-h") || !strcmp(opt, "--help")) {
            a->usage(stdout);
            return 1;
        }
        if (o == NULL && opt[0] != '-') {
            /* a value whose option was forgotten, or a second file of a
             * glob: "unknown option" and the usage would not say which */
            fprintf(stderr, "halflife %s: unexpected argument \"%s\": every value follows "
                    "its option ('halflife %s --help' lists them)\n", a->cmd, opt, a->cmd);
            return 2;
        }
        if (o == NULL && !(a->xs != NULL && !strcmp(opt, "-X")))
            return hl_cmd_unknown_option(a->cmd, opt);
        if (hl_cmd_need_value(a->cmd, opt, val) != 0)
            return 2;
        if (o == NULL && a->xs->n == HL_CMD_MAX_X) {
            fprintf(stderr, "halflife %s: more than %d -X options: put them in "
                    "HALFLIFE_* variables\n", a->cmd, HL_CMD_MAX_X);
            return 2;
        }
        if (o == NULL)
            a->xs->v[a->xs->n++] = argv[i + 1];
        else if (set_value(o, val) != 0)
            return bad_number(a, o, val);
    }
    return 0;
}

static volatile sig_atomic_t stops, stop_signal;

static void on_stop(int sig)
{
    if (stops++ == 0)
        stop_signal = sig;
}

void hl_cmd_catch_stops(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

void hl_cmd_log_stopping(const char *event)
{
    if (stops > 0)
        hl_log(HL_LOG_INFO, event, "signal=%s action=\"waiting for the deliveries of what "
               "was sent; signal again to give them up\"",
               stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
}

int hl_cmd_stops(void) { return (int)stops; }
int hl_cmd_stop_signal(void) { return (int)stop_signal; }

int hl_cmd_schema_id(const hl_worker_opts *wo, const char *topic, const char *schema,
                     const char *what, int32_t *id, char *errbuf, size_t errlen)
{
    char subject[300], why[512];
    int rc;
    *id = 0;
    if (wo->registry.urls == NULL || wo->registry.urls[0] == '\0' ||
        wo->codec.input_framing != HL_FRAMING_CONFLUENT)
        return 0;
    hl_registry *reg = hl_registry_create(&wo->registry, errbuf, errlen);
    if (reg == NULL)
        return HL_EINVAL;
    snprintf(subject, sizeof subject, "%s-value", topic);
    rc = hl_registry_subject_id(reg, subject, schema, wo->registry_auto_register, id, why,
                                sizeof why);
    hl_registry_destroy(reg);
    if (rc != 0)
        return hl_err(errbuf, errlen, rc, "%s under subject %s: %s", what, subject, why);
    hl_log(HL_LOG_INFO, what, "subject=%s id=%d", subject, (int)*id);
    return 0;
}

int hl_cmd_reach(rd_kafka_t *rk, const hl_config *cfg, int wait_ms, char *errbuf, size_t errlen)
{
    const struct rd_kafka_metadata *md = NULL;
    /* all_topics=0 with no topic asks for brokers only: cheap, and it does
     * not create topics on a broker that auto-creates them. */
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, NULL, &md, wait_ms);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_metadata_destroy(md);
        return 0;
    }
    const char *servers = hl_config_kafka_get(cfg, "bootstrap.servers");
    return hl_err(errbuf, errlen, HL_EIO,
                  "no broker at kafka.bootstrap.servers=%s answered within %d s (%s): "
                  "check the address and that Kafka runs there ('halflife broker' starts "
                  "a local one)", servers ? servers : "(unset)", wait_ms / 1000,
                  rd_kafka_err2str(err));
}

/* A JSON string: quotes, backslashes and control bytes escaped, valid
 * UTF-8 as it is, and each byte that is not part of it as U+FFFD (JSON
 * text is UTF-8; one bad id must not make the whole dump unreadable). */
void hl_cmd_json_str(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t k = hl_utf8_char_len(s + i, n - i);
        if (k == 0) {
            fputs("\\ufffd", f);
            k = 1;
        } else if (c == '"' || c == '\\') {
            fprintf(f, "\\%c", c);
        } else if (c < 0x20) {
            fprintf(f, "\\u%04x", c);
        } else {
            fwrite(s + i, 1, k, f);
        }
        i += k;
    }
    fputc('"', f);
}

/* A JSON number with digits significant digits, or null for NaN and
 * infinities (JSON has neither). */
void hl_cmd_json_num(FILE *f, const char *sep, int digits, double x)
{
    fputs(sep, f);
    if (isfinite(x)) fprintf(f, "%.*g", digits, x);
    else fputs("null", f);
}
