#include "attention/diffqkv.h"

#include "absl/strings/str_cat.h"
#include "attention/attention_core.h"
#include "attention/qk_norm.h"
#include "attention/rope.h"
#include "attention/validate.h"
#include "runtime/blas/gemm.h"

namespace smoe {
namespace {

using attention_internal::CheckArg;

// Checks every parameter (or gradient, with prefix "d") that the config uses.
Status CheckParams(const ExecContext& ctx, const DiffQkvConfig& c, const DiffQkvParams& p,
                   DType dtype, absl::string_view prefix) {
  const int64_t M = c.model_dim, qd = c.n_q * c.head_dim;
  auto name = [&](absl::string_view field) { return absl::StrCat(prefix, field); };
  MOE_RETURN_IF_ERROR(CheckArg(name("w_q"), ctx, p.w_q, dtype, {M, qd}));
  MOE_RETURN_IF_ERROR(CheckArg(name("w_k"), ctx, p.w_k, dtype, {M, c.n_k * c.head_dim}));
  MOE_RETURN_IF_ERROR(CheckArg(name("w_v"), ctx, p.w_v, dtype, {M, c.n_v * c.head_dim}));
  MOE_RETURN_IF_ERROR(CheckArg(name("w_o"), ctx, p.w_o, dtype, {qd, M}));
  if (c.d_aug > 0) {
    MOE_RETURN_IF_ERROR(CheckArg(name("w_gate"), ctx, p.aug.w_gate, dtype, {qd, c.d_aug}));
    MOE_RETURN_IF_ERROR(CheckArg(name("w_up"), ctx, p.aug.w_up, dtype, {qd, c.d_aug}));
    MOE_RETURN_IF_ERROR(CheckArg(name("w_down"), ctx, p.aug.w_down, dtype, {c.d_aug, qd}));
  }
  if (c.qk_norm) {
    MOE_RETURN_IF_ERROR(CheckArg(name("q_norm"), ctx, p.q_norm, dtype, {c.head_dim}));
    MOE_RETURN_IF_ERROR(CheckArg(name("k_norm"), ctx, p.k_norm, dtype, {c.head_dim}));
  }
  return absl::OkStatus();
}

StatusOr<Tensor> New(ExecContext& ctx, Shape shape, DType dtype) {
  return Tensor::Empty(shape, dtype, ctx.device(), ctx.allocator());
}

// [B, S, heads, D] <-> [T, heads * D] views of the same data.
// [B, S, heads, D] as [B * S, heads * D] (also when B * S == 0).
StatusOr<TensorView> Flat(const TensorView& t) {
  return t.Reshape({t.dim(0) * t.dim(1), t.dim(2) * t.dim(3)});
}

}  // namespace

Status ValidateDiffQkvConfig(const DiffQkvConfig& c, Device device) {
  if (c.model_dim < 1) return BadArgument("model_dim", absl::StrCat(c.model_dim), ">= 1");
  MOE_RETURN_IF_ERROR(internal::CheckHeadCounts(c.n_q, c.n_k, c.n_v));
  if (c.head_dim < 2 || c.head_dim % 2 != 0) {
    return BadArgument("head_dim", absl::StrCat(c.head_dim), "even and >= 2 (RoPE pairs)");
  }
  if (device.is_cuda() && !CudaSupportsHeadDim(c.head_dim)) {
    return BadArgument("head_dim", absl::StrCat(c.head_dim), "32, 64, 96 or 128 on CUDA");
  }
  if (c.d_aug < 0) return BadArgument("d_aug", absl::StrCat(c.d_aug), ">= 0");
  if (!(c.rope_theta > 0.0)) return BadArgument("rope_theta", absl::StrCat(c.rope_theta), "> 0");
  return absl::OkStatus();
}

Status DiffQkvForward(ExecContext& ctx, const DiffQkvConfig& c, const DiffQkvParams& p,
                      const TensorView& x, const TensorView& y, DiffQkvSaved* saved) {
  MOE_RETURN_IF_ERROR(ValidateDiffQkvConfig(c, ctx.device()));
  MOE_RETURN_IF_ERROR(attention_internal::CheckFloating("x", x));
  const DType dt = x.dtype();
  MOE_RETURN_IF_ERROR(CheckArg("x", ctx, x, dt, {-1, -1, c.model_dim}));
  MOE_RETURN_IF_ERROR(CheckArg("y", ctx, y, dt, x.shape()));
  MOE_RETURN_IF_ERROR(CheckParams(ctx, c, p, dt, ""));
  const int64_t B = x.dim(0), S = x.dim(1), T = B * S, D = c.head_dim;
  DiffQkvSaved& s = *saved;
  MOE_ASSIGN_OR_RETURN(const TensorView x2, x.Reshape({T, c.model_dim}));
  MOE_ASSIGN_OR_RETURN(const TensorView y2, y.Reshape({T, c.model_dim}));

  MOE_ASSIGN_OR_RETURN(s.q, New(ctx, {B, S, c.n_q, D}, dt));
  MOE_ASSIGN_OR_RETURN(const TensorView q2, Flat(s.q));
  MOE_RETURN_IF_ERROR(Gemm(ctx, x2, p.w_q, q2));
  s.q_aug = s.q;
  if (c.d_aug > 0) {
    MOE_ASSIGN_OR_RETURN(s.q_aug, New(ctx, {B, S, c.n_q, D}, dt));
    MOE_ASSIGN_OR_RETURN(const TensorView qa2, Flat(s.q_aug));
    MOE_RETURN_IF_ERROR(AugQForward(ctx, q2, p.aug, qa2, &s.aug));
  }
  MOE_ASSIGN_OR_RETURN(s.k, New(ctx, {B, S, c.n_k, D}, dt));
  MOE_ASSIGN_OR_RETURN(s.v, New(ctx, {B, S, c.n_v, D}, dt));
  MOE_ASSIGN_OR_RETURN(const TensorView k2, Flat(s.k));
  MOE_ASSIGN_OR_RETURN(const TensorView v2, Flat(s.v));
  MOE_RETURN_IF_ERROR(Gemm(ctx, x2, p.w_k, k2));
  MOE_RETURN_IF_ERROR(Gemm(ctx, x2, p.w_v, v2));

  MOE_ASSIGN_OR_RETURN(s.q_rope, New(ctx, {B, S, c.n_q, D}, dt));
  MOE_ASSIGN_OR_RETURN(s.k_rope, New(ctx, {B, S, c.n_k, D}, dt));
  if (c.qk_norm) {
    MOE_ASSIGN_OR_RETURN(s.rstd_q, New(ctx, {T * c.n_q}, DType::kF32));
    MOE_ASSIGN_OR_RETURN(s.rstd_k, New(ctx, {T * c.n_k}, DType::kF32));
    // Normalize into the RoPE buffers, then rotate them in place.
    MOE_RETURN_IF_ERROR(HeadRmsNormForward(ctx, s.q_aug, p.q_norm, s.q_rope, s.rstd_q));
    MOE_RETURN_IF_ERROR(HeadRmsNormForward(ctx, s.k, p.k_norm, s.k_rope, s.rstd_k));
    MOE_RETURN_IF_ERROR(RopeForward(ctx, s.q_rope, s.q_rope, c.rope_theta));
    MOE_RETURN_IF_ERROR(RopeForward(ctx, s.k_rope, s.k_rope, c.rope_theta));
  } else {
    MOE_RETURN_IF_ERROR(RopeForward(ctx, s.q_aug, s.q_rope, c.rope_theta));
    MOE_RETURN_IF_ERROR(RopeForward(ctx, s.k, s.k_rope, c.rope_theta));
  }

  MOE_ASSIGN_OR_RETURN(s.o, New(ctx, {B, S, c.n_q, D}, dt));
  MOE_ASSIGN_OR_RETURN(s.lse, New(ctx, {B, c.n_q, S}, DType::kF32));
  MOE_RETURN_IF_ERROR(AttentionForward(ctx, s.q_rope, s.k_rope, s.v, s.o, s.lse));
  MOE_ASSIGN_OR_RETURN(const TensorView o2, Flat(s.o));
  return Gemm(ctx, o2, p.w_o, y2);
}

Status DiffQkvBackward(ExecContext& ctx, const DiffQkvConfig& c, const DiffQkvParams& p,
                       const TensorView& x, const DiffQkvSaved& s, const TensorView& dy,
                       const TensorView& dx, const DiffQkvParams& g) {
  MOE_RETURN_IF_ERROR(ValidateDiffQkvConfig(c, ctx.device()));
  const DType dt = x.dtype();
  MOE_RETURN_IF_ERROR(CheckArg("x", ctx, x, dt, {-1, -1, c.model_dim}));
  MOE_RETURN_IF_ERROR(CheckArg("dy", ctx, dy, dt, x.shape()));
  MOE_RETURN_IF_ERROR(CheckArg("dx", ctx, dx, dt, x.shape()));
  MOE_RETURN_IF_ERROR(CheckParams(ctx, c, p, dt, ""));
  MOE_RETURN_IF_ERROR(CheckParams(ctx, c, g, DType::kF32, "d"));
  const int64_t B = x.dim(0), S = x.dim(1), T = B * S, D = c.head_dim;
  MOE_RETURN_IF_ERROR(CheckArg("saved.o", ctx, s.o, dt, {B, S, c.n_q, D}));
  MOE_ASSIGN_OR_RETURN(const TensorView x2, x.Reshape({T, c.model_dim}));
  MOE_ASSIGN_OR_RETURN(const TensorView dy2, dy.Reshape({T, c.model_dim}));
  MOE_ASSIGN_OR_RETURN(const TensorView dx2, dx.Reshape({T, c.model_dim}));

  MOE_ASSIGN_OR_RETURN(const TensorView o2, Flat(s.o));
  MOE_ASSIGN_OR_RETURN(Tensor d_o, New(ctx, {B, S, c.n_q, D}, dt));
  MOE_ASSIGN_OR_RETURN(const TensorView do2, Flat(d_o));
  // Weight gradients accumulate into f32 (beta 1): the contract of every weight gradient.
  constexpr GemmOptions kAccumulateWeightGrad{.trans_a = true, .beta = 1.0f};
  MOE_RETURN_IF_ERROR(Gemm(ctx, o2, dy2, g.w_o, kAccumulateWeightGrad));
  MOE_RETURN_IF_ERROR(Gemm(ctx, dy2, p.w_o, do2, {.trans_b = true}));

  MOE_ASSIGN_OR_RETURN(Tensor dq_rope, New(ctx, {B, S, c.n_q, D}, dt));
  MOE_ASSIGN_OR_RETURN(Tensor dk_rope, New(ctx, {B, S, c.n_k, D}, dt));
  MOE_ASSIGN_OR_RETURN(Tensor dv, New(ctx, {B, S, c.n_v, D}, dt));
  MOE_RETURN_IF_ERROR(
      AttentionBackward(ctx, s.q_rope, s.k_rope, s.v, s.o, s.lse, d_o, dq_rope, dk_rope, dv));
  MOE_RETURN_IF_ERROR(RopeBackward(ctx, dq_rope, dq_rope, c.rope_theta));
  MOE_RETURN_IF_ERROR(RopeBackward(ctx, dk_rope, dk_rope, c.rope_theta));

  Tensor dq_aug = dq_rope, dk = dk_rope;
  if (c.qk_norm) {
    MOE_ASSIGN_OR_RETURN(dq_aug, New(ctx, {B, S, c.n_q, D}, dt));
    MOE_ASSIGN_OR_RETURN(dk, New(ctx, {B, S, c.n_k, D}, dt));
    MOE_RETURN_IF_ERROR(
        HeadRmsNormBackward(ctx, s.q_aug, p.q_norm, s.rstd_q, dq_rope, dq_aug, g.q_norm));
    MOE_RETURN_IF_ERROR(HeadRmsNormBackward(ctx, s.k, p.k_norm, s.rstd_k, dk_rope, dk, g.k_norm));
  }
  Tensor dq = dq_aug;
  MOE_ASSIGN_OR_RETURN(const TensorView q2, Flat(s.q));
  if (c.d_aug > 0) {
    MOE_ASSIGN_OR_RETURN(dq, New(ctx, {B, S, c.n_q, D}, dt));
    MOE_ASSIGN_OR_RETURN(const TensorView dqa2, Flat(dq_aug));
    MOE_ASSIGN_OR_RETURN(const TensorView dq2, Flat(dq));
    MOE_RETURN_IF_ERROR(AugQBackward(ctx, q2, p.aug, s.aug, dqa2, dq2, g.aug));
  }
  MOE_ASSIGN_OR_RETURN(const TensorView dq2, Flat(dq));
  MOE_ASSIGN_OR_RETURN(const TensorView dk2, Flat(dk));
  MOE_ASSIGN_OR_RETURN(const TensorView dv2, Flat(dv));
  MOE_RETURN_IF_ERROR(Gemm(ctx, x2, dq2, g.w_q, kAccumulateWeightGrad));
  MOE_RETURN_IF_ERROR(Gemm(ctx, x2, dk2, g.w_k, kAccumulateWeightGrad));
  MOE_RETURN_IF_ERROR(Gemm(ctx, x2, dv2, g.w_v, kAccumulateWeightGrad));
  MOE_RETURN_IF_ERROR(Gemm(ctx, dq2, p.w_q, dx2, {.trans_b = true}));
  MOE_RETURN_IF_ERROR(Gemm(ctx, dk2, p.w_k, dx2, {.trans_b = true, .beta = 1.0f}));
  return Gemm(ctx, dv2, p.w_v, dx2, {.trans_b = true, .beta = 1.0f});
}

Status DiffQkvPrefillCache(ExecContext& ctx, const DiffQkvSaved& saved, KvCache* cache) {
  if (cache->length() != 0) {
    return BadArgument("cache.length", absl::StrCat(cache->length()), "0 (an empty cache)");
  }
  return cache->Append(ctx, saved.k_rope, saved.v);
}

Status DiffQkvDecodeStep(ExecContext& ctx, const DiffQkvConfig& c, const DiffQkvParams& p,
                         const TensorView& x_new, KvCache* cache, const TensorView& y_new) {
  MOE_RETURN_IF_ERROR(ValidateDiffQkvConfig(c, ctx.device()));
  const DType dt = x_new.dtype();
  MOE_RETURN_IF_ERROR(CheckArg("x_new", ctx, x_new, dt, {-1, 1, c.model_dim}));
  MOE_RETURN_IF_ERROR(CheckArg("y_new", ctx, y_new, dt, x_new.shape()));
  MOE_RETURN_IF_ERROR(CheckParams(ctx, c, p, dt, ""));
  const int64_t B = x_new.dim(0), D = c.head_dim, position = cache->length();
  if (cache->batch() != B || cache->n_k() != c.n_k || cache->n_v() != c.n_v ||
      cache->head_dim() != D || cache->dtype() != dt) {
    return BadArgument("cache",
                       absl::StrCat("[", cache->batch(), ", ", cache->n_k(), ", ", cache->n_v(),
                                    ", ", cache->head_dim(), "] ", DTypeName(cache->dtype())),
                       absl::StrCat("[B, n_k, n_v, D] = [", B, ", ", c.n_k, ", ", c.n_v, ", ", D,
                                    "] ", DTypeName(dt)));
  }
  MOE_ASSIGN_OR_RETURN(const TensorView x2, x_new.Reshape({B, c.model_dim}));
  MOE_ASSIGN_OR_RETURN(const TensorView y2, y_new.Reshape({B, c.model_dim}));

  MOE_ASSIGN_OR_RETURN(Tensor q, New(ctx, {B, 1, c.n_q, D}, dt));
  MOE_ASSIGN_OR_RETURN(const TensorView q2, Flat(q));
  MOE_RETURN_IF_ERROR(Gemm(ctx, x2, p.w_q, q2));
  Tensor q_aug = q;
  if (c.d_aug > 0) {
    AugQSaved aug;
    MOE_ASSIGN_OR_RETURN(q_aug, New(ctx, {B, 1, c.n_q, D}, dt));
    MOE_ASSIGN_OR_RETURN(const TensorView qa2, Flat(q_aug));
    MOE_RETURN_IF_ERROR(AugQForward(ctx, q2, p.aug, qa2, &aug));
  }
  MOE_ASSIGN_OR_RETURN(Tensor k, New(ctx, {B, 1, c.n_k, D}, dt));
  MOE_ASSIGN_OR_RETURN(Tensor v, New(ctx, {B, 1, c.n_v, D}, dt));
  MOE_ASSIGN_OR_RETURN(const TensorView k2, Flat(k));
  MOE_ASSIGN_OR_RETURN(const TensorView v2, Flat(v));
  MOE_RETURN_IF_ERROR(Gemm(ctx, x2, p.w_k, k2));
  MOE_RETURN_IF_ERROR(Gemm(ctx, x2, p.w_v, v2));
  if (c.qk_norm) {
    MOE_ASSIGN_OR_RETURN(Tensor rstd_q, New(ctx, {B * c.n_q}, DType::kF32));
    MOE_ASSIGN_OR_RETURN(Tensor rstd_k, New(ctx, {B * c.n_k}, DType::kF32));
    MOE_RETURN_IF_ERROR(HeadRmsNormForward(ctx, q_aug, p.q_norm, q_aug, rstd_q));
    MOE_RETURN_IF_ERROR(HeadRmsNormForward(ctx, k, p.k_norm, k, rstd_k));
  }
  MOE_RETURN_IF_ERROR(RopeForward(ctx, q_aug, q_aug, c.rope_theta, position));
  MOE_RETURN_IF_ERROR(RopeForward(ctx, k, k, c.rope_theta, position));
  MOE_RETURN_IF_ERROR(cache->Append(ctx, k, v));

  MOE_ASSIGN_OR_RETURN(const TensorView q_heads, q_aug.view().Reshape({B, c.n_q, D}));
  MOE_ASSIGN_OR_RETURN(Tensor o, New(ctx, {B, c.n_q * D}, dt));
  MOE_ASSIGN_OR_RETURN(const TensorView o_heads, o.view().Reshape({B, c.n_q, D}));
  MOE_RETURN_IF_ERROR(DecodeAttention(ctx, q_heads, *cache, o_heads));
  return Gemm(ctx, o, p.w_o, y2);
}

}  // namespace smoe
