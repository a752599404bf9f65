#include "runtime/core/shape.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace smoe {

int64_t Shape::NumElements() const {
  int64_t count = 1;
  for (int64_t dim : dims_) count *= dim;
  return count;
}

absl::InlinedVector<int64_t, 4> Shape::ContiguousStrides() const {
  absl::InlinedVector<int64_t, 4> strides(dims_.size());
  int64_t stride = 1;
  for (int axis = rank() - 1; axis >= 0; --axis) {
    strides[axis] = stride;
    stride *= dims_[axis];
  }
  return strides;
}

std::string Shape::ToString() const { return absl::StrCat("[", absl::StrJoin(dims_, ", "), "]"); }

}  // namespace smoe
