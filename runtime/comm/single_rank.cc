#include "absl/strings/str_cat.h"
#include "runtime/comm/communicator.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

class SingleRank final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  Status AllReduceSum(ExecContext&, const TensorView& buffer) override {
    return CheckContiguous("buffer", buffer);
  }
  Status AllGather(ExecContext& ctx, const TensorView& in, const TensorView& out) override {
    return Copy(ctx, in, out);
  }
  Status Barrier() override { return absl::OkStatus(); }
};

}  // namespace

Communicator* SingleRankCommunicator() {
  static SingleRank* comm = new SingleRank();
  return comm;
}

}  // namespace smoe
