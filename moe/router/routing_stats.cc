#include "moe/router/routing_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "moe/router/router_internal.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {

StatusOr<RoutingStats> ComputeRoutingStats(ExecContext& ctx, const TensorView& probs,
                                           const TensorView& topk_idx) {
  MOE_RETURN_IF_ERROR(internal::CheckRouterArg("probs", ctx, probs, DType::kF32, {-1, -1}));
  const int64_t t = probs.dim(0), e = probs.dim(1);
  if (e < 1) return BadArgument("probs.shape", probs.shape().ToString(), "[T, E] with E >= 1");
  MOE_RETURN_IF_ERROR(internal::CheckRouterArg("topk_idx", ctx, topk_idx, DType::kI32, {t, -1}));
  const int64_t k = topk_idx.dim(1);

  // Logging path: the host copies (a sync on CUDA) keep this one readable implementation.
  Tensor probs_host_storage, idx_host_storage;
  TensorView probs_host = probs, idx_host = topk_idx;
  if (!ctx.device().is_cpu()) {
    MOE_ASSIGN_OR_RETURN(probs_host_storage, CopyTo(ctx, probs, Device::Cpu()));
    MOE_ASSIGN_OR_RETURN(idx_host_storage, CopyTo(ctx, topk_idx, Device::Cpu()));
    probs_host = probs_host_storage;
    idx_host = idx_host_storage;
  }
  const float* p = t > 0 ? probs_host.data<float>() : nullptr;
  const int32_t* idx = t > 0 && k > 0 ? idx_host.data<int32_t>() : nullptr;

  RoutingStats stats;
  stats.tokens_per_expert.assign(e, 0);
  stats.f.assign(e, 0.0);
  stats.p_mean.assign(e, 0.0);
  for (int64_t i = 0; i < t * k; ++i) {
    if (idx[i] < 0 || idx[i] >= e) {
      return BadArgument(absl::StrCat("topk_idx[", i / k, ", ", i % k, "]"), absl::StrCat(idx[i]),
                         absl::StrCat("an expert in [0, ", e, ")"));
    }
    ++stats.tokens_per_expert[idx[i]];
  }
  int64_t finite_rows = 0;
  for (int64_t r = 0; r < t; ++r) {
    const float* pr = p + r * e;
    if (!std::all_of(pr, pr + e, [](float v) { return std::isfinite(v); })) {
      ++stats.non_finite_rows;
      continue;
    }
    ++finite_rows;
    for (int64_t c = 0; c < e; ++c) stats.p_mean[c] += pr[c];
  }
  for (int64_t c = 0; c < e; ++c) {
    if (finite_rows > 0) stats.p_mean[c] /= finite_rows;
    if (stats.p_mean[c] > 0) stats.entropy_mean_p -= stats.p_mean[c] * std::log(stats.p_mean[c]);
  }
  const int64_t pairs = t * k;
  if (pairs == 0) return stats;
  const double mean = static_cast<double>(pairs) / e;
  stats.max_rel_dev = -std::numeric_limits<double>::infinity();
  stats.min_rel_dev = std::numeric_limits<double>::infinity();
  for (int64_t c = 0; c < e; ++c) {
    const int64_t count = stats.tokens_per_expert[c];
    stats.f[c] = static_cast<double>(count) / pairs;
    const double dev = (count - mean) / mean;
    stats.max_rel_dev = std::max(stats.max_rel_dev, dev);
    stats.min_rel_dev = std::min(stats.min_rel_dev, dev);
    if (count == 0) ++stats.dead_experts;
  }
  return stats;
}

}  // namespace smoe
