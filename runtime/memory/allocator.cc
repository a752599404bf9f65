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

// The allocator for one stream: AllocateOnStream on the shared pool.
class CachingAllocator::StreamView final : public Allocator {
 public:
  StreamView(CachingAllocator* pool, StreamId stream) : pool_(pool), stream_(stream) {}
  Device device() const override { return pool_->device(); }
  StatusOr<void*> Allocate(size_t bytes) override {
    return pool_->AllocateOnStream(bytes, stream_);
  }
  void Free(void* ptr) override { pool_->Free(ptr); }
  AllocatorStats stats() const override { return pool_->stats(); }
  void ResetPeak() override { pool_->ResetPeak(); }

 private:
  CachingAllocator* const pool_;
  const StreamId stream_;
};

CachingAllocator::CachingAllocator(Device device, SystemAllocator system,
                                   std::unique_ptr<StreamEvents> events, bool host_access)
    : device_(device),
      system_(std::move(system)),
      events_(std::move(events)),
      host_access_(host_access) {}

CachingAllocator::~CachingAllocator() {
  std::lock_guard<std::mutex> lock(mutex_);
  EmptyCacheLocked();
  // Live blocks at exit belong to static objects; the process is ending, leave them.
}

StatusOr<void*> CachingAllocator::Allocate(size_t bytes) {
  return AllocateOnStream(bytes, kNoStream);
}

bool CachingAllocator::Reusable(const FreeBlock& block, StreamId requester) const {
  if (events_ == nullptr) return true;
  if (block.markers.empty()) {
    // Cached while at most one stream was registered: that stream may still use it.
    return block.stream == kNoStream || !streams_.contains(block.stream) ||
           (block.stream == requester && !host_access_);
  }
  for (const MarkerRef& marker : block.markers) {
    if (marker->stream == requester && !host_access_) continue;  // ordered before its next use
    if (!events_->Done(marker->id)) return false;
  }
  return true;
}

StatusOr<CachingAllocator::MarkerRef> CachingAllocator::RecordLocked(StreamId stream) {
  MOE_ASSIGN_OR_RETURN(const uint64_t id, events_->Record(stream));
  StreamEvents* events = events_.get();
  // Released when the last block holding it is reused or returned (always under mutex_).
  return MarkerRef(new Marker{stream, id}, [events](const Marker* marker) {
    events->Release(marker->id);
    delete marker;
  });
}

