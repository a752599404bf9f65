// The multi-rank model without MPI: a rank of a W-rank world holds exactly its slices of the
// single-rank init (experts sharded, everything else replicated), bad layouts name the field, a
// one-rank communicator keeps the single-rank model, and the trainer's candidate modes.
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/train/model/model.h"
#include "runtime/train/trainer/trainer.h"
#include "tests/testing/compare.h"
#include "tests/testing/fake_communicator.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::smoe::testing::AllEqual;
using ::smoe::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A rank of a world whose collectives are never called here (creation and Init need none).
using NoCollectives = testing::UnimplementedCommunicator;

ModelSpec Spec(int experts, int64_t ffn_dim = 6) {
  ModelSpec spec;
  spec.vocab_size = 19;
  spec.num_layers = 3;
  spec.model_dim = 8;
  spec.tie_embeddings = false;
  spec.attention = DiffQkvConfig{8, 2, 1, 2, 4, 4, true, 10000.0};
  spec.moe.ffn_dim = ffn_dim;
  spec.moe.num_experts = experts;
  spec.moe.top_k = 2;
  spec.dense_layers = {1};
  spec.dense_ffn_dim = 5;
  spec.bias_update_rate = 0.01f;
  spec.bias_bound = 1.0f;
  return spec;
}

TEST(DistributedModelTest, ShardedInitEqualsSlicesOfTheFullInit) {
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> full, Model::Create(Spec(8), Device::Cpu()));
  MOE_ASSERT_OK(full->Init(ctx, 77));
  for (int world : {2, 4, 8}) {
    for (int rank = 0; rank < world; ++rank) {
      SCOPED_TRACE(::testing::Message() << "rank " << rank << " of " << world);
      NoCollectives comm(rank, world);
      MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> part,
                               Model::Create(Spec(8), Device::Cpu(), &comm));
      ASSERT_TRUE(part->distributed());
      MOE_ASSERT_OK(part->Init(ctx, 77));
      EXPECT_EQ(part->NumParameters(), full->NumParameters());
      EXPECT_EQ(part->NumActivatedParameters(), full->NumActivatedParameters());
      ASSERT_EQ(part->params().size(), full->params().size());
      int shards = 0;
      for (size_t i = 0; i < full->params().size(); ++i) {
        const ModelParam& p = part->params()[i];
        const ModelParam& f = full->params()[i];
        SCOPED_TRACE(p.name);
        ASSERT_EQ(p.name, f.name);
        EXPECT_EQ(part->GlobalShape(p), f.master.shape());
        // Exactly the routed experts of the MoE layers (0 and 2) are sharded.
        const bool expert = p.name.find(".moe.w") != std::string::npos &&
                            p.name.find("w_gate") == std::string::npos;
        ASSERT_EQ(p.expert_shard, expert);
        if (!p.expert_shard) {
          EXPECT_TRUE(AllEqual(p.master, f.master));
          continue;
        }
        ++shards;
        const int64_t rows = 8 / world;
        ASSERT_EQ(p.master.dim(0), rows);
        EXPECT_TRUE(AllEqual(p.master, f.master.view().Rows(rank * rows, (rank + 1) * rows)));
        EXPECT_TRUE(AllEqual(p.m, f.m.view().Rows(rank * rows, (rank + 1) * rows)));
        EXPECT_EQ(p.grad.shape(), p.master.shape());
        EXPECT_EQ(p.v.shape(), p.master.shape());
      }
      EXPECT_EQ(shards, 6);  // w1, w3, w2 of two MoE layers
      // Replicated model state (the expert biases) stays global.
      ASSERT_EQ(part->Buffers().size(), 2u);
      EXPECT_EQ(part->Buffers()[0].second.shape(), Shape({8}));
    }
  }
}

TEST(DistributedModelTest, ShardedSlicesAreNotAllTheSame) {
  // Guards the test above against an init that ignores the offset: rank 0's and rank 1's experts
  // differ.
  ExecContext& ctx = ExecContext::Cpu();
  NoCollectives r0(0, 2), r1(1, 2);
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> a, Model::Create(Spec(4), Device::Cpu(), &r0));
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> b, Model::Create(Spec(4), Device::Cpu(), &r1));
  MOE_ASSERT_OK(a->Init(ctx, 3));
  MOE_ASSERT_OK(b->Init(ctx, 3));
  for (size_t i = 0; i < a->params().size(); ++i) {
    if (!a->params()[i].expert_shard) continue;
    EXPECT_FALSE(AllEqual(a->params()[i].master, b->params()[i].master)) << a->params()[i].name;
  }
}

