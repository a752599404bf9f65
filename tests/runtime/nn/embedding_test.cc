#include "runtime/nn/embedding.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/core/philox.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/compare.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using testing::Cpu;
using testing::FromInts;
using ::testing::HasSubstr;
using testing::HostTensor;
using testing::StatusIs;
using testing::ToDoubles;

Tensor RandomIds(int64_t tokens, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> ids(tokens);
  for (int64_t t = 0; t < tokens; ++t) ids[t] = static_cast<int32_t>(PhiloxBits(seed, t) % vocab);
  return FromInts(ids);
}

TEST(EmbeddingTest, HandWorkedForwardAndAccumulatingBackward) {
  Tensor table = HostTensor({3, 2}, DType::kF32);
  const float table_values[] = {1, 2, 3, 4, 5, 6};
  std::copy(table_values, table_values + 6, table.data<float>());
  Tensor ids = FromInts({2, 0, 2});
  Tensor out = HostTensor({3, 2}, DType::kF32);
  MOE_ASSERT_OK(EmbeddingForward(Cpu(), ids, table, out));
  EXPECT_EQ(ToDoubles(out), (std::vector<double>{5, 6, 1, 2, 5, 6}));

  Tensor dout = HostTensor({3, 2}, DType::kF32);
  const float dout_values[] = {0.5f, 1, 10, 20, 0.25f, 2};
  std::copy(dout_values, dout_values + 6, dout.data<float>());
  Tensor dtable = HostTensor({3, 2}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), dtable, 1.0));
  MOE_ASSERT_OK(EmbeddingBackward(Cpu(), ids, dout, dtable));
  // Row 1 is never looked up: only the initial 1 stays (accumulation, not overwrite).
  EXPECT_EQ(ToDoubles(dtable), (std::vector<double>{11, 21, 1, 1, 1.75, 4}));
}

TEST(EmbeddingTest, Bf16ForwardCopiesExactly) {
  Tensor table = HostTensor({17, 9}, DType::kBF16);
  MOE_ASSERT_OK(FillNormal(Cpu(), table, 3, 0, 0.0f, 1.0f));
  Tensor ids = RandomIds(40, 17, 5);
  Tensor out = HostTensor({40, 9}, DType::kBF16);
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
  Tensor table = HostTensor({vocab, dim}, DType::kF32);
  MOE_ASSERT_OK(FillNormal(Cpu(), table, 11, 0, 0.0f, 1.0f));
  Tensor ids = RandomIds(tokens, vocab, 13);  // 12 draws from 7 ids: repeats and (likely) gaps
  const std::vector<double> w = testing::RandomWeights(tokens * dim, 17);
  Tensor dout = HostTensor({tokens, dim}, DType::kF32);
  for (int64_t i = 0; i < tokens * dim; ++i) dout.data<float>()[i] = static_cast<float>(w[i]);
  Tensor dtable = HostTensor({vocab, dim}, DType::kF32);
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
  Tensor dout = HostTensor({tokens, dim}, DType::kBF16);
  MOE_ASSERT_OK(FillNormal(Cpu(), dout, 23, 0, 0.0f, 1.0f));
  Tensor dtable = HostTensor({vocab, dim}, DType::kF32);
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
  Tensor table = HostTensor({3, 2}, DType::kF32);
  Tensor ids = HostTensor({0}, DType::kI32);
  Tensor out = HostTensor({0, 2}, DType::kF32);
  MOE_EXPECT_OK(EmbeddingForward(Cpu(), ids, table, out));
  Tensor dtable = HostTensor({3, 2}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), dtable, 3.0));
  MOE_EXPECT_OK(EmbeddingBackward(Cpu(), ids, out, dtable));
  EXPECT_EQ(ToDoubles(dtable), std::vector<double>(6, 3.0));
}

TEST(EmbeddingTest, OutOfRangeIdsNameThePosition) {
  Tensor table = HostTensor({4, 2}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), table, 1.0));
  Tensor out = HostTensor({3, 2}, DType::kF32);
  EXPECT_THAT(EmbeddingForward(Cpu(), FromInts({0, 4, 1}), table, out),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("ids[1]: got 4, expected a token id in [0, 4)")));
  EXPECT_THAT(EmbeddingForward(Cpu(), FromInts({0, 1, -1}), table, out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ids[2]: got -1")));
  Tensor dtable = HostTensor({4, 2}, DType::kF32);
  MOE_ASSERT_OK(Fill(Cpu(), dtable, 0.0));
  EXPECT_THAT(EmbeddingBackward(Cpu(), FromInts({7, 0, 0}), out, dtable),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ids[0]: got 7")));
  EXPECT_EQ(ToDoubles(dtable), std::vector<double>(8, 0.0));  // nothing written
}

TEST(EmbeddingTest, BadShapesAndDtypes) {
  Tensor table = HostTensor({4, 2}, DType::kF32);
  Tensor ids = FromInts({0, 1, 2});
  Tensor out = HostTensor({3, 2}, DType::kF32);
  EXPECT_THAT(EmbeddingForward(Cpu(), HostTensor({3}, DType::kI64), table, out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ids.dtype")));
  EXPECT_THAT(EmbeddingForward(Cpu(), ids, HostTensor({4, 2}, DType::kI32), out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("table.dtype")));
  EXPECT_THAT(EmbeddingForward(Cpu(), ids, table, HostTensor({3, 3}, DType::kF32)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("out.shape: got [3, 3]")));
  EXPECT_THAT(EmbeddingForward(Cpu(), ids, table, HostTensor({3, 2}, DType::kBF16)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("out.dtype")));
  EXPECT_THAT(EmbeddingBackward(Cpu(), ids, out, HostTensor({4, 2}, DType::kBF16)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dtable.dtype")));
  EXPECT_THAT(EmbeddingBackward(Cpu(), ids, HostTensor({2, 2}, DType::kF32),
                                HostTensor({4, 2}, DType::kF32)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dout.shape")));
}

}  // namespace
}  // namespace smoe
