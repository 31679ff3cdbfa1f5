/* utf8.h - is a byte string valid UTF-8?
 *
 * Avro strings are UTF-8, and so is JSON: an id that is not would be
 * published in lists that a conforming reader (python3-avro) cannot decode.
 * Valid means RFC 3629: shortest forms only, no surrogates (U+D800..DFFF),
 * nothing above U+10FFFF. U+0000 is valid. */
#ifndef HL_UTF8_H
#define HL_UTF8_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Bytes of the longest valid prefix of s[0..n): n when all of s is valid. */
size_t hl_utf8_valid_prefix(const char *s, size_t n);

/* Length (1..4) of the valid character that starts s[0..n), n >= 1, or 0
 * when s does not start one. For printers that replace bad bytes. */
size_t hl_utf8_char_len(const char *s, size_t n);

/* 1 if s[0..n) is valid UTF-8. Inline for the decoder's hot path: ids are
 * short and almost always ASCII, which is checked 8 bytes at a time; the
 * first byte >= 0x80 hands over to the full check. */
static inline int hl_utf8_valid(const char *s, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, s + i, 8);
        if (v & 0x8080808080808080ull)
            break;
    }
    for (; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return hl_utf8_valid_prefix(s + i, n - i) == n - i;
    return 1;
}

#endif
