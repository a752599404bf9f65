// Runs under mpirun -np 4 (CTest label mpi): every rank reports DIFFERENT local step times (each
// rank's local favourite is another mode), yet all ranks choose identical modes at every step,
// because the controller decides from all-reduced times. Also: Load broadcasts rank 0's table.
#include <unistd.h>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "moe/adapt/controller.h"
#include "runtime/tensor/tensor.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

std::vector<ParallelMode> Candidates() {
  std::vector<ParallelMode> out;
  for (int r : {0, 1}) {
    for (int d : {1, 2}) {
      for (AllToAllAlgorithm a :
           {AllToAllAlgorithm::kFlat, AllToAllAlgorithm::kTwoDimHierarchical}) {
        out.push_back({.r = r, .d = d, .algorithm = a});
      }
    }
  }
  return out;
}

int IndexOf(const std::vector<ParallelMode>& modes, const ParallelMode& mode) {
  for (size_t i = 0; i < modes.size(); ++i) {
    if (modes[i] == mode) return static_cast<int>(i);
  }
  return -1;
}

// Every rank's value of `index`, gathered.
std::vector<int64_t> GatherAll(Communicator* comm, int64_t value) {
  Tensor mine = *Tensor::Empty({1}, DType::kI64, Device::Cpu());
  Tensor all = *Tensor::Empty({comm->size()}, DType::kI64, Device::Cpu());
  mine.data<int64_t>()[0] = value;
  EXPECT_TRUE(comm->AllGather(ExecContext::Cpu(), mine, all).ok());
  return std::vector<int64_t>(all.data<int64_t>(), all.data<int64_t>() + comm->size());
}

// Rank r's local time of candidate i: 6 ms for candidate 5, 4 ms for candidate (2r) % 8 (each
// rank alone would pick its own even candidate), 10 ms otherwise, times rank-seeded +-5% noise.
// The slowest rank (W >= 2) takes about 6 ms on candidate 5 and 10 ms on every other one.
double LocalMs(int rank, int index, std::mt19937& rng) {
  std::uniform_real_distribution<double> noise(0.95, 1.05);
  const double ms = index == 5 ? 6.0 : index == (2 * rank) % 8 ? 4.0 : 10.0;
  return ms * noise(rng);
}

TEST(AdaptiveControllerMpiTest, DifferentLocalTimesGiveIdenticalChoicesOnEveryRank) {
  MOE_ASSERT_OK_AND_ASSIGN(Communicator * comm, MpiWorldCommunicator());
  ASSERT_GE(comm->size(), 2) << "run with mpirun -np 2 or more";
  MOE_ASSERT_OK_AND_ASSIGN(
      auto ctl, AdaptiveController::Create({.save_on_decision = false}, Candidates(), comm));
  std::mt19937 rng(1000 + comm->rank());
  // The local load differs per rank; the agreed bucket must not.
  MOE_ASSERT_OK_AND_ASSIGN(const int64_t bucket,
                           AgreedCapacityBucket(comm, 10 + 40 * comm->rank()));
  EXPECT_EQ(bucket, CapacityBucket(10 + 40 * (comm->size() - 1)));
  // Several layers' loads in one collective: each the maximum of its own column.
  const std::vector<int64_t> loads = {10 + 40 * comm->rank(), 1000 - comm->rank(), 0};
  MOE_ASSERT_OK_AND_ASSIGN(const std::vector<int64_t> buckets, AgreedCapacityBuckets(comm, loads));
  EXPECT_EQ(buckets, (std::vector<int64_t>{bucket, CapacityBucket(1000), 0}));
  const std::vector<AdaptKey> keys = {{0, bucket, 2}, {1, bucket, 2}, {1, bucket + 1, 2}};
  const int steps = 3 * 8 * 3 + 30;
  for (int step = 0; step < steps; ++step) {
    const AdaptKey& key = keys[step % keys.size()];
    MOE_ASSERT_OK_AND_ASSIGN(const ParallelMode mode, ctl->Choose(key));
    const int index = IndexOf(Candidates(), mode);
    const std::vector<int64_t> all = GatherAll(comm, index * 2 + (ctl->Measuring(key) ? 1 : 0));
    for (int r = 0; r < comm->size(); ++r) {
      ASSERT_EQ(all[r], all[0]) << "step " << step << ": rank " << r << " chose differently";
    }
    if (ctl->Measuring(key)) {
      MOE_ASSERT_OK(ctl->Report(key, mode, LocalMs(comm->rank(), index, rng)));
    }
  }
  // Exploration ended everywhere, on the best of the slowest ranks' times (candidate 5), which is
  // no rank's local favourite.
  const std::vector<AdaptDecision> decisions = ctl->Decisions();
  ASSERT_EQ(decisions.size(), keys.size());
  for (const AdaptDecision& d : decisions) {
    EXPECT_FALSE(d.exploring);
    EXPECT_EQ(IndexOf(Candidates(), d.mode), 5);
  }
  EXPECT_EQ(ctl->total_reports(), 3 * 8 * 3);
  // The medians are bit-identical across ranks.
  for (const AdaptDecision& d : decisions) {
    Tensor ms = *Tensor::Empty({1}, DType::kF32, Device::Cpu());
    ms.data<float>()[0] = static_cast<float>(d.median_ms);
    Tensor all = *Tensor::Empty({comm->size()}, DType::kF32, Device::Cpu());
    MOE_ASSERT_OK(comm->AllGather(ExecContext::Cpu(), ms, all));
    for (int r = 0; r < comm->size(); ++r) EXPECT_EQ(all.data<float>()[r], all.data<float>()[0]);
  }
}

