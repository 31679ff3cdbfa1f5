/* bench_faiss.c - our inverted-file index (core/ivf.c, recs.index=ivf)
 * against FAISS's IndexIVFFlat from Debian's libfaiss-dev, on the same
 * data, the same machine and the same thread, so the question
 * ("FAISS, or your own if you show it is better") has figures.
 *
 * Data: bench_index's (bench_index_data.h): the random and the clustered
 * e_out with their biases, at the same item count and seed, and its 1,024
 * users, whose queries come from the users' heads through the encoder
 * (hl_encoder_forward over the whole sample: the ranker's encoder up to
 * rounding). Maximum inner product with the bias, as our index folds it
 * in: FAISS indexes the augmented rows [e_out_j, b_j] (dim 65) and is
 * asked with [q, 1]; ours takes e_out, bias and q as they are and does
 * the same inside.
 *
 * Both indexes have hl_ivf_default_nlist lists and cluster the same
 * number of rows (ours' default sample, 32 per list) for the same 8
 * iterations. Both partitions are for inner products: FAISS's usual setup
 * (IndexFlatIP quantizer, spherical k-means, probed by q' . c) and ours
 * (spherical k-means too, probed by q' . c with each centroid scaled by
 * its list's largest norm); they differ in that scaling, their seeds and
 * empty-cluster handling, and in the scan. Build time
 * is train + add (FAISS's also the augmented copy it needs).
 *
 * Measured per nprobe (8..256, then doubling while either index is below
 * recall 0.95, up to nlist / 2), interleaved pass by pass so load drift
 * hits both alike: lists/s at batch 1 (one search per user, B1_USERS
 * users) and at batch 256 (ours: hl_ivf_search_batch, each probed list
 * read once for its users; FAISS: one search call of 256 queries), and
 * recall@20: the share of each user's exact top 20 (no exclusions; a
 * blocked SGEMM over every item) that the index's 20 hold, over all 1,024
 * users at batch 256 and over the batch-1 users; and the share of the
 * catalogue each scores per query (batch 1: ours' count, FAISS's
 * indexIVF_stats), since equal nprobe is not equal work: the lists differ
 * in size and each index probes its own kind. Only the search is
 * timed: the ranker's exclusions and exact rescoring (rank_index.c) are
 * the same work whichever index proposes the candidates. One thread
 * (OpenBLAS and OpenMP set to 1), this thread's CPU time, medians of
 * REPS passes; the load average is printed at the start and the end.
 *
 * Output: JSON lines ("index_compare_build", "index_compare" per impl and
 * nprobe, "index_compare_verdict" per model), then a summary line: at
 * recall@20 >= 0.95, the faster index at batch 1 and at batch 256.
 * Usage: bench_faiss [items [random|clustered]] (default 1000000, both
 * models: 14 minutes wall on the shared 2-core VM at load average 11;
 * `bench_faiss 200000` for a quick run, `bench_faiss 1000000 clustered`
 * for one model, on the same data as in a full run). The Makefile builds it only
 * where libfaiss.a and a C++ compiler exist (faiss_shim.cpp).
 *
 * HL_BENCH_HNSW=M[,M...] measures a graph index instead of the two inverted
 * files: FAISS's IndexHNSWFlat, inner product, over the same rows and
 * queries (efConstruction HL_BENCH_HNSW_EFC, default 100), its build time
 * and bytes, then per efSearch (64..2048) the same recall@20 and lists/s,
 * each beside the exact path's rates (the ranker's, as bench_index times
 * it). E.g. `HL_BENCH_HNSW=32,16 bench_faiss 200000 random`. */
#define BENCH_NAME "bench_faiss"
#include "bench_index_data.h"
#include "bench_args.h"
#include "encoder.h"
#include "faiss_shim.h"
#include "ivf.h"

#include <math.h>
#include <sys/resource.h>

#define DA         (DIM + 1)    /* augmented rows [e, b] and queries [q, 1] */
#define BATCH      256
#define B1_USERS   128          /* users timed at batch 1 */
#define TRAIN_PER  32           /* ours' default k-means sample per list */
#define ITERS      8            /* ours' default k-means iterations */
#define MIN_RECALL 0.95
#define EXACT_BLOCK 2048        /* items per exact-scan SGEMM */

enum { OURS = 0, FAISS = 1, N_IMPL = 2 };
static const char *const impl_name[N_IMPL] = {"ours", "faiss"};

