/* crc32c.h - CRC-32C (Castagnoli), the checksum of snapshot files.
 *
 * The iSCSI/ext4 CRC: reflected polynomial 0x82F63B78, initial value and
 * final xor 0xFFFFFFFF, so hl_crc32c(0, "123456789", 9) == 0xE3069283.
 * The running value is the finished CRC of the bytes so far, so a CRC can be
 * built piece by piece: crc = hl_crc32c(crc, next, len) starting from 0. */
#ifndef HL_CRC32C_H
#define HL_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Uses the SSE4.2 crc32 instruction when the CPU has it (checked at run
 * time, so the build needs no -march), the table otherwise. */
uint32_t hl_crc32c(uint32_t crc, const void *buf, size_t len);

/* The table-driven twin: same results everywhere, a few times slower. */
uint32_t hl_crc32c_sw(uint32_t crc, const void *buf, size_t len);

/* 1 if hl_crc32c() uses the CPU instruction on this machine. */
int hl_crc32c_hw(void);

#endif
