// The expert-parallel MoE layer on one rank (SingleRankCommunicator): every mode equals
// MoEForward/MoEBackward, the layout and argument validation name the field. The multi-rank
// equivalence runs under mpirun (parallel_moe_layer_mpi_test.cc).
#include "moe/parallel_moe_layer.h"

#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/moe/parallel_moe_layer_testing.h"
#include "tests/testing/fake_communicator.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using testing::Cpu;
using testing::EquivalenceCase;
using ::testing::HasSubstr;
using testing::HostTensor;
using testing::RandomNormal;
using testing::StatusIs;

std::unique_ptr<RowExchanger> SingleRankExchanger() {
  StatusOr<std::unique_ptr<RowExchanger>> ex = RowExchanger::Create(SingleRankCommunicator());
  MOE_CHECK_OK(ex.status());
  return *std::move(ex);
}

TEST(ExpertShardLayoutTest, OwnsAContiguousRangeOfExperts) {
  MOE_ASSERT_OK_AND_ASSIGN(ExpertShardLayout l, MakeExpertShardLayout(12, 4, 3));
  EXPECT_EQ(l.num_experts, 12);
  EXPECT_EQ(l.world, 4);
  EXPECT_EQ(l.rank, 3);
  EXPECT_EQ(l.local_experts, 3);
  EXPECT_EQ(l.first_expert, 9);
  MOE_ASSERT_OK_AND_ASSIGN(l, MakeExpertShardLayout(8, 8, 0));
  EXPECT_EQ(l.local_experts, 1);
  EXPECT_EQ(l.first_expert, 0);
  MOE_ASSERT_OK_AND_ASSIGN(l, MakeExpertShardLayout(5, 1, 0));
  EXPECT_EQ(l.local_experts, 5);
}

