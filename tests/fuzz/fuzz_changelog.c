/* fuzz_changelog.c - libFuzzer target for the changelog records a restore
 * reads back at a hand-over (worker/changelog_restore.c).
 *
 * Anyone who can produce to the changelog topic (or a writer of another
 * version, or a broker bug) decides the bytes a new owner restores from:
 * keys, values and the halflife.epoch and halflife.model headers. Each
 * input is a sequence of records in a small framing (below), applied with
 * hl_changelog_replay(): what hl_changelog_restore() does with each record
 * it polls, then the meta and the models held, without a broker. The
 * table (dim 4, three heads, history 3, at most 64 users) is then walked:
 * a crash, a leak, a sanitizer report, a live row whose view does not
 * find its own user, more rows than users, or counts that do not add up
 * (every record is a row, tombstone, checkpoint, stale or bad one, or was
 * skipped after an usurper) is a bug.
 *
 * Rows naming model 00000000000000cd are of another shape (dim 2, one
 * head), whose model the reshape hook has: decoded in that shape and
 * migrated; rows naming any other model than 7 are of a model not kept:
 * rebuilt from the ring when the table's shape does not fit them (the
 * ring-only decode reads the bytes' lengths). Seeds hold both.
 *
 * Framing: byte 0 says whether a base is given (bit 0; its epoch is byte 1)
 * then records: flags (bit 0 an epoch header, bit 1 a model header, bit 2
 * a tombstone, bit 3 the checkpoint key, bit 4 a format header, read
 * after the model's), then for each present part a
 * length byte (two, little-endian, for the value) and the bytes.
 *
 * With HL_FUZZ_SEEDS=DIR set, LLVMFuzzerInitialize writes seeds into DIR:
 * the rows, tombstones and checkpoints a real flush writes (encoded by
 * the writer's own functions), in epochs, with a fenced writer's late
 * records and a base. */
#include "changelog_internal.h"
#include "migrate.h"
#include "snapshot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DIM      4
#define HISTORY  3
#define MAX_RECS 256

#define OTHER_FP 0xcdULL    /* the model of another shape the hook has */
#define OTHER_DIM 2

static hl_changelog *cl;
static hl_table_opts topts;
static hl_model *cur_m, *other_m;   /* the table's model (7's shape), and cd's */
static const float tw[HL_N_TYPES] = {1, 1, 1, 1, 1, 1};

/* hl_changelog_opts.reshape: cd's migration, a rebuild for any other. */
static int reshape(void *arg, uint64_t fp, hl_changelog_reshape *out)
{
    char err[256];
    (void)arg;
    memset(out, 0, sizeof *out);
    if (fp == OTHER_FP) {
        out->mg = hl_migration_create_any(other_m, cur_m, tw, err, sizeof err);
        out->n_heads = 1;
        out->dim = OTHER_DIM;
        memcpy(out->half_life_ms, hl_model_info_get(other_m)->half_life_ms,
               sizeof out->half_life_ms);
    } else {
        out->mg = hl_migration_rebuild(cur_m, tw, err, sizeof err);
        out->rebuilt = 1;
    }
    return out->mg ? 0 : HL_ENOMEM;
}

