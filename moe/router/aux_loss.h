// Router auxiliary losses (docs/design.md section 5) and their exact gradient w.r.t. the logits.
//
// Letters: T tokens on this rank, E experts, K choices per token.
//   c_i   = number of (token, choice) pairs of topk_idx routed to expert i (before any capacity
//           drop); with global_lbl, c is summed over the communicator's group first.
//   f_i   = c_i / sum_j c_j (= c_i / (T K) locally); a constant: no gradient flows through it.
//   P_i   = mean_t p_ti over this rank's tokens.
//   lbl      = E * sum_i f_i P_i                                  (Switch / GShard)
//   z_loss   = mean_t logsumexp(logits_t)^2                       (ST-MoE)
//   top1_lbl = E * sum_i P_i^2 / mean_t max_i p_ti                (Sigma-MoE-Tiny; P_i = fhat_i)
//   total    = lbl_coef * lbl + z_coef * z_loss + top1_lbl_coef * top1_lbl
// All three values are computed whatever the coefficients (for logging); only `total` is
// differentiated. d_logits = d total / d logits, through probs = softmax(logits) (probs must be
// that softmax) and directly for the z-loss. The max in top1_lbl is differentiated at the
// arg max (ties: lower index), a subgradient where the max is tied.
// T == 0 gives all-zero values (and nothing to write).
//
// Non-finite rows (NaN probs) make the values and gradients NaN: they are not masked.
#pragma once

#include "runtime/comm/communicator.h"
#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

struct AuxLossConfig {
  float lbl_coef = 0.0f;       // Switch/GShard LBL: E * sum_i f_i P_i
  bool global_lbl = false;     // f from counts summed over the communicator's group
  float z_coef = 0.0f;         // z-loss: mean_t logsumexp(logits_t)^2
  float top1_lbl_coef = 0.0f;  // Sigma-MoE-Tiny Top-1 LBL: E * sum_i fhat_i^2 / mean_t max_i p_ti
};

struct AuxLossValues {
  double lbl = 0, z_loss = 0, top1_lbl = 0, total = 0;  // total = sum coef * value
};

// logits, probs [T, E] f32; topk_idx [T, K] i32 with values in [0, E) (checked on CPU; on CUDA
// an out-of-range entry is not counted); d_logits [T, E] f32 (overwrite). All contiguous on ctx's
// device. Coefficients must be finite.
// `comm` may be null (a single rank); it is used only when global_lbl. Every rank of the group
// must call this collectively when global_lbl. The communicator gets host buffers: on CUDA the E
// counts are copied to the host, all-reduced, and used there.
// Host synchronization: on CUDA this synchronizes ctx's stream once, to return the values on the
// host (ReadAuxLossValues); AuxLossForwardBackwardInto leaves them on the device instead. The
// sums, the loss values and the gradient's coefficients are all computed on the device; only
// global_lbl over a communicator of more than one rank takes the E counts through the host (one
// sync). d_logits is written by work enqueued on the stream.
// Deterministic: fixed-order reductions on both backends (integer atomics only for the counts).
[[nodiscard]] StatusOr<AuxLossValues> AuxLossForwardBackward(
    ExecContext& ctx, const AuxLossConfig& config, const TensorView& logits,
    const TensorView& probs, const TensorView& topk_idx, Communicator* comm,
    const TensorView& d_logits);

// The values as a device tensor: [kAuxLossValues] f32, in the order lbl, z_loss, top1_lbl, total.
inline constexpr int64_t kAuxLossValues = 4;
// AuxLossForwardBackward with the values written (overwritten) into `values` [kAuxLossValues] f32
// on ctx's device: no host sync on CUDA (but for global_lbl over several ranks, see above).
[[nodiscard]] Status AuxLossForwardBackwardInto(ExecContext& ctx, const AuxLossConfig& config,
                                                const TensorView& logits, const TensorView& probs,
                                                const TensorView& topk_idx, Communicator* comm,
                                                const TensorView& d_logits,
                                                const TensorView& values);
// `values` [kAuxLossValues] f32 (host or ctx's device) on the host: one host sync for a device
// tensor.
[[nodiscard]] StatusOr<AuxLossValues> ReadAuxLossValues(ExecContext& ctx, const TensorView& values);

}  // namespace smoe
