// CUDA backend of adamw.h: the step is one thread per element (grid-stride) on the shared scalar
// formula; the squared norm is a fixed two-pass reduction in double (a fixed number of blocks
// for a given n, each a CUB block reduction, then one block over the partials in order).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cub/cub.cuh>
#include <type_traits>

#include "runtime/core/bf16.h"
#include "runtime/device/cuda_error.h"
#include "runtime/nn/adamw.h"

namespace smoe {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65536;
constexpr int64_t kNormBlocks = 1024;  // the workspace holds one double per block

unsigned Blocks(int64_t n, int64_t max_blocks) {
  return static_cast<unsigned>(std::min((n + kThreads - 1) / kThreads, max_blocks));
}

__device__ __forceinline__ void StoreShadow(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void StoreShadow(BF16* p, int64_t i, float v) { p[i] = FloatToBF16(v); }

template <typename S>
__global__ void AdamWKernel(float* params, const float* grads, float* m, float* v, float lr,
                            float beta1, float beta2, float eps, float bias1, float bias2,
                            float decay, float grad_scale, S* shadow, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    float mi = m[i], vi = v[i];
    const float p = internal::AdamWUpdate(params[i], grads[i] * grad_scale, &mi, &vi, lr, beta1,
                                          beta2, eps, bias1, bias2, decay);
    params[i] = p;
    m[i] = mi;
    v[i] = vi;
    if (shadow != nullptr) StoreShadow(shadow, i, p);
  }
}

__global__ void SquaredNormPartialKernel(const float* g, int64_t n, double* partial) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  double local = 0.0;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * kThreads) {
    local += double{g[i]} * g[i];
  }
  const double total = Reduce(storage).Sum(local);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void SquaredNormFinishKernel(const double* partial, int blocks, float* out) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  double local = 0.0;
  for (int b = threadIdx.x; b < blocks; b += kThreads) local += partial[b];
  const double total = Reduce(storage).Sum(local);
  if (threadIdx.x == 0) *out = static_cast<float>(*out + total);
}

template <typename S>
__global__ void AllFiniteKernel(const S* t, int64_t n, int32_t* any_non_finite) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    float value;
    if constexpr (std::is_same_v<S, float>) {
      value = t[i];
    } else {
      value = BF16ToFloat(t[i]);
    }
    // Every writer stores the same 1, so the races are benign and the answer deterministic.
    if (!isfinite(value)) *any_non_finite = 1;
  }
}

}  // namespace

namespace internal {

Status AdamWStepCuda(ExecContext& ctx, const AdamWConfig& config, float bias1, float bias2,
                     float decay, float grad_scale, float* params, const float* grads, float* m,
                     float* v, DType shadow_dtype, void* shadow, int64_t n) {
  const unsigned blocks = Blocks(n, kMaxBlocks);
  if (shadow == nullptr || shadow_dtype == DType::kF32) {
    AdamWKernel<<<blocks, kThreads, 0, ctx.stream()>>>(
        params, grads, m, v, config.lr, config.beta1, config.beta2, config.eps, bias1, bias2, decay,
        grad_scale, static_cast<float*>(shadow), n);
  } else {
    AdamWKernel<<<blocks, kThreads, 0, ctx.stream()>>>(
        params, grads, m, v, config.lr, config.beta1, config.beta2, config.eps, bias1, bias2, decay,
        grad_scale, static_cast<BF16*>(shadow), n);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("AdamWKernel");
  return absl::OkStatus();
}

Status AccumulateSquaredNormCuda(ExecContext& ctx, const float* g, int64_t n, float* out) {
  const unsigned blocks = Blocks(n, kNormBlocks);
  MOE_ASSIGN_OR_RETURN(void* workspace, ctx.Workspace(sizeof(double) * kNormBlocks));
  double* partial = static_cast<double*>(workspace);
  SquaredNormPartialKernel<<<blocks, kThreads, 0, ctx.stream()>>>(g, n, partial);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("SquaredNormPartialKernel");
  SquaredNormFinishKernel<<<1, kThreads, 0, ctx.stream()>>>(partial, static_cast<int>(blocks), out);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("SquaredNormFinishKernel");
  return absl::OkStatus();
}

StatusOr<bool> AllFiniteCuda(ExecContext& ctx, DType dtype, const void* t, int64_t n) {
  MOE_ASSIGN_OR_RETURN(void* workspace, ctx.Workspace(sizeof(int32_t)));
  auto* flag = static_cast<int32_t*>(workspace);
  MOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(flag, 0, sizeof(int32_t), ctx.stream()));
  const unsigned blocks = Blocks(n, kMaxBlocks);
  if (dtype == DType::kF32) {
    AllFiniteKernel<<<blocks, kThreads, 0, ctx.stream()>>>(static_cast<const float*>(t), n, flag);
  } else {
    AllFiniteKernel<<<blocks, kThreads, 0, ctx.stream()>>>(static_cast<const BF16*>(t), n, flag);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("AllFiniteKernel");
  int32_t result = 0;
  MOE_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(&result, flag, sizeof(result), cudaMemcpyDeviceToHost, ctx.stream()));
  MOE_RETURN_IF_ERROR(ctx.Synchronize());  // the named host sync
  return result == 0;
}

}  // namespace internal
}  // namespace smoe
