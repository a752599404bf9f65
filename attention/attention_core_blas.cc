#include "attention/attention_core_blas.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "runtime/blas/cpu_sgemm.h"
#include "runtime/core/cpu_vector.h"
#include "runtime/core/thread_pool.h"

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

// max over row[0, n), n >= 1, in 16 lanes (vectorizes; a NaN in the row may or may not win,
// as with std::max_element).
MOE_CPU_CLONES float RowMax(const float* row, int64_t n) {
  float lanes[16];
  for (int l = 0; l < 16; ++l) lanes[l] = row[0];
  int64_t t = 0;
  for (; t + 16 <= n; t += 16) {
    for (int l = 0; l < 16; ++l) lanes[l] = row[t + l] > lanes[l] ? row[t + l] : lanes[l];
  }
  for (; t < n; ++t) lanes[0] = row[t] > lanes[0] ? row[t] : lanes[0];
  float max = lanes[0];
  for (int l = 1; l < 16; ++l) max = lanes[l] > max ? lanes[l] : max;
  return max;
}

// row[t] = exp(row[t] - shift) for t < n.
MOE_CPU_CLONES void ExpShifted(float* row, int64_t n, float shift) {
  for (int64_t t = 0; t < n; ++t) row[t] = ExpF(row[t] - shift);
}

// row[t] *= scale for t < n.
MOE_CPU_CLONES void Scale(float* row, int64_t n, float scale) {
  for (int64_t t = 0; t < n; ++t) row[t] *= scale;
}

// ds[t] = p[t] * (ds[t] - delta) for t < n.
MOE_CPU_CLONES void SoftmaxGrad(float* ds, const float* p, int64_t n, float delta) {
  for (int64_t t = 0; t < n; ++t) ds[t] = p[t] * (ds[t] - delta);
}

// Scratch [n] floats for the calling thread, reused across calls (no allocation per step).
float* Scratch(int slot, int64_t n) {
  thread_local std::vector<float> buffers[4];
  std::vector<float>& b = buffers[slot];
  if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n));
  return b.data();
}

// Causal blocks: the queries of a head go kBlock rows at a time, and block [q0, q1) needs only
// keys [0, q1): the products skip the masked upper triangle (about half the work at S = 256).
constexpr int64_t kBlock = 64;

