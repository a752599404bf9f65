// CUDA backend of routing_plan.h.
//
// Pairs are laid out in priority order p = k * T + t. An integer histogram gives the raw count of
// every expert; a stable radix sort of the expert ids (payload p) groups the pairs by expert while
// keeping priority order within each expert, so the rank of a pair within its expert is its sorted
// index minus the expert's raw start. Everything is integer and order-independent, hence identical
// to the CPU reference.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cub/cub.cuh>

#include "absl/strings/str_cat.h"
#include "moe/dispatch/routing_plan.h"
#include "runtime/device/cuda_error.h"
#include "runtime/device/cuda_utils.cuh"

namespace smoe {
namespace {

using cuda_utils::CeilDiv;

constexpr int kThreads = 256;
constexpr unsigned long long kNoError = ~0ull;

// Keys are expert ids, with E standing for an out-of-range id, so the sort needs the bits of E.
int KeyBits(int64_t num_experts) {
  int bits = 1;
  while ((int64_t{1} << bits) <= num_experts) ++bits;
  return bits;
}

// One thread per pair in priority order. The first bad pair in row-major order wins the atomicMin
// of (row-major index << 32 | value), so the reported error does not depend on scheduling.
__global__ void HistogramKernel(const int32_t* idx, int64_t t_count, int64_t k_count,
                                int64_t e_count, int32_t* raw_counts, uint32_t* keys,
                                uint32_t* priorities, unsigned long long* error) {
  const int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (p >= t_count * k_count) return;
  const int64_t t = p % t_count, k = p / t_count;
  const int64_t pair = t * k_count + k;
  const int32_t e = idx[pair];
  if (e < 0 || e >= e_count) {
    atomicMin(error, (static_cast<unsigned long long>(pair) << 32) | static_cast<uint32_t>(e));
    keys[p] = static_cast<uint32_t>(e_count);
  } else {
    atomicAdd(&raw_counts[e], 1);
    keys[p] = static_cast<uint32_t>(e);
  }
  priorities[p] = static_cast<uint32_t>(p);
}

// kept[e] = min(raw, C) for e < E and kept[E] = 0, so that an exclusive scan over E + 1 entries
// ends with R.
__global__ void KeptKernel(const int32_t* raw_counts, int64_t e_count, int64_t capacity,
                           int32_t* counts, int64_t* kept) {
  const int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (e > e_count) return;
  if (e == e_count) {
    kept[e] = 0;
    return;
  }
  int64_t n = raw_counts[e];
  if (capacity >= 0 && n > capacity) n = capacity;
  kept[e] = n;
  counts[e] = static_cast<int32_t>(n);
}

__global__ void SlotsKernel(const uint32_t* sorted_keys, const uint32_t* sorted_priorities,
                            const int32_t* raw_starts, const int64_t* offsets, int64_t t_count,
                            int64_t k_count, int64_t e_count, int64_t capacity, int32_t* slots,
                            int32_t* row_token, int32_t* row_choice) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= t_count * k_count) return;
  const int64_t e = sorted_keys[i];
  const int64_t p = sorted_priorities[i];
  const int64_t t = p % t_count, k = p / t_count;
  const int64_t pair = t * k_count + k;
  if (e >= e_count) {
    slots[pair] = -1;
    return;
  }
  const int64_t rank = i - raw_starts[e];
  if (capacity >= 0 && rank >= capacity) {
    slots[pair] = -1;
    return;
  }
  const int64_t row = offsets[e] + rank;
  slots[pair] = static_cast<int32_t>(row);
  row_token[row] = static_cast<int32_t>(t);
  row_choice[row] = static_cast<int32_t>(pair);
}

__global__ void DroppedKernel(const int64_t* offsets, int64_t e_count, int64_t pairs,
                              int64_t* num_dropped) {
  num_dropped[0] = pairs - offsets[e_count];
}

