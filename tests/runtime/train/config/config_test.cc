#include "runtime/train/config/config.h"

#include <cstdio>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::smoe::testing::IsOk;
using ::smoe::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

bool Equal(const proto::RunConfig& a, const proto::RunConfig& b) {
  return google::protobuf::util::MessageDifferencer::Equals(a, b);
}

proto::RunConfig Tiny() {
  StatusOr<proto::RunConfig> config = LoadPreset("tiny");
  MOE_CHECK(config.ok()) << config.status();
  return *config;
}

std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(PresetTest, NamesAreTheConfigsFiles) {
  EXPECT_THAT(PresetNames(),
              ElementsAre("load-balance-study", "sigma-moe-tiny", "sigma-moe-tiny-4l", "tiny"));
  EXPECT_STREQ(kDefaultPreset, "tiny");
}

TEST(PresetTest, TinyMatchesTheIssue) {
  MOE_ASSERT_OK_AND_ASSIGN(proto::RunConfig config, LoadPreset("tiny"));
  MOE_EXPECT_OK(ValidateConfig(config));
  const proto::ModelConfig& model = config.model();
  EXPECT_EQ(model.vocab_size(), 256);
  EXPECT_EQ(model.num_layers(), 4);
  EXPECT_EQ(model.model_dim(), 128);
  EXPECT_EQ(model.attention().n_q(), 4);
  EXPECT_EQ(model.attention().n_k(), 1);
  EXPECT_EQ(model.attention().n_v(), 2);
  EXPECT_EQ(model.attention().head_dim(), 32);
  EXPECT_EQ(model.attention().d_aug(), 192);
  EXPECT_EQ(model.moe().num_experts(), 96);
  EXPECT_EQ(model.moe().ffn_dim(), 64);
  EXPECT_EQ(model.moe().top_k(), 1);
  EXPECT_EQ(model.moe().dense_layers_size(), 0);  // experts in every layer
  ASSERT_EQ(model.moe().topk_schedule_size(), 1);
  EXPECT_EQ(model.moe().topk_schedule(0).first_layer(), 0);
  EXPECT_EQ(model.moe().topk_schedule(0).last_layer(), 0);
  EXPECT_EQ(model.moe().topk_schedule(0).k(), 4);
  EXPECT_EQ(model.moe().topk_schedule(0).until_step(), 200);
  EXPECT_EQ(config.train().seq_len(), 256);
  EXPECT_EQ(config.train().batch_size(), 16);
  EXPECT_EQ(config.train().device(), "auto");
  EXPECT_EQ(config.train().dtype(), "auto");
  EXPECT_EQ(config.data().kind(), proto::DataConfig::SYNTHETIC);
}

// Issue 16's study model: 8 layers with experts (lower and upper layers), 96 experts at top-1,
// Switch LBL only and no schedule (the study's variants add theirs).
TEST(PresetTest, LoadBalanceStudyMatchesTheIssue) {
  MOE_ASSERT_OK_AND_ASSIGN(proto::RunConfig config, LoadPreset("load-balance-study"));
  MOE_EXPECT_OK(ValidateConfig(config));
  const proto::MoeConfig& moe = config.model().moe();
  EXPECT_EQ(config.model().num_layers(), 8);
  EXPECT_EQ(moe.num_experts(), 96);
  EXPECT_EQ(moe.top_k(), 1);
  EXPECT_EQ(moe.dense_layers_size(), 0);
  EXPECT_EQ(moe.topk_schedule_size(), 0);
  EXPECT_GT(moe.lbl_coef(), 0);
  EXPECT_EQ(moe.z_coef(), 0);
  EXPECT_EQ(moe.top1_lbl_coef(), 0);
  EXPECT_EQ(moe.bias_update_rate(), 0);
}

