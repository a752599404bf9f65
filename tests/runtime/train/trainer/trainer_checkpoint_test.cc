// The trainer's side of issue 15: what a run does with invalid checkpoints before its first step
// (refuse, or with checkpoint.resume=false move them aside), and retention across a whole run.
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
  std::vector<std::string> sets = {
      "model.num_layers=1", "model.model_dim=32", "attention.n_q=2", "attention.n_k=1",
      "attention.n_v=2", "attention.head_dim=16", "attention.d_aug=32", "moe.num_experts=4",
      "moe.ffn_dim=16", "moe.topk_schedule=[]", "train.batch_size=2", "train.seq_len=16",
      "train.steps=" + std::to_string(steps), "train.warmup_steps=1", "train.eval_interval=0",
      "train.device=cpu", "data.synthetic_size=20000", "checkpoint.dir=\"" + dir + "\"",
      "checkpoint.interval=5", "checkpoint.keep_last=2", "checkpoint.resume=true"};
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
  EXPECT_THAT(Entries(dir), ElementsAre("step_00000010", "step_00000010.invalid",
                                        "step_00000012", "step_00000012.invalid"));
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

}  // namespace
}  // namespace smoe
