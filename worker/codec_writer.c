/* codec_writer.c - writer schemas by id, and decoding a record whose
 * writer schema is not our reader schema (the resolving path; codec.c's
 * overview says how the two paths divide the traffic).
 *
 * A writer schema comes from <schemas_dir>/<id>.avsc or from the codec's
 * schema_fn (a Schema Registry), is cached per id whatever its source,
 * failures included (by their reason alone: no parsed schema is kept for
 * them), and a refused id is looked at again after RETRY_MS (a text
 * schema_fn gave and the codec refused: later, writer_load). The cache
 * holds MAX_WRITERS ids and MAX_WRITER_TEXT bytes of the schema text its
 * writers were parsed from: parsed, a schema is up to 40 times its text
 * (fit).
 * Its records are first walked by check_value(), which checks every varint,
 * length, union and enum index against the payload, and only then read by
 * avro-c's resolved writer, which trusts its input. Same thread rule as
 * codec.c: one codec per thread. */
#include "avsc.h"
#include "codec_internal.h"
#include "log.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* ---- the resolving path ------------------------------------------------- */

static hl_codec_reason check_value(avro_schema_t s, cur *c, int depth);

/* Does every value of s take zero bytes (null, fixed(0), a record of
 * those)? A schema nested beyond MAX_DEPTH says no, so the walk over its
 * items refuses it by depth. */
static int zero_width(avro_schema_t s, int depth)
{
    if (depth > MAX_DEPTH)
        return 0;
    switch (avro_typeof(s)) {
    case AVRO_NULL:
        return 1;
    case AVRO_FIXED:
        return avro_schema_fixed_size(s) == 0;
    case AVRO_RECORD:
        for (size_t i = 0; i < avro_schema_record_size(s); i++)
            if (!zero_width(avro_schema_record_field_get_by_index(s, (int)i), depth + 1))
                return 0;
        return 1;
    case AVRO_LINK:
        return zero_width(avro_schema_link_target(s), depth + 1);
    default:
        return 0;
    }
}

static hl_codec_reason check_blocks(avro_schema_t items, int is_map, cur *c,
                                    int depth)
{
    int64_t count, n;
    hl_codec_reason r;
    /* A map entry has its key's bytes; zero-byte items have nothing to
     * walk once counted. */
    int empty = !is_map && zero_width(items, depth + 1);
    for (;;) {
        if ((r = read_block(c, &count, empty)) != HL_CODEC_OK || count == 0)
            return r;
        for (int64_t i = 0; i < count && !empty; i++) {
            if (is_map && ((r = read_len(c, &n)) != HL_CODEC_OK ||
                           (r = skip_bytes(c, n)) != HL_CODEC_OK))
                return r;
            if ((r = check_value(items, c, depth + 1)) != HL_CODEC_OK)
                return r;
        }
    }
}

static hl_codec_reason check_record(avro_schema_t s, cur *c, int depth)
{
    size_t n = avro_schema_record_size(s);
    for (size_t i = 0; i < n; i++) {
        avro_schema_t f = avro_schema_record_field_get_by_index(s, (int)i);
        hl_codec_reason r = check_value(f, c, depth + 1);
        if (r != HL_CODEC_OK)
            return r;
    }
    return HL_CODEC_OK;
}

/* Walks one value of writer schema s, checking every varint, length, enum
 * and union index against the bytes left, so that avro-c, which does not
 * check them, only ever reads well-formed data. */
