// Shared helpers of the moe/dispatch tests: Philox-drawn routings and an independent, brute-force
// model of the routing plan.
#pragma once

#include <algorithm>
#include <cstdint>
#include <ostream>
#include <vector>

#include "moe/dispatch/routing_plan.h"
#include "runtime/core/philox.h"
#include "runtime/tensor/tensor.h"
#include "tests/testing/compare.h"

namespace smoe::testing {

enum class Skew { kUniform, kSkewed };
inline void PrintTo(Skew skew, std::ostream* out) {
  *out << (skew == Skew::kUniform ? "uniform" : "skewed");
}

// topk_idx [T, K] i32 on the host with K distinct experts per token, drawn from Philox(seed).
// kSkewed favours low expert ids strongly (u^3), so that capacity overflows and some experts stay
// empty.
inline Tensor RandomRouting(int64_t t_count, int k_count, int e_count, uint64_t seed,
                            Skew skew = Skew::kUniform) {
  Tensor idx = *Tensor::Empty({t_count, k_count}, DType::kI32, Device::Cpu());
  int32_t* out = idx.data<int32_t>();
  uint64_t position = 0;
  std::vector<int32_t> pool(e_count);
  for (int64_t t = 0; t < t_count; ++t) {
    if (skew == Skew::kUniform) {
      // Partial Fisher-Yates: the first K of a random permutation.
      for (int e = 0; e < e_count; ++e) pool[e] = e;
      for (int k = 0; k < k_count; ++k) {
        const int pick = k + static_cast<int>(PhiloxBits(seed, position++) % (e_count - k));
        std::swap(pool[k], pool[pick]);
        out[t * k_count + k] = pool[k];
      }
      continue;
    }
    for (int k = 0; k < k_count; ++k) {
      int32_t e = -1;
      for (int attempt = 0; attempt < 64 && e < 0; ++attempt) {
        const float u = PhiloxUniform(seed, position++);
        const int32_t candidate = static_cast<int32_t>(u * u * u * static_cast<float>(e_count));
        if (std::find(out + t * k_count, out + t * k_count + k, candidate) ==
            out + t * k_count + k) {
          e = candidate;
        }
      }
      for (int32_t c = 0; e < 0; ++c) {  // rare fallback: the smallest unused expert
        if (std::find(out + t * k_count, out + t * k_count + k, c) == out + t * k_count + k) e = c;
      }
      out[t * k_count + k] = e;
    }
  }
  return idx;
}

inline std::vector<int64_t> ToInts(const TensorView& t) {
  std::vector<int64_t> out;
  for (double v : ToDoubles(t)) out.push_back(static_cast<int64_t>(v));
  return out;
}

// The plan computed expert by expert: for each expert, scan the pairs in priority order, keep the
// first C. Deliberately a different algorithm from the pair-by-pair reference.
struct ExpectedPlan {
  std::vector<int64_t> counts, offsets, slots, row_token, row_choice;
  int64_t dropped = 0;
};

inline ExpectedPlan BruteForcePlan(const std::vector<int64_t>& idx, int64_t t_count,
                                   int64_t k_count, int64_t e_count, int64_t capacity) {
  ExpectedPlan plan;
  plan.slots.assign(t_count * k_count, -1);
  plan.offsets.push_back(0);
  for (int64_t e = 0; e < e_count; ++e) {
    int64_t kept = 0;
    for (int64_t k = 0; k < k_count; ++k) {
      for (int64_t t = 0; t < t_count; ++t) {
        if (idx[t * k_count + k] != e) continue;
        if (capacity >= 0 && kept >= capacity) continue;
        plan.slots[t * k_count + k] = plan.offsets.back() + kept;
        plan.row_token.push_back(t);
        plan.row_choice.push_back(t * k_count + k);
        ++kept;
      }
    }
    plan.counts.push_back(kept);
    plan.offsets.push_back(plan.offsets.back() + kept);
  }
  plan.dropped = t_count * k_count - plan.offsets.back();
  return plan;
}

}  // namespace smoe::testing
