// CUDA backend of aux_loss.h. Every float reduction has a fixed order (per-thread sequential sums
// over fixed chunks, then a fixed tree), so results are bit-reproducible; only the integer counts
// use atomics.
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "moe/router/router_internal.h"
#include "runtime/device/cuda_error.h"
#include "runtime/device/cuda_utils.cuh"
#include "runtime/tensor/tensor.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

using cuda_utils::CeilDiv;
using cuda_utils::kFullMask;
using cuda_utils::WarpMax;
using cuda_utils::WarpSum;

constexpr int kWarpsPerBlock = 8;
constexpr int kColumnThreads = 128;
constexpr int kRowsPerChunk = 256;
constexpr int kSumThreads = 256;

// Per row: logsumexp of the logits, max of probs and its arg max (ties: lower index).
__global__ void AuxRowKernel(const float* logits, const float* probs, int64_t rows, int e,
                             float* lse, float* max_p, int32_t* arg_max) {
  const int64_t row = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const float* lr = logits + row * e;
  const float* pr = probs + row * e;
  float m = -INFINITY;
  for (int c = lane; c < e; c += 32) m = fmaxf(m, lr[c]);
  m = WarpMax(m);
  float sum = 0.0f;
  for (int c = lane; c < e; c += 32) sum += expf(lr[c] - m);
  sum = WarpSum(sum);
  float best_p = -INFINITY;
  int best_i = -1;
  for (int c = lane; c < e; c += 32) {
    if (best_i < 0 || pr[c] > best_p) {
      best_p = pr[c];
      best_i = c;
    }
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other_p = __shfl_xor_sync(kFullMask, best_p, offset);
    const int other_i = __shfl_xor_sync(kFullMask, best_i, offset);
    if (other_i >= 0 &&
        (best_i < 0 || other_p > best_p || (other_p == best_p && other_i < best_i))) {
      best_p = other_p;
      best_i = other_i;
    }
  }
  if (lane == 0) {
    lse[row] = m + logf(sum);
    max_p[row] = best_p;
    arg_max[row] = best_i;
  }
}

// partial[chunk, c] = sum of probs[:, c] over the rows of `chunk`, sequentially. Chunks stride
// over grid.y (capped at the hardware's 65535), so any T works.
__global__ void ColumnPartialKernel(const float* probs, int64_t rows, int e, double* partial) {
  const int c = blockIdx.x * kColumnThreads + threadIdx.x;
  if (c >= e) return;
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
    const int64_t begin = chunk * kRowsPerChunk;
    const int64_t end = min(rows, begin + kRowsPerChunk);
    double sum = 0.0;
    for (int64_t r = begin; r < end; ++r) sum += probs[r * e + c];
    partial[chunk * e + c] = sum;
  }
}

__global__ void ColumnFinalKernel(const double* partial, int64_t chunks, int e, double* out) {
  const int c = blockIdx.x * kColumnThreads + threadIdx.x;
  if (c >= e) return;
  double sum = 0.0;
  for (int64_t i = 0; i < chunks; ++i) sum += partial[i * e + c];
  out[c] = sum;
}

