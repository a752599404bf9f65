// Load-balance metrics of one routing (docs/design.md section 5), for logging and studies.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

struct RoutingStats {
  std::vector<int64_t> tokens_per_expert;  // [E]: c_i, (token, choice) pairs routed to expert i
  std::vector<double> f;                   // [E]: c_i / (T K) (0 when T == 0)
  std::vector<double> p_mean;              // [E]: mean router probability over the finite rows
  double max_rel_dev = 0;                  // max_i (c_i - mean) / mean, mean = T K / E
  double min_rel_dev = 0;                  // min_i (c_i - mean) / mean (-1 when one is dead)
  int dead_experts = 0;                    // experts with c_i == 0
  double entropy_mean_p = 0;    // -sum_i p_mean_i ln p_mean_i (nats; 0 ln 0 = 0); ln E is uniform
  int64_t non_finite_rows = 0;  // rows of probs holding a NaN or inf (router.h: such rows are
                                // routed to experts 0..K-1 and excluded from p_mean)
};

// probs [T, E] f32 and topk_idx [T, K] i32 (values in [0, E), checked), contiguous on ctx's device.
// Host synchronization: on CUDA, copies both tensors to the host (synchronizing ctx's stream) and
// computes there; meant for logging, not for the hot path. T == 0 gives zero counts and metrics.
[[nodiscard]] StatusOr<RoutingStats> ComputeRoutingStats(ExecContext& ctx, const TensorView& probs,
                                                         const TensorView& topk_idx);

}  // namespace smoe
