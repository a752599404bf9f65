// RoPE, per-head QK RMSNorm and the AugQ MLP: hand-worked cases, invariants and fp64
// finite-difference gradient checks of the CPU references.
#include <cmath>

#include "attention/aug_q.h"
#include "attention/qk_norm.h"
#include "attention/qk_norm_cpu.h"
#include "attention/rope.h"
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
using attention_test::WeightedSum;
using testing::Cpu;
using ::testing::HasSubstr;
using testing::HostTensor;
using testing::RandomNormal;
using testing::StatusIs;
using testing::ToDoubles;

TEST(RopeTest, PositionZeroIsIdentityAndPairsKeepTheirNorm) {
  const int64_t B = 2, S = 5, H = 3, D = 8;
  Tensor x = RandomNormal({B, S, H, D}, 1), y = HostTensor({B, S, H, D});
  MOE_ASSERT_OK(RopeForward(Cpu(), x, y, 10000.0));
  const float* xs = x.data<float>();
  const float* ys = y.data<float>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t s = 0; s < S; ++s) {
      for (int64_t h = 0; h < H; ++h) {
        const int64_t base = ((b * S + s) * H + h) * D;
        for (int64_t j = 0; j < D / 2; ++j) {
          const double nx = std::hypot(xs[base + j], xs[base + j + D / 2]);
          const double ny = std::hypot(ys[base + j], ys[base + j + D / 2]);
          EXPECT_NEAR(nx, ny, 1e-5);
          if (s == 0) {
            EXPECT_EQ(xs[base + j], ys[base + j]);
          }
        }
      }
    }
  }
  // j = 0 rotates by exactly s radians: (1, 0) at position 2 -> (cos 2, sin 2).
  Tensor e = HostTensor({1, 3, 1, 2});
  MOE_ASSERT_OK(Fill(Cpu(), e, 0.0));
  e.data<float>()[4] = 1.0f;
  MOE_ASSERT_OK(RopeForward(Cpu(), e, e, 10000.0));
  EXPECT_NEAR(e.data<float>()[4], std::cos(2.0), 1e-6);
  EXPECT_NEAR(e.data<float>()[5], std::sin(2.0), 1e-6);
}

TEST(RopeTest, ScoresDependOnRelativePositionOnly) {
  const int64_t D = 16;
  Tensor q = RandomNormal({1, 1, 1, D}, 2), k = RandomNormal({1, 1, 1, D}, 3);
  auto score = [&](int64_t s, int64_t t) {
    Tensor qr = HostTensor(q.shape()), kr = HostTensor(k.shape());
    MOE_CHECK_OK(RopeForward(Cpu(), q, qr, 500.0, s));
    MOE_CHECK_OK(RopeForward(Cpu(), k, kr, 500.0, t));
    double dot = 0.0;
    for (int64_t j = 0; j < D; ++j) dot += double{qr.data<float>()[j]} * kr.data<float>()[j];
    return dot;
  };
  EXPECT_NEAR(score(7, 3), score(104, 100), 1e-4);
  EXPECT_GT(std::abs(score(7, 3) - score(7, 6)), 1e-3);
}

TEST(RopeTest, BackwardInvertsForwardAndMatchesFiniteDifferences) {
  const int64_t B = 1, S = 4, H = 2, D = 6;
  Tensor x = RandomNormal({B, S, H, D}, 4), y = HostTensor(x.shape()), z = HostTensor(x.shape());
  MOE_ASSERT_OK(RopeForward(Cpu(), x, y, 100.0, 3));
  MOE_ASSERT_OK(RopeBackward(Cpu(), y, z, 100.0, 3));
  EXPECT_TRUE(testing::AllClose(z, x, {1e-6, 1e-5}));

  const std::vector<double> x0 = ToDoubles(x);
  const std::vector<double> w = testing::RandomWeights(x0.size(), 5);
  auto loss = [&](const std::vector<double>& xs) {
    std::vector<double> ys(xs.size());
    attention_internal::RopeCpu(xs.data(), ys.data(), B, S, H, D, 100.0, 3, +1);
    return WeightedSum(w, ys);
  };
  std::vector<double> grad(x0.size());
  attention_internal::RopeCpu(w.data(), grad.data(), B, S, H, D, 100.0, 3, -1);
  EXPECT_TRUE(testing::CheckGradient(loss, x0, grad));
}

