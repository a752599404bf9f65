#include "moe/router/aux_loss.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "moe/router/expert_load.h"
#include "moe/router/router_cpu.h"
#include "moe/router/router_internal.h"
#include "runtime/core/cpu_vector.h"
#include "runtime/core/thread_pool.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

// Row r's logsumexp of logits and arg max of probs, without a second pass of exp: probs is the
// softmax of logits, p_c = exp(l_c - lse), so lse = l_a - ln p_a, taken at a = arg max p (ties:
// lower index, as AuxRowStats), the best-conditioned entry (p_a >= 1/E). A non-finite row has NaN
// probs: a = 0 and lse = NaN, so the values come out NaN as the reference's do.
MOE_CPU_CLONES void AuxRowStatsF32(const float* logits, const float* probs, int64_t first,
                                   int64_t last, int64_t e, double* lse, double* max_p,
                                   int64_t* arg_max) {
  for (int64_t r = first; r < last; ++r) {
    const float* pr = probs + r * e;
    int64_t best = 0;
    float best_p = pr[0];
    for (int64_t c = 1; c < e; ++c) {
      if (pr[c] > best_p) {
        best_p = pr[c];
        best = c;
      }
    }
    arg_max[r] = best;
    max_p[r] = best_p;
    lse[r] = double{logits[r * e + best]} - std::log(double{best_p});
  }
}

// sum_t p_tc of rows [first, last) into p_sum [E] (overwritten), in double lanes.
MOE_CPU_CLONES void ColumnSums(const float* probs, int64_t first, int64_t last, int64_t e,
                               double* p_sum) {
  for (int64_t c = 0; c < e; ++c) p_sum[c] = 0.0;
  for (int64_t r = first; r < last; ++r) {
    const float* pr = probs + r * e;
    for (int64_t c = 0; c < e; ++c) p_sum[c] += pr[c];
  }
}

// router_reference::AuxLoss's gradient row in f32 (its coefficients rounded to f32 once, in g):
// d_c = p_c (g_c + [c = a] top1 - dot + z_factor lse), dot = sum_c (g_c + [c = a] top1) p_c.
MOE_CPU_CLONES void AuxGradRowF32(const float* g, float top1_argmax, double z_lse, const float* pr,
                                  int64_t e, int64_t arg_max, float* d) {
  double lanes[8] = {};
  int64_t c = 0;
  for (; c + 8 <= e; c += 8) {
    for (int l = 0; l < 8; ++l) lanes[l] += g[c + l] * pr[c + l];
  }
  for (; c < e; ++c) lanes[c % 8] += g[c] * pr[c];
  const double dot = SumLanes(lanes) + double{top1_argmax} * pr[arg_max];
  const float shift = static_cast<float>(z_lse - dot);
  for (c = 0; c < e; ++c) d[c] = pr[c] * (g[c] + shift);
  d[arg_max] =
      static_cast<float>(double{pr[arg_max]} * (double{g[arg_max]} + top1_argmax + z_lse - dot));
}

// router_reference::AuxLoss on f32 arrays, fast: row loops in parallel, the logsumexp from the
// softmax (AuxRowStatsF32), column sums per block of rows added in block order, the gradient rows
// in f32. The same bits on every run and thread count; parity with the fp64 reference is tested.
AuxLossValues AuxLossRows(const AuxLossConfig& config, const float* logits, const float* probs,
                          int64_t t, int64_t e, const std::vector<double>& f, float* d_logits) {
  router_reference::AuxSums sums;
  sums.t = t;
  sums.e = e;
  sums.f = f;
  sums.p_sum.assign(e, 0.0);
  std::vector<double> lse(t), max_p(t);
  std::vector<int64_t> arg_max(t);
  ParallelFor(t, 2 * e, [&](int64_t first, int64_t last) {
    AuxRowStatsF32(logits, probs, first, last, e, lse.data(), max_p.data(), arg_max.data());
  });
  constexpr int64_t kBlockRows = 256;  // fixed: the sum's order does not depend on threads
  const int64_t blocks = (t + kBlockRows - 1) / kBlockRows;
  std::vector<double> partial(blocks * e);
  ParallelFor(
      blocks, kBlockRows * e,
      [&](int64_t first, int64_t last) {
        for (int64_t b = first; b < last; ++b) {
          ColumnSums(probs, b * kBlockRows, std::min(t, (b + 1) * kBlockRows), e, &partial[b * e]);
        }
      },
      /*min_work=*/1);
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t c = 0; c < e; ++c) sums.p_sum[c] += partial[b * e + c];
  }
  for (int64_t r = 0; r < t; ++r) {
    sums.lse_sq_sum += lse[r] * lse[r];
    sums.max_p_sum += max_p[r];
  }
  const router_reference::AuxGradient grad = router_reference::AuxCoefficients(config, sums);
  const std::vector<float> g(grad.g.begin(), grad.g.end());
  const float top1 = static_cast<float>(grad.top1_argmax);
  ParallelFor(t, 2 * e, [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      AuxGradRowF32(g.data(), top1, grad.z_factor * lse[r], probs + r * e, e, arg_max[r],
                    d_logits + r * e);
    }
  });
  return grad.values;
}

