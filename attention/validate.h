// Argument checks shared by the attention ops; each failure is InvalidArgument naming the field,
// the value seen and the value expected (BadArgument).
#pragma once

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe::attention_internal {

// t holds f32 or bf16.
inline Status CheckFloating(absl::string_view name, const TensorView& t) {
  if (t.dtype() != DType::kF32 && t.dtype() != DType::kBF16) {
    return BadArgument(absl::StrCat(name, ".dtype"), DTypeName(t.dtype()), "f32 or bf16");
  }
  return absl::OkStatus();
}

// t has `dtype` and `shape` (-1: any extent), lives on ctx's device and is contiguous.
inline Status CheckArg(absl::string_view name, const ExecContext& ctx, const TensorView& t,
                       DType dtype, const Shape& shape) {
  MOE_RETURN_IF_ERROR(CheckTensor(name, t, dtype, ctx.device(), shape));
  return CheckContiguous(name, t);
}

}  // namespace smoe::attention_internal