TEST(PresetTest, SigmaMoeTinyMatchesTheIssue) {
  MOE_ASSERT_OK_AND_ASSIGN(proto::RunConfig config, LoadPreset("sigma-moe-tiny"));
  MOE_EXPECT_OK(ValidateConfig(config));
  const proto::ModelConfig& model = config.model();
  EXPECT_EQ(model.num_layers(), 56);
  EXPECT_EQ(model.model_dim(), 1536);
  EXPECT_EQ(model.attention().n_q(), 16);
  EXPECT_EQ(model.attention().n_k(), 2);
  EXPECT_EQ(model.attention().n_v(), 8);
  EXPECT_EQ(model.attention().head_dim(), 96);
  EXPECT_EQ(model.attention().d_aug(), 2304);
  EXPECT_EQ(model.moe().num_experts(), 96);
  EXPECT_EQ(model.moe().ffn_dim(), 768);
  EXPECT_EQ(model.moe().top_k(), 1);
  EXPECT_EQ(model.moe().dense_layers_size(), 0);
  ASSERT_EQ(model.moe().topk_schedule_size(), 1);
  EXPECT_EQ(model.moe().topk_schedule(0).last_layer(), 5);
  EXPECT_EQ(model.moe().topk_schedule(0).k(), 8);
  EXPECT_EQ(config.train().seq_len(), 4096);
}

TEST(PresetTest, UnknownPresetListsTheKnownOnes) {
  EXPECT_THAT(LoadPreset("huge"), StatusIs(absl::StatusCode::kNotFound,
                                           AllOf(HasSubstr("huge"), HasSubstr("sigma-moe-tiny"))));
}

TEST(ConfigTextTest, PrintsEveryFieldAndRoundTrips) {
  proto::RunConfig config = Tiny();
  const std::string text = ConfigToText(config);
  // Zero-valued fields are printed too, so --print_config shows the whole effective config.
  EXPECT_THAT(text, HasSubstr("capacity_factor: 0"));
  EXPECT_THAT(text, HasSubstr("dense_layers: []"));
  EXPECT_THAT(text, HasSubstr("kind: SYNTHETIC"));
  MOE_ASSERT_OK_AND_ASSIGN(proto::RunConfig parsed, ParseConfigText(text, "printed"));
  EXPECT_TRUE(Equal(parsed, config));

  MOE_ASSERT_OK(ApplyOverride(&config, "moe.dense_layers=[1, 3]"));
  MOE_ASSERT_OK(ApplyOverride(&config, "checkpoint.dir=a \"quoted\" dir"));
  MOE_ASSERT_OK(ApplyOverride(&config, "train.lr=0.000123456789"));
  MOE_ASSERT_OK_AND_ASSIGN(parsed, ParseConfigText(ConfigToText(config), "printed"));
  EXPECT_TRUE(Equal(parsed, config)) << ConfigToText(config);
}

TEST(ConfigFileTest, LoadsAFile) {
  const std::string path = WriteFile("config_ok.textproto", ConfigToText(Tiny()));
  MOE_ASSERT_OK_AND_ASSIGN(proto::RunConfig config, LoadConfigFile(path));
  EXPECT_TRUE(Equal(config, Tiny()));
}

TEST(ConfigFileTest, ParseErrorNamesFileLineAndColumn) {
  const std::string path =
      WriteFile("config_bad.textproto", "model {\n  vocab_size: 256\n  num_layerz: 4\n}\n");
  EXPECT_THAT(LoadConfigFile(path),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(path + ":3:"), HasSubstr("num_layerz"))));
  const std::string path2 = WriteFile("config_bad2.textproto", "train {\n  lr: fast\n}\n");
  EXPECT_THAT(LoadConfigFile(path2),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(path2 + ":2:")));
}

