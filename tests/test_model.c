/* test_model.c - the .hlm file: round trip, lookups, and every kind of damage
 * refused with a message that names it.
 *
 * Damaged files are made by patching bytes of a good one; where the damage is
 * one a CRC would also catch (a NaN, a repeated id), the test recomputes the
 * CRC with its own bit-at-a-time CRC-32 so the open reaches the check under
 * test. That twin also checks model_format.c's CRC on every good open.
 *
 * With HL_HLM_ROUNDTRIP_IN and HL_HLM_ROUNDTRIP_OUT set, it instead opens the
 * first and rewrites it with hl_model_write to the second (for
 * tests/integration/test_hlm.py, which compares the arrays in Python). */
#define T_SUITE "test_model"
#include "test.h"
#include "fnv.h"
#include "hl.h"
#include "model.h"
#include "train.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define OFF_CRC       12
#define OFF_VERSION   8
#define OFF_DIM       28
#define OFF_SECTIONS  224
#define OFF_HALF_LIFE 64
#define OFF_TYPE_WEIGHT 128

typedef struct toy {
    hl_model_parts p;
    char         **ids;
    uint32_t      *lens;
    float         *e_in, *e_out, *bias, *w[HL_MAX_LAYERS], *b[HL_MAX_LAYERS];
} toy;

static uint64_t rng_state = 88172645463325252ull;

static float frand(void)
{
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) / (double)(1 << 24)) * 2.0f - 1.0f;
}

static float *rand_floats(size_t n)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = frand();
    return x;
}

/* n items, dim d, 3 heads, layers [2d, d]. */
static void toy_init(toy *t, int n, int d)
{
    hl_model_info *mi = &t->p.info;
    memset(t, 0, sizeof *t);
    mi->dim = d;
    mi->n_heads = 3;
    mi->half_life_ms[0] = 3600e3; mi->half_life_ms[1] = 86400e3; mi->half_life_ms[2] = 2592000e3;
    for (int i = 0; i < HL_N_TYPES; i++) mi->type_weight[i] = 1.0f + (float)i;
    mi->n_items = n;
    mi->n_layers = 2;
    mi->layer_out[0] = 2 * d;
    mi->layer_out[1] = d;
    snprintf(mi->version, sizeof mi->version, "toy-%d-%d", n, d);
    t->ids = malloc((size_t)n * sizeof *t->ids);
    t->lens = malloc((size_t)n * sizeof *t->lens);
    for (int r = 0; r < n; r++) {
        t->ids[r] = malloc(32);
        t->lens[r] = (uint32_t)snprintf(t->ids[r], 32, "item-%d", r * 7 + 1);
    }
    t->e_in = rand_floats((size_t)n * d);
    t->e_out = rand_floats((size_t)n * d);
    t->bias = rand_floats((size_t)n);
    for (int l = 0; l < mi->n_layers; l++) {
        t->w[l] = rand_floats((size_t)mi->layer_out[l] * hl_model_layer_in(mi, l));
        t->b[l] = rand_floats((size_t)mi->layer_out[l]);
        t->p.layer_w[l] = t->w[l];
        t->p.layer_b[l] = t->b[l];
    }
    t->p.item_id = (const char *const *)t->ids;
    t->p.item_id_len = t->lens;
    t->p.e_in = t->e_in; t->p.e_out = t->e_out; t->p.bias = t->bias;
}

static void toy_free(toy *t)
{
    for (int r = 0; r < t->p.info.n_items; r++) free(t->ids[r]);
    free(t->ids); free(t->lens); free(t->e_in); free(t->e_out); free(t->bias);
    for (int l = 0; l < HL_MAX_LAYERS; l++) { free(t->w[l]); free(t->b[l]); }
}

static char tmpdir[64];

static const char *tpath(const char *name)
{
    static char buf[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

/* ---- raw file helpers for damage ---- */

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *b;
    if (f == NULL) return NULL;
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    b = malloc(*len + 1);
    if (fread(b, 1, *len, f) != *len) { free(b); b = NULL; }
    fclose(f);
    return b;
}

static void spit(const char *path, const uint8_t *b, size_t len)
{
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, len, f);
    fclose(f);
}

/* Bit-at-a-time CRC-32 (zlib's): the plain twin of model_format.c's slice-by-8. */
static uint32_t crc32_plain(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
    }
    return ~c;
}

static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static void wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

static void fix_crc(uint8_t *b, size_t len) { wr32(b + OFF_CRC, crc32_plain(b + 16, len - 16)); }

