#include "runtime/nn/adamw.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/compare.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using testing::Cpu;
using ::testing::HasSubstr;
using testing::HostTensor;
using testing::RandomNormal;
using testing::StatusIs;
using testing::ToDoubles;

Tensor Zeros(Shape shape) {
  Tensor t = HostTensor(shape, DType::kF32);
  MOE_CHECK_OK(Fill(Cpu(), t, 0.0));
  return t;
}

// AdamW written out in double, textbook form (weight decay subtracted as lr * wd * p).
struct DoubleAdamW {
  std::vector<double> p, m, v;
  void Step(const AdamWConfig& c, int64_t step, double grad_scale, const std::vector<double>& g) {
    for (size_t i = 0; i < p.size(); ++i) {
      const double gi = g[i] * grad_scale;
      m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * gi;
      v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * gi * gi;
      const double m_hat = m[i] / (1.0 - std::pow(double{c.beta1}, double(step)));
      const double v_hat = v[i] / (1.0 - std::pow(double{c.beta2}, double(step)));
      p[i] -= c.lr * (m_hat / (std::sqrt(v_hat) + c.eps) + c.weight_decay * p[i]);
    }
  }
};

TEST(AdamWTest, SeveralStepsMatchDoubleWithDecayScaleAndBf16Shadow) {
  const int64_t n = 257;
  const AdamWConfig config{
      .lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
  Tensor params = RandomNormal({n}, DType::kF32, 1);
  Tensor m = Zeros({n}), v = Zeros({n});
  Tensor shadow = HostTensor({n}, DType::kBF16);
  DoubleAdamW ref{ToDoubles(params), std::vector<double>(n, 0.0), std::vector<double>(n, 0.0)};
  for (int64_t step = 1; step <= 5; ++step) {
    Tensor grads = RandomNormal({n}, DType::kF32, 100 + step, 3.0f);
    const float grad_scale = 0.5f / static_cast<float>(step);
    MOE_ASSERT_OK(AdamWStep(Cpu(), config, step, grad_scale, params, grads, m, v, shadow));
    ref.Step(config, step, grad_scale, ToDoubles(grads));
    ASSERT_TRUE(testing::AllClose(ToDoubles(params), ref.p, {1e-6, 1e-5})) << "step " << step;
    ASSERT_TRUE(testing::AllClose(ToDoubles(m), ref.m, {1e-7, 1e-5})) << "step " << step;
    ASSERT_TRUE(testing::AllClose(ToDoubles(v), ref.v, {1e-7, 1e-5})) << "step " << step;
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(shadow.data<BF16>()[i].bits, FloatToBF16(params.data<float>()[i]).bits) << i;
    }
  }
}

TEST(AdamWTest, HandWorkedFirstStepMovesByLrTimesSign) {
  // Step 1 from zero moments: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps).
  Tensor params = HostTensor({3}, DType::kF32);
  Tensor grads = HostTensor({3}, DType::kF32);
  const float p0[] = {1.0f, -2.0f, 0.5f}, g0[] = {4.0f, -0.5f, 0.0f};
  std::copy(p0, p0 + 3, params.data<float>());
  std::copy(g0, g0 + 3, grads.data<float>());
  Tensor m = Zeros({3}), v = Zeros({3});
  const AdamWConfig config{.lr = 0.1f, .eps = 0.0f, .weight_decay = 0.5f};
  MOE_ASSERT_OK(AdamWStep(Cpu(), config, 1, 1.0f, params, grads, m, v, TensorView()));
  // decay factor 1 - 0.1 * 0.5 = 0.95; a zero gradient with eps = 0 gives 0/0: NaN, so use
  // only the first two elements for the hand values and check the third is NaN (as in PyTorch).
  EXPECT_FLOAT_EQ(params.data<float>()[0], 0.95f - 0.1f);
  EXPECT_FLOAT_EQ(params.data<float>()[1], -1.9f + 0.1f);
  EXPECT_TRUE(std::isnan(params.data<float>()[2]));
  EXPECT_FLOAT_EQ(m.data<float>()[0], 0.4f);
  EXPECT_FLOAT_EQ(v.data<float>()[0], 0.05f * 16.0f);
}

TEST(AdamWTest, F32ShadowCopiesParamsAndZeroLrOnlyMovesMoments) {
  const int64_t n = 31;
  Tensor params = RandomNormal({n}, DType::kF32, 2);
  const std::vector<double> before = ToDoubles(params);
  Tensor grads = RandomNormal({n}, DType::kF32, 3);
  Tensor m = Zeros({n}), v = Zeros({n});
  Tensor shadow = HostTensor({n}, DType::kF32);
  MOE_ASSERT_OK(
      AdamWStep(Cpu(), {.lr = 0.0f, .weight_decay = 0.3f}, 1, 1.0f, params, grads, m, v, shadow));
  EXPECT_EQ(ToDoubles(params), before);
  EXPECT_TRUE(testing::AllEqual(shadow, params));
  EXPECT_NE(ToDoubles(m), std::vector<double>(n, 0.0));
}

