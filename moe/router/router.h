// The MoE router (docs/design.md section 5, step 1): logits = x W_g in fp32, probabilities =
// softmax over all E experts, top-K selection (optionally biased, for aux-loss-free balancing) and
// the gates.
//
// Letters: T tokens, M model dim, E experts, K choices per token.
//
// Forward:
//   logits[t, e]  = sum_m x[t, m] w_gate[m, e], fp32 accumulation; a bf16 x is widened to f32
//                   first (the GEMM never runs in bf16).
//   probs[t, :]   = softmax(logits[t, :]) over all E.
//   score[t, e]   = logits[t, e] + expert_bias[e] (float add; = logits without a bias). Used for
//                   selection only: the bias never enters probs, gates or gradients.
//   topk_idx[t,:] = the K experts of highest score, in descending score order; equal scores
//                   rank by lower expert index first. K distinct indices in [0, E).
//   topk_gates    = probs at topk_idx; with `renormalize`, divided by the sum of the K chosen
//                   probs (summed in choice order 0..K-1).
// Non-finite rows: when any score of row t is NaN or +-inf (in particular when a logit is, which
// makes that probs row all NaN, see runtime/nn/softmax.h), topk_idx[t, :] = 0, 1, ..., K-1 and
// topk_gates[t, :] = probs at those experts (NaN when the logits row is non-finite). This keeps
// the routing well-formed (valid, distinct indices) while the NaN gates poison the output, so the
// step is visibly bad; ComputeRoutingStats counts such rows (routing_stats.h).
//
// Backward (the top-K selection is piecewise constant, so gradient flows through probs only):
//   d_probs[t, e]  = d_topk_gates[t, j] where topk_idx[t, j] == e, else 0; with `renormalize`,
//                    through g_j = p_j / S: d_p_j = (d_g_j - sum_l d_g_l g_l) / S.
//   d_logits       = softmax backward of d_probs, plus d_logits_extra when given (the aux-loss
//                    gradient, aux_loss.h).
//   dx             = d_logits w_gate^T, written in x's dtype (overwrite).
//   dw_gate        = x^T d_logits, f32 (overwrite, or added to dw_gate when accumulate_dw).
// Non-finite rows give NaN gradients (no masking). topk_idx must hold valid experts (as written
// by RouterForward): checked on CPU (InvalidArgument); not checked on CUDA, where checking would
// need a host sync.
//
// All tensors contiguous, on ctx's device. Outputs are caller-allocated and fully overwritten.
// No host synchronization. Temporaries (the f32 copy of a bf16 x, d_logits) come from ctx's
// allocator. Deterministic on each backend (fixed reduction orders; cuBLAS/OpenBLAS GEMMs are
// deterministic, see runtime/blas/gemm.h). CPU and CUDA agree within f32 tolerance, and exactly on
// topk_idx when the logits agree exactly.
#pragma once

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

struct RouterConfig {
  int num_experts = 0;       // E >= 1
  int top_k = 1;             // 1 <= K <= E
  bool renormalize = false;  // gates = p / sum of the K chosen p
};

// InvalidArgument unless 1 <= num_experts and 1 <= top_k <= num_experts.
[[nodiscard]] Status ValidateRouterConfig(const RouterConfig& config);

// True for "no tensor": a default-constructed TensorView or one with zero elements. Used for the
// optional arguments (expert_bias, d_logits_extra).
bool IsAbsent(const TensorView& t);

// x [T, M] f32|bf16 (M >= 1), w_gate [M, E] f32, expert_bias [E] f32 or absent.
// Writes logits [T, E] f32, probs [T, E] f32, topk_idx [T, K] i32, topk_gates [T, K] f32.
[[nodiscard]] Status RouterForward(ExecContext& ctx, const RouterConfig& config,
                                   const TensorView& x, const TensorView& w_gate,
                                   const TensorView& expert_bias, const TensorView& logits,
                                   const TensorView& probs, const TensorView& topk_idx,
                                   const TensorView& topk_gates);

// probs [T, E] f32 and topk_idx [T, K] i32 from RouterForward; d_topk_gates [T, K] f32;
// d_logits_extra [T, E] f32 or absent. Writes dx [T, M] (x's dtype) and dw_gate [M, E] f32.
[[nodiscard]] Status RouterBackward(ExecContext& ctx, const RouterConfig& config,
                                    const TensorView& x, const TensorView& w_gate,
                                    const TensorView& probs, const TensorView& topk_idx,
                                    const TensorView& d_topk_gates,
                                    const TensorView& d_logits_extra, const TensorView& dx,
                                    const TensorView& dw_gate, bool accumulate_dw = false);

}  // namespace smoe
