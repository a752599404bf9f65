#include "attention/kv_cache.h"

#include <tuple>

#include "attention/attention_core.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/attention/test_util.h"
#include "tests/testing/compare.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using attention_test::Slice;
using ::testing::HasSubstr;
using testing::HostTensor;
using testing::RandomNormal;
using testing::StatusIs;
using testing::ToDoubles;

class DecodeTest : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t>> {};

TEST_P(DecodeTest, EqualsLastRowOfCausalAttention) {
  const auto [n_q, n_k, n_v] = GetParam();
  const int64_t B = 2, S = 11, D = 6;
  Tensor q = RandomNormal({B, S, n_q, D}, 1), k = RandomNormal({B, S, n_k, D}, 2);
  Tensor v = RandomNormal({B, S, n_v, D}, 3);
  Tensor out = HostTensor(q.shape()), lse = HostTensor({B, n_q, S});
  MOE_ASSERT_OK(AttentionForward(ExecContext::Cpu(), q, k, v, out, lse));

  MOE_ASSERT_OK_AND_ASSIGN(KvCache cache,
                           KvCache::Create(ExecContext::Cpu(), B, 16, n_k, n_v, D, DType::kF32));
  // A prompt of 8 tokens, then one token at a time; every step matches its row.
  MOE_ASSERT_OK(cache.Append(ExecContext::Cpu(), Slice(k, 0, 8), Slice(v, 0, 8)));
  for (int64_t s = 8; s < S; ++s) {
    MOE_ASSERT_OK(cache.Append(ExecContext::Cpu(), Slice(k, s, s + 1), Slice(v, s, s + 1)));
    EXPECT_EQ(cache.length(), s + 1);
    Tensor q_new = HostTensor({B, n_q, D});
    MOE_ASSERT_OK(Copy(ExecContext::Cpu(), Slice(q, s, s + 1), q_new));
    Tensor decoded = HostTensor({B, n_q, D});
    MOE_ASSERT_OK(DecodeAttention(ExecContext::Cpu(), q_new, cache, decoded));
    EXPECT_TRUE(
        testing::AllClose(ToDoubles(decoded), ToDoubles(Slice(out, s, s + 1)), {1e-6, 1e-5}));
  }
}

INSTANTIATE_TEST_SUITE_P(Heads, DecodeTest,
                         ::testing::Values(std::make_tuple(4, 4, 4), std::make_tuple(4, 1, 1),
                                           std::make_tuple(8, 2, 4), std::make_tuple(6, 3, 2)));

TEST(KvCacheTest, OverflowAndBadShapes) {
  MOE_ASSERT_OK_AND_ASSIGN(KvCache cache,
                           KvCache::Create(ExecContext::Cpu(), 1, 4, 1, 2, 8, DType::kF32));
  Tensor q = RandomNormal({1, 4, 8}, 1), out = HostTensor({1, 4, 8});
  EXPECT_THAT(DecodeAttention(ExecContext::Cpu(), q, cache, out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cache.length")));
  MOE_ASSERT_OK(cache.Append(ExecContext::Cpu(), RandomNormal({1, 3, 1, 8}, 2),
                             RandomNormal({1, 3, 2, 8}, 3)));
  EXPECT_THAT(cache.Append(ExecContext::Cpu(), RandomNormal({1, 2, 1, 8}, 2),
                           RandomNormal({1, 2, 2, 8}, 3)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cache.capacity: got 4")));
  EXPECT_EQ(cache.length(), 3);
  EXPECT_THAT(cache.Append(ExecContext::Cpu(), RandomNormal({1, 1, 1, 8}, 2),
                           RandomNormal({1, 1, 1, 8}, 3)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("v_new.shape")));
  Tensor q3 = RandomNormal({1, 3, 8}, 1), out3 = HostTensor({1, 3, 8});
  EXPECT_THAT(DecodeAttention(ExecContext::Cpu(), q3, cache, out3),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("n_v: got 2")));
  MOE_EXPECT_OK(DecodeAttention(ExecContext::Cpu(), q, cache, out));
  cache.Clear();
  EXPECT_EQ(cache.length(), 0);
}

}  // namespace
}  // namespace smoe
