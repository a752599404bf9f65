// The tiny preset trained for 50 steps on the CPU (f32) and on the GPU (f32 and bf16) from the same
// initialization and data: the per-step losses agree within 2%, and on the GPU every step but the
// last (which evaluates) makes exactly the planned host syncs (runtime/train/model/sync_budget.h).
// Skips itself without a GPU.
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/train/config/config.h"
#include "runtime/train/trainer/memory_plan.h"
#include "runtime/train/trainer/trainer.h"
#include "tests/testing/parity.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

struct Curve {
  std::vector<double> losses;
  std::vector<int64_t> host_syncs;  // per step
  int64_t planned_syncs = 0;        // MemoryPlan::host_syncs_per_step
};

Curve LossCurve(const std::string& device, const std::string& dtype) {
  proto::RunConfig config = *LoadPreset("tiny");
  const std::string metrics = ::testing::TempDir() + "/metrics_" + device + "_" + dtype + ".jsonl";
  std::remove(metrics.c_str());
  const std::vector<std::string> overrides = {"train.steps=50",         "train.eval_interval=0",
                                              "train.device=" + device, "train.dtype=" + dtype,
                                              "checkpoint.dir=\"\"",    "checkpoint.interval=0",
                                              "checkpoint.resume=false"};
  MOE_CHECK_OK(ApplyOverrides(&config, overrides));
  Curve curve;
  curve.planned_syncs =
      PlanMemory(config, *ParseDevice(device), dtype == "bf16" ? DType::kBF16 : DType::kF32)
          ->host_syncs_per_step;
  TrainerOptions options;
  options.metrics_path = metrics;
  options.progress_bar = false;
  MOE_CHECK_OK(Train(config, options).status());
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    const size_t at = line.find("\"loss\": ");
    if (at != std::string::npos) curve.losses.push_back(std::stod(line.substr(at + 8)));
    const size_t syncs = line.find("\"host_syncs\": ");
    if (syncs != std::string::npos) curve.host_syncs.push_back(std::stoll(line.substr(syncs + 14)));
  }
  return curve;
}

TEST(TrainerCudaTest, TinyPresetCurvesAgreeWithCpu) {
  MOE_SKIP_WITHOUT_CUDA();
  const std::vector<double> cpu = LossCurve("cpu", "f32").losses;
  ASSERT_EQ(cpu.size(), 50u);
  for (const char* dtype : {"f32", "bf16"}) {
    const Curve gpu = LossCurve("cuda", dtype);
    ASSERT_EQ(gpu.losses.size(), 50u) << dtype;
    for (size_t i = 0; i < cpu.size(); ++i) {
      EXPECT_NEAR(gpu.losses[i], cpu[i], 0.02 * cpu[i]) << dtype << " step " << i + 1;
    }
    ASSERT_EQ(gpu.host_syncs.size(), 50u) << dtype;
    for (size_t i = 0; i + 1 < gpu.host_syncs.size(); ++i) {
      EXPECT_EQ(gpu.host_syncs[i], gpu.planned_syncs) << dtype << " step " << i + 1;
    }
  }
}

}  // namespace
}  // namespace smoe
