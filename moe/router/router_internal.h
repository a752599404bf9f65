// Internals of moe/router: the argument check of its ops, and the CUDA launchers, called after
// validation with raw device pointers on ctx.stream(). Without the CUDA backend the launchers
// return FailedPrecondition (stubs in the .cc files).
#pragma once

#include <cstdint>
#include <vector>

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
// Phase 1: row statistics into `rows`, then copies to the host (synchronizes ctx's stream) the
// per-expert counts, p_sum [E] and the sums of lse^2 and max p, all in fixed reduction order.
[[nodiscard]] Status AuxLossSumsCuda(ExecContext& ctx, const float* logits, const float* probs,
                                     const int32_t* topk_idx, int64_t t, int64_t e, int64_t k,
                                     const AuxRowBuffers& rows, std::vector<int64_t>* counts,
                                     std::vector<double>* p_sum, double* lse_sq_sum,
                                     double* max_p_sum);
// Phase 2: d_logits from the host-computed coefficients (router_cpu.h AuxGradient).
[[nodiscard]] Status AuxLossGradientCuda(ExecContext& ctx, const float* probs,
                                         const AuxRowBuffers& rows, int64_t t, int64_t e,
                                         const std::vector<double>& g, double top1_argmax,
                                         double z_factor, float* d_logits);

}  // namespace smoe::internal
