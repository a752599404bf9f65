// CUDA backend of softmax.h: one warp per row; fixed reduction order (deterministic).
#include <cuda_runtime.h>

#include <cmath>

#include "runtime/device/cuda_error.h"
#include "runtime/nn/softmax.h"

namespace smoe {
namespace {

constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float WarpMax(float v) {
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__global__ void SoftmaxRowsKernel(const float* x, float* y, int64_t rows, int64_t cols) {
  const int64_t row = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const float* xr = x + row * cols;
  float* yr = y + row * cols;
  float max = -INFINITY;
  bool finite = true;
  for (int64_t c = lane; c < cols; c += 32) {
    finite = finite && isfinite(xr[c]);
    max = fmaxf(max, xr[c]);
  }
  max = WarpMax(max);
  finite = __all_sync(0xffffffffu, finite);
  if (!finite) {
    for (int64_t c = lane; c < cols; c += 32) yr[c] = NAN;
    return;
  }
  float sum = 0.0f;
  for (int64_t c = lane; c < cols; c += 32) sum += expf(xr[c] - max);
  const float inv = 1.0f / WarpSum(sum);
  for (int64_t c = lane; c < cols; c += 32) yr[c] = expf(xr[c] - max) * inv;
}

__global__ void SoftmaxRowsBackwardKernel(const float* y, const float* dy, float* dx, int64_t rows,
                                          int64_t cols) {
  const int64_t row = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int64_t base = row * cols;
  float dot = 0.0f;
  for (int64_t c = lane; c < cols; c += 32) dot += dy[base + c] * y[base + c];
  dot = WarpSum(dot);
  for (int64_t c = lane; c < cols; c += 32) dx[base + c] = y[base + c] * (dy[base + c] - dot);
}

unsigned Blocks(int64_t rows) {
  return static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

}  // namespace

namespace internal {

Status SoftmaxRowsCuda(ExecContext& ctx, const float* x, float* y, int64_t rows, int64_t cols) {
  SoftmaxRowsKernel<<<Blocks(rows), kWarpsPerBlock * 32, 0, ctx.stream()>>>(x, y, rows, cols);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("SoftmaxRowsKernel");
  return absl::OkStatus();
}

Status SoftmaxRowsBackwardCuda(ExecContext& ctx, const float* y, const float* dy, float* dx,
                               int64_t rows, int64_t cols) {
  SoftmaxRowsBackwardKernel<<<Blocks(rows), kWarpsPerBlock * 32, 0, ctx.stream()>>>(y, dy, dx, rows,
                                                                                    cols);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("SoftmaxRowsBackwardKernel");
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace smoe
