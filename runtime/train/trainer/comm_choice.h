// Which communicator a rank's device-buffer collectives use (parallel.comm; issue 19).
//
//   kHost:   CPU ranks (MPI), or a single rank (SingleRankCommunicator): no device collectives.
//   kNccl:   one GPU per rank: NCCL on the training stream; MPI bootstraps it and stays the
//            host-side group (stop flags, means, the controller's timings).
//   kStaged: several CUDA ranks that may share GPUs: MPI through host copies (correct, slow).
// parallel.comm "auto" (or "") takes NCCL when the build has it and every node has no more ranks
// than visible GPUs (`every_node_fits`, agreed over the ranks: a node-local fact that all ranks
// must decide alike), else staged. "nccl" insists (FailedPrecondition without NCCL in the build,
// InvalidArgument naming parallel.comm when ranks would share a GPU) and also applies to one CUDA
// rank; "staged" insists on the staged path for several ranks.
#pragma once

#include <string>

#include "absl/strings/string_view.h"
#include "runtime/core/launcher_env.h"
#include "runtime/core/status.h"

namespace smoe {

enum class CommKind { kHost, kNccl, kStaged };

struct CommChoice {
  CommKind kind = CommKind::kHost;
  std::string reason;  // one line for the log
};

struct RankLayout {
  int world = 1;                // ranks
  bool cuda = false;            // the ranks train on CUDA devices
  int local_ranks = 1;          // ranks on this node
  int local_gpus = 0;           // CUDA devices visible on this node
  bool every_node_fits = true;  // on every node, local_ranks <= local_gpus
};

[[nodiscard]] StatusOr<CommChoice> ChooseCommunicator(absl::string_view requested,
                                                      const RankLayout& layout, bool nccl_built);

// LocalRankFromEnvironment (runtime/core/launcher_env.h) gives a RankLayout's local ranks.

}  // namespace smoe
