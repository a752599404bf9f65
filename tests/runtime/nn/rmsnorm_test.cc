#include "runtime/nn/rmsnorm.h"

#include <cmath>
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
using ::testing::HasSubstr;
using testing::HostTensor;
using testing::RandomNormal;
using testing::StatusIs;
using testing::ToDoubles;

// Independent double loops (not the library's template) for the forward.
void ForwardDouble(const std::vector<double>& x, const std::vector<double>& gain, double eps,
                   int64_t rows, int64_t cols, std::vector<double>* y, std::vector<double>* rstd) {
  y->assign(rows * cols, 0.0);
  rstd->assign(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0.0;
    for (int64_t c = 0; c < cols; ++c) ms += x[r * cols + c] * x[r * cols + c] / cols;
    (*rstd)[r] = 1.0 / std::sqrt(ms + eps);
    for (int64_t c = 0; c < cols; ++c) (*y)[r * cols + c] = x[r * cols + c] * (*rstd)[r] * gain[c];
  }
}

TEST(RMSNormTest, HandWorked) {
  Tensor x = HostTensor({1, 2}, DType::kF32);
  x.data<float>()[0] = 3.0f;
  x.data<float>()[1] = 4.0f;
  Tensor gain = HostTensor({2}, DType::kF32);
  gain.data<float>()[0] = 1.0f;
  gain.data<float>()[1] = 2.0f;
  Tensor y = HostTensor({1, 2}, DType::kF32);
  Tensor rstd = HostTensor({1}, DType::kF32);
  // mean square = 12.5; with eps = 3.5 the rms is exactly 4.
  MOE_ASSERT_OK(RMSNormForward(Cpu(), x, gain, 3.5f, y, rstd));
  EXPECT_FLOAT_EQ(rstd.data<float>()[0], 0.25f);
  EXPECT_FLOAT_EQ(y.data<float>()[0], 0.75f);
  EXPECT_FLOAT_EQ(y.data<float>()[1], 2.0f);
}

TEST(RMSNormTest, ForwardMatchesDoubleLoops) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {5, 64}, {13, 33}}) {
      Tensor x = RandomNormal({rows, cols}, dtype, 3, 2.0f, 0.5f);
      Tensor gain = RandomNormal({cols}, DType::kF32, 4, 0.5f, 1.0f);
      Tensor y = HostTensor({rows, cols}, dtype);
      Tensor rstd = HostTensor({rows}, DType::kF32);
      MOE_ASSERT_OK(RMSNormForward(Cpu(), x, gain, 1e-5f, y, rstd));
      std::vector<double> y_ref, rstd_ref;
      ForwardDouble(ToDoubles(x), ToDoubles(gain), 1e-5, rows, cols, &y_ref, &rstd_ref);
      EXPECT_TRUE(testing::AllClose(ToDoubles(y), y_ref, testing::ToleranceFor(dtype)));
      EXPECT_TRUE(testing::AllClose(ToDoubles(rstd), rstd_ref, {1e-7, 1e-6}));
    }
  }
}

// fp64 finite differences of the double instantiation, wrt x and gain together.
TEST(RMSNormTest, BackwardMatchesFiniteDifferences) {
  const int64_t rows = 4, cols = 6;
  const double eps = 1e-3;
  const std::vector<double> x0 = ToDoubles(RandomNormal({rows, cols}, DType::kF32, 7));
  const std::vector<double> gain0 = ToDoubles(RandomNormal({cols}, DType::kF32, 8, 0.5f, 1.0f));
  const std::vector<double> w = testing::RandomWeights(rows * cols, 9);
  auto loss = [&](const std::vector<double>& params) {
    std::vector<double> y(rows * cols), rstd(rows);
    internal::RMSNormForwardCpu(params.data(), params.data() + rows * cols, eps, rows, cols,
                                y.data(), rstd.data());
    double l = 0.0;
    for (size_t i = 0; i < y.size(); ++i) l += w[i] * y[i];
    return l;
  };
  std::vector<double> y(rows * cols), rstd(rows), dx(rows * cols), dgain(cols, 0.0);
  internal::RMSNormForwardCpu(x0.data(), gain0.data(), eps, rows, cols, y.data(), rstd.data());
  internal::RMSNormBackwardCpu(x0.data(), gain0.data(), rstd.data(), w.data(), rows, cols,
                               dx.data(), dgain.data());
  std::vector<double> params = x0, analytic = dx;
  params.insert(params.end(), gain0.begin(), gain0.end());
  analytic.insert(analytic.end(), dgain.begin(), dgain.end());
  EXPECT_TRUE(testing::CheckGradient(loss, params, analytic));
}

