/* test_lru.c - core/lru.c: the k smallest offered (seq, row) pairs come out
 * smallest first, and rows touched since the scan began are never
 * candidates (what keeps table.c's spread-out LRU scans exact). */
#define T_SUITE "test_lru"
#include "test.h"
#include "lru.h"

static uint64_t rng_state = 9;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Against sorting: random seqs, several k, pool refilled by later scans. */
static void test_k_smallest_in_order(void)
{
    enum { N = 5000 };
    static uint64_t seqs[N], sorted[N];
    static const size_t ks[] = { 1, 7, 64, 1000, N, N + 10 };
    for (size_t t = 0; t < sizeof ks / sizeof ks[0]; t++) {
        hl_lru l;
        hl_lru_init(&l, ks[t]);
        for (int rep = 0; rep < 2; rep++) {
            for (int i = 0; i < N; i++) seqs[i] = sorted[i] = rnd() >> 8;
            qsort(sorted, N, sizeof *sorted, cmp_u64);
            CHECK(hl_lru_begin(&l, UINT64_MAX) == 0);
            for (uint32_t i = 0; i < N; i++) hl_lru_offer(&l, i, seqs[i]);
            hl_lru_finish(&l);
            size_t want = ks[t] < N ? ks[t] : N, got = 0;
            hl_lru_ent e;
            while (hl_lru_pop(&l, &e)) {
                CHECK(got < want && e.seq == sorted[got] && seqs[e.row] == e.seq);
                got++;
            }
            CHECKF(got == want, "k %zu: %zu popped, want %zu", ks[t], got, want);
        }
        CHECK(hl_lru_bytes(&l) > 0);
        hl_lru_free(&l);
    }
}

/* Row 0 offered with seq 5, then touched (seq 11); row 1 touched (seq 12)
 * before it is offered: row 1 must not be a candidate, or it would be
 * evicted ahead of row 0, which is older. */
static void test_touched_since_begin_excluded(void)
{
    hl_lru l;
    hl_lru_init(&l, 4);
    CHECK(hl_lru_begin(&l, 11) == 0);
    hl_lru_offer(&l, 0, 5);
    hl_lru_offer(&l, 1, 12);
    hl_lru_offer(&l, 2, 11);
    hl_lru_offer(&l, 3, 10);
    hl_lru_finish(&l);
    hl_lru_ent e;
    CHECK(hl_lru_pop(&l, &e) && e.row == 0 && e.seq == 5);
    CHECK(hl_lru_pop(&l, &e) && e.row == 3 && e.seq == 10);
    CHECK(!hl_lru_pop(&l, &e));
    hl_lru_free(&l);
}

/* A scan can be restarted; an unfinished one leaves the pool alone. */
static void test_restart_keeps_pool(void)
{
    hl_lru l;
    hl_lru_init(&l, 2);
    CHECK(hl_lru_begin(&l, 100) == 0);
    hl_lru_offer(&l, 7, 1);
    hl_lru_finish(&l);
    CHECK(hl_lru_begin(&l, 100) == 0);
    hl_lru_offer(&l, 8, 2);
    CHECK(l.scanning && l.pool_n == 1);
    hl_lru_ent e;
    CHECK(hl_lru_pop(&l, &e) && e.row == 7);
    CHECK(hl_lru_begin(&l, 100) == 0);      /* restart drops row 8 */
    hl_lru_finish(&l);
    CHECK(!hl_lru_pop(&l, &e));
    hl_lru_free(&l);
}

int main(void)
{
    RUN(test_k_smallest_in_order);
    RUN(test_touched_since_begin_excluded);
    RUN(test_restart_keeps_pool);
    TEST_EXIT();
}
