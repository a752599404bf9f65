#include "moe/experts/experts.h"

#include "absl/strings/str_cat.h"
#include "runtime/blas/gemm.h"
#include "runtime/core/bf16.h"
#include "runtime/nn/swiglu.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

struct Dims {
  int64_t experts = 0;  // E_l
  int64_t m = 0;
  int64_t h = 0;
  int64_t rows = 0;  // R
  DType dtype = DType::kF32;
};

Status CheckOperand(absl::string_view name, const ExecContext& ctx, const TensorView& t,
                    DType dtype, const Shape& shape) {
  MOE_RETURN_IF_ERROR(CheckTensor(name, t, dtype, ctx.device(), shape));
  return CheckContiguous(name, t);
}

StatusOr<Dims> CheckWeights(const ExecContext& ctx, const ExpertWeights& w) {
  if (!IsFloating(w.w1.dtype())) {
    return BadArgument("w.w1.dtype", DTypeName(w.w1.dtype()), "f32 or bf16");
  }
  if (w.w1.rank() != 3) {
    return BadArgument("w.w1.shape", w.w1.shape().ToString(), "[E_l, M, H]");
  }
  Dims d;
  d.dtype = w.w1.dtype();
  d.experts = w.w1.dim(0);
  d.m = w.w1.dim(1);
  d.h = w.w1.dim(2);
  MOE_RETURN_IF_ERROR(CheckOperand("w.w1", ctx, w.w1, d.dtype, {d.experts, d.m, d.h}));
  MOE_RETURN_IF_ERROR(CheckOperand("w.w3", ctx, w.w3, d.dtype, {d.experts, d.m, d.h}));
  MOE_RETURN_IF_ERROR(CheckOperand("w.w2", ctx, w.w2, d.dtype, {d.experts, d.h, d.m}));
  return d;
}

Status CheckOffsets(std::span<const int64_t> offsets, int64_t experts, int64_t rows) {
  if (static_cast<int64_t>(offsets.size()) != experts + 1) {
    return BadArgument("offsets.size", absl::StrCat(offsets.size()),
                       absl::StrCat(experts + 1, " (E_l + 1)"));
  }
  if (offsets[0] != 0) return BadArgument("offsets[0]", absl::StrCat(offsets[0]), "0");
  for (int64_t e = 0; e < experts; ++e) {
    if (offsets[e + 1] < offsets[e]) {
      return BadArgument(absl::StrCat("offsets[", e + 1, "]"), absl::StrCat(offsets[e + 1]),
                         absl::StrCat(">= offsets[", e, "] = ", offsets[e]));
    }
  }
  if (offsets[experts] != rows) {
    return BadArgument(absl::StrCat("offsets[", experts, "]"), absl::StrCat(offsets[experts]),
                       absl::StrCat(rows, " (R = xs.shape[0])"));
  }
  return absl::OkStatus();
}

// Everything both passes share: weights, xs, offsets and the saved activations.
StatusOr<Dims> CheckCommon(const ExecContext& ctx, const ExpertWeights& w, const TensorView& xs,
                           std::span<const int64_t> offsets, const ExpertActivations& saved) {
  MOE_ASSIGN_OR_RETURN(Dims d, CheckWeights(ctx, w));
  MOE_RETURN_IF_ERROR(CheckOperand("xs", ctx, xs, d.dtype, {-1, d.m}));
  d.rows = xs.dim(0);
  MOE_RETURN_IF_ERROR(CheckOffsets(offsets, d.experts, d.rows));
  MOE_RETURN_IF_ERROR(CheckOperand("saved.h1", ctx, saved.h1, d.dtype, {d.rows, d.h}));
  MOE_RETURN_IF_ERROR(CheckOperand("saved.h3", ctx, saved.h3, d.dtype, {d.rows, d.h}));
  MOE_RETURN_IF_ERROR(CheckOperand("saved.act", ctx, saved.act, d.dtype, {d.rows, d.h}));
  return d;
}

// Matrix `index` of a contiguous [N, a, b] tensor as a contiguous [a, b] view.
TensorView Matrix(const TensorView& t, int64_t index) {
  const int64_t size = t.dim(1) * t.dim(2);
  char* base =
      static_cast<char*>(t.data()) + index * size * static_cast<int64_t>(DTypeSize(t.dtype()));
  return TensorView(base, t.dtype(), {t.dim(1), t.dim(2)}, t.device());
}

}  // namespace

