// ExecContext: the host-sync counter (the basis of the per-step sync budget).
#include "runtime/device/exec_context.h"

#include <gtest/gtest.h>

#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

TEST(ExecContextTest, CountsEverySynchronize) {
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ExecContext> ctx, ExecContext::Create(Device::Cpu()));
  EXPECT_EQ(ctx->host_syncs(), 0);
  ASSERT_TRUE(ctx->Synchronize().ok());
  ASSERT_TRUE(ctx->Synchronize().ok());
  EXPECT_EQ(ctx->host_syncs(), 2);
}

TEST(ExecContextTest, HostCopiesOnTheCpuAreNotSyncs) {
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ExecContext> ctx, ExecContext::Create(Device::Cpu()));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor a, Tensor::Empty({16}, DType::kF32, Device::Cpu()));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor b, Tensor::Empty({16}, DType::kF32, Device::Cpu()));
  ASSERT_TRUE(Fill(*ctx, a, 1.5).ok());
  ASSERT_TRUE(Copy(*ctx, a, b).ok());
  EXPECT_EQ(ctx->host_syncs(), 0);
}

// Each context counts its own syncs.
TEST(ExecContextTest, CountersArePerContext) {
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ExecContext> a, ExecContext::Create(Device::Cpu()));
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ExecContext> b, ExecContext::Create(Device::Cpu()));
  ASSERT_TRUE(a->Synchronize().ok());
  EXPECT_EQ(a->host_syncs(), 1);
  EXPECT_EQ(b->host_syncs(), 0);
}

}  // namespace
}  // namespace smoe
