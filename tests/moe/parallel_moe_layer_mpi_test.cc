// Mode equivalence of the expert-parallel MoE layer across ranks (run under mpirun -np 2 or 4,
// CTest label mpi): every (r, d, algorithm) gives, on every rank, the outputs and gradients of
// "data parallel with replicated experts". Ranks hold different token counts, one of them few,
// and one case gives a rank no tokens at all.
#include <memory>
#include <string>
#include <tuple>

#include "gtest/gtest.h"
#include "moe/parallel_moe_layer.h"
#include "tests/moe/parallel_moe_layer_testing.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using testing::EquivalenceCase;

Communicator* World() {
  StatusOr<Communicator*> comm = MpiWorldCommunicator();
  MOE_CHECK_OK(comm.status());
  return *comm;
}

// One exchanger per algorithm, created once (2dh splits the group, a collective).
RowExchanger& Exchanger(AllToAllAlgorithm algorithm) {
  static std::unique_ptr<RowExchanger> flat, two_dim;
  std::unique_ptr<RowExchanger>& ex = algorithm == AllToAllAlgorithm::kFlat ? flat : two_dim;
  if (ex == nullptr) {
    Communicator* comm = World();
    const int node_size = algorithm == AllToAllAlgorithm::kFlat ? 1 : 2;
    StatusOr<std::unique_ptr<RowExchanger>> made = RowExchanger::Create(comm, node_size);
    MOE_CHECK_OK(made.status());
    ex = *std::move(made);
  }
  return *ex;
}

// Whether the 2dh exchange works in this build (every rank gets the same answer).
bool TwoDimWorks() {
  static const bool works = [] {
    Communicator* comm = World();
    if (comm->size() % 2 != 0 || comm->size() < 4) return false;
    const int w = comm->size();
    Tensor send = testing::HostTensor({w, 3}), recv = testing::HostTensor({w, 3});
    MOE_CHECK_OK(Fill(testing::Cpu(), send, comm->rank()));
    const std::vector<int64_t> ones(w, 1);
    const Status status = Exchanger(AllToAllAlgorithm::kTwoDimHierarchical)
                              .Exchange(testing::Cpu(), AllToAllAlgorithm::kTwoDimHierarchical,
                                        send, ones, recv, ones);
    if (!status.ok()) return false;
    for (int i = 0; i < w; ++i) {
      for (int j = 0; j < 3; ++j) MOE_CHECK_EQ(recv.data<float>()[i * 3 + j], float(i));
    }
    return true;
  }();
  return works;
}

// Different token counts per rank; rank 1 has few.
int64_t TokensOf(int rank) {
  constexpr int64_t kTokens[] = {37, 3, 26, 45};
  return kTokens[rank % 4];
}

// Mode, K, capacity factor.
using ModeCase = std::tuple<std::string, int, float>;
class MpiModeEquivalenceTest : public ::testing::TestWithParam<ModeCase> {};

TEST_P(MpiModeEquivalenceTest, EveryRankMatchesReplicatedExperts) {
  const auto [name, k, cf] = GetParam();
  MOE_ASSERT_OK_AND_ASSIGN(const ParallelMode mode, ParseParallelMode(name));
  Communicator* comm = World();
  ASSERT_GE(comm->size(), 2) << "run with mpirun -np 2 or more";
  if (mode.algorithm == AllToAllAlgorithm::kTwoDimHierarchical && !TwoDimWorks()) {
    GTEST_SKIP() << "2dh needs W = 4 (2 nodes of 2) and a working 2dh exchange";
  }
  const int rank = comm->rank();
  EquivalenceCase c{mode, TokensOf(rank), 8, k, cf, 100 + static_cast<uint64_t>(rank)};
  testing::ExpectModeMatchesReference(Exchanger(mode.algorithm), c);
  // E = 12 under W = 4 (E_l = 3); W = 2 gives E_l = 6.
  c.num_experts = 12;
  testing::ExpectModeMatchesReference(Exchanger(mode.algorithm), c);
  // Rank 1 with no tokens still joins every collective.
  c.num_experts = 8;
  c.tokens = rank == 1 ? 0 : TokensOf(rank) + 5;
  c.seed += 50;
  testing::ExpectModeMatchesReference(Exchanger(mode.algorithm), c);
}

INSTANTIATE_TEST_SUITE_P(
    Modes, MpiModeEquivalenceTest,
    ::testing::Combine(::testing::Values("r0.d1.flat", "r1.d1.flat", "r1.d2.flat", "r1.d3.flat",
                                         "r0.d1.2dh", "r1.d1.2dh", "r1.d2.2dh", "r1.d3.2dh"),
                       ::testing::Values(1, 2), ::testing::Values(0.0f, 1.0f)));

TEST(MpiParallelMoELayerTest, AccumulatesGradientsOverSteps) {
  Communicator* comm = World();
  for (const char* name : {"r0.d1.flat", "r1.d2.flat"}) {
    MOE_ASSERT_OK_AND_ASSIGN(const ParallelMode mode, ParseParallelMode(name));
    EquivalenceCase c{mode, TokensOf(comm->rank()), 8, 2, 0.0f, 300 + uint64_t(comm->rank())};
    c.accumulate_grads = true;
    c.aux_grad_scale = 0.5f;
    testing::ExpectModeMatchesReference(Exchanger(mode.algorithm), c);
  }
}

}  // namespace
}  // namespace smoe
