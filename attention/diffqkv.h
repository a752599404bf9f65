// The DiffQKV attention block (Sigma): projections, optional augmented Q, optional per-head QK
// RMSNorm, RoPE, causal attention with separate K/V head maps, output projection.
//
//   q = x W_q [T, n_q*D];  q' = AugQ(q) if d_aug > 0 else q;  k = x W_k [T, n_k*D];
//   v = x W_v [T, n_v*D];  q'' = RoPE(norm_q(q')), k'' = RoPE(norm_k(k)) (norms only with qk_norm);
//   o = Attention(q'', k'', v) [T, n_q*D];  y = o W_o [T, M]
// with T = B * S (B sequences of equal length S, positions 0..S-1 for RoPE).
// x, y, dy, dx: [B, S, M]. Activations and parameters share one dtype: f32 (CPU or CUDA) or bf16
// (CUDA; the CPU reference accepts it too); softmax statistics and RMSNorm rstd are f32. The weight
// gradients are f32 and accumulated (grad += ..., callers zero them), as every weight gradient in
// sigma-moe; dx is overwritten. On CUDA, D must be 32, 64, 96 or 128.
// Temporaries and saved activations come from ctx's allocator; no host sync. Deterministic.
#pragma once

#include <cstdint>

#include "attention/aug_q.h"
#include "attention/kv_cache.h"
#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

struct DiffQkvConfig {
  int64_t model_dim = 0;  // M
  int64_t n_q = 0;
  int64_t n_k = 0;
  int64_t n_v = 0;
  int64_t head_dim = 0;  // D
  int64_t d_aug = 0;     // 0: no augmented Q
  bool qk_norm = false;
  double rope_theta = 10000.0;
};

// Parameter views in the block's dtype (or, for Backward, the f32 gradient views to accumulate
// into), in these shapes:
//   w_q [M, n_q*D], w_k [M, n_k*D], w_v [M, n_v*D], w_o [n_q*D, M];
//   aug (only when d_aug > 0): w_gate, w_up [n_q*D, d_aug], w_down [d_aug, n_q*D];
//   q_norm, k_norm [D] (only when qk_norm).
struct DiffQkvParams {
  TensorView w_q, w_k, w_v, w_o;
  AugQWeights aug;
  TensorView q_norm, k_norm;
};

// What Forward keeps for Backward.
struct DiffQkvSaved {
  Tensor q;      // x W_q            [B, S, n_q, D]
  Tensor q_aug;  // AugQ(q) (or q)
  AugQSaved aug;
  Tensor k, v;    // projections      [B, S, n_k, D], [B, S, n_v, D]
  Tensor rstd_q;  // [B*S*n_q] f32 (qk_norm)
  Tensor rstd_k;  // [B*S*n_k] f32 (qk_norm)
  Tensor q_rope;  // attention inputs [B, S, n_q, D]
  Tensor k_rope;  //                  [B, S, n_k, D]
  Tensor o;       // attention output [B, S, n_q, D]
  Tensor lse;     // [B, n_q, S] f32
};

// InvalidArgument naming the field unless the config is usable on `device`.
[[nodiscard]] Status ValidateDiffQkvConfig(const DiffQkvConfig& config, Device device);

[[nodiscard]] Status DiffQkvForward(ExecContext& ctx, const DiffQkvConfig& config,
                                    const DiffQkvParams& params, const TensorView& x,
                                    const TensorView& y, DiffQkvSaved* saved);
[[nodiscard]] Status DiffQkvBackward(ExecContext& ctx, const DiffQkvConfig& config,
                                     const DiffQkvParams& params, const TensorView& x,
                                     const DiffQkvSaved& saved, const TensorView& dy,
                                     const TensorView& dx, const DiffQkvParams& grads);

// Inference. Prefill: after DiffQkvForward over a prompt, appends its RoPE'd keys and its values to
// an empty cache (InvalidArgument "cache.length" otherwise: the prompt's RoPE positions start at
// 0).
[[nodiscard]] Status DiffQkvPrefillCache(ExecContext& ctx, const DiffQkvSaved& saved,
                                         KvCache* cache);
// One new token per sequence: x_new, y_new [B, 1, M]. The token takes position cache->length(),
// its key and value are appended to the cache (so the cache must have room), then it attends to
// every cached position: y_new equals the row of DiffQkvForward over the whole sequence.
[[nodiscard]] Status DiffQkvDecodeStep(ExecContext& ctx, const DiffQkvConfig& config,
                                       const DiffQkvParams& params, const TensorView& x_new,
                                       KvCache* cache, const TensorView& y_new);

}  // namespace smoe
