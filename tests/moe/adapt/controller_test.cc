// AdaptiveController on one process: exploration counts, exploitation of the true best under a
// noisy synthetic cost model, persistence, and identical decisions through the all-reduce (two
// simulated ranks whose fake communicators add the other rank's local time).
#include "moe/adapt/controller.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/tensor/tensor.h"
#include "tests/testing/fake_communicator.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::smoe::testing::StatusIs;
using ::testing::HasSubstr;

// A group seen from one rank: AllReduceSum adds what the "other ranks" contribute (a callback);
// AllGather fills the other ranks' slots of a step time with that callback's value and of an i64
// with fixed values. collective_calls counts the AllReduceSum calls and the step-time gathers.
class FakeCommunicator final : public testing::UnimplementedCommunicator {
 public:
  FakeCommunicator(int rank, int size) : UnimplementedCommunicator(rank, size) {}

  Status AllReduceSum(ExecContext&, const TensorView& buffer) override {
    ++collective_calls;
    if (buffer.device() != Device::Cpu()) return absl::InvalidArgumentError("host buffers only");
    if (buffer.dtype() == DType::kF32 && buffer.numel() == 1) {
      buffer.data<float>()[0] += others_ms ? others_ms() : 0.0f;
    }
    return absl::OkStatus();
  }
  Status AllGather(ExecContext&, const TensorView& in, const TensorView& out) override {
    if (in.dtype() == DType::kF32 && in.numel() == 1 && out.numel() == size()) {  // Report's times
      ++collective_calls;
      for (int r = 0; r < size(); ++r) {
        out.data<float>()[r] = r == rank() ? in.data<float>()[0] : (others_ms ? others_ms() : 0.0f);
      }
      return absl::OkStatus();
    }
    if (in.dtype() != DType::kI64 || in.numel() != 1 || out.numel() != size()) {
      return absl::InvalidArgumentError("unexpected AllGather");
    }
    for (int r = 0; r < size(); ++r) {
      out.data<int64_t>()[r] = r == rank() ? in.data<int64_t>()[0] : others_gather[r];
    }
    return absl::OkStatus();
  }
  Status Barrier() override { return absl::OkStatus(); }

  std::function<float()> others_ms;
  std::map<int, int64_t> others_gather;
  int collective_calls = 0;
};

ParallelMode Mode(absl::string_view name) { return ParseParallelMode(name).value(); }

std::vector<ParallelMode> Candidates() {
  return {Mode("r1.d1.flat"), Mode("r1.d2.flat"), Mode("r0.d1.flat"), Mode("r1.d1.2dh")};
}

// Step times per mode for a key, with +-3% uniform noise (seeded) and optional first-use spikes
// that the controller's warm-up must discard. The gaps between modes exceed the noise.
class CostModel {
 public:
  explicit CostModel(uint32_t seed) : rng_(seed) {}
  void Set(const AdaptKey& key, std::vector<double> ms) { costs_[key] = std::move(ms); }
  int Best(const AdaptKey& key) const {
    const std::vector<double>& c = costs_.at(key);
    return static_cast<int>(std::min_element(c.begin(), c.end()) - c.begin());
  }
  void SetFirstUseSpike(const AdaptKey& key, int mode_index, double ms) {
    spikes_[{key, mode_index}] = ms;
  }
  double Measure(const AdaptKey& key, int mode_index) {
    std::uniform_real_distribution<double> noise(0.97, 1.03);
    const double spike = seen_[{key, mode_index}]++ == 0 ? spikes_[{key, mode_index}] : 0.0;
    return costs_.at(key).at(mode_index) * noise(rng_) + spike;
  }

 private:
  std::mt19937 rng_;
  std::map<AdaptKey, std::vector<double>> costs_;
  std::map<std::pair<AdaptKey, int>, int> seen_;
  std::map<std::pair<AdaptKey, int>, double> spikes_;
};

int IndexOf(const std::vector<ParallelMode>& modes, const ParallelMode& mode) {
  for (size_t i = 0; i < modes.size(); ++i) {
    if (modes[i] == mode) return static_cast<int>(i);
  }
  return -1;
}

// One training step of one key: Choose, run (cost model), Report when measuring. Returns the
// chosen candidate index; counts the reports per candidate in `reports` when given.
int Step(AdaptiveController& ctl, CostModel& costs, const AdaptKey& key,
         std::map<int, int>* reports = nullptr) {
  const ParallelMode mode = ctl.Choose(key).value();
  const int index = IndexOf(ctl.candidates(), mode);
  EXPECT_GE(index, 0);
  const double ms = costs.Measure(key, index);
  if (ctl.Measuring(key)) {
    if (reports != nullptr) ++(*reports)[index];
    EXPECT_TRUE(ctl.Report(key, mode, ms).ok());
  }
  return index;
}

