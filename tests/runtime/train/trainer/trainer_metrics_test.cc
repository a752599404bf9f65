// metrics.jsonl's per-layer routing record (what the load-balance study reads): per step and MoE
// layer, tokens per expert, the mean router probability P, and max |bias| when aux-loss-free
// balancing is on.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "runtime/train/config/config.h"
#include "runtime/train/trainer/trainer.h"
#include "tests/testing/small_run.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

namespace fs = std::filesystem;
using google::protobuf::Struct;
using google::protobuf::Value;

// Every line of the metrics file of a fresh small run with `extra` overrides.
std::vector<Struct> RunAndReadMetrics(const std::string& name,
                                      const std::vector<std::string>& extra, int steps) {
  const fs::path dir = fs::path(::testing::TempDir()) / "trainer_metrics_test" / name;
  fs::remove_all(dir);
  proto::RunConfig config = *LoadPreset("tiny");
  std::vector<std::string> sets = testing::SmallRunOverrides(steps);
  sets.insert(sets.end(), {"checkpoint.dir=\"" + dir.string() + "\"", "checkpoint.interval=0"});
  sets.insert(sets.end(), extra.begin(), extra.end());
  MOE_CHECK_OK(ApplyOverrides(&config, sets));
  MOE_CHECK_OK(ValidateConfig(config));
  TrainerOptions options;
  options.progress_bar = false;
  MOE_CHECK_OK(Train(config, options).status());
  std::ifstream in(dir / "metrics.jsonl");
  std::vector<Struct> rows;
  for (std::string line; std::getline(in, line);) {
    Struct row;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(line, &row).ok()) << line;
    rows.push_back(row);
  }
  return rows;
}

const Value& Field(const Struct& s, const std::string& key) {
  static const Value kMissing;
  auto it = s.fields().find(key);
  return it == s.fields().end() ? kMissing : it->second;
}

// Rule: each layer's record holds E token counts summing to T * K and E mean probabilities summing
// to 1 (printed with 4 significant digits); no bias field without bias balancing.
TEST(TrainerMetricsTest, LayerRecordHasCountsAndMeanProbabilities) {
  const std::vector<Struct> rows = RunAndReadMetrics("counts", {"moe.top_k=2"}, 3);
  ASSERT_EQ(rows.size(), 3u);
  for (const Struct& row : rows) {
    const auto& layers = Field(row, "moe").list_value().values();
    ASSERT_EQ(layers.size(), 1);
    const Struct& layer = layers[0].struct_value();
    const auto& counts = Field(layer, "tokens_per_expert").list_value().values();
    const auto& p = Field(layer, "p_mean").list_value().values();
    ASSERT_EQ(counts.size(), 4);
    ASSERT_EQ(p.size(), 4);
    double count_sum = 0, p_sum = 0;
    for (const Value& c : counts) count_sum += c.number_value();
    for (const Value& v : p) {
      EXPECT_GT(v.number_value(), 0.0);
      p_sum += v.number_value();
    }
    EXPECT_EQ(count_sum, 2 * 16 * 2);  // batch 2 x seq 16 tokens, top-2
    EXPECT_NEAR(p_sum, 1.0, 4e-4);
    EXPECT_FALSE(layer.fields().contains("bias_max_abs"));
  }
}

// Rule: with bias balancing, bias_max_abs is max_i |b_i| after the step's update: sign updates of
// `rate` per step, so at most rate * step and at most the bound, and > 0 once loads are uneven.
TEST(TrainerMetricsTest, BiasMagnitudeFollowsSignUpdatesWithinBound) {
  const double rate = 0.01, bound = 0.025;
  const std::vector<Struct> rows = RunAndReadMetrics(
      "bias", {"moe.lbl_coef=0", "moe.bias_update_rate=0.01", "moe.bias_bound=0.025"}, 5);
  ASSERT_EQ(rows.size(), 5u);
  for (const Struct& row : rows) {
    const double step = Field(row, "step").number_value();
    const Struct& layer = Field(row, "moe").list_value().values(0).struct_value();
    ASSERT_TRUE(layer.fields().contains("bias_max_abs"));
    const double b = Field(layer, "bias_max_abs").number_value();
    EXPECT_GT(b, 0.0) << "step " << step;
    EXPECT_LE(b, std::min(rate * step, bound) + 1e-6) << "step " << step;
  }
}

}  // namespace
}  // namespace smoe
