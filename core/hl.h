/* hl.h - what every halflife file shares: error codes, hl_err(), limits.
 *
 * Functions return 0 on success and a negative HL_E* on failure (libuv
 * style). A function that can fail for a reason worth reading also takes
 * (char *errbuf, size_t errlen) and writes the reason there once, where the
 * error is detected, through hl_err(). */
#ifndef HL_H
#define HL_H

#include <stddef.h>
#include <stdint.h>

enum {
    HL_OK       =  0,
    HL_EINVAL   = -1,   /* bad argument or configuration */
    HL_ENOMEM   = -2,   /* allocation failed */
    HL_EIO      = -3,   /* a system call failed */
    HL_EFORMAT  = -4,   /* bytes that do not parse: input, snapshot, model */
    HL_EFULL    = -5,   /* a bounded structure is full */
    HL_ENOENT   = -6,   /* not found */
    HL_ECRC     = -7,   /* checksum mismatch */
    HL_EVERSION = -8,   /* a format version we do not read */
    HL_ERANGE   = -9,   /* a value outside its allowed range */
    HL_EMISMATCH= -10,  /* two parts that must agree do not (model vs state) */
    HL_EAGAIN   = -11,  /* not yet: a remote service is away or still answering */
    HL_EDENIED  = -12,  /* a remote service refused our credentials */
};

#define HL_MAX_HEADS    8     /* decay timescales per user */
#define HL_MAX_ID_LEN   256   /* user_id and item_id, bytes (DESIGN.md section 3) */

/* The event values every reader refuses by default (the codec's
 * event.max.ts.ms and event.max.weight, the dataset reader always): a
 * time after 2100-01-01 in ms, a weight above 1e6 (far beyond any rating
 * or count, yet small enough that a user's decayed mass stays finite:
 * 1e38 is a valid Avro float, and one such event made a state inf). Plain
 * literals, so HL_STR gives the config's default text. */
#define HL_EVENT_MAX_TS_MS  4102444800000
#define HL_EVENT_MAX_WEIGHT 1e6
#define HL_STR_(x) #x
#define HL_STR(x)  HL_STR_(x)

/* Error messages show the first 64 bytes of a value someone else gave
 * ("%.64s%s", v, HL_MORE64(strlen(v))), so a long one cannot push the
 * reason out of the buffer; "..." says it was cut. */
#define HL_MORE64(len) ((len) > 64 ? "..." : "")

/* Declares a helper whose only effect is __builtin_prefetch. Out of line,
 * gcc 12 (from -O1) finds such a function pure, a prefetch being no side
 * effect to it, and deletes its calls: migrate.o and qscore_scan.o held no
 * prefetch instruction at all. Inlined by force, the hints land in the
 * caller. `make check-prefetch` fails an object whose source prefetches
 * but whose code has no prefetch instruction. */
#define HL_PREFETCH_FN static inline __attribute__((always_inline))

/* Event types, in the order of the BehaviourEvent enum (schemas/). */
enum { HL_VIEW, HL_CLICK, HL_FAVORITE, HL_ADD_TO_CART, HL_PURCHASE, HL_RATE,
       HL_N_TYPES };

/* Formats fmt into errbuf (if errbuf is not NULL) and returns code, so the
 * detecting site can write `return hl_err(errbuf, errlen, HL_EIO, ...)`. */
int hl_err(char *errbuf, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* A short name for an HL_E* code ("EFORMAT"); never NULL. */
const char *hl_strerror(int code);

/* The name of an item that no model's dictionary decides: FNV-1a 64 of
 * its item_id bytes, 0 reserved for "unknown" (a hash of 0 becomes 1).
 * History rings keep it, so a user's events can be looked up in any later
 * model (DESIGN.md section 10). Two ids with one key are taken as one
 * item; at 64 bits that is ~1 in 10^7 for a catalogue of 10^6 items. */
uint64_t hl_item_key(const char *id, size_t len);

/* Event type names as the Avro enum spells them ("VIEW"); -1 if unknown. */
const char *hl_type_name(int type);
int         hl_type_parse(const char *s, size_t len);

#endif
