#include "runtime/device/exec_context.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

#if MOE_WITH_CUDA
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "runtime/device/cuda_error.h"
#endif

namespace smoe {

ExecContext::ExecContext(Device device, Allocator* allocator)
    : device_(device), allocator_(allocator), host_staging_(CpuAllocator()) {}

StatusOr<std::unique_ptr<ExecContext>> ExecContext::Create(Device device) {
  MOE_ASSIGN_OR_RETURN(Allocator * allocator, AllocatorFor(device));
  std::unique_ptr<ExecContext> ctx(new ExecContext(device, allocator));
  if (device.is_cuda()) MOE_RETURN_IF_ERROR(ctx->InitCuda(nullptr));
  return ctx;
}

StatusOr<std::unique_ptr<ExecContext>> ExecContext::CreateOnStream(Device device,
                                                                   CudaStream stream) {
  if (!device.is_cuda()) {
    return BadArgument("device", device.ToString(), "a CUDA device (CreateOnStream)");
  }
  MOE_ASSIGN_OR_RETURN(Allocator * allocator, AllocatorFor(device));
  std::unique_ptr<ExecContext> ctx(new ExecContext(device, allocator));
  ctx->stream_ = stream;
  ctx->owns_stream_ = false;
  MOE_RETURN_IF_ERROR(ctx->InitCuda(stream));
  return ctx;
}

Status ExecContext::InitCuda(CudaStream stream) {
#if MOE_WITH_CUDA
  MOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_.index));
  if (stream == nullptr && owns_stream_) {
    MOE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  MOE_CUBLAS_RETURN_IF_ERROR(cublasCreate(&cublas_));
  MOE_CUBLAS_RETURN_IF_ERROR(cublasSetStream(cublas_, stream_));
  MOE_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&cublas_lt_));
  const StreamId id = reinterpret_cast<StreamId>(stream_);
  MOE_ASSIGN_OR_RETURN(CachingAllocator * device_pool, CudaAllocator(device_.index));
  MOE_ASSIGN_OR_RETURN(CachingAllocator * staging_pool, PinnedHostAllocator(device_.index));
  MOE_RETURN_IF_ERROR(device_pool->AddStream(id));
  device_pool_ = device_pool;
  MOE_RETURN_IF_ERROR(staging_pool->AddStream(id));
  staging_pool_ = staging_pool;
  allocator_ = device_pool->ForStream(id);
  host_staging_ = staging_pool->ForStream(id);
  return absl::OkStatus();
#else
  (void)stream;
  return absl::FailedPreconditionError(
      absl::StrCat(device_.ToString(), " requested, but this build has no CUDA backend"));
#endif
}

ExecContext& ExecContext::Cpu() {
  static ExecContext* ctx = new ExecContext(Device::Cpu(), CpuAllocator());
  return *ctx;
}

ExecContext::~ExecContext() {
  if (device_.is_cuda()) (void)Synchronize();
  allocator_->Free(workspace_);
  // The stream's work has completed: the allocators may hand its blocks to other streams.
  const StreamId id = reinterpret_cast<StreamId>(stream_);
  if (device_pool_ != nullptr) device_pool_->RemoveStream(id);
  if (staging_pool_ != nullptr) staging_pool_->RemoveStream(id);
#if MOE_WITH_CUDA
  if (cublas_lt_ != nullptr) cublasLtDestroy(cublas_lt_);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (stream_ != nullptr && owns_stream_) cudaStreamDestroy(stream_);
#endif
}

StatusOr<void*> ExecContext::Workspace(size_t bytes) {
  if (bytes <= workspace_bytes_) return workspace_;
  const size_t capacity = internal::WorkspaceCapacity(workspace_bytes_, bytes);
  MOE_ASSIGN_OR_RETURN(void* fresh, allocator_->Allocate(capacity));
  // Work already enqueued may still read the old block; the allocator reuses it in stream order.
  allocator_->Free(workspace_);
  workspace_ = fresh;
  workspace_bytes_ = capacity;
  return workspace_;
}

Status ExecContext::Synchronize() {
  ++host_syncs_;
#if MOE_WITH_CUDA
  if (device_.is_cuda()) {
    MOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  }
#endif
  return absl::OkStatus();
}

namespace internal {

size_t WorkspaceCapacity(size_t current, size_t requested) {
  const size_t grown = std::max(requested, current + current / 2);
  return (grown + kAllocationAlignment - 1) / kAllocationAlignment * kAllocationAlignment;
}

}  // namespace internal
}  // namespace smoe
