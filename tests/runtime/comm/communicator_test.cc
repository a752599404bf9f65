#include "runtime/comm/communicator.h"

#include "gtest/gtest.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/compare.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

TEST(SingleRankCommunicatorTest, CollectivesAreIdentities) {
  Communicator* comm = SingleRankCommunicator();
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->size(), 1);
  ExecContext& ctx = ExecContext::Cpu();
  Tensor x = *Tensor::Empty({5}, DType::kF32, Device::Cpu());
  MOE_ASSERT_OK(FillNormal(ctx, x, 1, 0, 0.0f, 1.0f));
  const std::vector<double> before = testing::ToDoubles(x);
  MOE_ASSERT_OK(comm->AllReduceSum(ctx, x));
  EXPECT_EQ(testing::ToDoubles(x), before);
  Tensor y = *Tensor::Empty({5}, DType::kF32, Device::Cpu());
  MOE_ASSERT_OK(comm->AllGather(ctx, x, y));
  EXPECT_TRUE(testing::AllEqual(x, y));
  MOE_EXPECT_OK(comm->Barrier());
}

}  // namespace
}  // namespace smoe
