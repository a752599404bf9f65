// The expert-parallel MoE layer on one rank (SingleRankCommunicator): every mode equals
// MoEForward/MoEBackward, the layout and argument validation name the field. The multi-rank
// equivalence runs under mpirun (parallel_moe_layer_mpi_test.cc).
#include "moe/parallel_moe_layer.h"

#include <memory>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/moe/parallel_moe_layer_testing.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using ::testing::HasSubstr;
using testing::Cpu;
using testing::EquivalenceCase;
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
  EXPECT_THAT(MakeExpertShardLayout(2, 4, 0),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("expert sharding")));
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
  wrong_grads.w3 = HostTensor({config_.num_experts, config_.model_dim, config_.ffn_dim},
                              DType::kBF16);
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

}  // namespace
}  // namespace smoe
