// Row-wise softmax over the last axis, f32, and its backward.
//
//   SoftmaxRows:         y[r, :] = exp(x[r, :] - max_r) / sum(exp(x[r, :] - max_r))
//   SoftmaxRowsBackward: dx[r, :] = y[r, :] * (dy[r, :] - sum_j dy[r, j] y[r, j])
// x, y, dy, dx: contiguous f32 [R, C] on ctx's device; y may alias x and dx may alias dy.
// A row with a non-finite input gives NaN in that row (never silently finite garbage).
// Deterministic on each backend (fixed reduction order).
#pragma once

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

[[nodiscard]] Status SoftmaxRows(ExecContext& ctx, const TensorView& x, const TensorView& y);
[[nodiscard]] Status SoftmaxRowsBackward(ExecContext& ctx, const TensorView& y,
                                         const TensorView& dy, const TensorView& dx);

namespace internal {
[[nodiscard]] Status SoftmaxRowsCuda(ExecContext& ctx, const float* x, float* y, int64_t rows,
                                     int64_t cols);
[[nodiscard]] Status SoftmaxRowsBackwardCuda(ExecContext& ctx, const float* y, const float* dy,
                                             float* dx, int64_t rows, int64_t cols);
}  // namespace internal
}  // namespace smoe
