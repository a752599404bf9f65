// RMSNorm over the rows of x, and its backward.
//
//   RMSNormForward:  rstd[r] = 1 / sqrt(mean_j x[r, j]^2 + eps)
//                    y[r, j] = x[r, j] * rstd[r] * gain[j]
//   RMSNormBackward: with xhat = x * rstd and g = dy * gain,
//                    dx[r, j] = rstd[r] * (g[r, j] - xhat[r, j] * mean_k(g[r, k] * xhat[r, k]))
//                    dgain[j] += sum_r dy[r, j] * xhat[r, j]
// x [R, C] f32|bf16 (C >= 1); gain [C] f32; y [R, C] x's dtype (overwritten); rstd [R] f32
// (overwritten; saved for the backward, which takes it instead of recomputing it).
// dy, dx [R, C] x's dtype; dx is overwritten and may alias dy; dgain [C] f32 ACCUMULATES.
// eps: finite, >= 0. All contiguous, on ctx's device; R = 0 is a no-op. Math is fp32 on CUDA and
// double on CPU; every output is rounded once to its dtype. No host sync.
// Determinism: fixed reduction orders, no float atomics. dgain on CUDA sums fixed chunks of rows
// in row order, then the chunks in order (workspace: ceil(R / 128) * C f32). CPU and CUDA agree
// within fp32 rounding. CUDA takes R <= 65535 * 128 (InvalidArgument beyond).
#pragma once

#include <cstdint>

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

[[nodiscard]] Status RMSNormForward(ExecContext& ctx, const TensorView& x, const TensorView& gain,
                                    float eps, const TensorView& y, const TensorView& rstd);
[[nodiscard]] Status RMSNormBackward(ExecContext& ctx, const TensorView& x, const TensorView& gain,
                                     const TensorView& rstd, const TensorView& dy,
                                     const TensorView& dx, const TensorView& dgain);

namespace internal {

// CPU reference over raw arrays (math in double). Instantiated for (X, P) = (float, float),
// (BF16, float) and (double, double); the double one serves the tests' fp64 gradient checks.
template <typename X, typename P>
void RMSNormForwardCpu(const X* x, const P* gain, double eps, int64_t rows, int64_t cols, X* y,
                       P* rstd);
template <typename X, typename P>
void RMSNormBackwardCpu(const X* x, const P* gain, const P* rstd, const X* dy, int64_t rows,
                        int64_t cols, X* dx, P* dgain);

// Backends, called after validation with R > 0 and C > 0.
[[nodiscard]] Status RMSNormForwardCuda(ExecContext& ctx, DType dtype, const void* x,
                                        const float* gain, float eps, int64_t rows, int64_t cols,
                                        void* y, float* rstd);
[[nodiscard]] Status RMSNormBackwardCuda(ExecContext& ctx, DType dtype, const void* x,
                                         const float* gain, const float* rstd, const void* dy,
                                         int64_t rows, int64_t cols, void* dx, float* dgain);

}  // namespace internal
}  // namespace smoe
