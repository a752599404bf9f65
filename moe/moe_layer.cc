#include "moe/moe_layer.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

Status CheckPositive(absl::string_view field, int64_t value) {
  if (value > 0) return absl::OkStatus();
  return BadArgument(field, absl::StrCat(value), "> 0");
}

Status CheckTopK(int k, int num_experts) {
  if (k >= 1 && k <= num_experts) return absl::OkStatus();
  return BadArgument("top_k", absl::StrCat(k), absl::StrCat("1 <= top_k <= num_experts = ", num_experts));
}

}  // namespace

StatusOr<std::unique_ptr<MoELayer>> MoELayer::Create(const MoELayerConfig& config, Device device) {
  MOE_RETURN_IF_ERROR(CheckPositive("model_dim", config.model_dim));
  MOE_RETURN_IF_ERROR(CheckPositive("ffn_dim", config.ffn_dim));
  MOE_RETURN_IF_ERROR(CheckPositive("num_experts", config.num_experts));
  MOE_RETURN_IF_ERROR(CheckTopK(config.top_k, config.num_experts));
  if (!IsFloating(config.dtype)) {
    return BadArgument("dtype", DTypeName(config.dtype), "f32 or bf16");
  }
  std::unique_ptr<MoELayer> layer(new MoELayer(config, device));
  const int64_t m = config.model_dim, h = config.ffn_dim, e = config.num_experts;
  for (MoEParams* set : {&layer->params_, &layer->grads_}) {
    const DType expert_dtype = set == &layer->params_ ? config.dtype : DType::kF32;
    MOE_ASSIGN_OR_RETURN(set->w_gate, Tensor::Empty({m, e}, DType::kF32, device));
    MOE_ASSIGN_OR_RETURN(set->w1, Tensor::Empty({e, m, h}, expert_dtype, device));
    MOE_ASSIGN_OR_RETURN(set->w3, Tensor::Empty({e, m, h}, expert_dtype, device));
    MOE_ASSIGN_OR_RETURN(set->w2, Tensor::Empty({e, h, m}, expert_dtype, device));
  }
  layer->comm_ = SingleRankCommunicator();
  return layer;
}

Status MoELayer::InitParameters(ExecContext& ctx, uint64_t seed) {
  const float std_in = 1.0f / std::sqrt(static_cast<float>(config_.model_dim));
  const float std_hidden = 1.0f / std::sqrt(static_cast<float>(config_.ffn_dim));
  uint64_t offset = 0;
  for (auto [tensor, stddev] : {std::pair<Tensor*, float>{&params_.w_gate, std_in},
                                {&params_.w1, std_in}, {&params_.w3, std_in},
                                {&params_.w2, std_hidden}}) {
    MOE_RETURN_IF_ERROR(FillNormal(ctx, *tensor, seed, offset, 0.0f, stddev));
    offset += static_cast<uint64_t>(tensor->numel());
  }
  return absl::OkStatus();
}

Status MoELayer::SetTopK(int k) {
  MOE_RETURN_IF_ERROR(CheckTopK(k, config_.num_experts));
  config_.top_k = k;
  return absl::OkStatus();
}

