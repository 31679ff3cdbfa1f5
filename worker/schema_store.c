/* schema_store.c - the registry's writer schemas by id, shared by every
 * shard thread, filled by one fetch thread.
 *
 * Shard threads only read the table and add "wanted" entries, under one
 * mutex held for a lookup, never across a request: a slow or dead registry
 * costs a waiting record nothing but its wait, and records with known ids
 * go on (schema_store.h). The fetch thread takes one wanted id at a time,
 * the wanted ids in turn, asks the registry without the lock, and writes the answer back. While
 * the registry is away (no answer, 5xx, credentials refused) it retries
 * with a backoff from 100 ms doubling to 2 s, so a registry that comes
 * back is seen within 2 s; halflife_schema_registry_up reads 0 meanwhile
 * and one line is logged per change, not per retry. A 5xx for one id is
 * not enough to call the registry away: a registry can fail one subject
 * and serve the rest. Another id checks it first (blame_id); while that
 * one is answered the failing id waits behind a backoff of its own and
 * the registry stays up.
 *
 * Which source wins: the registry. A fallback file <dir>/<id>.avsc is read
 * (by the fetch thread, without the lock) only for an id the registry
 * answered 404 for, and never while the
 * registry is away (its answer is awaited: a file must not shadow an id
 * the registry has), nor when it answered with something that is not an
 * Avro schema (a bad answer is still the registry's: the id is unknown).
 *
 * The table is bounded (HL_SCHEMA_STORE_MAX_IDS). When full, a new id
 * takes the place of a "no such id", else of a wanted id no record has
 * asked for lately, else of the fetched schema asked for least lately.
 * The schema text it holds is bounded too (HL_SCHEMA_STORE_MAX_BYTES):
 * past it, the fetched schemas asked for least lately give way. Each
 * schema is at most HL_CODEC_MAX_SCHEMA_BYTES, as a schema file is: one
 * larger is the registry's bad answer, its id unknown. */
#include "schema_store.h"
#include "codec.h"
#include "log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BACKOFF_MIN_MS   100
#define BACKOFF_MAX_MS   2000
#define RECHECK_MS       5000    /* a "no such id" is asked again at most this often */
#define BAD_RECHECK_MS   30000   /* a bad answer (no Avro schema, too large): the first */
#define BAD_RECHECK_MAX_MS 300000 /* wait before asking again, doubling to this */
#define PROBE_MS         30000   /* idle and up: how often the probe id is asked */
#define ID_BACKOFF_MAX_MS 10000  /* one id the registry keeps failing: its longest wait */

typedef enum { E_WANTED, E_FOUND, E_MISSING } entry_state;

/* A fetched schema's text, held by its entry and, while it copies it, by
 * each hl_schema_store_get. The copy is made without the lock: a text of
 * up to HL_CODEC_MAX_SCHEMA_BYTES copied under it held every shard
 * thread's lookup, known ids too, for the malloc and the copy. Meanwhile
 * the fetch thread may drop the entry (trim, a full table) and let go of
 * its reference; the text lives on until the reader lets go of its own.
 * The entry's reference is taken and let go of under mu, a reader's is
 * taken under mu (while the entry's is still held, so never from zero),
 * and whoever lets go last frees it. The text never changes once made. */
typedef struct shared_text {
    atomic_int refs;
    size_t     len;             /* strlen(s) */
    char       s[];
} shared_text;

typedef struct entry {
    int32_t     id;
    entry_state state;
    int         recheck;        /* E_MISSING: asked again, answer the old one meanwhile */
    int64_t     recheck_ms;     /* E_MISSING: the wait before a recheck (settle) */
    int64_t     asked_ms;       /* when a record last asked for it */
    shared_text *text;          /* E_FOUND */
    char        why[240];       /* E_WANTED, E_MISSING: for the record's log line */
    int64_t     checked_ms;     /* when the last answer came */
    int64_t     retry_ms;       /* E_WANTED after a 5xx of its own: not asked before */
    int64_t     backoff_ms;     /* E_WANTED: the last wait set into retry_ms */
} entry;