/* One model's indexes, queries and exact lists. */
typedef struct cmp {
    const char  *model;
    int32_t      n_items;
    int          nlist;
    float       *Q;              /* (SAMPLE, DIM) queries */
    float       *Qa;             /* (SAMPLE, DA) the same, [q, 1] */
    int32_t     *exact;          /* (SAMPLE, K) exact top K, any order */
    hl_ivf      *ix;
    hl_ivf_scan *scan;
    hlf_ivf     *fx;
    float       *fD;             /* (BATCH, K) FAISS's scores */
    int64_t     *fI;             /* (BATCH, K) FAISS's rows */
} cmp;

/* One impl's figures at one nprobe. */
typedef struct point {
    int    nprobe;
    double rate1, rate256, recall, recall1;
    double scanned;              /* rows scored per query (batch 1) */
} point;

static size_t ours_scanned;      /* rows ours' single searches scored */

static void die(const char *what)
{
    fprintf(stderr, "bench_faiss: %s\n", what);
    exit(1);
}

static double loadavg1(void)
{
    double l[1] = {-1.0};
    return getloadavg(l, 1) == 1 ? l[0] : -1.0;
}

/* ---- queries and the exact lists ---- */

/* Q (SAMPLE, DIM): the users' heads through the encoder, in one forward
 * pass; Qa the same with a 1 appended (it meets the bias column). */
static void encode_users(cmp *c, const bench_model *bm, const bench_users *bu)
{
    hl_encoder_net net;
    hl_encoder_net_from_parts(&net, &bm->p);
    float *X = xmalloc((size_t)SAMPLE * hl_encoder_in_dim(&net) * sizeof(float));
    float *act = xmalloc(hl_encoder_act_floats(&net, SAMPLE) * sizeof(float));
    hl_encoder_features_rows(&net, bu->v, SAMPLE, X);
    const float *q = hl_encoder_forward(&net, X, SAMPLE, act);
    c->Q = xmalloc((size_t)SAMPLE * DIM * sizeof(float));
    c->Qa = xmalloc((size_t)SAMPLE * DA * sizeof(float));
    memcpy(c->Q, q, (size_t)SAMPLE * DIM * sizeof(float));
    for (int u = 0; u < SAMPLE; u++) {
        memcpy(c->Qa + (size_t)u * DA, q + (size_t)u * DIM, DIM * sizeof(float));
        c->Qa[(size_t)u * DA + DIM] = 1.0f;
    }
    free(X);
    free(act);
}

/* A min-heap of the K best (score, row) of one user: h[0] is the worst. */
typedef struct top { float s[K]; int32_t j[K]; int n; } top;

static void top_push(top *t, float s, int32_t j)
{
    int i;
    if (t->n == K) {
        if (s <= t->s[0])
            return;
        i = 0;                                    /* replace the root, sift down */
        for (;;) {
            int c = 2 * i + 1;
            if (c >= K)
                break;
            if (c + 1 < K && t->s[c + 1] < t->s[c])
                c++;
            if (t->s[c] >= s)
                break;
            t->s[i] = t->s[c];
            t->j[i] = t->j[c];
            i = c;
        }
    } else {
        for (i = t->n++; i > 0 && t->s[(i - 1) / 2] > s; i = (i - 1) / 2) {
            t->s[i] = t->s[(i - 1) / 2];
            t->j[i] = t->j[(i - 1) / 2];
        }
    }
    t->s[i] = s;
    t->j[i] = j;
}

/* exact (SAMPLE, K): every user's top K over every item, S = Q E^T block
 * by block (S is (SAMPLE, EXACT_BLOCK)), plus the bias. */
static void exact_lists(cmp *c, const bench_model *bm)
{
    top *t = calloc(SAMPLE, sizeof *t);
    float *S = xmalloc((size_t)SAMPLE * EXACT_BLOCK * sizeof(float));
    if (t == NULL)
        die("out of memory");
    for (int32_t j0 = 0; j0 < c->n_items; j0 += EXACT_BLOCK) {
        int nb = c->n_items - j0 < EXACT_BLOCK ? (int)(c->n_items - j0) : EXACT_BLOCK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, SAMPLE, nb, DIM, 1.0f, c->Q, DIM,
                    bm->p.e_out + (size_t)j0 * DIM, DIM, 0.0f, S, nb);
        for (int u = 0; u < SAMPLE; u++)
            for (int i = 0; i < nb; i++)
                top_push(&t[u], S[(size_t)u * nb + i] + bm->p.bias[j0 + i], j0 + i);
    }
    c->exact = xmalloc((size_t)SAMPLE * K * sizeof(int32_t));
    for (int u = 0; u < SAMPLE; u++)
        for (int i = 0; i < K; i++)
            c->exact[(size_t)u * K + i] = i < t[u].n ? t[u].j[i] : -1;
    free(t);
    free(S);
}

