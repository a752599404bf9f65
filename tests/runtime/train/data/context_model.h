// A byte-level order-k context model with Witten-Bell interpolation, used by the tests to
// calibrate the synthetic corpus (how predictable it is from local context). Counts live in flat
// open-addressing tables keyed by hashes of (order, context[, next byte]); a hash collision merges
// two contexts, which can only make the model worse, so measured cross-entropies are upper bounds.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/core/status.h"

namespace smoe::testing {

class FlatCounts {
 public:
  explicit FlatCounts(int log2_capacity)
      : mask_((uint64_t{1} << log2_capacity) - 1), keys_(mask_ + 1, 0), values_(mask_ + 1, 0) {}

  // The count slot of `key` (key != 0), inserted at zero when absent.
  uint32_t& Slot(uint64_t key) {
    uint64_t i = key & mask_;
    while (keys_[i] != 0 && keys_[i] != key) i = (i + 1) & mask_;
    if (keys_[i] == 0) {
      keys_[i] = key;
      MOE_CHECK_LT(++size_, (mask_ + 1) / 4 * 3) << "context model table full";
    }
    return values_[i];
  }
  uint64_t size() const { return size_; }
  uint32_t Get(uint64_t key) const {
    uint64_t i = key & mask_;
    while (keys_[i] != 0) {
      if (keys_[i] == key) return values_[i];
      i = (i + 1) & mask_;
    }
    return 0;
  }

 private:
  uint64_t mask_;
  uint64_t size_ = 0;
  std::vector<uint64_t> keys_;
  std::vector<uint32_t> values_;
};

class ContextModel {
 public:
  // Tables of 2^log2_capacity (pairs) and 2^(log2_capacity - 1) (contexts) slots.
  ContextModel(int max_order, int log2_capacity)
      : max_order_(max_order),
        pairs_(log2_capacity),
        contexts_(log2_capacity - 1),
        types_(log2_capacity - 1) {}

  uint64_t num_pairs() const { return pairs_.size(); }
  uint64_t num_contexts() const { return contexts_.size(); }

  void Train(const std::string& text) {
    for (size_t pos = 0; pos < text.size(); ++pos) {
      const uint8_t next = static_cast<uint8_t>(text[pos]);
      uint64_t h = kSeed;
      for (int order = 0; order <= max_order_ && order <= static_cast<int>(pos); ++order) {
        if (order > 0) h = Mix(h, static_cast<uint8_t>(text[pos - order]));
        uint32_t& pair = pairs_.Slot(Key(Mix(h, 256 + next)));
        if (pair++ == 0) ++types_.Slot(Key(h));
        ++contexts_.Slot(Key(h));
      }
    }
  }

  // Cross-entropy in nats/byte of `text` for every order 0..max_order (index = order), each byte
  // predicted from the bytes before it in `text` (the first max_order bytes are skipped).
  std::vector<double> CrossEntropy(const std::string& text) const {
    std::vector<double> total(max_order_ + 1, 0.0);
    int64_t n = 0;
    for (size_t pos = max_order_; pos < text.size(); ++pos) {
      const uint8_t next = static_cast<uint8_t>(text[pos]);
      double p = 1.0 / 256.0;
      uint64_t h = kSeed;
      for (int order = 0; order <= max_order_; ++order) {
        if (order > 0) h = Mix(h, static_cast<uint8_t>(text[pos - order]));
        const double c = contexts_.Get(Key(h));
        if (c > 0) {
          const double t = types_.Get(Key(h));
          const double pair = pairs_.Get(Key(Mix(h, 256 + next)));
          p = (pair + t * p) / (c + t);
        }
        total[order] -= std::log(p);
      }
      ++n;
    }
    for (double& v : total) v /= static_cast<double>(n);
    return total;
  }

 private:
  static constexpr uint64_t kSeed = 0x243F6A8885A308D3ull;
  static uint64_t Mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 29);
  }
  static uint64_t Key(uint64_t h) { return h | 1; }

  int max_order_;
  FlatCounts pairs_, contexts_, types_;
};

// Byte-unigram entropy in nats/byte.
inline double UnigramEntropy(const std::string& text) {
  double counts[256] = {};
  for (unsigned char c : text) counts[c] += 1;
  double h = 0;
  for (double c : counts) {
    if (c > 0) {
      const double p = c / static_cast<double>(text.size());
      h -= p * std::log(p);
    }
  }
  return h;
}

}  // namespace smoe::testing
