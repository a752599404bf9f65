// Wall time of device work, for measurements that rank alternatives (the adaptive controller's
// per-layer MoE times).
//
// On CUDA the host clock around a call measures its launch, not its run: kernels are enqueued and
// the call returns. So the timer waits for the stream before it reads the clock, at both ends; on
// the CPU, where work runs when called, it does not wait. Each CUDA measurement costs two host
// syncs (ExecContext::host_syncs counts them): callers time only the steps they report.
#pragma once

#include <chrono>
#include <functional>

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"

namespace smoe {

class StreamTimer {
 public:
  // Blocks until the work enqueued so far has run.
  using Wait = std::function<Status()>;

  // Waits with ctx.Synchronize() on CUDA, not at all on the CPU. ctx must outlive the timer.
  static StreamTimer For(ExecContext& ctx);
  explicit StreamTimer(Wait wait) : wait_(std::move(wait)) {}

  [[nodiscard]] Status Start();
  // Milliseconds from Start to the end of the work enqueued since.
  [[nodiscard]] StatusOr<double> StopMs();

 private:
  Wait wait_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace smoe
