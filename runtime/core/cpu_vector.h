// Vector code on the CPU, chosen at run time (issue 14).
//
// MOE_CPU_CLONES before a function definition makes GCC compile it three times, for x86-64-v4
// (AVX-512), x86-64-v3 (AVX2 + FMA) and the x86-64 baseline, and pick one when the program loads
// (ifunc), from the CPU it runs on. So one binary is correct on every x86-64 machine and fast on
// the new ones, whatever -march it was built with. Put it on the hot loops of CPU ops (loops
// written so that the compiler vectorizes them: no calls into libm but sqrt, no branches the
// compiler cannot turn into selects). Other compilers and architectures get one plain version.
//
// Results: IEEE arithmetic and fmaf are exact whatever the clone, but the compiler may contract
// a * b + c into an FMA in the v3/v4 clones only, so low bits can differ between machines; on
// one machine a run is repeatable bit for bit.
//
// ExpF is exp for f32 in such a form (no libm call, no branch).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__)
#define MOE_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MOE_CPU_CLONES
#endif

namespace smoe {

// exp(x), f32: relative error below 3e-7 (a few ulp) for x in [-87.33, 88.72]; 0 below (where
// exp(x) < FLT_MIN, a subnormal), +inf above, NaN for NaN. Cody-Waite reduction x = n ln2 + r
// and a degree-6 polynomial for exp(r) (the Cephes coefficients), then 2^n by the exponent bits.
inline float ExpF(float x) {
  constexpr float kMin = -87.33654475f;  // ln(FLT_MIN)
  constexpr float kMax = 88.72283906f;   // ln(FLT_MAX)
  // NaN takes the kMin path (its result is replaced at the end): the int conversion below must
  // never see a NaN.
  const float xc = !(x >= kMin) ? kMin : (x > kMax ? kMax : x);
  // n = round(xc / ln 2) by the 1.5 * 2^23 trick (exact for |n| < 2^22), at most 127 so that
  // 2^n is a normal float; r then reaches ln 2 at the very top, where the polynomial still holds.
  float n = (xc * 1.44269504089f + 12582912.0f) - 12582912.0f;
  n = n > 127.0f ? 127.0f : n;
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = (p * r) * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  float y = er * scale;
  y = x < kMin ? 0.0f : y;
  y = x > kMax ? std::numeric_limits<float>::infinity() : y;
  return x != x ? x : y;
}

// 1 / (1 + exp(-x)) through ExpF.
inline float SigmoidF(float x) { return 1.0f / (1.0f + ExpF(-x)); }

// Sums kept in 8 double lanes (element i in lane i % 8, so loops over them vectorize), added
// pairwise in a fixed order: the same bits on every run and every thread count.
inline double SumLanes(const double (&lanes)[8]) {
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
         ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

// y[i] = ExpF(x[i] - shift) for i < n (y may be x); returns the sum of the y, in double lanes.
// Cloned like the hot loops above (cpu_vector.cc): the softmaxes' row pass.
double ExpShiftedSum(const float* x, float shift, int64_t n, float* y);

}  // namespace smoe
