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
 * Framing: byte 0 says whether a base is given (bit 0; its epoch is byte 1)
 * then records: flags (bit 0 an epoch header, bit 1 a model header, bit 2
 * a tombstone, bit 3 the checkpoint key), then for each present part a
 * length byte (two, little-endian, for the value) and the bytes.
 *
 * With HL_FUZZ_SEEDS=DIR set, LLVMFuzzerInitialize writes seeds into DIR:
 * the rows, tombstones and checkpoints a real flush writes (encoded by
 * the writer's own functions), in epochs, with a fenced writer's late
 * records and a base. */
#include "changelog_internal.h"
#include "snapshot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIM      4
#define HISTORY  3
#define MAX_RECS 256

static hl_changelog *cl;
static hl_table_opts topts;

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
            out.n_records)
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

/* The rows of a small table, as a flush writes them, into s under epoch. */
static void put_rows(seed *s, hl_table *tbl, int64_t epoch, const char *model)
{
    unsigned char *row = malloc(hl_snapshot_row_max(topts.decay.n_heads, DIM, HISTORY));
    for (uint32_t r = 0; r < hl_table_row_limit(tbl); r++) {
        hl_row_view v;
        char key[HL_MAX_ID_LEN + 1];
        if (!hl_table_row_live(tbl, r)) continue;
        hl_table_view(tbl, r, &v);
        size_t len = hl_snapshot_row_encode(row, topts.decay.n_heads, DIM, r, &v);
        snprintf(key, sizeof key, "%.*s", (int)v.user_len, v.user);
        put_rec(s, key, epoch, model, row, len, 0);
    }
    free(row);
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
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[256];
    memset(&topts, 0, sizeof topts);
    hl_decay_init(&topts.decay, HL_DEFAULT_HEADS, DIM, hl_default_half_life_ms, err, sizeof err);
    topts.history = HISTORY;
    topts.max_users = 64;
    topts.expected_users = 8;
    hl_changelog_opts o = {.topic = "fuzz-state", .input_topic = "fuzz", .topts = &topts,
                           .model_fingerprint = 7, .reg = hl_metrics_create()};
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
