#include "runtime/python/dlpack.h"

#include <Python.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace smoe::python {
namespace py = pybind11;
using dlpack::DLManagedTensor;

namespace {

constexpr const char* kCapsuleName = "dltensor";
constexpr const char* kUsedCapsuleName = "used_dltensor";

StatusOr<DType> DTypeFromDL(const dlpack::DLDataType& t, absl::string_view name) {
  if (t.lanes == 1) {
    if (t.code == dlpack::kDLFloat && t.bits == 32) return DType::kF32;
    if (t.code == dlpack::kDLBfloat && t.bits == 16) return DType::kBF16;
    if (t.code == dlpack::kDLInt && t.bits == 32) return DType::kI32;
    if (t.code == dlpack::kDLInt && t.bits == 64) return DType::kI64;
  }
  static constexpr const char* kCodes[] = {"int",    "uint",    "float", "opaque",
                                           "bfloat", "complex", "bool"};
  const std::string code = t.code < 7 ? kCodes[t.code] : absl::StrCat("code", t.code);
  return BadArgument(
      absl::StrCat(name, ".dtype"),
      absl::StrCat(code, static_cast<int>(t.bits), t.lanes == 1 ? "" : absl::StrCat("x", t.lanes)),
      "float32, bfloat16, int32 or int64");
}

dlpack::DLDataType DLFromDType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return {dlpack::kDLFloat, 32, 1};
    case DType::kBF16:
      return {dlpack::kDLBfloat, 16, 1};
    case DType::kI32:
      return {dlpack::kDLInt, 32, 1};
    case DType::kI64:
      return {dlpack::kDLInt, 64, 1};
  }
  return {dlpack::kDLFloat, 32, 1};
}

// Takes ownership of the capsule's tensor per the protocol: rename, then we call the deleter.
StatusOr<DLManagedTensor*> TakeFromCapsule(py::handle capsule, absl::string_view name) {
  if (!PyCapsule_IsValid(capsule.ptr(), kCapsuleName)) {
    return BadArgument(name, "a capsule that is not an unconsumed \"dltensor\"",
                       "a tensor or a fresh DLPack capsule");
  }
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), kCapsuleName));
  if (managed == nullptr || PyCapsule_SetName(capsule.ptr(), kUsedCapsuleName) != 0) {
    PyErr_Clear();
    return absl::InternalError(absl::StrCat(name, ": could not take the DLPack capsule"));
  }
  return managed;
}

}  // namespace

BorrowedTensor& BorrowedTensor::operator=(BorrowedTensor&& other) noexcept {
  if (this != &other) {
    if (managed_ != nullptr && managed_->deleter != nullptr) managed_->deleter(managed_);
    managed_ = other.managed_;
    view_ = other.view_;
    other.managed_ = nullptr;  // the moved-from view may dangle: it is never used again
  }
  return *this;
}

BorrowedTensor::~BorrowedTensor() {
  if (managed_ != nullptr && managed_->deleter != nullptr) managed_->deleter(managed_);
}

