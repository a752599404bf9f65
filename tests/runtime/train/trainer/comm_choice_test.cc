// parallel.comm: which communicator CUDA ranks use, and the local-rank environment it reads.
#include "runtime/train/trainer/comm_choice.h"

#include <cstdlib>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::smoe::testing::StatusIs;
using ::testing::HasSubstr;

RankLayout Gpus(int world, int local_ranks, int local_gpus, bool every_node_fits) {
  return RankLayout{world, true, local_ranks, local_gpus, every_node_fits};
}

TEST(CommChoiceTest, CpuRanksAlwaysUseTheHostCommunicator) {
  for (const char* requested : {"", "auto", "nccl", "staged"}) {
    MOE_ASSERT_OK_AND_ASSIGN(
        const CommChoice choice,
        ChooseCommunicator(requested, RankLayout{4, false, 4, 0, false}, true));
    EXPECT_EQ(choice.kind, CommKind::kHost) << requested;
  }
}

TEST(CommChoiceTest, AutoTakesNcclWithAGpuPerRank) {
  MOE_ASSERT_OK_AND_ASSIGN(const CommChoice eight,
                           ChooseCommunicator("auto", Gpus(16, 8, 8, true), true));
  EXPECT_EQ(eight.kind, CommKind::kNccl);
  EXPECT_THAT(eight.reason, HasSubstr("8 rank(s) and 8 visible GPU(s)"));
  MOE_ASSERT_OK_AND_ASSIGN(const CommChoice empty,
                           ChooseCommunicator("", Gpus(2, 2, 4, true), true));
  EXPECT_EQ(empty.kind, CommKind::kNccl);
}

TEST(CommChoiceTest, AutoStagesWhenRanksShareGpusOrNcclIsMissing) {
  MOE_ASSERT_OK_AND_ASSIGN(const CommChoice shared,
                           ChooseCommunicator("auto", Gpus(4, 4, 1, false), true));
  EXPECT_EQ(shared.kind, CommKind::kStaged);
  EXPECT_THAT(shared.reason, HasSubstr("share GPUs"));
  // Another node lacks GPUs: this node fits, but every rank must choose alike.
  MOE_ASSERT_OK_AND_ASSIGN(const CommChoice other,
                           ChooseCommunicator("auto", Gpus(16, 8, 8, false), true));
  EXPECT_EQ(other.kind, CommKind::kStaged);
  MOE_ASSERT_OK_AND_ASSIGN(const CommChoice unbuilt,
                           ChooseCommunicator("auto", Gpus(2, 2, 2, true), false));
  EXPECT_EQ(unbuilt.kind, CommKind::kStaged);
  EXPECT_THAT(unbuilt.reason, HasSubstr("no NCCL"));
}

TEST(CommChoiceTest, OneRankNeedsNoCollectivesUnlessNcclIsAskedFor) {
  MOE_ASSERT_OK_AND_ASSIGN(const CommChoice automatic,
                           ChooseCommunicator("auto", Gpus(1, 1, 1, true), true));
  EXPECT_EQ(automatic.kind, CommKind::kHost);
  MOE_ASSERT_OK_AND_ASSIGN(const CommChoice staged,
                           ChooseCommunicator("staged", Gpus(1, 1, 1, true), true));
  EXPECT_EQ(staged.kind, CommKind::kHost);
  MOE_ASSERT_OK_AND_ASSIGN(const CommChoice nccl,
                           ChooseCommunicator("nccl", Gpus(1, 1, 1, true), true));
  EXPECT_EQ(nccl.kind, CommKind::kNccl);
}

TEST(CommChoiceTest, ForcedChoicesAreHonouredOrRefusedWithTheField) {
  MOE_ASSERT_OK_AND_ASSIGN(const CommChoice staged,
                           ChooseCommunicator("staged", Gpus(8, 8, 8, true), true));
  EXPECT_EQ(staged.kind, CommKind::kStaged);
  EXPECT_THAT(
      ChooseCommunicator("nccl", Gpus(4, 4, 2, false), true),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("parallel.comm: got \"nccl\"")));
  EXPECT_THAT(ChooseCommunicator("nccl", Gpus(2, 2, 2, true), false),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("no NCCL")));
}

TEST(CommChoiceTest, LocalRankComesFromTheLauncher) {
  for (const char* var :
       {"OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALRANKID",
        "MPI_LOCALNRANKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"}) {
    unsetenv(var);
  }
  LocalRank fallback = LocalRankFromEnvironment(5, 16);
  EXPECT_EQ(fallback.rank, 5);
  EXPECT_EQ(fallback.size, 16);
  setenv("SLURM_LOCALID", "1", 1);
  setenv("SLURM_NTASKS_PER_NODE", "4", 1);
  EXPECT_EQ(LocalRankFromEnvironment(5, 16).rank, 1);
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3", 1);
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "8", 1);
  const LocalRank ompi = LocalRankFromEnvironment(11, 16);
  EXPECT_EQ(ompi.rank, 3);
  EXPECT_EQ(ompi.size, 8);
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
                          "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"}) {
    unsetenv(var);
  }
}

}  // namespace
}  // namespace smoe
