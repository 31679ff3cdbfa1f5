/* multipart.c - the worker-wide user -> partition map of multipart.h.
 *
 * A slot is one word so a reader never sees half of another thread's
 * write: tag in the high 32 bits, partition + 1 in the low 32 (0 = empty).
 * Two threads inserting into one slot at once may each keep the other's
 * word or lose it; either way the cost is a missed report, never a false
 * one, so relaxed ordering suffices. The hash is FNV-1a 64 with a final
 * mix, independent of the table's own index hash. */
#include "multipart.h"
#include "fnv.h"

#include <stdatomic.h>
#include <stdlib.h>

struct hl_multipart {
    uint64_t        mask;
    _Atomic uint64_t *slot;
};

hl_multipart *hl_multipart_create(int bits)
{
    if (bits < 10 || bits > 30)
        return NULL;
    hl_multipart *mp = calloc(1, sizeof *mp);
    if (mp == NULL)
        return NULL;
    mp->mask = ((uint64_t)1 << bits) - 1;
    if ((mp->slot = calloc((size_t)mp->mask + 1, sizeof *mp->slot)) == NULL) {
        free(mp);
        return NULL;
    }
    return mp;
}

void hl_multipart_destroy(hl_multipart *mp)
{
    if (mp == NULL)
        return;
    free((void *)mp->slot);
    free(mp);
}

static uint64_t hash_user(const char *user, size_t len)
{
    uint64_t h = hl_fnv1a64(HL_FNV64_BASIS, user, len);
    h ^= h >> 33;                       /* fmix64: spread into the low bits */
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

int32_t hl_multipart_note(hl_multipart *mp, const char *user, size_t user_len,
                          int32_t partition)
{
    uint64_t h = hash_user(user, user_len);
    uint64_t tag = h >> 32, want = tag << 32 | (uint32_t)(partition + 1);
    _Atomic uint64_t *s = &mp->slot[h & mp->mask];
    uint64_t cur = atomic_load_explicit(s, memory_order_relaxed);
    if (cur == want)
        return -1;
    if (cur != 0 && cur >> 32 == tag)
        return (int32_t)(uint32_t)cur - 1;    /* kept: it names the first partition */
    atomic_store_explicit(s, want, memory_order_relaxed);
    return -1;
}
