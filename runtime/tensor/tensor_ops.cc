#include "runtime/tensor/tensor_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "runtime/core/cpu_vector.h"
#include "runtime/core/philox.h"
#include "runtime/core/thread_pool.h"

#if MOE_WITH_CUDA
#include <cuda_runtime.h>

#include "runtime/device/cuda_error.h"
#endif

namespace smoe {
namespace {

Status NoCuda(absl::string_view op) {
  return absl::FailedPreconditionError(
      absl::StrCat(op, " on a CUDA tensor, but this build has no CUDA backend"));
}

template <typename T>
void FillHost(const TensorView& dst, T value) {
  T* out = static_cast<T*>(dst.data());
  std::fill(out, out + dst.numel(), value);
}

// Writes f(i) (a float) to every element of a floating dst.
template <typename F>
void GenerateHost(const TensorView& dst, F f) {
  const int64_t n = dst.numel();
  if (dst.dtype() == DType::kF32) {
    float* out = dst.data<float>();
    for (int64_t i = 0; i < n; ++i) out[i] = f(i);
  } else {
    BF16* out = dst.data<BF16>();
    for (int64_t i = 0; i < n; ++i) out[i] = FloatToBF16(f(i));
  }
}

#if MOE_WITH_CUDA
// Host to device. The source may change or die as soon as Copy returns (the trainer refills its
// token buffers, callers pass temporaries), and an async copy from pageable memory may read it
// later, so it goes through pinned staging memory: the host copies it there, the device copy
// reads the staging block, and the pinned allocator hands that block out again only after the
// copy has completed (a marker recorded at Free). No host sync. Larger copies wait instead.
Status CopyHostToDevice(ExecContext& ctx, const TensorView& src, const TensorView& dst) {
  const size_t bytes = src.nbytes();
  if (bytes > internal::kMaxStagedCopyBytes) {
    MOE_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDefault, ctx.stream()));
    return ctx.Synchronize();
  }
  Allocator* staging = ctx.host_staging();
  MOE_ASSIGN_OR_RETURN(void* block, staging->Allocate(bytes));
  std::memcpy(block, src.data(), bytes);
  const cudaError_t error =
      cudaMemcpyAsync(dst.data(), block, bytes, cudaMemcpyDefault, ctx.stream());
  staging->Free(block);
  return CudaStatus(error, "cudaMemcpyAsync (host to device, staged)");
}
#endif

}  // namespace

Status Copy(ExecContext& ctx, const TensorView& src, const TensorView& dst) {
  MOE_RETURN_IF_ERROR(CheckContiguous("src", src));
  MOE_RETURN_IF_ERROR(CheckContiguous("dst", dst));
  if (src.dtype() != dst.dtype()) {
    return BadArgument("dst.dtype", DTypeName(dst.dtype()), DTypeName(src.dtype()));
  }
  if (src.numel() != dst.numel()) {
    return BadArgument("dst.shape", dst.shape().ToString(),
                       absl::StrCat(src.numel(), " elements like src ", src.shape().ToString()));
  }
  if (src.nbytes() == 0) return absl::OkStatus();
  if (src.device().is_cpu() && dst.device().is_cpu()) {
    std::memmove(dst.data(), src.data(), src.nbytes());
    return absl::OkStatus();
  }
#if MOE_WITH_CUDA
  if (!ctx.device().is_cuda()) {
    return BadArgument("ctx.device", ctx.device().ToString(), "a CUDA context for a CUDA copy");
  }
  if (src.device().is_cpu()) return CopyHostToDevice(ctx, src, dst);
  MOE_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst.data(), src.data(), src.nbytes(), cudaMemcpyDefault, ctx.stream()));
  if (dst.device().is_cpu()) return ctx.Synchronize();
  return absl::OkStatus();
#else
  (void)ctx;
  return NoCuda("Copy");
#endif
}

StatusOr<Tensor> CopyTo(ExecContext& ctx, const TensorView& src, Device device) {
  MOE_ASSIGN_OR_RETURN(Tensor out, Tensor::Empty(src.shape(), src.dtype(), device));
  MOE_RETURN_IF_ERROR(Copy(ctx, src, out));
  return out;
}

Status Fill(ExecContext& ctx, const TensorView& dst, double value) {
  MOE_RETURN_IF_ERROR(CheckOnDevice("dst", dst, ctx.device()));
  if (dst.device().is_cuda()) return internal::FillCuda(ctx, dst, value);
  switch (dst.dtype()) {
    case DType::kF32:
      FillHost(dst, static_cast<float>(value));
      break;
    case DType::kBF16:
      FillHost(dst, FloatToBF16(static_cast<float>(value)));
      break;
    case DType::kI32:
      FillHost(dst, static_cast<int32_t>(value));
      break;
    case DType::kI64:
      FillHost(dst, static_cast<int64_t>(value));
      break;
  }
  return absl::OkStatus();
}

Status FillUniform(ExecContext& ctx, const TensorView& dst, uint64_t seed, uint64_t offset,
                   float low, float high) {
  MOE_RETURN_IF_ERROR(CheckOnDevice("dst", dst, ctx.device()));
  MOE_RETURN_IF_ERROR(CheckFloatingDType("dst", dst));
  if (dst.device().is_cuda()) {
    return internal::FillRandomCuda(ctx, dst, internal::RandomKind::kUniform, seed, offset, low,
                                    high);
  }
  const float width = high - low;
  GenerateHost(dst, [&](int64_t i) { return fmaf(width, PhiloxUniform(seed, offset + i), low); });
  return absl::OkStatus();
}