static hl_codec_reason check_value(avro_schema_t s, cur *c, int depth)
{
    int64_t v;
    hl_codec_reason r;

    if (depth > MAX_DEPTH || --c->nodes_left < 0)
        return HL_CODEC_TOO_COMPLEX;
    switch (avro_typeof(s)) {
    case AVRO_NULL:
        return HL_CODEC_OK;
    case AVRO_BOOLEAN:
        return skip_bytes(c, 1);
    case AVRO_INT32:
        if ((r = read_long(c, &v)) != HL_CODEC_OK)
            return r;
        return (v < INT32_MIN || v > INT32_MAX) ? HL_CODEC_BAD_VARINT : HL_CODEC_OK;
    case AVRO_INT64:
        return read_long(c, &v);
    case AVRO_FLOAT:
        return skip_bytes(c, 4);
    case AVRO_DOUBLE:
        return skip_bytes(c, 8);
    case AVRO_STRING:
    case AVRO_BYTES:
        if ((r = read_len(c, &v)) != HL_CODEC_OK)
            return r;
        return skip_bytes(c, v);
    case AVRO_FIXED:
        return skip_bytes(c, avro_schema_fixed_size(s));
    case AVRO_ENUM:
        if ((r = read_long(c, &v)) != HL_CODEC_OK)
            return r;
        return (v < 0 || v >= avro_schema_enum_number_of_symbols(s))
                   ? HL_CODEC_BAD_ENUM : HL_CODEC_OK;
    case AVRO_UNION:
        if ((r = read_branch(c, (int64_t)avro_schema_union_size(s), &v)) != HL_CODEC_OK)
            return r;
        return check_value(avro_schema_union_branch(s, (int)v), c, depth + 1);
    case AVRO_RECORD:
        return check_record(s, c, depth);
    case AVRO_ARRAY:
        return check_blocks(avro_schema_array_items(s), 0, c, depth);
    case AVRO_MAP:
        return check_blocks(avro_schema_map_values(s), 1, c, depth);
    case AVRO_LINK:
        return check_value(avro_schema_link_target(s), c, depth + 1);
    default:
        return HL_CODEC_UNKNOWN_SCHEMA;
    }
}

/* Field F_* of dest, or -1 when the writer lacks it. */
static int get_field(writer *w, int f, avro_value_t *v)
{
    if (w->field[f] < 0)
        return -1;
    return avro_value_get_by_index(&w->dest, (size_t)w->field[f], v, NULL) ? -2 : 0;
}

static int get_id(writer *w, int f, const char **s, uint32_t *len)
{
    avro_value_t v;
    size_t size;
    if (get_field(w, f, &v) != 0 || avro_value_get_string(&v, s, &size))
        return -1;
    *len = size ? (uint32_t)(size - 1) : 0;   /* avro-c counts the NUL */
    return 0;
}

/* Reads dest into ev, with the reader's defaults (VIEW, no weight) for
 * fields the writer lacks. Strings borrow from dest. */
static int extract_event(writer *w, hl_codec_event *ev)
{
    avro_value_t v, branch;
    int type = HL_VIEW, disc = 0, rc;

    if (get_id(w, F_USER, &ev->user, &ev->user_len) ||
        get_id(w, F_ITEM, &ev->item, &ev->item_len) ||
        get_field(w, F_TS, &v) || avro_value_get_long(&v, &ev->ts_ms))
        return -1;
    if ((rc = get_field(w, F_TYPE, &v)) == -2 || (rc == 0 && avro_value_get_enum(&v, &type)))
        return -1;
    if (rc == 0)                  /* the walker checked 0 <= type < n_symbols */
        type = w->type_of[type];
    ev->type = type;
    if ((rc = get_field(w, F_WEIGHT, &v)) == -2 ||
        (rc == 0 && avro_value_get_discriminant(&v, &disc)))
        return -1;
    ev->has_weight = disc == 1;
    ev->weight = 1.0f;
    if (ev->has_weight &&
        (avro_value_get_current_branch(&v, &branch) ||
         avro_value_get_float(&branch, &ev->weight)))
        return -1;
    return 0;
}