/* Share of the exact lists of users [0, n) found in got (n, K). */
static double recall_of(const cmp *c, const int32_t *got, int n)
{
    long hit = 0, total = 0;
    for (int u = 0; u < n; u++)
        for (int i = 0; i < K; i++) {
            int32_t x = c->exact[(size_t)u * K + i];
            if (x < 0)
                continue;
            total++;
            for (int j = 0; j < K; j++)
                if (got[(size_t)u * K + j] == x) {
                    hit++;
                    break;
                }
        }
    return total > 0 ? (double)hit / total : 1.0;
}

/* ---- the two indexes ---- */

static void build_ours(cmp *c, const bench_model *bm)
{
    char err[256];
    hl_ivf_opts o = {.train_per_list = TRAIN_PER, .iters = ITERS};
    c->ix = hl_ivf_create(bm->p.e_out, bm->p.bias, c->n_items, DIM, &o, err, sizeof err);
    if (c->ix == NULL)
        die(err);
    c->nlist = hl_ivf_nlist(c->ix);
    c->scan = hl_ivf_scan_create(c->ix, BATCH, c->nlist, K, err, sizeof err);
    if (c->scan == NULL)
        die(err);
}

/* Rows of X (n, DA) picked at random without repetition, ns of them (a
 * partial Fisher-Yates; its own stream, so the shared one is untouched). */
static float *faiss_sample(const float *Xa, int32_t n, int64_t ns)
{
    uint64_t s = 0x9E3779B97F4A7C15ull;
    int32_t *perm = xmalloc((size_t)n * sizeof(int32_t));
    float *T = xmalloc((size_t)ns * DA * sizeof(float));
    for (int32_t j = 0; j < n; j++)
        perm[j] = j;
    for (int64_t i = 0; i < ns; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        int64_t r = i + (int64_t)(s % (uint64_t)(n - i));
        int32_t t = perm[i];
        perm[i] = perm[r];
        perm[r] = t;
        memcpy(T + (size_t)i * DA, Xa + (size_t)perm[i] * DA, DA * sizeof(float));
    }
    free(perm);
    return T;
}

/* FAISS over [e_out, bias]: the augmented copy, the sample, train, add. */
static void build_faiss(cmp *c, const bench_model *bm)
{
    char err[256];
    int32_t n = c->n_items;
    int64_t ns = (int64_t)TRAIN_PER * c->nlist < n ? (int64_t)TRAIN_PER * c->nlist : n;
    float *Xa = xmalloc((size_t)n * DA * sizeof(float));
    for (int32_t j = 0; j < n; j++) {
        memcpy(Xa + (size_t)j * DA, bm->p.e_out + (size_t)j * DIM, DIM * sizeof(float));
        Xa[(size_t)j * DA + DIM] = bm->p.bias[j];
    }
    float *T = faiss_sample(Xa, n, ns);
    if ((c->fx = hlf_ivf_create(DA, c->nlist, ITERS, err, sizeof err)) == NULL ||
        hlf_ivf_train(c->fx, T, ns, err, sizeof err) != 0 ||
        hlf_ivf_add(c->fx, Xa, n, err, sizeof err) != 0)
        die(err);
    free(T);
    free(Xa);
    c->fD = xmalloc((size_t)BATCH * K * sizeof(float));
    c->fI = xmalloc((size_t)BATCH * K * sizeof(int64_t));
}

static void print_build(const cmp *c, int impl, double s, size_t bytes)
{
    int64_t ns = (int64_t)TRAIN_PER * c->nlist < c->n_items ? (int64_t)TRAIN_PER * c->nlist
                                                             : c->n_items;
    printf("{\"bench\":\"index_compare_build\",\"impl\":\"%s\",\"model\":\"%s\",\"items\":%d,"
           "\"dim\":%d,\"nlist\":%d,\"train_rows\":%lld,\"iters\":%d,\"value\":%.2f,"
           "\"unit\":\"s\",\"index_bytes\":%zu,\"clock\":\"thread_cpu\"}\n", impl_name[impl],
           c->model, c->n_items, DIM, c->nlist, (long long)ns, ITERS, s, bytes);
    fflush(stdout);
}

