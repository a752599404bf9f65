// TensorView (non-owning) and Tensor (owning): row-major, strided, on one device.
//
// A view is a pointer, a dtype, a shape, strides in elements, and a device. It never owns memory
// and is cheap to copy. A Tensor owns its storage (shared between copies of the Tensor, freed with
// the last one) and hands out views. Most ops require contiguous views; they say so and check.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/container/inlined_vector.h"
#include "runtime/core/dtype.h"
#include "runtime/core/shape.h"
#include "runtime/core/status.h"
#include "runtime/device/device.h"
#include "runtime/memory/allocator.h"

namespace smoe {

using Strides = absl::InlinedVector<int64_t, 4>;

class TensorView {
 public:
  TensorView() = default;
  // Contiguous view.
  TensorView(void* data, DType dtype, Shape shape, Device device);
  TensorView(void* data, DType dtype, Shape shape, Strides strides, Device device);

  void* data() const { return data_; }
  // Typed pointer; the dtype must match T (checked).
  template <typename T>
  T* data() const {
    MOE_CHECK(DTypeOf<T>() == dtype_)
        << "data<" << DTypeName(DTypeOf<T>()) << ">() on a " << DTypeName(dtype_) << " tensor";
    return static_cast<T*>(data_);
  }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  const Strides& strides() const { return strides_; }
  Device device() const { return device_; }
  int rank() const { return shape_.rank(); }
  int64_t dim(int axis) const { return shape_[axis]; }
  int64_t numel() const { return shape_.NumElements(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype_); }
  bool is_contiguous() const;
  bool empty() const { return numel() == 0; }

  // Rows [begin, end) along axis 0 (same strides; contiguous if this view is).
  TensorView Rows(int64_t begin, int64_t end) const;
  // The same contiguous data under another shape with the same element count.
  [[nodiscard]] StatusOr<TensorView> Reshape(Shape shape) const;
  // "f32[2, 3] on cpu".
  std::string ToString() const;

 private:
  void* data_ = nullptr;
  DType dtype_ = DType::kF32;
  Shape shape_;
  Strides strides_;
  Device device_;
};

class Tensor {
 public:
  Tensor() = default;
  // Uninitialized contiguous tensor from the device's default allocator (or `allocator`).
  [[nodiscard]] static StatusOr<Tensor> Empty(Shape shape, DType dtype, Device device,
                                              Allocator* allocator = nullptr);

  const TensorView& view() const { return view_; }
  operator const TensorView&() const { return view_; }  // NOLINT: views are the currency of ops

  void* data() const { return view_.data(); }
  template <typename T>
  T* data() const {
    return view_.data<T>();
  }
  DType dtype() const { return view_.dtype(); }
  const Shape& shape() const { return view_.shape(); }
  Device device() const { return view_.device(); }
  int rank() const { return view_.rank(); }
  int64_t dim(int axis) const { return view_.dim(axis); }
  int64_t numel() const { return view_.numel(); }
  size_t nbytes() const { return view_.nbytes(); }
  bool defined() const { return storage_ != nullptr || view_.numel() == 0; }

 private:
  struct Storage {
    Allocator* allocator = nullptr;
    void* data = nullptr;
    ~Storage() { allocator->Free(data); }
  };
  std::shared_ptr<Storage> storage_;
  TensorView view_;
};

// InvalidArgument unless `t` has `dtype`, is on `device` and has `shape`, where a -1 in `shape`
// matches any extent. The message names `name`, the value seen and the value expected.
[[nodiscard]] Status CheckTensor(absl::string_view name, const TensorView& t, DType dtype,
                                 Device device, const Shape& shape);
// InvalidArgument unless `t` is contiguous.
[[nodiscard]] Status CheckContiguous(absl::string_view name, const TensorView& t);
// CheckTensor, then CheckContiguous: the usual check of an op's tensor argument.
[[nodiscard]] Status CheckContiguousTensor(absl::string_view name, const TensorView& t, DType dtype,
                                           Device device, const Shape& shape);
// InvalidArgument ("<name>.dtype: got i32, expected f32 or bf16") unless `t` is floating.
[[nodiscard]] Status CheckFloatingDType(absl::string_view name, const TensorView& t);
// InvalidArgument unless `t` is on `ctx_device` (an op's ExecContext device, named so in the
// message) and contiguous; for ops that take any dtype and shape.
[[nodiscard]] Status CheckOnDevice(absl::string_view name, const TensorView& t, Device ctx_device);

}  // namespace smoe