TEST(AdamWTest, BadArguments) {
  Tensor p = Zeros({4}), g = Zeros({4}), m = Zeros({4}), v = Zeros({4});
  const AdamWConfig ok{.lr = 1e-3f};
  EXPECT_THAT(AdamWStep(Cpu(), ok, 0, 1.0f, p, g, m, v, TensorView()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("step: got 0")));
  EXPECT_THAT(AdamWStep(Cpu(), ok, 1, 1.0f, p, Zeros({5}), m, v, TensorView()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("grads.shape: got [5]")));
  EXPECT_THAT(AdamWStep(Cpu(), ok, 1, 1.0f, p, g, HostTensor({4}, DType::kBF16), v, TensorView()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("m.dtype")));
  EXPECT_THAT(AdamWStep(Cpu(), ok, 1, 1.0f, p, g, m, v, HostTensor({4}, DType::kI32)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("shadow.dtype")));
  EXPECT_THAT(AdamWStep(Cpu(), ok, 1, 1.0f, p, g, m, v, HostTensor({3}, DType::kBF16)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("shadow.shape")));
  EXPECT_THAT(AdamWStep(Cpu(), {.lr = 1e-3f, .beta1 = 1.0f}, 1, 1.0f, p, g, m, v, TensorView()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("config.beta1: got 1")));
  EXPECT_THAT(AdamWStep(Cpu(), {.lr = -1.0f}, 1, 1.0f, p, g, m, v, TensorView()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("config.lr")));
  EXPECT_THAT(
      AdamWStep(Cpu(), ok, 1, std::numeric_limits<float>::quiet_NaN(), p, g, m, v, TensorView()),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("grad_scale")));
}

TEST(SquaredNormTest, HandWorkedAndAccumulates) {
  Tensor g = HostTensor({2}, DType::kF32);
  g.data<float>()[0] = 3.0f;
  g.data<float>()[1] = -4.0f;
  Tensor out = HostTensor({1}, DType::kF32);
  out.data<float>()[0] = 0.5f;
  MOE_ASSERT_OK(AccumulateSquaredNorm(Cpu(), g, out));
  EXPECT_EQ(out.data<float>()[0], 25.5f);
}

TEST(SquaredNormTest, MatchesDoubleOverSeveralTensors) {
  Tensor a = RandomNormal({33, 7}, DType::kF32, 4), b = RandomNormal({1000}, DType::kF32, 5);
  Tensor out = Zeros({1});
  MOE_ASSERT_OK(AccumulateSquaredNorm(Cpu(), a, out));
  MOE_ASSERT_OK(AccumulateSquaredNorm(Cpu(), b, out));
  double expected = 0.0;
  for (double x : ToDoubles(a)) expected += x * x;
  for (double x : ToDoubles(b)) expected += x * x;
  EXPECT_NEAR(out.data<float>()[0], expected, 1e-6 * expected);
  EXPECT_THAT(AccumulateSquaredNorm(Cpu(), a, Zeros({2})),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("out.shape: got [2]")));
  EXPECT_THAT(AccumulateSquaredNorm(Cpu(), HostTensor({3}, DType::kBF16), out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("g.dtype")));
}

TEST(AllFiniteTest, DetectsNaNAndInf) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    Tensor t = RandomNormal({5, 13}, dtype, 6, 100.0f);
    MOE_ASSERT_OK_AND_ASSIGN(bool finite, AllFinite(Cpu(), t));
    EXPECT_TRUE(finite);
    for (double bad :
         {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
          -std::numeric_limits<double>::infinity()}) {
      Tensor u = RandomNormal({5, 13}, dtype, 6);
      MOE_ASSERT_OK(Fill(Cpu(),
                         TensorView(static_cast<char*>(u.data()) + 40 * DTypeSize(dtype), dtype,
                                    {1}, Device::Cpu()),
                         bad));
      MOE_ASSERT_OK_AND_ASSIGN(bool ok, AllFinite(Cpu(), u));
      EXPECT_FALSE(ok) << DTypeName(dtype) << " " << bad;
    }
  }
  MOE_ASSERT_OK_AND_ASSIGN(bool empty, AllFinite(Cpu(), HostTensor({0}, DType::kF32)));
  EXPECT_TRUE(empty);
  EXPECT_THAT(AllFinite(Cpu(), HostTensor({2}, DType::kI32)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("t.dtype: got i32")));
}

}  // namespace
}  // namespace smoe
