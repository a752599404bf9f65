// The whole DiffQKV block on CPU: forward against an fp64 composition of the references, and every
// gradient (dx and all weights) against fp64 finite differences of that composition.
#include "attention/diffqkv.h"

#include <cmath>
#include <tuple>

#include "attention/attention_core_cpu.h"
#include "attention/qk_norm.h"
#include "attention/qk_norm_cpu.h"
#include "attention/rope_cpu.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/nn/swiglu.h"
#include "tests/attention/test_util.h"
#include "tests/testing/compare.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using attention_test::Concat;
using attention_test::Slice;
using attention_test::WeightedSum;
using ::testing::HasSubstr;
using testing::HostTensor;
using testing::RandomNormal;
using testing::StatusIs;
using testing::ToDoubles;

// C [m, n] = A [m, k] B [k, n] in double.
std::vector<double> MatMul(const double* a, const double* b, int64_t m, int64_t k, int64_t n) {
  std::vector<double> c(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t p = 0; p < k; ++p) {
      for (int64_t j = 0; j < n; ++j) c[i * n + j] += a[i * k + p] * b[p * n + j];
    }
  }
  return c;
}

// The parameters and the input, owned, in the order the fp64 reference reads them.
struct Block {
  DiffQkvConfig c;
  int64_t B, S;
  std::vector<Tensor> tensors;  // x, w_q, w_k, w_v, w_o, [w_gate, w_up, w_down], [q_norm, k_norm]

  Block(DiffQkvConfig config, int64_t batch, int64_t seq) : c(config), B(batch), S(seq) {
    const int64_t M = c.model_dim, qd = c.n_q * c.head_dim;
    const float ws = 1.0f / std::sqrt(static_cast<float>(M));
    tensors.push_back(RandomNormal({B, S, M}, 100));
    tensors.push_back(RandomNormal({M, qd}, 101, ws));
    tensors.push_back(RandomNormal({M, c.n_k * c.head_dim}, 102, ws));
    tensors.push_back(RandomNormal({M, c.n_v * c.head_dim}, 103, ws));
    tensors.push_back(RandomNormal({qd, M}, 104, ws));
    if (c.d_aug > 0) {
      tensors.push_back(RandomNormal({qd, c.d_aug}, 105, 0.5f));
      tensors.push_back(RandomNormal({qd, c.d_aug}, 106, 0.5f));
      tensors.push_back(RandomNormal({c.d_aug, qd}, 107, 0.5f));
    }
    if (c.qk_norm) {
      tensors.push_back(RandomNormal({c.head_dim}, 108, 0.3f));
      tensors.push_back(RandomNormal({c.head_dim}, 109, 0.3f));
      for (int t = 0; t < 2; ++t) {
        for (int64_t j = 0; j < c.head_dim; ++j)
          tensors[tensors.size() - 1 - t].data<float>()[j] += 1.0f;
      }
    }
  }

  // Views of tensors laid out like `tensors` (the parameters or their gradients).
  DiffQkvParams Params(const std::vector<Tensor>& t) const {
    DiffQkvParams p{t[1], t[2], t[3], t[4], {}, {}, {}};
    size_t next = 5;
    if (c.d_aug > 0) {
      p.aug = {t[5], t[6], t[7]};
      next = 8;
    }
    if (c.qk_norm) {
      p.q_norm = t[next];
      p.k_norm = t[next + 1];
    }
    return p;
  }

  std::vector<Tensor> EmptyLike() const {
    std::vector<Tensor> out;
    for (const Tensor& t : tensors) out.push_back(HostTensor(t.shape()));
    return out;
  }

  std::vector<double> Flat() const {
    std::vector<double> all;
    for (const Tensor& t : tensors) {
      const std::vector<double> v = ToDoubles(t);
      all.insert(all.end(), v.begin(), v.end());
    }
    return all;
  }

