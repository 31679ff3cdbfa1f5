/* fuzz_item.c - libFuzzer target for the ItemUpdate decoder
 * (worker/codec_item.c).
 *
 * The first byte picks the framing and how many of the next bytes are the
 * key (so bad keys are reached too); the rest is the value. Whatever
 * decodes must re-encode and decode to the same update, with an id of
 * 1..256 bytes equal to the key, finite vectors of exactly the dim and an
 * expiry inside the accepted range: a crash, a sanitizer report or any
 * other outcome is a bug. The value is copied into a buffer of exactly its
 * size, so a read past its end is reported.
 *
 * With HL_FUZZ_SEEDS=DIR set (tests/integration/fuzz.sh), LLVMFuzzerInitialize
 * writes seeds into DIR first, in both framings: an operator's record, a
 * fold-in record under its fold-in key (0xFF "foldin:" id, the key only
 * workers write) and under its item_id (as workers wrote before that key),
 * a fold-in tombstone, and the fold-in prefix with no id. Without them the
 * fuzzer has to guess eight key bytes before it reaches the fold-in paths. */
#include "codec_item.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIM 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_round_trip(const hl_item_codec_opts *o, const hl_item_update *u,
                             const char *key, size_t key_len)
{
    uint8_t buf[1024];
    float vec[2 * DIM];
    hl_item_update v;
    size_t skip = u->foldin_key ? HL_ITEM_FOLDIN_KEY_LEN : 0;   /* the id follows it */
    if (u->id_len < 1 || u->id_len > HL_MAX_ID_LEN || u->id_len + skip != key_len ||
        memcmp(u->id, key + skip, u->id_len) != 0 ||
        (skip && (memcmp(key, HL_ITEM_FOLDIN_KEY, skip) != 0 ||
                  (!u->tombstone && u->foldin_events < 1))))
        abort();
    if (u->expires_at_ms != HL_CATALOGUE_NO_EXPIRY &&
        (u->expires_at_ms < o->min_ts_ms || u->expires_at_ms > o->max_ts_ms))
        abort();
    for (int d = 0; u->e_out != NULL && d < DIM; d++)
        if (!isfinite(u->e_in[d]) || !isfinite(u->e_out[d]))
            abort();
    if (u->tombstone)
        return;
    int n = hl_item_encode(o, u, buf, sizeof buf);
    if (n < 0 || hl_item_decode(o, key, key_len, buf, (size_t)n, vec, &v, NULL, 0) != HL_ITEM_OK)
        abort();
    if (v.available != u->available || v.expires_at_ms != u->expires_at_ms ||
        v.foldin_events != u->foldin_events || v.foldin_key != u->foldin_key ||
        (v.e_out == NULL) != (u->e_out == NULL) ||
        (v.e_out && (memcmp(v.e_out, u->e_out, sizeof(float) * DIM) != 0 ||
                     memcmp(v.e_in, u->e_in, sizeof(float) * DIM) != 0 || v.bias != u->bias)))
        abort();
}

/* One input: the byte saying framing and key length, the key, the value. */
static void write_seed(const char *dir, int n, int raw, const char *key, size_t key_len,
                       const uint8_t *val, size_t len)
{
    char path[4096];
    uint8_t head = (uint8_t)(key_len << 1 | (raw ? 1 : 0));
    snprintf(path, sizeof path, "%s/seed-item-%d", dir, n);
    FILE *fp = fopen(path, "wb");
    if (fp == NULL || fwrite(&head, 1, 1, fp) != 1 || fwrite(key, 1, key_len, fp) != key_len ||
        (len && fwrite(val, 1, len, fp) != len)) {
        fprintf(stderr, "fuzz_item: cannot write seed %s\n", path);
        abort();
    }
    fclose(fp);
}

static void write_seeds(const char *dir)
{
    float e_in[DIM], e_out[DIM];
    for (int d = 0; d < DIM; d++) { e_in[d] = 0.25f * (float)d - 1.0f; e_out[d] = 1.0f - 0.5f * (float)d; }
    hl_item_update op = {.id = "item-7", .id_len = 6, .available = 1,
                         .expires_at_ms = HL_CATALOGUE_NO_EXPIRY, .e_in = e_in,
                         .e_out = e_out, .bias = 0.5f};
    hl_item_update fold = op;
    fold.foldin_events = 40;
    char fkey[HL_ITEM_KEY_MAX];
    uint32_t fkey_len = hl_item_foldin_key(op.id, op.id_len, fkey);   /* fits: key_len < 128 */
    uint8_t buf[1024];
    int n = 0;
    for (int raw = 0; raw < 2; raw++) {
        hl_item_codec_opts o = {.framing = raw ? HL_FRAMING_RAW : HL_FRAMING_CONFLUENT,
                                .schema_id = 3, .dim = DIM, .min_ts_ms = 0,
                                .max_ts_ms = 4102444800000};
        int len = hl_item_encode(&o, &op, buf, sizeof buf);
        if (len < 0) abort();
        write_seed(dir, n++, raw, op.id, op.id_len, buf, (size_t)len);
        if ((len = hl_item_encode(&o, &fold, buf, sizeof buf)) < 0) abort();
        write_seed(dir, n++, raw, fkey, fkey_len, buf, (size_t)len);
        write_seed(dir, n++, raw, op.id, op.id_len, buf, (size_t)len);
        write_seed(dir, n++, raw, fkey, HL_ITEM_FOLDIN_KEY_LEN, buf, (size_t)len);
        write_seed(dir, n++, raw, fkey, fkey_len, NULL, 0);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *dir = getenv("HL_FUZZ_SEEDS");
    if (dir && *dir)
        write_seeds(dir);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    hl_item_codec_opts o = {.framing = (data[0] & 1) ? HL_FRAMING_RAW : HL_FRAMING_CONFLUENT,
                            .schema_id = 3, .dim = DIM, .min_ts_ms = 0,
                            .max_ts_ms = 4102444800000};
    size_t key_len = (size_t)(data[0] >> 1) < size - 1 ? (size_t)(data[0] >> 1) : size - 1;
    char *key = malloc(key_len ? key_len : 1);
    uint8_t *val = malloc(size - 1 - key_len ? size - 1 - key_len : 1);
    float vec[2 * DIM];
    hl_item_update u;
    memcpy(key, data + 1, key_len);
    memcpy(val, data + 1 + key_len, size - 1 - key_len);
    if (hl_item_decode(&o, key, key_len, val, size - 1 - key_len, vec, &u, NULL, 0) == HL_ITEM_OK)
        check_round_trip(&o, &u, key, key_len);
    free(key);
    free(val);
    return 0;
}
