#include "runtime/memory/allocator.h"

#include <cstdlib>
#include <map>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
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
    return SystemAllocator{
        [this](size_t bytes) -> StatusOr<void*> {
          if (held + bytes > capacity) return absl::ResourceExhaustedError("fake out of memory");
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
