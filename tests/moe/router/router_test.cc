#include "moe/router/router.h"

#include <cmath>
#include <limits>
#include <numeric>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moe/router/router_cpu.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/compare.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using ::testing::ElementsAre;
using testing::FromFloats;
using testing::FromInts;
using ::testing::HasSubstr;
using testing::HostTensor;
using testing::RandomNormal;
using testing::StatusIs;
using testing::ToDoubles;
using testing::ToInts;

struct Outputs {
  Tensor logits, probs, idx, gates;
};

Outputs MakeOutputs(int64_t t, int64_t e, int64_t k) {
  return {HostTensor({t, e}, DType::kF32), HostTensor({t, e}, DType::kF32),
          HostTensor({t, k}, DType::kI32), HostTensor({t, k}, DType::kF32)};
}

Status Forward(const RouterConfig& config, const TensorView& x, const TensorView& w,
               const TensorView& bias, const Outputs& out) {
  return RouterForward(ExecContext::Cpu(), config, x, w, bias, out.logits, out.probs, out.idx,
                       out.gates);
}

std::vector<double> SoftmaxOf(std::vector<double> row) {
  double sum = 0.0;
  for (double v : row) sum += std::exp(v);
  for (double& v : row) v = std::exp(v) / sum;
  return row;
}

// x = I, so logits = w: row 0 = [1, 3, 2, 3], row 1 = [0, -1, 5, 5].
TEST(RouterForwardTest, HandWorkedTopTwoWithTies) {
  const Tensor x = FromFloats({1, 0, 0, 1}, {2, 2});
  const Tensor w = FromFloats({1, 3, 2, 3, 0, -1, 5, 5}, {2, 4});
  for (bool renormalize : {false, true}) {
    const Outputs out = MakeOutputs(2, 4, 2);
    MOE_ASSERT_OK(Forward({4, 2, renormalize}, x, w, TensorView(), out));
    EXPECT_THAT(ToDoubles(out.logits), ElementsAre(1, 3, 2, 3, 0, -1, 5, 5));
    std::vector<double> probs = SoftmaxOf({1, 3, 2, 3});
    const std::vector<double> row1 = SoftmaxOf({0, -1, 5, 5});
    probs.insert(probs.end(), row1.begin(), row1.end());
    EXPECT_TRUE(testing::AllClose(ToDoubles(out.probs), probs, {1e-7, 1e-6}));
    // Equal scores rank by lower index: expert 1 before 3, expert 2 before 3.
    EXPECT_THAT(ToInts(out.idx), ElementsAre(1, 3, 2, 3));
    const std::vector<double> gates =
        renormalize ? std::vector<double>{0.5, 0.5, 0.5, 0.5}
                    : std::vector<double>{probs[1], probs[3], probs[6], probs[7]};
    EXPECT_TRUE(testing::AllClose(ToDoubles(out.gates), gates, {1e-7, 1e-6}));
  }
}

TEST(RouterForwardTest, BiasSelectsButNeverEntersProbsOrGates) {
  const Tensor x = FromFloats({1, 0, 0, 1}, {2, 2});
  const Tensor w = FromFloats({1, 3, 2, 3, 0, -1, 5, 5}, {2, 4});
  const Tensor bias = FromFloats({0, 0, 0, -10}, {4});
  const Outputs plain = MakeOutputs(2, 4, 2), biased = MakeOutputs(2, 4, 2);
  MOE_ASSERT_OK(Forward({4, 2, false}, x, w, TensorView(), plain));
  MOE_ASSERT_OK(Forward({4, 2, false}, x, w, bias, biased));
  EXPECT_TRUE(testing::AllEqual(biased.logits, plain.logits));
  EXPECT_TRUE(testing::AllEqual(biased.probs, plain.probs));
  // Scores row 0 = [1, 3, 2, -7], row 1 = [0, -1, 5, -5].
  EXPECT_THAT(ToInts(biased.idx), ElementsAre(1, 2, 2, 0));
  const float* p = plain.probs.data<float>();
  EXPECT_THAT(ToDoubles(biased.gates), ElementsAre(p[1], p[2], p[6], p[4]));
}

