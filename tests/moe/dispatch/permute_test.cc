#include "moe/dispatch/permute.h"

#include <tuple>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moe/dispatch/permute_cpu.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/moe/dispatch/dispatch_testing.h"
#include "tests/testing/compare.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using testing::AllClose;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::RandomRouting;
using testing::Skew;
using testing::StatusIs;
using testing::ToDoubles;
using testing::ToInts;

ExecContext& Cpu() { return ExecContext::Cpu(); }

Tensor Empty(Shape shape, DType dtype) { return *Tensor::Empty(shape, dtype, Device::Cpu()); }

Tensor F32(Shape shape, const std::vector<float>& values) {
  Tensor t = Empty(shape, DType::kF32);
  std::copy(values.begin(), values.end(), t.data<float>());
  return t;
}

Tensor Normal(Shape shape, DType dtype, uint64_t seed) {
  Tensor t = Empty(shape, dtype);
  MOE_CHECK_OK(FillNormal(Cpu(), t, seed, 0, 0.0f, 1.0f));
  return t;
}

RoutingPlan Plan(const TensorView& idx, int e_count, float factor) {
  RoutingPlan plan;
  MOE_CHECK_OK(
      BuildRoutingPlan(Cpu(), {e_count, static_cast<int>(idx.dim(1)), factor}, idx, &plan));
  return plan;
}

std::vector<int32_t> Int32s(const TensorView& t) {
  std::vector<int32_t> out;
  for (int64_t v : ToInts(t)) out.push_back(static_cast<int32_t>(v));
  return out;
}

// The hand-worked plan of routing_plan_test: T = 4, K = 2, E = 3, C = 2;
// slots = [[0, 3], [1, 4], [2, -1], [-1, -1]], row_token = [0, 1, 2, 0, 1].
RoutingPlan HandPlan() {
  Tensor idx = Empty({4, 2}, DType::kI32);
  const std::vector<int32_t> ids = {0, 1, 0, 2, 1, 0, 0, 1};
  std::copy(ids.begin(), ids.end(), idx.data<int32_t>());
  return Plan(idx, 3, 0.75f);
}

TEST(PermuteTest, HandWorked) {
  const RoutingPlan plan = HandPlan();
  ASSERT_THAT(ToInts(plan.slots), ElementsAre(0, 3, 1, 4, 2, -1, -1, -1));
  const Tensor x = F32({4, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
  Tensor xs = Empty({5, 2}, DType::kF32);
  MOE_ASSERT_OK(Permute(Cpu(), plan, x, xs));
  EXPECT_THAT(ToDoubles(xs), ElementsAre(1, 2, 3, 4, 5, 6, 1, 2, 3, 4));

  const Tensor ys = F32({5, 2}, {1, 0, 0, 1, 2, 2, -1, 3, 4, -4});
  const Tensor gates = F32({4, 2}, {0.5f, 0.25f, 1, 2, 3, 4, 5, 6});
  Tensor y = Empty({4, 2}, DType::kF32);
  MOE_ASSERT_OK(Combine(Cpu(), plan, ys, gates, y));
  // t0 = 0.5 ys0 + 0.25 ys3; t1 = ys1 + 2 ys4; t2 = 3 ys2 (k = 1 dropped); t3 all dropped.
  EXPECT_THAT(ToDoubles(y), ElementsAre(0.25, 0.75, 8, -7, 6, 6, 0, 0));

  Tensor dx = Empty({4, 2}, DType::kF32);
  MOE_ASSERT_OK(PermuteBackward(Cpu(), plan, ys, dx));
  EXPECT_THAT(ToDoubles(dx), ElementsAre(0, 3, 4, -3, 2, 2, 0, 0));

  const Tensor dy = F32({4, 2}, {1, 1, 2, 0, 0, 1, 9, 9});
  Tensor dys = Empty({5, 2}, DType::kF32);
  Tensor dgates = Empty({4, 2}, DType::kF32);
  MOE_ASSERT_OK(CombineBackward(Cpu(), plan, dy, ys, gates, dys, dgates));
  EXPECT_THAT(ToDoubles(dys), ElementsAre(0.5, 0.5, 2, 0, 0, 3, 0.25, 0.25, 4, 0));
  EXPECT_THAT(ToDoubles(dgates), ElementsAre(1, 2, 0, 8, 2, 0, 0, 0));
}

// Gates that sum to 1 per token (a softmax over K of normals).
Tensor NormalizedGates(int64_t t_count, int64_t k_count, uint64_t seed) {
  Tensor g = Normal({t_count, k_count}, DType::kF32, seed);
  float* p = g.data<float>();
  for (int64_t t = 0; t < t_count; ++t) {
    double sum = 0.0;
    for (int64_t k = 0; k < k_count; ++k) sum += std::exp(p[t * k_count + k]);
    for (int64_t k = 0; k < k_count; ++k) {
      p[t * k_count + k] = static_cast<float>(std::exp(p[t * k_count + k]) / sum);
    }
  }
  return g;
}

TEST(PermuteTest, PermuteThenCombineWithUnitGatesIsTheIdentity) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Tensor idx = RandomRouting(77, 1, 8, 3, Skew::kSkewed);
    const RoutingPlan plan = Plan(idx, 8, 0.0f);
    const Tensor x = Normal({77, 40}, dtype, 5);
    Tensor xs = Empty({plan.num_rows(), 40}, dtype), y = Empty({77, 40}, dtype);
    Tensor gates = Empty({77, 1}, DType::kF32);
    MOE_ASSERT_OK(Fill(Cpu(), gates, 1.0));
    MOE_ASSERT_OK(Permute(Cpu(), plan, x, xs));
    MOE_ASSERT_OK(Combine(Cpu(), plan, xs, gates, y));
    EXPECT_TRUE(testing::AllEqual(y, x)) << DTypeName(dtype);
  }
}

