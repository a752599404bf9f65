// The host-sync budget's accounting (runtime/train/model/sync_budget.h) on the CPU: the ledger
// with a fake sync counter standing in for a GPU run's, and the model's charges on the CPU
// backend. The budget itself binds on CUDA: sync_budget_cuda_test.cc.
#include "runtime/train/model/sync_budget.h"

#include <memory>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/core/philox.h"
#include "runtime/tensor/tensor_ops.h"
#include "runtime/train/model/model.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::StatusIs;
using Phase = SyncLedger::Phase;

// A fake device: syncs are what the test says they are.
struct FakeSyncs {
  int64_t count = 0;
  void Sync(int n = 1) { count += n; }
};

TEST(SyncBudgetTest, StepTotal) {
  const SyncBudget budget;
  // 4 MoE layers, 3 micro-batches: 3 x 4 offsets, one read, 2 x 4 statistics.
  EXPECT_EQ(budget.StepTotal(4, 3), 12 + 1 + 8);
  EXPECT_EQ(budget.StepTotal(4, 3, /*stats=*/false), 13);
  EXPECT_EQ(budget.StepTotal(0, 1), 1);  // a dense model reads once per step
}

TEST(SyncLedgerTest, ChargesEachScopeToItsPhase) {
  FakeSyncs gpu;
  SyncLedger ledger([&gpu] { return gpu.count; });
  gpu.Sync(5);  // before any scope: not charged
  {
    SyncLedger::Scope s = SyncLedger::Charge(&ledger, Phase::kForward);
    gpu.Sync(2);
  }
  { SyncLedger::Scope s = SyncLedger::Charge(&ledger, Phase::kBackward); }
  {
    SyncLedger::Scope s = SyncLedger::Charge(&ledger, Phase::kStepRead);
    gpu.Sync();
  }
  gpu.Sync(3);  // between scopes: not charged
  EXPECT_EQ(ledger.count(Phase::kForward), 2);
  EXPECT_EQ(ledger.count(Phase::kBackward), 0);
  EXPECT_EQ(ledger.count(Phase::kStepRead), 1);
  EXPECT_EQ(ledger.count(Phase::kStats), 0);
}

TEST(SyncLedgerTest, InnerScopesAndNullLedgersChargeNothing) {
  FakeSyncs gpu;
  SyncLedger ledger([&gpu] { return gpu.count; });
  {
    SyncLedger::Scope outer = SyncLedger::Charge(&ledger, Phase::kForward);
    gpu.Sync();
    {
      SyncLedger::Scope inner = SyncLedger::Charge(&ledger, Phase::kStats);
      gpu.Sync();
    }
    SyncLedger::Scope none = SyncLedger::Charge(nullptr, Phase::kBackward);
    gpu.Sync();
  }
  EXPECT_EQ(ledger.count(Phase::kForward), 3);  // the outer scope saw all three
  EXPECT_EQ(ledger.count(Phase::kStats), 0);
  EXPECT_EQ(ledger.count(Phase::kBackward), 0);
  ledger.Reset();
  EXPECT_EQ(ledger.count(Phase::kForward), 0);
  EXPECT_EQ(ledger.micro_batches(), 0);
}

// A step as the CUDA path runs it, on the fake: two micro-batches over three MoE layers.
void RunFakeStep(SyncLedger& ledger, FakeSyncs& gpu, int moe_layers, int backward_syncs) {
  for (int micro = 0; micro < 2; ++micro) {
    {
      SyncLedger::Scope s = SyncLedger::Charge(&ledger, Phase::kForward);
      for (int l = 0; l < moe_layers; ++l) gpu.Sync();  // the expert offsets
    }
    {
      SyncLedger::Scope s = SyncLedger::Charge(&ledger, Phase::kBackward);
      gpu.Sync(backward_syncs);
    }
    ledger.AddMicroBatch();
  }
  {
    SyncLedger::Scope s = SyncLedger::Charge(&ledger, Phase::kStepRead);
    gpu.Sync();
  }
  {
    SyncLedger::Scope s = SyncLedger::Charge(&ledger, Phase::kStats);
    gpu.Sync(2 * moe_layers);
  }
  ledger.AddStep();
}

