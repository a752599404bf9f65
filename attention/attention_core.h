// Causal multi-head attention in which K heads and V heads are mapped to query heads separately
// (DiffQKV): query head i reads K head floor(i * n_k / n_q) and V head floor(i * n_v / n_q).
// MHA (n_k = n_v = n_q) and GQA (n_k = n_v < n_q) are special cases. K and V are never repeated
// to n_q heads, on either backend.
//
//   AttentionForward:  o_i[s] = sum_{t <= s} P_i[s, t] v_{vh(i)}[t],
//                      P_i[s, :] = softmax_{t <= s}(q_i[s] . k_{kh(i)}[t] / sqrt(D))
//                      lse[b, i, s] = log sum_{t <= s} exp(q_i[s] . k_{kh(i)}[t] / sqrt(D))
//   AttentionBackward: dq, dk, dv of sum(dout * out), from the saved out and lse (flash-attention-2
//                      style: the probabilities are recomputed, never stored).
// Shapes (row-major, i.e. [T, heads * D] with T = B * S; all B sequences have length S):
//   q, out, dq, dout [B, S, n_q, D];  k, dk [B, S, n_k, D];  v, dv [B, S, n_v, D];
//   lse [B, n_q, S].
// n_k and n_v must each divide n_q. dtypes: q, k, v, out, dout, dq, dk, dv all f32 or all bf16;
// lse f32. Accumulation is fp32 on CUDA; on the CPU, f32 runs the OpenBLAS path of
// attention_core_blas.h (fp32 products, softmax sums in double) and bf16 the plain-loop reference
// of attention_core_cpu.h (fp64). Every output is overwritten.
// CPU: any D >= 1. CUDA: D in {32, 64, 96, 128} (a fused tiled kernel with online softmax: no S x S
// matrix in memory); workspace: B * n_q * S floats for backward. Deterministic on each backend
// (fixed reduction order, no atomics). No host synchronization. Tensors contiguous, on the
// device of ctx.
#pragma once

#include <cstdint>

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

// The sizes of one attention problem.
struct AttentionDims {
  int64_t batch = 0;  // B
  int64_t seq = 0;    // S
  int64_t n_q = 0;
  int64_t n_k = 0;
  int64_t n_v = 0;
  int64_t head_dim = 0;  // D

  int64_t KHead(int64_t q_head) const { return q_head * n_k / n_q; }
  int64_t VHead(int64_t q_head) const { return q_head * n_v / n_q; }
};

// True when the CUDA kernels support head dimension `head_dim`.
bool CudaSupportsHeadDim(int64_t head_dim);

[[nodiscard]] Status AttentionForward(ExecContext& ctx, const TensorView& q, const TensorView& k,
                                      const TensorView& v, const TensorView& out,
                                      const TensorView& lse);
[[nodiscard]] Status AttentionBackward(ExecContext& ctx, const TensorView& q, const TensorView& k,
                                       const TensorView& v, const TensorView& out,
                                       const TensorView& lse, const TensorView& dout,
                                       const TensorView& dq, const TensorView& dk,
                                       const TensorView& dv);

namespace internal {
// InvalidArgument unless n_k and n_v are >= 1 and divide n_q >= 1 (names the offending field).
[[nodiscard]] Status CheckHeadCounts(int64_t n_q, int64_t n_k, int64_t n_v);
[[nodiscard]] Status AttentionForwardCuda(ExecContext& ctx, const AttentionDims& dims, DType dtype,
                                          const void* q, const void* k, const void* v, void* out,
                                          float* lse);
[[nodiscard]] Status AttentionBackwardCuda(ExecContext& ctx, const AttentionDims& dims, DType dtype,
                                           const void* q, const void* k, const void* v,
                                           const void* out, const float* lse, const void* dout,
                                           void* dq, void* dk, void* dv);
}  // namespace internal
}  // namespace smoe
