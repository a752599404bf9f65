// CUDA vs CPU parity for the runtime's kernels. Skips itself without a GPU.
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/blas/gemm.h"
#include "runtime/nn/softmax.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/parity.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using testing::CheckParity;
using testing::Input;
using testing::Output;
using testing::ParityArgs;

testing::Tolerance GemmTolerance(DType c_dtype, int64_t k) {
  if (c_dtype == DType::kBF16) return testing::Tolerance{2e-2 * std::sqrt(double(k) + 1), 1e-2};
  return testing::Tolerance{2e-5 * std::sqrt(double(k) + 1), 1e-5};
}

using GemmCase = std::tuple<std::tuple<int64_t, int64_t, int64_t>, bool, bool, DType, DType>;
class GemmParityTest : public ::testing::TestWithParam<GemmCase> {};

TEST_P(GemmParityTest, MatchesCpu) {
  MOE_SKIP_WITHOUT_CUDA();
  const auto [mnk, ta, tb, in_dtype, out_dtype] = GetParam();
  const auto [m, n, k] = mnk;
  auto fill_c = [](const TensorView& c) {
    MOE_CHECK_OK(FillNormal(ExecContext::Cpu(), c, 99, 0, 0.0f, 1.0f));
  };
  EXPECT_TRUE(CheckParity({Input("a", ta ? Shape{k, m} : Shape{m, k}, in_dtype),
                           Input("b", tb ? Shape{n, k} : Shape{k, n}, in_dtype),
                           Output("c", {m, n}, out_dtype, GemmTolerance(out_dtype, k), fill_c)},
                          [&](ExecContext& ctx, const ParityArgs& t) {
                            return Gemm(ctx, t["a"], t["b"], t["c"], {ta, tb, 1.5f, 0.5f});
                          }));
}

// "M17_N33_K65_TA_B_bf16_to_f32"
std::string GemmCaseName(const ::testing::TestParamInfo<GemmCase>& info) {
  const auto [mnk, ta, tb, in_dtype, out_dtype] = info.param;
  const auto [m, n, k] = mnk;
  return absl::StrCat("M", m, "_N", n, "_K", k, ta ? "_TA" : "_A", tb ? "_TB" : "_B", "_",
                      DTypeName(in_dtype), "_to_", DTypeName(out_dtype));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GemmParityTest,
    ::testing::Combine(::testing::Values(std::make_tuple(1, 1, 1), std::make_tuple(17, 33, 65),
                                         std::make_tuple(128, 256, 64), std::make_tuple(5, 3, 0)),
                       ::testing::Bool(), ::testing::Bool(),
                       ::testing::Values(DType::kF32, DType::kBF16),
                       ::testing::Values(DType::kF32, DType::kBF16)),
    GemmCaseName);

TEST(GemmParityTest, Batched) {
  MOE_SKIP_WITHOUT_CUDA();
  EXPECT_TRUE(
      CheckParity({Input("a", {4, 17, 33}, DType::kBF16), Input("b", {4, 65, 33}, DType::kBF16),
                   Output("c", {4, 17, 65}, DType::kF32, GemmTolerance(DType::kF32, 33))},
                  [](ExecContext& ctx, const ParityArgs& t) {
                    return BatchedGemm(ctx, t["a"], t["b"], t["c"], {false, true});
                  }));
}

TEST(GemmParityTest, GroupedWithEmptyGroups) {
  MOE_SKIP_WITHOUT_CUDA();
  const std::vector<int64_t> offsets = {0, 0, 7, 7, 40, 41, 41};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    EXPECT_TRUE(CheckParity({Input("x", {41, 48}, dtype), Input("w", {6, 48, 24}, dtype),
                             Output("y", {41, 24}, dtype, GemmTolerance(dtype, 48))},
                            [&](ExecContext& ctx, const ParityArgs& t) {
                              return GroupedGemm(ctx, t["x"], t["w"], t["y"], offsets);
                            }));
    EXPECT_TRUE(
        CheckParity({Input("x", {41, 48}, dtype), Input("dy", {41, 24}, dtype),
                     Output("dw", {6, 48, 24}, DType::kF32, GemmTolerance(DType::kF32, 41))},
                    [&](ExecContext& ctx, const ParityArgs& t) {
                      return GroupedGemmRaggedK(ctx, t["x"], t["dy"], t["dw"], offsets);
                    }));
  }
}

