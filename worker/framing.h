/* framing.h - Confluent's wire framing (schemas/avro.md): byte 0 is the
 * magic 0, bytes 1..4 the writer schema id, big-endian, then the Avro
 * binary body. The one reader and writer of that header, for the events'
 * and lists' codec (codec.c), the item updates' (codec_item.c) and the
 * records that wait for their schema id (park.c). No state: any thread. */
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

#endif