TEST(ConfigFileTest, MissingFileIsNotFound) {
  EXPECT_THAT(LoadConfigFile(::testing::TempDir() + "/no_such_config.textproto"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no_such_config")));
}

TEST(OverrideTest, ScalarFields) {
  proto::RunConfig config = Tiny();
  MOE_ASSERT_OK(ApplyOverride(&config, "moe.lbl_coef=0.05"));
  EXPECT_DOUBLE_EQ(config.model().moe().lbl_coef(), 0.05);
  MOE_ASSERT_OK(ApplyOverride(&config, "train.steps=12345"));
  EXPECT_EQ(config.train().steps(), 12345);
  MOE_ASSERT_OK(ApplyOverride(&config, " train.seed = 7 "));
  EXPECT_EQ(config.train().seed(), 7u);
  MOE_ASSERT_OK(ApplyOverride(&config, "model.tie_embeddings=false"));
  EXPECT_FALSE(config.model().tie_embeddings());
  // Zero is a real value, not "unset": it must overwrite.
  MOE_ASSERT_OK(ApplyOverride(&config, "train.grad_clip=0"));
  EXPECT_EQ(config.train().grad_clip(), 0.0);
  // Nothing else changed.
  proto::RunConfig expected = Tiny();
  expected.mutable_model()->mutable_moe()->set_lbl_coef(0.05);
  expected.mutable_train()->set_steps(12345);
  expected.mutable_train()->set_seed(7);
  expected.mutable_model()->set_tie_embeddings(false);
  expected.mutable_train()->set_grad_clip(0);
  EXPECT_TRUE(Equal(config, expected));
}

TEST(OverrideTest, NestedPathsAndShortcuts) {
  proto::RunConfig config = Tiny();
  MOE_ASSERT_OK(ApplyOverride(&config, "model.attention.n_q=8"));
  EXPECT_EQ(config.model().attention().n_q(), 8);
  MOE_ASSERT_OK(ApplyOverride(&config, "attention.n_v=4"));
  EXPECT_EQ(config.model().attention().n_v(), 4);
  MOE_ASSERT_OK(ApplyOverride(&config, "model.moe.num_experts=32"));
  EXPECT_EQ(config.model().moe().num_experts(), 32);
  MOE_ASSERT_OK(ApplyOverride(&config, "moe.topk_schedule[0].k=2"));
  EXPECT_EQ(config.model().moe().topk_schedule(0).k(), 2);
  // Index == size appends an element.
  MOE_ASSERT_OK(ApplyOverride(&config, "moe.topk_schedule[1].until_step=50"));
  ASSERT_EQ(config.model().moe().topk_schedule_size(), 2);
  EXPECT_EQ(config.model().moe().topk_schedule(1).until_step(), 50);
}

TEST(OverrideTest, EnumAndStringFields) {
  proto::RunConfig config = Tiny();
  MOE_ASSERT_OK(ApplyOverride(&config, "data.kind=text"));
  EXPECT_EQ(config.data().kind(), proto::DataConfig::TEXT);
  MOE_ASSERT_OK(ApplyOverride(&config, "data.kind=TOKENS"));
  EXPECT_EQ(config.data().kind(), proto::DataConfig::TOKENS);
  MOE_ASSERT_OK(ApplyOverride(&config, "train.nan_policy=rollback"));
  EXPECT_EQ(config.train().nan_policy(), proto::TrainConfig::ROLLBACK);
  MOE_ASSERT_OK(ApplyOverride(&config, "train.device=cpu"));
  EXPECT_EQ(config.train().device(), "cpu");
  MOE_ASSERT_OK(ApplyOverride(&config, "train.dtype=\"bf16\""));
  EXPECT_EQ(config.train().dtype(), "bf16");
  MOE_ASSERT_OK(ApplyOverride(&config, "data.path=/data/my corpus.txt"));
  EXPECT_EQ(config.data().path(), "/data/my corpus.txt");
  MOE_ASSERT_OK(ApplyOverride(&config, "checkpoint.dir="));
  EXPECT_EQ(config.checkpoint().dir(), "");
  EXPECT_THAT(ApplyOverride(&config, "data.kind=parquet"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("data.kind"), HasSubstr("parquet"), HasSubstr("TOKENS"))));
}

TEST(OverrideTest, RepeatedFieldsAreReplacedAsAWhole) {
  proto::RunConfig config = Tiny();
  MOE_ASSERT_OK(ApplyOverride(&config, "moe.dense_layers=[0,1]"));
  EXPECT_THAT(config.model().moe().dense_layers(), ElementsAre(0, 1));
  MOE_ASSERT_OK(ApplyOverride(&config, "moe.dense_layers=[3]"));
  EXPECT_THAT(config.model().moe().dense_layers(), ElementsAre(3));
  MOE_ASSERT_OK(ApplyOverride(&config, "moe.dense_layers=[]"));
  EXPECT_EQ(config.model().moe().dense_layers_size(), 0);
  MOE_ASSERT_OK(ApplyOverride(&config,
                              "moe.topk_schedule=[{first_layer:0 last_layer:1 k:8 until_step:100}, "
                              "{first_layer:2 last_layer:2 k:2 until_step:50}]"));
  ASSERT_EQ(config.model().moe().topk_schedule_size(), 2);
  EXPECT_EQ(config.model().moe().topk_schedule(0).k(), 8);
  EXPECT_EQ(config.model().moe().topk_schedule(1).first_layer(), 2);
  MOE_EXPECT_OK(ValidateConfig(config));
  // A whole sub-message in braces replaces it.
  MOE_ASSERT_OK(ApplyOverride(&config, "checkpoint={dir: \"x\" interval: 5 keep_last: 1}"));
  EXPECT_EQ(config.checkpoint().dir(), "x");
  EXPECT_EQ(config.checkpoint().interval(), 5);
  EXPECT_FALSE(config.checkpoint().resume());
}

TEST(OverrideTest, UnknownFieldNamesThePathAndListsValidFields) {
  proto::RunConfig config = Tiny();
  EXPECT_THAT(ApplyOverride(&config, "moe.lbl_coeff=0.01"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("model.moe.lbl_coeff: unknown field"), HasSubstr("lbl_coef"),
                             HasSubstr("topk_schedule"))));
  EXPECT_THAT(ApplyOverride(&config, "optimizer.lr=1"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("optimizer: unknown field"), HasSubstr("checkpoint"))));
  EXPECT_THAT(ApplyOverride(&config, "train.lr.value=1"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("train.lr")));
  EXPECT_THAT(ApplyOverride(&config, "train.lr"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("<field.path>=<value>")));
  EXPECT_THAT(ApplyOverride(&config, "moe.topk_schedule[5].k=1"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("topk_schedule")));
  EXPECT_TRUE(Equal(config, Tiny()));  // failed overrides change nothing
}

