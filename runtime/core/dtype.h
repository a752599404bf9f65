// Element types of tensors: f32, bf16, i32, i64.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ostream>
#include "absl/strings/string_view.h"

#include "runtime/core/bf16.h"
#include "runtime/core/status.h"

namespace smoe {

enum class DType : uint8_t { kF32, kBF16, kI32, kI64 };

constexpr size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
      return 2;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
  }
  return 0;
}

constexpr absl::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
    case DType::kI32:
      return "i32";
    case DType::kI64:
      return "i64";
  }
  return "?";
}

constexpr bool IsFloating(DType dtype) { return dtype == DType::kF32 || dtype == DType::kBF16; }

inline std::ostream& operator<<(std::ostream& out, DType dtype) { return out << DTypeName(dtype); }

// Parses "f32", "bf16", "i32" or "i64".
[[nodiscard]] StatusOr<DType> ParseDType(absl::string_view name);

// The DType of a C++ element type: DTypeOf<float>() == DType::kF32.
template <typename T>
constexpr DType DTypeOf();
template <>
constexpr DType DTypeOf<float>() {
  return DType::kF32;
}
template <>
constexpr DType DTypeOf<BF16>() {
  return DType::kBF16;
}
template <>
constexpr DType DTypeOf<int32_t>() {
  return DType::kI32;
}
template <>
constexpr DType DTypeOf<int64_t>() {
  return DType::kI64;
}

}  // namespace smoe
