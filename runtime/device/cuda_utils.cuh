// Small device helpers shared by the CUDA kernels (include only from .cu sources): fp32 loads and
// stores of the storage types, warp reductions, and grid sizing.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "runtime/core/bf16.h"

namespace smoe::cuda_utils {

constexpr unsigned kFullMask = 0xffffffffu;

// Kernels compute in fp32 whatever the storage type; each stored value is rounded once.
__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(BF16 x) { return BF16ToFloat(x); }

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ BF16 FromFloat<BF16>(float x) {
  return FloatToBF16(x);
}

// Butterfly (xor) reductions over the 32 lanes: every lane gets the result, and the order of the
// operations is fixed, so the result is bit-identical between runs.
__device__ __forceinline__ float WarpMax(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  }
  return v;
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// ceil(a / b) as a grid dimension (a >= 0, b > 0).
inline unsigned CeilDiv(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

}  // namespace smoe::cuda_utils
