// StreamEvent: a point in one stream's work that another stream can wait for on the device (a
// CUDA event), for ordering work across streams without a host sync. On the CPU, where work runs
// when it is called, there is nothing to order and every call is a no-op.
//
// Typical use (runtime/comm/comm_lane.h): the compute stream records an event, the communication
// stream waits for it before an exchange reads the buffers the compute stream wrote; then the
// communication stream records an event that the compute stream waits for before it reads the
// exchanged rows.
#pragma once

#include "runtime/core/status.h"
#include "runtime/device/device.h"
#include "runtime/device/exec_context.h"

namespace smoe {

class StreamEvent {
 public:
  StreamEvent() = default;
  ~StreamEvent();
  StreamEvent(StreamEvent&& other) noexcept;
  StreamEvent& operator=(StreamEvent&& other) noexcept;
  StreamEvent(const StreamEvent&) = delete;
  StreamEvent& operator=(const StreamEvent&) = delete;

  // Marks the work enqueued on ctx's stream so far (CUDA: cudaEventRecord; the event is created
  // on first use, on ctx's device). A later Record replaces the mark.
  [[nodiscard]] Status Record(ExecContext& ctx);
  // Work enqueued on ctx's stream from now on runs after the recorded work (CUDA:
  // cudaStreamWaitEvent, no host sync). A no-op when nothing was recorded. ctx's device must be
  // the device of the recording (InvalidArgument naming ctx otherwise).
  [[nodiscard]] Status Block(ExecContext& ctx) const;
  bool recorded() const { return recorded_; }

 private:
  void* event_ = nullptr;  // cudaEvent_t
  Device device_;
  bool recorded_ = false;
};

// Makes `device` the calling thread's current CUDA device (a thread other than the one that
// created a context must, before it enqueues work there). A no-op for the CPU.
[[nodiscard]] Status BindThreadToDevice(Device device);

}  // namespace smoe
