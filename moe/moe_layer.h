// MoELayer: one Sigma-MoE-Tiny MoE layer, Route -> Plan -> Dispatch -> Experts -> Combine, and its
// backward (docs/design.md section 5). One API on CPU and CUDA.
//
// Parameters (owned by the layer, on its device):
//   w_gate [M, E] f32 (the router is fp32 whatever the activation dtype),
//   w1, w3 [E, M, H] and w2 [E, H, M] in the activation dtype (f32 on CPU, bf16 or f32 on GPU).
// Gradients: f32, same shapes; Backward overwrites them (or accumulates, see Backward).
//
// Forward(x [T, M], y [T, M]) writes y = sum_k gate[t, k] * Expert_{e(t, k)}(x[t]) (dropped choices
// contribute 0) and returns the aux-loss values; the layer keeps what Backward needs until the next
// Forward, including a view of x (the caller keeps x alive and unchanged until Backward).
// Backward(dy [T, M], dx [T, M]) writes dx (overwrite) and the parameter gradients. The aux losses'
// gradient (their coefficients included) is part of it: the training loss is main loss + aux total.
//
// Host syncs: one per Forward (the per-expert row offsets for the grouped GEMMs) plus one to return
// the aux-loss values; MoEForwardDeferAux leaves them on the device and makes only the first.
// Backward makes none. Stats() syncs.
#pragma once

#include <memory>

#include "moe/dispatch/permute.h"
#include "moe/dispatch/routing_plan.h"
#include "moe/experts/experts.h"
#include "moe/router/aux_loss.h"
#include "moe/router/router.h"
#include "moe/router/routing_stats.h"
#include "runtime/comm/communicator.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

struct MoELayerConfig {
  int64_t model_dim = 0;         // M
  int64_t ffn_dim = 0;           // H (per expert)
  int num_experts = 0;           // E
  int top_k = 1;                 // K (may change between steps: SetTopK)
  bool renormalize = false;      // gates renormalized over the K chosen experts
  float capacity_factor = 0.0f;  // <= 0: dropless
  DType dtype = DType::kF32;     // activations and expert weights
  AuxLossConfig aux;
};

// Non-owning views of a layer's parameters and of their gradients (the functional API lets a
// framework such as PyTorch own them).
struct MoEParamViews {
  TensorView w_gate;  // [M, E] f32
  TensorView w1, w3;  // [E, M, H] config.dtype
  TensorView w2;      // [E, H, M] config.dtype
};
struct MoEGradViews {
  TensorView w_gate, w1, w3, w2;  // f32, shapes as the parameters
};

// What MoEForward saves for MoEBackward. Owns its tensors; holds a view of x (the caller keeps x
// alive and unchanged until MoEBackward).
struct MoEState {
  bool valid = false;
  int top_k = 0;
  TensorView x;
  Tensor logits, probs, topk_idx, gates, d_logits_aux;
  Tensor aux_values;  // [kAuxLossValues] f32 on the device: lbl, z_loss, top1_lbl, total
  RoutingPlan plan;
  Tensor xs, h1, h3, act, ys;
};

// Validates a config: InvalidArgument naming the field.
[[nodiscard]] Status ValidateMoEConfig(const MoELayerConfig& config);

// The layer as functions (see the contract at the top of this file). `expert_bias` [E] f32 or
// absent (aux-loss-free balancing; selection only). `comm` null means a single rank.
[[nodiscard]] StatusOr<AuxLossValues> MoEForward(ExecContext& ctx, const MoELayerConfig& config,
                                                 const MoEParamViews& params, const TensorView& x,
                                                 const TensorView& y, MoEState* state,
                                                 Communicator* comm = nullptr,
                                                 const TensorView& expert_bias = {});
// MoEForward without the aux-loss values' host sync: they stay in state->aux_values (on ctx's
// device) until the caller reads them (ReadAuxLossValues) or adds them up on the device. One host
// sync: the plan's offsets.
[[nodiscard]] Status MoEForwardDeferAux(ExecContext& ctx, const MoELayerConfig& config,
                                        const MoEParamViews& params, const TensorView& x,
                                        const TensorView& y, MoEState* state,
                                        Communicator* comm = nullptr,
                                        const TensorView& expert_bias = {});