std::string TablePath(absl::string_view name) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/adapt_table_", name, ".txt");
  std::remove(path.c_str());
  return path;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteFile(const std::string& path, absl::string_view text) {
  std::ofstream out(path);
  out << text;
}

TEST(CapacityBucketTest, IsTheBitWidthOfTheLoad) {
  EXPECT_EQ(CapacityBucket(0), 0);
  EXPECT_EQ(CapacityBucket(1), 1);
  EXPECT_EQ(CapacityBucket(2), 2);
  EXPECT_EQ(CapacityBucket(3), 2);
  EXPECT_EQ(CapacityBucket(4), 3);
  EXPECT_EQ(CapacityBucket(7), 3);
  EXPECT_EQ(CapacityBucket(8), 4);
  EXPECT_EQ(CapacityBucket(1023), 10);
  EXPECT_EQ(CapacityBucket(1024), 11);
  // Loads within a factor of two share a bucket: the same decision applies to both.
  for (int64_t n = 1; n < 5000; n = n * 3 + 1) {
    EXPECT_EQ(CapacityBucket(n), CapacityBucket(n | (n >> 1))) << n;
  }
}

TEST(CapacityBucketTest, AgreedBucketUsesTheMaximumOverRanks) {
  FakeCommunicator comm(/*rank=*/1, /*size=*/3);
  comm.others_gather = {{0, 5}, {2, 300}};
  MOE_ASSERT_OK_AND_ASSIGN(int64_t bucket, AgreedCapacityBucket(&comm, 17));
  EXPECT_EQ(bucket, CapacityBucket(300));
  comm.others_gather = {{0, 5}, {2, 0}};
  MOE_ASSERT_OK_AND_ASSIGN(bucket, AgreedCapacityBucket(&comm, 17));
  EXPECT_EQ(bucket, CapacityBucket(17));
  EXPECT_THAT(AgreedCapacityBucket(&comm, -1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("local_max_rows_per_expert")));
}

