// The CPU training step (issue 14): after the first step, a step makes no system allocation (the
// caching allocator serves every tensor), and the losses do not depend on the thread count.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/core/thread_pool.h"
#include "runtime/memory/allocator.h"
#include "runtime/train/config/config.h"
#include "runtime/train/trainer/trainer.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

namespace fs = std::filesystem;

// A small model with every kind of layer the tiny preset has (MoE with a top-k schedule that
// expires mid-run, a dense layer, DiffQKV with AugQ), training a few steps on the CPU.
proto::RunConfig SmallRun(int threads, int steps) {
  proto::RunConfig config = *LoadPreset("tiny");
  const fs::path dir = fs::path(::testing::TempDir()) / "trainer_cpu_step_test" /
                       ::testing::UnitTest::GetInstance()->current_test_info()->name();
  fs::remove_all(dir);
  MOE_CHECK_OK(ApplyOverrides(
      &config, {"model.num_layers=3",
                "model.model_dim=64",
                "attention.n_q=4",
                "attention.n_k=1",
                "attention.n_v=2",
                "attention.head_dim=16",
                "attention.d_aug=48",
                "moe.num_experts=16",
                "moe.ffn_dim=32",
                "moe.dense_layers=[2]",
                "moe.dense_ffn_dim=96",
                "moe.topk_schedule=[{first_layer: 0 last_layer: 0 k: 4 until_step: 3}]",
                "train.batch_size=8",
                "train.seq_len=64",
                "train.steps=" + std::to_string(steps),
                "train.warmup_steps=1",
                "train.eval_interval=0",
                "train.device=cpu",
                "train.threads=" + std::to_string(threads),
                "data.synthetic_size=40000",
                "checkpoint.dir=\"" + (dir / "ck").string() + "\"",
                "checkpoint.interval=0",
                "checkpoint.resume=false"}));
  MOE_CHECK_OK(ValidateConfig(config));
  return config;
}

struct StepRun {
  std::vector<size_t> system_allocations;  // the CPU allocator's count after each step
  std::vector<double> losses;              // metrics.jsonl's, per step (6 decimals)
  double final_loss = 0.0;                 // the last step's, in full
};

StepRun TrainSteps(int threads, int steps) {
  const proto::RunConfig config = SmallRun(threads, steps);
  StepRun run;
  TrainerOptions options;
  options.progress_bar = false;
  options.metrics_path = config.checkpoint().dir() + "/metrics.jsonl";
  options.on_step = [&](int64_t, double) {
    run.system_allocations.push_back(CpuAllocator()->stats().num_system_allocations);
  };
  StatusOr<TrainSummary> summary = smoe::Train(config, options);
  MOE_CHECK_OK(summary.status());
  run.final_loss = summary->final_loss;
  std::ifstream metrics(options.metrics_path);
  for (std::string line; std::getline(metrics, line);) {
    const size_t at = line.find("\"loss\":");
    if (at != std::string::npos) run.losses.push_back(std::stod(line.substr(at + 7)));
  }
  return run;
}

// A step allocates nothing from the system once a step of the same shapes has run: steps 2 and 3
// after step 1, and steps 5 and 6 after step 4, the first after layer 0's top-k drops from 4 to 1
// (its tensors shrink 4x, below what the cache hands out for them: caching_allocator serves a
// request from blocks of at most twice its size).
TEST(TrainerCpuStepTest, NoSystemAllocationAfterTheFirstStep) {
  const StepRun run = TrainSteps(/*threads=*/2, /*steps=*/6);
  ASSERT_EQ(run.system_allocations.size(), 6u);
  for (size_t s : {1, 2, 4, 5}) {
    EXPECT_EQ(run.system_allocations[s], run.system_allocations[s - 1]) << "step " << s + 1;
  }
}

// Every parallel op splits its work by the shape alone (runtime/core/thread_pool.h): the losses
// are the same bit for bit on 1, 2 and 3 threads.
TEST(TrainerCpuStepTest, LossesDoNotDependOnTheThreadCount) {
  const StepRun one = TrainSteps(1, 4), two = TrainSteps(2, 4), three = TrainSteps(3, 4);
  ASSERT_EQ(one.losses.size(), 4u);
  EXPECT_EQ(two.losses, one.losses);
  EXPECT_EQ(three.losses, one.losses);
  EXPECT_EQ(two.final_loss, one.final_loss);
  EXPECT_EQ(three.final_loss, one.final_loss);
  SetCpuThreads(0);
}

}  // namespace
}  // namespace smoe
