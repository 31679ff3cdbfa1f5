/* config.h - the worker's configuration (DESIGN.md section 7).
 *
 * Three layers, later wins: a properties file (`key=value` lines, `#`
 * comments), then environment variables (HALFLIFE_ + the key upper-cased
 * with `.` as `_`: HALFLIFE_RECS_K=50), then `-X key=value` arguments.
 * Every key has a type, a default and an allowed range or set of values,
 * all in one table in config.c; an unknown key or a bad value is refused
 * with a message naming the key, the value and what is allowed. Every
 * `kafka.*` key is checked against librdkafka and handed to it without the
 * prefix. */
#ifndef HL_CONFIG_H
#define HL_CONFIG_H

#include "hl.h"
#include "producer.h"      /* hl_kafka_prop */
#include "worker.h"        /* hl_worker_opts */

#include <stdio.h>

typedef struct hl_config hl_config;   /* opaque */

/* A configuration holding every default. NULL only when out of memory. */
hl_config *hl_config_create(void);
void       hl_config_destroy(hl_config *cfg);         /* NULL is a no-op */

/* Sets one key from text; origin names where it came from for messages
 * ("-X", "HALFLIFE_RECS_K", "worker.properties line 3"). HL_EINVAL with a
 * reason naming key, value and what is allowed. */
int hl_config_set(hl_config *cfg, const char *key, const char *value,
                  const char *origin, char *errbuf, size_t errlen);

/* Reads a properties file, lines of any length. HL_EIO if it cannot be
 * read, HL_EINVAL on a bad line (no '=', a NUL byte) or a refused key,
 * naming the file and line. */
int hl_config_load_file(hl_config *cfg, const char *path, char *errbuf, size_t errlen);

/* Applies every HALFLIFE_* variable of envp (NULL-terminated, as environ).
 * A HALFLIFE_* variable that names no key is refused. */
int hl_config_load_env(hl_config *cfg, char *const *envp, char *errbuf, size_t errlen);

/* Applies one "key=value" argument of -X. */
int hl_config_set_arg(hl_config *cfg, const char *arg, char *errbuf, size_t errlen);

/* The three layers in order: file (NULL: none), then envp (NULL: none),
 * then the n_args "key=value" strings, then the checks across keys
 * (event.min.ts.ms <= event.max.ts.ms; neither output.topic nor dlq.topic
 * is input.topic, which would loop; metrics.bind is an IP address;
 * schema.registry.url holds http:// or https:// URLs). */
int hl_config_load(hl_config *cfg, const char *file, char *const *envp,
                   char *const *args, int n_args, char *errbuf, size_t errlen);

/* Typed getters. key must be a key of the table of the right type: anything
 * else is a programming error and aborts. Strings are borrowed from cfg.
 *  - hl_config_str: NULL for a key without default that was not set
 *    (model.path); dlq.topic defaults to "<input.topic>.dlq".
 *  - hl_config_int: worker.threads 0 (the default) reads as the CPUs this
 *    process may use (hl_cpus_available: online cores, affinity, cgroup
 *    CPU quota, the least).
 *  - hl_config_num: NAN for a key without default that was not set
 *    (weight.*: the model's type weight applies). */
const char *hl_config_str(const hl_config *cfg, const char *key);
int64_t     hl_config_int(const hl_config *cfg, const char *key);
double      hl_config_num(const hl_config *cfg, const char *key);
int         hl_config_bool(const hl_config *cfg, const char *key);
/* 1 if file, environment or -X set key (kafka.* keys included). */
int         hl_config_is_set(const hl_config *cfg, const char *key);

/* The kafka.* keys in the order first set, prefix removed; *n gets the
 * count. Borrowed from cfg. */
const hl_kafka_prop *hl_config_kafka(const hl_config *cfg, int *n);
/* The value of kafka.<key> (key without the prefix), or NULL if unset. */
const char *hl_config_kafka_get(const hl_config *cfg, const char *key);

/* Fills every field of o that a key sets, each from its key: the topics,
 * the codec, recs.*, worker.threads, batch.*, state.*, snapshot.*,
 * weight.*, auto.offset.reset, shutdown.timeout.ms, embedded.partitions
 * and the kafka.* list. Strings and o->kafka are borrowed from cfg, which
 * must outlive o. on_list is left NULL. Keys that are not the worker's are
 * read by the commands: model.path, metrics.port, metrics.bind, log.level. */
void hl_config_worker_opts(const hl_config *cfg, hl_worker_opts *o);

/* log.level as an HL_LOG_* level, for hl_log_set_level(). */
int hl_config_log_level(const hl_config *cfg);

/* Prints every key with its default, allowed values and meaning (the
 * listing of `halflife run --help`). */
void hl_config_print_help(FILE *f);

/* The same listing as a Markdown table (key | default | allowed | meaning):
 * README.md's key list, which `make readme-keys` regenerates from it. */
void hl_config_print_markdown(FILE *f);

#endif
