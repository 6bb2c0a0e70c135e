// CRC-32C (Castagnoli), the checksum of every cache shard.
//
// Standard parameters (reflected polynomial 0x82F63B78, init and final xor 0xFFFFFFFF), so the
// value equals that of the `crc32c` Python package. Uses the SSE4.2 crc32 instruction where the
// CPU has it (about 8 bytes per 3 cycles) and a table otherwise.
#pragma once

#include <cstddef>
#include <cstdint>

namespace klas {

// Extends `crc` (a finished CRC-32C of earlier bytes, 0 for none) over `size` bytes at `data`.
uint32_t crc32c_extend(uint32_t crc, const void* data, size_t size);

inline uint32_t crc32c(const void* data, size_t size) { return crc32c_extend(0, data, size); }

}  // namespace klas
