// The MoE layer against an independent dense reference (tests/moe/moe_layer_reference.h):
// forward values, and the analytic gradients of the whole layer against fp64 finite differences
// of the reference, over routing configurations that matter (K = 1, 2, E; dropless and capacity
// with drops; renormalized gates; every aux loss on).
#include "moe/moe_layer.h"

#include <tuple>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/moe/moe_layer_reference.h"
#include "tests/testing/compare.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::testing::HasSubstr;
using testing::StatusIs;
using testing::ToDoubles;

struct Case {
  int64_t t, m, h;
  int e, k;
  float capacity_factor;
  bool renormalize;
};

std::ostream& operator<<(std::ostream& out, const Case& c) {
  return out << "T" << c.t << "_M" << c.m << "_H" << c.h << "_E" << c.e << "_K" << c.k << "_cf"
             << c.capacity_factor << (c.renormalize ? "_renorm" : "");
}

MoELayerConfig ConfigFor(const Case& c) {
  MoELayerConfig config;
  config.model_dim = c.m;
  config.ffn_dim = c.h;
  config.num_experts = c.e;
  config.top_k = c.k;
  config.capacity_factor = c.capacity_factor;
  config.renormalize = c.renormalize;
  config.aux.lbl_coef = 0.03f;
  config.aux.z_coef = 0.002f;
  config.aux.top1_lbl_coef = 0.05f;
  return config;
}

testing::DenseMoE DenseFor(const MoELayerConfig& config) {
  return testing::DenseMoE{config.model_dim,    config.ffn_dim,     config.num_experts,
                           config.top_k,        config.renormalize, config.capacity_factor,
                           config.aux.lbl_coef, config.aux.z_coef,  config.aux.top1_lbl_coef};
}

class MoELayerTest : public ::testing::TestWithParam<Case> {};

TEST_P(MoELayerTest, ForwardAndGradientsMatchDenseReference) {
  const Case c = GetParam();
  ExecContext& ctx = ExecContext::Cpu();
  const MoELayerConfig config = ConfigFor(c);
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<MoELayer> layer,
                           MoELayer::Create(config, Device::Cpu()));
  MOE_ASSERT_OK(layer->InitParameters(ctx, 17));
  // A router scaled up so that routing is decisive (no near-ties to flip under the FD step).
  MOE_ASSERT_OK(FillNormal(ctx, layer->params().w_gate, 23, 0, 0.0f, 1.0f));
  Tensor x = *Tensor::Empty({c.t, c.m}, DType::kF32, Device::Cpu());
  Tensor y = *Tensor::Empty({c.t, c.m}, DType::kF32, Device::Cpu());
  Tensor dy = *Tensor::Empty({c.t, c.m}, DType::kF32, Device::Cpu());
  Tensor dx = *Tensor::Empty({c.t, c.m}, DType::kF32, Device::Cpu());
  MOE_ASSERT_OK(FillNormal(ctx, x, 5, 0, 0.0f, 1.0f));
  const std::vector<double> w_y = testing::RandomWeights(c.t * c.m, 99);
  for (int64_t i = 0; i < c.t * c.m; ++i) dy.data<float>()[i] = static_cast<float>(w_y[i]);

  MOE_ASSERT_OK_AND_ASSIGN(AuxLossValues aux, layer->Forward(ctx, x, y));
  MOE_ASSERT_OK(layer->Backward(ctx, dy, dx));

  const testing::DenseMoE dense = DenseFor(config);
  testing::DenseMoEWeights w{ToDoubles(layer->params().w_gate), ToDoubles(layer->params().w1),
                             ToDoubles(layer->params().w3), ToDoubles(layer->params().w2)};
  const std::vector<double> xd = ToDoubles(x);
  const testing::DenseMoEResult ref = testing::DenseMoEForward(dense, xd, w);
  EXPECT_TRUE(testing::AllClose(ToDoubles(y), ref.y, {2e-5, 1e-4}));
  EXPECT_NEAR(aux.total, ref.aux_total, 1e-5 + 1e-5 * std::abs(ref.aux_total));
  int64_t dropped = 0;
  for (bool kept : ref.kept) dropped += !kept;
  EXPECT_EQ(layer->dropped(), dropped);

  // L = sum w_y * y + aux_total; check d/dx and d/d(every parameter).
  auto loss_of = [&](const std::vector<double>& xs, const testing::DenseMoEWeights& ws) {
    const testing::DenseMoEResult r = testing::DenseMoEForward(dense, xs, ws);
    double l = r.aux_total;
    for (size_t i = 0; i < r.y.size(); ++i) l += w_y[i] * r.y[i];
    return l;
  };
  const testing::GradcheckOptions tol{1e-6, 2e-5, 2e-4};
  EXPECT_TRUE(testing::CheckGradient([&](const std::vector<double>& v) { return loss_of(v, w); },
                                     xd, ToDoubles(dx), tol))
      << "dx";
  struct Param {
    const char* name;
    std::vector<double> testing::DenseMoEWeights::*member;
    const Tensor& grad;
  };
  for (const Param& p : {Param{"w_gate", &testing::DenseMoEWeights::w_gate, layer->grads().w_gate},
                         Param{"w1", &testing::DenseMoEWeights::w1, layer->grads().w1},
                         Param{"w3", &testing::DenseMoEWeights::w3, layer->grads().w3},
                         Param{"w2", &testing::DenseMoEWeights::w2, layer->grads().w2}}) {
    auto f = [&](const std::vector<double>& v) {
      testing::DenseMoEWeights probe = w;
      probe.*(p.member) = v;
      return loss_of(xd, probe);
    };
    EXPECT_TRUE(testing::CheckGradient(f, w.*(p.member), ToDoubles(p.grad), tol)) << p.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Routing, MoELayerTest,
                         ::testing::Values(Case{13, 8, 6, 5, 1, 0.0f, false},  // top-1 dropless
                                           Case{13, 8, 6, 5, 2, 0.0f, false},  // top-2
                                           Case{13, 8, 6, 5, 2, 0.0f, true},   // renormalized gates
                                           Case{16, 6, 4, 4, 1, 0.5f,
                                                false},                       // capacity with drops
                                           Case{16, 6, 4, 4, 2, 1.0f, true},  // capacity, K = 2
                                           Case{9, 6, 4, 3, 3, 0.0f, false},  // K = E
                                           Case{7, 5, 3, 1, 1, 0.0f, false},  // E = 1
                                           Case{1, 6, 4, 4, 2, 0.0f, false}),  // T = 1
                         [](const ::testing::TestParamInfo<Case>& info) {
                           std::ostringstream name;
                           name << info.param;
                           std::string s = name.str();
                           std::replace(s.begin(), s.end(), '.', 'p');
                           return s;
                         });

