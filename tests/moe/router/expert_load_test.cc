#include "moe/router/expert_load.h"

#include <cmath>
#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moe/router/router.h"
#include "moe/router/routing_stats.h"
#include "tests/testing/compare.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using ::testing::DoubleNear;
using ::testing::ElementsAre;
using testing::FromFloats;
using testing::FromInts;
using ::testing::HasSubstr;
using testing::HostTensor;
using testing::RandomNormal;
using testing::StatusIs;
using testing::ToDoubles;

std::vector<int64_t> Counts(const TensorView& idx, int64_t e) {
  Tensor counts = HostTensor({e}, DType::kI64);
  MOE_CHECK_OK(CountExperts(ExecContext::Cpu(), idx, counts));
  return std::vector<int64_t>(counts.data<int64_t>(), counts.data<int64_t>() + e);
}

TEST(CountExpertsTest, HandWorkedAndBadIndex) {
  EXPECT_THAT(Counts(FromInts({0, 3, 3, 1, 0, 3}, {3, 2}), 5), ElementsAre(2, 1, 0, 3, 0));
  Tensor counts = HostTensor({4}, DType::kI64);
  EXPECT_THAT(CountExperts(ExecContext::Cpu(), FromInts({0, 1, -1, 2}, {2, 2}), counts),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("topk_idx[1, 0]: got -1")));
  EXPECT_THAT(CountExperts(ExecContext::Cpu(), FromInts({0, 1, 1, 2}, {2, 2}),
                           HostTensor({4}, DType::kI32)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("counts.dtype: got i32")));
}

