// The model's hand-written backward against finite differences of its own forward, the LR
// schedule, a short training run whose loss must fall, incremental decoding (Prefill + DecodeStep
// with KV caches) against full forwards, and `sample` from a checkpoint of a short run.
#include "runtime/train/model/model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/core/philox.h"
#include "runtime/tensor/tensor_ops.h"
#include "runtime/train/checkpoint/checkpoint.h"
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
  MOE_ASSERT_OK_AND_ASSIGN(ModelLoss base,
                           model->ForwardBackward(ctx, ids, targets, batch, seq, 1.0f));
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
       {"model.num_layers=1",    "model.model_dim=32",    "attention.n_q=2",
        "attention.n_k=1",       "attention.n_v=2",       "attention.head_dim=16",
        "attention.d_aug=32",    "moe.num_experts=8",     "moe.ffn_dim=16",
        "moe.topk_schedule=[]",  "train.batch_size=4",    "train.seq_len=32",
        "train.steps=150",       "train.warmup_steps=5",  "train.lr=3e-3",
        "train.eval_interval=0", "train.device=cpu",      "data.synthetic_size=100000",
        "checkpoint.dir=\"\"",   "checkpoint.interval=0", "checkpoint.resume=false"}) {
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

// Ids [n] i32 on the host (the model is on the CPU).
Tensor Ids(const std::vector<int32_t>& values) {
  Tensor t = *Tensor::Empty({static_cast<int64_t>(values.size())}, DType::kI32, Device::Cpu());
  std::copy(values.begin(), values.end(), t.data<int32_t>());
  return t;
}

// The first `len` tokens of each of the B sequences, concatenated ([B * len]).
std::vector<int32_t> Prefixes(const std::vector<std::vector<int32_t>>& seqs, int64_t len) {
  std::vector<int32_t> out;
  for (const auto& s : seqs) out.insert(out.end(), s.begin(), s.begin() + len);
  return out;
}

// Aux-loss-free balancing: one step moves each expert's bias by exactly the rate towards the mean
// load (sign of mean - count), the bias is named checkpoint state, and the per-layer aux values
// of the forward are reported.
TEST(ModelTest, ExpertBiasStepsTowardsBalance) {
  ModelSpec spec = SmallSpec(true, {});
  spec.moe.top_k = 1;
  spec.bias_update_rate = 0.25f;
  spec.bias_bound = 0.4f;
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> model, Model::Create(spec, Device::Cpu()));
  MOE_ASSERT_OK(model->Init(ctx, 5));
  const std::vector<std::pair<std::string, TensorView>> buffers = model->Buffers();
  ASSERT_EQ(buffers.size(), 2u);
  EXPECT_EQ(buffers[1].first, "layers.1.moe.expert_bias");
  // 2 sequences of 7 tokens: 14 choices over 3 experts cannot be balanced exactly.
  std::vector<int32_t> ids(14), targets(14);
  for (int i = 0; i < 14; ++i) {
    ids[i] = (i * 5 + 3) % 17;
    targets[i] = (i * 7 + 1) % 17;
  }
  MOE_ASSERT_OK(model->ZeroGrads(ctx));
  MOE_ASSERT_OK(model->ForwardBackward(ctx, Ids(ids), Ids(targets), 2, 7, 1.0f).status());
  for (int l = 0; l < 2; ++l) EXPECT_GT(model->LastAuxLosses()[l].lbl, 0.0) << l;
  MOE_ASSERT_OK_AND_ASSIGN(std::vector<RoutingStats> stats, model->MoEStats(ctx));
  MOE_ASSERT_OK(model->UpdateExpertBiases(ctx));
  for (int l = 0; l < 2; ++l) {
    const float* bias = buffers[l].second.data<float>();
    for (int e = 0; e < 3; ++e) {
      const int64_t diff = 14 - 3 * stats[l].tokens_per_expert[e];
      EXPECT_EQ(bias[e], diff > 0 ? 0.25f : (diff < 0 ? -0.25f : 0.0f)) << l << " " << e;
    }
  }
  MOE_ASSERT_OK(model->UpdateExpertBiases(ctx));  // a second step clamps at the bound
  for (int l = 0; l < 2; ++l) {
    for (int e = 0; e < 3; ++e) EXPECT_LE(std::abs(buffers[l].second.data<float>()[e]), 0.4f);
  }
  spec.bias_bound = 0.0f;
  EXPECT_THAT(Model::Create(spec, Device::Cpu()),
              testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                ::testing::HasSubstr("moe.bias_bound")));
}

struct DecodeCase {
  std::vector<int> dense_layers;
  bool tied;
};

class ModelDecodeTest : public ::testing::TestWithParam<DecodeCase> {};

