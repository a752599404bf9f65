#include "moe/moe_layer.h"

#include <cmath>
#include <optional>

#include "absl/strings/str_cat.h"
#include "runtime/core/op_profile.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

Status CheckPositive(absl::string_view field, int64_t value) {
  if (value > 0) return absl::OkStatus();
  return BadArgument(field, absl::StrCat(value), "> 0");
}

Status CheckTopK(int k, int num_experts) {
  if (k >= 1 && k <= num_experts) return absl::OkStatus();
  return BadArgument("top_k", absl::StrCat(k),
                     absl::StrCat("1 <= top_k <= num_experts = ", num_experts));
}

Status CheckParams(const MoELayerConfig& c, const MoEParamViews& p, Device device) {
  const int64_t m = c.model_dim, h = c.ffn_dim, e = c.num_experts;
  MOE_RETURN_IF_ERROR(CheckTensor("params.w_gate", p.w_gate, DType::kF32, device, {m, e}));
  MOE_RETURN_IF_ERROR(CheckTensor("params.w1", p.w1, c.dtype, device, {e, m, h}));
  MOE_RETURN_IF_ERROR(CheckTensor("params.w3", p.w3, c.dtype, device, {e, m, h}));
  return CheckTensor("params.w2", p.w2, c.dtype, device, {e, h, m});
}

Status CheckGrads(const MoELayerConfig& c, const MoEGradViews& g, Device device) {
  const int64_t m = c.model_dim, h = c.ffn_dim, e = c.num_experts;
  MOE_RETURN_IF_ERROR(CheckTensor("grads.w_gate", g.w_gate, DType::kF32, device, {m, e}));
  MOE_RETURN_IF_ERROR(CheckTensor("grads.w1", g.w1, DType::kF32, device, {e, m, h}));
  MOE_RETURN_IF_ERROR(CheckTensor("grads.w3", g.w3, DType::kF32, device, {e, m, h}));
  return CheckTensor("grads.w2", g.w2, DType::kF32, device, {e, h, m});
}

// x-like activation [T, M] in config.dtype on ctx's device, contiguous.
Status CheckActivation(absl::string_view name, const MoELayerConfig& c, const ExecContext& ctx,
                       const TensorView& t, int64_t tokens) {
  MOE_RETURN_IF_ERROR(CheckTensor(name, t, c.dtype, ctx.device(), {tokens, c.model_dim}));
  return CheckContiguous(name, t);
}

}  // namespace

namespace internal {

Status RouteAndPermute(ExecContext& ctx, const MoELayerConfig& config, const TensorView& w_gate,
                       const TensorView& x, Communicator* comm, const TensorView& expert_bias,
                       MoEState* state) {
  const int64_t t = x.dim(0), m = config.model_dim;
  const int64_t e = config.num_experts, k = config.top_k;
  const Device device = ctx.device();
  MoEState& s = *state;

  // 1. Route: fp32 logits, softmax over all E, top-K; aux losses and their gradient.
  std::optional<OpScope> scope(std::in_place, OpKind::kRouter);
  MOE_ASSIGN_OR_RETURN(s.logits, Tensor::Empty({t, e}, DType::kF32, device));
  MOE_ASSIGN_OR_RETURN(s.probs, Tensor::Empty({t, e}, DType::kF32, device));
  MOE_ASSIGN_OR_RETURN(s.d_logits_aux, Tensor::Empty({t, e}, DType::kF32, device));
  MOE_ASSIGN_OR_RETURN(s.topk_idx, Tensor::Empty({t, k}, DType::kI32, device));
  MOE_ASSIGN_OR_RETURN(s.gates, Tensor::Empty({t, k}, DType::kF32, device));
  const RouterConfig router{config.num_experts, config.top_k, config.renormalize};
  MOE_RETURN_IF_ERROR(
      RouterForward(ctx, router, x, w_gate, expert_bias, s.logits, s.probs, s.topk_idx, s.gates));
  MOE_ASSIGN_OR_RETURN(s.aux_values, Tensor::Empty({kAuxLossValues}, DType::kF32, device));
  MOE_RETURN_IF_ERROR(AuxLossForwardBackwardInto(ctx, config.aux, s.logits, s.probs, s.topk_idx,
                                                 comm != nullptr ? comm : SingleRankCommunicator(),
                                                 s.d_logits_aux, s.aux_values));

  // 2. Plan (the host sync: offsets for the grouped GEMMs), 3. dispatch.
  scope.emplace(OpKind::kDispatch);
  const PlanConfig plan{config.num_experts, config.top_k, config.capacity_factor};
  MOE_RETURN_IF_ERROR(BuildRoutingPlan(ctx, plan, s.topk_idx, &s.plan));
  MOE_ASSIGN_OR_RETURN(s.xs, Tensor::Empty({s.plan.num_rows(), m}, config.dtype, device));
  return Permute(ctx, s.plan, x, s.xs);
}

Status RouterBackwardAddDx(ExecContext& ctx, const MoELayerConfig& config, const TensorView& w_gate,
                           const MoEState& s, const TensorView& dgates, float aux_grad_scale,
                           const TensorView& dx, const TensorView& dw_gate, bool accumulate_grads) {
  const OpScope scope(OpKind::kRouter);
  const int64_t t = s.x.dim(0), m = config.model_dim;
  const Device device = ctx.device();
  MOE_ASSIGN_OR_RETURN(Tensor dx_router, Tensor::Empty({t, m}, config.dtype, device));
  const RouterConfig router{config.num_experts, config.top_k, config.renormalize};
  TensorView d_logits_aux = s.d_logits_aux;
  Tensor scaled_aux;
  if (aux_grad_scale != 1.0f) {
    MOE_ASSIGN_OR_RETURN(scaled_aux, Tensor::Empty(s.d_logits_aux.shape(), DType::kF32, device));
    MOE_RETURN_IF_ERROR(Fill(ctx, scaled_aux, 0.0));
    MOE_RETURN_IF_ERROR(Axpy(ctx, scaled_aux, aux_grad_scale, s.d_logits_aux, scaled_aux));
    d_logits_aux = scaled_aux;
  }
  MOE_RETURN_IF_ERROR(RouterBackward(ctx, router, s.x, w_gate, s.probs, s.topk_idx, dgates,
                                     d_logits_aux, dx_router, dw_gate, accumulate_grads));
  return Axpy(ctx, dx, 1.0f, dx_router, dx);
}

}  // namespace internal