/* Users [u0, u0 + n) searched by one call of impl (n 1: the single-user
 * search), their K rows each into out + u0 x K (short lists padded -1). */
static void search(cmp *c, int impl, int u0, int n, int nprobe, int32_t *out)
{
    static int cap[BATCH], found[BATCH];
    char err[256];
    int32_t *o = out + (size_t)u0 * K;
    if (impl == OURS && n == 1) {
        size_t sc = 0;
        int m = hl_ivf_search(c->ix, c->scan, c->Q + (size_t)u0 * DIM, nprobe, K, NULL, o, &sc);
        ours_scanned += sc;
        for (int i = m < 0 ? 0 : m; i < K; i++)
            o[i] = -1;
    } else if (impl == OURS) {
        for (int u = 0; u < n; u++)
            cap[u] = K;
        if (hl_ivf_search_batch(c->ix, c->scan, c->Q + (size_t)u0 * DIM, n, nprobe, cap, NULL,
                                o, K, found) != 0)
            die("hl_ivf_search_batch refused its arguments");
        for (int u = 0; u < n; u++)
            for (int i = found[u]; i < K; i++)
                o[(size_t)u * K + i] = -1;
    } else {
        if (hlf_ivf_search(c->fx, c->Qa + (size_t)u0 * DA, n, K, nprobe, c->fD, c->fI, err,
                           sizeof err) != 0)
            die(err);
        for (int i = 0; i < n * K; i++)
            o[i] = (int32_t)c->fI[i];
    }
}

/* Seconds of one pass over users [0, n_users) in batches of batch. */
static double pass(cmp *c, int impl, int n_users, int batch, int nprobe, int32_t *out)
{
    double t0 = now_s();
    for (int u = 0; u < n_users; u += batch)
        search(c, impl, u, n_users - u < batch ? n_users - u : batch, nprobe, out);
    return now_s() - t0;
}

/* ---- the sweep ---- */

/* Both impls at one nprobe, their passes interleaved. */
static void measure(cmp *c, int nprobe, point pt[N_IMPL])
{
    static int32_t got1[N_IMPL][B1_USERS * K], got[N_IMPL][SAMPLE * K];
    double t1[N_IMPL][REPS], t256[N_IMPL][REPS], scanned[N_IMPL];
    for (int rep = 0; rep < REPS; rep++)
        for (int impl = 0; impl < N_IMPL; impl++) {
            ours_scanned = 0;
            hlf_ivf_scanned_take();
            t1[impl][rep] = pass(c, impl, B1_USERS, 1, nprobe, got1[impl]);
            scanned[impl] = (double)(impl == OURS ? ours_scanned : hlf_ivf_scanned_take()) /
                            B1_USERS;
            t256[impl][rep] = pass(c, impl, SAMPLE, BATCH, nprobe, got[impl]);
        }
    for (int impl = 0; impl < N_IMPL; impl++) {
        qsort(t1[impl], REPS, sizeof(double), cmp_double);
        qsort(t256[impl], REPS, sizeof(double), cmp_double);
        pt[impl] = (point){.nprobe = nprobe, .rate1 = B1_USERS / t1[impl][REPS / 2],
                           .rate256 = SAMPLE / t256[impl][REPS / 2],
                           .recall = recall_of(c, got[impl], SAMPLE),
                           .recall1 = recall_of(c, got1[impl], B1_USERS),
                           .scanned = scanned[impl]};
    }
}

static void print_point(const cmp *c, int impl, const point *p)
{
    printf("{\"bench\":\"index_compare\",\"impl\":\"%s\",\"model\":\"%s\",\"items\":%d,"
           "\"dim\":%d,\"k\":%d,\"nlist\":%d,\"nprobe\":%d,\"scanned_share\":%.4f,"
           "\"batch_1\":%.4g,\"batch_256\":%.4g,\"unit\":\"lists/s\",\"recall_at_20\":%.4f,"
           "\"recall_at_20_b1\":%.4f,\"clock\":\"thread_cpu\"}\n", impl_name[impl], c->model,
           c->n_items, DIM, K, c->nlist, p->nprobe, p->scanned / c->n_items, p->rate1,
           p->rate256, p->recall, p->recall1);
    fflush(stdout);
}

/* The fastest point of impl at batch 1 (b256 0) or 256 with recall >= MIN_RECALL
 * (both its recalls: batch 1's users are among batch 256's); NULL if none. */
