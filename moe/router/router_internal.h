// Internals of moe/router: the argument check of its ops, and the CUDA launchers, called after
// validation with raw device pointers on ctx.stream(). Without the CUDA backend the launchers
// return FailedPrecondition (stubs in the .cc files).
#pragma once

#include <cstdint>
#include <vector>

#include "moe/router/aux_loss.h"
#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe::internal {

// t has `dtype` and `shape` (-1: any extent), lives on ctx's device and is contiguous.
inline Status CheckRouterArg(absl::string_view name, const ExecContext& ctx, const TensorView& t,
                             DType dtype, const Shape& shape) {
  MOE_RETURN_IF_ERROR(CheckTensor(name, t, dtype, ctx.device(), shape));
  return CheckContiguous(name, t);
}

// topk_idx and topk_gates from logits, probs and an optional bias (nullptr), router.h semantics.
[[nodiscard]] Status RouterTopKCuda(ExecContext& ctx, const float* logits, const float* bias,
                                    const float* probs, int64_t t, int64_t e, int64_t k,
                                    bool renormalize, int32_t* topk_idx, float* topk_gates);
// d_logits [T, E] from d_topk_gates through gates and softmax (+ d_logits_extra if non-null).
[[nodiscard]] Status RouterLogitsGradientCuda(ExecContext& ctx, const float* probs,
                                              const int32_t* topk_idx, const float* d_topk_gates,
                                              const float* d_logits_extra, int64_t t, int64_t e,
                                              int64_t k, bool renormalize, float* d_logits);
// counts [E] i64 = histogram of idx [n] (entries outside [0, E) skipped).
[[nodiscard]] Status CountExpertsCuda(ExecContext& ctx, const int32_t* idx, int64_t n, int64_t e,
                                      int64_t* counts);
[[nodiscard]] Status UpdateExpertBiasCuda(ExecContext& ctx, const int64_t* counts, int64_t e,
                                          float rate, float bound, float* bias);

// Device-side row statistics of the aux losses, kept between the two phases below.
struct AuxRowBuffers {
  float* lse = nullptr;        // [T]
  float* max_p = nullptr;      // [T]
  int32_t* arg_max = nullptr;  // [T]
};
// Phase 1: row statistics into `rows`, the per-expert counts into counts [E] i64 and, in fixed
// reduction order, sums [E + 2] f64: p_sum [E], then the sums of lse^2 and of max p. On the
// device; no host sync.
[[nodiscard]] Status AuxLossSumsCuda(ExecContext& ctx, const float* logits, const float* probs,
                                     const int32_t* topk_idx, int64_t t, int64_t e, int64_t k,
                                     const AuxRowBuffers& rows, int64_t* counts, double* sums);
// Phase 2, on the device from phase 1's counts (possibly all-reduced) and sums: the coefficients
// of router_cpu.h AuxCoefficients, the values [4] f32 (lbl, z_loss, top1_lbl, total) and d_logits.
[[nodiscard]] Status AuxLossGradientCuda(ExecContext& ctx, const AuxLossConfig& config,
                                         const float* probs, const AuxRowBuffers& rows, int64_t t,
                                         int64_t e, const int64_t* counts, const double* sums,
                                         float* d_logits, float* values);

}  // namespace smoe::internal
