// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI, ext4 and LevelDB.
// Table-driven, one byte at a time; absl 20220623 has no CRC. Crc32c("123456789") == 0xE3069283.
#pragma once

#include <cstddef>
#include <cstdint>

namespace smoe {

// The CRC-32C of `size` bytes at `data`, continuing from `crc` (the CRC of the bytes before them;
// 0 to start), so Crc32c(b, nb, Crc32c(a, na)) == Crc32c(a followed by b).
uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);

}  // namespace smoe
