// The CPU reference of permute.h as plain loops over raw arrays, templated on the element type
// (float, BF16 or double) and the gate type (float or double), so tests can run it in double for
// finite-difference gradient checks. Accumulates in double; rounds once per stored element.
// Arguments are the plan's host arrays: row_token [R], slots [T, K] (-1 = dropped).
#pragma once

#include <cstdint>

#include "runtime/core/bf16.h"
#include "runtime/core/scalar.h"

namespace smoe::reference {

// xs[r] = x[row_token[r]], r < rows.
template <typename T>
void Permute(const int32_t* row_token, int64_t rows, int64_t m, const T* x, T* xs) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < m; ++c) xs[r * m + c] = x[row_token[r] * m + c];
  }
}

// dx[t] = sum over kept k of dxs[slots[t, k]].
template <typename T>
void PermuteBackward(const int32_t* slots, int64_t t_count, int64_t k_count, int64_t m,
                     const T* dxs, T* dx) {
  for (int64_t t = 0; t < t_count; ++t) {
    for (int64_t c = 0; c < m; ++c) {
      double sum = 0.0;
      for (int64_t k = 0; k < k_count; ++k) {
        const int64_t row = slots[t * k_count + k];
        if (row >= 0) sum += Widen(dxs[row * m + c]);
      }
      dx[t * m + c] = Narrow<T>(sum);
    }
  }
}

// y[t] = sum over kept k of gates[t, k] * ys[slots[t, k]].
template <typename T, typename G>
void Combine(const int32_t* slots, int64_t t_count, int64_t k_count, int64_t m, const T* ys,
             const G* gates, T* y) {
  for (int64_t t = 0; t < t_count; ++t) {
    for (int64_t c = 0; c < m; ++c) {
      double sum = 0.0;
      for (int64_t k = 0; k < k_count; ++k) {
        const int64_t row = slots[t * k_count + k];
        if (row >= 0) sum += Widen(gates[t * k_count + k]) * Widen(ys[row * m + c]);
      }
      y[t * m + c] = Narrow<T>(sum);
    }
  }
}

// dys[slots[t, k]] = gates[t, k] * dy[t]; dgates[t, k] = <dy[t], ys[slots[t, k]]> (0 if dropped).
template <typename T, typename G>
void CombineBackward(const int32_t* slots, int64_t t_count, int64_t k_count, int64_t m, const T* dy,
                     const T* ys, const G* gates, T* dys, G* dgates) {
  for (int64_t t = 0; t < t_count; ++t) {
    for (int64_t k = 0; k < k_count; ++k) {
      const int64_t pair = t * k_count + k;
      const int64_t row = slots[pair];
      if (row < 0) {
        dgates[pair] = G{0};
        continue;
      }
      const double gate = Widen(gates[pair]);
      double dot = 0.0;
      for (int64_t c = 0; c < m; ++c) {
        dot += Widen(dy[t * m + c]) * Widen(ys[row * m + c]);
        dys[row * m + c] = Narrow<T>(gate * Widen(dy[t * m + c]));
      }
      dgates[pair] = Narrow<G>(dot);
    }
  }
}

}  // namespace smoe::reference
