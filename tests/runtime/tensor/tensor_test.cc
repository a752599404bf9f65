#include "runtime/tensor/tensor.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/compare.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::testing::HasSubstr;
using testing::StatusIs;

TEST(TensorTest, EmptyAllocatesContiguousStorage) {
  MOE_ASSERT_OK_AND_ASSIGN(Tensor t, Tensor::Empty({3, 5}, DType::kF32, Device::Cpu()));
  EXPECT_EQ(t.numel(), 15);
  EXPECT_EQ(t.nbytes(), 60u);
  EXPECT_TRUE(t.view().is_contiguous());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % kAllocationAlignment, 0u);
  EXPECT_EQ(t.view().ToString(), "f32[3, 5] on cpu");
  EXPECT_THAT(Tensor::Empty({2, -1}, DType::kF32, Device::Cpu()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("non-negative")));
}

TEST(TensorTest, RowsAndReshapeShareData) {
  MOE_ASSERT_OK_AND_ASSIGN(Tensor t, Tensor::Empty({4, 3}, DType::kI32, Device::Cpu()));
  for (int i = 0; i < 12; ++i) t.data<int32_t>()[i] = i;
  TensorView rows = t.view().Rows(1, 3);
  EXPECT_EQ(rows.shape(), (Shape{2, 3}));
  EXPECT_EQ(rows.data<int32_t>()[0], 3);
  MOE_ASSERT_OK_AND_ASSIGN(TensorView flat, t.view().Reshape({12}));
  EXPECT_EQ(flat.data<int32_t>()[11], 11);
  EXPECT_THAT(t.view().Reshape({5}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("12 elements")));
  TensorView strided(t.data(), DType::kI32, {4, 2}, {3, 1}, Device::Cpu());
  EXPECT_FALSE(strided.is_contiguous());
}

TEST(TensorTest, CheckTensorNamesFieldSeenAndExpected) {
  MOE_ASSERT_OK_AND_ASSIGN(Tensor t, Tensor::Empty({3, 5}, DType::kF32, Device::Cpu()));
  MOE_EXPECT_OK(CheckTensor("x", t, DType::kF32, Device::Cpu(), {-1, 5}));
  EXPECT_THAT(CheckTensor("x", t, DType::kF32, Device::Cpu(), {3, 4}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("x.shape: got [3, 5], expected [3, 4]")));
  EXPECT_THAT(
      CheckTensor("x", t, DType::kBF16, Device::Cpu(), {3, 5}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("x.dtype: got f32, expected bf16")));
  EXPECT_THAT(CheckTensor("x", t, DType::kF32, Device::Cuda(0), {3, 5}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("x.device: got cpu, expected cuda:0")));
  EXPECT_THAT(CheckTensor("x", t, DType::kF32, Device::Cpu(), {-1}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("expected [*]")));
}

TEST(TensorOpsTest, FillCopyCast) {
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK_AND_ASSIGN(Tensor a, Tensor::Empty({7}, DType::kF32, Device::Cpu()));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor b, Tensor::Empty({7}, DType::kBF16, Device::Cpu()));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor c, Tensor::Empty({7}, DType::kF32, Device::Cpu()));
  MOE_ASSERT_OK(Fill(ctx, a, 1.0 + 1.0 / 256.0));  // a bf16 tie: rounds to even (1.0)
  MOE_ASSERT_OK(Cast(ctx, a, b));
  MOE_ASSERT_OK(Cast(ctx, b, c));
  EXPECT_EQ(c.data<float>()[6], 1.0f);
  MOE_ASSERT_OK(FillNormal(ctx, a, 3, 0, 0.0f, 1.0f));
  MOE_ASSERT_OK(Copy(ctx, a, c));
  EXPECT_TRUE(testing::AllEqual(a, c));
  EXPECT_THAT(Copy(ctx, a, b),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dst.dtype")));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor ids, Tensor::Empty({3}, DType::kI64, Device::Cpu()));
  MOE_ASSERT_OK(Fill(ctx, ids, 9));
  EXPECT_EQ(ids.data<int64_t>()[2], 9);
  EXPECT_THAT(FillUniform(ctx, ids, 1, 0, 0, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dst.dtype: got i64")));
}

TEST(TensorOpsTest, AxpyAddsScaledAndChecksShapes) {
  ExecContext& ctx = ExecContext::Cpu();
  Tensor a = *Tensor::Empty({2, 3}, DType::kF32, Device::Cpu());
  Tensor b = *Tensor::Empty({2, 3}, DType::kF32, Device::Cpu());
  MOE_ASSERT_OK(FillNormal(ctx, a, 1, 0, 0.0f, 1.0f));
  MOE_ASSERT_OK(FillNormal(ctx, b, 2, 0, 0.0f, 1.0f));
  std::vector<double> expected = testing::ToDoubles(a), bd = testing::ToDoubles(b);
  for (size_t i = 0; i < expected.size(); ++i) expected[i] += -0.5 * bd[i];
  MOE_ASSERT_OK(Axpy(ctx, a, -0.5f, b, a));  // in place
  EXPECT_TRUE(testing::AllClose(testing::ToDoubles(a), expected, {1e-6, 1e-6}));
  Tensor wrong = *Tensor::Empty({3, 2}, DType::kF32, Device::Cpu());
  EXPECT_THAT(Axpy(ctx, a, 1.0f, wrong, a),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("b.shape: got [3, 2]")));
}

TEST(TensorOpsTest, RandomFillsAreCounterBased) {
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK_AND_ASSIGN(Tensor whole, Tensor::Empty({10, 10}, DType::kF32, Device::Cpu()));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor tail, Tensor::Empty({3, 10}, DType::kF32, Device::Cpu()));
  MOE_ASSERT_OK(FillUniform(ctx, whole, 5, 100, -2.0f, 3.0f));
  MOE_ASSERT_OK(FillUniform(ctx, tail, 5, 170, -2.0f, 3.0f));  // rows 7..9 of `whole`
  EXPECT_TRUE(testing::AllEqual(whole.view().Rows(7, 10), tail));
  for (int i = 0; i < 100; ++i) {
    ASSERT_GE(whole.data<float>()[i], -2.0f);
    ASSERT_LT(whole.data<float>()[i], 3.0f);
  }
  MOE_ASSERT_OK(FillNormal(ctx, whole, 5, 0, 1.0f, 0.5f));
  MOE_ASSERT_OK(FillNormal(ctx, tail, 6, 0, 1.0f, 0.5f));
  EXPECT_FALSE(testing::AllEqual(whole.view().Rows(0, 3), tail));  // another seed differs
}

}  // namespace
}  // namespace smoe
