// Row exchange between the ranks of an MoE group (docs/design.md section 6, dispatch across ranks).
//
// Every rank sends W segments of rows (segment j to rank j) and receives W segments (segment i
// from rank i), in rank order. Two algorithms give bit-identical results:
//   flat: one all-to-all over the whole group;
//   2dh (two-dimensional hierarchical, Tutel): ranks form nodes of `node_size` consecutive ranks;
//     first an exchange inside each node gathers, on local rank l, every row of the node bound for
//     local rank l of any node; then ranks with the same local index exchange across nodes. Each
//     rank sends W / node_size larger messages across nodes instead of W small ones.
// node_size is a config value, so 2dh is testable on one machine (e.g. 4 ranks as 2 nodes of 2).
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "runtime/comm/comm_lane.h"
#include "runtime/comm/communicator.h"
#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

enum class AllToAllAlgorithm { kFlat, kTwoDimHierarchical };

// "flat" / "2dh".
absl::string_view AllToAllAlgorithmName(AllToAllAlgorithm algorithm);
// Inverse of AllToAllAlgorithmName; InvalidArgument naming the accepted names otherwise.
[[nodiscard]] StatusOr<AllToAllAlgorithm> ParseAllToAllAlgorithm(absl::string_view name);

// Exchanges row segments over one communicator. Holds the sub-groups 2dh needs (created on its
// first 2dh exchange: a collective, so every rank must pick the same algorithm, which the layout
// contract guarantees). Not thread-safe: one thread calls it (its communication lane is internal).
class RowExchanger {
 public:
  // `comm` outlives the exchanger. node_size divides comm.size() (1 or W: 2dh equals flat).
  [[nodiscard]] static StatusOr<std::unique_ptr<RowExchanger>> Create(Communicator* comm,
                                                                      int node_size = 1);
  ~RowExchanger();

  // send [S, N] and recv [R, N]: contiguous, same dtype and row width N, on the device the
  // communicator takes. send_rows[j] rows of send go to rank j (segments in rank order, summing to
  // S); recv_rows[i] rows arrive from rank i (summing to R) and must equal rank i's
  // send_rows[rank()]. InvalidArgument naming the argument otherwise (a mismatch between ranks
  // that the local sums cannot show is the caller's contract).
  [[nodiscard]] Status Exchange(ExecContext& ctx, AllToAllAlgorithm algorithm,
                                const TensorView& send, std::span<const int64_t> send_rows,
                                const TensorView& recv, std::span<const int64_t> recv_rows);

  // Pipelined exchanges (the chunks of a d > 1 mode). Start checks the arguments as Exchange does,
  // then runs the exchange on the exchanger's communication lane (runtime/comm/comm_lane.h: a
  // thread, and on CUDA its own stream ordered after the work enqueued on ctx so far) while the
  // caller goes on, and returns its id for Finish. Until Finish returns, send is not written and
  // recv is neither read nor written by the caller. Exchanges run in the order they were started,
  // one at a time; between Start and the last Finish the caller makes no other call on this
  // exchanger's communicator (or its sub-groups). Finish waits for the exchange and returns its
  // status (on CUDA ctx's stream then waits for it). FinishAll waits for every exchange started
  // and not finished, dropping their results (before their buffers are freed on an error path).
  // With set_overlap(false) Start waits for the exchange it started (the same lane, the same
  // waiting, no overlap: what overlap saves is the difference); with a communicator that only its
  // own thread may call it runs the exchange itself. The results are the same, bit for bit.
  [[nodiscard]] StatusOr<int64_t> Start(ExecContext& ctx, AllToAllAlgorithm algorithm,
                                        const TensorView& send, std::span<const int64_t> send_rows,
                                        const TensorView& recv, std::span<const int64_t> recv_rows);
  [[nodiscard]] Status Finish(ExecContext& ctx, int64_t exchange);
  void FinishAll(ExecContext& ctx);
  // Whether Start returns before the exchange is done (default true).
  void set_overlap(bool overlap) { overlap_ = overlap; }
  bool overlap() const { return overlap_ && comm_->CallableFromAnotherThread(); }

  Communicator& comm() const { return *comm_; }
  int node_size() const { return node_size_; }

 private:
  RowExchanger(Communicator* comm, int node_size) : comm_(comm), node_size_(node_size) {}
  // The 2dh exchange (algorithm in all_to_all.cc). With device buffers it reads the intra-node
  // peers' counts on the host: one synchronization of ctx's stream per call.
  [[nodiscard]] Status ExchangeTwoDim(ExecContext& ctx, const TensorView& send,
                                      std::span<const int64_t> send_rows, const TensorView& recv,
                                      std::span<const int64_t> recv_rows);
  // Exchange's argument checks.
  [[nodiscard]] Status CheckArguments(const TensorView& send, std::span<const int64_t> send_rows,
                                      const TensorView& recv,
                                      std::span<const int64_t> recv_rows) const;

  Communicator* comm_;
  int node_size_;
  std::unique_ptr<Communicator> intra_node_;  // ranks of this node, by local index
  std::unique_ptr<Communicator> inter_node_;  // ranks with this local index, by node
  bool overlap_ = true;
  std::unique_ptr<CommLane> lane_;  // created on the first overlapped Start
};

// The Communicator::Split arguments of the 2dh sub-groups of `rank` in a group of `world` ranks,
// `node_size` per node (rank = node * node_size + local): the intra-node group (color node, key
// local) and the inter-node group (color local, key node). The same for every transport: MPI's
// Split, ncclCommSplit.
struct SplitArgs {
  int color = 0;
  int key = 0;
};
struct TwoDimSplits {
  SplitArgs intra_node, inter_node;
};
TwoDimSplits TwoDimSplitsOf(int rank, int node_size);

}  // namespace smoe
