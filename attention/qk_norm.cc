#include "attention/qk_norm.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/qk_norm_cpu.h"
#include "attention/validate.h"
#include "runtime/core/thread_pool.h"

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

namespace {

// The reference on ranges of rows in parallel. Forward: the same bits. Backward: each fixed chunk
// of kRows rows sums its dw terms in double (the reference into a zeroed double buffer), and the
// chunks are added in order, in double, then once into the f32 dw.
constexpr int64_t kRows = 512;

template <typename T>
void ForwardRows(const T* x, const T* w, T* y, float* rstd, int64_t rows, int64_t dim, double eps) {
  ParallelFor(rows, 4 * dim, [&](int64_t first, int64_t last) {
    attention_internal::HeadRmsNormForwardCpu(x + first * dim, w, y + first * dim, rstd + first,
                                              last - first, dim, eps);
  });
}

template <typename T>
void BackwardRows(const T* x, const T* w, const float* rstd, const T* dy, T* dx, float* dw,
                  int64_t rows, int64_t dim) {
  const int64_t chunks = (rows + kRows - 1) / kRows;
  std::vector<double> partial(static_cast<size_t>(chunks * dim), 0.0);
  CpuPool().ParallelFor(chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      const int64_t r0 = c * kRows, n = std::min(kRows, rows - r0);
      attention_internal::HeadRmsNormBackwardCpu(x + r0 * dim, w, rstd + r0, dy + r0 * dim,
                                                 dx + r0 * dim, partial.data() + c * dim, n, dim);
    }
  });
  for (int64_t j = 0; j < dim; ++j) {
    double sum = 0.0;
    for (int64_t c = 0; c < chunks; ++c) sum += partial[c * dim + j];
    dw[j] += static_cast<float>(sum);
  }
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
    ForwardRows(x.data<float>(), w.data<float>(), y.data<float>(), rstd.data<float>(), rows, dim,
                eps);
  } else {
    ForwardRows(x.data<BF16>(), w.data<BF16>(), y.data<BF16>(), rstd.data<float>(), rows, dim, eps);
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
    BackwardRows(x.data<float>(), w.data<float>(), rstd.data<float>(), dy.data<float>(),
                 dx.data<float>(), dw.data<float>(), rows, dim);
  } else {
    BackwardRows(x.data<BF16>(), w.data<BF16>(), rstd.data<float>(), dy.data<BF16>(),
                 dx.data<BF16>(), dw.data<float>(), rows, dim);
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
