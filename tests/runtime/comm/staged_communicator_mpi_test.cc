// StagedCommunicator over MPI's world on host buffers (label mpi, mpirun -np 2): the wrapper
// gives MPI's results, also on a split group.
#include <vector>

#include "gtest/gtest.h"
#include "runtime/comm/staged_communicator.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

TEST(StagedCommunicatorMpiTest, CollectivesOverTheWorld) {
  MOE_ASSERT_OK_AND_ASSIGN(Communicator * world, MpiWorldCommunicator());
  ASSERT_GE(world->size(), 2) << "run with mpirun -np 2 or more";
  std::unique_ptr<Communicator> comm = StagedCommunicator(world);
  ASSERT_EQ(comm->rank(), world->rank());
  ASSERT_EQ(comm->size(), world->size());
  ExecContext& ctx = ExecContext::Cpu();
  const int w = comm->size(), me = comm->rank();

  Tensor sum = *Tensor::Empty({11}, DType::kF32, Device::Cpu());
  for (int i = 0; i < 11; ++i) sum.data<float>()[i] = 0.25f * i + me;
  MOE_ASSERT_OK(comm->AllReduceSum(ctx, sum));
  for (int i = 0; i < 11; ++i) {
    ASSERT_FLOAT_EQ(sum.data<float>()[i], 0.25f * i * w + w * (w - 1) / 2.0f);
  }

  Tensor mine = *Tensor::Empty({2}, DType::kI64, Device::Cpu());
  Tensor all = *Tensor::Empty({2 * w}, DType::kI64, Device::Cpu());
  mine.data<int64_t>()[0] = 100 * me;
  mine.data<int64_t>()[1] = 100 * me + 1;
  MOE_ASSERT_OK(comm->AllGather(ctx, mine, all));
  for (int r = 0; r < w; ++r) {
    ASSERT_EQ(all.data<int64_t>()[2 * r], 100 * r);
    ASSERT_EQ(all.data<int64_t>()[2 * r + 1], 100 * r + 1);
  }

  Tensor in = *Tensor::Empty({3 * w}, DType::kI32, Device::Cpu());
  Tensor out = *Tensor::Empty({3}, DType::kI32, Device::Cpu());
  for (int i = 0; i < 3 * w; ++i) in.data<int32_t>()[i] = i + 10 * me;
  MOE_ASSERT_OK(comm->ReduceScatterSum(ctx, in, out));
  for (int j = 0; j < 3; ++j)
    ASSERT_EQ(out.data<int32_t>()[j], w * (3 * me + j) + 10 * w * (w - 1) / 2);

  // Rank s sends s + d + 1 elements to rank d, valued 1000 * s + 10 * d + position.
  std::vector<int64_t> send_counts(w), recv_counts(w);
  int64_t send_total = 0, recv_total = 0;
  for (int d = 0; d < w; ++d) send_total += send_counts[d] = me + d + 1;
  for (int s = 0; s < w; ++s) recv_total += recv_counts[s] = s + me + 1;
  Tensor send = *Tensor::Empty({send_total}, DType::kF32, Device::Cpu());
  Tensor recv = *Tensor::Empty({recv_total}, DType::kF32, Device::Cpu());
  for (int d = 0, at = 0; d < w; ++d) {
    for (int p = 0; p < send_counts[d]; ++p)
      send.data<float>()[at++] = 1000.0f * me + 10.0f * d + p;
  }
  MOE_ASSERT_OK(comm->AllToAllV(ctx, send, send_counts, recv, recv_counts));
  for (int s = 0, at = 0; s < w; ++s) {
    for (int p = 0; p < recv_counts[s]; ++p) {
      ASSERT_EQ(recv.data<float>()[at++], 1000.0f * s + 10.0f * me + p);
    }
  }
  MOE_ASSERT_OK(comm->Barrier());
}

TEST(StagedCommunicatorMpiTest, SplitGroupsReduceSeparately) {
  MOE_ASSERT_OK_AND_ASSIGN(Communicator * world, MpiWorldCommunicator());
  std::unique_ptr<Communicator> comm = StagedCommunicator(world);
  const int me = comm->rank();
  // Two groups when there are at least 2 ranks: even and odd world ranks.
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Communicator> sub, comm->Split(me % 2, me));
  ASSERT_EQ(sub->rank(), me / 2);
  ExecContext& ctx = ExecContext::Cpu();
  Tensor x = *Tensor::Empty({1}, DType::kI64, Device::Cpu());
  x.data<int64_t>()[0] = me;
  MOE_ASSERT_OK(sub->AllReduceSum(ctx, x));
  int64_t expected = 0;
  for (int r = me % 2; r < comm->size(); r += 2) expected += r;
  EXPECT_EQ(x.data<int64_t>()[0], expected);
}

}  // namespace
}  // namespace smoe
