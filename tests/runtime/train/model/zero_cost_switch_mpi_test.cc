// Zero-cost switching of the parallel mode (DESIGN.md section 6: a switch moves no parameter or
// optimizer bytes), under mpirun -np 2 and 4 (CTest label mpi), on the trainer's model:
//   - across 100 random mode switches of every MoE layer (the same on every rank), no parameter,
//     gradient or AdamW buffer is reallocated or changed by a switch: the same data pointers and
//     checksums before and after each switch; between switches a training step runs in the new
//     mode and changes what it updates, in place;
//   - a short training run that switches mode every step matches one in a fixed mode (fp32);
//   - the switch overhead per layer, the controller's decision plus setting the mode, is measured
//     and printed as a JSON line (goal: < 20 us), with the capacity bucket agreement (one
//     collective per step for every layer) beside it.
// Two layouts: whole experts per rank (E = 8) and experts split over ranks (E = 2, so s = W / 2
// and r | s modes on 4 ranks).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "moe/adapt/controller.h"
#include "runtime/nn/adamw.h"
#include "runtime/tensor/tensor_ops.h"
#include "runtime/train/model/model.h"
#include "tests/testing/compare.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

Communicator* World() {
  StatusOr<Communicator*> comm = MpiWorldCommunicator();
  MOE_CHECK_OK(comm.status());
  return *comm;
}

int NodeSize(int world) { return world >= 4 ? 2 : 1; }

ModelSpec Spec(int experts) {
  ModelSpec spec;
  spec.vocab_size = 23;
  spec.num_layers = 3;
  spec.model_dim = 16;
  spec.tie_embeddings = false;
  spec.attention = DiffQkvConfig{16, 2, 1, 2, 8, 8, true, 10000.0};
  spec.moe.ffn_dim = 8;
  spec.moe.num_experts = experts;
  spec.moe.top_k = 2;
  spec.moe.aux.lbl_coef = 0.01f;
  spec.dense_layers = {1};
  spec.dense_ffn_dim = 12;
  return spec;
}

std::vector<ParallelMode> Modes(const Model& model) {
  constexpr int kDegrees[] = {1, 2, 4};
  return CandidateModes(model.world(), NodeSize(model.world()), model.layout().shards, kDegrees);
}