hl_codec_reason hl_codec_decode_resolved(hl_codec *c, writer *w, cur *in,
                                         hl_codec_event *ev, char *detail,
                                         size_t detaillen)
{
    const uint8_t *body = in->p;
    in->empty_left = MAX_EMPTY_ITEMS;
    in->nodes_left = MAX_FREE_NODES + (in->end - in->p);
    hl_codec_reason r = check_value(w->schema, in, 0);
    if (r != HL_CODEC_OK)
        return fail(detail, detaillen, r, "%s at byte %td of the body (writer schema id %d)",
                    hl_codec_reason_name(r), in->p - body, (int)w->id);
    if (in->p != in->end)
        return fail(detail, detaillen, HL_CODEC_TRAILING_BYTES,
                    "%td bytes after the record", in->end - in->p);
    avro_value_reset(&w->dest);
    avro_reader_memory_set_source(c->rd, (const char *)body, in->end - body);
    if (avro_value_read(c->rd, &w->resolved) != 0)
        return fail(detail, detaillen, HL_CODEC_UNKNOWN_SCHEMA,
                    "writer schema id %d does not resolve: %s", (int)w->id,
                    avro_strerror());
    if (extract_event(w, ev) != 0)
        return fail(detail, detaillen, HL_CODEC_UNKNOWN_SCHEMA,
                    "writer schema id %d: reading the resolved value: %s",
                    (int)w->id, avro_strerror());
    return HL_CODEC_OK;
}

/* ---- writer schemas by id ----------------------------------------------- */

void hl_codec_writer_clear(writer *w)
{
    if (w->has_values) {
        avro_value_decref(&w->resolved);
        avro_value_decref(&w->dest);
    }
    if (w->resolver != NULL)
        avro_value_iface_decref(w->resolver);
    if (w->riface != NULL)
        avro_value_iface_decref(w->riface);
    free(w->type_of);
    if (w->rschema != NULL)
        avro_schema_decref(w->rschema);
    if (w->schema != NULL)
        avro_schema_decref(w->schema);
    memset(w, 0, sizeof *w);
}

char *hl_codec_schema_file(const char *dir, int32_t id, char *why, size_t whylen)
{
    char path[PATH_MAX];
    char *text = NULL;
    long n;
    FILE *f;

    snprintf(path, sizeof path, "%s/%d.avsc", dir, (int)id);
    if ((f = fopen(path, "rb")) == NULL) {
        hl_err(why, whylen, HL_ENOENT, "no writer schema %s", path);
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > HL_CODEC_MAX_SCHEMA_BYTES) {
        hl_err(why, whylen, HL_ENOENT, "writer schema %s is %ld bytes, over the %d-byte limit",
               path, n, HL_CODEC_MAX_SCHEMA_BYTES);
        fclose(f);
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) != 0 || (text = malloc((size_t)n + 1)) == NULL ||
        fread(text, 1, (size_t)n, f) != (size_t)n) {
        hl_err(why, whylen, HL_ENOENT, "cannot read writer schema %s", path);
        free(text);
        fclose(f);
        return NULL;
    }
    text[n] = '\0';
    fclose(f);
    return text;
}

/* avro-c 1.11 resolves an enum by index, not by symbol, so the writer's own
 * enum stands in for ours in the schema w resolves against, and type_of
 * maps its indexes to our types by symbol name (-1: a symbol we lack). */
static avro_schema_t writer_enum(writer *w)
{
    avro_schema_t e = avro_schema_record_field_get(w->schema, "event_type");
    if (e == NULL || !is_avro_enum(e)) {
        hl_err(w->why, sizeof w->why, HL_EINVAL,
               "writer schema id %d: event_type is not an enum", (int)w->id);
        return NULL;
    }
    w->n_symbols = avro_schema_enum_number_of_symbols(e);
    if ((w->type_of = malloc(sizeof *w->type_of * (size_t)(w->n_symbols + 1))) == NULL) {
        hl_err(w->why, sizeof w->why, HL_ENOMEM, "writer schema id %d: out of memory", (int)w->id);
        return NULL;
    }
    for (int i = 0; i < w->n_symbols; i++) {
        const char *sym = avro_schema_enum_get(e, i);
        w->type_of[i] = sym != NULL ? hl_type_parse(sym, strlen(sym)) : -1;
    }
    return e;
}

