/* schema_store.h - writer schemas by id from a Schema Registry, fetched on
 * a thread of their own so no batch ever waits on the network (DESIGN.md
 * section 13).
 *
 * Every shard thread's codec asks the store through hl_schema_store_get
 * (an hl_codec_opts.schema_fn); the answer is immediate:
 *   0          the schema text: fetched before, cached (ids are immutable
 *              in a registry) within HL_SCHEMA_STORE_MAX_IDS and
 *              HL_SCHEMA_STORE_MAX_BYTES, else fetched again
 *   HL_EAGAIN  not known yet: the fetch thread is asking (or waiting to
 *              ask again: registry unreachable, 5xx, credentials refused;
 *              or no memory to keep or copy the schema); the record must
 *              wait, it is not bad
 *   HL_ENOENT  the registry has no such id (404) and the fallback
 *              directory has no usable <id>.avsc, or the answer was not an
 *              Avro schema or was over HL_CODEC_MAX_SCHEMA_BYTES (1 MiB,
 *              the limit of a schema file; the fallback directory is not
 *              read then), or the id is negative: the record is bad
 *              (unknown_schema)
 * A "no such id" is asked again in the background at most every 5 s when
 * the id is seen again, and stays the answer meanwhile (a flood of bad ids
 * never waits on the registry). A bad answer (no Avro schema, over the
 * size limit) the same way, but after 30 s, doubling to 5 min while it
 * stays bad: ids are immutable, and each answer may be 4 MB.
 *
 * Metrics: halflife_schema_registry_up (1 while the registry answers: a
 * request without an answer, 401/403 or 408/429 makes it 0, a 5xx only
 * when a second id fails too or no other id can check the registry; one
 * id the registry keeps failing leaves it 1, its records wait),
 * halflife_schema_registry_requests_total{result="ok", "not_found",
 * "bad_answer", "error"}. */
#ifndef HL_SCHEMA_STORE_H
#define HL_SCHEMA_STORE_H

#include "metrics.h"
#include "registry.h"

typedef struct hl_schema_store hl_schema_store;   /* opaque */

/* halflife_schema_registry_requests_total's help: the store registers it,
 * and the worker's start counts result="mismatch" (registry.h,
 * hl_registry_check_id) in it too. */
#define HL_SCHEMA_REGISTRY_REQUESTS_HELP "Requests to the Schema Registry by outcome (error: " \
    "no answer, 5xx, credentials refused or an answer not the registry's, such as a proxy's " \
    "page; bad_answer: the registry's answer holds no Avro schema or is too large; " \
    "mismatch: an id given for our own schema is another schema's)."


/* Ids remembered; beyond, "no such id"s go first, then ids still waiting
 * (asked for least lately), then fetched schemas (asked for least lately:
 * fetched again when asked). */
#define HL_SCHEMA_STORE_MAX_IDS  4096

/* Bytes of fetched schema text held; beyond, fetched schemas asked for
 * least lately go (fetched again when asked), never the one just fetched.
 * A schema is at most HL_CODEC_MAX_SCHEMA_BYTES (1 MiB), so the ids alone
 * allow 4 GB; typical schemas are a few KB, and 64 MB holds thousands. */
#define HL_SCHEMA_STORE_MAX_BYTES ((size_t)64 << 20)

/* Takes reg (ownership moves, also on failure) and starts the fetch
 * thread. fallback_dir: files <dir>/<id>.avsc used for ids the registry
 * answers 404 for; NULL or "": none. metrics may be NULL. */
hl_schema_store *hl_schema_store_create(hl_registry *reg, const char *fallback_dir,
                                        hl_metrics *metrics, char *errbuf, size_t errlen);
void hl_schema_store_destroy(hl_schema_store *s);        /* NULL is a no-op; joins */

/* Any thread. *text is a malloc'd copy the caller frees (on 0 only), made
 * without the store's lock; why gets a sentence for HL_EAGAIN and
 * HL_ENOENT. arg is the store (the
 * signature of hl_codec_opts.schema_fn). */
int hl_schema_store_get(void *arg, int32_t id, char **text, char *why, size_t whylen);

/* An id known to exist (the lists' own): while idle the fetch thread asks
 * for it every 30 s, and every backoff step while the registry is down, so
 * halflife_schema_registry_up says how the registry is even when no new id
 * needs fetching. */
void hl_schema_store_set_probe(hl_schema_store *s, int32_t id);

/* halflife_schema_registry_up's value (any thread). */
int  hl_schema_store_up(const hl_schema_store *s);

#endif
