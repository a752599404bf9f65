// CPU reference of the SwiGLU gate in aug_q.h, templated on the storage type.
#pragma once

#include <cmath>
#include <cstdint>

#include "attention/scalar.h"

namespace smoe::attention_internal {

inline double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

template <typename T>
void SwiGluForwardCpu(const T* gate, const T* up, T* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = Load(gate[i]);
    h[i] = Store<T>(g * Sigmoid(g) * Load(up[i]));
  }
}

template <typename T>
void SwiGluBackwardCpu(const T* gate, const T* up, const T* dh, T* dgate, T* dup, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = Load(gate[i]), u = Load(up[i]), d = Load(dh[i]);
    const double sig = Sigmoid(g);
    dgate[i] = Store<T>(d * u * sig * (1.0 + g * (1.0 - sig)));
    dup[i] = Store<T>(d * g * sig);
  }
}

}  // namespace smoe::attention_internal
