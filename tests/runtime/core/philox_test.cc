#include "runtime/core/philox.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace smoe {
namespace {

// Known-answer vectors of Philox4x32-10 published with Random123 (Salmon et al., SC'11).
TEST(PhiloxTest, KnownAnswers) {
  const PhiloxBlock zero = Philox4x32Raw(PhiloxBlock{{0, 0, 0, 0}}, 0, 0);
  EXPECT_EQ(zero.x[0], 0x6627e8d5u);
  EXPECT_EQ(zero.x[1], 0xe169c58du);
  EXPECT_EQ(zero.x[2], 0xbc57ac4cu);
  EXPECT_EQ(zero.x[3], 0x9b00dbd8u);
  const PhiloxBlock pi = Philox4x32Raw(
      PhiloxBlock{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u, 0x299f31d0u);
  EXPECT_EQ(pi.x[0], 0xd16cfe09u);
  EXPECT_EQ(pi.x[1], 0x94fdccebu);
  EXPECT_EQ(pi.x[2], 0x5001e420u);
  EXPECT_EQ(pi.x[3], 0x24126ea1u);
}

TEST(PhiloxTest, PositionsAreIndependentOfOrder) {
  EXPECT_EQ(PhiloxBits(42, 5), Philox4x32(42, 1).x[1]);
  EXPECT_NE(PhiloxBits(42, 5), PhiloxBits(43, 5));
  EXPECT_NE(PhiloxBits(42, 5), PhiloxBits(42, 6));
}

TEST(PhiloxTest, UniformMoments) {
  const int n = 200000;
  double sum = 0.0, sum_sq = 0.0;
  for (int i = 0; i < n; ++i) {
    const float u = PhiloxUniform(7, i);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
    sum_sq += double{u} * u;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.005);
  EXPECT_NEAR(sum_sq / n - (sum / n) * (sum / n), 1.0 / 12.0, 0.002);
}

TEST(PhiloxTest, NormalMoments) {
  const int n = 200000;
  double sum = 0.0, sum_sq = 0.0, sum_4 = 0.0;
  int beyond_two = 0;
  for (int i = 0; i < n; ++i) {
    const double z = PhiloxNormal(11, i);
    ASSERT_TRUE(std::isfinite(z));
    sum += z;
    sum_sq += z * z;
    sum_4 += z * z * z * z;
    beyond_two += std::abs(z) > 2.0;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sum_sq / n, 1.0, 0.015);
  EXPECT_NEAR(sum_4 / n, 3.0, 0.1);                                 // Gaussian kurtosis
  EXPECT_NEAR(static_cast<double>(beyond_two) / n, 0.0455, 0.003);  // P(|z| > 2)
}

TEST(PhiloxTest, PortableMathIsAccurate) {
  for (int i = 1; i <= 100000; ++i) {
    const float x = static_cast<float>(i) / 100000.0f;
    ASSERT_NEAR(internal::PortableLog(x), std::log(double{x}), 2e-7 + 6e-8 * std::abs(std::log(x)))
        << x;  // ~1 ulp
    float s, c;
    internal::PortableSinCosTurns(x - 1e-5f, &s, &c);
    const double angle = 2.0 * M_PI * double{x - 1e-5f};
    ASSERT_NEAR(s, std::sin(angle), 3e-7) << x;
    ASSERT_NEAR(c, std::cos(angle), 3e-7) << x;
  }
}

}  // namespace
}  // namespace smoe
