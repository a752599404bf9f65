// The NCCL communicator on a one-rank group (bootstrap: SingleRankCommunicator) and device 0:
// every collective on device buffers, checked after a copy back to the host, and the argument
// checks. CTest label cuda; skips without a GPU. Multi-GPU groups need several processes (MPI).
#include "runtime/comm/nccl_communicator.h"

#include <cstring>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moe/parallel_moe_layer.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/compare.h"
#include "tests/testing/parity.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using testing::Cpu;
using ::testing::HasSubstr;
using testing::HostTensor;
using testing::RandomNormal;
using testing::StatusIs;

class NcclCommunicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MOE_SKIP_WITHOUT_CUDA();
    StatusOr<std::unique_ptr<ExecContext>> ctx = ExecContext::Create(Device::Cuda(0));
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    ctx_ = *std::move(ctx);
    StatusOr<std::unique_ptr<Communicator>> comm =
        CreateNcclCommunicator(*SingleRankCommunicator(), 0);
    ASSERT_TRUE(comm.ok()) << comm.status();
    comm_ = *std::move(comm);
  }

  // A device copy of a host tensor.
  Tensor OnDevice(const Tensor& host) {
    StatusOr<Tensor> t = CopyTo(*ctx_, host, Device::Cuda(0));
    MOE_CHECK(t.ok()) << t.status().ToString();
    return *std::move(t);
  }
  // A host copy of a device tensor (the copy synchronizes the stream: collectives are done).
  Tensor OnHost(const TensorView& device) {
    StatusOr<Tensor> t = CopyTo(*ctx_, device, Device::Cpu());
    MOE_CHECK(t.ok()) << t.status().ToString();
    return *std::move(t);
  }
  Tensor DeviceEmpty(Shape shape, DType dtype) {
    StatusOr<Tensor> t = Tensor::Empty(shape, dtype, Device::Cuda(0));
    MOE_CHECK(t.ok()) << t.status().ToString();
    return *std::move(t);
  }

  std::unique_ptr<ExecContext> ctx_;
  std::unique_ptr<Communicator> comm_;
};

// Distinct, non-zero values of any of f32 / i32 / i64.
Tensor Ramp(int64_t n, DType dtype) {
  Tensor t = HostTensor({n}, dtype);
  for (int64_t i = 0; i < n; ++i) {
    switch (dtype) {
      case DType::kF32:
        t.data<float>()[i] = 0.25f + 1.5f * static_cast<float>(i);
        break;
      case DType::kI32:
        t.data<int32_t>()[i] = static_cast<int32_t>(7 * i - 40);
        break;
      case DType::kI64:
        t.data<int64_t>()[i] = (int64_t{1} << 40) + 3 * i;
        break;
      default:
        MOE_CHECK(false) << "Ramp: " << DTypeName(dtype);
    }
  }
  return t;
}

bool SameBytes(const TensorView& a, const TensorView& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

TEST_F(NcclCommunicatorTest, OneRankGroup) {
  EXPECT_EQ(comm_->rank(), 0);
  EXPECT_EQ(comm_->size(), 1);
}

TEST_F(NcclCommunicatorTest, AllReduceSumOfOneRankKeepsTheValues) {
  for (DType dtype : {DType::kF32, DType::kI32, DType::kI64}) {
    const Tensor host = Ramp(1000, dtype);
    Tensor buffer = OnDevice(host);
    MOE_ASSERT_OK(comm_->AllReduceSum(*ctx_, buffer));
    EXPECT_TRUE(SameBytes(OnHost(buffer), host)) << DTypeName(dtype);
  }
  Tensor empty = DeviceEmpty({0}, DType::kF32);
  MOE_EXPECT_OK(comm_->AllReduceSum(*ctx_, empty));
}

TEST_F(NcclCommunicatorTest, AllGatherOfOneRankCopies) {
  const Tensor host = Ramp(37, DType::kI32);
  Tensor in = OnDevice(host);
  Tensor out = DeviceEmpty({37}, DType::kI32);
  MOE_ASSERT_OK(Fill(*ctx_, out, -1.0));
  MOE_ASSERT_OK(comm_->AllGather(*ctx_, in, out));
  EXPECT_TRUE(SameBytes(OnHost(out), host));
}

TEST_F(NcclCommunicatorTest, ReduceScatterSumOfOneRankCopies) {
  const Tensor host = Ramp(64, DType::kF32);
  Tensor in = OnDevice(host);
  Tensor out = DeviceEmpty({64}, DType::kF32);
  MOE_ASSERT_OK(Fill(*ctx_, out, -1.0));
  MOE_ASSERT_OK(comm_->ReduceScatterSum(*ctx_, in, out));
  EXPECT_TRUE(SameBytes(OnHost(out), host));
}

TEST_F(NcclCommunicatorTest, AllToAllVOfOneRankCopiesItsOwnSegment) {
  const Tensor host = Ramp(21, DType::kI64);
  Tensor send = OnDevice(host);
  Tensor recv = DeviceEmpty({21}, DType::kI64);
  MOE_ASSERT_OK(Fill(*ctx_, recv, -1.0));
  const std::vector<int64_t> counts = {21};
  MOE_ASSERT_OK(comm_->AllToAllV(*ctx_, send, counts, recv, counts));
  EXPECT_TRUE(SameBytes(OnHost(recv), host));

  Tensor nothing = DeviceEmpty({0}, DType::kI64);
  const std::vector<int64_t> zero = {0};
  MOE_EXPECT_OK(comm_->AllToAllV(*ctx_, nothing, zero, nothing, zero));
}

TEST_F(NcclCommunicatorTest, BarrierAndSplit) {
  MOE_ASSERT_OK(comm_->Barrier());
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Communicator> sub, comm_->Split(3, 0));
  EXPECT_EQ(sub->rank(), 0);
  EXPECT_EQ(sub->size(), 1);
  const Tensor host = Ramp(9, DType::kF32);
  Tensor buffer = OnDevice(host);
  MOE_ASSERT_OK(sub->AllReduceSum(*ctx_, buffer));
  EXPECT_TRUE(SameBytes(OnHost(buffer), host));
  MOE_EXPECT_OK(sub->Barrier());
  EXPECT_THAT(comm_->Split(-1, 0).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("color")));
}