// out[0] = sum lse^2, out[1] = sum max_p; one block, strided sums then a fixed tree.
__global__ void RowSumsKernel(const float* lse, const float* max_p, int64_t rows, double* out) {
  __shared__ double s_lse[kSumThreads];
  __shared__ double s_max[kSumThreads];
  double a = 0.0, b = 0.0;
  for (int64_t r = threadIdx.x; r < rows; r += kSumThreads) {
    a += double{lse[r]} * lse[r];
    b += max_p[r];
  }
  s_lse[threadIdx.x] = a;
  s_max[threadIdx.x] = b;
  __syncthreads();
  for (int stride = kSumThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      s_lse[threadIdx.x] += s_lse[threadIdx.x + stride];
      s_max[threadIdx.x] += s_max[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    out[0] = s_lse[0];
    out[1] = s_max[0];
  }
}

// The coefficients of router_cpu.h AuxCoefficients on the device, in its order and in double:
// coef[0] = top1_argmax, coef[1] = z_factor, coef[2 + i] = g[i]; values = (lbl, z_loss, top1_lbl,
// total). One block: thread 0 forms the scalar sums sequentially, then the threads write g.
__global__ void AuxCoefficientsKernel(AuxLossConfig config, const int64_t* counts,
                                      const double* sums, int64_t rows, int e, float* coef,
                                      float* values) {
  __shared__ double total_count, mean_max, p_sq;
  const double t = static_cast<double>(rows), ed = static_cast<double>(e);
  if (threadIdx.x == 0) {
    int64_t total = 0;
    for (int i = 0; i < e; ++i) total += counts[i];
    total_count = static_cast<double>(total);
    mean_max = sums[e + 1] / t;
    double lbl = 0.0, sq = 0.0;
    for (int i = 0; i < e; ++i) {
      const double f = total > 0 ? static_cast<double>(counts[i]) / total_count : 0.0;
      const double p_mean = sums[i] / t;
      lbl += f * p_mean;
      sq += p_mean * p_mean;
    }
    p_sq = sq;
    const double z_loss = sums[e] / t, top1 = ed * sq / mean_max;
    values[0] = static_cast<float>(ed * lbl);
    values[1] = static_cast<float>(z_loss);
    values[2] = static_cast<float>(top1);
    values[3] = static_cast<float>(config.lbl_coef * (ed * lbl) + config.z_coef * z_loss +
                                   config.top1_lbl_coef * top1);
    coef[0] = static_cast<float>(-config.top1_lbl_coef * ed * sq / (mean_max * mean_max * t));
    coef[1] = static_cast<float>(config.z_coef * 2.0 / t);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < e; i += blockDim.x) {
    const double f = total_count > 0 ? static_cast<double>(counts[i]) / total_count : 0.0;
    const double p_mean = sums[i] / t;
    coef[2 + i] = static_cast<float>(config.lbl_coef * ed * f / t +
                                     config.top1_lbl_coef * ed * 2.0 * p_mean / (t * mean_max));
  }
}

// d_logits[t, c] = p (dp - sum_c' dp p) + z_factor lse_t p, dp = g[c] + [c == arg max] top1,
// with top1 = coef[0], z_factor = coef[1], g = coef + 2.
__global__ void AuxGradientKernel(const float* probs, const float* lse, const int32_t* arg_max,
                                  const float* coef, int64_t rows, int e, float* d_logits) {
  const int64_t row = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const float top1_argmax = coef[0], z_factor = coef[1];
  const float* g = coef + 2;
  const float* pr = probs + row * e;
  const int arg = arg_max[row];
  float dot = 0.0f;
  for (int c = lane; c < e; c += 32) dot += (g[c] + (c == arg ? top1_argmax : 0.0f)) * pr[c];
  dot = WarpSum(dot);
  const float zl = z_factor * lse[row];
  for (int c = lane; c < e; c += 32) {
    const float dp = g[c] + (c == arg ? top1_argmax : 0.0f);
    d_logits[row * e + c] = pr[c] * (dp - dot) + zl * pr[c];
  }
}

}  // namespace

namespace internal {

Status AuxLossSumsCuda(ExecContext& ctx, const float* logits, const float* probs,
                       const int32_t* topk_idx, int64_t t, int64_t e, int64_t k,
                       const AuxRowBuffers& rows, int64_t* counts, double* sums) {
  const int ei = static_cast<int>(e);
  const int64_t chunks = (t + kRowsPerChunk - 1) / kRowsPerChunk;
  MOE_ASSIGN_OR_RETURN(Tensor partial,
                       Tensor::Empty({chunks * e}, DType::kI64, ctx.device(), ctx.allocator()));
  double* partial_p = static_cast<double*>(partial.data());

  MOE_RETURN_IF_ERROR(CountExpertsCuda(ctx, topk_idx, t * k, e, counts));
  AuxRowKernel<<<CeilDiv(t, kWarpsPerBlock), kWarpsPerBlock * 32, 0, ctx.stream()>>>(
      logits, probs, t, ei, rows.lse, rows.max_p, rows.arg_max);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("AuxRowKernel");
  const unsigned column_blocks = CeilDiv(e, kColumnThreads);
  ColumnPartialKernel<<<dim3(column_blocks,
                             static_cast<unsigned>(std::min<int64_t>(chunks, 65535))),
                        kColumnThreads, 0, ctx.stream()>>>(probs, t, ei, partial_p);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("ColumnPartialKernel");
  ColumnFinalKernel<<<column_blocks, kColumnThreads, 0, ctx.stream()>>>(partial_p, chunks, ei,
                                                                        sums);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("ColumnFinalKernel");
  RowSumsKernel<<<1, kSumThreads, 0, ctx.stream()>>>(rows.lse, rows.max_p, t, sums + e);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("RowSumsKernel");
  return absl::OkStatus();
}

Status AuxLossGradientCuda(ExecContext& ctx, const AuxLossConfig& config, const float* probs,
                           const AuxRowBuffers& rows, int64_t t, int64_t e, const int64_t* counts,
                           const double* sums, float* d_logits, float* values) {
  MOE_ASSIGN_OR_RETURN(Tensor coef,
                       Tensor::Empty({e + 2}, DType::kF32, ctx.device(), ctx.allocator()));
  const int ei = static_cast<int>(e);
  AuxCoefficientsKernel<<<1, kColumnThreads, 0, ctx.stream()>>>(config, counts, sums, t, ei,
                                                                coef.data<float>(), values);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("AuxCoefficientsKernel");
  AuxGradientKernel<<<CeilDiv(t, kWarpsPerBlock), kWarpsPerBlock * 32, 0, ctx.stream()>>>(
      probs, rows.lse, rows.arg_max, coef.data<float>(), t, ei, d_logits);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("AuxGradientKernel");
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace smoe
