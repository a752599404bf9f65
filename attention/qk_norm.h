// Per-head RMSNorm for queries and keys (QK-norm): every row of D elements (one head of one token)
// is normalized on its own and scaled by a weight [D] shared by all heads of the tensor.
//
//   HeadRmsNormForward:  rstd[r] = 1 / sqrt(mean_j x[r, j]^2 + eps);
//                        y[r, j] = x[r, j] rstd[r] w[j]
//   HeadRmsNormBackward: dx = rstd (dy w - xhat mean_j(dy w xhat)), xhat = x rstd;
//                        dw[j] = sum_r dy[r, j] xhat[r, j]
// x, y, dy, dx: [..., D] (any rank >= 1; R = numel / D rows), f32 or bf16, all one dtype;
// w: [D] in that dtype; dw: [D] f32, accumulated (dw += ..., the gradient contract of every
// weight: callers zero it); rstd: [R] f32, written by forward and read by backward.
// y may alias x; dx may alias dy. dx is overwritten.
// Contiguous, on ctx's device. Deterministic: dw is reduced in a fixed order (CUB block reduce per
// column on CUDA). No sync.
#pragma once

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

constexpr double kQkNormEps = 1e-6;

[[nodiscard]] Status HeadRmsNormForward(ExecContext& ctx, const TensorView& x, const TensorView& w,
                                        const TensorView& y, const TensorView& rstd,
                                        double eps = kQkNormEps);
[[nodiscard]] Status HeadRmsNormBackward(ExecContext& ctx, const TensorView& x, const TensorView& w,
                                         const TensorView& rstd, const TensorView& dy,
                                         const TensorView& dx, const TensorView& dw);

namespace internal {
[[nodiscard]] Status HeadRmsNormForwardCuda(ExecContext& ctx, DType dtype, const void* x,
                                            const void* w, void* y, float* rstd, int64_t rows,
                                            int64_t dim, double eps);
[[nodiscard]] Status HeadRmsNormBackwardCuda(ExecContext& ctx, DType dtype, const void* x,
                                             const void* w, const float* rstd, const void* dy,
                                             void* dx, float* dw, int64_t rows, int64_t dim);
}  // namespace internal
}  // namespace smoe
