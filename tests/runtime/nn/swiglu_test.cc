#include "runtime/nn/swiglu.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/tensor/tensor_ops.h"
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

double SiluDouble(double z) { return z / (1.0 + std::exp(-z)); }

std::vector<double> SwiGLUDouble(const std::vector<double>& h1, const std::vector<double>& h3) {
  std::vector<double> act(h1.size());
  for (size_t i = 0; i < h1.size(); ++i) act[i] = SiluDouble(h1[i]) * h3[i];
  return act;
}

TEST(SwiGLUTest, HandWorkedValues) {
  const double inf = std::numeric_limits<double>::infinity();
  Tensor h1 = FromDoubles({0.0, 1.0, -1.0, 2.0, -200.0, 200.0, -inf}, {7});
  Tensor h3 = FromDoubles({5.0, 2.0, 3.0, -0.5, 4.0, 0.25, 1.0}, {7});
  Tensor act = HostTensor({7});
  MOE_ASSERT_OK(SwiGLU(Cpu(), h1, h3, act));
  const float* a = act.data<float>();
  EXPECT_EQ(a[0], 0.0f);
  EXPECT_NEAR(a[1], 2.0 * 0.7310585786300049, 1e-6);   // silu(1) = sigmoid(1)
  EXPECT_NEAR(a[2], 3.0 * -0.2689414213699951, 1e-6);  // silu(-1) = -sigmoid(-1)
  EXPECT_NEAR(a[3], -0.5 * 1.7615941559557649, 1e-6);  // silu(2) = 2 sigmoid(2)
  EXPECT_EQ(a[4], 0.0f);                               // exp overflows: 0, not NaN
  EXPECT_EQ(a[5], 50.0f);                              // sigmoid saturates at 1
  EXPECT_TRUE(std::isnan(a[6]));                       // -inf * 0 is undefined
}

TEST(SwiGLUTest, ForwardMatchesDoubleReference) {
  for (Shape shape : {Shape{1}, Shape{3, 96}, Shape{17, 33}, Shape{2, 3, 5}}) {
    Tensor h1 = RandomNormal(shape, DType::kF32, 1, 4.0f);
    Tensor h3 = RandomNormal(shape, DType::kF32, 2, 2.0f);
    Tensor act = HostTensor(shape);
    MOE_ASSERT_OK(SwiGLU(Cpu(), h1, h3, act));
    EXPECT_TRUE(
        testing::AllClose(ToDoubles(act), SwiGLUDouble(ToDoubles(h1), ToDoubles(h3)), {1e-6, 1e-6}))
        << shape.ToString();
  }
}

TEST(SwiGLUTest, BackwardMatchesFiniteDifferences) {
  const int64_t n = 64;
  Tensor h1 = RandomNormal({n}, DType::kF32, 3, 3.0f);
  Tensor h3 = RandomNormal({n}, DType::kF32, 4, 2.0f);
  const std::vector<double> w = testing::RandomWeights(n, 5);
  Tensor dact = FromDoubles(w, {n});
  Tensor dh1 = HostTensor({n}), dh3 = HostTensor({n});
  MOE_ASSERT_OK(SwiGLUBackward(Cpu(), h1, h3, dact, dh1, dh3));
  const std::vector<double> x1 = ToDoubles(h1), x3 = ToDoubles(h3);
  auto loss = [&](const std::vector<double>& a, const std::vector<double>& b) {
    const std::vector<double> act = SwiGLUDouble(a, b);
    double l = 0.0;
    for (int64_t i = 0; i < n; ++i) l += w[i] * act[i];
    return l;
  };
  const testing::GradcheckOptions options{1e-6, 1e-6, 1e-5};
  EXPECT_TRUE(testing::CheckGradient([&](const std::vector<double>& a) { return loss(a, x3); }, x1,
                                     ToDoubles(dh1), options));
  EXPECT_TRUE(testing::CheckGradient([&](const std::vector<double>& b) { return loss(x1, b); }, x3,
                                     ToDoubles(dh3), options));
}

