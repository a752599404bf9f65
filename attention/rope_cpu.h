// CPU reference of rope.h, templated on the storage type (float, BF16, double).
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/core/scalar.h"

namespace smoe::attention_internal {

// direction +1 rotates by +angle (forward), -1 by -angle (backward). y may alias x.
template <typename T>
void RopeCpu(const T* x, T* y, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim,
             double theta, int64_t position_offset, int direction) {
  const int64_t half = head_dim / 2;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < seq; ++s) {
      const double position = static_cast<double>(position_offset + s);
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t base = ((b * seq + s) * heads + h) * head_dim;
        for (int64_t j = 0; j < half; ++j) {
          const double angle =
              direction * position * std::pow(theta, -2.0 * j / static_cast<double>(head_dim));
          const double c = std::cos(angle), sn = std::sin(angle);
          const double x1 = Widen(x[base + j]), x2 = Widen(x[base + j + half]);
          y[base + j] = Narrow<T>(x1 * c - x2 * sn);
          y[base + j + half] = Narrow<T>(x1 * sn + x2 * c);
        }
      }
    }
  }
}

}  // namespace smoe::attention_internal
