/* log.c - key=value log lines on stderr, a level filter, a rate limiter and
 * the worker's clocks (every other worker/ file reads the time through
 * these). The level is process-wide configuration set once at start; the
 * limiter state lives in the caller's struct (STYLE.md section 6). */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int min_level = HL_LOG_INFO;

void hl_log_set_level(int level) { atomic_store(&min_level, level); }

int hl_log_level_parse(const char *s)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

int64_t hl_now_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t hl_now_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

double hl_now_mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int64_t hl_now_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* n, less the last character of s[0..n) when it is incomplete (a lead
 * byte followed by fewer continuation bytes than it announces): where to
 * end a value or a line that was cut, so that no character is split.
 * Bytes that are not UTF-8 anyway are left as they are. */
static size_t whole_chars(const char *s, size_t n)
{
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        unsigned char c = (unsigned char)s[n - k];
        if ((c & 0xc0) == 0x80)
            continue;
        size_t want = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        return k < want ? n - k : n;
    }
    return n;
}

void hl_log(int level, const char *event, const char *fmt, ...)
{
    static const char *const lv[] = {"debug", "info", "warn", "error"};
    if (level < atomic_load(&min_level))
        return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line,
                     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s event=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                     lv[level & 3], event);
    if (fmt != NULL && *fmt != '\0' && n < (int)sizeof line - 2) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
        va_end(ap);
        n += m;
    }
    if (n > (int)sizeof line - 2)
        n = (int)whole_chars(line, sizeof line - 2);
    /* Values come from records too (an id is whatever a producer wrote):
     * one event stays one line, so no control byte (a newline followed by
     * a forged "ts=... level=error" line, a terminal escape) is written as
     * it is. */
    for (int i = 0; i < n; i++)
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
            line[i] = '?';
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;                    /* nowhere left to report a failed log write */
}

const char *hl_log_quote(char *out, size_t cap, const char *s, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; i < n && j + 2 < cap; i++) {
        if (s[i] == '"' || s[i] == '\\')
            out[j++] = '\\';
        out[j++] = s[i] != '\0' ? s[i] : '?';
    }
    j = whole_chars(out, j);    /* cut here or by the caller (a 64-byte prefix) */
    if (cap > 0)
        out[j] = '\0';
    return out;
}

/* Of threads passing in the same interval, the compare-and-swap lets one
 * through and counts the others as suppressed, so each call is counted
 * once: as the line written or in a later line's suppressed=. */
int hl_log_limit_pass(hl_log_limit *lim, uint64_t *suppressed_out)
{
    int64_t now = hl_now_mono_ms();
    int64_t last = atomic_load_explicit(&lim->last_ms, memory_order_relaxed);
    if ((last != 0 && now - last < lim->interval_ms) ||
        !atomic_compare_exchange_strong_explicit(&lim->last_ms, &last, now,
                                                 memory_order_relaxed, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&lim->suppressed, 1, memory_order_relaxed);
        return 0;
    }
    uint64_t sup = atomic_exchange_explicit(&lim->suppressed, 0, memory_order_relaxed);
    if (suppressed_out)
        *suppressed_out = sup;
    return 1;
}
