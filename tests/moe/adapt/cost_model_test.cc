// The cost model against hand-computed cases (the arithmetic is in the comments), on a toy machine:
// GEMMs at 100 TFLOP/s whatever their size, 100 GB/s inside a node, 10 GB/s between nodes, 10 us
// per message, 1000 GB/s of device memory. M = 1024, H = 512, bf16 rows of 2048 bytes, K = 1.
#include "moe/adapt/cost_model.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::smoe::testing::StatusIs;
using ::testing::HasSubstr;

constexpr double kUs = 1e-3;  // one microsecond in milliseconds

HardwareModel Toy() {
  HardwareModel hw;
  hw.gemm = {{1, 100}};
  hw.intra_node_gbps = 100;
  hw.inter_node_gbps = 10;
  hw.latency_us = 10;
  hw.memory_gbps = 1000;
  return hw;
}

MoEWorkload Workload(int world, int node, int experts, int64_t tokens = 1000) {
  MoEWorkload w;
  w.world = world;
  w.gpus_per_node = node;
  w.num_experts = experts;
  w.model_dim = 1024;
  w.ffn_dim = 512;
  w.top_k = 1;
  w.tokens_per_rank = tokens;
  w.dtype = DType::kBF16;
  return w;
}

ModeCost Predict(const MoEWorkload& w, const char* mode, const HardwareModel& hw = Toy()) {
  const StatusOr<ParallelMode> parsed = ParseParallelMode(mode);
  MOE_CHECK_OK(parsed.status());
  const StatusOr<ModeCost> cost = PredictModeCost(hw, w, *parsed);
  MOE_CHECK_OK(cost.status());
  return *cost;
}

void ExpectCost(const ModeCost& c, double exchange_us, double gather_us, double compute_us,
                double overlap_us) {
  EXPECT_NEAR(c.exchange_ms, exchange_us * kUs, 1e-9) << "exchange";
  EXPECT_NEAR(c.gather_ms, gather_us * kUs, 1e-9) << "gather";
  EXPECT_NEAR(c.compute_ms, compute_us * kUs, 1e-9) << "compute";
  EXPECT_NEAR(c.overlap_ms, overlap_us * kUs, 1e-9) << "overlap";
  EXPECT_NEAR(c.total_ms(), (exchange_us + gather_us + compute_us - overlap_us) * kUs, 1e-9);
}

// One expert of 1000 rows: 18 M H flops per row forward + backward = 9.437184 GFLOP -> 94.37184 us.
constexpr double kComputeUs = 94.37184;

TEST(CostModelTest, ExpertParallelOnOneNode) {
  // W = 2 in one node, E = 2: each rank sends 1000 rows and receives 1000. A rank's link carries
  // 1000 x 2048 B, half of it (its peer's share) over 100 GB/s: 10.24 us, + 1 message: 20.24 us;
  // four exchanges.
  ExpectCost(Predict(Workload(2, 2, 2), "r1.d1.flat"), 4 * 20.24, 0, kComputeUs, 0);
}

TEST(CostModelTest, DataParallelGathersEveryExpert) {
  // r = 0: each rank receives half of 2 experts x 3 x 1024 x 512 bf16 weights = 3145728 B over
  // 100 GB/s (31.45728 us) + 1 message, and reduce-scatters twice that in f32 (62.91456 + 10). The
  // experts run on the local 1000 rows (500 each): the same flops as above.
  ExpectCost(Predict(Workload(2, 2, 2), "r0.d1.flat"), 0, 41.45728 + 72.91456, kComputeUs, 0);
}

TEST(CostModelTest, PipeliningHidesExchangesBehindTheExperts) {
  // d = 2: a chunk's exchange is 5.12 + 10 = 15.12 us; forward chunks compute 15.72864 us each,
  // backward ones 31.45728. Forward: rows out [0, 15.12], [15.12, 30.24]; experts [15.12,
  // 30.84864], [30.84864, 46.57728]; back [30.84864, 45.96864], [46.57728, 61.69728]. Backward:
  // experts [15.12, 46.57728], [46.57728, 78.03456]; last back [78.03456, 93.15456]. Exchanges 8 x
  // 15.12 = 120.96, so overlap = 120.96 + 94.37184 - (61.69728 + 93.15456) = 60.48 us.
  const ModeCost c = Predict(Workload(2, 2, 2), "r1.d2.flat");
  ExpectCost(c, 120.96, 0, kComputeUs, 60.48);
  EXPECT_LT(c.total_ms(), Predict(Workload(2, 2, 2), "r1.d1.flat").total_ms());
}

