// AdamW over flat fp32 master parameters, plus the two reductions the trainer needs around it:
// the squared gradient norm (for clipping) and a finiteness check (for skipping bad steps).
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/core/host_device.h"
#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

struct AdamWConfig {
  float lr;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
};

// One AdamW step (Loshchilov & Hutter; PyTorch's AdamW formulation), elementwise:
//   g = grads * grad_scale
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g^2
//   params = params * (1 - lr * weight_decay)                       (decoupled weight decay)
//            - lr * (m / (1 - beta1^step)) / (sqrt(v / (1 - beta2^step)) + eps)
// params, grads, m, v: f32, the same shape ([N]; any shape is taken as flat), contiguous, on ctx's
// device; params, m and v are updated in place. `shadow`: absent (a default TensorView) or f32|bf16
// of params' shape; it receives the updated params rounded to its dtype (the compute copy).
// step >= 1 (bias correction); lr, eps, weight_decay finite and >= 0; beta1, beta2 in [0, 1);
// grad_scale finite (1 / accumulation steps times the clipping factor). fp32 math with the same
// scalar formula on both backends (bit-identical results); deterministic; no host sync.
[[nodiscard]] Status AdamWStep(ExecContext& ctx, const AdamWConfig& config, int64_t step,
                               float grad_scale, const TensorView& params, const TensorView& grads,
                               const TensorView& m, const TensorView& v, const TensorView& shadow);

// out[0] += sum of g[i]^2 over every element of g. g: f32, any shape, contiguous; out: [1] f32.
// Both on ctx's device. Accumulated in double and rounded once into out (call it once per
// gradient tensor, then take the sqrt of out for the global norm). Deterministic: fixed grid and
// block reduction order for a given size, no atomics (CUDA workspace: 1024 doubles). No host sync.
[[nodiscard]] Status AccumulateSquaredNorm(ExecContext& ctx, const TensorView& g,
                                           const TensorView& out);

// True if every element of t (f32|bf16, any shape, contiguous, on ctx's device) is finite (no NaN,
// no +-Inf). Host sync: on CUDA it synchronizes ctx's stream once to read the answer.
[[nodiscard]] StatusOr<bool> AllFinite(ExecContext& ctx, const TensorView& t);

namespace internal {

// The scalar update shared by the CPU loop and the CUDA kernel. bias1 = 1 - beta1^step,
// bias2 = 1 - beta2^step and decay = 1 - lr * weight_decay are computed once on the host.
// Every operation is one correctly rounded IEEE operation, with the fused ones spelled fmaf, so
// that nvcc cannot contract differently from the host: CPU and CUDA steps are bit-identical.
MOE_HD float AdamWUpdate(float param, float grad, float* m, float* v, float lr, float beta1,
                         float beta2, float eps, float bias1, float bias2, float decay) {
  *m = fmaf(beta1, *m, (1.0f - beta1) * grad);
  *v = fmaf(beta2, *v, ((1.0f - beta2) * grad) * grad);
  const float m_hat = *m / bias1;
  const float v_hat = *v / bias2;
  const float update = (lr * m_hat) / (sqrtf(v_hat) + eps);
  return fmaf(param, decay, -update);
}

// Backends, called after validation with n > 0. shadow null when absent.
[[nodiscard]] Status AdamWStepCuda(ExecContext& ctx, const AdamWConfig& config, float bias1,
                                   float bias2, float decay, float grad_scale, float* params,
                                   const float* grads, float* m, float* v, DType shadow_dtype,
                                   void* shadow, int64_t n);
[[nodiscard]] Status AccumulateSquaredNormCuda(ExecContext& ctx, const float* g, int64_t n,
                                               float* out);
[[nodiscard]] StatusOr<bool> AllFiniteCuda(ExecContext& ctx, DType dtype, const void* t, int64_t n);

}  // namespace internal
}  // namespace smoe
