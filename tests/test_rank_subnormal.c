/* test_rank_subnormal.c - the exact path's published list is det_score's
 * best k (rank.c) also when the scores are subnormal: det_margin must
 * cover the underflow of SGEMM's and det_score's products, which the
 * relative bound gamma_n (|q| |e| + |b|) does not. */
#define T_SUITE "rank_subnormal"
#include "test.h"
#define RNG_SEED 0x3C6EF372FE94F82Bull
#include "rank_util.h"
#include "rank_internal.h"

#define DIM 16
#define N   35
static const float Q[DIM] = {1.5, -1.5, 1.25, 0.5, 1.25, 1.25, 0.5, 1.5,
                             0.25, 1.25, 1.5, 0.75, 1.25, 1.25, 0.75, 1.25};
static const unsigned char E[N][DIM] = {    /* units of 2^-149 */
    {0,8,0,5,6,2,2,8,1,5,5,7,0,1,7,1}, {8,3,0,5,7,7,0,0,3,2,7,8,6,2,0,2},
    {7,8,2,0,6,8,8,7,7,1,1,8,7,4,8,7}, {8,3,3,8,3,5,7,0,1,6,5,8,7,0,1,7},
    {4,8,8,3,2,1,6,7,8,6,8,0,2,5,1,4}, {4,2,8,3,2,4,0,3,8,5,6,8,1,6,2,4},
    {3,8,4,1,8,3,7,0,6,0,4,4,3,4,8,3}, {2,7,5,0,1,8,7,4,2,1,1,0,7,4,0,1},
    {6,8,8,6,3,2,2,2,8,0,6,1,3,2,2,6}, {1,5,3,3,6,1,1,1,5,7,8,1,1,1,1,8},
    {6,4,4,2,3,3,5,2,6,4,5,7,2,3,5,2}, {5,4,4,5,6,8,0,6,2,6,2,8,7,4,7,0},
    {6,8,3,6,4,5,8,1,2,2,7,0,6,2,8,3}, {0,7,6,7,3,6,8,4,0,1,0,0,3,7,1,2},
    {4,8,1,0,8,5,4,5,4,5,3,3,2,8,0,8}, {2,0,3,8,4,5,7,5,6,4,1,7,1,4,7,5},
    {4,6,6,1,4,5,4,1,2,6,7,3,0,6,8,8}, {0,3,7,7,4,6,1,8,5,6,4,6,4,7,3,3},
    {5,0,6,2,4,1,6,6,0,0,3,3,4,4,4,1}, {6,4,7,1,0,3,3,3,7,6,2,2,2,3,0,0},
    {4,2,2,8,7,1,5,5,0,6,6,1,1,4,1,5}, {4,2,6,0,7,4,2,1,5,1,1,3,6,0,6,5},
    {3,4,7,2,6,7,7,4,0,1,7,4,5,4,7,5}, {6,2,5,5,5,1,4,3,3,3,2,1,0,2,8,7},
    {0,4,8,1,1,3,1,8,2,3,0,4,6,2,8,6}, {6,1,4,2,4,5,1,4,7,8,6,0,7,0,7,3},
    {4,2,4,3,2,3,6,0,5,0,7,3,1,2,5,0}, {7,0,2,4,0,0,6,0,6,6,1,1,0,0,4,7},
    {4,8,8,1,3,2,2,4,8,5,5,3,7,0,0,3}, {0,2,7,2,2,0,4,3,6,3,2,3,6,5,5,2},
    {4,1,0,0,2,2,0,2,5,2,4,2,8,3,0,3}, {2,3,8,3,6,0,7,8,3,6,1,5,7,7,4,1},
    {6,7,5,1,2,8,3,5,2,3,3,2,0,4,6,5}, {4,0,4,8,5,6,4,0,6,8,0,2,4,7,2,5},
    {7,6,2,6,6,6,3,8,5,1,7,1,0,8,3,1}};

static void test_exact_path_is_det_score_best(void)
{
    char err[256];
    tmodel t;
    tmodel_init(&t, N, DIM, 1, 0, 8);            /* one linear layer: q = its bias */
    memset(t.w[0], 0, (size_t)(DIM + 1) * DIM * sizeof(float));
    memcpy(t.b[0], Q, sizeof Q);
    for (int32_t j = 0; j < N; j++) {
        for (int d = 0; d < DIM; d++)
            t.e_out[(size_t)j * DIM + d] = 0x1p-149f * E[j][d];
        t.bias[j] = 0.0f;
    }
    float s[DIM] = {0}, m = 1.0f;
    int32_t hi[1] = {0}; uint8_t ht[1] = {0}; int64_t hts[1] = {0};
    hl_row_view v = {.user = "u", .user_len = 1, .s = s, .m = &m, .t_ref_ms = 1, .history = 1,
                     .hist_item = hi, .hist_type = ht, .hist_ts_ms = hts};
    int32_t best = -1;
    float bs = 0.0f;
    for (int32_t j = 0; j < N; j++) {            /* the definition */
        float f = det_score(Q, t.e_out + (size_t)j * DIM, DIM, 0.0f);
        if (best < 0 || f > bs) { best = j; bs = f; }
    }
    for (int scoring = HL_SCORING_EXACT; scoring <= HL_SCORING_TWO_STAGE; scoring++) {
        hl_rank_opts o = {.k = 1, .max_batch = 1, .scoring = scoring};
        hl_ranker *r = hl_ranker_create_parts(&t.p, &o, err, sizeof err);
        hl_rec rec[1];
        int n = 0;
        CHECKF(r != NULL, "create: %s", err);
        if (r && hl_ranker_refresh(r, &v, 1, rec, &n) == 0)
            CHECKF(n == 1 && rec[0].item == best && rec[0].score == bs,
                   "%s: published item %d score %.9g, det_score's best is item %d score %.9g",
                   hl_ranker_scoring(r), rec[0].item, rec[0].score, best, bs);
        hl_ranker_destroy(r);
    }
    tmodel_free(&t);
}

int main(void)
{
    RUN(test_exact_path_is_det_score_best);
    TEST_EXIT();
}