TEST(SyncLedgerTest, CheckAcceptsTheBudgetedStepAndNamesEveryOverrun) {
  FakeSyncs gpu;
  SyncLedger ledger([&gpu] { return gpu.count; });
  RunFakeStep(ledger, gpu, 3, 0);
  RunFakeStep(ledger, gpu, 3, 0);
  MOE_EXPECT_OK(ledger.Check(SyncBudget(), 3));
  EXPECT_EQ(gpu.count, 2 * SyncBudget().StepTotal(3, 2));

  // The old accounting: a sync for the aux values in every forward and one in a backward.
  ledger.Reset();
  gpu.count = 0;
  RunFakeStep(ledger, gpu, 3, 1);
  {
    SyncLedger::Scope s = SyncLedger::Charge(&ledger, Phase::kForward);
    gpu.Sync(3);
  }
  EXPECT_THAT(ledger.Check(SyncBudget(), 3),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("forward: got 9 host syncs, expected at most 6"),
                             HasSubstr("backward: got 2 host syncs, expected at most 0"),
                             HasSubstr("2 micro-batches and 1 steps with 3 MoE layers"))));
}

// The model's wiring on the CPU backend: forward and backward passes are charged and counted, and
// the CPU path stays within the budget (it syncs less than CUDA: most of its steps need none).
TEST(SyncLedgerTest, ModelChargesItsPassesOnTheCpu) {
  ModelSpec spec;
  spec.vocab_size = 17;
  spec.num_layers = 3;
  spec.model_dim = 12;
  spec.attention = DiffQkvConfig{12, 4, 1, 2, 4, 0, true, 10000.0};
  spec.moe.ffn_dim = 5;
  spec.moe.num_experts = 3;
  spec.moe.top_k = 1;
  spec.moe.aux.lbl_coef = 0.1f;
  spec.dense_layers = {1};
  spec.dense_ffn_dim = 7;
  ExecContext& ctx = ExecContext::Cpu();
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> model, Model::Create(spec, Device::Cpu()));
  MOE_ASSERT_OK(model->Init(ctx, 3));
  Tensor ids = *Tensor::Empty({8}, DType::kI32, Device::Cpu());
  for (int i = 0; i < 8; ++i) ids.data<int32_t>()[i] = static_cast<int32_t>(PhiloxBits(4, i) % 17);
  SyncLedger ledger([&ctx] { return ctx.host_syncs(); });
  model->set_sync_ledger(&ledger);
  MOE_ASSERT_OK_AND_ASSIGN(Tensor sums,
                           Tensor::Empty({model->StepScalarCount()}, DType::kF32, Device::Cpu()));
  MOE_ASSERT_OK(Fill(ctx, sums, 0.0));
  for (int micro = 0; micro < 2; ++micro) {
    MOE_ASSERT_OK(model->ForwardBackwardAccumulate(ctx, ids, ids, 2, 4, 0.5f, 0.5f, sums));
  }
  EXPECT_EQ(ledger.micro_batches(), 2);
  ledger.AddStep();
  MOE_EXPECT_OK(ledger.Check(SyncBudget(), 2));
  // The sums hold the mean loss and the MoE layers' aux values; the dense layer's stay zero.
  const Model::StepScalars scalars = model->ReadStepScalars(sums.data<float>());
  EXPECT_GT(scalars.loss, 1.0);
  EXPECT_GT(scalars.layer_aux[0].lbl, 0.0);
  EXPECT_EQ(scalars.layer_aux[1].lbl, 0.0);
  EXPECT_NEAR(scalars.aux_total, scalars.layer_aux[0].total + scalars.layer_aux[2].total, 1e-6);
  // ForwardBackward reads the same values once.
  MOE_ASSERT_OK_AND_ASSIGN(ModelLoss once, model->ForwardBackward(ctx, ids, ids, 2, 4, 0.5f));
  EXPECT_NEAR(once.loss, scalars.loss, 1e-5);
  EXPECT_NEAR(model->LastAuxLosses()[2].lbl, scalars.layer_aux[2].lbl, 1e-5);
}

}  // namespace
}  // namespace smoe
