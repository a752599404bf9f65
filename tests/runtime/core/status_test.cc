#include "runtime/core/status.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/core/dtype.h"
#include "runtime/core/shape.h"
#include "runtime/device/device.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::testing::HasSubstr;
using testing::IsOk;
using testing::StatusIs;

Status FailIfNegative(int x) {
  if (x < 0) return BadArgument("x", std::to_string(x), ">= 0");
  return absl::OkStatus();
}

StatusOr<int> Twice(int x) {
  MOE_RETURN_IF_ERROR(FailIfNegative(x));
  return 2 * x;
}

StatusOr<int> FourTimes(int x) {
  MOE_ASSIGN_OR_RETURN(int twice, Twice(x));
  MOE_ASSIGN_OR_RETURN(twice, Twice(twice));  // reassignment of an existing variable
  return twice;
}

TEST(StatusTest, MacrosPropagateErrorsAndValues) {
  EXPECT_EQ(*FourTimes(3), 12);
  EXPECT_THAT(FourTimes(-1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("x: got -1, expected >= 0")));
}

TEST(StatusTest, CheckAbortsWithMessage) {
  EXPECT_DEATH(MOE_CHECK_EQ(1 + 1, 3) << "arithmetic", "1 \\+ 1 == 3 \\(2 vs. 3\\) arithmetic");
  MOE_CHECK(true) << "never printed";
}

TEST(DTypeTest, SizesNamesAndParsing) {
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kI64), 8u);
  EXPECT_EQ(*ParseDType("bf16"), DType::kBF16);
  EXPECT_THAT(ParseDType("f16"), StatusIs(absl::StatusCode::kInvalidArgument,
                                          HasSubstr("dtype: got f16, expected one of")));
}

TEST(ShapeTest, ElementsStridesAndText) {
  Shape shape{2, 3, 4};
  EXPECT_EQ(shape.NumElements(), 24);
  EXPECT_EQ(shape.ContiguousStrides(), (absl::InlinedVector<int64_t, 4>{12, 4, 1}));
  EXPECT_EQ(shape.ToString(), "[2, 3, 4]");
  EXPECT_EQ(Shape{}.NumElements(), 1);
  EXPECT_EQ((Shape{5, 0}).NumElements(), 0);
}

TEST(DeviceTest, ParseAndPrint) {
  EXPECT_EQ(ParseDevice("cpu")->ToString(), "cpu");
  EXPECT_THAT(ParseDevice("tpu"), StatusIs(absl::StatusCode::kInvalidArgument,
                                           HasSubstr("device: got tpu, expected cpu, cuda")));
  EXPECT_THAT(ParseDevice("cuda:x"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cuda:x")));
  if (!CudaAvailable()) {
    EXPECT_THAT(ParseDevice("cuda"),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("visible CUDA device")));
  } else {
    EXPECT_THAT(ParseDevice("cuda:0"), IsOk());
  }
  EXPECT_EQ(Device::Cuda(1).ToString(), "cuda:1");
}

}  // namespace
}  // namespace smoe
