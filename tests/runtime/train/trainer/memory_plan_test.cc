// The memory plan: its counts against a real model's, its bytes against the allocator's measured
// peak over real steps on the CPU, the presets' plans, and the refusal when a plan does not fit.
#include "runtime/train/trainer/memory_plan.h"

#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/core/philox.h"
#include "runtime/train/model/model.h"
#include "runtime/train/trainer/trainer.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::smoe::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

proto::RunConfig Preset(const std::string& name) {
  StatusOr<proto::RunConfig> config = LoadPreset(name);
  MOE_CHECK(config.ok()) << config.status();
  return *config;
}

// The tiny preset, shrunk so that a CPU test runs real steps in well under a second.
proto::RunConfig Small() {
  proto::RunConfig config = Preset("tiny");
  config.mutable_model()->set_num_layers(2);
  config.mutable_train()->set_batch_size(4);
  config.mutable_train()->set_seq_len(64);
  return config;
}

struct Variant {
  std::string name;
  void (*edit)(proto::RunConfig*);
};
void PrintTo(const Variant& variant, std::ostream* os) { *os << variant.name; }

std::vector<Variant> Variants() {
  return {
      {"tiny", [](proto::RunConfig*) {}},
      {"untied", [](proto::RunConfig* c) { c->mutable_model()->set_tie_embeddings(false); }},
      {"dense_layer",
       [](proto::RunConfig* c) { c->mutable_model()->mutable_moe()->add_dense_layers(1); }},
      {"no_aug_no_qknorm",
       [](proto::RunConfig* c) {
         c->mutable_model()->mutable_attention()->set_d_aug(0);
         c->mutable_model()->mutable_attention()->set_qk_norm(false);
       }},
      {"top2", [](proto::RunConfig* c) { c->mutable_model()->mutable_moe()->set_top_k(2); }},
  };
}

class MemoryPlanVariantTest : public ::testing::TestWithParam<Variant> {};

// The plan counts parameters, activated parameters and FLOPs exactly as the model does.
TEST_P(MemoryPlanVariantTest, CountsMatchTheModel) {
  proto::RunConfig config = Small();
  GetParam().edit(&config);
  MOE_ASSERT_OK(ValidateConfig(config));
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    MOE_ASSERT_OK_AND_ASSIGN(MemoryPlan plan, PlanMemory(config, Device::Cpu(), dtype));
    MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> model,
                             Model::Create(SpecFromConfig(config, dtype), Device::Cpu()));
    EXPECT_EQ(plan.parameters, model->NumParameters());
    EXPECT_EQ(plan.local_parameters, model->NumParameters());
    EXPECT_EQ(plan.activated_parameters, model->NumActivatedParameters());
    EXPECT_NEAR(plan.flops_per_token, model->FlopsPerToken(config.train().seq_len()),
                1e-9 * plan.flops_per_token);
    double state = 0;
    for (const ModelParam& p : model->params()) {
      state += 4.0 * p.master.nbytes();  // master, grad, m, v are all f32
      if (p.compute.data() != p.master.data()) state += p.compute.nbytes();
    }
    EXPECT_EQ(plan.state_bytes, state) << DTypeName(dtype);
  }
}

// The plan bounds the CPU allocator's measured peak over two micro-batches of forward and
// backward at the largest top-k, and is not loose by more than 60%.
TEST_P(MemoryPlanVariantTest, BoundsTheMeasuredPeakOnTheCpu) {
  proto::RunConfig config = Small();
  GetParam().edit(&config);
  ExecContext& ctx = ExecContext::Cpu();
  Allocator* allocator = ctx.allocator();
  const size_t before = allocator->stats().bytes_in_use;
  allocator->ResetPeak();
  MOE_ASSERT_OK_AND_ASSIGN(MemoryPlan plan, PlanMemory(config, Device::Cpu(), DType::kF32));
  {
    MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> model,
                             Model::Create(SpecFromConfig(config, DType::kF32), Device::Cpu()));
    MOE_ASSERT_OK(model->Init(ctx, 3));
    for (int l = 0; l < config.model().num_layers(); ++l) {
      if (model->is_moe_layer(l)) {
        MOE_ASSERT_OK(model->SetTopK(l, plan.max_top_k));
      }
    }
    const int64_t t = plan.tokens;
    MOE_ASSERT_OK_AND_ASSIGN(Tensor ids, Tensor::Empty({t}, DType::kI32, Device::Cpu()));
    MOE_ASSERT_OK_AND_ASSIGN(Tensor targets, Tensor::Empty({t}, DType::kI32, Device::Cpu()));
    for (int64_t i = 0; i < t; ++i) {
      ids.data<int32_t>()[i] = static_cast<int32_t>(PhiloxBits(1, i) % 256);
      targets.data<int32_t>()[i] = static_cast<int32_t>(PhiloxBits(2, i) % 256);
    }
    MOE_ASSERT_OK(model->ZeroGrads(ctx));
    for (int micro = 0; micro < 2; ++micro) {
      MOE_ASSERT_OK(model
                        ->ForwardBackward(ctx, ids, targets, config.train().batch_size(),
                                          config.train().seq_len(), 0.5f)
                        .status());
    }
  }
  const double measured = static_cast<double>(allocator->stats().peak_bytes_in_use - before);
  EXPECT_GE(plan.total_bytes(), measured) << DescribePlan(plan);
  EXPECT_LE(plan.total_bytes(), 1.6 * measured) << DescribePlan(plan);
}

