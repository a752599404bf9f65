#include "runtime/nn/embedding.h"

#include "absl/strings/str_cat.h"
#include "runtime/core/scalar.h"

namespace smoe {
namespace {

// The CPU backend reads ids on the host, so it can name the first bad one.
Status CheckIdsInRange(const TensorView& ids, int64_t vocab) {
  const int32_t* p = ids.data<int32_t>();
  for (int64_t t = 0; t < ids.numel(); ++t) {
    if (p[t] < 0 || p[t] >= vocab) {
      return BadArgument(absl::StrCat("ids[", t, "]"), absl::StrCat(p[t]),
                         absl::StrCat("a token id in [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

namespace internal {

template <typename S>
void EmbeddingForwardCpu(const int32_t* ids, const S* table, int64_t tokens, int64_t dim, S* out) {
  for (int64_t t = 0; t < tokens; ++t) {
    const S* row = table + int64_t{ids[t]} * dim;
    for (int64_t c = 0; c < dim; ++c) out[t * dim + c] = row[c];
  }
}

template <typename S, typename G>
void EmbeddingBackwardCpu(const int32_t* ids, const S* dout, int64_t tokens, int64_t dim,
                          G* dtable) {
  for (int64_t t = 0; t < tokens; ++t) {
    G* row = dtable + int64_t{ids[t]} * dim;
    for (int64_t c = 0; c < dim; ++c) row[c] = static_cast<G>(row[c] + Widen(dout[t * dim + c]));
  }
}

template void EmbeddingForwardCpu<float>(const int32_t*, const float*, int64_t, int64_t, float*);
template void EmbeddingForwardCpu<BF16>(const int32_t*, const BF16*, int64_t, int64_t, BF16*);
template void EmbeddingForwardCpu<double>(const int32_t*, const double*, int64_t, int64_t, double*);
template void EmbeddingBackwardCpu<float, float>(const int32_t*, const float*, int64_t, int64_t,
                                                 float*);
template void EmbeddingBackwardCpu<BF16, float>(const int32_t*, const BF16*, int64_t, int64_t,
                                                float*);
template void EmbeddingBackwardCpu<double, double>(const int32_t*, const double*, int64_t, int64_t,
                                                   double*);

}  // namespace internal

Status EmbeddingForward(ExecContext& ctx, const TensorView& ids, const TensorView& table,
                        const TensorView& out) {
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("ids", ids, DType::kI32, ctx.device(), {-1}));
  MOE_RETURN_IF_ERROR(CheckFloatingDType("table", table));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("table", table, table.dtype(), ctx.device(), {-1, -1}));
  const int64_t tokens = ids.dim(0), vocab = table.dim(0), dim = table.dim(1);
  MOE_RETURN_IF_ERROR(
      CheckContiguousTensor("out", out, table.dtype(), ctx.device(), {tokens, dim}));
  if (tokens == 0 || dim == 0) return absl::OkStatus();
  if (ctx.device().is_cuda()) {
    return internal::EmbeddingForwardCuda(ctx, table.dtype(), ids.data<int32_t>(), table.data(),
                                          vocab, tokens, dim, out.data());
  }
  MOE_RETURN_IF_ERROR(CheckIdsInRange(ids, vocab));
  if (table.dtype() == DType::kF32) {
    internal::EmbeddingForwardCpu(ids.data<int32_t>(), table.data<float>(), tokens, dim,
                                  out.data<float>());
  } else {
    internal::EmbeddingForwardCpu(ids.data<int32_t>(), table.data<BF16>(), tokens, dim,
                                  out.data<BF16>());
  }
  return absl::OkStatus();
}

Status EmbeddingBackward(ExecContext& ctx, const TensorView& ids, const TensorView& dout,
                         const TensorView& dtable) {
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("ids", ids, DType::kI32, ctx.device(), {-1}));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("dtable", dtable, DType::kF32, ctx.device(), {-1, -1}));
  const int64_t tokens = ids.dim(0), vocab = dtable.dim(0), dim = dtable.dim(1);
  MOE_RETURN_IF_ERROR(CheckFloatingDType("dout", dout));
  MOE_RETURN_IF_ERROR(
      CheckContiguousTensor("dout", dout, dout.dtype(), ctx.device(), {tokens, dim}));
  if (tokens == 0 || dim == 0) return absl::OkStatus();
  if (ctx.device().is_cuda()) {
    return internal::EmbeddingBackwardCuda(ctx, dout.dtype(), ids.data<int32_t>(), dout.data(),
                                           vocab, tokens, dim, dtable.data<float>());
  }
  MOE_RETURN_IF_ERROR(CheckIdsInRange(ids, vocab));
  if (dout.dtype() == DType::kF32) {
    internal::EmbeddingBackwardCpu(ids.data<int32_t>(), dout.data<float>(), tokens, dim,
                                   dtable.data<float>());
  } else {
    internal::EmbeddingBackwardCpu(ids.data<int32_t>(), dout.data<BF16>(), tokens, dim,
                                   dtable.data<float>());
  }
  return absl::OkStatus();
}

#if !MOE_WITH_CUDA
namespace internal {
Status EmbeddingForwardCuda(ExecContext&, DType, const int32_t*, const void*, int64_t, int64_t,
                            int64_t, void*) {
  return absl::FailedPreconditionError(
      "EmbeddingForward on CUDA, but this build has no CUDA backend");
}
Status EmbeddingBackwardCuda(ExecContext&, DType, const int32_t*, const void*, int64_t, int64_t,
                             int64_t, float*) {
  return absl::FailedPreconditionError(
      "EmbeddingBackward on CUDA, but this build has no CUDA backend");
}
}  // namespace internal
#endif

}  // namespace smoe
