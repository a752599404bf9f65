// StagedCommunicator on host buffers (label unit): they reach the host communicator untouched,
// results and errors are the host communicator's, Split wraps the split group.
#include "runtime/comm/staged_communicator.h"

#include <vector>

#include "gtest/gtest.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/runtime/comm/mirror_communicator.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::smoe::testing::MirrorHostCommunicator;

TEST(StagedCommunicatorTest, RankAndSizeAreTheHostGroups) {
  MirrorHostCommunicator fake(/*rank=*/1, /*size=*/3);
  std::unique_ptr<Communicator> comm = StagedCommunicator(&fake);
  EXPECT_EQ(comm->rank(), 1);
  EXPECT_EQ(comm->size(), 3);
}

TEST(StagedCommunicatorTest, HostBuffersPassStraightThrough) {
  MirrorHostCommunicator fake(1, 2);
  std::unique_ptr<Communicator> comm = StagedCommunicator(&fake);
  ExecContext& ctx = ExecContext::Cpu();
  Tensor values = *Tensor::Empty({7}, DType::kF32, Device::Cpu());
  MOE_ASSERT_OK(FillUniform(ctx, values, 3, 0, -1.0f, 1.0f));
  std::vector<float> before(values.data<float>(), values.data<float>() + 7);
  MOE_ASSERT_OK(comm->AllReduceSum(ctx, values));
  ASSERT_EQ(fake.seen.size(), 1u);
  EXPECT_EQ(fake.seen[0], values.data());  // no staging copy for host memory
  for (int i = 0; i < 7; ++i) EXPECT_EQ(values.data<float>()[i], 2.0f * before[i]);

  Tensor all = *Tensor::Empty({14}, DType::kF32, Device::Cpu());
  MOE_ASSERT_OK(comm->AllGather(ctx, values, all));
  ASSERT_EQ(fake.seen.size(), 3u);
  EXPECT_EQ(fake.seen[1], values.data());
  EXPECT_EQ(fake.seen[2], all.data());
  for (int i = 0; i < 14; ++i) EXPECT_EQ(all.data<float>()[i], values.data<float>()[i % 7]);
}

TEST(StagedCommunicatorTest, ReduceScatterAndAllToAllVMatchTheHostCommunicator) {
  MirrorHostCommunicator fake(1, 2);
  std::unique_ptr<Communicator> comm = StagedCommunicator(&fake);
  ExecContext& ctx = ExecContext::Cpu();
  Tensor in = *Tensor::Empty({6}, DType::kF32, Device::Cpu());
  Tensor out = *Tensor::Empty({3}, DType::kF32, Device::Cpu());
  MOE_ASSERT_OK(FillNormal(ctx, in, 5, 0, 0.0f, 1.0f));
  MOE_ASSERT_OK(comm->ReduceScatterSum(ctx, in, out));
  for (int j = 0; j < 3; ++j) EXPECT_EQ(out.data<float>()[j], 2.0f * in.data<float>()[3 + j]);

  // Rank 1 of 2 mirrored ranks: sends 2 then 3 elements; receives segment 1 (3 elements) twice.
  Tensor send = *Tensor::Empty({5}, DType::kI64, Device::Cpu());
  Tensor recv = *Tensor::Empty({6}, DType::kI64, Device::Cpu());
  for (int i = 0; i < 5; ++i) send.data<int64_t>()[i] = 10 + i;
  const std::vector<int64_t> send_counts = {2, 3}, recv_counts = {3, 3};
  MOE_ASSERT_OK(comm->AllToAllV(ctx, send, send_counts, recv, recv_counts));
  const std::vector<int64_t> expected = {12, 13, 14, 12, 13, 14};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(recv.data<int64_t>()[i], expected[i]);
}

TEST(StagedCommunicatorTest, HostErrorsComeBackUnchanged) {
  MirrorHostCommunicator fake(0, 2);
  std::unique_ptr<Communicator> comm = StagedCommunicator(&fake);
  ExecContext& ctx = ExecContext::Cpu();
  Tensor in = *Tensor::Empty({3}, DType::kF32, Device::Cpu());
  Tensor out = *Tensor::Empty({5}, DType::kF32, Device::Cpu());
  MOE_ASSERT_OK(Fill(ctx, in, 1.5));
  EXPECT_THAT(comm->AllGather(ctx, in, out), testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                                               ::testing::HasSubstr("out.numel")));
  const std::vector<int64_t> bad = {1, 1};
  EXPECT_THAT(comm->AllToAllV(ctx, in, bad, in, bad),
              testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                ::testing::HasSubstr("sum of send_counts")));
}

TEST(StagedCommunicatorTest, SplitWrapsTheSplitHostGroupAndBarrierForwards) {
  MirrorHostCommunicator fake(0, 2);
  std::unique_ptr<Communicator> comm = StagedCommunicator(&fake);
  MOE_ASSERT_OK(comm->Barrier());
  EXPECT_EQ(fake.barriers, 1);
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Communicator> sub, comm->Split(/*color=*/2, 0));
  EXPECT_EQ(fake.splits, 1);
  EXPECT_EQ(sub->size(), 3);  // the fake's split group of color 2
  EXPECT_EQ(sub->rank(), 0);
  // The sub-group works after the parent is gone (it owns the split host group).
  comm.reset();
  ExecContext& ctx = ExecContext::Cpu();
  Tensor counts = *Tensor::Empty({4}, DType::kI32, Device::Cpu());
  for (int i = 0; i < 4; ++i) counts.data<int32_t>()[i] = i + 1;
  MOE_ASSERT_OK(sub->AllReduceSum(ctx, counts));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(counts.data<int32_t>()[i], 3 * (i + 1));
}

TEST(StagedCommunicatorTest, OverSingleRankIsTheIdentity) {
  std::unique_ptr<Communicator> comm = StagedCommunicator(SingleRankCommunicator());
  ExecContext& ctx = ExecContext::Cpu();
  EXPECT_EQ(comm->size(), 1);
  Tensor x = *Tensor::Empty({9}, DType::kF32, Device::Cpu());
  Tensor y = *Tensor::Empty({9}, DType::kF32, Device::Cpu());
  MOE_ASSERT_OK(FillUniform(ctx, x, 11, 0, -2.0f, 2.0f));
  std::vector<float> before(x.data<float>(), x.data<float>() + 9);
  MOE_ASSERT_OK(comm->AllReduceSum(ctx, x));
  MOE_ASSERT_OK(comm->AllGather(ctx, x, y));
  for (int i = 0; i < 9; ++i) {
    EXPECT_EQ(x.data<float>()[i], before[i]);
    EXPECT_EQ(y.data<float>()[i], before[i]);
  }
  Tensor empty = *Tensor::Empty({0}, DType::kF32, Device::Cpu());
  const std::vector<int64_t> zero = {0};
  MOE_EXPECT_OK(comm->AllToAllV(ctx, empty, zero, empty, zero));
}

}  // namespace
}  // namespace smoe
