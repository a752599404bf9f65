// CUDA backend of permute.h: one block per row (Permute) or per token (the others), threads
// strided over M in 16-byte packs when M and the pointers allow it, fp32 accumulation, sums over k
// in k order and a fixed-shape block reduction for dgates (deterministic, no float atomics).
#include <cuda_runtime.h>

#include <cstdint>
#include <cub/cub.cuh>
#include <initializer_list>
#include <type_traits>

#include "moe/dispatch/permute.h"
#include "runtime/core/bf16.h"
#include "runtime/device/cuda_error.h"
#include "runtime/device/cuda_utils.cuh"

namespace smoe {
namespace {

using cuda_utils::FromFloat;
using cuda_utils::ToFloat;

constexpr int kThreads = 128;

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

// Block r copies row row_token[r] of x.
template <typename T, int kVec>
__global__ void PermuteKernel(const int32_t* row_token, const T* x, T* xs, int64_t m) {
  using P = Pack<T, kVec>;
  const int64_t r = blockIdx.x;
  const P* src = reinterpret_cast<const P*>(x + row_token[r] * m);
  P* dst = reinterpret_cast<P*>(xs + r * m);
  for (int64_t c = threadIdx.x; c < m / kVec; c += blockDim.x) dst[c] = src[c];
}

// Block t sums the rows of its kept choices, each weighted by its gate (by 1 where gates is null:
// PermuteBackward).
template <typename T, int kVec>
__global__ void GatherSumKernel(const int32_t* slots, const T* rows, const float* gates, T* out,
                                int64_t k_count, int64_t m) {
  using P = Pack<T, kVec>;
  const int64_t t = blockIdx.x;
  P* dst = reinterpret_cast<P*>(out + t * m);
  for (int64_t c = threadIdx.x; c < m / kVec; c += blockDim.x) {
    float acc[kVec] = {};
    for (int64_t k = 0; k < k_count; ++k) {
      const int64_t row = slots[t * k_count + k];
      if (row < 0) continue;
      const float gate = gates != nullptr ? gates[t * k_count + k] : 1.0f;
      const P v = reinterpret_cast<const P*>(rows + row * m)[c];
#pragma unroll
      for (int j = 0; j < kVec; ++j) acc[j] += gate * ToFloat(v.v[j]);
    }
    P sum;
#pragma unroll
    for (int j = 0; j < kVec; ++j) sum.v[j] = FromFloat<T>(acc[j]);
    dst[c] = sum;
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

// Calls launch(std::integral_constant<int, kVec>{}) with kVec = 16-byte packs when m and every
// row start allow it (16-byte aligned), else with kVec = 1.
template <typename T, typename Launch>
void WithPackWidth(int64_t m, std::initializer_list<const void*> pointers, Launch&& launch) {
  constexpr int kVec = 16 / sizeof(T);
  bool packs = m % kVec == 0;
  for (const void* p : pointers) packs = packs && reinterpret_cast<uintptr_t>(p) % 16 == 0;
  if (packs) {
    launch(std::integral_constant<int, kVec>{});
  } else {
    launch(std::integral_constant<int, 1>{});
  }
}

template <typename T>
Status PermuteTyped(ExecContext& ctx, const RoutingPlan& plan, const TensorView& x,
                    const TensorView& xs) {
  const int64_t m = x.dim(1);
  WithPackWidth<T>(m, {x.data(), xs.data()}, [&](auto vec) {
    PermuteKernel<T, decltype(vec)::value>
        <<<static_cast<unsigned>(plan.num_rows()), kThreads, 0, ctx.stream()>>>(
            plan.row_token.data<int32_t>(), x.data<T>(), xs.data<T>(), m);
  });
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("PermuteKernel");
  return absl::OkStatus();
}

// y [T, M] = sum over kept k of gates[t, k] (1 if gates is null) * rows[slots[t, k]].
template <typename T>
Status GatherSumTyped(ExecContext& ctx, const RoutingPlan& plan, const TensorView& rows,
                      const float* gates, const TensorView& y) {
  const int64_t m = y.dim(1);
  WithPackWidth<T>(m, {rows.data(), y.data()}, [&](auto vec) {
    GatherSumKernel<T, decltype(vec)::value>
        <<<static_cast<unsigned>(plan.num_tokens), kThreads, 0, ctx.stream()>>>(
            plan.slots.data<int32_t>(), rows.data<T>(), gates, y.data<T>(), plan.top_k, m);
  });
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("GatherSumKernel");
  return absl::OkStatus();
}

template <typename T>
Status CombineBackwardTyped(ExecContext& ctx, const RoutingPlan& plan, const TensorView& dy,
                            const TensorView& ys, const TensorView& gates, const TensorView& dys,
                            const TensorView& dgates) {
  const int64_t m = dy.dim(1);
  WithPackWidth<T>(m, {dy.data(), ys.data(), dys.data()}, [&](auto vec) {
    CombineBackwardKernel<T, decltype(vec)::value>
        <<<static_cast<unsigned>(plan.num_tokens), kThreads, 0, ctx.stream()>>>(
            plan.slots.data<int32_t>(), dy.data<T>(), ys.data<T>(), gates.data<float>(),
            dys.data<T>(), dgates.data<float>(), plan.top_k, m);
  });
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
  return dx.dtype() == DType::kF32 ? GatherSumTyped<float>(ctx, plan, dxs, nullptr, dx)
                                   : GatherSumTyped<BF16>(ctx, plan, dxs, nullptr, dx);
}

Status CombineCuda(ExecContext& ctx, const RoutingPlan& plan, const TensorView& ys,
                   const TensorView& gates, const TensorView& y) {
  return y.dtype() == DType::kF32 ? GatherSumTyped<float>(ctx, plan, ys, gates.data<float>(), y)
                                  : GatherSumTyped<BF16>(ctx, plan, ys, gates.data<float>(), y);
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
