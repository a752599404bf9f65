// Communicator: the collectives a group of ranks needs (DESIGN.md section 6).
//
// Every rank of a group calls every collective in the same order, also with zero-sized buffers.
// Buffers are contiguous tensors on the device the implementation expects (host tensors for the
// single-rank and MPI communicators; device tensors for NCCL, which arrives with the distributed
// work). Collectives are blocking for host buffers and stream-ordered on ctx for device buffers.
#pragma once

#include <memory>

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
  [[nodiscard]] virtual Status Barrier() = 0;
};

// The one-rank group of this process: every collective is the identity (or a copy). Accepts
// buffers on any device.
Communicator* SingleRankCommunicator();

#if MOE_WITH_MPI
// MPI_COMM_WORLD (initializing MPI on first use, finalizing at exit). Host buffers only.
[[nodiscard]] StatusOr<Communicator*> MpiWorldCommunicator();
#endif

}  // namespace smoe