TEST(RouterForwardTest, KEqualsEIsTheFullDescendingOrder) {
  const int64_t t = 5, m = 3, e = 6;
  const Tensor x = RandomNormal({t, m}, 1), w = RandomNormal({m, e}, 2);
  const Outputs out = MakeOutputs(t, e, e);
  MOE_ASSERT_OK(
      Forward({static_cast<int>(e), static_cast<int>(e), false}, x, w, TensorView(), out));
  for (int64_t r = 0; r < t; ++r) {
    std::vector<int32_t> row(out.idx.data<int32_t>() + r * e,
                             out.idx.data<int32_t>() + (r + 1) * e);
    std::vector<int32_t> sorted = row;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int32_t> iota(e);
    std::iota(iota.begin(), iota.end(), 0);
    EXPECT_EQ(sorted, iota);
    double gate_sum = 0.0;
    for (int64_t j = 0; j < e; ++j) {
      gate_sum += out.gates.data<float>()[r * e + j];
      if (j > 0) {
        EXPECT_GE(out.logits.data<float>()[r * e + row[j - 1]],
                  out.logits.data<float>()[r * e + row[j]]);
      }
    }
    EXPECT_NEAR(gate_sum, 1.0, 1e-6);
  }
}

TEST(RouterForwardTest, SingleExpertAndSingleToken) {
  const Tensor x = RandomNormal({3, 4}, 3), w = RandomNormal({4, 1}, 4);
  const Outputs out = MakeOutputs(3, 1, 1);
  MOE_ASSERT_OK(Forward({1, 1, false}, x, w, TensorView(), out));
  EXPECT_THAT(ToInts(out.idx), ElementsAre(0, 0, 0));
  EXPECT_THAT(ToDoubles(out.gates), ElementsAre(1, 1, 1));

  const Tensor x1 = FromFloats({2, -1}, {1, 2});
  const Tensor w1 = FromFloats({1, 0, 0.5f, 0, 1, 0.5f}, {2, 3});  // logits [2, -1, 0.5]
  const Outputs one = MakeOutputs(1, 3, 2);
  MOE_ASSERT_OK(Forward({3, 2, false}, x1, w1, TensorView(), one));
  EXPECT_THAT(ToInts(one.idx), ElementsAre(0, 2));
}

TEST(RouterForwardTest, ZeroTokensIsANoOp) {
  const Tensor x = HostTensor({0, 4}, DType::kF32), w = RandomNormal({4, 3}, 5);
  MOE_EXPECT_OK(Forward({3, 2, true}, x, w, TensorView(), MakeOutputs(0, 3, 2)));
}

TEST(RouterForwardTest, NonFiniteRowRoutesToLowestExpertsWithNaNGates) {
  Tensor x = RandomNormal({3, 4}, 6);
  x.data<float>()[1 * 4 + 2] = std::numeric_limits<float>::quiet_NaN();
  const Tensor w = RandomNormal({4, 5}, 7);
  const Outputs out = MakeOutputs(3, 5, 3);
  MOE_ASSERT_OK(Forward({5, 3, true}, x, w, TensorView(), out));
  EXPECT_EQ(out.idx.data<int32_t>()[3], 0);
  EXPECT_EQ(out.idx.data<int32_t>()[4], 1);
  EXPECT_EQ(out.idx.data<int32_t>()[5], 2);
  for (int j = 0; j < 3; ++j) {
    EXPECT_TRUE(std::isnan(out.gates.data<float>()[3 + j]));
    EXPECT_TRUE(std::isfinite(out.gates.data<float>()[j]));
    EXPECT_TRUE(std::isfinite(out.gates.data<float>()[6 + j]));
  }
  // An infinite bias makes the scores non-finite too; the logits stay finite.
  const Tensor bias = FromFloats({0, 0, std::numeric_limits<float>::infinity(), 0, 0}, {5});
  const Outputs biased = MakeOutputs(3, 5, 3);
  MOE_ASSERT_OK(Forward({5, 3, false}, RandomNormal({3, 4}, 8), w, bias, biased));
  EXPECT_THAT(ToInts(biased.idx), ElementsAre(0, 1, 2, 0, 1, 2, 0, 1, 2));
  EXPECT_TRUE(std::isfinite(biased.gates.data<float>()[0]));
}

