#include "runtime/nn/softmax.h"

#include <cmath>
#include <limits>

#include "runtime/core/cpu_vector.h"
#include "runtime/core/thread_pool.h"

namespace smoe {

Status SoftmaxRows(ExecContext& ctx, const TensorView& x, const TensorView& y) {
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("x", x, DType::kF32, ctx.device(), {-1, -1}));
  MOE_RETURN_IF_ERROR(
      CheckContiguousTensor("y", y, DType::kF32, ctx.device(), {x.dim(0), x.dim(1)}));
  const int64_t rows = x.dim(0), cols = x.dim(1);
  if (rows == 0 || cols == 0) return absl::OkStatus();
  if (ctx.device().is_cuda()) {
    return internal::SoftmaxRowsCuda(ctx, x.data<float>(), y.data<float>(), rows, cols);
  }
  const float* in = x.data<float>();
  float* out = y.data<float>();
  // Rows in parallel (each independent: the same result on any thread count).
  ParallelFor(rows, 4 * cols, [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      const float* xr = in + r * cols;
      float* yr = out + r * cols;
      float max = -std::numeric_limits<float>::infinity();
      bool finite = true;
      for (int64_t c = 0; c < cols; ++c) {
        finite = finite && std::isfinite(xr[c]);
        max = std::max(max, xr[c]);
      }
      if (!finite) {
        std::fill(yr, yr + cols, std::numeric_limits<float>::quiet_NaN());
        continue;
      }
      const float inv = static_cast<float>(1.0 / ExpShiftedSum(xr, max, cols, yr));
      for (int64_t c = 0; c < cols; ++c) yr[c] *= inv;
    }
  });
  return absl::OkStatus();
}

Status SoftmaxRowsBackward(ExecContext& ctx, const TensorView& y, const TensorView& dy,
                           const TensorView& dx) {
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("y", y, DType::kF32, ctx.device(), {-1, -1}));
  MOE_RETURN_IF_ERROR(
      CheckContiguousTensor("dy", dy, DType::kF32, ctx.device(), {y.dim(0), y.dim(1)}));
  MOE_RETURN_IF_ERROR(
      CheckContiguousTensor("dx", dx, DType::kF32, ctx.device(), {y.dim(0), y.dim(1)}));
  const int64_t rows = y.dim(0), cols = y.dim(1);
  if (rows == 0 || cols == 0) return absl::OkStatus();
  if (ctx.device().is_cuda()) {
    return internal::SoftmaxRowsBackwardCuda(ctx, y.data<float>(), dy.data<float>(),
                                             dx.data<float>(), rows, cols);
  }
  const float* yp = y.data<float>();
  const float* dyp = dy.data<float>();
  float* dxp = dx.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    double dot = 0.0;
    for (int64_t c = 0; c < cols; ++c) dot += double{dyp[r * cols + c]} * yp[r * cols + c];
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = r * cols + c;
      dxp[i] = yp[i] * (dyp[i] - static_cast<float>(dot));
    }
  }
  return absl::OkStatus();
}

#if !MOE_WITH_CUDA
namespace internal {
Status SoftmaxRowsCuda(ExecContext&, const float*, float*, int64_t, int64_t) {
  return absl::FailedPreconditionError("SoftmaxRows on CUDA, but this build has no CUDA backend");
}
Status SoftmaxRowsBackwardCuda(ExecContext&, const float*, const float*, float*, int64_t, int64_t) {
  return absl::FailedPreconditionError(
      "SoftmaxRowsBackward on CUDA, but this build has no CUDA backend");
}
}  // namespace internal
#endif

}  // namespace smoe