Status FillNormal(ExecContext& ctx, const TensorView& dst, uint64_t seed, uint64_t offset,
                  float mean, float stddev) {
  MOE_RETURN_IF_ERROR(CheckOnDevice("dst", dst, ctx.device()));
  MOE_RETURN_IF_ERROR(CheckFloatingDType("dst", dst));
  if (dst.device().is_cuda()) {
    return internal::FillRandomCuda(ctx, dst, internal::RandomKind::kNormal, seed, offset, mean,
                                    stddev);
  }
  GenerateHost(dst, [&](int64_t i) { return fmaf(stddev, PhiloxNormal(seed, offset + i), mean); });
  return absl::OkStatus();
}

Status Cast(ExecContext& ctx, const TensorView& src, const TensorView& dst) {
  MOE_RETURN_IF_ERROR(CheckOnDevice("src", src, ctx.device()));
  MOE_RETURN_IF_ERROR(CheckOnDevice("dst", dst, ctx.device()));
  if (src.numel() != dst.numel()) {
    return BadArgument("dst.shape", dst.shape().ToString(),
                       absl::StrCat(src.numel(), " elements like src ", src.shape().ToString()));
  }
  if (src.dtype() == dst.dtype()) return Copy(ctx, src, dst);
  MOE_RETURN_IF_ERROR(CheckFloatingDType("src", src));
  MOE_RETURN_IF_ERROR(CheckFloatingDType("dst", dst));
  if (src.device().is_cuda()) return internal::CastCuda(ctx, src, dst);
  if (src.dtype() == DType::kF32) {
    const float* in = src.data<float>();
    GenerateHost(dst, [&](int64_t i) { return in[i]; });
  } else {
    const BF16* in = src.data<BF16>();
    float* out = dst.data<float>();
    for (int64_t i = 0, n = src.numel(); i < n; ++i) out[i] = BF16ToFloat(in[i]);
  }
  return absl::OkStatus();
}

namespace {
// out = fmaf(alpha, b, a), vectorized (cpu_vector.h). Blocks of 16 are loaded before they are
// stored, so out may alias a or b without the compiler's aliasing checks.
MOE_CPU_CLONES void AxpyF32(const float* a, float alpha, const float* b, float* out, int64_t n) {
  constexpr int64_t kBlock = 16;
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t m = std::min(kBlock, n - i0);
    float y[kBlock];
    for (int64_t i = 0; i < m; ++i) y[i] = fmaf(alpha, b[i0 + i], a[i0 + i]);
    for (int64_t i = 0; i < m; ++i) out[i0 + i] = y[i];
  }
}
}  // namespace

Status Axpy(ExecContext& ctx, const TensorView& a, float alpha, const TensorView& b,
            const TensorView& out) {
  MOE_RETURN_IF_ERROR(CheckOnDevice("a", a, ctx.device()));
  MOE_RETURN_IF_ERROR(CheckFloatingDType("a", a));
  MOE_RETURN_IF_ERROR(CheckOnDevice("b", b, ctx.device()));
  MOE_RETURN_IF_ERROR(CheckOnDevice("out", out, ctx.device()));
  MOE_RETURN_IF_ERROR(CheckTensor("b", b, a.dtype(), a.device(), a.shape()));
  MOE_RETURN_IF_ERROR(CheckTensor("out", out, a.dtype(), a.device(), a.shape()));
  if (a.numel() == 0) return absl::OkStatus();
  if (a.device().is_cuda()) return internal::AxpyCuda(ctx, a, alpha, b, out);
  if (a.dtype() == DType::kF32) {
    const float* pa = a.data<float>();
    const float* pb = b.data<float>();
    float* po = out.data<float>();
    ParallelFor(a.numel(), 3, [&](int64_t first, int64_t last) {
      AxpyF32(pa + first, alpha, pb + first, po + first, last - first);
    });
  } else {
    const BF16* pa = a.data<BF16>();
    const BF16* pb = b.data<BF16>();
    BF16* po = out.data<BF16>();
    for (int64_t i = 0, n = a.numel(); i < n; ++i) {
      po[i] = FloatToBF16(fmaf(alpha, BF16ToFloat(pb[i]), BF16ToFloat(pa[i])));
    }
  }
  return absl::OkStatus();
}

#if !MOE_WITH_CUDA
namespace internal {
Status AxpyCuda(ExecContext&, const TensorView&, float, const TensorView&, const TensorView&) {
  return NoCuda("Axpy");
}
Status FillCuda(ExecContext&, const TensorView&, double) { return NoCuda("Fill"); }
Status FillRandomCuda(ExecContext&, const TensorView&, RandomKind, uint64_t, uint64_t, float,
                      float) {
  return NoCuda("FillUniform/FillNormal");
}
Status CastCuda(ExecContext&, const TensorView&, const TensorView&) { return NoCuda("Cast"); }
}  // namespace internal
#endif

}  // namespace smoe
