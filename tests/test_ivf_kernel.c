/* test_ivf_kernel.c - ivf.c's scoring kernel against its plain-loop twin
 * and against dot products of the rows: the variant picked for this CPU
 * (AVX-512 or AVX2 with FMA, else the plain loop) gives every query's
 * score of every item of a list within fp32 rounding, for batches of 1 to
 * 9 queries (the four-at-a-time loop and its remainder) and dims with an
 * odd tail. It includes core/ivf.c to reach the static kernel. */
#include "../core/ivf.c"
#define T_SUITE "ivf_kernel"
#include "test.h"

static uint64_t krng = 0x9E3779B97F4A7C15ull;

static float kfrand(void)
{
    return (float)((double)(next_rand(&krng) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* nb blocks of dim x BLK, m queries: picked kernel and score_plain both
 * against a double-precision dot product of each (query, item). */
static void check_shape(int nb, int m, int dim)
{
    size_t nx = (size_t)nb * dim * BLK, ld = (size_t)nb * BLK;
    float *xt = malloc(nx * sizeof(float)), *Q = malloc((size_t)m * dim * sizeof(float));
    float *S = malloc((size_t)m * ld * sizeof(float)), *P = malloc((size_t)m * ld * sizeof(float));
    for (size_t i = 0; i < nx; i++)
        xt[i] = kfrand();
    for (int i = 0; i < m * dim; i++)
        Q[i] = kfrand();
    pick_kernel()(xt, nb, Q, m, dim, S, (int)ld);
    score_plain(xt, nb, Q, m, dim, P, (int)ld);
    int bad = 0;
    for (int u = 0; u < m; u++)
        for (int b = 0; b < nb; b++)
            for (int i = 0; i < BLK; i++) {
                double want = 0.0;
                for (int d = 0; d < dim; d++)
                    want += (double)Q[u * dim + d] * xt[((size_t)b * dim + d) * BLK + i];
                size_t o = (size_t)u * ld + (size_t)b * BLK + i;
                bad += fabs(S[o] - want) > 1e-4 * dim || fabs(P[o] - want) > 1e-4 * dim;
            }
    CHECKF(bad == 0, "nb %d m %d dim %d: %d scores off", nb, m, dim, bad);
    free(xt);
    free(Q);
    free(S);
    free(P);
}

static void test_kernel_matches_plain(void)
{
    for (int m = 1; m <= 9; m++)
        check_shape(3, m, 64);
    check_shape(2, 5, 7);
    check_shape(1, 1, 1);
    check_shape(4, 8, 33);
}

int main(void)
{
    RUN(test_kernel_matches_plain);
    TEST_EXIT();
}
