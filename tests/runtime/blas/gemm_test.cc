#include "runtime/blas/gemm.h"

#include <array>
#include <cstdint>
#include <limits>
#include <span>
#include <tuple>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/blas/cpu_sgemm.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/compare.h"
#include "tests/testing/gemm_reference.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using testing::AllClose;
using ::testing::HasSubstr;
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

INSTANTIATE_TEST_SUITE_P(Shapes, GemmCpuTest,
                         ::testing::Combine(::testing::Values(1, 17), ::testing::Values(1, 33),
                                            ::testing::Values(1, 65), ::testing::Bool(),
                                            ::testing::Bool(),
                                            ::testing::Values(DType::kF32, DType::kBF16),
                                            ::testing::Values(DType::kF32, DType::kBF16)));

// Small (BLAS's small-matrix kernels), large (its blocked path, and the CPU backend's split into
// row blocks) and wide (column blocks) products.
TEST(GemmTest, BetaZeroIgnoresStaleNaN) {
  for (auto [m, k, n] : {std::array<int64_t, 3>{4, 3, 5}, {600, 128, 96}, {40, 512, 900}}) {
    Tensor a = RandomNormal({m, k}, DType::kF32, 1), b = RandomNormal({k, n}, DType::kF32, 2);
    Tensor c = *Tensor::Empty({m, n}, DType::kF32, Device::Cpu());
    MOE_ASSERT_OK(Fill(ExecContext::Cpu(), c, std::numeric_limits<double>::quiet_NaN()));
    MOE_ASSERT_OK(Gemm(ExecContext::Cpu(), a, b, c));
    for (double v : ToDoubles(c)) ASSERT_TRUE(std::isfinite(v)) << m << "x" << k << "x" << n;
  }
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
  MOE_ASSERT_OK(
      GroupedGemmRaggedK(ExecContext::Cpu(), a, b, c, offsets, {false, false, 1.0f, 0.5f}));
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

// Alignment routing (host logic of the CUDA grouped GEMM, runs on the CPU): cuBLAS's grouped bf16
// GEMM reads its pointers from device memory and faults on misaligned ones, so every group whose
// pointers (base + the offsets of the host-known group layout) or leading dimensions are not
// 16-byte aligned must go to a per-group cublasGemmEx. No memory is touched: addresses only.
const void* At(uintptr_t address) { return reinterpret_cast<const void*>(address); }

// The expert forward x W: A = xs [rows, model] (bf16), B = W [E, model, ffn], C [rows, ffn].
std::vector<internal::GemmProblem> ExpertForwardGroups(int64_t model, int64_t ffn, DType dtype,
                                                       std::span<const int64_t> offsets,
                                                       uintptr_t a_base = 0x100000) {
  internal::GemmProblem whole;
  whole.a = At(a_base);
  whole.b = At(0x200000);
  whole.c = const_cast<void*>(At(0x300000));
  whole.ab_dtype = whole.c_dtype = dtype;
  whole.n = ffn;
  whole.k = model;
  whole.lda = model;
  whole.ldb = ffn;
  whole.ldc = ffn;
  return internal::GroupedGemmGroups(whole, offsets, model * ffn);
}

std::vector<internal::GroupRoute> Routes(const std::vector<internal::GemmProblem>& groups) {
  std::vector<internal::GroupRoute> routes;
  for (const internal::GemmProblem& g : groups) {
    routes.push_back(internal::RouteGroup(g, groups[0], /*grouped_rejected=*/false));
  }
  return routes;
}

TEST(GemmAlignmentRoutingTest, GroupLayoutFollowsTheOffsets) {
  const std::vector<int64_t> offsets = {0, 3, 3, 8};
  const auto groups = ExpertForwardGroups(12, 20, DType::kBF16, offsets);
  ASSERT_EQ(groups.size(), 2u);  // the empty expert 1 is dropped
  EXPECT_EQ(groups[1].m, 5);
  EXPECT_EQ(groups[1].a, At(0x100000 + 3 * 12 * 2));       // row 3 of xs
  EXPECT_EQ(groups[1].b, At(0x200000 + 2 * 12 * 20 * 2));  // expert 2's weights
  EXPECT_EQ(groups[1].c, At(0x300000 + 3 * 20 * 2));
}

TEST(GemmAlignmentRoutingTest, AlignedBf16ShapesStayGrouped) {
  // M and H multiples of 8: every group's pointers and rows are 16-byte aligned, whatever the
  // (odd) row counts of the experts.
  const std::vector<int64_t> offsets = {0, 3, 3, 10, 17};
  for (const auto route : Routes(ExpertForwardGroups(16, 24, DType::kBF16, offsets))) {
    EXPECT_EQ(route, internal::GroupRoute::kGrouped);
  }
}

TEST(GemmAlignmentRoutingTest, Bf16ModelDimNotAMultipleOf8GoesAlone) {
  // M = 12: xs rows are 24 bytes apart; expert 1 starts at byte 72 of xs.
  const std::vector<int64_t> offsets = {0, 3, 7};
  for (const auto route : Routes(ExpertForwardGroups(12, 24, DType::kBF16, offsets))) {
    EXPECT_EQ(route, internal::GroupRoute::kAlone);
  }
}

TEST(GemmAlignmentRoutingTest, Bf16FfnDimNotAMultipleOf8GoesAlone) {
  // H = 20 (or H/r = 20 in a sliced mode): W and h rows are 40 bytes apart.
  const std::vector<int64_t> offsets = {0, 8, 16};
  for (const auto route : Routes(ExpertForwardGroups(16, 20, DType::kBF16, offsets))) {
    EXPECT_EQ(route, internal::GroupRoute::kAlone);
  }
}

TEST(GemmAlignmentRoutingTest, MisalignedBasePointerGoesAlone) {
  const std::vector<int64_t> offsets = {0, 8, 16};
  const auto routes = Routes(ExpertForwardGroups(16, 24, DType::kBF16, offsets, 0x100008));
  for (const auto route : routes) EXPECT_EQ(route, internal::GroupRoute::kAlone);
}

TEST(GemmAlignmentRoutingTest, WeightGradientGroupsFollowTheRaggedK) {
  // dW = xs^T dh over each expert's rows: A = xs [rows, M], B = dh [rows, H/r], C [E, M, H/r].
  auto groups = [](int64_t model, int64_t width) {
    internal::GemmProblem whole;
    whole.a = At(0x100000);
    whole.b = At(0x200000);
    whole.c = const_cast<void*>(At(0x300000));
    whole.ab_dtype = DType::kBF16;
    whole.c_dtype = DType::kF32;
    whole.trans_a = true;
    whole.m = model;
    whole.n = width;
    whole.lda = model;
    whole.ldb = width;
    whole.ldc = width;
    const std::vector<int64_t> offsets = {0, 5, 5, 12};
    return internal::RaggedKGroups(whole, offsets, model * width);
  };
  const auto aligned = groups(16, 24);
  ASSERT_EQ(aligned.size(), 3u);
  EXPECT_EQ(aligned[2].k, 7);
  EXPECT_EQ(aligned[2].b, At(0x200000 + 5 * 24 * 2));
  EXPECT_EQ(internal::RouteGroup(aligned[0], aligned[0], false), internal::GroupRoute::kGrouped);
  EXPECT_EQ(internal::RouteGroup(aligned[1], aligned[0], false), internal::GroupRoute::kAlone)
      << "k == 0 (an expert without rows) scales C alone";
  EXPECT_EQ(internal::RouteGroup(aligned[2], aligned[0], false), internal::GroupRoute::kGrouped);
  const auto sliced = groups(16, 12);  // H/r = 12
  EXPECT_EQ(internal::RouteGroup(sliced[0], sliced[0], false), internal::GroupRoute::kAlone);
  EXPECT_EQ(internal::RouteGroup(sliced[2], sliced[0], false), internal::GroupRoute::kAlone);
}

TEST(GemmAlignmentRoutingTest, F32HasNoAlignmentRuleAndOtherRoutesHold) {
  const std::vector<int64_t> offsets = {0, 3, 7};
  const auto f32 = ExpertForwardGroups(12, 20, DType::kF32, offsets, 0x100004);
  for (const auto route : Routes(f32)) EXPECT_EQ(route, internal::GroupRoute::kGrouped);
  EXPECT_EQ(internal::RouteGroup(f32[1], f32[0], /*grouped_rejected=*/true),
            internal::GroupRoute::kAlone);
  internal::GemmProblem narrow = f32[1];
  narrow.c_dtype = DType::kBF16;  // f32 x f32 -> bf16: no such cuBLAS type combination
  EXPECT_EQ(internal::RouteGroup(narrow, f32[0], false), internal::GroupRoute::kAlone);
  internal::GemmProblem empty = f32[1];
  empty.n = 0;
  EXPECT_EQ(internal::RouteGroup(empty, f32[0], false), internal::GroupRoute::kSkip);
  EXPECT_TRUE(internal::MeetsGroupedAlignment(f32[1]));
  const auto bf16 = ExpertForwardGroups(12, 24, DType::kBF16, offsets);
  EXPECT_FALSE(internal::MeetsGroupedAlignment(bf16[1]));
}

}  // namespace
}  // namespace smoe

