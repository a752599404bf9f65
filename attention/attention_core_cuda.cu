// CUDA backend of attention_core.h: flash-style causal attention, one warp per query (or key) row,
// K/V (or Q/dO) tiles of kTile rows staged in shared memory as fp32, online softmax in registers.
// Written to be obviously correct; the tiling is the place for later tuning (tensor cores).
//
// Backward is three kernels without atomics (deterministic): dQ per query row; dK per key row
// summed over the query heads of its K group; dV per key row summed over the query heads of its V
// group. K and V groups need not nest (n_q = 6, n_k = 2, n_v = 3), so dK and dV are separate.
#include <cuda_runtime.h>

#include <cmath>

#include "attention/attention_core.h"
#include "runtime/device/cuda_error.h"
#include "runtime/device/cuda_utils.cuh"

namespace smoe {
namespace {

using cuda_utils::CeilDiv;
using cuda_utils::FromFloat;
using cuda_utils::kFullMask;
using cuda_utils::ToFloat;
using cuda_utils::WarpMax;
using cuda_utils::WarpSum;

constexpr int kWarps = 8;  // rows per block, one warp each
constexpr int kTile = 32;  // rows of the staged tile: one per lane

struct Dims {
  int64_t batch, seq, n_q, n_k, n_v;
};

__device__ __forceinline__ int64_t Row(const Dims& d, int64_t b, int64_t s, int64_t heads,
                                       int64_t head, int D) {
  return ((b * d.seq + s) * heads + head) * D;
}

// dst[0, D) = row s of one head of x [B, S, heads, D] as fp32, read by the lanes of one warp;
// zeros for an inactive row (past the sequence).
template <typename T, int D>
__device__ __forceinline__ void LoadRow(const Dims& d, const T* x, int64_t b, int64_t s,
                                        int64_t heads, int64_t head, bool active, int lane,
                                        float* dst) {
  for (int j = lane; j < D; j += 32) {
    dst[j] = active ? ToFloat(x[Row(d, b, s, heads, head, D) + j]) : 0.0f;
  }
}

// Rows [t0, t0 + kTile) of one head of x [B, S, heads, D] into dst as fp32, row tt at
// dst + tt * stride, read by the whole block; zeros past the sequence.
template <typename T, int D>
__device__ __forceinline__ void StageTile(const Dims& d, const T* x, int64_t b, int64_t t0,
                                          int64_t heads, int64_t head, int stride, float* dst) {
  for (int idx = threadIdx.x; idx < kTile * D; idx += blockDim.x) {
    const int tt = idx / D, j = idx % D;
    const int64_t t = t0 + tt;
    dst[tt * stride + j] = t < d.seq ? ToFloat(x[Row(d, b, t, heads, head, D) + j]) : 0.0f;
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32)
    ForwardKernel(Dims d, const T* q, const T* k, const T* v, T* out, float* lse, float scale) {
  constexpr int kPer = D / 32;
  constexpr int kStride = D + 1;  // padding: lane t reads row t without bank conflicts
  __shared__ float q_s[kWarps][D];
  __shared__ float k_s[kTile * kStride];
  __shared__ float v_s[kTile * D];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = blockIdx.z, i = blockIdx.y;
  const int64_t kh = i * d.n_k / d.n_q, vh = i * d.n_v / d.n_q;
  const int64_t row0 = int64_t{blockIdx.x} * kWarps;
  const int64_t s = row0 + warp;
  const bool active = s < d.seq;
  LoadRow<T, D>(d, q, b, s, d.n_q, i, active, lane, q_s[warp]);
  float m = -INFINITY, l = 0.0f, acc[kPer];
  for (int j = 0; j < kPer; ++j) acc[j] = 0.0f;
  const int64_t last = min(d.seq - 1, row0 + kWarps - 1);
  for (int64_t t0 = 0; t0 <= last; t0 += kTile) {
    __syncthreads();
    StageTile<T, D>(d, k, b, t0, d.n_k, kh, kStride, k_s);
    StageTile<T, D>(d, v, b, t0, d.n_v, vh, D, v_s);
    __syncthreads();
    const int64_t t = t0 + lane;
    float score = -INFINITY;
    if (active && t <= s) {
      float dot = 0.0f;
      for (int j = 0; j < D; ++j) dot += q_s[warp][j] * k_s[lane * kStride + j];
      score = dot * scale;
    }
    const float m_new = fmaxf(m, WarpMax(score));
    if (m_new == -INFINITY) continue;  // the whole tile is masked for this row
    const float p = score == -INFINITY ? 0.0f : expf(score - m_new);
    const float correction = expf(m - m_new);
    l = l * correction + WarpSum(p);
    for (int j = 0; j < kPer; ++j) acc[j] *= correction;
    for (int tt = 0; tt < kTile; ++tt) {
      const float pt = __shfl_sync(kFullMask, p, tt);
      for (int j = 0; j < kPer; ++j) acc[j] += pt * v_s[tt * D + lane + 32 * j];
    }
    m = m_new;
  }
  if (!active) return;
  for (int j = 0; j < kPer; ++j) {
    out[Row(d, b, s, d.n_q, i, D) + lane + 32 * j] = FromFloat<T>(acc[j] / l);
  }
  if (lane == 0) lse[(b * d.n_q + i) * d.seq + s] = m + logf(l);
}

// delta[b, i, s] = dout[b, s, i, :] . out[b, s, i, :], one warp per row.
template <typename T>
__global__ void DeltaKernel(Dims d, int D, const T* out, const T* dout, float* delta) {
  const int64_t row = int64_t{blockIdx.x} * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= d.batch * d.seq * d.n_q) return;
  float sum = 0.0f;
  for (int j = lane; j < D; j += 32) sum += ToFloat(out[row * D + j]) * ToFloat(dout[row * D + j]);
  sum = WarpSum(sum);
  const int64_t i = row % d.n_q, bs = row / d.n_q, b = bs / d.seq, s = bs % d.seq;
  if (lane == 0) delta[(b * d.n_q + i) * d.seq + s] = sum;
}

template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32)
    DqKernel(Dims d, const T* q, const T* k, const T* v, const float* lse, const float* delta,
             const T* dout, T* dq, float scale) {
  constexpr int kPer = D / 32;
  constexpr int kStride = D + 1;
  __shared__ float q_s[kWarps][D];
  __shared__ float do_s[kWarps][D];
  __shared__ float k_s[kTile * kStride];
  __shared__ float v_s[kTile * kStride];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = blockIdx.z, i = blockIdx.y;
  const int64_t kh = i * d.n_k / d.n_q, vh = i * d.n_v / d.n_q;
  const int64_t row0 = int64_t{blockIdx.x} * kWarps;
  const int64_t s = row0 + warp;
  const bool active = s < d.seq;
  LoadRow<T, D>(d, q, b, s, d.n_q, i, active, lane, q_s[warp]);
  LoadRow<T, D>(d, dout, b, s, d.n_q, i, active, lane, do_s[warp]);
  const int64_t stat = (b * d.n_q + i) * d.seq + s;
  const float row_lse = active ? lse[stat] : 0.0f;
  const float row_delta = active ? delta[stat] : 0.0f;
  float acc[kPer];
  for (int j = 0; j < kPer; ++j) acc[j] = 0.0f;
  const int64_t last = min(d.seq - 1, row0 + kWarps - 1);
  for (int64_t t0 = 0; t0 <= last; t0 += kTile) {
    __syncthreads();
    StageTile<T, D>(d, k, b, t0, d.n_k, kh, kStride, k_s);
    StageTile<T, D>(d, v, b, t0, d.n_v, vh, kStride, v_s);
    __syncthreads();
    const int64_t t = t0 + lane;
    float ds = 0.0f;
    if (active && t <= s) {
      float dot = 0.0f, dp = 0.0f;
      for (int j = 0; j < D; ++j) {
        dot += q_s[warp][j] * k_s[lane * kStride + j];
        dp += do_s[warp][j] * v_s[lane * kStride + j];
      }
      const float p = expf(dot * scale - row_lse);
      ds = p * (dp - row_delta) * scale;
    }
    for (int tt = 0; tt < kTile; ++tt) {
      const float dst = __shfl_sync(kFullMask, ds, tt);
      for (int j = 0; j < kPer; ++j) acc[j] += dst * k_s[tt * kStride + lane + 32 * j];
    }
  }
  if (!active) return;
  for (int j = 0; j < kPer; ++j)
    dq[Row(d, b, s, d.n_q, i, D) + lane + 32 * j] = FromFloat<T>(acc[j]);
}

// dK (kValue = false) or dV (kValue = true) for one key row per warp, summed over the query heads
// of the group of head blockIdx.y (K group for dK, V group for dV).
template <typename T, int D, bool kValue>
__global__ void __launch_bounds__(kWarps * 32)
    DkvKernel(Dims d, const T* q, const T* k, const T* v, const float* lse, const float* delta,
              const T* dout, T* grad, float scale) {
  constexpr int kPer = D / 32;
  constexpr int kStride = D + 1;
  __shared__ float k_row[kWarps][D];
  __shared__ float v_row[kWarps][D];
  __shared__ float q_s[kTile * kStride];
  __shared__ float do_s[kTile * kStride];
  __shared__ float lse_s[kTile];
  __shared__ float delta_s[kTile];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = blockIdx.z, head = blockIdx.y;
  const int64_t n_own = kValue ? d.n_v : d.n_k;
  const int64_t group = d.n_q / n_own;
  const int64_t row0 = int64_t{blockIdx.x} * kWarps;
  const int64_t t = row0 + warp;
  const bool active = t < d.seq;
  float acc[kPer];
  for (int j = 0; j < kPer; ++j) acc[j] = 0.0f;
  for (int64_t i = head * group; i < (head + 1) * group; ++i) {
    const int64_t kh = i * d.n_k / d.n_q, vh = i * d.n_v / d.n_q;
    __syncthreads();
    LoadRow<T, D>(d, k, b, t, d.n_k, kh, active, lane, k_row[warp]);
    LoadRow<T, D>(d, v, b, t, d.n_v, vh, active, lane, v_row[warp]);
    for (int64_t s0 = row0; s0 < d.seq; s0 += kTile) {
      __syncthreads();
      StageTile<T, D>(d, q, b, s0, d.n_q, i, kStride, q_s);
      StageTile<T, D>(d, dout, b, s0, d.n_q, i, kStride, do_s);
      if (threadIdx.x < kTile) {
        const int64_t s = s0 + threadIdx.x;
        const bool in = s < d.seq;
        lse_s[threadIdx.x] = in ? lse[(b * d.n_q + i) * d.seq + s] : 0.0f;
        delta_s[threadIdx.x] = in ? delta[(b * d.n_q + i) * d.seq + s] : 0.0f;
      }
      __syncthreads();
      const int64_t s = s0 + lane;
      float w = 0.0f;
      if (active && s < d.seq && s >= t) {
        float dot = 0.0f;
        for (int j = 0; j < D; ++j) dot += q_s[lane * kStride + j] * k_row[warp][j];
        const float p = expf(dot * scale - lse_s[lane]);
        if (kValue) {
          w = p;
        } else {
          float dp = 0.0f;
          for (int j = 0; j < D; ++j) dp += do_s[lane * kStride + j] * v_row[warp][j];
          w = p * (dp - delta_s[lane]) * scale;
        }
      }
      const float* rows = kValue ? do_s : q_s;
      for (int ss = 0; ss < kTile; ++ss) {
        const float ws = __shfl_sync(kFullMask, w, ss);
        for (int j = 0; j < kPer; ++j) acc[j] += ws * rows[ss * kStride + lane + 32 * j];
      }
    }
  }
  if (!active) return;
  for (int j = 0; j < kPer; ++j) {
    grad[Row(d, b, t, n_own, head, D) + lane + 32 * j] = FromFloat<T>(acc[j]);
  }
}

template <typename T, int D>
Status LaunchForward(ExecContext& ctx, const Dims& d, const void* q, const void* k, const void* v,
                     void* out, float* lse) {
  const dim3 grid(CeilDiv(d.seq, kWarps), static_cast<unsigned>(d.n_q),
                  static_cast<unsigned>(d.batch));
  ForwardKernel<T, D><<<grid, kWarps * 32, 0, ctx.stream()>>>(
      d, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
      static_cast<T*>(out), lse, 1.0f / sqrtf(static_cast<float>(D)));
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("attention ForwardKernel");
  return absl::OkStatus();
}

template <typename T, int D>
Status LaunchBackward(ExecContext& ctx, const Dims& d, const void* q_, const void* k_,
                      const void* v_, const void* out_, const float* lse, const void* dout_,
                      void* dq, void* dk, void* dv) {
  const T* q = static_cast<const T*>(q_);
  const T* k = static_cast<const T*>(k_);
  const T* v = static_cast<const T*>(v_);
  const T* dout = static_cast<const T*>(dout_);
  const float scale = 1.0f / sqrtf(static_cast<float>(D));
  const int64_t rows = d.batch * d.seq * d.n_q;
  MOE_ASSIGN_OR_RETURN(void* workspace, ctx.Workspace(static_cast<size_t>(rows) * sizeof(float)));
  float* delta = static_cast<float*>(workspace);
  DeltaKernel<T><<<CeilDiv(rows, kWarps), kWarps * 32, 0, ctx.stream()>>>(
      d, D, static_cast<const T*>(out_), dout, delta);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("attention DeltaKernel");
  const unsigned blocks = CeilDiv(d.seq, kWarps);
  const unsigned batch = static_cast<unsigned>(d.batch);
  DqKernel<T, D>
      <<<dim3(blocks, static_cast<unsigned>(d.n_q), batch), kWarps * 32, 0, ctx.stream()>>>(
          d, q, k, v, lse, delta, dout, static_cast<T*>(dq), scale);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("attention DqKernel");
  DkvKernel<T, D, false>
      <<<dim3(blocks, static_cast<unsigned>(d.n_k), batch), kWarps * 32, 0, ctx.stream()>>>(
          d, q, k, v, lse, delta, dout, static_cast<T*>(dk), scale);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("attention DkvKernel<dK>");
  DkvKernel<T, D, true>
      <<<dim3(blocks, static_cast<unsigned>(d.n_v), batch), kWarps * 32, 0, ctx.stream()>>>(
          d, q, k, v, lse, delta, dout, static_cast<T*>(dv), scale);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("attention DkvKernel<dV>");
  return absl::OkStatus();
}

// Calls fn(tag<T, D>) for the runtime dtype and head dim (validated by the caller).
template <typename T, int D>
struct KernelTag {
  using Type = T;
  static constexpr int kHeadDim = D;
};

template <typename Fn>
Status Dispatch(DType dtype, int64_t head_dim, Fn&& fn) {
  if (dtype == DType::kF32) {
    if (head_dim == 32) return fn(KernelTag<float, 32>{});
    if (head_dim == 64) return fn(KernelTag<float, 64>{});
    if (head_dim == 96) return fn(KernelTag<float, 96>{});
    if (head_dim == 128) return fn(KernelTag<float, 128>{});
  } else {
    if (head_dim == 32) return fn(KernelTag<BF16, 32>{});
    if (head_dim == 64) return fn(KernelTag<BF16, 64>{});
    if (head_dim == 96) return fn(KernelTag<BF16, 96>{});
    if (head_dim == 128) return fn(KernelTag<BF16, 128>{});
  }
  return absl::InternalError("attention: unsupported head_dim reached the CUDA backend");
}

Dims ToDims(const AttentionDims& a) { return Dims{a.batch, a.seq, a.n_q, a.n_k, a.n_v}; }

}  // namespace

namespace internal {

Status AttentionForwardCuda(ExecContext& ctx, const AttentionDims& dims, DType dtype, const void* q,
                            const void* k, const void* v, void* out, float* lse) {
  return Dispatch(dtype, dims.head_dim, [&](auto tag) {
    using Tag = decltype(tag);
    return LaunchForward<typename Tag::Type, Tag::kHeadDim>(ctx, ToDims(dims), q, k, v, out, lse);
  });
}

Status AttentionBackwardCuda(ExecContext& ctx, const AttentionDims& dims, DType dtype,
                             const void* q, const void* k, const void* v, const void* out,
                             const float* lse, const void* dout, void* dq, void* dk, void* dv) {
  return Dispatch(dtype, dims.head_dim, [&](auto tag) {
    using Tag = decltype(tag);
    return LaunchBackward<typename Tag::Type, Tag::kHeadDim>(ctx, ToDims(dims), q, k, v, out, lse,
                                                             dout, dq, dk, dv);
  });
}

}  // namespace internal
}  // namespace smoe
