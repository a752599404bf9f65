// Stream-ordered memory on a GPU (label cuda; skips without one): the device allocator shared by
// ExecContexts on different streams, and the pinned staging of host-to-device copies. A stream is
// held back by a host function waiting on a gate, so work enqueued behind it is certainly still
// pending when the test frees or reuses memory.
#include <atomic>
#include <chrono>
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

}  // namespace
}  // namespace smoe
