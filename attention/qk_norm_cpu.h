// CPU reference of qk_norm.h, templated on the storage type (float, BF16, double) and the type of
// rstd (float, or double for gradient checks).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "runtime/core/scalar.h"

namespace smoe::attention_internal {

template <typename T, typename R>
void HeadRmsNormForwardCpu(const T* x, const T* w, T* y, R* rstd, int64_t rows, int64_t dim,
                           double eps) {
  for (int64_t r = 0; r < rows; ++r) {
    double sum_sq = 0.0;
    for (int64_t j = 0; j < dim; ++j) sum_sq += Widen(x[r * dim + j]) * Widen(x[r * dim + j]);
    const double inv = 1.0 / std::sqrt(sum_sq / static_cast<double>(dim) + eps);
    rstd[r] = static_cast<R>(inv);
    for (int64_t j = 0; j < dim; ++j)
      y[r * dim + j] = Narrow<T>(Widen(x[r * dim + j]) * inv * Widen(w[j]));
  }
}

// dw (float, or double for gradient checks) is accumulated: dw += the rows' sum, rounded to G
// first, as an f32 gradient buffer receives it.
template <typename T, typename R, typename G>
void HeadRmsNormBackwardCpu(const T* x, const T* w, const R* rstd, const T* dy, T* dx, G* dw,
                            int64_t rows, int64_t dim) {
  std::vector<double> gw(dim, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const double inv = rstd[r];
    double mean = 0.0;  // mean_j(dy w xhat)
    for (int64_t j = 0; j < dim; ++j) {
      const double xhat = Widen(x[r * dim + j]) * inv;
      mean += Widen(dy[r * dim + j]) * Widen(w[j]) * xhat;
      gw[j] += Widen(dy[r * dim + j]) * xhat;
    }
    mean /= static_cast<double>(dim);
    for (int64_t j = 0; j < dim; ++j) {
      const double xhat = Widen(x[r * dim + j]) * inv;
      dx[r * dim + j] = Narrow<T>(inv * (Widen(dy[r * dim + j]) * Widen(w[j]) - xhat * mean));
    }
  }
  for (int64_t j = 0; j < dim; ++j) dw[j] += static_cast<G>(gw[j]);
}

}  // namespace smoe::attention_internal
