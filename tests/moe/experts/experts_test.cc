#include "moe/experts/experts.h"

#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/blas/gemm.h"
#include "runtime/core/bf16.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/moe/experts/experts_reference.h"
#include "tests/testing/compare.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using testing::Cpu;
using testing::FromDoubles;
using ::testing::HasSubstr;
using testing::HostTensor;
using testing::RandomNormal;
using testing::StatusIs;
using testing::ToDoubles;

// One expert problem on the CPU: random inputs, outputs poisoned with NaN.
struct Problem {
  int64_t experts, m, h, rows;
  std::vector<int64_t> offsets;
  DType dtype;
  Tensor xs, w1, w3, w2, h1, h3, act, ys;

  ExpertWeights weights() const { return {w1, w3, w2}; }
  ExpertActivations saved() const { return {h1, h3, act}; }
};

Problem MakeProblem(int64_t m, int64_t h, std::vector<int64_t> offsets, DType dtype,
                    uint64_t seed = 1) {
  Problem p;
  p.experts = static_cast<int64_t>(offsets.size()) - 1;
  p.m = m;
  p.h = h;
  p.rows = offsets.back();
  p.offsets = std::move(offsets);
  p.dtype = dtype;
  p.xs = RandomNormal({p.rows, m}, dtype, seed, 1.0f);
  p.w1 = RandomNormal({p.experts, m, h}, dtype, seed + 1, 1.0f / std::sqrt(float(m)));
  p.w3 = RandomNormal({p.experts, m, h}, dtype, seed + 2, 1.0f / std::sqrt(float(m)));
  p.w2 = RandomNormal({p.experts, h, m}, dtype, seed + 3, 1.0f / std::sqrt(float(h)));
  for (Tensor* t : {&p.h1, &p.h3, &p.act}) *t = HostTensor({p.rows, h}, dtype);
  p.ys = HostTensor({p.rows, m}, dtype);
  for (Tensor* t : {&p.h1, &p.h3, &p.act, &p.ys}) {
    MOE_CHECK_OK(Fill(Cpu(), *t, std::numeric_limits<double>::quiet_NaN()));
  }
  return p;
}

testing::ExpertsReferenceForwardResult<double> Reference(const Problem& p) {
  std::function<double(double)> store = [](double v) { return v; };
  if (p.dtype == DType::kBF16) {
    store = [](double v) { return double{RoundToBF16(static_cast<float>(v))}; };
  }
  return testing::ExpertsReferenceForward<double>(ToDoubles(p.xs), ToDoubles(p.w1), ToDoubles(p.w3),
                                                  ToDoubles(p.w2), p.offsets, p.m, p.h, store);
}

struct Grads {
  Tensor dxs, dw1, dw3, dw2;
  ExpertGrads view() const { return {dw1, dw3, dw2}; }
};

Grads MakeGrads(const Problem& p, double fill = std::numeric_limits<double>::quiet_NaN()) {
  Grads g{HostTensor({p.rows, p.m}, p.dtype), HostTensor({p.experts, p.m, p.h}, DType::kF32),
          HostTensor({p.experts, p.m, p.h}, DType::kF32),
          HostTensor({p.experts, p.h, p.m}, DType::kF32)};
  for (Tensor* t : {&g.dxs, &g.dw1, &g.dw3, &g.dw2}) MOE_CHECK_OK(Fill(Cpu(), *t, fill));
  return g;
}

const std::vector<std::vector<int64_t>>& OffsetCases() {
  static const auto* cases = new std::vector<std::vector<int64_t>>{
      {0, 3, 3, 9, 9, 10},  // empty experts, at the start of the buffer and between
      {0, 0, 7, 7},         // empty first and last experts
      {0, 5},               // E_l = 1
      {0, 0, 0, 0},         // R = 0
      {0, 0, 11, 11, 11},   // one expert holds every row
      {0, 1, 2, 3},         // one row each
  };
  return *cases;
}