TEST(AdaptiveControllerTest, CreateValidatesEveryArgument) {
  FakeCommunicator comm(0, 1);
  auto create = [&](AdaptConfig config, std::vector<ParallelMode> candidates,
                    Communicator* c = nullptr) {
    return AdaptiveController::Create(config, std::move(candidates), c ? c : &comm).status();
  };
  MOE_EXPECT_OK(create({}, Candidates()));
  EXPECT_THAT(create({}, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("candidates")));
  EXPECT_THAT(create({}, {Mode("r1.d1.flat"), Mode("r0.d1.flat"), Mode("r1.d1.flat")}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("candidates[2]: got r1.d1.flat, expected distinct")));
  EXPECT_THAT(create({}, {ParallelMode{.r = 1, .d = 0}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("candidates[0]")));
  EXPECT_THAT(create({.trials = 0}, Candidates()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("adapt.trials: got 0")));
  EXPECT_THAT(create({.warmup = -1}, Candidates()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("adapt.warmup")));
  EXPECT_THAT(create({.reexplore_period = -5}, Candidates()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("adapt.reexplore_period")));
  EXPECT_THAT(create({.mode = "fastest"}, Candidates()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("adapt.mode: got fastest")));
  EXPECT_THAT(create({.mode = "r2.d1.flat"}, Candidates()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("one of the candidates")));
  EXPECT_THAT(AdaptiveController::Create({}, Candidates(), nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("comm")));
}

TEST(AdaptiveControllerTest, ExploresEachCandidateWarmupPlusTrialsTimesThenExploitsTheBest) {
  for (const auto& [trials, warmup] : std::vector<std::pair<int, int>>{{2, 1}, {3, 0}, {1, 2}}) {
    SCOPED_TRACE(absl::StrCat("trials ", trials, " warmup ", warmup));
    FakeCommunicator comm(0, 1);
    MOE_ASSERT_OK_AND_ASSIGN(
        auto ctl,
        AdaptiveController::Create({.trials = trials, .warmup = warmup}, Candidates(), &comm));
    CostModel costs(7);
    const AdaptKey key{.layer = 3, .capacity_bucket = 9, .top_k = 2};
    costs.Set(key, {10.0, 6.0, 12.0, 8.0});
    for (int i = 0; i < 4; ++i) costs.SetFirstUseSpike(key, i, 30.0);
    std::map<int, int> reports;
    const int explore_steps = 4 * (trials + warmup);
    for (int step = 0; step < explore_steps; ++step) {
      MOE_ASSERT_OK_AND_ASSIGN(const ParallelMode mode, ctl->Choose(key));
      ASSERT_TRUE(ctl->Measuring(key)) << "step " << step;
      // Round-robin: every candidate is measured once before any is measured twice.
      const int index = IndexOf(ctl->candidates(), mode);
      EXPECT_EQ(index, step % 4);
      ++reports[index];
      MOE_ASSERT_OK(ctl->Report(key, ctl->candidates()[index], costs.Measure(key, index)));
    }
    for (int i = 0; i < 4; ++i) EXPECT_EQ(reports[i], trials + warmup) << "candidate " << i;
    EXPECT_EQ(ctl->total_reports(), explore_steps);
    EXPECT_EQ(comm.collective_calls, explore_steps);
    for (int step = 0; step < 50; ++step) {
      EXPECT_EQ(Step(*ctl, costs, key), costs.Best(key));
      EXPECT_FALSE(ctl->Measuring(key));
    }
    EXPECT_EQ(ctl->total_reports(), explore_steps);
    EXPECT_EQ(comm.collective_calls, explore_steps);
    const std::vector<AdaptDecision> decisions = ctl->Decisions();
    ASSERT_EQ(decisions.size(), 1u);
    EXPECT_FALSE(decisions[0].exploring);
    EXPECT_EQ(decisions[0].mode, Mode("r1.d2.flat"));
    EXPECT_NEAR(decisions[0].median_ms, 6.0, 6.0 * 0.03 + 1e-6);
  }
}

TEST(AdaptiveControllerTest, WarmupMeasurementsAreDiscarded) {
  // Candidate 0 is truly best, but its first step costs 40 ms more; counted, its median over two
  // trials (~ (45 + 5) / 2) would lose to candidate 1 (~ 9 ms).
  FakeCommunicator comm(0, 1);
  const AdaptKey key{.layer = 0, .capacity_bucket = 4, .top_k = 1};
  for (int warmup : {0, 1}) {
    MOE_ASSERT_OK_AND_ASSIGN(
        auto ctl, AdaptiveController::Create({.trials = 2, .warmup = warmup}, Candidates(), &comm));
    CostModel costs(11);
    costs.Set(key, {5.0, 9.0, 20.0, 20.0});
    costs.SetFirstUseSpike(key, 0, 40.0);
    for (int step = 0; step < 4 * (2 + warmup); ++step) Step(*ctl, costs, key);
    EXPECT_EQ(Step(*ctl, costs, key), warmup == 1 ? 0 : 1) << "warmup " << warmup;
  }
}

TEST(AdaptiveControllerTest, KeysAreIndependent) {
  FakeCommunicator comm(0, 1);
  MOE_ASSERT_OK_AND_ASSIGN(auto ctl, AdaptiveController::Create({}, Candidates(), &comm));
  CostModel costs(3);
  const std::vector<AdaptKey> keys = {{0, 3, 1}, {0, 4, 1}, {1, 3, 1}, {0, 3, 2}};
  costs.Set(keys[0], {1.0, 2.0, 3.0, 4.0});
  costs.Set(keys[1], {4.0, 1.0, 3.0, 2.0});
  costs.Set(keys[2], {4.0, 3.0, 1.0, 2.0});
  costs.Set(keys[3], {4.0, 3.0, 2.0, 1.0});
  std::map<AdaptKey, std::map<int, int>> reports;
  // Keys interleave irregularly, as layers and loads do in training.
  std::mt19937 order(5);
  for (int step = 0; step < 400; ++step) {
    const AdaptKey& key = keys[order() % keys.size()];
    Step(*ctl, costs, key, &reports[key]);
  }
  for (size_t k = 0; k < keys.size(); ++k) {
    for (int i = 0; i < 4; ++i) EXPECT_EQ(reports[keys[k]][i], 3) << "key " << k << " mode " << i;
    EXPECT_EQ(Step(*ctl, costs, keys[k]), static_cast<int>(k)) << "key " << k;
  }
  EXPECT_EQ(ctl->total_reports(), 4 * 4 * 3);
  // A key seen only after the others were decided explores on its own.
  const AdaptKey late{2, 3, 1};
  costs.Set(late, {3.0, 3.0, 3.0, 0.5});
  EXPECT_EQ(Step(*ctl, costs, late), 0);
  EXPECT_TRUE(ctl->Measuring(late));
  EXPECT_FALSE(ctl->Measuring(keys[0]));
}

TEST(AdaptiveControllerTest, ExplorationIsBoundedAndReexplorePeriodFindsANewBest) {
  FakeCommunicator comm(0, 1);
  const int64_t period = 100;
  MOE_ASSERT_OK_AND_ASSIGN(
      auto ctl, AdaptiveController::Create({.reexplore_period = period}, Candidates(), &comm));
  CostModel costs(17);
  const AdaptKey key{0, 6, 2};
  costs.Set(key, {2.0, 4.0, 6.0, 8.0});
  const int per_exploration = 4 * 3;
  for (int step = 0; step < per_exploration + period; ++step) Step(*ctl, costs, key);
  EXPECT_EQ(ctl->Choose(key).value(), Mode("r1.d1.flat"));
  EXPECT_EQ(ctl->total_reports(), per_exploration);
  // The machine changed: the next exploration (it just began) finds the new best.
  costs.Set(key, {8.0, 6.0, 4.0, 2.0});
  ASSERT_TRUE(ctl->Measuring(key));
  MOE_ASSERT_OK(ctl->Report(key, Mode("r1.d1.flat"), costs.Measure(key, 0)));
  for (int step = 1; step < per_exploration; ++step) Step(*ctl, costs, key);
  EXPECT_EQ(ctl->total_reports(), 2 * per_exploration);
  EXPECT_EQ(ctl->Decisions()[0].mode, Mode("r1.d1.2dh"));
  for (int step = 0; step < period; ++step) EXPECT_EQ(Step(*ctl, costs, key), 3);
  EXPECT_EQ(ctl->total_reports(), 2 * per_exploration);
}

TEST(AdaptiveControllerTest, WithoutAPeriodMeasurementsStopForGood) {
  FakeCommunicator comm(0, 1);
  MOE_ASSERT_OK_AND_ASSIGN(auto ctl, AdaptiveController::Create({}, Candidates(), &comm));
  CostModel costs(19);
  const AdaptKey key{0, 6, 2};
  costs.Set(key, {2.0, 4.0, 6.0, 8.0});
  for (int step = 0; step < 3000; ++step) Step(*ctl, costs, key);
  EXPECT_EQ(ctl->total_reports(), 12);
  EXPECT_EQ(comm.collective_calls, 12);
}

TEST(AdaptiveControllerTest, ReexplorePeriodBoundsTheMeasurements) {
  FakeCommunicator comm(0, 1);
  const int64_t period = 50;
  MOE_ASSERT_OK_AND_ASSIGN(
      auto ctl, AdaptiveController::Create({.reexplore_period = period}, Candidates(), &comm));
  CostModel costs(23);
  const AdaptKey key{1, 2, 1};
  costs.Set(key, {2.0, 4.0, 6.0, 8.0});
  const int steps = 3100;
  int best_steps = 0;
  for (int step = 0; step < steps; ++step) best_steps += Step(*ctl, costs, key) == 0;
  // Each cycle: 12 measured steps, then `period` steps of the best.
  const int cycle = 12 + period;
  EXPECT_EQ(ctl->total_reports(), 12 * (steps / cycle) + std::min(12, steps % cycle));
  EXPECT_GE(best_steps, steps * period / cycle);
}

TEST(AdaptiveControllerTest, ResetKeyExploresAgain) {
  FakeCommunicator comm(0, 1);
  MOE_ASSERT_OK_AND_ASSIGN(auto ctl, AdaptiveController::Create({}, Candidates(), &comm));
  CostModel costs(29);
  const AdaptKey a{0, 5, 1}, b{1, 5, 1};
  costs.Set(a, {2.0, 4.0, 6.0, 8.0});
  costs.Set(b, {8.0, 4.0, 6.0, 2.0});
  for (int step = 0; step < 20; ++step) {
    Step(*ctl, costs, a);
    Step(*ctl, costs, b);
  }
  costs.Set(a, {8.0, 6.0, 2.0, 4.0});
  EXPECT_EQ(Step(*ctl, costs, a), 0);  // decided: no re-exploration on its own
  ctl->ResetKey(a);
  for (int step = 0; step < 12; ++step) {
    Step(*ctl, costs, a);
  }
  EXPECT_EQ(Step(*ctl, costs, a), 2);
  EXPECT_EQ(Step(*ctl, costs, b), 3);
  EXPECT_EQ(ctl->total_reports(), 36);
}

TEST(AdaptiveControllerTest, ForcedModeNeverExplores) {
  FakeCommunicator comm(0, 1);
  const std::string path = TablePath("forced");
  MOE_ASSERT_OK_AND_ASSIGN(
      auto ctl,
      AdaptiveController::Create({.mode = "r0.d1.flat", .table_path = path}, Candidates(), &comm));
  EXPECT_TRUE(ctl->forced());
  MOE_ASSERT_OK(ctl->Load());
  for (int step = 0; step < 100; ++step) {
    const AdaptKey key{step % 3, step % 5, 1 + step % 2};
    EXPECT_EQ(ctl->Choose(key).value(), Mode("r0.d1.flat"));
    EXPECT_FALSE(ctl->Measuring(key));
    MOE_EXPECT_OK(ctl->Report(key, Mode("r0.d1.flat"), 1.0));
  }
  MOE_ASSERT_OK(ctl->Save());
  EXPECT_EQ(comm.collective_calls, 0);
  EXPECT_EQ(ctl->total_reports(), 0);
  EXPECT_TRUE(ctl->Decisions().empty());
  EXPECT_FALSE(std::ifstream(path).good()) << "a forced controller writes no table";
}

TEST(AdaptiveControllerTest, ReportChecksItsArguments) {
  FakeCommunicator comm(0, 1);
  MOE_ASSERT_OK_AND_ASSIGN(
      auto ctl, AdaptiveController::Create({.save_on_decision = false}, Candidates(), &comm));
  const AdaptKey key{0, 1, 1};
  EXPECT_THAT(ctl->Choose({-1, 1, 1}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("key.layer")));
  EXPECT_THAT(ctl->Choose({0, -1, 1}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("key.capacity_bucket")));
  EXPECT_THAT(ctl->Choose({0, 1, 0}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("key.top_k")));
  // Unknown key: not measuring, so a no-op.
  MOE_EXPECT_OK(ctl->Report(key, Mode("r1.d1.flat"), 1.0));
  EXPECT_EQ(ctl->Choose(key).value(), Mode("r1.d1.flat"));
  EXPECT_THAT(ctl->Report(key, Mode("r1.d2.flat"), 1.0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("mode: got r1.d2.flat")));
  EXPECT_THAT(ctl->Report(key, Mode("r1.d1.flat"), 1.0),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("without a Choose")));
  ASSERT_TRUE(ctl->Choose(key).ok());
  EXPECT_THAT(ctl->Report(key, Mode("r1.d1.flat"), -2.0),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ms (slowest rank)")));
  ASSERT_TRUE(ctl->Choose(key).ok());
  EXPECT_THAT(ctl->Report(key, Mode("r1.d1.flat"), std::nan("")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("finite")));
  EXPECT_EQ(ctl->total_reports(), 0);
  // Rejected reports record nothing: the same candidate is asked for again.
  EXPECT_EQ(ctl->Choose(key).value(), Mode("r1.d1.flat"));
}

// Two ranks simulated in lockstep: rank r's fake communicator gathers the other rank's local time.
// Each rank's local times favour a different mode (rank 0: candidate 0, rank 1: candidate 1);
// the slowest rank's times favour candidate 2. Both must take the same decision at every step:
// candidate 2.
TEST(AdaptiveControllerTest, AllReducedTimesGiveIdenticalDecisionsOnEveryRank) {
  const std::vector<std::vector<double>> local = {{1.0, 9.0, 4.0, 9.5}, {9.0, 1.0, 4.0, 9.5}};
  std::vector<std::unique_ptr<FakeCommunicator>> comms;
  std::vector<std::unique_ptr<AdaptiveController>> ctls;
  std::vector<float> last_local(2, 0.0f);
  for (int r = 0; r < 2; ++r) {
    comms.push_back(std::make_unique<FakeCommunicator>(r, 2));
    comms[r]->others_ms = [&last_local, r] { return last_local[1 - r]; };
    MOE_ASSERT_OK_AND_ASSIGN(auto ctl,
                             AdaptiveController::Create({}, Candidates(), comms[r].get()));
    ctls.push_back(std::move(ctl));
  }
  std::mt19937 rng(31);
  std::uniform_real_distribution<double> noise(0.9, 1.1);
  const std::vector<AdaptKey> keys = {{0, 7, 2}, {1, 7, 2}};
  for (int step = 0; step < 60; ++step) {
    const AdaptKey& key = keys[step % 2];
    const ParallelMode mode0 = ctls[0]->Choose(key).value();
    const ParallelMode mode1 = ctls[1]->Choose(key).value();
    ASSERT_EQ(mode0, mode1) << "step " << step;
    ASSERT_EQ(ctls[0]->Measuring(key), ctls[1]->Measuring(key));
    const int index = IndexOf(Candidates(), mode0);
    for (int r = 0; r < 2; ++r) last_local[r] = static_cast<float>(local[r][index] * noise(rng));
    if (!ctls[0]->Measuring(key)) continue;
    MOE_ASSERT_OK(ctls[0]->Report(key, mode0, last_local[0]));
    MOE_ASSERT_OK(ctls[1]->Report(key, mode1, last_local[1]));
  }
  for (int r = 0; r < 2; ++r) {
    for (const AdaptDecision& d : ctls[r]->Decisions()) {
      EXPECT_EQ(d.mode, Mode("r0.d1.flat")) << "rank " << r;
      EXPECT_NEAR(d.median_ms, 4.0, 0.4) << "the slower of 4 ms and 4 ms, +-10%";
    }
  }
  const std::vector<AdaptDecision> d0 = ctls[0]->Decisions(), d1 = ctls[1]->Decisions();
  ASSERT_EQ(d0.size(), d1.size());
  for (size_t i = 0; i < d0.size(); ++i) EXPECT_EQ(d0[i].median_ms, d1[i].median_ms);
  EXPECT_EQ(ctls[0]->Summary(), ctls[1]->Summary());
}

TEST(AdaptiveControllerTest, SaveThenLoadGivesTheSameChoicesWithoutExploring) {
  const std::string path = TablePath("roundtrip");
  FakeCommunicator comm(0, 1);
  CostModel costs(37);
  const AdaptKey a{0, 5, 2}, b{1, 5, 2}, partial{2, 6, 2};
  costs.Set(a, {5.0, 3.0, 4.0, 6.0});
  costs.Set(b, {5.0, 6.0, 7.0, 1.5});
  costs.Set(partial, {5.0, 4.0, 1.0, 2.0});
  std::vector<ParallelMode> chosen;
  {
    MOE_ASSERT_OK_AND_ASSIGN(auto ctl,
                             AdaptiveController::Create({.table_path = path}, Candidates(), &comm));
    MOE_ASSERT_OK(ctl->Load());  // no file yet: empty
    for (int step = 0; step < 12; ++step) {
      Step(*ctl, costs, a);
      Step(*ctl, costs, b);
    }
    for (int step = 0; step < 7; ++step) Step(*ctl, costs, partial);
    chosen = {ctl->Choose(a).value(), ctl->Choose(b).value()};
    MOE_ASSERT_OK(ctl->Save());
  }
  const std::string text = ReadFile(path);
  EXPECT_EQ(text.substr(0, text.find('\n')), "sigma-moe adapt table v1");
  EXPECT_THAT(text, HasSubstr("\nbest 0 5 2 r1.d2.flat "));
  EXPECT_THAT(text, HasSubstr("\nbest 1 5 2 r1.d1.2dh "));
  EXPECT_THAT(text, HasSubstr("\nexplore 2 6 2 r1.d1.flat 2 "));
  EXPECT_THAT(text, HasSubstr("\nexplore 2 6 2 r1.d1.2dh 1\n"));

  FakeCommunicator comm2(0, 1);
  MOE_ASSERT_OK_AND_ASSIGN(auto ctl,
                           AdaptiveController::Create({.table_path = path}, Candidates(), &comm2));
  MOE_ASSERT_OK(ctl->Load());
  EXPECT_EQ(ctl->Choose(a).value(), chosen[0]);
  EXPECT_EQ(ctl->Choose(b).value(), chosen[1]);
  EXPECT_FALSE(ctl->Measuring(a));
  EXPECT_FALSE(ctl->Measuring(b));
  // The partial exploration resumes: 12 reports in all, 7 of them done before the restart.
  std::map<int, int> reports;
  for (int step = 0; step < 30; ++step) Step(*ctl, costs, partial, &reports);
  EXPECT_EQ(reports[0] + reports[1] + reports[2] + reports[3], 12 - 7);
  EXPECT_EQ(Step(*ctl, costs, partial), 2);
  EXPECT_EQ(ctl->total_reports(), 5);
  // The decision was saved as it was taken (save_on_decision).
  EXPECT_THAT(ReadFile(path), HasSubstr("\nbest 2 6 2 r0.d1.flat "));
}

TEST(AdaptiveControllerTest, OnlyRankZeroWritesTheTable) {
  const std::string path = TablePath("rank1");
  FakeCommunicator comm(1, 2);
  MOE_ASSERT_OK_AND_ASSIGN(auto ctl,
                           AdaptiveController::Create({.table_path = path}, Candidates(), &comm));
  CostModel costs(41);
  const AdaptKey key{0, 1, 1};
  costs.Set(key, {1.0, 2.0, 3.0, 4.0});
  for (int step = 0; step < 20; ++step) Step(*ctl, costs, key);
  MOE_ASSERT_OK(ctl->Save());
  EXPECT_FALSE(std::ifstream(path).good());
}

TEST(AdaptiveControllerTest, LoadDropsModesThatAreNoLongerCandidates) {
  const std::string path = TablePath("dropped");
  WriteFile(path,
            "sigma-moe adapt table v1\n"
            "# a comment, then a blank line\n"
            "\n"
            "best 0 3 1 r1.d4.flat 2.5\n"
            "best 1 3 1 r1.d2.flat 3.5\n"
            "explore 2 3 1 r1.d4.flat 3 1 2\n"
            "explore 2 3 1 r1.d1.flat 1\n");
  FakeCommunicator comm(0, 1);
  MOE_ASSERT_OK_AND_ASSIGN(auto ctl,
                           AdaptiveController::Create({.table_path = path}, Candidates(), &comm));
  MOE_ASSERT_OK(ctl->Load());
  const std::vector<AdaptDecision> d = ctl->Decisions();
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].key, (AdaptKey{1, 3, 1}));
  EXPECT_EQ(d[0].mode, Mode("r1.d2.flat"));
  EXPECT_EQ(d[0].median_ms, 3.5);
  EXPECT_TRUE(d[1].exploring);
  EXPECT_EQ(d[1].reports, 1);
  EXPECT_EQ(ctl->Choose({0, 3, 1}).value(), Mode("r1.d1.flat"));
  EXPECT_TRUE(ctl->Measuring({0, 3, 1}));
  // Candidate 0 has had its warm-up report; round-robin continues with the others.
  EXPECT_EQ(ctl->Choose({2, 3, 1}).value(), Mode("r1.d2.flat"));
}

