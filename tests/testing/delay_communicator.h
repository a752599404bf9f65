// A communicator that makes its all-to-alls slow, for tests of overlap: a slow link in front of a
// real group. AllToAllV sleeps, before it runs the inner collective, for the time the bytes this
// rank sends to the other ranks take at `ns_per_byte` (a per-message delay in proportion to the
// message: what a link of 1 / ns_per_byte GB/s adds). The sleep happens on the calling thread,
// so it costs no CPU: what a communication thread overlaps with compute. Every other collective
// passes straight through; Split wraps the sub-group with the same delay. Counts the time slept.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <thread>

#include "runtime/comm/communicator.h"

namespace smoe::testing {

class DelayCommunicator final : public Communicator {
 public:
  // `inner` outlives this (unless owned).
  DelayCommunicator(Communicator* inner, double ns_per_byte,
                    std::unique_ptr<Communicator> owned = nullptr)
      : inner_(inner), owned_(std::move(owned)), ns_per_byte_(ns_per_byte) {}

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  Status AllReduceSum(ExecContext& ctx, const TensorView& buffer) override {
    return inner_->AllReduceSum(ctx, buffer);
  }
  Status AllGather(ExecContext& ctx, const TensorView& in, const TensorView& out) override {
    return inner_->AllGather(ctx, in, out);
  }
  Status ReduceScatterSum(ExecContext& ctx, const TensorView& in, const TensorView& out) override {
    return inner_->ReduceScatterSum(ctx, in, out);
  }
  Status AllToAllV(ExecContext& ctx, const TensorView& send, std::span<const int64_t> send_counts,
                   const TensorView& recv, std::span<const int64_t> recv_counts) override {
    int64_t elements = 0;
    for (size_t j = 0; j < send_counts.size(); ++j) {
      if (static_cast<int>(j) != rank()) elements += send_counts[j];
    }
    const double ns = ns_per_byte_.load() * elements * DTypeSize(send.dtype());
    if (ns > 0) {
      std::this_thread::sleep_for(std::chrono::nanoseconds(static_cast<int64_t>(ns)));
      slept_ns_ += static_cast<int64_t>(ns);
    }
    return inner_->AllToAllV(ctx, send, send_counts, recv, recv_counts);
  }
  Status Barrier() override { return inner_->Barrier(); }
  StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override {
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> sub, inner_->Split(color, key));
    Communicator* raw = sub.get();
    return std::unique_ptr<Communicator>(
        new DelayCommunicator(raw, ns_per_byte_.load(), std::move(sub)));
  }
  bool CallableFromAnotherThread() const override { return inner_->CallableFromAnotherThread(); }

  void set_ns_per_byte(double ns) { ns_per_byte_ = ns; }
  // Milliseconds slept since the last reset (this object only, not its Split sub-groups).
  double slept_ms() const { return slept_ns_.load() * 1e-6; }
  void reset_slept() { slept_ns_ = 0; }

 private:
  Communicator* inner_;
  std::unique_ptr<Communicator> owned_;
  std::atomic<double> ns_per_byte_;
  std::atomic<int64_t> slept_ns_{0};
};

}  // namespace smoe::testing
