#include "runtime/core/cpu_vector.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace smoe {
namespace {

// A loop the compiler vectorizes, as the ops use ExpF (one clone per ISA, cpu_vector.h).
MOE_CPU_CLONES void ExpAll(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = ExpF(x[i]);
}

// Against exp in double over the whole normal range, stepping through ~10^6 values (the
// vectorized loop and its scalar tail both run).
TEST(CpuVectorTest, ExpFIsWithinAFewUlpOverTheNormalRange) {
  std::vector<float> x;
  for (float v = -87.3f; v < 88.72f; v += 0.000173f * (1.0f + std::abs(v))) x.push_back(v);
  x.push_back(0.0f);
  x.push_back(-0.0f);
  x.push_back(88.7228f);
  std::vector<float> y(x.size());
  ExpAll(x.data(), y.data(), static_cast<int64_t>(x.size()));
  double worst = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double want = std::exp(static_cast<double>(x[i]));
    worst = std::max(worst, std::abs(y[i] - want) / want);
  }
  EXPECT_LT(worst, 4e-7) << "over " << x.size() << " points";
}

TEST(CpuVectorTest, ExpFEdgeCases) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> x = {-inf, -1e30f, -88.0f, 89.0f, 1e30f, inf, std::nanf("")};
  std::vector<float> y(x.size());
  ExpAll(x.data(), y.data(), static_cast<int64_t>(x.size()));
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_EQ(y[1], 0.0f);
  EXPECT_GE(y[2], 0.0f);
  EXPECT_LT(y[2], 1e-37f);  // exp(-88) is subnormal: 0 or close
  EXPECT_EQ(y[3], inf);
  EXPECT_EQ(y[4], inf);
  EXPECT_EQ(y[5], inf);
  EXPECT_TRUE(std::isnan(y[6]));  // a NaN stays visible (the NaN policy must see it)
}

TEST(CpuVectorTest, SigmoidFSaturatesWithoutNaN) {
  EXPECT_EQ(SigmoidF(-200.0f), 0.0f);
  EXPECT_EQ(SigmoidF(200.0f), 1.0f);
  EXPECT_NEAR(SigmoidF(0.3f), 1.0 / (1.0 + std::exp(-0.3)), 1e-7);
}

}  // namespace
}  // namespace smoe