TEST(CostModelTest, ImbalanceFavoursDataParallel) {
  // 75% of the rows to expert 0: its owner receives 1500 rows (25.36 us per exchange: 1500 x 2048
  // B, half over 100 GB/s, + 10) and computes 1.5x as long; r = 0 is balanced whatever the routing.
  MoEWorkload w = Workload(2, 2, 2);
  w.expert_share = {0.75, 0.25};
  const ModeCost ep = Predict(w, "r1.d1.flat"), dp = Predict(w, "r0.d1.flat");
  ExpectCost(ep, 4 * 25.36, 0, 1.5 * kComputeUs, 0);
  ExpectCost(dp, 0, 41.45728 + 72.91456, kComputeUs, 0);
  EXPECT_LT(dp.total_ms(), ep.total_ms());
}

TEST(CostModelTest, TwoDimHierarchicalAcrossNodes) {
  // W = 4 in 2 nodes of 2, E = 4, 1000 rows per rank and expert (2048000 B per rank).
  // Flat: a quarter of it inside the node (5.12 us), half across (102.4 us), 3 messages: 132.4 us.
  // 2dh: phase 1 moves 500 rows inside the node (10.24 us + 1 message), two regroups copy 4 x
  // 2048000 B through memory (8.192 us), phase 2 moves 500 rows across (102.4 us + 1 message).
  const MoEWorkload w = Workload(4, 2, 4);
  ExpectCost(Predict(w, "r1.d1.flat"), 4 * 132.4, 0, kComputeUs, 0);
  const double two_dim = 20.24 + 8.192 + 112.4;
  ExpectCost(Predict(w, "r1.d1.2dh"), 4 * two_dim, 0, kComputeUs, 0);
  // With 100 us per message 2dh's fewer messages win: flat 102.4 + 300, 2dh 10.24 + 100 + 8.192 +
  // 102.4 + 100.
  HardwareModel slow = Toy();
  slow.latency_us = 100;
  EXPECT_NEAR(Predict(w, "r1.d1.flat", slow).exchange_ms, 4 * 402.4 * kUs, 1e-9);
  EXPECT_NEAR(Predict(w, "r1.d1.2dh", slow).exchange_ms, 4 * 320.832 * kUs, 1e-9);
}

TEST(CostModelTest, ShardedExpertsTradeGathersForExchanges) {
  // W = 4 in one node, E = 2: s = 2 ranks per expert, 2000 rows per expert.
  const MoEWorkload w = Workload(4, 4, 2);
  // r = 1 (u = 2): a rank receives 1000 rows (3/4 of 2048000 B over 100 GB/s + 3 messages = 45.36
  // us per exchange) and computes them at full width; its pair all-gathers half of 3 x 1024 x 512
  // bf16 (15.72864 + 10) and reduce-scatters it in f32 (31.45728 + 10).
  ExpectCost(Predict(w, "r1.d1.flat"), 4 * 45.36, 25.72864 + 41.45728, kComputeUs, 0);
  // r = 2 (u = 1): every row goes to both shards (2000 rows each way: 60.72 us per exchange), each
  // computes all 2000 rows at width 256: the same flops, no gather.
  ExpectCost(Predict(w, "r2.d1.flat"), 4 * 60.72, 0, kComputeUs, 0);
  // r = 0: 3/4 of both experts' weights (47.18592 + 30) and f32 gradients (94.37184 + 30).
  ExpectCost(Predict(w, "r0.d1.flat"), 0, 77.18592 + 124.37184, kComputeUs, 0);
}

