/* fuzz_model.c - libFuzzer target for the .hlm model loader.
 *
 * A model file is outsider input: model.path is swapped live by whoever can
 * write that path (a deploy, an export from another trainer). Each input is
 * written to a file and opened with hl_model_open() three times:
 *   1. as it is (the magic, sizes and CRC refuse almost everything);
 *   2. with file_size set to the input's length and the CRC fixed up, so
 *      hostile header fields reach the shape, layout and value checks;
 *   3. as 2, with the section table also rewritten to the canonical layout
 *      its shape fields imply (computed here from schemas/model.md, not by
 *      the loader's code), so hostile shapes reach the padding, id, float
 *      and index checks.
 * A model that opens is then used as the worker uses a swapped-in one:
 * every row's id must be found at that row, the encoder's shape must check
 * and run on one all-zero user, and a migration from the seed model is
 * built (what a live swap does). A crash, a leak, a sanitizer report or an
 * open that returns NULL without a reason is a bug.
 *
 * With HL_FUZZ_SEEDS=DIR set, LLVMFuzzerInitialize writes valid models
 * (one and two layers, ids of 1..9 bytes) into DIR first. */
#include "encoder.h"
#include "migrate.h"
#include "model.h"
#include "rank.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_INPUT (1u << 20)

static char path[256];          /* the file each input is written to */
static hl_model *seed_model;    /* the model a migration starts from */

/* ---- an independent reading of schemas/model.md ---- */

static uint32_t crc32_zlib(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & -(c & 1u));
    }
    return ~c;
}

static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static void wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static void wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

static void fix_size_crc(uint8_t *b, size_t n)
{
    wr64(b + 16, n);
    wr32(b + 12, crc32_zlib(b + 16, n - 16));
}

/* Rewrites the section table (224: 13 x (offset, size)) to the canonical
 * layout of the header's dim, n_heads, n_items, n_layers, layer_out and
 * the id byte count the table holds. Fields out of range are left to the
 * loader (the arithmetic here is in 64 bits and cannot overflow for u32s). */
static void fix_sections(uint8_t *b)
{
    uint64_t d = rd32(b + 28), h = rd32(b + 32), n = rd32(b + 36), L = rd32(b + 40);
    uint64_t id_bytes = rd64(b + 224 + 16 + 8), pos = 512, off[13] = {0}, size[13] = {0};
    if (L > 4) L = 4;
#define ALIGN() (pos = (pos + 63) & ~(uint64_t)63)
#define PUT(s, bytes) (off[s] = pos, size[s] = (bytes), pos += size[s])
    PUT(0, 8 * (n + 1));
    PUT(1, id_bytes);
    ALIGN(); PUT(2, 4 * n * d);
    for (uint64_t l = 0; l < L; l++) {
        uint64_t out = rd32(b + 44 + 4 * l), in = l == 0 ? h * (d + 1) : rd32(b + 44 + 4 * (l - 1));
        ALIGN(); PUT(3 + 2 * l, 4 * out * in);
        ALIGN(); PUT(4 + 2 * l, 4 * out);
    }
    ALIGN(); PUT(11, 4 * n * d);
    ALIGN(); PUT(12, 4 * n);
#undef ALIGN
#undef PUT
    for (int s = 0; s < 13; s++) {
        wr64(b + 224 + 16 * s, off[s]);
        wr64(b + 224 + 16 * s + 8, size[s]);
    }
}

/* ---- one input ---- */

static void write_file(const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        perror(path);
        abort();
    }
}

/* What a swap does with a model that opened. */
static void use(const hl_model *m)
{
    const hl_model_info *mi = hl_model_info_get(m);
    for (int32_t r = 0; r < mi->n_items; r++) {
        uint32_t len;
        const char *id = hl_model_item_id(m, r, &len);
        if (hl_model_item_find(m, id, len) != r) abort();
    }
    hl_encoder_net net;
    char err[512];
    hl_encoder_net_from_model(&net, m);
    if (hl_encoder_net_check(&net, err, sizeof err) != 0) abort();   /* open let it through */
    size_t in = (size_t)hl_encoder_in_dim(&net);
    float *x = calloc(in, sizeof *x), *act = malloc(hl_encoder_act_floats(&net, 1) * sizeof *act);
    if (x == NULL || act == NULL) abort();
    hl_encoder_forward(&net, x, 1, act);
    free(x);
    free(act);
    /* The scoring tables a swap builds (two-stage's int8 copy, the IVF
     * index), and one user's list: heads from the first item's e_in. */
    hl_qitems *qi = hl_qitems_create(hl_model_e_out(m), hl_model_bias(m), mi->n_items, mi->dim,
                                     HL_QKERNEL_AUTO, err, sizeof err);
    hl_ivf_opts io = {.iters = 2};
    hl_ivf *ivf = hl_ivf_create(hl_model_e_out(m), hl_model_bias(m), mi->n_items, mi->dim,
                                &io, err, sizeof err);
    for (int scoring = 0; scoring < 2; scoring++) {
        hl_rank_opts ro = {.k = 5, .max_batch = 1, .scoring = scoring, .qitems = qi,
                           .ivf = scoring ? ivf : NULL, .nprobe = 2};
        if (scoring && qi == NULL) continue;
        hl_ranker *rk = hl_ranker_create(m, &ro, err, sizeof err);
        if (rk == NULL) continue;
        size_t hd = (size_t)mi->n_heads * (size_t)mi->dim;
        float *hs = malloc(hd * sizeof *hs), hm[HL_MAX_HEADS];
        int32_t item = 0;
        uint8_t type = 0;
        int64_t ts = 0;
        for (size_t i = 0; i < hd; i++) hs[i] = hl_model_e_in(m)[i % (size_t)mi->dim];
        for (int h = 0; h < HL_MAX_HEADS; h++) hm[h] = 1.0f;
        hl_row_view v = {.user = "u", .user_len = 1, .s = hs, .m = hm, .history = 1,
                         .n_hist = 1, .hist_item = &item, .hist_type = &type, .hist_ts_ms = &ts};
        hl_rec out[5];
        int n_out = 0;
        if (hl_ranker_refresh(rk, &v, 1, out, &n_out) == 0)
            for (int i = 0; i < n_out; i++)
                if (out[i].item < 0 || out[i].item >= mi->n_items) abort();
        free(hs);
        hl_ranker_destroy(rk);
    }
    hl_ivf_destroy(ivf);
    hl_qitems_destroy(qi);
    if (seed_model != NULL) {
        err[0] = '\0';
        hl_migration *mg = hl_migration_create(seed_model, m, mi->type_weight, err, sizeof err);
        if (mg == NULL && err[0] == '\0') abort();
        hl_migration_destroy(mg);
    }
}

