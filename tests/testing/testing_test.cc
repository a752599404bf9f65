// The test helpers must be able to fail: each is shown a case it has to reject.
#include <cmath>

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
