// Row gather for regrouping exchanged rows (docs/design.md section 6): after the token all-to-all
// the rows an expert owner receives are ordered [source rank][local expert], and the grouped expert
// GEMMs need them [local expert][source rank]; the same op with the inverse index puts them back.
//
// GatherRows: dst[i, :] = src[index[i], :] for i in [0, N).
//   src [S, C] and dst [N, C]: contiguous, one dtype (f32 or bf16), on ctx's device.
//   index [N] i32: contiguous, on ctx's device, every entry in [0, S). An index need not be a
//   permutation (a row of src may be read several times or not at all).
//   dst is overwritten and must not overlap src. Rows are copied bit for bit: deterministic on both
//   backends and identical between them. No host sync, no workspace.
// Index range: the CPU backend checks it (InvalidArgument naming the first bad entry, before
// writing anything); the CUDA backend cannot without a host sync and leaves a row whose index is
// out of range unwritten.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

[[nodiscard]] Status GatherRows(ExecContext& ctx, const TensorView& src, const TensorView& index,
                                const TensorView& dst);

// Host helper that builds GatherRows indices. A buffer holds A x B blocks of rows stored a-major:
// block (a, b) has block_rows[a * B + b] rows and the blocks come in the order (0, 0), (0, 1), ...,
// (0, B - 1), (1, 0), ...; the result is the index that gathers them b-major, blocks in the order
// (0, 0), (1, 0), ..., (A - 1, 0), (0, 1), ..., each block's rows kept in order. Its inverse is
// BlockTransposeIndex of the transposed block_rows (B x A). block_rows.size() must be A * B
// (checked) and the total must fit in i32 (checked).
[[nodiscard]] StatusOr<std::vector<int32_t>> BlockTransposeIndex(
    std::span<const int64_t> block_rows, int64_t a, int64_t b);

namespace internal {
// CUDA backend, called after validation with N > 0 and C > 0.
[[nodiscard]] Status GatherRowsCuda(ExecContext& ctx, const TensorView& src,
                                    const TensorView& index, const TensorView& dst);
}  // namespace internal

}  // namespace smoe