TEST(DistributedModelTest, OneRankCommunicatorIsTheSingleRankModel) {
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> plain, Model::Create(Spec(8), Device::Cpu()));
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> one,
                           Model::Create(Spec(8), Device::Cpu(), SingleRankCommunicator()));
  EXPECT_FALSE(one->distributed());
  EXPECT_EQ(one->world(), 1);
  MOE_ASSERT_OK(plain->Init(ctx, 9));
  MOE_ASSERT_OK(one->Init(ctx, 9));
  for (size_t i = 0; i < plain->params().size(); ++i) {
    EXPECT_FALSE(one->params()[i].expert_shard);
    EXPECT_TRUE(AllEqual(one->params()[i].master, plain->params()[i].master))
        << plain->params()[i].name;
  }
}

// Column (w1, w3) or row (w2) block `shard` of width H / s of every expert of a global tensor.
std::vector<double> Slice(const TensorView& global, int ffn_axis, int shards, int shard) {
  const std::vector<double> all = testing::ToDoubles(global);
  const int64_t e = global.dim(0), d1 = global.dim(1), d2 = global.dim(2);
  std::vector<double> out;
  for (int64_t x = 0; x < e; ++x) {
    for (int64_t a = 0; a < d1; ++a) {
      for (int64_t b = 0; b < d2; ++b) {
        const int64_t h = ffn_axis == 1 ? a : b;
        const int64_t width = (ffn_axis == 1 ? d1 : d2) / shards;
        if (h / width == shard) out.push_back(all[(x * d1 + a) * d2 + b]);
      }
    }
  }
  return out;
}

TEST(DistributedModelTest, ExpertShardsOverSeveralRanksAreSlicesOfTheFullInit) {
  // E = 2 < W: s = 2 and 4 ranks per expert, each holding H / s columns of w1, w3 and rows of w2.
  ExecContext& ctx = ExecContext::Cpu();
  const int64_t h = 8;
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> full, Model::Create(Spec(2, h), Device::Cpu()));
  MOE_ASSERT_OK(full->Init(ctx, 41));
  for (int world : {4, 8}) {
    const int s = world / 2;
    for (int rank = 0; rank < world; ++rank) {
      SCOPED_TRACE(::testing::Message() << "rank " << rank << " of " << world);
      NoCollectives comm(rank, world);
      MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> part,
                               Model::Create(Spec(2, h), Device::Cpu(), &comm));
      EXPECT_EQ(part->layout().shards, s);
      EXPECT_EQ(part->layout().shard, rank % s);
      EXPECT_EQ(part->layout().first_expert, rank / s);
      MOE_ASSERT_OK(part->Init(ctx, 41));
      EXPECT_EQ(part->NumParameters(), full->NumParameters());
      EXPECT_EQ(part->NumActivatedParameters(), full->NumActivatedParameters());
      int shards = 0;
      for (size_t i = 0; i < full->params().size(); ++i) {
        const ModelParam& p = part->params()[i];
        const ModelParam& f = full->params()[i];
        SCOPED_TRACE(p.name);
        EXPECT_EQ(part->GlobalShape(p), f.master.shape());
        if (!p.expert_shard) {
          EXPECT_TRUE(AllEqual(p.master, f.master));
          continue;
        }
        ++shards;
        const bool w2 = p.name.find("w2") != std::string::npos;
        EXPECT_EQ(p.ffn_axis, w2 ? 1 : 2);
        const Shape local = w2 ? Shape{1, h / s, 8} : Shape{1, 8, h / s};
        ASSERT_EQ(p.master.shape(), local);
        EXPECT_EQ(p.grad.shape(), local);
        EXPECT_EQ(p.m.shape(), local);
        EXPECT_EQ(p.v.shape(), local);
        const TensorView expert = f.master.view().Rows(rank / s, rank / s + 1);
        EXPECT_EQ(testing::ToDoubles(p.master), Slice(expert, p.ffn_axis, s, rank % s));
        // ShardOf cuts the same slice out of the global tensor.
        MOE_ASSERT_OK_AND_ASSIGN(Tensor cut, Tensor::Empty(local, DType::kF32, Device::Cpu()));
        MOE_ASSERT_OK(part->ShardOf(p, f.master, cut));
        EXPECT_TRUE(AllEqual(cut, p.master));
        EXPECT_THAT(part->ShardOf(p, p.master, cut),
                    StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("global")));
      }
      EXPECT_EQ(shards, 6);
    }
  }
}

