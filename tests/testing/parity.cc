#include "tests/testing/parity.h"

#include <cstring>
#include <limits>
#include <set>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe::testing {

ParityArgs::ParityArgs(std::vector<std::string> names, std::vector<TensorView> views)
    : names_(std::move(names)), views_(std::move(views)) {
  MOE_CHECK_EQ(names_.size(), views_.size());
}

const TensorView& ParityArgs::operator[](std::string_view name) const {
  for (size_t i = 0; i < names_.size(); ++i) {
    if (names_[i] == name) return views_[i];
  }
  throw std::out_of_range(absl::StrCat("no parity argument named \"", std::string(name),
                                       "\"; the arguments are: ", absl::StrJoin(names_, ", ")));
}

namespace {

// Byte i of every guard band.
uint8_t SentinelByte(size_t i) { return static_cast<uint8_t>(0xA5 ^ (i * 0x3B)); }

size_t GuardBytes(DType dtype) { return static_cast<size_t>(kGuardElements) * DTypeSize(dtype); }

// The argument inside its guarded storage [band | argument | band].
TensorView Middle(const Tensor& storage, const ParityArg& arg) {
  return TensorView(static_cast<char*>(storage.data()) + GuardBytes(arg.dtype), arg.dtype,
                    arg.shape, storage.device());
}

// The argument's starting values on the host, between its two bands.
StatusOr<Tensor> InitialValues(const ParityArg& arg, uint64_t seed) {
  MOE_ASSIGN_OR_RETURN(Tensor storage, Tensor::Empty({arg.shape.NumElements() + 2 * kGuardElements},
                                                     arg.dtype, Device::Cpu()));
  const size_t band = GuardBytes(arg.dtype);
  uint8_t* bytes = static_cast<uint8_t*>(storage.data());
  for (size_t i = 0; i < band; ++i) {
    bytes[i] = SentinelByte(i);
    bytes[storage.nbytes() - band + i] = SentinelByte(i);
  }
  const TensorView values = Middle(storage, arg);
  ExecContext& cpu = ExecContext::Cpu();
  if (arg.fill) {
    arg.fill(values);
  } else if (arg.is_output) {  // poison
    MOE_RETURN_IF_ERROR(Fill(
        cpu, values, IsFloating(arg.dtype) ? std::numeric_limits<double>::quiet_NaN() : -12345.0));
  } else if (IsFloating(arg.dtype)) {
    MOE_RETURN_IF_ERROR(FillNormal(cpu, values, seed, 0, 0.0f, 1.0f));
  } else {
    return absl::InvalidArgumentError("integer inputs need a `fill`");
  }
  return storage;
}

StatusOr<std::vector<Tensor>> InitialValues(const std::vector<ParityArg>& args, uint64_t seed) {
  std::set<std::string_view> names;
  std::vector<Tensor> initial;
  for (size_t i = 0; i < args.size(); ++i) {
    if (!names.insert(args[i].name).second) {
      return absl::InvalidArgumentError(absl::StrCat("two arguments named \"", args[i].name, "\""));
    }
    StatusOr<Tensor> storage = InitialValues(args[i], seed + 7919 * i);
    if (!storage.ok()) {
      return absl::Status(storage.status().code(),
                          absl::StrCat(args[i].name, ": ", storage.status().message()));
    }
    initial.push_back(*std::move(storage));
  }
  return initial;
}

// Empty if the band before (or after) the argument is as `initial` has it; else which element
// changed: the one nearest to the argument, as an offset from the argument's first element.
std::string ChangedBand(const ParityArg& arg, const Tensor& initial, const Tensor& after,
                        bool before) {
  const size_t width = DTypeSize(arg.dtype);
  const size_t offset = before ? 0 : after.nbytes() - GuardBytes(arg.dtype);
  const char* expected = static_cast<const char*>(initial.data()) + offset;
  const char* seen = static_cast<const char*>(after.data()) + offset;
  int64_t changed = 0, nearest = 0;
  for (int64_t step = 0; step < kGuardElements; ++step) {
    // Walk outwards from the argument, so that the first change found is the nearest.
    const int64_t k = before ? kGuardElements - 1 - step : step;
    if (std::memcmp(expected + k * width, seen + k * width, width) == 0) continue;
    if (changed++ == 0) nearest = before ? -(step + 1) : arg.shape.NumElements() + step;
  }
  if (changed == 0) return "";
  return absl::StrCat(arg.is_output ? "output \"" : "input \"", arg.name, "\" (",
                      arg.shape.NumElements(), " elements): guard ",
                      before ? "before the start" : "after the end",
                      " overwritten, first at offset ", nearest, " (", changed, " of ",
                      kGuardElements, " guard elements changed)");
}

// Runs `op` on ctx's device over copies of `initial` (kept in *storage) and checks every band.
::testing::AssertionResult RunGuarded(ExecContext& ctx, const std::vector<ParityArg>& args,
                                      const std::vector<Tensor>& initial, const ParityOp& op,
                                      std::vector<Tensor>* storage) {
  std::vector<std::string> names;
  std::vector<TensorView> views;
  for (size_t i = 0; i < args.size(); ++i) {
    StatusOr<Tensor> copy = CopyTo(ctx, initial[i], ctx.device());
    if (!copy.ok()) {
      return ::testing::AssertionFailure() << args[i].name << ": " << copy.status().ToString();
    }
    storage->push_back(*std::move(copy));
    names.push_back(args[i].name);
    views.push_back(Middle(storage->back(), args[i]));
  }
  Status status;
  try {
    status = op(ctx, ParityArgs(std::move(names), std::move(views)));
  } catch (const std::out_of_range& e) {
    return ::testing::AssertionFailure() << e.what();
  }
  if (status.ok()) status = ctx.Synchronize();
  if (!status.ok()) return ::testing::AssertionFailure() << "the op failed: " << status.ToString();

  std::vector<std::string> overruns;
  for (size_t i = 0; i < args.size(); ++i) {
    StatusOr<Tensor> after = CopyTo(ctx, (*storage)[i], Device::Cpu());
    if (!after.ok()) {
      return ::testing::AssertionFailure() << args[i].name << ": " << after.status().ToString();
    }
    for (bool before : {true, false}) {
      std::string changed = ChangedBand(args[i], initial[i], *after, before);
      if (!changed.empty()) overruns.push_back(std::move(changed));
    }
  }
  if (overruns.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << absl::StrJoin(overruns, "\n");
}

::testing::AssertionResult CompareOutput(const ParityArg& arg, const TensorView& actual,
                                         const TensorView& expected) {
  if (!IsFloating(arg.dtype)) return AllEqual(actual, expected);
  const OutputCheck check = arg.check.value_or(ToleranceFor(arg.dtype));
  if (const NmseAtMost* nmse = std::get_if<NmseAtMost>(&check)) {
    return NmseWithin(actual, expected, nmse->max);
  }
  return AllClose(actual, expected, std::get<Tolerance>(check));
}

}  // namespace

::testing::AssertionResult CheckGuardedOp(ExecContext& ctx, const std::vector<ParityArg>& args,
                                          const ParityOp& op, uint64_t seed) {
  StatusOr<std::vector<Tensor>> initial = InitialValues(args, seed);
  if (!initial.ok()) return ::testing::AssertionFailure() << initial.status().ToString();
  std::vector<Tensor> storage;
  return RunGuarded(ctx, args, *initial, op, &storage);
}

::testing::AssertionResult CheckParity(const std::vector<ParityArg>& args, const ParityOp& op,
                                       uint64_t seed) {
  StatusOr<std::unique_ptr<ExecContext>> gpu = ExecContext::Create(Device::Cuda(0));
  if (!gpu.ok()) return ::testing::AssertionFailure() << gpu.status().ToString();
  StatusOr<std::vector<Tensor>> initial = InitialValues(args, seed);
  if (!initial.ok()) return ::testing::AssertionFailure() << initial.status().ToString();

  std::vector<Tensor> on_cpu, on_cuda;
  if (::testing::AssertionResult ran = RunGuarded(ExecContext::Cpu(), args, *initial, op, &on_cpu);
      !ran) {
    return ::testing::AssertionFailure() << "on CPU: " << ran.message();
  }
  if (::testing::AssertionResult ran = RunGuarded(**gpu, args, *initial, op, &on_cuda); !ran) {
    return ::testing::AssertionFailure() << "on CUDA: " << ran.message();
  }
  std::vector<std::string> differences;
  for (size_t i = 0; i < args.size(); ++i) {
    if (!args[i].is_output) continue;
    const ::testing::AssertionResult same =
        CompareOutput(args[i], Middle(on_cuda[i], args[i]), Middle(on_cpu[i], args[i]));
    if (!same) {
      differences.push_back(absl::StrCat("output \"", args[i].name, "\": ", same.message()));
    }
  }
  if (differences.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "CUDA vs. CPU: " << absl::StrJoin(differences, "\n");
}

}  // namespace smoe::testing
