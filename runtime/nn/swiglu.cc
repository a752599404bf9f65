#include "runtime/nn/swiglu.h"

#include <algorithm>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "runtime/core/cpu_vector.h"
#include "runtime/core/thread_pool.h"

namespace smoe {
namespace {

float Load(const float* p, int64_t i) { return p[i]; }
float Load(const BF16* p, int64_t i) { return BF16ToFloat(p[i]); }
void Store(float* p, int64_t i, float v) { p[i] = v; }
void Store(BF16* p, int64_t i, float v) { p[i] = FloatToBF16(v); }

// The f32 loops, vectorized (cpu_vector.h): the formulas of swiglu.h with SigmoidF. Blocks of
// 16 are loaded before any is stored, so outputs may alias inputs (swiglu.h) and the compiler
// needs no aliasing checks to vectorize.
constexpr int64_t kBlock = 16;

MOE_CPU_CLONES void SwiGLUF32(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t m = std::min(kBlock, n - i0);
    float y[kBlock];
    for (int64_t i = 0; i < m; ++i) y[i] = a[i0 + i] * SigmoidF(a[i0 + i]) * b[i0 + i];
    for (int64_t i = 0; i < m; ++i) out[i0 + i] = y[i];
  }
}

MOE_CPU_CLONES void SwiGLUGradF32(const float* a, const float* b, const float* g, float* da,
                                  float* db, int64_t n) {
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t m = std::min(kBlock, n - i0);
    float d1[kBlock], d3[kBlock];
    for (int64_t i = 0; i < m; ++i) {
      const float x = a[i0 + i], s = SigmoidF(x), gi = g[i0 + i];
      d1[i] = gi * b[i0 + i] * s * (1.0f + x * (1.0f - s));
      d3[i] = gi * x * s;
    }
    for (int64_t i = 0; i < m; ++i) da[i0 + i] = d1[i];
    for (int64_t i = 0; i < m; ++i) db[i0 + i] = d3[i];
  }
}

template <typename S>
void SwiGLUCpu(const TensorView& h1, const TensorView& h3, const TensorView& act) {
  const S* a = static_cast<const S*>(h1.data());
  const S* b = static_cast<const S*>(h3.data());
  S* out = static_cast<S*>(act.data());
  ParallelFor(h1.numel(), 1, [&](int64_t first, int64_t last) {
    if constexpr (std::is_same_v<S, float>) {
      SwiGLUF32(a + first, b + first, out + first, last - first);
    } else {
      for (int64_t i = first; i < last; ++i) {
        Store(out, i, internal::SwiGLUValue(Load(a, i), Load(b, i)));
      }
    }
  });
}

template <typename S>
void SwiGLUBackwardCpu(const TensorView& h1, const TensorView& h3, const TensorView& dact,
                       const TensorView& dh1, const TensorView& dh3) {
  const S* a = static_cast<const S*>(h1.data());
  const S* b = static_cast<const S*>(h3.data());
  const S* g = static_cast<const S*>(dact.data());
  S* da = static_cast<S*>(dh1.data());
  S* db = static_cast<S*>(dh3.data());
  ParallelFor(h1.numel(), 1, [&](int64_t first, int64_t last) {
    if constexpr (std::is_same_v<S, float>) {
      SwiGLUGradF32(a + first, b + first, g + first, da + first, db + first, last - first);
      return;
    }
    for (int64_t i = first; i < last; ++i) {
      float d1, d3;
      internal::SwiGLUGrad(Load(a, i), Load(b, i), Load(g, i), &d1, &d3);
      Store(da, i, d1);
      Store(db, i, d3);
    }
  });
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
