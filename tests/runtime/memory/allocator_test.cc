#include "runtime/memory/allocator.h"

#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/device/exec_context.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::testing::HasSubstr;
using testing::StatusIs;

// A system allocator over malloc that counts calls and can be given a capacity.
struct FakeSystem {
  size_t capacity = SIZE_MAX;
  size_t held = 0;
  int allocations = 0;
  int frees = 0;
  std::map<void*, size_t> blocks;

  SystemAllocator Make() {
    return SystemAllocator{[this](size_t bytes) -> StatusOr<void*> {
                             if (held + bytes > capacity)
                               return absl::ResourceExhaustedError("fake out of memory");
                             void* ptr = std::malloc(bytes);
                             held += bytes;
                             blocks[ptr] = bytes;
                             ++allocations;
                             return ptr;
                           },
                           [this](void* ptr) {
                             held -= blocks.at(ptr);
                             blocks.erase(ptr);
                             ++frees;
                             std::free(ptr);
                           }};
  }
};

TEST(CachingAllocatorTest, ReusesFreedBlocksWithoutSystemCalls) {
  FakeSystem system;
  CachingAllocator allocator(Device::Cpu(), system.Make());
  for (int step = 0; step < 10; ++step) {
    MOE_ASSERT_OK_AND_ASSIGN(void* a, allocator.Allocate(1000));
    MOE_ASSERT_OK_AND_ASSIGN(void* b, allocator.Allocate(5000));
    allocator.Free(a);
    allocator.Free(b);
  }
  EXPECT_EQ(system.allocations, 2);  // only the first step reached the system
  EXPECT_EQ(allocator.stats().num_allocations, 20u);
  EXPECT_EQ(allocator.stats().bytes_in_use, 0u);
  EXPECT_EQ(allocator.stats().bytes_reserved, 1024u + 5120u);
  allocator.EmptyCache();
  EXPECT_EQ(system.frees, 2);
  EXPECT_EQ(allocator.stats().bytes_reserved, 0u);
}

TEST(CachingAllocatorTest, NeverHandsOutABlockInUse) {
  FakeSystem system;
  CachingAllocator allocator(Device::Cpu(), system.Make());
  std::set<void*> live;
  for (int i = 0; i < 50; ++i) {
    MOE_ASSERT_OK_AND_ASSIGN(void* p, allocator.Allocate(256 * (1 + i % 5)));
    ASSERT_TRUE(live.insert(p).second);
    if (i % 3 == 0) {
      allocator.Free(*live.begin());
      live.erase(live.begin());
    }
  }
  for (void* p : live) allocator.Free(p);
}

TEST(CachingAllocatorTest, TracksPeakAndRoundsToAlignment) {
  FakeSystem system;
  CachingAllocator allocator(Device::Cpu(), system.Make());
  MOE_ASSERT_OK_AND_ASSIGN(void* a, allocator.Allocate(1));
  MOE_ASSERT_OK_AND_ASSIGN(void* b, allocator.Allocate(300));
  EXPECT_EQ(allocator.stats().bytes_in_use, 256u + 512u);
  allocator.Free(a);
  EXPECT_EQ(allocator.stats().bytes_in_use, 512u);
  EXPECT_EQ(allocator.stats().peak_bytes_in_use, 768u);
  allocator.ResetPeak();
  EXPECT_EQ(allocator.stats().peak_bytes_in_use, 512u);
  allocator.Free(b);
  MOE_ASSERT_OK_AND_ASSIGN(void* zero, allocator.Allocate(0));
  EXPECT_EQ(zero, nullptr);
  allocator.Free(nullptr);
}

TEST(CachingAllocatorTest, DoesNotServeSmallRequestsFromHugeBlocks) {
  FakeSystem system;
  CachingAllocator allocator(Device::Cpu(), system.Make());
  MOE_ASSERT_OK_AND_ASSIGN(void* big, allocator.Allocate(1 << 20));
  allocator.Free(big);
  MOE_ASSERT_OK_AND_ASSIGN(void* small, allocator.Allocate(1024));
  EXPECT_NE(small, big);
  EXPECT_EQ(system.allocations, 2);
  allocator.Free(small);
}

TEST(CachingAllocatorTest, EmptiesTheCacheAndRetriesWhenTheSystemIsFull) {
  FakeSystem system;
  system.capacity = 4096;
  CachingAllocator allocator(Device::Cpu(), system.Make());
  MOE_ASSERT_OK_AND_ASSIGN(void* a, allocator.Allocate(3000));
  allocator.Free(a);  // cached: the system holds 3072 of 4096
  MOE_ASSERT_OK_AND_ASSIGN(void* b, allocator.Allocate(1200));  // a is too big to reuse: retry
  EXPECT_EQ(system.frees, 1);
  EXPECT_THAT(allocator.Allocate(4000),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("allocating 4000 bytes")));
  allocator.Free(b);
}