static const point *best_of(const point (*pts)[N_IMPL], int n, int impl, int b256)
{
    const point *best = NULL;
    for (int i = 0; i < n; i++) {
        const point *p = &pts[i][impl];
        double r = b256 ? p->rate256 : p->rate1;
        if (p->recall >= MIN_RECALL && (b256 || p->recall1 >= MIN_RECALL) &&
            (best == NULL || r > (b256 ? best->rate256 : best->rate1)))
            best = p;
    }
    return best;
}

#define MAX_POINTS 16

/* nprobe 8..256, then doubling while either impl is below MIN_RECALL at
 * batch 256, up to nlist / 2; returns the points measured. */
static int sweep(cmp *c, point (*pts)[N_IMPL])
{
    int n = 0;
    for (int nprobe = 8; nprobe <= c->nlist / 2 && n < MAX_POINTS; nprobe *= 2) {
        if (nprobe > 256 && pts[n - 1][OURS].recall >= MIN_RECALL &&
            pts[n - 1][FAISS].recall >= MIN_RECALL)
            break;
        measure(c, nprobe, pts[n]);
        for (int impl = 0; impl < N_IMPL; impl++)
            print_point(c, impl, &pts[n][impl]);
        n++;
    }
    return n;
}

/* One batch size's verdict as a JSON object: each impl's fastest point at
 * recall >= MIN_RECALL, and which is faster by how much. Returns the
 * winner (OURS, FAISS) or -1 when neither reached MIN_RECALL. */
static int verdict_part(const point (*pts)[N_IMPL], int n, int b256, char *buf, size_t len)
{
    const point *b[N_IMPL];
    size_t o = 0;
    o += (size_t)snprintf(buf + o, len - o, "{");
    for (int impl = 0; impl < N_IMPL; impl++) {
        b[impl] = best_of(pts, n, impl, b256);
        if (b[impl] == NULL)
            o += (size_t)snprintf(buf + o, len - o, "\"%s\":null,", impl_name[impl]);
        else
            o += (size_t)snprintf(buf + o, len - o,
                                  "\"%s\":{\"nprobe\":%d,\"lists_s\":%.4g,\"recall_at_20\":%.4f},",
                                  impl_name[impl], b[impl]->nprobe,
                                  b256 ? b[impl]->rate256 : b[impl]->rate1, b[impl]->recall);
    }
    int win = -1;
    double ratio = 0.0;
    if (b[OURS] != NULL || b[FAISS] != NULL) {
        double r0 = b[OURS] ? (b256 ? b[OURS]->rate256 : b[OURS]->rate1) : 0.0;
        double r1 = b[FAISS] ? (b256 ? b[FAISS]->rate256 : b[FAISS]->rate1) : 0.0;
        win = r0 >= r1 ? OURS : FAISS;
        ratio = r0 > 0 && r1 > 0 ? (win == OURS ? r0 / r1 : r1 / r0) : INFINITY;
    }
    if (win < 0)
        snprintf(buf + o, len - o, "\"faster\":null}");
    else if (isinf(ratio))
        snprintf(buf + o, len - o, "\"faster\":\"%s\",\"by\":\"only one reached %.2f\"}",
                 impl_name[win], MIN_RECALL);
    else
        snprintf(buf + o, len - o, "\"faster\":\"%s\",\"by\":%.2f}", impl_name[win], ratio);
    return win;
}

/* Prints the model's verdict line; win[0], win[1]: winners at batch 1, 256. */
static void verdict(const cmp *c, const point (*pts)[N_IMPL], int n, int win[2])
{
    char b1[512], b256[512];
    win[0] = verdict_part(pts, n, 0, b1, sizeof b1);
    win[1] = verdict_part(pts, n, 1, b256, sizeof b256);
    printf("{\"bench\":\"index_compare_verdict\",\"model\":\"%s\",\"items\":%d,"
           "\"min_recall\":%.2f,\"batch_1\":%s,\"batch_256\":%s}\n", c->model, c->n_items,
           MIN_RECALL, b1, b256);
    fflush(stdout);
}

static void cmp_free(cmp *c)
{
    hl_ivf_scan_destroy(c->scan);
    hl_ivf_destroy(c->ix);
    hlf_ivf_destroy(c->fx);
    free(c->Q);
    free(c->Qa);
    free(c->exact);
    free(c->fD);
    free(c->fI);
}

