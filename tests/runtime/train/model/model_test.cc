// The model's hand-written backward against finite differences of its own forward, the LR
// schedule, and a short training run whose loss must fall.
#include "runtime/train/model/model.h"

#include <cmath>

#include "gtest/gtest.h"
#include "runtime/core/philox.h"
#include "runtime/tensor/tensor_ops.h"
#include "runtime/train/config/config.h"
#include "runtime/train/trainer/trainer.h"
#include "tests/testing/compare.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

ModelSpec SmallSpec(bool tied, std::vector<int> dense_layers) {
  ModelSpec spec;
  spec.vocab_size = 17;
  spec.num_layers = 2;
  spec.model_dim = 12;
  spec.tie_embeddings = tied;
  spec.init_std = 0.3f;  // large enough that every path carries gradient
  spec.attention = DiffQkvConfig{12, 4, 1, 2, 4, 6, true, 10000.0};
  // K = E: every expert is chosen, so routing has no discontinuity for finite differences.
  spec.moe.ffn_dim = 5;
  spec.moe.num_experts = 3;
  spec.moe.top_k = 3;
  spec.moe.aux.lbl_coef = 0.1f;
  spec.moe.aux.z_coef = 0.01f;
  spec.dense_layers = std::move(dense_layers);
  spec.dense_ffn_dim = 7;
  return spec;
}

class ModelGradientTest : public ::testing::TestWithParam<bool> {};

TEST_P(ModelGradientTest, BackwardMatchesFiniteDifferences) {
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> model,
                           Model::Create(SmallSpec(GetParam(), {1}), Device::Cpu()));
  MOE_ASSERT_OK(model->Init(ctx, 5));
  const int64_t batch = 2, seq = 5;
  Tensor ids = *Tensor::Empty({batch * seq}, DType::kI32, Device::Cpu());
  Tensor targets = *Tensor::Empty({batch * seq}, DType::kI32, Device::Cpu());
  for (int i = 0; i < batch * seq; ++i) {
    ids.data<int32_t>()[i] = static_cast<int32_t>(PhiloxBits(1, i) % 17);
    targets.data<int32_t>()[i] = static_cast<int32_t>(PhiloxBits(2, i) % 17);
  }
  MOE_ASSERT_OK(model->ZeroGrads(ctx));
  MOE_ASSERT_OK_AND_ASSIGN(ModelLoss base, model->ForwardBackward(ctx, ids, targets, batch, seq, 1.0f));
  auto total_loss = [&]() {
    ModelLoss l = *model->ForwardBackward(ctx, ids, targets, batch, seq, 0.0f);
    return l.loss + l.aux_total;
  };
  // Probe a few elements of every parameter with central differences in float (h = 1e-3).
  int checked = 0;
  for (ModelParam& p : model->params()) {
    const std::vector<double> grad = testing::ToDoubles(p.grad);
    for (int probe = 0; probe < 3; ++probe) {
      const int64_t i = static_cast<int64_t>(PhiloxBits(7, checked++) % p.master.numel());
      float& w = p.master.data<float>()[i];
      const float saved = w;
      const float h = 1e-3f;
      w = saved + h;
      const double up = total_loss();
      w = saved - h;
      const double down = total_loss();
      w = saved;
      const double numeric = (up - down) / (2.0 * h);
      EXPECT_NEAR(grad[i], numeric, 2e-3 + 3e-2 * std::abs(numeric)) << p.name << "[" << i << "]";
    }
  }
  EXPECT_GT(checked, 40);
  (void)base;
}

INSTANTIATE_TEST_SUITE_P(TiedAndUntied, ModelGradientTest, ::testing::Bool());

TEST(ModelTest, CountsAndBadSpecs) {
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> model,
                           Model::Create(SmallSpec(true, {}), Device::Cpu()));
  EXPECT_GT(model->NumParameters(), model->NumActivatedParameters() - 1);
  MOE_ASSERT_OK(model->SetTopK(0, 1));
  EXPECT_LT(model->NumActivatedParameters(), model->NumParameters());
  EXPECT_THAT(model->SetTopK(0, 4), testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                                      ::testing::HasSubstr("top_k: got 4")));
  EXPECT_THAT(Model::Create(SmallSpec(true, {5}), Device::Cpu()),
              testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                ::testing::HasSubstr("moe.dense_layers: got 5")));
}

TEST(TrainerTest, LearningRateWarmsUpThenDecaysToMin) {
  proto::TrainConfig t;
  t.set_lr(1e-3);
  t.set_min_lr(1e-4);
  t.set_warmup_steps(10);
  t.set_steps(110);
  EXPECT_DOUBLE_EQ(LearningRateAt(t, 0), 1e-4);
  EXPECT_DOUBLE_EQ(LearningRateAt(t, 9), 1e-3);
  EXPECT_NEAR(LearningRateAt(t, 60), 5.5e-4, 1e-12);  // halfway through the cosine
  EXPECT_NEAR(LearningRateAt(t, 110), 1e-4, 1e-12);
}

TEST(TrainerTest, ShortRunLossFalls) {
  proto::RunConfig config = *LoadPreset("tiny");
  for (const char* set :
       {"model.num_layers=1", "model.model_dim=32", "attention.n_q=2", "attention.n_k=1",
        "attention.n_v=2", "attention.head_dim=16", "attention.d_aug=32", "moe.num_experts=8",
        "moe.ffn_dim=16", "moe.topk_schedule=[]", "train.batch_size=4", "train.seq_len=32",
        "train.steps=150", "train.warmup_steps=5", "train.lr=3e-3", "train.eval_interval=0",
        "train.device=cpu", "data.synthetic_size=100000", "checkpoint.dir=\"\"",
        "checkpoint.interval=0", "checkpoint.resume=false"}) {
    MOE_ASSERT_OK(ApplyOverride(&config, set));
  }
  TrainerOptions options;
  options.progress_bar = false;
  MOE_ASSERT_OK_AND_ASSIGN(TrainSummary summary, Train(config, options));
  EXPECT_EQ(summary.steps_done, 150);
  EXPECT_GT(summary.final_eval_loss, 0.0);
  EXPECT_LT(summary.final_eval_loss, 3.7);  // from ln(256) = 5.55; the byte unigram is 3.8
  EXPECT_LT(summary.final_loss, 3.7);
}

}  // namespace
}  // namespace smoe
