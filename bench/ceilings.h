// The machine's own ceilings, measured in the same run as the code compared with them: a large
// dense GEMM (bf16 in, f32 accumulate on a GPU; f32 on the CPU) and a large device-to-device
// copy. Inputs are random normals, never zeros.
#pragma once

#include <cstdint>

#include "bench/bench_timing.h"
#include "runtime/blas/gemm.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {

// n x n x n GEMM throughput in TFLOP/s (2 n^3 FLOPs per call): the median of `iters` runs.
inline StatusOr<double> GemmCeilingTflops(ExecContext& ctx, DType dtype, int64_t n, int iters) {
  MOE_ASSIGN_OR_RETURN(Tensor a, Tensor::Empty({n, n}, dtype, ctx.device()));
  MOE_ASSIGN_OR_RETURN(Tensor b, Tensor::Empty({n, n}, dtype, ctx.device()));
  MOE_ASSIGN_OR_RETURN(Tensor c, Tensor::Empty({n, n}, dtype, ctx.device()));
  MOE_RETURN_IF_ERROR(FillNormal(ctx, a, 1, 0, 0.0f, 1.0f));
  MOE_RETURN_IF_ERROR(FillNormal(ctx, b, 2, 0, 0.0f, 1.0f));
  MOE_ASSIGN_OR_RETURN(double ms, MedianMs(ctx, 2, iters, [&] { return Gemm(ctx, a, b, c); }));
  return 2.0 * n * n * n / (ms * 1e-3) / 1e12;
}

// Copy bandwidth in GB/s (read + write counted: 2 x bytes per copy) of `bytes` between two
// buffers on ctx's device.
inline StatusOr<double> CopyCeilingGbps(ExecContext& ctx, int64_t bytes, int iters) {
  const int64_t n = bytes / 4;
  MOE_ASSIGN_OR_RETURN(Tensor src, Tensor::Empty({n}, DType::kF32, ctx.device()));
  MOE_ASSIGN_OR_RETURN(Tensor dst, Tensor::Empty({n}, DType::kF32, ctx.device()));
  MOE_RETURN_IF_ERROR(FillNormal(ctx, src, 3, 0, 0.0f, 1.0f));
  MOE_ASSIGN_OR_RETURN(double ms, MedianMs(ctx, 2, iters, [&] { return Copy(ctx, src, dst); }));
  return 2.0 * n * 4 / (ms * 1e-3) / 1e9;
}

}  // namespace smoe