TEST(ExpertsTest, HandWorkedSingleElement) {
  // M = H = 1: y = silu(x w1) * (x w3) * w2 = silu(1) * 2 * 3 = 6 sigmoid(1).
  Problem p = MakeProblem(1, 1, {0, 1}, DType::kF32);
  p.xs.data<float>()[0] = 1.0f;
  p.w1.data<float>()[0] = 1.0f;
  p.w3.data<float>()[0] = 2.0f;
  p.w2.data<float>()[0] = 3.0f;
  MOE_ASSERT_OK(ExpertsForward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), p.ys));
  const double sig = 0.7310585786300049;
  EXPECT_NEAR(p.h1.data<float>()[0], 1.0, 1e-7);
  EXPECT_NEAR(p.h3.data<float>()[0], 2.0, 1e-7);
  EXPECT_NEAR(p.act.data<float>()[0], 2.0 * sig, 1e-6);
  EXPECT_NEAR(p.ys.data<float>()[0], 6.0 * sig, 1e-6);
  // With dy = 1: dact = 3, dh1 = 3 * 2 * silu'(1), dh3 = 3 * silu(1);
  // dx = dh1 w1 + dh3 w3, dw1 = x dh1, dw3 = x dh3, dw2 = act dy.
  Grads g = MakeGrads(p);
  Tensor dys = FromDoubles({1.0}, {1, 1}, DType::kF32);
  MOE_ASSERT_OK(
      ExpertsBackward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), dys, g.dxs, g.view()));
  const double dsilu = sig * (1.0 + 1.0 * (1.0 - sig));
  const double dh1 = 6.0 * dsilu, dh3 = 3.0 * sig;
  EXPECT_NEAR(g.dxs.data<float>()[0], dh1 * 1.0 + dh3 * 2.0, 1e-5);
  EXPECT_NEAR(g.dw1.data<float>()[0], dh1, 1e-5);
  EXPECT_NEAR(g.dw3.data<float>()[0], dh3, 1e-5);
  EXPECT_NEAR(g.dw2.data<float>()[0], 2.0 * sig, 1e-6);
}

TEST(ExpertsTest, ForwardMatchesLoopReferenceF32) {
  for (const auto& offsets : OffsetCases()) {
    Problem p = MakeProblem(8, 12, offsets, DType::kF32);
    MOE_ASSERT_OK(ExpertsForward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), p.ys));
    const auto ref = Reference(p);
    const testing::Tolerance tol{1e-5, 1e-5};
    EXPECT_TRUE(testing::AllClose(ToDoubles(p.ys), ref.ys, tol)) << p.rows << " rows";
    EXPECT_TRUE(testing::AllClose(ToDoubles(p.h1), ref.h1, tol));
    EXPECT_TRUE(testing::AllClose(ToDoubles(p.h3), ref.h3, tol));
    EXPECT_TRUE(testing::AllClose(ToDoubles(p.act), ref.act, tol));
  }
}

TEST(ExpertsTest, ForwardMatchesLoopReferenceBF16) {
  for (const auto& offsets : OffsetCases()) {
    Problem p = MakeProblem(16, 24, offsets, DType::kBF16, 7);
    MOE_ASSERT_OK(ExpertsForward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), p.ys));
    const auto ref = Reference(p);  // rounds h1, h3 and act to bf16 as the op stores them
    // fp32 vs double sums may round an intermediate to the neighbouring bf16 value; that and the
    // final rounding stay within a few bf16 ulps.
    const testing::Tolerance tol{2e-2, 2e-2};
    EXPECT_TRUE(testing::AllClose(ToDoubles(p.ys), ref.ys, tol)) << p.rows << " rows";
    EXPECT_TRUE(testing::AllClose(ToDoubles(p.act), ref.act, tol));
    EXPECT_LT(testing::Nmse(ToDoubles(p.ys), ref.ys), 1e-4);
  }
}

TEST(ExpertsTest, ForwardRowsDependOnlyOnTheirOwnExpert) {
  // Moving a row from expert 1 to expert 2 changes that row's output only.
  Problem a = MakeProblem(6, 10, {0, 2, 5, 8}, DType::kF32, 3);
  Problem b = MakeProblem(6, 10, {0, 2, 4, 8}, DType::kF32, 3);
  MOE_ASSERT_OK(ExpertsForward(Cpu(), a.weights(), a.xs, a.offsets, a.saved(), a.ys));
  MOE_ASSERT_OK(ExpertsForward(Cpu(), b.weights(), b.xs, b.offsets, b.saved(), b.ys));
  const std::vector<double> ya = ToDoubles(a.ys), yb = ToDoubles(b.ys);
  for (int64_t r = 0; r < 8; ++r) {
    for (int64_t i = 0; i < 6; ++i) {
      if (r == 4) {
        EXPECT_NE(ya[r * 6 + i], yb[r * 6 + i]);
      } else {
        EXPECT_EQ(ya[r * 6 + i], yb[r * 6 + i]) << r << ", " << i;
      }
    }
  }
}