// The op runs from a cached cos/sin table with rows in parallel; RopeCpu (the reference)
// recomputes every angle. Same arithmetic in double: equal bit for bit, both directions, at
// offsets that make the cached table grow, and with several threads.
TEST(RopeTest, CachedTableEqualsReferenceBitForBit) {
  const int64_t B = 3, S = 37, H = 2, D = 10;
  for (int64_t offset : {0, 5, 300, 2000}) {
    for (int direction : {+1, -1}) {
      Tensor x = RandomNormal({B, S, H, D}, 10 + offset), y = HostTensor(x.shape());
      std::vector<float> want(static_cast<size_t>(x.numel()));
      attention_internal::RopeCpu(x.data<float>(), want.data(), B, S, H, D, 321.0, offset,
                                  direction);
      if (direction > 0) {
        MOE_ASSERT_OK(RopeForward(Cpu(), x, y, 321.0, offset));
      } else {
        MOE_ASSERT_OK(RopeBackward(Cpu(), x, y, 321.0, offset));
      }
      for (int64_t i = 0; i < x.numel(); ++i) {
        ASSERT_EQ(y.data<float>()[i], want[i]) << "offset " << offset << " element " << i;
      }
    }
  }
}

TEST(RopeTest, BadArguments) {
  Tensor x = RandomNormal({1, 2, 1, 5}, 1), y = HostTensor({1, 2, 1, 5});
  EXPECT_THAT(RopeForward(Cpu(), x, y, 1e4),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("x.head_dim: got 5")));
  Tensor x2 = RandomNormal({1, 2, 1, 4}, 1), y2 = HostTensor({1, 2, 2, 4});
  EXPECT_THAT(RopeForward(Cpu(), x2, y2, 1e4),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("y.shape")));
  EXPECT_THAT(RopeForward(Cpu(), x2, x2, -1.0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("theta")));
}

TEST(QkNormTest, HandWorked) {
  Tensor x = testing::FromDoubles({3.0, 4.0}, {1, 2});
  Tensor w = testing::FromDoubles({1.0, 2.0}, {2});
  Tensor y = HostTensor({1, 2}), rstd = HostTensor({1});
  MOE_ASSERT_OK(HeadRmsNormForward(Cpu(), x, w, y, rstd, 1e-12));
  const double inv = 1.0 / std::sqrt(12.5);
  EXPECT_TRUE(testing::AllClose(ToDoubles(y), {3.0 * inv, 8.0 * inv}, {1e-6, 1e-6}));
  EXPECT_NEAR(rstd.data<float>()[0], inv, 1e-7);
}