TEST(RouterForwardTest, MatchesDoubleReference) {
  const int64_t t = 37, m = 16, e = 12, k = 3;
  const Tensor x = RandomNormal({t, m}, 10), w = RandomNormal({m, e}, 11, 0.5f),
               bias = RandomNormal({e}, 12, 0.1f);
  for (bool renormalize : {false, true}) {
    const Outputs out = MakeOutputs(t, e, k);
    MOE_ASSERT_OK(
        Forward({static_cast<int>(e), static_cast<int>(k), renormalize}, x, w, bias, out));
    const std::vector<double> xd = ToDoubles(x), wd = ToDoubles(w), bd = ToDoubles(bias);
    std::vector<double> logits(t * e), probs(t * e), gates(t * k);
    std::vector<int32_t> idx(t * k);
    router_reference::Logits(xd.data(), wd.data(), t, m, e, logits.data());
    router_reference::Softmax(logits.data(), t, e, probs.data());
    router_reference::TopK(logits.data(), bd.data(), t, e, k, idx.data());
    router_reference::Gates(probs.data(), idx.data(), t, e, k, renormalize, gates.data());
    EXPECT_TRUE(testing::AllClose(ToDoubles(out.logits), logits, {1e-5, 1e-5}));
    EXPECT_TRUE(testing::AllClose(ToDoubles(out.probs), probs, {1e-7, 1e-5}));
    EXPECT_EQ(ToInts(out.idx), idx);
    EXPECT_TRUE(testing::AllClose(ToDoubles(out.gates), gates, {1e-7, 1e-5}));
  }
}

// The CPU fast paths (top-1 selection, the logits gradient in f32) against the reference on a
// Sigma-sized router (E = 96) over many parallel chunks: expert 17 duplicates expert 5 (a tie in
// every row, won by 5 unless the bias says otherwise) and row 3 is NaN (routed to expert 0).
TEST(RouterForwardTest, FastPathsMatchTheReferenceAtSigmaShape) {
  const int64_t t = 777, m = 24, e = 96;
  const Tensor x = RandomNormal({t, m}, 30), w = RandomNormal({m, e}, 31, 0.5f);
  for (int64_t i = 0; i < m; ++i) w.data<float>()[i * e + 17] = w.data<float>()[i * e + 5];
  x.data<float>()[3 * m + 2] = std::numeric_limits<float>::quiet_NaN();
  Tensor bias = RandomNormal({e}, 32, 0.1f);
  bias.data<float>()[17] = bias.data<float>()[5];
  for (int64_t k : {1, 4}) {
    for (bool with_bias : {false, true}) {
      for (bool renormalize : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "k=" << k << " bias=" << with_bias
                                          << " renormalize=" << renormalize);
        const RouterConfig config{static_cast<int>(e), static_cast<int>(k), renormalize};
        const Outputs out = MakeOutputs(t, e, k);
        MOE_ASSERT_OK(Forward(config, x, w, with_bias ? bias.view() : TensorView(), out));
        std::vector<int32_t> idx(t * k);
        std::vector<float> gates(t * k);
        router_reference::TopK(out.logits.data<float>(),
                               with_bias ? bias.data<float>() : static_cast<const float*>(nullptr),
                               t, e, k, idx.data());
        router_reference::Gates(out.probs.data<float>(), idx.data(), t, e, k, renormalize,
                                gates.data());
        ASSERT_EQ(ToInts(out.idx), idx);
        EXPECT_EQ(idx[3 * k], 0);
        EXPECT_TRUE(testing::AllEqual(out.gates, FromFloats(gates, {t, k})));

        // Backward from the forward's probs; the NaN row made NaN probs: zero it for this part.
        float* probs = out.probs.data<float>();
        for (int64_t c = 0; c < e; ++c) probs[3 * e + c] = 1.0f / e;
        const Tensor x_finite = RandomNormal({t, m}, 33);
        const Tensor d_gates = RandomNormal({t, k}, 34), extra = RandomNormal({t, e}, 35, 1e-3f);
        const Tensor dx = HostTensor({t, m}, DType::kF32), dw = HostTensor({m, e}, DType::kF32);
        MOE_ASSERT_OK(RouterBackward(ExecContext::Cpu(), config, x_finite, w, out.probs, out.idx,
                                     d_gates, extra, dx, dw));
        std::vector<double> d_logits(t * e), dx_ref(t * m), dw_ref(m * e);
        const std::vector<double> pd = ToDoubles(out.probs), gd = ToDoubles(d_gates),
                                  ed = ToDoubles(extra), xd = ToDoubles(x_finite),
                                  wd = ToDoubles(w);
        router_reference::LogitsGradient(pd.data(), idx.data(), gd.data(), ed.data(), t, e, k,
                                         renormalize, d_logits.data());
        router_reference::InputGradients(xd.data(), wd.data(), d_logits.data(), t, m, e,
                                         dx_ref.data(), dw_ref.data());
        EXPECT_TRUE(testing::AllClose(ToDoubles(dx), dx_ref, {1e-5, 1e-4}));
        EXPECT_TRUE(testing::AllClose(ToDoubles(dw), dw_ref, {1e-4, 1e-4}));
      }
    }
  }
}