TEST(PermuteTest, PermuteThenCombineWithNormalizedGatesIsTheIdentity) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int k_count : {2, 4}) {
      const Tensor idx = RandomRouting(50, k_count, 6, 9, Skew::kUniform);
      const RoutingPlan plan = Plan(idx, 6, 0.0f);
      const Tensor x = Normal({50, 24}, dtype, 8);
      const Tensor gates = NormalizedGates(50, k_count, 10);
      Tensor xs = Empty({plan.num_rows(), 24}, dtype), y = Empty({50, 24}, dtype);
      MOE_ASSERT_OK(Permute(Cpu(), plan, x, xs));
      MOE_ASSERT_OK(Combine(Cpu(), plan, xs, gates, y));
      EXPECT_TRUE(AllClose(
          y, x,
          dtype == DType::kF32 ? testing::Tolerance{1e-6, 1e-6} : testing::ToleranceFor(dtype)))
          << DTypeName(dtype) << " K=" << k_count;
    }
  }
}

// Every op on random routings (with drops) against the reference run in double from the same
// inputs: the op may differ from it only by its final rounding.
using ReferenceCase = std::tuple<DType, float>;
class PermuteReferenceTest : public ::testing::TestWithParam<ReferenceCase> {};

TEST_P(PermuteReferenceTest, AllOpsMatchDoubleReference) {
  const auto [dtype, factor] = GetParam();
  const int64_t t_count = 53, k_count = 3, m = 19;
  const int e_count = 7;
  const Tensor idx = RandomRouting(t_count, k_count, e_count, 21, Skew::kSkewed);
  const RoutingPlan plan = Plan(idx, e_count, factor);
  const int64_t rows = plan.num_rows();
  if (factor > 0.0f) {
    ASSERT_GT(plan.dropped_host, 0);
  }
  const std::vector<int32_t> slots = Int32s(plan.slots), row_token = Int32s(plan.row_token);
  const testing::Tolerance tol =
      dtype == DType::kF32 ? testing::Tolerance{1e-6, 1e-6} : testing::ToleranceFor(dtype);

  const Tensor x = Normal({t_count, m}, dtype, 31), ys = Normal({rows, m}, dtype, 32),
               dy = Normal({t_count, m}, dtype, 33),
               gates = Normal({t_count, k_count}, DType::kF32, 34);
  const std::vector<double> xd = ToDoubles(x), ysd = ToDoubles(ys), dyd = ToDoubles(dy),
                            gd = ToDoubles(gates);

  Tensor xs = Empty({rows, m}, dtype);
  MOE_ASSERT_OK(Permute(Cpu(), plan, x, xs));
  std::vector<double> want_xs(rows * m);
  reference::Permute(row_token.data(), rows, m, xd.data(), want_xs.data());
  EXPECT_TRUE(AllClose(ToDoubles(xs), want_xs, {0, 0}));

  Tensor dx = Empty({t_count, m}, dtype);
  MOE_ASSERT_OK(PermuteBackward(Cpu(), plan, ys, dx));
  std::vector<double> want_dx(t_count * m);
  reference::PermuteBackward(slots.data(), t_count, k_count, m, ysd.data(), want_dx.data());
  EXPECT_TRUE(AllClose(ToDoubles(dx), want_dx, tol));

  Tensor y = Empty({t_count, m}, dtype);
  MOE_ASSERT_OK(Combine(Cpu(), plan, ys, gates, y));
  std::vector<double> want_y(t_count * m);
  reference::Combine(slots.data(), t_count, k_count, m, ysd.data(), gd.data(), want_y.data());
  EXPECT_TRUE(AllClose(ToDoubles(y), want_y, tol));

  Tensor dys = Empty({rows, m}, dtype), dgates = Empty({t_count, k_count}, DType::kF32);
  MOE_ASSERT_OK(CombineBackward(Cpu(), plan, dy, ys, gates, dys, dgates));
  std::vector<double> want_dys(rows * m), want_dgates(t_count * k_count);
  reference::CombineBackward(slots.data(), t_count, k_count, m, dyd.data(), ysd.data(), gd.data(),
                             want_dys.data(), want_dgates.data());
  EXPECT_TRUE(AllClose(ToDoubles(dys), want_dys, tol));
  EXPECT_TRUE(AllClose(ToDoubles(dgates), want_dgates, {1e-5, 1e-5}));
}

