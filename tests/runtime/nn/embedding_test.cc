#include "runtime/nn/embedding.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/core/philox.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/compare.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::testing::HasSubstr;
using testing::StatusIs;
using testing::ToDoubles;

ExecContext& Cpu() { return ExecContext::Cpu(); }

Tensor Make(Shape shape, DType dtype) { return *Tensor::Empty(shape, dtype, Device::Cpu()); }

Tensor Ids(const std::vector<int32_t>& values) {
  Tensor t = Make({static_cast<int64_t>(values.size())}, DType::kI32);
  for (size_t i = 0; i < values.size(); ++i) t.data<int32_t>()[i] = values[i];
  return t;
}

Tensor RandomIds(int64_t tokens, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> ids(tokens);
  for (int64_t t = 0; t < tokens; ++t) ids[t] = static_cast<int32_t>(PhiloxBits(seed, t) % vocab);
  return Ids(ids);
}

TEST(EmbeddingTest, HandWorkedForwardAndAccumulatingBackward) {
  Tensor table = Make({3, 2}, DType::kF32);
  const float table_values[] = {1, 2, 3, 4, 5, 6};
  std::copy(table_values, table_values + 6, table.data<float>());
  Tensor ids = Ids({2, 0, 2});
  Tensor out = Make({3, 2}, DType::kF32);
  MOE_ASSERT_OK(EmbeddingForward(Cpu(), ids, table, out));
  EXPECT_EQ(ToDoubles(out), (std::vector<double>{5, 6, 1, 2, 5, 6}));

  Tensor dout = Make({3, 2}, DType::kF32);
  const float dout_values[] = {0.5f, 1, 10, 20, 0.25f, 2};
  std::copy(dout_values, dout_values + 6, dout.data<float>());
  Tensor dtable = Make({3, 2}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), dtable, 1.0));
  MOE_ASSERT_OK(EmbeddingBackward(Cpu(), ids, dout, dtable));
  // Row 1 is never looked up: only the initial 1 stays (accumulation, not overwrite).
  EXPECT_EQ(ToDoubles(dtable), (std::vector<double>{11, 21, 1, 1, 1.75, 4}));
}

TEST(EmbeddingTest, Bf16ForwardCopiesExactly) {
  Tensor table = Make({17, 9}, DType::kBF16);
  MOE_ASSERT_OK(FillNormal(Cpu(), table, 3, 0, 0.0f, 1.0f));
  Tensor ids = RandomIds(40, 17, 5);
  Tensor out = Make({40, 9}, DType::kBF16);
  MOE_ASSERT_OK(EmbeddingForward(Cpu(), ids, table, out));
  for (int64_t t = 0; t < 40; ++t) {
    for (int64_t c = 0; c < 9; ++c) {
      EXPECT_EQ(out.data<BF16>()[t * 9 + c].bits,
                table.data<BF16>()[ids.data<int32_t>()[t] * 9 + c].bits);
    }
  }
}

TEST(EmbeddingTest, BackwardMatchesFiniteDifferences) {
  const int64_t vocab = 7, dim = 5, tokens = 12;
  Tensor table = Make({vocab, dim}, DType::kF32);
  MOE_ASSERT_OK(FillNormal(Cpu(), table, 11, 0, 0.0f, 1.0f));
  Tensor ids = RandomIds(tokens, vocab, 13);  // 12 draws from 7 ids: repeats and (likely) gaps
  const std::vector<double> w = testing::RandomWeights(tokens * dim, 17);
  Tensor dout = Make({tokens, dim}, DType::kF32);
  for (int64_t i = 0; i < tokens * dim; ++i) dout.data<float>()[i] = static_cast<float>(w[i]);
  Tensor dtable = Make({vocab, dim}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), dtable, 0.0));
  MOE_ASSERT_OK(EmbeddingBackward(Cpu(), ids, dout, dtable));
  auto loss = [&](const std::vector<double>& tab) {
    std::vector<double> out(tokens * dim);
    internal::EmbeddingForwardCpu(ids.data<int32_t>(), tab.data(), tokens, dim, out.data());
    double l = 0.0;
    for (size_t i = 0; i < out.size(); ++i) l += w[i] * out[i];
    return l;
  };
  EXPECT_TRUE(testing::CheckGradient(loss, ToDoubles(table), ToDoubles(dtable)));
}