size_t AlignUp(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

namespace internal {

Status BuildRoutingPlanCuda(ExecContext& ctx, const int32_t* topk_idx, int64_t capacity,
                            RoutingPlan* plan) {
  const int64_t t_count = plan->num_tokens, k_count = plan->top_k, e_count = plan->num_experts;
  const int64_t n = t_count * k_count;
  const int num_items = static_cast<int>(n);
  const int key_bits = KeyBits(e_count);
  cudaStream_t stream = ctx.stream();
  int64_t* offsets = plan->offsets.data<int64_t>();

  size_t sort_bytes = 0, scan_raw_bytes = 0, scan_kept_bytes = 0;
  MOE_CUDA_RETURN_IF_ERROR(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr), num_items, 0,
      key_bits, stream));
  MOE_CUDA_RETURN_IF_ERROR(cub::DeviceScan::ExclusiveSum(
      nullptr, scan_raw_bytes, static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
      static_cast<int>(e_count), stream));
  MOE_CUDA_RETURN_IF_ERROR(cub::DeviceScan::ExclusiveSum(
      nullptr, scan_kept_bytes, static_cast<const int64_t*>(nullptr),
      static_cast<int64_t*>(nullptr), static_cast<int>(e_count + 1), stream));
  size_t temp_bytes = std::max(sort_bytes, std::max(scan_raw_bytes, scan_kept_bytes));

  // One workspace, carved into 256-byte-aligned pieces.
  const size_t pair_bytes = AlignUp(n * sizeof(uint32_t));
  const size_t expert_bytes = AlignUp(e_count * sizeof(int32_t));
  const size_t kept_bytes = AlignUp((e_count + 1) * sizeof(int64_t));
  const size_t error_bytes = AlignUp(sizeof(unsigned long long));
  temp_bytes = AlignUp(temp_bytes);
  MOE_ASSIGN_OR_RETURN(void* workspace, ctx.Workspace(4 * pair_bytes + 2 * expert_bytes +
                                                      kept_bytes + error_bytes + temp_bytes));
  char* cursor = static_cast<char*>(workspace);
  auto take = [&cursor](size_t bytes) {
    char* piece = cursor;
    cursor += bytes;
    return piece;
  };
  auto* keys = reinterpret_cast<uint32_t*>(take(pair_bytes));
  auto* sorted_keys = reinterpret_cast<uint32_t*>(take(pair_bytes));
  auto* priorities = reinterpret_cast<uint32_t*>(take(pair_bytes));
  auto* sorted_priorities = reinterpret_cast<uint32_t*>(take(pair_bytes));
  auto* raw_counts = reinterpret_cast<int32_t*>(take(expert_bytes));
  auto* raw_starts = reinterpret_cast<int32_t*>(take(expert_bytes));
  auto* kept = reinterpret_cast<int64_t*>(take(kept_bytes));
  auto* error = reinterpret_cast<unsigned long long*>(take(error_bytes));
  void* temp = take(temp_bytes);

  MOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(raw_counts, 0, e_count * sizeof(int32_t), stream));
  MOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(error, 0xff, sizeof(unsigned long long), stream));
  HistogramKernel<<<CeilDiv(n, kThreads), kThreads, 0, stream>>>(
      topk_idx, t_count, k_count, e_count, raw_counts, keys, priorities, error);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("HistogramKernel");
  MOE_CUDA_RETURN_IF_ERROR(cub::DeviceScan::ExclusiveSum(
      temp, scan_raw_bytes, raw_counts, raw_starts, static_cast<int>(e_count), stream));
  KeptKernel<<<CeilDiv(e_count + 1, kThreads), kThreads, 0, stream>>>(
      raw_counts, e_count, capacity, plan->counts.data<int32_t>(), kept);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("KeptKernel");
  MOE_CUDA_RETURN_IF_ERROR(cub::DeviceScan::ExclusiveSum(temp, scan_kept_bytes, kept, offsets,
                                                         static_cast<int>(e_count + 1), stream));
  MOE_CUDA_RETURN_IF_ERROR(cub::DeviceRadixSort::SortPairs(temp, sort_bytes, keys, sorted_keys,
                                                           priorities, sorted_priorities, num_items,
                                                           0, key_bits, stream));
  SlotsKernel<<<CeilDiv(n, kThreads), kThreads, 0, stream>>>(
      sorted_keys, sorted_priorities, raw_starts, offsets, t_count, k_count, e_count, capacity,
      plan->slots.data<int32_t>(), plan->row_token.data<int32_t>(),
      plan->row_choice.data<int32_t>());
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("SlotsKernel");
  DroppedKernel<<<1, 1, 0, stream>>>(offsets, e_count, n, plan->num_dropped.data<int64_t>());
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("DroppedKernel");

  unsigned long long error_host = kNoError;
  MOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(plan->offsets_host.data(), offsets,
                                           (e_count + 1) * sizeof(int64_t), cudaMemcpyDeviceToHost,
                                           stream));
  MOE_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(&error_host, error, sizeof(error_host), cudaMemcpyDeviceToHost, stream));
  MOE_RETURN_IF_ERROR(ctx.Synchronize());
  plan->dropped_host = n - plan->offsets_host[e_count];
  if (error_host != kNoError) {
    const int64_t pair = static_cast<int64_t>(error_host >> 32);
    const int32_t value = static_cast<int32_t>(static_cast<uint32_t>(error_host));
    return BadArgument(absl::StrCat("topk_idx[", pair / k_count, ", ", pair % k_count, "]"),
                       absl::StrCat(value), absl::StrCat("an expert id in [0, ", e_count, ")"));
  }
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace smoe
