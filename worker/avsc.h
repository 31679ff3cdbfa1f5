/* avsc.h - an Avro schema's JSON parsed for avro-c, refusing first what
 * avro-c would refuse by leaking.
 *
 * Writer schemas come from a Schema Registry or a schemas directory: text
 * halflife does not write. avro-c (1.11) leaks the type it was building
 * when a schema defines one name twice ("Cannot save enum schema"): about
 * a kilobyte per parse, and a refused id is parsed again now and then
 * while payloads name it (fuzz_registry found it). Such a schema is never valid
 * Avro (a full name is defined once), so it is refused here, by name, and
 * avro-c never sees it. */
#ifndef HL_AVSC_H
#define HL_AVSC_H

#include "hl.h"

#include <avro.h>

/* 0 and *out (the caller decrefs), or HL_EFORMAT and a reason in why:
 * not JSON, a full name (record, error, enum or fixed) defined twice, or
 * avro-c's own refusal. */
int hl_avsc_parse(const char *text, size_t len, avro_schema_t *out, char *why, size_t whylen);

#endif
