// Communicator: the collectives a group of ranks needs (docs/design.md section 6).
//
// Every rank of a group calls every collective in the same order, also with zero-sized buffers.
// Buffers are contiguous tensors on the device the implementation expects (host tensors for the
// single-rank and MPI communicators; device tensors for NCCL, which arrives with the distributed
// work). Collectives are blocking for host buffers and stream-ordered on ctx for device buffers.
//
// Faults. A rank that dies or stalls must not hang the others: the MPI communicator's collectives
// run under the process's CollectiveWatchdog (collective_watchdog.h), which ends the process with
// an error naming the collective once one has waited CollectiveTimeoutSeconds(); mpirun then ends
// the other ranks.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: buffer = sum over ranks of buffer. f32, i32 or i64. Summation order is fixed for a
  // given group, so results are deterministic.
  [[nodiscard]] virtual Status AllReduceSum(ExecContext& ctx, const TensorView& buffer) = 0;
  // out [size * n] = concatenation over ranks of in [n] (rank order). Same dtype.
  [[nodiscard]] virtual Status AllGather(ExecContext& ctx, const TensorView& in,
                                         const TensorView& out) = 0;
  // out [n] = sum over ranks of segment rank() of in [size() * n]. f32, i32 or i64; fixed order.
  [[nodiscard]] virtual Status ReduceScatterSum(ExecContext& ctx, const TensorView& in,
                                                const TensorView& out) = 0;
  // Variable all-to-all (any dtype; moved as bytes). `send` holds size() segments in rank order,
  // segment j being the send_counts[j] elements for rank j; `recv` receives size() segments in
  // rank order, segment i being the recv_counts[i] elements rank i sent here. recv_counts[i] must
  // equal rank i's send_counts[rank()] (callers exchange counts first, e.g. with a fixed-size
  // AllToAllV of counts); the counts must sum to the numel of send and recv.
  [[nodiscard]] virtual Status AllToAllV(ExecContext& ctx, const TensorView& send,
                                         std::span<const int64_t> send_counts,
                                         const TensorView& recv,
                                         std::span<const int64_t> recv_counts) = 0;
  [[nodiscard]] virtual Status Barrier() = 0;
  // Collective over this group: the sub-group of the ranks that pass the same `color`, ranked by
  // (key, rank in this group). The result lives independently of this communicator.
  [[nodiscard]] virtual StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) = 0;
  // Whether another thread may call the collectives, one thread at a time (a communication
  // thread: runtime/comm/comm_lane.h). MPI: when MPI provides MPI_THREAD_SERIALIZED or more.
  virtual bool CallableFromAnotherThread() const { return true; }
};

// The collective timeout of the MPI communicator, process-wide: seconds a collective waits for
// the other ranks before the process exits with an error naming it; 0 = wait forever. Default 60,
// or the environment variable SMOE_COLLECTIVE_TIMEOUT_S when set (read once, at the first use).
double CollectiveTimeoutSeconds();
// Sets it (seconds >= 0; InvalidArgument naming "collective timeout" otherwise).
[[nodiscard]] Status SetCollectiveTimeoutSeconds(double seconds);

// InvalidArgument unless `counts` has `ranks` non-negative entries summing to `numel`; `name`
// names the argument (shared validation of AllToAllV's counts).
[[nodiscard]] Status CheckSegmentCounts(absl::string_view name, std::span<const int64_t> counts,
                                        int ranks, int64_t numel);

// The one-rank group of this process: every collective is the identity (or a copy). Accepts
// buffers on any device.
Communicator* SingleRankCommunicator();

#if MOE_WITH_MPI
// MPI_COMM_WORLD (initializing MPI on first use, finalizing at exit). Host buffers only.
[[nodiscard]] StatusOr<Communicator*> MpiWorldCommunicator();
#endif

}  // namespace smoe
