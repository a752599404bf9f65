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

ModelSpec Spec(int experts) {
  ModelSpec spec;
  spec.vocab_size = 19;
  spec.num_layers = 3;
  spec.model_dim = 8;
  spec.tie_embeddings = false;
  spec.attention = DiffQkvConfig{8, 2, 1, 2, 4, 4, true, 10000.0};
  spec.moe.ffn_dim = 6;
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

TEST(DistributedModelTest, ExpertsMustDivideOverTheWorld) {
  for (const auto& [experts, world] : {std::pair{8, 3}, std::pair{4, 8}, std::pair{6, 4}}) {
    SCOPED_TRACE(::testing::Message() << experts << " experts on " << world << " ranks");
    NoCollectives comm(0, world);
    EXPECT_THAT(Model::Create(Spec(experts), Device::Cpu(), &comm).status(),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr(absl::StrCat("model.moe.num_experts: got ", experts))));
  }
  NoCollectives comm(0, 4);
  EXPECT_THAT(Model::Create(Spec(8), Device::Cpu(), &comm, /*node_size=*/3).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("node_size")));
}

std::vector<std::string> Names(const std::vector<ParallelMode>& modes) {
  std::vector<std::string> names;
  for (const ParallelMode& mode : modes) names.push_back(ParallelModeName(mode));
  return names;
}

TEST(ParallelCandidatesTest, FlatAlwaysTwoDimOnlyWithSeveralNodesOfSeveralRanks) {
  EXPECT_THAT(Names(ParallelCandidates(4, 1)), ElementsAre("r0.d1.flat", "r1.d1.flat", "r1.d2.flat"));
  EXPECT_THAT(Names(ParallelCandidates(4, 4)), ElementsAre("r0.d1.flat", "r1.d1.flat", "r1.d2.flat"));
  EXPECT_THAT(Names(ParallelCandidates(4, 2)),
              ElementsAre("r0.d1.flat", "r1.d1.flat", "r1.d2.flat", "r1.d1.2dh", "r1.d2.2dh"));
  EXPECT_THAT(Names(ParallelCandidates(8, 2)), ::testing::SizeIs(5));
}

}  // namespace
}  // namespace smoe