/* avro-c 1.11's resolved writer refuses a reader field that the writer
 * lacks, even one with a default. So w resolves against our reader schema
 * minus the fields its writer lacks, and extract_event() fills their
 * defaults. A writer lacking a field without default is refused. */
static int reader_for(hl_codec *c, writer *w)
{
    if (!is_avro_record(w->schema)) {
        hl_err(w->why, sizeof w->why, HL_EINVAL, "writer schema id %d is a %s, not a record",
               (int)w->id, avro_schema_type_name(w->schema));
        return -1;
    }
    w->rschema = avro_schema_record("BehaviourEvent", "halflife");
    if (w->rschema == NULL) {
        hl_err(w->why, sizeof w->why, HL_ENOMEM, "writer schema id %d: %s", (int)w->id,
               avro_strerror());
        return -1;
    }
    for (int f = 0, n = 0; f <= F_CONTEXT; f++) {
        const char *name = avro_schema_record_field_name(c->reader, f);
        w->field[f] = -1;
        if (avro_schema_record_field_get_index(w->schema, name) < 0) {
            if (f == F_USER || f == F_ITEM || f == F_TS) {
                hl_err(w->why, sizeof w->why, HL_EINVAL,
                       "writer schema id %d has no field %s", (int)w->id, name);
                return -1;
            }
            continue;
        }
        avro_schema_t type = avro_schema_record_field_get_by_index(c->reader, f);
        if (f == F_TYPE && (type = writer_enum(w)) == NULL)
            return -1;
        avro_schema_record_field_append(w->rschema, name, type);
        w->field[f] = n++;
    }
    return 0;
}

static void writer_load_once(hl_codec *c, writer *w, int32_t id);

/* The wait before a refused id is looked at again, last_ms the one before
 * (0: none). A schema file may be deployed, or fixed, after the first
 * record that needs it, and the worker should not need a restart to see
 * it: RETRY_MS. A text schema_fn gave and the codec refused (does not
 * parse, does not resolve) is the same at each look, as a registry's ids
 * are immutable and the store keeps the text: TEXT_RETRY_MS, doubled to
 * TEXT_RETRY_MAX_MS while it stays refused. Each look at such a schema of
 * up to 1 MiB copied and parsed it again (50 to 300 ms) every 5 s in each
 * shard thread whose records named it. */
static int64_t retry_wait(const writer *w, int64_t last_ms)
{
    if (!w->text_refused)
        return RETRY_MS;
    if (last_ms < TEXT_RETRY_MS)
        return TEXT_RETRY_MS;
    return last_ms * 2 < TEXT_RETRY_MAX_MS ? last_ms * 2 : TEXT_RETRY_MAX_MS;
}

/* writer_load_once, and for a refused id the time to look again
 * (retry_wait; last_ms the last wait, 0 for none). */
static void writer_load(hl_codec *c, writer *w, int32_t id, int64_t last_ms)
{
    char why[sizeof w->why];
    writer_load_once(c, w, id);
    if (w->kind != W_BAD)
        return;
    int64_t wait_ms = retry_wait(w, last_ms);
    /* A refused schema is kept by its reason alone: parsed (one that does
     * not resolve), it held up to 40 times its text until its id came
     * again, in each of 256 entries. */
    memcpy(why, w->why, sizeof why);
    hl_codec_writer_clear(w);
    w->id = id;
    w->kind = W_BAD;
    memcpy(w->why, why, sizeof why);
    w->retry_wait_ms = wait_ms;
    w->retry_at_ms = hl_now_mono_ms() + wait_ms;
}

/* Keeps the schema text behind the cached writers within MAX_WRITER_TEXT:
 * the writers used least lately give way, never keep (just loaded, for
 * the record in hand). One given way is cleared to a waiting entry,
 * loaded again at its next use (hl_codec_writer_get), as a waiting id is.
 * avro-c's parsed form of a schema measured 5 to 40 times its text (40
 * for a record of small unions), and a schema may be
 * HL_CODEC_MAX_SCHEMA_BYTES: 256 such entries held 10 GB in each shard's
 * codec. Typical schemas are a few KB, so 256 of them fit. */
