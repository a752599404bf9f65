// CUDA backend of permute.h: one block per row (Permute) or per token (the others), threads
// strided over M in 16-byte packs when M and the pointers allow it, fp32 accumulation, sums over k
// in k order and a fixed-shape block reduction for dgates (deterministic, no float atomics).
#include <cuda_runtime.h>

#include <cstdint>
#include <cub/cub.cuh>
#include <initializer_list>

#include "moe/dispatch/permute.h"
#include "runtime/core/bf16.h"
#include "runtime/device/cuda_error.h"

namespace smoe {
namespace {

constexpr int kThreads = 128;

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(BF16 v) { return BF16ToFloat(v); }
template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ BF16 FromFloat<BF16>(float v) {
  return FloatToBF16(v);
}

// Block r copies row row_token[r] of x.
template <typename T, int kVec>
__global__ void PermuteKernel(const int32_t* row_token, const T* x, T* xs, int64_t m) {
  using P = Pack<T, kVec>;
  const int64_t r = blockIdx.x;
  const P* src = reinterpret_cast<const P*>(x + row_token[r] * m);
  P* dst = reinterpret_cast<P*>(xs + r * m);
  for (int64_t c = threadIdx.x; c < m / kVec; c += blockDim.x) dst[c] = src[c];
}

// Block t gathers the rows of its kept choices.
template <typename T, int kVec>
__global__ void PermuteBackwardKernel(const int32_t* slots, const T* dxs, T* dx, int64_t k_count,
                                      int64_t m) {
  using P = Pack<T, kVec>;
  const int64_t t = blockIdx.x;
  P* dst = reinterpret_cast<P*>(dx + t * m);
  for (int64_t c = threadIdx.x; c < m / kVec; c += blockDim.x) {
    float acc[kVec] = {};
    for (int64_t k = 0; k < k_count; ++k) {
      const int64_t row = slots[t * k_count + k];
      if (row < 0) continue;
      const P v = reinterpret_cast<const P*>(dxs + row * m)[c];
#pragma unroll
      for (int j = 0; j < kVec; ++j) acc[j] += ToFloat(v.v[j]);
    }
    P out;
#pragma unroll
    for (int j = 0; j < kVec; ++j) out.v[j] = FromFloat<T>(acc[j]);
    dst[c] = out;
  }
}

template <typename T, int kVec>
__global__ void CombineKernel(const int32_t* slots, const T* ys, const float* gates, T* y,
                              int64_t k_count, int64_t m) {
  using P = Pack<T, kVec>;
  const int64_t t = blockIdx.x;
  P* dst = reinterpret_cast<P*>(y + t * m);
  for (int64_t c = threadIdx.x; c < m / kVec; c += blockDim.x) {
    float acc[kVec] = {};
    for (int64_t k = 0; k < k_count; ++k) {
      const int64_t row = slots[t * k_count + k];
      if (row < 0) continue;
      const float gate = gates[t * k_count + k];
      const P v = reinterpret_cast<const P*>(ys + row * m)[c];
#pragma unroll
      for (int j = 0; j < kVec; ++j) acc[j] += gate * ToFloat(v.v[j]);
    }
    P out;
#pragma unroll
    for (int j = 0; j < kVec; ++j) out.v[j] = FromFloat<T>(acc[j]);
    dst[c] = out;
  }
}

template <typename T, int kVec>
__global__ void CombineBackwardKernel(const int32_t* slots, const T* dy, const T* ys,
                                      const float* gates, T* dys, float* dgates, int64_t k_count,
                                      int64_t m) {
  using P = Pack<T, kVec>;
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  const int64_t t = blockIdx.x;
  const P* dy_row = reinterpret_cast<const P*>(dy + t * m);
  for (int64_t k = 0; k < k_count; ++k) {
    const int64_t pair = t * k_count + k;
    const int64_t row = slots[pair];
    if (row < 0) {
      if (threadIdx.x == 0) dgates[pair] = 0.0f;
      continue;
    }
    const float gate = gates[pair];
    const P* ys_row = reinterpret_cast<const P*>(ys + row * m);
    P* dys_row = reinterpret_cast<P*>(dys + row * m);
    float partial = 0.0f;
    for (int64_t c = threadIdx.x; c < m / kVec; c += blockDim.x) {
      const P d = dy_row[c];
      const P v = ys_row[c];
      P out;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const float dj = ToFloat(d.v[j]);
        partial += dj * ToFloat(v.v[j]);
        out.v[j] = FromFloat<T>(gate * dj);
      }
      dys_row[c] = out;
    }
    const float dot = Reduce(reduce_storage).Sum(partial);
    if (threadIdx.x == 0) dgates[pair] = dot;
    __syncthreads();  // reduce_storage is reused by the next k
  }
}

// 16-byte packs when every row starts 16-byte aligned.
template <typename T>
bool UsePacks(int64_t m, std::initializer_list<const void*> pointers) {
  constexpr int kVec = 16 / sizeof(T);
  if (m % kVec != 0) return false;
  for (const void* p : pointers) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  }
  return true;
}

