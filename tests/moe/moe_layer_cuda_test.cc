// The MoE layer on CUDA against the same layer on the CPU: same parameters (Philox init is
// bit-identical across devices), same inputs; outputs, aux loss and every gradient compared.
// Skips itself without a GPU.
#include <tuple>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "moe/moe_layer.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/compare.h"
#include "tests/testing/parity.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using testing::ToDoubles;

struct Result {
  std::vector<double> y, dx, dw_gate, dw1, dw3, dw2;
  double aux = 0;
  int64_t dropped = 0;
};

Result RunLayer(ExecContext& ctx, MoELayerConfig config, int64_t tokens) {
  Result r;
  std::unique_ptr<MoELayer> layer = *MoELayer::Create(config, ctx.device());
  MOE_CHECK_OK(layer->InitParameters(ctx, 31));
  // Inputs drawn in f32 on the host, then cast: identical on both devices.
  Tensor x32 = *Tensor::Empty({tokens, config.model_dim}, DType::kF32, ctx.device());
  Tensor dy32 = *Tensor::Empty({tokens, config.model_dim}, DType::kF32, ctx.device());
  MOE_CHECK_OK(FillNormal(ctx, x32, 3, 0, 0.0f, 1.0f));
  MOE_CHECK_OK(FillNormal(ctx, dy32, 4, 0, 0.0f, 1.0f));
  Tensor x = *Tensor::Empty(x32.shape(), config.dtype, ctx.device());
  Tensor dy = *Tensor::Empty(x32.shape(), config.dtype, ctx.device());
  Tensor y = *Tensor::Empty(x32.shape(), config.dtype, ctx.device());
  Tensor dx = *Tensor::Empty(x32.shape(), config.dtype, ctx.device());
  MOE_CHECK_OK(Cast(ctx, x32, x));
  MOE_CHECK_OK(Cast(ctx, dy32, dy));
  const AuxLossValues aux = *layer->Forward(ctx, x, y);
  MOE_CHECK_OK(layer->Backward(ctx, dy, dx));
  MOE_CHECK_OK(ctx.Synchronize());
  r.y = ToDoubles(y);
  r.dx = ToDoubles(dx);
  r.dw_gate = ToDoubles(layer->grads().w_gate);
  r.dw1 = ToDoubles(layer->grads().w1);
  r.dw3 = ToDoubles(layer->grads().w3);
  r.dw2 = ToDoubles(layer->grads().w2);
  r.aux = aux.total;
  r.dropped = layer->dropped();
  return r;
}

// (tokens, experts, top_k, capacity_factor, dtype)
using Case = std::tuple<int64_t, int, int, float, DType>;

std::string CaseName(const Case& c) {
  const auto [t, e, k, cf, dtype] = c;
  return absl::StrCat("T", t, "_E", e, "_K", k, cf > 0 ? "_capacity_" : "_dropless_",
                      DTypeName(dtype));
}
class MoELayerCudaTest : public ::testing::TestWithParam<Case> {};

TEST_P(MoELayerCudaTest, MatchesCpu) {
  MOE_SKIP_WITHOUT_CUDA();
  const auto [tokens, experts, top_k, capacity, dtype] = GetParam();
  if (top_k > experts) GTEST_SKIP() << "K > E";
  MoELayerConfig config;
  config.model_dim = 64;
  config.ffn_dim = 48;
  config.num_experts = experts;
  config.top_k = top_k;
  config.capacity_factor = capacity;
  config.dtype = DType::kF32;
  config.aux.lbl_coef = 0.01f;
  config.aux.z_coef = 0.001f;
  const Result cpu = RunLayer(ExecContext::Cpu(), config, tokens);
  config.dtype = dtype;
  std::unique_ptr<ExecContext> gpu = *ExecContext::Create(Device::Cuda(0));
  const Result cuda = RunLayer(*gpu, config, tokens);
  // bf16 runs are compared with the f32 CPU run: a routing flip from a rounded logit is possible
  // only through x, which is cast identically; the router itself is fp32 on both.
  const testing::Tolerance tol = dtype == DType::kF32 ? testing::Tolerance{1e-4, 1e-3}
                                                      : testing::Tolerance{5e-2, 5e-2};
  EXPECT_EQ(cuda.dropped, cpu.dropped);
  EXPECT_NEAR(cuda.aux, cpu.aux, 1e-4 * (1 + std::abs(cpu.aux)));
  EXPECT_TRUE(testing::AllClose(cuda.y, cpu.y, tol)) << "y";
  EXPECT_TRUE(testing::AllClose(cuda.dx, cpu.dx, tol)) << "dx";
  EXPECT_TRUE(testing::AllClose(cuda.dw_gate, cpu.dw_gate, tol)) << "dw_gate";
  EXPECT_TRUE(testing::AllClose(cuda.dw1, cpu.dw1, tol)) << "dw1";
  EXPECT_TRUE(testing::AllClose(cuda.dw3, cpu.dw3, tol)) << "dw3";
  EXPECT_TRUE(testing::AllClose(cuda.dw2, cpu.dw2, tol)) << "dw2";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MoELayerCudaTest,
    ::testing::Combine(::testing::Values(1, 333), ::testing::Values(1, 8, 96),
                       ::testing::Values(1, 2), ::testing::Values(0.0f, 1.0f),
                       ::testing::Values(DType::kF32, DType::kBF16)),
    [](const ::testing::TestParamInfo<Case>& info) { return CaseName(info.param); });

}  // namespace
}  // namespace smoe