TEST(AdaptiveControllerTest, CorruptTableIsAnErrorNamingTheLine) {
  const std::string path = TablePath("corrupt");
  FakeCommunicator comm(0, 1);
  MOE_ASSERT_OK_AND_ASSIGN(auto ctl,
                           AdaptiveController::Create({.table_path = path}, Candidates(), &comm));
  const std::string header = "sigma-moe adapt table v1\n";
  const std::string good = "best 0 1 1 r1.d2.flat 2.5\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"sigma-moe adapt table v2\n" + good, ":1: expected the header"},
      {"", ":1: expected the header"},
      {header + good + "best 0 2 1 r1.d2.flat\n", ":3: expected: best"},
      {header + good + "worst 0 2 1 r1.d2.flat 1\n", ":3: unknown entry \"worst\""},
      {header + good + "best 0 x 1 r1.d2.flat 1\n", ":3: bad key"},
      {header + good + "best 0 2 0 r1.d2.flat 1\n", ":3: bad key"},
      {header + "\n" + good + "best 0 2 1 r1.q2.flat 1\n", ":4: parallel mode d"},
      {header + good + "best 0 2 1 r1.d2.flat -1\n", ":3: bad median_ms"},
      {header + good + "best 0 2 1 r1.d2.flat nan\n", ":3: bad median_ms"},
      {header + good + good, ":3: second entry for layer 0 bucket 1 k 1"},
      {header + good + "explore 0 1 1 r1.d2.flat 1\n", ":3: explore entry for the decided"},
      {header + "explore 0 2 1 r1.d2.flat 1 5 6\n", ":2: more kept measurements than reports"},
      {header + "explore 0 2 1 r1.d2.flat two\n", ":2: bad reports"},
      {header + "explore 0 2 1 r1.d2.flat 2 5\nexplore 0 2 1 r1.d2.flat 1\n",
       ":3: second explore entry"},
  };
  for (const auto& [text, message] : cases) {
    SCOPED_TRACE(text);
    WriteFile(path, text);
    EXPECT_THAT(ctl->Load(), StatusIs(absl::StatusCode::kDataLoss, HasSubstr(path + message)));
  }
  // The table is left as it was (empty): the caller may go on, exploring.
  EXPECT_TRUE(ctl->Decisions().empty());
  EXPECT_EQ(ctl->Choose({0, 1, 1}).value(), Mode("r1.d1.flat"));
  EXPECT_TRUE(ctl->Measuring({0, 1, 1}));
}