Status ExpertsForward(ExecContext& ctx, const ExpertWeights& w, const TensorView& xs,
                      std::span<const int64_t> offsets, const ExpertActivations& saved,
                      const TensorView& ys) {
  MOE_ASSIGN_OR_RETURN(const Dims d, CheckCommon(ctx, w, xs, offsets, saved));
  MOE_RETURN_IF_ERROR(CheckOperand("ys", ctx, ys, d.dtype, {d.rows, d.m}));
  MOE_RETURN_IF_ERROR(GroupedGemm(ctx, xs, w.w1, saved.h1, offsets));
  MOE_RETURN_IF_ERROR(GroupedGemm(ctx, xs, w.w3, saved.h3, offsets));
  MOE_RETURN_IF_ERROR(SwiGLU(ctx, saved.h1, saved.h3, saved.act));
  return GroupedGemm(ctx, saved.act, w.w2, ys, offsets);
}

Status ExpertsBackward(ExecContext& ctx, const ExpertWeights& w, const TensorView& xs,
                       std::span<const int64_t> offsets, const ExpertActivations& saved,
                       const TensorView& dys, const TensorView& dxs, const ExpertGrads& grads,
                       bool accumulate) {
  MOE_ASSIGN_OR_RETURN(const Dims d, CheckCommon(ctx, w, xs, offsets, saved));
  MOE_RETURN_IF_ERROR(CheckOperand("dys", ctx, dys, d.dtype, {d.rows, d.m}));
  MOE_RETURN_IF_ERROR(CheckOperand("dxs", ctx, dxs, d.dtype, {d.rows, d.m}));
  MOE_RETURN_IF_ERROR(
      CheckOperand("grads.dw1", ctx, grads.dw1, DType::kF32, {d.experts, d.m, d.h}));
  MOE_RETURN_IF_ERROR(
      CheckOperand("grads.dw3", ctx, grads.dw3, DType::kF32, {d.experts, d.m, d.h}));
  MOE_RETURN_IF_ERROR(
      CheckOperand("grads.dw2", ctx, grads.dw2, DType::kF32, {d.experts, d.h, d.m}));

  // f32: the weight-gradient products go straight into the f32 gradients (beta = 1 accumulates).
  // bf16: into bf16 scratch, each rounded once, then one kernel adds all three to the f32
  // gradients: every product is a grouped GEMM with one dtype throughout, the pair cuBLAS's
  // grouped GEMM takes (it has no bf16 -> f32 pair, which ran one cublasGemmEx per expert).
  const bool f32 = d.dtype == DType::kF32;
  const GemmOptions weight_grad{.beta = f32 && accumulate ? 1.0f : 0.0f};
  Tensor g1, g3, g2;
  if (!f32) {
    MOE_ASSIGN_OR_RETURN(g1,
                         Tensor::Empty(grads.dw1.shape(), d.dtype, ctx.device(), ctx.allocator()));
    MOE_ASSIGN_OR_RETURN(g3,
                         Tensor::Empty(grads.dw3.shape(), d.dtype, ctx.device(), ctx.allocator()));
    MOE_ASSIGN_OR_RETURN(g2,
                         Tensor::Empty(grads.dw2.shape(), d.dtype, ctx.device(), ctx.allocator()));
  }
  const TensorView dw1 = f32 ? grads.dw1 : g1.view();
  const TensorView dw3 = f32 ? grads.dw3 : g3.view();
  const TensorView dw2 = f32 ? grads.dw2 : g2.view();
  // dys is fully consumed (dact, dW2) before dxs is written, so dxs may alias dys.
  MOE_RETURN_IF_ERROR(GroupedGemmRaggedK(ctx, saved.act, dys, dw2, offsets, weight_grad));
  MOE_ASSIGN_OR_RETURN(Tensor dh1,
                       Tensor::Empty({d.rows, d.h}, d.dtype, ctx.device(), ctx.allocator()));
  MOE_ASSIGN_OR_RETURN(Tensor dh3,
                       Tensor::Empty({d.rows, d.h}, d.dtype, ctx.device(), ctx.allocator()));
  MOE_RETURN_IF_ERROR(GroupedGemm(ctx, dys, w.w2, dh1, offsets, {.trans_b = true}));
  // dact is dead once read: dh1 overwrites it in place (SwiGLUBackward allows the alias).
  MOE_RETURN_IF_ERROR(SwiGLUBackward(ctx, saved.h1, saved.h3, dh1, dh1, dh3));
  MOE_RETURN_IF_ERROR(GroupedGemmRaggedK(ctx, xs, dh1, dw1, offsets, weight_grad));
  MOE_RETURN_IF_ERROR(GroupedGemmRaggedK(ctx, xs, dh3, dw3, offsets, weight_grad));
  if (!f32) {
    MOE_RETURN_IF_ERROR(internal::AddWeightGrads(ctx, {g1.view(), g3.view(), g2.view()},
                                                 {grads.dw1, grads.dw3, grads.dw2}, accumulate));
  }
  // xs is read for the last time above, so dxs may alias it. In bf16 the first product is
  // rounded into dxs and the second is added to it in fp32 and rounded again (beta = 1).
  MOE_RETURN_IF_ERROR(GroupedGemm(ctx, dh1, w.w1, dxs, offsets, {.trans_b = true}));
  return GroupedGemm(ctx, dh3, w.w3, dxs, offsets, {.trans_b = true, .beta = 1.0f});
}