TEST(ExpertsTest, BackwardMatchesFiniteDifferencesOfReference) {
  // f32 analytic gradients from ExpertsBackward against central differences of the double
  // reference, for the loss L = sum(dys * ys). Expert 1 is empty.
  const int64_t m = 4, h = 5;
  Problem p = MakeProblem(m, h, {0, 3, 3, 7}, DType::kF32, 11);
  MOE_ASSERT_OK(ExpertsForward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), p.ys));
  const std::vector<double> w = testing::RandomWeights(p.rows * m, 12);
  Tensor dys = FromDoubles(w, {p.rows, m}, DType::kF32);
  Grads g = MakeGrads(p);
  MOE_ASSERT_OK(
      ExpertsBackward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), dys, g.dxs, g.view()));

  std::vector<double> xs = ToDoubles(p.xs), w1 = ToDoubles(p.w1), w3 = ToDoubles(p.w3),
                      w2 = ToDoubles(p.w2);
  auto loss = [&]() {
    const auto out = testing::ExpertsReferenceForward<double>(xs, w1, w3, w2, p.offsets, m, h);
    double l = 0.0;
    for (size_t i = 0; i < w.size(); ++i) l += w[i] * out.ys[i];
    return l;
  };
  // Returns f(x) with `target` temporarily replaced by x.
  auto over = [&](std::vector<double>& target) {
    return [&target, &loss](const std::vector<double>& x) {
      const std::vector<double> saved = target;
      target = x;
      const double l = loss();
      target = saved;
      return l;
    };
  };
  // The analytic side is f32 (relative error ~1e-6); the numeric side is double.
  const testing::GradcheckOptions options{1e-6, 2e-5, 2e-4};
  EXPECT_TRUE(testing::CheckGradient(over(xs), xs, ToDoubles(g.dxs), options)) << "dxs";
  EXPECT_TRUE(testing::CheckGradient(over(w1), w1, ToDoubles(g.dw1), options)) << "dw1";
  EXPECT_TRUE(testing::CheckGradient(over(w3), w3, ToDoubles(g.dw3), options)) << "dw3";
  EXPECT_TRUE(testing::CheckGradient(over(w2), w2, ToDoubles(g.dw2), options)) << "dw2";
  // The empty expert's gradients are exactly zero (the NaN poison is gone).
  for (const Tensor* t : {&g.dw1, &g.dw3, &g.dw2}) {
    const std::vector<double> v = ToDoubles(*t);
    for (int64_t i = m * h; i < 2 * m * h; ++i) ASSERT_EQ(v[i], 0.0) << i;
  }
}

TEST(ExpertsTest, DoubleReferenceBackwardMatchesFiniteDifferences) {
  // The reference's own analytic backward, all in double, at tight tolerance: it is then a
  // trustworthy oracle for the larger shape and bf16 comparisons below.
  const int64_t m = 3, h = 4;
  const std::vector<int64_t> offsets = {0, 2, 2, 5};
  std::vector<double> xs = ToDoubles(RandomNormal({5, m}, DType::kF32, 21, 1.0f));
  std::vector<double> w1 = ToDoubles(RandomNormal({3, m, h}, DType::kF32, 22, 0.7f));
  std::vector<double> w3 = ToDoubles(RandomNormal({3, m, h}, DType::kF32, 23, 0.7f));
  std::vector<double> w2 = ToDoubles(RandomNormal({3, h, m}, DType::kF32, 24, 0.7f));
  const std::vector<double> dys = testing::RandomWeights(5 * m, 25);
  const auto g = testing::ExpertsReferenceBackward<double>(xs, w1, w3, w2, offsets, m, h, dys);
  auto over = [&](std::vector<double>& target) {
    return [&](const std::vector<double>& x) {
      const std::vector<double> saved = target;
      target = x;
      const auto out = testing::ExpertsReferenceForward<double>(xs, w1, w3, w2, offsets, m, h);
      target = saved;
      double l = 0.0;
      for (size_t i = 0; i < dys.size(); ++i) l += dys[i] * out.ys[i];
      return l;
    };
  };
  EXPECT_TRUE(testing::CheckGradient(over(xs), xs, g.dxs));
  EXPECT_TRUE(testing::CheckGradient(over(w1), w1, g.dw1));
  EXPECT_TRUE(testing::CheckGradient(over(w3), w3, g.dw3));
  EXPECT_TRUE(testing::CheckGradient(over(w2), w2, g.dw2));
}

