#include "attention/attention_core.h"

#include <cmath>
#include <tuple>

#include "attention/attention_core_cpu.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/attention/test_util.h"
#include "tests/testing/compare.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using attention_test::Concat;
using attention_test::WeightedSum;
using testing::Cpu;
using ::testing::HasSubstr;
using testing::HostTensor;
using testing::RandomNormal;
using testing::StatusIs;
using testing::ToDoubles;

// [B, S, n_k, D] -> [B, S, n_q, D] with head i = head map(i): the explicit repetition that the
// kernels avoid.
Tensor RepeatHeads(const Tensor& x, int64_t n_q) {
  const int64_t B = x.dim(0), S = x.dim(1), n = x.dim(2), D = x.dim(3);
  Tensor r = HostTensor({B, S, n_q, D});
  for (int64_t bs = 0; bs < B * S; ++bs) {
    for (int64_t i = 0; i < n_q; ++i) {
      for (int64_t j = 0; j < D; ++j) {
        r.data<float>()[(bs * n_q + i) * D + j] = x.data<float>()[(bs * n + i * n / n_q) * D + j];
      }
    }
  }
  return r;
}

// Sums the gradient of repeated heads back onto their source heads.
std::vector<double> SumRepeated(const Tensor& g, int64_t n) {
  const int64_t B = g.dim(0), S = g.dim(1), n_q = g.dim(2), D = g.dim(3);
  std::vector<double> out(B * S * n * D, 0.0);
  for (int64_t bs = 0; bs < B * S; ++bs) {
    for (int64_t i = 0; i < n_q; ++i) {
      for (int64_t j = 0; j < D; ++j) {
        out[(bs * n + i * n / n_q) * D + j] += g.data<float>()[(bs * n_q + i) * D + j];
      }
    }
  }
  return out;
}

// MHA the textbook way: the full masked score matrix per (b, head), softmax, times V.
std::vector<double> NaiveMha(const Tensor& q, const Tensor& k, const Tensor& v) {
  const int64_t B = q.dim(0), S = q.dim(1), H = q.dim(2), D = q.dim(3);
  std::vector<double> out(q.numel());
  auto at = [&](const Tensor& t, int64_t b, int64_t s, int64_t h, int64_t j) {
    return double{t.data<float>()[((b * S + s) * H + h) * D + j]};
  };
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> p(S * S, 0.0);
      for (int64_t s = 0; s < S; ++s) {
        double sum = 0.0;
        for (int64_t t = 0; t <= s; ++t) {
          double dot = 0.0;
          for (int64_t j = 0; j < D; ++j) dot += at(q, b, s, h, j) * at(k, b, t, h, j);
          p[s * S + t] = std::exp(dot / std::sqrt(double(D)));
          sum += p[s * S + t];
        }
        for (int64_t t = 0; t <= s; ++t) p[s * S + t] /= sum;
        for (int64_t j = 0; j < D; ++j) {
          double o = 0.0;
          for (int64_t t = 0; t < S; ++t) o += p[s * S + t] * at(v, b, t, h, j);
          out[((b * S + s) * H + h) * D + j] = o;
        }
      }
    }
  }
  return out;
}

TEST(AttentionCoreTest, HandWorked) {
  // D = 1, scale 1: row 0 sees only key 0; row 1 weighs keys 0, 1 by exp(0) : exp(ln 3) = 1 : 3.
  Tensor q = testing::FromDoubles({1.0, 1.0}, {1, 2, 1, 1});
  Tensor k = testing::FromDoubles({0.0, std::log(3.0)}, {1, 2, 1, 1});
  Tensor v = testing::FromDoubles({2.0, 6.0}, {1, 2, 1, 1});
  Tensor out = HostTensor({1, 2, 1, 1}), lse = HostTensor({1, 1, 2});
  MOE_ASSERT_OK(AttentionForward(Cpu(), q, k, v, out, lse));
  EXPECT_TRUE(testing::AllClose(ToDoubles(out), {2.0, 0.25 * 2.0 + 0.75 * 6.0}, {1e-6, 1e-6}));
  EXPECT_TRUE(testing::AllClose(ToDoubles(lse), {0.0, std::log(4.0)}, {1e-6, 1e-6}));
}

// (n_q, n_k, n_v): MHA, GQA, MQA, DiffQKV with n_k < n_v, and non-nested K and V groups.
class AttentionHeadsTest : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t>> {
};

