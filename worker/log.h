/* log.h - one line per event on stderr, key=value (STYLE.md section 11):
 *   ts=2026-11-23T08:00:00.123Z level=warn event=snapshot_failed path=... err="..."
 * Thread-safe: each line is one write(2). */
#ifndef HL_LOG_H
#define HL_LOG_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

enum { HL_LOG_DEBUG, HL_LOG_INFO, HL_LOG_WARN, HL_LOG_ERROR };

/* Lines below this level are dropped (default HL_LOG_INFO; HALFLIFE_LOG_LEVEL
 * = debug|info|warn|error sets it at start through hl_log_set_level). */
void hl_log_set_level(int level);
int  hl_log_level_parse(const char *s);     /* -1 if unknown */

/* event is a short snake_case name; fmt continues the line with more
 * key=value pairs (quote values that may hold spaces with %s in "..."). */
void hl_log(int level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* s[0..n) for a value between quotes ("%s" in fmt): '"' and '\\' escaped
 * with '\\', a NUL written as '?', cut to fit cap (never mid-escape, nor
 * mid-character: a character s itself ends in the middle of is dropped).
 * Returns out. Ids come from records: quoted raw, one holding '"' would
 * end its value early and forge fields on the line. */
const char *hl_log_quote(char *out, size_t cap, const char *s, size_t n);

/* A limiter for lines that bad input could repeat millions of times: at
 * most one line per interval_ms; the next line that passes reports how many
 * were suppressed. Owned by whoever logs (a struct field, not a static).
 * Any thread may call it at once (the producer's run from the delivery
 * callback, in whichever thread polls): last_ms and suppressed are relaxed
 * atomics, only touched on the lines it limits. interval_ms is set before
 * the limiter is shared. */
typedef struct hl_log_limit {
    int64_t          interval_ms;
    _Atomic int64_t  last_ms;
    _Atomic uint64_t suppressed;
} hl_log_limit;

/* 1 if a line may be written now (and *suppressed_out gets the count
 * dropped since the last one), 0 if it should be dropped (and is counted). */
int hl_log_limit_pass(hl_log_limit *lim, uint64_t *suppressed_out);

/* The clocks, for worker/ only: core/ never reads one (time comes in as an
 * argument). Monotonic for durations and deadlines, wall for timestamps
 * others read. hl_now_mono_s is the monotonic clock in seconds, for
 * durations printed as rates. */
int64_t hl_now_mono_ms(void);
int64_t hl_now_mono_us(void);
double  hl_now_mono_s(void);
int64_t hl_now_wall_ms(void);

#endif