static uint64_t sec_off(const uint8_t *b, int s) { return rd64(b + OFF_SECTIONS + 16 * s); }

/* Opens path expecting failure with a message containing want. */
static void expect_refused(const char *path, const char *want)
{
    char err[512] = "";
    hl_model *m = hl_model_open(path, err, sizeof err);
    CHECKF(m == NULL, "%s: opened, want refusal containing \"%s\"", path, want);
    CHECKF(strstr(err, want) != NULL, "message \"%s\" lacks \"%s\"", err, want);
    hl_model_close(m);
}

static const char *good_path(void)
{
    static int done;
    const char *p = tpath("good.hlm");
    if (!done) {
        toy t;
        char err[256];
        toy_init(&t, 40, 8);
        if (hl_model_write(p, &t.p, err, sizeof err) != 0) printf("    write: %s\n", err);
        toy_free(&t);
        done = 1;
    }
    return p;
}

/* ---- cases ---- */

static void test_roundtrip(void)
{
    toy t;
    char err[256] = "";
    hl_model *m;
    const hl_model_info *mi;

    toy_init(&t, 300, 16);
    CHECKF(hl_model_write(tpath("rt.hlm"), &t.p, err, sizeof err) == 0, "%s", err);
    m = hl_model_open(tpath("rt.hlm"), err, sizeof err);
    CHECKF(m != NULL, "%s", err);
    if (m == NULL) { toy_free(&t); return; }
    mi = hl_model_info_get(m);
    CHECK(mi->dim == 16 && mi->n_heads == 3 && mi->n_items == 300 && mi->n_layers == 2);
    CHECK(mi->layer_out[0] == 32 && mi->layer_out[1] == 16);
    CHECK(mi->half_life_ms[1] == 86400e3 && mi->type_weight[HL_RATE] == 6.0f);
    CHECK(strcmp(mi->version, "toy-300-16") == 0);
    CHECK(mi->fingerprint != 0);
    CHECK_CLOSE(hl_model_e_in(m), t.e_in, 300 * 16, 0);
    CHECK_CLOSE(hl_model_e_out(m), t.e_out, 300 * 16, 0);
    CHECK_CLOSE(hl_model_bias(m), t.bias, 300, 0);
    CHECK_CLOSE(hl_model_layer_w(m, 0), t.w[0], 32 * 3 * 17, 0);
    CHECK_CLOSE(hl_model_layer_b(m, 1), t.b[1], 16, 0);
    CHECK(hl_model_layer_w(m, 2) == NULL && hl_model_layer_b(m, -1) == NULL);
    CHECK(((uintptr_t)hl_model_e_in(m) & 63) == 0 && ((uintptr_t)hl_model_e_out(m) & 63) == 0);
    CHECK(((uintptr_t)hl_model_bias(m) & 63) == 0 && ((uintptr_t)hl_model_layer_w(m, 1) & 63) == 0);
    for (int r = 0; r < 300; r++) {
        uint32_t len;
        const char *id = hl_model_item_id(m, r, &len);
        CHECK(len == t.lens[r] && memcmp(id, t.ids[r], len) == 0);
        CHECK(hl_model_item_find(m, t.ids[r], t.lens[r]) == r);
    }
    hl_model_close(m);
    toy_free(&t);
}

static void test_item_find_misses(void)
{
    char err[256] = "";
    hl_model *m = hl_model_open(good_path(), err, sizeof err);
    char big[300];
    CHECKF(m != NULL, "%s", err);
    if (m == NULL) return;
    memset(big, 'x', sizeof big);
    CHECK(hl_model_item_find(m, "item-8", 6) == 1);
    CHECK(hl_model_item_find(m, "item-2", 6) == -1);
    CHECK(hl_model_item_find(m, "item-8x", 7) == -1);
    CHECK(hl_model_item_find(m, "item-", 5) == -1);
    CHECK(hl_model_item_find(m, "", 0) == -1);
    CHECK(hl_model_item_find(m, big, sizeof big) == -1);
    hl_model_close(m);
}

