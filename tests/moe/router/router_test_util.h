// Host tensor helpers for the router tests.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/tensor/tensor.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe::router_testing {

inline Tensor HostTensor(Shape shape, DType dtype) {
  StatusOr<Tensor> t = Tensor::Empty(shape, dtype, Device::Cpu());
  MOE_CHECK(t.ok()) << t.status().ToString();
  return *std::move(t);
}

inline Tensor F32(Shape shape, const std::vector<float>& values) {
  Tensor t = HostTensor(shape, DType::kF32);
  MOE_CHECK_EQ(static_cast<int64_t>(values.size()), t.numel());
  std::copy(values.begin(), values.end(), t.data<float>());
  return t;
}

inline Tensor I32(Shape shape, const std::vector<int32_t>& values) {
  Tensor t = HostTensor(shape, DType::kI32);
  MOE_CHECK_EQ(static_cast<int64_t>(values.size()), t.numel());
  std::copy(values.begin(), values.end(), t.data<int32_t>());
  return t;
}

inline Tensor Normal(Shape shape, uint64_t seed, float stddev = 1.0f, DType dtype = DType::kF32) {
  Tensor t = HostTensor(shape, dtype);
  MOE_CHECK_OK(FillNormal(ExecContext::Cpu(), t, seed, 0, 0.0f, stddev));
  return t;
}

inline std::vector<double> AsDoubles(const Tensor& t) {
  const float* p = t.data<float>();
  return std::vector<double>(p, p + t.numel());
}

inline std::vector<int32_t> AsInts(const Tensor& t) {
  const int32_t* p = t.data<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

}  // namespace smoe::router_testing
