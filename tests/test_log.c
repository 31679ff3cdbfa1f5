/* test_log.c - worker/log.c: one event is one line, whatever the values
 * it carries hold (ids come from records anyone can produce). */
#define T_SUITE "log"
#include "test.h"
#include "log.h"

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

int main(void)
{
    RUN(test_value_cannot_forge_a_line);
    RUN(test_printable_kept);
    TEST_EXIT();
}
