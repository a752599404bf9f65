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
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using testing::Cpu;
using testing::FromInts;
using ::testing::HasSubstr;
using testing::HostTensor;
using testing::RandomNormal;
using testing::StatusIs;
using testing::ToDoubles;

// Random classes, every third token ignored.
Tensor RandomTargets(int64_t tokens, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> values(tokens);
  for (int64_t t = 0; t < tokens; ++t) {
    values[t] = t % 3 == 1 ? -1 : static_cast<int32_t>(PhiloxBits(seed, t) % vocab);
  }
  return FromInts(values);
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
  Tensor logits = HostTensor({2, 4}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), logits, 0.0));
  logits.data<float>()[4] = 100.0f;  // the ignored row may hold anything
  Tensor targets = FromInts({1, -1});
  Tensor dlogits = HostTensor({2, 4}, DType::kF32);
  MOE_ASSERT_OK_AND_ASSIGN(double loss,
                           CrossEntropyForwardBackward(Cpu(), logits, targets, 2.0f, dlogits));
  EXPECT_NEAR(loss, std::log(4.0), 1e-12);
  // N = 1, scale 2: 2 * (1/4 - onehot) on row 0, zeros on row 1.
  EXPECT_EQ(ToDoubles(dlogits), (std::vector<double>{0.5, -1.5, 0.5, 0.5, 0, 0, 0, 0}));
}

TEST(CrossEntropyTest, MatchesDoubleLoops) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (auto [tokens, vocab] : {std::pair<int64_t, int64_t>{1, 1}, {7, 33}, {12, 256}}) {
      Tensor logits = RandomNormal({tokens, vocab}, dtype, 3, 2.0f);
      Tensor targets = RandomTargets(tokens, vocab, 4);
      if (tokens == 1) targets.data<int32_t>()[0] = 0;
      Tensor dlogits = HostTensor({tokens, vocab}, dtype);
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
  const std::vector<double> x = ToDoubles(RandomNormal({tokens, vocab}, DType::kF32, 9, 2.0f));
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
  Tensor logits = RandomNormal({tokens, vocab}, DType::kF32, 12, 2.0f);
  Tensor targets = RandomTargets(tokens, vocab, 13);
  Tensor d1 = HostTensor({tokens, vocab}, DType::kF32),
         d3 = HostTensor({tokens, vocab}, DType::kF32);
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
  Tensor logits = RandomNormal({3, 5}, DType::kF32, 14, 2.0f);
  Tensor dlogits = HostTensor({3, 5}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), dlogits, 7.0));
  MOE_ASSERT_OK_AND_ASSIGN(double loss, CrossEntropyForwardBackward(
                                            Cpu(), logits, FromInts({-1, -1, -1}), 1.0f, dlogits));
  EXPECT_EQ(loss, 0.0);
  EXPECT_EQ(ToDoubles(dlogits), std::vector<double>(15, 0.0));
}

TEST(CrossEntropyTest, AsyncVariantsWriteTheLoss) {
  Tensor logits = RandomNormal({8, 19}, DType::kF32, 15, 2.0f);
  Tensor targets = RandomTargets(8, 19, 16);
  Tensor dlogits = HostTensor({8, 19}, DType::kF32), dsync = HostTensor({8, 19}, DType::kF32);
  Tensor loss = HostTensor({1}, DType::kF32);
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
  Tensor logits = RandomNormal({4, 9}, DType::kF32, 17, 2.0f);
  Tensor targets = FromInts({8, 0, -1, 4});
  Tensor dlogits = HostTensor({4, 9}, DType::kF32);
  MOE_ASSERT_OK_AND_ASSIGN(double expected,
                           CrossEntropyForwardBackward(Cpu(), logits, targets, 1.0f, dlogits));
  MOE_ASSERT_OK_AND_ASSIGN(double loss,
                           CrossEntropyForwardBackward(Cpu(), logits, targets, 1.0f, logits));
  EXPECT_EQ(loss, expected);
  EXPECT_TRUE(testing::AllEqual(logits, dlogits));
}

TEST(CrossEntropyTest, NonFiniteLogitGivesNonFiniteLoss) {
  Tensor logits = RandomNormal({2, 4}, DType::kF32, 18, 2.0f);
  logits.data<float>()[2] = std::numeric_limits<float>::quiet_NaN();
  MOE_ASSERT_OK_AND_ASSIGN(double loss, CrossEntropyLoss(Cpu(), logits, FromInts({0, 1})));
  EXPECT_FALSE(std::isfinite(loss));
}

TEST(CrossEntropyTest, BadArguments) {
  Tensor logits = RandomNormal({3, 4}, DType::kF32, 19, 2.0f);
  Tensor dlogits = HostTensor({3, 4}, DType::kF32);
  EXPECT_THAT(CrossEntropyLoss(Cpu(), logits, FromInts({0, 4, 1})),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("targets[1]: got 4, expected -1 (ignore) or a class in [0, 4)")));
  EXPECT_THAT(CrossEntropyForwardBackward(Cpu(), logits, FromInts({0, 1, -2}), 1.0f, dlogits),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("targets[2]: got -2")));
  EXPECT_THAT(CrossEntropyLoss(Cpu(), logits, FromInts({0, 1})),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("targets.shape: got [2]")));
  EXPECT_THAT(CrossEntropyLoss(Cpu(), HostTensor({3, 4}, DType::kI32), FromInts({0, 1, 2})),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("logits.dtype")));
  EXPECT_THAT(CrossEntropyForwardBackward(Cpu(), logits, FromInts({0, 1, 2}), 1.0f,
                                          HostTensor({3, 4}, DType::kBF16)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dlogits.dtype")));
  EXPECT_THAT(CrossEntropyForwardBackward(Cpu(), logits, FromInts({0, 1, 2}),
                                          std::numeric_limits<float>::infinity(), dlogits),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("scale")));
  EXPECT_THAT(
      CrossEntropyLossAsync(Cpu(), logits, FromInts({0, 1, 2}), HostTensor({2}, DType::kF32)),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("loss.shape")));
}

}  // namespace
}  // namespace smoe
