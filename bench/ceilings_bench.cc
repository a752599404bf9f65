// The device's measured ceilings as JSON lines, for the GPU check and as the denominators of the
// other benchmarks' peak fractions:
//   {"name": "gemm_ceiling", "device": "cuda:0", "dtype": "bf16", "n": 8192, "tflops": ...}
//   {"name": "copy_ceiling", "device": "cuda:0", "bytes": 1073741824, "gbps": ...}
// On a GPU: bf16 GEMM 8192^3 and a 1 GiB device copy. On the CPU: f32 GEMM 1024^3 and 256 MiB.
// Usage: ceilings_bench [--device=cpu|cuda] [--iters=N].
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "bench/ceilings.h"

namespace smoe {
namespace {

Status Main(int argc, char** argv) {
  std::string device_text = CudaAvailable() ? "cuda" : "cpu";
  int iters = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--device=", 9) == 0) {
      device_text = argv[i] + 9;
    } else if (std::strncmp(argv[i], "--iters=", 8) == 0) {
      iters = std::atoi(argv[i] + 8);
    } else {
      return BadArgument("argument", argv[i], "--device=cpu|cuda or --iters=N");
    }
  }
  MOE_ASSIGN_OR_RETURN(Device device, ParseDevice(device_text));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<ExecContext> ctx, ExecContext::Create(device));
  const bool gpu = device.is_cuda();
  const DType dtype = gpu ? DType::kBF16 : DType::kF32;
  const int64_t n = gpu ? 8192 : 1024;
  const int64_t bytes = gpu ? (int64_t{1} << 30) : (int64_t{256} << 20);
  if (iters <= 0) iters = gpu ? 20 : 3;
  MOE_ASSIGN_OR_RETURN(double tflops, GemmCeilingTflops(*ctx, dtype, n, iters));
  std::printf(
      "{\"name\": \"gemm_ceiling\", \"device\": \"%s\", \"dtype\": \"%s\", \"n\": %lld, "
      "\"tflops\": %.2f}\n",
      device.ToString().c_str(), std::string(DTypeName(dtype)).c_str(), static_cast<long long>(n),
      tflops);
  MOE_ASSIGN_OR_RETURN(double gbps, CopyCeilingGbps(*ctx, bytes, iters));
  std::printf("{\"name\": \"copy_ceiling\", \"device\": \"%s\", \"bytes\": %lld, \"gbps\": %.1f}\n",
              device.ToString().c_str(), static_cast<long long>(bytes), gbps);
  return absl::OkStatus();
}

}  // namespace
}  // namespace smoe

int main(int argc, char** argv) {
  const smoe::Status status = smoe::Main(argc, argv);
  if (!status.ok()) {
    std::fprintf(stderr, "ceilings_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
