/* registry.h - a client of a Confluent-compatible Schema Registry (DESIGN.md
 * section 13): the three REST calls the worker and `halflife produce` make,
 * over libcurl, with JSON read and written by jansson.
 *
 *   GET  /schemas/ids/{id}            a writer schema by id
 *   POST /subjects/{subject}/versions register a schema (its id back)
 *   POST /subjects/{subject}          look a schema up (its id back)
 *
 * Every call tries the configured URLs in turn, starting with the one that
 * answered last, and sorts the outcome into what the caller must do:
 *   0           the answer
 *   HL_ENOENT   the registry has no such id, subject or schema (HTTP 404
 *               with its error_code 404xx)
 *   HL_EAGAIN   no URL answered, or each answered 5xx or an answer that is
 *               not the registry's (a 2xx that is not a JSON object or has
 *               no "schema" string, or "id" integer, for the call; a 404
 *               without its error body: a proxy's page, another service's
 *               JSON): transient, retry
 *   HL_EDENIED  HTTP 401 or 403: the credentials are wrong; or the TLS
 *               handshake failed (CA, client certificate)
 *   HL_EINVAL   any other refusal (422 invalid schema, 409 incompatible)
 *   HL_EFORMAT  the registry's answer is unusable: a schemaType other than
 *               AVRO, an "id" out of range, or a 2xx with a JSON
 *               Content-Type over HL_REGISTRY_MAX_BODY
 * Error texts name the URL without its user info and the registry's own
 * error_code and message; the password is never in them.
 *
 * A client is used by one thread at a time (it holds one curl handle). */
#ifndef HL_REGISTRY_H
#define HL_REGISTRY_H

#include "hl.h"

#include <signal.h>
#include <stdatomic.h>

typedef struct hl_registry_opts {
    const char *urls;          /* schema.registry.url: "http://a:8081,http://b:8081" */
    int         timeout_ms;    /* schema.registry.timeout.ms, per request and URL */
    const char *user_info;     /* "user:password" for Basic auth; NULL or "": none */
    const char *ssl_ca;        /* CA bundle file; NULL: the system's */
    const char *ssl_cert;      /* client certificate (PEM); NULL: none */
    const char *ssl_key;       /* its private key (PEM); NULL: none */
} hl_registry_opts;

typedef struct hl_registry hl_registry;   /* opaque */

#define HL_REGISTRY_MAX_URLS    16
#define HL_REGISTRY_MAX_BODY    (4 << 20)  /* a larger answer is refused */

/* Checks the URLs (http:// or https://, at most HL_REGISTRY_MAX_URLS);
 * contacts nothing. NULL and errbuf on a bad option. */
hl_registry *hl_registry_create(const hl_registry_opts *o, char *errbuf, size_t errlen);
void         hl_registry_destroy(hl_registry *r);          /* NULL is a no-op */

/* The writer schema of id: *schema gets a malloc'd NUL-terminated copy of
 * its JSON text (the caller frees). A schemaType other than AVRO is
 * HL_EFORMAT. */
int hl_registry_schema_by_id(hl_registry *r, int32_t id, char **schema,
                             char *errbuf, size_t errlen);

/* Registers schema under subject (or finds it registered already: the
 * registry answers with the existing id) and sets *id. */
int hl_registry_register(hl_registry *r, const char *subject, const char *schema,
                         int32_t *id, char *errbuf, size_t errlen);

/* The id of schema under subject, without registering: HL_ENOENT when the
 * subject or the schema is not there. */
int hl_registry_lookup(hl_registry *r, const char *subject, const char *schema,
                       int32_t *id, char *errbuf, size_t errlen);

/* Whether id is schema in the registry: fetches /schemas/ids/{id} and
 * compares the two parsed, by avro-c's equality (types, full names, field
 * names in order; not layout, key order, docs or defaults, which a
 * registry may rewrite). A register or lookup answered with another
 * schema's id (a proxy's cache, a registry's bug) had every list written
 * under that id, and consumers read it with the wrong schema.
 *   0             the same schema
 *   HL_EMISMATCH  another one: the text names the id and both schemas (full
 *                 name and fingerprint)
 *   HL_EAGAIN     as hl_registry_schema_by_id, and when the registry has
 *                 no such id (a replica behind the one that gave it),
 *                 asked again for up to a second first
 *   else          hl_registry_schema_by_id's code */
int hl_registry_check_id(hl_registry *r, int32_t id, const char *schema,
                         char *errbuf, size_t errlen);

/* The id of schema under subject: registered (auto_register) or looked
 * up, then checked (hl_registry_check_id); the codes of the three. */
int hl_registry_subject_id(hl_registry *r, const char *subject, const char *schema,
                           int auto_register, int32_t *id, char *errbuf, size_t errlen);

/* flag (may be NULL; borrowed) stops a request in progress within about a
 * second once it reads non-zero: the call then returns HL_EAGAIN. For a
 * thread that must not wait schema.registry.timeout.ms per URL to stop. */
void hl_registry_set_abort(hl_registry *r, const atomic_int *flag);

/* The same for a flag a signal handler sets (`halflife run`'s SIGTERM
 * while the worker starts); NULL to stop looking at it. */
void hl_registry_set_signal_abort(hl_registry *r, volatile sig_atomic_t *flag);

/* The HTTP status of the last call's last answer (the last URL tried);
 * 0 when that URL gave none (no connection, timeout, TLS, aborted). Tells
 * a registry that is away from one that answers 5xx for one request. */
long hl_registry_last_status(const hl_registry *r);

/* The URLs as given with user info ("user:pw@") replaced by "***@", for
 * logs. */
void hl_registry_urls_redacted(const hl_registry *r, char *buf, size_t len);

#endif
