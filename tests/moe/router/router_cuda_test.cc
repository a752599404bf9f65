// CUDA-vs-CPU parity of moe/router (label cuda; skips without a GPU).
//
// x, w_gate and expert_bias are drawn on coarse dyadic grids (multiples of 1/4, 1/8, 1/16) so
// that every logit and score is exact in fp32 whatever the summation order: the two backends then
// see identical scores, including exact ties, and topk_idx must match exactly.
#include <cmath>
#include <memory>

#include "gtest/gtest.h"
#include "moe/router/aux_loss.h"
#include "moe/router/expert_load.h"
#include "moe/router/router.h"
#include "moe/router/routing_stats.h"
#include "runtime/core/philox.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/parity.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using testing::CheckParity;
using testing::HostTensor;
using testing::Input;
using testing::Output;
using testing::ParityArgs;
using testing::RandomNormal;
using testing::Tolerance;

// Values (integer in [-range, range]) / denominator, from a uniform fill.
std::function<void(const TensorView&)> Grid(uint64_t seed, int range, float denominator) {
  return [=](const TensorView& host) {
    Tensor u = HostTensor(host.shape(), DType::kF32);
    MOE_CHECK_OK(FillUniform(ExecContext::Cpu(), u, seed, 0, -1.0f, 1.0f));
    for (int64_t i = 0; i < host.numel(); ++i) {
      const float v = std::round(u.data<float>()[i] * range) / denominator;
      if (host.dtype() == DType::kBF16) {
        host.data<BF16>()[i] = FloatToBF16(v);
      } else {
        host.data<float>()[i] = v;
      }
    }
  };
}

struct Shape4 {
  int64_t t, m, e, k;
};

const Shape4 kGrid[] = {{1, 16, 8, 1},   {37, 16, 8, 2},   {37, 32, 96, 1}, {37, 32, 96, 2},
                        {37, 32, 96, 8}, {256, 64, 96, 8}, {5, 8, 1, 1},    {33, 8, 8, 8}};

TEST(RouterParityTest, ForwardAndBackward) {
  MOE_SKIP_WITHOUT_CUDA();
  const Tolerance grad_tol{1e-4, 1e-4};
  for (const Shape4& s : kGrid) {
    for (DType x_dtype : {DType::kF32, DType::kBF16}) {
      for (bool renormalize : {false, true}) {
        for (bool with_bias : {false, true}) {
          SCOPED_TRACE(::testing::PrintToString(std::vector<int64_t>{s.t, s.m, s.e, s.k}) +
                       DTypeName(x_dtype).data() + (renormalize ? " renorm" : "") +
                       (with_bias ? " bias" : ""));
          const RouterConfig config{static_cast<int>(s.e), static_cast<int>(s.k), renormalize};
          EXPECT_TRUE(CheckParity(
              {Input("x", {s.t, s.m}, x_dtype, Grid(1, 8, 4.0f)),
               Input("w_gate", {s.m, s.e}, DType::kF32, Grid(2, 8, 8.0f)),
               Input("expert_bias", {s.e}, DType::kF32, Grid(3, 8, 16.0f)),
               Input("d_gates", {s.t, s.k}, DType::kF32),
               Input("d_logits_extra", {s.t, s.e}, DType::kF32),
               Output("logits", {s.t, s.e}, DType::kF32), Output("probs", {s.t, s.e}, DType::kF32),
               Output("topk_idx", {s.t, s.k}, DType::kI32),
               Output("topk_gates", {s.t, s.k}, DType::kF32),
               Output("dx", {s.t, s.m}, x_dtype,
                      x_dtype == DType::kBF16 ? testing::ToleranceFor(DType::kBF16) : grad_tol),
               Output("dw_gate", {s.m, s.e}, DType::kF32, grad_tol)},
              [&](ExecContext& ctx, const ParityArgs& a) {
                MOE_RETURN_IF_ERROR(RouterForward(
                    ctx, config, a["x"], a["w_gate"], with_bias ? a["expert_bias"] : TensorView(),
                    a["logits"], a["probs"], a["topk_idx"], a["topk_gates"]));
                return RouterBackward(ctx, config, a["x"], a["w_gate"], a["probs"], a["topk_idx"],
                                      a["d_gates"], a["d_logits_extra"], a["dx"], a["dw_gate"]);
              }));
        }
      }
    }
  }
}

