// CUDA vs CPU parity of SwiGLU and the expert MLP (forward and backward). Skips without a GPU.
#include <cmath>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "moe/experts/experts.h"
#include "runtime/core/bf16.h"
#include "runtime/nn/swiglu.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/parity.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using testing::CheckParity;
using testing::Input;
using testing::NmseAtMost;
using testing::Output;
using testing::ParityArgs;

// fp32 elementwise math may differ by an ulp or two of expf between backends; bf16 outputs by
// one bf16 rounding step when the fp32 values straddle a rounding boundary.
testing::Tolerance ElementwiseTolerance(DType dtype) {
  return dtype == DType::kBF16 ? testing::Tolerance{1e-2, 1e-2} : testing::Tolerance{1e-6, 1e-5};
}

TEST(SwiGLUParityTest, ForwardAndBackward) {
  MOE_SKIP_WITHOUT_CUDA();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (Shape shape : {Shape{1}, Shape{37, 96}, Shape{1000, 33}}) {
      const testing::Tolerance tol = ElementwiseTolerance(dtype);
      EXPECT_TRUE(CheckParity({Input("h1", shape, dtype), Input("h3", shape, dtype),
                               Input("dact", shape, dtype), Output("act", shape, dtype, tol),
                               Output("dh1", shape, dtype, tol), Output("dh3", shape, dtype, tol)},
                              [](ExecContext& ctx, const ParityArgs& t) {
                                MOE_RETURN_IF_ERROR(SwiGLU(ctx, t["h1"], t["h3"], t["act"]));
                                return SwiGLUBackward(ctx, t["h1"], t["h3"], t["dact"], t["dh1"],
                                                      t["dh3"]);
                              }))
          << DTypeName(dtype) << " " << shape.ToString();
    }
  }
}

std::function<void(const TensorView&)> NormalFill(uint64_t seed, float stddev) {
  return [=](const TensorView& t) {
    MOE_CHECK_OK(FillNormal(ExecContext::Cpu(), t, seed, 0, 0.0f, stddev));
  };
}

struct ExpertCase {
  int64_t m, h;
  std::vector<int64_t> offsets;
};

// GEMM results differ between backends by accumulation order (fp32), and bf16 intermediates may
// then round to neighbouring values; tolerances scale with the reduction length.
testing::Tolerance GemmTolerance(DType dtype, int64_t k) {
  if (dtype == DType::kBF16) return {3e-2 * std::sqrt(double(k) / 16.0 + 1), 3e-2};
  return {2e-5 * std::sqrt(double(k) + 1), 2e-5};
}

// f32: only the summation order differs (relative error about 1e-6, NMSE 1e-12). bf16: the
// bf16 activations may round to neighbouring values where the f32 results straddle a rounding
// boundary, which is rare (NMSE about 1e-8).
NmseAtMost WeightGradientBound(DType dtype) {
  return dtype == DType::kBF16 ? NmseAtMost{1e-5} : NmseAtMost{1e-8};
}

void RunExpertsParity(const ExpertCase& c, DType dtype, bool accumulate) {
  const int64_t e = static_cast<int64_t>(c.offsets.size()) - 1, r = c.offsets.back();
  const int64_t m = c.m, h = c.h;
  const float std_in = 1.0f / std::sqrt(float(m)), std_out = 1.0f / std::sqrt(float(h));
  const testing::Tolerance act_tol = GemmTolerance(dtype, m);
  const testing::Tolerance out_tol = GemmTolerance(dtype, h);
  // dxs reduces over h + m; the weight gradients over the rows of an expert (up to r), in f32 on
  // both backends: their normalised error is compared, not each element's.
  const testing::Tolerance grad_tol = GemmTolerance(dtype, std::max(r, h + m));
  const NmseAtMost weight_grad = WeightGradientBound(dtype);
  std::function<void(const TensorView&)> grad_fill;
  if (accumulate) grad_fill = NormalFill(99, 1.0f);
  EXPECT_TRUE(
      CheckParity({Input("xs", {r, m}, dtype), Input("w1", {e, m, h}, dtype, NormalFill(2, std_in)),
                   Input("w3", {e, m, h}, dtype, NormalFill(3, std_in)),
                   Input("w2", {e, h, m}, dtype, NormalFill(4, std_out)),
                   Input("dys", {r, m}, dtype), Output("h1", {r, h}, dtype, act_tol),
                   Output("h3", {r, h}, dtype, act_tol), Output("act", {r, h}, dtype, act_tol),
                   Output("ys", {r, m}, dtype, out_tol), Output("dxs", {r, m}, dtype, grad_tol),
                   Output("dw1", {e, m, h}, DType::kF32, weight_grad, grad_fill),
                   Output("dw3", {e, m, h}, DType::kF32, weight_grad, grad_fill),
                   Output("dw2", {e, h, m}, DType::kF32, weight_grad, grad_fill)},
                  [&](ExecContext& ctx, const ParityArgs& t) {
                    const ExpertWeights w{t["w1"], t["w3"], t["w2"]};
                    const ExpertActivations saved{t["h1"], t["h3"], t["act"]};
                    MOE_RETURN_IF_ERROR(ExpertsForward(ctx, w, t["xs"], c.offsets, saved, t["ys"]));
                    return ExpertsBackward(ctx, w, t["xs"], c.offsets, saved, t["dys"], t["dxs"],
                                           {t["dw1"], t["dw3"], t["dw2"]}, accumulate);
                  }))
      << DTypeName(dtype) << " E_l=" << e << " R=" << r << " M=" << m << " H=" << h
      << (accumulate ? " accumulate" : "");
}

