#include "runtime/blas/gemm.h"

#include <limits>
#include <tuple>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/compare.h"
#include "tests/testing/gemm_reference.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using ::testing::HasSubstr;
using testing::AllClose;
using testing::ReferenceGemm;
using testing::StatusIs;
using testing::ToDoubles;

// Tolerance of a K-long fp32 dot product of bf16-rounded (or f32) inputs, relative to the size of
// the terms: rounding of C (bf16) dominates when C is bf16.
testing::Tolerance GemmTolerance(DType c_dtype, int64_t k) {
  if (c_dtype == DType::kBF16) return {1e-2 * std::sqrt(double(k) + 1), 8e-3};
  return {1e-5 * std::sqrt(double(k) + 1), 1e-5};
}

// (m, n, k, trans_a, trans_b, input dtype, output dtype)
using GemmCase = std::tuple<int64_t, int64_t, int64_t, bool, bool, DType, DType>;
using testing::RandomNormal;

class GemmCpuTest : public ::testing::TestWithParam<GemmCase> {};

TEST_P(GemmCpuTest, MatchesDoubleReference) {
  const auto [m, n, k, ta, tb, in_dtype, out_dtype] = GetParam();
  Tensor a = RandomNormal(ta ? Shape{k, m} : Shape{m, k}, in_dtype, 1);
  Tensor b = RandomNormal(tb ? Shape{n, k} : Shape{k, n}, in_dtype, 2);
  Tensor c = RandomNormal({m, n}, out_dtype, 3);
  std::vector<double> expected = ToDoubles(c);
  const std::vector<double> ad = ToDoubles(a), bd = ToDoubles(b);
  ReferenceGemm(ta, tb, m, n, k, 0.5, ad.data(), bd.data(), -2.0, expected.data());
  MOE_ASSERT_OK(Gemm(ExecContext::Cpu(), a, b, c, {ta, tb, 0.5f, -2.0f}));
  EXPECT_TRUE(AllClose(ToDoubles(c), expected, GemmTolerance(out_dtype, k)));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GemmCpuTest,
    ::testing::Combine(::testing::Values(1, 17), ::testing::Values(1, 33), ::testing::Values(1, 65),
                       ::testing::Bool(), ::testing::Bool(),
                       ::testing::Values(DType::kF32, DType::kBF16),
                       ::testing::Values(DType::kF32, DType::kBF16)));

TEST(GemmTest, BetaZeroIgnoresStaleNaN) {
  Tensor a = RandomNormal({4, 3}, DType::kF32, 1), b = RandomNormal({3, 5}, DType::kF32, 2);
  Tensor c = *Tensor::Empty({4, 5}, DType::kF32, Device::Cpu());
  MOE_ASSERT_OK(Fill(ExecContext::Cpu(), c, std::numeric_limits<double>::quiet_NaN()));
  MOE_ASSERT_OK(Gemm(ExecContext::Cpu(), a, b, c));
  for (double v : ToDoubles(c)) ASSERT_TRUE(std::isfinite(v));
}

TEST(GemmTest, EmptyReductionScalesC) {
  Tensor a = *Tensor::Empty({4, 0}, DType::kF32, Device::Cpu());
  Tensor b = *Tensor::Empty({0, 5}, DType::kF32, Device::Cpu());
  Tensor c = RandomNormal({4, 5}, DType::kF32, 3);
  std::vector<double> expected = ToDoubles(c);
  for (double& v : expected) v *= 3.0;
  MOE_ASSERT_OK(Gemm(ExecContext::Cpu(), a, b, c, {false, false, 1.0f, 3.0f}));
  EXPECT_TRUE(AllClose(ToDoubles(c), expected, {1e-6, 1e-6}));
}

TEST(GemmTest, BatchedMatchesPerItemReference) {
  const int64_t batch = 3, m = 5, n = 7, k = 9;
  Tensor a = RandomNormal({batch, m, k}, DType::kF32, 1),
         b = RandomNormal({batch, n, k}, DType::kF32, 2);
  Tensor c = RandomNormal({batch, m, n}, DType::kF32, 3);
  std::vector<double> ad = ToDoubles(a), bd = ToDoubles(b), expected(batch * m * n);
  for (int64_t i = 0; i < batch; ++i) {
    ReferenceGemm(false, true, m, n, k, 1.0, ad.data() + i * m * k, bd.data() + i * n * k, 0.0,
                  expected.data() + i * m * n);
  }
  MOE_ASSERT_OK(BatchedGemm(ExecContext::Cpu(), a, b, c, {false, true}));
  EXPECT_TRUE(AllClose(ToDoubles(c), expected, GemmTolerance(DType::kF32, k)));
}