/* One model: data, both builds (timed), the exact lists, the sweep, the
 * verdict into win. */
static void bench_model_kind(int32_t n_items, int clustered, bench_users *bu, int win[2])
{
    static point pts[MAX_POINTS][N_IMPL];
    bench_model bm;
    cmp c = {.model = clustered ? "clustered" : "random", .n_items = n_items};
    index_model_init(&bm, n_items, clustered);
    users_init(bu, n_items);
    double t0 = now_s();
    build_ours(&c, &bm);
    print_build(&c, OURS, now_s() - t0, hl_ivf_bytes(c.ix));
    t0 = now_s();
    build_faiss(&c, &bm);
    print_build(&c, FAISS, now_s() - t0, hlf_ivf_bytes(c.fx));
    encode_users(&c, &bm, bu);
    exact_lists(&c, &bm);
    int n = sweep(&c, pts);
    verdict(&c, pts, n, win);
    cmp_free(&c);
    index_model_free(&bm);
}

/* ---- a graph index (HL_BENCH_HNSW) ---- */

/* HL_BENCH_HNSW=M[,M...] ("1": 32) replaces the two inverted files with
 * FAISS's IndexHNSWFlat (inner product, the same [e, b] rows and [q, 1]
 * queries), efConstruction HL_BENCH_HNSW_EFC (default 100), swept over
 * efSearch; each point is printed beside the exact path's rates (the
 * ranker, HL_SCORING_EXACT, timed as bench_index times it). Only the
 * search is timed, as for the inverted files. */
static const int ef_searches[] = {64, 128, 256, 512, 1024, 2048};
#define N_EF ((int)(sizeof ef_searches / sizeof ef_searches[0]))

typedef struct exact_rate { double rate1, rate256, sgemm; } exact_rate;

/* Lists/s of the exact ranker over users [0, n_users) in batches of batch
 * (median of REPS passes). */
static double ranker_rate(hl_ranker *r, const bench_users *bu, int n_users, int batch)
{
    static hl_rec out[SAMPLE * K];
    static int n_out[SAMPLE];
    return index_rate(r, bu, n_users, batch, out, n_out);
}

/* The exact path's rates (bench_index's: batch 256 over all users, batch
 * 1 over 32, exclusions on) and the bench's own SGEMM scan of all users. */
static exact_rate exact_rates(cmp *c, const bench_model *bm, const bench_users *bu)
{
    char err[256];
    exact_rate e;
    hl_rank_opts o = {.k = K, .exclude_seen = 1, .max_batch = BATCH,
                      .scoring = HL_SCORING_EXACT};
    hl_ranker *r = hl_ranker_create_parts(&bm->p, &o, err, sizeof err);
    if (r == NULL)
        die(err);
    e.rate256 = ranker_rate(r, bu, SAMPLE, BATCH);
    e.rate1 = ranker_rate(r, bu, 32, 1);
    hl_ranker_destroy(r);
    double t0 = now_s();
    exact_lists(c, bm);
    e.sgemm = SAMPLE / (now_s() - t0);
    printf("{\"bench\":\"hnsw_exact\",\"model\":\"%s\",\"items\":%d,\"batch_1\":%.4g,"
           "\"batch_256\":%.4g,\"sgemm_scan_1024\":%.4g,\"unit\":\"lists/s\","
           "\"clock\":\"thread_cpu\"}\n", c->model, c->n_items, e.rate1, e.rate256, e.sgemm);
    fflush(stdout);
    return e;
}

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static long maxrss_kb(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : -1;
}

/* The graph over [e_out, bias], timed (the augmented copy included). */
static hlf_hnsw *build_hnsw(const cmp *c, const bench_model *bm, int m, int efc)
{
    char err[256];
    int32_t n = c->n_items;
    long rss0 = maxrss_kb();
    double t0 = now_s(), w0 = wall_s();
    float *Xa = xmalloc((size_t)n * DA * sizeof(float));
    for (int32_t j = 0; j < n; j++) {
        memcpy(Xa + (size_t)j * DA, bm->p.e_out + (size_t)j * DIM, DIM * sizeof(float));
        Xa[(size_t)j * DA + DIM] = bm->p.bias[j];
    }
    hlf_hnsw *h = hlf_hnsw_create(DA, m, efc, err, sizeof err);
    if (h == NULL || hlf_hnsw_add(h, Xa, n, err, sizeof err) != 0)
        die(err);
    free(Xa);
    printf("{\"bench\":\"hnsw_build\",\"model\":\"%s\",\"items\":%d,\"dim\":%d,\"M\":%d,"
           "\"ef_construction\":%d,\"value\":%.2f,\"unit\":\"s\",\"wall_s\":%.2f,"
           "\"index_bytes\":%zu,\"maxrss_kb_before\":%ld,\"maxrss_kb_after\":%ld,"
           "\"loadavg\":%.2f,\"clock\":\"thread_cpu\"}\n", c->model, n, DA, m, efc,
           now_s() - t0, wall_s() - w0, hlf_hnsw_bytes(h), rss0, maxrss_kb(), loadavg1());
    fflush(stdout);
    return h;
}

