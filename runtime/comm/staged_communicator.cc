#include "runtime/comm/staged_communicator.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

// A buffer as the host communicator sees it: the buffer itself when on the host, else host
// scratch of the same shape and dtype (filled from the device when `load`).
class Staged {
 public:
  static StatusOr<Staged> Create(ExecContext& ctx, absl::string_view name,
                                 const TensorView& buffer, bool load) {
    Staged staged;
    staged.original_ = buffer;
    if (buffer.device().is_cpu()) {
      staged.host_ = buffer;
      return staged;
    }
    if (buffer.device() != ctx.device()) {
      return BadArgument(absl::StrCat(name, ".device"), buffer.device().ToString(),
                         absl::StrCat("cpu or ctx's device ", ctx.device().ToString()));
    }
    MOE_RETURN_IF_ERROR(CheckContiguous(name, buffer));
    MOE_ASSIGN_OR_RETURN(staged.scratch_,
                         Tensor::Empty(buffer.shape(), buffer.dtype(), Device::Cpu()));
    staged.host_ = staged.scratch_.view();
    if (load) MOE_RETURN_IF_ERROR(Copy(ctx, buffer, staged.host_));
    return staged;
  }

  const TensorView& host() const { return host_; }
  bool on_device() const { return !original_.device().is_cpu(); }

  // Copies the host result back to the device buffer (no-op for host buffers).
  Status Store(ExecContext& ctx) const {
    if (!on_device()) return absl::OkStatus();
    return Copy(ctx, host_, original_);
  }

 private:
  TensorView original_;
  TensorView host_;
  Tensor scratch_;
};

// Waits for the copies back so the scratch can be freed (they read host memory asynchronously).
Status Finish(ExecContext& ctx, std::initializer_list<const Staged*> outputs) {
  bool any = false;
  for (const Staged* s : outputs) {
    MOE_RETURN_IF_ERROR(s->Store(ctx));
    any = any || s->on_device();
  }
  return any ? ctx.Synchronize() : absl::OkStatus();
}

class StagedComm final : public Communicator {
 public:
  StagedComm(Communicator* host, std::unique_ptr<Communicator> owned)
      : host_(host), owned_(std::move(owned)) {}

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }

  Status AllReduceSum(ExecContext& ctx, const TensorView& buffer) override {
    MOE_ASSIGN_OR_RETURN(Staged b, Staged::Create(ctx, "buffer", buffer, /*load=*/true));
    MOE_RETURN_IF_ERROR(host_->AllReduceSum(ctx, b.host()));
    return Finish(ctx, {&b});
  }

  Status AllGather(ExecContext& ctx, const TensorView& in, const TensorView& out) override {
    MOE_ASSIGN_OR_RETURN(Staged i, Staged::Create(ctx, "in", in, /*load=*/true));
    MOE_ASSIGN_OR_RETURN(Staged o, Staged::Create(ctx, "out", out, /*load=*/false));
    MOE_RETURN_IF_ERROR(host_->AllGather(ctx, i.host(), o.host()));
    return Finish(ctx, {&o});
  }

  Status ReduceScatterSum(ExecContext& ctx, const TensorView& in, const TensorView& out) override {
    MOE_ASSIGN_OR_RETURN(Staged i, Staged::Create(ctx, "in", in, /*load=*/true));
    MOE_ASSIGN_OR_RETURN(Staged o, Staged::Create(ctx, "out", out, /*load=*/false));
    MOE_RETURN_IF_ERROR(host_->ReduceScatterSum(ctx, i.host(), o.host()));
    return Finish(ctx, {&o});
  }

  Status AllToAllV(ExecContext& ctx, const TensorView& send, std::span<const int64_t> send_counts,
                   const TensorView& recv, std::span<const int64_t> recv_counts) override {
    MOE_ASSIGN_OR_RETURN(Staged s, Staged::Create(ctx, "send", send, /*load=*/true));
    MOE_ASSIGN_OR_RETURN(Staged r, Staged::Create(ctx, "recv", recv, /*load=*/false));
    MOE_RETURN_IF_ERROR(host_->AllToAllV(ctx, s.host(), send_counts, r.host(), recv_counts));
    return Finish(ctx, {&r});
  }

  Status Barrier() override { return host_->Barrier(); }

  StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override {
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> sub, host_->Split(color, key));
    Communicator* raw = sub.get();
    return std::unique_ptr<Communicator>(new StagedComm(raw, std::move(sub)));
  }

 private:
  Communicator* host_;
  std::unique_ptr<Communicator> owned_;  // set for groups made by Split
};

}  // namespace

std::unique_ptr<Communicator> StagedCommunicator(Communicator* host_comm) {
  return std::make_unique<StagedComm>(host_comm, nullptr);
}

}  // namespace smoe
