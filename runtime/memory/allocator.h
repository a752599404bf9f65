// Allocators: a caching allocator over aligned host memory or cudaMalloc, so that a training step
// makes no system allocation after the first.
//
// Contract shared by every Allocator:
//   Allocate(0) returns nullptr and OK. Allocate never returns memory that is in use.
//   Free(nullptr) is a no-op. Free takes only pointers this allocator returned.
//   Thread-safe. Memory is aligned to at least kAllocationAlignment bytes.
// Stream semantics of the CUDA allocator: blocks are reused as soon as they are freed, which is
// safe because all of our work on a device is ordered on the ExecContext's one stream. Memory used
// by another stream must be synchronized by its user before it is freed.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <mutex>
#include <unordered_map>

#include "runtime/core/status.h"
#include "runtime/device/device.h"

namespace smoe {

inline constexpr size_t kAllocationAlignment = 256;

struct AllocatorStats {
  size_t bytes_in_use = 0;       // held by live allocations (rounded sizes)
  size_t peak_bytes_in_use = 0;  // high-water mark of bytes_in_use since construction or reset
  size_t bytes_reserved = 0;     // obtained from the system and not yet returned (caching only)
  size_t num_allocations = 0;    // Allocate calls that returned memory
  size_t num_system_allocations = 0;  // calls into the system allocator (cudaMalloc, ...)
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual Device device() const = 0;
  [[nodiscard]] virtual StatusOr<void*> Allocate(size_t bytes) = 0;
  virtual void Free(void* ptr) = 0;
  virtual AllocatorStats stats() const = 0;
  virtual void ResetPeak() = 0;
};

// A system allocator the caching allocator sits on: returns memory or an error (for example
// ResourceExhausted), and frees it.
struct SystemAllocator {
  std::function<StatusOr<void*>(size_t bytes)> allocate;
  std::function<void(void* ptr)> free;
};

// Keeps freed blocks and hands them out again. Sizes are rounded up to kAllocationAlignment; a
// request is served by the smallest cached block of at least its size and at most twice it.
// When the system allocator fails, the cache is returned to the system and the call retried once.
class CachingAllocator final : public Allocator {
 public:
  CachingAllocator(Device device, SystemAllocator system);
  ~CachingAllocator() override;

  Device device() const override { return device_; }
  [[nodiscard]] StatusOr<void*> Allocate(size_t bytes) override;
  void Free(void* ptr) override;
  AllocatorStats stats() const override;
  void ResetPeak() override;
  // Returns every cached (free) block to the system.
  void EmptyCache();

 private:
  void EmptyCacheLocked();

  const Device device_;
  SystemAllocator system_;
  mutable std::mutex mutex_;
  std::multimap<size_t, void*> free_blocks_;      // size -> block
  std::unordered_map<void*, size_t> live_blocks_;  // block -> size
  AllocatorStats stats_;
};

// Aligned host memory through a CachingAllocator (sizes a training step repeats are reused).
Allocator* CpuAllocator();
// The caching allocator of CUDA device `index` (FailedPrecondition without CUDA or the device).
[[nodiscard]] StatusOr<Allocator*> CudaAllocator(int index);
// CpuAllocator() or CudaAllocator(device.index).
[[nodiscard]] StatusOr<Allocator*> AllocatorFor(Device device);

}  // namespace smoe
