#include "runtime/nn/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/core/cpu_vector.h"
#include "runtime/core/scalar.h"
#include "runtime/core/thread_pool.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

// Validates everything but dlogits and loss.
Status CheckInputs(const ExecContext& ctx, const TensorView& logits, const TensorView& targets) {
  if (!IsFloating(logits.dtype())) {
    return BadArgument("logits.dtype", DTypeName(logits.dtype()), "f32 or bf16");
  }
  MOE_RETURN_IF_ERROR(
      CheckContiguousTensor("logits", logits, logits.dtype(), ctx.device(), {-1, -1}));
  if (logits.dim(1) < 1) {
    return BadArgument("logits.shape[1]", absl::StrCat(logits.dim(1)), ">= 1 (the vocabulary)");
  }
  MOE_RETURN_IF_ERROR(
      CheckContiguousTensor("targets", targets, DType::kI32, ctx.device(), {logits.dim(0)}));
  if (ctx.device().is_cuda()) return absl::OkStatus();  // a documented precondition there
  const int32_t* p = targets.data<int32_t>();
  const int64_t vocab = logits.dim(1);
  for (int64_t t = 0; t < targets.numel(); ++t) {
    if (p[t] != -1 && (p[t] < 0 || p[t] >= vocab)) {
      return BadArgument(absl::StrCat("targets[", t, "]"), absl::StrCat(p[t]),
                         absl::StrCat("-1 (ignore) or a class in [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

Status CheckScale(float scale) {
  if (!std::isfinite(scale)) return BadArgument("scale", absl::StrCat(scale), "finite");
  return absl::OkStatus();
}

// One f32 row of the fast path: e = exp(row - max) with ExpF (kept in drow when given), its sum
// in double lanes; returns lse - row[target], and writes drow = g (e / sum - onehot).
MOE_CPU_CLONES double RowF32(const float* row, int32_t target, int64_t vocab, double g,
                             float* drow) {
  const float target_logit = row[target];  // before drow (which may alias row) is written
  float max = row[0];
  for (int64_t v = 1; v < vocab; ++v) max = row[v] > max ? row[v] : max;
  double lanes[8] = {};
  for (int64_t v = 0; v < vocab; ++v) {
    const float e = ExpF(row[v] - max);
    if (drow != nullptr) drow[v] = e;
    lanes[v % 8] += e;
  }
  const double sum = SumLanes(lanes);
  if (drow != nullptr) {
    const float gs = static_cast<float>(g / sum);
    for (int64_t v = 0; v < vocab; ++v) drow[v] *= gs;
    drow[target] -= static_cast<float>(g);
  }
  return double{max} + std::log(sum) - double{target_logit};
}

// CrossEntropyCpu for f32, fast: rows in parallel (fixed chunks of kRows, their losses added in
// chunk order, so the thread count never changes the result), exp in f32 (ExpF).
double CrossEntropyF32(const float* logits, const int32_t* targets, int64_t tokens, int64_t vocab,
                       double scale, float* dlogits) {
  constexpr int64_t kRows = 64;
  int64_t valid = 0;
  for (int64_t t = 0; t < tokens; ++t) valid += targets[t] != -1;
  const double inv_n = valid > 0 ? 1.0 / static_cast<double>(valid) : 0.0;
  const double g = scale * inv_n;
  const int64_t chunks = (tokens + kRows - 1) / kRows;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
  CpuPool().ParallelFor(chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      for (int64_t t = c * kRows; t < std::min(tokens, (c + 1) * kRows); ++t) {
        float* drow = dlogits != nullptr ? dlogits + t * vocab : nullptr;
        if (targets[t] == -1) {
          if (drow != nullptr) std::fill(drow, drow + vocab, 0.0f);
          continue;
        }
        partial[c] += RowF32(logits + t * vocab, targets[t], vocab, g, drow);
      }
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total * inv_n;
}

double RunCpu(const TensorView& logits, const TensorView& targets, float scale,
              const TensorView* dlogits) {
  const int64_t tokens = logits.dim(0), vocab = logits.dim(1);
  if (logits.dtype() == DType::kF32) {
    return CrossEntropyF32(logits.data<float>(), targets.data<int32_t>(), tokens, vocab, scale,
                           dlogits ? dlogits->data<float>() : nullptr);
  }
  return internal::CrossEntropyCpu(logits.data<BF16>(), targets.data<int32_t>(), tokens, vocab,
                                   scale, dlogits ? dlogits->data<BF16>() : nullptr);
}

// Shared by the four entry points; dlogits null for forward only. On CPU returns the loss in
// double and writes `loss` only if it is given; on CUDA writes `loss` (required) and returns 0.
StatusOr<double> Run(ExecContext& ctx, const TensorView& logits, const TensorView& targets,
                     float scale, const TensorView* dlogits, const TensorView* loss) {
  MOE_RETURN_IF_ERROR(CheckInputs(ctx, logits, targets));
  MOE_RETURN_IF_ERROR(CheckScale(scale));
  if (dlogits != nullptr) {
    MOE_RETURN_IF_ERROR(CheckContiguousTensor("dlogits", *dlogits, logits.dtype(), ctx.device(),
                                              {logits.dim(0), logits.dim(1)}));
  }
  if (loss != nullptr)
    MOE_RETURN_IF_ERROR(CheckContiguousTensor("loss", *loss, DType::kF32, ctx.device(), {1}));
  if (ctx.device().is_cuda()) {
    MOE_CHECK(loss != nullptr);
    if (logits.dim(0) == 0) {
      MOE_RETURN_IF_ERROR(Fill(ctx, *loss, 0.0));
      return 0.0;
    }
    MOE_RETURN_IF_ERROR(internal::CrossEntropyCuda(
        ctx, logits.dtype(), logits.data(), targets.data<int32_t>(), logits.dim(0), logits.dim(1),
        scale, dlogits ? dlogits->data() : nullptr, loss->data<float>()));
    return 0.0;
  }
  const double value = RunCpu(logits, targets, scale, dlogits);
  if (loss != nullptr) loss->data<float>()[0] = static_cast<float>(value);
  return value;
}

// The synchronous entry points: on CUDA the loss goes through a device scalar and one named sync.
StatusOr<double> RunSync(ExecContext& ctx, const TensorView& logits, const TensorView& targets,
                         float scale, const TensorView* dlogits) {
  if (!ctx.device().is_cuda()) return Run(ctx, logits, targets, scale, dlogits, nullptr);
  MOE_ASSIGN_OR_RETURN(Tensor loss, Tensor::Empty({1}, DType::kF32, ctx.device()));
  MOE_RETURN_IF_ERROR(Run(ctx, logits, targets, scale, dlogits, &loss.view()).status());
  float host = 0.0f;
  TensorView host_view(&host, DType::kF32, {1}, Device::Cpu());
  MOE_RETURN_IF_ERROR(Copy(ctx, loss, host_view));  // synchronizes ctx's stream
  return double{host};
}

}  // namespace

namespace internal {

template <typename L>
double CrossEntropyCpu(const L* logits, const int32_t* targets, int64_t tokens, int64_t vocab,
                       double scale, L* dlogits) {
  int64_t valid = 0;
  for (int64_t t = 0; t < tokens; ++t) valid += targets[t] != -1;
  const double inv_n = valid > 0 ? 1.0 / static_cast<double>(valid) : 0.0;
  double total = 0.0;
  for (int64_t t = 0; t < tokens; ++t) {
    const L* row = logits + t * vocab;
    L* drow = dlogits ? dlogits + t * vocab : nullptr;
    if (targets[t] == -1) {
      if (drow) std::fill(drow, drow + vocab, L{});
      continue;
    }
    double max = -std::numeric_limits<double>::infinity();
    for (int64_t v = 0; v < vocab; ++v) max = std::max(max, Widen(row[v]));
    double sum = 0.0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(Widen(row[v]) - max);
    const double lse = max + std::log(sum);
    total += lse - Widen(row[targets[t]]);
    if (!drow) continue;
    const double g = scale * inv_n;
    for (int64_t v = 0; v < vocab; ++v) {
      const double p = std::exp(Widen(row[v]) - lse);
      Store(&drow[v], g * (p - (v == targets[t] ? 1.0 : 0.0)));
    }
  }
  return total * inv_n;
}

template double CrossEntropyCpu<float>(const float*, const int32_t*, int64_t, int64_t, double,
                                       float*);
template double CrossEntropyCpu<BF16>(const BF16*, const int32_t*, int64_t, int64_t, double, BF16*);
template double CrossEntropyCpu<double>(const double*, const int32_t*, int64_t, int64_t, double,
                                        double*);

}  // namespace internal

StatusOr<double> CrossEntropyForwardBackward(ExecContext& ctx, const TensorView& logits,
                                             const TensorView& targets, float scale,
                                             const TensorView& dlogits) {
  return RunSync(ctx, logits, targets, scale, &dlogits);
}

StatusOr<double> CrossEntropyLoss(ExecContext& ctx, const TensorView& logits,
                                  const TensorView& targets) {
  return RunSync(ctx, logits, targets, 1.0f, nullptr);
}

Status CrossEntropyForwardBackwardAsync(ExecContext& ctx, const TensorView& logits,
                                        const TensorView& targets, float scale,
                                        const TensorView& dlogits, const TensorView& loss) {
  return Run(ctx, logits, targets, scale, &dlogits, &loss).status();
}

Status CrossEntropyLossAsync(ExecContext& ctx, const TensorView& logits, const TensorView& targets,
                             const TensorView& loss) {
  return Run(ctx, logits, targets, 1.0f, nullptr, &loss).status();
}

#if !MOE_WITH_CUDA
namespace internal {
Status CrossEntropyCuda(ExecContext&, DType, const void*, const int32_t*, int64_t, int64_t, float,
                        void*, float*) {
  return absl::FailedPreconditionError("CrossEntropy on CUDA, but this build has no CUDA backend");
}
}  // namespace internal
#endif

}  // namespace smoe
