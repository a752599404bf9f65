// Helpers shared by the attention tests.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/tensor/tensor.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe::attention_test {

// A CPU tensor of normals (Philox, seeded), never zeros.
inline Tensor RandomCpu(Shape shape, uint64_t seed, float stddev = 1.0f,
                        DType dtype = DType::kF32) {
  Tensor t = *Tensor::Empty(shape, dtype, Device::Cpu());
  MOE_CHECK_OK(FillNormal(ExecContext::Cpu(), t, seed, 0, 0.0f, stddev));
  return t;
}

inline Tensor EmptyCpu(Shape shape, DType dtype = DType::kF32) {
  return *Tensor::Empty(shape, dtype, Device::Cpu());
}

inline Tensor FromDoubles(const std::vector<double>& values, Shape shape) {
  Tensor t = EmptyCpu(shape);
  MOE_CHECK_EQ(static_cast<int64_t>(values.size()), t.numel());
  for (size_t i = 0; i < values.size(); ++i) t.data<float>()[i] = static_cast<float>(values[i]);
  return t;
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