using internal::CheckRouterArg;

Status CheckCoef(absl::string_view name, float value) {
  if (std::isfinite(value)) return absl::OkStatus();
  return BadArgument(name, absl::StrCat(value), "a finite coefficient");
}

// In place: counts summed over the group, on the host.
Status AllReduceCounts(ExecContext& ctx, Communicator* comm, std::vector<int64_t>* counts) {
  if (comm == nullptr) return absl::OkStatus();
  TensorView host(counts->data(), DType::kI64, {static_cast<int64_t>(counts->size())},
                  Device::Cpu());
  return comm->AllReduceSum(ctx, host);
}

}  // namespace

Status AuxLossForwardBackwardInto(ExecContext& ctx, const AuxLossConfig& config,
                                  const TensorView& logits, const TensorView& probs,
                                  const TensorView& topk_idx, Communicator* comm,
                                  const TensorView& d_logits, const TensorView& values) {
  MOE_RETURN_IF_ERROR(CheckCoef("config.lbl_coef", config.lbl_coef));
  MOE_RETURN_IF_ERROR(CheckCoef("config.z_coef", config.z_coef));
  MOE_RETURN_IF_ERROR(CheckCoef("config.top1_lbl_coef", config.top1_lbl_coef));
  MOE_RETURN_IF_ERROR(CheckRouterArg("logits", ctx, logits, DType::kF32, {-1, -1}));
  const int64_t t = logits.dim(0), e = logits.dim(1);
  if (e < 1) return BadArgument("logits.shape", logits.shape().ToString(), "[T, E] with E >= 1");
  MOE_RETURN_IF_ERROR(CheckRouterArg("probs", ctx, probs, DType::kF32, {t, e}));
  MOE_RETURN_IF_ERROR(CheckRouterArg("topk_idx", ctx, topk_idx, DType::kI32, {t, -1}));
  const int64_t k = topk_idx.dim(1);
  if (k < 1 || k > e) {
    return BadArgument("topk_idx.shape", topk_idx.shape().ToString(),
                       absl::StrCat("[T, K] with 1 <= K <= E = ", e));
  }
  MOE_RETURN_IF_ERROR(CheckRouterArg("d_logits", ctx, d_logits, DType::kF32, {t, e}));
  MOE_RETURN_IF_ERROR(CheckRouterArg("values", ctx, values, DType::kF32, {kAuxLossValues}));

  // Counts are all-reduced by every rank whenever global_lbl, also with T == 0, so that the
  // group's collectives stay matched. A group of one rank has nothing to add.
  Communicator* group = config.global_lbl && comm != nullptr && comm->size() > 1 ? comm : nullptr;
  if (ctx.device().is_cpu() || t == 0) {
    std::vector<int64_t> counts(e, 0);
    if (t > 0) {
      TensorView counts_view(counts.data(), DType::kI64, {e}, Device::Cpu());
      MOE_RETURN_IF_ERROR(CountExperts(ctx, topk_idx, counts_view));
    }
    MOE_RETURN_IF_ERROR(AllReduceCounts(ctx, group, &counts));
    if (t == 0) return Fill(ctx, values, 0.0);
    const AuxLossValues v = AuxLossRows(config, logits.data<float>(), probs.data<float>(), t, e,
                                        router_reference::Shares(counts), d_logits.data<float>());
    float* out = values.data<float>();
    out[0] = static_cast<float>(v.lbl);
    out[1] = static_cast<float>(v.z_loss);
    out[2] = static_cast<float>(v.top1_lbl);
    out[3] = static_cast<float>(v.total);
    return absl::OkStatus();
  }

  const Device device = ctx.device();
  MOE_ASSIGN_OR_RETURN(Tensor lse, Tensor::Empty({t}, DType::kF32, device, ctx.allocator()));
  MOE_ASSIGN_OR_RETURN(Tensor max_p, Tensor::Empty({t}, DType::kF32, device, ctx.allocator()));
  MOE_ASSIGN_OR_RETURN(Tensor arg_max, Tensor::Empty({t}, DType::kI32, device, ctx.allocator()));
  MOE_ASSIGN_OR_RETURN(Tensor counts, Tensor::Empty({e}, DType::kI64, device, ctx.allocator()));
  // p_sum [E] and the two row sums as doubles (an i64 tensor: the same width).
  MOE_ASSIGN_OR_RETURN(Tensor sums, Tensor::Empty({e + 2}, DType::kI64, device, ctx.allocator()));
  const internal::AuxRowBuffers rows{lse.data<float>(), max_p.data<float>(),
                                     arg_max.data<int32_t>()};
  MOE_RETURN_IF_ERROR(internal::AuxLossSumsCuda(
      ctx, logits.data<float>(), probs.data<float>(), topk_idx.data<int32_t>(), t, e, k, rows,
      counts.data<int64_t>(), static_cast<double*>(sums.data())));
  if (group != nullptr) {
    // The group's communicator takes host buffers here: through the host (the one sync).
    MOE_ASSIGN_OR_RETURN(Tensor host, CopyTo(ctx, counts, Device::Cpu()));
    MOE_RETURN_IF_ERROR(group->AllReduceSum(ctx, host));
    MOE_RETURN_IF_ERROR(Copy(ctx, host, counts));
  }
  return internal::AuxLossGradientCuda(
      ctx, config, probs.data<float>(), rows, t, e, counts.data<int64_t>(),
      static_cast<const double*>(sums.data()), d_logits.data<float>(), values.data<float>());
}

