#include "runtime/nn/adamw.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace smoe {
namespace {

bool Absent(const TensorView& t) { return t.data() == nullptr && t.rank() == 0; }

Status CheckNonNegative(absl::string_view name, float value) {
  if (!std::isfinite(value) || value < 0.0f) {
    return BadArgument(name, absl::StrCat(value), "finite and >= 0");
  }
  return absl::OkStatus();
}

Status CheckBeta(absl::string_view name, float value) {
  if (!(value >= 0.0f && value < 1.0f)) return BadArgument(name, absl::StrCat(value), "in [0, 1)");
  return absl::OkStatus();
}

}  // namespace

Status AdamWStep(ExecContext& ctx, const AdamWConfig& config, int64_t step, float grad_scale,
                 const TensorView& params, const TensorView& grads, const TensorView& m,
                 const TensorView& v, const TensorView& shadow) {
  MOE_RETURN_IF_ERROR(
      CheckContiguousTensor("params", params, DType::kF32, ctx.device(), params.shape()));
  MOE_RETURN_IF_ERROR(
      CheckContiguousTensor("grads", grads, DType::kF32, ctx.device(), params.shape()));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("m", m, DType::kF32, ctx.device(), params.shape()));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("v", v, DType::kF32, ctx.device(), params.shape()));
  const bool has_shadow = !Absent(shadow);
  if (has_shadow) {
    MOE_RETURN_IF_ERROR(CheckFloatingDType("shadow", shadow));
    MOE_RETURN_IF_ERROR(CheckOnDevice("shadow", shadow, ctx.device()));
    MOE_RETURN_IF_ERROR(
        CheckContiguousTensor("shadow", shadow, shadow.dtype(), ctx.device(), params.shape()));
  }
  if (step < 1) return BadArgument("step", absl::StrCat(step), ">= 1");
  MOE_RETURN_IF_ERROR(CheckNonNegative("config.lr", config.lr));
  MOE_RETURN_IF_ERROR(CheckNonNegative("config.eps", config.eps));
  MOE_RETURN_IF_ERROR(CheckNonNegative("config.weight_decay", config.weight_decay));
  MOE_RETURN_IF_ERROR(CheckBeta("config.beta1", config.beta1));
  MOE_RETURN_IF_ERROR(CheckBeta("config.beta2", config.beta2));
  if (!std::isfinite(grad_scale)) {
    return BadArgument("grad_scale", absl::StrCat(grad_scale), "finite");
  }
  const int64_t n = params.numel();
  if (n == 0) return absl::OkStatus();
  const auto bias1 = static_cast<float>(1.0 - std::pow(double{config.beta1}, double(step)));
  const auto bias2 = static_cast<float>(1.0 - std::pow(double{config.beta2}, double(step)));
  const auto decay = static_cast<float>(1.0 - double{config.lr} * config.weight_decay);
  if (ctx.device().is_cuda()) {
    return internal::AdamWStepCuda(
        ctx, config, bias1, bias2, decay, grad_scale, params.data<float>(), grads.data<float>(),
        m.data<float>(), v.data<float>(), shadow.dtype(), has_shadow ? shadow.data() : nullptr, n);
  }
  float* p = params.data<float>();
  const float* g = grads.data<float>();
  float* mp = m.data<float>();
  float* vp = v.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    p[i] = internal::AdamWUpdate(p[i], g[i] * grad_scale, &mp[i], &vp[i], config.lr, config.beta1,
                                 config.beta2, config.eps, bias1, bias2, decay);
  }
  if (has_shadow && shadow.dtype() == DType::kF32) {
    float* s = shadow.data<float>();
    for (int64_t i = 0; i < n; ++i) s[i] = p[i];
  } else if (has_shadow) {
    BF16* s = shadow.data<BF16>();
    for (int64_t i = 0; i < n; ++i) s[i] = FloatToBF16(p[i]);
  }
  return absl::OkStatus();
}

Status AccumulateSquaredNorm(ExecContext& ctx, const TensorView& g, const TensorView& out) {
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("g", g, DType::kF32, ctx.device(), g.shape()));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("out", out, DType::kF32, ctx.device(), {1}));
  const int64_t n = g.numel();
  if (n == 0) return absl::OkStatus();
  if (ctx.device().is_cuda()) {
    return internal::AccumulateSquaredNormCuda(ctx, g.data<float>(), n, out.data<float>());
  }
  const float* p = g.data<float>();
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += double{p[i]} * p[i];
  float* o = out.data<float>();
  o[0] = static_cast<float>(o[0] + sum);
  return absl::OkStatus();
}

StatusOr<bool> AllFinite(ExecContext& ctx, const TensorView& t) {
  MOE_RETURN_IF_ERROR(CheckFloatingDType("t", t));
  MOE_RETURN_IF_ERROR(CheckOnDevice("t", t, ctx.device()));
  const int64_t n = t.numel();
  if (n == 0) return true;
  if (ctx.device().is_cuda()) return internal::AllFiniteCuda(ctx, t.dtype(), t.data(), n);
  if (t.dtype() == DType::kF32) {
    const float* p = t.data<float>();
    for (int64_t i = 0; i < n; ++i) {
      if (!std::isfinite(p[i])) return false;
    }
  } else {
    const BF16* p = t.data<BF16>();
    for (int64_t i = 0; i < n; ++i) {
      if (!std::isfinite(BF16ToFloat(p[i]))) return false;
    }
  }
  return true;
}

#if !MOE_WITH_CUDA
namespace internal {
Status AdamWStepCuda(ExecContext&, const AdamWConfig&, float, float, float, float, float*,
                     const float*, float*, float*, DType, void*, int64_t) {
  return absl::FailedPreconditionError("AdamWStep on CUDA, but this build has no CUDA backend");
}
Status AccumulateSquaredNormCuda(ExecContext&, const float*, int64_t, float*) {
  return absl::FailedPreconditionError(
      "AccumulateSquaredNorm on CUDA, but this build has no CUDA backend");
}
StatusOr<bool> AllFiniteCuda(ExecContext&, DType, const void*, int64_t) {
  return absl::FailedPreconditionError("AllFinite on CUDA, but this build has no CUDA backend");
}
}  // namespace internal
#endif

}  // namespace smoe
