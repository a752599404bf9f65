// sigma-moe-train. Until the trainer lands (issue 5) this program runs a short smoke test of the
// runtime on the chosen device and says so: random fills, a GEMM checked against a CPU reference,
// a softmax, and the allocator's accounting.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "runtime/blas/gemm.h"
#include "runtime/core/logging.h"
#include "runtime/device/exec_context.h"
#include "runtime/nn/softmax.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

constexpr char kUsage[] =
    "usage: sigma-moe-train [--device=cpu|cuda|cuda:N] [--help]\n"
    "\n"
    "Trains a Sigma-MoE-Tiny-style model. The trainer is not built yet (issue 5): this version\n"
    "runs a runtime smoke test (random fill, GEMM vs. CPU reference, softmax, allocator stats).\n"
    "Default device: cuda when a GPU is visible, otherwise cpu.\n";

Status Smoke(Device device) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<ExecContext> ctx, ExecContext::Create(device));
  const int64_t m = 256, n = 192, k = 320;
  MOE_ASSIGN_OR_RETURN(Tensor a, Tensor::Empty({m, k}, DType::kF32, device));
  MOE_ASSIGN_OR_RETURN(Tensor b, Tensor::Empty({k, n}, DType::kF32, device));
  MOE_ASSIGN_OR_RETURN(Tensor c, Tensor::Empty({m, n}, DType::kF32, device));
  MOE_RETURN_IF_ERROR(FillNormal(*ctx, a, /*seed=*/1, /*offset=*/0, 0.0f, 1.0f));
  MOE_RETURN_IF_ERROR(FillNormal(*ctx, b, /*seed=*/1, /*offset=*/uint64_t(m * k), 0.0f, 1.0f));
  MOE_RETURN_IF_ERROR(Gemm(*ctx, a, b, c));
  MOE_RETURN_IF_ERROR(SoftmaxRows(*ctx, c, c));

  MOE_ASSIGN_OR_RETURN(Tensor a_host, CopyTo(*ctx, a, Device::Cpu()));
  MOE_ASSIGN_OR_RETURN(Tensor b_host, CopyTo(*ctx, b, Device::Cpu()));
  MOE_ASSIGN_OR_RETURN(Tensor c_host, CopyTo(*ctx, c, Device::Cpu()));
  // Reference: plain loops in double.
  double max_error = 0.0, max_row_sum_error = 0.0;
  std::vector<double> row(n);
  for (int64_t i = 0; i < m; ++i) {
    double row_max = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        sum += double{a_host.data<float>()[i * k + p]} * b_host.data<float>()[p * n + j];
      }
      row[j] = sum;
      row_max = std::max(row_max, sum);
    }
    double total = 0.0;
    for (int64_t j = 0; j < n; ++j) total += std::exp(row[j] - row_max);
    double row_sum = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      const double expected = std::exp(row[j] - row_max) / total;
      const double got = c_host.data<float>()[i * n + j];
      max_error = std::max(max_error, std::abs(got - expected));
      row_sum += got;
    }
    max_row_sum_error = std::max(max_row_sum_error, std::abs(row_sum - 1.0));
  }
  const AllocatorStats stats = ctx->allocator()->stats();
  std::printf("sigma-moe-train: the trainer is not implemented yet (issue 5); ran the runtime "
              "smoke test instead.\n");
  std::printf("  device            %s\n", device.ToString().c_str());
  std::printf("  softmax(A B)      [%lld x %lld] from [%lld x %lld] x [%lld x %lld]\n",
              (long long)m, (long long)n, (long long)m, (long long)k, (long long)k, (long long)n);
  std::printf("  max |err| vs fp64 reference  %.3g\n", max_error);
  std::printf("  max |row sum - 1|            %.3g\n", max_row_sum_error);
  std::printf("  allocator: %zu bytes in use, peak %zu, %zu system allocations\n",
              stats.bytes_in_use, stats.peak_bytes_in_use, stats.num_system_allocations);
  if (!(max_error < 1e-5 && max_row_sum_error < 1e-5)) {
    return absl::InternalError("smoke test: results differ from the fp64 reference");
  }
  std::printf("  OK\n");
  return absl::OkStatus();
}

}  // namespace
}  // namespace smoe

int main(int argc, char** argv) {
  std::string device_text = smoe::CudaAvailable() ? "cuda" : "cpu";
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(smoe::kUsage, stdout);
      return 0;
    }
    if (arg.rfind("--device=", 0) == 0) {
      device_text = std::string(arg.substr(9));
      continue;
    }
    std::fprintf(stderr, "sigma-moe-train: unknown argument '%s'\n\n%s", argv[i], smoe::kUsage);
    return 2;
  }
  smoe::StatusOr<smoe::Device> device = smoe::ParseDevice(device_text);
  if (!device.ok()) {
    std::fprintf(stderr, "sigma-moe-train: %s\n", device.status().ToString().c_str());
    return 2;
  }
  smoe::Status status = smoe::Smoke(*device);
  if (!status.ok()) {
    std::fprintf(stderr, "sigma-moe-train: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
