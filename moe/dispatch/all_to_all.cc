#include "moe/dispatch/all_to_all.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

Status CheckRows(absl::string_view name, const TensorView& t) {
  if (t.rank() != 2) {
    return BadArgument(absl::StrCat(name, ".rank"), absl::StrCat(t.rank()), "2 ([rows, width])");
  }
  return CheckContiguous(name, t);
}

// Every rank of `group` sends `per_peer` counts to each peer (segment p of `mine` [size * per_peer]
// to peer p) and gets theirs back, on the host, ordered by peer. The exchange runs on `device`
// (the device the communicator takes); for a CUDA device the copy back synchronizes ctx's stream.
StatusOr<Tensor> ExchangeCounts(ExecContext& ctx, Communicator& group, const Tensor& mine,
                                int per_peer, Device device) {
  const std::vector<int64_t> elems(static_cast<size_t>(group.size()), int64_t{per_peer});
  if (device.is_cpu()) {
    MOE_ASSIGN_OR_RETURN(Tensor theirs, Tensor::Empty(mine.shape(), DType::kI64, Device::Cpu()));
    MOE_RETURN_IF_ERROR(group.AllToAllV(ctx, mine, elems, theirs, elems));
    return theirs;
  }
  MOE_ASSIGN_OR_RETURN(Tensor mine_on_device, CopyTo(ctx, mine, device));
  MOE_ASSIGN_OR_RETURN(Tensor theirs, Tensor::Empty(mine.shape(), DType::kI64, device));
  MOE_RETURN_IF_ERROR(group.AllToAllV(ctx, mine_on_device, elems, theirs, elems));
  return CopyTo(ctx, theirs, Device::Cpu());
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

Status RowExchanger::CheckArguments(const TensorView& send, std::span<const int64_t> send_rows,
                                    const TensorView& recv,
                                    std::span<const int64_t> recv_rows) const {
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
  return CheckSegmentCounts("recv_rows", recv_rows, w, recv.dim(0));
}

Status RowExchanger::Exchange(ExecContext& ctx, AllToAllAlgorithm algorithm, const TensorView& send,
                              std::span<const int64_t> send_rows, const TensorView& recv,
                              std::span<const int64_t> recv_rows) {
  MOE_RETURN_IF_ERROR(CheckArguments(send, send_rows, recv, recv_rows));
  const int w = comm_->size();
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

StatusOr<int64_t> RowExchanger::Start(ExecContext& ctx, AllToAllAlgorithm algorithm,
                                      const TensorView& send, std::span<const int64_t> send_rows,
                                      const TensorView& recv, std::span<const int64_t> recv_rows) {
  MOE_RETURN_IF_ERROR(CheckArguments(send, send_rows, recv, recv_rows));
  if (!comm_->CallableFromAnotherThread()) {
    MOE_RETURN_IF_ERROR(Exchange(ctx, algorithm, send, send_rows, recv, recv_rows));
    return int64_t{-1};
  }
  if (lane_ == nullptr) lane_ = std::make_unique<CommLane>();
  MOE_ASSIGN_OR_RETURN(
      const int64_t ticket,
      lane_->Submit(ctx, [this, algorithm, send, recv,
                          sends = std::vector<int64_t>(send_rows.begin(), send_rows.end()),
                          recvs = std::vector<int64_t>(recv_rows.begin(), recv_rows.end())](
                             ExecContext& lane_ctx) {
        return Exchange(lane_ctx, algorithm, send, sends, recv, recvs);
      }));
  if (overlap_) return ticket;
  MOE_RETURN_IF_ERROR(lane_->Wait(ctx, ticket));
  return int64_t{-1};
}

Status RowExchanger::Finish(ExecContext& ctx, int64_t exchange) {
  if (exchange < 0) return absl::OkStatus();  // ran in Start
  if (lane_ == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("RowExchanger::Finish: exchange ", exchange, " was never started"));
  }
  return lane_->Wait(ctx, exchange);
}

void RowExchanger::FinishAll(ExecContext& ctx) {
  if (lane_ != nullptr) lane_->Drain(ctx);
}

// 2dh, on W = M * n ranks (M nodes of n consecutive ranks; rank (a, l) = a * n + l).
//
// Why: a flat all-to-all sends W - n messages per rank across nodes, each about 1/W of its rows;
// with many ranks those messages are small and latency-bound on the slow inter-node links. 2dh
// first aggregates inside the node (fast links), so that across nodes every rank sends only M - 1
// messages, each n times larger. Both exchanges move the same rows; the result is the flat one,
// bit for bit (rows are only moved, never combined).
//
// Rank (a, l), with seg(s -> d) the rows rank s sends to rank d:
//   1. Regroup send from destination order [b][l'] into [l'][b]: everything bound for local
//      index l' (on any node b) becomes one contiguous block.
//   2. Counts: each rank tells local peer l' the M sizes seg((a, l) -> (b, l')), b = 0..M-1, with
//      a small AllToAllV on the intra-node group. The relay needs them to size what it receives
//      and to know where each forwarded segment starts.
//   3. Phase 1 (intra-node AllToAllV): rank (a, l') receives, source-major, [l][b] =
//      seg((a, l) -> (b, l')).
//   4. Regroup to [b][l]: the block for node b is now contiguous and ordered by source local
//      index.
//   5. Phase 2 (inter-node AllToAllV among the ranks of local index l', ranked by node): block b
//      goes to (b, l'). Rank (c, l') receives, node-major, [a][l] = seg((a, l) -> (c, l')): that
//      is source-rank order a * n + l, so phase 2 lands directly in recv and no final reorder is
//      needed. Its receive sizes are sums of recv_rows, known locally.
// Regrouping copies row ranges with Copy on views (stream-ordered for device buffers, memmove on
// the host). Step 2 reads the peers' counts on the host: for device buffers that is one stream
// synchronization per 2dh exchange (the sizes of phase 1 and 2 depend on them).
TwoDimSplits TwoDimSplitsOf(int rank, int node_size) {
  const int node = rank / node_size, local = rank % node_size;
  return TwoDimSplits{{node, local}, {local, node}};
}

Status RowExchanger::ExchangeTwoDim(ExecContext& ctx, const TensorView& send,
                                    std::span<const int64_t> send_rows, const TensorView& recv,
                                    std::span<const int64_t> recv_rows) {
  const int w = comm_->size();
  const int n = node_size_;
  const int m = w / n;
  const int node = comm_->rank() / n;
  const int local = comm_->rank() % n;
  if (intra_node_ == nullptr || inter_node_ == nullptr) {
    const TwoDimSplits splits = TwoDimSplitsOf(comm_->rank(), n);
    MOE_ASSIGN_OR_RETURN(intra_node_, comm_->Split(splits.intra_node.color, splits.intra_node.key));
    MOE_ASSIGN_OR_RETURN(inter_node_, comm_->Split(splits.inter_node.color, splits.inter_node.key));
  }
  if (intra_node_->size() != n || intra_node_->rank() != local || inter_node_->size() != m ||
      inter_node_->rank() != node) {
    return absl::InternalError(absl::StrCat("2dh sub-groups: intra-node ", intra_node_->rank(), "/",
                                            intra_node_->size(), ", inter-node ",
                                            inter_node_->rank(), "/", inter_node_->size(),
                                            "; expected ", local, "/", n, " and ", node, "/", m));
  }
  const int64_t width = send.dim(1);
  const Device device = send.device();
  auto copy_rows = [&](const TensorView& from, int64_t from_row, const TensorView& to,
                       int64_t to_row, int64_t rows) -> Status {
    if (rows == 0) return absl::OkStatus();
    return Copy(ctx, from.Rows(from_row, from_row + rows), to.Rows(to_row, to_row + rows));
  };

  // 1. send [b][l'] -> staged [l'][b].
  std::vector<int64_t> send_begin(w + 1, 0);
  for (int j = 0; j < w; ++j) send_begin[j + 1] = send_begin[j] + send_rows[j];
  MOE_ASSIGN_OR_RETURN(Tensor staged, Tensor::Empty(send.shape(), send.dtype(), device));
  std::vector<int64_t> intra_send(n, 0);
  int64_t at = 0;
  for (int lp = 0; lp < n; ++lp) {
    for (int b = 0; b < m; ++b) {
      const int j = b * n + lp;
      MOE_RETURN_IF_ERROR(copy_rows(send, send_begin[j], staged, at, send_rows[j]));
      at += send_rows[j];
      intra_send[lp] += send_rows[j] * width;
    }
  }

  // 2. counts[l * m + b] = seg((node, l) -> (b, local)).
  MOE_ASSIGN_OR_RETURN(Tensor my_counts,
                       Tensor::Empty({int64_t{n} * m}, DType::kI64, Device::Cpu()));
  for (int lp = 0; lp < n; ++lp) {
    for (int b = 0; b < m; ++b) my_counts.data<int64_t>()[lp * m + b] = send_rows[b * n + lp];
  }
  MOE_ASSIGN_OR_RETURN(Tensor counts, ExchangeCounts(ctx, *intra_node_, my_counts, m, device));
  const int64_t* c = counts.data<int64_t>();

  // 3. Phase 1: gathered [l][b].
  std::vector<int64_t> intra_recv(n, 0), inter_send(m, 0);
  int64_t gathered_rows = 0;
  for (int l = 0; l < n; ++l) {
    for (int b = 0; b < m; ++b) {
      if (c[l * m + b] < 0) {
        return absl::InternalError(
            absl::StrCat("2dh: negative count ", c[l * m + b], " from local rank ", l));
      }
      intra_recv[l] += c[l * m + b] * width;
      inter_send[b] += c[l * m + b] * width;
      gathered_rows += c[l * m + b];
    }
  }
  MOE_ASSIGN_OR_RETURN(Tensor gathered,
                       Tensor::Empty({gathered_rows, width}, send.dtype(), device));
  MOE_RETURN_IF_ERROR(intra_node_->AllToAllV(ctx, staged, intra_send, gathered, intra_recv));

  // 4. gathered [l][b] -> outgoing [b][l].
  std::vector<int64_t> gathered_begin(int64_t{n} * m + 1, 0);
  for (int i = 0; i < n * m; ++i) gathered_begin[i + 1] = gathered_begin[i] + c[i];
  MOE_ASSIGN_OR_RETURN(Tensor outgoing,
                       Tensor::Empty({gathered_rows, width}, send.dtype(), device));
  at = 0;
  for (int b = 0; b < m; ++b) {
    for (int l = 0; l < n; ++l) {
      MOE_RETURN_IF_ERROR(
          copy_rows(gathered, gathered_begin[l * m + b], outgoing, at, c[l * m + b]));
      at += c[l * m + b];
    }
  }

  // 5. Phase 2, straight into recv ([a][l] is source-rank order).
  std::vector<int64_t> inter_recv(m, 0);
  for (int a = 0; a < m; ++a) {
    for (int l = 0; l < n; ++l) inter_recv[a] += recv_rows[a * n + l] * width;
  }
  return inter_node_->AllToAllV(ctx, outgoing, inter_send, recv, inter_recv);
}

}  // namespace smoe