TEST(RouterForwardTest, Bf16InputIsWidenedExactly) {
  const int64_t t = 9, m = 8, e = 7, k = 2;
  const Tensor x_bf16 = RandomNormal({t, m}, DType::kBF16, 13, 1.0f);
  const Tensor x_f32 = HostTensor({t, m}, DType::kF32);
  MOE_ASSERT_OK(Cast(ExecContext::Cpu(), x_bf16, x_f32));
  const Tensor w = RandomNormal({m, e}, 14);
  const Outputs a = MakeOutputs(t, e, k), b = MakeOutputs(t, e, k);
  MOE_ASSERT_OK(Forward({7, 2, false}, x_bf16, w, TensorView(), a));
  MOE_ASSERT_OK(Forward({7, 2, false}, x_f32, w, TensorView(), b));
  EXPECT_TRUE(testing::AllEqual(a.logits, b.logits));
  EXPECT_TRUE(testing::AllEqual(a.idx, b.idx));
  EXPECT_TRUE(testing::AllEqual(a.gates, b.gates));
}

// L(x, w) = sum_tj wg_tj gates_tj + sum_te wl_te logits_te, with the selection held fixed; the
// second term's gradient is what d_logits_extra carries.
void CheckRouterGradient(bool renormalize) {
  const int64_t t = 6, m = 5, e = 7, k = 3;
  const RouterConfig config{static_cast<int>(e), static_cast<int>(k), renormalize};
  const Tensor x = RandomNormal({t, m}, 20), w = RandomNormal({m, e}, 21),
               bias = RandomNormal({e}, 22, 0.3f);
  const std::vector<double> wg = testing::RandomWeights(t * k, 23);
  const std::vector<double> wl = testing::RandomWeights(t * e, 24);
  const Outputs out = MakeOutputs(t, e, k);
  MOE_ASSERT_OK(Forward(config, x, w, bias, out));
  const std::vector<int32_t> idx = ToInts(out.idx);

  auto loss = [&](const std::vector<double>& params) {
    const double* xd = params.data();
    const double* wd = params.data() + t * m;
    std::vector<double> logits(t * e), probs(t * e), gates(t * k);
    router_reference::Logits(xd, wd, t, m, e, logits.data());
    router_reference::Softmax(logits.data(), t, e, probs.data());
    router_reference::Gates(probs.data(), idx.data(), t, e, k, renormalize, gates.data());
    double l = 0.0;
    for (int64_t i = 0; i < t * k; ++i) l += wg[i] * gates[i];
    for (int64_t i = 0; i < t * e; ++i) l += wl[i] * logits[i];
    return l;
  };
  std::vector<double> params = ToDoubles(x);
  const std::vector<double> wd = ToDoubles(w);
  params.insert(params.end(), wd.begin(), wd.end());

  // fp64 reference gradient against finite differences.
  std::vector<double> logits(t * e), probs(t * e), d_logits(t * e), dx(t * m), dw(m * e);
  router_reference::Logits(params.data(), wd.data(), t, m, e, logits.data());
  router_reference::Softmax(logits.data(), t, e, probs.data());
  router_reference::LogitsGradient(probs.data(), idx.data(), wg.data(), wl.data(), t, e, k,
                                   renormalize, d_logits.data());
  router_reference::InputGradients(params.data(), wd.data(), d_logits.data(), t, m, e, dx.data(),
                                   dw.data());
  std::vector<double> analytic = dx;
  analytic.insert(analytic.end(), dw.begin(), dw.end());
  EXPECT_TRUE(testing::CheckGradient(loss, params, analytic, {1e-6, 1e-7, 1e-5}));

  // The f32 op against the fp64 reference.
  std::vector<float> wg_f(wg.begin(), wg.end()), wl_f(wl.begin(), wl.end());
  const Tensor d_gates = FromFloats(wg_f, {t, k}), extra = FromFloats(wl_f, {t, e});
  const Tensor dx_op = HostTensor({t, m}, DType::kF32), dw_op = HostTensor({m, e}, DType::kF32);
  MOE_ASSERT_OK(RouterBackward(ExecContext::Cpu(), config, x, w, out.probs, out.idx, d_gates, extra,
                               dx_op, dw_op));
  EXPECT_TRUE(testing::AllClose(ToDoubles(dx_op), dx, {1e-5, 1e-5}));
  EXPECT_TRUE(testing::AllClose(ToDoubles(dw_op), dw, {1e-5, 1e-5}));
}

