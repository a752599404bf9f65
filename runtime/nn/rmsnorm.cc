#include "runtime/nn/rmsnorm.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/core/cpu_vector.h"
#include "runtime/core/scalar.h"
#include "runtime/core/thread_pool.h"

namespace smoe {
namespace {

Status CheckX(const ExecContext& ctx, const TensorView& x) {
  if (!IsFloating(x.dtype())) {
    return BadArgument("x.dtype", DTypeName(x.dtype()), "f32 or bf16");
  }
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("x", x, x.dtype(), ctx.device(), {-1, -1}));
  if (x.dim(1) < 1) return BadArgument("x.shape[1]", absl::StrCat(x.dim(1)), ">= 1");
  return absl::OkStatus();
}

// Rows per partial sum of dgain: fixed, so the sum's order never depends on the thread count.
constexpr int64_t kGainChunk = 256;

// The CPU ops: rows in parallel (RMSNormForwardCpu on row ranges: the reference's arithmetic, bit
// for bit); the backward's dgain as partial sums over kGainChunk rows, added in chunk order.
// Rows of the f32 path, vectorized (cpu_vector.h): sums in double lanes, the elementwise parts in
// f32 (the reference keeps them in double; they differ by f32 rounding).
MOE_CPU_CLONES double SumSquares(const float* x, int64_t n) {
  double lanes[8] = {};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    for (int l = 0; l < 8; ++l) lanes[l] += double{x[c + l]} * x[c + l];
  }
  for (; c < n; ++c) lanes[c % 8] += double{x[c]} * x[c];
  return SumLanes(lanes);
}

MOE_CPU_CLONES void ScaleByGain(const float* x, const float* gain, float inv, int64_t n, float* y) {
  for (int64_t c = 0; c < n; ++c) y[c] = x[c] * inv * gain[c];
}

// One row's backward: adds its dgain terms dy x rstd to sum[c] (double) and writes dx.
MOE_CPU_CLONES void BackwardRowF32(const float* x, const float* gain, float rstd, const float* dy,
                                   int64_t n, float* dx, double* sum) {
  const double inv = rstd;
  double lanes[8] = {};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    for (int l = 0; l < 8; ++l) {
      const double xdy = double{dy[c + l]} * x[c + l];
      sum[c + l] += xdy * inv;
      lanes[l] += xdy * gain[c + l];
    }
  }
  for (; c < n; ++c) {
    const double xdy = double{dy[c]} * x[c];
    sum[c] += xdy * inv;
    lanes[c % 8] += xdy * gain[c];
  }
  const double dot = SumLanes(lanes) * inv;
  const float invf = rstd, mean = static_cast<float>(dot / static_cast<double>(n));
  for (c = 0; c < n; ++c) dx[c] = invf * (dy[c] * gain[c] - x[c] * invf * mean);
}

template <typename X>
void RMSNormForwardRows(const X* x, const float* gain, double eps, int64_t rows, int64_t cols, X* y,
                        float* rstd) {
  ParallelFor(rows, 4 * cols, [&](int64_t first, int64_t last) {
    if constexpr (std::is_same_v<X, float>) {
      for (int64_t r = first; r < last; ++r) {
        const double inv =
            1.0 / std::sqrt(SumSquares(x + r * cols, cols) / static_cast<double>(cols) + eps);
        rstd[r] = static_cast<float>(inv);
        ScaleByGain(x + r * cols, gain, static_cast<float>(inv), cols, y + r * cols);
      }
    } else {
      internal::RMSNormForwardCpu(x + first * cols, gain, eps, last - first, cols, y + first * cols,
                                  rstd + first);
    }
  });
}

template <typename X>
void RMSNormBackwardRows(const X* x, const float* gain, const float* rstd, const X* dy,
                         int64_t rows, int64_t cols, X* dx, float* dgain) {
  const int64_t chunks = (rows + kGainChunk - 1) / kGainChunk;
  std::vector<double> partial(static_cast<size_t>(chunks * cols), 0.0);
  CpuPool().ParallelFor(chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t chunk = first; chunk < last; ++chunk) {
      double* sum = partial.data() + chunk * cols;
      const int64_t r_end = std::min(rows, (chunk + 1) * kGainChunk);
      for (int64_t r = chunk * kGainChunk; r < r_end; ++r) {
        if constexpr (std::is_same_v<X, float>) {
          BackwardRowF32(x + r * cols, gain, rstd[r], dy + r * cols, cols, dx + r * cols, sum);
          continue;
        }
        // dgain's terms first: dx may alias dy.
        const double inv = Widen(rstd[r]);
        double dot = 0.0;
        for (int64_t c = 0; c < cols; ++c) {
          const int64_t i = r * cols + c;
          const double xdy = Widen(dy[i]) * Widen(x[i]);
          sum[c] += xdy * inv;
          dot += xdy * Widen(gain[c]) * inv;
        }
        const double mean_dot = dot / static_cast<double>(cols);
        for (int64_t c = 0; c < cols; ++c) {
          const int64_t i = r * cols + c;
          const double g = Widen(dy[i]) * Widen(gain[c]);
          Store(&dx[i], inv * (g - Widen(x[i]) * inv * mean_dot));
        }
      }
    }
  });
  for (int64_t c = 0; c < cols; ++c) {
    double total = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) total += partial[chunk * cols + c];
    dgain[c] += static_cast<float>(total);
  }
}

}  // namespace

