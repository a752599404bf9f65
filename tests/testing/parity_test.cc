// The parity harness on the CPU alone: its guard bands catch a planted overrun, its argument
// lookup rejects unknown names. (CheckParity itself needs a GPU; CheckGuardedOp runs its steps on
// one backend.)
#include <stdexcept>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/parity.h"

namespace smoe::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

// A CPU test kernel: y = 2 x, then, if `overrun`, one element written just before y and one just
// after it, as an off-by-one kernel would.
Status DoubleKernel(const TensorView& x, const TensorView& y, bool overrun) {
  const float* in = x.data<float>();
  float* out = y.data<float>();
  const int64_t n = y.numel();
  for (int64_t i = 0; i < n; ++i) out[i] = 2.0f * in[i];
  if (overrun) {
    out[-1] = 1.0f;
    out[n] = 1.0f;
  }
  return absl::OkStatus();
}

std::vector<ParityArg> DoubleArgs() {
  return {Input("x", {3, 5}, DType::kF32), Output("y", {3, 5}, DType::kF32)};
}

// CheckGuardedOp on the CPU of DoubleKernel from x into the argument called `out`.
::testing::AssertionResult CheckDouble(const char* out, bool overrun) {
  return CheckGuardedOp(ExecContext::Cpu(), DoubleArgs(), [=](ExecContext&, const ParityArgs& t) {
    return DoubleKernel(t["x"], t[out], overrun);
  });
}

TEST(ParityGuardTest, CorrectOpPasses) { EXPECT_TRUE(CheckDouble("y", /*overrun=*/false)); }

TEST(ParityGuardTest, OverrunOnEitherSideIsReported) {
  const ::testing::AssertionResult result = CheckDouble("y", /*overrun=*/true);
  ASSERT_FALSE(result);
  EXPECT_THAT(result.message(),
              AllOf(HasSubstr("output \"y\" (15 elements): guard before the start overwritten, "
                              "first at offset -1 (1 of 64 guard elements changed)"),
                    HasSubstr("output \"y\" (15 elements): guard after the end overwritten, "
                              "first at offset 15 (1 of 64 guard elements changed)"),
                    Not(HasSubstr("\"x\""))));
}

TEST(ParityGuardTest, ReportsTheChangeNearestToTheArgument) {
  const ::testing::AssertionResult result = CheckGuardedOp(
      ExecContext::Cpu(), {Output("ids", {4}, DType::kI32)}, [](ExecContext&, const ParityArgs& t) {
        int32_t* ids = t["ids"].data<int32_t>();
        for (int64_t i = -5; i < 4 + 7; ++i) ids[i] = 0;  // 5 before, 7 after
        return absl::OkStatus();
      });
  EXPECT_THAT(result.message(), AllOf(HasSubstr("first at offset -1 (5 of 64"),
                                      HasSubstr("first at offset 4 (7 of 64")));
}

TEST(ParityGuardTest, FailedOpIsReported) {
  const ::testing::AssertionResult result =
      CheckGuardedOp(ExecContext::Cpu(), DoubleArgs(),
                     [](ExecContext&, const ParityArgs&) { return absl::InternalError("boom"); });
  EXPECT_THAT(result.message(), HasSubstr("the op failed: INTERNAL: boom"));
}

TEST(ParityArgsTest, LooksUpByName) {
  float a = 1.0f, b = 2.0f;
  const ParityArgs args({"a", "b"}, {TensorView(&a, DType::kF32, {1}, Device::Cpu()),
                                     TensorView(&b, DType::kF32, {1}, Device::Cpu())});
  EXPECT_EQ(args["a"].data(), &a);
  EXPECT_EQ(args["b"].data(), &b);
  try {
    (void)args["c"];
    ADD_FAILURE() << "an unknown name was accepted";
  } catch (const std::out_of_range& e) {
    EXPECT_STREQ(e.what(), "no parity argument named \"c\"; the arguments are: a, b");
  }
}

TEST(ParityArgsTest, UnknownNameFailsTheCheck) {
  const ::testing::AssertionResult result = CheckDouble("out", /*overrun=*/false);
  EXPECT_FALSE(result);
  EXPECT_THAT(result.message(),
              HasSubstr("no parity argument named \"out\"; the arguments are: x, y"));
}

TEST(ParityArgsTest, DuplicateNamesAreRejected) {
  const ::testing::AssertionResult result = CheckGuardedOp(
      ExecContext::Cpu(), {Input("x", {2}, DType::kF32), Output("x", {2}, DType::kF32)},
      [](ExecContext&, const ParityArgs&) { return absl::OkStatus(); });
  EXPECT_THAT(result.message(), HasSubstr("two arguments named \"x\""));
}

}  // namespace
}  // namespace smoe::testing