void CheckBackwardAgainstReference(const Problem& p, const Tensor& dys, const Grads& g,
                                   testing::Tolerance tol) {
  const auto ref = testing::ExpertsReferenceBackward<double>(ToDoubles(p.xs), ToDoubles(p.w1),
                                                             ToDoubles(p.w3), ToDoubles(p.w2),
                                                             p.offsets, p.m, p.h, ToDoubles(dys));
  EXPECT_TRUE(testing::AllClose(ToDoubles(g.dxs), ref.dxs, tol)) << "dxs";
  EXPECT_TRUE(testing::AllClose(ToDoubles(g.dw1), ref.dw1, tol)) << "dw1";
  EXPECT_TRUE(testing::AllClose(ToDoubles(g.dw3), ref.dw3, tol)) << "dw3";
  EXPECT_TRUE(testing::AllClose(ToDoubles(g.dw2), ref.dw2, tol)) << "dw2";
}

TEST(ExpertsTest, BackwardMatchesReferenceOnEveryOffsetCase) {
  for (const auto& offsets : OffsetCases()) {
    Problem p = MakeProblem(8, 12, offsets, DType::kF32, 31);
    MOE_ASSERT_OK(ExpertsForward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), p.ys));
    Tensor dys = RandomNormal({p.rows, p.m}, DType::kF32, 32, 1.0f);
    Grads g = MakeGrads(p);
    MOE_ASSERT_OK(
        ExpertsBackward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), dys, g.dxs, g.view()));
    SCOPED_TRACE(::testing::Message() << p.rows << " rows, " << p.experts << " experts");
    CheckBackwardAgainstReference(p, dys, g, {2e-5, 2e-5});
  }
}

TEST(ExpertsTest, BackwardBF16ByTolerance) {
  Problem p = MakeProblem(16, 24, {0, 5, 5, 20, 33}, DType::kBF16, 41);
  MOE_ASSERT_OK(ExpertsForward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), p.ys));
  Tensor dys = RandomNormal({p.rows, p.m}, DType::kBF16, 42, 1.0f);
  Grads g = MakeGrads(p);
  MOE_ASSERT_OK(
      ExpertsBackward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), dys, g.dxs, g.view()));
  // The exact-math reference ignores the bf16 rounding of h1, h3, act and the scratch
  // gradients; the errors are a few bf16 ulps of terms summed over up to 24 products.
  const auto ref = testing::ExpertsReferenceBackward<double>(ToDoubles(p.xs), ToDoubles(p.w1),
                                                             ToDoubles(p.w3), ToDoubles(p.w2),
                                                             p.offsets, p.m, p.h, ToDoubles(dys));
  EXPECT_TRUE(testing::AllClose(ToDoubles(g.dxs), ref.dxs, {6e-2, 3e-2}));
  EXPECT_TRUE(testing::AllClose(ToDoubles(g.dw1), ref.dw1, {6e-2, 3e-2}));
  EXPECT_TRUE(testing::AllClose(ToDoubles(g.dw3), ref.dw3, {6e-2, 3e-2}));
  EXPECT_TRUE(testing::AllClose(ToDoubles(g.dw2), ref.dw2, {6e-2, 3e-2}));
  for (auto [actual, expected] :
       {std::pair{&g.dxs, &ref.dxs}, {&g.dw1, &ref.dw1}, {&g.dw3, &ref.dw3}, {&g.dw2, &ref.dw2}}) {
    EXPECT_LT(testing::Nmse(ToDoubles(*actual), *expected), 1e-4);
  }
}

