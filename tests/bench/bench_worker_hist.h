/* bench_worker_hist.h - the worker's own histograms as bench_worker reads
 * them from /metrics: the live path by stage and the worker's share
 * (fetched to delivered), quantiles of what was counted between two reads.
 * Included by bench_worker.c, which provides metrics_body(). */
#ifndef BENCH_WORKER_HIST_H
#define BENCH_WORKER_HIST_H

#define MAX_LE 64

/* A histogram's cumulative bucket counts as /metrics shows them. */
typedef struct hist {
    double le[MAX_LE];
    double cum[MAX_LE];
    int    n;
} hist;

/* Reads name_bucket{<sel>le="..."} from the worker's /metrics; sel is the
 * label text before le (e.g. "stage=\"apply\"," or ""). */
static int hist_read(int port, const char *name, const char *sel, hist *h)
{
    char prefix[256];
    char *body = metrics_body(port);
    h->n = 0;
    if (body == NULL)
        return -1;
    int pl = snprintf(prefix, sizeof prefix, "%s_bucket{%sle=\"", name, sel);
    for (char *line = body; line && *line && h->n < MAX_LE;) {
        char *next = strchr(line, '\n');
        if (strncmp(line, prefix, (size_t)pl) == 0) {
            char *le = line + pl, *val = strchr(le, ' ');
            h->le[h->n] = strncmp(le, "+Inf", 4) == 0 ? 1e30 : strtod(le, NULL);
            h->cum[h->n++] = val ? strtod(val, NULL) : 0;
        }
        line = next ? next + 1 : NULL;
    }
    return h->n > 0 ? 0 : -1;
}

/* The q-quantile (ms) of what was counted between a and b, interpolated
 * inside its bucket as histogram_quantile does. */
static double hist_quantile_ms(const hist *a, const hist *b, double q)
{
    if (b->n == 0 || a->n != b->n)
        return -1;
    double total = b->cum[b->n - 1] - a->cum[a->n - 1], want = q * total, prev = 0;
    if (total <= 0)
        return -1;
    for (int i = 0; i < b->n; i++) {
        double c = b->cum[i] - a->cum[i];
        if (c >= want) {
            double lo = i ? b->le[i - 1] : 0, hi = b->le[i] > 1e29 ? lo : b->le[i];
            double in = c - prev;
            return 1000 * (in > 0 ? lo + (hi - lo) * (want - prev) / in : hi);
        }
        prev = c;
    }
    return -1;
}

static const char *const stages[6] = {"broker", "wait", "apply", "refresh", "produce",
                                      "deliver"};

/* The worker's share (fetched to delivered) and each stage, read before
 * (when) and after a window. */
typedef struct worker_hists {
    hist share, stage[6];
} worker_hists;

static void worker_hists_read(int port, worker_hists *w)
{
    char sel[64];
    hist_read(port, "halflife_fetch_to_delivery_seconds", "", &w->share);
    for (int s = 0; s < 6; s++) {
        snprintf(sel, sizeof sel, "stage=\"%s\",", stages[s]);
        hist_read(port, "halflife_event_stage_seconds", sel, &w->stage[s]);
    }
}

/* "stages":{"broker":[p50,p99],...} of the window between a and b. */
static void print_stages(const worker_hists *a, const worker_hists *b)
{
    printf("\"stages_ms\":{");
    for (int s = 0; s < 6; s++)
        printf("%s\"%s\":[%.2f,%.2f]", s ? "," : "", stages[s],
               hist_quantile_ms(&a->stage[s], &b->stage[s], 0.5),
               hist_quantile_ms(&a->stage[s], &b->stage[s], 0.99));
    printf("}");
}

#endif