TEST(RouterBackwardTest, GradientThroughSoftmaxAndGates) { CheckRouterGradient(false); }
TEST(RouterBackwardTest, GradientThroughRenormalizedGates) { CheckRouterGradient(true); }

TEST(RouterBackwardTest, BiasHasZeroGradientOnGates) {
  const int64_t t = 6, m = 5, e = 7, k = 2;
  const Tensor x = RandomNormal({t, m}, 30), w = RandomNormal({m, e}, 31);
  const std::vector<double> wg = testing::RandomWeights(t * k, 32);
  const std::vector<double> xd = ToDoubles(x), wd = ToDoubles(w);
  std::vector<double> logits(t * e), probs(t * e);
  router_reference::Logits(xd.data(), wd.data(), t, m, e, logits.data());
  router_reference::Softmax(logits.data(), t, e, probs.data());
  auto loss = [&](const std::vector<double>& bias) {
    std::vector<int32_t> idx(t * k);
    std::vector<double> gates(t * k);
    router_reference::TopK(logits.data(), bias.data(), t, e, k, idx.data());
    router_reference::Gates(probs.data(), idx.data(), t, e, k, true, gates.data());
    double l = 0.0;
    for (int64_t i = 0; i < t * k; ++i) l += wg[i] * gates[i];
    return l;
  };
  const std::vector<double> bias = ToDoubles(RandomNormal({e}, 33, 0.2f));
  EXPECT_TRUE(testing::CheckGradient(loss, bias, std::vector<double>(e, 0.0)));
}