// The bf16 rounding of the contract: each weight gradient is its product rounded to bf16 once
// (here dW2 = act^T dY, recomputed by a bf16-output grouped GEMM), added to the f32 gradient in
// f32; an empty expert adds nothing.
TEST(ExpertsTest, BF16WeightGradsAreProductsRoundedOnceThenAddedInF32) {
  Problem p = MakeProblem(16, 24, {0, 5, 5, 20, 33}, DType::kBF16, 71);
  MOE_ASSERT_OK(ExpertsForward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), p.ys));
  Tensor dys = RandomNormal({p.rows, p.m}, DType::kBF16, 72, 1.0f);
  Grads fresh = MakeGrads(p);
  MOE_ASSERT_OK(ExpertsBackward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), dys, fresh.dxs,
                                fresh.view()));
  for (const Tensor* t : {&fresh.dw1, &fresh.dw3, &fresh.dw2}) {
    for (double v : ToDoubles(*t)) {
      ASSERT_EQ(v, double{RoundToBF16(static_cast<float>(v))}) << "not a bf16 value: " << v;
    }
  }
  Tensor dw2 = HostTensor({p.experts, p.h, p.m}, DType::kBF16);
  MOE_ASSERT_OK(GroupedGemmRaggedK(Cpu(), p.act, dys, dw2, p.offsets));
  EXPECT_EQ(ToDoubles(fresh.dw2), ToDoubles(dw2));

  Grads acc = MakeGrads(p);
  acc.dw1 = RandomNormal({p.experts, p.m, p.h}, DType::kF32, 73, 1.0f);
  acc.dw3 = RandomNormal({p.experts, p.m, p.h}, DType::kF32, 74, 1.0f);
  acc.dw2 = RandomNormal({p.experts, p.h, p.m}, DType::kF32, 75, 1.0f);
  const std::vector<double> before[3] = {ToDoubles(acc.dw1), ToDoubles(acc.dw3),
                                         ToDoubles(acc.dw2)};
  MOE_ASSERT_OK(ExpertsBackward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), dys, acc.dxs,
                                acc.view(), /*accumulate=*/true));
  const Tensor* after[3] = {&acc.dw1, &acc.dw3, &acc.dw2};
  const Tensor* part[3] = {&fresh.dw1, &fresh.dw3, &fresh.dw2};
  for (int i = 0; i < 3; ++i) {
    const std::vector<double> a = ToDoubles(*after[i]), f = ToDoubles(*part[i]);
    for (size_t j = 0; j < a.size(); ++j) {
      const float sum = static_cast<float>(before[i][j]) + static_cast<float>(f[j]);  // in f32
      ASSERT_EQ(a[j], double{sum}) << i << ", " << j;
    }
  }
  EXPECT_TRUE(testing::AllEqual(acc.dxs, fresh.dxs));
}

TEST(ExpertsTest, AddWeightGradsWritesOrAddsAndChecksDtypes) {
  Tensor parts[3] = {FromDoubles({1.5, -2.0}, {2}, DType::kBF16),
                     FromDoubles({0.25}, {1}, DType::kBF16),
                     FromDoubles({3.0, 4.0, 5.0}, {3}, DType::kBF16)};
  Tensor grads[3] = {FromDoubles({1.0, 1.0}, {2}), FromDoubles({-1.0}, {1}),
                     FromDoubles({0.5, 0.5, 0.5}, {3})};
  const std::array<TensorView, 3> p{parts[0], parts[1], parts[2]};
  const std::array<TensorView, 3> g{grads[0], grads[1], grads[2]};
  MOE_ASSERT_OK(internal::AddWeightGrads(Cpu(), p, g, /*accumulate=*/true));
  EXPECT_EQ(ToDoubles(grads[0]), (std::vector<double>{2.5, -1.0}));
  EXPECT_EQ(ToDoubles(grads[1]), (std::vector<double>{-0.75}));
  EXPECT_EQ(ToDoubles(grads[2]), (std::vector<double>{3.5, 4.5, 5.5}));
  MOE_ASSERT_OK(internal::AddWeightGrads(Cpu(), p, g, /*accumulate=*/false));
  EXPECT_EQ(ToDoubles(grads[2]), (std::vector<double>{3.0, 4.0, 5.0}));
  EXPECT_THAT(internal::AddWeightGrads(Cpu(), g, g, false),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("parts[0].dtype")));
  EXPECT_THAT(internal::AddWeightGrads(Cpu(), p, p, false),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("grads[0].dtype")));
}

