#include "runtime/memory/allocator.h"

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"

#if MOE_WITH_CUDA
#include <cuda_runtime.h>

#include "runtime/device/cuda_error.h"
#endif

namespace smoe {
namespace {

size_t RoundUp(size_t bytes) {
  return (bytes + kAllocationAlignment - 1) / kAllocationAlignment * kAllocationAlignment;
}

}  // namespace

CachingAllocator::CachingAllocator(Device device, SystemAllocator system)
    : device_(device), system_(std::move(system)) {}

CachingAllocator::~CachingAllocator() {
  std::lock_guard<std::mutex> lock(mutex_);
  EmptyCacheLocked();
  // Live blocks at exit belong to static objects; the process is ending, leave them.
}

StatusOr<void*> CachingAllocator::Allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  const size_t rounded = RoundUp(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  void* ptr = nullptr;
  size_t size = rounded;
  auto it = free_blocks_.lower_bound(rounded);
  if (it != free_blocks_.end() && it->first <= 2 * rounded) {
    size = it->first;
    ptr = it->second;
    free_blocks_.erase(it);
  } else {
    StatusOr<void*> fresh = system_.allocate(rounded);
    if (!fresh.ok() && !free_blocks_.empty()) {
      EmptyCacheLocked();
      fresh = system_.allocate(rounded);
    }
    if (!fresh.ok()) {
      return Status(fresh.status().code(),
                    absl::StrCat("allocating ", bytes, " bytes on ", device_.ToString(), " (",
                                 stats_.bytes_in_use, " in use): ", fresh.status().message()));
    }
    ptr = *fresh;
    stats_.bytes_reserved += rounded;
    ++stats_.num_system_allocations;
  }
  live_blocks_[ptr] = size;
  stats_.bytes_in_use += size;
  stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
  ++stats_.num_allocations;
  return ptr;
}

void CachingAllocator::Free(void* ptr) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = live_blocks_.find(ptr);
  MOE_CHECK(it != live_blocks_.end()) << "freeing a pointer this allocator did not return";
  stats_.bytes_in_use -= it->second;
  free_blocks_.emplace(it->second, ptr);
  live_blocks_.erase(it);
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void CachingAllocator::ResetPeak() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_bytes_in_use = stats_.bytes_in_use;
}

void CachingAllocator::EmptyCache() {
  std::lock_guard<std::mutex> lock(mutex_);
  EmptyCacheLocked();
}

void CachingAllocator::EmptyCacheLocked() {
  for (auto& [size, ptr] : free_blocks_) {
    system_.free(ptr);
    stats_.bytes_reserved -= size;
  }
  free_blocks_.clear();
}

Allocator* CpuAllocator() {
  // Cached like device memory: a training step allocates the same activation sizes every time,
  // and fresh large host blocks would cost an mmap, page faults and an munmap each.
  static CachingAllocator* allocator = new CachingAllocator(
      Device::Cpu(),
      SystemAllocator{[](size_t bytes) -> StatusOr<void*> {
                        void* ptr = std::aligned_alloc(kAllocationAlignment, bytes);
                        if (ptr == nullptr) {
                          return absl::ResourceExhaustedError(
                              absl::StrCat("host allocation of ", bytes, " bytes"));
                        }
                        return ptr;
                      },
                      [](void* ptr) { std::free(ptr); }});
  return allocator;
}

StatusOr<Allocator*> CudaAllocator(int index) {
#if MOE_WITH_CUDA
  if (index < 0 || index >= CudaDeviceCount()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CUDA device ", index, " is not visible (", CudaDeviceCount(), " devices visible)"));
  }
  static std::mutex mutex;
  static std::vector<std::unique_ptr<CachingAllocator>>* allocators =
      new std::vector<std::unique_ptr<CachingAllocator>>(CudaDeviceCount());
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = (*allocators)[index];
  if (!slot) {
    SystemAllocator system{
        [index](size_t bytes) -> StatusOr<void*> {
          MOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(index));
          void* ptr = nullptr;
          MOE_CUDA_RETURN_IF_ERROR(cudaMalloc(&ptr, bytes));
          return ptr;
        },
        [index](void* ptr) {
          cudaSetDevice(index);
          cudaFree(ptr);
        }};
    slot = std::make_unique<CachingAllocator>(Device::Cuda(index), std::move(system));
  }
  return slot.get();
#else
  return absl::FailedPreconditionError(
      absl::StrCat("CUDA device ", index, " requested, but this build has no CUDA backend"));
#endif
}

StatusOr<Allocator*> AllocatorFor(Device device) {
  if (device.is_cpu()) return CpuAllocator();
  return CudaAllocator(device.index);
}

}  // namespace smoe