TEST(RouterBackwardTest, AccumulatesIntoDwAndWritesBf16Dx) {
  const int64_t t = 8, m = 6, e = 5, k = 2;
  const RouterConfig config{5, 2, false};
  const Tensor x = RandomNormal({t, m}, DType::kBF16, 40, 1.0f), w = RandomNormal({m, e}, 41);
  const Outputs out = MakeOutputs(t, e, k);
  MOE_ASSERT_OK(Forward(config, x, w, TensorView(), out));
  const Tensor d_gates = RandomNormal({t, k}, 42);
  const Tensor dx = HostTensor({t, m}, DType::kBF16), dw = HostTensor({m, e}, DType::kF32);
  MOE_ASSERT_OK(RouterBackward(ExecContext::Cpu(), config, x, w, out.probs, out.idx, d_gates,
                               TensorView(), dx, dw));
  const Tensor x32 = HostTensor({t, m}, DType::kF32);
  MOE_ASSERT_OK(Cast(ExecContext::Cpu(), x, x32));
  const Tensor dx32 = HostTensor({t, m}, DType::kF32), dw32 = HostTensor({m, e}, DType::kF32);
  MOE_ASSERT_OK(RouterBackward(ExecContext::Cpu(), config, x32, w, out.probs, out.idx, d_gates,
                               TensorView(), dx32, dw32));
  EXPECT_TRUE(testing::AllClose(dx, dx32, testing::ToleranceFor(DType::kBF16)));
  EXPECT_TRUE(testing::AllEqual(dw, dw32));

  MOE_ASSERT_OK(Fill(ExecContext::Cpu(), dw, 1.0));
  MOE_ASSERT_OK(RouterBackward(ExecContext::Cpu(), config, x32, w, out.probs, out.idx, d_gates,
                               TensorView(), dx32, dw, /*accumulate_dw=*/true));
  std::vector<double> expected = ToDoubles(dw32);
  for (double& v : expected) v += 1.0;
  EXPECT_TRUE(testing::AllClose(ToDoubles(dw), expected, {1e-6, 1e-6}));
}

TEST(RouterValidationTest, BadConfigAndTensors) {
  const Tensor x = RandomNormal({4, 3}, 50), w = RandomNormal({3, 5}, 51);
  const Outputs out = MakeOutputs(4, 5, 2);
  EXPECT_THAT(Forward({5, 6, false}, x, w, TensorView(), out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("config.top_k: got 6")));
  EXPECT_THAT(Forward({5, 0, false}, x, w, TensorView(), out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("config.top_k: got 0")));
  EXPECT_THAT(Forward({0, 1, false}, x, w, TensorView(), out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("config.num_experts: got 0")));
  EXPECT_THAT(Forward({5, 2, false}, x, RandomNormal({4, 5}, 52), TensorView(), out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("w_gate.shape: got [4, 5]")));
  EXPECT_THAT(Forward({5, 2, false}, HostTensor({4, 3}, DType::kI32), w, TensorView(), out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("x.dtype: got i32")));
  EXPECT_THAT(Forward({5, 2, false}, x, w, FromFloats({0, 0, 0, 0}, {4}), out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("expert_bias.shape")));
  Outputs bad = MakeOutputs(4, 5, 2);
  bad.idx = HostTensor({4, 2}, DType::kF32);
  EXPECT_THAT(Forward({5, 2, false}, x, w, TensorView(), bad),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("topk_idx.dtype: got f32")));
  bad = MakeOutputs(4, 5, 3);
  EXPECT_THAT(
      Forward({5, 2, false}, x, w, TensorView(), bad),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("topk_idx.shape: got [4, 3]")));

  MOE_ASSERT_OK(Forward({5, 2, false}, x, w, TensorView(), out));
  const Tensor d_gates = RandomNormal({4, 2}, 53), dw = HostTensor({3, 5}, DType::kF32);
  EXPECT_THAT(RouterBackward(ExecContext::Cpu(), {5, 2, false}, x, w, out.probs, out.idx, d_gates,
                             TensorView(), HostTensor({4, 3}, DType::kBF16), dw),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dx.dtype: got bf16")));
  EXPECT_THAT(RouterBackward(ExecContext::Cpu(), {5, 2, false}, x, w, out.probs, out.idx, d_gates,
                             HostTensor({4, 4}, DType::kF32), HostTensor({4, 3}, DType::kF32), dw),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("d_logits_extra.shape")));
  const Tensor bad_idx = FromInts({0, 1, 2, 3, 4, 5, 0, 1}, {4, 2});
  EXPECT_THAT(RouterBackward(ExecContext::Cpu(), {5, 2, false}, x, w, out.probs, bad_idx, d_gates,
                             TensorView(), HostTensor({4, 3}, DType::kF32), dw),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("topk_idx[5]: got 5")));
}

}  // namespace
}  // namespace smoe
