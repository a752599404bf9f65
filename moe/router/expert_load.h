// Expert load counting and aux-loss-free load balancing by an expert bias (DeepSeek-V3 style, for
// load-balance studies; the bias enters top-K selection only, see router.h).
#pragma once

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

// counts[i] = number of entries of topk_idx equal to i: topk_idx [T, K] i32, counts [E] i64
// (overwrite), contiguous on ctx's device. Entries outside [0, E) are InvalidArgument on CPU and
// not counted on CUDA (checking would need a sync). Exact and deterministic (integer atomics).
[[nodiscard]] Status CountExperts(ExecContext& ctx, const TensorView& topk_idx,
                                  const TensorView& counts);

// One bias step from per-expert loads: counts [E] i64 (e.g. from CountExperts, all-reduced over
// the group for a global update), bias [E] f32, updated in place:
//   bias_i = clamp(bias_i + rate * sign(mean - counts_i), -bound, bound),  mean = sum_j c_j / E
// so under-loaded experts gain score and over-loaded ones lose it; sign(0) = 0 (an expert exactly
// at the mean keeps its bias, up to the clamp). The comparison is exact (integers: sum - E c_i).
// rate >= 0 and bound >= 0, both finite. Contiguous on ctx's device; no host sync; deterministic.
[[nodiscard]] Status UpdateExpertBias(ExecContext& ctx, const TensorView& counts, float rate,
                                      float bound, const TensorView& bias);

}  // namespace smoe
