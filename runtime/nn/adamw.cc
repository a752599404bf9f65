#include "runtime/nn/adamw.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/core/cpu_vector.h"
#include "runtime/core/thread_pool.h"

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

// AdamWUpdate over [0, n), vectorized (cpu_vector.h; fmaf is one instruction there).
MOE_CPU_CLONES void AdamWRange(float* p, const float* g, float* m, float* v, int64_t n,
                               float grad_scale, float lr, float beta1, float beta2, float eps,
                               float bias1, float bias2, float decay) {
  for (int64_t i = 0; i < n; ++i) {
    p[i] = internal::AdamWUpdate(p[i], g[i] * grad_scale, &m[i], &v[i], lr, beta1, beta2, eps,
                                 bias1, bias2, decay);
  }
}

// sum of p[i]^2 in double, in 8 lanes.
MOE_CPU_CLONES double SquaredNorm(const float* p, int64_t n) {
  double lanes[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) lanes[l] += double{p[i + l]} * p[i + l];
  }
  for (; i < n; ++i) lanes[0] += double{p[i]} * p[i];
  return SumLanes(lanes);
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
  float* s32 = has_shadow && shadow.dtype() == DType::kF32 ? shadow.data<float>() : nullptr;
  BF16* s16 = has_shadow && shadow.dtype() == DType::kBF16 ? shadow.data<BF16>() : nullptr;
  ParallelFor(n, 4, [&](int64_t first, int64_t last) {
    AdamWRange(p + first, g + first, mp + first, vp + first, last - first, grad_scale, config.lr,
               config.beta1, config.beta2, config.eps, bias1, bias2, decay);
    if (s32 != nullptr) std::copy(p + first, p + last, s32 + first);
    if (s16 != nullptr) {
      for (int64_t i = first; i < last; ++i) s16[i] = FloatToBF16(p[i]);
    }
  });
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
  // Partial sums over fixed chunks (8 double lanes each), added in chunk order: vectorized,
  // parallel, and the same result on any thread count.
  const float* p = g.data<float>();
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks));
  CpuPool().ParallelFor(chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      partial[c] = SquaredNorm(p + c * kChunk, std::min(kChunk, n - c * kChunk));
    }
  });
  double sum = 0.0;
  for (double v : partial) sum += v;
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
