// Timing for the benchmark programs: the median of repeated runs after warm-up, with CUDA events
// on ctx's stream for a GPU context and the host clock (after a synchronize) on the CPU.
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"

#if MOE_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace smoe {

// Median milliseconds of one call of `fn` over `iters` calls, after `warmup` untimed calls.
template <typename Fn>
StatusOr<double> MedianMs(ExecContext& ctx, int warmup, int iters, Fn fn) {
  for (int i = 0; i < warmup; ++i) MOE_RETURN_IF_ERROR(fn());
  MOE_RETURN_IF_ERROR(ctx.Synchronize());
  std::vector<double> times;
  for (int i = 0; i < std::max(iters, 1); ++i) {
#if MOE_WITH_CUDA
    if (ctx.device().is_cuda()) {
      cudaEvent_t start, stop;
      cudaEventCreate(&start);
      cudaEventCreate(&stop);
      cudaEventRecord(start, ctx.stream());
      MOE_RETURN_IF_ERROR(fn());
      cudaEventRecord(stop, ctx.stream());
      cudaEventSynchronize(stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, start, stop);
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
      times.push_back(ms);
      continue;
    }
#endif
    const auto t0 = std::chrono::steady_clock::now();
    MOE_RETURN_IF_ERROR(fn());
    MOE_RETURN_IF_ERROR(ctx.Synchronize());
    times.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace smoe
