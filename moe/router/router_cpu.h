// Plain-loop CPU reference of the router and aux-loss math (router.h, aux_loss.h), templated on
// the scalar type S: float in the CPU backend, double in the fp64 finite-difference tests.
// Row-major raw arrays; callers validate. Sums accumulate in double whatever S is.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "moe/router/aux_loss.h"

namespace smoe::router_reference {

// Whether choice a (score sa, expert a) ranks above choice b: higher score, then lower index.
template <typename S>
bool RanksAbove(S sa, int64_t a, S sb, int64_t b) {
  return sa > sb || (sa == sb && a < b);
}

// logits [T, E] = x [T, M] w [M, E].
template <typename S>
void Logits(const S* x, const S* w, int64_t t, int64_t m, int64_t e, S* logits) {
  for (int64_t r = 0; r < t; ++r) {
    for (int64_t c = 0; c < e; ++c) {
      double sum = 0.0;
      for (int64_t i = 0; i < m; ++i) sum += double{x[r * m + i]} * double{w[i * e + c]};
      logits[r * e + c] = static_cast<S>(sum);
    }
  }
}

// probs = row softmax of logits; a row with a non-finite logit becomes all NaN.
template <typename S>
void Softmax(const S* logits, int64_t t, int64_t e, S* probs) {
  for (int64_t r = 0; r < t; ++r) {
    const S* lr = logits + r * e;
    S* pr = probs + r * e;
    bool finite = true;
    S max = -std::numeric_limits<S>::infinity();
    for (int64_t c = 0; c < e; ++c) {
      finite = finite && std::isfinite(lr[c]);
      max = std::max(max, lr[c]);
    }
    if (!finite) {
      std::fill(pr, pr + e, std::numeric_limits<S>::quiet_NaN());
      continue;
    }
    double sum = 0.0;
    for (int64_t c = 0; c < e; ++c) sum += std::exp(double{lr[c]} - double{max});
    for (int64_t c = 0; c < e; ++c) {
      pr[c] = static_cast<S>(std::exp(double{lr[c]} - double{max}) / sum);
    }
  }
}

// topk_idx [T, K] by descending score = logits (+ bias when non-null), ties to the lower index;
// a row with a non-finite score gets 0..K-1.
template <typename S>
void TopK(const S* logits, const S* bias, int64_t t, int64_t e, int64_t k, int32_t* topk_idx) {
  std::vector<S> score(e);
  std::vector<bool> taken(e);
  for (int64_t r = 0; r < t; ++r) {
    int32_t* ir = topk_idx + r * k;
    bool finite = true;
    for (int64_t c = 0; c < e; ++c) {
      score[c] = bias != nullptr ? logits[r * e + c] + bias[c] : logits[r * e + c];
      finite = finite && std::isfinite(score[c]);
    }
    if (!finite) {
      for (int64_t j = 0; j < k; ++j) ir[j] = static_cast<int32_t>(j);
      continue;
    }
    std::fill(taken.begin(), taken.end(), false);
    for (int64_t j = 0; j < k; ++j) {
      int64_t best = -1;
      for (int64_t c = 0; c < e; ++c) {
        if (!taken[c] && (best < 0 || RanksAbove(score[c], c, score[best], best))) best = c;
      }
      taken[best] = true;
      ir[j] = static_cast<int32_t>(best);
    }
  }
}

// topk_gates [T, K] = probs at topk_idx, divided by their sum (in choice order) when renormalize.
template <typename S>
void Gates(const S* probs, const int32_t* topk_idx, int64_t t, int64_t e, int64_t k,
           bool renormalize, S* topk_gates) {
  for (int64_t r = 0; r < t; ++r) {
    S sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += probs[r * e + topk_idx[r * k + j]];
    for (int64_t j = 0; j < k; ++j) {
      const S p = probs[r * e + topk_idx[r * k + j]];
      topk_gates[r * k + j] = renormalize ? p / sum : p;
    }
  }
}

// d_logits [T, E] from d_topk_gates [T, K] through the gates (and their renormalization) and the
// softmax, plus d_logits_extra [T, E] when non-null.
template <typename S>
void LogitsGradient(const S* probs, const int32_t* topk_idx, const S* d_topk_gates,
                    const S* d_logits_extra, int64_t t, int64_t e, int64_t k, bool renormalize,
                    S* d_logits) {
  std::vector<double> dp(k);
  for (int64_t r = 0; r < t; ++r) {
    const S* pr = probs + r * e;
    const int32_t* ir = topk_idx + r * k;
    const S* dgr = d_topk_gates + r * k;
    double sum = 0.0, dot_g = 0.0;
    for (int64_t j = 0; j < k; ++j) sum += pr[ir[j]];
    for (int64_t j = 0; j < k; ++j) dot_g += double{dgr[j]} * pr[ir[j]];
    double dot = 0.0;  // sum_e d_probs[e] probs[e]: only the K chosen experts are nonzero
    for (int64_t j = 0; j < k; ++j) {
      dp[j] = renormalize ? (dgr[j] - dot_g / sum) / sum : double{dgr[j]};
      dot += dp[j] * pr[ir[j]];
    }
    for (int64_t c = 0; c < e; ++c) {
      double dpc = 0.0;
      for (int64_t j = 0; j < k; ++j) {
        if (ir[j] == c) dpc += dp[j];
      }
      double g = double{pr[c]} * (dpc - dot);
      if (d_logits_extra != nullptr) g += d_logits_extra[r * e + c];
      d_logits[r * e + c] = static_cast<S>(g);
    }
  }
}

// dx [T, M] = d_logits w^T; dw [M, E] = x^T d_logits.
template <typename S>
void InputGradients(const S* x, const S* w, const S* d_logits, int64_t t, int64_t m, int64_t e,
                    S* dx, S* dw) {
  for (int64_t r = 0; r < t; ++r) {
    for (int64_t i = 0; i < m; ++i) {
      double sum = 0.0;
      for (int64_t c = 0; c < e; ++c) sum += double{d_logits[r * e + c]} * w[i * e + c];
      dx[r * m + i] = static_cast<S>(sum);
    }
  }
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t c = 0; c < e; ++c) {
      double sum = 0.0;
      for (int64_t r = 0; r < t; ++r) sum += double{x[r * m + i]} * d_logits[r * e + c];
      dw[i * e + c] = static_cast<S>(sum);
    }
  }
}

