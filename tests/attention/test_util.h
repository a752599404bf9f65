// Helpers shared by the attention tests.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "runtime/tensor/tensor.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/tensors.h"

namespace smoe::attention_test {

// Positions [begin, end) of a [B, S, ...] CPU tensor, copied into a new [B, end - begin, ...].
inline Tensor Slice(const Tensor& t, int64_t begin, int64_t end) {
  Shape shape = t.shape();
  shape[1] = end - begin;
  Tensor out = testing::HostTensor(shape, t.dtype());
  const int64_t B = t.dim(0), S = t.dim(1);
  const size_t position_bytes = t.numel() / std::max<int64_t>(1, B * S) * DTypeSize(t.dtype());
  for (int64_t b = 0; b < B; ++b) {
    std::memcpy(static_cast<char*>(out.data()) + b * (end - begin) * position_bytes,
                static_cast<const char*>(t.data()) + (b * S + begin) * position_bytes,
                (end - begin) * position_bytes);
  }
  return out;
}

// Concatenation of vectors (gradient checks run over several inputs at once).
inline std::vector<double> Concat(std::initializer_list<std::vector<double>> parts) {
  std::vector<double> all;
  for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
  return all;
}

inline double WeightedSum(const std::vector<double>& w, const std::vector<double>& y) {
  double sum = 0.0;
  for (size_t i = 0; i < y.size(); ++i) sum += w[i] * y[i];
  return sum;
}

}  // namespace smoe::attention_test