/* Same contents give the same fingerprint; one changed float changes it. */
static void test_fingerprint(void)
{
    toy t;
    char err[256] = "";
    hl_model *a, *b, *c;

    toy_init(&t, 20, 4);
    hl_model_write(tpath("fa.hlm"), &t.p, err, sizeof err);
    hl_model_write(tpath("fb.hlm"), &t.p, err, sizeof err);
    t.e_out[7] += 1.0f;
    hl_model_write(tpath("fc.hlm"), &t.p, err, sizeof err);
    a = hl_model_open(tpath("fa.hlm"), err, sizeof err);
    b = hl_model_open(tpath("fb.hlm"), err, sizeof err);
    c = hl_model_open(tpath("fc.hlm"), err, sizeof err);
    CHECK(a && b && c);
    if (a && b && c) {
        CHECK(hl_model_info_get(a)->fingerprint == hl_model_info_get(b)->fingerprint);
        CHECK(hl_model_info_get(a)->fingerprint != hl_model_info_get(c)->fingerprint);
    }
    hl_model_close(a); hl_model_close(b); hl_model_close(c);
    hl_model_close(NULL);
    toy_free(&t);
}

static void test_writer_refuses(void)
{
    toy t;
    char err[256] = "", *saved;
    uint32_t saved_len;

    toy_init(&t, 10, 4);
    t.e_in[5] = NAN;
    CHECK(hl_model_write(tpath("w1.hlm"), &t.p, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "e_in[1][1]") != NULL, "%s", err);
    t.e_in[5] = 0;
    saved = t.ids[3];
    t.ids[3] = t.ids[2];
    CHECK(hl_model_write(tpath("w2.hlm"), &t.p, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "duplicate item id \"item-15\" at rows 2 and 3") != NULL, "%s", err);
    t.ids[3] = saved;
    saved_len = t.lens[4];
    t.lens[4] = 257;
    CHECK(hl_model_write(tpath("w3.hlm"), &t.p, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "row 4: length 257") != NULL, "%s", err);
    t.lens[4] = saved_len;
    t.p.info.layer_out[1] = 5;
    CHECK(hl_model_write(tpath("w4.hlm"), &t.p, err, sizeof err) != 0);
    CHECKF(strstr(err, "layer_out[1]: expected dim 4, found 5") != NULL, "%s", err);
    CHECK(access(tpath("w1.hlm"), F_OK) != 0 && access(tpath("w2.hlm"), F_OK) != 0);
    CHECK(access(tpath("w4.hlm.tmp"), F_OK) != 0);
    toy_free(&t);
}

/* Two writers of one path (a retrain job started again while the last one
 * still writes) each write their own temporary file: with a fixed
 * path.tmp the second truncated and overwrote the first's file, whose
 * rename then published a mixture of both under the final name. Here the
 * "other writer" holds path.tmp open with 100 bytes in it. */
static void test_writers_do_not_share_tmp(void)
{
    toy t;
    char err[256] = "", other[100];
    struct stat st;
    memset(other, 'o', sizeof other);
    toy_init(&t, 10, 4);
    int fd = open(tpath("c.hlm.tmp"), O_CREAT | O_WRONLY | O_TRUNC, 0644);
    CHECK(fd >= 0 && write(fd, other, sizeof other) == (ssize_t)sizeof other);
    mode_t was = umask(022);
    CHECKF(hl_model_write(tpath("c.hlm"), &t.p, err, sizeof err) == 0, "%s", err);
    CHECK(fstat(fd, &st) == 0 && st.st_size == (off_t)sizeof other);
    CHECK(access(tpath("c.hlm.tmp"), F_OK) == 0);         /* still the other's to rename */
    hl_model *m = hl_model_open(tpath("c.hlm"), err, sizeof err);
    CHECKF(m != NULL, "%s", err);
    hl_model_close(m);
    CHECK(stat(tpath("c.hlm"), &st) == 0 && (st.st_mode & 0777) == 0644);
    umask(077);                                  /* a private model stays private */
    CHECKF(hl_model_write(tpath("c.hlm"), &t.p, err, sizeof err) == 0, "%s", err);
    CHECK(stat(tpath("c.hlm"), &st) == 0 && (st.st_mode & 0777) == 0600);
    umask(was);
    DIR *d = opendir(tmpdir);
    for (struct dirent *de; d && (de = readdir(d)) != NULL;)
        CHECKF(strncmp(de->d_name, "c.hlm.tmp.", 10) != 0, "left behind: %s", de->d_name);
    if (d) closedir(d);
    close(fd);
    toy_free(&t);
}

static void test_refuse_missing_and_short(void)
{
    uint8_t b[100] = { 0 };
    expect_refused(tpath("nonexistent.hlm"), "No such file");
    spit(tpath("short.hlm"), b, sizeof b);
    expect_refused(tpath("short.hlm"), "truncated: 100 bytes");
}

