#include "moe/router/router.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "moe/router/router_cpu.h"
#include "moe/router/router_internal.h"
#include "runtime/blas/gemm.h"
#include "runtime/core/cpu_vector.h"
#include "runtime/core/thread_pool.h"
#include "runtime/nn/softmax.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

using internal::CheckRouterArg;

Status CheckX(const ExecContext& ctx, const TensorView& x) {
  if (!IsFloating(x.dtype())) return BadArgument("x.dtype", DTypeName(x.dtype()), "f32 or bf16");
  MOE_RETURN_IF_ERROR(CheckRouterArg("x", ctx, x, x.dtype(), {-1, -1}));
  if (x.dim(1) < 1) return BadArgument("x.shape", x.shape().ToString(), "[T, M] with M >= 1");
  return absl::OkStatus();
}

// x as f32: x itself, or a widened copy in `storage` (from ctx's allocator).
StatusOr<TensorView> XAsF32(ExecContext& ctx, const TensorView& x, Tensor* storage) {
  if (x.dtype() == DType::kF32) return x;
  MOE_ASSIGN_OR_RETURN(*storage,
                       Tensor::Empty(x.shape(), DType::kF32, ctx.device(), ctx.allocator()));
  MOE_RETURN_IF_ERROR(Cast(ctx, x, *storage));
  return storage->view();
}

// router_reference::TopK and Gates at K = 1 for rows [0, rows): the arg max of the score (logits,
// plus bias when non-null), ties to the lower index; a row with a non-finite score gets expert 0.
// The same selection and gates as the reference, bit for bit (tested), in one pass per row.
template <bool kBias>
MOE_CPU_CLONES void TopOneRows(const float* logits, const float* bias, const float* probs,
                               int64_t rows, int64_t e, bool renormalize, int32_t* idx,
                               float* gates) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* lr = logits + r * e;
    float best_score = kBias ? lr[0] + bias[0] : lr[0];
    int32_t best = 0;
    bool finite = std::fabs(best_score) <= std::numeric_limits<float>::max();
    for (int64_t c = 1; c < e; ++c) {
      const float score = kBias ? lr[c] + bias[c] : lr[c];
      finite = finite && std::fabs(score) <= std::numeric_limits<float>::max();
      if (score > best_score) {
        best_score = score;
        best = static_cast<int32_t>(c);
      }
    }
    if (!finite) best = 0;
    idx[r] = best;
    const float p = probs[r * e + best];
    gates[r] = renormalize ? p / p : p;
  }
}

// router_reference::LogitsGradient for rows [0, rows), in f32 over the E columns: every column
// gets p_c (0 - dot) + extra_c, then the K chosen ones their p_c dp_j (the reference's per-row
// scalars dp and dot in double).
MOE_CPU_CLONES void LogitsGradientRows(const float* probs, const int32_t* topk_idx,
                                       const float* d_gates, const float* extra, int64_t rows,
                                       int64_t e, int64_t k, bool renormalize, float* d_logits) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* pr = probs + r * e;
    const int32_t* ir = topk_idx + r * k;
    const float* dgr = d_gates + r * k;
    float* dl = d_logits + r * e;
    double sum = 0.0, dot_g = 0.0, dot = 0.0;
    for (int64_t j = 0; j < k; ++j) sum += pr[ir[j]];
    for (int64_t j = 0; j < k; ++j) dot_g += double{dgr[j]} * pr[ir[j]];
    for (int64_t j = 0; j < k; ++j) {
      const double dp = renormalize ? (dgr[j] - dot_g / sum) / sum : double{dgr[j]};
      dot += dp * pr[ir[j]];
    }
    const float minus_dot = static_cast<float>(-dot);
    if (extra != nullptr) {
      const float* er = extra + r * e;
      for (int64_t c = 0; c < e; ++c) dl[c] = pr[c] * minus_dot + er[c];
    } else {
      for (int64_t c = 0; c < e; ++c) dl[c] = pr[c] * minus_dot;
    }
    for (int64_t j = 0; j < k; ++j) {
      const double dp = renormalize ? (dgr[j] - dot_g / sum) / sum : double{dgr[j]};
      dl[ir[j]] += static_cast<float>(dp * pr[ir[j]]);
    }
  }
}

}  // namespace

