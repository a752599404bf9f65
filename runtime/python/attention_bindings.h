// sigma_moe._C bindings of the DiffQKV attention block (attention/diffqkv.h): DiffQkvConfig,
// the opaque DiffQkvState that diffqkv_forward returns and diffqkv_backward reads, and the two
// functions, over DLPack tensors on the caller's stream (see bindings.cc).
#pragma once

#include <pybind11/pybind11.h>

namespace smoe::python {

void BindAttention(pybind11::module_& m);

}  // namespace smoe::python