TEST(SwiGLUTest, BF16StorageRoundsOnceFromFp32Math) {
  const Shape shape{13, 31};
  Tensor h1 = RandomNormal(shape, DType::kBF16, 6, 3.0f);
  Tensor h3 = RandomNormal(shape, DType::kBF16, 7, 2.0f);
  Tensor dact = RandomNormal(shape, DType::kBF16, 8, 2.0f);
  Tensor act = HostTensor(shape, DType::kBF16);
  Tensor dh1 = HostTensor(shape, DType::kBF16), dh3 = HostTensor(shape, DType::kBF16);
  MOE_ASSERT_OK(SwiGLU(Cpu(), h1, h3, act));
  MOE_ASSERT_OK(SwiGLUBackward(Cpu(), h1, h3, dact, dh1, dh3));
  // The inputs are exact in double; each output is the double value rounded once to bf16, so it
  // is within half a bf16 ulp (2^-8 relative) plus fp32 noise.
  const std::vector<double> a = ToDoubles(h1), b = ToDoubles(h3), g = ToDoubles(dact);
  std::vector<double> e1(a.size()), e3(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const double s = 1.0 / (1.0 + std::exp(-a[i]));
    e1[i] = g[i] * b[i] * (s + a[i] * s * (1.0 - s));
    e3[i] = g[i] * a[i] * s;
  }
  const testing::Tolerance half_ulp{1e-30, 1.0 / 256 + 1e-5};
  EXPECT_TRUE(testing::AllClose(ToDoubles(act), SwiGLUDouble(a, b), half_ulp));
  EXPECT_TRUE(testing::AllClose(ToDoubles(dh1), e1, half_ulp));
  EXPECT_TRUE(testing::AllClose(ToDoubles(dh3), e3, half_ulp));
  // And bf16 really is coarser than f32: not every value is exact.
  EXPECT_FALSE(testing::AllClose(ToDoubles(act), SwiGLUDouble(a, b), {1e-9, 1e-9}));
}

TEST(SwiGLUTest, OutputsMayAliasInputs) {
  const Shape shape{5, 7};
  Tensor h1 = RandomNormal(shape, DType::kF32, 9, 2.0f),
         h3 = RandomNormal(shape, DType::kF32, 10, 2.0f);
  Tensor dact = RandomNormal(shape, DType::kF32, 11, 2.0f);
  Tensor act = HostTensor(shape), dh1 = HostTensor(shape), dh3 = HostTensor(shape);
  MOE_ASSERT_OK(SwiGLU(Cpu(), h1, h3, act));
  MOE_ASSERT_OK(SwiGLUBackward(Cpu(), h1, h3, dact, dh1, dh3));

  MOE_ASSERT_OK_AND_ASSIGN(Tensor h1_copy, CopyTo(Cpu(), h1, Device::Cpu()));
  MOE_ASSERT_OK(SwiGLU(Cpu(), h1_copy, h3, h1_copy));
  EXPECT_TRUE(testing::AllEqual(h1_copy, act));

  MOE_ASSERT_OK_AND_ASSIGN(Tensor g, CopyTo(Cpu(), dact, Device::Cpu()));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor h3_copy, CopyTo(Cpu(), h3, Device::Cpu()));
  MOE_ASSERT_OK(SwiGLUBackward(Cpu(), h1, h3_copy, g, g, h3_copy));
  EXPECT_TRUE(testing::AllEqual(g, dh1));
  EXPECT_TRUE(testing::AllEqual(h3_copy, dh3));
}

TEST(SwiGLUTest, EmptyIsANoOp) {
  Tensor e = HostTensor({0, 4});
  MOE_EXPECT_OK(SwiGLU(Cpu(), e, e, e));
  MOE_EXPECT_OK(SwiGLUBackward(Cpu(), e, e, e, e, e));
}

TEST(SwiGLUTest, BadArguments) {
  Tensor a = HostTensor({2, 3}), b = HostTensor({2, 3}), c = HostTensor({2, 3}),
         d = HostTensor({2, 3});
  Tensor wrong_shape = HostTensor({3, 2});
  Tensor bf16 = HostTensor({2, 3}, DType::kBF16);
  Tensor ints = HostTensor({2, 3}, DType::kI32);
  EXPECT_THAT(SwiGLU(Cpu(), a, wrong_shape, c),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("h3.shape: got [3, 2]")));
  EXPECT_THAT(SwiGLU(Cpu(), a, b, bf16),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("act.dtype: got bf16")));
  EXPECT_THAT(SwiGLU(Cpu(), ints, ints, ints),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("h1.dtype: got i32")));
  EXPECT_THAT(SwiGLUBackward(Cpu(), a, b, c, wrong_shape, d),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dh1.shape")));
  EXPECT_THAT(SwiGLUBackward(Cpu(), a, b, bf16, c, d),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dact.dtype")));
  EXPECT_THAT(SwiGLUBackward(Cpu(), a, b, c, d, d),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dh3.data")));
  const TensorView strided(a.data(), DType::kF32, {2, 2}, {3, 1}, Device::Cpu());
  EXPECT_THAT(SwiGLU(Cpu(), strided, strided, strided),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("h1")));
}

}  // namespace
}  // namespace smoe