static void fit(hl_codec *c, const writer *keep)
{
    for (;;) {
        size_t total = 0;
        int oldest = -1;
        for (int i = 0; i < c->n_w; i++) {
            const writer *w = c->w[i];
            total += w->text_bytes;
            if (w != keep && w->text_bytes > 0 &&
                (oldest < 0 || w->used < c->w[oldest]->used))
                oldest = i;
        }
        if (total <= MAX_WRITER_TEXT || oldest < 0)
            return;
        writer *w = c->w[oldest];
        int32_t id = w->id;
        hl_codec_writer_clear(w);
        w->id = id;
        w->kind = W_WAIT;
        snprintf(w->why, sizeof w->why, "writer schema id %d: given way to others", (int)id);
    }
}

/* w, now c->last, stamped as used now. */
static writer *use(hl_codec *c, writer *w)
{
    w->used = ++c->uses;
    return c->last = w;
}

/* The schema text of id, malloc'd, from schema_fn or the schemas
 * directory; NULL with w->why (and W_WAIT when schema_fn does not know
 * it yet) when there is none to use. */
static char *writer_text(hl_codec *c, writer *w, int32_t id)
{
    char *text = NULL;
    if (c->o.schema_fn != NULL) {
        int rc = c->o.schema_fn(c->o.schema_arg, id, &text, w->why, sizeof w->why);
        if (rc == HL_EAGAIN)
            w->kind = W_WAIT;
        if (rc != 0)
            return NULL;
    } else if ((text = hl_codec_schema_file(c->schemas_dir, id, w->why, sizeof w->why)) == NULL) {
        /* Id 1 is the schema halflife itself writes (hl_codec_encode_event,
         * halflife produce): built in, so a worker started outside the
         * source tree still reads it. A file of that id overrides it. */
        if (id != EVENT_WRITER_ID || (text = strdup(hl_codec_event_schema())) == NULL)
            return NULL;
    }
    /* A schema file's limit, whatever the source (schema_fn's store keeps
     * to it too): parsed, a schema is many times its text. */
    if (strlen(text) > HL_CODEC_MAX_SCHEMA_BYTES) {
        hl_err(w->why, sizeof w->why, HL_EINVAL, "writer schema id %d is %zu bytes, over the "
               "%d-byte limit", (int)id, strlen(text), HL_CODEC_MAX_SCHEMA_BYTES);
        free(text);
        return NULL;
    }
    return text;
}

/* Fills w for id: W_FAST if the writer schema is the reader's, W_RESOLVE if
 * avro-c can resolve it, W_BAD (with w->why) otherwise. */
static void writer_load_once(hl_codec *c, writer *w, int32_t id)
{
    char *text, why[160];
    memset(w, 0, sizeof *w);
    w->id = id;
    w->kind = W_BAD;
    if (id < 0) {
        hl_err(w->why, sizeof w->why, HL_EINVAL, "schema id %d is negative", (int)id);
        return;
    }
    if ((text = writer_text(c, w, id)) == NULL)
        return;
    w->text_refused = c->o.schema_fn != NULL;   /* until it is taken below */
    size_t len = strlen(text);
    if (hl_avsc_parse(text, len, &w->schema, why, sizeof why) != 0) {
        hl_err(w->why, sizeof w->why, HL_EINVAL, "writer schema id %d: %s", (int)id, why);
        free(text);
        return;
    }
    free(text);
    w->text_bytes = len;
    if (avro_schema_equal(w->schema, c->reader)) {
        w->kind = W_FAST;
        return;
    }
    if (reader_for(c, w) != 0)
        return;
    if ((w->resolver = avro_resolved_writer_new(w->schema, w->rschema)) == NULL) {
        hl_err(w->why, sizeof w->why, HL_EINVAL, "writer schema id %d does not resolve: %s",
                 (int)id, avro_strerror());
        return;
    }
    if ((w->riface = avro_generic_class_from_schema(w->rschema)) == NULL ||
        avro_resolved_writer_new_value(w->resolver, &w->resolved) != 0) {
        hl_err(w->why, sizeof w->why, HL_EINVAL, "writer schema id %d: %s", (int)id, avro_strerror());
        return;
    }
    if (avro_generic_value_new(w->riface, &w->dest) != 0) {
        hl_err(w->why, sizeof w->why, HL_EINVAL, "writer schema id %d: %s", (int)id, avro_strerror());
        avro_value_decref(&w->resolved);
        return;
    }
    w->has_values = 1;
    avro_resolved_writer_set_dest(&w->resolved, &w->dest);
    w->kind = W_RESOLVE;
}

