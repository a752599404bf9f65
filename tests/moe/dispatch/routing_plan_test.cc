#include "moe/dispatch/routing_plan.h"

#include <cmath>
#include <limits>
#include <set>
#include <tuple>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/moe/dispatch/dispatch_testing.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using testing::RandomRouting;
using testing::Skew;
using testing::StatusIs;
using testing::ToInts;

Tensor Routing(int64_t t_count, int64_t k_count, const std::vector<int32_t>& ids) {
  Tensor idx = *Tensor::Empty({t_count, k_count}, DType::kI32, Device::Cpu());
  std::copy(ids.begin(), ids.end(), idx.data<int32_t>());
  return idx;
}

std::vector<int64_t> Prefix(const TensorView& t, int64_t n) {
  std::vector<int64_t> all = ToInts(t);
  all.resize(n);
  return all;
}

// Every invariant of a plan, checked directly from its definition (not against a model).
::testing::AssertionResult HasPlanInvariants(const RoutingPlan& plan, const TensorView& topk_idx,
                                             int64_t capacity) {
  const int64_t t_count = plan.num_tokens, k_count = plan.top_k, e_count = plan.num_experts;
  const std::vector<int64_t> idx = ToInts(topk_idx), counts = ToInts(plan.counts),
                             offsets = ToInts(plan.offsets), slots = ToInts(plan.slots),
                             row_token = ToInts(plan.row_token),
                             row_choice = ToInts(plan.row_choice);
  const int64_t rows = plan.num_rows();
  auto fail = [] { return ::testing::AssertionFailure(); };
  if (plan.capacity != capacity) return fail() << "capacity " << plan.capacity;
  // Offsets are the exclusive scan of counts, and the host copy matches.
  if (offsets.front() != 0) return fail() << "offsets[0] = " << offsets.front();
  for (int64_t e = 0; e < e_count; ++e) {
    if (offsets[e + 1] != offsets[e] + counts[e]) return fail() << "offsets at expert " << e;
  }
  if (plan.offsets_host != offsets) return fail() << "offsets_host differs from offsets";
  if (rows != offsets.back()) return fail() << "num_rows " << rows;
  if (plan.dropped_host != t_count * k_count - rows) return fail() << "dropped_host";
  if (ToInts(plan.num_dropped)[0] != plan.dropped_host) return fail() << "num_dropped";
  // Each (token, choice) has at most one slot, each row < R exactly one (token, choice), and the
  // row lies in its expert's range.
  std::vector<int> row_uses(rows, 0);
  for (int64_t pair = 0; pair < t_count * k_count; ++pair) {
    const int64_t row = slots[pair];
    if (row == -1) continue;
    if (row < 0 || row >= rows) return fail() << "slot " << row << " of pair " << pair;
    ++row_uses[row];
    const int64_t e = idx[pair];
    if (row < offsets[e] || row >= offsets[e + 1]) {
      return fail() << "pair " << pair << " of expert " << e << " in row " << row;
    }
    if (row_token[row] != pair / k_count || row_choice[row] != pair) {
      return fail() << "row " << row << " maps back to token " << row_token[row] << ", choice "
                    << row_choice[row] << " instead of pair " << pair;
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (row_uses[r] != 1) return fail() << "row " << r << " used " << row_uses[r] << " times";
  }
  // Priority order: within an expert, rows follow k * T + t; every kept pair precedes every
  // dropped pair; exactly the overflow beyond C is dropped; dropless drops nothing.
  for (int64_t e = 0; e < e_count; ++e) {
    int64_t routed = 0, next_row = offsets[e];
    bool seen_drop = false;
    for (int64_t k = 0; k < k_count; ++k) {
      for (int64_t t = 0; t < t_count; ++t) {
        const int64_t pair = t * k_count + k;
        if (idx[pair] != e) continue;
        ++routed;
        if (slots[pair] == -1) {
          seen_drop = true;
          continue;
        }
        if (seen_drop) return fail() << "pair " << pair << " kept after a dropped one";
        if (slots[pair] != next_row++) return fail() << "pair " << pair << " out of order";
      }
    }
    const int64_t expect_kept = capacity < 0 ? routed : std::min(routed, capacity);
    if (counts[e] != expect_kept) {
      return fail() << "expert " << e << " keeps " << counts[e] << " of " << routed
                    << " routed, expected " << expect_kept;
    }
  }
  if (capacity < 0 && plan.dropped_host != 0) return fail() << "dropless plan dropped pairs";
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult MatchesBruteForce(const RoutingPlan& plan, const TensorView& topk_idx) {
  const testing::ExpectedPlan want = testing::BruteForcePlan(
      ToInts(topk_idx), plan.num_tokens, plan.top_k, plan.num_experts, plan.capacity);
  const int64_t rows = want.offsets.back();
  if (ToInts(plan.counts) != want.counts) return ::testing::AssertionFailure() << "counts";
  if (ToInts(plan.offsets) != want.offsets) return ::testing::AssertionFailure() << "offsets";
  if (ToInts(plan.slots) != want.slots) return ::testing::AssertionFailure() << "slots";
  if (Prefix(plan.row_token, rows) != want.row_token) {
    return ::testing::AssertionFailure() << "row_token";
  }
  if (Prefix(plan.row_choice, rows) != want.row_choice) {
    return ::testing::AssertionFailure() << "row_choice";
  }
  if (plan.dropped_host != want.dropped) return ::testing::AssertionFailure() << "dropped";
  return ::testing::AssertionSuccess();
}

// T = 4, K = 2, E = 3; pairs in priority order: first choices (t0: 0, t1: 0, t2: 1, t3: 0), then
// second choices (t0: 1, t1: 2, t2: 0, t3: 1).
const std::vector<int32_t> kHandIds = {0, 1, 0, 2, 1, 0, 0, 1};

TEST(RoutingPlanTest, HandWorkedWithCapacity) {
  const Tensor idx = Routing(4, 2, kHandIds);
  RoutingPlan plan;
  // C = ceil(0.75 * 4 * 2 / 3) = 2. Expert 0 ranks t0k0, t1k0 | t3k0, t2k1 (dropped); expert 1
  // ranks t2k0, t0k1 | t3k1 (dropped): token 2's first choice beats token 0's second.
  MOE_ASSERT_OK(BuildRoutingPlan(ExecContext::Cpu(), {3, 2, 0.75f}, idx, &plan));
  EXPECT_EQ(plan.capacity, 2);
  EXPECT_THAT(ToInts(plan.counts), ElementsAre(2, 2, 1));
  EXPECT_THAT(ToInts(plan.offsets), ElementsAre(0, 2, 4, 5));
  EXPECT_THAT(plan.offsets_host, ElementsAre(0, 2, 4, 5));
  EXPECT_EQ(plan.num_rows(), 5);
  EXPECT_THAT(ToInts(plan.slots), ElementsAre(0, 3, 1, 4, 2, -1, -1, -1));
  EXPECT_THAT(Prefix(plan.row_token, 5), ElementsAre(0, 1, 2, 0, 1));
  EXPECT_THAT(Prefix(plan.row_choice, 5), ElementsAre(0, 2, 4, 1, 3));
  EXPECT_EQ(plan.dropped_host, 3);
  EXPECT_THAT(ToInts(plan.num_dropped), ElementsAre(3));
}

TEST(RoutingPlanTest, HandWorkedDropless) {
  const Tensor idx = Routing(4, 2, kHandIds);
  RoutingPlan plan;
  MOE_ASSERT_OK(BuildRoutingPlan(ExecContext::Cpu(), {3, 2, 0.0f}, idx, &plan));
  EXPECT_EQ(plan.capacity, -1);
  EXPECT_THAT(ToInts(plan.counts), ElementsAre(4, 3, 1));
  EXPECT_THAT(plan.offsets_host, ElementsAre(0, 4, 7, 8));
  // Expert 0: t0k0, t1k0, t3k0, t2k1; expert 1: t2k0, t0k1, t3k1; expert 2: t1k1.
  EXPECT_THAT(ToInts(plan.slots), ElementsAre(0, 5, 1, 7, 4, 3, 2, 6));
  EXPECT_THAT(ToInts(plan.row_token), ElementsAre(0, 1, 3, 2, 2, 0, 3, 1));
  EXPECT_THAT(ToInts(plan.row_choice), ElementsAre(0, 2, 6, 5, 4, 1, 7, 3));
  EXPECT_EQ(plan.dropped_host, 0);
}

TEST(RoutingPlanTest, FirstChoicesOfLaterTokensBeatSecondChoices) {
  // Every token picks expert 0 second; token 2 picks it first. C = ceil(0.5 * 3 * 2 / 2) = 2.
  const Tensor idx = Routing(3, 2, {1, 0, 1, 0, 0, 1});
  RoutingPlan plan;
  MOE_ASSERT_OK(BuildRoutingPlan(ExecContext::Cpu(), {2, 2, 0.5f}, idx, &plan));
  // Expert 0: t2k0 (row 0), t0k1 (row 1), t1k1 dropped. Expert 1: t0k0, t1k0, t2k1 dropped.
  EXPECT_THAT(ToInts(plan.slots), ElementsAre(2, 1, 3, -1, 0, -1));
  EXPECT_EQ(plan.dropped_host, 2);
}

TEST(RoutingPlanTest, CapacityFormula) {
  EXPECT_EQ(PlanCapacity({4, 1, 1.0f}, 10), 3);      // ceil(2.5)
  EXPECT_EQ(PlanCapacity({8, 2, 1.25f}, 8), 3);      // ceil(2.5)
  EXPECT_EQ(PlanCapacity({4, 2, 1.0f}, 8), 4);       // exact: no rounding up
  EXPECT_EQ(PlanCapacity({96, 1, 2.0f}, 1000), 21);  // ceil(20.83)
  EXPECT_EQ(PlanCapacity({4, 1, 1.0f}, 0), 0);
  EXPECT_EQ(PlanCapacity({4, 1, 0.0f}, 10), -1);
  EXPECT_EQ(PlanCapacity({4, 1, -1.0f}, 10), -1);
}

using RandomCase = std::tuple<std::tuple<int64_t, int, int>, float, Skew>;
class RoutingPlanRandomTest : public ::testing::TestWithParam<RandomCase> {};

TEST_P(RoutingPlanRandomTest, KeepsInvariantsAndMatchesBruteForce) {
  const auto [shape, factor, skew] = GetParam();
  const auto [t_count, k_count, e_count] = shape;
  for (uint64_t seed : {1, 2, 3}) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    const Tensor idx = RandomRouting(t_count, k_count, e_count, seed, skew);
    const PlanConfig config{e_count, k_count, factor};
    RoutingPlan plan;
    MOE_ASSERT_OK(BuildRoutingPlan(ExecContext::Cpu(), config, idx, &plan));
    EXPECT_TRUE(HasPlanInvariants(plan, idx, PlanCapacity(config, t_count)));
    EXPECT_TRUE(MatchesBruteForce(plan, idx));
    if (factor <= 0.0f) {
      EXPECT_EQ(plan.dropped_host, 0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Grid, RoutingPlanRandomTest,
    ::testing::Combine(::testing::Values(std::make_tuple(1, 1, 1), std::make_tuple(1, 4, 4),
                                         std::make_tuple(37, 1, 8), std::make_tuple(100, 2, 8),
                                         std::make_tuple(129, 3, 5), std::make_tuple(64, 8, 8),
                                         std::make_tuple(1000, 1, 96), std::make_tuple(300, 2, 96)),
                       ::testing::Values(0.0f, 0.5f, 1.0f, 1.25f, 2.0f),
                       ::testing::Values(Skew::kUniform, Skew::kSkewed)));

TEST(RoutingPlanTest, SkewedCapacityRoutingActuallyDropsAndLeavesExpertsEmpty) {
  // Guards the random grid against testing only the easy cases.
  const Tensor idx = RandomRouting(300, 2, 96, 5, Skew::kSkewed);
  RoutingPlan plan;
  MOE_ASSERT_OK(BuildRoutingPlan(ExecContext::Cpu(), {96, 2, 1.0f}, idx, &plan));
  EXPECT_GT(plan.dropped_host, 0);
  const std::vector<int64_t> counts = ToInts(plan.counts);
  EXPECT_GT(std::count(counts.begin(), counts.end(), 0), 0);
  EXPECT_TRUE(HasPlanInvariants(plan, idx, plan.capacity));
}

TEST(RoutingPlanTest, ZeroTokens) {
  const Tensor idx = *Tensor::Empty({0, 2}, DType::kI32, Device::Cpu());
  for (float factor : {0.0f, 1.0f}) {
    RoutingPlan plan;
    MOE_ASSERT_OK(BuildRoutingPlan(ExecContext::Cpu(), {4, 2, factor}, idx, &plan));
    EXPECT_THAT(ToInts(plan.counts), ElementsAre(0, 0, 0, 0));
    EXPECT_THAT(ToInts(plan.offsets), ElementsAre(0, 0, 0, 0, 0));
    EXPECT_THAT(plan.offsets_host, ElementsAre(0, 0, 0, 0, 0));
    EXPECT_EQ(plan.num_rows(), 0);
    EXPECT_EQ(plan.slots.shape(), (Shape{0, 2}));
    EXPECT_EQ(plan.row_token.numel(), 0);
    EXPECT_THAT(ToInts(plan.num_dropped), ElementsAre(0));
  }
}

TEST(RoutingPlanTest, SingleTokenSingleExpert) {
  RoutingPlan plan;
  MOE_ASSERT_OK(BuildRoutingPlan(ExecContext::Cpu(), {1, 1, 1.0f}, Routing(1, 1, {0}), &plan));
  EXPECT_EQ(plan.capacity, 1);
  EXPECT_THAT(ToInts(plan.slots), ElementsAre(0));
  EXPECT_THAT(plan.offsets_host, ElementsAre(0, 1));
  EXPECT_EQ(plan.dropped_host, 0);
}

TEST(RoutingPlanTest, TopKEqualsNumExpertsKeepsEverythingAtFactorOne) {
  // K = E: every token uses every expert, T pairs per expert, C = ceil(1.0 * T * E / E) = T.
  const Tensor idx = RandomRouting(9, 4, 4, 11);
  RoutingPlan plan;
  MOE_ASSERT_OK(BuildRoutingPlan(ExecContext::Cpu(), {4, 4, 1.0f}, idx, &plan));
  EXPECT_THAT(ToInts(plan.counts), ElementsAre(9, 9, 9, 9));
  EXPECT_EQ(plan.dropped_host, 0);
  EXPECT_TRUE(HasPlanInvariants(plan, idx, 9));
  // Each expert holds every token exactly once.
  const std::vector<int64_t> row_token = ToInts(plan.row_token);
  for (int e = 0; e < 4; ++e) {
    std::vector<int64_t> expert_tokens(row_token.begin() + 9 * e, row_token.begin() + 9 * e + 9);
    std::set<int64_t> unique(expert_tokens.begin(), expert_tokens.end());
    EXPECT_EQ(unique.size(), 9u) << "expert " << e;
  }
}

TEST(RoutingPlanTest, EveryTokenOnOneExpert) {
  const std::vector<int32_t> ids(10, 2);
  const Tensor idx = Routing(10, 1, ids);
  RoutingPlan capped, dropless;
  // C = ceil(1.0 * 10 / 4) = 3: tokens 0, 1, 2 kept, in token order; experts 0, 1, 3 empty.
  MOE_ASSERT_OK(BuildRoutingPlan(ExecContext::Cpu(), {4, 1, 1.0f}, idx, &capped));
  EXPECT_THAT(ToInts(capped.counts), ElementsAre(0, 0, 3, 0));
  EXPECT_THAT(capped.offsets_host, ElementsAre(0, 0, 0, 3, 3));
  EXPECT_THAT(ToInts(capped.slots), ElementsAre(0, 1, 2, -1, -1, -1, -1, -1, -1, -1));
  EXPECT_EQ(capped.dropped_host, 7);
  MOE_ASSERT_OK(BuildRoutingPlan(ExecContext::Cpu(), {4, 1, 0.0f}, idx, &dropless));
  EXPECT_THAT(ToInts(dropless.counts), ElementsAre(0, 0, 10, 0));
  EXPECT_THAT(ToInts(dropless.slots), ElementsAreArray({0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(dropless.dropped_host, 0);
}

TEST(RoutingPlanTest, RebuildingIsDeterministic) {
  const Tensor idx = RandomRouting(200, 2, 8, 7, Skew::kSkewed);
  RoutingPlan a, b;
  MOE_ASSERT_OK(BuildRoutingPlan(ExecContext::Cpu(), {8, 2, 1.0f}, idx, &a));
  MOE_ASSERT_OK(BuildRoutingPlan(ExecContext::Cpu(), {8, 2, 1.0f}, idx, &b));
  EXPECT_EQ(ToInts(a.slots), ToInts(b.slots));
  EXPECT_EQ(Prefix(a.row_token, a.num_rows()), Prefix(b.row_token, b.num_rows()));
}

TEST(RoutingPlanTest, BadConfig) {
  const Tensor idx = Routing(2, 2, {0, 1, 1, 0});
  RoutingPlan plan;
  EXPECT_THAT(BuildRoutingPlan(ExecContext::Cpu(), {0, 1, 0.0f}, idx, &plan),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("config.num_experts: got 0")));
  EXPECT_THAT(BuildRoutingPlan(ExecContext::Cpu(), {-3, 1, 0.0f}, idx, &plan),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("config.num_experts")));
  EXPECT_THAT(BuildRoutingPlan(ExecContext::Cpu(), {2, 3, 0.0f}, idx, &plan),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("config.top_k: got 3")));
  EXPECT_THAT(BuildRoutingPlan(ExecContext::Cpu(), {2, 0, 0.0f}, idx, &plan),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("config.top_k: got 0")));
  EXPECT_THAT(BuildRoutingPlan(ExecContext::Cpu(), {2, 2, std::numeric_limits<float>::quiet_NaN()},
                               idx, &plan),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("config.capacity_factor")));
  EXPECT_THAT(BuildRoutingPlan(ExecContext::Cpu(), {2, 2, 0.0f}, idx, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("plan")));
}

TEST(RoutingPlanTest, BadTopkIdx) {
  RoutingPlan plan;
  const Tensor f32 = *Tensor::Empty({2, 2}, DType::kF32, Device::Cpu());
  EXPECT_THAT(BuildRoutingPlan(ExecContext::Cpu(), {2, 2, 0.0f}, f32, &plan),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("topk_idx.dtype: got f32, expected i32")));
  EXPECT_THAT(
      BuildRoutingPlan(ExecContext::Cpu(), {4, 3, 0.0f}, Routing(2, 2, {0, 1, 1, 0}), &plan),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("topk_idx.shape: got [2, 2]")));
  const Tensor flat = *Tensor::Empty({4}, DType::kI32, Device::Cpu());
  EXPECT_THAT(BuildRoutingPlan(ExecContext::Cpu(), {2, 2, 0.0f}, flat, &plan),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("topk_idx.shape")));
}

TEST(RoutingPlanTest, OutOfRangeExpertNamesTheToken) {
  RoutingPlan plan;
  EXPECT_THAT(
      BuildRoutingPlan(ExecContext::Cpu(), {3, 2, 1.0f}, Routing(3, 2, {0, 1, 2, 0, 1, 3}), &plan),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("topk_idx[2, 1]: got 3, expected an expert id in [0, 3)")));
  EXPECT_THAT(
      BuildRoutingPlan(ExecContext::Cpu(), {3, 2, 0.0f}, Routing(3, 2, {0, 1, -1, 0, 7, 1}), &plan),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("topk_idx[1, 0]: got -1")));
}

}  // namespace
}  // namespace smoe
