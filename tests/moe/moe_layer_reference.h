// An independent reference of the whole MoE layer in double: dense loops, one expert MLP per
// (token, choice), no routing plan, no grouped GEMM. Used for forward checks and as the function
// whose fp64 finite differences check the layer's analytic gradients.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace smoe::testing {

struct DenseMoE {
  int64_t m, h, e, k;
  bool renormalize = false;
  double capacity_factor = 0.0;  // <= 0: dropless
  double lbl_coef = 0.0, z_coef = 0.0, top1_lbl_coef = 0.0;
};

struct DenseMoEWeights {
  std::vector<double> w_gate;      // [M, E]
  std::vector<double> w1, w3, w2;  // [E, M, H], [E, M, H], [E, H, M]
};

struct DenseMoEResult {
  std::vector<double> y;    // [T, M]
  std::vector<int> choice;  // [T, K] chosen experts
  std::vector<bool> kept;   // [T, K]
  double aux_total = 0.0;
};

inline DenseMoEResult DenseMoEForward(const DenseMoE& c, const std::vector<double>& x,
                                      const DenseMoEWeights& w) {
  const int64_t t_count = static_cast<int64_t>(x.size()) / c.m;
  DenseMoEResult r;
  r.y.assign(t_count * c.m, 0.0);
  r.choice.assign(t_count * c.k, 0);
  r.kept.assign(t_count * c.k, true);
  std::vector<double> probs(t_count * c.e), gates(t_count * c.k);
  double z_sum = 0.0;
  for (int64_t t = 0; t < t_count; ++t) {
    std::vector<double> logit(c.e, 0.0);
    for (int64_t j = 0; j < c.e; ++j) {
      for (int64_t i = 0; i < c.m; ++i) logit[j] += x[t * c.m + i] * w.w_gate[i * c.e + j];
    }
    const double max = *std::max_element(logit.begin(), logit.end());
    double sum = 0.0;
    for (double v : logit) sum += std::exp(v - max);
    z_sum += std::pow(max + std::log(sum), 2);
    for (int64_t j = 0; j < c.e; ++j) probs[t * c.e + j] = std::exp(logit[j] - max) / sum;
    std::vector<int> order(c.e);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return logit[a] > logit[b]; });  // ties: lower index
    double chosen = 0.0;
    for (int64_t q = 0; q < c.k; ++q) {
      r.choice[t * c.k + q] = order[q];
      gates[t * c.k + q] = probs[t * c.e + order[q]];
      chosen += gates[t * c.k + q];
    }
    if (c.renormalize) {
      for (int64_t q = 0; q < c.k; ++q) gates[t * c.k + q] /= chosen;
    }
  }
  // Capacity in priority order: all first choices (token order), then second choices, ...
  if (c.capacity_factor > 0) {
    const int64_t cap = static_cast<int64_t>(std::ceil(c.capacity_factor * t_count * c.k / c.e));
    std::vector<int64_t> used(c.e, 0);
    for (int64_t q = 0; q < c.k; ++q) {
      for (int64_t t = 0; t < t_count; ++t) {
        const int ex = r.choice[t * c.k + q];
        r.kept[t * c.k + q] = used[ex]++ < cap;
      }
    }
  }
  // Experts: y[t] += gate * W2^T (silu(W1^T x) * W3^T x).
  for (int64_t t = 0; t < t_count; ++t) {
    for (int64_t q = 0; q < c.k; ++q) {
      if (!r.kept[t * c.k + q]) continue;
      const int ex = r.choice[t * c.k + q];
      std::vector<double> act(c.h);
      for (int64_t j = 0; j < c.h; ++j) {
        double h1 = 0.0, h3 = 0.0;
        for (int64_t i = 0; i < c.m; ++i) {
          h1 += x[t * c.m + i] * w.w1[(ex * c.m + i) * c.h + j];
          h3 += x[t * c.m + i] * w.w3[(ex * c.m + i) * c.h + j];
        }
        act[j] = h1 / (1.0 + std::exp(-h1)) * h3;
      }
      for (int64_t i = 0; i < c.m; ++i) {
        double out = 0.0;
        for (int64_t j = 0; j < c.h; ++j) out += act[j] * w.w2[(ex * c.h + j) * c.m + i];
        r.y[t * c.m + i] += gates[t * c.k + q] * out;
      }
    }
  }
  // Aux losses. f counts routed (token, choice) pairs before drops and is a constant.
  std::vector<double> f(c.e, 0.0), p_mean(c.e, 0.0);
  for (int ex : r.choice) f[ex] += 1.0 / static_cast<double>(t_count * c.k);
  double top1_mean = 0.0;
  for (int64_t t = 0; t < t_count; ++t) {
    double top = 0.0;
    for (int64_t j = 0; j < c.e; ++j) {
      p_mean[j] += probs[t * c.e + j] / t_count;
      top = std::max(top, probs[t * c.e + j]);
    }
    top1_mean += top / t_count;
  }
  double lbl = 0.0, fhat_sq = 0.0;
  for (int64_t j = 0; j < c.e; ++j) {
    lbl += c.e * f[j] * p_mean[j];
    fhat_sq += p_mean[j] * p_mean[j];
  }
  const double top1_lbl = c.e * fhat_sq / top1_mean;
  r.aux_total = c.lbl_coef * lbl + c.z_coef * z_sum / t_count + c.top1_lbl_coef * top1_lbl;
  return r;
}

}  // namespace smoe::testing