/* The entry a full cache gives to a new id: a refused or waiting one, -1
 * for none. Records name any id they like, and ids that do not exist
 * would otherwise hold every entry for good, so that a real schema seen
 * after them were parsed and resolved again for each of its records (in
 * the scratch entry). Such an entry holds no avro-c values and costs one
 * lookup to fill again; a loaded schema is dropped only past
 * MAX_WRITER_TEXT (fit), to such a waiting entry. */
static int reusable(const hl_codec *c)
{
    for (int i = 0; i < c->n_w; i++)
        if (c->w[i]->kind == W_BAD || c->w[i]->kind == W_WAIT)
            return i;
    return -1;
}

/* The cached writer for id, loading it on first use; never NULL. Entries
 * are allocated one by one so a pointer to one (c->last, and avro-c's
 * resolved value pointing at its dest) never moves. Beyond MAX_WRITERS
 * ids, a refused entry is reused (reusable), else one scratch entry is
 * reloaded per call. */
static writer *writer_find(hl_codec *c, int32_t id)
{
    writer *w;
    if (c->last != NULL && c->last->id == id)
        return c->last;
    for (int i = 0; i < c->n_w; i++)
        if (c->w[i]->id == id)
            return use(c, c->w[i]);
    if (c->n_w == c->cap_w && c->cap_w < MAX_WRITERS) {
        int cap = c->cap_w ? c->cap_w * 2 : 8;
        writer **nw = realloc(c->w, (size_t)cap * sizeof *nw);
        if (nw != NULL) {
            c->w = nw;
            c->cap_w = cap;
        }
    }
    if (c->n_w < c->cap_w && (w = malloc(sizeof *w)) != NULL) {
        writer_load(c, w, id, 0);
        c->w[c->n_w++] = w;
        fit(c, w);
        return use(c, w);
    }
    int v = reusable(c);
    if (v >= 0) {
        w = c->w[v];
        hl_codec_writer_clear(w);
        writer_load(c, w, id, 0);
        fit(c, w);
        return use(c, w);
    }
    hl_codec_writer_clear(&c->scratch);
    writer_load(c, &c->scratch, id, 0);
    return c->last = &c->scratch;
}

/* writer_find, looking again at a refused id once its retry time has come
 * (or at once with force). */
writer *hl_codec_writer_get(hl_codec *c, int32_t id, int force)
{
    writer *w = writer_find(c, id);
    if (w->kind == W_WAIT ||
        (w->kind == W_BAD && (force || hl_now_mono_ms() >= w->retry_at_ms))) {
        int64_t last_ms = w->kind == W_BAD ? w->retry_wait_ms : 0;
        hl_codec_writer_clear(w);
        writer_load(c, w, id, last_ms);
        if (w != &c->scratch)
            fit(c, w);
        use(c, w);                  /* the load cleared its stamp */
    }
    return w;
}

hl_codec_writer_kind hl_codec_writer(hl_codec *c, int32_t id)
{
    writer *w = hl_codec_writer_get(c, id, 1);
    if (w->kind == W_WAIT)
        return HL_CODEC_WRITER_WAIT;
    if (w->kind == W_BAD)
        return HL_CODEC_WRITER_UNKNOWN;
    return w->kind == W_FAST ? HL_CODEC_WRITER_FAST : HL_CODEC_WRITER_RESOLVED;
}