TEST(UpdateExpertBiasTest, HandWorkedStepAndClamp) {
  // Loads [4, 0, 2, 2], mean 2: expert 0 over, expert 1 under, experts 2 and 3 at the mean.
  Tensor counts = HostTensor({4}, DType::kI64);
  const int64_t loads[] = {4, 0, 2, 2};
  std::copy(loads, loads + 4, counts.data<int64_t>());
  const Tensor bias = FromFloats({0.0f, 0.95f, 0.3f, -1.5f}, {4});
  MOE_ASSERT_OK(UpdateExpertBias(ExecContext::Cpu(), counts, 0.1f, 1.0f, bias));
  EXPECT_THAT(ToDoubles(bias), ElementsAre(DoubleNear(-0.1, 1e-7), DoubleNear(1.0, 1e-7),
                                           DoubleNear(0.3, 1e-7), DoubleNear(-1.0, 1e-7)));
  EXPECT_THAT(UpdateExpertBias(ExecContext::Cpu(), counts, -0.1f, 1.0f, bias),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rate: got -0.1")));
  EXPECT_THAT(UpdateExpertBias(ExecContext::Cpu(), counts, 0.1f, 1.0f, FromFloats({0, 0, 0}, {3})),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bias.shape: got [3]")));
}

// The bias loop balances a router whose logits strongly prefer the high experts.
TEST(UpdateExpertBiasTest, BiasLoopBalancesSkewedRouter) {
  const int64_t t = 512, m = 8, e = 8, k = 1;
  const Tensor x = RandomNormal({t, m}, 90);
  Tensor w = RandomNormal({m, e}, 91, 0.3f);
  const RouterConfig config{static_cast<int>(e), static_cast<int>(k), false};
  const Tensor logits = HostTensor({t, e}, DType::kF32), probs = HostTensor({t, e}, DType::kF32);
  const Tensor idx = HostTensor({t, k}, DType::kI32), gates = HostTensor({t, k}, DType::kF32);
  const Tensor bias = FromFloats(std::vector<float>(e, 0.0f), {e});
  // Skew through an extra constant input column: x[:, 0] -> +0.4 e on expert e.
  for (int64_t r = 0; r < t; ++r) x.data<float>()[r * m] = 1.0f;
  for (int64_t c = 0; c < e; ++c) w.data<float>()[c] = 0.4f * c;
  Tensor counts = HostTensor({e}, DType::kI64);
  double first_dev = 0.0, last_dev = 0.0;
  for (int step = 0; step < 200; ++step) {
    MOE_ASSERT_OK(RouterForward(ExecContext::Cpu(), config, x, w, bias, logits, probs, idx, gates));
    MOE_ASSERT_OK_AND_ASSIGN(RoutingStats stats,
                             ComputeRoutingStats(ExecContext::Cpu(), probs, idx));
    if (step == 0) first_dev = stats.max_rel_dev;
    last_dev = stats.max_rel_dev;
    MOE_ASSERT_OK(CountExperts(ExecContext::Cpu(), idx, counts));
    MOE_ASSERT_OK(UpdateExpertBias(ExecContext::Cpu(), counts, 0.02f, 4.0f, bias));
  }
  EXPECT_GT(first_dev, 2.0);
  EXPECT_LT(last_dev, 0.5);
  for (double b : ToDoubles(bias)) EXPECT_LE(std::abs(b), 4.0);
}

TEST(RoutingStatsTest, ConstructedRouting) {
  // Four tokens, four experts, top-1: loads [3, 1, 0, 0], mean 1.
  std::vector<float> p(16, 0.25f);
  const Tensor probs = FromFloats(p, {4, 4});
  MOE_ASSERT_OK_AND_ASSIGN(RoutingStats s, ComputeRoutingStats(ExecContext::Cpu(), probs,
                                                               FromInts({0, 0, 1, 0}, {4, 1})));
  EXPECT_THAT(s.tokens_per_expert, ElementsAre(3, 1, 0, 0));
  EXPECT_THAT(s.f, ElementsAre(0.75, 0.25, 0.0, 0.0));
  EXPECT_DOUBLE_EQ(s.max_rel_dev, 2.0);
  EXPECT_DOUBLE_EQ(s.min_rel_dev, -1.0);
  EXPECT_EQ(s.dead_experts, 2);
  EXPECT_NEAR(s.entropy_mean_p, std::log(4.0), 1e-7);
  EXPECT_EQ(s.non_finite_rows, 0);

  // Top-2 over two tokens, uneven probs and a NaN row excluded from p_mean.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor probs2 = FromFloats({0.5f, 0.5f, nan, nan, 1.0f, 0.0f}, {3, 2});
  MOE_ASSERT_OK_AND_ASSIGN(
      RoutingStats s2,
      ComputeRoutingStats(ExecContext::Cpu(), probs2, FromInts({0, 1, 0, 1, 1, 0}, {3, 2})));
  EXPECT_THAT(s2.tokens_per_expert, ElementsAre(3, 3));
  EXPECT_EQ(s2.max_rel_dev, 0.0);
  EXPECT_EQ(s2.min_rel_dev, 0.0);
  EXPECT_EQ(s2.dead_experts, 0);
  EXPECT_EQ(s2.non_finite_rows, 1);
  EXPECT_THAT(s2.p_mean, ElementsAre(0.75, 0.25));
  EXPECT_NEAR(s2.entropy_mean_p, -(0.75 * std::log(0.75) + 0.25 * std::log(0.25)), 1e-12);
}

TEST(RoutingStatsTest, NonFiniteRouterInputIsCounted) {
  Tensor x = RandomNormal({5, 3}, 95);
  x.data<float>()[2 * 3] = std::numeric_limits<float>::infinity();
  const Tensor w = RandomNormal({3, 6}, 96);
  const Tensor logits = HostTensor({5, 6}, DType::kF32), probs = HostTensor({5, 6}, DType::kF32);
  const Tensor idx = HostTensor({5, 2}, DType::kI32), gates = HostTensor({5, 2}, DType::kF32);
  MOE_ASSERT_OK(RouterForward(ExecContext::Cpu(), {6, 2, false}, x, w, TensorView(), logits, probs,
                              idx, gates));
  MOE_ASSERT_OK_AND_ASSIGN(RoutingStats s, ComputeRoutingStats(ExecContext::Cpu(), probs, idx));
  EXPECT_EQ(s.non_finite_rows, 1);
  EXPECT_EQ(idx.data<int32_t>()[4], 0);
  EXPECT_EQ(idx.data<int32_t>()[5], 1);
  double p_total = 0.0;
  for (double v : s.p_mean) p_total += v;
  EXPECT_NEAR(p_total, 1.0, 1e-6);
}

TEST(RoutingStatsTest, BadIndex) {
  const Tensor probs = FromFloats({0.5f, 0.5f}, {1, 2});
  EXPECT_THAT(ComputeRoutingStats(ExecContext::Cpu(), probs, FromInts({2}, {1, 1})),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("topk_idx[0, 0]: got 2")));
}

}  // namespace
}  // namespace smoe
