// CPU reference of attention_core.h, templated on the storage type (float, BF16, double) and on
// the type of lse (float, or double for gradient checks). Plain loops in double.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention/attention_core.h"
#include "runtime/core/scalar.h"

namespace smoe::attention_internal {

// Row (b, s, head) of a [B, S, heads, D] tensor.
inline int64_t RowOffset(const AttentionDims& d, int64_t b, int64_t s, int64_t heads,
                         int64_t head) {
  return ((b * d.seq + s) * heads + head) * d.head_dim;
}

template <typename T>
double Dot(const T* a, const T* b, int64_t n) {
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) sum += Widen(a[j]) * Widen(b[j]);
  return sum;
}

template <typename T, typename L>
void AttentionForwardCpu(const AttentionDims& d, const T* q, const T* k, const T* v, T* out,
                         L* lse) {
  const int64_t D = d.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> scores(d.seq), acc(D);
  for (int64_t b = 0; b < d.batch; ++b) {
    for (int64_t i = 0; i < d.n_q; ++i) {
      const int64_t kh = d.KHead(i), vh = d.VHead(i);
      for (int64_t s = 0; s < d.seq; ++s) {
        const T* qs = q + RowOffset(d, b, s, d.n_q, i);
        double max = -std::numeric_limits<double>::infinity();
        for (int64_t t = 0; t <= s; ++t) {
          scores[t] = scale * Dot(qs, k + RowOffset(d, b, t, d.n_k, kh), D);
          max = std::max(max, scores[t]);
        }
        double sum = 0.0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t t = 0; t <= s; ++t) {
          const double p = std::exp(scores[t] - max);
          sum += p;
          const T* vt = v + RowOffset(d, b, t, d.n_v, vh);
          for (int64_t j = 0; j < D; ++j) acc[j] += p * Widen(vt[j]);
        }
        T* os = out + RowOffset(d, b, s, d.n_q, i);
        for (int64_t j = 0; j < D; ++j) os[j] = Narrow<T>(acc[j] / sum);
        lse[(b * d.n_q + i) * d.seq + s] = static_cast<L>(max + std::log(sum));
      }
    }
  }
}

template <typename T, typename L>
void AttentionBackwardCpu(const AttentionDims& d, const T* q, const T* k, const T* v, const T* out,
                          const L* lse, const T* dout, T* dq, T* dk, T* dv) {
  const int64_t D = d.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  // Gradients are summed over query heads that share a K or V head, so accumulate in double.
  std::vector<double> gq(d.batch * d.seq * d.n_q * D, 0.0);
  std::vector<double> gk(d.batch * d.seq * d.n_k * D, 0.0);
  std::vector<double> gv(d.batch * d.seq * d.n_v * D, 0.0);
  for (int64_t b = 0; b < d.batch; ++b) {
    for (int64_t i = 0; i < d.n_q; ++i) {
      const int64_t kh = d.KHead(i), vh = d.VHead(i);
      for (int64_t s = 0; s < d.seq; ++s) {
        const int64_t qo = RowOffset(d, b, s, d.n_q, i);
        const double row_lse = lse[(b * d.n_q + i) * d.seq + s];
        const double delta = Dot(dout + qo, out + qo, D);  // sum_t p_t dp_t
        for (int64_t t = 0; t <= s; ++t) {
          const int64_t ko = RowOffset(d, b, t, d.n_k, kh), vo = RowOffset(d, b, t, d.n_v, vh);
          const double p = std::exp(scale * Dot(q + qo, k + ko, D) - row_lse);
          const double dp = Dot(dout + qo, v + vo, D);
          const double ds = p * (dp - delta) * scale;
          for (int64_t j = 0; j < D; ++j) {
            gv[vo + j] += p * Widen(dout[qo + j]);
            gq[qo + j] += ds * Widen(k[ko + j]);
            gk[ko + j] += ds * Widen(q[qo + j]);
          }
        }
      }
    }
  }
  for (size_t j = 0; j < gq.size(); ++j) dq[j] = Narrow<T>(gq[j]);
  for (size_t j = 0; j < gk.size(); ++j) dk[j] = Narrow<T>(gk[j]);
  for (size_t j = 0; j < gv.size(); ++j) dv[j] = Narrow<T>(gv[j]);
}

}  // namespace smoe::attention_internal
