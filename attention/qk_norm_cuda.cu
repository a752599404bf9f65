// CUDA backend of qk_norm.h: one warp per row for y and dx; dw by one block per column with a CUB
// block reduction (fixed order, so deterministic, no atomics).
#include <cuda_runtime.h>

#include <cub/cub.cuh>

#include "attention/qk_norm.h"
#include "runtime/device/cuda_error.h"
#include "runtime/device/cuda_utils.cuh"

namespace smoe {
namespace {

using cuda_utils::CeilDiv;
using cuda_utils::FromFloat;
using cuda_utils::ToFloat;
using cuda_utils::WarpSum;

constexpr int kWarps = 8;
constexpr int kColumnThreads = 256;

template <typename T>
__global__ void NormForwardKernel(const T* x, const T* w, T* y, float* rstd, int64_t rows,
                                  int64_t dim, float eps) {
  const int64_t r = int64_t{blockIdx.x} * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  float sum_sq = 0.0f;
  for (int64_t j = lane; j < dim; j += 32) {
    const float v = ToFloat(x[r * dim + j]);
    sum_sq += v * v;
  }
  const float inv = rsqrtf(WarpSum(sum_sq) / static_cast<float>(dim) + eps);
  for (int64_t j = lane; j < dim; j += 32) {
    y[r * dim + j] = FromFloat<T>(ToFloat(x[r * dim + j]) * inv * ToFloat(w[j]));
  }
  if (lane == 0) rstd[r] = inv;
}

template <typename T>
__global__ void NormBackwardKernel(const T* x, const T* w, const float* rstd, const T* dy, T* dx,
                                   int64_t rows, int64_t dim) {
  const int64_t r = int64_t{blockIdx.x} * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float inv = rstd[r];
  float mean = 0.0f;
  for (int64_t j = lane; j < dim; j += 32) {
    mean += ToFloat(dy[r * dim + j]) * ToFloat(w[j]) * ToFloat(x[r * dim + j]) * inv;
  }
  mean = WarpSum(mean) / static_cast<float>(dim);
  for (int64_t j = lane; j < dim; j += 32) {
    const float xhat = ToFloat(x[r * dim + j]) * inv;
    dx[r * dim + j] = FromFloat<T>(inv * (ToFloat(dy[r * dim + j]) * ToFloat(w[j]) - xhat * mean));
  }
}

template <typename T>
__global__ void NormWeightGradKernel(const T* x, const float* rstd, const T* dy, float* dw,
                                     int64_t rows, int64_t dim) {
  using BlockReduce = cub::BlockReduce<float, kColumnThreads>;
  __shared__ typename BlockReduce::TempStorage storage;
  const int64_t j = blockIdx.x;
  float sum = 0.0f;
  for (int64_t r = threadIdx.x; r < rows; r += kColumnThreads) {
    sum += ToFloat(dy[r * dim + j]) * ToFloat(x[r * dim + j]) * rstd[r];
  }
  const float total = BlockReduce(storage).Sum(sum);
  if (threadIdx.x == 0) dw[j] += total;  // f32, accumulated (qk_norm.h)
}

template <typename T>
Status Forward(ExecContext& ctx, const void* x, const void* w, void* y, float* rstd, int64_t rows,
               int64_t dim, double eps) {
  NormForwardKernel<T><<<CeilDiv(rows, kWarps), kWarps * 32, 0, ctx.stream()>>>(
      static_cast<const T*>(x), static_cast<const T*>(w), static_cast<T*>(y), rstd, rows, dim,
      static_cast<float>(eps));
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("NormForwardKernel");
  return absl::OkStatus();
}

template <typename T>
Status Backward(ExecContext& ctx, const void* x, const void* w, const float* rstd, const void* dy,
                void* dx, float* dw, int64_t rows, int64_t dim) {
  // dw first: dx may alias dy, and dw must read dy before dx overwrites it.
  NormWeightGradKernel<T><<<static_cast<unsigned>(dim), kColumnThreads, 0, ctx.stream()>>>(
      static_cast<const T*>(x), rstd, static_cast<const T*>(dy), dw, rows, dim);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("NormWeightGradKernel");
  if (rows > 0) {
    NormBackwardKernel<T><<<CeilDiv(rows, kWarps), kWarps * 32, 0, ctx.stream()>>>(
        static_cast<const T*>(x), static_cast<const T*>(w), rstd, static_cast<const T*>(dy),
        static_cast<T*>(dx), rows, dim);
    MOE_CUDA_RETURN_IF_LAUNCH_ERROR("NormBackwardKernel");
  }
  return absl::OkStatus();
}

}  // namespace

namespace internal {

Status HeadRmsNormForwardCuda(ExecContext& ctx, DType dtype, const void* x, const void* w, void* y,
                              float* rstd, int64_t rows, int64_t dim, double eps) {
  return dtype == DType::kF32 ? Forward<float>(ctx, x, w, y, rstd, rows, dim, eps)
                              : Forward<BF16>(ctx, x, w, y, rstd, rows, dim, eps);
}

Status HeadRmsNormBackwardCuda(ExecContext& ctx, DType dtype, const void* x, const void* w,
                               const float* rstd, const void* dy, void* dx, float* dw, int64_t rows,
                               int64_t dim) {
  return dtype == DType::kF32 ? Backward<float>(ctx, x, w, rstd, dy, dx, dw, rows, dim)
                              : Backward<BF16>(ctx, x, w, rstd, dy, dx, dw, rows, dim);
}

}  // namespace internal
}  // namespace smoe