TEST(OverrideTest, BadValueNamesThePathAndTheValue) {
  proto::RunConfig config = Tiny();
  EXPECT_THAT(ApplyOverride(&config, "train.steps=many"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("train.steps"), HasSubstr("many"), HasSubstr("int64"))));
  EXPECT_THAT(ApplyOverride(&config, "model.num_layers=99999999999"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("model.num_layers"), HasSubstr("99999999999"))));
  EXPECT_THAT(ApplyOverride(&config, "train.seed=-1"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("train.seed")));
  EXPECT_THAT(ApplyOverride(&config, "moe.dense_layers=[0,x]"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("model.moe.dense_layers")));
  // Textproto injection of a second field is refused.
  EXPECT_THAT(ApplyOverride(&config, "train.steps=5 batch_size: 3"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("train.steps")));
  // Also when the second field is given its zero value (proto3 does not record it as set).
  EXPECT_THAT(ApplyOverride(&config, "train.steps=5 batch_size: 0"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("train.steps"), HasSubstr("sets other fields"))));
  // A failed override leaves the config as it was, even one that appends a list element first
  // (found by fuzz/config_overrides_fuzzer, regressions/config_overrides/).
  ASSERT_EQ(config.model().moe().topk_schedule_size(), 1);
  EXPECT_THAT(ApplyOverride(&config, "moe.topk_schedule[1].nope=5"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nope")));
  EXPECT_THAT(ApplyOverride(&config, "moe.topk_schedule[1].k=x"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("topk_schedule.k")));
  EXPECT_TRUE(Equal(config, Tiny()));
}

TEST(ValidateTest, OutOfRangeValuesNameTheField) {
  struct Case {
    std::string assignment;
    std::string message;
  };
  const Case cases[] = {
      {"train.lr=0", "train.lr: got 0, expected > 0"},
      {"train.lr=-0.1", "train.lr: got -0.1"},
      {"attention.n_k=3", "model.attention.n_k: got 3, expected >= 1 and dividing n_q = 4"},
      {"attention.n_v=0", "model.attention.n_v: got 0"},
      {"attention.head_dim=31", "model.attention.head_dim: got 31"},
      {"moe.top_k=0", "model.moe.top_k: got 0, expected in [1, num_experts = 96]"},
      {"moe.top_k=97", "model.moe.top_k: got 97"},
      {"moe.capacity_factor=-1", "model.moe.capacity_factor: got -1"},
      {"moe.lbl_coef=-0.01", "model.moe.lbl_coef: got -0.01"},
      {"moe.dense_layers=[4]", "model.moe.dense_layers[0]: got 4"},
      {"moe.dense_layers=[1,1]", "model.moe.dense_layers[1]: got 1, expected each layer listed"},
      {"moe.topk_schedule[0].last_layer=4", "model.moe.topk_schedule[0].last_layer: got 4"},
      {"moe.topk_schedule[0].first_layer=-1", "model.moe.topk_schedule[0].first_layer: got -1"},
      {"moe.topk_schedule[0].k=200", "model.moe.topk_schedule[0].k: got 200"},
      {"moe.topk_schedule[0].until_step=0", "model.moe.topk_schedule[0].until_step: got 0"},
      {"train.beta2=1", "train.beta2: got 1, expected in [0, 1)"},
      {"train.min_lr=1", "train.min_lr: got 1"},
      {"train.grad_accum=0", "train.grad_accum: got 0"},
      {"train.device=tpu", "train.device: got \"tpu\""},
      {"train.dtype=f16", "train.dtype: got \"f16\""},
      {"train.spike_lr_factor=1.5", "train.spike_lr_factor: got 1.5"},
      {"train.spike_threshold=0.5", "train.spike_threshold: got 0.5"},
      {"model.num_layers=0", "model.num_layers: got 0"},
      {"data.synthetic_size=10", "data.synthetic_size: got 10, expected >= train.seq_len + 1"},
      {"data.kind=tokens", "data.path"},
      {"checkpoint.keep_last=-1", "checkpoint.keep_last: got -1"},
      {"parallel.mode=fast", "parallel.mode: got \"fast\", expected \"auto\" or a mode name"},
      {"parallel.mode=r1.d0.flat", "parallel.mode: got \"r1.d0.flat\""},
      {"parallel.mode=r1.d1.ring", "parallel.mode: got \"r1.d1.ring\""},
      {"parallel.node_size=-1", "parallel.node_size: got -1, expected >= 0"},
      {"parallel.trials=-2", "parallel.trials: got -2"},
      {"parallel.warmup=-1", "parallel.warmup: got -1"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.assignment);
    proto::RunConfig config = Tiny();
    MOE_ASSERT_OK(ApplyOverride(&config, c.assignment));
    EXPECT_THAT(ValidateConfig(config),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)));
  }
}

