/* test_log.c - worker/log.c: one event is one line, whatever the values
 * it carries hold (ids come from records anyone can produce). */
#define T_SUITE "log"
#include "test.h"
#include "log.h"
#include "utf8.h"

#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

/* hl_log's output for one call, read back from a temporary stderr. */
static size_t log_one(char *out, size_t cap, const char *user, int user_len)
{
    FILE *tmp = tmpfile();
    int saved = dup(STDERR_FILENO);
    if (tmp == NULL || saved < 0)
        return 0;
    dup2(fileno(tmp), STDERR_FILENO);
    hl_log(HL_LOG_WARN, "user_multi_partition", "user=\"%.*s\" partition=%d", user_len, user,
           3);
    dup2(saved, STDERR_FILENO);
    close(saved);
    rewind(tmp);
    size_t n = fread(out, 1, cap - 1, tmp);
    out[n] = '\0';
    fclose(tmp);
    return n;
}

/* A user id holding a newline and the start of another line must not
 * forge a log line of its own (before the fix it wrote two lines, the
 * second "level=error event=schema_registry_down"). */
static void test_value_cannot_forge_a_line(void)
{
    static const char user[] = "u1\nts=2026-12-06T00:00:00.000Z level=error "
                               "event=schema_registry_down\r\x1b[2J";
    char got[4096];
    size_t n = log_one(got, sizeof got, user, (int)sizeof user - 1);
    int lines = 0, ctrl = 0;
    for (size_t i = 0; i < n; i++) {
        lines += got[i] == '\n';
        ctrl += (unsigned char)got[i] < 0x20 && got[i] != '\n';
    }
    CHECKF(lines == 1 && got[n - 1] == '\n', "%d lines: %s", lines, got);
    CHECKF(ctrl == 0, "%d control bytes left in: %s", ctrl, got);
    CHECKF(strstr(got, " partition=3\n") != NULL, "the line lost its end: %s", got);
}

/* Printable text, UTF-8 included, is left as it is. */
static void test_printable_kept(void)
{
    static const char user[] = "caf\xc3\xa9 42";
    char got[4096];
    log_one(got, sizeof got, user, (int)sizeof user - 1);
    CHECKF(strstr(got, "user=\"caf\xc3\xa9 42\" partition=3\n") != NULL, "%s", got);
}

/* A quote in an id must not close its value early and forge fields on
 * the same line (user="a" level=error ...): the multi-partition line
 * quotes the id through hl_log_quote, as batch.c does. */
static void test_quote_cannot_forge_a_field(void)
{
    static const char user[] = "a\" level=error event=forged x=\"\\";
    char q[160], got[4096];
    hl_log_quote(q, sizeof q, user, sizeof user - 1);
    CHECKF(strcmp(q, "a\\\" level=error event=forged x=\\\"\\\\") == 0, "quoted: %s", q);
    log_one(got, sizeof got, q, (int)strlen(q));
    int quotes = 0;
    for (const char *p = got; *p; p++) {
        if (*p == '\\' && p[1] != '\0')
            p++;
        else if (*p == '"')
            quotes++;
    }
    CHECKF(quotes == 2, "%d unescaped quotes in: %s", quotes, got);
    hl_log_quote(q, 8, user, sizeof user - 1);      /* cut, never mid-escape */
    CHECKF(strcmp(q, "a\\\" le") == 0, "cut: %s", q);
}

/* A quoted value cut to its buffer, or given cut (callers quote the first
 * 64 bytes of an id), ends between characters too: ids are UTF-8, and one
 * cut mid-character made the whole line invalid UTF-8. */