TEST(EmbeddingTest, Bf16BackwardWidensExactly) {
  const int64_t vocab = 4, dim = 3, tokens = 9;
  Tensor ids = RandomIds(tokens, vocab, 21);
  Tensor dout = Make({tokens, dim}, DType::kBF16);
  MOE_ASSERT_OK(FillNormal(Cpu(), dout, 23, 0, 0.0f, 1.0f));
  Tensor dtable = Make({vocab, dim}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), dtable, 0.0));
  MOE_ASSERT_OK(EmbeddingBackward(Cpu(), ids, dout, dtable));
  std::vector<double> expected(vocab * dim, 0.0);
  const std::vector<double> d = ToDoubles(dout);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t c = 0; c < dim; ++c) expected[ids.data<int32_t>()[t] * dim + c] += d[t * dim + c];
  }
  EXPECT_TRUE(testing::AllClose(ToDoubles(dtable), expected, {1e-6, 1e-6}));
}

TEST(EmbeddingTest, EmptyIsANoOp) {
  Tensor table = Make({3, 2}, DType::kF32);
  Tensor ids = Make({0}, DType::kI32);
  Tensor out = Make({0, 2}, DType::kF32);
  MOE_EXPECT_OK(EmbeddingForward(Cpu(), ids, table, out));
  Tensor dtable = Make({3, 2}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), dtable, 3.0));
  MOE_EXPECT_OK(EmbeddingBackward(Cpu(), ids, out, dtable));
  EXPECT_EQ(ToDoubles(dtable), std::vector<double>(6, 3.0));
}

TEST(EmbeddingTest, OutOfRangeIdsNameThePosition) {
  Tensor table = Make({4, 2}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), table, 1.0));
  Tensor out = Make({3, 2}, DType::kF32);
  EXPECT_THAT(EmbeddingForward(Cpu(), Ids({0, 4, 1}), table, out),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("ids[1]: got 4, expected a token id in [0, 4)")));
  EXPECT_THAT(EmbeddingForward(Cpu(), Ids({0, 1, -1}), table, out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ids[2]: got -1")));
  Tensor dtable = Make({4, 2}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), dtable, 0.0));
  EXPECT_THAT(EmbeddingBackward(Cpu(), Ids({7, 0, 0}), out, dtable),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ids[0]: got 7")));
  EXPECT_EQ(ToDoubles(dtable), std::vector<double>(8, 0.0));  // nothing written
}

TEST(EmbeddingTest, BadShapesAndDtypes) {
  Tensor table = Make({4, 2}, DType::kF32);
  Tensor ids = Ids({0, 1, 2});
  Tensor out = Make({3, 2}, DType::kF32);
  EXPECT_THAT(EmbeddingForward(Cpu(), Make({3}, DType::kI64), table, out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ids.dtype")));
  EXPECT_THAT(EmbeddingForward(Cpu(), ids, Make({4, 2}, DType::kI32), out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("table.dtype")));
  EXPECT_THAT(EmbeddingForward(Cpu(), ids, table, Make({3, 3}, DType::kF32)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("out.shape: got [3, 3]")));
  EXPECT_THAT(EmbeddingForward(Cpu(), ids, table, Make({3, 2}, DType::kBF16)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("out.dtype")));
  EXPECT_THAT(EmbeddingBackward(Cpu(), ids, out, Make({4, 2}, DType::kBF16)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dtable.dtype")));
  EXPECT_THAT(EmbeddingBackward(Cpu(), ids, Make({2, 2}, DType::kF32), Make({4, 2}, DType::kF32)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dout.shape")));
}

}  // namespace
}  // namespace smoe