TEST_P(AttentionHeadsTest, MatchesRepeatedHeadsAndNaiveReference) {
  const auto [n_q, n_k, n_v] = GetParam();
  const int64_t B = 2, S = 7, D = 5;
  Tensor q = RandomNormal({B, S, n_q, D}, 1), k = RandomNormal({B, S, n_k, D}, 2);
  Tensor v = RandomNormal({B, S, n_v, D}, 3), dout = RandomNormal({B, S, n_q, D}, 4);
  Tensor out = HostTensor({B, S, n_q, D}), lse = HostTensor({B, n_q, S});
  MOE_ASSERT_OK(AttentionForward(Cpu(), q, k, v, out, lse));

  Tensor k_rep = RepeatHeads(k, n_q), v_rep = RepeatHeads(v, n_q);
  Tensor out_rep = HostTensor({B, S, n_q, D}), lse_rep = HostTensor({B, n_q, S});
  MOE_ASSERT_OK(AttentionForward(Cpu(), q, k_rep, v_rep, out_rep, lse_rep));
  EXPECT_TRUE(testing::AllClose(out, out_rep, {1e-6, 1e-5}));
  EXPECT_TRUE(testing::AllClose(lse, lse_rep, {1e-6, 1e-5}));
  EXPECT_TRUE(testing::AllClose(ToDoubles(out), NaiveMha(q, k_rep, v_rep), {1e-6, 1e-5}));

  Tensor dq = HostTensor(q.shape()), dk = HostTensor(k.shape()), dv = HostTensor(v.shape());
  MOE_ASSERT_OK(AttentionBackward(Cpu(), q, k, v, out, lse, dout, dq, dk, dv));
  Tensor dq_rep = HostTensor(q.shape()), dk_rep = HostTensor(k_rep.shape());
  Tensor dv_rep = HostTensor(v_rep.shape());
  MOE_ASSERT_OK(
      AttentionBackward(Cpu(), q, k_rep, v_rep, out_rep, lse_rep, dout, dq_rep, dk_rep, dv_rep));
  EXPECT_TRUE(testing::AllClose(dq, dq_rep, {1e-5, 1e-4}));
  EXPECT_TRUE(testing::AllClose(ToDoubles(dk), SumRepeated(dk_rep, n_k), {1e-5, 1e-4}));
  EXPECT_TRUE(testing::AllClose(ToDoubles(dv), SumRepeated(dv_rep, n_v), {1e-5, 1e-4}));
}

INSTANTIATE_TEST_SUITE_P(Heads, AttentionHeadsTest,
                         ::testing::Values(std::make_tuple(4, 4, 4), std::make_tuple(4, 2, 2),
                                           std::make_tuple(4, 1, 1), std::make_tuple(8, 2, 4),
                                           std::make_tuple(6, 2, 3), std::make_tuple(4, 4, 1)));

TEST(AttentionCoreTest, GradientMatchesFiniteDifferences) {
  const AttentionDims d{2, 4, 4, 1, 2, 3};
  const int64_t nq = d.batch * d.seq * d.n_q * d.head_dim;
  const int64_t nk = d.batch * d.seq * d.n_k * d.head_dim;
  const int64_t nv = d.batch * d.seq * d.n_v * d.head_dim;
  const std::vector<double> x =
      Concat({ToDoubles(RandomNormal({nq}, 11)), ToDoubles(RandomNormal({nk}, 12)),
              ToDoubles(RandomNormal({nv}, 13))});
  const std::vector<double> w = testing::RandomWeights(nq, 14);
  auto forward = [&](const std::vector<double>& xs, std::vector<double>* out,
                     std::vector<double>* lse) {
    out->resize(nq);
    lse->resize(d.batch * d.n_q * d.seq);
    attention_internal::AttentionForwardCpu(d, xs.data(), xs.data() + nq, xs.data() + nq + nk,
                                            out->data(), lse->data());
  };
  auto loss = [&](const std::vector<double>& xs) {
    std::vector<double> out, lse;
    forward(xs, &out, &lse);
    return WeightedSum(w, out);
  };
  std::vector<double> out, lse, grad(x.size());
  forward(x, &out, &lse);
  attention_internal::AttentionBackwardCpu(d, x.data(), x.data() + nq, x.data() + nq + nk,
                                           out.data(), lse.data(), w.data(), grad.data(),
                                           grad.data() + nq, grad.data() + nq + nk);
  EXPECT_TRUE(testing::CheckGradient(loss, x, grad));
}