// Streams of a fake device for stream-ordered reuse: Work(s) enqueues work on s, Complete(s)
// finishes everything enqueued on s so far; a marker is done once its stream has completed the
// work enqueued before it.
struct FakeStreams {
  std::map<StreamId, int64_t> enqueued, completed;
  std::map<uint64_t, std::pair<StreamId, int64_t>> markers;  // live markers
  uint64_t next = 1;
  int recorded = 0;
  bool fail = false;

  void Work(StreamId s) { ++enqueued[s]; }
  void Complete(StreamId s) { completed[s] = enqueued[s]; }

  class Events final : public StreamEvents {
   public:
    explicit Events(FakeStreams* streams) : streams_(streams) {}
    StatusOr<uint64_t> Record(StreamId stream) override {
      if (streams_->fail) return absl::InternalError("fake event failure");
      ++streams_->recorded;
      streams_->markers[streams_->next] = {stream, streams_->enqueued[stream]};
      return streams_->next++;
    }
    bool Done(uint64_t marker) override {
      const auto& [stream, position] = streams_->markers.at(marker);
      return streams_->completed[stream] >= position;
    }
    void Release(uint64_t marker) override { EXPECT_EQ(streams_->markers.erase(marker), 1u); }

   private:
    FakeStreams* streams_;
  };
  std::unique_ptr<StreamEvents> Make() { return std::make_unique<Events>(this); }
};

constexpr StreamId kStreamA = 0x1000, kStreamB = 0x2000;

TEST(StreamOrderedAllocatorTest, OneStreamReusesAtOnceWithoutEvents) {
  FakeSystem system;
  FakeStreams streams;
  CachingAllocator allocator(Device::Cuda(0), system.Make(), streams.Make());
  MOE_ASSERT_OK(allocator.AddStream(kStreamA));
  MOE_ASSERT_OK_AND_ASSIGN(void* p, allocator.Allocate(1000));
  streams.Work(kStreamA);  // still reading p
  allocator.Free(p);
  MOE_ASSERT_OK_AND_ASSIGN(void* q, allocator.Allocate(1000));
  EXPECT_EQ(q, p);  // stream order: the next user runs after the last one
  allocator.Free(q);
  MOE_ASSERT_OK_AND_ASSIGN(void* r, allocator.ForStream(kStreamA)->Allocate(1000));
  EXPECT_EQ(r, p);
  allocator.Free(r);
  EXPECT_EQ(streams.recorded, 0);
  EXPECT_EQ(system.allocations, 1);
  allocator.RemoveStream(kStreamA);
}

TEST(StreamOrderedAllocatorTest, AnotherStreamWaitsUntilTheFreeingStreamsWorkCompleted) {
  FakeSystem system;
  FakeStreams streams;
  CachingAllocator allocator(Device::Cuda(0), system.Make(), streams.Make());
  MOE_ASSERT_OK(allocator.AddStream(kStreamA));
  MOE_ASSERT_OK(allocator.AddStream(kStreamB));
  Allocator* on_a = allocator.ForStream(kStreamA);
  Allocator* on_b = allocator.ForStream(kStreamB);
  EXPECT_EQ(allocator.ForStream(kStreamA), on_a);
  MOE_ASSERT_OK_AND_ASSIGN(void* p, on_a->Allocate(1000));
  streams.Work(kStreamA);  // a kernel on A still uses p
  on_a->Free(p);
  EXPECT_EQ(streams.recorded, 1);  // one marker, on A only
  MOE_ASSERT_OK_AND_ASSIGN(void* q, on_b->Allocate(1000));
  EXPECT_NE(q, p);  // the bug: B's work would overwrite p while A's kernel reads it
  MOE_ASSERT_OK_AND_ASSIGN(void* again, on_a->Allocate(1000));
  EXPECT_EQ(again, p);  // A itself may reuse it at once
  streams.Work(kStreamA);
  on_a->Free(again);
  // Untagged requests may run on either stream: they wait as well.
  MOE_ASSERT_OK_AND_ASSIGN(void* untagged, allocator.Allocate(1000));
  EXPECT_NE(untagged, p);
  streams.Complete(kStreamA);
  MOE_ASSERT_OK_AND_ASSIGN(void* later, on_b->Allocate(1000));
  EXPECT_EQ(later, p);                   // A's work on p has completed
  EXPECT_TRUE(streams.markers.empty());  // reused blocks release their markers
  for (void* ptr : {q, untagged, later}) allocator.Free(ptr);
  EXPECT_EQ(system.allocations, 3);
}

