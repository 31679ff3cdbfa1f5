/* ivf.h - the optional approximate index over e_out (recs.index=ivf): an
 * inverted file that lets a refresh score a few clusters of items instead
 * of the whole catalogue, for catalogues of millions of items.
 *
 * Scores are inner products with the bias, q . e_j + b_j. The index works
 * on the augmented rows e'_j = [e_j, b_j] (a query is q' = [q, 1], so
 * q' . e'_j is the score): spherical k-means over a sample of e' places
 * nlist unit centroids (a row belongs to the centroid of largest e' . c),
 * every item goes to its best centroid's list, each centroid is then
 * scaled by its list's largest norm (its reach), and a search scores the
 * nprobe lists whose scaled centroids have the largest q' . c. It is
 * approximate: an item of the exact top k in a list that was not probed
 * is missed. rank.c rescores what the index returns with its exact
 * det_score, so every returned score is exact; only the set can differ
 * from the exact list (recall, measured by hl_ivf_recall and by the
 * ranker's shadow check).
 *
 * The lists keep their own copy of e_out in list order (n_items x dim
 * floats, in blocks of 16 items stored by column, plus bias and row), so
 * a probed list is one contiguous read.
 * Building needs no clock or threads; the same inputs and seed build the
 * same index. */
#ifndef HL_IVF_H
#define HL_IVF_H

#include "hl.h"

#include <signal.h>

#define HL_IVF_MAX_NLIST 1048576

typedef struct hl_ivf      hl_ivf;        /* opaque: centroids and lists */
typedef struct hl_ivf_scan hl_ivf_scan;   /* opaque: one searcher's scratch */

typedef struct hl_ivf_opts {
    int      nlist;        /* lists; 0 = hl_ivf_default_nlist(n_items) */
    int      train_per_list; /* k-means sample: rows per list; 0 = 32 */
    int      iters;        /* k-means iterations; 0 = 8 */
    uint64_t seed;         /* sample and initial centroids */
    /* Set (by a signal handler) while the build runs: it gives up between
     * blocks of rows and returns NULL ("index: build stopped"), so a stop
     * is not held for the build's seconds (about 23 s at 1M items).
     * NULL: it always finishes. */
    const volatile sig_atomic_t *stop;
} hl_ivf_opts;

/* 4 sqrt(n_items), at least 1 and at most n_items. */
int hl_ivf_default_nlist(int32_t n_items);
/* The lists a search probes by default: nlist / 16, at least 1. Each
 * index has its own (a model swapped in with more items gets more). */
int hl_ivf_default_nprobe(const hl_ivf *ix);

/* Builds the index of e_out (n_items, dim) and bias (n_items); both are
 * copied. NULL and a reason in errbuf on failure (bad shape, nlist out of
 * 1..n_items, non-finite values, no memory). Single-threaded apart from
 * OpenBLAS's own threads. */
hl_ivf *hl_ivf_create(const float *e_out, const float *bias, int32_t n_items,
                      int dim, const hl_ivf_opts *o, char *errbuf, size_t errlen);
void    hl_ivf_destroy(hl_ivf *ix);                     /* NULL is a no-op */
int     hl_ivf_nlist(const hl_ivf *ix);
void    hl_ivf_shape(const hl_ivf *ix, int32_t *n_items, int *dim);
size_t  hl_ivf_bytes(const hl_ivf *ix);                 /* memory held */

/* Scratch for searches of up to max_users users (batch), nprobe up to
 * max_nprobe and max_cand candidates each. One thread at a time. */
hl_ivf_scan *hl_ivf_scan_create(const hl_ivf *ix, int max_users, int max_nprobe,
                                int max_cand, char *errbuf, size_t errlen);
void         hl_ivf_scan_destroy(hl_ivf_scan *s);       /* NULL is a no-op */

/* Item scores the searches through s have computed since it was created,
 * per query: a list of len items scored for m users of a batch counts
 * m x len, so scored / (queries x n_items) is the share of the catalogue
 * a query really scored (probing favours some lists over others, so it is
 * not nprobe x the mean list length). */
uint64_t     hl_ivf_scan_scored(const hl_ivf_scan *s);

/* The n_cand best items of the nprobe probed lists by q . e + b, leaving
 * out every row j with excl[j] != 0 (excl: n_items bytes, or NULL); when
 * the probed lists hold fewer than n_cand such items, further lists are
 * probed in order of their centroid score until n_cand are found or no
 * list is left, so a list is short only when the catalogue is. Writes the
 * items' rows, in no particular order, into cand; returns their count, or HL_EINVAL
 * (nprobe < 1, n_cand out of 1..max_cand). scanned (may be NULL) gets the
 * number of items whose score was computed. No allocation. */
int hl_ivf_search(const hl_ivf *ix, hl_ivf_scan *s, const float *q, int nprobe,
                  int n_cand, const uint8_t *excl, int32_t *cand, size_t *scanned);

/* The same for users[0..n) with queries Q (n, dim): user u gets the
 * cap[u] best items of its nprobe lists (cap[u] 0: the user is skipped)
 * that are not in skip (n_items bytes, rows with skip[j] != 0 are left
 * out for every user, e.g. hidden items; NULL: none), their rows in no
 * particular order at cand + u x stride, n_found[u] of them (fewer than
 * cap[u] only when its probed lists hold fewer such items). Each list
 * probed by any user is read once and scored for all its users while it
 * is in cache, so a batch costs much less than its users alone; per-user
 * exclusions are the caller's to filter (ask for k + the number
 * excluded). HL_EINVAL on bad sizes. No allocation. */
int hl_ivf_search_batch(const hl_ivf *ix, hl_ivf_scan *s, const float *Q, int n, int nprobe,
                        const int *cap, const uint8_t *skip, int32_t *cand, int stride,
                        int *n_found);

/* Recall@k of the index against an exact scan for queries Q (n_q, dim):
 * the share of each query's exact top k (no exclusions) that the index's
 * top k with nprobe holds, averaged. Costs n_q full scans: for the log at
 * load and for tests, not for the hot path. Returns the recall, or -1 on
 * bad arguments or no memory. */
double hl_ivf_recall(const hl_ivf *ix, const float *Q, int n_q, int k, int nprobe);

#endif
