#include "runtime/python/context.h"

#include <map>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/python/errors.h"

#if MOE_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace smoe::python {

BorrowedTensor Take(pybind11::handle object, const char* name, bool allow_none) {
  return ValueOrThrow(Borrow(object, name, allow_none));
}

DeviceGuard::DeviceGuard(Device device) {
#if MOE_WITH_CUDA
  if (device.is_cuda() && cudaGetDevice(&previous_) == cudaSuccess && previous_ != device.index) {
    ThrowIfError(cudaSetDevice(device.index) == cudaSuccess
                     ? absl::OkStatus()
                     : absl::FailedPreconditionError(
                           absl::StrCat("cannot select CUDA device ", device.index)));
    restore_ = true;
  }
#else
  (void)device;
#endif
}

DeviceGuard::~DeviceGuard() {
#if MOE_WITH_CUDA
  if (restore_) (void)cudaSetDevice(previous_);
#endif
}

ExecContext& ContextFor(Device device, uintptr_t stream) {
  if (device.is_cpu()) return ExecContext::Cpu();
  static auto* contexts = new std::map<std::pair<int, uintptr_t>, std::unique_ptr<ExecContext>>();
  auto& slot = (*contexts)[{device.index, stream}];
  if (slot == nullptr) {
    auto created = ExecContext::CreateOnStream(device, reinterpret_cast<CudaStream>(stream));
    if (!created.ok()) contexts->erase({device.index, stream});
    slot = ValueOrThrow(std::move(created));
  }
  return *slot;
}

DType ParseDTypeOrThrow(const std::string& name) {
  if (name == "float32") return DType::kF32;
  if (name == "bfloat16") return DType::kBF16;
  return ValueOrThrow(ParseDType(name));
}

pybind11::object Export(const Tensor& t) {
  if (!t.defined()) return pybind11::none();
  return ToCapsule(t);
}

}  // namespace smoe::python