TEST(ExpertsTest, AccumulateAddsToExistingGradients) {
  Problem p = MakeProblem(6, 10, {0, 4, 4, 9}, DType::kF32, 51);
  MOE_ASSERT_OK(ExpertsForward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), p.ys));
  Tensor dys = RandomNormal({p.rows, p.m}, DType::kF32, 52, 1.0f);
  Grads fresh = MakeGrads(p);
  MOE_ASSERT_OK(ExpertsBackward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), dys, fresh.dxs,
                                fresh.view()));
  Grads acc = MakeGrads(p);
  acc.dw1 = RandomNormal({3, 6, 10}, DType::kF32, 53, 1.0f);
  acc.dw3 = RandomNormal({3, 6, 10}, DType::kF32, 54, 1.0f);
  acc.dw2 = RandomNormal({3, 10, 6}, DType::kF32, 55, 1.0f);
  const std::vector<double> before1 = ToDoubles(acc.dw1), before3 = ToDoubles(acc.dw3),
                            before2 = ToDoubles(acc.dw2);
  MOE_ASSERT_OK(ExpertsBackward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), dys, acc.dxs,
                                acc.view(), /*accumulate=*/true));
  auto sum = [](const std::vector<double>& a, const std::vector<double>& b) {
    std::vector<double> s(a.size());
    for (size_t i = 0; i < a.size(); ++i) s[i] = a[i] + b[i];
    return s;
  };
  EXPECT_TRUE(
      testing::AllClose(ToDoubles(acc.dw1), sum(before1, ToDoubles(fresh.dw1)), {1e-6, 1e-6}));
  EXPECT_TRUE(
      testing::AllClose(ToDoubles(acc.dw3), sum(before3, ToDoubles(fresh.dw3)), {1e-6, 1e-6}));
  EXPECT_TRUE(
      testing::AllClose(ToDoubles(acc.dw2), sum(before2, ToDoubles(fresh.dw2)), {1e-6, 1e-6}));
  // dxs is never accumulated; the empty expert 1 keeps its gradient bit for bit.
  EXPECT_TRUE(testing::AllEqual(acc.dxs, fresh.dxs));
  const std::vector<double> after1 = ToDoubles(acc.dw1), after2 = ToDoubles(acc.dw2);
  for (int64_t i = 60; i < 120; ++i) {
    ASSERT_EQ(after1[i], before1[i]);
    ASSERT_EQ(after2[i], before2[i]);
  }
}

TEST(ExpertsTest, NoRowsGiveZeroGradientsOrKeepAccumulated) {
  Problem p = MakeProblem(4, 6, {0, 0, 0}, DType::kF32);
  MOE_ASSERT_OK(ExpertsForward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), p.ys));
  Tensor dys = HostTensor({0, 4}, DType::kF32);
  Grads g = MakeGrads(p);  // NaN
  MOE_ASSERT_OK(
      ExpertsBackward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), dys, g.dxs, g.view()));
  for (const Tensor* t : {&g.dw1, &g.dw3, &g.dw2}) {
    for (double v : ToDoubles(*t)) ASSERT_EQ(v, 0.0);
  }
  Grads kept = MakeGrads(p, 2.5);
  MOE_ASSERT_OK(ExpertsBackward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), dys, kept.dxs,
                                kept.view(), /*accumulate=*/true));
  for (const Tensor* t : {&kept.dw1, &kept.dw3, &kept.dw2}) {
    for (double v : ToDoubles(*t)) ASSERT_EQ(v, 2.5);
  }
}

TEST(ExpertsTest, DeterministicAndAliasingAllowed) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    Problem p = MakeProblem(8, 12, {0, 3, 3, 9}, dtype, 61);
    MOE_ASSERT_OK(ExpertsForward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), p.ys));
    Tensor dys = RandomNormal({p.rows, p.m}, dtype, 62, 1.0f);
    Grads g = MakeGrads(p);
    MOE_ASSERT_OK(
        ExpertsBackward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), dys, g.dxs, g.view()));
    // ys written over xs, dxs written over dys: the same bits as with separate buffers.
    MOE_ASSERT_OK_AND_ASSIGN(Tensor x_inout, CopyTo(Cpu(), p.xs, Device::Cpu()));
    MOE_ASSERT_OK(ExpertsForward(Cpu(), p.weights(), x_inout, p.offsets, p.saved(), x_inout));
    EXPECT_TRUE(testing::AllEqual(x_inout, p.ys));
    MOE_ASSERT_OK_AND_ASSIGN(Tensor dy_inout, CopyTo(Cpu(), dys, Device::Cpu()));
    Grads g2 = MakeGrads(p);
    MOE_ASSERT_OK(ExpertsBackward(Cpu(), p.weights(), p.xs, p.offsets, p.saved(), dy_inout,
                                  dy_inout, g2.view()));
    EXPECT_TRUE(testing::AllEqual(dy_inout, g.dxs));
    EXPECT_TRUE(testing::AllEqual(g2.dw1, g.dw1));
    EXPECT_TRUE(testing::AllEqual(g2.dw3, g.dw3));
    EXPECT_TRUE(testing::AllEqual(g2.dw2, g.dw2));
    MOE_ASSERT_OK_AND_ASSIGN(Tensor x_as_dx, CopyTo(Cpu(), p.xs, Device::Cpu()));
    Grads g3 = MakeGrads(p);
    MOE_ASSERT_OK(ExpertsBackward(Cpu(), p.weights(), x_as_dx, p.offsets, p.saved(), dys, x_as_dx,
                                  g3.view()));
    EXPECT_TRUE(testing::AllEqual(x_as_dx, g.dxs));
    EXPECT_TRUE(testing::AllEqual(g3.dw1, g.dw1));
    EXPECT_TRUE(testing::AllEqual(g3.dw3, g.dw3));
  }
}

