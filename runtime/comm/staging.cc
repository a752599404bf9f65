#include "runtime/comm/staging.h"

#include <initializer_list>
#include <utility>
#include <vector>

#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

// One buffer argument of a collective.
struct Arg {
  absl::string_view name;
  TensorView buffer;
  bool load;   // an input: its values reach the collective
  bool store;  // an output: the collective's values reach the caller
};

// The buffers of one call as the inner communicator sees them, and the context it runs on.
class Call {
 public:
  static StatusOr<Call> Prepare(ExecContext& ctx, BufferStager& stager,
                                std::initializer_list<Arg> args) {
    Call call;
    call.stager_ = &stager;
    bool all_staged = true;
    for (const Arg& arg : args) {
      MOE_ASSIGN_OR_RETURN(const bool staged, stager.NeedsStaging(ctx, arg.name, arg.buffer));
      call.args_.push_back(Staged{arg, staged, arg.buffer, Tensor()});
      all_staged = all_staged && staged;
    }
    MOE_ASSIGN_OR_RETURN(call.ctx_, stager.Context(ctx, all_staged));
    for (Staged& s : call.args_) {
      if (!s.staged) continue;
      MOE_ASSIGN_OR_RETURN(s.scratch, stager.Scratch(*call.ctx_, s.arg.buffer));
      s.inner = s.scratch.view();
      if (s.arg.load) MOE_RETURN_IF_ERROR(stager.Move(*call.ctx_, s.arg.buffer, s.inner));
    }
    return call;
  }

  ExecContext& ctx() const { return *ctx_; }
  const TensorView& view(int i) const { return args_[i].inner; }

  // Moves the results back, then lets the stager finish.
  Status Finish() {
    bool stored = false;
    for (const Staged& s : args_) {
      if (!s.staged || !s.arg.store) continue;
      MOE_RETURN_IF_ERROR(stager_->Move(*ctx_, s.inner, s.arg.buffer));
      stored = true;
    }
    return stager_->Finish(*ctx_, stored);
  }

 private:
  struct Staged {
    Arg arg;
    bool staged;
    TensorView inner;  // what the inner communicator gets
    Tensor scratch;
  };

  BufferStager* stager_ = nullptr;
  ExecContext* ctx_ = nullptr;
  std::vector<Staged> args_;
};

class StagingComm final : public Communicator {
 public:
  StagingComm(Communicator* inner, std::unique_ptr<Communicator> owned,
              std::shared_ptr<BufferStager> stager)
      : inner_(inner), owned_(std::move(owned)), stager_(std::move(stager)) {}

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }

  Status AllReduceSum(ExecContext& ctx, const TensorView& buffer) override {
    MOE_ASSIGN_OR_RETURN(Call call, Call::Prepare(ctx, *stager_, {{"buffer", buffer, true, true}}));
    MOE_RETURN_IF_ERROR(inner_->AllReduceSum(call.ctx(), call.view(0)));
    return call.Finish();
  }

  Status AllGather(ExecContext& ctx, const TensorView& in, const TensorView& out) override {
    MOE_ASSIGN_OR_RETURN(
        Call call,
        Call::Prepare(ctx, *stager_, {{"in", in, true, false}, {"out", out, false, true}}));
    MOE_RETURN_IF_ERROR(inner_->AllGather(call.ctx(), call.view(0), call.view(1)));
    return call.Finish();
  }

  Status ReduceScatterSum(ExecContext& ctx, const TensorView& in, const TensorView& out) override {
    MOE_ASSIGN_OR_RETURN(
        Call call,
        Call::Prepare(ctx, *stager_, {{"in", in, true, false}, {"out", out, false, true}}));
    MOE_RETURN_IF_ERROR(inner_->ReduceScatterSum(call.ctx(), call.view(0), call.view(1)));
    return call.Finish();
  }

  Status AllToAllV(ExecContext& ctx, const TensorView& send, std::span<const int64_t> send_counts,
                   const TensorView& recv, std::span<const int64_t> recv_counts) override {
    MOE_ASSIGN_OR_RETURN(
        Call call,
        Call::Prepare(ctx, *stager_, {{"send", send, true, false}, {"recv", recv, false, true}}));
    MOE_RETURN_IF_ERROR(
        inner_->AllToAllV(call.ctx(), call.view(0), send_counts, call.view(1), recv_counts));
    return call.Finish();
  }

  Status Barrier() override { return inner_->Barrier(); }
  bool CallableFromAnotherThread() const override { return inner_->CallableFromAnotherThread(); }

  StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override {
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> sub, inner_->Split(color, key));
    Communicator* raw = sub.get();
    return std::unique_ptr<Communicator>(new StagingComm(raw, std::move(sub), stager_));
  }

 private:
  Communicator* inner_;
  std::unique_ptr<Communicator> owned_;  // set for groups made by Split, or when handed over
  std::shared_ptr<BufferStager> stager_;
};

}  // namespace

StatusOr<bool> DeviceBufferStager::NeedsStaging(const ExecContext&, absl::string_view name,
                                                const TensorView& buffer) {
  if (!buffer.device().is_cpu()) return false;
  MOE_RETURN_IF_ERROR(CheckContiguous(name, buffer));
  return true;
}

StatusOr<ExecContext*> DeviceBufferStager::Context(ExecContext& ctx, bool all_staged) {
  if (ctx.device() == device_ || !all_staged) return &ctx;
  return OwnContext();
}

StatusOr<ExecContext*> DeviceBufferStager::OwnContext() {
  if (own_ == nullptr) {
    MOE_ASSIGN_OR_RETURN(own_, ExecContext::Create(device_));
  }
  return own_.get();
}

StatusOr<Tensor> DeviceBufferStager::Scratch(ExecContext& ctx, const TensorView& like) {
  return Tensor::Empty(like.shape(), like.dtype(), ctx.device(), ctx.allocator());
}

Status DeviceBufferStager::Move(ExecContext& ctx, const TensorView& src, const TensorView& dst) {
  return Copy(ctx, src, dst);
}

Status DeviceBufferStager::Finish(ExecContext&, bool) {
  // Moves to the host synchronized ctx's stream; device scratch is freed in stream order.
  return absl::OkStatus();
}

std::unique_ptr<Communicator> StagingCommunicator(Communicator* inner,
                                                  std::unique_ptr<Communicator> owned,
                                                  std::shared_ptr<BufferStager> stager) {
  return std::make_unique<StagingComm>(inner, std::move(owned), std::move(stager));
}

}  // namespace smoe