// The expert-parallel layer on a GPU rank: with r >= 1 it exchanges counts as well as rows, on
// device buffers (host ones would be staged, at a host sync each). Compared with the same layer on
// the CPU.
TEST_F(NcclCommunicatorTest, ParallelMoELayerRunsOnTheGpu) {
  MoELayerConfig config;
  config.model_dim = 16;
  config.ffn_dim = 8;
  config.num_experts = 4;
  config.top_k = 2;
  // The global LBL all-reduces the expert counts over the group: on device buffers here.
  config.aux.lbl_coef = 0.1f;
  config.aux.global_lbl = true;
  const int64_t m = 16, h = 8, e = 4, t = 23;
  const Tensor host[6] = {RandomNormal({m, e}, 1),    RandomNormal({e, m, h}, 2),
                          RandomNormal({e, m, h}, 3), RandomNormal({e, h, m}, 4),
                          RandomNormal({t, m}, 5),    RandomNormal({t, m}, 6)};
  Tensor dev[6];
  for (int i = 0; i < 6; ++i) dev[i] = OnDevice(host[i]);
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<RowExchanger> gpu_ex, RowExchanger::Create(comm_.get()));
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<RowExchanger> cpu_ex,
                           RowExchanger::Create(SingleRankCommunicator()));
  // r = 0 gathers the experts and reduce-scatters their gradients; r = 1 exchanges the tokens
  // (all-to-all), also in 3 pipelined chunks.
  for (const ParallelMode mode : {ParallelMode{0, 1}, ParallelMode{1, 1}, ParallelMode{1, 3}}) {
    Tensor y_host = HostTensor({t, m}), y_dev = DeviceEmpty({t, m}, DType::kF32);
    Tensor dx_host = HostTensor({t, m}), dx_dev = DeviceEmpty({t, m}, DType::kF32);
    MoEParams grads_host{HostTensor({m, e}), HostTensor({e, m, h}), HostTensor({e, m, h}),
                         HostTensor({e, h, m})};
    MoEParams grads_dev{DeviceEmpty({m, e}, DType::kF32), DeviceEmpty({e, m, h}, DType::kF32),
                        DeviceEmpty({e, m, h}, DType::kF32), DeviceEmpty({e, h, m}, DType::kF32)};
    ParallelMoEState cpu_state, gpu_state;
    const MoEParamViews cpu_params{host[0], host[1], host[2], host[3]};
    const MoEParamViews gpu_params{dev[0], dev[1], dev[2], dev[3]};
    MOE_ASSERT_OK(
        ParallelMoEForward(Cpu(), config, cpu_params, host[4], y_host, &cpu_state, *cpu_ex, mode)
            .status());
    MOE_ASSERT_OK(
        ParallelMoEForward(*ctx_, config, gpu_params, dev[4], y_dev, &gpu_state, *gpu_ex, mode)
            .status());
    MOE_ASSERT_OK(
        ParallelMoEBackward(Cpu(), config, cpu_params, cpu_state, host[5], dx_host,
                            {grads_host.w_gate, grads_host.w1, grads_host.w3, grads_host.w2}));
    MOE_ASSERT_OK(
        ParallelMoEBackward(*ctx_, config, gpu_params, gpu_state, dev[5], dx_dev,
                            {grads_dev.w_gate, grads_dev.w1, grads_dev.w3, grads_dev.w2}));
    EXPECT_TRUE(testing::AllClose(OnHost(y_dev), y_host, testing::Tolerance{1e-4, 1e-4}));
    EXPECT_TRUE(testing::AllClose(OnHost(dx_dev), dx_host, testing::Tolerance{1e-4, 1e-4}));
    EXPECT_TRUE(
        testing::AllClose(OnHost(grads_dev.w1), grads_host.w1, testing::Tolerance{1e-4, 1e-4}));
  }
}