TEST(AdaptiveControllerMpiTest, LoadBroadcastsRankZerosTable) {
  MOE_ASSERT_OK_AND_ASSIGN(Communicator * comm, MpiWorldCommunicator());
  // Only rank 0 has a table path that exists; the others point at nothing.
  const std::vector<int64_t> pids = GatherAll(comm, ::getpid());
  const std::string path = comm->rank() == 0
                               ? absl::StrCat(::testing::TempDir(), "/adapt_mpi_", pids[0], ".txt")
                               : absl::StrCat("/nonexistent/adapt_mpi_rank", comm->rank(), ".txt");
  const AdaptKey key{3, 5, 1};
  std::mt19937 rng(77 + comm->rank());
  {
    MOE_ASSERT_OK_AND_ASSIGN(auto ctl,
                             AdaptiveController::Create({.table_path = path}, Candidates(), comm));
    MOE_ASSERT_OK(ctl->Load());  // nothing yet, on every rank
    for (int step = 0; step < 8 * 3; ++step) {
      MOE_ASSERT_OK_AND_ASSIGN(const ParallelMode mode, ctl->Choose(key));
      ASSERT_TRUE(ctl->Measuring(key));
      MOE_ASSERT_OK(
          ctl->Report(key, mode, LocalMs(comm->rank(), IndexOf(Candidates(), mode), rng)));
    }
    ASSERT_FALSE(ctl->Measuring(key));  // decided and saved by rank 0
  }
  MOE_ASSERT_OK_AND_ASSIGN(auto ctl,
                           AdaptiveController::Create({.table_path = path}, Candidates(), comm));
  MOE_ASSERT_OK(ctl->Load());
  MOE_ASSERT_OK_AND_ASSIGN(const ParallelMode mode, ctl->Choose(key));
  EXPECT_FALSE(ctl->Measuring(key)) << "rank " << comm->rank() << " did not get the table";
  EXPECT_EQ(IndexOf(Candidates(), mode), 5);
  const std::vector<int64_t> all = GatherAll(comm, IndexOf(Candidates(), mode));
  for (int r = 0; r < comm->size(); ++r) EXPECT_EQ(all[r], 5);
  MOE_ASSERT_OK(comm->Barrier());
  if (comm->rank() == 0) std::remove(path.c_str());
}

}  // namespace
}  // namespace smoe