// ---- Aux losses -------------------------------------------------------------------------------

// The reductions the aux losses need, from which values and gradient coefficients follow.
struct AuxSums {
  int64_t t = 0, e = 0;
  std::vector<double> f;      // [E]: c_i / sum_j c_j (0 when no pairs)
  std::vector<double> p_sum;  // [E]: sum_t p_ti
  double lse_sq_sum = 0;      // sum_t logsumexp(logits_t)^2
  double max_p_sum = 0;       // sum_t max_i p_ti
};

// The per-row gradient is  dL/dp_te = g[e] + (e == argmax_t ? top1_argmax : 0)  through the
// softmax, plus z_factor * lse_t * p_te added to d_logits directly.
struct AuxGradient {
  AuxLossValues values;
  std::vector<double> g;  // [E]
  double top1_argmax = 0;
  double z_factor = 0;
};

// f_i from counts c_i (possibly all-reduced).
inline std::vector<double> Shares(const std::vector<int64_t>& counts) {
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  std::vector<double> f(counts.size(), 0.0);
  if (total > 0) {
    for (size_t i = 0; i < counts.size(); ++i) f[i] = static_cast<double>(counts[i]) / total;
  }
  return f;
}

inline AuxGradient AuxCoefficients(const AuxLossConfig& config, const AuxSums& s) {
  AuxGradient out;
  out.g.assign(s.e, 0.0);
  if (s.t == 0) return out;
  const double t = static_cast<double>(s.t), e = static_cast<double>(s.e);
  const double mean_max = s.max_p_sum / t;
  double lbl = 0.0, p_sq = 0.0;
  for (int64_t i = 0; i < s.e; ++i) {
    const double p_mean = s.p_sum[i] / t;
    lbl += s.f[i] * p_mean;
    p_sq += p_mean * p_mean;
    out.g[i] =
        config.lbl_coef * e * s.f[i] / t + config.top1_lbl_coef * e * 2.0 * p_mean / (t * mean_max);
  }
  out.values.lbl = e * lbl;
  out.values.z_loss = s.lse_sq_sum / t;
  out.values.top1_lbl = e * p_sq / mean_max;
  out.values.total = config.lbl_coef * out.values.lbl + config.z_coef * out.values.z_loss +
                     config.top1_lbl_coef * out.values.top1_lbl;
  out.top1_argmax = -config.top1_lbl_coef * e * p_sq / (mean_max * mean_max * t);
  out.z_factor = config.z_coef * 2.0 / t;
  return out;
}

// Per-row logsumexp of logits, max and arg max (ties: lower index) of probs.
template <typename S>
void AuxRowStats(const S* logits, const S* probs, int64_t t, int64_t e, std::vector<double>* lse,
                 std::vector<double>* max_p, std::vector<int64_t>* arg_max) {
  lse->assign(t, 0.0);
  max_p->assign(t, 0.0);
  arg_max->assign(t, 0);
  for (int64_t r = 0; r < t; ++r) {
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t c = 0; c < e; ++c) m = std::max(m, double{logits[r * e + c]});
    double sum = 0.0;
    for (int64_t c = 0; c < e; ++c) sum += std::exp(double{logits[r * e + c]} - m);
    (*lse)[r] = m + std::log(sum);
    int64_t best = 0;
    for (int64_t c = 1; c < e; ++c) {
      if (probs[r * e + c] > probs[r * e + best]) best = c;
    }
    (*arg_max)[r] = best;
    (*max_p)[r] = probs[r * e + best];
  }
}

// Values and d_logits [T, E] (when non-null) for shares f [E].
template <typename S>
AuxLossValues AuxLoss(const AuxLossConfig& config, const S* logits, const S* probs, int64_t t,
                      int64_t e, const std::vector<double>& f, S* d_logits) {
  AuxSums sums;
  sums.t = t;
  sums.e = e;
  sums.f = f;
  sums.p_sum.assign(e, 0.0);
  std::vector<double> lse, max_p;
  std::vector<int64_t> arg_max;
  AuxRowStats(logits, probs, t, e, &lse, &max_p, &arg_max);
  for (int64_t r = 0; r < t; ++r) {
    for (int64_t c = 0; c < e; ++c) sums.p_sum[c] += probs[r * e + c];
    sums.lse_sq_sum += lse[r] * lse[r];
    sums.max_p_sum += max_p[r];
  }
  const AuxGradient grad = AuxCoefficients(config, sums);
  if (d_logits != nullptr) {
    for (int64_t r = 0; r < t; ++r) {
      const S* pr = probs + r * e;
      double dot = 0.0;
      for (int64_t c = 0; c < e; ++c) {
        dot += (grad.g[c] + (c == arg_max[r] ? grad.top1_argmax : 0.0)) * pr[c];
      }
      for (int64_t c = 0; c < e; ++c) {
        const double dp = grad.g[c] + (c == arg_max[r] ? grad.top1_argmax : 0.0);
        d_logits[r * e + c] = static_cast<S>(pr[c] * (dp - dot) + grad.z_factor * lse[r] * pr[c]);
      }
    }
  }
  return grad.values;
}

}  // namespace smoe::router_reference
