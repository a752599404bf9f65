// A plain-loop reference of the SwiGLU expert MLP (moe/experts/experts.h), templated on the scalar
// type so that tests can run it in double for finite-difference gradient checks. Independent of
// the runtime: no GEMM, no SwiGLU op, its own sigmoid.
//
// Layouts as in experts.h, row-major in flat vectors: xs [R, M], w1, w3 [E_l, M, H],
// w2 [E_l, H, M]; offsets has E_l + 1 entries and R = offsets.back().
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

namespace smoe::testing {

template <typename T>
struct ExpertsReferenceForwardResult {
  std::vector<T> h1, h3, act;  // [R, H]
  std::vector<T> ys;           // [R, M]
};

template <typename T>
struct ExpertsReferenceGrads {
  std::vector<T> dxs;       // [R, M]
  std::vector<T> dw1, dw3;  // [E_l, M, H]
  std::vector<T> dw2;       // [E_l, H, M]
};

template <typename T>
T ReferenceSigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}

// `store` models the storage dtype of the saved activations (identity for exact math; round to
// bf16 to mirror a bf16 run): it is applied to h1 and h3 before the activation and to act before
// the second product.
template <typename T>
ExpertsReferenceForwardResult<T> ExpertsReferenceForward(
    const std::vector<T>& xs, const std::vector<T>& w1, const std::vector<T>& w3,
    const std::vector<T>& w2, const std::vector<int64_t>& offsets, int64_t m, int64_t h,
    const std::function<T(T)>& store = [](T v) { return v; }) {
  const int64_t experts = static_cast<int64_t>(offsets.size()) - 1;
  const int64_t rows = offsets.back();
  ExpertsReferenceForwardResult<T> out;
  out.h1.assign(rows * h, T(0));
  out.h3.assign(rows * h, T(0));
  out.act.assign(rows * h, T(0));
  out.ys.assign(rows * m, T(0));
  for (int64_t e = 0; e < experts; ++e) {
    const T* a = w1.data() + e * m * h;
    const T* b = w3.data() + e * m * h;
    const T* c = w2.data() + e * h * m;
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
      for (int64_t j = 0; j < h; ++j) {
        T s1 = T(0), s3 = T(0);
        for (int64_t k = 0; k < m; ++k) {
          s1 += xs[r * m + k] * a[k * h + j];
          s3 += xs[r * m + k] * b[k * h + j];
        }
        s1 = store(s1);
        s3 = store(s3);
        out.h1[r * h + j] = s1;
        out.h3[r * h + j] = s3;
        out.act[r * h + j] = store(s1 * ReferenceSigmoid(s1) * s3);
      }
      for (int64_t i = 0; i < m; ++i) {
        T y = T(0);
        for (int64_t j = 0; j < h; ++j) y += out.act[r * h + j] * c[j * m + i];
        out.ys[r * m + i] = y;
      }
    }
  }
  return out;
}

// The analytic gradients of L = sum(dys * ys) with respect to xs, w1, w3 and w2 (exact math).
template <typename T>
ExpertsReferenceGrads<T> ExpertsReferenceBackward(const std::vector<T>& xs,
                                                  const std::vector<T>& w1,
                                                  const std::vector<T>& w3,
                                                  const std::vector<T>& w2,
                                                  const std::vector<int64_t>& offsets, int64_t m,
                                                  int64_t h, const std::vector<T>& dys) {
  const int64_t experts = static_cast<int64_t>(offsets.size()) - 1;
  const int64_t rows = offsets.back();
  const ExpertsReferenceForwardResult<T> fwd =
      ExpertsReferenceForward(xs, w1, w3, w2, offsets, m, h);
  ExpertsReferenceGrads<T> g;
  g.dxs.assign(rows * m, T(0));
  g.dw1.assign(experts * m * h, T(0));
  g.dw3.assign(experts * m * h, T(0));
  g.dw2.assign(experts * h * m, T(0));
  std::vector<T> dh1(h), dh3(h);
  for (int64_t e = 0; e < experts; ++e) {
    const T* a = w1.data() + e * m * h;
    const T* b = w3.data() + e * m * h;
    const T* c = w2.data() + e * h * m;
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
      for (int64_t j = 0; j < h; ++j) {
        T dact = T(0);
        for (int64_t i = 0; i < m; ++i) {
          dact += dys[r * m + i] * c[j * m + i];
          g.dw2[(e * h + j) * m + i] += fwd.act[r * h + j] * dys[r * m + i];
        }
        const T z = fwd.h1[r * h + j];
        const T sig = ReferenceSigmoid(z);
        const T silu = z * sig;
        const T dsilu = sig + silu * (T(1) - sig);  // d/dz z*s(z) = s + z s (1 - s)
        dh1[j] = dact * fwd.h3[r * h + j] * dsilu;
        dh3[j] = dact * silu;
      }
      for (int64_t k = 0; k < m; ++k) {
        T dx = T(0);
        for (int64_t j = 0; j < h; ++j) {
          dx += dh1[j] * a[k * h + j] + dh3[j] * b[k * h + j];
          g.dw1[(e * m + k) * h + j] += xs[r * m + k] * dh1[j];
          g.dw3[(e * m + k) * h + j] += xs[r * m + k] * dh3[j];
        }
        g.dxs[r * m + k] = dx;
      }
    }
  }
  return g;
}

}  // namespace smoe::testing