static void test_refuse_truncated(void)
{
    size_t len;
    uint8_t *b = slurp(good_path(), &len);
    CHECK(b != NULL);
    if (b == NULL) return;
    spit(tpath("trunc.hlm"), b, len - 10);
    expect_refused(tpath("trunc.hlm"), "file has");
    free(b);
}

static void test_refuse_magic_and_version(void)
{
    size_t len;
    uint8_t *b = slurp(good_path(), &len);
    if (b == NULL) { CHECK(0); return; }
    b[0] = 'X';
    spit(tpath("magic.hlm"), b, len);
    expect_refused(tpath("magic.hlm"), "field magic");
    b[0] = 'H';
    wr32(b + OFF_VERSION, 2);
    spit(tpath("version.hlm"), b, len);
    expect_refused(tpath("version.hlm"), "field format_version: expected 1, found 2");
    free(b);
}

/* A shape field that disagrees with the sections is named, before the CRC. */
static void test_refuse_size_mismatch(void)
{
    size_t len;
    uint8_t *b = slurp(good_path(), &len);
    if (b == NULL) { CHECK(0); return; }
    wr32(b + OFF_DIM, 9);
    spit(tpath("dim.hlm"), b, len);
    expect_refused(tpath("dim.hlm"), "layer_out[1]: expected dim 9, found 8");
    wr32(b + OFF_DIM, 0);
    spit(tpath("dim0.hlm"), b, len);
    expect_refused(tpath("dim0.hlm"), "field dim: expected 1..4096, found 0");
    wr32(b + OFF_DIM, 8);
    b[OFF_SECTIONS + 16 * 2 + 8] ^= 4;              /* e_in size */
    spit(tpath("sec.hlm"), b, len);
    expect_refused(tpath("sec.hlm"), "section e_in: expected offset");
    free(b);
}

static void test_refuse_crc(void)
{
    size_t len;
    uint8_t *b = slurp(good_path(), &len);
    if (b == NULL) { CHECK(0); return; }
    b[len - 3] ^= 0x10;                             /* a bit of the last bias */
    spit(tpath("crc.hlm"), b, len);
    expect_refused(tpath("crc.hlm"), "field crc32");
    free(b);
}

static void test_refuse_nan(void)
{
    size_t len;
    uint8_t *b = slurp(good_path(), &len);
    float nan = NAN;
    if (b == NULL) { CHECK(0); return; }
    /* e_out row 3, column 2: dim 8 */
    memcpy(b + sec_off(b, 11) + 4 * (3 * 8 + 2), &nan, 4);
    fix_crc(b, len);
    spit(tpath("nan.hlm"), b, len);
    expect_refused(tpath("nan.hlm"), "e_out[3][2] is nan");
    free(b);
}

/* Finite but huge: a model of 3e38s loaded and listed inf and NaN scores
 * on every path (test_model_bounds). The reader and the writer refuse any
 * value beyond HL_MODEL_MAX_ABS, naming array, row, column and value. */
static void test_refuse_huge(void)
{
    size_t len;
    uint8_t *b = slurp(good_path(), &len);
    float huge = 3e38f, past = nextafterf(HL_MODEL_MAX_ABS, INFINITY);
    char err[512] = "";
    if (b == NULL) { CHECK(0); return; }
    memcpy(b + sec_off(b, 2) + 4 * (2 * 8 + 5), &huge, 4);     /* e_in row 2, column 5 */
    fix_crc(b, len);
    spit(tpath("huge.hlm"), b, len);
    expect_refused(tpath("huge.hlm"), "e_in[2][5] is 3e+38: expected |value| <= 256");
    free(b);
    b = slurp(good_path(), &len);
    memcpy(b + sec_off(b, 12) + 4 * 17, &past, 4);               /* bias of row 17 */
    fix_crc(b, len);
    spit(tpath("past.hlm"), b, len);
    expect_refused(tpath("past.hlm"), "bias[0][17] is 256: expected |value| <= 256");
    free(b);
    toy t;
    toy_init(&t, 20, 8);
    t.w[1][3] = -1e30f;
    CHECK(hl_model_write(tpath("hw.hlm"), &t.p, err, sizeof err) != 0);
    CHECKF(strstr(err, "layer_w[1][0][3] is -1e+30: expected |value| <= 256") != NULL, "%s", err);
    t.w[1][3] = HL_MODEL_MAX_ABS;      /* at the bound: written and read back */
    CHECKF(hl_model_write(tpath("hw.hlm"), &t.p, err, sizeof err) == 0, "%s", err);
    hl_model *m = hl_model_open(tpath("hw.hlm"), err, sizeof err);
    CHECKF(m != NULL, "%s", err);
    hl_model_close(m);
    toy_free(&t);
}

