/* framing.c - Confluent's five-byte header (the contract is framing.h).
 * Kept apart so the event codec, the item codec and the parking of
 * records read it the same way and name its faults the same words. */
#include "framing.h"

#include <stdio.h>

hl_frame_result hl_frame_read(const void *buf, size_t len, int32_t *id,
                              char *detail, size_t detaillen)
{
    const uint8_t *p = buf;
    if (p == NULL || len < HL_FRAME_HEADER_LEN) {
        if (detail != NULL && detaillen > 0)
            snprintf(detail, detaillen, "%zu bytes, Confluent framing needs at least %d",
                     p == NULL ? (size_t)0 : len, HL_FRAME_HEADER_LEN);
        return HL_FRAME_TOO_SHORT;
    }
    if (p[0] != 0) {
        if (detail != NULL && detaillen > 0)
            snprintf(detail, detaillen, "magic byte is %u, not 0", (unsigned)p[0]);
        return HL_FRAME_BAD_MAGIC;
    }
    *id = (int32_t)((uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 |
                    (uint32_t)p[4]);
    return HL_FRAME_OK;
}

void hl_frame_write(uint8_t h[HL_FRAME_HEADER_LEN], int32_t id)
{
    uint32_t u = (uint32_t)id;
    h[0] = 0;
    h[1] = (uint8_t)(u >> 24);
    h[2] = (uint8_t)(u >> 16);
    h[3] = (uint8_t)(u >> 8);
    h[4] = (uint8_t)u;
}