TEST(QkNormTest, GradientMatchesFiniteDifferences) {
  const int64_t rows = 6, dim = 5;
  const std::vector<double> x =
      Concat({ToDoubles(RandomNormal({rows, dim}, 7)), ToDoubles(RandomNormal({dim}, 8))});
  const std::vector<double> w = testing::RandomWeights(rows * dim, 9);
  auto forward = [&](const std::vector<double>& xs, std::vector<double>* y,
                     std::vector<double>* rstd) {
    y->resize(rows * dim);
    rstd->resize(rows);
    attention_internal::HeadRmsNormForwardCpu(xs.data(), xs.data() + rows * dim, y->data(),
                                              rstd->data(), rows, dim, 1e-6);
  };
  auto loss = [&](const std::vector<double>& xs) {
    std::vector<double> y, rstd;
    forward(xs, &y, &rstd);
    return WeightedSum(w, y);
  };
  std::vector<double> y, rstd, grad(x.size());
  forward(x, &y, &rstd);
  attention_internal::HeadRmsNormBackwardCpu(x.data(), x.data() + rows * dim, rstd.data(), w.data(),
                                             grad.data(), grad.data() + rows * dim, rows, dim);
  EXPECT_TRUE(testing::CheckGradient(loss, x, grad));

  // The f32 op agrees with the double reference.
  Tensor xt = testing::FromDoubles({x.begin(), x.begin() + rows * dim}, {rows, dim});
  Tensor wt = testing::FromDoubles({x.begin() + rows * dim, x.end()}, {dim});
  Tensor dy = testing::FromDoubles(w, {rows, dim});
  Tensor yt = HostTensor({rows, dim}), rt = HostTensor({rows}), dx = HostTensor({rows, dim});
  // dw is f32 and accumulates: it starts at 0.5 and must gain the gradient.
  Tensor dw = HostTensor({dim});
  MOE_ASSERT_OK(Fill(Cpu(), dw, 0.5));
  MOE_ASSERT_OK(HeadRmsNormForward(Cpu(), xt, wt, yt, rt));
  MOE_ASSERT_OK(HeadRmsNormBackward(Cpu(), xt, wt, rt, dy, dx, dw));
  EXPECT_TRUE(testing::AllClose(ToDoubles(yt), y, {1e-5, 1e-5}));
  std::vector<double> dw_added = ToDoubles(dw);
  for (double& g : dw_added) g -= 0.5;
  EXPECT_TRUE(testing::AllClose(Concat({ToDoubles(dx), dw_added}), grad, {1e-5, 1e-4}));
  // The gradient must be f32 whatever the activations' dtype.
  Tensor dw_bf16 = HostTensor({dim}, DType::kBF16);
  EXPECT_THAT(HeadRmsNormBackward(Cpu(), xt, wt, rt, dy, dx, dw_bf16),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dw")));
}

// 1300 rows: the op sums dw over chunks of rows (in parallel, added in order); against the double
// reference in one pass.
TEST(QkNormTest, ManyRowsMatchTheReference) {
  const int64_t rows = 1300, dim = 16;
  Tensor x = RandomNormal({rows, dim}, 31), w = RandomNormal({dim}, 32),
         dy = RandomNormal({rows, dim}, 33);
  Tensor y = HostTensor({rows, dim}), rstd = HostTensor({rows}), dx = HostTensor({rows, dim});
  Tensor dw = HostTensor({dim});
  MOE_ASSERT_OK(Fill(Cpu(), dw, 0.0));
  MOE_ASSERT_OK(HeadRmsNormForward(Cpu(), x, w, y, rstd, 1e-6));
  MOE_ASSERT_OK(HeadRmsNormBackward(Cpu(), x, w, rstd, dy, dx, dw));
  const std::vector<double> xd = ToDoubles(x), wd = ToDoubles(w), dyd = ToDoubles(dy);
  std::vector<double> yd(rows * dim), rd(rows), dxd(rows * dim), dwd(dim, 0.0);
  attention_internal::HeadRmsNormForwardCpu(xd.data(), wd.data(), yd.data(), rd.data(), rows, dim,
                                            1e-6);
  attention_internal::HeadRmsNormBackwardCpu(xd.data(), wd.data(), rd.data(), dyd.data(),
                                             dxd.data(), dwd.data(), rows, dim);
  EXPECT_TRUE(testing::AllClose(ToDoubles(y), yd, {1e-5, 1e-5}));
  EXPECT_TRUE(testing::AllClose(ToDoubles(dx), dxd, {1e-5, 1e-5}));
  EXPECT_TRUE(testing::AllClose(ToDoubles(dw), dwd, {1e-5, 1e-5}));
}

TEST(QkNormTest, BadArguments) {
  Tensor x = RandomNormal({2, 3, 4}, 1), w = RandomNormal({3}, 2);
  Tensor y = HostTensor({2, 3, 4}), rstd = HostTensor({6});
  EXPECT_THAT(HeadRmsNormForward(Cpu(), x, w, y, rstd),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("w.shape: got [3]")));
}

