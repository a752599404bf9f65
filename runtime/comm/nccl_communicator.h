// NCCL communicator for GPU ranks (docs/design.md section 6). Built only with CUDA and NCCL
// (CMake option MOE_WITH_NCCL, on when nccl.h and libnccl are found; link smoe_nccl, which defines
// MOE_WITH_NCCL=1 for its users).
//
// One rank per process and GPU. Buffers are contiguous tensors on the communicator's CUDA device
// or on the host; collectives are enqueued on ctx.stream() (ctx on that device). With device
// buffers only they return without waiting: the results are ready in stream order, like any op's.
// Host buffers (the global LBL's expert counts, the trainer's flags and loss sums) are staged
// through device memory (runtime/comm/staging.h, DeviceBufferStager): copied in on ctx's stream
// (through pinned staging memory, no host sync), the collective on the device copies, and copied
// back, which synchronizes ctx's stream: a call with a host output is blocking, like a host
// communicator's. A call with host buffers only may pass the CPU context: it then runs on the
// communicator's own stream on its device. The collectives:
//   AllReduceSum (f32, i32, i64): ncclAllReduce. Deterministic for a fixed group and NCCL
//     configuration (the same algorithm and channel count give the same summation order).
//   AllGather (any dtype, as bytes): ncclAllGather.
//   ReduceScatterSum (f32, i32, i64): ncclReduceScatter.
//   AllToAllV (any dtype, as bytes): one NCCL group of ncclSend / ncclRecv per peer, skipping
//     zero counts; this rank's own segment is a device-to-device copy on the stream.
//   Barrier: an all-reduce of one element on the communicator's own stream, then a host wait on
//     that stream that the watchdog can end (the only collective that blocks the host). It orders
//     ranks, not other streams.
//   Split: ncclCommSplit (a collective over this group; color >= 0).
// Zero-element collectives return at once: their sizes agree on every rank, so every rank skips.
// Every call switches to the communicator's device for its duration and restores the caller's.
#pragma once

#if MOE_WITH_NCCL

#include <memory>

#include "runtime/comm/communicator.h"
#include "runtime/core/status.h"

namespace smoe {

struct NcclOptions {
  // Seconds a collective (or the communicator's creation) may take before this rank gives up on a
  // dead or stalled peer: the communicator is aborted (ncclCommAbort) and this and every later call
  // fail with DeadlineExceeded. An asynchronous NCCL error (a peer's connection lost) aborts at
  // once, with NCCL's message. <= 0: no timeout (errors still abort).
  double timeout_s = 60.0;
};

// A communicator over the ranks of `bootstrap` (same ranks, same order) on CUDA device
// `cuda_device` of this process. Collective over `bootstrap`: its rank 0 creates the NCCL unique
// id and shares it with an AllGather of its bytes on host buffers, then every rank joins with
// ncclCommInitRank (which blocks until all ranks have joined). `bootstrap` is only used during
// the call (MPI for several processes, SingleRankCommunicator() for one).
// InvalidArgument for a device index that is not visible; Internal for NCCL errors.
// The communicator is non-blocking (ncclConfig_t.blocking = 0): every call waits for NCCL's
// background work with a deadline, and a StreamWatchdog (stream_watchdog.h) times each
// enqueued collective through a CUDA event behind it, polling ncclCommGetAsyncError; sub-groups
// from Split inherit the options.
[[nodiscard]] StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    Communicator& bootstrap, int cuda_device, const NcclOptions& options = {});

}  // namespace smoe

#endif  // MOE_WITH_NCCL
