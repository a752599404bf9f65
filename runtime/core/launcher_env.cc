#include "runtime/core/launcher_env.h"

#include <cstdlib>

namespace smoe {

LocalRank LocalRankFromEnvironment(int world_rank, int world_size) {
  const char* pairs[][2] = {{"OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"},
                            {"MPI_LOCALRANKID", "MPI_LOCALNRANKS"},
                            {"SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"}};
  for (const auto& [rank_var, size_var] : pairs) {
    const char* rank = std::getenv(rank_var);
    const char* size = std::getenv(size_var);
    if (rank != nullptr && size != nullptr && std::atoi(size) > 0) {
      return LocalRank{std::atoi(rank), std::atoi(size)};
    }
  }
  return LocalRank{world_rank, world_size};
}

}  // namespace smoe
