// CUDA-vs-CPU parity harness: one op, the same random inputs on both backends, every output
// compared (floats by tolerance, integers exactly).
//
//   CheckParity({Input("a", {m, k}, DType::kBF16), Input("b", {k, n}, DType::kBF16),
//                Output("c", {m, n}, DType::kF32)},
//               [&](ExecContext& ctx, const std::vector<TensorView>& t) {
//                 return Gemm(ctx, t[0], t[1], t[2]);
//               });
// Inputs are filled on the host with standard normals (Philox, seeded per argument) unless a
// `fill` is given, then copied to the GPU. Outputs are poisoned (NaN, or -12345 for integers)
// before the op on both sides, so an unwritten element fails the comparison; an output with a
// `fill` is an in/out argument and starts from those values instead. Requires a visible GPU
// (callers skip first with MOE_SKIP_WITHOUT_CUDA).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/device/exec_context.h"
#include "tests/testing/compare.h"

namespace smoe::testing {

struct ParityArg {
  std::string name;
  Shape shape;
  DType dtype = DType::kF32;
  bool is_output = false;
  std::function<void(const TensorView& host)> fill;  // optional host-side initializer
  std::optional<Tolerance> tolerance;                 // outputs; default ToleranceFor(dtype)
};

// An input filled with standard normals (or by `fill`).
inline ParityArg Input(std::string name, Shape shape, DType dtype,
                       std::function<void(const TensorView&)> fill = {}) {
  return ParityArg{std::move(name), shape, dtype, false, std::move(fill), std::nullopt};
}
// An output, poisoned before the op unless `fill` makes it an in/out argument.
inline ParityArg Output(std::string name, Shape shape, DType dtype,
                        std::optional<Tolerance> tolerance = std::nullopt,
                        std::function<void(const TensorView&)> fill = {}) {
  return ParityArg{std::move(name), shape, dtype, true, std::move(fill), tolerance};
}

using ParityOp = std::function<Status(ExecContext& ctx, const std::vector<TensorView>& args)>;

::testing::AssertionResult CheckParity(const std::vector<ParityArg>& args, const ParityOp& op,
                                       uint64_t seed = 1);

}  // namespace smoe::testing

#define MOE_SKIP_WITHOUT_CUDA()                                                           \
  do {                                                                                    \
    if (!::smoe::CudaAvailable()) {                                                       \
      GTEST_SKIP() << (::smoe::BuiltWithCuda() ? "no CUDA device visible"                 \
                                               : "built without the CUDA backend");       \
    }                                                                                     \
  } while (false)
