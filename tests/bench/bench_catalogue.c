/* bench_catalogue.c - what the live catalogue costs a refresh: refreshes per
 * second on one core with 1% of the items hidden, and with 1% of the
 * catalogue added as side items, against the same ranker with no catalogue
 * (the ceiling: hiding can only cost). Target (issue 11): hidden items
 * within noise of none.
 *
 * 100k items, dim 64, three heads, one hidden layer of 256, k 20, batches
 * of 256 users with a full ring of 32 seen items (bench_rank's shape).
 * The variants are timed in alternation, REPS times, each repetition at
 * least 0.2 s of this thread's CPU time; medians are printed, one JSON line
 * per variant.
 *
 * Then what a new view of the catalogue costs the item reader with the
 * same number of added items (1 per model item, at most 100k): built
 * fresh, and rebuilt in the memory of a view no one reads any more (what
 * the reader does, items.c). Ceiling: copying the view's vector bytes into
 * memory already mapped, the least a rebuild can do, timed in the same
 * run. Usage: bench_catalogue [items] */
#define BENCH_NAME "bench_catalogue"
#define BENCH_SEED 0x9E3779B97F4A7C15ull
#include "bench_util.h"
#include "bench_args.h"

#include "catalogue.h"

#include <cblas.h>
#include <unistd.h>

#define K       20
#define REPS    7
#define N       MAX_N

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static hl_rec out[N * K];
static int n_out[N];

/* Refreshes per second of one timed repetition (>= 0.2 s). */
static double rate(hl_ranker *r, const bench_users *bu, const hl_rank_catalogue *c)
{
    int calls = 0;
    hl_ranker_set_catalogue(r, c);
    double t0 = now_s(), t;
    do {
        hl_ranker_refresh(r, bu->v, N, out, n_out);
        calls++;
    } while ((t = now_s() - t0) < 0.2);
    return (double)calls * N / t;
}

/* ---- the item reader's views ---- */

/* bm's model with ids "i<row>", written and opened for real (the catalogue
 * names items by id). NULL on failure, said on stderr. */
static hl_model *open_with_ids(bench_model *bm, int32_t n)
{
    char path[64], err[256];
    char **ids = malloc((size_t)n * sizeof *ids);
    uint32_t *lens = malloc((size_t)n * sizeof *lens);
    char *buf = malloc((size_t)n * 16);
    if (ids == NULL || lens == NULL || buf == NULL)
        return NULL;
    for (int32_t i = 0; i < n; i++) {
        ids[i] = buf + (size_t)i * 16;
        lens[i] = (uint32_t)snprintf(ids[i], 16, "i%d", i);
    }
    bm->p.item_id = (const char *const *)ids;
    bm->p.item_id_len = lens;
    snprintf(path, sizeof path, "/tmp/bench_catalogue_%d.hlm", (int)getpid());
    hl_model *m = NULL;
    if (hl_model_write(path, &bm->p, err, sizeof err) != 0 ||
        (m = hl_model_open(path, err, sizeof err)) == NULL)
        fprintf(stderr, "bench_catalogue: %s\n", err);
    unlink(path);
    bm->p.item_id = NULL;
    bm->p.item_id_len = NULL;
    free(ids); free(lens); free(buf);
    return m;
}

/* ms of this thread's CPU (now_s): the reader's cost per view, what the
 * README's "at most half of one core" is about; time descheduled by
 * other processes is not in it. */
static double view_ms(const hl_catalogue *c, hl_catview **reuse)
{
    double t0 = now_s();
    if (reuse != NULL) {
        *reuse = hl_catalogue_view_reuse(c, *reuse);
        return (now_s() - t0) * 1e3;
    }
    hl_catview_destroy(hl_catalogue_view(c));
    return (now_s() - t0) * 1e3;
}

