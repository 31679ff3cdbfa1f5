/* cmd_common.h - what `halflife broker`, `demo`, `produce` and `items`
 * share: the argument parsing (options that each take one value,
 * `--port 9092`; -h and --help; numbers checked against a range; -X
 * key=value collected for the configuration) and, for the two that write
 * Avro, the Schema Registry id of the schema they write, and the check
 * that the brokers answer before anything is sent; JSON output for
 * snapshot and model.
 * Private to worker/cmd/ (only subcommands include it). */
#ifndef HL_CMD_COMMON_H
#define HL_CMD_COMMON_H

#include "config.h"

#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
    HL_ARG_STR,     /* dst is const char **: the argv string itself */
    HL_ARG_INT,     /* dst is int *, an integer in lo..hi */
    HL_ARG_I64,     /* dst is int64_t *, an integer in lo..hi */
    HL_ARG_NUM      /* dst is double *, a number in lo..hi */
} hl_arg_kind;

typedef struct hl_arg {
    const char  *name;          /* "--port" */
    hl_arg_kind  kind;
    double       lo, hi;        /* allowed range of numbers */
    void        *dst;
} hl_arg;

#define HL_CMD_MAX_X 64

/* The -X key=value arguments, as hl_config_load takes them. */
typedef struct hl_cmd_xs {
    char *v[HL_CMD_MAX_X];
    int   n;
} hl_cmd_xs;

typedef struct hl_cmd_args {
    const char   *cmd;          /* "produce", for messages */
    const hl_arg *opts;
    int           n_opts;
    void        (*usage)(FILE *f);
    hl_cmd_xs    *xs;           /* -X key=value go here; NULL: -X is unknown */
} hl_cmd_args;

/* Fills the options' destinations (those not given keep their values) and
 * a->xs. 0; 1 when --help was printed (exit 0); 2 on a usage error, said on
 * stderr with what was wrong (exit 2). Required options are the
 * command's to check. */
int hl_cmd_parse_args(hl_cmd_args *a, int argc, char **argv);

/* Says on stderr that opt is no option of `halflife cmd` and where the
 * options are listed; returns 2, the exit status of a usage error. Every
 * subcommand's parser says it so, wherever the option stands. */
int hl_cmd_unknown_option(const char *cmd, const char *opt);

/* 0 when val may be opt's value; otherwise 2, the exit status of a usage
 * error, said on stderr: val is NULL (the line ended) or an option. A
 * value never starts with "--" nor is "-" and one letter (-X, -h, -c):
 * `--input --format seq` took "--format" for the file and then called
 * "seq" an unexpected argument. No option of ours takes such a value; a
 * file so named is given as ./--name. */
int hl_cmd_need_value(const char *cmd, const char *opt, const char *val);

/* "an integer in 1..1000" or "a number in 1e-09..10" into buf: what a
 * number out of lo..hi is told, each bound in its shortest exact form. */
void hl_cmd_range_text(char *buf, size_t len, int integer, double lo, double hi);

/* Says on stderr "halflife cmd: opt val: want <want>" and returns 2: the
 * one form every subcommand gives a bad value in. */
int hl_cmd_bad_value(const char *cmd, const char *opt, const char *val, const char *want);

/* With schema.registry.url (and Confluent framing): the id of schema
 * under "<topic>-value" (TopicNameStrategy), registered, or only looked
 * up with schema.registry.auto.register=false, logged with `what`
 * ("event_schema"); *id 0 without a registry. Fails with a sentence
 * naming the subject. */
int hl_cmd_schema_id(const hl_worker_opts *wo, const char *topic, const char *schema,
                     const char *what, int32_t *id, char *errbuf, size_t errlen);

/* Waits up to wait_ms for the cluster behind rk to answer a metadata
 * request. 0 when it does; otherwise fails with a sentence naming the
 * bootstrap servers and what to check, so that a replay against a wrong
 * address ends in seconds instead of after message.timeout.ms (5 min). */
#define HL_CMD_REACH_MS 15000   /* what produce and items give a cluster to answer */
int hl_cmd_reach(rd_kafka_t *rk, const hl_config *cfg, int wait_ms, char *errbuf, size_t errlen);

/* SIGINT and SIGTERM for produce and items, whose replays run for
 * minutes: the first asks the command to stop reading, wait for what it
 * has sent and say how far it got (a signal killing it outright loses
 * what librdkafka still queues and reports nothing); a second one ends
 * that wait too. hl_cmd_stops() is how many have come, 0 if none;
 * hl_cmd_stop_signal() the first one's number. Like `halflife run`'s stop
 * flag, the count is a static: a handler has nowhere else to write. */
void hl_cmd_catch_stops(void);
/* Logs `event` (signal=, then what to do) when a stop has come: the wait
 * that follows can be minutes with a broker down, and without it nothing
 * would say that a second signal ends it. */
void hl_cmd_log_stopping(const char *event);
int  hl_cmd_stops(void);
int  hl_cmd_stop_signal(void);

/* JSON output for the commands that print it (snapshot, model): a string
 * with quotes, backslashes and control bytes escaped and each byte that is
 * not part of valid UTF-8 as U+FFFD (ids and versions come from files);
 * a number after sep with digits significant digits, or null when it is
 * not finite. */
void hl_cmd_json_str(FILE *f, const char *s, size_t n);
void hl_cmd_json_num(FILE *f, const char *sep, int digits, double x);

#endif