  // y [B, S, M] in double from the flattened input and parameters.
  std::vector<double> Reference(const std::vector<double>& all) const {
    const int64_t T = B * S, M = c.model_dim, D = c.head_dim, qd = c.n_q * D;
    const double* at = all.data();
    auto take = [&](int64_t n) {
      const double* p = at;
      at += n;
      return p;
    };
    const double* x = take(T * M);
    const double* w_q = take(M * qd);
    const double* w_k = take(M * c.n_k * D);
    const double* w_v = take(M * c.n_v * D);
    const double* w_o = take(qd * M);
    std::vector<double> q = MatMul(x, w_q, T, M, qd);
    if (c.d_aug > 0) {
      const double* wg = take(qd * c.d_aug);
      const double* wu = take(qd * c.d_aug);
      const double* wd = take(c.d_aug * qd);
      std::vector<double> g = MatMul(q.data(), wg, T, qd, c.d_aug);
      std::vector<double> u = MatMul(q.data(), wu, T, qd, c.d_aug);
      std::vector<double> h(g.size());
      for (size_t j = 0; j < h.size(); ++j) h[j] = internal::SwiGLUValue(g[j], u[j]);
      q = MatMul(h.data(), wd, T, c.d_aug, qd);
    }
    std::vector<double> k = MatMul(x, w_k, T, M, c.n_k * D);
    std::vector<double> v = MatMul(x, w_v, T, M, c.n_v * D);
    if (c.qk_norm) {
      const double* gq = take(D);
      const double* gk = take(D);
      std::vector<double> rq(T * c.n_q), rk(T * c.n_k);
      attention_internal::HeadRmsNormForwardCpu(q.data(), gq, q.data(), rq.data(), T * c.n_q, D,
                                                kQkNormEps);
      attention_internal::HeadRmsNormForwardCpu(k.data(), gk, k.data(), rk.data(), T * c.n_k, D,
                                                kQkNormEps);
    }
    attention_internal::RopeCpu(q.data(), q.data(), B, S, c.n_q, D, c.rope_theta, 0, +1);
    attention_internal::RopeCpu(k.data(), k.data(), B, S, c.n_k, D, c.rope_theta, 0, +1);
    std::vector<double> o(T * qd), lse(B * c.n_q * S);
    const AttentionDims dims{B, S, c.n_q, c.n_k, c.n_v, D};
    attention_internal::AttentionForwardCpu(dims, q.data(), k.data(), v.data(), o.data(),
                                            lse.data());
    return MatMul(o.data(), w_o, T, qd, M);
  }
};

// (d_aug, qk_norm, n_q, n_k, n_v)
class DiffQkvBlockTest
    : public ::testing::TestWithParam<std::tuple<int64_t, bool, int64_t, int64_t, int64_t>> {};

TEST_P(DiffQkvBlockTest, ForwardAndGradientsMatchFp64Reference) {
  const auto [d_aug, qk_norm, n_q, n_k, n_v] = GetParam();
  const DiffQkvConfig config{6, n_q, n_k, n_v, 4, d_aug, qk_norm, 50.0};
  Block block(config, 2, 3);
  ExecContext& ctx = ExecContext::Cpu();
  const TensorView x = block.tensors[0];
  Tensor y = HostTensor(x.shape());
  DiffQkvSaved saved;
  const DiffQkvParams params = block.Params(block.tensors);
  MOE_ASSERT_OK(DiffQkvForward(ctx, config, params, x, y, &saved));
  const std::vector<double> all = block.Flat();
  EXPECT_TRUE(testing::AllClose(ToDoubles(y), block.Reference(all), {1e-5, 1e-4}));

  const std::vector<double> w = testing::RandomWeights(y.numel(), 7);
  Tensor dy = testing::FromDoubles(w, y.shape());
  // The weight gradients accumulate: start them at 0.25 and take the difference.
  constexpr double kBase = 0.25;
  std::vector<Tensor> grads = block.EmptyLike();
  for (size_t i = 1; i < grads.size(); ++i) MOE_ASSERT_OK(Fill(ctx, grads[i], kBase));
  MOE_ASSERT_OK(DiffQkvBackward(ctx, config, params, x, saved, dy, grads[0], block.Params(grads)));
  std::vector<double> analytic;
  for (size_t i = 0; i < grads.size(); ++i) {
    for (double v : ToDoubles(grads[i])) analytic.push_back(i == 0 ? v : v - kBase);
  }
  auto loss = [&](const std::vector<double>& xs) { return WeightedSum(w, block.Reference(xs)); };
  // Analytic gradients are f32, the finite differences fp64.
  EXPECT_TRUE(testing::CheckGradient(loss, all, analytic, {1e-6, 2e-5, 2e-3}));
}

INSTANTIATE_TEST_SUITE_P(Configs, DiffQkvBlockTest,
                         ::testing::Values(std::make_tuple(0, false, 2, 2, 2),    // MHA
                                           std::make_tuple(0, true, 4, 2, 2),     // GQA
                                           std::make_tuple(5, true, 4, 1, 2),     // DiffQKV
                                           std::make_tuple(3, false, 6, 2, 3)));  // non-nested