INSTANTIATE_TEST_SUITE_P(DTypesAndCapacity, PermuteReferenceTest,
                         ::testing::Combine(::testing::Values(DType::kF32, DType::kBF16),
                                            ::testing::Values(0.0f, 0.8f)));

// Gradient checks of the reference in double, on a plan with drops: tokens with all, some and
// none of their choices kept.
class PermuteGradientTest : public ::testing::Test {
 protected:
  static constexpr int64_t kT = 9, kK = 2, kM = 5;
  void SetUp() override {
    const Tensor idx = RandomRouting(kT, kK, 3, 4, Skew::kSkewed);
    plan_ = Plan(idx, 3, 0.6f);
    ASSERT_GT(plan_.dropped_host, 0);
    slots_ = Int32s(plan_.slots);
    row_token_ = Int32s(plan_.row_token);
    rows_ = plan_.num_rows();
  }
  RoutingPlan plan_;
  std::vector<int32_t> slots_, row_token_;
  int64_t rows_ = 0;
};

TEST_F(PermuteGradientTest, PermuteWithRespectToX) {
  const std::vector<double> x = ToDoubles(Normal({kT, kM}, DType::kF32, 40));
  const std::vector<double> w = testing::RandomWeights(rows_ * kM, 41);
  auto loss = [&](const std::vector<double>& xv) {
    std::vector<double> xs(rows_ * kM);
    reference::Permute(row_token_.data(), rows_, kM, xv.data(), xs.data());
    double l = 0.0;
    for (size_t i = 0; i < xs.size(); ++i) l += w[i] * xs[i];
    return l;
  };
  std::vector<double> dx(kT * kM);
  reference::PermuteBackward(slots_.data(), kT, kK, kM, w.data(), dx.data());
  EXPECT_TRUE(testing::CheckGradient(loss, x, dx));
}

