// CUDA backend of swiglu.h: one thread per element (grid-stride), fp32 math, the scalar formulas
// shared with the CPU path (swiglu.h, internal::).
#include <cuda_runtime.h>

#include <algorithm>

#include "runtime/core/bf16.h"
#include "runtime/device/cuda_error.h"
#include "runtime/nn/swiglu.h"

namespace smoe {
namespace {

constexpr int kThreads = 256;
// Enough blocks to fill an H100 several times over; the grid-stride loop covers the rest.
constexpr int64_t kMaxBlocks = 65536;

__device__ __forceinline__ float Load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float Load(const BF16* p, int64_t i) { return BF16ToFloat(p[i]); }
__device__ __forceinline__ void Store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void Store(BF16* p, int64_t i, float v) { p[i] = FloatToBF16(v); }

template <typename S>
__global__ void SwiGLUKernel(const S* h1, const S* h3, S* act, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    Store(act, i, internal::SwiGLUValue(Load(h1, i), Load(h3, i)));
  }
}

template <typename S>
__global__ void SwiGLUBackwardKernel(const S* h1, const S* h3, const S* dact, S* dh1, S* dh3,
                                     int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    float d1, d3;
    internal::SwiGLUGrad(Load(h1, i), Load(h3, i), Load(dact, i), &d1, &d3);
    Store(dh1, i, d1);
    Store(dh3, i, d3);
  }
}

unsigned Blocks(int64_t n) {
  return static_cast<unsigned>(std::min((n + kThreads - 1) / kThreads, kMaxBlocks));
}

}  // namespace

namespace internal {

Status SwiGLUCuda(ExecContext& ctx, DType dtype, const void* h1, const void* h3, void* act,
                  int64_t n) {
  if (dtype == DType::kF32) {
    SwiGLUKernel<<<Blocks(n), kThreads, 0, ctx.stream()>>>(
        static_cast<const float*>(h1), static_cast<const float*>(h3), static_cast<float*>(act), n);
  } else {
    SwiGLUKernel<<<Blocks(n), kThreads, 0, ctx.stream()>>>(
        static_cast<const BF16*>(h1), static_cast<const BF16*>(h3), static_cast<BF16*>(act), n);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("SwiGLUKernel");
  return absl::OkStatus();
}

Status SwiGLUBackwardCuda(ExecContext& ctx, DType dtype, const void* h1, const void* h3,
                          const void* dact, void* dh1, void* dh3, int64_t n) {
  if (dtype == DType::kF32) {
    SwiGLUBackwardKernel<<<Blocks(n), kThreads, 0, ctx.stream()>>>(
        static_cast<const float*>(h1), static_cast<const float*>(h3),
        static_cast<const float*>(dact), static_cast<float*>(dh1), static_cast<float*>(dh3), n);
  } else {
    SwiGLUBackwardKernel<<<Blocks(n), kThreads, 0, ctx.stream()>>>(
        static_cast<const BF16*>(h1), static_cast<const BF16*>(h3), static_cast<const BF16*>(dact),
        static_cast<BF16*>(dh1), static_cast<BF16*>(dh3), n);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("SwiGLUBackwardKernel");
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace smoe
