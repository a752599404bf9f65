#include "runtime/device/stream_event.h"

#include <utility>

#include "absl/strings/str_cat.h"

#if MOE_WITH_CUDA
#include <cuda_runtime.h>

#include "runtime/device/cuda_error.h"
#endif

namespace smoe {

StreamEvent::~StreamEvent() {
#if MOE_WITH_CUDA
  if (event_ != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
#endif
}

StreamEvent::StreamEvent(StreamEvent&& other) noexcept
    : event_(std::exchange(other.event_, nullptr)),
      device_(other.device_),
      recorded_(std::exchange(other.recorded_, false)) {}

StreamEvent& StreamEvent::operator=(StreamEvent&& other) noexcept {
  if (this != &other) {
    StreamEvent old(std::move(*this));
    event_ = std::exchange(other.event_, nullptr);
    device_ = other.device_;
    recorded_ = std::exchange(other.recorded_, false);
  }
  return *this;
}

Status StreamEvent::Record(ExecContext& ctx) {
  device_ = ctx.device();
  recorded_ = true;
  if (!ctx.device().is_cuda()) return absl::OkStatus();
#if MOE_WITH_CUDA
  MOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(ctx.device().index));
  if (event_ == nullptr) {
    cudaEvent_t event = nullptr;
    MOE_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    event_ = event;
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaEventRecord(static_cast<cudaEvent_t>(event_), ctx.stream()));
  return absl::OkStatus();
#else
  return absl::FailedPreconditionError("StreamEvent on a CUDA context in a build without CUDA");
#endif
}

Status StreamEvent::Block(ExecContext& ctx) const {
  if (!recorded_) return absl::OkStatus();
  if (ctx.device() != device_) {
    return BadArgument("ctx", ctx.device().ToString(),
                       absl::StrCat(device_.ToString(), " (the device the event was recorded on)"));
  }
  if (!ctx.device().is_cuda()) return absl::OkStatus();
#if MOE_WITH_CUDA
  MOE_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(ctx.stream(), static_cast<cudaEvent_t>(event_), 0));
  return absl::OkStatus();
#else
  return absl::FailedPreconditionError("StreamEvent on a CUDA context in a build without CUDA");
#endif
}

Status BindThreadToDevice(Device device) {
  if (!device.is_cuda()) return absl::OkStatus();
#if MOE_WITH_CUDA
  MOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device.index));
  return absl::OkStatus();
#else
  return absl::FailedPreconditionError(
      absl::StrCat(device.ToString(), " requested, but this build has no CUDA backend"));
#endif
}

}  // namespace smoe
