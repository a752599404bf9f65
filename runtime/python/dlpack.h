// Zero-copy exchange of tensors with Python through DLPack (https://dmlc.github.io/dlpack/).
//
// Consuming: Borrow() accepts an object with __dlpack__ (torch tensors, NumPy arrays, ...) or a
// "dltensor" capsule, marks the capsule "used_dltensor" (the protocol's hand-over) and keeps the
// producer's DLManagedTensor until the BorrowedTensor dies, when its deleter runs. Only what our
// kernels take is accepted: dtypes f32, bf16, i32, i64; CPU or CUDA memory; contiguous row-major
// strides (extents of 1 may carry any stride). Anything else is InvalidArgument naming the
// argument, the value seen and the value expected.
// Producing: ToCapsule() exports a Tensor (sharing its storage) as a "dltensor" capsule that
// torch.utils.dlpack.from_dlpack / numpy.from_dlpack take without a copy.
//
// The ABI structs below are declared from the DLPack specification (v0.8 layout, unversioned).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>

#include "runtime/core/status.h"
#include "runtime/tensor/tensor.h"

namespace smoe::python {

namespace dlpack {

enum DeviceType : int32_t { kDLCPU = 1, kDLCUDA = 2 };
enum TypeCode : uint8_t { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4 };

struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null means compact row-major
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

}  // namespace dlpack

// A view of a Python-owned tensor, valid while this object lives.
class BorrowedTensor {
 public:
  BorrowedTensor() = default;
  BorrowedTensor(dlpack::DLManagedTensor* managed, TensorView view)
      : managed_(managed), view_(view) {}
  BorrowedTensor(BorrowedTensor&& other) noexcept { *this = std::move(other); }
  BorrowedTensor& operator=(BorrowedTensor&& other) noexcept;
  BorrowedTensor(const BorrowedTensor&) = delete;
  BorrowedTensor& operator=(const BorrowedTensor&) = delete;
  ~BorrowedTensor();

  const TensorView& view() const { return view_; }
  // Gives up the producer's tensor without running its deleter.
  dlpack::DLManagedTensor* Release() && {
    dlpack::DLManagedTensor* managed = managed_;
    managed_ = nullptr;
    return managed;
  }
  operator const TensorView&() const { return view_; }  // NOLINT: views are the currency of ops

 private:
  dlpack::DLManagedTensor* managed_ = nullptr;
  TensorView view_;
};

// See the file comment. `name` names the argument in errors. None gives an empty view (the
// "absent" optional tensor of the ops) only when `allow_none`.
[[nodiscard]] StatusOr<BorrowedTensor> Borrow(pybind11::handle object, absl::string_view name,
                                              bool allow_none = false);

// A "dltensor" capsule sharing `tensor`'s storage (the capsule keeps it alive, and then the
// consumer's tensor does). `keep_alive`, when given, is released with the storage.
pybind11::capsule ToCapsule(const Tensor& tensor, std::shared_ptr<void> keep_alive = nullptr);

}  // namespace smoe::python