TEST(RouterParityTest, NonFiniteRows) {
  MOE_SKIP_WITHOUT_CUDA();
  auto x_fill = [](const TensorView& host) {
    Grid(4, 8, 4.0f)(host);
    host.data<float>()[3 * host.dim(1)] = std::numeric_limits<float>::quiet_NaN();
    host.data<float>()[5 * host.dim(1) + 1] = std::numeric_limits<float>::infinity();
  };
  // Only topk_idx is compared: the NaN gates would fail any float comparison.
  EXPECT_TRUE(CheckParity(
      {Input("x", {9, 8}, DType::kF32, x_fill),
       Input("w_gate", {8, 12}, DType::kF32, Grid(5, 8, 8.0f)),
       Output("topk_idx", {9, 3}, DType::kI32)},
      [](ExecContext& ctx, const ParityArgs& a) -> Status {
        MOE_ASSIGN_OR_RETURN(Tensor logits, Tensor::Empty({9, 12}, DType::kF32, ctx.device()));
        MOE_ASSIGN_OR_RETURN(Tensor probs, Tensor::Empty({9, 12}, DType::kF32, ctx.device()));
        MOE_ASSIGN_OR_RETURN(Tensor gates, Tensor::Empty({9, 3}, DType::kF32, ctx.device()));
        return RouterForward(ctx, {12, 3, true}, a["x"], a["w_gate"], TensorView(), logits, probs,
                             a["topk_idx"], gates);
      }));
}

TEST(AuxLossParityTest, ValuesAndGradient) {
  MOE_SKIP_WITHOUT_CUDA();
  const AuxLossConfig config{
      .lbl_coef = 0.01f, .global_lbl = true, .z_coef = 0.001f, .top1_lbl_coef = 0.1f};
  for (const Shape4& s : kGrid) {
    SCOPED_TRACE(::testing::PrintToString(std::vector<int64_t>{s.t, s.m, s.e, s.k}));
    const RouterConfig router{static_cast<int>(s.e), static_cast<int>(s.k), false};
    EXPECT_TRUE(CheckParity(
        {Input("x", {s.t, s.m}, DType::kF32, Grid(6, 8, 4.0f)),
         Input("w_gate", {s.m, s.e}, DType::kF32, Grid(7, 8, 8.0f)),
         Output("d_logits", {s.t, s.e}, DType::kF32, Tolerance{1e-6, 1e-4}),
         Output("values", {4}, DType::kF32, Tolerance{1e-5, 1e-5}),
         Output("counts", {s.e}, DType::kI64)},
        [&](ExecContext& ctx, const ParityArgs& a) -> Status {
          MOE_ASSIGN_OR_RETURN(Tensor logits, Tensor::Empty({s.t, s.e}, DType::kF32, ctx.device()));
          MOE_ASSIGN_OR_RETURN(Tensor probs, Tensor::Empty({s.t, s.e}, DType::kF32, ctx.device()));
          MOE_ASSIGN_OR_RETURN(Tensor idx, Tensor::Empty({s.t, s.k}, DType::kI32, ctx.device()));
          MOE_ASSIGN_OR_RETURN(Tensor gates, Tensor::Empty({s.t, s.k}, DType::kF32, ctx.device()));
          MOE_RETURN_IF_ERROR(RouterForward(ctx, router, a["x"], a["w_gate"], TensorView(), logits,
                                            probs, idx, gates));
          MOE_ASSIGN_OR_RETURN(AuxLossValues v,
                               AuxLossForwardBackward(ctx, config, logits, probs, idx,
                                                      SingleRankCommunicator(), a["d_logits"]));
          const double values[] = {v.lbl, v.z_loss, v.top1_lbl, v.total};
          for (int i = 0; i < 4; ++i)
            MOE_RETURN_IF_ERROR(Fill(ctx, a["values"].Rows(i, i + 1), values[i]));
          return CountExperts(ctx, idx, a["counts"]);
        }));
  }
}

