// GEMM: one entry point over OpenBLAS (CPU) and cuBLAS (CUDA).
//
// Row-major throughout. With op(X) = X or X^T:
//   Gemm:              C[m, n]    = alpha * op(A) op(B) + beta * C
//   BatchedGemm:       C[b][m, n] = alpha * op(A[b]) op(B[b]) + beta * C[b]   (3-D tensors)
//   GroupedGemm:       ragged rows. A [sum_g m_g, k], B [G, k, n] (or [G, n, k] with
//                      trans_b), C [sum_g m_g, n]; group g owns rows [offsets[g], offsets[g+1])
//                      of A and C: C_g = alpha * A_g op(B[g]) + beta * C_g. For MoE expert
//                      forward (x W) and input gradient (dy W^T).
//   GroupedGemmRaggedK: ragged reduction. A [sum_g k_g, m], B [sum_g k_g, n], C [G, m, n];
//                      C[g] = alpha * A_g^T B_g + beta * C[g], where A_g, B_g are rows
//                      [offsets[g], offsets[g+1]). For MoE weight gradients (x^T dy). An empty
//                      group gives C[g] = beta * C[g].
// dtypes: A and B both f32 or both bf16; C f32 or bf16; accumulation is always fp32 (f32 inputs
// use true fp32 on GPU, not TF32). bf16 C is rounded once, to nearest even, at the end.
// beta == 0 means C is write-only (its old contents, even NaN, are ignored).
// Tensors must be contiguous and all on ctx's device. Group offsets live on the host (size G+1,
// non-decreasing, offsets[0] == 0, offsets[G] == rows): a caller with device-side counts copies
// them to the host first, which synchronizes; that is the one sync of an expert pass.
// Deterministic: the same inputs give bit-identical outputs on the same backend.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

struct GemmOptions {
  bool trans_a = false;
  bool trans_b = false;
  float alpha = 1.0f;
  float beta = 0.0f;
};

[[nodiscard]] Status Gemm(ExecContext& ctx, const TensorView& a, const TensorView& b,
                          const TensorView& c, const GemmOptions& options = {});
[[nodiscard]] Status BatchedGemm(ExecContext& ctx, const TensorView& a, const TensorView& b,
                                 const TensorView& c, const GemmOptions& options = {});
// options.trans_a must be false.
[[nodiscard]] Status GroupedGemm(ExecContext& ctx, const TensorView& a, const TensorView& b,
                                 const TensorView& c, std::span<const int64_t> offsets,
                                 const GemmOptions& options = {});
// options.trans_a and trans_b must be false (A is read transposed by definition).
[[nodiscard]] Status GroupedGemmRaggedK(ExecContext& ctx, const TensorView& a, const TensorView& b,
                                        const TensorView& c, std::span<const int64_t> offsets,
                                        const GemmOptions& options = {});

namespace internal {

// One validated problem for a backend: C = alpha op(A) op(B) + beta C, pointers to row-major
// matrices with leading dimensions, repeated `batch` times with element strides between items.
struct GemmProblem {
  const void* a = nullptr;
  const void* b = nullptr;
  void* c = nullptr;
  DType ab_dtype = DType::kF32;
  DType c_dtype = DType::kF32;
  bool trans_a = false;
  bool trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int64_t batch = 1;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;
  float alpha = 1.0f, beta = 0.0f;
};

// The groups of a grouped GEMM, laid out as GroupedGemm and GroupedGemmRaggedK pass them to a
// backend: `whole` is group 0's problem over the whole operands (m or k unset), offsets the
// validated group offsets, `stride` the elements between consecutive B (GroupedGemm) or C
// (GroupedGemmRaggedK) matrices. GroupedGemm drops groups without rows.
std::vector<GemmProblem> GroupedGemmGroups(const GemmProblem& whole,
                                           std::span<const int64_t> offsets, int64_t stride);
std::vector<GemmProblem> RaggedKGroups(const GemmProblem& whole, std::span<const int64_t> offsets,
                                       int64_t stride);

// cuBLAS's grouped (and batched) GEMMs read their matrix pointers from device memory, where
// cuBLAS cannot check them, and with bf16 inputs they need every matrix 16-byte aligned (a
// misaligned one faults: "misaligned address"). Here that means: the A, B and C pointers of the
// group, and its leading dimensions in bytes (so that every row starts aligned), are multiples of
// kGroupedGemmAlignment. An M, H or H/r that is not a multiple of 8 breaks it (group g's rows
// start at offsets[g] * M elements). f32 inputs have no such rule.
inline constexpr int64_t kGroupedGemmAlignment = 16;
bool MeetsGroupedAlignment(const GemmProblem& p);

// How GroupedGemmCuda runs one group `p` of a grouped GEMM whose first group is `first`:
//   kSkip     nothing to write (m == 0 or n == 0);
//   kAlone    one cublasGemmEx (or our k == 0 / f32 x f32 -> bf16 paths), which sees the
//             pointers: k == 0, f32 x f32 -> bf16, batch != 1, dtypes unlike `first`'s, a dtype
//             pair the grouped call rejected (`grouped_rejected`), or !MeetsGroupedAlignment;
//   kGrouped  in a cublasGemmGroupedBatchedEx call.
// Pure host logic (tested on the CPU).
enum class GroupRoute { kSkip, kAlone, kGrouped };
GroupRoute RouteGroup(const GemmProblem& p, const GemmProblem& first, bool grouped_rejected);

// The CPU backend (OpenBLAS, one thread per call, inside the process's pool: runtime/core/
// thread_pool.h). GemmCpu runs batch items in parallel and splits a large f32 product into blocks
// of rows (or columns) of C, of a size fixed by the shape alone; GroupedGemmCpu runs the groups in
// parallel. Each element of C is computed by one BLAS call, so results do not depend on the
// thread count.
[[nodiscard]] Status GemmCpu(const GemmProblem& p);
[[nodiscard]] Status GroupedGemmCpu(std::span<const GemmProblem> groups);
[[nodiscard]] Status GemmCuda(ExecContext& ctx, const GemmProblem& p);
// The groups of one grouped GEMM (batch == 1 each, any m, n, k including 0), as few cuBLAS calls
// as cuBLAS takes: cublasGemmGroupedBatchedEx for the groups RouteGroup sends there (one call per
// up to kMaxGroupsPerCall groups), GemmCuda group by group for the others.
[[nodiscard]] Status GroupedGemmCuda(ExecContext& ctx, std::span<const GemmProblem> groups);

}  // namespace internal
}  // namespace smoe