// The float and bf16 instantiations (through the public op) against the double one.
// 600 rows: several of the op's partial sums of dgain (256 rows each) and parallel row chunks.
TEST(RMSNormTest, BackwardMatchesDoubleAndAccumulatesDgain) {
  const int64_t rows = 600, cols = 40;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    Tensor x = RandomNormal({rows, cols}, dtype, 10);
    Tensor gain = RandomNormal({cols}, DType::kF32, 11, 0.3f, 1.0f);
    Tensor dy = RandomNormal({rows, cols}, dtype, 12);
    Tensor y = HostTensor({rows, cols}, dtype);
    Tensor rstd = HostTensor({rows}, DType::kF32);
    Tensor dx = HostTensor({rows, cols}, dtype);
    Tensor dgain = RandomNormal({cols}, DType::kF32, 13);
    const std::vector<double> dgain_before = ToDoubles(dgain);
    MOE_ASSERT_OK(RMSNormForward(Cpu(), x, gain, 1e-6f, y, rstd));
    MOE_ASSERT_OK(RMSNormBackward(Cpu(), x, gain, rstd, dy, dx, dgain));

    const std::vector<double> xd = ToDoubles(x), gd = ToDoubles(gain), dyd = ToDoubles(dy);
    std::vector<double> yd(rows * cols), rd(rows), dxd(rows * cols), dgd(cols, 0.0);
    internal::RMSNormForwardCpu(xd.data(), gd.data(), 1e-6, rows, cols, yd.data(), rd.data());
    internal::RMSNormBackwardCpu(xd.data(), gd.data(), rd.data(), dyd.data(), rows, cols,
                                 dxd.data(), dgd.data());
    for (int64_t c = 0; c < cols; ++c) dgd[c] += dgain_before[c];
    const testing::Tolerance tol = testing::ToleranceFor(dtype);
    EXPECT_TRUE(testing::AllClose(ToDoubles(dx), dxd, tol)) << DTypeName(dtype);
    EXPECT_TRUE(testing::AllClose(ToDoubles(dgain), dgd, {1e-5, 1e-5})) << DTypeName(dtype);
  }
}

TEST(RMSNormTest, DxMayAliasDy) {
  const int64_t rows = 700, cols = 8;
  Tensor x = RandomNormal({rows, cols}, DType::kF32, 20);
  Tensor gain = RandomNormal({cols}, DType::kF32, 21, 0.3f, 1.0f);
  Tensor dy = RandomNormal({rows, cols}, DType::kF32, 22);
  Tensor y = HostTensor({rows, cols}, DType::kF32);
  Tensor rstd = HostTensor({rows}, DType::kF32);
  Tensor dx = HostTensor({rows, cols}, DType::kF32);
  Tensor dgain = HostTensor({cols}, DType::kF32), dgain2 = HostTensor({cols}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), dgain, 0.0));
  MOE_ASSERT_OK(Fill(Cpu(), dgain2, 0.0));
  MOE_ASSERT_OK(RMSNormForward(Cpu(), x, gain, 1e-6f, y, rstd));
  MOE_ASSERT_OK(RMSNormBackward(Cpu(), x, gain, rstd, dy, dx, dgain));
  MOE_ASSERT_OK(RMSNormBackward(Cpu(), x, gain, rstd, dy, dy, dgain2));
  EXPECT_TRUE(testing::AllEqual(dy, dx));
  EXPECT_TRUE(testing::AllEqual(dgain2, dgain));
}

TEST(RMSNormTest, OutputRowsHaveUnitRmsWithUnitGain) {
  const int64_t rows = 6, cols = 50;
  Tensor x = RandomNormal({rows, cols}, DType::kF32, 30, 5.0f, 2.0f);
  Tensor gain = HostTensor({cols}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), gain, 1.0));
  Tensor y = HostTensor({rows, cols}, DType::kF32);
  Tensor rstd = HostTensor({rows}, DType::kF32);
  MOE_ASSERT_OK(RMSNormForward(Cpu(), x, gain, 0.0f, y, rstd));
  const std::vector<double> yd = ToDoubles(y);
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0.0;
    for (int64_t c = 0; c < cols; ++c) ms += yd[r * cols + c] * yd[r * cols + c] / cols;
    EXPECT_NEAR(ms, 1.0, 1e-5) << "row " << r;
  }
}

TEST(RMSNormTest, BadArguments) {
  Tensor x = HostTensor({2, 4}, DType::kF32);
  Tensor gain = HostTensor({4}, DType::kF32);
  Tensor y = HostTensor({2, 4}, DType::kF32);
  Tensor rstd = HostTensor({2}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), x, 1.0));
  MOE_ASSERT_OK(Fill(Cpu(), gain, 1.0));
  EXPECT_THAT(RMSNormForward(Cpu(), HostTensor({2, 4}, DType::kI32), gain, 1e-5f, y, rstd),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("x.dtype: got i32")));
  EXPECT_THAT(RMSNormForward(Cpu(), x, HostTensor({3}, DType::kF32), 1e-5f, y, rstd),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("gain.shape: got [3]")));
  EXPECT_THAT(RMSNormForward(Cpu(), x, HostTensor({4}, DType::kBF16), 1e-5f, y, rstd),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("gain.dtype")));
  EXPECT_THAT(RMSNormForward(Cpu(), x, gain, 1e-5f, HostTensor({2, 4}, DType::kBF16), rstd),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("y.dtype")));
  EXPECT_THAT(RMSNormForward(Cpu(), x, gain, 1e-5f, y, HostTensor({4}, DType::kF32)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rstd.shape")));
  EXPECT_THAT(RMSNormForward(Cpu(), x, gain, -1.0f, y, rstd),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("eps: got -1")));
  EXPECT_THAT(RMSNormForward(Cpu(), HostTensor({2, 0}, DType::kF32), HostTensor({0}, DType::kF32),
                             1e-5f, HostTensor({2, 0}, DType::kF32), rstd),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("x.shape[1]")));
  Tensor dgain = HostTensor({4}, DType::kF32);
  EXPECT_THAT(RMSNormBackward(Cpu(), x, gain, rstd, HostTensor({2, 4}, DType::kBF16), y, dgain),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dy.dtype")));
  EXPECT_THAT(RMSNormBackward(Cpu(), x, gain, rstd, y, HostTensor({4, 2}, DType::kF32), dgain),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dx.shape")));
  EXPECT_THAT(RMSNormBackward(Cpu(), x, gain, rstd, y, y, HostTensor({4}, DType::kBF16)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dgain.dtype")));
}

}  // namespace
}  // namespace smoe
