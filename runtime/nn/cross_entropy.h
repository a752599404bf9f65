// Fused softmax cross-entropy over the vocabulary, fp32 math, and its gradient.
//
//   N    = number of t with targets[t] != -1 (-1 = ignore this token)
//   loss = (1 / N) * sum over non-ignored t of (logsumexp(logits[t, :]) - logits[t, targets[t]])
//   dlogits[t, v] = scale / N * (softmax(logits[t, :])[v] - [v == targets[t]]), 0 on ignored rows
// so dlogits = scale * d loss / d logits (scale carries e.g. 1 / accumulation steps or a loss
// scale). N = 0 gives loss 0 and all-zero dlogits.
// logits [T, V] f32|bf16 (V >= 1); targets [T] i32 in [0, V) or -1; dlogits [T, V] logits' dtype
// (overwritten; may alias logits: each row is fully read before it is written). All contiguous,
// on ctx's device. A row with a non-finite logit gives a non-finite loss (never silently finite).
//
// Targets: the CPU backend checks them and returns InvalidArgument naming the first bad position.
// The CUDA backend does not read them on the host: an out-of-range target is a precondition
// violation; it never reads or writes out of bounds and makes the loss NaN.
//
// Host syncs: CrossEntropyForwardBackward and CrossEntropyLoss return the loss on the host, so
// they synchronize ctx's stream once. The *Async variants write the loss into `loss` ([1] f32 on
// ctx's device, overwritten) and never synchronize. Workspace (CUDA): T + 1 f32.
// Deterministic: per-row sums in a fixed order, then the rows summed in order (no atomics).
#pragma once

#include <cstdint>

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

[[nodiscard]] StatusOr<double> CrossEntropyForwardBackward(ExecContext& ctx,
                                                           const TensorView& logits,
                                                           const TensorView& targets, float scale,
                                                           const TensorView& dlogits);
// Forward only (evaluation).
[[nodiscard]] StatusOr<double> CrossEntropyLoss(ExecContext& ctx, const TensorView& logits,
                                                const TensorView& targets);

[[nodiscard]] Status CrossEntropyForwardBackwardAsync(ExecContext& ctx, const TensorView& logits,
                                                      const TensorView& targets, float scale,
                                                      const TensorView& dlogits,
                                                      const TensorView& loss);
[[nodiscard]] Status CrossEntropyLossAsync(ExecContext& ctx, const TensorView& logits,
                                           const TensorView& targets, const TensorView& loss);

namespace internal {

// CPU reference over raw arrays (math in double), targets already validated; dlogits may be null
// (forward only). Returns the loss. Instantiated for L = float, BF16 and double (the tests' fp64
// gradient checks).
template <typename L>
double CrossEntropyCpu(const L* logits, const int32_t* targets, int64_t tokens, int64_t vocab,
                       double scale, L* dlogits);

// Backend, called after validation with T > 0; dlogits null for forward only; writes loss[0].
[[nodiscard]] Status CrossEntropyCuda(ExecContext& ctx, DType dtype, const void* logits,
                                      const int32_t* targets, int64_t tokens, int64_t vocab,
                                      float scale, void* dlogits, float* loss);

}  // namespace internal
}  // namespace smoe
