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
  EXPECT_THAT(comm->AllGather(ctx, mine, wrong),
              testing::StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("out.numel")));
  MOE_EXPECT_OK(comm->Barrier());
}

}  // namespace
}  // namespace smoe
