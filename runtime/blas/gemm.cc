#include "runtime/blas/gemm.h"

#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"

namespace smoe {
namespace {

using internal::GemmProblem;

Status CheckOperand(absl::string_view name, const ExecContext& ctx, const TensorView& t, int rank) {
  if (t.device() != ctx.device()) {
    return BadArgument(absl::StrCat(name, ".device"), t.device().ToString(),
                       absl::StrCat(ctx.device().ToString(), " (the context's device)"));
  }
  if (t.rank() != rank) {
    return BadArgument(absl::StrCat(name, ".rank"),
                       absl::StrCat(t.rank(), " ", t.shape().ToString()), absl::StrCat(rank));
  }
  if (!IsFloating(t.dtype())) {
    return BadArgument(absl::StrCat(name, ".dtype"), DTypeName(t.dtype()), "f32 or bf16");
  }
  return CheckContiguous(name, t);
}

Status CheckDims(absl::string_view what, int64_t seen, int64_t expected) {
  if (seen == expected) return absl::OkStatus();
  return BadArgument(what, absl::StrCat(seen), absl::StrCat(expected));
}

Status Run(ExecContext& ctx, const GemmProblem& p) {
  if (p.m == 0 || p.n == 0 || p.batch == 0) return absl::OkStatus();
  if (ctx.device().is_cuda()) return internal::GemmCuda(ctx, p);
  return internal::GemmCpu(p);
}

// The groups of a grouped GEMM: one grouped launch on CUDA, groups in parallel on the CPU.
Status RunGroups(ExecContext& ctx, std::span<const GemmProblem> groups) {
  if (ctx.device().is_cuda()) return internal::GroupedGemmCuda(ctx, groups);
  return internal::GroupedGemmCpu(groups);
}

// Fills the matrix part of a problem from 2-D (or batched 3-D: the last two axes) operands.
StatusOr<GemmProblem> MakeProblem(ExecContext& ctx, const TensorView& a, const TensorView& b,
                                  const TensorView& c, const GemmOptions& o, int rank) {
  MOE_RETURN_IF_ERROR(CheckOperand("a", ctx, a, rank));
  MOE_RETURN_IF_ERROR(CheckOperand("b", ctx, b, rank));
  MOE_RETURN_IF_ERROR(CheckOperand("c", ctx, c, rank));
  if (a.dtype() != b.dtype()) {
    return BadArgument("b.dtype", DTypeName(b.dtype()),
                       absl::StrCat(DTypeName(a.dtype()), " like a"));
  }
  const int r = rank - 2;
  GemmProblem p;
  p.a = a.data();
  p.b = b.data();
  p.c = c.data();
  p.ab_dtype = a.dtype();
  p.c_dtype = c.dtype();
  p.trans_a = o.trans_a;
  p.trans_b = o.trans_b;
  p.m = o.trans_a ? a.dim(r + 1) : a.dim(r);
  p.k = o.trans_a ? a.dim(r) : a.dim(r + 1);
  p.n = o.trans_b ? b.dim(r) : b.dim(r + 1);
  const int64_t kb = o.trans_b ? b.dim(r + 1) : b.dim(r);
  MOE_RETURN_IF_ERROR(CheckDims(absl::StrCat("b.shape ", b.shape().ToString(), ": k"), kb, p.k));
  MOE_RETURN_IF_ERROR(
      CheckDims(absl::StrCat("c.shape ", c.shape().ToString(), ": m"), c.dim(r), p.m));
  MOE_RETURN_IF_ERROR(
      CheckDims(absl::StrCat("c.shape ", c.shape().ToString(), ": n"), c.dim(r + 1), p.n));
  p.lda = a.dim(r + 1);
  p.ldb = b.dim(r + 1);
  p.ldc = c.dim(r + 1);
  p.alpha = o.alpha;
  p.beta = o.beta;
  return p;
}

Status CheckOffsets(std::span<const int64_t> offsets, int64_t groups, int64_t rows,
                    absl::string_view rows_name) {
  if (static_cast<int64_t>(offsets.size()) != groups + 1) {
    return BadArgument("offsets.size", absl::StrCat(offsets.size()),
                       absl::StrCat(groups + 1, " (groups + 1)"));
  }
  if (offsets[0] != 0) return BadArgument("offsets[0]", absl::StrCat(offsets[0]), "0");
  for (int64_t g = 0; g < groups; ++g) {
    if (offsets[g + 1] < offsets[g]) {
      return BadArgument(absl::StrCat("offsets[", g + 1, "]"), absl::StrCat(offsets[g + 1]),
                         absl::StrCat(">= offsets[", g, "] = ", offsets[g]));
    }
  }
  if (offsets[groups] != rows) {
    return BadArgument(absl::StrCat("offsets[", groups, "]"), absl::StrCat(offsets[groups]),
                       absl::StrCat(rows, " (", rows_name, ")"));
  }
  return absl::OkStatus();
}

const void* AdvanceConst(const void* base, int64_t elements, DType dtype) {
  return static_cast<const char*>(base) + elements * static_cast<int64_t>(DTypeSize(dtype));
}
void* Advance(void* base, int64_t elements, DType dtype) {
  return static_cast<char*>(base) + elements * static_cast<int64_t>(DTypeSize(dtype));
}

}  // namespace

Status Gemm(ExecContext& ctx, const TensorView& a, const TensorView& b, const TensorView& c,
            const GemmOptions& options) {
  MOE_ASSIGN_OR_RETURN(GemmProblem p, MakeProblem(ctx, a, b, c, options, 2));
  return Run(ctx, p);
}

Status BatchedGemm(ExecContext& ctx, const TensorView& a, const TensorView& b, const TensorView& c,
                   const GemmOptions& options) {
  MOE_ASSIGN_OR_RETURN(GemmProblem p, MakeProblem(ctx, a, b, c, options, 3));
  MOE_RETURN_IF_ERROR(CheckDims("b.shape[0] (batch)", b.dim(0), a.dim(0)));
  MOE_RETURN_IF_ERROR(CheckDims("c.shape[0] (batch)", c.dim(0), a.dim(0)));
  p.batch = a.dim(0);
  p.stride_a = a.dim(1) * a.dim(2);
  p.stride_b = b.dim(1) * b.dim(2);
  p.stride_c = c.dim(1) * c.dim(2);
  return Run(ctx, p);
}

Status GroupedGemm(ExecContext& ctx, const TensorView& a, const TensorView& b, const TensorView& c,
                   std::span<const int64_t> offsets, const GemmOptions& options) {
  if (options.trans_a) return BadArgument("options.trans_a", "true", "false for GroupedGemm");
  MOE_RETURN_IF_ERROR(CheckOperand("a", ctx, a, 2));
  MOE_RETURN_IF_ERROR(CheckOperand("b", ctx, b, 3));
  MOE_RETURN_IF_ERROR(CheckOffsets(offsets, b.dim(0), a.dim(0), "a.shape[0]"));
  // Validate the shapes once on the whole operands (B as one group), then run group by group.
  const TensorView b0(b.data(), b.dtype(), {b.dim(1), b.dim(2)}, b.device());
  MOE_ASSIGN_OR_RETURN(GemmProblem p, MakeProblem(ctx, a, b0, c, options, 2));
  return RunGroups(ctx, internal::GroupedGemmGroups(p, offsets, b.dim(1) * b.dim(2)));
}

Status GroupedGemmRaggedK(ExecContext& ctx, const TensorView& a, const TensorView& b,
                          const TensorView& c, std::span<const int64_t> offsets,
                          const GemmOptions& options) {
  if (options.trans_a || options.trans_b) {
    return BadArgument("options.trans_a/trans_b", "true", "false for GroupedGemmRaggedK");
  }
  MOE_RETURN_IF_ERROR(CheckOperand("a", ctx, a, 2));
  MOE_RETURN_IF_ERROR(CheckOperand("c", ctx, c, 3));
  MOE_RETURN_IF_ERROR(CheckOffsets(offsets, c.dim(0), a.dim(0), "a.shape[0]"));
  const TensorView c0(c.data(), c.dtype(), {c.dim(1), c.dim(2)}, c.device());
  GemmOptions transposed = options;
  transposed.trans_a = true;
  MOE_ASSIGN_OR_RETURN(GemmProblem p, MakeProblem(ctx, a, b, c0, transposed, 2));
  if (p.m == 0 || p.n == 0) return absl::OkStatus();
  return RunGroups(ctx, internal::RaggedKGroups(p, offsets, c.dim(1) * c.dim(2)));
}

namespace internal {

std::vector<GemmProblem> GroupedGemmGroups(const GemmProblem& whole,
                                           std::span<const int64_t> offsets, int64_t stride) {
  std::vector<GemmProblem> groups;
  groups.reserve(offsets.size());
  for (int64_t g = 0; g + 1 < static_cast<int64_t>(offsets.size()); ++g) {
    GemmProblem q = whole;
    q.m = offsets[g + 1] - offsets[g];
    if (q.m == 0 || q.n == 0) continue;  // an empty group writes nothing
    q.a = AdvanceConst(whole.a, offsets[g] * whole.lda, whole.ab_dtype);
    q.b = AdvanceConst(whole.b, g * stride, whole.ab_dtype);
    q.c = Advance(whole.c, offsets[g] * whole.ldc, whole.c_dtype);
    groups.push_back(q);
  }
  return groups;
}

std::vector<GemmProblem> RaggedKGroups(const GemmProblem& whole, std::span<const int64_t> offsets,
                                       int64_t stride) {
  std::vector<GemmProblem> groups;
  groups.reserve(offsets.size());
  for (int64_t g = 0; g + 1 < static_cast<int64_t>(offsets.size()); ++g) {
    GemmProblem q = whole;
    q.k = offsets[g + 1] - offsets[g];  // k == 0 still scales C by beta
    q.a = AdvanceConst(whole.a, offsets[g] * whole.lda, whole.ab_dtype);
    q.b = AdvanceConst(whole.b, offsets[g] * whole.ldb, whole.ab_dtype);
    q.c = Advance(whole.c, g * stride, whole.c_dtype);
    groups.push_back(q);
  }
  return groups;
}

bool MeetsGroupedAlignment(const GemmProblem& p) {
  if (p.ab_dtype != DType::kBF16) return true;
  auto aligned = [](int64_t bytes) { return bytes % kGroupedGemmAlignment == 0; };
  auto at = [&](const void* ptr) {
    return aligned(static_cast<int64_t>(reinterpret_cast<uintptr_t>(ptr)));
  };
  const int64_t ab = static_cast<int64_t>(DTypeSize(p.ab_dtype));
  const int64_t c = static_cast<int64_t>(DTypeSize(p.c_dtype));
  return at(p.a) && at(p.b) && at(p.c) && aligned(p.lda * ab) && aligned(p.ldb * ab) &&
         aligned(p.ldc * c);
}

GroupRoute RouteGroup(const GemmProblem& p, const GemmProblem& first, bool grouped_rejected) {
  if (p.m == 0 || p.n == 0) return GroupRoute::kSkip;
  const bool alone = p.k == 0 || (p.ab_dtype == DType::kF32 && p.c_dtype == DType::kBF16) ||
                     p.batch != 1 || p.ab_dtype != first.ab_dtype || p.c_dtype != first.c_dtype ||
                     grouped_rejected || !MeetsGroupedAlignment(p);
  return alone ? GroupRoute::kAlone : GroupRoute::kGrouped;
}

}  // namespace internal
}  // namespace smoe

#if !MOE_WITH_CUDA
namespace smoe::internal {
Status GemmCuda(ExecContext&, const GemmProblem&) {
  return absl::FailedPreconditionError(
      "Gemm on a CUDA context, but this build has no CUDA backend");
}
Status GroupedGemmCuda(ExecContext&, std::span<const GemmProblem>) {
  return absl::FailedPreconditionError(
      "Gemm on a CUDA context, but this build has no CUDA backend");
}
}  // namespace smoe::internal
#endif