static void test_quote_cut_between_characters(void)
{
    static const char *const ids[] = {"abc\xc3\xa9\xc3\xa9\xc3\xa9", "ab\xe2\x82\xac\xe2\x82\xac",
                                      "a\xf0\x9f\x98\x80\xf0\x9f\x98\x80"};
    static const char *const want[] = {"abc\xc3\xa9", "ab\xe2\x82\xac", "a\xf0\x9f\x98\x80"};
    char q[8];
    for (int i = 0; i < 3; i++) {
        hl_log_quote(q, sizeof q, ids[i], strlen(ids[i]));
        CHECKF(strcmp(q, want[i]) == 0 && hl_utf8_valid(q, strlen(q)),
               "id %d cut to %zu bytes, the last %02x", i, strlen(q),
               (unsigned char)q[strlen(q) - 1]);
    }
    hl_log_quote(q, sizeof q, "a\"\xc3\xa9\xc3\xa9", 6);    /* an escape before the cut */
    CHECKF(strcmp(q, "a\\\"\xc3\xa9") == 0, "cut: %s", q);
    char big[32];       /* the caller's prefix (64 bytes of an id) ends mid-character */
    hl_log_quote(big, sizeof big, "\xc3\xa9\xc3\xa9", 3);
    CHECKF(strcmp(big, "\xc3\xa9") == 0, "a prefix cut mid-character quoted as %zu bytes",
           strlen(big));
}

/* A value longer than the line is cut at 2,046 bytes, and the cut falls
 * between characters: a line ending in half a character is not UTF-8, and
 * a reader that decodes lines (Python's, jq) fails on it or drops it.
 * Each width of character is tried at every offset from the cut. */
static void test_long_line_cut_between_characters(void)
{
    static const char *const chars[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    static char user[3000], got[4096];
    for (int c = 0; c < 3; c++) {
        size_t w = strlen(chars[c]);
        for (size_t pad = 0; pad < w; pad++) {
            size_t len = pad;
            memset(user, 'a', pad);
            while (len + w <= sizeof user) {
                memcpy(user + len, chars[c], w);
                len += w;
            }
            size_t n = log_one(got, sizeof got, user, (int)len);
            CHECKF(n > 2040 && got[n - 1] == '\n', "%zu bytes", n);
            CHECKF(n > 0 && hl_utf8_valid(got, n - 1),
                   "width %zu pad %zu: the line ends in %02x %02x %02x", w, pad,
                   (unsigned char)got[n - 4], (unsigned char)got[n - 3],
                   (unsigned char)got[n - 2]);
        }
    }
}

/* The producer's limiters are shared: on_delivery runs in whichever
 * thread polls (each shard thread and the main thread). Every call must
 * be accounted for, as the one line passed or as suppressed: with a plain
 * read-modify-write, two threads lost each other's increments (and could
 * both pass in one interval). */
#define LIMIT_CALLS 200000
static void *limit_hammer(void *arg)
{
    hl_log_limit *lim = arg;
    long passed = 0;
    for (int i = 0; i < LIMIT_CALLS; i++)
        passed += hl_log_limit_pass(lim, NULL);
    return (void *)passed;
}

static void test_limit_shared_by_threads(void)
{
    hl_log_limit lim = {.interval_ms = 3600 * 1000};   /* one line in the whole test */
    pthread_t th[4];
    long passed = 0;
    for (int i = 0; i < 4; i++)
        CHECK(pthread_create(&th[i], NULL, limit_hammer, &lim) == 0);
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(th[i], &r);
        passed += (long)r;
    }
    uint64_t sup = 0;
    lim.interval_ms = 0;                                /* the next call passes */
    CHECK(hl_log_limit_pass(&lim, &sup) == 1);
    CHECKF(passed == 1, "%ld calls passed in one interval, want 1", passed);
    CHECKF(sup == 4 * LIMIT_CALLS - 1, "suppressed %llu, want %d",
           (unsigned long long)sup, 4 * LIMIT_CALLS - 1);
}

int main(void)
{
    RUN(test_value_cannot_forge_a_line);
    RUN(test_printable_kept);
    RUN(test_quote_cannot_forge_a_field);
    RUN(test_long_line_cut_between_characters);
    RUN(test_quote_cut_between_characters);
    RUN(test_limit_shared_by_threads);
    TEST_EXIT();
}
