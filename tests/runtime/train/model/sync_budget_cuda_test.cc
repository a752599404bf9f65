// The host-sync budget on CUDA (runtime/train/model/sync_budget.h): a bf16 model's training passes
// make exactly one sync per MoE layer forward and none in the backward (trainer_cuda_test checks a
// training run's steps against the planned count). Skips itself without a GPU.
#include <memory>

#include "gtest/gtest.h"
#include "runtime/core/philox.h"
#include "runtime/tensor/tensor_ops.h"
#include "runtime/train/model/model.h"
#include "runtime/train/model/sync_budget.h"
#include "tests/testing/parity.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using Phase = SyncLedger::Phase;

TEST(SyncBudgetCudaTest, ModelPassesKeepTheBudget) {
  MOE_SKIP_WITHOUT_CUDA();
  ModelSpec spec;
  spec.vocab_size = 64;
  spec.num_layers = 3;
  spec.model_dim = 128;
  spec.dtype = DType::kBF16;
  spec.attention = DiffQkvConfig{128, 4, 1, 2, 64, 0, true, 10000.0};
  spec.moe.ffn_dim = 64;
  spec.moe.num_experts = 4;
  spec.moe.top_k = 1;
  spec.moe.aux.lbl_coef = 0.1f;
  spec.moe.aux.z_coef = 0.01f;
  spec.moe.aux.top1_lbl_coef = 0.01f;
  spec.dense_layers = {1};
  spec.dense_ffn_dim = 64;
  const int moe_layers = 2;
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ExecContext> ctx, ExecContext::Create(Device::Cuda()));
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Model> model, Model::Create(spec, Device::Cuda()));
  MOE_ASSERT_OK(model->Init(*ctx, 7));
  const int64_t batch = 2, seq = 33;
  Tensor host_ids = *Tensor::Empty({batch * seq}, DType::kI32, Device::Cpu());
  for (int i = 0; i < batch * seq; ++i) {
    host_ids.data<int32_t>()[i] = static_cast<int32_t>(PhiloxBits(9, i) % 64);
  }
  MOE_ASSERT_OK_AND_ASSIGN(Tensor ids, CopyTo(*ctx, host_ids, Device::Cuda()));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor sums,
                           Tensor::Empty({model->StepScalarCount()}, DType::kF32, Device::Cuda()));
  SyncLedger ledger([&ctx] { return ctx->host_syncs(); });
  model->set_sync_ledger(&ledger);
  for (int step = 0; step < 2; ++step) {
    MOE_ASSERT_OK(model->ZeroGrads(*ctx));
    MOE_ASSERT_OK(Fill(*ctx, sums, 0.0));
    for (int micro = 0; micro < 3; ++micro) {
      MOE_ASSERT_OK(
          model->ForwardBackwardAccumulate(*ctx, ids, ids, batch, seq, 1.0f / 3, 1.0f / 3, sums));
    }
    Tensor host;
    {
      SyncLedger::Scope read = SyncLedger::Charge(&ledger, Phase::kStepRead);
      MOE_ASSERT_OK_AND_ASSIGN(host, CopyTo(*ctx, sums, Device::Cpu()));
    }
    MOE_ASSERT_OK(model->MoEStats(*ctx).status());
    ledger.AddStep();
    const Model::StepScalars scalars = model->ReadStepScalars(host.data<float>());
    EXPECT_GT(scalars.loss, 1.0);
    EXPECT_GT(scalars.layer_aux[0].lbl, 0.0);
  }
  MOE_EXPECT_OK(ledger.Check(SyncBudget(), moe_layers));
  EXPECT_EQ(ledger.count(Phase::kForward), 2 * 3 * moe_layers) << "one per MoE layer forward";
  EXPECT_EQ(ledger.count(Phase::kBackward), 0) << "none in any backward";
  EXPECT_EQ(ledger.count(Phase::kStepRead), 2);
}

}  // namespace
}  // namespace smoe
