#include "moe/dispatch/routing_plan.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

Status Allocate(ExecContext& ctx, Shape shape, DType dtype, Tensor* out) {
  MOE_ASSIGN_OR_RETURN(*out, Tensor::Empty(shape, dtype, ctx.device(), ctx.allocator()));
  return absl::OkStatus();
}

Status AllocatePlan(ExecContext& ctx, int64_t t, int64_t k, int64_t e, RoutingPlan* plan) {
  MOE_RETURN_IF_ERROR(Allocate(ctx, {e}, DType::kI32, &plan->counts));
  MOE_RETURN_IF_ERROR(Allocate(ctx, {e + 1}, DType::kI64, &plan->offsets));
  MOE_RETURN_IF_ERROR(Allocate(ctx, {t, k}, DType::kI32, &plan->slots));
  MOE_RETURN_IF_ERROR(Allocate(ctx, {t * k}, DType::kI32, &plan->row_token));
  MOE_RETURN_IF_ERROR(Allocate(ctx, {t * k}, DType::kI32, &plan->row_choice));
  MOE_RETURN_IF_ERROR(Allocate(ctx, {1}, DType::kI64, &plan->num_dropped));
  plan->offsets_host.assign(e + 1, 0);
  plan->dropped_host = 0;
  return absl::OkStatus();
}

// The reference: one pass in priority order ranks each pair within its expert, a scan gives the
// offsets, a second pass turns ranks into rows.
Status BuildRoutingPlanCpu(const int32_t* idx, int64_t capacity, RoutingPlan* plan) {
  const int64_t t_count = plan->num_tokens, k_count = plan->top_k, e_count = plan->num_experts;
  for (int64_t i = 0; i < t_count * k_count; ++i) {
    if (idx[i] < 0 || idx[i] >= e_count) {
      return BadArgument(absl::StrCat("topk_idx[", i / k_count, ", ", i % k_count, "]"),
                         absl::StrCat(idx[i]), absl::StrCat("an expert id in [0, ", e_count, ")"));
    }
  }
  int32_t* slots = plan->slots.data<int32_t>();
  std::vector<int64_t> routed(e_count, 0);  // pairs routed to e so far, kept or not
  for (int64_t k = 0; k < k_count; ++k) {
    for (int64_t t = 0; t < t_count; ++t) {
      const int64_t pair = t * k_count + k;
      const int64_t rank = routed[idx[pair]]++;
      slots[pair] = (capacity < 0 || rank < capacity) ? static_cast<int32_t>(rank) : -1;
    }
  }
  int32_t* counts = plan->counts.data<int32_t>();
  int64_t* offsets = plan->offsets.data<int64_t>();
  offsets[0] = 0;
  for (int64_t e = 0; e < e_count; ++e) {
    const int64_t kept = capacity < 0 ? routed[e] : std::min(routed[e], capacity);
    counts[e] = static_cast<int32_t>(kept);
    offsets[e + 1] = offsets[e] + kept;
  }
  int32_t* row_token = plan->row_token.data<int32_t>();
  int32_t* row_choice = plan->row_choice.data<int32_t>();
  std::fill(row_token, row_token + t_count * k_count, -1);
  std::fill(row_choice, row_choice + t_count * k_count, -1);
  for (int64_t pair = 0; pair < t_count * k_count; ++pair) {
    if (slots[pair] < 0) continue;
    const int64_t row = offsets[idx[pair]] + slots[pair];
    slots[pair] = static_cast<int32_t>(row);
    row_token[row] = static_cast<int32_t>(pair / k_count);
    row_choice[row] = static_cast<int32_t>(pair);
  }
  const int64_t rows = offsets[e_count];
  plan->num_dropped.data<int64_t>()[0] = t_count * k_count - rows;
  plan->offsets_host.assign(offsets, offsets + e_count + 1);
  plan->dropped_host = t_count * k_count - rows;
  return absl::OkStatus();
}

}  // namespace

int64_t PlanCapacity(const PlanConfig& config, int64_t num_tokens) {
  if (!(config.capacity_factor > 0.0f) || config.num_experts <= 0) return -1;
  return static_cast<int64_t>(std::ceil(static_cast<double>(config.capacity_factor) *
                                        static_cast<double>(num_tokens) * config.top_k /
                                        config.num_experts));
}