StatusOr<BorrowedTensor> Borrow(py::handle object, absl::string_view name, bool allow_none) {
  if (object.is_none()) {
    if (allow_none) return BorrowedTensor();
    return BadArgument(name, "None", "a tensor");
  }
  py::object capsule;
  if (PyCapsule_CheckExact(object.ptr())) {
    capsule = py::reinterpret_borrow<py::object>(object);
  } else if (py::hasattr(object, "__dlpack__")) {
    try {
      // No stream argument: the producer does not synchronize; our work runs on the stream the
      // caller passes, which for torch tensors is torch's current stream.
      capsule = object.attr("__dlpack__")();
    } catch (py::error_already_set& e) {
      return BadArgument(name, absl::StrCat("a tensor that cannot be exported (", e.what(), ")"),
                         "a DLPack-exportable tensor (detached, strided)");
    }
  } else {
    return BadArgument(name, std::string(py::str(py::type::of(object).attr("__name__"))),
                       "a tensor supporting DLPack (torch.Tensor, numpy.ndarray) or a capsule");
  }
  MOE_ASSIGN_OR_RETURN(DLManagedTensor * managed, TakeFromCapsule(capsule, name));
  // From here the deleter runs on every path: `owner` holds the tensor until the view is ready.
  BorrowedTensor owner(managed, TensorView());
  const dlpack::DLTensor& dl = managed->dl_tensor;

  Device device;
  if (dl.device.device_type == dlpack::kDLCPU) {
    device = Device::Cpu();
  } else if (dl.device.device_type == dlpack::kDLCUDA) {
    device = Device::Cuda(dl.device.device_id);
  } else {
    return BadArgument(absl::StrCat(name, ".device"),
                       absl::StrCat("DLPack device type ", dl.device.device_type),
                       "cpu or cuda memory");
  }
  MOE_ASSIGN_OR_RETURN(DType dtype, DTypeFromDL(dl.dtype, name));
  if (dl.ndim < 0 || dl.ndim > 8) {
    return BadArgument(absl::StrCat(name, ".ndim"), absl::StrCat(dl.ndim), "0 to 8");
  }
  std::vector<int64_t> dims(dl.shape, dl.shape + dl.ndim);
  bool empty = false;
  for (int64_t d : dims) empty = empty || d == 0;
  if (dl.strides != nullptr && !empty) {
    int64_t expected = 1;
    for (int i = dl.ndim - 1; i >= 0; --i) {
      if (dims[i] != 1 && dl.strides[i] != expected) {
        std::vector<int64_t> strides(dl.strides, dl.strides + dl.ndim);
        return BadArgument(
            name,
            absl::StrCat("a non-contiguous tensor (shape [", absl::StrJoin(dims, ", "),
                         "], strides [", absl::StrJoin(strides, ", "), "])"),
            "a contiguous tensor (call .contiguous())");
      }
      expected *= dims[i];
    }
  }
  void* data = static_cast<char*>(dl.data) + dl.byte_offset;
  Shape shape(dims.begin(), dims.end());
  TensorView view(data, dtype, shape, device);
  return BorrowedTensor(std::move(owner).Release(), view);
}

namespace {

// Keeps the exported Tensor (and so its storage) alive until the consumer's deleter call.
struct ExportContext {
  Tensor tensor;
  std::shared_ptr<void> keep_alive;
  std::vector<int64_t> shape;
  DLManagedTensor managed;
};

void DeleteExport(DLManagedTensor* managed) {
  delete static_cast<ExportContext*>(managed->manager_ctx);
}

void DestroyCapsule(PyObject* capsule) {
  // A consumed capsule ("used_dltensor") belongs to its consumer, which calls the deleter.
  if (!PyCapsule_IsValid(capsule, kCapsuleName)) return;
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, kCapsuleName));
  if (managed != nullptr && managed->deleter != nullptr) managed->deleter(managed);
}

}  // namespace

py::capsule ToCapsule(const Tensor& tensor, std::shared_ptr<void> keep_alive) {
  auto* export_ctx = new ExportContext{tensor, std::move(keep_alive), {}, {}};
  export_ctx->shape.assign(tensor.shape().begin(), tensor.shape().end());
  dlpack::DLTensor& dl = export_ctx->managed.dl_tensor;
  // DLPack wants a non-null pointer even for an empty tensor.
  alignas(256) static char empty_storage = 0;
  dl.data = tensor.data() != nullptr ? tensor.data() : &empty_storage;
  dl.device = tensor.device().is_cuda() ? dlpack::DLDevice{dlpack::kDLCUDA, tensor.device().index}
                                        : dlpack::DLDevice{dlpack::kDLCPU, 0};
  dl.ndim = tensor.rank();
  dl.dtype = DLFromDType(tensor.dtype());
  dl.shape = export_ctx->shape.data();
  dl.strides = nullptr;
  dl.byte_offset = 0;
  export_ctx->managed.manager_ctx = export_ctx;
  export_ctx->managed.deleter = &DeleteExport;
  PyObject* capsule = PyCapsule_New(&export_ctx->managed, kCapsuleName, &DestroyCapsule);
  if (capsule == nullptr) {
    delete export_ctx;
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::capsule>(capsule);
}

}  // namespace smoe::python
