#include "attention/qk_norm.h"

#include "absl/strings/str_cat.h"
#include "attention/qk_norm_cpu.h"
#include "attention/validate.h"

namespace smoe {
namespace {

using attention_internal::CheckArg;

// Checks x [..., D] and w [D]; returns the row count.
StatusOr<int64_t> CheckInput(const ExecContext& ctx, const TensorView& x, const TensorView& w) {
  MOE_RETURN_IF_ERROR(attention_internal::CheckFloating("x", x));
  if (x.rank() < 1 || x.dim(x.rank() - 1) < 1) {
    return BadArgument("x.shape", x.shape().ToString(), "[..., D] with D >= 1");
  }
  MOE_RETURN_IF_ERROR(CheckArg("x", ctx, x, x.dtype(), x.shape()));
  const int64_t dim = x.dim(x.rank() - 1);
  MOE_RETURN_IF_ERROR(CheckArg("w", ctx, w, x.dtype(), {dim}));
  return x.numel() / dim;
}

}  // namespace

Status HeadRmsNormForward(ExecContext& ctx, const TensorView& x, const TensorView& w,
                          const TensorView& y, const TensorView& rstd, double eps) {
  MOE_ASSIGN_OR_RETURN(const int64_t rows, CheckInput(ctx, x, w));
  MOE_RETURN_IF_ERROR(CheckArg("y", ctx, y, x.dtype(), x.shape()));
  MOE_RETURN_IF_ERROR(CheckArg("rstd", ctx, rstd, DType::kF32, {rows}));
  if (!(eps > 0.0)) return BadArgument("eps", absl::StrCat(eps), "> 0");
  const int64_t dim = w.dim(0);
  if (rows == 0) return absl::OkStatus();
  if (ctx.device().is_cuda()) {
    return internal::HeadRmsNormForwardCuda(ctx, x.dtype(), x.data(), w.data(), y.data(),
                                            rstd.data<float>(), rows, dim, eps);
  }
  if (x.dtype() == DType::kF32) {
    attention_internal::HeadRmsNormForwardCpu(x.data<float>(), w.data<float>(), y.data<float>(),
                                              rstd.data<float>(), rows, dim, eps);
  } else {
    attention_internal::HeadRmsNormForwardCpu(x.data<BF16>(), w.data<BF16>(), y.data<BF16>(),
                                              rstd.data<float>(), rows, dim, eps);
  }
  return absl::OkStatus();
}

Status HeadRmsNormBackward(ExecContext& ctx, const TensorView& x, const TensorView& w,
                           const TensorView& rstd, const TensorView& dy, const TensorView& dx,
                           const TensorView& dw) {
  MOE_ASSIGN_OR_RETURN(const int64_t rows, CheckInput(ctx, x, w));
  MOE_RETURN_IF_ERROR(CheckArg("rstd", ctx, rstd, DType::kF32, {rows}));
  MOE_RETURN_IF_ERROR(CheckArg("dy", ctx, dy, x.dtype(), x.shape()));
  MOE_RETURN_IF_ERROR(CheckArg("dx", ctx, dx, x.dtype(), x.shape()));
  MOE_RETURN_IF_ERROR(CheckArg("dw", ctx, dw, DType::kF32, w.shape()));
  const int64_t dim = w.dim(0);
  if (ctx.device().is_cuda()) {
    return internal::HeadRmsNormBackwardCuda(ctx, x.dtype(), x.data(), w.data(), rstd.data<float>(),
                                             dy.data(), dx.data(), dw.data<float>(), rows, dim);
  }
  if (x.dtype() == DType::kF32) {
    attention_internal::HeadRmsNormBackwardCpu(x.data<float>(), w.data<float>(), rstd.data<float>(),
                                               dy.data<float>(), dx.data<float>(), dw.data<float>(),
                                               rows, dim);
  } else {
    attention_internal::HeadRmsNormBackwardCpu(x.data<BF16>(), w.data<BF16>(), rstd.data<float>(),
                                               dy.data<BF16>(), dx.data<BF16>(), dw.data<float>(),
                                               rows, dim);
  }
  return absl::OkStatus();
}

#if !MOE_WITH_CUDA
namespace internal {
Status HeadRmsNormForwardCuda(ExecContext&, DType, const void*, const void*, void*, float*, int64_t,
                              int64_t, double) {
  return absl::FailedPreconditionError("QK-norm on CUDA, but this build has no CUDA backend");
}
Status HeadRmsNormBackwardCuda(ExecContext&, DType, const void*, const void*, const float*,
                               const void*, void*, float*, int64_t, int64_t) {
  return absl::FailedPreconditionError("QK-norm on CUDA, but this build has no CUDA backend");
}
}  // namespace internal
#endif

}  // namespace smoe
