// The tiny preset trained for 50 steps on the CPU (f32) and on the GPU (f32 and bf16) from the same
// initialization and data: the per-step losses agree within 2%. Skips itself without a GPU.
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/train/config/config.h"
#include "runtime/train/trainer/trainer.h"
#include "tests/testing/parity.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

std::vector<double> LossCurve(const std::string& device, const std::string& dtype) {
  proto::RunConfig config = *LoadPreset("tiny");
  const std::string metrics = ::testing::TempDir() + "/metrics_" + device + "_" + dtype + ".jsonl";
  std::remove(metrics.c_str());
  const std::vector<std::string> overrides = {
      "train.steps=50", "train.eval_interval=0", "train.device=" + device, "train.dtype=" + dtype,
      "checkpoint.dir=\"\"", "checkpoint.interval=0", "checkpoint.resume=false"};
  MOE_CHECK_OK(ApplyOverrides(&config, overrides));
  TrainerOptions options;
  options.metrics_path = metrics;
  options.progress_bar = false;
  MOE_CHECK_OK(Train(config, options).status());
  std::vector<double> losses;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    const size_t at = line.find("\"loss\": ");
    if (at != std::string::npos) losses.push_back(std::stod(line.substr(at + 8)));
  }
  return losses;
}

TEST(TrainerCudaTest, TinyPresetCurvesAgreeWithCpu) {
  MOE_SKIP_WITHOUT_CUDA();
  const std::vector<double> cpu = LossCurve("cpu", "f32");
  ASSERT_EQ(cpu.size(), 50u);
  for (const char* dtype : {"f32", "bf16"}) {
    const std::vector<double> gpu = LossCurve("cuda", dtype);
    ASSERT_EQ(gpu.size(), 50u) << dtype;
    for (size_t i = 0; i < cpu.size(); ++i) {
      EXPECT_NEAR(gpu[i], cpu[i], 0.02 * cpu[i]) << dtype << " step " << i + 1;
    }
  }
}

}  // namespace
}  // namespace smoe