static void test_refuse_duplicate_id(void)
{
    size_t len;
    uint8_t *b = slurp(good_path(), &len);
    if (b == NULL) { CHECK(0); return; }
    /* ids "item-1" (row 0) and "item-8" (row 1): make row 1 "item-1". */
    uint64_t ids = sec_off(b, 1), off1 = rd64(b + sec_off(b, 0) + 8);
    CHECK(memcmp(b + ids + off1, "item-8", 6) == 0);
    b[ids + off1 + 5] = '1';
    fix_crc(b, len);
    spit(tpath("dup.hlm"), b, len);
    expect_refused(tpath("dup.hlm"), "duplicate item id \"item-1\" at rows 0 and 1");
    free(b);
}

/* Lists publish item ids and the version as Avro strings, which are
 * UTF-8: a model holding a Latin-1 id ("caf\xe9") was served, and every
 * list naming that item was unreadable to python3-avro (UnicodeDecodeError)
 * and to any conforming consumer. Such a file is refused (reader and
 * writer alike), naming the row or the field. */
static void test_refuse_non_utf8(void)
{
    size_t len;
    uint8_t *b = slurp(good_path(), &len);
    if (b == NULL) { CHECK(0); return; }
    uint64_t ids = sec_off(b, 1), off1 = rd64(b + sec_off(b, 0) + 8);
    CHECK(memcmp(b + ids + off1, "item-8", 6) == 0);
    b[ids + off1 + 5] = 0xe9;                       /* row 1: "item-\xe9" */
    fix_crc(b, len);
    spit(tpath("latin1.hlm"), b, len);
    expect_refused(tpath("latin1.hlm"), "item id at row 1 is not valid UTF-8");
    b[ids + off1 + 5] = '8';
    b[160] = 0xff;                                  /* version[0] */
    fix_crc(b, len);
    spit(tpath("latin1v.hlm"), b, len);
    expect_refused(tpath("latin1v.hlm"), "field version: not valid UTF-8");
    free(b);

    toy t;
    char err[256] = "";
    toy_init(&t, 10, 4);
    t.ids[3][0] = (char)0xc0;                       /* an overlong form */
    CHECK(hl_model_write(tpath("w5.hlm"), &t.p, err, sizeof err) != 0);
    CHECKF(strstr(err, "item id at row 3 is not valid UTF-8") != NULL, "%s", err);
    CHECK(access(tpath("w5.hlm"), F_OK) != 0);
    toy_free(&t);
}

static void test_refuse_bad_id_offsets(void)
{
    size_t len;
    uint8_t *b = slurp(good_path(), &len);
    if (b == NULL) { CHECK(0); return; }
    uint64_t o = sec_off(b, 0);
    memset(b + o + 8, 0, 8);                        /* offsets[1] := 0: empty id */
    fix_crc(b, len);
    spit(tpath("idoff.hlm"), b, len);
    expect_refused(tpath("idoff.hlm"), "item id at row 0");
    free(b);
}

/* A negative type weight makes a head's mass negative and the encoder's
 * s_h / max(m_h, eps) explode (issue 16, item 3): a file holding one, or a
 * half-life that is not finite and > 0, is refused naming the field, even
 * with a CRC that matches. */
static void test_refuse_bad_weights(void)
{
    static const struct { int off; double v; int f64; const char *want; } cases[] = {
        { OFF_TYPE_WEIGHT + 4 * HL_VIEW, -5, 0,
          "field type_weight[VIEW]: expected finite and >= 0, found -5" },
        { OFF_TYPE_WEIGHT + 4 * HL_RATE, NAN, 0, "field type_weight[RATE]: expected finite" },
        { OFF_TYPE_WEIGHT + 4 * HL_CLICK, INFINITY, 0, "field type_weight[CLICK]" },
        { OFF_HALF_LIFE + 8, -3600e3, 1,
          "field half_life_ms[1]: expected finite and > 0, found -3.6e+06" },
        { OFF_HALF_LIFE, INFINITY, 1, "field half_life_ms[0]" },
        { OFF_HALF_LIFE + 16, 1e-310, 1,
          "field half_life_ms[2]: 1e-310 is too short, its rate ln 2 / half-life is not finite" },
    };
    size_t len;
    uint8_t *good = slurp(good_path(), &len), *b;
    if (good == NULL) { CHECK(0); return; }
    b = malloc(len);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        float f = (float)cases[i].v;
        memcpy(b, good, len);
        if (cases[i].f64) memcpy(b + cases[i].off, &cases[i].v, 8);
        else memcpy(b + cases[i].off, &f, 4);
        fix_crc(b, len);
        spit(tpath("weights.hlm"), b, len);
        expect_refused(tpath("weights.hlm"), cases[i].want);
    }
    /* A zero weight is a weight ("ignore this type"), not damage. */
    memcpy(b, good, len);
    memset(b + OFF_TYPE_WEIGHT + 4 * HL_VIEW, 0, 4);
    fix_crc(b, len);
    spit(tpath("zero.hlm"), b, len);
    char err[256] = "";
    hl_model *m = hl_model_open(tpath("zero.hlm"), err, sizeof err);
    CHECKF(m != NULL, "zero weight refused: %s", err);
    hl_model_close(m);
    free(b);
    free(good);
}

