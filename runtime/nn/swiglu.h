// SwiGLU gating, elementwise, and its backward (the activation of the SwiGLU expert MLP).
//
//   SwiGLU:         act = silu(h1) * h3,            silu(z) = z * sigmoid(z)
//   SwiGLUBackward: dh1 = dact * h3 * silu'(h1),    silu'(z) = s(z) * (1 + z * (1 - s(z))),
//                   dh3 = dact * silu(h1)           with s = sigmoid
// Every tensor: the same shape (any rank), the same dtype (f32 or bf16 storage), contiguous, on
// ctx's device. Math is fp32 (loads widen, each output is rounded once to its storage dtype).
// Outputs overwrite. An output may alias an input of the same call (each element is read before
// it is written): act may alias h1 or h3; dh1 may alias h1 or dact; dh3 may alias h3 or dact.
// dh1 and dh3 must not alias each other. Deterministic and bit-identical between calls; CPU and
// CUDA agree to within fp32 rounding of exp (not bitwise). No host sync.
#pragma once

#include <cmath>

#include "runtime/core/host_device.h"
#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

[[nodiscard]] Status SwiGLU(ExecContext& ctx, const TensorView& h1, const TensorView& h3,
                            const TensorView& act);
[[nodiscard]] Status SwiGLUBackward(ExecContext& ctx, const TensorView& h1, const TensorView& h3,
                                    const TensorView& dact, const TensorView& dh1,
                                    const TensorView& dh3);

namespace internal {

// The scalar math shared by the CPU loops and the CUDA kernels (float there; any T elsewhere).
// sigmoid is written as 1 / (1 + exp(-z)) so that z -> -inf gives 0 (exp overflows to inf) and
// z -> +inf gives 1, never NaN.
template <typename T>
MOE_HD T Sigmoid(T z) {
#if defined(__CUDA_ARCH__)
  return T(1) / (T(1) + exp(-z));  // CUDA's device overloads (expf for float)
#else
  return T(1) / (T(1) + std::exp(-z));
#endif
}

template <typename T>
MOE_HD T SwiGLUValue(T h1, T h3) {
  return h1 * Sigmoid(h1) * h3;
}

template <typename T>
MOE_HD void SwiGLUGrad(T h1, T h3, T dact, T* dh1, T* dh3) {
  const T s = Sigmoid(h1);
  *dh1 = dact * h3 * s * (T(1) + h1 * (T(1) - s));
  *dh3 = dact * h1 * s;
}

// Backends, called after validation with n > 0 elements of `dtype` (f32 or bf16).
[[nodiscard]] Status SwiGLUCuda(ExecContext& ctx, DType dtype, const void* h1, const void* h3,
                                void* act, int64_t n);
[[nodiscard]] Status SwiGLUBackwardCuda(ExecContext& ctx, DType dtype, const void* h1,
                                        const void* h3, const void* dact, void* dh1, void* dh3,
                                        int64_t n);

}  // namespace internal
}  // namespace smoe
