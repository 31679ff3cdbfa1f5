// faiss_shim.cpp - faiss_shim.h over FAISS's C++ classes (Debian's
// libfaiss.a has no C API symbols). Exceptions become -1 and a message:
// they must not cross into C.
#include "faiss_shim.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVFFlat.h>
#include <omp.h>

#include <cstdio>
#include <exception>
#include <new>

struct hlf_ivf {
    faiss::IndexFlatIP   quantizer;
    faiss::IndexIVFFlat  index;

    hlf_ivf(int d, int nlist)
        : quantizer(d), index(&quantizer, d, (size_t)nlist, faiss::METRIC_INNER_PRODUCT)
    {
    }
};

static int fail(char *errbuf, size_t errlen, const char *what)
{
    if (errbuf != nullptr && errlen > 0)
        std::snprintf(errbuf, errlen, "faiss: %s", what);
    return -1;
}

extern "C" const char *hlf_version(void)
{
    static char v[32];
    std::snprintf(v, sizeof v, "%d.%d.%d", FAISS_VERSION_MAJOR, FAISS_VERSION_MINOR,
                  FAISS_VERSION_PATCH);
    return v;
}

extern "C" void hlf_set_threads(int n)
{
    omp_set_num_threads(n);
}

extern "C" hlf_ivf *hlf_ivf_create(int d, int nlist, int niter, char *errbuf, size_t errlen)
{
    try {
        hlf_ivf *f = new hlf_ivf(d, nlist);
        f->index.cp.niter = niter;
        // The caller passes exactly the sample to cluster (the one our
        // index clusters), so FAISS must neither subsample it nor warn
        // that it is below its 39 rows per list.
        f->index.cp.max_points_per_centroid = 1 << 30;
        f->index.cp.min_points_per_centroid = 1;
        return f;
    } catch (const std::exception &e) {
        fail(errbuf, errlen, e.what());
        return nullptr;
    }
}

extern "C" void hlf_ivf_destroy(hlf_ivf *f)
{
    delete f;
}

extern "C" int hlf_ivf_train(hlf_ivf *f, const float *X, int64_t n, char *errbuf, size_t errlen)
{
    try {
        f->index.train((faiss::Index::idx_t)n, X);
        return 0;
    } catch (const std::exception &e) {
        return fail(errbuf, errlen, e.what());
    }
}

extern "C" int hlf_ivf_add(hlf_ivf *f, const float *X, int64_t n, char *errbuf, size_t errlen)
{
    try {
        f->index.add((faiss::Index::idx_t)n, X);
        return 0;
    } catch (const std::exception &e) {
        return fail(errbuf, errlen, e.what());
    }
}

extern "C" int hlf_ivf_search(hlf_ivf *f, const float *Q, int n, int k, int nprobe, float *scores,
                              int64_t *ids, char *errbuf, size_t errlen)
{
    static_assert(sizeof(faiss::Index::idx_t) == sizeof(int64_t), "FAISS ids are 64-bit");
    try {
        f->index.nprobe = (size_t)nprobe;
        f->index.search((faiss::Index::idx_t)n, Q, (faiss::Index::idx_t)k, scores,
                        reinterpret_cast<faiss::Index::idx_t *>(ids));
        return 0;
    } catch (const std::exception &e) {
        return fail(errbuf, errlen, e.what());
    }
}

extern "C" size_t hlf_ivf_scanned_take(void)
{
    size_t n = faiss::indexIVF_stats.ndis;
    faiss::indexIVF_stats.reset();
    return n;
}

extern "C" size_t hlf_ivf_bytes(const hlf_ivf *f)
{
    const faiss::IndexIVFFlat &ix = f->index;
    return (size_t)ix.ntotal * (ix.code_size + sizeof(faiss::Index::idx_t)) +
           (size_t)ix.nlist * (size_t)ix.d * sizeof(float);
}

struct hlf_hnsw {
    faiss::IndexHNSWFlat index;

    hlf_hnsw(int d, int m) : index(d, m, faiss::METRIC_INNER_PRODUCT)
    {
    }
};

extern "C" hlf_hnsw *hlf_hnsw_create(int d, int m, int ef_construction, char *errbuf,
                                     size_t errlen)
{
    try {
        hlf_hnsw *f = new hlf_hnsw(d, m);
        f->index.hnsw.efConstruction = ef_construction;
        return f;
    } catch (const std::exception &e) {
        fail(errbuf, errlen, e.what());
        return nullptr;
    }
}

extern "C" void hlf_hnsw_destroy(hlf_hnsw *f)
{
    delete f;
}

extern "C" int hlf_hnsw_add(hlf_hnsw *f, const float *X, int64_t n, char *errbuf, size_t errlen)
{
    try {
        f->index.add((faiss::Index::idx_t)n, X);
        return 0;
    } catch (const std::exception &e) {
        return fail(errbuf, errlen, e.what());
    }
}

extern "C" int hlf_hnsw_search(hlf_hnsw *f, const float *Q, int n, int k, int ef_search,
                               float *scores, int64_t *ids, char *errbuf, size_t errlen)
{
    try {
        f->index.hnsw.efSearch = ef_search;
        f->index.search((faiss::Index::idx_t)n, Q, (faiss::Index::idx_t)k, scores,
                        reinterpret_cast<faiss::Index::idx_t *>(ids));
        return 0;
    } catch (const std::exception &e) {
        return fail(errbuf, errlen, e.what());
    }
}

extern "C" size_t hlf_hnsw_scanned_take(void)
{
    // 1.7.3 counts the search's distances in n3 (ndis stays 0 there);
    // later versions in ndis: the sum is right for both.
    size_t n = faiss::hnsw_stats.n3 + faiss::hnsw_stats.ndis;
    faiss::hnsw_stats.reset();
    return n;
}

extern "C" size_t hlf_hnsw_bytes(const hlf_hnsw *f)
{
    const faiss::HNSW &g = f->index.hnsw;
    return (size_t)f->index.ntotal * (size_t)f->index.d * sizeof(float) +
           g.neighbors.size() * sizeof(faiss::HNSW::storage_idx_t) +
           g.offsets.size() * sizeof(size_t) + g.levels.size() * sizeof(int);
}