TEST(ExpertsTest, BadArgumentsNameTheField) {
  Problem p = MakeProblem(4, 6, {0, 2, 5}, DType::kF32);
  const ExpertActivations s = p.saved();
  auto fwd = [&](const ExpertWeights& w, const TensorView& xs, std::vector<int64_t> offsets,
                 const ExpertActivations& saved,
                 const TensorView& ys) { return ExpertsForward(Cpu(), w, xs, offsets, saved, ys); };
  auto invalid = [](const char* text) {
    return StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(text));
  };
  Tensor w3_bad = HostTensor({2, 6, 4}, DType::kF32);
  Tensor w2_bf16 = HostTensor({2, 6, 4}, DType::kBF16);
  Tensor w1_int = HostTensor({2, 4, 6}, DType::kI32);
  Tensor w1_2d = HostTensor({4, 6}, DType::kF32);
  Tensor xs_bad = HostTensor({5, 3}, DType::kF32);
  Tensor act_bad = HostTensor({5, 7}, DType::kF32);
  Tensor ys_bf16 = HostTensor({5, 4}, DType::kBF16);
  EXPECT_THAT(fwd({p.w1, w3_bad, p.w2}, p.xs, p.offsets, s, p.ys),
              invalid("w.w3.shape: got [2, 6, 4], expected [2, 4, 6]"));
  EXPECT_THAT(fwd({p.w1, p.w3, w2_bf16}, p.xs, p.offsets, s, p.ys),
              invalid("w.w2.dtype: got bf16, expected f32"));
  EXPECT_THAT(fwd({w1_int, p.w3, p.w2}, p.xs, p.offsets, s, p.ys), invalid("w.w1.dtype: got i32"));
  EXPECT_THAT(fwd({w1_2d, p.w3, p.w2}, p.xs, p.offsets, s, p.ys),
              invalid("w.w1.shape: got [4, 6]"));
  EXPECT_THAT(fwd(p.weights(), xs_bad, p.offsets, s, p.ys), invalid("xs.shape: got [5, 3]"));
  EXPECT_THAT(fwd(p.weights(), p.xs, {0, 5}, s, p.ys), invalid("offsets.size: got 2, expected 3"));
  EXPECT_THAT(fwd(p.weights(), p.xs, {1, 2, 5}, s, p.ys), invalid("offsets[0]: got 1"));
  EXPECT_THAT(fwd(p.weights(), p.xs, {0, 4, 3}, s, p.ys),
              invalid("offsets[2]: got 3, expected >="));
  EXPECT_THAT(fwd(p.weights(), p.xs, {0, 2, 4}, s, p.ys), invalid("offsets[2]: got 4, expected 5"));
  EXPECT_THAT(fwd(p.weights(), p.xs, p.offsets, {p.h1, p.h3, act_bad}, p.ys),
              invalid("saved.act.shape: got [5, 7]"));
  EXPECT_THAT(fwd(p.weights(), p.xs, p.offsets, s, ys_bf16), invalid("ys.dtype: got bf16"));

  Grads g = MakeGrads(p);
  Tensor dys = RandomNormal({5, 4}, DType::kF32, 5, 1.0f);
  Tensor dw1_bf16 = HostTensor({2, 4, 6}, DType::kBF16);
  Tensor dw2_bad = HostTensor({2, 4, 6}, DType::kF32);
  Tensor dys_bad = HostTensor({4, 4}, DType::kF32);
  EXPECT_THAT(
      ExpertsBackward(Cpu(), p.weights(), p.xs, p.offsets, s, dys, g.dxs, {dw1_bf16, g.dw3, g.dw2}),
      invalid("grads.dw1.dtype: got bf16, expected f32"));
  EXPECT_THAT(
      ExpertsBackward(Cpu(), p.weights(), p.xs, p.offsets, s, dys, g.dxs, {g.dw1, g.dw3, dw2_bad}),
      invalid("grads.dw2.shape"));
  EXPECT_THAT(ExpertsBackward(Cpu(), p.weights(), p.xs, p.offsets, s, dys_bad, g.dxs, g.view()),
              invalid("dys.shape: got [4, 4]"));
  EXPECT_THAT(ExpertsBackward(Cpu(), p.weights(), p.xs, p.offsets, s, dys, ys_bf16, g.view()),
              invalid("dxs.dtype"));
  EXPECT_THAT(ExpertsBackward(Cpu(), p.weights(), p.xs, std::vector<int64_t>{0, 6, 5}, s, dys,
                              g.dxs, g.view()),
              invalid("offsets[2]"));
  // Nothing was written by the failed calls.
  for (double v : ToDoubles(g.dw1)) ASSERT_TRUE(std::isnan(v));
}