namespace internal {

template <typename X, typename P>
void RMSNormForwardCpu(const X* x, const P* gain, double eps, int64_t rows, int64_t cols, X* y,
                       P* rstd) {
  for (int64_t r = 0; r < rows; ++r) {
    const X* xr = x + r * cols;
    double sum_sq = 0.0;
    for (int64_t c = 0; c < cols; ++c) sum_sq += Widen(xr[c]) * Widen(xr[c]);
    const double inv = 1.0 / std::sqrt(sum_sq / static_cast<double>(cols) + eps);
    Store(&rstd[r], inv);
    for (int64_t c = 0; c < cols; ++c) Store(&y[r * cols + c], Widen(xr[c]) * inv * Widen(gain[c]));
  }
}

template <typename X, typename P>
void RMSNormBackwardCpu(const X* x, const P* gain, const P* rstd, const X* dy, int64_t rows,
                        int64_t cols, X* dx, P* dgain) {
  // dgain first: dx may alias dy.
  for (int64_t c = 0; c < cols; ++c) {
    double sum = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      sum += Widen(dy[r * cols + c]) * Widen(x[r * cols + c]) * Widen(rstd[r]);
    }
    Store(&dgain[c], Widen(dgain[c]) + sum);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const double inv = Widen(rstd[r]);
    double dot = 0.0;
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = r * cols + c;
      dot += Widen(dy[i]) * Widen(gain[c]) * Widen(x[i]) * inv;
    }
    const double mean_dot = dot / static_cast<double>(cols);
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = r * cols + c;
      const double g = Widen(dy[i]) * Widen(gain[c]);
      Store(&dx[i], inv * (g - Widen(x[i]) * inv * mean_dot));
    }
  }
}

template void RMSNormForwardCpu<float, float>(const float*, const float*, double, int64_t, int64_t,
                                              float*, float*);
template void RMSNormForwardCpu<BF16, float>(const BF16*, const float*, double, int64_t, int64_t,
                                             BF16*, float*);
template void RMSNormForwardCpu<double, double>(const double*, const double*, double, int64_t,
                                                int64_t, double*, double*);
template void RMSNormBackwardCpu<float, float>(const float*, const float*, const float*,
                                               const float*, int64_t, int64_t, float*, float*);
template void RMSNormBackwardCpu<BF16, float>(const BF16*, const float*, const float*, const BF16*,
                                              int64_t, int64_t, BF16*, float*);
template void RMSNormBackwardCpu<double, double>(const double*, const double*, const double*,
                                                 const double*, int64_t, int64_t, double*, double*);

}  // namespace internal

Status RMSNormForward(ExecContext& ctx, const TensorView& x, const TensorView& gain, float eps,
                      const TensorView& y, const TensorView& rstd) {
  MOE_RETURN_IF_ERROR(CheckX(ctx, x));
  const int64_t rows = x.dim(0), cols = x.dim(1);
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("gain", gain, DType::kF32, ctx.device(), {cols}));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("y", y, x.dtype(), ctx.device(), {rows, cols}));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("rstd", rstd, DType::kF32, ctx.device(), {rows}));
  if (!std::isfinite(eps) || eps < 0.0f) {
    return BadArgument("eps", absl::StrCat(eps), "finite and >= 0");
  }
  if (rows == 0) return absl::OkStatus();
  if (ctx.device().is_cuda()) {
    return internal::RMSNormForwardCuda(ctx, x.dtype(), x.data(), gain.data<float>(), eps, rows,
                                        cols, y.data(), rstd.data<float>());
  }
  if (x.dtype() == DType::kF32) {
    RMSNormForwardRows(x.data<float>(), gain.data<float>(), eps, rows, cols, y.data<float>(),
                       rstd.data<float>());
  } else {
    RMSNormForwardRows(x.data<BF16>(), gain.data<float>(), eps, rows, cols, y.data<BF16>(),
                       rstd.data<float>());
  }
  return absl::OkStatus();
}

Status RMSNormBackward(ExecContext& ctx, const TensorView& x, const TensorView& gain,
                       const TensorView& rstd, const TensorView& dy, const TensorView& dx,
                       const TensorView& dgain) {
  MOE_RETURN_IF_ERROR(CheckX(ctx, x));
  const int64_t rows = x.dim(0), cols = x.dim(1);
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("gain", gain, DType::kF32, ctx.device(), {cols}));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("rstd", rstd, DType::kF32, ctx.device(), {rows}));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("dy", dy, x.dtype(), ctx.device(), {rows, cols}));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("dx", dx, x.dtype(), ctx.device(), {rows, cols}));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("dgain", dgain, DType::kF32, ctx.device(), {cols}));
  if (rows == 0) return absl::OkStatus();
  if (ctx.device().is_cuda()) {
    return internal::RMSNormBackwardCuda(ctx, x.dtype(), x.data(), gain.data<float>(),
                                         rstd.data<float>(), dy.data(), rows, cols, dx.data(),
                                         dgain.data<float>());
  }
  if (x.dtype() == DType::kF32) {
    RMSNormBackwardRows(x.data<float>(), gain.data<float>(), rstd.data<float>(), dy.data<float>(),
                        rows, cols, dx.data<float>(), dgain.data<float>());
  } else {
    RMSNormBackwardRows(x.data<BF16>(), gain.data<float>(), rstd.data<float>(), dy.data<BF16>(),
                        rows, cols, dx.data<BF16>(), dgain.data<float>());
  }
  return absl::OkStatus();
}

#if !MOE_WITH_CUDA
namespace internal {
Status RMSNormForwardCuda(ExecContext&, DType, const void*, const float*, float, int64_t, int64_t,
                          void*, float*) {
  return absl::FailedPreconditionError(
      "RMSNormForward on CUDA, but this build has no CUDA backend");
}
Status RMSNormBackwardCuda(ExecContext&, DType, const void*, const float*, const float*,
                           const void*, int64_t, int64_t, void*, float*) {
  return absl::FailedPreconditionError(
      "RMSNormBackward on CUDA, but this build has no CUDA backend");
}
}  // namespace internal
#endif

}  // namespace smoe
