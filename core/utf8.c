/* utf8.c - UTF-8 validation (RFC 3629), see utf8.h.
 *
 * A character is checked by its lead byte's class, the way the Unicode
 * standard's table 3-7 ("well-formed UTF-8 byte sequences") lists them:
 * the second byte's range is narrower after E0 (no overlong 3-byte forms),
 * ED (no surrogates), F0 (no overlong 4-byte forms) and F4 (nothing above
 * U+10FFFF); C0, C1 and F5..FF never start a character. No tables, no
 * allocation, no locale. */
#include "utf8.h"

static int cont(unsigned char b) { return (b & 0xC0) == 0x80; }

size_t hl_utf8_char_len(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    if (c < 0xC2)                       /* a continuation byte, or C0/C1 */
        return 0;
    if (c < 0xE0)
        return n >= 2 && cont(s[1]) ? 2 : 0;
    if (c < 0xF0) {
        if (n < 3 || !cont(s[1]) || !cont(s[2]))
            return 0;
        if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] >= 0xA0))
            return 0;                   /* overlong; a surrogate */
        return 3;
    }
    if (c < 0xF5) {
        if (n < 4 || !cont(s[1]) || !cont(s[2]) || !cont(s[3]))
            return 0;
        if ((c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] >= 0x90))
            return 0;                   /* overlong; above U+10FFFF */
        return 4;
    }
    return 0;
}

size_t hl_utf8_valid_prefix(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = hl_utf8_char_len(s + i, n - i);
        if (k == 0)
            return i;
        i += k;
    }
    return n;
}