TEST(ExpertsTest, InitIsDeterministicLayoutIndependentAndScaled) {
  const int64_t e = 4, m = 32, h = 48;
  auto make = [&](int64_t experts, DType dtype) {
    return std::vector<Tensor>{HostTensor({experts, m, h}, dtype),
                               HostTensor({experts, m, h}, dtype),
                               HostTensor({experts, h, m}, dtype)};
  };
  const ExpertInit init{
      .seed = 77, .offset = 1000, .first_expert = 0, .std_in = 0.5f, .std_out = 0.125f};
  std::vector<Tensor> all = make(e, DType::kF32);
  MOE_ASSERT_OK(InitExpertWeights(Cpu(), {all[0], all[1], all[2]}, init));
  // Experts [2, 4) initialized on their own (as a second rank would) equal the global ones.
  std::vector<Tensor> local = make(2, DType::kF32);
  ExpertInit local_init = init;
  local_init.first_expert = 2;
  MOE_ASSERT_OK(InitExpertWeights(Cpu(), {local[0], local[1], local[2]}, local_init));
  for (int j = 0; j < 3; ++j) {
    const std::vector<double> a = ToDoubles(all[j]), b = ToDoubles(local[j]);
    ASSERT_EQ(std::vector<double>(a.begin() + 2 * m * h, a.end()), b) << "matrix " << j;
  }
  // Sample statistics match the requested std; w1 and w3 are different draws.
  auto stddev = [](const std::vector<double>& v) {
    double s = 0.0, s2 = 0.0;
    for (double x : v) s += x, s2 += x * x;
    const double mean = s / v.size();
    return std::sqrt(s2 / v.size() - mean * mean);
  };
  EXPECT_NEAR(stddev(ToDoubles(all[0])), 0.5, 0.02);
  EXPECT_NEAR(stddev(ToDoubles(all[1])), 0.5, 0.02);
  EXPECT_NEAR(stddev(ToDoubles(all[2])), 0.125, 0.005);
  EXPECT_NE(ToDoubles(all[0]), ToDoubles(all[1]));
  // Another seed gives other values; bf16 is the f32 draw rounded.
  std::vector<Tensor> other = make(e, DType::kF32);
  ExpertInit other_init = init;
  other_init.seed = 78;
  MOE_ASSERT_OK(InitExpertWeights(Cpu(), {other[0], other[1], other[2]}, other_init));
  EXPECT_NE(ToDoubles(other[0]), ToDoubles(all[0]));
  std::vector<Tensor> half = make(e, DType::kBF16);
  MOE_ASSERT_OK(InitExpertWeights(Cpu(), {half[0], half[1], half[2]}, init));
  const std::vector<double> f = ToDoubles(all[2]), r = ToDoubles(half[2]);
  for (size_t i = 0; i < f.size(); ++i) {
    ASSERT_EQ(r[i], double{RoundToBF16(static_cast<float>(f[i]))}) << i;
  }
  EXPECT_EQ(ExpertInitStreamLength(e, m, h), uint64_t{3 * e * m * h});
  ExpertInit bad = init;
  bad.first_expert = -1;
  EXPECT_THAT(InitExpertWeights(Cpu(), {all[0], all[1], all[2]}, bad),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("init.first_expert")));
}

}  // namespace
}  // namespace smoe
