#include "runtime/nn/cross_entropy.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/core/philox.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/compare.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::testing::HasSubstr;
using testing::StatusIs;
using testing::ToDoubles;

ExecContext& Cpu() { return ExecContext::Cpu(); }

Tensor Make(Shape shape, DType dtype) { return *Tensor::Empty(shape, dtype, Device::Cpu()); }

Tensor Random(Shape shape, DType dtype, uint64_t seed, float stddev = 2.0f) {
  Tensor t = Make(shape, dtype);
  MOE_CHECK_OK(FillNormal(Cpu(), t, seed, 0, 0.0f, stddev));
  return t;
}

Tensor Targets(const std::vector<int32_t>& values) {
  Tensor t = Make({static_cast<int64_t>(values.size())}, DType::kI32);
  for (size_t i = 0; i < values.size(); ++i) t.data<int32_t>()[i] = values[i];
  return t;
}

// Random classes, every third token ignored.
Tensor RandomTargets(int64_t tokens, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> values(tokens);
  for (int64_t t = 0; t < tokens; ++t) {
    values[t] = t % 3 == 1 ? -1 : static_cast<int32_t>(PhiloxBits(seed, t) % vocab);
  }
  return Targets(values);
}

// Independent double loops: the loss and its gradient (scale 1).
double LossDouble(const std::vector<double>& logits, const std::vector<int32_t>& targets,
                  int64_t vocab, std::vector<double>* grad) {
  const int64_t tokens = static_cast<int64_t>(targets.size());
  int64_t n = 0;
  for (int32_t target : targets) n += target != -1;
  grad->assign(tokens * vocab, 0.0);
  double total = 0.0;
  for (int64_t t = 0; t < tokens; ++t) {
    if (targets[t] == -1) continue;
    double sum = 0.0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(logits[t * vocab + v]);
    total += std::log(sum) - logits[t * vocab + targets[t]];
    for (int64_t v = 0; v < vocab; ++v) {
      (*grad)[t * vocab + v] =
          (std::exp(logits[t * vocab + v]) / sum - (v == targets[t] ? 1.0 : 0.0)) / n;
    }
  }
  return n > 0 ? total / n : 0.0;
}

std::vector<int32_t> ToInts(const TensorView& t) {
  const int32_t* p = t.data<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

TEST(CrossEntropyTest, HandWorkedUniformLogitsWithAnIgnoredRow) {
  Tensor logits = Make({2, 4}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), logits, 0.0));
  logits.data<float>()[4] = 100.0f;  // the ignored row may hold anything
  Tensor targets = Targets({1, -1});
  Tensor dlogits = Make({2, 4}, DType::kF32);
  MOE_ASSERT_OK_AND_ASSIGN(double loss,
                           CrossEntropyForwardBackward(Cpu(), logits, targets, 2.0f, dlogits));
  EXPECT_NEAR(loss, std::log(4.0), 1e-12);
  // N = 1, scale 2: 2 * (1/4 - onehot) on row 0, zeros on row 1.
  EXPECT_EQ(ToDoubles(dlogits), (std::vector<double>{0.5, -1.5, 0.5, 0.5, 0, 0, 0, 0}));
}

TEST(CrossEntropyTest, MatchesDoubleLoops) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (auto [tokens, vocab] : {std::pair<int64_t, int64_t>{1, 1}, {7, 33}, {12, 256}}) {
      Tensor logits = Random({tokens, vocab}, dtype, 3);
      Tensor targets = RandomTargets(tokens, vocab, 4);
      if (tokens == 1) targets.data<int32_t>()[0] = 0;
      Tensor dlogits = Make({tokens, vocab}, dtype);
      MOE_ASSERT_OK_AND_ASSIGN(double loss,
                               CrossEntropyForwardBackward(Cpu(), logits, targets, 1.0f, dlogits));
      std::vector<double> grad;
      const double expected = LossDouble(ToDoubles(logits), ToInts(targets), vocab, &grad);
      EXPECT_NEAR(loss, expected, 1e-9 * (1 + std::abs(expected)));
      EXPECT_TRUE(testing::AllClose(ToDoubles(dlogits), grad, testing::ToleranceFor(dtype)))
          << DTypeName(dtype) << " " << tokens << "x" << vocab;
      MOE_ASSERT_OK_AND_ASSIGN(double eval_loss, CrossEntropyLoss(Cpu(), logits, targets));
      EXPECT_EQ(eval_loss, loss);
    }
  }
}

// fp64 finite differences of the double instantiation, including ignored targets.
TEST(CrossEntropyTest, GradientMatchesFiniteDifferences) {
  const int64_t tokens = 5, vocab = 7;
  const std::vector<double> x = ToDoubles(Random({tokens, vocab}, DType::kF32, 9));
  const std::vector<int32_t> targets = {3, -1, 0, 6, -1};
  auto loss = [&](const std::vector<double>& logits) {
    return internal::CrossEntropyCpu<double>(logits.data(), targets.data(), tokens, vocab, 1.0,
                                             nullptr);
  };
  std::vector<double> grad(tokens * vocab);
  internal::CrossEntropyCpu<double>(x.data(), targets.data(), tokens, vocab, 1.0, grad.data());
  EXPECT_TRUE(testing::CheckGradient(loss, x, grad));
  for (int64_t v = 0; v < vocab; ++v) {
    EXPECT_EQ(grad[1 * vocab + v], 0.0);
    EXPECT_EQ(grad[4 * vocab + v], 0.0);
  }
}

