// CUDA-vs-CPU parity harness: one op, the same random inputs on both backends, every output
// compared.
//
//   CheckParity({Input("a", {m, k}, DType::kBF16), Input("b", {k, n}, DType::kBF16),
//                Output("c", {m, n}, DType::kF32)},
//               [&](ExecContext& ctx, const ParityArgs& t) {
//                 return Gemm(ctx, t["a"], t["b"], t["c"]);
//               });
//
// The contract:
// - Arguments by name. The op reads its tensors as t["name"]. An unknown name throws
//   std::out_of_range naming it and the known ones; the harness turns that into a failure. Names
//   must be unique.
// - Inputs. Filled on the host with standard normals (Philox, seeded per argument) unless a `fill`
//   is given (integer inputs need one), then copied to each backend.
// - Outputs. Poisoned before the op (NaN, or -12345 for integers), so an unwritten element fails
//   the comparison. An output with a `fill` is an in/out argument and starts from those values.
// - Guard regions. Every argument lies between two bands of kGuardElements elements filled with a
//   sentinel byte pattern; the op gets a view of the middle. After the op, on each backend, the
//   bands are compared with the pattern. A changed band fails with the argument's name, the side
//   (before the start / after the end) and the offset, relative to the argument's first element,
//   of the changed element nearest to the argument (-1 is just before it, numel just after).
// - Comparison, per output, CUDA against CPU: by default AllClose with ToleranceFor(dtype) for
//   floats and AllEqual for integers. A Tolerance replaces the default; NmseAtMost{bound} instead
//   checks sum((cuda - cpu)^2) / sum(cpu^2) <= bound, the tighter test for reductions (weight
//   gradients), whose absolute error grows with their length.
// - Failures name the backend ("on CPU", "on CUDA") and the argument. Name the case with a
//   parameterised test's name generator or a SCOPED_TRACE.
//
// CheckParity requires a visible GPU (callers skip first with MOE_SKIP_WITHOUT_CUDA).
// CheckGuardedOp runs the same steps on one backend alone, without a comparison, so the guards
// and the argument lookup are testable without a GPU.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/device/exec_context.h"
#include "tests/testing/compare.h"

namespace smoe::testing {

// Compare an output by its normalised mean squared error: sum((a - b)^2) / sum(b^2) <= max.
struct NmseAtMost {
  double max;
};
using OutputCheck = std::variant<Tolerance, NmseAtMost>;

struct ParityArg {
  std::string name;
  Shape shape;
  DType dtype = DType::kF32;
  bool is_output = false;
  std::function<void(const TensorView& host)> fill;  // optional host-side initializer
  std::optional<OutputCheck> check;                  // outputs; default as in the contract
};

// An input filled with standard normals (or by `fill`).
inline ParityArg Input(std::string name, Shape shape, DType dtype,
                       std::function<void(const TensorView&)> fill = {}) {
  return ParityArg{std::move(name), shape, dtype, false, std::move(fill), std::nullopt};
}
// An output, poisoned before the op unless `fill` makes it an in/out argument.
inline ParityArg Output(std::string name, Shape shape, DType dtype,
                        std::optional<OutputCheck> check = std::nullopt,
                        std::function<void(const TensorView&)> fill = {}) {
  return ParityArg{std::move(name), shape, dtype, true, std::move(fill), check};
}

// The op's tensors, looked up by the names of their ParityArgs.
class ParityArgs {
 public:
  ParityArgs(std::vector<std::string> names, std::vector<TensorView> views);
  // The tensor called `name`; throws std::out_of_range naming it and the known names.
  const TensorView& operator[](std::string_view name) const;

 private:
  std::vector<std::string> names_;
  std::vector<TensorView> views_;
};

using ParityOp = std::function<Status(ExecContext& ctx, const ParityArgs& args)>;

// Elements in each guard band, before and after every argument.
inline constexpr int64_t kGuardElements = 64;

// Runs `op` on both backends and compares every output (see the contract above).
::testing::AssertionResult CheckParity(const std::vector<ParityArg>& args, const ParityOp& op,
                                       uint64_t seed = 1);

// Runs `op` once on ctx's device with the same arguments and guards as CheckParity, and checks the
// guards; compares nothing.
::testing::AssertionResult CheckGuardedOp(ExecContext& ctx, const std::vector<ParityArg>& args,
                                          const ParityOp& op, uint64_t seed = 1);

}  // namespace smoe::testing

#define MOE_SKIP_WITHOUT_CUDA()                                                     \
  do {                                                                              \
    if (!::smoe::CudaAvailable()) {                                                 \
      GTEST_SKIP() << (::smoe::BuiltWithCuda() ? "no CUDA device visible"           \
                                               : "built without the CUDA backend"); \
    }                                                                               \
  } while (false)
