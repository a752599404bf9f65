#include "runtime/device/stream_timer.h"

namespace smoe {

StreamTimer StreamTimer::For(ExecContext& ctx) {
  if (!ctx.device().is_cuda()) return StreamTimer(nullptr);
  return StreamTimer([&ctx] { return ctx.Synchronize(); });
}

Status StreamTimer::Start() {
  if (wait_) MOE_RETURN_IF_ERROR(wait_());
  start_ = std::chrono::steady_clock::now();
  return absl::OkStatus();
}

StatusOr<double> StreamTimer::StopMs() {
  if (wait_) MOE_RETURN_IF_ERROR(wait_());
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_)
      .count();
}

}  // namespace smoe