TEST(CostModelTest, SmallGemmsAreSlowerPerRow) {
  HardwareModel hw = Toy();
  hw.gemm = {{100, 10}, {10000, 100}};
  EXPECT_DOUBLE_EQ(hw.GemmTflops(10), 10);
  EXPECT_DOUBLE_EQ(hw.GemmTflops(1e6), 100);
  EXPECT_NEAR(hw.GemmTflops(1000), 55, 1e-9);  // halfway in log(rows)
  // A chunk of 500 rows runs at 10 + 90 log(5) / log(100) TFLOP/s instead of 1000 rows' 55.
  const MoEWorkload w = Workload(2, 2, 2);
  const double chunked = Predict(w, "r1.d2.flat", hw).compute_ms;
  const double whole = Predict(w, "r1.d1.flat", hw).compute_ms;
  EXPECT_NEAR(chunked / whole, 55 / hw.GemmTflops(500), 1e-9);
}

TEST(CostModelTest, SharesFromCountsAndBuckets) {
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<double> shares,
                           SharesFromCounts(std::vector<int64_t>{3, 1, 0, 4}));
  EXPECT_THAT(shares, ::testing::ElementsAre(0.375, 0.125, 0.0, 0.5));
  // Bucket 10 over 8 experts: the hottest holds 1023 of 4096 rows, the 7 others the rest evenly.
  MOE_ASSERT_OK_AND_ASSIGN(shares, SharesFromCapacityBucket(10, 8, 4096));
  EXPECT_DOUBLE_EQ(shares[0], 1023.0 / 4096);
  EXPECT_DOUBLE_EQ(shares[1], (1 - 1023.0 / 4096) / 7);
  // A bucket below uniform is uniform; one above every row gives the expert everything.
  MOE_ASSERT_OK_AND_ASSIGN(shares, SharesFromCapacityBucket(1, 4, 4096));
  EXPECT_DOUBLE_EQ(shares[0], 0.25);
  MOE_ASSERT_OK_AND_ASSIGN(shares, SharesFromCapacityBucket(20, 4, 4096));
  EXPECT_DOUBLE_EQ(shares[0], 1.0);
  EXPECT_DOUBLE_EQ(shares[3], 0.0);
}

TEST(CostModelTest, ErrorsNameTheField) {
  const HardwareModel hw = Toy();
  const ParallelMode r1{1, 1, AllToAllAlgorithm::kFlat};
  EXPECT_THAT(PredictModeCost(hw, Workload(4, 2, 6), r1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("workload.num_experts")));
  EXPECT_THAT(PredictModeCost(hw, Workload(4, 2, 4), {2, 1, AllToAllAlgorithm::kFlat}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("mode.r")));
  EXPECT_THAT(
      PredictModeCost(hw, Workload(2, 2, 2), {1, 1, AllToAllAlgorithm::kTwoDimHierarchical}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("mode.algorithm")));
  MoEWorkload w = Workload(2, 2, 2);
  w.expert_share = {0.5, 0.6};
  EXPECT_THAT(PredictModeCost(hw, w, r1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("workload.expert_share")));
  HardwareModel bad = hw;
  bad.gemm = {{10, 5}, {5, 6}};
  EXPECT_THAT(PredictModeCost(bad, Workload(2, 2, 2), r1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("hardware.gemm[1]")));
}

TEST(CandidateModesTest, MultiplyAtScale) {
  constexpr int kDegrees[] = {1, 2, 4, 8};
  // W = 2048 over 128 experts: s = 16, r in {0, 1, 2, 4, 8, 16}, flat and 2dh.
  const std::vector<ParallelMode> modes = CandidateModes(2048, 8, 16, kDegrees);
  EXPECT_EQ(modes.size(), 41u);
  EXPECT_EQ(ParallelModeName(modes.front()), "r0.d1.flat");
  EXPECT_EQ(ParallelModeName(modes.back()), "r16.d8.2dh");
  // One node: no 2dh.
  EXPECT_EQ(CandidateModes(8, 8, 1, kDegrees).size(), 5u);
}

}  // namespace
}  // namespace smoe
