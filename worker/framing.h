/* framing.h - Confluent's wire framing (schemas/avro.md): byte 0 is the
 * magic 0, bytes 1..4 the writer schema id, big-endian, then the Avro
 * binary body. The one reader and writer of that header, for the events'
 * and lists' codec (codec.c), the item updates' (codec_item.c) and the
 * records that wait for their schema id (park.c); and the Avro long both
 * decoders read. No state: any thread. */
#ifndef HL_FRAMING_H
#define HL_FRAMING_H

#include <stddef.h>
#include <stdint.h>

#define HL_FRAME_HEADER_LEN 5

typedef enum {
    HL_FRAME_OK = 0,
    HL_FRAME_TOO_SHORT,         /* fewer than HL_FRAME_HEADER_LEN bytes */
    HL_FRAME_BAD_MAGIC          /* byte 0 is not 0 */
} hl_frame_result;

/* Reads the header at the start of buf (len bytes): HL_FRAME_OK and *id,
 * or why not, with a sentence in detail (may be NULL). The body starts at
 * buf + HL_FRAME_HEADER_LEN. */
hl_frame_result hl_frame_read(const void *buf, size_t len, int32_t *id,
                              char *detail, size_t detaillen);

/* The header of id, written into h. */
void hl_frame_write(uint8_t h[HL_FRAME_HEADER_LEN], int32_t id);

typedef enum {
    HL_VARINT_OK = 0,
    HL_VARINT_TRUNCATED,        /* the bytes end inside it */
    HL_VARINT_TOO_LONG          /* more than 10 bytes */
} hl_varint_result;

/* An Avro long at *p (a zigzag varint of at most 10 bytes), never read
 * past end; *p moves past it. Inline: the events' decoder reads several
 * per record. */
static inline hl_varint_result hl_avro_read_long(const uint8_t **p, const uint8_t *end,
                                                 int64_t *v)
{
    uint64_t u = 0;
    for (int i = 0; ; i++) {
        if (i == 10)
            return HL_VARINT_TOO_LONG;
        if (*p == end)
            return HL_VARINT_TRUNCATED;
        uint8_t b = *(*p)++;
        u |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80))
            break;
    }
    *v = (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
    return HL_VARINT_OK;
}

#endif
