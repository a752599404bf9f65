#include "runtime/tensor/tensor.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace smoe {

TensorView::TensorView(void* data, DType dtype, Shape shape, Device device)
    : data_(data),
      dtype_(dtype),
      shape_(shape),
      strides_(shape.ContiguousStrides()),
      device_(device) {}

TensorView::TensorView(void* data, DType dtype, Shape shape, Strides strides, Device device)
    : data_(data), dtype_(dtype), shape_(shape), strides_(std::move(strides)), device_(device) {
  MOE_CHECK_EQ(static_cast<int>(strides_.size()), shape_.rank());
}

bool TensorView::is_contiguous() const {
  int64_t expected = 1;
  for (int axis = rank() - 1; axis >= 0; --axis) {
    if (shape_[axis] != 1 && strides_[axis] != expected) return false;
    expected *= shape_[axis];
  }
  return true;
}

TensorView TensorView::Rows(int64_t begin, int64_t end) const {
  MOE_CHECK(rank() >= 1 && 0 <= begin && begin <= end && end <= shape_[0])
      << "rows [" << begin << ", " << end << ") of " << ToString();
  Shape shape = shape_;
  shape[0] = end - begin;
  char* base = static_cast<char*>(data_);
  void* start = base == nullptr ? nullptr : base + begin * strides_[0] * DTypeSize(dtype_);
  return TensorView(start, dtype_, shape, strides_, device_);
}

StatusOr<TensorView> TensorView::Reshape(Shape shape) const {
  if (!is_contiguous()) return BadArgument("reshape", ToString(), "a contiguous tensor");
  if (shape.NumElements() != numel()) {
    return BadArgument("reshape", shape.ToString(),
                       absl::StrCat("a shape with ", numel(), " elements"));
  }
  return TensorView(data_, dtype_, shape, device_);
}

std::string TensorView::ToString() const {
  return absl::StrCat(DTypeName(dtype_), shape_.ToString(), " on ", device_.ToString());
}

StatusOr<Tensor> Tensor::Empty(Shape shape, DType dtype, Device device, Allocator* allocator) {
  for (int64_t dim : shape) {
    if (dim < 0) return BadArgument("shape", shape.ToString(), "non-negative extents");
  }
  if (allocator == nullptr) {
    MOE_ASSIGN_OR_RETURN(allocator, AllocatorFor(device));
  }
  Tensor tensor;
  tensor.storage_ = std::make_shared<Storage>();
  tensor.storage_->allocator = allocator;
  const size_t bytes = static_cast<size_t>(shape.NumElements()) * DTypeSize(dtype);
  MOE_ASSIGN_OR_RETURN(tensor.storage_->data, allocator->Allocate(bytes));
  tensor.view_ = TensorView(tensor.storage_->data, dtype, shape, device);
  return tensor;
}

Status CheckTensor(absl::string_view name, const TensorView& t, DType dtype, Device device,
                   const Shape& shape) {
  if (t.dtype() != dtype) {
    return BadArgument(absl::StrCat(name, ".dtype"), DTypeName(t.dtype()), DTypeName(dtype));
  }
  if (t.device() != device) {
    return BadArgument(absl::StrCat(name, ".device"), t.device().ToString(), device.ToString());
  }
  bool match = t.rank() == shape.rank();
  for (int axis = 0; match && axis < shape.rank(); ++axis) {
    match = shape[axis] == -1 || shape[axis] == t.dim(axis);
  }
  if (!match) {
    const std::string expected = absl::StrCat(
        "[",
        absl::StrJoin(shape, ", ",
                      [](std::string* out, int64_t d) {
                        absl::StrAppend(out, d == -1 ? std::string("*") : absl::StrCat(d));
                      }),
        "]");
    return BadArgument(absl::StrCat(name, ".shape"), t.shape().ToString(), expected);
  }
  return absl::OkStatus();
}

Status CheckContiguous(absl::string_view name, const TensorView& t) {
  if (t.is_contiguous()) return absl::OkStatus();
  return BadArgument(absl::StrCat(name, ".strides"), absl::StrJoin(t.strides(), ","),
                     "contiguous row-major strides");
}

Status CheckContiguousTensor(absl::string_view name, const TensorView& t, DType dtype,
                             Device device, const Shape& shape) {
  MOE_RETURN_IF_ERROR(CheckTensor(name, t, dtype, device, shape));
  return CheckContiguous(name, t);
}

Status CheckFloatingDType(absl::string_view name, const TensorView& t) {
  if (IsFloating(t.dtype())) return absl::OkStatus();
  return BadArgument(absl::StrCat(name, ".dtype"), DTypeName(t.dtype()), "f32 or bf16");
}

Status CheckOnDevice(absl::string_view name, const TensorView& t, Device ctx_device) {
  if (t.device() != ctx_device) {
    return BadArgument(absl::StrCat(name, ".device"), t.device().ToString(),
                       absl::StrCat(ctx_device.ToString(), " (the context's device)"));
  }
  return CheckContiguous(name, t);
}

}  // namespace smoe
