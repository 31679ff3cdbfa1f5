/* test_encoder.c - the encoder input and the MLP forward pass against their
 * plain-loop twin and hand-computed values. */
#define T_SUITE "encoder"
#include "test.h"
#include "encoder.h"

#include <stdint.h>

static uint64_t rng = 88172645463325252ull;

static float frand(void)   /* uniform in [-1, 1) */
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 40) / (double)(1 << 24)) * 2.0f - 1.0f;
}

static float *rand_array(size_t n)
{
    float *a = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        a[i] = frand();
    return a;
}

/* A random net; weights owned by the caller through net->layer_w/b. */
static void make_net(hl_encoder_net *net, int n_heads, int dim, int n_layers,
                     const int *hidden)
{
    memset(net, 0, sizeof *net);
    net->n_heads = n_heads;
    net->dim = dim;
    net->n_layers = n_layers;
    for (int l = 0; l < n_layers; l++) {
        net->layer_out[l] = l == n_layers - 1 ? dim : hidden[l];
        size_t n_in = (size_t)hl_encoder_layer_in(net, l);
        net->layer_w[l] = rand_array((size_t)net->layer_out[l] * n_in);
        net->layer_b[l] = rand_array((size_t)net->layer_out[l]);
    }
}

static void free_net(hl_encoder_net *net)
{
    for (int l = 0; l < net->n_layers; l++) {
        free((void *)net->layer_w[l]);
        free((void *)net->layer_b[l]);
    }
}

static void test_features_values(void)
{
    /* Two heads of dim 2: a normal mass, and a faded one below eps. */
    float s[4] = {2.0f, -4.0f, 1e-7f, 0.0f}, m[2] = {4.0f, 1e-7f}, x[6];
    hl_encoder_features(2, 2, s, m, x);
    CHECK_CLOSE(x, ((float[]){0.5f, -1.0f, logf(5.0f), 0.1f, 0.0f, 1e-7f}), 6, 1e-6);
    float z[6];
    float s0[4] = {0}, m0[2] = {0};
    hl_encoder_features(2, 2, s0, m0, z);
    CHECK_CLOSE(z, ((float[]){0, 0, 0, 0, 0, 0}), 6, 0);
}

static void test_features_rows(void)
{
    float s[2][3 * 4], m[2][3], X[2][3 * 5], want[3 * 5];
    hl_row_view v[2];
    hl_encoder_net net = {.n_heads = 3, .dim = 4, .n_layers = 1, .layer_out = {4}};
    memset(v, 0, sizeof v);
    for (int u = 0; u < 2; u++) {
        for (int i = 0; i < 12; i++) s[u][i] = frand();
        for (int h = 0; h < 3; h++) m[u][h] = 1.0f + frand();
        v[u].s = s[u];
        v[u].m = m[u];
    }
    hl_encoder_features_rows(&net, v, 2, &X[0][0]);
    for (int u = 0; u < 2; u++) {
        hl_encoder_features(3, 4, s[u], m[u], want);
        CHECK_CLOSE(X[u], want, 15, 0);
    }
    CHECK(hl_encoder_in_dim(&net) == 15);
}

/* One layer, one user, by hand: one head of dim 2 gives in_dim 3, and
 * q = W x + b with no ReLU on the last layer. */
static void test_forward_by_hand(void)
{
    float W[2 * 3] = {1, 2, 0, -3, 0.5f, 1}, b[2] = {0.25f, -10};
    float x[3] = {1, -1, 2}, act[2];
    hl_encoder_net net = {.n_heads = 1, .dim = 2, .n_layers = 1,
                          .layer_out = {2}, .layer_w = {W}, .layer_b = {b}};
    CHECK(hl_encoder_net_check(&net, NULL, 0) == 0);
    const float *q = hl_encoder_forward(&net, x, 1, act);
    CHECK_CLOSE(q, ((float[]){1 - 2 + 0.25f, -3 - 0.5f + 2 - 10}), 2, 1e-6);
    CHECK(q == act);
}