StatusOr<void*> CachingAllocator::AllocateOnStream(size_t bytes, StreamId stream) {
  if (bytes == 0) return nullptr;
  const size_t rounded = RoundUp(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  StreamId requester = stream;
  if (requester == kNoStream && streams_.size() == 1) requester = streams_.begin()->first;
  void* ptr = nullptr;
  size_t size = rounded;
  auto it = free_blocks_.lower_bound(rounded);
  while (it != free_blocks_.end() && it->first <= 2 * rounded && !Reusable(it->second, requester)) {
    ++it;
  }
  if (it != free_blocks_.end() && it->first <= 2 * rounded) {
    size = it->first;
    ptr = it->second.ptr;
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
  live_blocks_[ptr] = LiveBlock{size, stream};
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
  const LiveBlock live = it->second;
  live_blocks_.erase(it);
  stats_.bytes_in_use -= live.size;
  FreeBlock block;
  block.ptr = ptr;
  if (events_ != nullptr) {
    // The streams that may still use the block: its own, or any registered one.
    std::vector<StreamId> users;
    if (live.stream != kNoStream) {
      if (streams_.contains(live.stream)) users.push_back(live.stream);
    } else {
      for (const auto& [s, count] : streams_) users.push_back(s);
    }
    if (!host_access_ && streams_.size() <= 1) {
      block.stream = users.empty() ? kNoStream : users.front();
    } else {
      for (StreamId s : users) {
        StatusOr<MarkerRef> marker = RecordLocked(s);
        if (!marker.ok()) {
          // Without a marker the block cannot be reused safely: hand it back to the system,
          // whose free waits for the device.
          block.markers.clear();
          system_.free(ptr);
          stats_.bytes_reserved -= live.size;
          return;
        }
        block.markers.push_back(*std::move(marker));
      }
    }
  }
  free_blocks_.emplace(live.size, std::move(block));
}

Allocator* CachingAllocator::ForStream(StreamId stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::unique_ptr<StreamView>& view = views_[stream];
  if (view == nullptr) view = std::make_unique<StreamView>(this, stream);
  return view.get();
}

Status CachingAllocator::AddStream(StreamId stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (++streams_[stream] > 1 || events_ == nullptr || host_access_) return absl::OkStatus();
  // Blocks cached while one stream was registered carry no marker; the new stream must not take
  // one before that stream's work on it has completed. One marker per such stream.
  std::map<StreamId, MarkerRef> now;
  for (auto& [size, block] : free_blocks_) {
    if (!block.markers.empty() || block.stream == kNoStream || block.stream == stream) continue;
    if (!streams_.contains(block.stream)) {
      block.stream = kNoStream;
      continue;
    }
    MarkerRef& marker = now[block.stream];
    if (marker == nullptr) {
      StatusOr<MarkerRef> recorded = RecordLocked(block.stream);
      if (!recorded.ok()) {
        if (--streams_[stream] == 0) streams_.erase(stream);
        return recorded.status();
      }
      marker = *std::move(recorded);
    }
    block.markers.push_back(marker);
  }
  return absl::OkStatus();
}

void CachingAllocator::RemoveStream(StreamId stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = streams_.find(stream);
  MOE_CHECK(it != streams_.end()) << "removing a stream that was not added";
  if (--it->second > 0) return;
  streams_.erase(it);
  // Its work has completed: what it left cached is idle.
  for (auto& [size, block] : free_blocks_) {
    if (block.stream == stream) block.stream = kNoStream;
  }
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
  for (auto& [size, block] : free_blocks_) {
    system_.free(block.ptr);
    stats_.bytes_reserved -= size;
  }
  free_blocks_.clear();
}

Allocator* CpuAllocator() {
  // Cached like device memory: a training step allocates the same activation sizes every time,
  // and fresh large host blocks would cost an mmap, page faults and an munmap each.
  static CachingAllocator* allocator = new CachingAllocator(
      Device::Cpu(), SystemAllocator{[](size_t bytes) -> StatusOr<void*> {
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

#if MOE_WITH_CUDA
namespace {

// CUDA events as stream markers, recycled. Events belong to device `index`, like the streams.
class CudaStreamEvents final : public StreamEvents {
 public:
  explicit CudaStreamEvents(int index) : index_(index) {}
  ~CudaStreamEvents() override {
    for (cudaEvent_t event : idle_) cudaEventDestroy(event);
  }

  StatusOr<uint64_t> Record(StreamId stream) override {
    cudaEvent_t event = nullptr;
    if (idle_.empty()) {
      int previous = -1;
      MOE_CUDA_RETURN_IF_ERROR(cudaGetDevice(&previous));
      if (previous != index_) MOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(index_));
      const cudaError_t created = cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
      if (previous != index_) cudaSetDevice(previous);
      MOE_CUDA_RETURN_IF_ERROR(created);
    } else {
      event = idle_.back();
      idle_.pop_back();
    }
    const cudaError_t recorded = cudaEventRecord(event, reinterpret_cast<cudaStream_t>(stream));
    if (recorded != cudaSuccess) {
      idle_.push_back(event);
      return CudaStatus(recorded, "cudaEventRecord (allocator stream marker)");
    }
    return reinterpret_cast<uint64_t>(event);
  }

  bool Done(uint64_t marker) override {
    const cudaError_t status = cudaEventQuery(reinterpret_cast<cudaEvent_t>(marker));
    // Not ready is reported through the error state too; it is not an error of anyone's.
    if (status == cudaErrorNotReady) (void)cudaGetLastError();
    return status == cudaSuccess;
  }

  void Release(uint64_t marker) override { idle_.push_back(reinterpret_cast<cudaEvent_t>(marker)); }

 private:
  const int index_;
  std::vector<cudaEvent_t> idle_;
};

Status CheckCudaIndex(int index) {
  if (index < 0 || index >= CudaDeviceCount()) {
    return absl::FailedPreconditionError(absl::StrCat("CUDA device ", index, " is not visible (",
                                                      CudaDeviceCount(), " devices visible)"));
  }
  return absl::OkStatus();
}

// One allocator per visible device, made on first use by `make` and kept for the process.
StatusOr<CachingAllocator*> PerDevice(
    int index, std::mutex& mutex, std::vector<std::unique_ptr<CachingAllocator>>*& table,
    const std::function<std::unique_ptr<CachingAllocator>()>& make) {
  MOE_RETURN_IF_ERROR(CheckCudaIndex(index));
  std::lock_guard<std::mutex> lock(mutex);
  if (table == nullptr) {
    table = new std::vector<std::unique_ptr<CachingAllocator>>(CudaDeviceCount());
  }
  auto& slot = (*table)[index];
  if (!slot) slot = make();
  return slot.get();
}

}  // namespace
#endif

StatusOr<CachingAllocator*> CudaAllocator(int index) {
#if MOE_WITH_CUDA
  static std::mutex mutex;
  static std::vector<std::unique_ptr<CachingAllocator>>* allocators = nullptr;
  return PerDevice(index, mutex, allocators, [index] {
    SystemAllocator system{[index](size_t bytes) -> StatusOr<void*> {
                             MOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(index));
                             void* ptr = nullptr;
                             MOE_CUDA_RETURN_IF_ERROR(cudaMalloc(&ptr, bytes));
                             return ptr;
                           },
                           [index](void* ptr) {
                             cudaSetDevice(index);
                             cudaFree(ptr);
                           }};
    return std::make_unique<CachingAllocator>(Device::Cuda(index), std::move(system),
                                              std::make_unique<CudaStreamEvents>(index));
  });
#else
  return absl::FailedPreconditionError(
      absl::StrCat("CUDA device ", index, " requested, but this build has no CUDA backend"));
#endif
}

StatusOr<CachingAllocator*> PinnedHostAllocator(int index) {
#if MOE_WITH_CUDA
  static std::mutex mutex;
  static std::vector<std::unique_ptr<CachingAllocator>>* allocators = nullptr;
  return PerDevice(index, mutex, allocators, [index] {
    SystemAllocator system{[](size_t bytes) -> StatusOr<void*> {
                             void* ptr = nullptr;
                             MOE_CUDA_RETURN_IF_ERROR(cudaMallocHost(&ptr, bytes));
                             return ptr;
                           },
                           [](void* ptr) { cudaFreeHost(ptr); }};
    return std::make_unique<CachingAllocator>(Device::Cpu(), std::move(system),
                                              std::make_unique<CudaStreamEvents>(index),
                                              /*host_access=*/true);
  });
#else
  return absl::FailedPreconditionError(absl::StrCat(
      "pinned memory for CUDA device ", index, " requested, but this build has no CUDA backend"));
#endif
}

StatusOr<Allocator*> AllocatorFor(Device device) {
  if (device.is_cpu()) return CpuAllocator();
  return CudaAllocator(device.index);
}

}  // namespace smoe