Status BuildRoutingPlan(ExecContext& ctx, const PlanConfig& config, const TensorView& topk_idx,
                        RoutingPlan* plan) {
  if (plan == nullptr) return BadArgument("plan", "null", "a RoutingPlan to fill");
  if (config.num_experts < 1) {
    return BadArgument("config.num_experts", absl::StrCat(config.num_experts), ">= 1");
  }
  if (config.top_k < 1 || config.top_k > config.num_experts) {
    return BadArgument("config.top_k", absl::StrCat(config.top_k),
                       absl::StrCat("in [1, num_experts = ", config.num_experts, "]"));
  }
  if (!std::isfinite(config.capacity_factor)) {
    return BadArgument("config.capacity_factor", absl::StrCat(config.capacity_factor),
                       "a finite number (<= 0 for dropless)");
  }
  MOE_RETURN_IF_ERROR(
      CheckTensor("topk_idx", topk_idx, DType::kI32, ctx.device(), {-1, config.top_k}));
  MOE_RETURN_IF_ERROR(CheckContiguous("topk_idx", topk_idx));
  const int64_t t_count = topk_idx.dim(0), k_count = config.top_k, e_count = config.num_experts;
  if (t_count * k_count > std::numeric_limits<int32_t>::max()) {
    return BadArgument("topk_idx.shape", topk_idx.shape().ToString(),
                       "at most 2^31 - 1 (token, choice) pairs (slots are i32)");
  }

  MOE_RETURN_IF_ERROR(AllocatePlan(ctx, t_count, k_count, e_count, plan));
  plan->num_tokens = t_count;
  plan->top_k = k_count;
  plan->num_experts = e_count;
  plan->capacity = PlanCapacity(config, t_count);

  if (t_count == 0) {
    MOE_RETURN_IF_ERROR(Fill(ctx, plan->counts, 0));
    MOE_RETURN_IF_ERROR(Fill(ctx, plan->offsets, 0));
    return Fill(ctx, plan->num_dropped, 0);
  }
  if (ctx.device().is_cuda()) {
    return internal::BuildRoutingPlanCuda(ctx, topk_idx.data<int32_t>(), plan->capacity, plan);
  }
  return BuildRoutingPlanCpu(topk_idx.data<int32_t>(), plan->capacity, plan);
}

Status CheckRoutingPlan(const ExecContext& ctx, const RoutingPlan& plan) {
  const int64_t t = plan.num_tokens, k = plan.top_k, e = plan.num_experts;
  if (e < 1 || k < 1 || t < 0) {
    return BadArgument("plan", absl::StrCat("T = ", t, ", K = ", k, ", E = ", e),
                       "a plan built by BuildRoutingPlan");
  }
  MOE_RETURN_IF_ERROR(CheckTensor("plan.counts", plan.counts, DType::kI32, ctx.device(), {e}));
  MOE_RETURN_IF_ERROR(
      CheckTensor("plan.offsets", plan.offsets, DType::kI64, ctx.device(), {e + 1}));
  MOE_RETURN_IF_ERROR(CheckTensor("plan.slots", plan.slots, DType::kI32, ctx.device(), {t, k}));
  MOE_RETURN_IF_ERROR(
      CheckTensor("plan.row_token", plan.row_token, DType::kI32, ctx.device(), {t * k}));
  MOE_RETURN_IF_ERROR(
      CheckTensor("plan.row_choice", plan.row_choice, DType::kI32, ctx.device(), {t * k}));
  if (static_cast<int64_t>(plan.offsets_host.size()) != e + 1) {
    return BadArgument("plan.offsets_host.size", absl::StrCat(plan.offsets_host.size()),
                       absl::StrCat("E + 1 = ", e + 1));
  }
  if (plan.num_rows() < 0 || plan.num_rows() > t * k) {
    return BadArgument("plan.offsets_host[E]", absl::StrCat(plan.num_rows()),
                       absl::StrCat("in [0, T * K = ", t * k, "]"));
  }
  return absl::OkStatus();
}

#if !MOE_WITH_CUDA
namespace internal {
Status BuildRoutingPlanCuda(ExecContext&, const int32_t*, int64_t, RoutingPlan*) {
  return absl::FailedPreconditionError(
      "BuildRoutingPlan on CUDA, but this build has no CUDA backend");
}
}  // namespace internal
#endif

}  // namespace smoe
