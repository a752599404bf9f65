#include "attention/rope.h"

#include "absl/strings/str_cat.h"
#include "attention/rope_cpu.h"
#include "attention/validate.h"

namespace smoe {
namespace {

Status Rope(ExecContext& ctx, const TensorView& x, const TensorView& y, double theta,
            int64_t position_offset, int direction, absl::string_view x_name,
            absl::string_view y_name) {
  MOE_RETURN_IF_ERROR(attention_internal::CheckFloating(x_name, x));
  MOE_RETURN_IF_ERROR(attention_internal::CheckArg(x_name, ctx, x, x.dtype(), {-1, -1, -1, -1}));
  MOE_RETURN_IF_ERROR(attention_internal::CheckArg(y_name, ctx, y, x.dtype(), x.shape()));
  const int64_t D = x.dim(3);
  if (D % 2 != 0) return BadArgument(absl::StrCat(x_name, ".head_dim"), absl::StrCat(D), "even");
  if (!(theta > 0.0)) return BadArgument("theta", absl::StrCat(theta), "> 0");
  if (position_offset < 0) {
    return BadArgument("position_offset", absl::StrCat(position_offset), ">= 0");
  }
  if (x.empty()) return absl::OkStatus();
  if (ctx.device().is_cuda()) {
    return internal::RopeCuda(ctx, x.dtype(), x.data(), y.data(), x.dim(0), x.dim(1), x.dim(2), D,
                              theta, position_offset, direction);
  }
  if (x.dtype() == DType::kF32) {
    attention_internal::RopeCpu(x.data<float>(), y.data<float>(), x.dim(0), x.dim(1), x.dim(2), D,
                                theta, position_offset, direction);
  } else {
    attention_internal::RopeCpu(x.data<BF16>(), y.data<BF16>(), x.dim(0), x.dim(1), x.dim(2), D,
                                theta, position_offset, direction);
  }
  return absl::OkStatus();
}

}  // namespace

Status RopeForward(ExecContext& ctx, const TensorView& x, const TensorView& y, double theta,
                   int64_t position_offset) {
  return Rope(ctx, x, y, theta, position_offset, +1, "x", "y");
}

Status RopeBackward(ExecContext& ctx, const TensorView& dy, const TensorView& dx, double theta,
                    int64_t position_offset) {
  return Rope(ctx, dy, dx, theta, position_offset, -1, "dy", "dx");
}

#if !MOE_WITH_CUDA
namespace internal {
Status RopeCuda(ExecContext&, DType, const void*, void*, int64_t, int64_t, int64_t, int64_t, double,
                int64_t, int) {
  return absl::FailedPreconditionError("RoPE on CUDA, but this build has no CUDA backend");
}
}  // namespace internal
#endif

}  // namespace smoe