/* The writer and the trainer refuse the same values before writing or
 * training anything, naming the field as the file does. */
static void test_writer_and_trainer_refuse_bad_weights(void)
{
    toy t;
    char err[256] = "";
    toy_init(&t, 10, 4);
    t.p.info.type_weight[HL_VIEW] = -5;
    CHECK(hl_model_write(tpath("neg.hlm"), &t.p, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "field type_weight[VIEW]: expected finite and >= 0, found -5"), "%s", err);
    t.p.info.type_weight[HL_VIEW] = 1;
    t.p.info.half_life_ms[2] = NAN;
    CHECK(hl_model_write(tpath("neg.hlm"), &t.p, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "field half_life_ms[2]") != NULL, "%s", err);
    CHECK(access(tpath("neg.hlm"), F_OK) != 0 && access(tpath("neg.hlm.tmp"), F_OK) != 0);
    toy_free(&t);

    hl_train_opts o;
    hl_train_data d;
    hl_train_result res;
    memset(&d, 0, sizeof d);       /* the options are checked before the data */
    hl_train_opts_default(&o);
    o.type_weight[HL_VIEW] = -5;
    CHECK(hl_train_run(&o, &d, &res, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "type_weight[VIEW]: expected finite and >= 0, found -5"), "%s", err);
    hl_train_opts_default(&o);
    o.half_life_ms[1] = INFINITY;
    CHECK(hl_train_run(&o, &d, &res, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "half_life_ms[1]: expected finite and > 0, found inf"), "%s", err);
}

/* A FIFO as the model path is refused at once: opening it for reading
 * used to wait for a writer, so startup hung without a log line. The open
 * runs in a child the test kills after 5 s, so a regression fails, not hangs. */
static void test_refuse_fifo_and_directory(void)
{
    const char *fifo = tpath("model.fifo");
    pid_t pid;
    int status = 0;
    unlink(fifo);
    if (mkfifo(fifo, 0600) != 0) SKIP("mkfifo: %s", strerror(errno));
    if ((pid = fork()) == 0) {
        char err[256] = "";
        alarm(5);
        hl_model *m = hl_model_open(fifo, err, sizeof err);
        _exit(m == NULL && strstr(err, "not a regular file (a FIFO)") ? 0 : 1);
    }
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: %s",
           WIFSIGNALED(status) ? "hung (killed by the alarm)" : "no clear refusal");
    expect_refused(tmpdir, "not a regular file (a directory)");
    unlink(fifo);
}

/* The file's CRC (folded with PCLMULQDQ where the CPU has it, tables
 * elsewhere) equals the bit-at-a-time twin for files of many lengths, so
 * every tail length of the 64-byte folding is covered. */
static void test_crc_matches_plain(void)
{
    for (int n = 1; n <= 40; n += 3) {
        toy t;
        char err[256] = "";
        size_t len;
        uint8_t *b;
        uint32_t want;
        toy_init(&t, n, 1 + n % 5);
        t.lens[0] = 1 + (uint32_t)(n % 6);             /* vary the id bytes too */
        CHECKF(hl_model_write(tpath("crc_n.hlm"), &t.p, err, sizeof err) == 0, "%s", err);
        toy_free(&t);
        if ((b = slurp(tpath("crc_n.hlm"), &len)) == NULL) { CHECK(0); return; }
        memcpy(&want, b + OFF_CRC, 4);
        CHECKF(crc32_plain(b + 16, len - 16) == want, "n=%d len=%zu: crc %08x, plain %08x",
               n, len, want, crc32_plain(b + 16, len - 16));
        free(b);
    }
}

