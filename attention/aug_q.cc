#include "attention/aug_q.h"

#include "absl/strings/str_cat.h"
#include "attention/validate.h"
#include "runtime/blas/gemm.h"
#include "runtime/nn/swiglu.h"

namespace smoe {
namespace {

using attention_internal::CheckArg;
using attention_internal::CheckFloating;

// Checks q [T, QD] and the weights (or, with prefix "d", the f32 gradients); returns d_aug.
StatusOr<int64_t> CheckAugQ(const ExecContext& ctx, const TensorView& q, const AugQWeights& w,
                            absl::string_view prefix, DType dtype) {
  MOE_RETURN_IF_ERROR(CheckFloating("q", q));
  MOE_RETURN_IF_ERROR(CheckArg("q", ctx, q, q.dtype(), {-1, -1}));
  const int64_t qd = q.dim(1);
  MOE_RETURN_IF_ERROR(CheckArg(absl::StrCat(prefix, "w_gate"), ctx, w.w_gate, dtype, {qd, -1}));
  const int64_t d_aug = w.w_gate.dim(1);
  MOE_RETURN_IF_ERROR(CheckArg(absl::StrCat(prefix, "w_up"), ctx, w.w_up, dtype, {qd, d_aug}));
  MOE_RETURN_IF_ERROR(CheckArg(absl::StrCat(prefix, "w_down"), ctx, w.w_down, dtype, {d_aug, qd}));
  return d_aug;
}

StatusOr<Tensor> Like(ExecContext& ctx, Shape shape, DType dtype) {
  return Tensor::Empty(shape, dtype, ctx.device(), ctx.allocator());
}

}  // namespace

Status AugQForward(ExecContext& ctx, const TensorView& q, const AugQWeights& weights,
                   const TensorView& q_aug, AugQSaved* saved) {
  MOE_ASSIGN_OR_RETURN(const int64_t d_aug, CheckAugQ(ctx, q, weights, "", q.dtype()));
  MOE_RETURN_IF_ERROR(CheckArg("q_aug", ctx, q_aug, q.dtype(), q.shape()));
  const int64_t rows = q.dim(0);
  MOE_ASSIGN_OR_RETURN(saved->gate, Like(ctx, {rows, d_aug}, q.dtype()));
  MOE_ASSIGN_OR_RETURN(saved->up, Like(ctx, {rows, d_aug}, q.dtype()));
  MOE_ASSIGN_OR_RETURN(saved->h, Like(ctx, {rows, d_aug}, q.dtype()));
  MOE_RETURN_IF_ERROR(Gemm(ctx, q, weights.w_gate, saved->gate));
  MOE_RETURN_IF_ERROR(Gemm(ctx, q, weights.w_up, saved->up));
  MOE_RETURN_IF_ERROR(SwiGLU(ctx, saved->gate, saved->up, saved->h));
  return Gemm(ctx, saved->h, weights.w_down, q_aug);
}

Status AugQBackward(ExecContext& ctx, const TensorView& q, const AugQWeights& weights,
                    const AugQSaved& saved, const TensorView& dq_aug, const TensorView& dq,
                    const AugQWeights& grads) {
  MOE_ASSIGN_OR_RETURN(const int64_t d_aug, CheckAugQ(ctx, q, weights, "", q.dtype()));
  MOE_RETURN_IF_ERROR(CheckAugQ(ctx, q, grads, "d", DType::kF32).status());
  const int64_t rows = q.dim(0);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"saved.gate", &saved.gate},
                                {"saved.up", &saved.up},
                                {"saved.h", &saved.h}}) {
    MOE_RETURN_IF_ERROR(CheckArg(name, ctx, *t, q.dtype(), {rows, d_aug}));
  }
  MOE_RETURN_IF_ERROR(CheckArg("dq_aug", ctx, dq_aug, q.dtype(), q.shape()));
  MOE_RETURN_IF_ERROR(CheckArg("dq", ctx, dq, q.dtype(), q.shape()));
  MOE_ASSIGN_OR_RETURN(Tensor dh, Like(ctx, {rows, d_aug}, q.dtype()));
  MOE_ASSIGN_OR_RETURN(Tensor dgate, Like(ctx, {rows, d_aug}, q.dtype()));
  MOE_ASSIGN_OR_RETURN(Tensor dup, Like(ctx, {rows, d_aug}, q.dtype()));
  MOE_RETURN_IF_ERROR(Gemm(ctx, saved.h, dq_aug, grads.w_down, {.trans_a = true, .beta = 1.0f}));
  MOE_RETURN_IF_ERROR(Gemm(ctx, dq_aug, weights.w_down, dh, {.trans_b = true}));
  MOE_RETURN_IF_ERROR(SwiGLUBackward(ctx, saved.gate, saved.up, dh, dgate, dup));
  MOE_RETURN_IF_ERROR(Gemm(ctx, q, dgate, grads.w_gate, {.trans_a = true, .beta = 1.0f}));
  MOE_RETURN_IF_ERROR(Gemm(ctx, q, dup, grads.w_up, {.trans_a = true, .beta = 1.0f}));
  MOE_RETURN_IF_ERROR(Gemm(ctx, dgate, weights.w_gate, dq, {.trans_b = true}));
  return Gemm(ctx, dup, weights.w_up, dq, {.trans_b = true, .beta = 1.0f});
}

}  // namespace smoe
