// Stream-ordered memory on a GPU (label cuda; skips without one): the device allocator shared by
// ExecContexts on different streams, and the pinned staging of host-to-device copies. A stream is
// held back by a host function waiting on a gate, so work enqueued behind it is certainly still
// pending when the test frees or reuses memory.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/memory/allocator.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/parity.h"
#include "tests/testing/status_matchers.h"

#if MOE_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace smoe {
namespace {

#if MOE_WITH_CUDA
// Holds a stream at this point until Open() (or a 20 s safety timeout).
class Gate {
 public:
  Status Close(ExecContext& ctx) {
    if (cudaLaunchHostFunc(ctx.stream(), &Gate::Wait, this) != cudaSuccess) {
      return absl::InternalError("cudaLaunchHostFunc");
    }
    return absl::OkStatus();
  }
  void Open() { open_ = true; }

 private:
  static void Wait(void* self) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!static_cast<Gate*>(self)->open_ && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  std::atomic<bool> open_{false};
};
#endif

// An unusual size, so that blocks cached by other tests of this binary do not interfere.
constexpr size_t kBytes = (size_t{3} << 20) + 768;

TEST(StreamOrderedCudaTest, AnotherStreamDoesNotReuseABlockItsStreamStillUses) {
  MOE_SKIP_WITHOUT_CUDA();
#if MOE_WITH_CUDA
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ExecContext> a, ExecContext::Create(Device::Cuda(0)));
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ExecContext> b, ExecContext::Create(Device::Cuda(0)));
  Gate gate;
  MOE_ASSERT_OK(gate.Close(*a));
  MOE_ASSERT_OK_AND_ASSIGN(void* p, a->allocator()->Allocate(kBytes));
  const TensorView on_a(p, DType::kF32, {static_cast<int64_t>(kBytes / 4)}, Device::Cuda(0));
  MOE_ASSERT_OK(Fill(*a, on_a, 1.0));  // pending behind the gate
  a->allocator()->Free(p);
  MOE_ASSERT_OK_AND_ASSIGN(void* q, b->allocator()->Allocate(kBytes));
  EXPECT_NE(q, p) << "stream b was handed a block stream a's pending fill still writes";
  MOE_ASSERT_OK_AND_ASSIGN(void* again, a->allocator()->Allocate(kBytes));
  EXPECT_EQ(again, p) << "stream a itself reuses at once (stream order)";
  // b's data survives a's pending work.
  const TensorView on_b(q, DType::kF32, {static_cast<int64_t>(kBytes / 4)}, Device::Cuda(0));
  MOE_ASSERT_OK(Fill(*b, on_b, 2.0));
  gate.Open();
  MOE_ASSERT_OK(a->Synchronize());
  MOE_ASSERT_OK_AND_ASSIGN(Tensor host, CopyTo(*b, on_b, Device::Cpu()));
  for (int64_t i = 0; i < host.numel(); i += 4099) ASSERT_EQ(host.data<float>()[i], 2.0f);
  a->allocator()->Free(again);
  b->allocator()->Free(q);
  // Once a's work has completed, b may take a's block.
  MOE_ASSERT_OK(a->Synchronize());
  MOE_ASSERT_OK_AND_ASSIGN(void* later, b->allocator()->Allocate(kBytes));
  EXPECT_TRUE(later == p || later == q);
  b->allocator()->Free(later);
#endif
}

// A host-to-device Copy returns before its stream reaches the copy, and the source may be
// refilled or freed at once (the trainer refills its token ids, aux_loss_cuda.cu passes a
// temporary): the copy reads a pinned staging block, not the source.
TEST(StreamOrderedCudaTest, HostToDeviceCopyTakesTheSourceAsItWasAtTheCall) {
  MOE_SKIP_WITHOUT_CUDA();
#if MOE_WITH_CUDA
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ExecContext> ctx, ExecContext::Create(Device::Cuda(0)));
  constexpr int64_t kCount = 4099;
  MOE_ASSERT_OK_AND_ASSIGN(Tensor device,
                           Tensor::Empty({kCount}, DType::kI32, Device::Cuda(0), ctx->allocator()));
  const size_t staged_before = ctx->host_staging()->stats().num_allocations;
  Gate gate;
  MOE_ASSERT_OK(gate.Close(*ctx));
  auto source = std::make_unique<std::vector<int32_t>>(kCount);
  for (int64_t i = 0; i < kCount; ++i) (*source)[i] = static_cast<int32_t>(3 * i + 1);
  // No fatal assertion until the gate is open: the stream's host function reads it.
  MOE_EXPECT_OK(
      Copy(*ctx, TensorView(source->data(), DType::kI32, {kCount}, Device::Cpu()), device));
  const cudaError_t pending = cudaStreamQuery(ctx->stream());
  EXPECT_EQ(pending, cudaErrorNotReady) << "Copy waited for its stream (a host sync)";
  EXPECT_EQ(ctx->host_staging()->stats().num_allocations, staged_before + 1)
      << "the copy did not go through pinned staging memory";
  std::fill(source->begin(), source->end(), -7);  // refilled, then freed, while the copy waits
  source.reset();
  gate.Open();
  MOE_ASSERT_OK_AND_ASSIGN(Tensor host, CopyTo(*ctx, device, Device::Cpu()));
  for (int64_t i = 0; i < kCount; ++i) ASSERT_EQ(host.data<int32_t>()[i], 3 * i + 1) << i;
#endif
}

}  // namespace
}  // namespace smoe