TEST(CrossEntropyTest, ScaleMultipliesTheGradientOnly) {
  const int64_t tokens = 6, vocab = 10;
  Tensor logits = Random({tokens, vocab}, DType::kF32, 12);
  Tensor targets = RandomTargets(tokens, vocab, 13);
  Tensor d1 = Make({tokens, vocab}, DType::kF32), d3 = Make({tokens, vocab}, DType::kF32);
  MOE_ASSERT_OK_AND_ASSIGN(double l1,
                           CrossEntropyForwardBackward(Cpu(), logits, targets, 1.0f, d1));
  MOE_ASSERT_OK_AND_ASSIGN(double l3,
                           CrossEntropyForwardBackward(Cpu(), logits, targets, -0.25f, d3));
  EXPECT_EQ(l1, l3);
  std::vector<double> scaled = ToDoubles(d1);
  for (double& g : scaled) g *= -0.25;
  EXPECT_TRUE(testing::AllClose(ToDoubles(d3), scaled, {1e-7, 1e-6}));
  // Rows of the gradient sum to zero (softmax minus one-hot).
  const std::vector<double> g = ToDoubles(d1);
  for (int64_t t = 0; t < tokens; ++t) {
    double sum = 0.0;
    for (int64_t v = 0; v < vocab; ++v) sum += g[t * vocab + v];
    EXPECT_NEAR(sum, 0.0, 1e-6);
  }
}

TEST(CrossEntropyTest, AllIgnoredGivesZeroLossAndGradient) {
  Tensor logits = Random({3, 5}, DType::kF32, 14);
  Tensor dlogits = Make({3, 5}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), dlogits, 7.0));
  MOE_ASSERT_OK_AND_ASSIGN(double loss, CrossEntropyForwardBackward(
                                            Cpu(), logits, Targets({-1, -1, -1}), 1.0f, dlogits));
  EXPECT_EQ(loss, 0.0);
  EXPECT_EQ(ToDoubles(dlogits), std::vector<double>(15, 0.0));
}

TEST(CrossEntropyTest, AsyncVariantsWriteTheLoss) {
  Tensor logits = Random({8, 19}, DType::kF32, 15);
  Tensor targets = RandomTargets(8, 19, 16);
  Tensor dlogits = Make({8, 19}, DType::kF32), dsync = Make({8, 19}, DType::kF32);
  Tensor loss = Make({1}, DType::kF32);
  MOE_ASSERT_OK_AND_ASSIGN(double expected,
                           CrossEntropyForwardBackward(Cpu(), logits, targets, 1.0f, dsync));
  MOE_ASSERT_OK(CrossEntropyForwardBackwardAsync(Cpu(), logits, targets, 1.0f, dlogits, loss));
  EXPECT_EQ(loss.data<float>()[0], static_cast<float>(expected));
  EXPECT_TRUE(testing::AllEqual(dlogits, dsync));
  MOE_ASSERT_OK(Fill(Cpu(), loss, 0.0));
  MOE_ASSERT_OK(CrossEntropyLossAsync(Cpu(), logits, targets, loss));
  EXPECT_EQ(loss.data<float>()[0], static_cast<float>(expected));
}

TEST(CrossEntropyTest, DlogitsMayAliasLogits) {
  Tensor logits = Random({4, 9}, DType::kF32, 17);
  Tensor targets = Targets({8, 0, -1, 4});
  Tensor dlogits = Make({4, 9}, DType::kF32);
  MOE_ASSERT_OK_AND_ASSIGN(double expected,
                           CrossEntropyForwardBackward(Cpu(), logits, targets, 1.0f, dlogits));
  MOE_ASSERT_OK_AND_ASSIGN(double loss,
                           CrossEntropyForwardBackward(Cpu(), logits, targets, 1.0f, logits));
  EXPECT_EQ(loss, expected);
  EXPECT_TRUE(testing::AllEqual(logits, dlogits));
}

TEST(CrossEntropyTest, NonFiniteLogitGivesNonFiniteLoss) {
  Tensor logits = Random({2, 4}, DType::kF32, 18);
  logits.data<float>()[2] = std::numeric_limits<float>::quiet_NaN();
  MOE_ASSERT_OK_AND_ASSIGN(double loss, CrossEntropyLoss(Cpu(), logits, Targets({0, 1})));
  EXPECT_FALSE(std::isfinite(loss));
}

TEST(CrossEntropyTest, BadArguments) {
  Tensor logits = Random({3, 4}, DType::kF32, 19);
  Tensor dlogits = Make({3, 4}, DType::kF32);
  EXPECT_THAT(CrossEntropyLoss(Cpu(), logits, Targets({0, 4, 1})),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("targets[1]: got 4, expected -1 (ignore) or a class in [0, 4)")));
  EXPECT_THAT(CrossEntropyForwardBackward(Cpu(), logits, Targets({0, 1, -2}), 1.0f, dlogits),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("targets[2]: got -2")));
  EXPECT_THAT(CrossEntropyLoss(Cpu(), logits, Targets({0, 1})),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("targets.shape: got [2]")));
  EXPECT_THAT(CrossEntropyLoss(Cpu(), Make({3, 4}, DType::kI32), Targets({0, 1, 2})),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("logits.dtype")));
  EXPECT_THAT(CrossEntropyForwardBackward(Cpu(), logits, Targets({0, 1, 2}), 1.0f,
                                          Make({3, 4}, DType::kBF16)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dlogits.dtype")));
  EXPECT_THAT(CrossEntropyForwardBackward(Cpu(), logits, Targets({0, 1, 2}),
                                          std::numeric_limits<float>::infinity(), dlogits),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("scale")));
  EXPECT_THAT(CrossEntropyLossAsync(Cpu(), logits, Targets({0, 1, 2}), Make({2}, DType::kF32)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("loss.shape")));
}

}  // namespace
}  // namespace smoe
