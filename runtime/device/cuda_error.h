// Maps CUDA runtime and cuBLAS errors to absl::Status. Include only from CUDA-enabled sources.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "runtime/core/status.h"

namespace smoe {

// OK for cudaSuccess; otherwise ResourceExhausted for out-of-memory, Internal for the rest,
// with `what` and CUDA's own error name and text.
[[nodiscard]] Status CudaStatus(cudaError_t error, absl::string_view what);
[[nodiscard]] Status CublasStatus(cublasStatus_t status, absl::string_view what);

}  // namespace smoe

#define MOE_CUDA_RETURN_IF_ERROR(expr) MOE_RETURN_IF_ERROR(::smoe::CudaStatus((expr), #expr))
#define MOE_CUBLAS_RETURN_IF_ERROR(expr) MOE_RETURN_IF_ERROR(::smoe::CublasStatus((expr), #expr))
// After a kernel launch: reports launch-configuration errors without synchronizing.
#define MOE_CUDA_RETURN_IF_LAUNCH_ERROR(what) \
  MOE_RETURN_IF_ERROR(::smoe::CudaStatus(cudaGetLastError(), what))
