#include "moe/router/expert_load.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "moe/router/router_internal.h"

namespace smoe {

using internal::CheckRouterArg;

Status CountExperts(ExecContext& ctx, const TensorView& topk_idx, const TensorView& counts) {
  MOE_RETURN_IF_ERROR(CheckRouterArg("topk_idx", ctx, topk_idx, DType::kI32, {-1, -1}));
  MOE_RETURN_IF_ERROR(CheckRouterArg("counts", ctx, counts, DType::kI64, {-1}));
  const int64_t n = topk_idx.numel(), e = counts.dim(0);
  if (e < 1) return BadArgument("counts.shape", counts.shape().ToString(), "[E] with E >= 1");
  if (ctx.device().is_cuda()) {
    return internal::CountExpertsCuda(ctx, topk_idx.data<int32_t>(), n, e, counts.data<int64_t>());
  }
  const int32_t* idx = topk_idx.data<int32_t>();
  int64_t* c = counts.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (idx[i] < 0 || idx[i] >= e) {
      return BadArgument(
          absl::StrCat("topk_idx[", i / topk_idx.dim(1), ", ", i % topk_idx.dim(1), "]"),
          absl::StrCat(idx[i]), absl::StrCat("an expert in [0, ", e, ")"));
    }
  }
  std::fill(c, c + e, 0);
  for (int64_t i = 0; i < n; ++i) ++c[idx[i]];
  return absl::OkStatus();
}

Status UpdateExpertBias(ExecContext& ctx, const TensorView& counts, float rate, float bound,
                        const TensorView& bias) {
  MOE_RETURN_IF_ERROR(CheckRouterArg("counts", ctx, counts, DType::kI64, {-1}));
  const int64_t e = counts.dim(0);
  if (e < 1) return BadArgument("counts.shape", counts.shape().ToString(), "[E] with E >= 1");
  MOE_RETURN_IF_ERROR(CheckRouterArg("bias", ctx, bias, DType::kF32, {e}));
  if (!std::isfinite(rate) || rate < 0) {
    return BadArgument("rate", absl::StrCat(rate), "finite and >= 0");
  }
  if (!std::isfinite(bound) || bound < 0) {
    return BadArgument("bound", absl::StrCat(bound), "finite and >= 0");
  }
  if (ctx.device().is_cuda()) {
    return internal::UpdateExpertBiasCuda(ctx, counts.data<int64_t>(), e, rate, bound,
                                          bias.data<float>());
  }
  const int64_t* c = counts.data<int64_t>();
  float* b = bias.data<float>();
  int64_t total = 0;
  for (int64_t i = 0; i < e; ++i) total += c[i];
  for (int64_t i = 0; i < e; ++i) {
    // sign(mean - c_i) = sign(total - E c_i), exact in integers.
    const int64_t diff = total - e * c[i];
    const float step = diff > 0 ? rate : (diff < 0 ? -rate : 0.0f);
    b[i] = std::clamp(b[i] + step, -bound, bound);
  }
  return absl::OkStatus();
}

#if !MOE_WITH_CUDA
namespace internal {
Status CountExpertsCuda(ExecContext&, const int32_t*, int64_t, int64_t, int64_t*) {
  return absl::FailedPreconditionError("CountExperts on CUDA, but this build has no CUDA backend");
}
Status UpdateExpertBiasCuda(ExecContext&, const int64_t*, int64_t, float, float, float*) {
  return absl::FailedPreconditionError(
      "UpdateExpertBias on CUDA, but this build has no CUDA backend");
}
}  // namespace internal
#endif

}  // namespace smoe