TEST_F(PermuteGradientTest, CombineWithRespectToYsAndGates) {
  const std::vector<double> ys = ToDoubles(Normal({rows_, kM}, DType::kF32, 50));
  const std::vector<double> gates = ToDoubles(Normal({kT, kK}, DType::kF32, 51));
  const std::vector<double> w = testing::RandomWeights(kT * kM, 52);
  auto loss_of = [&](const std::vector<double>& ysv, const std::vector<double>& gv) {
    std::vector<double> y(kT * kM);
    reference::Combine(slots_.data(), kT, kK, kM, ysv.data(), gv.data(), y.data());
    double l = 0.0;
    for (size_t i = 0; i < y.size(); ++i) l += w[i] * y[i];
    return l;
  };
  std::vector<double> dys(rows_ * kM), dgates(kT * kK);
  reference::CombineBackward(slots_.data(), kT, kK, kM, w.data(), ys.data(), gates.data(),
                             dys.data(), dgates.data());
  EXPECT_TRUE(testing::CheckGradient(
      [&](const std::vector<double>& v) { return loss_of(v, gates); }, ys, dys));
  EXPECT_TRUE(testing::CheckGradient([&](const std::vector<double>& v) { return loss_of(ys, v); },
                                     gates, dgates));
  // Dropped choices get a zero gate gradient.
  for (int64_t pair = 0; pair < kT * kK; ++pair) {
    if (slots_[pair] < 0) {
      EXPECT_EQ(dgates[pair], 0.0) << "pair " << pair;
    }
  }
}

TEST(PermuteTest, RowsBeyondRAreUntouched) {
  const RoutingPlan plan = HandPlan();  // R = 5
  const Tensor x = Normal({4, 3}, DType::kF32, 60), dy = Normal({4, 3}, DType::kF32, 61),
               gates = Normal({4, 2}, DType::kF32, 62);
  Tensor xs = Empty({8, 3}, DType::kF32), dys = Empty({8, 3}, DType::kF32);
  Tensor dgates = Empty({4, 2}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), xs, -7.0));
  MOE_ASSERT_OK(Fill(Cpu(), dys, -7.0));
  MOE_ASSERT_OK(Permute(Cpu(), plan, x, xs));
  MOE_ASSERT_OK(CombineBackward(Cpu(), plan, dy, xs, gates, dys, dgates));
  for (const Tensor* t : {&xs, &dys}) {
    const std::vector<double> v = ToDoubles(*t);
    for (int64_t i = 5 * 3; i < 8 * 3; ++i) EXPECT_EQ(v[i], -7.0) << i;
    for (int64_t i = 0; i < 5 * 3; ++i) EXPECT_NE(v[i], -7.0) << i;
  }
}

TEST(PermuteTest, ZeroTokens) {
  const RoutingPlan plan = Plan(Empty({0, 2}, DType::kI32), 4, 1.0f);
  const Tensor x = Empty({0, 8}, DType::kBF16), gates = Empty({0, 2}, DType::kF32);
  Tensor xs = Empty({0, 8}, DType::kBF16), y = Empty({0, 8}, DType::kBF16);
  Tensor dgates = Empty({0, 2}, DType::kF32);
  MOE_EXPECT_OK(Permute(Cpu(), plan, x, xs));
  MOE_EXPECT_OK(PermuteBackward(Cpu(), plan, xs, y));
  MOE_EXPECT_OK(Combine(Cpu(), plan, xs, gates, y));
  MOE_EXPECT_OK(CombineBackward(Cpu(), plan, x, xs, gates, xs, dgates));
}

