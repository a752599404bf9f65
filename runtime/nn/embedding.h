// Token embedding lookup and its backward.
//
//   EmbeddingForward:  out[t, :] = table[ids[t], :]
//   EmbeddingBackward: dtable[v, :] += sum over t with ids[t] == v of dout[t, :]
// ids [T] i32; table [V, M] f32|bf16; out [T, M] with table's dtype (overwritten, copied exactly).
// dout [T, M] f32|bf16; dtable [V, M] f32, ALWAYS accumulated (callers zero it first, so that
// tied weights or gradient accumulation can add into it).
// All contiguous, on ctx's device. T = 0 is a no-op.
//
// ids must lie in [0, V). The CPU backend checks and returns InvalidArgument naming the first bad
// position before writing anything. The CUDA backend does not read ids on the host (no sync): an
// out-of-range id is a precondition violation; it never reads or writes out of bounds, its
// forward row becomes NaN and its backward contribution is dropped.
//
// Determinism: bit-identical run to run on each backend, no float atomics. CPU adds dout rows into
// dtable in increasing t; CUDA stable-sorts positions by id with CUB, sums each id's rows in
// increasing t and adds that sum to dtable (so CPU and CUDA agree within fp32 rounding).
// Workspace (CUDA backward): 4 * T int32 plus CUB's radix-sort scratch.
#pragma once

#include <cstdint>

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

[[nodiscard]] Status EmbeddingForward(ExecContext& ctx, const TensorView& ids,
                                      const TensorView& table, const TensorView& out);
[[nodiscard]] Status EmbeddingBackward(ExecContext& ctx, const TensorView& ids,
                                       const TensorView& dout, const TensorView& dtable);

namespace internal {

// CPU reference over raw arrays, ids already validated. Instantiated for S = float, BF16, double
// and (S, G) = (float, float), (BF16, float), (double, double); double serves fp64 gradchecks.
template <typename S>
void EmbeddingForwardCpu(const int32_t* ids, const S* table, int64_t tokens, int64_t dim, S* out);
template <typename S, typename G>
void EmbeddingBackwardCpu(const int32_t* ids, const S* dout, int64_t tokens, int64_t dim,
                          G* dtable);

// Backends, called after validation with T > 0 and M > 0.
[[nodiscard]] Status EmbeddingForwardCuda(ExecContext& ctx, DType dtype, const int32_t* ids,
                                          const void* table, int64_t vocab, int64_t tokens,
                                          int64_t dim, void* out);
[[nodiscard]] Status EmbeddingBackwardCuda(ExecContext& ctx, DType dout_dtype, const int32_t* ids,
                                           const void* dout, int64_t vocab, int64_t tokens,
                                           int64_t dim, float* dtable);

}  // namespace internal
}  // namespace smoe
