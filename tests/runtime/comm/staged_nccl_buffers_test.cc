// The NCCL communicator's host-buffer staging (StagingCommunicator + DeviceBufferStager, as
// CreateNcclCommunicator assembles them) on the CPU: a stand-in for NCCL that takes only cuda:0
// buffers, and a stager whose "device" scratch is host memory labelled cuda:0 and whose copies
// are memcpy. What runs is the real staging logic: which buffers are staged, inputs copied in
// before the collective, outputs copied back after it, device buffers passed untouched, the run
// context chosen, errors. Label unit. (tests/runtime/comm/nccl_test.cc runs the real thing on a
// GPU.)
#include <cstring>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/comm/staging.h"
#include "tests/runtime/comm/mirror_communicator.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::smoe::testing::MirrorHostCommunicator;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::StatusIs;

// DeviceBufferStager for cuda:0 with the memory operations faked (its staging decisions are the
// production ones).
class FakeDeviceStager final : public DeviceBufferStager {
 public:
  FakeDeviceStager() : DeviceBufferStager(0) {}

  StatusOr<Tensor> Scratch(ExecContext&, const TensorView& like) override {
    log.push_back("scratch");
    return Tensor::Empty(like.shape(), like.dtype(), device(), CpuAllocator());
  }
  Status Move(ExecContext&, const TensorView& src, const TensorView& dst) override {
    EXPECT_NE(src.device(), dst.device());
    log.push_back(dst.device().is_cpu() ? "copy out" : "copy in");
    if (src.nbytes() > 0) std::memcpy(dst.data(), src.data(), src.nbytes());
    return absl::OkStatus();
  }
  Status Finish(ExecContext&, bool stored) override {
    log.push_back(stored ? "finish (stored)" : "finish");
    return absl::OkStatus();
  }

  std::vector<std::string> log;
  int own_contexts = 0;

 protected:
  StatusOr<ExecContext*> OwnContext() override {
    ++own_contexts;  // the real one is an ExecContext on cuda:0
    return &ExecContext::Cpu();
  }
};

struct Fixture {
  Fixture(int rank, int size) : nccl(rank, size, Device::Cuda(0)) {
    auto owned = std::make_shared<FakeDeviceStager>();
    stager = owned.get();
    comm = StagingCommunicator(&nccl, nullptr, owned);
  }
  MirrorHostCommunicator nccl;  // takes cuda:0 buffers only, like NCCL
  FakeDeviceStager* stager;
  std::unique_ptr<Communicator> comm;
};

Tensor Host(Shape shape, DType dtype) { return *Tensor::Empty(shape, dtype, Device::Cpu()); }
// Host memory labelled cuda:0: a device buffer as far as the communicators can tell.
Tensor OnFakeDevice(Shape shape, DType dtype) {
  return *Tensor::Empty(shape, dtype, Device::Cuda(0), CpuAllocator());
}

TEST(StagedNcclBuffersTest, HostBufferGoesThroughDeviceScratchAndBack) {
  Fixture f(/*rank=*/1, /*size=*/3);
  Tensor counts = Host({4}, DType::kI64);  // the global LBL's expert counts
  for (int i = 0; i < 4; ++i) counts.data<int64_t>()[i] = 10 * i + 1;
  MOE_ASSERT_OK(f.comm->AllReduceSum(ExecContext::Cpu(), counts));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(counts.data<int64_t>()[i], 3 * (10 * i + 1));
  ASSERT_EQ(f.nccl.seen.size(), 1u);
  EXPECT_NE(f.nccl.seen[0], counts.data());  // NCCL saw the device copy, not host memory
  EXPECT_THAT(f.stager->log, ElementsAre("scratch", "copy in", "copy out", "finish (stored)"));
  EXPECT_EQ(f.stager->own_contexts, 1);  // host buffers and the CPU context: its own stream
}

TEST(StagedNcclBuffersTest, DeviceBuffersPassUntouched) {
  Fixture f(0, 2);
  Tensor grads = OnFakeDevice({5}, DType::kF32);
  for (int i = 0; i < 5; ++i) grads.data<float>()[i] = 0.5f * i;
  MOE_ASSERT_OK(f.comm->AllReduceSum(ExecContext::Cpu(), grads));
  ASSERT_EQ(f.nccl.seen.size(), 1u);
  EXPECT_EQ(f.nccl.seen[0], grads.data());
  for (int i = 0; i < 5; ++i) EXPECT_EQ(grads.data<float>()[i], 1.0f * i);
  EXPECT_THAT(f.stager->log, ElementsAre("finish"));
  EXPECT_EQ(f.stager->own_contexts, 0);
}

