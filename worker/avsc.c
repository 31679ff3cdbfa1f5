/* avsc.c - the duplicate-name check in front of avro-c's schema parser
 * (avsc.h says why). Full names follow the Avro specification ("Names"):
 * a name with a dot is full already; else the "namespace" attribute, else
 * the enclosing named type's namespace, qualifies it. The walk goes where
 * named types can be defined: a record's field types, an array's items, a
 * map's values, a union's branches and a nested "type". */
#include "avsc.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NAMES 4096      /* more definitions than this: refused */
#define MAX_DEPTH 64        /* avro-c recurses too: no deeper walk than it goes */

typedef struct names {
    char *full[MAX_NAMES];
    int   n;
} names;

static int is_named(const char *type)
{
    return strcmp(type, "record") == 0 || strcmp(type, "error") == 0 ||
           strcmp(type, "enum") == 0 || strcmp(type, "fixed") == 0;
}

/* Adds the full name of a named type; 1 when it was there already (or
 * there are too many), naming it in why. */
static int define(names *ns, const char *name, const char *space, char *why, size_t whylen)
{
    char full[1024];
    if (strchr(name, '.') != NULL || space == NULL || *space == '\0')
        snprintf(full, sizeof full, "%s", name);
    else
        snprintf(full, sizeof full, "%s.%s", space, name);
    for (int i = 0; i < ns->n; i++)
        if (strcmp(ns->full[i], full) == 0) {
            hl_err(why, whylen, HL_EFORMAT, "the schema defines %.128s twice", full);
            return 1;
        }
    if (ns->n == MAX_NAMES || (ns->full[ns->n] = strdup(full)) == NULL) {
        hl_err(why, whylen, HL_EFORMAT, "the schema defines more than %d names", MAX_NAMES);
        return 1;
    }
    ns->n++;
    return 0;
}

/* The namespace a named type's members inherit: the prefix of a full
 * name (written into buf), else its own (the "namespace" attribute or
 * the enclosing one, own). */
static const char *inner_space(const char *name, const char *own, char *buf, size_t len)
{
    const char *dot = strrchr(name, '.');
    if (dot == NULL)
        return own;
    snprintf(buf, len, "%.*s", (int)(dot - name), name);
    return buf;
}

static int walk(json_t *t, const char *space, names *ns, int depth, char *why, size_t whylen)
{
    if (depth > MAX_DEPTH)
        return 0;                   /* avro-c refuses or handles it; nothing defined here */
    if (json_is_array(t)) {
        for (size_t i = 0; i < json_array_size(t); i++)
            if (walk(json_array_get(t, i), space, ns, depth + 1, why, whylen))
                return 1;
        return 0;
    }
    if (!json_is_object(t))
        return 0;
    json_t *type = json_object_get(t, "type");
    if (!json_is_string(type))
        return walk(type, space, ns, depth + 1, why, whylen);
    const char *ty = json_string_value(type);
    if (strcmp(ty, "array") == 0)
        return walk(json_object_get(t, "items"), space, ns, depth + 1, why, whylen);
    if (strcmp(ty, "map") == 0)
        return walk(json_object_get(t, "values"), space, ns, depth + 1, why, whylen);
    json_t *name = json_object_get(t, "name");
    if (!is_named(ty) || !json_is_string(name))
        return 0;
    char buf[1024];
    json_t *nsv = json_object_get(t, "namespace");
    const char *own = json_is_string(nsv) ? json_string_value(nsv) : space;
    const char *inner = inner_space(json_string_value(name), own, buf, sizeof buf);
    if (define(ns, json_string_value(name), own, why, whylen))
        return 1;
    json_t *fields = json_object_get(t, "fields");
    if (strcmp(ty, "record") != 0 && strcmp(ty, "error") != 0)
        return 0;
    for (size_t i = 0; i < json_array_size(fields); i++)
        if (walk(json_object_get(json_array_get(fields, i), "type"), inner, ns, depth + 1,
                 why, whylen))
            return 1;
    return 0;
}

int hl_avsc_parse(const char *text, size_t len, avro_schema_t *out, char *why, size_t whylen)
{
    json_error_t je;
    names *ns = calloc(1, sizeof *ns);
    json_t *j = json_loadb(text, len, JSON_DECODE_ANY, &je);
    int rc = 0;
    *out = NULL;
    if (ns == NULL)
        rc = hl_err(why, whylen, HL_ENOMEM, "out of memory");
    else if (j == NULL)
        rc = hl_err(why, whylen, HL_EFORMAT, "not JSON: %s", je.text);
    else if (walk(j, NULL, ns, 0, why, whylen))
        rc = HL_EFORMAT;
    else if (avro_schema_from_json_length(text, len, out) != 0) {
        rc = hl_err(why, whylen, HL_EFORMAT, "%s", avro_strerror());
        *out = NULL;
    }
    json_decref(j);
    for (int i = 0; ns != NULL && i < ns->n; i++)
        free(ns->full[i]);
    free(ns);
    return rc;
}
