// The SwiGLU expert MLP over ragged expert groups (docs/design.md sections 5 and 6).
//
// Rows of the expert-sorted buffer xs [R, M] come in E_l groups: expert e owns rows
// [offsets[e], offsets[e+1]) (possibly none). For each expert e, with X_e its rows:
//   h1 = X_e W1[e],  h3 = X_e W3[e],  act = silu(h1) * h3,  Y_e = act W2[e]
// and the backward, given dY:
//   dact = dY W2[e]^T,  dh1 = dact * h3 * silu'(h1),  dh3 = dact * silu(h1),
//   dX = dh1 W1[e]^T + dh3 W3[e]^T,
//   dW1[e] = X_e^T dh1,  dW3[e] = X_e^T dh3,  dW2[e] = act^T dY.
//
// Shapes and dtypes (every tensor contiguous and on ctx's device):
//   w1, w3 [E_l, M, H], w2 [E_l, H, M]: the compute dtype D, f32 or bf16.
//   xs, ys, dys, dxs [R, M]: D.   saved h1, h3, act [R, H]: D (caller-allocated).
//   dw1, dw3 [E_l, M, H], dw2 [E_l, H, M]: f32.
//   offsets: host, E_l + 1 entries, offsets[0] == 0, non-decreasing, offsets[E_l] == R.
// Math: fp32 accumulation in every GEMM (runtime/blas/gemm.h). With D = bf16, h1 and h3 are
// rounded to bf16 before the activation (they are what backward sees), act is rounded before the
// second GEMM, the scratch dact, dh1, dh3 are bf16, and the backward rounds twice more:
//   - each weight-gradient product (X_e^T dh1, X_e^T dh3, act^T dY) is rounded to bf16 once, then
//     added to (or, without `accumulate`, written into) the f32 gradient in f32;
//   - dxs = bf16(dh3 W3^T + bf16(dh1 W1^T)): the first product rounded, the second added to it in
//     fp32 and the sum rounded.
// So every product is a grouped GEMM whose inputs and output share the dtype (the pairs cuBLAS's
// grouped GEMM takes), and no bf16 product runs expert by expert. With D = f32 nothing is rounded.
// Outputs: ys, saved and dxs are overwritten. ys may alias xs, and dxs may alias dys or xs (each
// is written only after the aliased input is read for the last time); nothing else may alias.
// Weight gradients are overwritten, or added to when `accumulate` (gradient accumulation over
// micro-batches); an expert with no rows gets a zero gradient (or keeps its old one when
// accumulating).
// Launches (CUDA): one grouped GEMM call per matrix product (three forward; six backward, dxs
// taking two, the second accumulating with beta = 1), one elementwise SwiGLU kernel each way, and
// for bf16 one kernel adding the three bf16 weight-gradient products to the f32 gradients
// (internal::AddWeightGrads); no host sync (offsets are already on the host: the caller's copy of
// the counts is the one sync of an expert pass). An expert without rows adds one small launch per
// product that writes its zero (or scaled) block. Scratch: backward allocates two [R, H] buffers of
// D, and when D is bf16 three bf16 buffers the size of dw1, dw3 and dw2 (3 E_l M H elements), from
// ctx's allocator, released on return (stream-ordered).
// Deterministic: the same inputs give bit-identical outputs on the same backend.
#pragma once

#include <array>
#include <cstdint>
#include <span>

#include "runtime/core/bf16.h"
#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

// Expert weights (docs/design.md section 6): w1, w3 [E_l, M, H], w2 [E_l, H, M].
struct ExpertWeights {
  TensorView w1, w3, w2;
};
// Gradients of ExpertWeights, f32, the same shapes.
struct ExpertGrads {
  TensorView dw1, dw3, dw2;
};
// Saved by ExpertsForward for ExpertsBackward: h1, h3, act [R, H] in the compute dtype.
struct ExpertActivations {
  TensorView h1, h3, act;
};

[[nodiscard]] Status ExpertsForward(ExecContext& ctx, const ExpertWeights& w, const TensorView& xs,
                                    std::span<const int64_t> offsets,
                                    const ExpertActivations& saved, const TensorView& ys);

// `saved` must hold what ExpertsForward wrote for the same w, xs and offsets.
[[nodiscard]] Status ExpertsBackward(ExecContext& ctx, const ExpertWeights& w, const TensorView& xs,
                                     std::span<const int64_t> offsets,
                                     const ExpertActivations& saved, const TensorView& dys,
                                     const TensorView& dxs, const ExpertGrads& grads,
                                     bool accumulate = false);

// Parameter initialization, normal with mean 0: w1 and w3 with std `std_in`, w2 with `std_out`.
// Counter-based and layout-independent: element i of matrix j (0 = w1, 1 = w3, 2 = w2) of global
// expert g = first_expert + e takes Philox stream position
//   offset + (3 * g + j) * M * H + i
// of `seed`, so a rank holding experts [first_expert, first_expert + E_l) gets exactly the values
// of the same experts initialized all on one rank, on CPU and CUDA alike (runtime/tensor
// FillNormal). A full set of E experts uses ExpertInitStreamLength(E, M, H) positions from
// `offset`.
struct ExpertInit {
  uint64_t seed = 0;
  uint64_t offset = 0;
  int64_t first_expert = 0;
  float std_in = 0.02f;
  float std_out = 0.02f;
};
namespace internal {
// grads[i] (f32) = parts[i] (bf16, the same shape) widened, added to grads[i] when `accumulate`:
// the three weight gradients of a bf16 backward in one launch on CUDA (a loop on the CPU).
// Deterministic, elementwise; no host sync.
[[nodiscard]] Status AddWeightGrads(ExecContext& ctx, const std::array<TensorView, 3>& parts,
                                    const std::array<TensorView, 3>& grads, bool accumulate);
[[nodiscard]] Status AddWeightGradsCuda(ExecContext& ctx, const std::array<const BF16*, 3>& parts,
                                        const std::array<float*, 3>& grads,
                                        const std::array<int64_t, 3>& sizes, bool accumulate);
}  // namespace internal

[[nodiscard]] Status InitExpertWeights(ExecContext& ctx, const ExpertWeights& w,
                                       const ExpertInit& init);
uint64_t ExpertInitStreamLength(int64_t experts, int64_t m, int64_t h);

}  // namespace smoe
