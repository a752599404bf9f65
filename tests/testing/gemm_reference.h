// A plain triple-loop GEMM in double over host vectors: the reference for every GEMM test.
#pragma once

#include <cstdint>
#include <vector>

namespace smoe::testing {

// C[m, n] = alpha * op(A) op(B) + beta * C, row-major, A and B as given (transposed storage when
// trans_a / trans_b), in double.
inline void ReferenceGemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                          const double* a, const double* b, double beta, double* c) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        const double av = trans_a ? a[p * m + i] : a[i * k + p];
        const double bv = trans_b ? b[j * k + p] : b[p * n + j];
        sum += av * bv;
      }
      c[i * n + j] = alpha * sum + (beta == 0.0 ? 0.0 : beta * c[i * n + j]);
    }
  }
}

}  // namespace smoe::testing
