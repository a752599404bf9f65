#include "tests/testing/parity.h"

#include <limits>

#include "runtime/tensor/tensor_ops.h"

namespace smoe::testing {
namespace {

Status Poison(ExecContext& ctx, const TensorView& t) {
  return Fill(ctx, t, IsFloating(t.dtype()) ? std::numeric_limits<double>::quiet_NaN() : -12345.0);
}

}  // namespace

::testing::AssertionResult CheckParity(const std::vector<ParityArg>& args, const ParityOp& op,
                                       uint64_t seed) {
  StatusOr<std::unique_ptr<ExecContext>> gpu_or = ExecContext::Create(Device::Cuda(0));
  if (!gpu_or.ok()) return ::testing::AssertionFailure() << gpu_or.status().ToString();
  ExecContext& gpu = **gpu_or;
  ExecContext& cpu = ExecContext::Cpu();

  std::vector<Tensor> host, device;
  std::vector<TensorView> host_views, device_views;
  for (size_t i = 0; i < args.size(); ++i) {
    const ParityArg& arg = args[i];
    StatusOr<Tensor> h = Tensor::Empty(arg.shape, arg.dtype, Device::Cpu());
    if (!h.ok()) return ::testing::AssertionFailure() << arg.name << ": " << h.status().ToString();
    Status filled = absl::OkStatus();
    if (arg.fill) {
      arg.fill(*h);
    } else if (arg.is_output) {
      filled = Poison(cpu, *h);
    } else if (IsFloating(arg.dtype)) {
      filled = FillNormal(cpu, *h, seed + 7919 * i, 0, 0.0f, 1.0f);
    } else {
      filled = absl::InvalidArgumentError("integer inputs need a `fill`");
    }
    if (!filled.ok()) return ::testing::AssertionFailure() << arg.name << ": " << filled.ToString();
    StatusOr<Tensor> d = CopyTo(gpu, *h, Device::Cuda(0));
    if (!d.ok()) return ::testing::AssertionFailure() << arg.name << ": " << d.status().ToString();
    host.push_back(*std::move(h));
    device.push_back(*std::move(d));
    host_views.push_back(host.back());
    device_views.push_back(device.back());
  }
  if (Status s = op(cpu, host_views); !s.ok()) {
    return ::testing::AssertionFailure() << "CPU op failed: " << s.ToString();
  }
  if (Status s = op(gpu, device_views); !s.ok()) {
    return ::testing::AssertionFailure() << "CUDA op failed: " << s.ToString();
  }
  if (Status s = gpu.Synchronize(); !s.ok()) {
    return ::testing::AssertionFailure() << "CUDA op failed: " << s.ToString();
  }
  for (size_t i = 0; i < args.size(); ++i) {
    if (!args[i].is_output) continue;
    ::testing::AssertionResult same =
        IsFloating(args[i].dtype)
            ? AllClose(device_views[i], host_views[i],
                       args[i].tolerance.value_or(ToleranceFor(args[i].dtype)))
            : AllEqual(device_views[i], host_views[i]);
    if (!same) return ::testing::AssertionFailure() << "output " << args[i].name << ": " << same.message();
  }
  return ::testing::AssertionSuccess();
}

}  // namespace smoe::testing
