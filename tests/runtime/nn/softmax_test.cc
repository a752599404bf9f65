#include "runtime/nn/softmax.h"

#include <cmath>
#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/compare.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::testing::HasSubstr;
using testing::StatusIs;
using testing::ToDoubles;

std::vector<double> SoftmaxDouble(const std::vector<double>& x, int64_t rows, int64_t cols) {
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double max = -INFINITY, sum = 0.0;
    for (int64_t c = 0; c < cols; ++c) max = std::max(max, x[r * cols + c]);
    for (int64_t c = 0; c < cols; ++c) sum += std::exp(x[r * cols + c] - max);
    for (int64_t c = 0; c < cols; ++c) y[r * cols + c] = std::exp(x[r * cols + c] - max) / sum;
  }
  return y;
}

TEST(SoftmaxTest, ForwardMatchesDoubleReference) {
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {3, 96}, {17, 33}}) {
    Tensor x = *Tensor::Empty({rows, cols}, DType::kF32, Device::Cpu());
    Tensor y = *Tensor::Empty({rows, cols}, DType::kF32, Device::Cpu());
    MOE_ASSERT_OK(FillNormal(ExecContext::Cpu(), x, 4, 0, 0.0f, 3.0f));
    MOE_ASSERT_OK(SoftmaxRows(ExecContext::Cpu(), x, y));
    EXPECT_TRUE(
        testing::AllClose(ToDoubles(y), SoftmaxDouble(ToDoubles(x), rows, cols), {1e-7, 1e-5}));
  }
}

TEST(SoftmaxTest, BackwardMatchesFiniteDifferences) {
  const int64_t rows = 4, cols = 7;
  Tensor x = *Tensor::Empty({rows, cols}, DType::kF32, Device::Cpu());
  Tensor y = *Tensor::Empty({rows, cols}, DType::kF32, Device::Cpu());
  Tensor dy = *Tensor::Empty({rows, cols}, DType::kF32, Device::Cpu());
  Tensor dx = *Tensor::Empty({rows, cols}, DType::kF32, Device::Cpu());
  MOE_ASSERT_OK(FillNormal(ExecContext::Cpu(), x, 5, 0, 0.0f, 2.0f));
  const std::vector<double> w = testing::RandomWeights(rows * cols, 9);
  for (int64_t i = 0; i < rows * cols; ++i) dy.data<float>()[i] = static_cast<float>(w[i]);
  MOE_ASSERT_OK(SoftmaxRows(ExecContext::Cpu(), x, y));
  MOE_ASSERT_OK(SoftmaxRowsBackward(ExecContext::Cpu(), y, dy, dx));
  auto loss = [&](const std::vector<double>& xs) {
    const std::vector<double> ys = SoftmaxDouble(xs, rows, cols);
    double l = 0.0;
    for (size_t i = 0; i < ys.size(); ++i) l += w[i] * ys[i];
    return l;
  };
  EXPECT_TRUE(testing::CheckGradient(loss, ToDoubles(x), ToDoubles(dx), {1e-6, 1e-6, 1e-4}));
}

TEST(SoftmaxTest, NonFiniteRowBecomesNaNOthersUntouched) {
  Tensor x = *Tensor::Empty({2, 3}, DType::kF32, Device::Cpu());
  Tensor y = *Tensor::Empty({2, 3}, DType::kF32, Device::Cpu());
  MOE_ASSERT_OK(Fill(ExecContext::Cpu(), x, 0.0));
  x.data<float>()[1] = std::numeric_limits<float>::infinity();
  MOE_ASSERT_OK(SoftmaxRows(ExecContext::Cpu(), x, y));
  EXPECT_TRUE(std::isnan(y.data<float>()[0]));
  EXPECT_FLOAT_EQ(y.data<float>()[3], 1.0f / 3.0f);
}

TEST(SoftmaxTest, BadShapes) {
  Tensor x = *Tensor::Empty({2, 3}, DType::kF32, Device::Cpu());
  Tensor y = *Tensor::Empty({3, 2}, DType::kF32, Device::Cpu());
  EXPECT_THAT(SoftmaxRows(ExecContext::Cpu(), x, y),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("y.shape: got [3, 2]")));
}

}  // namespace
}  // namespace smoe
