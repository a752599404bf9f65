// StagedCommunicator: a host communicator (MPI, SingleRank) made to accept device buffers by
// staging them through host memory.
//
// Each collective takes buffers on the host or on ctx's device (each argument independently).
// Host buffers go straight to the host communicator. A device buffer is copied to host scratch
// (Copy on ctx, which synchronizes ctx's stream), the host collective runs on the scratch, and
// the result is copied back to the device buffer on ctx's stream; the call then synchronizes
// ctx's stream so the scratch can be released. So every call is blocking, costs one host round
// trip per device buffer, and holds its host scratch only for the call.
//
// Meant for testing the GPU code paths of multi-rank training where NCCL cannot serve: ranks that
// share one GPU (NCCL needs a distinct GPU per rank) or builds without NCCL. Not for speed.
//
// Validation of dtypes, sizes and counts is the host communicator's (it sees same-shaped
// scratch); this wrapper rejects only a device buffer that is not on ctx's device.
#pragma once

#include <memory>

#include "runtime/comm/communicator.h"

namespace smoe {

// Wraps `host_comm` (not owned; must outlive the result). Same rank and size as host_comm.
// Split splits host_comm and wraps the sub-group, which the result owns.
std::unique_ptr<Communicator> StagedCommunicator(Communicator* host_comm);

}  // namespace smoe
