// ExecContext: everything an op needs to run on a device: the device, its stream, its allocator,
// a workspace and the BLAS handles. One per device per thread of work; not thread-safe.
//
// Ops take `ExecContext& ctx` and enqueue their work on ctx.stream() (CPU work runs inline).
// The CUDA types are forward-declared so that CPU-only code need not include CUDA headers.
//
// Memory: a CUDA context registers its stream with its device's caching allocator and with the
// device's pinned staging allocator for its lifetime (runtime/memory/allocator.h), so that
// contexts on different streams can share them: a block freed by one stream's work is not
// handed to another stream before that work has completed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "runtime/core/status.h"
#include "runtime/device/device.h"
#include "runtime/memory/allocator.h"

struct CUstream_st;
struct cublasContext;
struct cublasLtContext;

namespace smoe {

using CudaStream = CUstream_st*;          // cudaStream_t
using CublasHandle = cublasContext*;      // cublasHandle_t
using CublasLtHandle = cublasLtContext*;  // cublasLtHandle_t

class ExecContext {
 public:
  // A context for `device`. For CUDA: a new non-blocking stream and cuBLAS/cuBLASLt handles
  // bound to it; FailedPrecondition when the device is not available.
  [[nodiscard]] static StatusOr<std::unique_ptr<ExecContext>> Create(Device device);
  // A CUDA context that enqueues on an existing `stream` (e.g. PyTorch's current stream) with its
  // own cuBLAS/cuBLASLt handles; the stream is borrowed, never destroyed. The caller keeps the
  // stream alive for the context's lifetime. InvalidArgument for a CPU device; FailedPrecondition
  // when the device is not available.
  [[nodiscard]] static StatusOr<std::unique_ptr<ExecContext>> CreateOnStream(Device device,
                                                                             CudaStream stream);
  // A process-wide CPU context (for tests, tools and CPU-only callers).
  static ExecContext& Cpu();

  ~ExecContext();
  ExecContext(const ExecContext&) = delete;
  ExecContext& operator=(const ExecContext&) = delete;

  Device device() const { return device_; }
  // Memory for work on this context's stream (CUDA: the device allocator's view for the stream;
  // a block used by another stream too must be synchronized by its user before it is freed).
  Allocator* allocator() const { return allocator_; }
  // Pinned host memory for staging host <-> device copies on this context's stream: a block freed
  // right after enqueuing a copy is not rewritten before that copy has completed. The CPU
  // allocator on a CPU context.
  Allocator* host_staging() const { return host_staging_; }
  CudaStream stream() const { return stream_; }
  CublasHandle cublas() const { return cublas_; }
  CublasLtHandle cublas_lt() const { return cublas_lt_; }

  // Scratch memory of at least `bytes`, valid until the next Workspace call on this context.
  // Grows, never shrinks, and geometrically (internal::WorkspaceCapacity), so that requests that
  // grow a little each call (decode: one more cached token) reallocate O(log) times. The block
  // it replaces is freed in stream order (work already enqueued may still read it).
  [[nodiscard]] StatusOr<void*> Workspace(size_t bytes);
  size_t workspace_bytes() const { return workspace_bytes_; }

  // Waits for all work enqueued on the stream (no-op on CPU). Every call is a host sync and is
  // counted, on the CPU too (where it marks the point a GPU run would wait), so that the sync
  // budget of a step can be checked on any machine.
  [[nodiscard]] Status Synchronize();
  // Synchronize calls on this context since it was created.
  int64_t host_syncs() const { return host_syncs_; }

 private:
  explicit ExecContext(Device device, Allocator* allocator);
  // CUDA: the stream (created when null), BLAS handles and the allocators' registrations.
  [[nodiscard]] Status InitCuda(CudaStream stream);

  Device device_;
  Allocator* allocator_;
  Allocator* host_staging_;
  CachingAllocator* device_pool_ = nullptr;  // CUDA: the registrations this context holds
  CachingAllocator* staging_pool_ = nullptr;
  CudaStream stream_ = nullptr;
  bool owns_stream_ = true;
  CublasHandle cublas_ = nullptr;
  CublasLtHandle cublas_lt_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  int64_t host_syncs_ = 0;
};

namespace internal {
// The capacity a workspace of `current` bytes grows to for a request of `requested` > current
// bytes: at least 1.5 x current, rounded up to kAllocationAlignment.
size_t WorkspaceCapacity(size_t current, size_t requested);
}  // namespace internal

}  // namespace smoe