TEST(ExpertShardLayoutTest, ErrorsNameTheField) {
  EXPECT_THAT(MakeExpertShardLayout(10, 4, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("num_experts")));
  EXPECT_THAT(MakeExpertShardLayout(0, 4, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("num_experts")));
  EXPECT_THAT(MakeExpertShardLayout(8, 0, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("world")));
  EXPECT_THAT(MakeExpertShardLayout(8, 4, 4),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rank")));
  EXPECT_THAT(MakeExpertShardLayout(8, 4, -1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rank")));
  EXPECT_THAT(MakeExpertShardLayout(3, 4, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("num_experts")));
  EXPECT_THAT(MakeExpertShardLayout(3, 12, 0, 0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ffn_dim")));
  EXPECT_THAT(MakeExpertShardLayout(3, 12, 0, 6),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ffn_dim")));
  EXPECT_THAT(MakeExpertShardLayout(2, 4, 4, 8),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rank")));
  MOE_EXPECT_OK(MakeExpertShardLayout(3, 12, 0, 8).status());
}

TEST(ExpertShardLayoutTest, WholeExpertsHaveOneShard) {
  MOE_ASSERT_OK_AND_ASSIGN(ExpertShardLayout l, MakeExpertShardLayout(12, 4, 3, 10));
  EXPECT_EQ(l.shards, 1);
  EXPECT_EQ(l.shard, 0);
  EXPECT_EQ(l.ShardWidth(10), 10);
  EXPECT_EQ(l.ShardBegin(10), 0);
}

TEST(ExpertShardLayoutTest, ShardsExpertsOverConsecutiveRanks) {
  // E = 2 over W = 4: s = 2; rank g holds shard g mod 2 of expert g / 2, H_s = 12 / 2.
  const int expert[] = {0, 0, 1, 1}, shard[] = {0, 1, 0, 1};
  for (int g = 0; g < 4; ++g) {
    SCOPED_TRACE(g);
    MOE_ASSERT_OK_AND_ASSIGN(const ExpertShardLayout l, MakeExpertShardLayout(2, 4, g, 12));
    EXPECT_EQ(l.num_experts, 2);
    EXPECT_EQ(l.world, 4);
    EXPECT_EQ(l.rank, g);
    EXPECT_EQ(l.local_experts, 1);
    EXPECT_EQ(l.first_expert, expert[g]);
    EXPECT_EQ(l.shards, 2);
    EXPECT_EQ(l.shard, shard[g]);
    EXPECT_EQ(l.ShardWidth(12), 6);
    EXPECT_EQ(l.ShardBegin(12), 6 * shard[g]);
  }
  // E = 3 over W = 12: s = 4; rank 7 holds columns [6, 9) of expert 1 (H = 12).
  MOE_ASSERT_OK_AND_ASSIGN(const ExpertShardLayout l, MakeExpertShardLayout(3, 12, 7, 12));
  EXPECT_EQ(l.first_expert, 1);
  EXPECT_EQ(l.shards, 4);
  EXPECT_EQ(l.shard, 3);
  EXPECT_EQ(l.ShardWidth(12), 3);
  EXPECT_EQ(l.ShardBegin(12), 9);
  // One expert over all ranks.
  MOE_ASSERT_OK_AND_ASSIGN(const ExpertShardLayout one, MakeExpertShardLayout(1, 4, 2, 8));
  EXPECT_EQ(one.first_expert, 0);
  EXPECT_EQ(one.shards, 4);
  EXPECT_EQ(one.shard, 2);
  EXPECT_EQ(one.ShardBegin(8), 4);
}

TEST(ExpertShardLayoutTest, ShardsTileEveryExpertExactlyOnce) {
  for (const auto& [e, w] : {std::pair{1, 2}, {1, 4}, {2, 4}, {3, 6}, {2, 8}}) {
    std::vector<int> covered(static_cast<size_t>(e * 24), 0);
    for (int g = 0; g < w; ++g) {
      MOE_ASSERT_OK_AND_ASSIGN(const ExpertShardLayout l, MakeExpertShardLayout(e, w, g, 24));
      for (int64_t c = 0; c < l.ShardWidth(24); ++c) {
        ++covered[static_cast<size_t>(l.first_expert * 24 + l.ShardBegin(24) + c)];
      }
    }
    for (int v : covered) EXPECT_EQ(v, 1) << "E " << e << " W " << w;
  }
}

TEST(ExpertShardGroupsTest, TheWholeGroupIsItsCommunicator) {
  ExpertShardGroups groups(SingleRankCommunicator());
  MOE_ASSERT_OK_AND_ASSIGN(Communicator * whole, groups.ConsecutiveGroup(1));
  EXPECT_EQ(whole, SingleRankCommunicator());
  EXPECT_THAT(groups.ConsecutiveGroup(2),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("size")));
  EXPECT_THAT(groups.ConsecutiveGroup(0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("size")));
}

// Mode, K, capacity factor.
using ModeCase = std::tuple<std::string, int, float>;
class SingleRankModeTest : public ::testing::TestWithParam<ModeCase> {};

TEST_P(SingleRankModeTest, EqualsTheSingleRankLayer) {
  const auto [name, k, cf] = GetParam();
  MOE_ASSERT_OK_AND_ASSIGN(const ParallelMode mode, ParseParallelMode(name));
  std::unique_ptr<RowExchanger> ex = SingleRankExchanger();
  EquivalenceCase c{mode, 29, 8, k, cf, 7};
  testing::ExpectModeMatchesReference(*ex, c);
  c.tokens = 1;
  testing::ExpectModeMatchesReference(*ex, c);
  c.tokens = 0;
  testing::ExpectModeMatchesReference(*ex, c);
  // More chunks than the rows of most experts, so some parts are empty.
  c = EquivalenceCase{mode, 40, 6, k, cf, 8};
  testing::ExpectModeMatchesReference(*ex, c);
}

INSTANTIATE_TEST_SUITE_P(Modes, SingleRankModeTest,
                         ::testing::Combine(::testing::Values("r0.d1.flat", "r1.d1.flat",
                                                              "r1.d2.flat", "r1.d3.flat",
                                                              "r1.d7.flat"),
                                            ::testing::Values(1, 2),
                                            ::testing::Values(0.0f, 1.0f)));

TEST(ParallelMoELayerTest, AccumulatesGradientsAndScalesAuxGradient) {
  std::unique_ptr<RowExchanger> ex = SingleRankExchanger();
  for (const char* name : {"r0.d1.flat", "r1.d1.flat", "r1.d3.flat"}) {
    MOE_ASSERT_OK_AND_ASSIGN(const ParallelMode mode, ParseParallelMode(name));
    EquivalenceCase c{mode, 33, 8, 2, 1.0f, 9};
    c.accumulate_grads = true;
    c.aux_grad_scale = 0.25f;
    testing::ExpectModeMatchesReference(*ex, c);
  }
}

class ParallelMoEValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = testing::EquivalenceConfig(EquivalenceCase{});
    const int64_t m = config_.model_dim, h = config_.ffn_dim, e = config_.num_experts;
    params_.w_gate = RandomNormal({m, e}, 1);
    params_.w1 = RandomNormal({e, m, h}, 2);
    params_.w3 = RandomNormal({e, m, h}, 3);
    params_.w2 = RandomNormal({e, h, m}, 4);
    grads_.w_gate = HostTensor({m, e});
    grads_.w1 = HostTensor({e, m, h});
    grads_.w3 = HostTensor({e, m, h});
    grads_.w2 = HostTensor({e, h, m});
    x_ = RandomNormal({5, m}, 5);
    y_ = HostTensor({5, m});
    ex_ = SingleRankExchanger();
  }
  MoEParamViews views() const { return {params_.w_gate, params_.w1, params_.w3, params_.w2}; }
  MoEGradViews grad_views() const { return {grads_.w_gate, grads_.w1, grads_.w3, grads_.w2}; }

  MoELayerConfig config_;
  MoEParams params_, grads_;
  Tensor x_, y_;
  std::unique_ptr<RowExchanger> ex_;
  ParallelMoEState state_;
};

TEST_F(ParallelMoEValidationTest, RejectsModesOutsideTheLayout) {
  EXPECT_THAT(ParallelMoEForward(Cpu(), config_, views(), x_, y_, &state_, *ex_, {2, 1}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("mode.r")));
  EXPECT_THAT(ParallelMoEForward(Cpu(), config_, views(), x_, y_, &state_, *ex_, {-1, 1}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("mode.r")));
  EXPECT_THAT(ParallelMoEForward(Cpu(), config_, views(), x_, y_, &state_, *ex_, {1, 0}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("mode.d")));
  EXPECT_FALSE(state_.valid);
}

TEST_F(ParallelMoEValidationTest, RejectsTensorsNamingThem) {
  MoEParamViews wrong = views();
  wrong.w1 = params_.w1.view().Rows(0, 4);  // E_l = 8 on one rank
  EXPECT_THAT(ParallelMoEForward(Cpu(), config_, wrong, x_, y_, &state_, *ex_, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("local.w1")));
  wrong = views();
  wrong.w2 = params_.w1;
  EXPECT_THAT(ParallelMoEForward(Cpu(), config_, wrong, x_, y_, &state_, *ex_, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("local.w2")));
  wrong = views();
  wrong.w_gate = params_.w1;
  EXPECT_THAT(ParallelMoEForward(Cpu(), config_, wrong, x_, y_, &state_, *ex_, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("local.w_gate")));
  Tensor short_y = HostTensor({4, config_.model_dim});
  EXPECT_THAT(ParallelMoEForward(Cpu(), config_, views(), x_, short_y, &state_, *ex_, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("y")));
  MoELayerConfig bad = config_;
  bad.top_k = 0;
  EXPECT_THAT(ParallelMoEForward(Cpu(), bad, views(), x_, y_, &state_, *ex_, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_k")));
  EXPECT_THAT(ParallelMoEForward(Cpu(), config_, views(), x_, y_, nullptr, *ex_, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("state")));

  MOE_ASSERT_OK(ParallelMoEForward(Cpu(), config_, views(), x_, y_, &state_, *ex_, {}).status());
  Tensor dx = HostTensor({5, config_.model_dim});
  MoEGradViews wrong_grads = grad_views();
  wrong_grads.w3 =
      HostTensor({config_.num_experts, config_.model_dim, config_.ffn_dim}, DType::kBF16);
  EXPECT_THAT(ParallelMoEBackward(Cpu(), config_, views(), state_, y_, dx, wrong_grads),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("local_grads.w3")));
  EXPECT_THAT(ParallelMoEBackward(Cpu(), config_, views(), state_, y_, short_y, grad_views()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dx")));
}

TEST_F(ParallelMoEValidationTest, BackwardNeedsAForwardWithTheSameTopK) {
  Tensor dx = HostTensor({5, config_.model_dim});
  EXPECT_THAT(ParallelMoEBackward(Cpu(), config_, views(), state_, y_, dx, grad_views()),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("before")));
  MOE_ASSERT_OK(
      ParallelMoEForward(Cpu(), config_, views(), x_, y_, &state_, *ex_, {1, 2}).status());
  MoELayerConfig k2 = config_;
  k2.top_k = 2;
  EXPECT_THAT(ParallelMoEBackward(Cpu(), k2, views(), state_, y_, dx, grad_views()),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("top_k")));
  MOE_EXPECT_OK(ParallelMoEBackward(Cpu(), config_, views(), state_, y_, dx, grad_views()));
  // A failed forward leaves no state for a backward to use.
  EXPECT_FALSE(ParallelMoEForward(Cpu(), config_, views(), x_, y_, &state_, *ex_, {1, 0}).ok());
  EXPECT_THAT(ParallelMoEBackward(Cpu(), config_, views(), state_, y_, dx, grad_views()),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("before")));
}

// Rank 1 of a pretend group of 4 (E < W): every check comes before the first collective, which
// this group would answer with Unimplemented.
class ShardedValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    comm_ = std::make_unique<testing::UnimplementedCommunicator>(1, 4);
    other_ = std::make_unique<testing::UnimplementedCommunicator>(1, 4);
    MOE_ASSERT_OK_AND_ASSIGN(ex_, RowExchanger::Create(comm_.get()));
    config_ = testing::EquivalenceConfig(EquivalenceCase{});
    config_.num_experts = 2;  // s = 2, H_s = 4
    const int64_t m = config_.model_dim, hs = config_.ffn_dim / 2;
    w_gate_ = RandomNormal({m, 2}, 1);
    w1_ = RandomNormal({1, m, hs}, 2);
    w3_ = RandomNormal({1, m, hs}, 3);
    w2_ = RandomNormal({1, hs, m}, 4);
    x_ = RandomNormal({5, m}, 5);
    y_ = HostTensor({5, m});
  }
  StatusOr<AuxLossValues> Forward(const MoEParamViews& p, ParallelMode mode,
                                  ExpertShardGroups* groups) {
    return ParallelMoEForward(Cpu(), config_, p, x_, y_, &state_, *ex_, mode, nullptr, {}, groups);
  }
  MoEParamViews views() const { return {w_gate_, w1_, w3_, w2_}; }

  std::unique_ptr<Communicator> comm_, other_;
  std::unique_ptr<RowExchanger> ex_;
  MoELayerConfig config_;
  Tensor w_gate_, w1_, w3_, w2_, x_, y_;
  ParallelMoEState state_;
};

TEST_F(ShardedValidationTest, ModeRMustBeZeroOrDivideS) {
  ExpertShardGroups groups(comm_.get());
  for (int r : {-1, 3, 4}) {
    EXPECT_THAT(Forward(views(), {r, 1}, &groups),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("mode.r")))
        << r;
  }
  EXPECT_THAT(Forward(views(), {2, 0}, &groups),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("mode.d")));
  // Valid modes get past validation to their first collective: r = 0 gathers the weights, r = 1
  // (u = 2) splits off its slice group, r = s = 2 exchanges counts.
  const std::pair<int, const char*> first_collective[] = {
      {0, "AllGather"}, {1, "Split"}, {2, "AllToAllV"}};
  for (const auto& [r, collective] : first_collective) {
    EXPECT_THAT(Forward(views(), {r, 1}, &groups),
                StatusIs(absl::StatusCode::kUnimplemented, HasSubstr(collective)))
        << r;
  }
  EXPECT_FALSE(state_.valid);
}