StatusOr<AuxLossValues> MoELayer::Forward(ExecContext& ctx, const TensorView& x,
                                          const TensorView& y) {
  const int64_t m = config_.model_dim, h = config_.ffn_dim;
  const int64_t e = config_.num_experts, k = config_.top_k;
  if (ctx.device() != device_) {
    return BadArgument("ctx.device", ctx.device().ToString(), device_.ToString());
  }
  MOE_RETURN_IF_ERROR(CheckTensor("x", x, config_.dtype, device_, {-1, m}));
  MOE_RETURN_IF_ERROR(CheckContiguous("x", x));
  const int64_t t = x.dim(0);
  forward_done_ = false;
  MOE_RETURN_IF_ERROR(CheckTensor("y", y, config_.dtype, device_, {t, m}));
  MOE_RETURN_IF_ERROR(CheckContiguous("y", y));

  // 1. Route: fp32 logits, softmax over all E, top-K; aux losses and their gradient.
  MOE_ASSIGN_OR_RETURN(logits_, Tensor::Empty({t, e}, DType::kF32, device_));
  MOE_ASSIGN_OR_RETURN(probs_, Tensor::Empty({t, e}, DType::kF32, device_));
  MOE_ASSIGN_OR_RETURN(d_logits_aux_, Tensor::Empty({t, e}, DType::kF32, device_));
  MOE_ASSIGN_OR_RETURN(topk_idx_, Tensor::Empty({t, k}, DType::kI32, device_));
  MOE_ASSIGN_OR_RETURN(gates_, Tensor::Empty({t, k}, DType::kF32, device_));
  const RouterConfig router{config_.num_experts, config_.top_k, config_.renormalize};
  MOE_RETURN_IF_ERROR(RouterForward(ctx, router, x, params_.w_gate, expert_bias_, logits_, probs_,
                                    topk_idx_, gates_));
  MOE_ASSIGN_OR_RETURN(AuxLossValues aux,
                       AuxLossForwardBackward(ctx, config_.aux, logits_, probs_, topk_idx_, comm_,
                                              d_logits_aux_));

  // 2. Plan (the host sync: offsets for the grouped GEMMs), 3. dispatch.
  const PlanConfig plan{config_.num_experts, config_.top_k, config_.capacity_factor};
  MOE_RETURN_IF_ERROR(BuildRoutingPlan(ctx, plan, topk_idx_, &plan_));
  const int64_t rows = plan_.num_rows();
  MOE_ASSIGN_OR_RETURN(xs_, Tensor::Empty({rows, m}, config_.dtype, device_));
  MOE_RETURN_IF_ERROR(Permute(ctx, plan_, x, xs_));

  // 4. Experts over ragged groups.
  MOE_ASSIGN_OR_RETURN(h1_, Tensor::Empty({rows, h}, config_.dtype, device_));
  MOE_ASSIGN_OR_RETURN(h3_, Tensor::Empty({rows, h}, config_.dtype, device_));
  MOE_ASSIGN_OR_RETURN(act_, Tensor::Empty({rows, h}, config_.dtype, device_));
  MOE_ASSIGN_OR_RETURN(ys_, Tensor::Empty({rows, m}, config_.dtype, device_));
  MOE_RETURN_IF_ERROR(ExpertsForward(ctx, {params_.w1, params_.w3, params_.w2}, xs_,
                                     plan_.offsets_host, {h1_, h3_, act_}, ys_));

  // 5. Combine, scaled by the gates.
  MOE_RETURN_IF_ERROR(Combine(ctx, plan_, ys_, gates_, y));
  x_ = x;
  forward_done_ = true;
  return aux;
}

Status MoELayer::Backward(ExecContext& ctx, const TensorView& dy, const TensorView& dx,
                          bool accumulate_grads) {
  if (!forward_done_) return absl::FailedPreconditionError("MoELayer::Backward before Forward");
  const int64_t t = x_.dim(0), m = config_.model_dim, k = config_.top_k;
  if (topk_idx_.dim(1) != k) {
    return absl::FailedPreconditionError("MoELayer::Backward: top_k changed since Forward");
  }
  MOE_RETURN_IF_ERROR(CheckTensor("dy", dy, config_.dtype, device_, {t, m}));
  MOE_RETURN_IF_ERROR(CheckContiguous("dy", dy));
  MOE_RETURN_IF_ERROR(CheckTensor("dx", dx, config_.dtype, device_, {t, m}));
  MOE_RETURN_IF_ERROR(CheckContiguous("dx", dx));
  const int64_t rows = plan_.num_rows();

  // Combine backward: gradients into the expert outputs and into the gates.
  MOE_ASSIGN_OR_RETURN(Tensor dys, Tensor::Empty({rows, m}, config_.dtype, device_));
  MOE_ASSIGN_OR_RETURN(Tensor dgates, Tensor::Empty({t, k}, DType::kF32, device_));
  MOE_RETURN_IF_ERROR(CombineBackward(ctx, plan_, dy, ys_, gates_, dys, dgates));

  // Experts backward, then back to token order.
  MOE_ASSIGN_OR_RETURN(Tensor dxs, Tensor::Empty({rows, m}, config_.dtype, device_));
  MOE_RETURN_IF_ERROR(ExpertsBackward(ctx, {params_.w1, params_.w3, params_.w2}, xs_,
                                      plan_.offsets_host, {h1_, h3_, act_}, dys, dxs,
                                      {grads_.w1, grads_.w3, grads_.w2}, accumulate_grads));
  MOE_RETURN_IF_ERROR(PermuteBackward(ctx, plan_, dxs, dx));

  // Router backward: gates and aux losses -> logits -> x and w_gate; dx sums both paths.
  MOE_ASSIGN_OR_RETURN(Tensor dx_router, Tensor::Empty({t, m}, config_.dtype, device_));
  const RouterConfig router{config_.num_experts, config_.top_k, config_.renormalize};
  MOE_RETURN_IF_ERROR(RouterBackward(ctx, router, x_, params_.w_gate, probs_, topk_idx_, dgates,
                                     d_logits_aux_, dx_router, grads_.w_gate, accumulate_grads));
  return Axpy(ctx, dx, 1.0f, dx_router, dx);
}

StatusOr<RoutingStats> MoELayer::Stats(ExecContext& ctx) const {
  if (!forward_done_) return absl::FailedPreconditionError("MoELayer::Stats before Forward");
  return ComputeRoutingStats(ctx, probs_, topk_idx_);
}

}  // namespace smoe