// a [m x k] (lda) times b^T, b [n x k] (ldb), times alpha into c [m x n] (ldc); beta 0 or 1.
void GemmNT(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
            const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  CpuSgemm(false, true, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
// a [m x k] times b [k x n].
void GemmNN(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
            const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  CpuSgemm(false, false, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
// a^T, a [k x m], times b [k x n].
void GemmTN(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
            const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  CpuSgemm(true, false, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// The query heads that read one K head (a run of consecutive heads: KHead is monotone), and
// within it the runs that read one V head. The heads of a K run are packed one after another
// ("grouped"): rows (j, r) = head i0 + j, query q0 + r, so the score product of the whole run is
// one GEMM (M = heads x rows, not rows), and each V run's rows are contiguous for its products.
// Small K (= D) GEMMs spend their time packing operands; this packs K once per run instead of once
// per head.
struct HeadRun {
  int64_t first = 0, last = 0;  // query heads [first, last)
};
std::vector<HeadRun> Runs(int64_t first, int64_t last,
                          int64_t (AttentionDims::*head)(int64_t) const, const AttentionDims& d) {
  std::vector<HeadRun> runs;
  for (int64_t i = first; i < last; ++i) {
    if (runs.empty() || (d.*head)(i) != (d.*head)(runs.back().first)) {
      runs.push_back({i, i + 1});
    } else {
      runs.back().last = i + 1;
    }
  }
  return runs;
}

// Copies rows [q0, q0 + rows) of heads [run.first, run.last) of a [B, S, H, D] tensor (sequence b)
// into packed [(j, r), D], or back (unpack).
void Pack(const float* t, int64_t heads, const AttentionDims& d, int64_t b, const HeadRun& run,
          int64_t q0, int64_t rows, float* packed) {
  const int64_t dim = d.head_dim;
  for (int64_t j = 0; j < run.last - run.first; ++j) {
    const float* src = HeadPtr(t, d, heads, b, run.first + j) + q0 * heads * dim;
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(src + r * heads * dim, src + r * heads * dim + dim, packed + (j * rows + r) * dim);
    }
  }
}
void Unpack(const float* packed, float* t, int64_t heads, const AttentionDims& d, int64_t b,
            const HeadRun& run, int64_t q0, int64_t rows) {
  const int64_t dim = d.head_dim;
  for (int64_t j = 0; j < run.last - run.first; ++j) {
    float* dst = HeadPtr(t, d, heads, b, run.first + j) + q0 * heads * dim;
    for (int64_t r = 0; r < rows; ++r) {
      const float* src = packed + (j * rows + r) * dim;
      std::copy(src, src + dim, dst + r * heads * dim);
    }
  }
}

}  // namespace

void AttentionForwardBlas(const AttentionDims& d, const float* q, const float* k, const float* v,
                          float* out, float* lse) {
  const int64_t s_len = d.seq, dim = d.head_dim;
  const int64_t ldk = d.n_k * dim, ldv = d.n_v * dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const std::vector<HeadRun> k_runs = Runs(0, d.n_q, &AttentionDims::KHead, d);
  const int64_t runs = static_cast<int64_t>(k_runs.size());
  // Every (sequence, K run) pair writes its own rows of out and lse: one per chunk.
  ParallelFor(
      d.batch * runs, 2 * s_len * s_len * dim * (d.n_q / runs), [&](int64_t first, int64_t last) {
        for (int64_t item = first; item < last; ++item) {
          const int64_t b = item / runs;
          const HeadRun& run = k_runs[item % runs];
          const int64_t g = run.last - run.first;
          const std::vector<HeadRun> v_runs = Runs(run.first, run.last, &AttentionDims::VHead, d);
          float* qp = Scratch(0, g * kBlock * dim);   // packed queries, then outputs
          float* p = Scratch(1, g * kBlock * s_len);  // [(j, r), keys], leading dim s_len
          float* inv_sum = Scratch(2, g * kBlock);    // 1 / sum of each row's exps
          const float* k_h = HeadPtr(k, d, d.n_k, b, d.KHead(run.first));
          for (int64_t q0 = 0; q0 < s_len; q0 += kBlock) {
            const int64_t q1 = std::min(s_len, q0 + kBlock), rows = q1 - q0;
            Pack(q, d.n_q, d, b, run, q0, rows, qp);
            GemmNT(g * rows, q1, dim, scale, qp, dim, k_h, ldk, 0.0f, p, s_len);
            for (int64_t j = 0; j < g; ++j) {
              float* lse_row = lse + (b * d.n_q + run.first + j) * s_len;
              for (int64_t r = 0; r < rows; ++r) {
                const int64_t s = q0 + r;  // the query's position: keys 0..s
                float* row = p + (j * rows + r) * s_len;
                const float max = RowMax(row, s + 1);
                const double sum = ExpShiftedSum(row, max, s + 1, row);
                inv_sum[j * rows + r] = static_cast<float>(1.0 / sum);
                std::fill(row + s + 1, row + q1, 0.0f);
                lse_row[s] = max + static_cast<float>(std::log(sum));
              }
            }
            // O = (exp(S - max) V) / sum: the D outputs of a row are scaled, not its keys.
            for (const HeadRun& vr : v_runs) {
              const int64_t j0 = vr.first - run.first, n = (vr.last - vr.first) * rows;
              GemmNN(n, dim, q1, 1.0f, p + j0 * rows * s_len, s_len,
                     HeadPtr(v, d, d.n_v, b, d.VHead(vr.first)), ldv, 0.0f, qp + j0 * rows * dim,
                     dim);
            }
            for (int64_t i = 0; i < g * rows; ++i) Scale(qp + i * dim, dim, inv_sum[i]);
            Unpack(qp, out, d.n_q, d, b, run, q0, rows);
          }
        }
      });
}

void AttentionBackwardBlas(const AttentionDims& d, const float* q, const float* k, const float* v,
                           const float* out, const float* lse, const float* dout, float* dq,
                           float* dk, float* dv) {
  const int64_t s_len = d.seq, dim = d.head_dim;
  const int64_t ldq = d.n_q * dim, ldk = d.n_k * dim, ldv = d.n_v * dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const std::vector<HeadRun> k_runs = Runs(0, d.n_q, &AttentionDims::KHead, d);
  // Sequences in parallel: the query heads of one sequence add into the same dK and dV heads, so
  // they stay on one thread, in head order.
  ParallelFor(d.batch, 4 * d.n_q * s_len * s_len * dim, [&](int64_t first, int64_t last) {
    const int64_t g_max = d.n_q;
    float* qp = Scratch(0, g_max * kBlock * dim);    // packed queries
    float* p = Scratch(1, g_max * kBlock * s_len);   // probabilities
    float* dp = Scratch(2, g_max * kBlock * s_len);  // their gradient, then dS
    float* dop = Scratch(3, g_max * kBlock * dim);   // packed dO, then dQ
    for (int64_t b = first; b < last; ++b) {
      std::fill(HeadPtr(dk, d, d.n_k, b, 0), HeadPtr(dk, d, d.n_k, b + 1, 0), 0.0f);
      std::fill(HeadPtr(dv, d, d.n_v, b, 0), HeadPtr(dv, d, d.n_v, b + 1, 0), 0.0f);
      for (const HeadRun& run : k_runs) {
        const int64_t g = run.last - run.first;
        const std::vector<HeadRun> v_runs = Runs(run.first, run.last, &AttentionDims::VHead, d);
        const float* k_h = HeadPtr(k, d, d.n_k, b, d.KHead(run.first));
        float* dk_h = HeadPtr(dk, d, d.n_k, b, d.KHead(run.first));
        for (int64_t q0 = 0; q0 < s_len; q0 += kBlock) {
          const int64_t q1 = std::min(s_len, q0 + kBlock), rows = q1 - q0;
          Pack(q, d.n_q, d, b, run, q0, rows, qp);
          Pack(dout, d.n_q, d, b, run, q0, rows, dop);
          // P from the saved log-sum-exp (never stored by the forward).
          GemmNT(g * rows, q1, dim, scale, qp, dim, k_h, ldk, 0.0f, p, s_len);
          for (int64_t j = 0; j < g; ++j) {
            const float* lse_row = lse + (b * d.n_q + run.first + j) * s_len;
            for (int64_t r = 0; r < rows; ++r) {
              float* row = p + (j * rows + r) * s_len;
              ExpShifted(row, q0 + r + 1, lse_row[q0 + r]);
              std::fill(row + q0 + r + 1, row + q1, 0.0f);
            }
          }
          // Per V head: dV += P^T dO;  dP = dO V^T.
          for (const HeadRun& vr : v_runs) {
            const int64_t j0 = vr.first - run.first, n = (vr.last - vr.first) * rows;
            const int64_t vh = d.VHead(vr.first);
            GemmTN(q1, dim, n, 1.0f, p + j0 * rows * s_len, s_len, dop + j0 * rows * dim, dim, 1.0f,
                   HeadPtr(dv, d, d.n_v, b, vh), ldv);
            GemmNT(n, q1, dim, 1.0f, dop + j0 * rows * dim, dim, HeadPtr(v, d, d.n_v, b, vh), ldv,
                   0.0f, dp + j0 * rows * s_len, s_len);
          }
          // dS = P * (dP - rowsum(dO * O)), scaled by 1/sqrt(D) for both products below.
          for (int64_t j = 0; j < g; ++j) {
            const float* o_i = HeadPtr(out, d, d.n_q, b, run.first + j);
            const float* do_i = HeadPtr(dout, d, d.n_q, b, run.first + j);
            for (int64_t r = 0; r < rows; ++r) {
              const int64_t s = q0 + r;
              double delta = 0.0;
              for (int64_t c = 0; c < dim; ++c) {
                delta += double{do_i[s * ldq + c]} * o_i[s * ldq + c];
              }
              float* ds = dp + (j * rows + r) * s_len;
              SoftmaxGrad(ds, p + (j * rows + r) * s_len, s + 1, static_cast<float>(delta));
              std::fill(ds + s + 1, ds + q1, 0.0f);
            }
          }
          // dQ = scale dS K (packed, into dop: dO is no longer needed);  dK += scale dS^T Q.
          GemmNN(g * rows, dim, q1, scale, dp, s_len, k_h, ldk, 0.0f, dop, dim);
          Unpack(dop, dq, d.n_q, d, b, run, q0, rows);
          GemmTN(q1, dim, g * rows, scale, dp, s_len, qp, dim, 1.0f, dk_h, ldk);
        }
      }
    }
  });
}

}  // namespace smoe::attention_internal
