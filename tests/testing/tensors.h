// CPU tensor factories for tests: empty, Philox normals (seeded, never zeros), and host vectors
// to and from tensors. Failures abort (MOE_CHECK): they are bugs in the test, not results.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe::testing {

inline ExecContext& Cpu() { return ExecContext::Cpu(); }

// Contiguous, uninitialized.
inline Tensor HostTensor(Shape shape, DType dtype = DType::kF32) {
  StatusOr<Tensor> t = Tensor::Empty(shape, dtype, Device::Cpu());
  MOE_CHECK(t.ok()) << t.status().ToString();
  return *std::move(t);
}

// mean + stddev * N(0, 1), Philox stream `seed` from offset 0, rounded to `dtype` (f32 or bf16).
inline Tensor RandomNormal(Shape shape, DType dtype, uint64_t seed, float stddev = 1.0f,
                           float mean = 0.0f) {
  Tensor t = HostTensor(shape, dtype);
  MOE_CHECK_OK(FillNormal(Cpu(), t, seed, 0, mean, stddev));
  return t;
}
inline Tensor RandomNormal(Shape shape, uint64_t seed, float stddev = 1.0f) {
  return RandomNormal(shape, DType::kF32, seed, stddev);
}

inline Tensor FromFloats(const std::vector<float>& values, Shape shape) {
  Tensor t = HostTensor(shape, DType::kF32);
  MOE_CHECK_EQ(static_cast<int64_t>(values.size()), t.numel());
  std::copy(values.begin(), values.end(), t.data<float>());
  return t;
}

inline Tensor FromInts(const std::vector<int32_t>& values, Shape shape) {
  Tensor t = HostTensor(shape, DType::kI32);
  MOE_CHECK_EQ(static_cast<int64_t>(values.size()), t.numel());
  std::copy(values.begin(), values.end(), t.data<int32_t>());
  return t;
}
inline Tensor FromInts(const std::vector<int32_t>& values) {
  return FromInts(values, {static_cast<int64_t>(values.size())});
}

// Rounded to f32, then cast to `dtype` (f32 or bf16).
inline Tensor FromDoubles(const std::vector<double>& values, Shape shape,
                          DType dtype = DType::kF32) {
  Tensor f = HostTensor(shape, DType::kF32);
  MOE_CHECK_EQ(static_cast<int64_t>(values.size()), f.numel());
  for (size_t i = 0; i < values.size(); ++i) f.data<float>()[i] = static_cast<float>(values[i]);
  if (dtype == DType::kF32) return f;
  Tensor t = HostTensor(shape, dtype);
  MOE_CHECK_OK(Cast(Cpu(), f, t));
  return t;
}

// The values of a contiguous i32 CPU tensor.
inline std::vector<int32_t> ToInts(const TensorView& t) {
  const int32_t* p = t.data<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

}  // namespace smoe::testing
