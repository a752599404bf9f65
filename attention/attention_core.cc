#include "attention/attention_core.h"

#include <atomic>

#include "absl/strings/str_cat.h"
#include "runtime/core/op_profile.h"
#include "attention/attention_core_blas.h"
#include "attention/attention_core_cpu.h"
#include "attention/validate.h"

namespace smoe {
namespace {

using attention_internal::CheckArg;
using attention_internal::CheckFloating;

// Reads the dims from q [B, S, n_q, D], k [B, S, n_k, D], v [B, S, n_v, D] and checks them all.
StatusOr<AttentionDims> ValidateQkv(const ExecContext& ctx, const TensorView& q,
                                    const TensorView& k, const TensorView& v) {
  MOE_RETURN_IF_ERROR(CheckFloating("q", q));
  MOE_RETURN_IF_ERROR(CheckArg("q", ctx, q, q.dtype(), {-1, -1, -1, -1}));
  AttentionDims d{q.dim(0), q.dim(1), q.dim(2), 0, 0, q.dim(3)};
  MOE_RETURN_IF_ERROR(CheckArg("k", ctx, k, q.dtype(), {d.batch, d.seq, -1, d.head_dim}));
  MOE_RETURN_IF_ERROR(CheckArg("v", ctx, v, q.dtype(), {d.batch, d.seq, -1, d.head_dim}));
  d.n_k = k.dim(2);
  d.n_v = v.dim(2);
  MOE_RETURN_IF_ERROR(internal::CheckHeadCounts(d.n_q, d.n_k, d.n_v));
  if (d.head_dim < 1) return BadArgument("q.head_dim", absl::StrCat(d.head_dim), ">= 1");
  if (ctx.device().is_cuda() && !CudaSupportsHeadDim(d.head_dim)) {
    return BadArgument("q.head_dim", absl::StrCat(d.head_dim), "32, 64, 96 or 128 on CUDA");
  }
  return d;
}

Shape HeadsShape(const AttentionDims& d, int64_t heads) {
  return {d.batch, d.seq, heads, d.head_dim};
}

bool UseCudnn(const AttentionDims& d, DType dtype) {
  return internal::ChooseCudaAttentionPath(dtype, d.head_dim, internal::CudnnAttentionBuilt(),
                                           CudaAttentionKernelsOnly()) ==
         internal::CudaAttentionPath::kCudnn;
}

}  // namespace

bool CudaSupportsHeadDim(int64_t head_dim) {
  return head_dim == 32 || head_dim == 64 || head_dim == 96 || head_dim == 128;
}

namespace {
std::atomic<bool> kernels_only{false};
}  // namespace

void SetCudaAttentionKernelsOnly(bool value) { kernels_only.store(value); }
bool CudaAttentionKernelsOnly() { return kernels_only.load(); }

namespace internal {

CudaAttentionPath ChooseCudaAttentionPath(DType dtype, int64_t head_dim, bool cudnn_built,
                                          bool kernels_only) {
  const bool cudnn = cudnn_built && !kernels_only && dtype == DType::kBF16 && head_dim > 0 &&
                     head_dim % 8 == 0 && head_dim <= 128;
  return cudnn ? CudaAttentionPath::kCudnn : CudaAttentionPath::kKernels;
}

bool CudnnAttentionBuilt() {
#if MOE_WITH_CUDNN
  return true;
#else
  return false;
#endif
}

SdpaGraphKey MakeSdpaGraphKey(int device, AttentionPass pass, const AttentionDims& dims,
                              DType dtype) {
  return SdpaGraphKey{device,   pass,     dtype,    dims.batch,   dims.seq,
                      dims.n_q, dims.n_k, dims.n_v, dims.head_dim};
}

size_t SdpaGraphKeyHash::operator()(const SdpaGraphKey& key) const {
  size_t h = 0;
  auto mix = [&h](int64_t v) {
    h ^= std::hash<int64_t>()(v) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  };
  for (int64_t v :
       {int64_t{key.device}, static_cast<int64_t>(key.pass), static_cast<int64_t>(key.dtype),
        key.batch, key.seq, key.n_q, key.n_k, key.n_v, key.head_dim}) {
    mix(v);
  }
  return h;
}

Status CheckHeadCounts(int64_t n_q, int64_t n_k, int64_t n_v) {
  if (n_q < 1) return BadArgument("n_q", absl::StrCat(n_q), ">= 1");
  if (n_k < 1 || n_q % n_k != 0) {
    return BadArgument("n_k", absl::StrCat(n_k), absl::StrCat("a divisor of n_q = ", n_q));
  }
  if (n_v < 1 || n_q % n_v != 0) {
    return BadArgument("n_v", absl::StrCat(n_v), absl::StrCat("a divisor of n_q = ", n_q));
  }
  return absl::OkStatus();
}
}  // namespace internal

Status AttentionForward(ExecContext& ctx, const TensorView& q, const TensorView& k,
                        const TensorView& v, const TensorView& out, const TensorView& lse) {
  const OpScope scope(OpKind::kAttentionCore);
  MOE_ASSIGN_OR_RETURN(const AttentionDims d, ValidateQkv(ctx, q, k, v));
  MOE_RETURN_IF_ERROR(CheckArg("out", ctx, out, q.dtype(), HeadsShape(d, d.n_q)));
  MOE_RETURN_IF_ERROR(CheckArg("lse", ctx, lse, DType::kF32, {d.batch, d.n_q, d.seq}));
  if (q.empty()) return absl::OkStatus();
  if (ctx.device().is_cuda()) {
    if (UseCudnn(d, q.dtype())) {
      MOE_ASSIGN_OR_RETURN(const bool ran,
                           internal::AttentionForwardCudnn(ctx, d, q.data(), k.data(), v.data(),
                                                           out.data(), lse.data<float>()));
      if (ran) return absl::OkStatus();
    }
    return internal::AttentionForwardCuda(ctx, d, q.dtype(), q.data(), k.data(), v.data(),
                                          out.data(), lse.data<float>());
  }
  if (q.dtype() == DType::kF32) {  // the BLAS fast path; bf16 runs the reference loops
    attention_internal::AttentionForwardBlas(d, q.data<float>(), k.data<float>(), v.data<float>(),
                                             out.data<float>(), lse.data<float>());
  } else {
    attention_internal::AttentionForwardCpu(d, q.data<BF16>(), k.data<BF16>(), v.data<BF16>(),
                                            out.data<BF16>(), lse.data<float>());
  }
  return absl::OkStatus();
}

Status AttentionBackward(ExecContext& ctx, const TensorView& q, const TensorView& k,
                         const TensorView& v, const TensorView& out, const TensorView& lse,
                         const TensorView& dout, const TensorView& dq, const TensorView& dk,
                         const TensorView& dv) {
  const OpScope scope(OpKind::kAttentionCore);
  MOE_ASSIGN_OR_RETURN(const AttentionDims d, ValidateQkv(ctx, q, k, v));
  MOE_RETURN_IF_ERROR(CheckArg("out", ctx, out, q.dtype(), HeadsShape(d, d.n_q)));
  MOE_RETURN_IF_ERROR(CheckArg("lse", ctx, lse, DType::kF32, {d.batch, d.n_q, d.seq}));
  MOE_RETURN_IF_ERROR(CheckArg("dout", ctx, dout, q.dtype(), HeadsShape(d, d.n_q)));
  MOE_RETURN_IF_ERROR(CheckArg("dq", ctx, dq, q.dtype(), HeadsShape(d, d.n_q)));
  MOE_RETURN_IF_ERROR(CheckArg("dk", ctx, dk, q.dtype(), HeadsShape(d, d.n_k)));
  MOE_RETURN_IF_ERROR(CheckArg("dv", ctx, dv, q.dtype(), HeadsShape(d, d.n_v)));
  if (q.empty()) return absl::OkStatus();
  if (ctx.device().is_cuda()) {
    if (UseCudnn(d, q.dtype())) {
      MOE_ASSIGN_OR_RETURN(const bool ran,
                           internal::AttentionBackwardCudnn(
                               ctx, d, q.data(), k.data(), v.data(), out.data(), lse.data<float>(),
                               dout.data(), dq.data(), dk.data(), dv.data()));
      if (ran) return absl::OkStatus();
    }
    return internal::AttentionBackwardCuda(ctx, d, q.dtype(), q.data(), k.data(), v.data(),
                                           out.data(), lse.data<float>(), dout.data(), dq.data(),
                                           dk.data(), dv.data());
  }
  if (q.dtype() == DType::kF32) {
    attention_internal::AttentionBackwardBlas(
        d, q.data<float>(), k.data<float>(), v.data<float>(), out.data<float>(), lse.data<float>(),
        dout.data<float>(), dq.data<float>(), dk.data<float>(), dv.data<float>());
  } else {
    attention_internal::AttentionBackwardCpu(d, q.data<BF16>(), k.data<BF16>(), v.data<BF16>(),
                                             out.data<BF16>(), lse.data<float>(), dout.data<BF16>(),
                                             dq.data<BF16>(), dk.data<BF16>(), dv.data<BF16>());
  }
  return absl::OkStatus();
}

#if !MOE_WITH_CUDNN
namespace internal {
int64_t CudnnAttentionRuns() { return 0; }
StatusOr<bool> AttentionForwardCudnn(ExecContext&, const AttentionDims&, const void*, const void*,
                                     const void*, void*, float*) {
  return false;
}
StatusOr<bool> AttentionBackwardCudnn(ExecContext&, const AttentionDims&, const void*, const void*,
                                      const void*, const void*, const float*, const void*, void*,
                                      void*, void*) {
  return false;
}
}  // namespace internal
#endif

#if !MOE_WITH_CUDA
namespace internal {
Status AttentionForwardCuda(ExecContext&, const AttentionDims&, DType, const void*, const void*,
                            const void*, void*, float*) {
  return absl::FailedPreconditionError(
      "AttentionForward on CUDA, but this build has no CUDA backend");
}
Status AttentionBackwardCuda(ExecContext&, const AttentionDims&, DType, const void*, const void*,
                             const void*, const void*, const float*, const void*, void*, void*,
                             void*) {
  return absl::FailedPreconditionError(
      "AttentionBackward on CUDA, but this build has no CUDA backend");
}
}  // namespace internal
#endif

}  // namespace smoe
