// Staging: a communicator made to accept buffers its collectives cannot take, by moving them
// through scratch memory that they can take.
//
// StagingCommunicator(inner, stager) runs each collective in three steps: every buffer the stager
// says needs staging gets scratch of its shape and dtype (inputs are moved in first), the inner
// communicator's collective runs on the scratch (other buffers pass as they are, and the inner
// communicator validates them), and the results are moved back; then stager.Finish. Rank, size
// and Barrier are the inner communicator's; Split splits it and wraps the sub-group with the same
// stager.
//
// Two stagers:
//   - host memory for a host communicator (MPI): runtime/comm/staged_communicator.h;
//   - DeviceBufferStager for NCCL, whose collectives take only device buffers: host buffers (the
//     global LBL's expert counts, the trainer's flags and loss sums) go through device scratch
//     on ctx's stream: copied in (pinned staging, no host sync), the collective, copied back
//     (which synchronizes ctx's stream). A call with host buffers only and a CPU context runs on
//     the stager's own context on the communicator's device.
#pragma once

#include <memory>

#include "absl/strings/string_view.h"
#include "runtime/comm/communicator.h"

namespace smoe {

// How a communicator's buffers reach memory its inner communicator takes.
class BufferStager {
 public:
  virtual ~BufferStager() = default;
  // Whether argument `name` must be staged: true to stage it, false to pass it as it is; an error
  // (InvalidArgument naming it) rejects it.
  [[nodiscard]] virtual StatusOr<bool> NeedsStaging(const ExecContext& ctx, absl::string_view name,
                                                    const TensorView& buffer) = 0;
  // The context the call runs on: ctx, or another one when ctx cannot serve; `all_staged`: every
  // buffer of the call is staged (so none is tied to ctx's stream).
  [[nodiscard]] virtual StatusOr<ExecContext*> Context(ExecContext& ctx, bool all_staged) = 0;
  // Scratch of like's shape and dtype that the inner communicator takes.
  [[nodiscard]] virtual StatusOr<Tensor> Scratch(ExecContext& ctx, const TensorView& like) = 0;
  // dst = src, between a caller's buffer and scratch (either direction), ordered on ctx.
  [[nodiscard]] virtual Status Move(ExecContext& ctx, const TensorView& src,
                                    const TensorView& dst) = 0;
  // After the results were moved back (`stored`: any was): returns once the caller may read them
  // and the scratch may be freed.
  [[nodiscard]] virtual Status Finish(ExecContext& ctx, bool stored) = 0;
};

// Host buffers through device scratch on CUDA device `cuda_device`, for NCCL (see the top of this
// file). Buffers on the host need staging; any other buffer passes to the inner communicator,
// which checks its device. Scratch comes from the run context's allocator (stream-ordered, so it
// may be freed as soon as the work is enqueued) and moves are Copy (to the host: synchronizes).
// Not thread-safe (like the communicators).
class DeviceBufferStager : public BufferStager {
 public:
  explicit DeviceBufferStager(int cuda_device) : device_(Device::Cuda(cuda_device)) {}

  StatusOr<bool> NeedsStaging(const ExecContext& ctx, absl::string_view name,
                              const TensorView& buffer) override;
  StatusOr<ExecContext*> Context(ExecContext& ctx, bool all_staged) override;
  StatusOr<Tensor> Scratch(ExecContext& ctx, const TensorView& like) override;
  Status Move(ExecContext& ctx, const TensorView& src, const TensorView& dst) override;
  Status Finish(ExecContext& ctx, bool stored) override;

 protected:
  Device device() const { return device_; }
  // The context on the communicator's device for calls made with another device's context
  // (created on first use).
  virtual StatusOr<ExecContext*> OwnContext();

 private:
  const Device device_;
  std::unique_ptr<ExecContext> own_;
};

// Wraps `inner` (not owned, unless also passed as `owned`; must outlive the result).
std::unique_ptr<Communicator> StagingCommunicator(Communicator* inner,
                                                  std::unique_ptr<Communicator> owned,
                                                  std::shared_ptr<BufferStager> stager);

}  // namespace smoe
