// CUDA backend of cross_entropy.h: one block per row (max, sum of exp, then the gradient), the
// count of non-ignored targets and the final mean in single blocks. CUB block reductions have a
// fixed order for a fixed block size, so the loss is bit-identical run to run.
#include <cuda_runtime.h>

#include <cmath>
#include <cub/cub.cuh>

#include "runtime/core/bf16.h"
#include "runtime/device/cuda_error.h"
#include "runtime/nn/cross_entropy.h"

namespace smoe {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float Load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float Load(const BF16* p, int64_t i) { return BF16ToFloat(p[i]); }
__device__ __forceinline__ void Store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void Store(BF16* p, int64_t i, float v) { p[i] = FloatToBF16(v); }

__global__ void CountKernel(const int32_t* targets, int64_t tokens, int32_t* count) {
  using Reduce = cub::BlockReduce<int32_t, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  int32_t local = 0;
  for (int64_t t = threadIdx.x; t < tokens; t += kThreads) local += targets[t] != -1;
  const int32_t total = Reduce(storage).Sum(local);
  if (threadIdx.x == 0) *count = total;
}

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Row t: row_loss[t] = lse - logit[target] (0 when ignored, NaN when the target is out of range);
// dlogits row (if requested) = scale / count * (softmax - onehot).
template <typename L>
__global__ void RowKernel(const L* logits, const int32_t* targets, int64_t vocab, float scale,
                          const int32_t* count, L* dlogits, float* row_loss) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ float shared_value;
  const int64_t t = blockIdx.x;
  const int32_t target = targets[t];
  const int64_t base = t * vocab;
  if (target == -1 || target < -1 || target >= vocab) {
    if (dlogits != nullptr) {
      for (int64_t v = threadIdx.x; v < vocab; v += kThreads) Store(dlogits, base + v, 0.0f);
    }
    if (threadIdx.x == 0) row_loss[t] = target == -1 ? 0.0f : NAN;
    return;
  }
  float local_max = -INFINITY;
  for (int64_t v = threadIdx.x; v < vocab; v += kThreads) {
    local_max = fmaxf(local_max, Load(logits, base + v));
  }
  const float block_max = Reduce(storage).Reduce(local_max, MaxOp());
  if (threadIdx.x == 0) shared_value = block_max;
  __syncthreads();
  const float max = shared_value;
  // Read before any thread can overwrite it (dlogits may alias logits).
  const float target_logit = Load(logits, base + target);
  float local_sum = 0.0f;
  for (int64_t v = threadIdx.x; v < vocab; v += kThreads) {
    local_sum += expf(Load(logits, base + v) - max);
  }
  __syncthreads();  // storage and shared_value are reused below
  const float block_sum = Reduce(storage).Sum(local_sum);
  if (threadIdx.x == 0) shared_value = block_sum;
  __syncthreads();
  const float lse = max + logf(shared_value);
  if (threadIdx.x == 0) row_loss[t] = lse - target_logit;
  if (dlogits == nullptr) return;
  const float g = *count > 0 ? scale / static_cast<float>(*count) : 0.0f;
  for (int64_t v = threadIdx.x; v < vocab; v += kThreads) {
    const float p = expf(Load(logits, base + v) - lse);
    Store(dlogits, base + v, g * (p - (v == target ? 1.0f : 0.0f)));
  }
}

__global__ void MeanKernel(const float* row_loss, int64_t tokens, const int32_t* count,
                           float* loss) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  double local = 0.0;
  for (int64_t t = threadIdx.x; t < tokens; t += kThreads) local += row_loss[t];
  const double total = Reduce(storage).Sum(local);
  if (threadIdx.x == 0) *loss = *count > 0 ? static_cast<float>(total / *count) : 0.0f;
}

}  // namespace

namespace internal {

Status CrossEntropyCuda(ExecContext& ctx, DType dtype, const void* logits, const int32_t* targets,
                        int64_t tokens, int64_t vocab, float scale, void* dlogits, float* loss) {
  if (tokens > INT32_MAX) {
    return BadArgument("logits.shape[0]", absl::StrCat(tokens), "below 2^31 on CUDA");
  }
  MOE_ASSIGN_OR_RETURN(void* workspace,
                       ctx.Workspace(sizeof(float) * static_cast<size_t>(tokens + 1)));
  auto* count = static_cast<int32_t*>(workspace);
  float* row_loss = static_cast<float*>(workspace) + 1;
  CountKernel<<<1, kThreads, 0, ctx.stream()>>>(targets, tokens, count);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("CountKernel");
  const unsigned blocks = static_cast<unsigned>(tokens);
  if (dtype == DType::kF32) {
    RowKernel<<<blocks, kThreads, 0, ctx.stream()>>>(static_cast<const float*>(logits), targets,
                                                     vocab, scale, count,
                                                     static_cast<float*>(dlogits), row_loss);
  } else {
    RowKernel<<<blocks, kThreads, 0, ctx.stream()>>>(static_cast<const BF16*>(logits), targets,
                                                     vocab, scale, count,
                                                     static_cast<BF16*>(dlogits), row_loss);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("RowKernel");
  MeanKernel<<<1, kThreads, 0, ctx.stream()>>>(row_loss, tokens, count, loss);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("MeanKernel");
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace smoe
