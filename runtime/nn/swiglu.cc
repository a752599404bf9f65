#include "runtime/nn/swiglu.h"

#include "absl/strings/str_cat.h"

namespace smoe {
namespace {

float Load(const float* p, int64_t i) { return p[i]; }
float Load(const BF16* p, int64_t i) { return BF16ToFloat(p[i]); }
void Store(float* p, int64_t i, float v) { p[i] = v; }
void Store(BF16* p, int64_t i, float v) { p[i] = FloatToBF16(v); }

template <typename S>
void SwiGLUCpu(const TensorView& h1, const TensorView& h3, const TensorView& act) {
  const S* a = static_cast<const S*>(h1.data());
  const S* b = static_cast<const S*>(h3.data());
  S* out = static_cast<S*>(act.data());
  for (int64_t i = 0, n = h1.numel(); i < n; ++i) {
    Store(out, i, internal::SwiGLUValue(Load(a, i), Load(b, i)));
  }
}

template <typename S>
void SwiGLUBackwardCpu(const TensorView& h1, const TensorView& h3, const TensorView& dact,
                       const TensorView& dh1, const TensorView& dh3) {
  const S* a = static_cast<const S*>(h1.data());
  const S* b = static_cast<const S*>(h3.data());
  const S* g = static_cast<const S*>(dact.data());
  S* da = static_cast<S*>(dh1.data());
  S* db = static_cast<S*>(dh3.data());
  for (int64_t i = 0, n = h1.numel(); i < n; ++i) {
    float d1, d3;
    internal::SwiGLUGrad(Load(a, i), Load(b, i), Load(g, i), &d1, &d3);
    Store(da, i, d1);
    Store(db, i, d3);
  }
}

}  // namespace

Status SwiGLU(ExecContext& ctx, const TensorView& h1, const TensorView& h3, const TensorView& act) {
  MOE_RETURN_IF_ERROR(CheckFloatingDType("h1", h1));
  MOE_RETURN_IF_ERROR(CheckOnDevice("h1", h1, ctx.device()));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("h3", h3, h1.dtype(), h1.device(), h1.shape()));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("act", act, h1.dtype(), h1.device(), h1.shape()));
  if (h1.numel() == 0) return absl::OkStatus();
  if (ctx.device().is_cuda()) {
    return internal::SwiGLUCuda(ctx, h1.dtype(), h1.data(), h3.data(), act.data(), h1.numel());
  }
  if (h1.dtype() == DType::kF32) {
    SwiGLUCpu<float>(h1, h3, act);
  } else {
    SwiGLUCpu<BF16>(h1, h3, act);
  }
  return absl::OkStatus();
}

Status SwiGLUBackward(ExecContext& ctx, const TensorView& h1, const TensorView& h3,
                      const TensorView& dact, const TensorView& dh1, const TensorView& dh3) {
  MOE_RETURN_IF_ERROR(CheckFloatingDType("h1", h1));
  MOE_RETURN_IF_ERROR(CheckOnDevice("h1", h1, ctx.device()));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("h3", h3, h1.dtype(), h1.device(), h1.shape()));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("dact", dact, h1.dtype(), h1.device(), h1.shape()));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("dh1", dh1, h1.dtype(), h1.device(), h1.shape()));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("dh3", dh3, h1.dtype(), h1.device(), h1.shape()));
  if (h1.numel() == 0) return absl::OkStatus();
  if (dh1.data() == dh3.data()) {
    return BadArgument("dh3.data", "the same buffer as dh1", "distinct outputs");
  }
  if (ctx.device().is_cuda()) {
    return internal::SwiGLUBackwardCuda(ctx, h1.dtype(), h1.data(), h3.data(), dact.data(),
                                        dh1.data(), dh3.data(), h1.numel());
  }
  if (h1.dtype() == DType::kF32) {
    SwiGLUBackwardCpu<float>(h1, h3, dact, dh1, dh3);
  } else {
    SwiGLUBackwardCpu<BF16>(h1, h3, dact, dh1, dh3);
  }
  return absl::OkStatus();
}

#if !MOE_WITH_CUDA
namespace internal {
Status SwiGLUCuda(ExecContext&, DType, const void*, const void*, void*, int64_t) {
  return absl::FailedPreconditionError("SwiGLU on CUDA, but this build has no CUDA backend");
}
Status SwiGLUBackwardCuda(ExecContext&, DType, const void*, const void*, const void*, void*, void*,
                          int64_t) {
  return absl::FailedPreconditionError(
      "SwiGLUBackward on CUDA, but this build has no CUDA backend");
}
}  // namespace internal
#endif

}  // namespace smoe