TEST_F(ShardedValidationTest, SliceGroupsNeedShardGroupsOverTheSameCommunicator) {
  EXPECT_THAT(Forward(views(), {1, 1}, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("shard_groups")));
  ExpertShardGroups elsewhere(other_.get());
  EXPECT_THAT(Forward(views(), {1, 1}, &elsewhere),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("shard_groups")));
  // r = s and r = 0 need no slice groups.
  EXPECT_THAT(Forward(views(), {2, 1}, nullptr),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("AllToAllV")));
  EXPECT_THAT(Forward(views(), {0, 1}, nullptr),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("AllGather")));
}

TEST_F(ShardedValidationTest, LocalWeightsAreShardsAndHMustSplit) {
  const Tensor whole = RandomNormal({1, config_.model_dim, config_.ffn_dim}, 6);
  MoEParamViews wrong = views();
  wrong.w1 = whole;
  EXPECT_THAT(Forward(wrong, {2, 1}, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("local.w1")));
  wrong = views();
  wrong.w2 = w1_;
  EXPECT_THAT(Forward(wrong, {2, 1}, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("local.w2")));
  config_.num_experts = 1;  // s = 4
  config_.ffn_dim = 6;
  EXPECT_THAT(Forward(views(), {0, 1}, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ffn_dim")));
}

}  // namespace
}  // namespace smoe
