#include "attention/rope.h"

#include <cmath>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/rope_cpu.h"
#include "attention/validate.h"
#include "runtime/core/thread_pool.h"

namespace smoe {
namespace {

// cos and sin of the angles position * theta^(-2j/D) for positions [0, positions) and j < D/2,
// computed as RopeCpu computes them (in double), so the table path gives its results bit for bit.
struct RopeTable {
  double theta = 0.0;
  int64_t head_dim = 0;
  int64_t positions = 0;
  std::vector<double> cos, sin;  // [positions, D/2]
};

// The table for (theta, D) covering positions [0, needed): cached per (theta, D) for the process,
// grown (doubling) when a longer sequence comes, never recomputed per call.
std::shared_ptr<const RopeTable> TableFor(double theta, int64_t head_dim, int64_t needed) {
  static std::mutex mutex;
  static std::vector<std::shared_ptr<const RopeTable>> tables;
  std::lock_guard<std::mutex> lock(mutex);
  for (auto& t : tables) {
    if (t->theta != theta || t->head_dim != head_dim) continue;
    if (t->positions >= needed) return t;
    needed = std::max(needed, 2 * t->positions);
    t = nullptr;  // replaced below
  }
  std::erase(tables, nullptr);
  auto table = std::make_shared<RopeTable>();
  table->theta = theta;
  table->head_dim = head_dim;
  table->positions = needed;
  const int64_t half = head_dim / 2;
  table->cos.resize(static_cast<size_t>(needed * half));
  table->sin.resize(table->cos.size());
  for (int64_t s = 0; s < needed; ++s) {
    for (int64_t j = 0; j < half; ++j) {
      const double angle =
          static_cast<double>(s) * std::pow(theta, -2.0 * j / static_cast<double>(head_dim));
      table->cos[s * half + j] = std::cos(angle);
      table->sin[s * half + j] = std::sin(angle);
    }
  }
  tables.push_back(table);
  return table;
}

// RopeCpu through the cached table, rows (b, s) in parallel.
template <typename T>
void RopeTableCpu(const T* x, T* y, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
                  double theta, int64_t position_offset, int direction) {
  const std::shared_ptr<const RopeTable> table = TableFor(theta, head_dim, position_offset + seq);
  const int64_t half = head_dim / 2;
  ParallelFor(batch * seq, heads * head_dim, [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {
      const int64_t s = row % seq;
      const double* c = table->cos.data() + (position_offset + s) * half;
      const double* sn = table->sin.data() + (position_offset + s) * half;
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t base = (row * heads + h) * head_dim;
        for (int64_t j = 0; j < half; ++j) {
          const double sj = direction * sn[j];  // sin(-a) = -sin(a)
          const double x1 = Widen(x[base + j]), x2 = Widen(x[base + j + half]);
          y[base + j] = Narrow<T>(x1 * c[j] - x2 * sj);
          y[base + j + half] = Narrow<T>(x1 * sj + x2 * c[j]);
        }
      }
    }
  });
}

Status Rope(ExecContext& ctx, const TensorView& x, const TensorView& y, double theta,
            int64_t position_offset, int direction, absl::string_view x_name,
            absl::string_view y_name) {
  MOE_RETURN_IF_ERROR(attention_internal::CheckFloating(x_name, x));
  MOE_RETURN_IF_ERROR(attention_internal::CheckArg(x_name, ctx, x, x.dtype(), {-1, -1, -1, -1}));
  MOE_RETURN_IF_ERROR(attention_internal::CheckArg(y_name, ctx, y, x.dtype(), x.shape()));
  const int64_t D = x.dim(3);
  if (D % 2 != 0) return BadArgument(absl::StrCat(x_name, ".head_dim"), absl::StrCat(D), "even");
  if (!(theta > 0.0)) return BadArgument("theta", absl::StrCat(theta), "> 0");
  if (position_offset < 0) {
    return BadArgument("position_offset", absl::StrCat(position_offset), ">= 0");
  }
  if (x.empty()) return absl::OkStatus();
  if (ctx.device().is_cuda()) {
    return internal::RopeCuda(ctx, x.dtype(), x.data(), y.data(), x.dim(0), x.dim(1), x.dim(2), D,
                              theta, position_offset, direction);
  }
  if (x.dtype() == DType::kF32) {
    RopeTableCpu(x.data<float>(), y.data<float>(), x.dim(0), x.dim(1), x.dim(2), D, theta,
                 position_offset, direction);
  } else {
    RopeTableCpu(x.data<BF16>(), y.data<BF16>(), x.dim(0), x.dim(1), x.dim(2), D, theta,
                 position_offset, direction);
  }
  return absl::OkStatus();
}

}  // namespace

Status RopeForward(ExecContext& ctx, const TensorView& x, const TensorView& y, double theta,
                   int64_t position_offset) {
  return Rope(ctx, x, y, theta, position_offset, +1, "x", "y");
}

Status RopeBackward(ExecContext& ctx, const TensorView& dy, const TensorView& dx, double theta,
                    int64_t position_offset) {
  return Rope(ctx, dy, dx, theta, position_offset, -1, "dy", "dx");
}

#if !MOE_WITH_CUDA
namespace internal {
Status RopeCuda(ExecContext&, DType, const void*, void*, int64_t, int64_t, int64_t, int64_t, double,
                int64_t, int) {
  return absl::FailedPreconditionError("RoPE on CUDA, but this build has no CUDA backend");
}
}  // namespace internal
#endif

}  // namespace smoe
