// The test helpers must be able to fail: each is shown a case it has to reject.
#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/compare.h"
#include "tests/testing/gradcheck.h"

namespace smoe::testing {
namespace {

TEST(CompareTest, AllCloseRejectsOutOfToleranceAndNaN) {
  EXPECT_TRUE(AllClose(std::vector<double>{1.0, 2.0}, {1.0, 2.0 + 1e-7}, {1e-6, 0}));
  EXPECT_FALSE(AllClose(std::vector<double>{1.0, 2.0}, {1.0, 2.1}, {1e-6, 1e-3}));
  EXPECT_FALSE(AllClose(std::vector<double>{NAN}, {NAN}, {1, 1}));
  EXPECT_FALSE(AllClose(std::vector<double>{1.0}, {1.0, 2.0}, {1, 1}));
  EXPECT_TRUE(AllClose(std::vector<double>{INFINITY}, {INFINITY}, {0, 0}));
}

TEST(CompareTest, NmseIsRelative) {
  EXPECT_DOUBLE_EQ(Nmse({1.0, 2.0}, {1.0, 2.0}), 0.0);
  EXPECT_NEAR(Nmse({1.1, 0.0}, {1.0, 0.0}), 0.01, 1e-12);
}

TEST(CompareTest, NmseWithinBoundsTheNormalisedError) {
  std::vector<float> expected = {3.0f, -4.0f}, close = {3.0f, -4.05f}, nan = {3.0f, NAN};
  auto view = [](std::vector<float>& v) {
    return TensorView(v.data(), DType::kF32, {static_cast<int64_t>(v.size())}, Device::Cpu());
  };
  // 0.05^2 / (3^2 + 4^2) = 1e-4.
  EXPECT_TRUE(NmseWithin(view(expected), view(expected), 0.0));
  EXPECT_TRUE(NmseWithin(view(close), view(expected), 1.01e-4));
  const ::testing::AssertionResult too_far = NmseWithin(view(close), view(expected), 0.99e-4);
  EXPECT_FALSE(too_far);
  EXPECT_THAT(too_far.message(), ::testing::HasSubstr("exceeds 9.9e-05"));
  EXPECT_THAT(too_far.message(), ::testing::HasSubstr("largest difference at [1]"));
  EXPECT_FALSE(NmseWithin(view(nan), view(expected), 1.0));
  EXPECT_FALSE(NmseWithin(view(expected),
                          TensorView(expected.data(), DType::kF32, {1, 2}, Device::Cpu()), 1.0));
}

TEST(GradcheckTest, AcceptsRightAndRejectsWrongGradients) {
  auto f = [](const std::vector<double>& x) { return std::sin(x[0]) * x[1] * x[1]; };
  const std::vector<double> x = {0.3, -1.7};
  const std::vector<double> right = {std::cos(0.3) * x[1] * x[1], 2 * std::sin(0.3) * x[1]};
  EXPECT_TRUE(CheckGradient(f, x, right));
  std::vector<double> wrong = right;
  wrong[1] *= 1.001;
  EXPECT_FALSE(CheckGradient(f, x, wrong));
}

}  // namespace
}  // namespace smoe::testing