TEST(DistributedModelTest, ShardsOfOneExpertDiffer) {
  // Guards the test above against a slice that ignores the shard index.
  ExecContext& ctx = ExecContext::Cpu();
  NoCollectives r0(0, 4), r1(1, 4);
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> a, Model::Create(Spec(2), Device::Cpu(), &r0));
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> b, Model::Create(Spec(2), Device::Cpu(), &r1));
  MOE_ASSERT_OK(a->Init(ctx, 5));
  MOE_ASSERT_OK(b->Init(ctx, 5));
  for (size_t i = 0; i < a->params().size(); ++i) {
    if (!a->params()[i].expert_shard) continue;
    EXPECT_FALSE(AllEqual(a->params()[i].master, b->params()[i].master)) << a->params()[i].name;
  }
}

TEST(DistributedModelTest, ExpertsMustDivideOverTheWorld) {
  for (const auto& [experts, world] : {std::pair{8, 3}, std::pair{3, 8}, std::pair{6, 4}}) {
    SCOPED_TRACE(::testing::Message() << experts << " experts on " << world << " ranks");
    NoCollectives comm(0, world);
    EXPECT_THAT(Model::Create(Spec(experts), Device::Cpu(), &comm).status(),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr(absl::StrCat("model.moe.num_experts: got ", experts))));
  }
  NoCollectives comm(0, 4);
  EXPECT_THAT(Model::Create(Spec(8), Device::Cpu(), &comm, /*node_size=*/3).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("node_size")));
  // Fewer experts than ranks: s = W / E must divide H.
  NoCollectives eight(0, 8);
  MOE_EXPECT_OK(Model::Create(Spec(4, 6), Device::Cpu(), &eight).status());
  EXPECT_THAT(Model::Create(Spec(2, 6), Device::Cpu(), &eight).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("model.moe.ffn_dim: got 6, expected a multiple of world size / "
                                 "experts = 4")));
}

std::vector<std::string> Names(const std::vector<ParallelMode>& modes) {
  std::vector<std::string> names;
  for (const ParallelMode& mode : modes) names.push_back(ParallelModeName(mode));
  return names;
}

TEST(ParallelCandidatesTest, FlatAlwaysTwoDimOnlyWithSeveralNodesOfSeveralRanks) {
  EXPECT_THAT(Names(ParallelCandidates(4, 1)),
              ElementsAre("r0.d1.flat", "r1.d1.flat", "r1.d2.flat"));
  EXPECT_THAT(Names(ParallelCandidates(4, 4)),
              ElementsAre("r0.d1.flat", "r1.d1.flat", "r1.d2.flat"));
  EXPECT_THAT(Names(ParallelCandidates(4, 2)),
              ElementsAre("r0.d1.flat", "r1.d1.flat", "r1.d2.flat", "r1.d1.2dh", "r1.d2.2dh"));
  EXPECT_THAT(Names(ParallelCandidates(8, 2)), ::testing::SizeIs(5));
  EXPECT_THAT(Names(ParallelCandidates(4, 1, 1)),
              ElementsAre("r0.d1.flat", "r1.d1.flat", "r1.d2.flat"));
}

TEST(ParallelCandidatesTest, ShardedExpertsTryEveryDivisorOfTheShardCount) {
  EXPECT_THAT(Names(ParallelCandidates(4, 1, 2)),
              ElementsAre("r0.d1.flat", "r1.d1.flat", "r1.d2.flat", "r2.d1.flat", "r2.d2.flat"));
  EXPECT_THAT(Names(ParallelCandidates(8, 1, 4)),
              ElementsAre("r0.d1.flat", "r1.d1.flat", "r1.d2.flat", "r2.d1.flat", "r2.d2.flat",
                          "r4.d1.flat", "r4.d2.flat"));
  EXPECT_THAT(Names(ParallelCandidates(4, 2, 2)),
              ElementsAre("r0.d1.flat", "r1.d1.flat", "r1.d2.flat", "r2.d1.flat", "r2.d2.flat",
                          "r1.d1.2dh", "r1.d2.2dh", "r2.d1.2dh", "r2.d2.2dh"));
}

}  // namespace
}  // namespace smoe
