/* test_utf8.c - worker/utf8.c against a reference written from the
 * definition: decode a code point the long way, then ask whether it is in
 * range, not a surrogate and in its shortest form. Every sequence of one,
 * two and three bytes is compared exhaustively, four-byte ones around
 * every boundary, and the ASCII fast path at every length and offset. */
#define T_SUITE "utf8"
#include "test.h"

#include "utf8.h"

#include <stdint.h>

/* Length of the valid character at s[0..n), or 0: the definition. */
static size_t ref_char_len(const unsigned char *s, size_t n)
{
    size_t len;
    uint32_t cp, min;
    if (s[0] < 0x80) return 1;
    if ((s[0] & 0xE0) == 0xC0) { len = 2; cp = s[0] & 0x1F; min = 0x80; }
    else if ((s[0] & 0xF0) == 0xE0) { len = 3; cp = s[0] & 0x0F; min = 0x800; }
    else if ((s[0] & 0xF8) == 0xF0) { len = 4; cp = s[0] & 0x07; min = 0x10000; }
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

static int ref_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0, k; i < n; i += k)
        if ((k = ref_char_len(s + i, n - i)) == 0) return 0;
    return 1;
}

static int same(const unsigned char *s, size_t n)
{
    return hl_utf8_valid((const char *)s, n) == ref_valid(s, n) &&
           (hl_utf8_valid_prefix((const char *)s, n) == n) == ref_valid(s, n);
}

static void test_all_short_sequences(void)
{
    unsigned char b[3];
    long bad = 0;
    for (uint32_t x = 0; x < (1u << 24); x++) {
        b[0] = (unsigned char)(x >> 16); b[1] = (unsigned char)(x >> 8); b[2] = (unsigned char)x;
        if (!same(b, 3)) bad++;
        if ((x & 0xFFFF) == 0 && !same(b, 1)) bad++;
        if ((x & 0xFF) == 0 && !same(b, 2)) bad++;
        if (!same(b + 1, 2) || hl_utf8_char_len((const char *)b, 3) != ref_char_len(b, 3)) bad++;
    }
    CHECKF(bad == 0, "%ld sequences disagree with the reference", bad);
}

static void test_four_byte_boundaries(void)
{
    static const unsigned char lead[] = { 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xF7, 0xF8, 0xFF };
    static const unsigned char cont[] = { 0x00, 0x7F, 0x80, 0x8F, 0x90, 0xBF, 0xC0, 0xFF };
    long bad = 0;
    for (size_t a = 0; a < sizeof lead; a++)
        for (size_t i = 0; i < sizeof cont; i++)
            for (size_t j = 0; j < sizeof cont; j++)
                for (size_t k = 0; k < sizeof cont; k++) {
                    unsigned char s[4] = { lead[a], cont[i], cont[j], cont[k] };
                    for (size_t n = 1; n <= 4; n++)
                        if (!same(s, n)) bad++;
                }
    CHECKF(bad == 0, "%ld sequences disagree with the reference", bad);
    CHECK(hl_utf8_valid("\xf0\x9f\x98\x80", 4) && hl_utf8_valid("\xf4\x8f\xbf\xbf", 4));
    CHECK(!hl_utf8_valid("\xf4\x90\x80\x80", 4) && !hl_utf8_valid("\xf0\x8f\xbf\xbf", 4));
}

/* One bad byte anywhere in an ASCII id of any length up to 40 is found,
 * whether it falls in an 8-byte word or in the tail; NUL is valid. */
static void test_ascii_fast_path(void)
{
    char s[41];
    for (size_t n = 0; n <= 40; n++) {
        memset(s, 'a', n);
        CHECK(hl_utf8_valid(s, n) && hl_utf8_valid_prefix(s, n) == n);
        for (size_t i = 0; i < n; i++) {
            s[i] = (char)0x80;
            CHECKF(!hl_utf8_valid(s, n) && hl_utf8_valid_prefix(s, n) == i, "n %zu at %zu", n, i);
            s[i] = 0;
            CHECK(hl_utf8_valid(s, n));
            s[i] = 'a';
        }
    }
    CHECK(hl_utf8_valid_prefix("ab\xc3\xa9\xff", 5) == 4);
}

int main(void)
{
    RUN(test_all_short_sequences);
    RUN(test_four_byte_boundaries);
    RUN(test_ascii_fast_path);
    TEST_EXIT();
}
