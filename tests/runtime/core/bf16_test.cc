#include "runtime/core/bf16.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace smoe {
namespace {

TEST(BF16Test, RoundsToNearestEven) {
  // 1.0 is 0x3F80; its bf16 neighbours above are 1 + 2^-7 (0x3F81) and 1 + 2^-6 (0x3F82).
  EXPECT_EQ(FloatToBF16(1.0f).bits, 0x3F80);
  EXPECT_EQ(FloatToBF16(1.0f + 0x1.0p-8f).bits, 0x3F80);               // tie -> even (down)
  EXPECT_EQ(FloatToBF16(1.0f + 3 * 0x1.0p-8f).bits, 0x3F82);           // tie -> even (up)
  EXPECT_EQ(FloatToBF16(1.0f + 0x1.0p-8f + 0x1.0p-20f).bits, 0x3F81);  // above the tie -> up
  EXPECT_EQ(FloatToBF16(-2.0f).bits, 0xC000);
  EXPECT_EQ(FloatToBF16(0.0f).bits, 0x0000);
  EXPECT_EQ(FloatToBF16(-0.0f).bits, 0x8000);
}

TEST(BF16Test, SpecialValues) {
  EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(std::numeric_limits<float>::quiet_NaN()))));
  // A NaN whose payload sits only in the low 16 bits must not become infinity.
  EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(FloatFromBits(0x7F800001u)))));
  EXPECT_EQ(BF16ToFloat(FloatToBF16(std::numeric_limits<float>::infinity())),
            std::numeric_limits<float>::infinity());
  // The largest float rounds past the largest finite bf16: infinity.
  EXPECT_TRUE(std::isinf(BF16ToFloat(FloatToBF16(std::numeric_limits<float>::max()))));
  // Subnormals keep their top bits.
  EXPECT_EQ(FloatToBF16(FloatFromBits(0x00010000u)).bits, 0x0001);
}

TEST(BF16Test, EveryBF16ValueRoundTrips) {
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const BF16 value{static_cast<uint16_t>(bits)};
    const float f = BF16ToFloat(value);
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToBF16(f).bits, value.bits) << "bits " << bits;
  }
}

TEST(BF16Test, RoundingErrorIsAtMostHalfAnUlp) {
  for (int i = 1; i < 20000; ++i) {
    const float x = std::ldexp(static_cast<float>(i) * 0.61803398f, (i % 40) - 20);
    const float r = RoundToBF16(x);
    const float ulp = std::ldexp(1.0f, std::ilogb(x) - 7);
    ASSERT_LE(std::abs(r - x), 0.5f * ulp) << x;
  }
}

}  // namespace
}  // namespace smoe
