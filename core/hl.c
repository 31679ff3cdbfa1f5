/* hl.c - error formatting and the event type names shared by core/ and worker/. */
#include "hl.h"
#include "fnv.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int hl_err(char *errbuf, size_t errlen, int code, const char *fmt, ...)
{
    if (errbuf != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(errbuf, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *hl_strerror(int code)
{
    switch (code) {
    case HL_OK:        return "OK";
    case HL_EINVAL:    return "EINVAL";
    case HL_ENOMEM:    return "ENOMEM";
    case HL_EIO:       return "EIO";
    case HL_EFORMAT:   return "EFORMAT";
    case HL_EFULL:     return "EFULL";
    case HL_ENOENT:    return "ENOENT";
    case HL_ECRC:      return "ECRC";
    case HL_EVERSION:  return "EVERSION";
    case HL_ERANGE:    return "ERANGE";
    case HL_EMISMATCH: return "EMISMATCH";
    case HL_EAGAIN:    return "EAGAIN";
    case HL_EDENIED:   return "EDENIED";
    }
    return "EUNKNOWN";
}

static const char *const type_names[HL_N_TYPES] = {
    "VIEW", "CLICK", "FAVORITE", "ADD_TO_CART", "PURCHASE", "RATE",
};

const char *hl_type_name(int type)
{
    return (type >= 0 && type < HL_N_TYPES) ? type_names[type] : "UNKNOWN";
}

int hl_type_parse(const char *s, size_t len)
{
    for (int t = 0; t < HL_N_TYPES; t++)
        if (strlen(type_names[t]) == len && memcmp(type_names[t], s, len) == 0)
            return t;
    return -1;
}

uint64_t hl_item_key(const char *id, size_t len)
{
    uint64_t h = hl_fnv1a64(HL_FNV64_BASIS, id, len);
    return h ? h : 1;
}