// More groups than one cublasGemmGroupedBatchedEx call takes (128), ragged with empty groups,
// transposed B, accumulation into C (beta != 0), and every (A/B, C) dtype pair, so both the
// grouped call and the per-group fallback are compared with the CPU.
TEST(GemmParityTest, GroupedManyGroupsAccumulating) {
  MOE_SKIP_WITHOUT_CUDA();
  const int64_t groups = 200;
  std::vector<int64_t> offsets = {0};
  for (int64_t g = 0; g < groups; ++g) offsets.push_back(offsets.back() + (g * 7) % 5);
  const int64_t rows = offsets.back();
  auto fill_c = [](const TensorView& c) {
    MOE_CHECK_OK(FillNormal(ExecContext::Cpu(), c, 98, 0, 0.0f, 1.0f));
  };
  for (DType in : {DType::kF32, DType::kBF16}) {
    for (DType out : {DType::kF32, DType::kBF16}) {
      EXPECT_TRUE(CheckParity(
          {Input("x", {rows, 40}, in), Input("w", {groups, 24, 40}, in),
           Output("y", {rows, 24}, out, GemmTolerance(out, 40), fill_c)},
          [&](ExecContext& ctx, const ParityArgs& t) {
            return GroupedGemm(ctx, t["x"], t["w"], t["y"], offsets, {false, true, 1.0f, 1.0f});
          }))
          << DTypeName(in) << " -> " << DTypeName(out);
      EXPECT_TRUE(CheckParity({Input("x", {rows, 40}, in), Input("dy", {rows, 24}, in),
                               Output("dw", {groups, 40, 24}, out, GemmTolerance(out, 8), fill_c)},
                              [&](ExecContext& ctx, const ParityArgs& t) {
                                return GroupedGemmRaggedK(ctx, t["x"], t["dy"], t["dw"], offsets,
                                                          {false, false, 0.5f, 1.0f});
                              }))
          << DTypeName(in) << " -> " << DTypeName(out);
    }
  }
}

// bf16 shapes whose group pointers break cuBLAS's 16-byte rule for its grouped call (M = 12 and
// H = 20 are not multiples of 8; so rows start 24 and 40 bytes apart): those groups run one
// cublasGemmEx each (RouteGroup) instead of faulting with a misaligned address.
TEST(GemmParityTest, GroupedBf16MisalignedGroups) {
  MOE_SKIP_WITHOUT_CUDA();
  const std::vector<int64_t> offsets = {0, 3, 3, 10, 17};
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{12, 24}, {16, 20}};  // (M, H)
  for (const auto& [model, ffn] : shapes) {
    const int64_t rows = offsets.back(), experts = static_cast<int64_t>(offsets.size()) - 1;
    EXPECT_TRUE(CheckParity(
        {Input("x", {rows, model}, DType::kBF16), Input("w", {experts, model, ffn}, DType::kBF16),
         Output("h", {rows, ffn}, DType::kBF16, GemmTolerance(DType::kBF16, model))},
        [&](ExecContext& ctx, const ParityArgs& t) {
          return GroupedGemm(ctx, t["x"], t["w"], t["h"], offsets);
        }))
        << "M " << model << ", H " << ffn;
    EXPECT_TRUE(CheckParity(
        {Input("x", {rows, model}, DType::kBF16), Input("dh", {rows, ffn}, DType::kBF16),
         Output("dw", {experts, model, ffn}, DType::kF32, GemmTolerance(DType::kF32, rows))},
        [&](ExecContext& ctx, const ParityArgs& t) {
          return GroupedGemmRaggedK(ctx, t["x"], t["dh"], t["dw"], offsets);
        }))
        << "M " << model << ", H " << ffn;
  }
}

TEST(RandomParityTest, CpuAndCudaAreBitIdentical) {
  MOE_SKIP_WITHOUT_CUDA();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (bool uniform : {true, false}) {
      EXPECT_TRUE(CheckParity({Output("r", {1000, 37}, dtype, testing::Tolerance{0, 0})},
                              [&](ExecContext& ctx, const ParityArgs& t) {
                                return uniform ? FillUniform(ctx, t["r"], 1234, 77, -1.0f, 2.0f)
                                               : FillNormal(ctx, t["r"], 1234, 77, 0.5f, 2.0f);
                              }))
          << DTypeName(dtype) << (uniform ? " uniform" : " normal");
    }
  }
}