TEST(ValidateTest, ReportsEveryViolation) {
  proto::RunConfig config = Tiny();
  MOE_ASSERT_OK(ApplyOverrides(&config, {"train.lr=0", "moe.top_k=0", "model.model_dim=0"}));
  EXPECT_THAT(ValidateConfig(config),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("train.lr"), HasSubstr("model.moe.top_k"),
                             HasSubstr("model.model_dim"))));
  EXPECT_THAT(ValidateConfig(proto::RunConfig()), Not(IsOk()));
}

TEST(ValidateTest, AcceptsValidEdgeCases) {
  proto::RunConfig config = Tiny();
  MOE_ASSERT_OK(ApplyOverrides(
      &config, {"train.device=cuda:1", "train.dtype=f32", "moe.top_k=96", "attention.n_k=4",
                "attention.n_v=4", "moe.dense_layers=[0,3]", "train.min_lr=0.001",
                "train.spike_threshold=0", "checkpoint.keep_last=0"}));
  MOE_EXPECT_OK(ValidateConfig(config));
}

TEST(ValidateTest, ParallelModesParse) {
  for (const char* mode : {"auto", "", "r0.d1.flat", "r1.d2.flat", "r1.d2.2dh"}) {
    SCOPED_TRACE(mode);
    proto::RunConfig config = Tiny();
    config.mutable_parallel()->set_mode(mode);
    MOE_EXPECT_OK(ValidateConfig(config));
  }
  // The presets state the defaults.
  EXPECT_EQ(Tiny().parallel().mode(), "auto");
  EXPECT_EQ(Tiny().parallel().trials(), 2);
}

TEST(ValidateWorldTest, SingleRankChecksNothing) {
  proto::RunConfig config = Tiny();
  MOE_ASSERT_OK(
      ApplyOverrides(&config, {"train.batch_size=7", "moe.num_experts=5", "parallel.node_size=3"}));
  MOE_EXPECT_OK(ValidateWorld(config, 1));
  MOE_EXPECT_OK(ValidateWorld(config, 0));
}

TEST(ValidateWorldTest, BatchExpertsAndNodeSizeMustFitTheWorld) {
  proto::RunConfig config = Tiny();  // batch 16, 96 experts, node_size 1
  MOE_EXPECT_OK(ValidateWorld(config, 4));
  MOE_EXPECT_OK(ValidateWorld(config, 16));
  EXPECT_THAT(
      ValidateWorld(config, 3),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("train.batch_size: got 16, expected a multiple of the world size 3")));
  EXPECT_THAT(ValidateWorld(config, 64),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("train.batch_size: got 16"),
                             HasSubstr("model.moe.num_experts: got 96, expected a multiple of the "
                                       "world size 64"))));
  MOE_ASSERT_OK(ApplyOverrides(&config, {"moe.num_experts=6", "parallel.node_size=3"}));
  EXPECT_THAT(ValidateWorld(config, 4),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("model.moe.num_experts: got 6"),
                             HasSubstr("parallel.node_size: got 3, expected a divisor of the "
                                       "world size 4"))));
  MOE_ASSERT_OK(ApplyOverrides(&config, {"moe.num_experts=8", "parallel.node_size=2"}));
  MOE_EXPECT_OK(ValidateWorld(config, 4));
}

