// Allocators: a caching allocator over aligned host memory, cudaMalloc or pinned host memory, so
// that a training step makes no system allocation after the first.
//
// Contract shared by every Allocator:
//   Allocate(0) returns nullptr and OK. Allocate never returns memory that is in use.
//   Free(nullptr) is a no-op. Free takes only pointers this allocator returned.
//   Thread-safe. Memory is aligned to at least kAllocationAlignment bytes.
//
// Stream-ordered reuse (the CUDA and pinned allocators; a CachingAllocator given StreamEvents).
// Device work is asynchronous: a block freed on the host may still be read or written by work
// enqueued on a stream. Several streams may share one allocator (the Python bindings make one
// ExecContext per torch stream), so a freed block is handed out again only when that is safe:
//   - Streams are registered for their lifetime (ExecContext does it for its stream);
//     RemoveStream promises that the stream's work has completed.
//   - A block allocated for one stream (AllocateOnStream, or ExecContext::allocator(), which is
//     ForStream(ctx.stream())) belongs to that stream: its user synchronizes before freeing it if
//     other streams used it. Any other block may have been used by every registered stream.
//   - While one stream is registered, a freed block is reusable at once (stream order makes it
//     safe; no event is recorded). Once several are, Free records a marker (event) on each stream
//     that may use the block, and an allocation for stream s reuses it when every marker on a
//     stream other than s has completed (s's own work is ordered before s's next use anyway). An
//     allocation for no particular stream counts as one for the sole registered stream, or, with
//     several, waits for every marker. A stream registered later gets markers put on the blocks
//     already cached, first.
//   - host_access allocators (pinned staging memory, which the host writes directly): every Free
//     records markers, and a block is reused only when all of them have completed.
// The checks never block: a block that is not yet reusable is skipped, and a fresh one allocated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

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

// A stream of device work, as the allocator sees it: a cudaStream_t's bits (0 is the legacy default
// stream, a valid one). kNoStream: no stream in particular.
using StreamId = uintptr_t;
inline constexpr StreamId kNoStream = ~StreamId{0};

// Markers in streams of work, for stream-ordered reuse: CUDA events on a GPU, a fake in tests.
// The caching allocator calls them under its lock, never concurrently.
class StreamEvents {
 public:
  virtual ~StreamEvents() = default;
  // A marker after all the work enqueued on `stream` so far.
  [[nodiscard]] virtual StatusOr<uint64_t> Record(StreamId stream) = 0;
  // Whether the work before `marker` has completed. Never blocks.
  virtual bool Done(uint64_t marker) = 0;
  // `marker` is no longer needed.
  virtual void Release(uint64_t marker) = 0;
};

// A system allocator the caching allocator sits on: returns memory or an error (for example
// ResourceExhausted), and frees it.
struct SystemAllocator {
  std::function<StatusOr<void*>(size_t bytes)> allocate;
  std::function<void(void* ptr)> free;
};

// Keeps freed blocks and hands them out again. Sizes are rounded up to kAllocationAlignment; a
// request is served by the smallest reusable cached block of at least its size and at most twice
// it. When the system allocator fails, the cache is returned to the system and the call retried
// once. With `events`, reuse is stream-ordered (top of this file); without, a freed block is
// reusable at once (host memory only the host touches).
class CachingAllocator final : public Allocator {
 public:
  CachingAllocator(Device device, SystemAllocator system,
                   std::unique_ptr<StreamEvents> events = nullptr, bool host_access = false);
  ~CachingAllocator() override;

  Device device() const override { return device_; }
  // A block for no particular stream (see the top of this file).
  [[nodiscard]] StatusOr<void*> Allocate(size_t bytes) override;
  void Free(void* ptr) override;
  AllocatorStats stats() const override;
  void ResetPeak() override;
  // Returns every cached (free) block to the system (cudaFree and cudaFreeHost wait for the
  // device, so blocks still awaiting markers may go too).
  void EmptyCache();

  // A block for work on `stream` alone.
  [[nodiscard]] StatusOr<void*> AllocateOnStream(size_t bytes, StreamId stream);
  // The allocator whose Allocate is AllocateOnStream(bytes, stream); owned by this allocator and
  // valid for its lifetime (so tensors may outlive the ExecContext that made them).
  Allocator* ForStream(StreamId stream);
  // Registers a stream that uses this allocator's memory (counted: n adds need n removes).
  // Errors only when a marker cannot be recorded.
  [[nodiscard]] Status AddStream(StreamId stream);
  // The last user of `stream` is done with it, and its work has completed (synchronized).
  void RemoveStream(StreamId stream);

 private:
  class StreamView;
  struct Marker {
    StreamId stream;
    uint64_t id;
  };
  using MarkerRef = std::shared_ptr<const Marker>;  // shared by the blocks cached at one time
  struct FreeBlock {
    void* ptr = nullptr;
    // Without markers: the stream that may still use the block (kNoStream: none).
    StreamId stream = kNoStream;
    std::vector<MarkerRef> markers;
  };
  struct LiveBlock {
    size_t size = 0;
    StreamId stream = kNoStream;  // AllocateOnStream's stream
  };

  bool Reusable(const FreeBlock& block, StreamId requester) const;
  StatusOr<MarkerRef> RecordLocked(StreamId stream);
  void EmptyCacheLocked();

  const Device device_;
  SystemAllocator system_;
  const std::unique_ptr<StreamEvents> events_;
  const bool host_access_;
  mutable std::mutex mutex_;
  std::multimap<size_t, FreeBlock> free_blocks_;  // size -> block
  std::unordered_map<void*, LiveBlock> live_blocks_;
  std::map<StreamId, int> streams_;  // registered streams -> registrations
  std::map<StreamId, std::unique_ptr<StreamView>> views_;
  AllocatorStats stats_;
};

// Aligned host memory through a CachingAllocator (sizes a training step repeats are reused).
Allocator* CpuAllocator();
// The caching allocator of CUDA device `index` (FailedPrecondition without CUDA or the device).
// Stream-ordered (CUDA events).
[[nodiscard]] StatusOr<CachingAllocator*> CudaAllocator(int index);
// Pinned (page-locked, cudaMallocHost) host memory for staging copies to and from CUDA device
// `index`: stream-ordered with host_access, so a staging block is rewritten only after the copies
// enqueued before its Free have completed. Device() is the CPU. FailedPrecondition without CUDA or
// the device.
[[nodiscard]] StatusOr<CachingAllocator*> PinnedHostAllocator(int index);
// CpuAllocator() or CudaAllocator(device.index).
[[nodiscard]] StatusOr<Allocator*> AllocatorFor(Device device);

}  // namespace smoe
