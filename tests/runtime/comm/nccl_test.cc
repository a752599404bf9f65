// The NCCL communicator on a one-rank group (bootstrap: SingleRankCommunicator) and device 0:
// every collective on device buffers, checked after a copy back to the host, and the argument
// checks. CTest label cuda; skips without a GPU. Multi-GPU groups need several processes (MPI).
#include "runtime/comm/nccl_communicator.h"

#include <cstring>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/parity.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using ::testing::HasSubstr;
using testing::Cpu;
using testing::HostTensor;
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
      case DType::kF32: t.data<float>()[i] = 0.25f + 1.5f * static_cast<float>(i); break;
      case DType::kI32: t.data<int32_t>()[i] = static_cast<int32_t>(7 * i - 40); break;
      case DType::kI64: t.data<int64_t>()[i] = (int64_t{1} << 40) + 3 * i; break;
      default: MOE_CHECK(false) << "Ramp: " << DTypeName(dtype);
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

TEST_F(NcclCommunicatorTest, RejectsBadArgumentsNamingThem) {
  auto invalid = [](absl::string_view field) {
    return StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(std::string(field)));
  };
  Tensor host = Ramp(8, DType::kF32);
  Tensor device = OnDevice(host);
  EXPECT_THAT(comm_->AllReduceSum(*ctx_, host), invalid("buffer.device"));
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
