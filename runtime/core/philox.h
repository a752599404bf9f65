// Counter-based random numbers (Philox4x32-10) that are bit-identical on the host and on CUDA.
//
// A stream is (seed, offset): the value at position p of the stream is a pure function of
// (seed, offset + p), so any range of positions can be generated independently, in any order,
// by any backend. Position q uses Philox block floor(q / 4), lane q % 4, with the counter
// {lo32(block), hi32(block), 0, 0} and the key {lo32(seed), hi32(seed)}.
//
//   PhiloxUniform(seed, q)  in [0, 1), 24 random bits.
//   PhiloxNormal(seed, q)   standard normal by Box-Muller over the lane pairs (0,1) and (2,3).
//
// Bit-identity across backends holds because every float operation here is a single correctly
// rounded IEEE operation (explicit fmaf, division and sqrt; no library log/sin/cos, which differ
// between glibc and CUDA). Do not rewrite `fmaf(a, b, c)` as `a * b + c`: nvcc would contract it
// and the host would not.
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/core/bf16.h"
#include "runtime/core/host_device.h"

namespace smoe {

struct PhiloxBlock {
  uint32_t x[4];
};

MOE_HD uint32_t MulHiLo(uint32_t a, uint32_t b, uint32_t* hi) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  return a * b;
#else
  const uint64_t product = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
#endif
}

// The Philox4x32-10 bijection of a 128-bit counter under a 64-bit key.
MOE_HD PhiloxBlock Philox4x32Raw(PhiloxBlock counter, uint32_t k0, uint32_t k1) {
  uint32_t c0 = counter.x[0], c1 = counter.x[1], c2 = counter.x[2], c3 = counter.x[3];
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = MulHiLo(0xD2511F53u, c0, &hi0);
    const uint32_t lo1 = MulHiLo(0xCD9E8D57u, c2, &hi1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return PhiloxBlock{{c0, c1, c2, c3}};
}

MOE_HD PhiloxBlock Philox4x32(uint64_t seed, uint64_t block) {
  return Philox4x32Raw(
      PhiloxBlock{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u}},
      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

MOE_HD uint32_t PhiloxBits(uint64_t seed, uint64_t position) {
  return Philox4x32(seed, position >> 2).x[position & 3];
}

// [0, 1) from the top 24 bits.
MOE_HD float BitsToUniform(uint32_t bits) { return static_cast<float>(bits >> 8) * 0x1.0p-24f; }

MOE_HD float PhiloxUniform(uint64_t seed, uint64_t position) {
  return BitsToUniform(PhiloxBits(seed, position));
}

namespace internal {

// Natural log for x in (0, 1], from exponent bits and an atanh series in fmaf. |error| < 2e-7.
MOE_HD float PortableLog(float x) {
  // x = mantissa * 2^exponent with mantissa in [0.5, 1); x is normal here, never subnormal.
  const uint32_t bits = FloatBits(x);
  int exponent = static_cast<int>((bits >> 23) & 0xffu) - 126;
  float mantissa = FloatFromBits((bits & 0x807fffffu) | (126u << 23));
  if (mantissa < 0.70710678f) {
    mantissa = mantissa * 2.0f;
    exponent -= 1;
  }
  const float s = (mantissa - 1.0f) / (mantissa + 1.0f);
  const float s2 = s * s;
  float poly = fmaf(s2, 1.0f / 11.0f, 1.0f / 9.0f);
  poly = fmaf(poly, s2, 1.0f / 7.0f);
  poly = fmaf(poly, s2, 1.0f / 5.0f);
  poly = fmaf(poly, s2, 1.0f / 3.0f);
  poly = fmaf(poly, s2, 1.0f);
  const float log_mantissa = 2.0f * (s * poly);
  return fmaf(static_cast<float>(exponent), 0.69314718f, log_mantissa);
}

// sin and cos of angle a in [0, pi/2] by Taylor polynomials in fmaf. |error| < 1e-7.
MOE_HD void PortableSinCosQuarter(float a, float* sin_out, float* cos_out) {
  const float a2 = a * a;
  float s = fmaf(a2, -1.0f / 39916800.0f, 1.0f / 362880.0f);
  s = fmaf(s, a2, -1.0f / 5040.0f);
  s = fmaf(s, a2, 1.0f / 120.0f);
  s = fmaf(s, a2, -1.0f / 6.0f);
  s = fmaf(s, a2, 1.0f);
  float c = fmaf(a2, 1.0f / 479001600.0f, -1.0f / 3628800.0f);
  c = fmaf(c, a2, 1.0f / 40320.0f);
  c = fmaf(c, a2, -1.0f / 720.0f);
  c = fmaf(c, a2, 1.0f / 24.0f);
  c = fmaf(c, a2, -0.5f);
  c = fmaf(c, a2, 1.0f);
  *sin_out = s * a;
  *cos_out = c;
}

// sin and cos of 2*pi*u for u in [0, 1).
MOE_HD void PortableSinCosTurns(float u, float* sin_out, float* cos_out) {
  const float quarters = u * 4.0f;
  const int quadrant = static_cast<int>(quarters);
  const float angle = (quarters - static_cast<float>(quadrant)) * 1.57079633f;
  float s, c;
  PortableSinCosQuarter(angle, &s, &c);
  switch (quadrant & 3) {
    case 0:
      *sin_out = s;
      *cos_out = c;
      break;
    case 1:
      *sin_out = c;
      *cos_out = -s;
      break;
    case 2:
      *sin_out = -s;
      *cos_out = -c;
      break;
    default:
      *sin_out = -c;
      *cos_out = s;
      break;
  }
}

}  // namespace internal

MOE_HD float PhiloxNormal(uint64_t seed, uint64_t position) {
  const PhiloxBlock block = Philox4x32(seed, position >> 2);
  const int lane = static_cast<int>(position & 3);
  const int pair = lane & 2;
  // u1 in (0, 1] so the log is finite.
  const float u1 = static_cast<float>((block.x[pair] >> 8) + 1u) * 0x1.0p-24f;
  const float u2 = BitsToUniform(block.x[pair + 1]);
  const float radius = sqrtf(-2.0f * internal::PortableLog(u1));
  float s, c;
  internal::PortableSinCosTurns(u2, &s, &c);
  return (lane & 1) ? radius * s : radius * c;
}

}  // namespace smoe
