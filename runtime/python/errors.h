// The one place where a C++ Status becomes a Python exception (docs/design.md section 9):
// InvalidArgument -> ValueError, every other error -> RuntimeError; the message is the C++ one.
#pragma once

#include <utility>

#include "runtime/core/status.h"

namespace smoe::python {

// Throws (a pybind11 exception that reaches Python as described above) unless `status` is OK.
void ThrowIfError(const Status& status);

template <typename T>
T ValueOrThrow(StatusOr<T> value) {
  ThrowIfError(value.status());
  return std::move(value).value();
}

}  // namespace smoe::python