/* A small fuzz: random byte changes and truncations of a good file never
 * crash the reader (run under SAN=1 too). Without a CRC fix every change is
 * refused; with the CRC fixed the deeper checks run, and a file they accept
 * must still answer lookups for every row. */
static void test_random_damage(void)
{
    size_t len;
    uint8_t *good = slurp(good_path(), &len), *b;
    int refused = 0, accepted = 0;
    if (good == NULL) { CHECK(0); return; }
    b = malloc(len);
    for (int i = 0; i < 600; i++) {
        char err[512] = "";
        size_t n = len;
        hl_model *m;
        memcpy(b, good, len);
        for (int k = 0; k < 1 + i % 3; k++) {
            rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
            /* Half the changes hit the header and id sections, where the checks are. */
            size_t at = (size_t)(rng_state >> 20) % (i % 2 ? len : 1024);
            b[at] ^= (uint8_t)(1u << ((rng_state >> 8) & 7));
        }
        if (i % 10 == 9) n = (size_t)(rng_state >> 24) % len;
        if (i % 3 != 0 && n >= 16) fix_crc(b, n);
        spit(tpath("fuzz.hlm"), b, n);
        m = hl_model_open(tpath("fuzz.hlm"), err, sizeof err);
        if (m == NULL) {
            refused++;
            CHECKF(err[0] != '\0', "refused without a message");
            continue;
        }
        accepted++;
        CHECKF(i % 3 != 0 || memcmp(b, good, n) == 0, "damage %d accepted without a CRC fix", i);
        for (int32_t r = 0; r < hl_model_info_get(m)->n_items; r++) {
            uint32_t l;
            const char *id = hl_model_item_id(m, r, &l);
            CHECK(hl_model_item_find(m, id, l) == r);
        }
        hl_model_close(m);
    }
    printf("note: random damage: %d refused, %d accepted (finite float changes)\n",
           refused, accepted);
    free(b);
    free(good);
}

/* Times open (CRC + finite scan + index) on a 50k x 64 model. */
static void test_open_rate(void)
{
    toy t;
    char err[256] = "";
    struct timespec a, z;
    hl_model *m;
    size_t len;
    FILE *f;

    toy_init(&t, 50000, 64);
    CHECKF(hl_model_write(tpath("big.hlm"), &t.p, err, sizeof err) == 0, "%s", err);
    toy_free(&t);
    clock_gettime(CLOCK_MONOTONIC, &a);
    m = hl_model_open(tpath("big.hlm"), err, sizeof err);
    clock_gettime(CLOCK_MONOTONIC, &z);
    CHECKF(m != NULL, "%s", err);
    f = fopen(tpath("big.hlm"), "rb");
    fseek(f, 0, SEEK_END);
    len = (size_t)ftell(f);
    fclose(f);
    printf("note: hl_model_open %zu bytes in %.1f ms = %.2f GB/s\n", len,
           ((double)(z.tv_sec - a.tv_sec) * 1e3 + (double)(z.tv_nsec - a.tv_nsec) / 1e6),
           (double)len / ((double)(z.tv_sec - a.tv_sec) * 1e9 + (double)(z.tv_nsec - a.tv_nsec)));
    hl_model_close(m);
}

/* ---- the round trip for tests/integration/test_hlm.py ---- */

static int roundtrip_env(const char *in, const char *out)
{
    char err[512] = "";
    hl_model *m = hl_model_open(in, err, sizeof err);
    const hl_model_info *mi;
    hl_model_parts p;
    char **ids;
    uint32_t *lens;
    int rc;

    if (m == NULL) { printf("FAIL test_model.roundtrip_env: %s\n", err); return 1; }
    mi = hl_model_info_get(m);
    memset(&p, 0, sizeof p);
    p.info = *mi;
    ids = malloc((size_t)mi->n_items * sizeof *ids);
    lens = malloc((size_t)mi->n_items * sizeof *lens);
    for (int32_t r = 0; r < mi->n_items; r++)
        ids[r] = (char *)hl_model_item_id(m, r, &lens[r]);
    p.item_id = (const char *const *)ids;
    p.item_id_len = lens;
    p.e_in = hl_model_e_in(m); p.e_out = hl_model_e_out(m); p.bias = hl_model_bias(m);
    for (int l = 0; l < mi->n_layers; l++) {
        p.layer_w[l] = hl_model_layer_w(m, l);
        p.layer_b[l] = hl_model_layer_b(m, l);
    }
    rc = hl_model_write(out, &p, err, sizeof err);
    if (rc != 0) printf("FAIL test_model.roundtrip_env: %s\n", err);
    else printf("PASS test_model.roundtrip_env fingerprint=%016llx\n",
                (unsigned long long)mi->fingerprint);
    free(ids); free(lens);
    hl_model_close(m);
    return rc != 0;
}