TEST(StagedNcclBuffersTest, MixedArgumentsStageOnlyTheHostOnes) {
  Fixture f(1, 2);
  // AllGather of a host input into a device output: the input is copied in, nothing back.
  Tensor mine = Host({3}, DType::kI32);
  for (int i = 0; i < 3; ++i) mine.data<int32_t>()[i] = 7 + i;
  Tensor all = OnFakeDevice({6}, DType::kI32);
  MOE_ASSERT_OK(f.comm->AllGather(ExecContext::Cpu(), mine, all));
  EXPECT_THAT(f.stager->log, ElementsAre("scratch", "copy in", "finish"));
  ASSERT_EQ(f.nccl.seen.size(), 2u);
  EXPECT_NE(f.nccl.seen[0], mine.data());
  EXPECT_EQ(f.nccl.seen[1], all.data());
  EXPECT_EQ(f.stager->own_contexts, 0);  // a device buffer ties the call to the caller's context
  for (int i = 0; i < 6; ++i) EXPECT_EQ(all.data<int32_t>()[i], 7 + i % 3);

  // A device input reduced into a host output: only the output is staged, and copied back.
  f.stager->log.clear();
  Tensor in = OnFakeDevice({4}, DType::kF32);
  for (int i = 0; i < 4; ++i) in.data<float>()[i] = 1.0f + i;
  Tensor out = Host({2}, DType::kF32);
  MOE_ASSERT_OK(f.comm->ReduceScatterSum(ExecContext::Cpu(), in, out));
  EXPECT_THAT(f.stager->log, ElementsAre("scratch", "copy out", "finish (stored)"));
  EXPECT_EQ(out.data<float>()[0], 2.0f * 3.0f);  // rank 1's segment, times 2 mirrored ranks
  EXPECT_EQ(out.data<float>()[1], 2.0f * 4.0f);
}

TEST(StagedNcclBuffersTest, AllToAllVOfHostBuffers) {
  Fixture f(1, 2);
  Tensor send = Host({5}, DType::kI64);
  Tensor recv = Host({6}, DType::kI64);
  for (int i = 0; i < 5; ++i) send.data<int64_t>()[i] = 100 + i;
  const std::vector<int64_t> send_counts = {2, 3}, recv_counts = {3, 3};
  MOE_ASSERT_OK(f.comm->AllToAllV(ExecContext::Cpu(), send, send_counts, recv, recv_counts));
  const std::vector<int64_t> expected = {102, 103, 104, 102, 103, 104};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(recv.data<int64_t>()[i], expected[i]);
  EXPECT_THAT(f.stager->log,
              ElementsAre("scratch", "copy in", "scratch", "copy out", "finish (stored)"));
}

TEST(StagedNcclBuffersTest, ZeroSizedHostBuffersStillJoinTheCollective) {
  Fixture f(0, 2);
  Tensor empty = Host({0}, DType::kI64);
  MOE_ASSERT_OK(f.comm->AllReduceSum(ExecContext::Cpu(), empty));
  EXPECT_EQ(f.nccl.seen.size(), 1u);
}

TEST(StagedNcclBuffersTest, ErrorsOfTheInnerCommunicatorComeBackAndNothingIsCopiedOut) {
  Fixture f(0, 2);
  Tensor in = Host({3}, DType::kF32);
  Tensor out = Host({5}, DType::kF32);
  EXPECT_THAT(f.comm->AllGather(ExecContext::Cpu(), in, out),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("out.numel")));
  EXPECT_THAT(f.stager->log, ElementsAre("scratch", "copy in", "scratch"));
  // A non-contiguous host buffer is rejected before anything moves.
  f.stager->log.clear();
  Tensor wide = Host({4, 4}, DType::kF32);
  const TensorView column(wide.data(), DType::kF32, {4}, {4}, Device::Cpu());
  EXPECT_THAT(f.comm->AllReduceSum(ExecContext::Cpu(), column),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("buffer")));
  EXPECT_TRUE(f.stager->log.empty());
}

TEST(StagedNcclBuffersTest, SplitGroupsStageToo) {
  Fixture f(0, 2);
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Communicator> sub, f.comm->Split(/*color=*/1, 0));
  EXPECT_EQ(sub->size(), 2);
  Tensor flag = Host({1}, DType::kI32);  // the trainer's "any rank failed" flag
  flag.data<int32_t>()[0] = 1;
  MOE_ASSERT_OK(sub->AllReduceSum(ExecContext::Cpu(), flag));
  EXPECT_EQ(flag.data<int32_t>()[0], 2);
  EXPECT_THAT(f.stager->log, ElementsAre("scratch", "copy in", "copy out", "finish (stored)"));
  MOE_EXPECT_OK(f.comm->Barrier());
  EXPECT_EQ(f.nccl.barriers, 1);
}

}  // namespace
}  // namespace smoe
