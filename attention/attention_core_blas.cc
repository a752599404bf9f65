#include "attention/attention_core_blas.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace smoe::attention_internal {
namespace {

// Head h of sequence b in a [B, S, heads, D] tensor; its rows are heads * D apart.
float* HeadPtr(float* base, const AttentionDims& d, int64_t heads, int64_t b, int64_t h) {
  return base + (b * d.seq * heads + h) * d.head_dim;
}
const float* HeadPtr(const float* base, const AttentionDims& d, int64_t heads, int64_t b,
                     int64_t h) {
  return base + (b * d.seq * heads + h) * d.head_dim;
}

// scores[s, t] = scale * q_i[s] . k[t] for all s, t (the mask is applied by the callers).
void Scores(const AttentionDims& d, const float* q_head, const float* k_head, float scale,
            float* scores) {
  const int s = static_cast<int>(d.seq), dim = static_cast<int>(d.head_dim);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s, s, dim, scale, q_head,
              static_cast<int>(d.n_q * d.head_dim), k_head, static_cast<int>(d.n_k * d.head_dim),
              0.0f, scores, s);
}

}  // namespace

void AttentionForwardBlas(const AttentionDims& d, const float* q, const float* k, const float* v,
                          float* out, float* lse) {
  const int64_t s_len = d.seq;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.head_dim));
  std::vector<float> p(static_cast<size_t>(s_len * s_len));
  for (int64_t b = 0; b < d.batch; ++b) {
    for (int64_t i = 0; i < d.n_q; ++i) {
      Scores(d, HeadPtr(q, d, d.n_q, b, i), HeadPtr(k, d, d.n_k, b, d.KHead(i)), scale, p.data());
      float* lse_row = lse + (b * d.n_q + i) * s_len;
      for (int64_t s = 0; s < s_len; ++s) {
        float* row = p.data() + s * s_len;
        const float max = *std::max_element(row, row + s + 1);
        double sum = 0.0;
        for (int64_t t = 0; t <= s; ++t) sum += row[t] = std::exp(row[t] - max);
        const float inv = static_cast<float>(1.0 / sum);
        for (int64_t t = 0; t <= s; ++t) row[t] *= inv;
        std::fill(row + s + 1, row + s_len, 0.0f);
        lse_row[s] = max + static_cast<float>(std::log(sum));
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(s_len),
                  static_cast<int>(d.head_dim), static_cast<int>(s_len), 1.0f, p.data(),
                  static_cast<int>(s_len), HeadPtr(v, d, d.n_v, b, d.VHead(i)),
                  static_cast<int>(d.n_v * d.head_dim), 0.0f, HeadPtr(out, d, d.n_q, b, i),
                  static_cast<int>(d.n_q * d.head_dim));
    }
  }
}

void AttentionBackwardBlas(const AttentionDims& d, const float* q, const float* k, const float* v,
                           const float* out, const float* lse, const float* dout, float* dq,
                           float* dk, float* dv) {
  const int64_t s_len = d.seq, dim = d.head_dim;
  const int s = static_cast<int>(s_len), di = static_cast<int>(dim);
  const int ldq = static_cast<int>(d.n_q * dim), ldk = static_cast<int>(d.n_k * dim),
            ldv = static_cast<int>(d.n_v * dim);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  std::fill(dk, dk + d.batch * s_len * d.n_k * dim, 0.0f);
  std::fill(dv, dv + d.batch * s_len * d.n_v * dim, 0.0f);
  std::vector<float> p(static_cast<size_t>(s_len * s_len)), dp(p.size());
  for (int64_t b = 0; b < d.batch; ++b) {
    for (int64_t i = 0; i < d.n_q; ++i) {
      const float* q_i = HeadPtr(q, d, d.n_q, b, i);
      const float* k_h = HeadPtr(k, d, d.n_k, b, d.KHead(i));
      const float* v_h = HeadPtr(v, d, d.n_v, b, d.VHead(i));
      const float* o_i = HeadPtr(out, d, d.n_q, b, i);
      const float* do_i = HeadPtr(dout, d, d.n_q, b, i);
      const float* lse_row = lse + (b * d.n_q + i) * s_len;
      // P from the saved log-sum-exp (never stored by the forward).
      Scores(d, q_i, k_h, scale, p.data());
      for (int64_t r = 0; r < s_len; ++r) {
        float* row = p.data() + r * s_len;
        for (int64_t t = 0; t <= r; ++t) row[t] = std::exp(row[t] - lse_row[r]);
        std::fill(row + r + 1, row + s_len, 0.0f);
      }
      // dV[vh] += P^T dO;  dP = dO V^T.
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s, di, s, 1.0f, p.data(), s, do_i, ldq,
                  1.0f, HeadPtr(dv, d, d.n_v, b, d.VHead(i)), ldv);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s, s, di, 1.0f, do_i, ldq, v_h, ldv,
                  0.0f, dp.data(), s);
      // dS = P * (dP - rowsum(dO * O)), scaled by 1/sqrt(D) for both products below.
      for (int64_t r = 0; r < s_len; ++r) {
        double delta = 0.0;
        for (int64_t c = 0; c < dim; ++c) delta += double{do_i[r * ldq + c]} * o_i[r * ldq + c];
        float* ds = dp.data() + r * s_len;
        const float* pr = p.data() + r * s_len;
        for (int64_t t = 0; t <= r; ++t) ds[t] = pr[t] * (ds[t] - static_cast<float>(delta));
        std::fill(ds + r + 1, ds + s_len, 0.0f);
      }
      // dQ_i = scale dS K;  dK[kh] += scale dS^T Q_i.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s, di, s, scale, dp.data(), s, k_h,
                  ldk, 0.0f, HeadPtr(dq, d, d.n_q, b, i), ldq);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s, di, s, scale, dp.data(), s, q_i, ldq,
                  1.0f, HeadPtr(dk, d, d.n_k, b, d.KHead(i)), ldk);
    }
  }
}

}  // namespace smoe::attention_internal
