/* faiss_shim.h - the few FAISS calls bench_faiss.c needs, as plain C.
 *
 * Debian's libfaiss-dev (1.7.3) ships the C API's headers but its only
 * library, libfaiss.a, holds none of the faiss_* C symbols, so C cannot
 * link them; faiss_shim.cpp wraps the C++ classes instead. It is built
 * only for the benchmark, never for the worker.
 *
 * The index is FAISS's IndexIVFFlat with METRIC_INNER_PRODUCT over an
 * IndexFlatIP coarse quantizer (FAISS's usual maximum-inner-product
 * setup: spherical k-means, lists probed by q . c). Every call returns 0,
 * or -1 with FAISS's message in errbuf (its C++ exceptions stop here). */
#ifndef HL_FAISS_SHIM_H
#define HL_FAISS_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hlf_ivf hlf_ivf;   /* opaque */

/* The library's version, e.g. "1.7.3" (for the benchmark's output). */
const char *hlf_version(void);

/* OpenMP threads FAISS may use (the benchmark sets 1). */
void hlf_set_threads(int n);

/* An empty index of rows of d floats with nlist lists; k-means runs
 * niter iterations over whatever train gets (no subsampling). NULL and a
 * reason on failure. */
hlf_ivf *hlf_ivf_create(int d, int nlist, int niter, char *errbuf, size_t errlen);
void     hlf_ivf_destroy(hlf_ivf *f);                  /* NULL is a no-op */

/* k-means over X (n, d), then X (n, d) added as rows 0..n-1. */
int hlf_ivf_train(hlf_ivf *f, const float *X, int64_t n, char *errbuf, size_t errlen);
int hlf_ivf_add(hlf_ivf *f, const float *X, int64_t n, char *errbuf, size_t errlen);

/* The k best rows by inner product for each of the n queries Q (n, d),
 * nprobe lists each: scores (n, k), best first, ids (n, k) their rows (-1 past
 * the end of a short list). One FAISS search call for all n. */
int hlf_ivf_search(hlf_ivf *f, const float *Q, int n, int k, int nprobe, float *scores,
                   int64_t *ids, char *errbuf, size_t errlen);

/* Rows scored (distances computed) by every search since the last call:
 * FAISS counts them in a global (indexIVF_stats), so one index at a time. */
size_t hlf_ivf_scanned_take(void);

/* Bytes of the lists (codes and ids) and centroids. */
size_t hlf_ivf_bytes(const hlf_ivf *f);

/* A graph index for comparison: FAISS's IndexHNSWFlat with
 * METRIC_INNER_PRODUCT, M links a node per layer (2 M on layer 0) and
 * efConstruction candidates per insertion; no training. */
typedef struct hlf_hnsw hlf_hnsw;   /* opaque */

hlf_hnsw *hlf_hnsw_create(int d, int m, int ef_construction, char *errbuf, size_t errlen);
void      hlf_hnsw_destroy(hlf_hnsw *f);                /* NULL is a no-op */

/* X (n, d) added as rows 0..n-1 (this builds the graph). */
int hlf_hnsw_add(hlf_hnsw *f, const float *X, int64_t n, char *errbuf, size_t errlen);

/* hlf_ivf_search's contract, efSearch candidates kept per query in place
 * of nprobe lists. One FAISS search call for all n. */
int hlf_hnsw_search(hlf_hnsw *f, const float *Q, int n, int k, int ef_search, float *scores,
                    int64_t *ids, char *errbuf, size_t errlen);

/* Rows scored by every HNSW search since the last call (FAISS's global
 * hnsw_stats). */
size_t hlf_hnsw_scanned_take(void);

/* Bytes of the rows, the links and their offsets and levels. */
size_t hlf_hnsw_bytes(const hlf_hnsw *f);

#ifdef __cplusplus
}
#endif

#endif