[[nodiscard]] Status MoEBackward(ExecContext& ctx, const MoELayerConfig& config,
                                 const MoEParamViews& params, const MoEState& state,
                                 const TensorView& dy, const TensorView& dx,
                                 const MoEGradViews& grads, bool accumulate_grads = false,
                                 float aux_grad_scale = 1.0f);
// (aux_grad_scale multiplies the aux losses' gradient, e.g. 1/N under N-way gradient accumulation.)
// Routing statistics of the forward that filled `state` (host sync).
[[nodiscard]] StatusOr<RoutingStats> MoEStats(ExecContext& ctx, const MoEState& state);

namespace internal {
// The token-side steps of MoEForward and MoEBackward, shared with the expert-parallel layer
// (moe/parallel_moe_layer.h). Arguments are validated by the caller.
//
// Route (fp32 logits, softmax, top-K, the aux losses and their gradient), plan, and permute x into
// state->xs [R, M] in global expert order. Fills state's logits, probs, topk_idx, gates,
// d_logits_aux, aux_values (on the device), plan and xs; leaves valid, top_k and x to the caller.
// One host sync (the plan).
[[nodiscard]] Status RouteAndPermute(ExecContext& ctx, const MoELayerConfig& config,
                                     const TensorView& w_gate, const TensorView& x,
                                     Communicator* comm, const TensorView& expert_bias,
                                     MoEState* state);
// Router backward of the forward saved in `state`: dgates [T, K] f32 and the aux losses' gradient
// (times aux_grad_scale) -> logits -> x, added into dx [T, M], and -> w_gate into dw_gate
// (overwritten, or added to when accumulate_grads).
[[nodiscard]] Status RouterBackwardAddDx(ExecContext& ctx, const MoELayerConfig& config,
                                         const TensorView& w_gate, const MoEState& state,
                                         const TensorView& dgates, float aux_grad_scale,
                                         const TensorView& dx, const TensorView& dw_gate,
                                         bool accumulate_grads);
}  // namespace internal

// Owned parameters (or gradients: all f32) of a layer.
struct MoEParams {
  Tensor w_gate, w1, w3, w2;
};

// The layer as an object owning its parameters, gradients and saved state.
class MoELayer {
 public:
  // Validates the config and allocates parameters and gradients on `device` (uninitialized:
  // call InitParameters or load them).
  [[nodiscard]] static StatusOr<std::unique_ptr<MoELayer>> Create(const MoELayerConfig& config,
                                                                  Device device);

  // Deterministic init from `seed`: w_gate, w1, w3 ~ N(0, 1/M), w2 ~ N(0, 1/H), each from its own
  // range of one Philox stream, so CPU and GPU initialize identically.
  [[nodiscard]] Status InitParameters(ExecContext& ctx, uint64_t seed);

  [[nodiscard]] StatusOr<AuxLossValues> Forward(ExecContext& ctx, const TensorView& x,
                                                const TensorView& y);
  // accumulate_grads: add into the gradients instead of overwriting them (gradient accumulation).
  [[nodiscard]] Status Backward(ExecContext& ctx, const TensorView& dy, const TensorView& dx,
                                bool accumulate_grads = false);

  // Routing statistics of the last Forward (host sync).
  [[nodiscard]] StatusOr<RoutingStats> Stats(ExecContext& ctx) const {
    return MoEStats(ctx, state_);
  }
  // Rows dropped by capacity in the last Forward.
  int64_t dropped() const { return state_.plan.dropped_host; }

  // Progressive sparsification: the next Forward routes to k experts.
  [[nodiscard]] Status SetTopK(int k);
  void set_communicator(Communicator* comm) { comm_ = comm; }
  const MoELayerConfig& config() const { return config_; }
  Device device() const { return device_; }
  MoEParams& params() { return params_; }
  MoEParams& grads() { return grads_; }
  MoEParamViews param_views() const;
  MoEGradViews grad_views() const;

 private:
  MoELayer(const MoELayerConfig& config, Device device) : config_(config), device_(device) {}

  MoELayerConfig config_;
  Device device_;
  Communicator* comm_ = nullptr;
  MoEParams params_;
  MoEParams grads_;
  MoEState state_;
};

}  // namespace smoe