StatusOr<AuxLossValues> ReadAuxLossValues(ExecContext& ctx, const TensorView& values) {
  MOE_RETURN_IF_ERROR(
      CheckTensor("values", values, DType::kF32, values.device(), {kAuxLossValues}));
  Tensor host_copy;
  const float* v = nullptr;
  if (values.device().is_cpu()) {
    v = values.data<float>();
  } else {
    MOE_ASSIGN_OR_RETURN(host_copy, CopyTo(ctx, values, Device::Cpu()));
    v = host_copy.data<float>();
  }
  return AuxLossValues{v[0], v[1], v[2], v[3]};
}

StatusOr<AuxLossValues> AuxLossForwardBackward(ExecContext& ctx, const AuxLossConfig& config,
                                               const TensorView& logits, const TensorView& probs,
                                               const TensorView& topk_idx, Communicator* comm,
                                               const TensorView& d_logits) {
  MOE_ASSIGN_OR_RETURN(Tensor values,
                       Tensor::Empty({kAuxLossValues}, DType::kF32, ctx.device(), ctx.allocator()));
  MOE_RETURN_IF_ERROR(
      AuxLossForwardBackwardInto(ctx, config, logits, probs, topk_idx, comm, d_logits, values));
  return ReadAuxLossValues(ctx, values);
}

#if !MOE_WITH_CUDA
namespace internal {
Status AuxLossSumsCuda(ExecContext&, const float*, const float*, const int32_t*, int64_t, int64_t,
                       int64_t, const AuxRowBuffers&, int64_t*, double*) {
  return absl::FailedPreconditionError(
      "AuxLossForwardBackward on CUDA, but this build has no CUDA backend");
}
Status AuxLossGradientCuda(ExecContext&, const AuxLossConfig&, const float*, const AuxRowBuffers&,
                           int64_t, int64_t, const int64_t*, const double*, float*, float*) {
  return absl::FailedPreconditionError(
      "AuxLossForwardBackward on CUDA, but this build has no CUDA backend");
}
}  // namespace internal
#endif

}  // namespace smoe