TEST(AttentionCoreTest, Bf16MatchesF32) {
  const int64_t B = 1, S = 9, n_q = 4, n_k = 1, n_v = 2, D = 16;
  Tensor q = RandomNormal({B, S, n_q, D}, DType::kBF16, 5, 1.0f);
  Tensor k = RandomNormal({B, S, n_k, D}, DType::kBF16, 6, 1.0f);
  Tensor v = RandomNormal({B, S, n_v, D}, DType::kBF16, 7, 1.0f);
  Tensor out = HostTensor({B, S, n_q, D}, DType::kBF16), lse = HostTensor({B, n_q, S});
  MOE_ASSERT_OK(AttentionForward(Cpu(), q, k, v, out, lse));
  Tensor q32 = HostTensor(q.shape()), k32 = HostTensor(k.shape()), v32 = HostTensor(v.shape());
  MOE_ASSERT_OK(Cast(Cpu(), q, q32));
  MOE_ASSERT_OK(Cast(Cpu(), k, k32));
  MOE_ASSERT_OK(Cast(Cpu(), v, v32));
  Tensor out32 = HostTensor(out.shape()), lse32 = HostTensor(lse.shape());
  MOE_ASSERT_OK(AttentionForward(Cpu(), q32, k32, v32, out32, lse32));
  EXPECT_TRUE(testing::AllClose(ToDoubles(out), ToDoubles(out32), {1e-2, 1e-2}));
  EXPECT_TRUE(testing::AllClose(lse, lse32, {1e-5, 1e-5}));
}

TEST(AttentionCoreTest, RowsSumToOneAndFirstRowCopiesV) {
  const int64_t B = 1, S = 5, H = 2, D = 3;
  Tensor q = RandomNormal({B, S, H, D}, 21), k = RandomNormal({B, S, H, D}, 22);
  Tensor v = HostTensor({B, S, H, D});
  MOE_ASSERT_OK(Fill(Cpu(), v, 1.5));  // constant V: every output is 1.5 (probabilities sum to 1)
  Tensor out = HostTensor({B, S, H, D}), lse = HostTensor({B, H, S});
  MOE_ASSERT_OK(AttentionForward(Cpu(), q, k, v, out, lse));
  for (double o : ToDoubles(out)) EXPECT_NEAR(o, 1.5, 1e-6);
  Tensor v2 = RandomNormal({B, S, H, D}, 23);
  MOE_ASSERT_OK(AttentionForward(Cpu(), q, k, v2, out, lse));
  for (int64_t j = 0; j < H * D; ++j) EXPECT_FLOAT_EQ(out.data<float>()[j], v2.data<float>()[j]);
}

TEST(AttentionCoreTest, BadArguments) {
  Tensor q = RandomNormal({1, 3, 4, 8}, 1), k = RandomNormal({1, 3, 3, 8}, 2);
  Tensor v = RandomNormal({1, 3, 2, 8}, 3), out = HostTensor({1, 3, 4, 8}),
         lse = HostTensor({1, 4, 3});
  EXPECT_THAT(AttentionForward(Cpu(), q, k, v, out, lse),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("n_k: got 3")));
  Tensor k2 = RandomNormal({1, 3, 2, 8}, 2), v3 = RandomNormal({1, 3, 3, 8}, 3);
  EXPECT_THAT(AttentionForward(Cpu(), q, k2, v3, out, lse),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("n_v: got 3")));
  Tensor k_bad = RandomNormal({1, 4, 2, 8}, 2);
  EXPECT_THAT(AttentionForward(Cpu(), q, k_bad, v, out, lse),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("k.shape")));
  Tensor lse_bad = HostTensor({1, 3, 4});
  EXPECT_THAT(AttentionForward(Cpu(), q, k2, v, out, lse_bad),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("lse.shape")));
  Tensor v_bf16 = RandomNormal({1, 3, 2, 8}, DType::kBF16, 3, 1.0f);
  EXPECT_THAT(AttentionForward(Cpu(), q, k2, v_bf16, out, lse),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("v.dtype")));
  EXPECT_TRUE(CudaSupportsHeadDim(96));
  EXPECT_FALSE(CudaSupportsHeadDim(80));
}

}  // namespace
}  // namespace smoe