Status ValidateRouterConfig(const RouterConfig& config) {
  if (config.num_experts < 1) {
    return BadArgument("config.num_experts", absl::StrCat(config.num_experts), ">= 1");
  }
  if (config.top_k < 1 || config.top_k > config.num_experts) {
    return BadArgument("config.top_k", absl::StrCat(config.top_k),
                       absl::StrCat("in [1, num_experts = ", config.num_experts, "]"));
  }
  return absl::OkStatus();
}

bool IsAbsent(const TensorView& t) {
  return (t.rank() == 0 && t.data() == nullptr) || t.numel() == 0;
}

Status RouterForward(ExecContext& ctx, const RouterConfig& config, const TensorView& x,
                     const TensorView& w_gate, const TensorView& expert_bias,
                     const TensorView& logits, const TensorView& probs, const TensorView& topk_idx,
                     const TensorView& topk_gates) {
  MOE_RETURN_IF_ERROR(ValidateRouterConfig(config));
  MOE_RETURN_IF_ERROR(CheckX(ctx, x));
  const int64_t t = x.dim(0), m = x.dim(1), e = config.num_experts, k = config.top_k;
  MOE_RETURN_IF_ERROR(CheckRouterArg("w_gate", ctx, w_gate, DType::kF32, {m, e}));
  const bool has_bias = !IsAbsent(expert_bias);
  if (has_bias)
    MOE_RETURN_IF_ERROR(CheckRouterArg("expert_bias", ctx, expert_bias, DType::kF32, {e}));
  MOE_RETURN_IF_ERROR(CheckRouterArg("logits", ctx, logits, DType::kF32, {t, e}));
  MOE_RETURN_IF_ERROR(CheckRouterArg("probs", ctx, probs, DType::kF32, {t, e}));
  MOE_RETURN_IF_ERROR(CheckRouterArg("topk_idx", ctx, topk_idx, DType::kI32, {t, k}));
  MOE_RETURN_IF_ERROR(CheckRouterArg("topk_gates", ctx, topk_gates, DType::kF32, {t, k}));
  if (t == 0) return absl::OkStatus();

  Tensor x_storage;
  MOE_ASSIGN_OR_RETURN(TensorView x32, XAsF32(ctx, x, &x_storage));
  MOE_RETURN_IF_ERROR(Gemm(ctx, x32, w_gate, logits));
  MOE_RETURN_IF_ERROR(SoftmaxRows(ctx, logits, probs));
  const float* bias = has_bias ? expert_bias.data<float>() : nullptr;
  if (ctx.device().is_cuda()) {
    return internal::RouterTopKCuda(ctx, logits.data<float>(), bias, probs.data<float>(), t, e, k,
                                    config.renormalize, topk_idx.data<int32_t>(),
                                    topk_gates.data<float>());
  }
  // The reference's row loops, on row ranges in parallel (each row is independent).
  const float* lg = logits.data<float>();
  const float* pr = probs.data<float>();
  int32_t* idx = topk_idx.data<int32_t>();
  float* gates = topk_gates.data<float>();
  ParallelFor(t, 2 * e * k, [&](int64_t first, int64_t last) {
    if (k == 1) {  // Sigma-MoE's routing: one pass per row
      (bias != nullptr ? TopOneRows<true> : TopOneRows<false>)(lg + first * e, bias, pr + first * e,
                                                               last - first, e, config.renormalize,
                                                               idx + first, gates + first);
      return;
    }
    router_reference::TopK(lg + first * e, bias, last - first, e, k, idx + first * k);
    router_reference::Gates(pr + first * e, idx + first * k, last - first, e, k, config.renormalize,
                            gates + first * k);
  });
  return absl::OkStatus();
}