TEST(PermuteTest, AllChoicesDroppedGivesZeros) {
  // Every token on expert 0, C = ceil(0.25 * 8 / 2) = 1: only token 0 is kept.
  Tensor idx = Empty({8, 1}, DType::kI32);
  MOE_ASSERT_OK(Fill(Cpu(), idx, 0));
  const RoutingPlan plan = Plan(idx, 2, 0.25f);
  ASSERT_EQ(plan.num_rows(), 1);
  const Tensor ys = Normal({1, 4}, DType::kF32, 70), gates = Normal({8, 1}, DType::kF32, 71);
  Tensor y = Empty({8, 4}, DType::kF32), dx = Empty({8, 4}, DType::kF32);
  MOE_ASSERT_OK(Combine(Cpu(), plan, ys, gates, y));
  MOE_ASSERT_OK(PermuteBackward(Cpu(), plan, ys, dx));
  const std::vector<double> yv = ToDoubles(y), dxv = ToDoubles(dx);
  for (int64_t i = 4; i < 32; ++i) {
    EXPECT_EQ(yv[i], 0.0) << i;
    EXPECT_EQ(dxv[i], 0.0) << i;
  }
  EXPECT_EQ(yv[0], static_cast<float>(double{gates.data<float>()[0]} * ys.data<float>()[0]));
}

TEST(PermuteTest, BadArguments) {
  const RoutingPlan plan = HandPlan();  // T = 4, K = 2, R = 5
  const Tensor x = Normal({4, 3}, DType::kF32, 80), xs = Normal({5, 3}, DType::kF32, 81),
               gates = Normal({4, 2}, DType::kF32, 82);
  const Tensor x_bf16 = Normal({4, 3}, DType::kBF16, 83), short_xs = Empty({4, 3}, DType::kF32),
               x_i32 = Empty({4, 3}, DType::kI32), wide_y = Empty({4, 4}, DType::kF32),
               gates_bf16 = Empty({4, 2}, DType::kBF16), gates_1 = Empty({4, 1}, DType::kF32),
               x_3 = Empty({3, 3}, DType::kF32);
  Tensor y = Empty({4, 3}, DType::kF32), dgates = Empty({4, 2}, DType::kF32);
  auto bad = [](absl::string_view what) {
    return StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(std::string(what)));
  };
  EXPECT_THAT(Permute(Cpu(), plan, x_i32, xs), bad("x.dtype: got i32, expected f32 or bf16"));
  EXPECT_THAT(Permute(Cpu(), plan, x_3, xs), bad("x.shape: got [3, 3]"));
  EXPECT_THAT(Permute(Cpu(), plan, x_bf16, xs), bad("xs.dtype: got f32, expected bf16"));
  EXPECT_THAT(Permute(Cpu(), plan, x, short_xs), bad("xs.shape: got [4, 3], expected at least R"));
  EXPECT_THAT(PermuteBackward(Cpu(), plan, xs, wide_y), bad("dx.shape: got [4, 4]"));
  EXPECT_THAT(PermuteBackward(Cpu(), plan, short_xs, y), bad("dxs.shape"));
  EXPECT_THAT(Combine(Cpu(), plan, xs, gates_bf16, y), bad("gates.dtype: got bf16"));
  EXPECT_THAT(Combine(Cpu(), plan, xs, gates_1, y), bad("gates.shape: got [4, 1]"));
  EXPECT_THAT(Combine(Cpu(), plan, xs, gates, wide_y), bad("y.shape"));
  EXPECT_THAT(Combine(Cpu(), plan, xs, gates, x_bf16), bad("y.dtype"));
  EXPECT_THAT(CombineBackward(Cpu(), plan, x, xs, gates, xs, gates_1), bad("dgates.shape"));
  EXPECT_THAT(CombineBackward(Cpu(), plan, x, short_xs, gates, xs, dgates), bad("ys.shape"));
  EXPECT_THAT(CombineBackward(Cpu(), plan, x_bf16, xs, gates, xs, dgates), bad("ys.dtype"));
  EXPECT_THAT(CombineBackward(Cpu(), plan, x, xs, gates, short_xs, dgates), bad("dys.shape"));
  EXPECT_THAT(Permute(Cpu(), RoutingPlan{}, x, xs), bad("plan"));
  RoutingPlan truncated = plan;
  truncated.offsets_host.pop_back();
  EXPECT_THAT(Combine(Cpu(), truncated, xs, gates, y), bad("plan.offsets_host.size"));
}

}  // namespace
}  // namespace smoe