TEST(StreamOrderedAllocatorTest, UntaggedBlocksWaitForEveryOtherStream) {
  FakeSystem system;
  FakeStreams streams;
  CachingAllocator allocator(Device::Cuda(0), system.Make(), streams.Make());
  MOE_ASSERT_OK(allocator.AddStream(kStreamA));
  MOE_ASSERT_OK(allocator.AddStream(kStreamB));
  // Tensor::Empty(shape, dtype, device) memory: any registered stream may have used it.
  MOE_ASSERT_OK_AND_ASSIGN(void* p, allocator.Allocate(4096));
  streams.Work(kStreamA);
  streams.Work(kStreamB);
  allocator.Free(p);
  EXPECT_EQ(streams.recorded, 2);
  Allocator* on_b = allocator.ForStream(kStreamB);
  MOE_ASSERT_OK_AND_ASSIGN(void* q, on_b->Allocate(4096));
  EXPECT_NE(q, p);  // A may still use p
  streams.Complete(kStreamA);
  MOE_ASSERT_OK_AND_ASSIGN(void* r, allocator.Allocate(4096));
  EXPECT_NE(r, p);  // an untagged request waits for B too
  MOE_ASSERT_OK_AND_ASSIGN(void* s, on_b->Allocate(4096));
  EXPECT_EQ(s, p);  // B's own marker does not hold B back
  for (void* ptr : {q, r, s}) allocator.Free(ptr);
}

TEST(StreamOrderedAllocatorTest, AStreamAddedLaterDoesNotTakeBlocksStillInUse) {
  FakeSystem system;
  FakeStreams streams;
  CachingAllocator allocator(Device::Cuda(0), system.Make(), streams.Make());
  MOE_ASSERT_OK(allocator.AddStream(kStreamA));
  MOE_ASSERT_OK_AND_ASSIGN(void* p, allocator.Allocate(1000));
  MOE_ASSERT_OK_AND_ASSIGN(void* p2, allocator.Allocate(1000));
  streams.Work(kStreamA);
  allocator.Free(p);
  allocator.Free(p2);
  EXPECT_EQ(streams.recorded, 0);
  MOE_ASSERT_OK(allocator.AddStream(kStreamB));  // a second ExecContext, on another stream
  EXPECT_EQ(streams.recorded, 1);                // one marker on A, shared by both blocks
  Allocator* on_b = allocator.ForStream(kStreamB);
  MOE_ASSERT_OK_AND_ASSIGN(void* q, on_b->Allocate(1000));
  EXPECT_NE(q, p);
  EXPECT_NE(q, p2);
  streams.Complete(kStreamA);
  MOE_ASSERT_OK_AND_ASSIGN(void* r, on_b->Allocate(1000));
  EXPECT_TRUE(r == p || r == p2);
  allocator.Free(q);
  allocator.Free(r);
  allocator.RemoveStream(kStreamB);
  allocator.RemoveStream(kStreamA);
}

TEST(StreamOrderedAllocatorTest, ARemovedStreamsBlocksAreIdle) {
  FakeSystem system;
  FakeStreams streams;
  CachingAllocator allocator(Device::Cuda(0), system.Make(), streams.Make());
  MOE_ASSERT_OK(allocator.AddStream(kStreamA));
  MOE_ASSERT_OK(allocator.AddStream(kStreamB));
  MOE_ASSERT_OK_AND_ASSIGN(void* p, allocator.ForStream(kStreamA)->Allocate(1000));
  MOE_ASSERT_OK_AND_ASSIGN(void* kept, allocator.ForStream(kStreamA)->Allocate(1000));
  streams.Work(kStreamA);
  allocator.Free(p);
  // A's ExecContext is destroyed: it synchronizes, then removes its stream.
  streams.Complete(kStreamA);
  allocator.RemoveStream(kStreamA);
  const int recorded = streams.recorded;
  allocator.Free(kept);  // a tensor that outlived its context: no marker on a dead stream
  EXPECT_EQ(streams.recorded, recorded);
  MOE_ASSERT_OK_AND_ASSIGN(void* q, allocator.ForStream(kStreamB)->Allocate(1000));
  MOE_ASSERT_OK_AND_ASSIGN(void* r, allocator.ForStream(kStreamB)->Allocate(1000));
  EXPECT_TRUE((q == p && r == kept) || (q == kept && r == p));
  EXPECT_EQ(system.allocations, 2);
  allocator.Free(q);
  allocator.Free(r);
}