/* A model file overwritten in place while a model read from it serves
 * (cp new.hlm model.hlm: open with O_TRUNC, then write): the served model
 * keeps the bytes it validated. Served straight from a mapping of the
 * file, it read the truncated pages with SIGBUS (the worker died at its
 * next refresh) or the new file's bytes under the old one's CRC. */
static void test_served_model_survives_overwrite_in_place(void)
{
    toy t;
    char err[256] = "";
    pid_t pid;
    int status = -1;
    toy_init(&t, 2000, 16);
    CHECKF(hl_model_write(tpath("inplace.hlm"), &t.p, err, sizeof err) == 0, "%s", err);
    hl_model *m = hl_model_open(tpath("inplace.hlm"), err, sizeof err);
    CHECKF(m != NULL, "%s", err);
    fflush(stdout);
    if (m != NULL && (pid = fork()) == 0) {
        int fd = open(tpath("inplace.hlm"), O_WRONLY | O_TRUNC);
        char junk[4096];
        memset(junk, 0x7f, sizeof junk);
        if (fd < 0 || write(fd, junk, sizeof junk) != (ssize_t)sizeof junk)
            _exit(2);
        close(fd);
        const hl_model_info *mi = hl_model_info_get(m);
        size_t n = (size_t)mi->n_items * (size_t)mi->dim;
        int same = memcmp(hl_model_e_out(m), t.e_out, n * sizeof(float)) == 0 &&
                   memcmp(hl_model_e_in(m), t.e_in, n * sizeof(float)) == 0;
        _exit(same ? 0 : 1);
    }
    if (m != NULL) {
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
        CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "reading the served model "
               "after its file was overwritten in place: %s", WIFSIGNALED(status) ?
               strsignal(WTERMSIG(status)) : WEXITSTATUS(status) == 1 ?
               "its vectors changed" : "could not overwrite the file");
    }
    hl_model_close(m);
    toy_free(&t);
    unlink(tpath("inplace.hlm"));
}

/* The hashes kept in files keep their values: an item key (history rings
 * in snapshots and changelog rows) is FNV-1a 64's published value, and
 * a .hlm index slot comes from the basis schemas/hlm.py starts from
 * (0x26771a5134c554aa is its fnv1a64(b"it0")). */
static void test_hash_values_fixed(void)
{
    CHECK(hl_item_key("a", 1) == 0xaf63dc4c8601ec8cull);
    CHECK(hl_item_key("foobar", 6) == 0x85944171f73967e8ull);
    CHECK(hl_fnv1a64(HL_FNV64_HLM, "it0", 3) == 0x26771a5134c554aaull);
    CHECK(hl_fnv1a32("foobar", 6) == 0xbf9cf968u);
}

int main(void)
{
    const char *in = getenv("HL_HLM_ROUNDTRIP_IN"), *out = getenv("HL_HLM_ROUNDTRIP_OUT");
    if (in && out) return roundtrip_env(in, out);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/hl_test_model.XXXXXX");
    if (mkdtemp(tmpdir) == NULL) { perror("mkdtemp"); return 1; }
    RUN(test_roundtrip);
    RUN(test_hash_values_fixed);
    RUN(test_item_find_misses);
    RUN(test_fingerprint);
    RUN(test_writer_refuses);
    RUN(test_crc_matches_plain);
    RUN(test_refuse_missing_and_short);
    RUN(test_refuse_truncated);
    RUN(test_refuse_magic_and_version);
    RUN(test_refuse_size_mismatch);
    RUN(test_refuse_crc);
    RUN(test_refuse_nan);
    RUN(test_refuse_huge);
    RUN(test_refuse_duplicate_id);
    RUN(test_refuse_bad_id_offsets);
    RUN(test_refuse_non_utf8);
    RUN(test_refuse_bad_weights);
    RUN(test_writer_and_trainer_refuse_bad_weights);
    RUN(test_refuse_fifo_and_directory);
    RUN(test_writers_do_not_share_tmp);
    RUN(test_random_damage);
    RUN(test_open_rate);
    RUN(test_served_model_survives_overwrite_in_place);
    if (t_n_failed == 0) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
        if (system(cmd) != 0) printf("note: could not remove %s\n", tmpdir);
    }
    TEST_EXIT();
}
