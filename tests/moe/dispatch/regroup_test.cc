// GatherRows and BlockTransposeIndex (moe/dispatch/regroup.h): hand-worked cases, the regroup
// round trip, and argument errors naming the field.
#include "moe/dispatch/regroup.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/core/philox.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/compare.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using testing::Cpu;
using ::testing::ElementsAre;
using testing::FromFloats;
using testing::FromInts;
using ::testing::HasSubstr;
using testing::HostTensor;
using testing::RandomNormal;
using testing::StatusIs;

TEST(GatherRowsTest, HandWorked) {
  const Tensor src = FromFloats({0, 1, 10, 11, 20, 21}, {3, 2});
  const Tensor index = FromInts({2, 0, 2, 1});
  Tensor dst = HostTensor({4, 2});
  MOE_ASSERT_OK(GatherRows(Cpu(), src, index, dst));
  EXPECT_THAT(testing::ToDoubles(dst), ElementsAre(20, 21, 0, 1, 20, 21, 10, 11));
}

TEST(GatherRowsTest, CopiesRowsBitForBitInF32AndBf16) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const int64_t s = 37, c = 13, n = 50;
    const Tensor src = RandomNormal({s, c}, dtype, 7);
    std::vector<int32_t> idx(n);
    for (int64_t i = 0; i < n; ++i) idx[i] = static_cast<int32_t>((i * 11 + 5) % s);
    Tensor dst = HostTensor({n, c}, dtype);
    MOE_ASSERT_OK(GatherRows(Cpu(), src, FromInts(idx), dst));
    Tensor expected = HostTensor({n, c}, dtype);
    for (int64_t i = 0; i < n; ++i) {
      MOE_ASSERT_OK(
          Copy(Cpu(), src.view().Rows(idx[i], idx[i] + 1), expected.view().Rows(i, i + 1)));
    }
    EXPECT_TRUE(testing::AllEqual(dst, expected)) << DTypeName(dtype);
  }
}

TEST(GatherRowsTest, EmptyIndexWritesNothing) {
  const Tensor src = RandomNormal({4, 3}, 1);
  Tensor dst = HostTensor({0, 3});
  MOE_EXPECT_OK(GatherRows(Cpu(), src, HostTensor({0}, DType::kI32), dst));
}

TEST(GatherRowsTest, ErrorsNameTheArgument) {
  const Tensor src = RandomNormal({4, 3}, 1);
  Tensor dst = HostTensor({2, 3});
  EXPECT_THAT(GatherRows(Cpu(), src, FromInts({1, 4}), dst),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("index[1]")));
  EXPECT_THAT(GatherRows(Cpu(), src, FromInts({-1, 0}), dst),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("index[0]")));
  EXPECT_THAT(GatherRows(Cpu(), src, FromInts({0, 1, 2}), dst),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dst")));
  Tensor wide = HostTensor({2, 4});
  EXPECT_THAT(GatherRows(Cpu(), src, FromInts({0, 1}), wide),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dst")));
  Tensor bf16 = HostTensor({2, 3}, DType::kBF16);
  EXPECT_THAT(GatherRows(Cpu(), src, FromInts({0, 1}), bf16),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dst")));
  const Tensor i64_index = HostTensor({2}, DType::kI64);
  EXPECT_THAT(GatherRows(Cpu(), src, i64_index, dst),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("index")));
  EXPECT_THAT(GatherRows(Cpu(), FromInts({1, 2, 3, 4}, {2, 2}), FromInts({0, 1}), dst),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("src.dtype")));
  EXPECT_THAT(GatherRows(Cpu(), src, FromInts({0, 1}), src.view().Rows(2, 4)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overlapping src")));
}

// Blocks (source a, expert b) of 2 x 3: rows per block {1, 0, 2 | 2, 1, 0}; a-major positions
// (0,0)=0, (0,2)=1..2, (1,0)=3..4, (1,1)=5; b-major: (0,0), (1,0), (0,1), (1,1), (0,2), (1,2).
TEST(BlockTransposeIndexTest, HandWorked) {
  const std::vector<int64_t> rows = {1, 0, 2, 2, 1, 0};
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<int32_t> index, BlockTransposeIndex(rows, 2, 3));
  EXPECT_THAT(index, ElementsAre(0, 3, 4, 5, 1, 2));
  // The inverse: blocks (b, a) of the transposed counts, 3 x 2.
  const std::vector<int64_t> transposed = {1, 2, 0, 1, 2, 0};
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<int32_t> inverse, BlockTransposeIndex(transposed, 3, 2));
  EXPECT_THAT(inverse, ElementsAre(0, 4, 5, 1, 2, 3));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(index[inverse[i]], i);
}

// Random block sizes (including empty blocks): there and back is the identity on the rows.
TEST(BlockTransposeIndexTest, RoundTripRestoresTheRows) {
  const int64_t a = 4, b = 5, c = 6;
  std::vector<int64_t> rows(a * b), transposed(a * b);
  int64_t total = 0;
  for (int64_t i = 0; i < a; ++i) {
    for (int64_t j = 0; j < b; ++j) {
      const int64_t n = PhiloxBits(9, static_cast<uint64_t>(i * b + j)) % 4;
      rows[i * b + j] = n;
      transposed[j * a + i] = n;
      total += n;
    }
  }
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<int32_t> there, BlockTransposeIndex(rows, a, b));
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<int32_t> back, BlockTransposeIndex(transposed, b, a));
  ASSERT_EQ(static_cast<int64_t>(there.size()), total);
  std::vector<int32_t> sorted = there;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int32_t> iota(total);
  std::iota(iota.begin(), iota.end(), 0);
  EXPECT_EQ(sorted, iota) << "a permutation";
  const Tensor x = RandomNormal({total, c}, 3);
  Tensor regrouped = HostTensor({total, c}), restored = HostTensor({total, c});
  MOE_ASSERT_OK(GatherRows(Cpu(), x, FromInts(there), regrouped));
  MOE_ASSERT_OK(GatherRows(Cpu(), regrouped, FromInts(back), restored));
  EXPECT_TRUE(testing::AllEqual(restored, x));
  // Within b-major order, block (i, j) sits after every block (., j' < j) and (i' < i, j).
  int64_t at = 0;
  for (int64_t j = 0; j < b; ++j) {
    for (int64_t i = 0; i < a; ++i) {
      int64_t begin = 0;
      for (int64_t q = 0; q < i * b + j; ++q) begin += rows[q];
      for (int64_t r = 0; r < rows[i * b + j]; ++r) ASSERT_EQ(there[at++], begin + r);
    }
  }
}

TEST(BlockTransposeIndexTest, RejectsBadCounts) {
  EXPECT_THAT(BlockTransposeIndex(std::vector<int64_t>{1, 2, 3}, 2, 2),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("block_rows.size")));
  EXPECT_THAT(BlockTransposeIndex(std::vector<int64_t>{1, -2}, 1, 2),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("block_rows[1]")));
}

}  // namespace
}  // namespace smoe
