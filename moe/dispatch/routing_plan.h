// The routing plan of an MoE layer (docs/design.md section 5, step 2): where each (token, choice)
// pair lands in the expert-sorted buffer, which pairs are dropped for capacity, and the per-expert
// counts and offsets that the grouped expert GEMMs need.
//
// Letters: T tokens, K choices per token (top-k), E experts, C capacity (rows per expert),
// R rows kept in total (R <= T * K).
//
// Priority order (Tutel): all first choices in token order, then all second choices in token
// order, ...; i.e. pair (t, k) has priority p = k * T + t. The slot of (t, k) within expert e is
// its position among the pairs routed to e, in priority order; it is kept iff that position < C
// (always, in dropless mode). Rows of expert e are [offsets[e], offsets[e + 1]) in priority order,
// so the buffer holds, per expert, the kept pairs ranked 0, 1, ..., counts[e] - 1 without gaps.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

struct PlanConfig {
  int num_experts = 0;           // E >= 1
  int top_k = 1;                 // 1 <= K <= E
  float capacity_factor = 0.0f;  // > 0: C = ceil(f * T * K / E) rows per expert, overflow
                                 // dropped; <= 0: dropless. Must be finite.
};

// Capacity C of a capacity-factor config for T tokens: ceil(f * T * K / E), evaluated in double;
// -1 (dropless) when f <= 0.
int64_t PlanCapacity(const PlanConfig& config, int64_t num_tokens);

// Device-resident plan (tensors on the device of the ExecContext that built it) plus the host copy
// of the offsets. Built by BuildRoutingPlan; read by Permute / Combine and the expert GEMMs.
struct RoutingPlan {
  int64_t num_tokens = 0, top_k = 0, num_experts = 0;
  int64_t capacity = -1;  // C; -1 = dropless
  Tensor counts;          // [E] i32: rows kept per expert (after capacity)
  Tensor offsets;         // [E + 1] i64: exclusive scan of counts; offsets[E] = R
  Tensor slots;           // [T, K] i32: row of (t, k) in the expert-sorted buffer, -1 if dropped
  Tensor row_token;       // [T * K] i32: token of row r, for r < R (rest unspecified)
  Tensor row_choice;      // [T * K] i32: t * K + k of row r, for r < R (rest unspecified)
  Tensor num_dropped;     // [1] i64: T * K - R
  std::vector<int64_t> offsets_host;  // [E + 1]: host copy of `offsets`
  int64_t dropped_host = 0;           // host copy of `num_dropped`

  // R, the number of rows kept (offsets_host.back(); 0 for an empty plan).
  int64_t num_rows() const { return offsets_host.empty() ? 0 : offsets_host.back(); }
};

// Builds `plan` for topk_idx: contiguous [T, K] i32 on ctx's device with values in [0, E),
// K == config.top_k. T = 0 is allowed (an all-zero plan). T * K must fit in int32.
// Every tensor of `plan` is (re)allocated on ctx's device from ctx's allocator.
//
// Cost O(T * K + E) on both backends. Deterministic, and the CPU and CUDA backends produce
// identical integers (kernels only use integer atomics for the histogram; positions come from a
// stable radix sort on CUDA).
//
// Host sync: on CUDA this synchronizes ctx's stream once, to copy the offsets (and the error flag)
// to the host: the one host sync of an MoE layer, needed to size the expert GEMMs.
//
// Errors: InvalidArgument naming the field for a bad config or topk_idx; for an out-of-range
// expert id, InvalidArgument naming the first bad pair in row-major order, e.g.
// "topk_idx[3, 1]: got 97, expected an expert id in [0, 96)" (identical on CPU and CUDA; the CUDA
// kernel records it and it is reported after the sync). On error the contents of `plan` are
// unspecified.
[[nodiscard]] Status BuildRoutingPlan(ExecContext& ctx, const PlanConfig& config,
                                      const TensorView& topk_idx, RoutingPlan* plan);

// InvalidArgument unless `plan` looks like a plan built by BuildRoutingPlan on ctx's device (its
// tensors have the documented dtypes and shapes and offsets_host has E + 1 entries). Used by the
// ops that consume a plan; exposed for other consumers (the experts, the layer).
[[nodiscard]] Status CheckRoutingPlan(const ExecContext& ctx, const RoutingPlan& plan);

namespace internal {
// CUDA backend, called after validation with T * K > 0 and the plan's tensors allocated; fills
// them, offsets_host and dropped_host. Returns the out-of-range error described above.
[[nodiscard]] Status BuildRoutingPlanCuda(ExecContext& ctx, const int32_t* topk_idx,
                                          int64_t capacity, RoutingPlan* plan);
}  // namespace internal

}  // namespace smoe
