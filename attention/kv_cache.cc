#include "attention/kv_cache.h"

#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/attention_core.h"
#include "attention/validate.h"
#include "runtime/core/scalar.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

// Rows [begin, begin + count) of sequence b in a [B, L, heads, D] tensor, as a contiguous view.
TensorView Positions(const TensorView& t, int64_t b, int64_t begin, int64_t count) {
  const int64_t row = t.dim(2) * t.dim(3);
  char* base = static_cast<char*>(t.data()) +
               static_cast<size_t>((b * t.dim(1) + begin) * row) * DTypeSize(t.dtype());
  return TensorView(base, t.dtype(), {count, t.dim(2), t.dim(3)}, t.device());
}

template <typename T>
void DecodeCpu(const internal::DecodeProblem& p) {
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  T* out = static_cast<T*>(p.out);
  const int64_t D = p.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> scores(p.length), acc(D);
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t i = 0; i < p.n_q; ++i) {
      const int64_t kh = i * p.n_k / p.n_q, vh = i * p.n_v / p.n_q;
      const T* qi = q + (b * p.n_q + i) * D;
      double max = -std::numeric_limits<double>::infinity();
      for (int64_t t = 0; t < p.length; ++t) {
        const T* kt = k + ((b * p.capacity + t) * p.n_k + kh) * D;
        double dot = 0.0;
        for (int64_t j = 0; j < D; ++j) dot += Widen(qi[j]) * Widen(kt[j]);
        scores[t] = dot * scale;
        max = std::max(max, scores[t]);
      }
      double sum = 0.0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t t = 0; t < p.length; ++t) {
        const double w = std::exp(scores[t] - max);
        sum += w;
        const T* vt = v + ((b * p.capacity + t) * p.n_v + vh) * D;
        for (int64_t j = 0; j < D; ++j) acc[j] += w * Widen(vt[j]);
      }
      for (int64_t j = 0; j < D; ++j) out[(b * p.n_q + i) * D + j] = Narrow<T>(acc[j] / sum);
    }
  }
}

}  // namespace

StatusOr<KvCache> KvCache::Create(ExecContext& ctx, int64_t batch, int64_t capacity, int64_t n_k,
                                  int64_t n_v, int64_t head_dim, DType dtype) {
  if (batch < 1) return BadArgument("batch", absl::StrCat(batch), ">= 1");
  if (capacity < 1) return BadArgument("capacity", absl::StrCat(capacity), ">= 1");
  if (n_k < 1) return BadArgument("n_k", absl::StrCat(n_k), ">= 1");
  if (n_v < 1) return BadArgument("n_v", absl::StrCat(n_v), ">= 1");
  if (head_dim < 1) return BadArgument("head_dim", absl::StrCat(head_dim), ">= 1");
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return BadArgument("dtype", DTypeName(dtype), "f32 or bf16");
  }
  KvCache cache;
  MOE_ASSIGN_OR_RETURN(cache.k_, Tensor::Empty({batch, capacity, n_k, head_dim}, dtype,
                                               ctx.device(), ctx.allocator()));
  MOE_ASSIGN_OR_RETURN(cache.v_, Tensor::Empty({batch, capacity, n_v, head_dim}, dtype,
                                               ctx.device(), ctx.allocator()));
  return cache;
}

Status KvCache::Append(ExecContext& ctx, const TensorView& k_new, const TensorView& v_new) {
  MOE_RETURN_IF_ERROR(
      CheckTensor("k_new", k_new, dtype(), k_.device(), {batch(), -1, n_k(), head_dim()}));
  MOE_RETURN_IF_ERROR(CheckContiguous("k_new", k_new));
  const int64_t count = k_new.dim(1);
  MOE_RETURN_IF_ERROR(
      CheckTensor("v_new", v_new, dtype(), k_.device(), {batch(), count, n_v(), head_dim()}));
  MOE_RETURN_IF_ERROR(CheckContiguous("v_new", v_new));
  if (length_ + count > capacity()) {
    return BadArgument("cache.capacity", absl::StrCat(capacity()),
                       absl::StrCat(">= ", length_ + count, " (length ", length_, " + ", count,
                                    " new positions)"));
  }
  for (int64_t b = 0; b < batch(); ++b) {
    MOE_RETURN_IF_ERROR(Copy(ctx, Positions(k_new, b, 0, count), Positions(k_, b, length_, count)));
    MOE_RETURN_IF_ERROR(Copy(ctx, Positions(v_new, b, 0, count), Positions(v_, b, length_, count)));
  }
  length_ += count;
  return absl::OkStatus();
}

Status DecodeAttention(ExecContext& ctx, const TensorView& q, const KvCache& cache,
                       const TensorView& out) {
  const int64_t B = cache.batch(), D = cache.head_dim();
  MOE_RETURN_IF_ERROR(attention_internal::CheckArg("q", ctx, q, cache.dtype(), {B, -1, D}));
  const int64_t n_q = q.dim(1);
  MOE_RETURN_IF_ERROR(attention_internal::CheckArg("out", ctx, out, cache.dtype(), {B, n_q, D}));
  if (cache.k().device() != ctx.device()) {
    return BadArgument("cache.device", cache.k().device().ToString(), ctx.device().ToString());
  }
  MOE_RETURN_IF_ERROR(internal::CheckHeadCounts(n_q, cache.n_k(), cache.n_v()));
  if (cache.length() < 1) return BadArgument("cache.length", "0", ">= 1 (append the token first)");
  if (ctx.device().is_cuda() && !CudaSupportsHeadDim(D)) {
    return BadArgument("q.head_dim", absl::StrCat(D), "32, 64, 96 or 128 on CUDA");
  }
  const internal::DecodeProblem p{B,
                                  cache.capacity(),
                                  cache.length(),
                                  n_q,
                                  cache.n_k(),
                                  cache.n_v(),
                                  D,
                                  cache.dtype(),
                                  q.data(),
                                  cache.k().data(),
                                  cache.v().data(),
                                  out.data()};
  if (ctx.device().is_cuda()) return internal::DecodeAttentionCuda(ctx, p);
  if (p.dtype == DType::kF32) {
    DecodeCpu<float>(p);
  } else {
    DecodeCpu<BF16>(p);
  }
  return absl::OkStatus();
}

#if !MOE_WITH_CUDA
namespace internal {
Status DecodeAttentionCuda(ExecContext&, const DecodeProblem&) {
  return absl::FailedPreconditionError(
      "DecodeAttention on CUDA, but this build has no CUDA backend");
}
}  // namespace internal
#endif

}  // namespace smoe
