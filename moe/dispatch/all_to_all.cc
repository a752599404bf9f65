#include "moe/dispatch/all_to_all.h"

#include <vector>

#include "absl/strings/str_cat.h"

namespace smoe {
namespace {

Status CheckRows(absl::string_view name, const TensorView& t) {
  if (t.rank() != 2) {
    return BadArgument(absl::StrCat(name, ".rank"), absl::StrCat(t.rank()), "2 ([rows, width])");
  }
  return CheckContiguous(name, t);
}

}  // namespace

absl::string_view AllToAllAlgorithmName(AllToAllAlgorithm algorithm) {
  return algorithm == AllToAllAlgorithm::kFlat ? "flat" : "2dh";
}

StatusOr<AllToAllAlgorithm> ParseAllToAllAlgorithm(absl::string_view name) {
  if (name == "flat") return AllToAllAlgorithm::kFlat;
  if (name == "2dh") return AllToAllAlgorithm::kTwoDimHierarchical;
  return BadArgument("all_to_all algorithm", name, "flat or 2dh");
}

StatusOr<std::unique_ptr<RowExchanger>> RowExchanger::Create(Communicator* comm, int node_size) {
  if (comm == nullptr) return BadArgument("comm", "null", "a communicator");
  if (node_size < 1 || comm->size() % node_size != 0) {
    return BadArgument("node_size", absl::StrCat(node_size),
                       absl::StrCat("a divisor of the group size ", comm->size()));
  }
  return std::unique_ptr<RowExchanger>(new RowExchanger(comm, node_size));
}

RowExchanger::~RowExchanger() = default;

Status RowExchanger::Exchange(ExecContext& ctx, AllToAllAlgorithm algorithm,
                              const TensorView& send, std::span<const int64_t> send_rows,
                              const TensorView& recv, std::span<const int64_t> recv_rows) {
  MOE_RETURN_IF_ERROR(CheckRows("send", send));
  MOE_RETURN_IF_ERROR(CheckRows("recv", recv));
  if (recv.dtype() != send.dtype()) {
    return BadArgument("recv.dtype", DTypeName(recv.dtype()), DTypeName(send.dtype()));
  }
  if (recv.dim(1) != send.dim(1)) {
    return BadArgument("recv.dim(1)", absl::StrCat(recv.dim(1)),
                       absl::StrCat(send.dim(1), " (send's row width)"));
  }
  const int w = comm_->size();
  MOE_RETURN_IF_ERROR(CheckSegmentCounts("send_rows", send_rows, w, send.dim(0)));
  MOE_RETURN_IF_ERROR(CheckSegmentCounts("recv_rows", recv_rows, w, recv.dim(0)));
  if (algorithm == AllToAllAlgorithm::kTwoDimHierarchical && node_size_ > 1 && node_size_ < w) {
    return ExchangeTwoDim(ctx, send, send_rows, recv, recv_rows);
  }
  const int64_t width = send.dim(1);
  std::vector<int64_t> send_elems(w), recv_elems(w);
  for (int r = 0; r < w; ++r) {
    send_elems[r] = send_rows[r] * width;
    recv_elems[r] = recv_rows[r] * width;
  }
  return comm_->AllToAllV(ctx, send, send_elems, recv, recv_elems);
}

Status RowExchanger::ExchangeTwoDim(ExecContext&, const TensorView&, std::span<const int64_t>,
                                    const TensorView&, std::span<const int64_t>) {
  return absl::UnimplementedError("2dh all-to-all");
}

}  // namespace smoe