TEST(ValidateWorldTest, FewerExpertsThanRanksMustDivideTheWorldAndShardTheFfn) {
  proto::RunConfig config = Tiny();
  MOE_ASSERT_OK(ApplyOverrides(
      &config, {"moe.num_experts=2", "moe.top_k=1", "moe.topk_schedule=[]", "moe.ffn_dim=12"}));
  MOE_EXPECT_OK(ValidateWorld(config, 4));  // s = 2
  MOE_EXPECT_OK(ValidateWorld(config, 8));  // s = 4
  MOE_EXPECT_OK(ValidateWorld(config, 2));  // s = 1
  EXPECT_THAT(ValidateWorld(config, 16),    // s = 8 does not divide H = 12
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("model.moe.ffn_dim: got 12, expected a multiple of world size / "
                                 "num_experts = 8")));
  MOE_ASSERT_OK(ApplyOverrides(&config, {"moe.num_experts=3"}));
  EXPECT_THAT(ValidateWorld(config, 8),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("model.moe.num_experts: got 3, expected a multiple or a "
                                       "divisor of the world size 8"),
                             ::testing::Not(HasSubstr("ffn_dim")))));
  MOE_ASSERT_OK(ApplyOverrides(&config, {"train.batch_size=12"}));
  MOE_EXPECT_OK(ValidateWorld(config, 3));
  MOE_EXPECT_OK(ValidateWorld(config, 6));  // 3 experts, s = 2
}

TEST(TopKScheduleTest, TinyIsTop4OnLayer0ForTheFirst200Steps) {
  const proto::RunConfig config = Tiny();
  EXPECT_EQ(TopKForLayer(config, 0, 0), 4);
  EXPECT_EQ(TopKForLayer(config, 0, 199), 4);
  EXPECT_EQ(TopKForLayer(config, 0, 200), 1);
  EXPECT_EQ(TopKForLayer(config, 0, 100000), 1);
  for (int layer = 1; layer < 4; ++layer) {
    EXPECT_EQ(TopKForLayer(config, layer, 0), 1);
    EXPECT_EQ(TopKForLayer(config, layer, 500), 1);
  }
}

TEST(TopKScheduleTest, SeveralEntriesFirstMatchWins) {
  proto::RunConfig config = Tiny();
  MOE_ASSERT_OK(ApplyOverride(&config,
                              "moe.topk_schedule=[{first_layer:0 last_layer:1 k:8 until_step:100}, "
                              "{first_layer:0 last_layer:2 k:2 until_step:300}]"));
  MOE_ASSERT_OK(ApplyOverride(&config, "moe.top_k=1"));
  EXPECT_EQ(TopKForLayer(config, 0, 0), 8);
  EXPECT_EQ(TopKForLayer(config, 1, 99), 8);
  EXPECT_EQ(TopKForLayer(config, 1, 100), 2);  // first entry expired, second still on
  EXPECT_EQ(TopKForLayer(config, 2, 0), 2);
  EXPECT_EQ(TopKForLayer(config, 2, 299), 2);
  EXPECT_EQ(TopKForLayer(config, 2, 300), 1);
  EXPECT_EQ(TopKForLayer(config, 3, 0), 1);
}

TEST(TopKScheduleTest, SigmaMoeTinyLowestSixLayers) {
  MOE_ASSERT_OK_AND_ASSIGN(proto::RunConfig config, LoadPreset("sigma-moe-tiny"));
  const int64_t until = config.model().moe().topk_schedule(0).until_step();
  for (int layer = 0; layer < 56; ++layer) {
    EXPECT_EQ(TopKForLayer(config, layer, 0), layer < 6 ? 8 : 1) << layer;
    EXPECT_EQ(TopKForLayer(config, layer, until), 1) << layer;
  }
}

}  // namespace
}  // namespace smoe