TEST(AdaptiveControllerTest, SummaryListsEveryKey) {
  FakeCommunicator comm(0, 1);
  MOE_ASSERT_OK_AND_ASSIGN(auto ctl, AdaptiveController::Create({}, Candidates(), &comm));
  CostModel costs(43);
  costs.Set({0, 2, 1}, {3.0, 2.0, 4.0, 5.0});
  costs.Set({1, 2, 1}, {3.0, 2.0, 4.0, 5.0});
  for (int step = 0; step < 12; ++step) Step(*ctl, costs, {0, 2, 1});
  Step(*ctl, costs, {1, 2, 1});
  const std::string summary = ctl->Summary();
  EXPECT_THAT(summary, HasSubstr("layer 0 bucket 2 k 1: r1.d2.flat "));
  EXPECT_THAT(summary, HasSubstr("layer 1 bucket 2 k 1: "));
  EXPECT_THAT(summary, HasSubstr("[exploring, 1 reports]"));
}

TEST(AdaptiveControllerTest, APriorPrunesTheCandidatesItMeasures) {
  FakeCommunicator comm(0, 1);
  MOE_ASSERT_OK_AND_ASSIGN(
      auto ctl, AdaptiveController::Create(
                    {.trials = 2, .warmup = 1, .explore_at_most = 2, .explore_within = 1.5},
                    Candidates(), &comm));
  // Predicted: r1.d1.flat 10, r1.d2.flat 12, r0.d1.flat 30 (beyond 1.5 x 10), r1.d1.2dh 11.
  // At most 2: r1.d1.flat and r1.d1.2dh; for key 1 everything is within 1.5 x, still only 2.
  int prior_calls = 0;
  ctl->SetPrior([&](const AdaptKey& key) {
    ++prior_calls;
    return key.layer == 0 ? std::vector<double>{10, 12, 30, 11}
                          : std::vector<double>{20, 19, 21, 22};
  });
  CostModel costs(5);
  const AdaptKey k0{0, 9, 1}, k1{1, 9, 1};
  // The truth: r1.d2.flat is fastest for key 0, but the prior ruled it out there.
  costs.Set(k0, {8.0, 5.0, 20.0, 7.0});
  costs.Set(k1, {8.0, 5.0, 20.0, 7.0});
  std::map<int, int> r0, r1;
  for (int step = 0; step < 2 * 3; ++step) Step(*ctl, costs, k0, &r0);
  for (int step = 0; step < 2 * 3; ++step) Step(*ctl, costs, k1, &r1);
  EXPECT_EQ(r0, (std::map<int, int>{{0, 3}, {3, 3}}));
  EXPECT_EQ(r1, (std::map<int, int>{{0, 3}, {1, 3}}));
  EXPECT_FALSE(ctl->Measuring(k0));
  EXPECT_EQ(Step(*ctl, costs, k0), 3);  // the best of the two measured
  EXPECT_EQ(Step(*ctl, costs, k1), 1);
  EXPECT_EQ(prior_calls, 2);
  for (const AdaptDecision& d : ctl->Decisions()) EXPECT_EQ(d.explored, 2);

  // A prior of the wrong size prunes nothing.
  MOE_ASSERT_OK_AND_ASSIGN(auto all,
                           AdaptiveController::Create({.explore_at_most = 1}, Candidates(), &comm));
  all->SetPrior([](const AdaptKey&) { return std::vector<double>{1.0}; });
  std::map<int, int> every;
  for (int step = 0; step < 4 * 3; ++step) Step(*all, costs, k0, &every);
  EXPECT_EQ(every.size(), 4u);
}

TEST(AdaptiveControllerTest, CreateValidatesThePriorLimits) {
  FakeCommunicator comm(0, 1);
  EXPECT_THAT(AdaptiveController::Create({.explore_at_most = -1}, Candidates(), &comm),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("adapt.explore_at_most")));
  EXPECT_THAT(AdaptiveController::Create({.explore_within = 0.5}, Candidates(), &comm),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("adapt.explore_within")));
}

}  // namespace
}  // namespace smoe
