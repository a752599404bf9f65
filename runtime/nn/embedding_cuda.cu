// CUDA backend of embedding.h. The backward is deterministic without float atomics: token
// positions are stable-sorted by id (CUB radix sort), then one block per distinct id sums its
// segment in increasing t and adds the sum into that id's row of dtable.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cub/cub.cuh>

#include "runtime/core/bf16.h"
#include "runtime/device/cuda_error.h"
#include "runtime/nn/embedding.h"

namespace smoe {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65536;

__device__ __forceinline__ float Widen(float v) { return v; }
__device__ __forceinline__ float Widen(BF16 v) { return BF16ToFloat(v); }

unsigned Blocks(int64_t n) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min((n + kThreads - 1) / kThreads, kMaxBlocks)));
}

template <typename S>
__device__ __forceinline__ S NaNOf();
template <>
__device__ __forceinline__ float NaNOf<float>() {
  return NAN;
}
template <>
__device__ __forceinline__ BF16 NaNOf<BF16>() {
  return FloatToBF16(NAN);
}

template <typename S>
__global__ void EmbeddingForwardKernel(const int32_t* ids, const S* table, int64_t vocab,
                                       int64_t tokens, int64_t dim, S* out) {
  const int64_t n = tokens * dim;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i / dim, c = i % dim;
    const int32_t id = ids[t];
    out[i] = (id >= 0 && id < vocab) ? table[int64_t{id} * dim + c] : NaNOf<S>();
  }
}

// Out-of-range ids map to the key `vocab`, which sorts last and is skipped by the reduction.
__global__ void SortInputsKernel(const int32_t* ids, int64_t vocab, int64_t tokens, uint32_t* keys,
                                 int32_t* positions) {
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < tokens;
       t += int64_t{gridDim.x} * blockDim.x) {
    const int32_t id = ids[t];
    keys[t] = (id >= 0 && id < vocab) ? static_cast<uint32_t>(id) : static_cast<uint32_t>(vocab);
    positions[t] = static_cast<int32_t>(t);
  }
}

// Block b owns the segment that starts at sorted position b (other blocks exit at once).
template <typename S>
__global__ void SegmentSumKernel(const uint32_t* sorted_keys, const int32_t* sorted_positions,
                                 const S* dout, int64_t vocab, int64_t tokens, int64_t dim,
                                 float* dtable) {
  const int64_t begin = blockIdx.x;
  const uint32_t key = sorted_keys[begin];
  if (key >= vocab || (begin > 0 && sorted_keys[begin - 1] == key)) return;
  int64_t end = begin + 1;
  while (end < tokens && sorted_keys[end] == key) ++end;
  float* row = dtable + int64_t{key} * dim;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    float sum = 0.0f;
    for (int64_t j = begin; j < end; ++j)
      sum += Widen(dout[int64_t{sorted_positions[j]} * dim + c]);
    row[c] += sum;
  }
}

int KeyBits(int64_t vocab) {
  int bits = 1;
  while (bits < 32 && (int64_t{1} << bits) <= vocab) ++bits;
  return bits;
}

size_t AlignUp(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

namespace internal {

Status EmbeddingForwardCuda(ExecContext& ctx, DType dtype, const int32_t* ids, const void* table,
                            int64_t vocab, int64_t tokens, int64_t dim, void* out) {
  const unsigned blocks = Blocks(tokens * dim);
  if (dtype == DType::kF32) {
    EmbeddingForwardKernel<<<blocks, kThreads, 0, ctx.stream()>>>(
        ids, static_cast<const float*>(table), vocab, tokens, dim, static_cast<float*>(out));
  } else {
    EmbeddingForwardKernel<<<blocks, kThreads, 0, ctx.stream()>>>(
        ids, static_cast<const BF16*>(table), vocab, tokens, dim, static_cast<BF16*>(out));
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("EmbeddingForwardKernel");
  return absl::OkStatus();
}

Status EmbeddingBackwardCuda(ExecContext& ctx, DType dout_dtype, const int32_t* ids,
                             const void* dout, int64_t vocab, int64_t tokens, int64_t dim,
                             float* dtable) {
  if (tokens > INT32_MAX || vocab >= INT32_MAX) {
    return BadArgument("ids.shape[0] / dtable.shape[0]", absl::StrCat(tokens, " / ", vocab),
                       "below 2^31 on CUDA");
  }
  const int items = static_cast<int>(tokens);
  const int key_bits = KeyBits(vocab);  // enough bits for the sentinel key `vocab` too
  size_t sort_bytes = 0;
  MOE_CUDA_RETURN_IF_ERROR(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), items, 0, key_bits,
      ctx.stream()));
  const size_t array_bytes = AlignUp(sizeof(int32_t) * static_cast<size_t>(tokens));
  MOE_ASSIGN_OR_RETURN(void* workspace, ctx.Workspace(4 * array_bytes + sort_bytes));
  char* base = static_cast<char*>(workspace);
  auto* keys = reinterpret_cast<uint32_t*>(base);
  auto* sorted_keys = reinterpret_cast<uint32_t*>(base + array_bytes);
  auto* positions = reinterpret_cast<int32_t*>(base + 2 * array_bytes);
  auto* sorted_positions = reinterpret_cast<int32_t*>(base + 3 * array_bytes);
  void* sort_temp = base + 4 * array_bytes;

  SortInputsKernel<<<Blocks(tokens), kThreads, 0, ctx.stream()>>>(ids, vocab, tokens, keys,
                                                                  positions);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("SortInputsKernel");
  MOE_CUDA_RETURN_IF_ERROR(cub::DeviceRadixSort::SortPairs(sort_temp, sort_bytes, keys, sorted_keys,
                                                           positions, sorted_positions, items, 0,
                                                           key_bits, ctx.stream()));
  const unsigned blocks = static_cast<unsigned>(tokens);
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, (dim + 31) / 32 * 32));
  if (dout_dtype == DType::kF32) {
    SegmentSumKernel<<<blocks, threads, 0, ctx.stream()>>>(
        sorted_keys, sorted_positions, static_cast<const float*>(dout), vocab, tokens, dim, dtable);
  } else {
    SegmentSumKernel<<<blocks, threads, 0, ctx.stream()>>>(
        sorted_keys, sorted_positions, static_cast<const BF16*>(dout), vocab, tokens, dim, dtable);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("SegmentSumKernel");
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace smoe
