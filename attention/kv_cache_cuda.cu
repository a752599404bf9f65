// CUDA decode attention (kv_cache.h), split over the cache length so that long caches fill the GPU:
//   1. ScoresKernel  (chunk, K head, b): scores of every query head sharing the K head.
//   2. StatsKernel   (query head, b):    max and sum of exp over all positions (CUB reductions).
//   3. ValuesKernel  (chunk, V head, b): normalized probabilities times V for the query heads
//                                        sharing the V head, one partial sum per chunk.
//   4. CombineKernel (query head, b):    sum of the chunk partials in chunk order.
// K and V are each read once; the scores (n_q floats per position) are small beside them.
#include <cuda_runtime.h>

#include <cub/cub.cuh>

#include "attention/kv_cache.h"
#include "runtime/device/cuda_error.h"
#include "runtime/device/cuda_utils.cuh"

namespace smoe {
namespace {

using cuda_utils::CeilDiv;
using cuda_utils::FromFloat;
using cuda_utils::ToFloat;

constexpr int kThreads = 256;
constexpr int kValueTile = 32;
static_assert(kDecodeChunk == kThreads, "one thread per position in ScoresKernel");

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

struct Problem {
  int64_t capacity, length, n_q, n_k, n_v, chunks;
};

template <typename T, int D>
__global__ void ScoresKernel(Problem p, const T* q, const T* k, float* scores, float scale) {
  extern __shared__ float q_s[];  // [group][D]
  const int64_t b = blockIdx.z, kh = blockIdx.y;
  const int64_t group = p.n_q / p.n_k, i0 = kh * group;
  for (int64_t idx = threadIdx.x; idx < group * D; idx += kThreads) {
    q_s[idx] = ToFloat(q[(b * p.n_q + i0) * D + idx]);
  }
  __syncthreads();
  const int64_t t = int64_t{blockIdx.x} * kDecodeChunk + threadIdx.x;
  if (t >= p.length) return;
  const T* kt = k + ((b * p.capacity + t) * p.n_k + kh) * D;
  float key[D];
  for (int j = 0; j < D; ++j) key[j] = ToFloat(kt[j]);
  for (int64_t g = 0; g < group; ++g) {
    float dot = 0.0f;
    for (int j = 0; j < D; ++j) dot += q_s[g * D + j] * key[j];
    scores[(b * p.n_q + i0 + g) * p.length + t] = dot * scale;
  }
}

__global__ void StatsKernel(Problem p, const float* scores, float* max_out, float* sum_out) {
  using BlockReduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename BlockReduce::TempStorage storage;
  __shared__ float row_max;
  const int64_t row = int64_t{blockIdx.y} * p.n_q + blockIdx.x;
  const float* s = scores + row * p.length;
  float m = -INFINITY;
  for (int64_t t = threadIdx.x; t < p.length; t += kThreads) m = fmaxf(m, s[t]);
  m = BlockReduce(storage).Reduce(m, MaxOp{});
  if (threadIdx.x == 0) row_max = m;
  __syncthreads();
  m = row_max;
  float sum = 0.0f;
  for (int64_t t = threadIdx.x; t < p.length; t += kThreads) sum += expf(s[t] - m);
  sum = BlockReduce(storage).Sum(sum);
  if (threadIdx.x == 0) {
    max_out[row] = m;
    sum_out[row] = sum;
  }
}

template <typename T, int D>
__global__ void ValuesKernel(Problem p, const T* v, const float* scores, const float* max_in,
                             const float* sum_in, float* partial) {
  extern __shared__ float smem[];
  const int64_t b = blockIdx.z, vh = blockIdx.y, chunk = blockIdx.x;
  const int64_t group = p.n_q / p.n_v, i0 = vh * group;
  float* v_s = smem;                      // [kValueTile][D]
  float* p_s = v_s + kValueTile * D;      // [group][kValueTile]
  float* acc = p_s + group * kValueTile;  // [group][D]
  for (int64_t idx = threadIdx.x; idx < group * D; idx += kThreads) acc[idx] = 0.0f;
  const int64_t begin = chunk * kDecodeChunk;
  const int64_t end = min(p.length, begin + kDecodeChunk);
  for (int64_t t0 = begin; t0 < end; t0 += kValueTile) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < kValueTile * D; idx += kThreads) {
      const int64_t t = t0 + idx / D;
      v_s[idx] = t < end ? ToFloat(v[((b * p.capacity + t) * p.n_v + vh) * D + idx % D]) : 0.0f;
    }
    for (int64_t idx = threadIdx.x; idx < group * kValueTile; idx += kThreads) {
      const int64_t g = idx / kValueTile, t = t0 + idx % kValueTile;
      const int64_t row = b * p.n_q + i0 + g;
      p_s[idx] = t < end ? expf(scores[row * p.length + t] - max_in[row]) / sum_in[row] : 0.0f;
    }
    __syncthreads();
    for (int64_t idx = threadIdx.x; idx < group * D; idx += kThreads) {
      const int64_t g = idx / D, j = idx % D;
      float a = acc[idx];
      for (int tt = 0; tt < kValueTile; ++tt) a += p_s[g * kValueTile + tt] * v_s[tt * D + j];
      acc[idx] = a;
    }
  }
  __syncthreads();
  for (int64_t idx = threadIdx.x; idx < group * D; idx += kThreads) {
    const int64_t g = idx / D, j = idx % D;
    partial[((b * p.chunks + chunk) * p.n_q + i0 + g) * D + j] = acc[idx];
  }
}

