#include "runtime/train/trainer/comm_choice.h"

#include "absl/strings/str_cat.h"

namespace smoe {

StatusOr<CommChoice> ChooseCommunicator(absl::string_view requested, const RankLayout& layout,
                                        bool nccl_built) {
  const std::string shape = absl::StrCat(layout.local_ranks, " rank(s) and ", layout.local_gpus,
                                         " visible GPU(s) on this node");
  if (!layout.cuda) return CommChoice{CommKind::kHost, "CPU ranks: MPI"};
  if (requested == "nccl") {
    if (!nccl_built) {
      return absl::FailedPreconditionError(
          "parallel.comm is \"nccl\" but this build has no NCCL (libnccl-dev); use \"staged\" or "
          "\"auto\"");
    }
    if (!layout.every_node_fits) {
      return BadArgument("parallel.comm", "\"nccl\"",
                         absl::StrCat("\"staged\" or \"auto\" when ranks share GPUs (", shape,
                                      "; NCCL needs one GPU per rank)"));
    }
    return CommChoice{CommKind::kNccl, absl::StrCat("NCCL (parallel.comm=nccl; ", shape, ")")};
  }
  if (layout.world == 1) return CommChoice{CommKind::kHost, "one rank: no collectives"};
  if (requested == "staged") {
    return CommChoice{CommKind::kStaged,
                      "MPI with device buffers staged through the host "
                      "(parallel.comm=staged)"};
  }
  if (!nccl_built) {
    return CommChoice{CommKind::kStaged,
                      "MPI with device buffers staged through the host: this build has no NCCL"};
  }
  if (!layout.every_node_fits) {
    return CommChoice{CommKind::kStaged,
                      absl::StrCat("MPI with device buffers staged through the host: ranks share "
                                   "GPUs on some node (here ",
                                   shape, ")")};
  }
  return CommChoice{CommKind::kNccl, absl::StrCat("NCCL: one GPU per rank (", shape, ")")};
}

}  // namespace smoe
