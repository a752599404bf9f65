// Rotary position embedding (RoPE), half-split convention (GPT-NeoX / Llama): within each head,
// element j < D/2 pairs with element j + D/2 and the pair is rotated by the angle
// (position_offset + s) * theta^(-2j/D), where s is the position in the sequence.
//
//   RopeForward:  y = R(s) x
//   RopeBackward: dx = R(s)^T dy  (rotation by the negative angle)
// x, y, dy, dx: [B, S, H, D], D even, f32 or bf16 (all the same), contiguous, on ctx's device;
// y may alias x and dx may alias dy. Overwrites. Angles are computed in double on both backends
// (positions reach 10^5 and float angles would lose ~1e-2 rad). Deterministic; no sync.
// position_offset shifts the positions: decode step n of a cached sequence uses offset n.
#pragma once

#include <cstdint>

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

[[nodiscard]] Status RopeForward(ExecContext& ctx, const TensorView& x, const TensorView& y,
                                 double theta, int64_t position_offset = 0);
[[nodiscard]] Status RopeBackward(ExecContext& ctx, const TensorView& dy, const TensorView& dx,
                                  double theta, int64_t position_offset = 0);

namespace internal {
// direction +1 (forward) or -1 (backward).
[[nodiscard]] Status RopeCuda(ExecContext& ctx, DType dtype, const void* x, void* y, int64_t batch,
                              int64_t seq, int64_t heads, int64_t head_dim, double theta,
                              int64_t position_offset, int direction);
}  // namespace internal
}  // namespace smoe
