// Augmented Q (Sigma's AugQ): a SwiGLU MLP applied to the query projection,
//   q' = W_down (silu(q W_gate) * (q W_up)),
// with W_gate, W_up [n_q*D, d_aug] and W_down [d_aug, n_q*D]; the projections go through Gemm and
// the gate is runtime/nn/swiglu.h (SwiGLU(gate, up), fp32 math).
//
//   AugQForward:    q_aug [T, n_q*D] from q [T, n_q*D]; keeps gate, up, h [T, d_aug] in `saved`.
//   AugQBackward:   dq [T, n_q*D] (overwritten) and the weight gradients from dq_aug.
// Activations and weights one dtype, f32 or bf16 (Gemm accumulates in fp32); the weight gradients
// are f32 and accumulated (grad += ..., the gradient contract of every weight: callers zero them).
// Contiguous, on ctx's device.
// Deterministic; no sync. The saved and temporary tensors come from ctx's allocator.
#pragma once

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

struct AugQWeights {
  TensorView w_gate;  // [n_q*D, d_aug]
  TensorView w_up;    // [n_q*D, d_aug]
  TensorView w_down;  // [d_aug, n_q*D]
};

struct AugQSaved {
  Tensor gate;  // q W_gate  [T, d_aug]
  Tensor up;    // q W_up    [T, d_aug]
  Tensor h;     // silu(gate) * up
};

[[nodiscard]] Status AugQForward(ExecContext& ctx, const TensorView& q, const AugQWeights& weights,
                                 const TensorView& q_aug, AugQSaved* saved);
// `grads` holds dW_gate, dW_up, dW_down: f32, in the shapes of the weights, accumulated.
[[nodiscard]] Status AugQBackward(ExecContext& ctx, const TensorView& q, const AugQWeights& weights,
                                  const AugQSaved& saved, const TensorView& dq_aug,
                                  const TensorView& dq, const AugQWeights& grads);

}  // namespace smoe