/* Seconds of one pass of the graph over users [0, n_users) in batches of
 * batch, each efSearch ef; rows into out (n_users, K). */
static double hnsw_pass(cmp *c, hlf_hnsw *h, int n_users, int batch, int ef, int32_t *out)
{
    char err[256];
    double t0 = now_s();
    for (int u = 0; u < n_users; u += batch) {
        int n = n_users - u < batch ? n_users - u : batch;
        if (hlf_hnsw_search(h, c->Qa + (size_t)u * DA, n, K, ef, c->fD, c->fI, err,
                            sizeof err) != 0)
            die(err);
        for (int i = 0; i < n * K; i++)
            out[(size_t)u * K + i] = (int32_t)c->fI[i];
    }
    return now_s() - t0;
}

/* One efSearch: REPS passes at batch 1 (B1_USERS) and 256 (all users). */
static point hnsw_measure(cmp *c, hlf_hnsw *h, int ef)
{
    static int32_t got1[B1_USERS * K], got[SAMPLE * K];
    double t1[REPS], t256[REPS], scanned = 0.0;
    for (int rep = 0; rep < REPS; rep++) {
        hlf_hnsw_scanned_take();
        t1[rep] = hnsw_pass(c, h, B1_USERS, 1, ef, got1);
        scanned = (double)hlf_hnsw_scanned_take() / B1_USERS;
        t256[rep] = hnsw_pass(c, h, SAMPLE, BATCH, ef, got);
    }
    qsort(t1, REPS, sizeof(double), cmp_double);
    qsort(t256, REPS, sizeof(double), cmp_double);
    return (point){.nprobe = ef, .rate1 = B1_USERS / t1[REPS / 2],
                   .rate256 = SAMPLE / t256[REPS / 2], .recall = recall_of(c, got, SAMPLE),
                   .recall1 = recall_of(c, got1, B1_USERS), .scanned = scanned};
}

static void print_hnsw_point(const cmp *c, int m, int efc, const point *p, const exact_rate *e)
{
    printf("{\"bench\":\"hnsw_compare\",\"model\":\"%s\",\"items\":%d,\"M\":%d,"
           "\"ef_construction\":%d,\"ef_search\":%d,\"scanned_share\":%.4f,"
           "\"recall_at_20\":%.4f,\"recall_at_20_b1\":%.4f,\"batch_1\":%.4g,"
           "\"batch_256\":%.4g,\"x_exact_b1\":%.2f,\"x_exact_b256\":%.2f,\"unit\":\"lists/s\","
           "\"loadavg\":%.2f,\"clock\":\"thread_cpu\"}\n", c->model, c->n_items, m, efc,
           p->nprobe, p->scanned / c->n_items, p->recall, p->recall1, p->rate1, p->rate256,
           p->rate1 / e->rate1, p->rate256 / e->rate256, loadavg1());
    fflush(stdout);
}

/* One model: data, the exact rates and lists, then per M a graph and its
 * efSearch sweep (stopping once recall@20 reaches 0.999). */
static void bench_hnsw_kind(int32_t n_items, int clustered, bench_users *bu, const char *ms,
                            int efc)
{
    bench_model bm;
    cmp c = {.model = clustered ? "clustered" : "random", .n_items = n_items};
    index_model_init(&bm, n_items, clustered);
    users_init(bu, n_items);
    encode_users(&c, &bm, bu);
    exact_rate e = exact_rates(&c, &bm, bu);
    c.fD = xmalloc((size_t)BATCH * K * sizeof(float));
    c.fI = xmalloc((size_t)BATCH * K * sizeof(int64_t));
    for (const char *s = ms; *s != '\0'; s += strcspn(s, ","), s += *s == ',') {
        int m = atoi(s) == 1 ? 32 : atoi(s);
        if (m < 2)
            die("HL_BENCH_HNSW: M values of at least 2, comma-separated (1: 32)");
        hlf_hnsw *h = build_hnsw(&c, &bm, m, efc);
        for (int i = 0; i < N_EF; i++) {
            point p = hnsw_measure(&c, h, ef_searches[i]);
            print_hnsw_point(&c, m, efc, &p, &e);
            if (p.recall >= 0.999)
                break;
        }
        hlf_hnsw_destroy(h);
    }
    cmp_free(&c);
    index_model_free(&bm);
}

