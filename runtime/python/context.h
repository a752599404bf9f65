// What every binding file of sigma_moe._C shares: borrowing tensor arguments, the ExecContext for
// a (device, stream) pair, and selecting the device of the work for the call's duration.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "runtime/core/dtype.h"
#include "runtime/device/device.h"
#include "runtime/device/exec_context.h"
#include "runtime/python/dlpack.h"

namespace smoe::python {

// Borrow() or throw (ValueError naming `name`).
BorrowedTensor Take(pybind11::handle object, const char* name, bool allow_none = false);

// Makes `device` current for the calling thread while it lives (the kernels launch on the current
// device), restoring the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(Device device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool restore_ = false;
};

// The context for work on `device`: the process-wide CPU context, or a cached CUDA context on
// `stream` (created on first use; kept for the life of the process, as the streams it borrows
// belong to torch, whose streams are never destroyed either). The GIL serializes its users.
ExecContext& ContextFor(Device device, uintptr_t stream);

// "float32"/"bfloat16" (torch's names) or our names ("f32", "bf16", ...); ValueError otherwise.
DType ParseDTypeOrThrow(const std::string& name);

// A "dltensor" capsule of `t`, or None for a tensor that was never filled.
pybind11::object Export(const Tensor& t);

}  // namespace smoe::python
