// bfloat16 storage type with conversions that are bit-identical on the host and on CUDA devices.
//
// float -> bf16 rounds to nearest, ties to even; NaN stays NaN (quiet, sign kept); values that
// round past the largest finite bf16 become infinity, as IEEE rounding requires.
// bf16 -> float is exact.
#pragma once

#include <cstdint>
#include <cstring>

#include "runtime/core/host_device.h"

namespace smoe {

struct BF16 {
  uint16_t bits;
};
static_assert(sizeof(BF16) == 2);

MOE_HD uint32_t FloatBits(float value) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
#endif
}

MOE_HD float FloatFromBits(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
#endif
}

MOE_HD BF16 FloatToBF16(float value) {
  const uint32_t bits = FloatBits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep the sign, force a quiet payload.
    return BF16{static_cast<uint16_t>((bits >> 16) | 0x0040u)};
  }
  const uint32_t lsb = (bits >> 16) & 1u;
  const uint32_t rounded = bits + 0x7fffu + lsb;
  return BF16{static_cast<uint16_t>(rounded >> 16)};
}

MOE_HD float BF16ToFloat(BF16 value) {
  return FloatFromBits(static_cast<uint32_t>(value.bits) << 16);
}

// Rounds a float to the nearest bf16 value and returns it as a float.
MOE_HD float RoundToBF16(float value) { return BF16ToFloat(FloatToBF16(value)); }

}  // namespace smoe
