#include "runtime/core/dtype.h"

namespace smoe {

StatusOr<DType> ParseDType(absl::string_view name) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kI32, DType::kI64}) {
    if (name == DTypeName(dtype)) return dtype;
  }
  return BadArgument("dtype", name, "one of f32, bf16, i32, i64");
}

}  // namespace smoe