/* A model of dim x heads over ids "it0".."it7" (written to path, opened). */
static hl_model *small_model(const char *path, int dim, int heads)
{
    hl_model_parts p;
    memset(&p, 0, sizeof p);
    hl_model_info *mi = &p.info;
    mi->dim = dim; mi->n_heads = heads; mi->n_items = 8; mi->n_layers = 1;
    mi->layer_out[0] = dim;
    for (int h = 0; h < heads; h++) mi->half_life_ms[h] = hl_default_half_life_ms[h];
    for (int t = 0; t < HL_N_TYPES; t++) mi->type_weight[t] = 1.0f;
    snprintf(mi->version, sizeof mi->version, "fuzz%d", dim);
    float ein[8 * 4], bias[8] = {0}, w[4 * 4 * 5] = {0}, b[4] = {0};
    char ids[8][4];
    const char *idp[8];
    uint32_t lens[8];
    for (int i = 0; i < 8; i++) {
        lens[i] = (uint32_t)snprintf(ids[i], sizeof ids[i], "it%d", i);
        idp[i] = ids[i];
        for (int j = 0; j < dim; j++) ein[i * dim + j] = (float)((i * 3 + j * 5) % 7) - 3.0f;
    }
    p.item_id = idp; p.item_id_len = lens;
    p.e_in = ein; p.e_out = ein; p.bias = bias; p.layer_w[0] = w; p.layer_b[0] = b;
    char err[256];
    hl_model *m = NULL;
    if (hl_model_write(path, &p, err, sizeof err) == 0)
        m = hl_model_open(path, err, sizeof err);
    if (m == NULL) {
        fprintf(stderr, "fuzz_changelog: model %s: %s\n", path, err);
        abort();
    }
    unlink(path);       /* mapped: the file is no longer needed */
    return m;
}

/* ---- the framing ---- */

typedef struct reader {
    const uint8_t *p;
    size_t         n;
} reader;

static int take(reader *r, size_t len, const void **out, size_t *out_len)
{
    if (len > r->n) return -1;
    *out = r->p;
    *out_len = len;
    r->p += len;
    r->n -= len;
    return 0;
}

static int take_len(reader *r, int bytes, size_t *len)
{
    if (r->n < (size_t)bytes) return -1;
    *len = r->p[0] | (bytes == 2 ? (size_t)r->p[1] << 8 : 0);
    r->p += bytes;
    r->n -= bytes;
    return 0;
}

/* The next record; -1 at the end of the input. */
static int next_rec(reader *r, hl_changelog_rec *rec, int64_t offset)
{
    size_t len;
    memset(rec, 0, sizeof *rec);
    rec->offset = offset;
    if (r->n < 1) return -1;
    uint8_t flags = r->p[0];
    r->p++;
    r->n--;
    if (flags & 8) {
        rec->key = cl->ck_key;
        rec->key_len = sizeof cl->ck_key;
    } else if (take_len(r, 1, &len) != 0 || take(r, len, &rec->key, &rec->key_len) != 0)
        return -1;
    if ((flags & 1) && (take_len(r, 1, &len) != 0 || take(r, len, &rec->epoch, &rec->epoch_len) != 0))
        return -1;
    if ((flags & 2) && (take_len(r, 1, &len) != 0 || take(r, len, &rec->model, &rec->model_len) != 0))
        return -1;
    if ((flags & 16) && (take_len(r, 1, &len) != 0 || take(r, len, &rec->format, &rec->format_len) != 0))
        return -1;
    if (!(flags & 4) && (take_len(r, 2, &len) != 0 || take(r, len, &rec->value, &rec->len) != 0))
        return -1;
    if (!(flags & 4) && rec->value == NULL)
        rec->value = "";                  /* an empty value is not a tombstone */
    return 0;
}

/* ---- one input ---- */

static void check_table(const hl_table *tbl, const hl_changelog_restored *out)
{
    hl_table_stats st;
    uint64_t live = 0;
    hl_table_stats_get(tbl, &st);
    for (uint32_t r = 0; r < hl_table_row_limit(tbl); r++) {
        hl_row_view v;
        if (!hl_table_row_live(tbl, r)) continue;
        live++;
        hl_table_view(tbl, r, &v);
        if (v.user_len < 1 || v.user_len > HL_MAX_ID_LEN || v.n_hist > v.history ||
            hl_table_find(tbl, v.user, v.user_len) != (int64_t)r)
            abort();
    }
    if (live != st.users || live > out->n_rows) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static hl_changelog_rec recs[MAX_RECS];
    reader r = {data, size};
    hl_changelog_base base = {0}, *bp = NULL;
    hl_changelog_restored out;
    char err[512];
    size_t n = 0;

    if (size < 2) return 0;
    if (data[0] & 1) {
        base = (hl_changelog_base){.next_offset = 5, .changelog_offset = 0,
                                   .changelog_epoch = data[1]};
        bp = &base;
    }
    r.p += 2;
    r.n -= 2;
    while (n < MAX_RECS && next_rec(&r, &recs[n], (int64_t)n) == 0)
        n++;
    hl_table *tbl = hl_table_create(&topts, err, sizeof err);
    if (tbl == NULL) abort();
    err[0] = '\0';
    int rc = hl_changelog_replay(cl, tbl, bp, recs, n, &out, err, sizeof err);
    if (rc != 0 && (err[0] == '\0' || rc != HL_ENOENT)) abort();
    if (rc == 0) {
        if (out.n_rows + out.n_tombstones + out.n_checkpoints + out.n_stale + out.n_bad !=
            out.n_records || out.n_migrated + out.n_rebuilt > out.n_rows)
            abort();
        check_table(tbl, &out);
    }
    hl_table_destroy(tbl);
    return 0;
}