TEST(ExpertsParityTest, ForwardAndBackward) {
  MOE_SKIP_WITHOUT_CUDA();
  const std::vector<ExpertCase> cases = {
      {64, 96, {0, 0, 7, 7, 40, 41, 41}},  // empty experts first, between and last
      {32, 48, {0, 100}},                  // E_l = 1
      {32, 48, {0, 0, 0, 0}},              // R = 0
      {48, 80, {0, 0, 0, 333, 333}},       // one expert holds every row
      {16, 24, {0, 1, 2, 3}},              // one row each
  };
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const ExpertCase& c : cases) RunExpertsParity(c, dtype, /*accumulate=*/false);
  }
  RunExpertsParity(cases[0], DType::kF32, /*accumulate=*/true);
  RunExpertsParity(cases[0], DType::kBF16, /*accumulate=*/true);
}

// The bf16 backward's weight-gradient rounding (experts.h): the f32 gradients it writes hold bf16
// values, on the GPU as on the CPU, and the kernel that adds the bf16 products into the f32
// gradients is bit-identical to the CPU loop.
TEST(ExpertsParityTest, BF16WeightGradsRoundOnceThenAddInF32) {
  MOE_SKIP_WITHOUT_CUDA();
  const ExpertCase c{64, 96, {0, 0, 7, 7, 40, 41, 41}};
  const int64_t e = 6, r = 41, m = c.m, h = c.h;
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ExecContext> ctx, ExecContext::Create(Device::Cuda()));
  auto make = [&](Shape shape, DType dtype, uint64_t seed, float stddev) {
    Tensor t = Tensor::Empty(shape, dtype, Device::Cuda()).value();
    MOE_CHECK_OK(FillNormal(*ctx, t, seed, 0, 0.0f, stddev));
    return t;
  };
  Tensor xs = make({r, m}, DType::kBF16, 1, 1.0f), dys = make({r, m}, DType::kBF16, 5, 1.0f);
  Tensor w1 = make({e, m, h}, DType::kBF16, 2, 0.1f), w3 = make({e, m, h}, DType::kBF16, 3, 0.1f);
  Tensor w2 = make({e, h, m}, DType::kBF16, 4, 0.1f);
  Tensor h1 = make({r, h}, DType::kBF16, 6, 1.0f), h3 = make({r, h}, DType::kBF16, 7, 1.0f);
  Tensor act = make({r, h}, DType::kBF16, 8, 1.0f), ys = make({r, m}, DType::kBF16, 9, 1.0f);
  Tensor dxs = make({r, m}, DType::kBF16, 10, 1.0f);
  Tensor dw1 = make({e, m, h}, DType::kF32, 11, 1.0f), dw3 = make({e, m, h}, DType::kF32, 12, 1.0f);
  Tensor dw2 = make({e, h, m}, DType::kF32, 13, 1.0f);
  const ExpertWeights w{w1, w3, w2};
  const ExpertActivations saved{h1, h3, act};
  MOE_ASSERT_OK(ExpertsForward(*ctx, w, xs, c.offsets, saved, ys));
  MOE_ASSERT_OK(ExpertsBackward(*ctx, w, xs, c.offsets, saved, dys, dxs, {dw1, dw3, dw2}));
  for (const Tensor* t : {&dw1, &dw3, &dw2}) {
    MOE_ASSERT_OK_AND_ASSIGN(Tensor host, CopyTo(*ctx, *t, Device::Cpu()));
    for (int64_t i = 0; i < host.numel(); ++i) {
      const float v = host.data<float>()[i];
      ASSERT_EQ(v, RoundToBF16(v)) << "element " << i << " is not a bf16 value";
    }
  }
  for (bool accumulate : {false, true}) {
    EXPECT_TRUE(CheckParity(
        {Input("p1", {e, m, h}, DType::kBF16), Input("p3", {3, 5}, DType::kBF16),
         Input("p2", {e, h, m}, DType::kBF16),
         Output("g1", {e, m, h}, DType::kF32, testing::Tolerance{0, 0}, NormalFill(21, 1.0f)),
         Output("g3", {3, 5}, DType::kF32, testing::Tolerance{0, 0}, NormalFill(22, 1.0f)),
         Output("g2", {e, h, m}, DType::kF32, testing::Tolerance{0, 0}, NormalFill(23, 1.0f))},
        [&](ExecContext& run, const testing::ParityArgs& t) {
          return internal::AddWeightGrads(run, {t["p1"], t["p3"], t["p2"]},
                                          {t["g1"], t["g3"], t["g2"]}, accumulate);
        }))
        << (accumulate ? "accumulate" : "overwrite");
  }
}

TEST(ExpertsParityTest, InitIsBitIdentical) {
  MOE_SKIP_WITHOUT_CUDA();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    EXPECT_TRUE(CheckParity(
        {Output("w1", {3, 16, 24}, dtype, testing::Tolerance{0, 0}),
         Output("w3", {3, 16, 24}, dtype, testing::Tolerance{0, 0}),
         Output("w2", {3, 24, 16}, dtype, testing::Tolerance{0, 0})},
        [](ExecContext& ctx, const ParityArgs& t) {
          return InitExpertWeights(
              ctx, {t["w1"], t["w3"], t["w2"]},
              {.seed = 5, .offset = 17, .first_expert = 2, .std_in = 0.1f, .std_out = 0.05f});
        }));
  }
}

}  // namespace
}  // namespace smoe