Status RouterBackward(ExecContext& ctx, const RouterConfig& config, const TensorView& x,
                      const TensorView& w_gate, const TensorView& probs, const TensorView& topk_idx,
                      const TensorView& d_topk_gates, const TensorView& d_logits_extra,
                      const TensorView& dx, const TensorView& dw_gate, bool accumulate_dw) {
  MOE_RETURN_IF_ERROR(ValidateRouterConfig(config));
  MOE_RETURN_IF_ERROR(CheckX(ctx, x));
  const int64_t t = x.dim(0), m = x.dim(1), e = config.num_experts, k = config.top_k;
  MOE_RETURN_IF_ERROR(CheckRouterArg("w_gate", ctx, w_gate, DType::kF32, {m, e}));
  MOE_RETURN_IF_ERROR(CheckRouterArg("probs", ctx, probs, DType::kF32, {t, e}));
  MOE_RETURN_IF_ERROR(CheckRouterArg("topk_idx", ctx, topk_idx, DType::kI32, {t, k}));
  MOE_RETURN_IF_ERROR(CheckRouterArg("d_topk_gates", ctx, d_topk_gates, DType::kF32, {t, k}));
  const bool has_extra = !IsAbsent(d_logits_extra) && t > 0;
  if (has_extra) {
    MOE_RETURN_IF_ERROR(CheckRouterArg("d_logits_extra", ctx, d_logits_extra, DType::kF32, {t, e}));
  }
  MOE_RETURN_IF_ERROR(CheckRouterArg("dx", ctx, dx, x.dtype(), {t, m}));
  MOE_RETURN_IF_ERROR(CheckRouterArg("dw_gate", ctx, dw_gate, DType::kF32, {m, e}));
  if (t == 0) return accumulate_dw ? absl::OkStatus() : Fill(ctx, dw_gate, 0.0);
  if (ctx.device().is_cpu()) {
    const int32_t* idx = topk_idx.data<int32_t>();
    for (int64_t i = 0; i < t * k; ++i) {
      if (idx[i] < 0 || idx[i] >= e) {
        return BadArgument(absl::StrCat("topk_idx[", i, "]"), absl::StrCat(idx[i]),
                           absl::StrCat("in [0, ", e, ")"));
      }
    }
  }

  MOE_ASSIGN_OR_RETURN(Tensor d_logits,
                       Tensor::Empty({t, e}, DType::kF32, ctx.device(), ctx.allocator()));
  const float* extra = has_extra ? d_logits_extra.data<float>() : nullptr;
  if (ctx.device().is_cuda()) {
    MOE_RETURN_IF_ERROR(internal::RouterLogitsGradientCuda(
        ctx, probs.data<float>(), topk_idx.data<int32_t>(), d_topk_gates.data<float>(), extra, t, e,
        k, config.renormalize, d_logits.data<float>()));
  } else {
    const float* pr = probs.data<float>();
    const int32_t* idx = topk_idx.data<int32_t>();
    const float* dg = d_topk_gates.data<float>();
    float* dl = d_logits.data<float>();
    ParallelFor(t, 2 * e * k, [&](int64_t first, int64_t last) {
      LogitsGradientRows(pr + first * e, idx + first * k, dg + first * k,
                         extra != nullptr ? extra + first * e : nullptr, last - first, e, k,
                         config.renormalize, dl + first * e);
    });
  }
  // dx [T, M] = d_logits [T, E] w_gate^T; the GEMM rounds a bf16 dx once at the end.
  MOE_RETURN_IF_ERROR(Gemm(ctx, d_logits, w_gate, dx, {.trans_b = true}));
  Tensor x_storage;
  MOE_ASSIGN_OR_RETURN(TensorView x32, XAsF32(ctx, x, &x_storage));
  return Gemm(ctx, x32, d_logits, dw_gate, {.trans_a = true, .beta = accumulate_dw ? 1.0f : 0.0f});
}

#if !MOE_WITH_CUDA
namespace internal {
Status RouterTopKCuda(ExecContext&, const float*, const float*, const float*, int64_t, int64_t,
                      int64_t, bool, int32_t*, float*) {
  return absl::FailedPreconditionError("RouterForward on CUDA, but this build has no CUDA backend");
}
Status RouterLogitsGradientCuda(ExecContext&, const float*, const int32_t*, const float*,
                                const float*, int64_t, int64_t, int64_t, bool, float*) {
  return absl::FailedPreconditionError(
      "RouterBackward on CUDA, but this build has no CUDA backend");
}
}  // namespace internal
#endif

}  // namespace smoe
