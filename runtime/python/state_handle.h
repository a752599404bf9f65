// Opaque handles to the C++ state a forward saves for its backward (MoEState, DiffQkvState), in a
// form torch.compile can carry: a tensor.
//
// MakeStateHandle() returns a "dltensor" capsule of a [1] int64 CPU tensor holding a fresh id;
// the tensor's storage owns the state, so the state lives exactly as long as the handle tensor
// (torch frees it with the autograd graph that saved it, or with the module attribute that keeps
// it). StateFromHandle() finds the state again from a handle tensor (or from a copy of one, while
// the original lives). Ids are never reused; a handle whose state is gone, a handle of another
// kind or a tensor that is not a handle is InvalidArgument naming the argument. Thread-safe: the
// last owner of a handle may be released on a thread that does not hold the GIL.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>

#include "absl/strings/string_view.h"
#include "runtime/core/status.h"
#include "runtime/python/errors.h"

namespace smoe::python {

enum class StateKind { kMoE, kDiffQkv };

// The capsule for torch.utils.dlpack.from_dlpack; `state` must not be null.
pybind11::capsule MakeStateHandle(std::shared_ptr<void> state, StateKind kind);

// The state of `kind` behind `handle` (an object exporting a [1] int64 CPU tensor through DLPack).
[[nodiscard]] StatusOr<std::shared_ptr<void>> StateFromHandle(pybind11::handle handle,
                                                              StateKind kind,
                                                              absl::string_view name);

template <typename T>
std::shared_ptr<T> StateFromHandleOrThrow(pybind11::handle handle, StateKind kind,
                                          absl::string_view name) {
  return std::static_pointer_cast<T>(ValueOrThrow(StateFromHandle(handle, kind, name)));
}

}  // namespace smoe::python