/* ---- seeds ---- */

typedef struct seed {
    uint8_t buf[1 << 16];
    size_t  n;
} seed;

static void put(seed *s, const void *p, size_t len)
{
    if (s->n + len > sizeof s->buf) abort();
    memcpy(s->buf + s->n, p, len);
    s->n += len;
}

static void put_rec(seed *s, const char *key, int64_t epoch, const char *model,
                    const void *value, size_t len, int tomb)
{
    char ep[24];
    uint8_t flags = (uint8_t)((epoch >= 0) | (model ? 2 : 0) | (tomb ? 4 : 0) | (key ? 0 : 8));
    put(s, &flags, 1);
    if (key) { uint8_t k = (uint8_t)strlen(key); put(s, &k, 1); put(s, key, k); }
    if (epoch >= 0) {
        uint8_t k = (uint8_t)snprintf(ep, sizeof ep, "%lld", (long long)epoch);
        put(s, &k, 1);
        put(s, ep, k);
    }
    if (model) { uint8_t k = (uint8_t)strlen(model); put(s, &k, 1); put(s, model, k); }
    if (!tomb) { uint8_t l[2] = {(uint8_t)len, (uint8_t)(len >> 8)}; put(s, l, 2); put(s, value, len); }
}

static void put_ck(seed *s, int64_t epoch, int64_t offset)
{
    unsigned char ck[CK_BYTES];
    hl_changelog_ck c = {.offset = offset, .fingerprint = 7, .epoch = epoch,
                         .meta = {.newest_ts_ms = 9000, .active_seq = 12}};
    put_rec(s, NULL, epoch, NULL, ck, hl_changelog_ck_encode(ck, &c), 0);
}

/* The rows of a small table of dim (its heads), as a flush writes them,
 * into s under epoch. */
static void put_rows_as(seed *s, hl_table *tbl, int64_t epoch, int dim, const char *model)
{
    int heads = hl_table_opts_get(tbl)->decay.n_heads;
    unsigned char *row = malloc(hl_snapshot_row_max(heads, dim, HISTORY));
    for (uint32_t r = 0; r < hl_table_row_limit(tbl); r++) {
        hl_row_view v;
        char key[HL_MAX_ID_LEN + 1];
        if (!hl_table_row_live(tbl, r)) continue;
        hl_table_view(tbl, r, &v);
        size_t len = hl_snapshot_row_encode(row, heads, dim, r, &v);
        snprintf(key, sizeof key, "%.*s", (int)v.user_len, v.user);
        put_rec(s, key, epoch, model, row, len, 0);
    }
    free(row);
}

static void put_rows(seed *s, hl_table *tbl, int64_t epoch, const char *model)
{
    put_rows_as(s, tbl, epoch, DIM, model);
}

static void write_seed(const char *dir, const char *name, const seed *s)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(s->buf, 1, s->n, f) != s->n || fclose(f) != 0) perror(path);
}