TEST(GemmTest, GroupedRaggedRowsWithEmptyGroups) {
  const std::vector<int64_t> offsets = {0, 3, 3, 10, 10, 11};  // groups 1 and 3 are empty
  const int64_t groups = 5, rows = 11, k = 6, n = 4;
  for (bool trans_b : {false, true}) {
    Tensor a = RandomNormal({rows, k}, DType::kBF16, 1);
    Tensor b = RandomNormal(trans_b ? Shape{groups, n, k} : Shape{groups, k, n}, DType::kBF16, 2);
    Tensor c = RandomNormal({rows, n}, DType::kF32, 3);
    std::vector<double> ad = ToDoubles(a), bd = ToDoubles(b), expected(rows * n);
    for (int64_t g = 0; g < groups; ++g) {
      ReferenceGemm(false, trans_b, offsets[g + 1] - offsets[g], n, k, 1.0,
                    ad.data() + offsets[g] * k, bd.data() + g * k * n, 0.0,
                    expected.data() + offsets[g] * n);
    }
    MOE_ASSERT_OK(GroupedGemm(ExecContext::Cpu(), a, b, c, offsets, {false, trans_b}));
    EXPECT_TRUE(AllClose(ToDoubles(c), expected, GemmTolerance(DType::kF32, k)));
  }
}

TEST(GemmTest, GroupedRaggedKWithEmptyGroups) {
  const std::vector<int64_t> offsets = {0, 0, 4, 9};  // group 0 is empty: C[0] = beta * C[0]
  const int64_t groups = 3, rows = 9, m = 5, n = 3;
  Tensor a = RandomNormal({rows, m}, DType::kF32, 1), b = RandomNormal({rows, n}, DType::kF32, 2);
  Tensor c = RandomNormal({groups, m, n}, DType::kF32, 3);
  std::vector<double> ad = ToDoubles(a), bd = ToDoubles(b), expected = ToDoubles(c);
  for (int64_t g = 0; g < groups; ++g) {
    ReferenceGemm(true, false, m, n, offsets[g + 1] - offsets[g], 1.0, ad.data() + offsets[g] * m,
                  bd.data() + offsets[g] * n, 0.5, expected.data() + g * m * n);
  }
  MOE_ASSERT_OK(GroupedGemmRaggedK(ExecContext::Cpu(), a, b, c, offsets, {false, false, 1.0f, 0.5f}));
  EXPECT_TRUE(AllClose(ToDoubles(c), expected, GemmTolerance(DType::kF32, rows)));
}

TEST(GemmTest, BadInputsNameTheArgument) {
  ExecContext& ctx = ExecContext::Cpu();
  Tensor a = RandomNormal({4, 3}, DType::kF32, 1), b = RandomNormal({4, 5}, DType::kF32, 2);
  Tensor c = RandomNormal({4, 5}, DType::kF32, 3);
  EXPECT_THAT(Gemm(ctx, a, b, c), StatusIs(absl::StatusCode::kInvalidArgument,
                                           HasSubstr("b.shape [4, 5]: k: got 4, expected 3")));
  Tensor bb = RandomNormal({3, 5}, DType::kBF16, 2);
  EXPECT_THAT(Gemm(ctx, a, bb, c),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("b.dtype: got bf16")));
  Tensor ids = *Tensor::Empty({3, 5}, DType::kI32, Device::Cpu());
  EXPECT_THAT(Gemm(ctx, a, ids, c),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("b.dtype: got i32")));
  Tensor b3 = RandomNormal({2, 3, 5}, DType::kF32, 2);
  const std::vector<int64_t> bad_offsets = {0, 3, 2};
  EXPECT_THAT(GroupedGemm(ctx, a, b3, c, bad_offsets),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("offsets[2]: got 2")));
  const std::vector<int64_t> short_offsets = {0, 4};
  EXPECT_THAT(GroupedGemm(ctx, a, b3, c, short_offsets),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("offsets.size: got 2")));
  TensorView gpu_view(a.data(), DType::kF32, {4, 3}, Device::Cuda(0));
  EXPECT_THAT(Gemm(ctx, gpu_view, bb, c),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("a.device: got cuda:0")));
}

}  // namespace
}  // namespace smoe