Status ValidateMoEConfig(const MoELayerConfig& config) {
  MOE_RETURN_IF_ERROR(CheckPositive("model_dim", config.model_dim));
  MOE_RETURN_IF_ERROR(CheckPositive("ffn_dim", config.ffn_dim));
  MOE_RETURN_IF_ERROR(CheckPositive("num_experts", config.num_experts));
  MOE_RETURN_IF_ERROR(CheckTopK(config.top_k, config.num_experts));
  if (!IsFloating(config.dtype)) {
    return BadArgument("dtype", DTypeName(config.dtype), "f32 or bf16");
  }
  return absl::OkStatus();
}

StatusOr<AuxLossValues> MoEForward(ExecContext& ctx, const MoELayerConfig& config,
                                   const MoEParamViews& params, const TensorView& x,
                                   const TensorView& y, MoEState* state, Communicator* comm,
                                   const TensorView& expert_bias) {
  MOE_RETURN_IF_ERROR(MoEForwardDeferAux(ctx, config, params, x, y, state, comm, expert_bias));
  return ReadAuxLossValues(ctx, state->aux_values);
}

Status MoEForwardDeferAux(ExecContext& ctx, const MoELayerConfig& config,
                          const MoEParamViews& params, const TensorView& x, const TensorView& y,
                          MoEState* state, Communicator* comm, const TensorView& expert_bias) {
  MOE_RETURN_IF_ERROR(ValidateMoEConfig(config));
  MOE_RETURN_IF_ERROR(CheckParams(config, params, ctx.device()));
  MOE_RETURN_IF_ERROR(CheckActivation("x", config, ctx, x, -1));
  const int64_t t = x.dim(0), m = config.model_dim, h = config.ffn_dim;
  MOE_RETURN_IF_ERROR(CheckActivation("y", config, ctx, y, t));
  const Device device = ctx.device();
  MoEState& s = *state;
  s.valid = false;
  MOE_RETURN_IF_ERROR(
      internal::RouteAndPermute(ctx, config, params.w_gate, x, comm, expert_bias, state));
  const int64_t rows = s.plan.num_rows();

  // 4. Experts over ragged groups.
  std::optional<OpScope> scope(std::in_place, OpKind::kExperts);
  MOE_ASSIGN_OR_RETURN(s.h1, Tensor::Empty({rows, h}, config.dtype, device));
  MOE_ASSIGN_OR_RETURN(s.h3, Tensor::Empty({rows, h}, config.dtype, device));
  MOE_ASSIGN_OR_RETURN(s.act, Tensor::Empty({rows, h}, config.dtype, device));
  MOE_ASSIGN_OR_RETURN(s.ys, Tensor::Empty({rows, m}, config.dtype, device));
  MOE_RETURN_IF_ERROR(ExpertsForward(ctx, {params.w1, params.w3, params.w2}, s.xs,
                                     s.plan.offsets_host, {s.h1, s.h3, s.act}, s.ys));

  // 5. Combine, scaled by the gates.
  scope.emplace(OpKind::kDispatch);
  MOE_RETURN_IF_ERROR(Combine(ctx, s.plan, s.ys, s.gates, y));
  s.x = x;
  s.top_k = config.top_k;
  s.valid = true;
  return absl::OkStatus();
}

