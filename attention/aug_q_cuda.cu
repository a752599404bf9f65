// CUDA backend of the SwiGLU gate in aug_q.h: one thread per element.
#include <cuda_runtime.h>

#include "attention/aug_q.h"
#include "attention/cuda_common.cuh"
#include "runtime/device/cuda_error.h"

namespace smoe {
namespace {

using attention_internal::CeilDiv;
using attention_internal::FromFloat;
using attention_internal::ToFloat;

template <typename T>
__global__ void SwiGluForwardKernel(const T* gate, const T* up, T* h, int64_t n) {
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = ToFloat(gate[i]);
  h[i] = FromFloat<T>(g / (1.0f + expf(-g)) * ToFloat(up[i]));
}

template <typename T>
__global__ void SwiGluBackwardKernel(const T* gate, const T* up, const T* dh, T* dgate, T* dup,
                                     int64_t n) {
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = ToFloat(gate[i]), u = ToFloat(up[i]), d = ToFloat(dh[i]);
  const float sig = 1.0f / (1.0f + expf(-g));
  dgate[i] = FromFloat<T>(d * u * sig * (1.0f + g * (1.0f - sig)));
  dup[i] = FromFloat<T>(d * g * sig);
}

}  // namespace

namespace internal {

Status SwiGluForwardCuda(ExecContext& ctx, DType dtype, const void* gate, const void* up, void* h,
                         int64_t n) {
  if (dtype == DType::kF32) {
    SwiGluForwardKernel<float><<<CeilDiv(n, 256), 256, 0, ctx.stream()>>>(
        static_cast<const float*>(gate), static_cast<const float*>(up), static_cast<float*>(h), n);
  } else {
    SwiGluForwardKernel<BF16><<<CeilDiv(n, 256), 256, 0, ctx.stream()>>>(
        static_cast<const BF16*>(gate), static_cast<const BF16*>(up), static_cast<BF16*>(h), n);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("SwiGluForwardKernel");
  return absl::OkStatus();
}

Status SwiGluBackwardCuda(ExecContext& ctx, DType dtype, const void* gate, const void* up,
                          const void* dh, void* dgate, void* dup, int64_t n) {
  if (dtype == DType::kF32) {
    SwiGluBackwardKernel<float><<<CeilDiv(n, 256), 256, 0, ctx.stream()>>>(
        static_cast<const float*>(gate), static_cast<const float*>(up),
        static_cast<const float*>(dh), static_cast<float*>(dgate), static_cast<float*>(dup), n);
  } else {
    SwiGluBackwardKernel<BF16><<<CeilDiv(n, 256), 256, 0, ctx.stream()>>>(
        static_cast<const BF16*>(gate), static_cast<const BF16*>(up), static_cast<const BF16*>(dh),
        static_cast<BF16*>(dgate), static_cast<BF16*>(dup), n);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("SwiGluBackwardKernel");
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace smoe
