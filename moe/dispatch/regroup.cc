#include "moe/dispatch/regroup.h"

#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace smoe {

Status GatherRows(ExecContext& ctx, const TensorView& src, const TensorView& index,
                  const TensorView& dst) {
  MOE_RETURN_IF_ERROR(CheckFloatingDType("src", src));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("src", src, src.dtype(), ctx.device(), {-1, -1}));
  const int64_t s = src.dim(0), c = src.dim(1);
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("index", index, DType::kI32, ctx.device(), {-1}));
  const int64_t n = index.dim(0);
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("dst", dst, src.dtype(), ctx.device(), {n, c}));
  if (n == 0 || c == 0) return absl::OkStatus();
  const char* src_begin = static_cast<const char*>(src.data());
  const char* dst_begin = static_cast<const char*>(dst.data());
  if (src_begin < dst_begin + dst.nbytes() && dst_begin < src_begin + src.nbytes()) {
    return BadArgument("dst", "a buffer overlapping src", "a buffer disjoint from src");
  }
  if (ctx.device().is_cuda()) return internal::GatherRowsCuda(ctx, src, index, dst);

  const int32_t* idx = index.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (idx[i] < 0 || idx[i] >= s) {
      return BadArgument(absl::StrCat("index[", i, "]"), absl::StrCat(idx[i]),
                         absl::StrCat("a row of src in [0, ", s, ")"));
    }
  }
  const size_t row_bytes = static_cast<size_t>(c) * DTypeSize(src.dtype());
  char* out = static_cast<char*>(dst.data());
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(out + i * row_bytes, src_begin + idx[i] * row_bytes, row_bytes);
  }
  return absl::OkStatus();
}

StatusOr<std::vector<int32_t>> BlockTransposeIndex(std::span<const int64_t> block_rows, int64_t a,
                                                   int64_t b) {
  if (a < 0 || b < 0 || static_cast<int64_t>(block_rows.size()) != a * b) {
    return BadArgument("block_rows.size", absl::StrCat(block_rows.size()),
                       absl::StrCat("A * B = ", a, " * ", b));
  }
  // Where each block starts in the a-major source order.
  std::vector<int64_t> begin(block_rows.size());
  int64_t total = 0;
  for (size_t i = 0; i < block_rows.size(); ++i) {
    if (block_rows[i] < 0) {
      return BadArgument(absl::StrCat("block_rows[", i, "]"), absl::StrCat(block_rows[i]), ">= 0");
    }
    begin[i] = total;
    total += block_rows[i];
  }
  if (total > std::numeric_limits<int32_t>::max()) {
    return BadArgument("block_rows (total)", absl::StrCat(total), "rows addressable by i32");
  }
  std::vector<int32_t> index;
  index.reserve(static_cast<size_t>(total));
  for (int64_t j = 0; j < b; ++j) {
    for (int64_t i = 0; i < a; ++i) {
      const int64_t block = i * b + j;
      for (int64_t r = 0; r < block_rows[block]; ++r) {
        index.push_back(static_cast<int32_t>(begin[block] + r));
      }
    }
  }
  return index;
}

#if !MOE_WITH_CUDA
namespace internal {
Status GatherRowsCuda(ExecContext&, const TensorView&, const TensorView&, const TensorView&) {
  return absl::FailedPreconditionError("GatherRows on CUDA, but this build has no CUDA backend");
}
}  // namespace internal
#endif

}  // namespace smoe
