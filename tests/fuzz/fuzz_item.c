/* fuzz_item.c - libFuzzer target for the ItemUpdate decoder
 * (worker/codec_item.c).
 *
 * The first byte picks the framing and how many of the next bytes are the
 * key (so bad keys are reached too); the rest is the value. Whatever
 * decodes must re-encode and decode to the same update, with an id of
 * 1..256 bytes equal to the key, finite vectors of exactly the dim and an
 * expiry inside the accepted range: a crash, a sanitizer report or any
 * other outcome is a bug. The value is copied into a buffer of exactly its
 * size, so a read past its end is reported. */
#include "codec_item.h"

#include <math.h>
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