TEST_P(DiffQkvBlockTest, PrefillThenDecodeStepsEqualForwardRows) {
  const auto [d_aug, qk_norm, n_q, n_k, n_v] = GetParam();
  const DiffQkvConfig config{6, n_q, n_k, n_v, 4, d_aug, qk_norm, 50.0};
  const int64_t B = 2, S = 7, prompt = 4;
  Block block(config, B, S);
  ExecContext& ctx = ExecContext::Cpu();
  const DiffQkvParams params = block.Params(block.tensors);
  const Tensor& x = block.tensors[0];
  Tensor y = HostTensor(x.shape());
  DiffQkvSaved saved;
  MOE_ASSERT_OK(DiffQkvForward(ctx, config, params, x, y, &saved));

  MOE_ASSERT_OK_AND_ASSIGN(KvCache cache, KvCache::Create(ctx, B, S, n_k, n_v, 4, DType::kF32));
  Tensor x_prompt = Slice(x, 0, prompt), y_prompt = HostTensor(x_prompt.shape());
  DiffQkvSaved prompt_saved;
  MOE_ASSERT_OK(DiffQkvForward(ctx, config, params, x_prompt, y_prompt, &prompt_saved));
  MOE_ASSERT_OK(DiffQkvPrefillCache(ctx, prompt_saved, &cache));
  EXPECT_THAT(DiffQkvPrefillCache(ctx, prompt_saved, &cache),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cache.length: got 4")));
  for (int64_t s = prompt; s < S; ++s) {
    Tensor y_new = HostTensor({B, 1, config.model_dim});
    MOE_ASSERT_OK(DiffQkvDecodeStep(ctx, config, params, Slice(x, s, s + 1), &cache, y_new));
    EXPECT_TRUE(testing::AllClose(y_new, Slice(y, s, s + 1), {1e-5, 1e-4})) << "position " << s;
  }
  Tensor y_new = HostTensor({B, 1, config.model_dim});
  EXPECT_THAT(DiffQkvDecodeStep(ctx, config, params, Slice(x, 0, 1), &cache, y_new),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cache.capacity")));
}

// No tokens (S = 0): an empty output, and the weight gradients left as they were (Backward adds
// zero to them).
TEST(DiffQkvBlockTest, EmptyBatch) {
  const DiffQkvConfig config{6, 4, 1, 2, 4, 8, true, 1e4};
  Block block(config, 2, 0);
  ExecContext& ctx = ExecContext::Cpu();
  Tensor y = HostTensor(block.tensors[0].shape());
  DiffQkvSaved saved;
  MOE_ASSERT_OK(
      DiffQkvForward(ctx, config, block.Params(block.tensors), block.tensors[0], y, &saved));
  std::vector<Tensor> grads = block.EmptyLike();
  for (size_t i = 1; i < grads.size(); ++i) MOE_ASSERT_OK(Fill(ctx, grads[i], 7.0));
  Tensor dy = HostTensor(y.shape());
  MOE_ASSERT_OK(DiffQkvBackward(ctx, config, block.Params(block.tensors), block.tensors[0], saved,
                                dy, grads[0], block.Params(grads)));
  for (size_t i = 1; i < grads.size(); ++i) {
    for (double g : ToDoubles(grads[i])) ASSERT_EQ(g, 7.0) << "gradient " << i;
  }
}

TEST(DiffQkvBlockTest, BadConfig) {
  DiffQkvConfig config{6, 4, 3, 2, 4, 0, false, 1e4};
  EXPECT_THAT(ValidateDiffQkvConfig(config, Device::Cpu()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("n_k: got 3")));
  config.n_k = 2;
  config.head_dim = 5;
  EXPECT_THAT(ValidateDiffQkvConfig(config, Device::Cpu()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("head_dim: got 5")));
  config.head_dim = 80;
  MOE_EXPECT_OK(ValidateDiffQkvConfig(config, Device::Cpu()));
  EXPECT_THAT(ValidateDiffQkvConfig(config, Device::Cuda()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("64, 96 or 128")));

  config.head_dim = 4;
  Block block(config, 1, 2);
  std::vector<Tensor> bad = block.tensors;
  bad[2] = RandomNormal({6, 4}, 1);  // w_k for one K head instead of two
  Tensor y = HostTensor(block.tensors[0].shape());
  DiffQkvSaved saved;
  EXPECT_THAT(DiffQkvForward(ExecContext::Cpu(), config, block.Params(bad), bad[0], y, &saved),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("w_k.shape: got [6, 4]")));
}

}  // namespace
}  // namespace smoe
