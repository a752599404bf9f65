// A rank of a pretend group, for single-process tests of code that takes a Communicator: rank()
// and size() are as constructed and every collective returns Unimplemented naming itself, unless
// a test's subclass overrides it (e.g. an AllReduceSum that adds "the other ranks'" values).
#pragma once

#include <memory>
#include <span>

#include "absl/strings/str_cat.h"
#include "runtime/comm/communicator.h"

namespace smoe::testing {

class UnimplementedCommunicator : public Communicator {
 public:
  UnimplementedCommunicator(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Status AllReduceSum(ExecContext&, const TensorView&) override { return Missing("AllReduceSum"); }
  Status AllGather(ExecContext&, const TensorView&, const TensorView&) override {
    return Missing("AllGather");
  }
  Status ReduceScatterSum(ExecContext&, const TensorView&, const TensorView&) override {
    return Missing("ReduceScatterSum");
  }
  Status AllToAllV(ExecContext&, const TensorView&, std::span<const int64_t>, const TensorView&,
                   std::span<const int64_t>) override {
    return Missing("AllToAllV");
  }
  Status Barrier() override { return Missing("Barrier"); }
  StatusOr<std::unique_ptr<Communicator>> Split(int, int) override { return Missing("Split"); }

 private:
  static Status Missing(const char* collective) {
    return absl::UnimplementedError(absl::StrCat(collective, " is not part of this test's group"));
  }
  int rank_, size_;
};

}  // namespace smoe::testing