template <typename T, int D>
__global__ void CombineKernel(Problem p, const float* partial, T* out) {
  const int64_t b = blockIdx.y, i = blockIdx.x;
  for (int j = threadIdx.x; j < D; j += blockDim.x) {
    float sum = 0.0f;
    for (int64_t c = 0; c < p.chunks; ++c) sum += partial[((b * p.chunks + c) * p.n_q + i) * D + j];
    out[(b * p.n_q + i) * D + j] = FromFloat<T>(sum);
  }
}

template <typename T, int D>
Status Launch(ExecContext& ctx, const internal::DecodeProblem& dp) {
  const Problem p{dp.capacity, dp.length, dp.n_q,
                  dp.n_k,      dp.n_v,    (dp.length + kDecodeChunk - 1) / kDecodeChunk};
  const int64_t rows = dp.batch * dp.n_q;
  const size_t floats = static_cast<size_t>(rows * (dp.length + 2 + p.chunks * D));
  MOE_ASSIGN_OR_RETURN(void* workspace, ctx.Workspace(floats * sizeof(float)));
  float* scores = static_cast<float*>(workspace);
  float* max = scores + rows * dp.length;
  float* sum = max + rows;
  float* partial = sum + rows;
  const unsigned chunks = static_cast<unsigned>(p.chunks), batch = static_cast<unsigned>(dp.batch);
  const float scale = 1.0f / sqrtf(static_cast<float>(D));

  const size_t q_bytes = static_cast<size_t>(dp.n_q / dp.n_k) * D * sizeof(float);
  if (q_bytes > 48 * 1024) {  // n_q / n_k > 96 at D = 128
    MOE_RETURN_IF_ERROR(CudaStatus(
        cudaFuncSetAttribute(ScoresKernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(q_bytes)),
        "decode ScoresKernel shared memory"));
  }
  ScoresKernel<T, D>
      <<<dim3(chunks, static_cast<unsigned>(dp.n_k), batch), kThreads, q_bytes, ctx.stream()>>>(
          p, static_cast<const T*>(dp.q), static_cast<const T*>(dp.k), scores, scale);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("decode ScoresKernel");
  StatsKernel<<<dim3(static_cast<unsigned>(dp.n_q), batch), kThreads, 0, ctx.stream()>>>(p, scores,
                                                                                         max, sum);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("decode StatsKernel");
  const int64_t group_v = dp.n_q / dp.n_v;
  const size_t v_bytes =
      static_cast<size_t>(kValueTile * D + group_v * kValueTile + group_v * D) * sizeof(float);
  if (v_bytes > 48 * 1024) {
    MOE_RETURN_IF_ERROR(CudaStatus(
        cudaFuncSetAttribute(ValuesKernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(v_bytes)),
        "decode ValuesKernel shared memory"));
  }
  ValuesKernel<T, D>
      <<<dim3(chunks, static_cast<unsigned>(dp.n_v), batch), kThreads, v_bytes, ctx.stream()>>>(
          p, static_cast<const T*>(dp.v), scores, max, sum, partial);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("decode ValuesKernel");
  CombineKernel<T, D><<<dim3(static_cast<unsigned>(dp.n_q), batch), 128, 0, ctx.stream()>>>(
      p, partial, static_cast<T*>(dp.out));
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("decode CombineKernel");
  return absl::OkStatus();
}

template <typename T>
Status LaunchForDim(ExecContext& ctx, const internal::DecodeProblem& p) {
  switch (p.head_dim) {
    case 32:
      return Launch<T, 32>(ctx, p);
    case 64:
      return Launch<T, 64>(ctx, p);
    case 96:
      return Launch<T, 96>(ctx, p);
    case 128:
      return Launch<T, 128>(ctx, p);
  }
  return absl::InternalError("decode: unsupported head_dim reached the CUDA backend");
}

}  // namespace

namespace internal {
Status DecodeAttentionCuda(ExecContext& ctx, const DecodeProblem& p) {
  return p.dtype == DType::kF32 ? LaunchForDim<float>(ctx, p) : LaunchForDim<BF16>(ctx, p);
}
}  // namespace internal
}  // namespace smoe
