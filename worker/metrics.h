/* metrics.h - a registry of counters, gauges and histograms, rendered in the
 * Prometheus text format (names prefixed halflife_, base units, counters end
 * in _total). Registration takes a mutex; updates are relaxed atomics, so any
 * thread may update while the HTTP thread renders. */
#ifndef HL_METRICS_H
#define HL_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef struct hl_metrics   hl_metrics;     /* opaque */
typedef struct hl_counter   hl_counter;
typedef struct hl_gauge     hl_gauge;
typedef struct hl_histogram hl_histogram;

hl_metrics *hl_metrics_create(void);
void        hl_metrics_destroy(hl_metrics *reg);          /* NULL is a no-op */

/* Each returns the series for (name, labels), creating it on first use; the
 * same call again returns the same series. labels is NULL or the inside of
 * the braces, already escaped: "reason=\"too_short\",partition=\"3\"".
 * help is used by the first registration of a name that has one. Never
 * NULL: aborts on out-of-memory at registration (which happens at start or
 * on assignment) and on a programmer's mistake that would break every
 * scrape (an invalid metric name, one name registered as two kinds).
 * Malformed labels (bytes that are not UTF-8 included) do not abort: the
 * series is exported with the one label invalid_labels="<the string,
 * escaped>" and stderr says so. */
hl_counter   *hl_metrics_counter(hl_metrics *reg, const char *name,
                                 const char *help, const char *labels);
hl_gauge     *hl_metrics_gauge(hl_metrics *reg, const char *name,
                               const char *help, const char *labels);
/* bounds: n ascending upper bounds in the metric's unit (seconds, ...);
 * +Inf is added. The first registration of a name fixes its bounds. */
hl_histogram *hl_metrics_histogram(hl_metrics *reg, const char *name,
                                   const char *help, const char *labels,
                                   const double *bounds, int n);

/* Stops rendering the series (name, labels) until it is registered again,
 * for per-partition series of a partition this worker no longer owns (so a
 * stale value does not outlive the assignment). The pointer stays valid and
 * updates through it are kept; registering again shows it with its value.
 * Unknown series: no-op. */
void hl_metrics_hide(hl_metrics *reg, const char *name, const char *labels);

/* Removes the series (name, labels) and frees it, for a label set that
 * never comes back (halflife_model_info of a replaced model): hidden, each
 * would stay in memory, and be walked at each scrape, for the process's
 * life. The caller must hold no pointer to it and no thread may update it
 * any more. Unknown series: no-op. */
void hl_metrics_drop(hl_metrics *reg, const char *name, const char *labels);

/* The series of name, hidden ones too (what the registry holds for it);
 * 0 for an unknown name. */
int hl_metrics_series_count(hl_metrics *reg, const char *name);

/* Escapes a label value for the labels argument (backslash, double quote,
 * newline; a byte that is not part of valid UTF-8 becomes '?', so the
 * result is at most twice as long as value), like snprintf: writes at most
 * dstlen bytes including the NUL and returns the length the whole escaped
 * value needs. */
size_t hl_metrics_escape(char *dst, size_t dstlen, const char *value);

void hl_counter_add(hl_counter *c, uint64_t n);
uint64_t hl_counter_get(const hl_counter *c);
void hl_gauge_set(hl_gauge *g, double v);
void hl_gauge_add(hl_gauge *g, double v);
void hl_histogram_observe(hl_histogram *h, double v);
/* n observations of the same value v (a batch's events share a stage). */
void hl_histogram_observe_n(hl_histogram *h, double v, uint64_t n);

/* Latency bounds in seconds shared by the stage histograms: 50 us .. 10 s. */
extern const double hl_latency_bounds_s[];
extern const int    hl_latency_bounds_n;
/* Bounds of the live path's histograms (event to publish and its stages):
 * 1 ms steps up to 10 ms, so a p99 read from them resolves 1 ms where the
 * targets lie (worker under 10 ms, end to end under 25 ms), then coarser
 * up to 60 s. */
extern const double hl_live_bounds_s[];
extern const int    hl_live_bounds_n;

/* Read back (any thread), for totals the process reports besides
 * /metrics (the demo's status line, the final worker_totals line):
 *  - hl_metrics_counter_sum: every series of a counter, hidden ones too (a
 *    count outlives its series being hidden); 0 for an unknown name;
 *  - hl_metrics_gauge_sum: the visible series of a gauge;
 *  - hl_histogram_counts: up to max of the n+1 bucket counts (not
 *    cumulative; the last is +Inf), returns how many; hl_histogram_bounds:
 *    the n finite upper bounds. */
uint64_t      hl_metrics_counter_sum(hl_metrics *reg, const char *name);
double        hl_metrics_gauge_sum(hl_metrics *reg, const char *name);
int           hl_histogram_counts(const hl_histogram *h, uint64_t *out, int max);
const double *hl_histogram_bounds(const hl_histogram *h, int *n);

/* Renders every series into a malloc'd NUL-terminated buffer (*out, *len);
 * the caller frees it. 0 or HL_ENOMEM. */
int hl_metrics_render(hl_metrics *reg, char **out, size_t *len);

#endif
