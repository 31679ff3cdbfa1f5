/* fnv.h - FNV-1a, the one hash of bytes shared by every part that wants a
 * fast, stable hash and no defence against chosen keys: item keys, the
 * model's id index, in-memory maps, fingerprints printed or compared.
 *
 * Stable means a value kept in a file or shown to a user never changes:
 * the history rings keep hl_item_key, a .hlm file's id index is laid out
 * by the hash from HL_FNV64_HLM (schemas/hlm.py computes the same). */
#ifndef HL_FNV_H
#define HL_FNV_H

#include <stddef.h>
#include <stdint.h>

/* FNV-1a 64's offset basis. */
#define HL_FNV64_BASIS 0xcbf29ce484222325ull
/* The basis .hlm files have been written with: the standard one with its
 * last decimal digit lost (14695981039346656037 became 1469598103934665603).
 * A different start only, as good a hash; changing it would move every
 * id in every model file's index, so it stays. */
#define HL_FNV64_HLM   1469598103934665603ull
#define HL_FNV32_BASIS 2166136261u

/* FNV-1a 64 of p[0..n), continuing from h: start with HL_FNV64_BASIS (or
 * HL_FNV64_HLM), or the value of the bytes before p. */
static inline uint64_t hl_fnv1a64(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* FNV-1a 32 of p[0..n), from HL_FNV32_BASIS: for tables that keep 32
 * bits of hash per slot. */
static inline uint32_t hl_fnv1a32(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint32_t h = HL_FNV32_BASIS;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 16777619u;
    return h;
}

#endif
