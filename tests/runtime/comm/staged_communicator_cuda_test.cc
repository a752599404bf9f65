// StagedCommunicator with device buffers (label cuda): the host communicator sees only host
// scratch, and the results land in the device buffers.
#include <vector>

#include "gtest/gtest.h"
#include "runtime/comm/staged_communicator.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/runtime/comm/mirror_communicator.h"
#include "tests/testing/parity.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::smoe::testing::MirrorHostCommunicator;

std::vector<float> HostFloats(ExecContext& ctx, const TensorView& t) {
  Tensor host = *CopyTo(ctx, t, Device::Cpu());
  return std::vector<float>(host.data<float>(), host.data<float>() + host.numel());
}

TEST(StagedCommunicatorCudaTest, DeviceBuffersAreStagedThroughTheHost) {
  MOE_SKIP_WITHOUT_CUDA();
  std::unique_ptr<ExecContext> ctx = *ExecContext::Create(Device::Cuda(0));
  MirrorHostCommunicator fake(1, 2);
  std::unique_ptr<Communicator> comm = StagedCommunicator(&fake);
  Tensor x = *Tensor::Empty({37}, DType::kF32, Device::Cuda(0));
  MOE_ASSERT_OK(FillUniform(*ctx, x, 7, 0, -1.0f, 1.0f));
  const std::vector<float> before = HostFloats(*ctx, x);
  MOE_ASSERT_OK(comm->AllReduceSum(*ctx, x));  // the fake fails on device buffers
  EXPECT_EQ(fake.calls, 1);
  std::vector<float> after = HostFloats(*ctx, x);
  for (int i = 0; i < 37; ++i) ASSERT_EQ(after[i], 2.0f * before[i]);

  Tensor all = *Tensor::Empty({74}, DType::kF32, Device::Cuda(0));
  MOE_ASSERT_OK(comm->AllGather(*ctx, x, all));
  std::vector<float> gathered = HostFloats(*ctx, all);
  for (int i = 0; i < 74; ++i) ASSERT_EQ(gathered[i], after[i % 37]);

  Tensor half = *Tensor::Empty({37}, DType::kF32, Device::Cuda(0));
  MOE_ASSERT_OK(comm->ReduceScatterSum(*ctx, all, half));
  std::vector<float> reduced = HostFloats(*ctx, half);
  for (int i = 0; i < 37; ++i) ASSERT_EQ(reduced[i], 2.0f * after[i]);
}

TEST(StagedCommunicatorCudaTest, MixedHostAndDeviceAllToAllV) {
  MOE_SKIP_WITHOUT_CUDA();
  std::unique_ptr<ExecContext> ctx = *ExecContext::Create(Device::Cuda(0));
  MirrorHostCommunicator fake(0, 2);
  std::unique_ptr<Communicator> comm = StagedCommunicator(&fake);
  Tensor send = *Tensor::Empty({5}, DType::kBF16, Device::Cuda(0));
  MOE_ASSERT_OK(FillNormal(*ctx, send, 9, 0, 0.0f, 1.0f));
  Tensor recv = *Tensor::Empty({4}, DType::kBF16, Device::Cpu());
  const std::vector<int64_t> send_counts = {2, 3}, recv_counts = {2, 2};
  MOE_ASSERT_OK(comm->AllToAllV(*ctx, send, send_counts, recv, recv_counts));
  Tensor sent = *CopyTo(*ctx, send, Device::Cpu());
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(BF16ToFloat(recv.data<BF16>()[i]), BF16ToFloat(sent.data<BF16>()[i % 2]));
  }
}

TEST(StagedCommunicatorCudaTest, DeviceBuffersOverSingleRankAndAWrongDevice) {
  MOE_SKIP_WITHOUT_CUDA();
  std::unique_ptr<ExecContext> ctx = *ExecContext::Create(Device::Cuda(0));
  std::unique_ptr<Communicator> comm = StagedCommunicator(SingleRankCommunicator());
  Tensor x = *Tensor::Empty({16}, DType::kI64, Device::Cuda(0));
  Tensor host = *Tensor::Empty({16}, DType::kI64, Device::Cpu());
  for (int i = 0; i < 16; ++i) host.data<int64_t>()[i] = 3 * i - 7;
  MOE_ASSERT_OK(Copy(*ctx, host, x));
  MOE_ASSERT_OK(comm->AllReduceSum(*ctx, x));
  Tensor back = *CopyTo(*ctx, x, Device::Cpu());
  for (int i = 0; i < 16; ++i) ASSERT_EQ(back.data<int64_t>()[i], 3 * i - 7);
  // A device buffer with a CPU context cannot be staged.
  EXPECT_THAT(
      comm->AllReduceSum(ExecContext::Cpu(), x),
      testing::StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("buffer.device")));
}

}  // namespace
}  // namespace smoe