uint64_t Checksum(const TensorView& t) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the bytes
  const unsigned char* p = static_cast<const unsigned char*>(t.data());
  for (size_t i = 0; i < t.nbytes(); ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// Every parameter's buffers: master, compute copy, gradient, AdamW moments.
struct Buffer {
  std::string name;
  const void* data;
  uint64_t checksum;
  friend bool operator==(const Buffer&, const Buffer&) = default;
};

std::vector<Buffer> Snapshot(Model& model) {
  std::vector<Buffer> out;
  for (const ModelParam& p : model.params()) {
    const struct {
      const char* what;
      const Tensor& t;
    } parts[] = {
        {"master", p.master}, {"compute", p.compute}, {"grad", p.grad}, {"m", p.m}, {"v", p.v}};
    for (const auto& part : parts) {
      out.push_back({p.name + "." + part.what, part.t.data(), Checksum(part.t)});
    }
  }
  return out;
}

// One training step of this rank's slice of a global batch, as the trainer runs it: gradients,
// the replicated ones all-reduced, AdamW on every parameter. Returns the mean loss over ranks.
double TrainStep(ExecContext& ctx, Model& model, int step) {
  const int w = model.world(), rank = model.comm()->rank();
  const int64_t batch = 2, seq = 8;  // per rank
  std::mt19937 rng(1000 + step);     // the global batch, the same on every rank
  std::uniform_int_distribution<int32_t> token(0,
                                               static_cast<int32_t>(model.spec().vocab_size) - 1);
  std::vector<int32_t> all(w * batch * seq + 1);
  for (int32_t& t : all) t = token(rng);
  Tensor ids = testing::FromInts(std::vector<int32_t>(all.begin() + rank * batch * seq,
                                                      all.begin() + (rank + 1) * batch * seq));
  Tensor targets = testing::FromInts(std::vector<int32_t>(
      all.begin() + rank * batch * seq + 1, all.begin() + (rank + 1) * batch * seq + 1));
  MOE_CHECK_OK(model.ZeroGrads(ctx));
  StatusOr<ModelLoss> loss =
      model.ForwardBackward(ctx, ids, targets, batch, seq, 1.0f / static_cast<float>(w));
  MOE_CHECK_OK(loss.status());
  for (ModelParam& p : model.params()) {
    if (!p.expert_shard) MOE_CHECK_OK(model.comm()->AllReduceSum(ctx, p.grad));
    const bool shadow = p.compute.data() != p.master.data();
    MOE_CHECK_OK(AdamWStep(ctx, {1e-2f, 0.9f, 0.95f, 1e-8f, p.decay ? 0.1f : 0.0f}, step + 1, 1.0f,
                           p.master, p.grad, p.m, p.v, shadow ? p.compute.view() : TensorView()));
  }
  Tensor mean = testing::FromFloats({static_cast<float>(loss->loss)}, {1});
  MOE_CHECK_OK(model.comm()->AllReduceSum(ctx, mean));
  return mean.data<float>()[0] / w;
}

std::unique_ptr<Model> MakeModel(int experts) {
  Communicator* world = World();
  StatusOr<std::unique_ptr<Model>> model =
      Model::Create(Spec(experts), Device::Cpu(), world, NodeSize(world->size()));
  MOE_CHECK_OK(model.status());
  MOE_CHECK_OK((*model)->Init(ExecContext::Cpu(), 31));
  return *std::move(model);
}

std::vector<int> MoELayers(const Model& model) {
  std::vector<int> layers;
  for (int l = 0; l < model.spec().num_layers; ++l) {
    if (model.is_moe_layer(l)) layers.push_back(l);
  }
  return layers;
}

class ZeroCostSwitchTest : public ::testing::TestWithParam<int> {};

TEST_P(ZeroCostSwitchTest, SwitchesMoveNoParameterGradientOrOptimizerByte) {
  ExecContext& ctx = ExecContext::Cpu();
  std::unique_ptr<Model> model = MakeModel(GetParam());
  const std::vector<ParallelMode> modes = Modes(*model);
  const std::vector<int> layers = MoELayers(*model);
  std::mt19937 pick(7);  // the same sequence on every rank
  const std::vector<Buffer> first = Snapshot(*model);
  int steps_changed = 0;
  for (int i = 0; i < 100; ++i) {
    const std::vector<Buffer> before = Snapshot(*model);
    for (int l : layers) {
      model->SetParallelMode(l, modes[pick() % modes.size()], /*measure=*/pick() % 2 == 0);
    }
    const std::vector<Buffer> after = Snapshot(*model);
    ASSERT_EQ(after.size(), before.size());
    for (size_t b = 0; b < after.size(); ++b) {
      ASSERT_EQ(after[b], before[b]) << after[b].name << " changed by switch " << i;
    }
    TrainStep(ctx, *model, i);
    const std::vector<Buffer> stepped = Snapshot(*model);
    bool changed = false;
    for (size_t b = 0; b < stepped.size(); ++b) {
      // The step updates in place: the same buffers, other contents.
      ASSERT_EQ(stepped[b].data, first[b].data) << stepped[b].name << " moved in step " << i;
      changed |= stepped[b].checksum != after[b].checksum;
    }
    steps_changed += changed ? 1 : 0;
  }
  EXPECT_EQ(steps_changed, 100);
}

TEST_P(ZeroCostSwitchTest, SwitchingEveryStepMatchesAFixedMode) {
  ExecContext& ctx = ExecContext::Cpu();
  std::unique_ptr<Model> switching = MakeModel(GetParam()), fixed = MakeModel(GetParam());
  const std::vector<ParallelMode> modes = Modes(*switching);
  const std::vector<int> layers = MoELayers(*switching);
  std::mt19937 pick(11);
  for (int step = 0; step < 8; ++step) {
    for (int l : layers) {
      switching->SetParallelMode(l, modes[pick() % modes.size()]);
      fixed->SetParallelMode(l, {1, 1, AllToAllAlgorithm::kFlat});
    }
    const double a = TrainStep(ctx, *switching, step), b = TrainStep(ctx, *fixed, step);
    EXPECT_NEAR(a, b, 1e-5 * std::abs(b)) << "step " << step;
  }
  for (size_t i = 0; i < fixed->params().size(); ++i) {
    EXPECT_TRUE(
        testing::AllClose(switching->params()[i].master, fixed->params()[i].master, {1e-5, 1e-4}))
        << fixed->params()[i].name;
  }
}

TEST_P(ZeroCostSwitchTest, SwitchOverheadPerLayer) {
  std::unique_ptr<Model> model = MakeModel(GetParam());
  Communicator* comm = model->comm();
  const std::vector<ParallelMode> modes = Modes(*model);
  const std::vector<int> layers = MoELayers(*model);
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<AdaptiveController> controller,
                           AdaptiveController::Create(
                               {.trials = 1, .warmup = 0, .save_on_decision = false}, modes, comm));
  // Explore two buckets per layer (made-up times: the candidates' index), then time the switches
  // the trainer makes every step: a decided key's Choose and SetParallelMode, alternating buckets
  // so that the mode really changes.
  std::vector<AdaptKey> keys;
  for (int l : layers) {
    for (int64_t bucket : {5, 9}) keys.push_back({l, bucket, 2});
  }
  for (const AdaptKey& key : keys) {
    while (controller->Measuring(key) || controller->Decisions().size() < keys.size()) {
      MOE_ASSERT_OK_AND_ASSIGN(const ParallelMode mode, controller->Choose(key));
      if (!controller->Measuring(key)) break;
      const int index =
          static_cast<int>(std::find(modes.begin(), modes.end(), mode) - modes.begin());
      MOE_ASSERT_OK(controller->Report(key, mode, 1.0 + ((index + key.capacity_bucket) % 5)));
    }
  }
  using Clock = std::chrono::steady_clock;
  const int reps = 20000;
  const auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i) {
    const AdaptKey& key = keys[i % keys.size()];
    MOE_ASSERT_OK_AND_ASSIGN(const ParallelMode mode, controller->Choose(key));
    model->SetParallelMode(key.layer, mode, controller->Measuring(key));
  }
  const double switch_us =
      std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / reps;
  // The bucket agreement: one AllGather per step for every MoE layer.
  std::vector<int64_t> loads(layers.size(), 100 + comm->rank());
  const int agreements = 200;
  MOE_ASSERT_OK(comm->Barrier());
  const auto t1 = Clock::now();
  for (int i = 0; i < agreements; ++i) {
    MOE_ASSERT_OK(AgreedCapacityBuckets(comm, loads).status());
  }
  const double agree_us = std::chrono::duration<double, std::micro>(Clock::now() - t1).count() /
                          agreements / layers.size();
  if (comm->rank() == 0) {
    std::printf(
        "{\"name\": \"switch_overhead\", \"ranks\": %d, \"experts\": %d, \"candidates\": %zu, "
        "\"decision_and_set_us_per_layer\": %.3f, \"bucket_agreement_us_per_layer\": %.1f}\n",
        comm->size(), GetParam(), modes.size(), switch_us, agree_us);
    std::fflush(stdout);
  }
  EXPECT_LT(switch_us, 20.0);
}

INSTANTIATE_TEST_SUITE_P(Layouts, ZeroCostSwitchTest, ::testing::Values(8, 2),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return absl::StrCat("E", info.param);
                         });

}  // namespace
}  // namespace smoe
