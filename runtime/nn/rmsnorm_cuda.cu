// CUDA backend of rmsnorm.h: one warp per row for the row reductions; dgain by fixed row chunks
// (one thread per column per chunk), then the chunks summed in order: deterministic, no atomics.
#include <cuda_runtime.h>

#include <algorithm>

#include "runtime/core/bf16.h"
#include "runtime/device/cuda_error.h"
#include "runtime/nn/rmsnorm.h"

namespace smoe {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = 256;
constexpr int64_t kRowsPerChunk = 128;

__device__ __forceinline__ float Load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float Load(const BF16* p, int64_t i) { return BF16ToFloat(p[i]); }
__device__ __forceinline__ void Store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void Store(BF16* p, int64_t i, float v) { p[i] = FloatToBF16(v); }

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename S>
__global__ void RMSNormForwardKernel(const S* x, const float* gain, float eps, int64_t rows,
                                     int64_t cols, S* y, float* rstd) {
  const int64_t row = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int64_t base = row * cols;
  float sum_sq = 0.0f;
  for (int64_t c = lane; c < cols; c += 32) {
    const float v = Load(x, base + c);
    sum_sq += v * v;
  }
  sum_sq = WarpSum(sum_sq);
  const float inv = rsqrtf(sum_sq / static_cast<float>(cols) + eps);
  if (lane == 0) rstd[row] = inv;
  for (int64_t c = lane; c < cols; c += 32) Store(y, base + c, Load(x, base + c) * inv * gain[c]);
}

// partial[chunk, c] = sum over the chunk's rows, in row order, of dy * x * rstd.
template <typename S>
__global__ void DgainPartialKernel(const S* x, const float* rstd, const S* dy, int64_t rows,
                                   int64_t cols, float* partial) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (c >= cols) return;
  const int64_t end = std::min(rows, (chunk + 1) * kRowsPerChunk);
  float sum = 0.0f;
  for (int64_t r = chunk * kRowsPerChunk; r < end; ++r) {
    sum += Load(dy, r * cols + c) * Load(x, r * cols + c) * rstd[r];
  }
  partial[chunk * cols + c] = sum;
}

__global__ void DgainFinishKernel(const float* partial, int64_t chunks, int64_t cols,
                                  float* dgain) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= cols) return;
  float sum = 0.0f;
  for (int64_t k = 0; k < chunks; ++k) sum += partial[k * cols + c];
  dgain[c] += sum;
}

template <typename S>
__global__ void RMSNormDxKernel(const S* x, const float* gain, const float* rstd, const S* dy,
                                int64_t rows, int64_t cols, S* dx) {
  const int64_t row = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int64_t base = row * cols;
  const float inv = rstd[row];
  float dot = 0.0f;
  for (int64_t c = lane; c < cols; c += 32) {
    dot += Load(dy, base + c) * gain[c] * Load(x, base + c) * inv;
  }
  // The shuffles also order every lane's reads of dy before any write of dx (dx may alias dy).
  const float mean_dot = WarpSum(dot) / static_cast<float>(cols);
  for (int64_t c = lane; c < cols; c += 32) {
    const float g = Load(dy, base + c) * gain[c];
    Store(dx, base + c, inv * (g - Load(x, base + c) * inv * mean_dot));
  }
}

unsigned RowBlocks(int64_t rows) {
  return static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

template <typename S>
Status Backward(ExecContext& ctx, const S* x, const float* gain, const float* rstd, const S* dy,
                int64_t rows, int64_t cols, S* dx, float* dgain) {
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  if (chunks > 65535) {  // the chunks index gridDim.y
    return BadArgument("x.shape[0]", absl::StrCat(rows),
                       absl::StrCat("at most ", 65535 * kRowsPerChunk, " rows on CUDA"));
  }
  MOE_ASSIGN_OR_RETURN(void* workspace,
                       ctx.Workspace(sizeof(float) * static_cast<size_t>(chunks * cols)));
  float* partial = static_cast<float*>(workspace);
  const unsigned col_blocks = static_cast<unsigned>((cols + kThreads - 1) / kThreads);
  // dgain reads dy before the dx kernel may overwrite it (dx may alias dy).
  DgainPartialKernel<<<dim3(col_blocks, static_cast<unsigned>(chunks)), kThreads, 0,
                       ctx.stream()>>>(x, rstd, dy, rows, cols, partial);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("DgainPartialKernel");
  DgainFinishKernel<<<col_blocks, kThreads, 0, ctx.stream()>>>(partial, chunks, cols, dgain);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("DgainFinishKernel");
  RMSNormDxKernel<<<RowBlocks(rows), kWarpsPerBlock * 32, 0, ctx.stream()>>>(x, gain, rstd, dy,
                                                                             rows, cols, dx);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("RMSNormDxKernel");
  return absl::OkStatus();
}

}  // namespace

namespace internal {

Status RMSNormForwardCuda(ExecContext& ctx, DType dtype, const void* x, const float* gain,
                          float eps, int64_t rows, int64_t cols, void* y, float* rstd) {
  if (dtype == DType::kF32) {
    RMSNormForwardKernel<<<RowBlocks(rows), kWarpsPerBlock * 32, 0, ctx.stream()>>>(
        static_cast<const float*>(x), gain, eps, rows, cols, static_cast<float*>(y), rstd);
  } else {
    RMSNormForwardKernel<<<RowBlocks(rows), kWarpsPerBlock * 32, 0, ctx.stream()>>>(
        static_cast<const BF16*>(x), gain, eps, rows, cols, static_cast<BF16*>(y), rstd);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("RMSNormForwardKernel");
  return absl::OkStatus();
}

Status RMSNormBackwardCuda(ExecContext& ctx, DType dtype, const void* x, const float* gain,
                           const float* rstd, const void* dy, int64_t rows, int64_t cols, void* dx,
                           float* dgain) {
  if (dtype == DType::kF32) {
    return Backward(ctx, static_cast<const float*>(x), gain, rstd, static_cast<const float*>(dy),
                    rows, cols, static_cast<float*>(dx), dgain);
  }
  return Backward(ctx, static_cast<const BF16*>(x), gain, rstd, static_cast<const BF16*>(dy), rows,
                  cols, static_cast<BF16*>(dx), dgain);
}

}  // namespace internal
}  // namespace smoe
