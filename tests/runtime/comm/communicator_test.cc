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
  const int64_t five[] = {5};
  MOE_ASSERT_OK(comm->AllToAllV(ctx, x, five, y, five));
  EXPECT_TRUE(testing::AllEqual(x, y));
  MOE_ASSERT_OK(comm->ReduceScatterSum(ctx, x, y));
  EXPECT_TRUE(testing::AllEqual(x, y));
  const int64_t four[] = {4};
  EXPECT_THAT(comm->AllToAllV(ctx, x, four, y, five),
              testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                ::testing::HasSubstr("sum of send_counts")));
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Communicator> sub, comm->Split(3, 0));
  EXPECT_EQ(sub->size(), 1);
}

}  // namespace
}  // namespace smoe
