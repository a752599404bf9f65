// Runs under mpirun (CTest label mpi): every rank checks the collectives' results.
#include "gtest/gtest.h"
#include "runtime/comm/communicator.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/compare.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

TEST(MpiCommunicatorTest, AllReduceSumsOverRanks) {
  MOE_ASSERT_OK_AND_ASSIGN(Communicator * comm, MpiWorldCommunicator());
  ASSERT_GE(comm->size(), 2) << "run with mpirun -np 2 or more";
  ExecContext& ctx = ExecContext::Cpu();
  Tensor counts = *Tensor::Empty({96}, DType::kI64, Device::Cpu());
  Tensor values = *Tensor::Empty({33}, DType::kF32, Device::Cpu());
  for (int i = 0; i < 96; ++i) counts.data<int64_t>()[i] = (comm->rank() + 1) * i;
  for (int i = 0; i < 33; ++i) values.data<float>()[i] = 0.5f * comm->rank() + i;
  MOE_ASSERT_OK(comm->AllReduceSum(ctx, counts));
  MOE_ASSERT_OK(comm->AllReduceSum(ctx, values));
  const int64_t w = comm->size();
  for (int i = 0; i < 96; ++i) ASSERT_EQ(counts.data<int64_t>()[i], i * w * (w + 1) / 2);
  for (int i = 0; i < 33; ++i) {
    ASSERT_FLOAT_EQ(values.data<float>()[i], 0.5f * w * (w - 1) / 2 + float(i) * w);
  }
}

TEST(MpiCommunicatorTest, AllGatherConcatenatesInRankOrder) {
  MOE_ASSERT_OK_AND_ASSIGN(Communicator * comm, MpiWorldCommunicator());
  ExecContext& ctx = ExecContext::Cpu();
  Tensor mine = *Tensor::Empty({3}, DType::kI32, Device::Cpu());
  Tensor all = *Tensor::Empty({3 * comm->size()}, DType::kI32, Device::Cpu());
  MOE_ASSERT_OK(Fill(ctx, mine, comm->rank() * 10));
  MOE_ASSERT_OK(comm->AllGather(ctx, mine, all));
  for (int r = 0; r < comm->size(); ++r) {
    for (int j = 0; j < 3; ++j) ASSERT_EQ(all.data<int32_t>()[3 * r + j], r * 10);
  }
  Tensor wrong = *Tensor::Empty({2}, DType::kI32, Device::Cpu());
  EXPECT_THAT(
      comm->AllGather(ctx, mine, wrong),
      testing::StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("out.numel")));
  MOE_EXPECT_OK(comm->Barrier());
}

TEST(MpiCommunicatorTest, ReduceScatterSumsEachRanksSegment) {
  MOE_ASSERT_OK_AND_ASSIGN(Communicator * comm, MpiWorldCommunicator());
  ExecContext& ctx = ExecContext::Cpu();
  const int w = comm->size(), n = 5;
  Tensor in = *Tensor::Empty({w * n}, DType::kF32, Device::Cpu());
  Tensor out = *Tensor::Empty({n}, DType::kF32, Device::Cpu());
  for (int i = 0; i < w * n; ++i) in.data<float>()[i] = float(i) + 100.0f * comm->rank();
  MOE_ASSERT_OK(comm->ReduceScatterSum(ctx, in, out));
  for (int j = 0; j < n; ++j) {
    const float expected = float(w) * float(comm->rank() * n + j) + 100.0f * w * (w - 1) / 2;
    ASSERT_FLOAT_EQ(out.data<float>()[j], expected);
  }
}

// Rank s sends (s + d) % 3 elements to rank d, each valued 1000 * s + 10 * d + position.
TEST(MpiCommunicatorTest, AllToAllVDeliversEverySegmentInRankOrder) {
  MOE_ASSERT_OK_AND_ASSIGN(Communicator * comm, MpiWorldCommunicator());
  ExecContext& ctx = ExecContext::Cpu();
  const int w = comm->size(), me = comm->rank();
  auto count = [](int src, int dst) { return int64_t{(src + dst) % 3}; };
  std::vector<int64_t> send_counts(w), recv_counts(w);
  int64_t send_total = 0, recv_total = 0;
  for (int r = 0; r < w; ++r) {
    send_counts[r] = count(me, r);
    recv_counts[r] = count(r, me);
    send_total += send_counts[r];
    recv_total += recv_counts[r];
  }
  Tensor send = *Tensor::Empty({send_total}, DType::kI64, Device::Cpu());
  Tensor recv = *Tensor::Empty({recv_total}, DType::kI64, Device::Cpu());
  int64_t at = 0;
  for (int d = 0; d < w; ++d) {
    for (int64_t j = 0; j < send_counts[d]; ++j)
      send.data<int64_t>()[at++] = 1000 * me + 10 * d + j;
  }
  MOE_ASSERT_OK(comm->AllToAllV(ctx, send, send_counts, recv, recv_counts));
  at = 0;
  for (int s = 0; s < w; ++s) {
    for (int64_t j = 0; j < recv_counts[s]; ++j) {
      ASSERT_EQ(recv.data<int64_t>()[at++], 1000 * s + 10 * me + j) << "from rank " << s;
    }
  }
  std::vector<int64_t> short_counts(w, 0);
  EXPECT_THAT(comm->AllToAllV(ctx, send, short_counts, recv, recv_counts),
              testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                ::testing::HasSubstr("sum of send_counts")));
}

TEST(MpiCommunicatorTest, SplitFormsSubgroupsOrderedByKey) {
  MOE_ASSERT_OK_AND_ASSIGN(Communicator * comm, MpiWorldCommunicator());
  ExecContext& ctx = ExecContext::Cpu();
  const int me = comm->rank();
  // Even and odd ranks, ranked in reverse order of their world rank.
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Communicator> sub, comm->Split(me % 2, -me));
  const int members = (comm->size() + 1 - me % 2) / 2;
  ASSERT_EQ(sub->size(), members);
  EXPECT_EQ(sub->rank(), members - 1 - me / 2);
  Tensor mine = *Tensor::Empty({1}, DType::kI32, Device::Cpu());
  Tensor all = *Tensor::Empty({members}, DType::kI32, Device::Cpu());
  MOE_ASSERT_OK(Fill(ctx, mine, me));
  MOE_ASSERT_OK(sub->AllGather(ctx, mine, all));
  for (int i = 0; i < members; ++i) {
    EXPECT_EQ(all.data<int32_t>()[i], me % 2 + 2 * (members - 1 - i));
  }
}

}  // namespace
}  // namespace smoe