TEST(CastParityTest, BF16RoundingIsIdentical) {
  MOE_SKIP_WITHOUT_CUDA();
  EXPECT_TRUE(CheckParity(
      {Input("x", {4096}, DType::kF32), Output("y", {4096}, DType::kBF16, testing::Tolerance{0, 0}),
       Output("z", {4096}, DType::kF32, testing::Tolerance{0, 0})},
      [](ExecContext& ctx, const ParityArgs& t) {
        MOE_RETURN_IF_ERROR(Cast(ctx, t["x"], t["y"]));
        return Cast(ctx, t["y"], t["z"]);
      }));
}

TEST(AxpyParityTest, F32AndBF16) {
  MOE_SKIP_WITHOUT_CUDA();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    EXPECT_TRUE(CheckParity({Input("a", {1000, 3}, dtype), Input("b", {1000, 3}, dtype),
                             Output("out", {1000, 3}, dtype, testing::Tolerance{0, 0})},
                            [](ExecContext& ctx, const ParityArgs& t) {
                              return Axpy(ctx, t["a"], 0.75f, t["b"], t["out"]);
                            }))
        << DTypeName(dtype);
  }
}

TEST(SoftmaxParityTest, ForwardAndBackward) {
  MOE_SKIP_WITHOUT_CUDA();
  for (int64_t cols : {1, 96, 1000}) {
    EXPECT_TRUE(
        CheckParity({Input("x", {37, cols}, DType::kF32), Input("dy", {37, cols}, DType::kF32),
                     Output("y", {37, cols}, DType::kF32), Output("dx", {37, cols}, DType::kF32)},
                    [](ExecContext& ctx, const ParityArgs& t) {
                      MOE_RETURN_IF_ERROR(SoftmaxRows(ctx, t["x"], t["y"]));
                      return SoftmaxRowsBackward(ctx, t["y"], t["dy"], t["dx"]);
                    }))
        << "cols " << cols;
  }
}

// The guards on the CUDA side: an op that writes one element before and one after `y` on CUDA
// only (two CUDA fills) fails, naming the backend, the output and both sides.
TEST(ParityHarnessCudaTest, GuardsCatchAnOverrunOnCuda) {
  MOE_SKIP_WITHOUT_CUDA();
  const ::testing::AssertionResult result = CheckParity(
      {Input("x", {100}, DType::kF32), Output("y", {100}, DType::kF32)},
      [](ExecContext& ctx, const ParityArgs& t) -> Status {
        const TensorView& y = t["y"];
        MOE_RETURN_IF_ERROR(Copy(ctx, t["x"], y));
        if (!ctx.device().is_cuda()) return absl::OkStatus();
        float* data = y.data<float>();
        MOE_RETURN_IF_ERROR(Fill(ctx, TensorView(data - 1, DType::kF32, {1}, y.device()), 7.0));
        return Fill(ctx, TensorView(data + y.numel(), DType::kF32, {1}, y.device()), 7.0);
      });
  EXPECT_FALSE(result);
  EXPECT_THAT(result.message(),
              ::testing::AllOf(::testing::StartsWith("on CUDA: "),
                               ::testing::HasSubstr("output \"y\" (100 elements): guard before the "
                                                    "start overwritten, first at offset -1"),
                               ::testing::HasSubstr("output \"y\" (100 elements): guard after the "
                                                    "end overwritten, first at offset 100")));
}

TEST(CudaAllocatorParityTest, ReusesBlocksAndTracksPeak) {
  MOE_SKIP_WITHOUT_CUDA();
  MOE_ASSERT_OK_AND_ASSIGN(Allocator * allocator, CudaAllocator(0));
  const AllocatorStats before = allocator->stats();
  for (int i = 0; i < 5; ++i) {
    MOE_ASSERT_OK_AND_ASSIGN(Tensor t, Tensor::Empty({1 << 20}, DType::kF32, Device::Cuda(0)));
  }
  const AllocatorStats after = allocator->stats();
  EXPECT_LE(after.num_system_allocations - before.num_system_allocations, 1u);
  EXPECT_EQ(after.bytes_in_use, before.bytes_in_use);
  EXPECT_GE(after.peak_bytes_in_use, before.bytes_in_use + (4u << 20));
}

}  // namespace
}  // namespace smoe