INSTANTIATE_TEST_SUITE_P(Configs, MemoryPlanVariantTest, ::testing::ValuesIn(Variants()),
                         [](const auto& info) { return info.param.name; });

TEST(MemoryPlanTest, SigmaMoeTiny4lFitsOneGpuWithMargin) {
  const proto::RunConfig config = Preset("sigma-moe-tiny-4l");
  MOE_ASSERT_OK(ValidateConfig(config));
  MOE_ASSERT_OK_AND_ASSIGN(MemoryPlan plan, PlanMemory(config, Device::Cuda(0), DType::kBF16));
  EXPECT_LT(plan.total_bytes(), 70 * kGiB) << DescribePlan(plan);
  EXPECT_EQ(plan.max_top_k, 8);  // layer 0's progressive phase is planned for
  MOE_EXPECT_OK(CheckPlanFits(plan, Device::Cuda(0), 79 * kGiB));
}

TEST(MemoryPlanTest, FullSigmaMoeTinyIsRefusedOnOneGpuWithWhatToChange) {
  const proto::RunConfig config = Preset("sigma-moe-tiny");
  MOE_ASSERT_OK_AND_ASSIGN(MemoryPlan plan, PlanMemory(config, Device::Cuda(0), DType::kBF16));
  EXPECT_GT(plan.parameters, int64_t{15'000'000'000});
  EXPECT_GT(plan.total_bytes(), 300 * kGiB);
  EXPECT_THAT(CheckPlanFits(plan, Device::Cuda(0), 79 * kGiB),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       AllOf(HasSubstr("cuda:0"), HasSubstr("79.00 GiB are free"),
                             HasSubstr("train.batch_size"), HasSubstr("--dry_run"))));
}

TEST(MemoryPlanTest, RanksHoldTheirShareOfTheExperts) {
  proto::RunConfig config = Small();
  MOE_ASSERT_OK_AND_ASSIGN(MemoryPlan one, PlanMemory(config, Device::Cpu(), DType::kF32, 1));
  MOE_ASSERT_OK_AND_ASSIGN(MemoryPlan four, PlanMemory(config, Device::Cpu(), DType::kF32, 4));
  const proto::ModelConfig& m = config.model();
  const int64_t experts =
      m.num_layers() * 3 * m.moe().num_experts() * m.model_dim() * m.moe().ffn_dim();
  EXPECT_EQ(four.parameters, one.parameters);
  EXPECT_EQ(one.local_parameters - four.local_parameters, experts / 4 * 3);
  EXPECT_EQ(four.tokens, one.tokens / 4);
  EXPECT_THAT(PlanMemory(config, Device::Cpu(), DType::kF32, 3).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::_));
}

TEST(MemoryPlanTest, SyncBudgetCountsMoeLayersAndMicroBatches) {
  proto::RunConfig config = Small();  // 2 MoE layers
  config.mutable_train()->set_grad_accum(3);
  MOE_ASSERT_OK_AND_ASSIGN(MemoryPlan plan, PlanMemory(config, Device::Cpu(), DType::kF32));
  // Per micro-batch one per MoE layer (offsets); per step one read, two per layer for statistics.
  EXPECT_EQ(plan.host_syncs_per_step, 3 * 2 + 1 + 2 * 2);
  // Bias balancing: the metrics line reads each layer's max |bias| too.
  config.mutable_model()->mutable_moe()->set_bias_update_rate(1e-3);
  config.mutable_model()->mutable_moe()->set_bias_bound(1.0);
  MOE_ASSERT_OK_AND_ASSIGN(plan, PlanMemory(config, Device::Cpu(), DType::kF32));
  EXPECT_EQ(plan.host_syncs_per_step, 3 * 2 + 1 + 2 * 2 + 2);
}

}  // namespace
}  // namespace smoe
