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

// d_logits[t, c] = p (dp - sum_c' dp p) + z_factor lse_t p, dp = g[c] + [c == arg max] top1.
__global__ void AuxGradientKernel(const float* probs, const float* lse, const int32_t* arg_max,
                                  const float* g, int64_t rows, int e, float top1_argmax,
                                  float z_factor, float* d_logits) {
  const int64_t row = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
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
                       const AuxRowBuffers& rows, std::vector<int64_t>* counts,
                       std::vector<double>* p_sum, double* lse_sq_sum, double* max_p_sum) {
  const int ei = static_cast<int>(e);
  const int64_t chunks = (t + kRowsPerChunk - 1) / kRowsPerChunk;
  MOE_ASSIGN_OR_RETURN(Tensor partial,
                       Tensor::Empty({chunks * e}, DType::kI64, ctx.device(), ctx.allocator()));
  // [E] p sums, then the two row sums, as doubles (stored in an i64 tensor: same width).
  MOE_ASSIGN_OR_RETURN(Tensor sums,
                       Tensor::Empty({e + 2}, DType::kI64, ctx.device(), ctx.allocator()));
  MOE_ASSIGN_OR_RETURN(Tensor device_counts,
                       Tensor::Empty({e}, DType::kI64, ctx.device(), ctx.allocator()));
  double* partial_p = static_cast<double*>(partial.data());
  double* sums_p = static_cast<double*>(sums.data());
  int64_t* counts_p = device_counts.data<int64_t>();

  MOE_RETURN_IF_ERROR(CountExpertsCuda(ctx, topk_idx, t * k, e, counts_p));
  AuxRowKernel<<<CeilDiv(t, kWarpsPerBlock), kWarpsPerBlock * 32, 0, ctx.stream()>>>(
      logits, probs, t, ei, rows.lse, rows.max_p, rows.arg_max);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("AuxRowKernel");
  const unsigned column_blocks = CeilDiv(e, kColumnThreads);
  ColumnPartialKernel<<<dim3(column_blocks, static_cast<unsigned>(std::min<int64_t>(chunks, 65535))), kColumnThreads, 0,
                        ctx.stream()>>>(probs, t, ei, partial_p);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("ColumnPartialKernel");
  ColumnFinalKernel<<<column_blocks, kColumnThreads, 0, ctx.stream()>>>(partial_p, chunks, ei,
                                                                        sums_p);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("ColumnFinalKernel");
  RowSumsKernel<<<1, kSumThreads, 0, ctx.stream()>>>(rows.lse, rows.max_p, t, sums_p + e);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("RowSumsKernel");

  std::vector<double> host_sums(e + 2);
  counts->assign(e, 0);
  MOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_sums.data(), sums_p, (e + 2) * sizeof(double),
                                           cudaMemcpyDeviceToHost, ctx.stream()));
  MOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(counts->data(), counts_p, e * sizeof(int64_t),
                                           cudaMemcpyDeviceToHost, ctx.stream()));
  MOE_RETURN_IF_ERROR(ctx.Synchronize());
  p_sum->assign(host_sums.begin(), host_sums.begin() + e);
  *lse_sq_sum = host_sums[e];
  *max_p_sum = host_sums[e + 1];
  return absl::OkStatus();
}

Status AuxLossGradientCuda(ExecContext& ctx, const float* probs, const AuxRowBuffers& rows,
                           int64_t t, int64_t e, const std::vector<double>& g, double top1_argmax,
                           double z_factor, float* d_logits) {
  MOE_ASSIGN_OR_RETURN(Tensor device_g,
                       Tensor::Empty({e}, DType::kF32, ctx.device(), ctx.allocator()));
  std::vector<float> host_g(g.begin(), g.end());
  // host_g dies on return, before the stream may have read it: Copy stages it through pinned
  // memory that is reused only after the copy has completed (no host sync).
  MOE_RETURN_IF_ERROR(
      Copy(ctx, TensorView(host_g.data(), DType::kF32, {e}, Device::Cpu()), device_g));
  AuxGradientKernel<<<CeilDiv(t, kWarpsPerBlock), kWarpsPerBlock * 32, 0, ctx.stream()>>>(
      probs, rows.lse, rows.arg_max, device_g.data<float>(), t, static_cast<int>(e),
      static_cast<float>(top1_argmax), static_cast<float>(z_factor), d_logits);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("AuxGradientKernel");
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace smoe