static void write_seeds(const char *dir)
{
    static seed s;
    char err[256];
    float e_in[8 * DIM];
    for (int i = 0; i < 8 * DIM; i++) e_in[i] = (float)(i % 7) - 3.0f;
    hl_table *tbl = hl_table_create(&topts, err, sizeof err);
    for (int i = 0; i < 20; i++) {
        char user[8];
        snprintf(user, sizeof user, "u%d", i % 5);
        hl_event ev = {.user = user, .user_len = (uint32_t)strlen(user), .item = i % 9 == 8 ? -1 : i % 8,
                       .type = (uint8_t)(i % HL_N_TYPES), .w = 1.0f + (float)i,
                       .ts_ms = 1000 * i, .offset = i};
        hl_table_apply(tbl, &ev, 1, e_in, 8, NULL);
    }
    /* A claim, a flush, a tombstone, its checkpoint. */
    s.n = 0;
    put(&s, "\0\0", 2);
    put_ck(&s, 1, -1);
    put_rows(&s, tbl, 1, "0000000000000007");
    put_rec(&s, "u3", 1, NULL, NULL, 0, 1);
    put_ck(&s, 1, 20);
    write_seed(dir, "flush", &s);
    /* Then a new owner's claim and flush, and the fenced owner's late rows. */
    put_ck(&s, 2, 20);
    put_rows(&s, tbl, 2, "00000000000000ab");
    put_rows(&s, tbl, 1, "0000000000000007");
    write_seed(dir, "fenced", &s);
    /* The same read on top of a base of epoch 1. */
    s.buf[0] = 1;
    s.buf[1] = 1;
    write_seed(dir, "base", &s);
    hl_table_destroy(tbl);
    /* Rows of another shape: cd's (kept), then ee's (not kept). */
    hl_table_opts oo = topts;
    hl_decay_init(&oo.decay, 1, OTHER_DIM, hl_default_half_life_ms, err, sizeof err);
    tbl = hl_table_create(&oo, err, sizeof err);
    for (int i = 0; i < 12; i++) {
        char user[8];
        snprintf(user, sizeof user, "v%d", i % 4);
        hl_event ev = {.user = user, .user_len = (uint32_t)strlen(user), .item = i % 8,
                       .item_key = hl_item_key(user, 1), .w = 1.0f, .ts_ms = 1000 * i,
                       .offset = i};
        hl_table_apply(tbl, &ev, 1, hl_model_e_in(other_m), 8, NULL);
    }
    s.n = 0;
    put(&s, "\0\0", 2);
    put_ck(&s, 1, -1);
    put_rows_as(&s, tbl, 1, OTHER_DIM, "00000000000000cd");
    put_rows_as(&s, tbl, 1, OTHER_DIM, "00000000000000ee");
    write_seed(dir, "reshape", &s);
    hl_table_destroy(tbl);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[256];
    memset(&topts, 0, sizeof topts);
    hl_decay_init(&topts.decay, HL_DEFAULT_HEADS, DIM, hl_default_half_life_ms, err, sizeof err);
    topts.history = HISTORY;
    topts.max_users = 64;
    topts.expected_users = 8;
    char path[64];
    snprintf(path, sizeof path, "/tmp/fuzz_changelog_%d_a.hlm", (int)getpid());
    cur_m = small_model(path, DIM, HL_DEFAULT_HEADS);
    snprintf(path, sizeof path, "/tmp/fuzz_changelog_%d_b.hlm", (int)getpid());
    other_m = small_model(path, OTHER_DIM, 1);
    hl_changelog_opts o = {.topic = "fuzz-state", .input_topic = "fuzz", .topts = &topts,
                           .model_fingerprint = 7, .reg = hl_metrics_create(),
                           .reshape = reshape};
    hl_log_set_level(HL_LOG_ERROR);           /* quiet: bad records are the point */
    if ((cl = hl_changelog_create_offline(&o, err, sizeof err)) == NULL) {
        fprintf(stderr, "fuzz_changelog: %s\n", err);
        abort();
    }
    const char *dir = getenv("HL_FUZZ_SEEDS");
    if (dir && *dir)
        write_seeds(dir);
    return 0;
}
