// The trainer's side of issue 15: what a run does with invalid checkpoints before its first step
// (refuse, or with checkpoint.resume=false move them aside), retention across a whole run, and
// train.debug_nan_step under each nan_policy.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/train/checkpoint/checkpoint.h"
#include "runtime/train/config/config.h"
#include "runtime/train/model/model.h"
#include "runtime/train/trainer/trainer.h"
#include "tests/testing/small_run.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

namespace fs = std::filesystem;
using ::smoe::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string FreshDir() {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir = fs::path(::testing::TempDir()) / "trainer_checkpoint_test" / info->name();
  fs::remove_all(dir);
  return dir.string();
}

// A model small enough that a step takes milliseconds on one core.
proto::RunConfig SmallRun(const std::string& dir, int steps,
                          const std::vector<std::string>& extra = {}) {
  proto::RunConfig config = *LoadPreset("tiny");
  std::vector<std::string> sets = testing::SmallRunOverrides(steps);
  sets.insert(sets.end(), {"checkpoint.dir=\"" + dir + "\"", "checkpoint.interval=5",
                           "checkpoint.keep_last=2", "checkpoint.resume=true"});
  sets.insert(sets.end(), extra.begin(), extra.end());
  MOE_CHECK_OK(ApplyOverrides(&config, sets));
  MOE_CHECK_OK(ValidateConfig(config));
  return config;
}

StatusOr<TrainSummary> RunTraining(const proto::RunConfig& config) {
  TrainerOptions options;
  options.progress_bar = false;
  return Train(config, options);
}

std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("step_", 0) == 0) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

int64_t Lines(const fs::path& path) {
  std::ifstream in(path);
  return std::count(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>(), '\n');
}

// Rule: a checkpoint dir whose checkpoints are all invalid stops the run before step 1
// (FailedPrecondition naming each); checkpoint.resume=false then starts from step 0 with the
// invalid ones moved aside, and retention keeps the run's own valid checkpoints. Issue 15's run:
// 12 steps, interval 5, keep_last 2.
TEST(TrainerCheckpointTest, AllInvalidRefusesThenResumeFalseStartsFreshAndKeepsValidOnes) {
  const std::string dir = FreshDir();
  MOE_ASSERT_OK_AND_ASSIGN(TrainSummary first, RunTraining(SmallRun(dir, 12)));
  ASSERT_EQ(first.steps_done, 12);
  ASSERT_THAT(Entries(dir), ElementsAre("step_00000010", "step_00000012"));
  std::ofstream(fs::path(dir) / "step_00000010" / "manifest.textproto", std::ios::trunc);
  fs::resize_file(fs::path(dir) / "step_00000012" / "tensors.bin", 1000);
  const fs::path metrics = fs::path(dir) / "metrics.jsonl";
  const int64_t lines = Lines(metrics);

  EXPECT_THAT(RunTraining(SmallRun(dir, 12)),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("step_00000010: "), HasSubstr("empty file"),
                             HasSubstr("step_00000012: "), HasSubstr("tensors.bin: 1000 bytes"),
                             HasSubstr("checkpoint.resume=false"))));
  EXPECT_EQ(Lines(metrics), lines) << "a step was trained";
  EXPECT_THAT(Entries(dir), ElementsAre("step_00000010", "step_00000012"));

  MOE_ASSERT_OK_AND_ASSIGN(TrainSummary fresh,
                           RunTraining(SmallRun(dir, 12, {"checkpoint.resume=false"})));
  EXPECT_EQ(fresh.steps_done, 12);
  EXPECT_EQ(Lines(metrics), lines + 12) << "not started from step 0";
  EXPECT_THAT(Entries(dir), ElementsAre("step_00000010", "step_00000010.invalid", "step_00000012",
                                        "step_00000012.invalid"));
  for (const char* step : {"step_00000010", "step_00000012"}) {
    MOE_EXPECT_OK(LoadCheckpoint((fs::path(dir) / step).string()).status());
  }
}

