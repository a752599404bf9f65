#include "runtime/python/errors.h"

#include <pybind11/pybind11.h>

#include <string>

namespace smoe::python {

void ThrowIfError(const Status& status) {
  if (status.ok()) return;
  if (status.code() == absl::StatusCode::kInvalidArgument) {
    throw pybind11::value_error(std::string(status.message()));
  }
  // RuntimeError keeps the code name: FAILED_PRECONDITION, RESOURCE_EXHAUSTED, ...
  throw std::runtime_error(status.ToString());
}

}  // namespace smoe::python
