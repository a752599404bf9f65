// CUDA backend of router.h and expert_load.h: one warp per token row, fixed reduction orders.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "moe/router/router_internal.h"
#include "runtime/device/cuda_error.h"
#include "runtime/device/cuda_utils.cuh"

namespace smoe {
namespace {

using cuda_utils::CeilDiv;
using cuda_utils::kFullMask;

constexpr int kWarpsPerBlock = 8;

// Higher score first, then lower index: a strict total order on (score, index) for finite scores.
__device__ __forceinline__ bool RanksAbove(float sa, int a, float sb, int b) {
  return sa > sb || (sa == sb && a < b);
}

__device__ __forceinline__ float Score(const float* logits_row, const float* bias, int c) {
  return bias != nullptr ? logits_row[c] + bias[c] : logits_row[c];
}

// Round j picks the best (score, index) ranking strictly below round j-1's pick, so the K rounds
// need no per-expert "taken" state: each is one pass over the row and a warp arg max.
__global__ void TopKGatesKernel(const float* logits, const float* bias, const float* probs,
                                int64_t rows, int e, int k, bool renormalize, int32_t* topk_idx,
                                float* topk_gates) {
  const int64_t row = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const float* lr = logits + row * e;
  const float* pr = probs + row * e;
  int32_t* ir = topk_idx + row * k;
  float* gr = topk_gates + row * k;

  bool finite = true;
  for (int c = lane; c < e; c += 32) finite = finite && isfinite(Score(lr, bias, c));
  finite = __all_sync(kFullMask, finite);
  if (!finite) {
    if (lane == 0) {
      for (int j = 0; j < k; ++j) ir[j] = j;
    }
  } else {
    float prev_s = 0.0f;
    int prev_i = -1;
    for (int j = 0; j < k; ++j) {
      float best_s = 0.0f;
      int best_i = -1;
      for (int c = lane; c < e; c += 32) {
        const float s = Score(lr, bias, c);
        if (prev_i >= 0 && !RanksAbove(prev_s, prev_i, s, c)) continue;
        if (best_i < 0 || RanksAbove(s, c, best_s, best_i)) {
          best_s = s;
          best_i = c;
        }
      }
      for (int offset = 16; offset > 0; offset >>= 1) {
        const float other_s = __shfl_xor_sync(kFullMask, best_s, offset);
        const int other_i = __shfl_xor_sync(kFullMask, best_i, offset);
        if (other_i >= 0 && (best_i < 0 || RanksAbove(other_s, other_i, best_s, best_i))) {
          best_s = other_s;
          best_i = other_i;
        }
      }
      if (lane == 0) ir[j] = best_i;
      prev_s = best_s;
      prev_i = best_i;
    }
  }
  if (lane == 0) {
    float sum = 0.0f;
    for (int j = 0; j < k; ++j) sum += pr[ir[j]];
    for (int j = 0; j < k; ++j) {
      const float p = pr[ir[j]];
      gr[j] = renormalize ? p / sum : p;
    }
  }
}

// d_probs is nonzero at the K chosen experts only, so the row scalars are O(K) loops that every
// lane evaluates in the same order: no cross-lane reduction, identical values in every lane.
__global__ void LogitsGradientKernel(const float* probs, const int32_t* topk_idx,
                                     const float* d_topk_gates, const float* d_logits_extra,
                                     int64_t rows, int e, int k, bool renormalize,
                                     float* d_logits) {
  const int64_t row = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const float* pr = probs + row * e;
  const int32_t* ir = topk_idx + row * k;
  const float* dgr = d_topk_gates + row * k;
  float sum = 0.0f, dot_g = 0.0f;
  for (int j = 0; j < k; ++j) {
    sum += pr[ir[j]];
    dot_g += dgr[j] * pr[ir[j]];
  }
  float dot = 0.0f;
  for (int j = 0; j < k; ++j) {
    const float dp = renormalize ? (dgr[j] - dot_g / sum) / sum : dgr[j];
    dot += dp * pr[ir[j]];
  }
  for (int c = lane; c < e; c += 32) {
    float dpc = 0.0f;
    for (int j = 0; j < k; ++j) {
      if (ir[j] == c) dpc += renormalize ? (dgr[j] - dot_g / sum) / sum : dgr[j];
    }
    float g = pr[c] * (dpc - dot);
    if (d_logits_extra != nullptr) g += d_logits_extra[row * e + c];
    d_logits[row * e + c] = g;
  }
}

__global__ void CountKernel(const int32_t* idx, int64_t n, int64_t e, int64_t* counts) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int32_t v = idx[i];
    if (v >= 0 && v < e) {
      atomicAdd(reinterpret_cast<unsigned long long*>(counts + v), 1ull);
    }
  }
}

__global__ void UpdateBiasKernel(const int64_t* counts, int64_t e, float rate, float bound,
                                 float* bias) {
  __shared__ long long total;
  if (threadIdx.x == 0) {
    long long sum = 0;
    for (int64_t i = 0; i < e; ++i) sum += counts[i];
    total = sum;
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < e; i += blockDim.x) {
    const long long diff = total - e * counts[i];
    const float step = diff > 0 ? rate : (diff < 0 ? -rate : 0.0f);
    // The CPU's std::clamp, NaN included (fminf/fmaxf would turn a NaN bias into -bound).
    const float v = bias[i] + step;
    bias[i] = v < -bound ? -bound : (bound < v ? bound : v);
  }
}

}  // namespace

namespace internal {

Status RouterTopKCuda(ExecContext& ctx, const float* logits, const float* bias, const float* probs,
                      int64_t t, int64_t e, int64_t k, bool renormalize, int32_t* topk_idx,
                      float* topk_gates) {
  TopKGatesKernel<<<CeilDiv(t, kWarpsPerBlock), kWarpsPerBlock * 32, 0, ctx.stream()>>>(
      logits, bias, probs, t, static_cast<int>(e), static_cast<int>(k), renormalize, topk_idx,
      topk_gates);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("TopKGatesKernel");
  return absl::OkStatus();
}

Status RouterLogitsGradientCuda(ExecContext& ctx, const float* probs, const int32_t* topk_idx,
                                const float* d_topk_gates, const float* d_logits_extra, int64_t t,
                                int64_t e, int64_t k, bool renormalize, float* d_logits) {
  LogitsGradientKernel<<<CeilDiv(t, kWarpsPerBlock), kWarpsPerBlock * 32, 0, ctx.stream()>>>(
      probs, topk_idx, d_topk_gates, d_logits_extra, t, static_cast<int>(e), static_cast<int>(k),
      renormalize, d_logits);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("LogitsGradientKernel");
  return absl::OkStatus();
}

Status CountExpertsCuda(ExecContext& ctx, const int32_t* idx, int64_t n, int64_t e,
                        int64_t* counts) {
  MOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(counts, 0, e * sizeof(int64_t), ctx.stream()));
  if (n == 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  const unsigned blocks = std::min(CeilDiv(n, kThreads), 4096u);
  CountKernel<<<blocks, kThreads, 0, ctx.stream()>>>(idx, n, e, counts);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("CountKernel");
  return absl::OkStatus();
}

Status UpdateExpertBiasCuda(ExecContext& ctx, const int64_t* counts, int64_t e, float rate,
                            float bound, float* bias) {
  UpdateBiasKernel<<<1, 256, 0, ctx.stream()>>>(counts, e, rate, bound, bias);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("UpdateBiasKernel");
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace smoe