struct hl_schema_store {
    hl_registry    *reg;
    char           *fallback_dir;
    pthread_t       tid;
    int             started;
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    atomic_int      stop;        /* also ends a request in progress (registry.h) */
    entry          *e;
    int             n_e, cap_e;
    size_t          text_bytes;  /* sum of the E_FOUND texts' sizes, NULs included */
    int             cursor;      /* next_wanted starts here */
    int32_t         probe_id;    /* -1: none */
    int32_t         suspect;     /* -1, or an id that got a 5xx, the registry not yet
                                    checked with another id (blame_id) */
    atomic_int      up;
    int64_t         next_try_ms, backoff_ms, last_answer_ms;
    hl_gauge       *up_g;
    hl_counter     *req_ok, *req_missing, *req_error, *req_bad;
    hl_log_limit    unknown_limit;  /* settle(): records can name a new id each */
    hl_log_limit    fail_limit;     /* blame_id(): as many ids may fail */
};

/* ---- the table (under mu) ----------------------------------------------- */

/* A shared copy of len bytes of s, one reference held; NULL when out of
 * memory. */
static shared_text *text_new(const char *s, size_t len)
{
    shared_text *t = malloc(sizeof *t + len + 1);
    if (t == NULL)
        return NULL;
    atomic_init(&t->refs, 1);
    t->len = len;
    memcpy(t->s, s, len);
    t->s[len] = '\0';
    return t;
}

