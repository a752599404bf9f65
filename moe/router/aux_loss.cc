#include "moe/router/aux_loss.h"

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "moe/router/expert_load.h"
#include "moe/router/router_internal.h"
#include "moe/router/router_cpu.h"

namespace smoe {
namespace {

using internal::CheckRouterArg;

Status CheckCoef(absl::string_view name, float value) {
  if (std::isfinite(value)) return absl::OkStatus();
  return BadArgument(name, absl::StrCat(value), "a finite coefficient");
}

// In place: counts summed over the group, on the host.
Status AllReduceCounts(ExecContext& ctx, Communicator* comm, std::vector<int64_t>* counts) {
  if (comm == nullptr) return absl::OkStatus();
  TensorView host(counts->data(), DType::kI64, {static_cast<int64_t>(counts->size())},
                  Device::Cpu());
  return comm->AllReduceSum(ctx, host);
}

}  // namespace

StatusOr<AuxLossValues> AuxLossForwardBackward(ExecContext& ctx, const AuxLossConfig& config,
                                               const TensorView& logits, const TensorView& probs,
                                               const TensorView& topk_idx, Communicator* comm,
                                               const TensorView& d_logits) {
  MOE_RETURN_IF_ERROR(CheckCoef("config.lbl_coef", config.lbl_coef));
  MOE_RETURN_IF_ERROR(CheckCoef("config.z_coef", config.z_coef));
  MOE_RETURN_IF_ERROR(CheckCoef("config.top1_lbl_coef", config.top1_lbl_coef));
  MOE_RETURN_IF_ERROR(CheckRouterArg("logits", ctx, logits, DType::kF32, {-1, -1}));
  const int64_t t = logits.dim(0), e = logits.dim(1);
  if (e < 1) return BadArgument("logits.shape", logits.shape().ToString(), "[T, E] with E >= 1");
  MOE_RETURN_IF_ERROR(CheckRouterArg("probs", ctx, probs, DType::kF32, {t, e}));
  MOE_RETURN_IF_ERROR(CheckRouterArg("topk_idx", ctx, topk_idx, DType::kI32, {t, -1}));
  const int64_t k = topk_idx.dim(1);
  if (k < 1 || k > e) {
    return BadArgument("topk_idx.shape", topk_idx.shape().ToString(),
                       absl::StrCat("[T, K] with 1 <= K <= E = ", e));
  }
  MOE_RETURN_IF_ERROR(CheckRouterArg("d_logits", ctx, d_logits, DType::kF32, {t, e}));

  // Counts are all-reduced by every rank whenever global_lbl, also with T == 0, so that the
  // group's collectives stay matched.
  Communicator* group = config.global_lbl ? comm : nullptr;
  if (ctx.device().is_cpu()) {
    std::vector<int64_t> counts(e, 0);
    if (t > 0) {
      TensorView counts_view(counts.data(), DType::kI64, {e}, Device::Cpu());
      MOE_RETURN_IF_ERROR(CountExperts(ctx, topk_idx, counts_view));
    }
    MOE_RETURN_IF_ERROR(AllReduceCounts(ctx, group, &counts));
    if (t == 0) return AuxLossValues{};
    return router_reference::AuxLoss(config, logits.data<float>(), probs.data<float>(), t, e,
                                     router_reference::Shares(counts), d_logits.data<float>());
  }

  std::vector<int64_t> counts(e, 0);
  router_reference::AuxSums sums;
  sums.t = t;
  sums.e = e;
  sums.p_sum.assign(e, 0.0);
  Tensor lse, max_p, arg_max;
  internal::AuxRowBuffers rows;
  if (t > 0) {
    MOE_ASSIGN_OR_RETURN(lse, Tensor::Empty({t}, DType::kF32, ctx.device(), ctx.allocator()));
    MOE_ASSIGN_OR_RETURN(max_p, Tensor::Empty({t}, DType::kF32, ctx.device(), ctx.allocator()));
    MOE_ASSIGN_OR_RETURN(arg_max, Tensor::Empty({t}, DType::kI32, ctx.device(), ctx.allocator()));
    rows = {lse.data<float>(), max_p.data<float>(), arg_max.data<int32_t>()};
    MOE_RETURN_IF_ERROR(internal::AuxLossSumsCuda(ctx, logits.data<float>(), probs.data<float>(),
                                                  topk_idx.data<int32_t>(), t, e, k, rows, &counts,
                                                  &sums.p_sum, &sums.lse_sq_sum, &sums.max_p_sum));
  }
  MOE_RETURN_IF_ERROR(AllReduceCounts(ctx, group, &counts));
  if (t == 0) return AuxLossValues{};
  sums.f = router_reference::Shares(counts);
  const router_reference::AuxGradient grad = router_reference::AuxCoefficients(config, sums);
  MOE_RETURN_IF_ERROR(internal::AuxLossGradientCuda(ctx, probs.data<float>(), rows, t, e, grad.g,
                                                    grad.top1_argmax, grad.z_factor,
                                                    d_logits.data<float>()));
  return grad.values;
}

#if !MOE_WITH_CUDA
namespace internal {
Status AuxLossSumsCuda(ExecContext&, const float*, const float*, const int32_t*, int64_t, int64_t,
                       int64_t, const AuxRowBuffers&, std::vector<int64_t>*, std::vector<double>*,
                       double*, double*) {
  return absl::FailedPreconditionError(
      "AuxLossForwardBackward on CUDA, but this build has no CUDA backend");
}
Status AuxLossGradientCuda(ExecContext&, const float*, const AuxRowBuffers&, int64_t, int64_t,
                           const std::vector<double>&, double, double, float*) {
  return absl::FailedPreconditionError(
      "AuxLossForwardBackward on CUDA, but this build has no CUDA backend");
}
}  // namespace internal
#endif

}  // namespace smoe
