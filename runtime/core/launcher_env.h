// What the job launcher (mpirun, srun) tells a process about its node, from the environment.
#pragma once

namespace smoe {

// This process's rank and the rank count on its node, from the launcher's environment (Open MPI's
// OMPI_COMM_WORLD_LOCAL_RANK / _LOCAL_SIZE, else MPI_LOCALRANKID / MPI_LOCALNRANKS, else
// SLURM_LOCALID / SLURM_NTASKS_PER_NODE); without any: the world rank and size (one node).
struct LocalRank {
  int rank = 0;
  int size = 1;
};
LocalRank LocalRankFromEnvironment(int world_rank, int world_size);

}  // namespace smoe
