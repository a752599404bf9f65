// CUDA backend of regroup.h: rows are moved as raw 16-, 4- or 2-byte words (bit-exact, dtype
// agnostic); blocks stride over the rows, threads over the words of a row.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "moe/dispatch/regroup.h"
#include "runtime/device/cuda_error.h"

namespace smoe {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kMaxBlocks = 65535;

template <typename Word>
__global__ void GatherRowsKernel(const Word* src, const int32_t* index, Word* dst, int64_t rows,
                                 int64_t src_rows, int64_t words) {
  for (int64_t i = blockIdx.x; i < rows; i += gridDim.x) {
    const int64_t from = index[i];
    if (from < 0 || from >= src_rows) continue;
    const Word* in = src + from * words;
    Word* out = dst + i * words;
    for (int64_t w = threadIdx.x; w < words; w += blockDim.x) out[w] = in[w];
  }
}

template <typename Word>
Status Launch(ExecContext& ctx, const TensorView& src, const TensorView& index,
              const TensorView& dst, int64_t row_bytes) {
  const int64_t rows = dst.dim(0);
  const unsigned blocks = static_cast<unsigned>(std::min(rows, kMaxBlocks));
  GatherRowsKernel<Word><<<blocks, kThreads, 0, ctx.stream()>>>(
      static_cast<const Word*>(src.data()), index.data<int32_t>(), static_cast<Word*>(dst.data()),
      rows, src.dim(0), row_bytes / static_cast<int64_t>(sizeof(Word)));
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("GatherRowsKernel");
  return absl::OkStatus();
}

bool Aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

namespace internal {

Status GatherRowsCuda(ExecContext& ctx, const TensorView& src, const TensorView& index,
                      const TensorView& dst) {
  const int64_t row_bytes = src.dim(1) * static_cast<int64_t>(DTypeSize(src.dtype()));
  // The widest word that divides a row and the alignment of both buffers.
  if (row_bytes % 16 == 0 && Aligned(src.data(), 16) && Aligned(dst.data(), 16)) {
    return Launch<uint4>(ctx, src, index, dst, row_bytes);
  }
  if (row_bytes % 4 == 0 && Aligned(src.data(), 4) && Aligned(dst.data(), 4)) {
    return Launch<uint32_t>(ctx, src, index, dst, row_bytes);
  }
  return Launch<uint16_t>(ctx, src, index, dst, row_bytes);
}

}  // namespace internal
}  // namespace smoe
