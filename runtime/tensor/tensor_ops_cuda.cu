// CUDA backends of tensor_ops.h: grid-stride elementwise kernels.
#include <cuda_runtime.h>

#include "runtime/core/philox.h"
#include "runtime/device/cuda_error.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

constexpr int kThreads = 256;

int BlocksFor(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

template <typename T>
__global__ void FillKernel(T* out, int64_t n, T value) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = value;
  }
}

__device__ __forceinline__ void Store(float* out, int64_t i, float v) { out[i] = v; }
__device__ __forceinline__ void Store(BF16* out, int64_t i, float v) { out[i] = FloatToBF16(v); }

template <typename T>
__global__ void RandomKernel(T* out, int64_t n, internal::RandomKind kind, uint64_t seed,
                             uint64_t offset, float a, float b) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const uint64_t position = offset + static_cast<uint64_t>(i);
    // Same expressions as the host path (tensor_ops.cc), so the values are bit-identical.
    const float v = kind == internal::RandomKind::kUniform
                        ? fmaf(b - a, PhiloxUniform(seed, position), a)
                        : fmaf(b, PhiloxNormal(seed, position), a);
    Store(out, i, v);
  }
}

__global__ void F32ToBF16Kernel(const float* in, BF16* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = FloatToBF16(in[i]);
  }
}

__global__ void BF16ToF32Kernel(const BF16* in, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = BF16ToFloat(in[i]);
  }
}

__global__ void AxpyF32Kernel(const float* a, float alpha, const float* b, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = fmaf(alpha, b[i], a[i]);
  }
}

__global__ void AxpyBF16Kernel(const BF16* a, float alpha, const BF16* b, BF16* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = FloatToBF16(fmaf(alpha, BF16ToFloat(b[i]), BF16ToFloat(a[i])));
  }
}

template <typename T>
void LaunchFill(const TensorView& dst, T value, cudaStream_t stream) {
  const int64_t n = dst.numel();
  FillKernel<T><<<BlocksFor(n), kThreads, 0, stream>>>(static_cast<T*>(dst.data()), n, value);
}

}  // namespace

namespace internal {

Status FillCuda(ExecContext& ctx, const TensorView& dst, double value) {
  if (dst.numel() == 0) return absl::OkStatus();
  switch (dst.dtype()) {
    case DType::kF32:
      LaunchFill(dst, static_cast<float>(value), ctx.stream());
      break;
    case DType::kBF16:
      LaunchFill(dst, FloatToBF16(static_cast<float>(value)), ctx.stream());
      break;
    case DType::kI32:
      LaunchFill(dst, static_cast<int32_t>(value), ctx.stream());
      break;
    case DType::kI64:
      LaunchFill(dst, static_cast<int64_t>(value), ctx.stream());
      break;
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("FillKernel");
  return absl::OkStatus();
}

Status FillRandomCuda(ExecContext& ctx, const TensorView& dst, RandomKind kind, uint64_t seed,
                      uint64_t offset, float a, float b) {
  const int64_t n = dst.numel();
  if (n == 0) return absl::OkStatus();
  if (dst.dtype() == DType::kF32) {
    RandomKernel<<<BlocksFor(n), kThreads, 0, ctx.stream()>>>(dst.data<float>(), n, kind, seed,
                                                              offset, a, b);
  } else {
    RandomKernel<<<BlocksFor(n), kThreads, 0, ctx.stream()>>>(dst.data<BF16>(), n, kind, seed,
                                                              offset, a, b);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("RandomKernel");
  return absl::OkStatus();
}

Status AxpyCuda(ExecContext& ctx, const TensorView& a, float alpha, const TensorView& b,
                const TensorView& out) {
  const int64_t n = a.numel();
  if (a.dtype() == DType::kF32) {
    AxpyF32Kernel<<<BlocksFor(n), kThreads, 0, ctx.stream()>>>(
        a.data<float>(), alpha, b.data<float>(), out.data<float>(), n);
  } else {
    AxpyBF16Kernel<<<BlocksFor(n), kThreads, 0, ctx.stream()>>>(
        a.data<BF16>(), alpha, b.data<BF16>(), out.data<BF16>(), n);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("AxpyKernel");
  return absl::OkStatus();
}

Status CastCuda(ExecContext& ctx, const TensorView& src, const TensorView& dst) {
  const int64_t n = src.numel();
  if (n == 0) return absl::OkStatus();
  if (src.dtype() == DType::kF32) {
    F32ToBF16Kernel<<<BlocksFor(n), kThreads, 0, ctx.stream()>>>(src.data<float>(),
                                                                 dst.data<BF16>(), n);
  } else {
    BF16ToF32Kernel<<<BlocksFor(n), kThreads, 0, ctx.stream()>>>(src.data<BF16>(),
                                                                 dst.data<float>(), n);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("CastKernel");
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace smoe