// AugQ in double: q' = W_down(silu(q W_gate) * (q W_up)); x = q, W_gate, W_up, W_down.
std::vector<double> AugQReference(const std::vector<double>& x, int64_t rows, int64_t qd,
                                  int64_t d_aug) {
  const double* q = x.data();
  const double* wg = q + rows * qd;
  const double* wu = wg + qd * d_aug;
  const double* wd = wu + qd * d_aug;
  std::vector<double> g(rows * d_aug, 0.0), u(rows * d_aug, 0.0), h(rows * d_aug);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t a = 0; a < d_aug; ++a) {
      for (int64_t j = 0; j < qd; ++j) {
        g[r * d_aug + a] += q[r * qd + j] * wg[j * d_aug + a];
        u[r * d_aug + a] += q[r * qd + j] * wu[j * d_aug + a];
      }
    }
  }
  for (int64_t i = 0; i < rows * d_aug; ++i) h[i] = internal::SwiGLUValue(g[i], u[i]);
  std::vector<double> out(rows * qd, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < qd; ++j) {
      for (int64_t a = 0; a < d_aug; ++a) out[r * qd + j] += h[r * d_aug + a] * wd[a * qd + j];
    }
  }
  return out;
}

TEST(AugQTest, ForwardAndBackwardMatchDoubleReference) {
  const int64_t rows = 5, qd = 6, d_aug = 4;
  Tensor q = RandomNormal({rows, qd}, 11), wg = RandomNormal({qd, d_aug}, 12, 0.5f);
  Tensor wu = RandomNormal({qd, d_aug}, 13, 0.5f), wd = RandomNormal({d_aug, qd}, 14, 0.5f);
  Tensor q_aug = HostTensor({rows, qd});
  AugQSaved saved;
  MOE_ASSERT_OK(AugQForward(Cpu(), q, {wg, wu, wd}, q_aug, &saved));
  const std::vector<double> x = Concat({ToDoubles(q), ToDoubles(wg), ToDoubles(wu), ToDoubles(wd)});
  EXPECT_TRUE(testing::AllClose(ToDoubles(q_aug), AugQReference(x, rows, qd, d_aug), {1e-5, 1e-5}));

  const std::vector<double> w = testing::RandomWeights(rows * qd, 15);
  Tensor dq_aug = testing::FromDoubles(w, {rows, qd});
  Tensor dq = HostTensor({rows, qd}), dwg = HostTensor(wg.shape()), dwu = HostTensor(wu.shape());
  Tensor dwd = HostTensor(wd.shape());
  for (Tensor* g : {&dwg, &dwu, &dwd}) MOE_ASSERT_OK(Fill(Cpu(), *g, 0.0));  // accumulated into
  MOE_ASSERT_OK(AugQBackward(Cpu(), q, {wg, wu, wd}, saved, dq_aug, dq, {dwg, dwu, dwd}));
  auto loss = [&](const std::vector<double>& xs) {
    return WeightedSum(w, AugQReference(xs, rows, qd, d_aug));
  };
  // Analytic gradients are f32 (Gemm), the reference is fp64: tolerance of f32 sums.
  EXPECT_TRUE(testing::CheckGradient(
      loss, x, Concat({ToDoubles(dq), ToDoubles(dwg), ToDoubles(dwu), ToDoubles(dwd)}),
      {1e-6, 1e-5, 1e-4}));
}

TEST(AugQTest, BadArguments) {
  Tensor q = RandomNormal({5, 6}, 1), wg = RandomNormal({6, 4}, 2), wu = RandomNormal({6, 3}, 3);
  Tensor wd = RandomNormal({4, 6}, 4), q_aug = HostTensor({5, 6});
  AugQSaved saved;
  EXPECT_THAT(AugQForward(Cpu(), q, {wg, wu, wd}, q_aug, &saved),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("w_up.shape: got [6, 3]")));
}

}  // namespace
}  // namespace smoe
