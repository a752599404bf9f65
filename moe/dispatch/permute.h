// Dispatch and combine over a RoutingPlan (docs/design.md section 5, steps 3 and 5), and their
// backward.
//
// Letters: T tokens, K choices, M model dim, R = plan.num_rows() rows kept.
// x, y, dy, dx: contiguous [T, M]; xs, ys, dys, dxs: contiguous [N, M] with N >= R (the expert-
// sorted buffer; [R, M] is the normal case; rows >= R are neither read nor written).
// All of these share one dtype, f32 or bf16. gates, dgates: contiguous [T, K] f32.
// Everything lives on ctx's device, the device the plan was built on (checked).
// Arithmetic is in fp32 or wider (the CPU reference accumulates in double); bf16 results are
// rounded once, at the store. No float atomics: every op is deterministic, sums over k run in k
// order. No host sync. All outputs are overwritten, never accumulated into.
#pragma once

#include "moe/dispatch/routing_plan.h"
#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

// xs[r] = x[row_token[r]] for r < R.
[[nodiscard]] Status Permute(ExecContext& ctx, const RoutingPlan& plan, const TensorView& x,
                             const TensorView& xs);
// The gradient of Permute: dx[t] = sum over kept k of dxs[slots[t, k]], in k order; 0 when every
// choice of t was dropped.
[[nodiscard]] Status PermuteBackward(ExecContext& ctx, const RoutingPlan& plan,
                                     const TensorView& dxs, const TensorView& dx);
// y[t] = sum over kept k of gates[t, k] * ys[slots[t, k]], in k order; dropped choices
// contribute 0 (a token with every choice dropped gets y[t] = 0).
[[nodiscard]] Status Combine(ExecContext& ctx, const RoutingPlan& plan, const TensorView& ys,
                             const TensorView& gates, const TensorView& y);
// The gradient of Combine: dys[slots[t, k]] = gates[t, k] * dy[t] for kept (t, k) (that is every
// row r < R); dgates[t, k] = <dy[t], ys[slots[t, k]]>, 0 when (t, k) was dropped.
[[nodiscard]] Status CombineBackward(ExecContext& ctx, const RoutingPlan& plan,
                                     const TensorView& dy, const TensorView& ys,
                                     const TensorView& gates, const TensorView& dys,
                                     const TensorView& dgates);

namespace internal {
// CUDA backends, called after validation with non-empty work.
[[nodiscard]] Status PermuteCuda(ExecContext& ctx, const RoutingPlan& plan, const TensorView& x,
                                 const TensorView& xs);
[[nodiscard]] Status PermuteBackwardCuda(ExecContext& ctx, const RoutingPlan& plan,
                                         const TensorView& dxs, const TensorView& dx);
[[nodiscard]] Status CombineCuda(ExecContext& ctx, const RoutingPlan& plan, const TensorView& ys,
                                 const TensorView& gates, const TensorView& y);
[[nodiscard]] Status CombineBackwardCuda(ExecContext& ctx, const RoutingPlan& plan,
                                         const TensorView& dy, const TensorView& ys,
                                         const TensorView& gates, const TensorView& dys,
                                         const TensorView& dgates);
}  // namespace internal

}  // namespace smoe