namespace internal {

Status AddWeightGrads(ExecContext& ctx, const std::array<TensorView, 3>& parts,
                      const std::array<TensorView, 3>& grads, bool accumulate) {
  for (int i = 0; i < 3; ++i) {
    MOE_RETURN_IF_ERROR(CheckOperand(absl::StrCat("parts[", i, "]"), ctx, parts[i], DType::kBF16,
                                     parts[i].shape()));
    MOE_RETURN_IF_ERROR(
        CheckOperand(absl::StrCat("grads[", i, "]"), ctx, grads[i], DType::kF32, parts[i].shape()));
  }
  if (ctx.device().is_cuda()) {
    return AddWeightGradsCuda(
        ctx, {parts[0].data<BF16>(), parts[1].data<BF16>(), parts[2].data<BF16>()},
        {grads[0].data<float>(), grads[1].data<float>(), grads[2].data<float>()},
        {parts[0].numel(), parts[1].numel(), parts[2].numel()}, accumulate);
  }
  for (int i = 0; i < 3; ++i) {
    const BF16* part = parts[i].data<BF16>();
    float* grad = grads[i].data<float>();
    for (int64_t j = 0, n = parts[i].numel(); j < n; ++j) {
      grad[j] = accumulate ? grad[j] + BF16ToFloat(part[j]) : BF16ToFloat(part[j]);
    }
  }
  return absl::OkStatus();
}

#if !MOE_WITH_CUDA
Status AddWeightGradsCuda(ExecContext&, const std::array<const BF16*, 3>&,
                          const std::array<float*, 3>&, const std::array<int64_t, 3>&, bool) {
  return absl::FailedPreconditionError(
      "AddWeightGrads on CUDA, but this build has no CUDA backend");
}
#endif

}  // namespace internal

Status InitExpertWeights(ExecContext& ctx, const ExpertWeights& w, const ExpertInit& init) {
  MOE_ASSIGN_OR_RETURN(const Dims d, CheckWeights(ctx, w));
  if (init.first_expert < 0) {
    return BadArgument("init.first_expert", absl::StrCat(init.first_expert), ">= 0");
  }
  const uint64_t matrix = static_cast<uint64_t>(d.m) * static_cast<uint64_t>(d.h);
  const TensorView* mats[3] = {&w.w1, &w.w3, &w.w2};
  const float stds[3] = {init.std_in, init.std_in, init.std_out};
  for (int64_t e = 0; e < d.experts; ++e) {
    const uint64_t g = static_cast<uint64_t>(init.first_expert + e);
    for (uint64_t j = 0; j < 3; ++j) {
      MOE_RETURN_IF_ERROR(FillNormal(ctx, Matrix(*mats[j], e), init.seed,
                                     init.offset + (3 * g + j) * matrix, 0.0f, stds[j]));
    }
  }
  return absl::OkStatus();
}

uint64_t ExpertInitStreamLength(int64_t experts, int64_t m, int64_t h) {
  return 3 * static_cast<uint64_t>(experts) * static_cast<uint64_t>(m) * static_cast<uint64_t>(h);
}

}  // namespace smoe