// Host buffers (the global LBL's counts, the trainer's flags and loss sums) are staged through
// device memory: with the GPU context, and with the CPU context when every buffer is on the host.
TEST_F(NcclCommunicatorTest, HostBuffersAreStagedThroughTheDevice) {
  for (DType dtype : {DType::kF32, DType::kI32, DType::kI64}) {
    const Tensor expected = Ramp(100, dtype);
    Tensor buffer = Ramp(100, dtype);
    MOE_ASSERT_OK(comm_->AllReduceSum(*ctx_, buffer));  // blocking: the host may read at once
    EXPECT_TRUE(SameBytes(buffer, expected)) << DTypeName(dtype);
    MOE_ASSERT_OK(comm_->AllReduceSum(Cpu(), buffer));
    EXPECT_TRUE(SameBytes(buffer, expected)) << DTypeName(dtype);
  }
  // A host input gathered into a device output, and the reverse.
  const Tensor host_in = Ramp(9, DType::kI64);
  Tensor device_out = DeviceEmpty({9}, DType::kI64);
  MOE_ASSERT_OK(comm_->AllGather(*ctx_, host_in, device_out));
  EXPECT_TRUE(SameBytes(OnHost(device_out), host_in));
  Tensor host_out = HostTensor({9}, DType::kI64);
  MOE_ASSERT_OK(comm_->AllGather(*ctx_, OnDevice(host_in), host_out));
  EXPECT_TRUE(SameBytes(host_out, host_in));
  Tensor host_sum = HostTensor({9}, DType::kI64);
  MOE_ASSERT_OK(comm_->ReduceScatterSum(Cpu(), host_in, host_sum));
  EXPECT_TRUE(SameBytes(host_sum, host_in));
  Tensor recv = HostTensor({9}, DType::kI64);
  const std::vector<int64_t> counts = {9};
  MOE_ASSERT_OK(comm_->AllToAllV(Cpu(), host_in, counts, recv, counts));
  EXPECT_TRUE(SameBytes(recv, host_in));
  // Split groups stage too.
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Communicator> sub, comm_->Split(0, 0));
  Tensor flag = HostTensor({1}, DType::kI32);
  flag.data<int32_t>()[0] = 1;
  MOE_ASSERT_OK(sub->AllReduceSum(*ctx_, flag));
  EXPECT_EQ(flag.data<int32_t>()[0], 1);
}

TEST_F(NcclCommunicatorTest, RejectsBadArgumentsNamingThem) {
  auto invalid = [](absl::string_view field) {
    return StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(std::string(field)));
  };
  Tensor host = Ramp(8, DType::kF32);
  Tensor device = OnDevice(host);
  EXPECT_THAT(comm_->AllReduceSum(Cpu(), device), invalid("ctx.device"));
  Tensor bf16 = DeviceEmpty({8}, DType::kBF16);
  EXPECT_THAT(comm_->AllReduceSum(*ctx_, bf16), invalid("buffer.dtype"));
  Tensor short_out = DeviceEmpty({4}, DType::kF32);
  EXPECT_THAT(comm_->AllGather(*ctx_, device, short_out), invalid("out.numel"));
  EXPECT_THAT(comm_->ReduceScatterSum(*ctx_, device, short_out), invalid("in.numel"));
  Tensor ints = DeviceEmpty({8}, DType::kI32);
  EXPECT_THAT(comm_->AllGather(*ctx_, device, ints), invalid("out.dtype"));
  const std::vector<int64_t> eight = {8}, seven = {7};
  EXPECT_THAT(comm_->AllToAllV(*ctx_, device, seven, device, eight), invalid("sum of send_counts"));
  EXPECT_THAT(comm_->AllToAllV(*ctx_, device, eight, ints, eight), invalid("recv.dtype"));
  EXPECT_THAT(CreateNcclCommunicator(*SingleRankCommunicator(), CudaDeviceCount()).status(),
              invalid("cuda_device"));
  EXPECT_THAT(CreateNcclCommunicator(*SingleRankCommunicator(), -1).status(),
              invalid("cuda_device"));
}

}  // namespace
}  // namespace smoe