// Rule: with a valid checkpoint below invalid ones, the run resumes from it, the invalid ones
// are moved aside, and the valid ones written afterwards are kept (keep_last counts only them).
TEST(TrainerCheckpointTest, ResumesBelowInvalidCheckpointsAndKeepsTheNewValidOnes) {
  const std::string dir = FreshDir();
  MOE_ASSERT_OK(RunTraining(SmallRun(dir, 12, {"checkpoint.keep_last=0"})).status());
  ASSERT_THAT(Entries(dir), ElementsAre("step_00000005", "step_00000010", "step_00000012"));
  std::ofstream(fs::path(dir) / "step_00000010" / "manifest.textproto", std::ios::trunc);
  std::ofstream(fs::path(dir) / "step_00000012" / "manifest.textproto", std::ios::trunc);

  // Resumes at 5, saves 10 and 14. Counting the invalid step 12 would delete the new 10.
  MOE_ASSERT_OK_AND_ASSIGN(TrainSummary resumed, RunTraining(SmallRun(dir, 14)));
  EXPECT_EQ(resumed.steps_done, 14);
  EXPECT_THAT(Entries(dir), ElementsAre("step_00000010", "step_00000010.invalid",
                                        "step_00000012.invalid", "step_00000014"));
}

// train.debug_nan_step with SKIP_STEP: that step's update is dropped and the run goes on. Step 1
// poisoned, step 2 trained: the checkpoint of step 2 must hold the AdamW moments of exactly one
// update, m = (1 - beta1) g and v = (1 - beta2) g^2, so v = (1 - beta2) / (1 - beta1)^2 m^2 in
// every element (an applied NaN update would leave NaN, two updates break the relation).
TEST(TrainerCheckpointTest, DebugNanStepIsSkipped) {
  const std::string dir = FreshDir();
  const proto::RunConfig config = SmallRun(
      dir, 2, {"train.debug_nan_step=1", "checkpoint.interval=1", "checkpoint.keep_last=0"});
  MOE_ASSERT_OK_AND_ASSIGN(TrainSummary summary, RunTraining(config));
  EXPECT_EQ(summary.steps_done, 2);
  EXPECT_EQ(summary.skipped_steps, 1);
  EXPECT_EQ(summary.rollbacks, 0);
  EXPECT_TRUE(std::isfinite(summary.final_loss));
  // A skipped step trains nothing, so it writes no checkpoint.
  EXPECT_THAT(Entries(dir), ElementsAre("step_00000002"));

  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> model,
                           Model::Create(SpecFromConfig(config, DType::kF32), Device::Cpu()));
  MOE_ASSERT_OK_AND_ASSIGN(LoadedCheckpoint step2,
                           LoadCheckpoint((fs::path(dir) / "step_00000002").string()));
  EXPECT_EQ(step2.meta.skipped_steps, 1);
  std::vector<NamedTensor> tensors;
  for (ModelParam& p : model->params()) {
    tensors.push_back({p.name, p.master});
    tensors.push_back({p.name + ".adam_m", p.m});
    tensors.push_back({p.name + ".adam_v", p.v});
  }
  MOE_ASSERT_OK(RestoreTensors(ctx, step2, tensors));
  const double b1 = config.train().beta1(), b2 = config.train().beta2();
  const double ratio = (1 - b2) / ((1 - b1) * (1 - b1));
  int64_t nonzero = 0;
  for (ModelParam& p : model->params()) {
    const float* w = p.master.data<float>();
    const float* m = p.m.data<float>();
    const float* v = p.v.data<float>();
    for (int64_t i = 0; i < p.master.numel(); ++i) {
      ASSERT_TRUE(std::isfinite(w[i]) && std::isfinite(m[i]) && std::isfinite(v[i]))
          << p.name << "[" << i << "]";
      const double expected = ratio * double{m[i]} * m[i];
      ASSERT_NEAR(v[i], expected, 1e-4 * expected + 1e-30) << p.name << "[" << i << "]";
      nonzero += m[i] != 0.0f;
    }
  }
  EXPECT_GT(nonzero, 0) << "no update at all";
}

// train.debug_nan_step with ROLLBACK: the run goes back to the last checkpoint once and finishes.
TEST(TrainerCheckpointTest, DebugNanStepRollsBack) {
  const std::string dir = FreshDir();
  MOE_ASSERT_OK_AND_ASSIGN(
      TrainSummary summary,
      RunTraining(SmallRun(
          dir, 6,
          {"train.debug_nan_step=4", "train.nan_policy=ROLLBACK", "checkpoint.interval=2"})));
  EXPECT_EQ(summary.steps_done, 6);
  EXPECT_EQ(summary.rollbacks, 1);
  EXPECT_TRUE(std::isfinite(summary.final_loss));
}

TEST(TrainerCheckpointTest, DebugNanStepMustNotBeNegative) {
  proto::RunConfig config = SmallRun(FreshDir(), 1);
  MOE_ASSERT_OK(ApplyOverride(&config, "train.debug_nan_step=-1"));
  EXPECT_THAT(ValidateConfig(config),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("train.debug_nan_step")));
}

}  // namespace
}  // namespace smoe