static void try_open(const uint8_t *data, size_t size)
{
    char err[512] = "";
    write_file(data, size);
    hl_model *m = hl_model_open(path, err, sizeof err);
    if (m == NULL && err[0] == '\0') abort();           /* refused without a reason */
    if (m != NULL) use(m);
    hl_model_close(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > MAX_INPUT) return 0;
    try_open(data, size);
    if (size < 512) return 0;
    uint8_t *b = malloc(size);
    memcpy(b, data, size);
    fix_size_crc(b, size);
    try_open(b, size);
    fix_sections(b);
    fix_size_crc(b, size);
    try_open(b, size);
    free(b);
    return 0;
}

/* ---- seeds ---- */

/* A model of n items, dim 4, two heads, n_layers layers (hidden width 5). */
static int write_model(const char *file, int n, int n_layers, char *err, size_t errlen)
{
    enum { D = 4, H = 2, W = 5, N_MAX = 12 };
    static char ids[N_MAX][16];
    static const char *idp[N_MAX];
    static uint32_t idl[N_MAX];
    static float e_in[N_MAX * D], e_out[N_MAX * D], bias[N_MAX];
    static float w0[W * H * (D + 1)], b0[W], w1[D * W], b1[D];
    hl_model_parts p;
    memset(&p, 0, sizeof p);
    p.info.dim = D;
    p.info.n_heads = H;
    p.info.n_items = n;
    p.info.half_life_ms[0] = 3.6e6;
    p.info.half_life_ms[1] = 8.64e7;
    for (int t = 0; t < HL_N_TYPES; t++) p.info.type_weight[t] = 1.0f + (float)t;
    snprintf(p.info.version, sizeof p.info.version, "fuzz-%d-%d", n, n_layers);
    p.info.n_layers = n_layers;
    for (int r = 0; r < n; r++) {
        snprintf(ids[r], sizeof ids[r], "%.*s", 1 + r % 9, "item-abcdefgh");
        ids[r][0] = (char)('a' + r);
        idp[r] = ids[r];
        idl[r] = (uint32_t)strlen(ids[r]);
        bias[r] = 0.01f * (float)r;
    }
    for (int i = 0; i < N_MAX * D; i++) {
        e_in[i] = (float)(i % 7) * 0.1f - 0.3f;
        e_out[i] = (float)(i % 5) * 0.2f - 0.4f;
    }
    for (size_t i = 0; i < sizeof w0 / sizeof *w0; i++) w0[i] = (float)(i % 3) * 0.05f;
    for (size_t i = 0; i < sizeof w1 / sizeof *w1; i++) w1[i] = (float)(i % 4) * 0.05f;
    p.item_id = idp;
    p.item_id_len = idl;
    p.e_in = e_in;
    p.e_out = e_out;
    p.bias = bias;
    if (n_layers == 1) {
        static float w[D * H * (D + 1)];
        for (size_t i = 0; i < sizeof w / sizeof *w; i++) w[i] = (float)(i % 3) * 0.1f;
        p.info.layer_out[0] = D;
        p.layer_w[0] = w;
        p.layer_b[0] = b1;
    } else {
        p.info.layer_out[0] = W;
        p.info.layer_out[1] = D;
        p.layer_w[0] = w0;
        p.layer_b[0] = b0;
        p.layer_w[1] = w1;
        p.layer_b[1] = b1;
    }
    return hl_model_write(file, &p, err, errlen);
}

static void remove_file(void)
{
    unlink(path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[512], file[512];
    const char *dir = getenv("HL_FUZZ_SEEDS");
    const char *tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(path, sizeof path, "%s/fuzz_model.%ld.hlm", tmp, (long)getpid());
    snprintf(file, sizeof file, "%s.seed", path);
    /* The seed model stays mapped after its file is gone. */
    if (write_model(file, 6, 2, err, sizeof err) != 0 ||
        (seed_model = hl_model_open(file, err, sizeof err)) == NULL)
        fprintf(stderr, "fuzz_model: seed model: %s\n", err);
    unlink(file);
    atexit(remove_file);
    if (dir && *dir) {
        static const int shapes[][2] = { {1, 1}, {3, 2}, {6, 2}, {12, 1} };
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
            snprintf(file, sizeof file, "%s/seed%zu.hlm", dir, i);
            if (write_model(file, shapes[i][0], shapes[i][1], err, sizeof err) != 0)
                fprintf(stderr, "fuzz_model: seed: %s\n", err);
        }
    }
    return 0;
}