template <typename T>
Status PermuteTyped(ExecContext& ctx, const RoutingPlan& plan, const TensorView& x,
                    const TensorView& xs) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t m = x.dim(1);
  const unsigned blocks = static_cast<unsigned>(plan.num_rows());
  const int32_t* row_token = plan.row_token.data<int32_t>();
  if (UsePacks<T>(m, {x.data(), xs.data()})) {
    PermuteKernel<T, kVec><<<blocks, kThreads, 0, ctx.stream()>>>(row_token, x.data<T>(),
                                                                  xs.data<T>(), m);
  } else {
    PermuteKernel<T, 1><<<blocks, kThreads, 0, ctx.stream()>>>(row_token, x.data<T>(),
                                                               xs.data<T>(), m);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("PermuteKernel");
  return absl::OkStatus();
}

template <typename T>
Status PermuteBackwardTyped(ExecContext& ctx, const RoutingPlan& plan, const TensorView& dxs,
                            const TensorView& dx) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t m = dx.dim(1);
  const unsigned blocks = static_cast<unsigned>(plan.num_tokens);
  const int32_t* slots = plan.slots.data<int32_t>();
  if (UsePacks<T>(m, {dxs.data(), dx.data()})) {
    PermuteBackwardKernel<T, kVec><<<blocks, kThreads, 0, ctx.stream()>>>(
        slots, dxs.data<T>(), dx.data<T>(), plan.top_k, m);
  } else {
    PermuteBackwardKernel<T, 1><<<blocks, kThreads, 0, ctx.stream()>>>(
        slots, dxs.data<T>(), dx.data<T>(), plan.top_k, m);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("PermuteBackwardKernel");
  return absl::OkStatus();
}

template <typename T>
Status CombineTyped(ExecContext& ctx, const RoutingPlan& plan, const TensorView& ys,
                    const TensorView& gates, const TensorView& y) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t m = y.dim(1);
  const unsigned blocks = static_cast<unsigned>(plan.num_tokens);
  const int32_t* slots = plan.slots.data<int32_t>();
  if (UsePacks<T>(m, {ys.data(), y.data()})) {
    CombineKernel<T, kVec><<<blocks, kThreads, 0, ctx.stream()>>>(
        slots, ys.data<T>(), gates.data<float>(), y.data<T>(), plan.top_k, m);
  } else {
    CombineKernel<T, 1><<<blocks, kThreads, 0, ctx.stream()>>>(
        slots, ys.data<T>(), gates.data<float>(), y.data<T>(), plan.top_k, m);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("CombineKernel");
  return absl::OkStatus();
}

template <typename T>
Status CombineBackwardTyped(ExecContext& ctx, const RoutingPlan& plan, const TensorView& dy,
                            const TensorView& ys, const TensorView& gates, const TensorView& dys,
                            const TensorView& dgates) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t m = dy.dim(1);
  const unsigned blocks = static_cast<unsigned>(plan.num_tokens);
  const int32_t* slots = plan.slots.data<int32_t>();
  if (UsePacks<T>(m, {dy.data(), ys.data(), dys.data()})) {
    CombineBackwardKernel<T, kVec><<<blocks, kThreads, 0, ctx.stream()>>>(
        slots, dy.data<T>(), ys.data<T>(), gates.data<float>(), dys.data<T>(),
        dgates.data<float>(), plan.top_k, m);
  } else {
    CombineBackwardKernel<T, 1><<<blocks, kThreads, 0, ctx.stream()>>>(
        slots, dy.data<T>(), ys.data<T>(), gates.data<float>(), dys.data<T>(),
        dgates.data<float>(), plan.top_k, m);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("CombineBackwardKernel");
  return absl::OkStatus();
}

}  // namespace

namespace internal {

Status PermuteCuda(ExecContext& ctx, const RoutingPlan& plan, const TensorView& x,
                   const TensorView& xs) {
  return x.dtype() == DType::kF32 ? PermuteTyped<float>(ctx, plan, x, xs)
                                  : PermuteTyped<BF16>(ctx, plan, x, xs);
}

Status PermuteBackwardCuda(ExecContext& ctx, const RoutingPlan& plan, const TensorView& dxs,
                           const TensorView& dx) {
  return dx.dtype() == DType::kF32 ? PermuteBackwardTyped<float>(ctx, plan, dxs, dx)
                                   : PermuteBackwardTyped<BF16>(ctx, plan, dxs, dx);
}

Status CombineCuda(ExecContext& ctx, const RoutingPlan& plan, const TensorView& ys,
                   const TensorView& gates, const TensorView& y) {
  return y.dtype() == DType::kF32 ? CombineTyped<float>(ctx, plan, ys, gates, y)
                                  : CombineTyped<BF16>(ctx, plan, ys, gates, y);
}

Status CombineBackwardCuda(ExecContext& ctx, const RoutingPlan& plan, const TensorView& dy,
                           const TensorView& ys, const TensorView& gates, const TensorView& dys,
                           const TensorView& dgates) {
  return dy.dtype() == DType::kF32
             ? CombineBackwardTyped<float>(ctx, plan, dy, ys, gates, dys, dgates)
             : CombineBackwardTyped<BF16>(ctx, plan, dy, ys, gates, dys, dgates);
}

}  // namespace internal
}  // namespace smoe