static void bench_views(bench_model *bm, int32_t n_items)
{
    int32_t n_add = n_items < 100000 ? n_items : 100000;
    char err[256], id[32];
    hl_model *m = open_with_ids(bm, n_items);
    hl_catalogue *c = m ? hl_catalogue_create(m, n_add, err, sizeof err) : NULL;
    float *e = rand_array((size_t)n_add * DIM, 1.0f);
    if (c == NULL)
        exit(1);
    for (int32_t i = 0; i < n_add; i++) {
        hl_item_update u = {.id = id, .id_len = (uint32_t)snprintf(id, sizeof id, "new-%d", i),
                            .available = 1, .expires_at_ms = HL_CATALOGUE_NO_EXPIRY,
                            .e_in = e + (size_t)i * DIM, .e_out = e + (size_t)i * DIM};
        if (hl_catalogue_apply(c, &u, err, sizeof err) != 0) {
            fprintf(stderr, "bench_catalogue: %s\n", err);
            exit(1);
        }
    }
    size_t bytes = 2 * (size_t)n_add * DIM * sizeof(float);
    /* The copy reads as many distinct bytes as the view does (its e_in and
     * e_out come from two arrays of the catalogue): copying e twice read
     * its second half-size pass largely from the L3 the first had filled,
     * so the ceiling was faster than any view could be. */
    char *src = malloc(bytes), *dst = malloc(bytes);
    if (src == NULL || dst == NULL) {
        fprintf(stderr, "bench_catalogue: out of memory (%zu bytes)\n", 2 * bytes);
        exit(1);
    }
    memcpy(src, e, bytes / 2);
    memcpy(src + bytes / 2, e, bytes / 2);
    memset(dst, 1, bytes);                  /* mapped, as a reused view's arrays are */
    hl_catview *w[2] = {NULL, NULL};        /* the reader alternates between two: */
    double t[3][REPS];                      /* the spare is the view before the last */
    view_ms(c, &w[0]);                      /* warm: the first reuse maps its arrays */
    view_ms(c, &w[1]);
    for (int rep = 0; rep < REPS; rep++) {
        t[0][rep] = view_ms(c, NULL);
        t[1][rep] = view_ms(c, &w[rep % 2]);
        double t0 = now_s();
        memcpy(dst, src, bytes);
        t[2][rep] = (now_s() - t0) * 1e3;
    }
    for (int v = 0; v < 3; v++)
        qsort(t[v], REPS, sizeof(double), cmp_double);
    const char *name[2] = {"fresh", "reuse"};
    for (int v = 0; v < 2; v++)
        printf("{\"bench\":\"catalogue_view\",\"variant\":\"%s\",\"added\":%d,\"dim\":%d,"
               "\"value\":%.3f,\"unit\":\"ms\",\"ceiling\":%.3f,\"ratio\":%.3f,"
               "\"clock\":\"thread_cpu\"}\n", name[v], n_add, DIM, t[v][REPS / 2], t[2][REPS / 2],
               t[2][REPS / 2] / t[v][REPS / 2]);
    hl_catview_destroy(w[0]);
    hl_catview_destroy(w[1]);
    hl_catalogue_destroy(c);
    hl_model_close(m);
    free(src);
    free(dst);
    free(e);
}

static const char usage[] =
    "usage: bench_catalogue [ITEMS]\n"
    "  ITEMS  catalogue size (default 100000)\n"
    "Prints JSON lines: refreshes/s with 1% hidden and 1% added items, and without;\n"
    "then ms per view of the catalogue with that many added items (100k at most),\n"
    "fresh and rebuilt in place, against a copy of its vector bytes.\n";

int main(int argc, char **argv)
{
    bench_args("bench_catalogue", argc, argv, usage, bench_bad_counts(argc, argv, 1, 1));
    int32_t n_items = argc > 1 ? atoi(argv[1]) : 100000;
    int32_t n_hid = n_items / 100, n_side = n_items / 100;
    char err[256];
    bench_model bm;
    openblas_set_num_threads(1);
    model_init(&bm, n_items);
    hl_rank_opts o = {.k = K, .exclude_seen = 1, .max_batch = N};
    hl_ranker *r = hl_ranker_create_parts(&bm.p, &o, err, sizeof err);
    bench_users *bu = malloc(sizeof *bu);
    int32_t *hidden = malloc((size_t)n_hid * sizeof *hidden);
    if (r == NULL || bu == NULL || hidden == NULL) {
        fprintf(stderr, "bench_catalogue: %s\n", r ? "out of memory" : err);
        return 1;
    }
    users_init(bu, n_items);
    for (int32_t i = 0; i < n_hid; i++)     /* 1% of the rows, spread over the catalogue */
        hidden[i] = (int32_t)((frand() + 1.0f) * 0.5f * (float)(n_items - 1));
    qsort(hidden, (size_t)n_hid, sizeof *hidden, cmp_i32);
    hl_rank_catalogue none = {0}, hid = {.hidden = hidden, .n_hidden = n_hid};
    hl_rank_catalogue side = {.e_in = rand_array((size_t)n_side * DIM, 1.0f),
                              .e_out = rand_array((size_t)n_side * DIM, 1.0f),
                              .bias = rand_array((size_t)n_side, 0.1f), .n_side = n_side};
    const hl_rank_catalogue *var[3] = {&none, &hid, &side};
    const char *name[3] = {"none", "hidden_1pct", "added_1pct"};
    double rt[3][REPS];
    for (int v = 0; v < 3; v++)
        rate(r, bu, var[v]);                  /* warm */
    for (int rep = 0; rep < REPS; rep++)
        for (int v = 0; v < 3; v++)
            rt[v][rep] = rate(r, bu, var[v]);
    for (int v = 0; v < 3; v++)
        qsort(rt[v], REPS, sizeof(double), cmp_double);
    double spread = (rt[0][REPS - 1] - rt[0][0]) / rt[0][REPS / 2];
    for (int v = 1; v < 3; v++)
        printf("{\"bench\":\"catalogue_refresh\",\"variant\":\"%s\",\"items\":%d,\"dim\":%d,"
               "\"batch\":%d,\"k\":%d,\"value\":%.4g,\"unit\":\"refreshes/s\",\"ceiling\":%.4g,"
               "\"ratio\":%.3f,\"ceiling_spread\":%.3f,\"clock\":\"thread_cpu\"}\n",
               name[v], n_items, DIM, N, K, rt[v][REPS / 2], rt[0][REPS / 2],
               rt[v][REPS / 2] / rt[0][REPS / 2], spread);
    hl_ranker_destroy(r);
    bench_views(&bm, n_items);
    model_free(&bm);
    return 0;
}