// The aux losses on CUDA make no host sync when their values stay on the device (the MoE
// forward's budget: its one sync is the plan's offsets), also with global_lbl on one rank.
TEST(AuxLossCudaTest, ValuesIntoATensorMakeNoHostSync) {
  MOE_SKIP_WITHOUT_CUDA();
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ExecContext> ctx, ExecContext::Create(Device::Cuda()));
  const int64_t t = 300, e = 96;
  auto device = [&](Shape shape, DType dtype) {
    return *Tensor::Empty(shape, dtype, Device::Cuda());
  };
  Tensor logits = device({t, e}, DType::kF32), probs = device({t, e}, DType::kF32);
  Tensor idx = device({t, 1}, DType::kI32), gates = device({t, 1}, DType::kF32);
  Tensor x = device({t, 32}, DType::kF32), w = device({32, e}, DType::kF32);
  MOE_ASSERT_OK(FillNormal(*ctx, x, 1, 0, 0.0f, 1.0f));
  MOE_ASSERT_OK(FillNormal(*ctx, w, 2, 0, 0.0f, 0.2f));
  MOE_ASSERT_OK(RouterForward(*ctx, RouterConfig{static_cast<int>(e), 1, false}, x, w, TensorView(),
                              logits, probs, idx, gates));
  Tensor d_logits = device({t, e}, DType::kF32), values = device({kAuxLossValues}, DType::kF32);
  for (bool global : {false, true}) {
    const AuxLossConfig config{
        .lbl_coef = 0.01f, .global_lbl = global, .z_coef = 0.001f, .top1_lbl_coef = 0.1f};
    const int64_t before = ctx->host_syncs();
    MOE_ASSERT_OK(AuxLossForwardBackwardInto(*ctx, config, logits, probs, idx,
                                             SingleRankCommunicator(), d_logits, values));
    EXPECT_EQ(ctx->host_syncs(), before) << "global_lbl " << global;
    MOE_ASSERT_OK_AND_ASSIGN(AuxLossValues v, ReadAuxLossValues(*ctx, values));
    EXPECT_EQ(ctx->host_syncs(), before + 1);
    EXPECT_GT(v.lbl, 0.0);
    EXPECT_NEAR(v.total, 0.01 * v.lbl + 0.001 * v.z_loss + 0.1 * v.top1_lbl, 1e-5);
  }
}

TEST(ExpertLoadParityTest, UpdateExpertBias) {
  MOE_SKIP_WITHOUT_CUDA();
  for (int64_t e : {1, 8, 96, 300}) {
    auto counts_fill = [e](const TensorView& h) {
      for (int64_t i = 0; i < e; ++i) h.data<int64_t>()[i] = (i * 7919) % 13;
    };
    EXPECT_TRUE(CheckParity({Input("counts", {e}, DType::kI64, counts_fill),
                             Output("bias", {e}, DType::kF32, std::nullopt, Grid(8, 16, 16.0f))},
                            [](ExecContext& ctx, const ParityArgs& a) {
                              return UpdateExpertBias(ctx, a["counts"], 0.125f, 0.5f, a["bias"]);
                            }))
        << "E " << e;
  }
}

TEST(RoutingStatsParityTest, SameStatsOnBothDevices) {
  MOE_SKIP_WITHOUT_CUDA();
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ExecContext> gpu, ExecContext::Create(Device::Cuda(0)));
  const int64_t t = 45, m = 16, e = 96, k = 2;
  const Tensor x = RandomNormal({t, m}, 9), w = RandomNormal({m, e}, 10);
  MOE_ASSERT_OK_AND_ASSIGN(Tensor xd, CopyTo(*gpu, x, Device::Cuda(0)));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor wd, CopyTo(*gpu, w, Device::Cuda(0)));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor logits, Tensor::Empty({t, e}, DType::kF32, Device::Cuda(0)));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor probs, Tensor::Empty({t, e}, DType::kF32, Device::Cuda(0)));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor idx, Tensor::Empty({t, k}, DType::kI32, Device::Cuda(0)));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor gates, Tensor::Empty({t, k}, DType::kF32, Device::Cuda(0)));
  MOE_ASSERT_OK(
      RouterForward(*gpu, {96, 2, false}, xd, wd, TensorView(), logits, probs, idx, gates));
  MOE_ASSERT_OK_AND_ASSIGN(RoutingStats on_gpu, ComputeRoutingStats(*gpu, probs, idx));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor probs_h, CopyTo(*gpu, probs, Device::Cpu()));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor idx_h, CopyTo(*gpu, idx, Device::Cpu()));
  MOE_ASSERT_OK_AND_ASSIGN(RoutingStats on_cpu,
                           ComputeRoutingStats(ExecContext::Cpu(), probs_h, idx_h));
  EXPECT_EQ(on_gpu.tokens_per_expert, on_cpu.tokens_per_expert);
  EXPECT_EQ(on_gpu.p_mean, on_cpu.p_mean);
  EXPECT_EQ(on_gpu.dead_experts, on_cpu.dead_experts);
  int64_t total = 0;
  for (int64_t c : on_gpu.tokens_per_expert) total += c;
  EXPECT_EQ(total, t * k);
}

}  // namespace
}  // namespace smoe