namespace smoe {
namespace {

// The build's CPU GEMM library is the one CpuSgemm calls (oneDNN when CMake found it).
TEST(CpuSgemmTest, LibraryIsTheBuildsChoice) {
#if MOE_TEST_WITH_ONEDNN
  EXPECT_STREQ(CpuGemmLibrary(), "onednn");
#else
  EXPECT_STREQ(CpuGemmLibrary(), "openblas");
#endif
}

// Every transpose pair against a double reference, on odd sizes and padded leading dimensions,
// with beta 0 (C not read: NaN there) and beta 1 (accumulate).
TEST(CpuSgemmTest, MatchesDoubleReference) {
  const int64_t m = 37, n = 21, k = 70, pad = 3;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      for (float beta : {0.0f, 1.0f}) {
        const int64_t lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
        std::vector<float> a((ta ? k : m) * lda), b((tb ? n : k) * ldb), c(m * ldc);
        uint32_t state = 12345;
        auto next = [&] {
          state = state * 1664525u + 1013904223u;
          return static_cast<float>(state >> 8) / 16777216.0f - 0.5f;
        };
        for (float& x : a) x = next();
        for (float& x : b) x = next();
        for (float& x : c) x = beta == 0.0f ? std::numeric_limits<float>::quiet_NaN() : next();
        std::vector<float> c0 = c;
        CpuSgemm(ta, tb, m, n, k, 0.5f, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            double want = beta == 0.0f ? 0.0 : double{c0[i * ldc + j]};
            for (int64_t p = 0; p < k; ++p) {
              const double x = ta ? a[p * lda + i] : a[i * lda + p];
              const double y = tb ? b[j * ldb + p] : b[p * ldb + j];
              want += 0.5 * x * y;
            }
            ASSERT_NEAR(c[i * ldc + j], want, 1e-4)
                << "ta " << ta << " tb " << tb << " beta " << beta << " at " << i << "," << j;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace smoe