// Prefill of a 3-token prompt and 6 decode steps, B = 2: each step's logits equal the last
// position's logits of a full forward over the sequences so far. Routing is sparse and differs
// per layer (top-1 and top-2 of 3 experts), so the decode path must use each layer's top-k.
TEST_P(ModelDecodeTest, PrefillAndDecodeMatchFullForward) {
  ExecContext& ctx = ExecContext::Cpu();
  ModelSpec spec = SmallSpec(GetParam().tied, GetParam().dense_layers);
  spec.init_std = 0.5f;
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> model, Model::Create(spec, Device::Cpu()));
  MOE_ASSERT_OK(model->Init(ctx, 11));
  MOE_ASSERT_OK(model->SetTopK(0, 1));
  MOE_ASSERT_OK(model->SetTopK(1, 2));
  const int64_t batch = 2, prompt = 3, steps = 6, total = prompt + steps;
  std::vector<std::vector<int32_t>> seqs(batch);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < total; ++i) {
      seqs[b].push_back(static_cast<int32_t>(PhiloxBits(3 + b, i) % spec.vocab_size));
    }
  }
  DecodeState state;
  MOE_ASSERT_OK_AND_ASSIGN(Tensor logits, model->Prefill(ctx, Ids(Prefixes(seqs, prompt)), batch,
                                                         prompt, total, &state));
  EXPECT_EQ(state.caches.size(), 2u);
  EXPECT_EQ(state.length(), prompt);
  std::vector<double> previous;
  for (int64_t len = prompt; len <= total; ++len) {
    if (len > prompt) {
      std::vector<int32_t> step_ids;
      for (int64_t b = 0; b < batch; ++b) step_ids.push_back(seqs[b][len - 1]);
      MOE_ASSERT_OK_AND_ASSIGN(logits, model->DecodeStep(ctx, Ids(step_ids), &state));
      EXPECT_EQ(state.length(), len);
    }
    ASSERT_EQ(logits.shape(), Shape({batch, spec.vocab_size}));
    MOE_ASSERT_OK_AND_ASSIGN(Tensor full,
                             model->LastLogits(ctx, Ids(Prefixes(seqs, len)), batch, len));
    EXPECT_TRUE(testing::AllClose(logits, full, {1e-5, 1e-4})) << "length " << len;
    // The two sequences and consecutive steps really differ (nothing trivially constant).
    const std::vector<double> now = testing::ToDoubles(logits);
    double across = 0.0, between = 0.0;
    for (int64_t j = 0; j < spec.vocab_size; ++j) {
      across = std::max(across, std::abs(now[j] - now[spec.vocab_size + j]));
      if (!previous.empty()) between = std::max(between, std::abs(now[j] - previous[j]));
    }
    EXPECT_GT(across, 1e-2);
    if (!previous.empty()) {
      EXPECT_GT(between, 1e-2);
    }
    previous = now;
  }
  // The caches are full now.
  EXPECT_THAT(model->DecodeStep(ctx, Ids({1, 2}), &state),
              testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                ::testing::HasSubstr("state.length: got 9")));
  // A second Prefill reuses the caches from position 0: the same logits as the first time.
  MOE_ASSERT_OK_AND_ASSIGN(
      Tensor again, model->Prefill(ctx, Ids(Prefixes(seqs, prompt)), batch, prompt, total, &state));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor full,
                           model->LastLogits(ctx, Ids(Prefixes(seqs, prompt)), batch, prompt));
  EXPECT_TRUE(testing::AllClose(again, full, {1e-5, 1e-4}));
  EXPECT_EQ(state.length(), prompt);
}

INSTANTIATE_TEST_SUITE_P(MoEAndDense, ModelDecodeTest,
                         ::testing::Values(DecodeCase{{}, true}, DecodeCase{{1}, false},
                                           DecodeCase{{0}, true}));

TEST(ModelDecodeTest, BadArguments) {
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> model,
                           Model::Create(SmallSpec(true, {}), Device::Cpu()));
  MOE_ASSERT_OK(model->Init(ctx, 1));
  DecodeState state;
  EXPECT_THAT(
      model->DecodeStep(ctx, Ids({1}), &state),
      testing::StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("state:")));
  EXPECT_THAT(model->Prefill(ctx, Ids({1, 2, 3, 4}), 1, 4, 3, &state),
              testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                ::testing::HasSubstr("capacity: got 3")));
  EXPECT_THAT(model->Prefill(ctx, Ids({1, 2, 3}), 1, 4, 8, &state),
              testing::StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("ids")));
  MOE_ASSERT_OK(model->Prefill(ctx, Ids({1, 2, 3, 4}), 2, 2, 4, &state).status());
  EXPECT_THAT(model->DecodeStep(ctx, Ids({1}), &state),
              testing::StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("ids")));
}