TEST(StreamOrderedAllocatorTest, HostAccessBlocksWaitForTheirCopyEvenOnTheSameStream) {
  FakeSystem system;
  FakeStreams streams;
  CachingAllocator pinned(Device::Cpu(), system.Make(), streams.Make(), /*host_access=*/true);
  MOE_ASSERT_OK(pinned.AddStream(kStreamA));
  MOE_ASSERT_OK_AND_ASSIGN(void* p, pinned.Allocate(64));
  streams.Work(kStreamA);  // cudaMemcpyAsync(device, p) enqueued
  pinned.Free(p);
  EXPECT_EQ(streams.recorded, 1);
  MOE_ASSERT_OK_AND_ASSIGN(void* q, pinned.Allocate(64));
  EXPECT_NE(q, p);  // the host would overwrite p before the copy read it
  streams.Complete(kStreamA);
  MOE_ASSERT_OK_AND_ASSIGN(void* r, pinned.Allocate(64));
  EXPECT_EQ(r, p);
  pinned.Free(q);
  pinned.Free(r);
  pinned.RemoveStream(kStreamA);
}

TEST(StreamOrderedAllocatorTest, ABlockWithoutAMarkerGoesBackToTheSystem) {
  FakeSystem system;
  FakeStreams streams;
  CachingAllocator allocator(Device::Cuda(0), system.Make(), streams.Make());
  MOE_ASSERT_OK(allocator.AddStream(kStreamA));
  MOE_ASSERT_OK(allocator.AddStream(kStreamB));
  MOE_ASSERT_OK_AND_ASSIGN(void* p, allocator.Allocate(1000));
  streams.fail = true;
  allocator.Free(p);
  EXPECT_EQ(system.frees, 1);
  EXPECT_EQ(allocator.stats().bytes_reserved, 0u);
  EXPECT_EQ(allocator.stats().bytes_in_use, 0u);
}

TEST(ExecContextTest, WorkspaceGrowsGeometrically) {
  // Decode asks for a little more workspace each token; capacities grow by 1.5x at least.
  size_t capacity = 0;
  int reallocations = 0;
  const int tokens = 100000;
  for (int length = 1; length <= tokens; ++length) {
    const size_t request = 64 * static_cast<size_t>(length + 2) + 4096;
    if (request <= capacity) continue;
    const size_t grown = internal::WorkspaceCapacity(capacity, request);
    EXPECT_GE(grown, request);
    EXPECT_GE(grown, capacity + capacity / 2);
    EXPECT_EQ(grown % kAllocationAlignment, 0u);
    capacity = grown;
    ++reallocations;
  }
  // log_1.5(6.4 MB / 4 KB) ~ 18.
  EXPECT_LE(reallocations, 20);
  EXPECT_EQ(internal::WorkspaceCapacity(0, 1), kAllocationAlignment);
  EXPECT_EQ(internal::WorkspaceCapacity(1024, 1025), 1536u);
  EXPECT_EQ(internal::WorkspaceCapacity(1024, 4000), 4096u);
}

TEST(ExecContextTest, GrowingWorkspaceRequestsAllocateLogarithmicallyOften) {
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ExecContext> ctx, ExecContext::Create(Device::Cpu()));
  const size_t before = ctx->allocator()->stats().num_allocations;
  const void* last = nullptr;
  int changes = 0;
  for (int length = 1; length <= 20000; ++length) {
    MOE_ASSERT_OK_AND_ASSIGN(void* w, ctx->Workspace(16 * sizeof(float) * (length + 2)));
    if (w != last) ++changes;
    last = w;
  }
  // 192 bytes to 1.3 MB in 1.5x steps: log_1.5(20002 / 3) ~ 22 (one per token: 20000).
  EXPECT_LE(changes, 24);
  EXPECT_LE(ctx->allocator()->stats().num_allocations - before, 24u);
  EXPECT_GE(ctx->workspace_bytes(), 16 * sizeof(float) * 20002);
}

TEST(CpuAllocatorTest, AlignedAndAccounted) {
  Allocator* cpu = CpuAllocator();
  const size_t before = cpu->stats().bytes_in_use;
  MOE_ASSERT_OK_AND_ASSIGN(void* p, cpu->Allocate(100));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kAllocationAlignment, 0u);
  EXPECT_EQ(cpu->stats().bytes_in_use, before + 256);
  cpu->Free(p);
  EXPECT_EQ(cpu->stats().bytes_in_use, before);
}

TEST(CudaAllocatorTest, UnavailableDeviceIsAnError) {
  EXPECT_THAT(CudaAllocator(CudaDeviceCount()),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("CUDA device")));
}

}  // namespace
}  // namespace smoe
