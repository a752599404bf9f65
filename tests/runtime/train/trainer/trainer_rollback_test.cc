// The trainer's rollback rules (issue 20): a loss spike or a ROLLBACK-policy step with no
// checkpoint to return to, and ROLLBACK steps counted toward train.max_skipped_steps. The runs
// are tiny; a watchdog stops any that would loop forever (the old behaviour) so that the test
// fails instead of hanging.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/train/config/config.h"
#include "runtime/train/trainer/trainer.h"
#include "tests/testing/small_run.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

namespace fs = std::filesystem;
using ::smoe::testing::StatusIs;
using ::testing::HasSubstr;

proto::RunConfig SmallRun(int steps, const std::vector<std::string>& extra) {
  proto::RunConfig config = *LoadPreset("tiny");
  std::vector<std::string> sets = testing::SmallRunOverrides(steps);
  sets.insert(sets.end(),
              {"checkpoint.dir=\"\"", "checkpoint.interval=0", "checkpoint.resume=false"});
  sets.insert(sets.end(), extra.begin(), extra.end());
  MOE_CHECK_OK(ApplyOverrides(&config, sets));
  MOE_CHECK_OK(ValidateConfig(config));
  return config;
}

std::string FreshDir() {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir = fs::path(::testing::TempDir()) / "trainer_rollback_test" / info->name();
  fs::remove_all(dir);
  return dir.string();
}

// Trains with a watchdog: a run still going after `limit` is asked to stop (and then reports
// stopped_early, which the tests reject).
StatusOr<TrainSummary> TrainWithWatchdog(const proto::RunConfig& config,
                                         std::chrono::seconds limit = std::chrono::seconds(60)) {
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::condition_variable done_cv;
  bool done = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(mu);
    if (!done_cv.wait_for(lock, limit, [&] { return done; })) stop = true;
  });
  TrainerOptions options;
  options.progress_bar = false;
  options.stop_requested = &stop;
  StatusOr<TrainSummary> summary = Train(config, options);
  {
    std::lock_guard<std::mutex> lock(mu);
    done = true;
  }
  done_cv.notify_one();
  watchdog.join();
  return summary;
}

// A low spike_threshold flags the noisy steps of a tiny batch once the running mean has settled
// (20 steps): with no checkpoint, each such step's update was applied, so it must count as a
// step. The run then equals one without spike detection, bit for bit.
TEST(TrainerRollbackTest, SpikeWithNoCheckpointCountsAsAnAppliedStep) {
  MOE_ASSERT_OK_AND_ASSIGN(const TrainSummary plain,
                           TrainWithWatchdog(SmallRun(40, {"train.spike_threshold=0"})));
  MOE_ASSERT_OK_AND_ASSIGN(const TrainSummary spiky,
                           TrainWithWatchdog(SmallRun(40, {"train.spike_threshold=1.01"})));
  EXPECT_FALSE(spiky.stopped_early) << "the spike loop never advanced";
  EXPECT_GT(spiky.loss_spikes, 0);
  EXPECT_EQ(spiky.steps_done, 40);
  EXPECT_EQ(spiky.rollbacks, 0);
  EXPECT_EQ(spiky.skipped_steps, 0);
  EXPECT_EQ(spiky.final_loss, plain.final_loss);
}

// A huge learning rate makes every step after the first non-finite. Under ROLLBACK with no
// checkpoint, each is a skipped step: the run advances and ends, counting them.
TEST(TrainerRollbackTest, RollbackWithNoCheckpointCountsAsASkippedStep) {
  MOE_ASSERT_OK_AND_ASSIGN(
      const TrainSummary summary,
      TrainWithWatchdog(SmallRun(6, {"train.lr=1e30", "train.min_lr=1e30",
                                     "train.nan_policy=ROLLBACK", "train.max_skipped_steps=0"})));
  EXPECT_FALSE(summary.stopped_early) << "the rollback loop never advanced";
  EXPECT_EQ(summary.steps_done, 6);
  EXPECT_EQ(summary.rollbacks, 0);
  EXPECT_GE(summary.skipped_steps, 4);
}

// With a checkpoint to return to, the same run rolls back again and again; each rollback counts
// toward max_skipped_steps, which ends it.
TEST(TrainerRollbackTest, RollbacksCountTowardMaxSkippedSteps) {
  const std::string dir = FreshDir();
  EXPECT_THAT(
      TrainWithWatchdog(SmallRun(
          8, {"train.lr=1e30", "train.min_lr=1e30", "train.nan_policy=ROLLBACK",
              "train.max_skipped_steps=3", "checkpoint.dir=\"" + dir + "\"",
              "checkpoint.interval=1", "checkpoint.resume=true", "train.spike_lr_factor=0.9"})),
      StatusIs(absl::StatusCode::kDataLoss, HasSubstr("train.max_skipped_steps = 3")));
}

}  // namespace
}  // namespace smoe