TEST(MoELayerTest, GradientAccumulationAdds) {
  ExecContext& ctx = ExecContext::Cpu();
  const MoELayerConfig config = ConfigFor(Case{10, 6, 4, 4, 2, 0.0f, false});
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<MoELayer> layer,
                           MoELayer::Create(config, Device::Cpu()));
  MOE_ASSERT_OK(layer->InitParameters(ctx, 3));
  Tensor x = *Tensor::Empty({10, 6}, DType::kF32, Device::Cpu());
  Tensor y = *Tensor::Empty({10, 6}, DType::kF32, Device::Cpu());
  Tensor dx = *Tensor::Empty({10, 6}, DType::kF32, Device::Cpu());
  MOE_ASSERT_OK(FillNormal(ctx, x, 1, 0, 0.0f, 1.0f));
  MOE_ASSERT_OK(layer->Forward(ctx, x, y).status());
  MOE_ASSERT_OK(layer->Backward(ctx, y, dx));
  const std::vector<double> once = ToDoubles(layer->grads().w1);
  const std::vector<double> once_gate = ToDoubles(layer->grads().w_gate);
  MOE_ASSERT_OK(layer->Backward(ctx, y, dx, /*accumulate_grads=*/true));
  std::vector<double> twice = once, twice_gate = once_gate;
  for (double& v : twice) v *= 2;
  for (double& v : twice_gate) v *= 2;
  EXPECT_TRUE(testing::AllClose(ToDoubles(layer->grads().w1), twice, {1e-6, 1e-5}));
  EXPECT_TRUE(testing::AllClose(ToDoubles(layer->grads().w_gate), twice_gate, {1e-6, 1e-5}));
}

TEST(MoELayerTest, StatisticsCountEveryChoice) {
  ExecContext& ctx = ExecContext::Cpu();
  const MoELayerConfig config = ConfigFor(Case{50, 6, 4, 8, 2, 0.0f, false});
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<MoELayer> layer,
                           MoELayer::Create(config, Device::Cpu()));
  MOE_ASSERT_OK(layer->InitParameters(ctx, 3));
  Tensor x = *Tensor::Empty({50, 6}, DType::kF32, Device::Cpu());
  Tensor y = *Tensor::Empty({50, 6}, DType::kF32, Device::Cpu());
  MOE_ASSERT_OK(FillNormal(ctx, x, 1, 0, 0.0f, 1.0f));
  EXPECT_THAT(layer->Stats(ctx), StatusIs(absl::StatusCode::kFailedPrecondition,
                                          HasSubstr("before a successful forward")));
  MOE_ASSERT_OK(layer->Forward(ctx, x, y).status());
  MOE_ASSERT_OK_AND_ASSIGN(RoutingStats stats, layer->Stats(ctx));
  int64_t total = 0;
  for (int64_t n : stats.tokens_per_expert) total += n;
  EXPECT_EQ(total, 100);
  EXPECT_EQ(layer->dropped(), 0);
}

TEST(MoELayerTest, BadConfigsAndInputsNameTheField) {
  MoELayerConfig config = ConfigFor(Case{4, 6, 4, 4, 1, 0.0f, false});
  config.top_k = 5;
  EXPECT_THAT(MoELayer::Create(config, Device::Cpu()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_k: got 5")));
  config.top_k = 1;
  config.num_experts = 0;
  EXPECT_THAT(MoELayer::Create(config, Device::Cpu()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("num_experts: got 0")));
  config.num_experts = 4;
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<MoELayer> layer,
                           MoELayer::Create(config, Device::Cpu()));
  ExecContext& ctx = ExecContext::Cpu();
  Tensor x = *Tensor::Empty({4, 7}, DType::kF32, Device::Cpu());
  Tensor y = *Tensor::Empty({4, 6}, DType::kF32, Device::Cpu());
  EXPECT_THAT(layer->Forward(ctx, x, y),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("x.shape: got [4, 7]")));
  Tensor xb = *Tensor::Empty({4, 6}, DType::kBF16, Device::Cpu());
  EXPECT_THAT(layer->Forward(ctx, xb, y),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("x.dtype: got bf16")));
  EXPECT_THAT(layer->Backward(ctx, y, y), StatusIs(absl::StatusCode::kFailedPrecondition,
                                                   HasSubstr("before a successful forward")));
  EXPECT_THAT(layer->SetTopK(0), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_k")));
}

}  // namespace
}  // namespace smoe
