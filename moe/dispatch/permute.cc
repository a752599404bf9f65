#include "moe/dispatch/permute.h"

#include "absl/strings/str_cat.h"
#include "moe/dispatch/permute_cpu.h"
#include "runtime/core/thread_pool.h"

namespace smoe {
namespace {

Status CheckActivation(absl::string_view name, const TensorView& t) {
  if (!IsFloating(t.dtype())) {
    return BadArgument(absl::StrCat(name, ".dtype"), DTypeName(t.dtype()), "f32 or bf16");
  }
  return CheckContiguous(name, t);
}

// [T, M] in the dtype of the op, on ctx's device.
Status CheckTokens(absl::string_view name, const ExecContext& ctx, const RoutingPlan& plan,
                   DType dtype, int64_t m, const TensorView& t) {
  MOE_RETURN_IF_ERROR(CheckTensor(name, t, dtype, ctx.device(), {plan.num_tokens, m}));
  return CheckContiguous(name, t);
}

// [N, M] with N >= R, in the dtype of the op, on ctx's device.
Status CheckRows(absl::string_view name, const ExecContext& ctx, const RoutingPlan& plan,
                 DType dtype, int64_t m, const TensorView& t) {
  MOE_RETURN_IF_ERROR(CheckTensor(name, t, dtype, ctx.device(), {-1, m}));
  MOE_RETURN_IF_ERROR(CheckContiguous(name, t));
  if (t.dim(0) < plan.num_rows()) {
    return BadArgument(absl::StrCat(name, ".shape"), t.shape().ToString(),
                       absl::StrCat("at least R = ", plan.num_rows(), " rows"));
  }
  return absl::OkStatus();
}

Status CheckGates(absl::string_view name, const ExecContext& ctx, const RoutingPlan& plan,
                  const TensorView& t) {
  MOE_RETURN_IF_ERROR(
      CheckTensor(name, t, DType::kF32, ctx.device(), {plan.num_tokens, plan.top_k}));
  return CheckContiguous(name, t);
}

// Shapes are validated before any of these run; the plan's arrays are host arrays here. The
// reference's loops on ranges of rows (Permute) or tokens (the others) in parallel: each row or
// token is written by one call, with the reference's arithmetic, so the results are the same bits.
template <typename T>
void PermuteCpu(const RoutingPlan& plan, const TensorView& x, const TensorView& xs) {
  const int64_t m = x.dim(1);
  const int32_t* row_token = plan.row_token.data<int32_t>();
  ParallelFor(plan.num_rows(), m, [&](int64_t first, int64_t last) {
    reference::Permute(row_token + first, last - first, m, x.data<T>(), xs.data<T>() + first * m);
  });
}

template <typename T>
void PermuteBackwardCpu(const RoutingPlan& plan, const TensorView& dxs, const TensorView& dx) {
  const int64_t m = dx.dim(1), k = plan.top_k;
  const int32_t* slots = plan.slots.data<int32_t>();
  ParallelFor(plan.num_tokens, k * m, [&](int64_t first, int64_t last) {
    reference::PermuteBackward(slots + first * k, last - first, k, m, dxs.data<T>(),
                               dx.data<T>() + first * m);
  });
}

template <typename T>
void CombineCpu(const RoutingPlan& plan, const TensorView& ys, const TensorView& gates,
                const TensorView& y) {
  const int64_t m = y.dim(1), k = plan.top_k;
  const int32_t* slots = plan.slots.data<int32_t>();
  ParallelFor(plan.num_tokens, k * m, [&](int64_t first, int64_t last) {
    reference::Combine(slots + first * k, last - first, k, m, ys.data<T>(),
                       gates.data<float>() + first * k, y.data<T>() + first * m);
  });
}

template <typename T>
void CombineBackwardCpu(const RoutingPlan& plan, const TensorView& dy, const TensorView& ys,
                        const TensorView& gates, const TensorView& dys, const TensorView& dgates) {
  const int64_t m = dy.dim(1), k = plan.top_k;
  const int32_t* slots = plan.slots.data<int32_t>();
  ParallelFor(plan.num_tokens, 2 * k * m, [&](int64_t first, int64_t last) {
    reference::CombineBackward(slots + first * k, last - first, k, m, dy.data<T>() + first * m,
                               ys.data<T>(), gates.data<float>() + first * k, dys.data<T>(),
                               dgates.data<float>() + first * k);
  });
}

}  // namespace

Status Permute(ExecContext& ctx, const RoutingPlan& plan, const TensorView& x,
               const TensorView& xs) {
  MOE_RETURN_IF_ERROR(CheckRoutingPlan(ctx, plan));
  MOE_RETURN_IF_ERROR(CheckActivation("x", x));
  MOE_RETURN_IF_ERROR(CheckTokens("x", ctx, plan, x.dtype(), -1, x));
  const int64_t m = x.dim(1);
  MOE_RETURN_IF_ERROR(CheckRows("xs", ctx, plan, x.dtype(), m, xs));
  if (plan.num_rows() == 0 || m == 0) return absl::OkStatus();
  if (ctx.device().is_cuda()) return internal::PermuteCuda(ctx, plan, x, xs);
  if (x.dtype() == DType::kF32) {
    PermuteCpu<float>(plan, x, xs);
  } else {
    PermuteCpu<BF16>(plan, x, xs);
  }
  return absl::OkStatus();
}

Status PermuteBackward(ExecContext& ctx, const RoutingPlan& plan, const TensorView& dxs,
                       const TensorView& dx) {
  MOE_RETURN_IF_ERROR(CheckRoutingPlan(ctx, plan));
  MOE_RETURN_IF_ERROR(CheckActivation("dxs", dxs));
  MOE_RETURN_IF_ERROR(CheckRows("dxs", ctx, plan, dxs.dtype(), -1, dxs));
  const int64_t m = dxs.dim(1);
  MOE_RETURN_IF_ERROR(CheckTokens("dx", ctx, plan, dxs.dtype(), m, dx));
  if (dx.numel() == 0) return absl::OkStatus();
  if (ctx.device().is_cuda()) return internal::PermuteBackwardCuda(ctx, plan, dxs, dx);
  if (dx.dtype() == DType::kF32) {
    PermuteBackwardCpu<float>(plan, dxs, dx);
  } else {
    PermuteBackwardCpu<BF16>(plan, dxs, dx);
  }
  return absl::OkStatus();
}

Status Combine(ExecContext& ctx, const RoutingPlan& plan, const TensorView& ys,
               const TensorView& gates, const TensorView& y) {
  MOE_RETURN_IF_ERROR(CheckRoutingPlan(ctx, plan));
  MOE_RETURN_IF_ERROR(CheckActivation("ys", ys));
  MOE_RETURN_IF_ERROR(CheckRows("ys", ctx, plan, ys.dtype(), -1, ys));
  const int64_t m = ys.dim(1);
  MOE_RETURN_IF_ERROR(CheckGates("gates", ctx, plan, gates));
  MOE_RETURN_IF_ERROR(CheckTokens("y", ctx, plan, ys.dtype(), m, y));
  if (y.numel() == 0) return absl::OkStatus();
  if (ctx.device().is_cuda()) return internal::CombineCuda(ctx, plan, ys, gates, y);
  if (y.dtype() == DType::kF32) {
    CombineCpu<float>(plan, ys, gates, y);
  } else {
    CombineCpu<BF16>(plan, ys, gates, y);
  }
  return absl::OkStatus();
}

Status CombineBackward(ExecContext& ctx, const RoutingPlan& plan, const TensorView& dy,
                       const TensorView& ys, const TensorView& gates, const TensorView& dys,
                       const TensorView& dgates) {
  MOE_RETURN_IF_ERROR(CheckRoutingPlan(ctx, plan));
  MOE_RETURN_IF_ERROR(CheckActivation("dy", dy));
  MOE_RETURN_IF_ERROR(CheckTokens("dy", ctx, plan, dy.dtype(), -1, dy));
  const int64_t m = dy.dim(1);
  MOE_RETURN_IF_ERROR(CheckRows("ys", ctx, plan, dy.dtype(), m, ys));
  MOE_RETURN_IF_ERROR(CheckGates("gates", ctx, plan, gates));
  MOE_RETURN_IF_ERROR(CheckRows("dys", ctx, plan, dy.dtype(), m, dys));
  MOE_RETURN_IF_ERROR(CheckGates("dgates", ctx, plan, dgates));
  if (dgates.numel() == 0) return absl::OkStatus();
  if (ctx.device().is_cuda()) {
    return internal::CombineBackwardCuda(ctx, plan, dy, ys, gates, dys, dgates);
  }
  if (dy.dtype() == DType::kF32) {
    CombineBackwardCpu<float>(plan, dy, ys, gates, dys, dgates);
  } else {
    CombineBackwardCpu<BF16>(plan, dy, ys, gates, dys, dgates);
  }
  return absl::OkStatus();
}

#if !MOE_WITH_CUDA
namespace internal {
namespace {
Status NoCuda(absl::string_view op) {
  return absl::FailedPreconditionError(
      absl::StrCat(op, " on CUDA, but this build has no CUDA backend"));
}
}  // namespace
Status PermuteCuda(ExecContext&, const RoutingPlan&, const TensorView&, const TensorView&) {
  return NoCuda("Permute");
}
Status PermuteBackwardCuda(ExecContext&, const RoutingPlan&, const TensorView&, const TensorView&) {
  return NoCuda("PermuteBackward");
}
Status CombineCuda(ExecContext&, const RoutingPlan&, const TensorView&, const TensorView&,
                   const TensorView&) {
  return NoCuda("Combine");
}
Status CombineBackwardCuda(ExecContext&, const RoutingPlan&, const TensorView&, const TensorView&,
                           const TensorView&, const TensorView&, const TensorView&) {
  return NoCuda("CombineBackward");
}
}  // namespace internal
#endif

}  // namespace smoe
