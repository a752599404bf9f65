// The MoE layer on CUDA against the same layer on the CPU: same parameters (Philox init is
// bit-identical across devices), same inputs; outputs, aux loss and every gradient compared.
// The GPU cases skip themselves without a GPU; the check of the reference's inputs runs anywhere.
#include <cstdint>
#include <tuple>
#include <vector>

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

// An input of the layer (x or dy) in `dtype`: N(0, 1) drawn in f32 (Philox: the same on every
// device), holding the values that `values_of` stores, i.e. rounded through bf16 when `values_of`
// is bf16 whatever `dtype` is. The f32 CPU reference of a bf16 GPU run takes its inputs so: on
// unrounded x the fp32 router sends some tokens to other experts than the bf16 run's.
Tensor Input(ExecContext& ctx, Shape shape, uint64_t seed, DType dtype, DType values_of) {
  Tensor drawn = *Tensor::Empty(shape, DType::kF32, ctx.device());
  MOE_CHECK_OK(FillNormal(ctx, drawn, seed, 0, 0.0f, 1.0f));
  Tensor stored = *Tensor::Empty(shape, values_of, ctx.device());
  MOE_CHECK_OK(Cast(ctx, drawn, stored));
  Tensor input = *Tensor::Empty(shape, dtype, ctx.device());
  MOE_CHECK_OK(Cast(ctx, stored, input));
  return input;
}

// `inputs_of`: the dtype of the run whose inputs this run takes (see Input).
Result RunLayer(ExecContext& ctx, MoELayerConfig config, int64_t tokens, DType inputs_of) {
  Result r;
  std::unique_ptr<MoELayer> layer = *MoELayer::Create(config, ctx.device());
  MOE_CHECK_OK(layer->InitParameters(ctx, 31));
  const Shape shape = {tokens, config.model_dim};
  Tensor x = Input(ctx, shape, 3, config.dtype, inputs_of);
  Tensor dy = Input(ctx, shape, 4, config.dtype, inputs_of);
  Tensor y = *Tensor::Empty(shape, config.dtype, ctx.device());
  Tensor dx = *Tensor::Empty(shape, config.dtype, ctx.device());
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
  const Result cpu = RunLayer(ExecContext::Cpu(), config, tokens, /*inputs_of=*/dtype);
  config.dtype = dtype;
  std::unique_ptr<ExecContext> gpu = *ExecContext::Create(Device::Cuda(0));
  const Result cuda = RunLayer(*gpu, config, tokens, dtype);
  // bf16 runs are compared with the f32 CPU run on the same (bf16-valued) x and dy, so the fp32
  // routers see the same x and choose the same experts; the bf16 expert weights and activations
  // stay within the tolerance.
  const testing::Tolerance tol =
      dtype == DType::kF32 ? testing::Tolerance{1e-4, 1e-3} : testing::Tolerance{5e-2, 5e-2};
  EXPECT_EQ(cuda.dropped, cpu.dropped);
  EXPECT_NEAR(cuda.aux, cpu.aux, 1e-4 * (1 + std::abs(cpu.aux)));
  EXPECT_TRUE(testing::AllClose(cuda.y, cpu.y, tol)) << "y";
  EXPECT_TRUE(testing::AllClose(cuda.dx, cpu.dx, tol)) << "dx";
  EXPECT_TRUE(testing::AllClose(cuda.dw_gate, cpu.dw_gate, tol)) << "dw_gate";
  EXPECT_TRUE(testing::AllClose(cuda.dw1, cpu.dw1, tol)) << "dw1";
  EXPECT_TRUE(testing::AllClose(cuda.dw3, cpu.dw3, tol)) << "dw3";
  EXPECT_TRUE(testing::AllClose(cuda.dw2, cpu.dw2, tol)) << "dw2";
}

// Runs without a GPU: the f32 reference of a bf16 run takes exactly the bf16 run's inputs.
TEST(MoELayerCudaReferenceTest, Bf16RunsReferenceTakesTheBf16Inputs) {
  ExecContext& cpu = ExecContext::Cpu();
  const Shape shape = {333, 64};
  for (uint64_t seed : {3, 4}) {  // x, dy
    const auto reference = ToDoubles(Input(cpu, shape, seed, DType::kF32, DType::kBF16));
    const auto bf16 = ToDoubles(Input(cpu, shape, seed, DType::kBF16, DType::kBF16));
    const auto unrounded = ToDoubles(Input(cpu, shape, seed, DType::kF32, DType::kF32));
    EXPECT_EQ(reference, bf16) << "seed " << seed;
    EXPECT_NE(reference, unrounded) << "seed " << seed << ": bf16 rounding changes the draw";
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, MoELayerCudaTest,
                         ::testing::Combine(::testing::Values(1, 333), ::testing::Values(1, 8, 96),
                                            ::testing::Values(1, 2), ::testing::Values(0.0f, 1.0f),
                                            ::testing::Values(DType::kF32, DType::kBF16)),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return CaseName(info.param);
                         });

}  // namespace
}  // namespace smoe