/* Lets go of one reference (NULL is a no-op); the last frees t. */
static void text_release(shared_text *t)
{
    if (t != NULL && atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
        free(t);
}

static entry *find(hl_schema_store *s, int32_t id)
{
    for (int i = 0; i < s->n_e; i++)
        if (s->e[i].id == id)
            return &s->e[i];
    return NULL;
}

/* The entry to drop for a new id in a full table, -1 for none: the
 * oldest-checked "no such id", else the wanted id asked for least lately,
 * else the fetched schema asked for least lately.
 * Wanted ones must be droppable too: while the registry is away every id
 * stays wanted, and ids written once (a flood of bogus ones) would
 * otherwise fill the table and make every later id "no such id", its
 * records dead-lettered instead of waiting. A dropped wanted id comes back
 * when a record asks again, and waits like any new one (a record that
 * waits asks at each use, so a live one is rarely the least lately asked).
 * A fetched schema goes last: records decode with it. Once kept for good,
 * a table full of them (records naming that many ids the registry has,
 * other topics' among them) made every later id "no such id" until a
 * restart, its records dead-lettered. A dropped one is fetched again
 * when asked (ids are immutable), and the codecs keep their own copy of
 * the ids they use most. */
static int victim(const hl_schema_store *s)
{
    int missing = -1, wanted = -1, found = -1;
    for (int i = 0; i < s->n_e; i++) {
        const entry *en = &s->e[i];
        if (en->state == E_MISSING &&
            (missing < 0 || en->checked_ms < s->e[missing].checked_ms))
            missing = i;
        else if (en->state == E_WANTED &&
                 (wanted < 0 || en->asked_ms < s->e[wanted].asked_ms))
            wanted = i;
        else if (en->state == E_FOUND &&
                 (found < 0 || en->asked_ms < s->e[found].asked_ms))
            found = i;
    }
    return missing >= 0 ? missing : wanted >= 0 ? wanted : found;
}

/* Forgets entry i (its text too); the last entry takes its place. */
static void drop(hl_schema_store *s, int i)
{
    if (s->e[i].text != NULL)
        s->text_bytes -= s->e[i].text->len + 1;
    text_release(s->e[i].text);
    s->e[i] = s->e[--s->n_e];
}

/* Keeps the fetched texts within HL_SCHEMA_STORE_MAX_BYTES: drops the
 * fetched schemas asked for least lately, never keep_id's (just fetched:
 * its records wait for it). Without it 4,096 schemas of up to 1 MiB each
 * (a broken or hostile registry, or a topic naming that many large ones)
 * could make the worker hold 4 GB. */
static void trim(hl_schema_store *s, int32_t keep_id)
{
    while (s->text_bytes > HL_SCHEMA_STORE_MAX_BYTES) {
        int oldest = -1;
        for (int i = 0; i < s->n_e; i++)
            if (s->e[i].state == E_FOUND && s->e[i].id != keep_id &&
                (oldest < 0 || s->e[i].asked_ms < s->e[oldest].asked_ms))
                oldest = i;
        if (oldest < 0)
            return;
        drop(s, oldest);
    }
}

/* Room for one more entry: grows, or beyond HL_SCHEMA_STORE_MAX_IDS drops
 * victim(). NULL when neither works (out of memory for the first). */
static entry *add(hl_schema_store *s, int32_t id)
{
    if (s->n_e == s->cap_e && s->cap_e < HL_SCHEMA_STORE_MAX_IDS) {
        int cap = s->cap_e ? s->cap_e * 2 : 16;
        entry *ne = realloc(s->e, sizeof *ne * (size_t)cap);
        if (ne != NULL) {
            s->e = ne;
            s->cap_e = cap;
        }
    }
    if (s->n_e == s->cap_e) {
        int v = victim(s);
        if (v < 0)
            return NULL;
        /* A dropped id being fetched is harmless: settle() finds no entry. */
        drop(s, v);
    }
    entry *en = &s->e[s->n_e++];
    memset(en, 0, sizeof *en);
    en->id = id;
    en->state = E_WANTED;
    snprintf(en->why, sizeof en->why, "schema id %d: being fetched from the registry", (int)id);
    return en;
}

/* The caller's malloc'd copy of t (held), made without the lock. Out of
 * memory the record waits, and its wait line says why. */
static int copy_out(const shared_text *t, int32_t id, char **text, char *why, size_t whylen)
{
    if ((*text = malloc(t->len + 1)) == NULL)
        return hl_err(why, whylen, HL_EAGAIN, "schema id %d: out of memory for a copy of its "
                      "%zu-byte schema; asked again", (int)id, t->len);
    memcpy(*text, t->s, t->len + 1);
    return 0;
}

int hl_schema_store_get(void *arg, int32_t id, char **text, char *why, size_t whylen)
{
    hl_schema_store *s = arg;
    shared_text *found = NULL;
    int rc = 0;
    /* Registry ids are 0..2^31-1, and the fetch thread takes a negative
     * id for "none" (next_wanted): one in the table was never asked for,
     * its records waited for good (an item update's header of ff ff ff ff
     * held its partition paused until a restart, and after it). */
    if (id < 0)
        return hl_err(why, whylen, HL_ENOENT, "schema id %d is negative: no registry's id",
                      (int)id);
    pthread_mutex_lock(&s->mu);
    entry *en = find(s, id);
    if (en == NULL && (en = add(s, id)) == NULL) {
        pthread_mutex_unlock(&s->mu);
        return hl_err(why, whylen, HL_EAGAIN, "schema id %d: out of memory to remember it",
                      (int)id);
    }
    en->asked_ms = hl_now_mono_ms();
    if (en->state == E_FOUND) {
        found = en->text;
        atomic_fetch_add_explicit(&found->refs, 1, memory_order_relaxed);
    } else {
        rc = en->state == E_WANTED ? HL_EAGAIN : HL_ENOENT;
        if (en->state == E_MISSING && !en->recheck &&
            hl_now_mono_ms() - en->checked_ms >= en->recheck_ms)
            en->recheck = 1;
        hl_err(why, whylen, rc, "%s", en->why);
    }
    if (en->state == E_WANTED || en->recheck)
        pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (found != NULL) {
        rc = copy_out(found, id, text, why, whylen);
        text_release(found);
    }
    return rc;
}

void hl_schema_store_set_probe(hl_schema_store *s, int32_t id)
{
    pthread_mutex_lock(&s->mu);
    s->probe_id = id;
    pthread_mutex_unlock(&s->mu);
}

int hl_schema_store_up(const hl_schema_store *s)
{
    return atomic_load(&((hl_schema_store *)s)->up);
}

/* ---- the fetch thread --------------------------------------------------- */

/* The registry went away or came back: the gauge, and one log line. */
static void set_up(hl_schema_store *s, int up, const char *err)
{
    int was = atomic_exchange(&s->up, up);
    if (s->up_g)
        hl_gauge_set(s->up_g, up);
    if (was && !up)
        hl_log(HL_LOG_WARN, "schema_registry_down", "err=\"%s\" action=\"records with "
               "unknown schema ids wait, their partitions paused; retrying\"", err);
    else if (!was && up)
        hl_log(HL_LOG_INFO, "schema_registry_up", "after_ms=%lld",
               (long long)(hl_now_mono_ms() - s->last_answer_ms));
}

/* A transient failure: back off. Under mu. */
static void failed(hl_schema_store *s, const char *err)
{
    int64_t now = hl_now_mono_ms();
    s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (s->backoff_ms > BACKOFF_MAX_MS)
        s->backoff_ms = BACKOFF_MAX_MS;
    s->next_try_ms = now + s->backoff_ms;
    if (s->req_error)
        hl_counter_add(s->req_error, 1);
    s->suspect = -1;
    set_up(s, 0, err);
}

static void answered(hl_schema_store *s)
{
    s->suspect = -1;
    s->backoff_ms = 0;
    s->next_try_ms = 0;
    set_up(s, 1, "");
    s->last_answer_ms = hl_now_mono_ms();
}

/* How long en, answered rc (HL_ENOENT or HL_EFORMAT), waits before a
 * recheck. A 404 may end (a producer ahead of this registry's replica):
 * RECHECK_MS. A bad answer is the registry's word on an immutable id, the
 * same at each recheck: BAD_RECHECK_MS, doubled while it repeats, to
 * BAD_RECHECK_MAX_MS. Each recheck of a schema over the size limit
 * fetched up to 4 MB every 5 s for as long as records named the id. */
static int64_t recheck_wait(const entry *en, int rc)
{
    if (rc != HL_EFORMAT)
        return RECHECK_MS;
    if (en->state != E_MISSING || en->recheck_ms < BAD_RECHECK_MS)
        return BAD_RECHECK_MS;
    return en->recheck_ms * 2 < BAD_RECHECK_MAX_MS ? en->recheck_ms * 2 : BAD_RECHECK_MAX_MS;
}

/* Writes the answer rc for id (text taken on 0 and 1) into its entry:
 * 0 the registry's schema, 1 the fallback file's (after a 404),
 * HL_ENOENT no such id, HL_EFORMAT an answer that is no Avro schema or
 * too large. Under mu. */
static void settle(hl_schema_store *s, int32_t id, int rc, shared_text *text, const char *err)
{
    entry *en = find(s, id);
    if (en == NULL) {
        text_release(text);
        return;
    }
    en->checked_ms = hl_now_mono_ms();
    en->recheck = 0;
    if (rc == 0 || rc == 1) {
        if (en->text != NULL)
            s->text_bytes -= en->text->len + 1;
        text_release(en->text);
        en->text = text;
        en->state = E_FOUND;
        s->text_bytes += text->len + 1;
        hl_log(HL_LOG_INFO, "schema_fetched", "id=%d source=%s", (int)id,
               rc == 0 ? "registry" : "fallback_dir");
        trim(s, id);                        /* en may move: not used after */
        return;
    }
    en->recheck_ms = recheck_wait(en, rc);
    en->state = E_MISSING;
    snprintf(en->why, sizeof en->why, "%.239s", err);
    uint64_t sup = 0;
    if (hl_log_limit_pass(&s->unknown_limit, &sup))
        hl_log(HL_LOG_WARN, rc == HL_EFORMAT ? "schema_registry_bad_answer" : "schema_unknown",
               "id=%d err=\"%s\" suppressed=%llu", (int)id, en->why, (unsigned long long)sup);
}

/* Counts an answer by outcome. Under mu. */
static void count_answer(hl_schema_store *s, int rc)
{
    hl_counter *c = rc == 0 ? s->req_ok : rc == HL_EFORMAT ? s->req_bad : s->req_missing;
    if (c != NULL)
        hl_counter_add(c, 1);
}

/* The next id to ask for, -1 for none: the wanted ids in turn, from the
 * one after the last asked. Always the first in table order, one id the
 * registry keeps failing (a 500 for a broken subject) was asked again and
 * again behind its backoff and no id after it ever was: their records
 * waited for ever, though the registry had their schemas.
 * Rechecks of "no such id" come only when no wanted id is due: in one
 * turn with them, a new id waited behind up to HL_SCHEMA_STORE_MAX_IDS
 * rechecks (seconds on a slow registry) while its records, paused, had
 * no answer at all, and a recheck's records have one meanwhile. Under mu. */
static int32_t next_wanted(hl_schema_store *s, int64_t now, int64_t *due_ms)
{
    for (int rechecks = 0; rechecks < 2; rechecks++)
        for (int k = 0; k < s->n_e; k++) {
            int i = (s->cursor + k) % s->n_e;
            if (rechecks ? !s->e[i].recheck : s->e[i].state != E_WANTED)
                continue;
            if (s->e[i].retry_ms > now) {       /* behind its own backoff (blame_id) */
                if (s->e[i].retry_ms < *due_ms)
                    *due_ms = s->e[i].retry_ms;
                continue;
            }
            s->cursor = i + 1;
            return s->e[i].id;
        }
    return -1;
}

/* An id to check the registry with, other than id; -1 for none: the
 * probe, else a schema fetched before (ids are immutable: it is there).
 * Under mu. */
static int32_t check_id(const hl_schema_store *s, int32_t id)
{
    if (s->probe_id >= 0 && s->probe_id != id)
        return s->probe_id;
    for (int i = 0; i < s->n_e; i++)
        if (s->e[i].state == E_FOUND && s->e[i].id != id)
            return s->e[i].id;
    return -1;
}

static int other_wanted(const hl_schema_store *s, int32_t id)
{
    for (int i = 0; i < s->n_e; i++)
        if (s->e[i].id != id && (s->e[i].state == E_WANTED || s->e[i].recheck))
            return 1;
    return 0;
}

/* A 5xx for id while the registry is up: the id's own fault (a subject
 * the registry cannot serve) or the registry's? Another id tells: the
 * check_id next (fetch_main), else the next waiting id. Until then up
 * stays 1, and id waits behind a backoff of its own (100 ms doubling to
 * ID_BACKOFF_MAX_MS) so the others are not held behind it. Each answer
 * had set up and each failure cleared it: the gauge and the log flapped
 * while one id failed for good and others were fetched. Returns 0 when
 * the failure is the registry's: a second id failed, or no other id can
 * tell. Under mu. */
static int blame_id(hl_schema_store *s, int32_t id, const char *err)
{
    if (!atomic_load(&s->up) || (s->suspect >= 0 && s->suspect != id) ||
        (check_id(s, id) < 0 && !other_wanted(s, id)))
        return 0;
    entry *en = find(s, id);
    if (en != NULL) {
        en->backoff_ms = en->backoff_ms ? en->backoff_ms * 2 : BACKOFF_MIN_MS;
        if (en->backoff_ms > ID_BACKOFF_MAX_MS)
            en->backoff_ms = ID_BACKOFF_MAX_MS;
        en->retry_ms = hl_now_mono_ms() + en->backoff_ms;
        if (en->state == E_WANTED)          /* a "no such id" keeps its answer */
            snprintf(en->why, sizeof en->why, "schema id %d: the registry failed it (%.160s); "
                     "asked again", (int)id, err);
    }
    s->suspect = id;
    if (s->req_error)
        hl_counter_add(s->req_error, 1);
    uint64_t sup = 0;
    if (hl_log_limit_pass(&s->fail_limit, &sup))
        hl_log(HL_LOG_WARN, "schema_fetch_failed", "id=%d err=\"%s\" action=\"its records "
               "wait; asked again\" suppressed=%llu", (int)id, err, (unsigned long long)sup);
    return 1;
}

/* What one request for an id brought, made ready without the lock. */
typedef struct answer {
    int          rc;            /* the registry's (registry.h); 1: after its 404,
                                   the fallback file's schema */
    int          no_room;       /* a schema came, but no memory to keep it */
    shared_text *text;          /* rc 0 or 1 */
    char         err[512];
} answer;

/* The request for id, and what needs no lock after it: the size limit,
 * the fallback file after a 404 (a disk read under mu held up every
 * shard thread's lookup) and the shared copy. Without mu. */
static void ask(hl_schema_store *s, int32_t id, int probe, answer *a)
{
    char *text = NULL, why[200], reg[120];
    a->text = NULL;
    a->no_room = 0;
    a->rc = hl_registry_schema_by_id(s->reg, id, &text, a->err, sizeof a->err);
    /* A schemas.dir file's limit holds for the registry's schemas too
     * (codec.h): each shard's codec keeps up to 256 parsed ones, each many
     * times its text, and the registry's answer may be 4 MB. A bad answer
     * like a schema that is not Avro: the registry's, no fallback file. */
    if (a->rc == 0 && strlen(text) > HL_CODEC_MAX_SCHEMA_BYTES)
        a->rc = hl_err(a->err, sizeof a->err, HL_EFORMAT, "schema id %d is %zu bytes, over "
                       "the %d-byte limit of a writer schema", (int)id, strlen(text),
                       HL_CODEC_MAX_SCHEMA_BYTES);
    if (a->rc == HL_ENOENT && !probe && s->fallback_dir != NULL) {
        if ((text = hl_codec_schema_file(s->fallback_dir, id, why, sizeof why)) != NULL) {
            a->rc = 1;
        } else {                /* the file's reason too: absent, unreadable, too large */
            snprintf(reg, sizeof reg, "%.119s", a->err);
            snprintf(a->err, sizeof a->err, "%s; schema.registry.fallback.dir: %s", reg, why);
        }
    }
    if (!probe && (a->rc == 0 || a->rc == 1) && (a->text = text_new(text, strlen(text))) == NULL)
        a->no_room = 1;
    free(text);
}

/* A schema came for id but there was no memory to keep it: the id stays
 * as it was, asked again after ID_BACKOFF_MAX_MS, and its records wait
 * saying so. Under mu. */
static void no_room(hl_schema_store *s, int32_t id)
{
    uint64_t sup = 0;
    entry *en = find(s, id);
    if (en == NULL)
        return;
    en->retry_ms = hl_now_mono_ms() + ID_BACKOFF_MAX_MS;
    if (en->state == E_WANTED)
        snprintf(en->why, sizeof en->why, "schema id %d: out of memory to keep its schema; "
                 "asked again", (int)id);
    if (hl_log_limit_pass(&s->fail_limit, &sup))
        hl_log(HL_LOG_WARN, "schema_fetch_failed", "id=%d err=\"out of memory to keep its "
               "schema\" action=\"its records wait; asked again\" suppressed=%llu", (int)id,
               (unsigned long long)sup);
}

/* One request for id, the lock released meanwhile. Under mu. */
static void fetch(hl_schema_store *s, int32_t id, int probe)
{
    answer a;
    pthread_mutex_unlock(&s->mu);
    ask(s, id, probe, &a);
    pthread_mutex_lock(&s->mu);
    /* A destroy ends the request ("aborted by an application callback"):
     * no answer of the registry's, so no outage to log or count. */
    if (atomic_load(&s->stop)) {
        text_release(a.text);
        return;
    }
    /* Only the registry saying "no such id" (404) or giving a schema we
     * cannot use (HL_EFORMAT: its JSON holds no Avro schema, or is too
     * big) makes a record bad; anything else (no answer, 5xx, 401, TLS, a
     * refusal of the request itself, a proxy's page in the registry's
     * place: registry.c) is not the record's fault: it waits. The down line
     * names the cause. A bad answer is not a 404: the registry answered,
     * so it is never replaced by a fallback file (ask). */
    int rc = a.rc == 1 ? HL_ENOENT : a.rc;      /* the registry said 404 */
    if (rc != 0 && rc != HL_ENOENT && rc != HL_EFORMAT) {
        if (probe || rc != HL_EAGAIN || hl_registry_last_status(s->reg) < 500 ||
            !blame_id(s, id, a.err))
            failed(s, a.err);
        return;
    }
    answered(s);
    count_answer(s, rc);
    if (a.no_room)
        no_room(s, id);
    else if (!probe)
        settle(s, id, a.rc, a.text, a.err);
}

/* Waits under mu until now_ms + ms at most (or a signal). */
static void wait_ms(hl_schema_store *s, int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
    pthread_cond_timedwait(&s->cv, &s->mu, &ts);
}

static void *fetch_main(void *arg)
{
    hl_schema_store *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!atomic_load(&s->stop)) {
        int64_t now = hl_now_mono_ms();
        if (now < s->next_try_ms) {
            wait_ms(s, s->next_try_ms - now);
            continue;
        }
        int64_t due_ms = now + 1000;
        int32_t check = s->suspect >= 0 ? check_id(s, s->suspect) : -1;
        int32_t id = check >= 0 ? -1 : next_wanted(s, now, &due_ms);
        int idle_probe = s->probe_id >= 0 &&
                         (!atomic_load(&s->up) || now - s->last_answer_ms >= PROBE_MS);
        if (check >= 0)
            fetch(s, check, 1);
        else if (id >= 0)
            fetch(s, id, 0);
        else if (idle_probe)
            fetch(s, s->probe_id, 1);
        else
            wait_ms(s, due_ms - now);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- create / destroy --------------------------------------------------- */

static hl_counter *requests(hl_metrics *m, const char *labels)
{
    return hl_metrics_counter(m, "halflife_schema_registry_requests_total",
                              HL_SCHEMA_REGISTRY_REQUESTS_HELP, labels);
}

static void register_metrics(hl_schema_store *s, hl_metrics *m)
{
    if (m == NULL)
        return;
    s->up_g = hl_metrics_gauge(m, "halflife_schema_registry_up",
        "1 while the Schema Registry answers; 0 after a request got no answer, a 401/403 "
        "or 408/429, or a 5xx for two ids in a row (a 5xx for one id while another is "
        "answered is that id's).", NULL);
    s->req_ok = requests(m, "result=\"ok\"");
    s->req_missing = requests(m, "result=\"not_found\"");
    s->req_error = requests(m, "result=\"error\"");
    s->req_bad = requests(m, "result=\"bad_answer\"");
    requests(m, "result=\"mismatch\"");      /* counted by the start (registry.h) */
    hl_gauge_set(s->up_g, 1);
}

hl_schema_store *hl_schema_store_create(hl_registry *reg, const char *fallback_dir,
                                        hl_metrics *metrics, char *errbuf, size_t errlen)
{
    hl_schema_store *s = calloc(1, sizeof *s);
    if (s == NULL) {
        hl_registry_destroy(reg);
        hl_err(errbuf, errlen, HL_ENOMEM, "schema store: out of memory");
        return NULL;
    }
    s->reg = reg;
    hl_registry_set_abort(reg, &s->stop);
    s->probe_id = -1;
    s->suspect = -1;
    s->unknown_limit.interval_ms = 5000;
    s->fail_limit.interval_ms = 5000;
    atomic_store(&s->up, 1);
    s->last_answer_ms = hl_now_mono_ms();
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    register_metrics(s, metrics);
    if (fallback_dir != NULL && fallback_dir[0] != '\0' &&
        (s->fallback_dir = strdup(fallback_dir)) == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "schema store: out of memory");
        goto fail;
    }
    if (pthread_create(&s->tid, NULL, fetch_main, s) != 0) {
        hl_err(errbuf, errlen, HL_EIO, "schema store: pthread_create failed");
        goto fail;
    }
    s->started = 1;
    return s;
fail:
    hl_schema_store_destroy(s);
    return NULL;
}

void hl_schema_store_destroy(hl_schema_store *s)
{
    if (s == NULL)
        return;
    if (s->started) {
        pthread_mutex_lock(&s->mu);
        atomic_store(&s->stop, 1);
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->tid, NULL);     /* a request in progress ends within ~1 s */
    }
    for (int i = 0; i < s->n_e; i++)
        text_release(s->e[i].text);
    free(s->e);
    free(s->fallback_dir);
    hl_registry_destroy(s->reg);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