// Train a tiny model briefly with checkpoints, then sample from the checkpoint: greedy output
// equals a reference that runs a full forward (LastLogits) for every token over the same context
// windows (train.seq_len = 16, refilled with the last 8 tokens when full), and 40 tokens after a
// 5-byte prompt slide the window several times. A large init (0.5) keeps the short run's greedy
// text varied (not one repeated byte), so any difference in the contexts shows in it.
TEST(TrainerTest, SampleFromCheckpointMatchesFullForwards) {
  const std::string dir = ::testing::TempDir() + "/sample_checkpoint";
  std::filesystem::remove_all(dir);
  proto::RunConfig config = *LoadPreset("tiny");
  for (const std::string& set :
       {std::string("model.num_layers=2"),     std::string("model.model_dim=32"),
        std::string("attention.n_q=2"),        std::string("attention.n_k=1"),
        std::string("attention.n_v=2"),        std::string("attention.head_dim=16"),
        std::string("attention.d_aug=32"),     std::string("moe.num_experts=4"),
        std::string("moe.ffn_dim=16"),         std::string("moe.top_k=2"),
        std::string("moe.topk_schedule=[]"),   std::string("model.init_std=0.5"),
        std::string("train.batch_size=4"),     std::string("train.seq_len=16"),
        std::string("train.steps=30"),         std::string("train.warmup_steps=5"),
        std::string("train.lr=3e-3"),          std::string("train.eval_interval=0"),
        std::string("train.device=cpu"),       std::string("data.synthetic_size=100000"),
        "checkpoint.dir=\"" + dir + "\"",      std::string("checkpoint.interval=30"),
        std::string("checkpoint.resume=false")}) {
    MOE_ASSERT_OK(ApplyOverride(&config, set));
  }
  TrainerOptions options;
  options.progress_bar = false;
  MOE_ASSERT_OK_AND_ASSIGN(TrainSummary summary, Train(config, options));
  ASSERT_EQ(summary.steps_done, 30);

  const std::string prompt = "the q";
  const int num_tokens = 40;
  MOE_ASSERT_OK_AND_ASSIGN(std::string greedy, Sample(config, prompt, num_tokens, 0.0, 1));
  ASSERT_EQ(greedy.size(), static_cast<size_t>(num_tokens));

  // The reference: the checkpoint's weights, a full forward per token.
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> model,
                           Model::Create(SpecFromConfig(config, DType::kF32), Device::Cpu()));
  MOE_ASSERT_OK_AND_ASSIGN(LoadedCheckpoint latest, LoadLatestCheckpoint(dir));
  std::vector<NamedTensor> tensors;
  for (ModelParam& p : model->params()) tensors.push_back({p.name, p.master});
  MOE_ASSERT_OK(RestoreTensors(ctx, latest, tensors));
  MOE_ASSERT_OK(model->SyncComputeCopies(ctx));
  const int64_t window = 16, keep = 8;
  std::vector<int32_t> tokens(prompt.begin(), prompt.end());
  size_t start = 0;
  std::string expected;
  int slides = 0;
  for (int i = 0; i < num_tokens; ++i) {
    const std::vector<int32_t> context(tokens.begin() + start, tokens.end());
    const int64_t n = static_cast<int64_t>(context.size());
    MOE_ASSERT_OK_AND_ASSIGN(Tensor logits, model->LastLogits(ctx, Ids(context), 1, n));
    const float* row = logits.data<float>();
    const int next = static_cast<int>(std::max_element(row, row + 256) - row);
    tokens.push_back(next);
    expected.push_back(static_cast<char>(next));
    if (n >= window) {
      start = tokens.size() - keep;
      ++slides;
    }
  }
  EXPECT_GE(slides, 3);
  EXPECT_EQ(greedy, expected);

  // Temperature sampling: deterministic per seed, and not the greedy text.
  MOE_ASSERT_OK_AND_ASSIGN(std::string hot1, Sample(config, prompt, num_tokens, 1.0, 7));
  MOE_ASSERT_OK_AND_ASSIGN(std::string hot2, Sample(config, prompt, num_tokens, 1.0, 7));
  EXPECT_EQ(hot1.size(), static_cast<size_t>(num_tokens));
  EXPECT_EQ(hot1, hot2);
  EXPECT_NE(hot1, greedy);
  // A prompt longer than the window: its last 16 bytes are the first context.
  MOE_ASSERT_OK_AND_ASSIGN(std::string long_prompt,
                           Sample(config, std::string(40, 'a') + prompt, 3, 0.0, 1));
  EXPECT_EQ(long_prompt.size(), 3u);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace smoe
