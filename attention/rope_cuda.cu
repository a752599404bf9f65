// CUDA backend of rope.h: one thread per rotated pair.
#include <cuda_runtime.h>

#include "attention/rope.h"
#include "runtime/device/cuda_error.h"
#include "runtime/device/cuda_utils.cuh"

namespace smoe {
namespace {

using cuda_utils::CeilDiv;
using cuda_utils::FromFloat;
using cuda_utils::ToFloat;

template <typename T>
__global__ void RopeKernel(const T* x, T* y, int64_t seq, int64_t heads, int64_t head_dim,
                           double theta, int64_t position_offset, int direction, int64_t pairs) {
  const int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (idx >= pairs) return;
  const int64_t half = head_dim / 2;
  const int64_t j = idx % half, row = idx / half;  // row = (b * seq + s) * heads + h
  const int64_t s = (row / heads) % seq;
  const double angle = direction * static_cast<double>(position_offset + s) *
                       pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(head_dim));
  double sn, c;
  sincos(angle, &sn, &c);
  const int64_t base = row * head_dim;
  const float x1 = ToFloat(x[base + j]), x2 = ToFloat(x[base + j + half]);
  const float cf = static_cast<float>(c), sf = static_cast<float>(sn);
  y[base + j] = FromFloat<T>(x1 * cf - x2 * sf);
  y[base + j + half] = FromFloat<T>(x1 * sf + x2 * cf);
}

}  // namespace

namespace internal {

Status RopeCuda(ExecContext& ctx, DType dtype, const void* x, void* y, int64_t batch, int64_t seq,
                int64_t heads, int64_t head_dim, double theta, int64_t position_offset,
                int direction) {
  const int64_t pairs = batch * seq * heads * (head_dim / 2);
  const unsigned blocks = CeilDiv(pairs, 256);
  if (dtype == DType::kF32) {
    RopeKernel<float><<<blocks, 256, 0, ctx.stream()>>>(
        static_cast<const float*>(x), static_cast<float*>(y), seq, heads, head_dim, theta,
        position_offset, direction, pairs);
  } else {
    RopeKernel<BF16><<<blocks, 256, 0, ctx.stream()>>>(static_cast<const BF16*>(x),
                                                       static_cast<BF16*>(y), seq, heads, head_dim,
                                                       theta, position_offset, direction, pairs);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("RopeKernel");
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace smoe