static void check_forward(int n_heads, int dim, int n_layers, const int *hidden,
                          int n)
{
    hl_encoder_net net;
    make_net(&net, n_heads, dim, n_layers, hidden);
    CHECK(hl_encoder_net_check(&net, NULL, 0) == 0);
    size_t in_dim = (size_t)hl_encoder_in_dim(&net), n_act = hl_encoder_act_floats(&net, n);
    float *X = rand_array((size_t)n * in_dim);
    float *a1 = malloc(n_act * sizeof(float)), *a2 = malloc(n_act * sizeof(float));
    float *q1 = hl_encoder_forward(&net, X, n, a1);
    float *q2 = hl_encoder_forward_naive(&net, X, n, a2);
    CHECK(q1 - a1 == q2 - a2);
    CHECK(q1 + (size_t)n * dim == a1 + n_act);
    CHECK_CLOSE(a1, a2, n_act, 1e-4);   /* every layer, ReLUs included */
    free(X); free(a1); free(a2);
    free_net(&net);
}

static void test_forward_matches_naive(void)
{
    int h1[] = {256}, h2[] = {32, 48}, h3[] = {17, 5, 9};
    check_forward(3, 64, 1, NULL, 1);
    check_forward(3, 64, 2, h1, 1);
    check_forward(3, 64, 2, h1, 256);
    check_forward(2, 16, 3, h2, 37);
    check_forward(1, 7, 4, h3, 5);
    check_forward(8, 8, 1, NULL, 64);
}

static void test_relu_between_layers_only(void)
{
    /* One head of dim 1 (in_dim 2). Layer 0 gives -1, which ReLU makes 0;
     * layer 1 gives 0 x 1 - 2 = -2 and, being last, keeps it. */
    float W0[2] = {1, 0}, b0[1] = {0}, W1[1] = {1}, b1[1] = {-2};
    float x[2] = {-1, 0}, act[2];
    hl_encoder_net net = {.n_heads = 1, .dim = 1, .n_layers = 2,
                          .layer_out = {1, 1}, .layer_w = {W0, W1},
                          .layer_b = {b0, b1}};
    CHECK(hl_encoder_net_check(&net, NULL, 0) == 0);
    const float *q = hl_encoder_forward(&net, x, 1, act);
    CHECK(act[0] == 0.0f && q == act + 1 && q[0] == -2.0f);
    memset(act, 0x7f, sizeof act);
    hl_encoder_forward_naive(&net, x, 1, act);
    CHECK(act[0] == 0.0f && act[1] == -2.0f);
}

static void test_check_rejects_bad_shapes(void)
{
    float w[1] = {0}, b[1] = {0};
    char err[128] = "";
    hl_encoder_net net = {.n_heads = 1, .dim = 4, .n_layers = 1,
                          .layer_out = {3}, .layer_w = {w}, .layer_b = {b}};
    CHECK(hl_encoder_net_check(&net, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "last layer") != NULL, "err = %s", err);
    net.layer_out[0] = 4;
    net.layer_w[0] = NULL;
    CHECK(hl_encoder_net_check(&net, err, sizeof err) == HL_EINVAL);
    net.layer_w[0] = w;
    net.n_layers = 0;
    CHECK(hl_encoder_net_check(&net, err, sizeof err) == HL_EINVAL);
    net.n_layers = 1;
    net.n_heads = HL_MAX_HEADS + 1;
    CHECK(hl_encoder_net_check(&net, err, sizeof err) == HL_EINVAL);
    net.n_heads = 1;
    CHECK(hl_encoder_net_check(&net, err, sizeof err) == 0);
}

int main(void)
{
    RUN(test_features_values);
    RUN(test_features_rows);
    RUN(test_forward_by_hand);
    RUN(test_forward_matches_naive);
    RUN(test_relu_between_layers_only);
    RUN(test_check_rejects_bad_shapes);
    TEST_EXIT();
}
