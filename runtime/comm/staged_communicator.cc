#include "runtime/comm/staged_communicator.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/comm/staging.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

// Device buffers on ctx's device through host scratch; host buffers pass straight through.
class HostBufferStager final : public BufferStager {
 public:
  StatusOr<bool> NeedsStaging(const ExecContext& ctx, absl::string_view name,
                              const TensorView& buffer) override {
    if (buffer.device().is_cpu()) return false;
    if (buffer.device() != ctx.device()) {
      return BadArgument(absl::StrCat(name, ".device"), buffer.device().ToString(),
                         absl::StrCat("cpu or ctx's device ", ctx.device().ToString()));
    }
    MOE_RETURN_IF_ERROR(CheckContiguous(name, buffer));
    return true;
  }
  StatusOr<ExecContext*> Context(ExecContext& ctx, bool) override { return &ctx; }
  StatusOr<Tensor> Scratch(ExecContext&, const TensorView& like) override {
    return Tensor::Empty(like.shape(), like.dtype(), Device::Cpu());
  }
  // To the host: synchronizes ctx's stream. To the device: async on ctx's stream.
  Status Move(ExecContext& ctx, const TensorView& src, const TensorView& dst) override {
    return Copy(ctx, src, dst);
  }
  // Every call is blocking: wait for the copies back to the device.
  Status Finish(ExecContext& ctx, bool stored) override {
    return stored ? ctx.Synchronize() : absl::OkStatus();
  }
};

}  // namespace

std::unique_ptr<Communicator> StagedCommunicator(Communicator* host_comm) {
  return StagingCommunicator(host_comm, nullptr, std::make_shared<HostBufferStager>());
}

}  // namespace smoe
