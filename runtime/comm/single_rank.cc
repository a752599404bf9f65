#include <numeric>

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
  Status ReduceScatterSum(ExecContext& ctx, const TensorView& in, const TensorView& out) override {
    return Copy(ctx, in, out);
  }
  Status AllToAllV(ExecContext& ctx, const TensorView& send, std::span<const int64_t> send_counts,
                   const TensorView& recv, std::span<const int64_t> recv_counts) override {
    MOE_RETURN_IF_ERROR(CheckSegmentCounts("send_counts", send_counts, 1, send.numel()));
    MOE_RETURN_IF_ERROR(CheckSegmentCounts("recv_counts", recv_counts, 1, recv.numel()));
    if (send.numel() == 0) return absl::OkStatus();
    return Copy(ctx, send, recv);
  }
  Status Barrier() override { return absl::OkStatus(); }
  StatusOr<std::unique_ptr<Communicator>> Split(int, int) override {
    return std::unique_ptr<Communicator>(new SingleRank());
  }
};

}  // namespace

Status CheckSegmentCounts(absl::string_view name, std::span<const int64_t> counts, int ranks,
                          int64_t numel) {
  if (static_cast<int64_t>(counts.size()) != ranks) {
    return BadArgument(absl::StrCat(name, ".size"), absl::StrCat(counts.size()),
                       absl::StrCat(ranks, " (one count per rank)"));
  }
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] < 0) {
      return BadArgument(absl::StrCat(name, "[", i, "]"), absl::StrCat(counts[i]), ">= 0");
    }
  }
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  if (total != numel) {
    return BadArgument(absl::StrCat("sum of ", name), absl::StrCat(total),
                       absl::StrCat(numel, " (the buffer's numel)"));
  }
  return absl::OkStatus();
}

Communicator* SingleRankCommunicator() {
  static SingleRank* comm = new SingleRank();
  return comm;
}

}  // namespace smoe