/* The draws of one model and its users, nothing measured: keeps the
 * shared stream where a full run would have it. */
static void skip_model_kind(int32_t n_items, int clustered, bench_users *bu)
{
    bench_model bm;
    index_model_init(&bm, n_items, clustered);
    users_init(bu, n_items);
    index_model_free(&bm);
}

static const char *winner_name(int w)
{
    return w < 0 ? "null" : w == OURS ? "\"ours\"" : "\"faiss\"";
}

/* The first argument bench_faiss cannot take (NULL: none). */
static const char *bad_arg(int argc, char **argv)
{
    if (argc > 3)
        return argv[3];
    if (argc > 1 && !bench_arg_count(argv[1]))
        return argv[1];
    if (argc > 2 && strcmp(argv[2], "random") != 0 && strcmp(argv[2], "clustered") != 0)
        return argv[2];
    return NULL;
}

static const char usage[] =
    "usage: bench_faiss [ITEMS [random|clustered]]\n"
    "  ITEMS  catalogue size, at least 1000 (default 1000000: ~14 min)\n"
    "  random|clustered  one model only (default both)\n"
    "Prints JSON lines: core/ivf.c against FAISS's IndexIVFFlat.\n"
    "HL_BENCH_HNSW=M[,M...] (HL_BENCH_HNSW_EFC, default 100): FAISS's IndexHNSWFlat\n"
    "against the exact path instead.\n";

int main(int argc, char **argv)
{
    bench_args("bench_faiss", argc, argv, usage, bad_arg(argc, argv));
    int32_t n_items = argc > 1 ? (int32_t)atol(argv[1]) : 1000000;
    const char *only = argc > 2 ? argv[2] : NULL;
    int win[2][2] = {{-1, -1}, {-1, -1}};
    if (n_items < 1000)
        die("items: at least 1000");
    if (only != NULL && strcmp(only, "random") != 0 && strcmp(only, "clustered") != 0)
        die("model: random or clustered");
    const char *hnsw = getenv("HL_BENCH_HNSW");
    const char *efc_s = getenv("HL_BENCH_HNSW_EFC");
    int efc = efc_s != NULL ? atoi(efc_s) : 100;
    if (hnsw != NULL && (*hnsw == '\0' || efc < 1))
        die("HL_BENCH_HNSW: M[,M...]; HL_BENCH_HNSW_EFC: at least 1");
    bench_users *bu = xmalloc(sizeof *bu);
    openblas_set_num_threads(1);       /* one core: the worker's setting */
    hlf_set_threads(1);
    double load0 = loadavg1();
    printf("{\"bench\":\"index_compare_start\",\"items\":%d,\"faiss\":\"%s\","
           "\"threads\":1,\"loadavg\":%.2f}\n", n_items, hlf_version(), load0);
    fflush(stdout);
    /* Always both models' data, in order, so the clustered one is the
     * same whether or not the random one is measured. */
    for (int clustered = 0; clustered < 2; clustered++) {
        if (only != NULL && strcmp(only, clustered ? "clustered" : "random") != 0)
            skip_model_kind(n_items, clustered, bu);
        else if (hnsw != NULL)
            bench_hnsw_kind(n_items, clustered, bu, hnsw, efc);
        else
            bench_model_kind(n_items, clustered, bu, win[clustered]);
    }
    printf("{\"bench\":\"index_compare_summary\",\"items\":%d,\"min_recall\":%.2f,"
           "\"random\":{\"batch_1\":%s,\"batch_256\":%s},"
           "\"clustered\":{\"batch_1\":%s,\"batch_256\":%s},"
           "\"loadavg_start\":%.2f,\"loadavg_end\":%.2f,\"clock\":\"thread_cpu\"}\n",
           n_items, MIN_RECALL, winner_name(win[0][0]), winner_name(win[0][1]),
           winner_name(win[1][0]), winner_name(win[1][1]), load0, loadavg1());
    free(bu);
    return 0;
}