Status MoEBackward(ExecContext& ctx, const MoELayerConfig& config, const MoEParamViews& params,
                   const MoEState& s, const TensorView& dy, const TensorView& dx,
                   const MoEGradViews& grads, bool accumulate_grads, float aux_grad_scale) {
  if (!s.valid) return absl::FailedPreconditionError("MoE backward before a successful forward");
  if (s.top_k != config.top_k) {
    return absl::FailedPreconditionError(absl::StrCat("MoE backward: top_k is ", config.top_k,
                                                      " but the forward routed with ", s.top_k));
  }
  MOE_RETURN_IF_ERROR(CheckParams(config, params, ctx.device()));
  MOE_RETURN_IF_ERROR(CheckGrads(config, grads, ctx.device()));
  const int64_t t = s.x.dim(0), m = config.model_dim, k = config.top_k;
  MOE_RETURN_IF_ERROR(CheckActivation("dy", config, ctx, dy, t));
  MOE_RETURN_IF_ERROR(CheckActivation("dx", config, ctx, dx, t));
  const int64_t rows = s.plan.num_rows();
  const Device device = ctx.device();

  // Combine backward: gradients into the expert outputs and into the gates.
  std::optional<OpScope> scope(std::in_place, OpKind::kDispatch);
  MOE_ASSIGN_OR_RETURN(Tensor dys, Tensor::Empty({rows, m}, config.dtype, device));
  MOE_ASSIGN_OR_RETURN(Tensor dgates, Tensor::Empty({t, k}, DType::kF32, device));
  MOE_RETURN_IF_ERROR(CombineBackward(ctx, s.plan, dy, s.ys, s.gates, dys, dgates));

  // Experts backward, then back to token order.
  scope.emplace(OpKind::kExperts);
  MOE_ASSIGN_OR_RETURN(Tensor dxs, Tensor::Empty({rows, m}, config.dtype, device));
  MOE_RETURN_IF_ERROR(ExpertsBackward(ctx, {params.w1, params.w3, params.w2}, s.xs,
                                      s.plan.offsets_host, {s.h1, s.h3, s.act}, dys, dxs,
                                      {grads.w1, grads.w3, grads.w2}, accumulate_grads));
  scope.emplace(OpKind::kDispatch);
  MOE_RETURN_IF_ERROR(PermuteBackward(ctx, s.plan, dxs, dx));
  scope.reset();  // the router backward has its own

  // Router backward: gates and aux losses -> logits -> x and w_gate; dx sums both paths.
  return internal::RouterBackwardAddDx(ctx, config, params.w_gate, s, dgates, aux_grad_scale, dx,
                                       grads.w_gate, accumulate_grads);
}

StatusOr<RoutingStats> MoEStats(ExecContext& ctx, const MoEState& state) {
  if (!state.valid) return absl::FailedPreconditionError("MoE stats before a successful forward");
  return ComputeRoutingStats(ctx, state.probs, state.topk_idx);
}

StatusOr<std::unique_ptr<MoELayer>> MoELayer::Create(const MoELayerConfig& config, Device device) {
  MOE_RETURN_IF_ERROR(ValidateMoEConfig(config));
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
                                {&params_.w1, std_in},
                                {&params_.w3, std_in},
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

MoEParamViews MoELayer::param_views() const {
  return {params_.w_gate, params_.w1, params_.w3, params_.w2};
}

MoEGradViews MoELayer::grad_views() const {
  return {grads_.w_gate, grads_.w1, grads_.w3, grads_.w2};
}

StatusOr<AuxLossValues> MoELayer::Forward(ExecContext& ctx, const TensorView& x,
                                          const TensorView& y) {
  if (ctx.device() != device_) {
    return BadArgument("ctx.device", ctx.device().ToString(), device_.ToString());
  }
  return MoEForward(ctx, config_, param_views(), x, y, &state_, comm_);
}

Status MoELayer::Backward(ExecContext& ctx, const TensorView& dy, const TensorView& dx,
                          bool accumulate_grads) {
  return MoEBackward(ctx, config_, param_views(), state_, dy, dx, grad_views(), accumulate_grads);
}

}  // namespace smoe
